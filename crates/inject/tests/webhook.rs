//! The injection webhook end to end: a real HTTPS client (rustls, trusting
//! a test CA) posts AdmissionReviews to `linnet_inject::webhook::serve` on
//! `127.0.0.1:0`, applies the patches it answers, and compares the pods
//! with what `linnet_inject::inject` makes of them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use http::StatusCode;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use support::webhook::{Webhook, apply, injected, patch_of, pod, review};

#[tokio::test]
async fn an_opted_in_pod_gets_the_patch_that_makes_it_the_injected_pod() {
    let webhook = Webhook::start(|_| {}).await;
    let original = pod(json!({"linnet.io/inject": "enabled"}));
    let response = webhook.review(original.clone(), "demo").await;
    let ops = patch_of(&response).expect("a patch");
    let mut patched = original.clone();
    apply(&mut patched, &ops);
    assert_eq!(
        serde_json::from_value::<Pod>(patched).unwrap(),
        injected(&original)
    );
    // Served at `/` too, alike.
    let (status, body) = webhook
        .post("/", serde_json::to_vec(&review(original, "demo")).unwrap())
        .await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["response"], response);
}

#[tokio::test]
async fn a_pod_without_name_or_namespace_takes_the_requests_namespace_unpatched() {
    let webhook = Webhook::start(|_| {}).await;
    let mut pod = pod(json!({"linkerd.io/inject": "enabled"}));
    let metadata = pod["metadata"].as_object_mut().unwrap();
    metadata.remove("name");
    metadata.remove("namespace");
    metadata.insert("generateName".to_string(), json!("curl-"));
    let response = webhook.review(pod.clone(), "demo").await;
    let ops = patch_of(&response).expect("a patch");
    assert!(
        ops.iter().all(|op| !op["path"]
            .as_str()
            .unwrap()
            .starts_with("/metadata/namespace")),
        "{ops:?}"
    );
    let mut expected_input = pod.clone();
    expected_input["metadata"]["namespace"] = json!("demo");
    apply(&mut pod, &ops);
    assert!(pod["metadata"].get("namespace").is_none());
    pod["metadata"]["namespace"] = json!("demo");
    assert_eq!(
        serde_json::from_value::<Pod>(pod).unwrap(),
        injected(&expected_input)
    );
}

#[tokio::test]
async fn only_opted_in_pods_are_injected_unless_all_are() {
    let webhook = Webhook::start(|_| {}).await;
    let response = webhook.review(pod(json!({})), "demo").await;
    assert_eq!(patch_of(&response), None);
    assert!(response.get("warnings").is_none(), "{response}");

    let all = Webhook::start(|o| o.inject_all = true).await;
    let mut pod = pod(json!({}));
    let ops = patch_of(&all.review(pod.clone(), "demo").await).expect("a patch");
    let expected = injected(&pod);
    apply(&mut pod, &ops);
    assert_eq!(serde_json::from_value::<Pod>(pod).unwrap(), expected);
}

#[tokio::test]
async fn disabled_and_injected_pods_are_allowed_unpatched() {
    let webhook = Webhook::start(|o| o.inject_all = true).await;
    let disabled = pod(json!({"linnet.io/inject": "disabled"}));
    let response = webhook.review(disabled, "demo").await;
    assert_eq!(patch_of(&response), None);
    assert!(response.get("warnings").is_none(), "{response}");

    let once = serde_json::to_value(injected(&pod(json!({})))).unwrap();
    let response = webhook.review(once, "demo").await;
    assert_eq!(patch_of(&response), None);
    assert!(response.get("warnings").is_none(), "{response}");
}

/// Reviews the webhook cannot use, and the warning each is allowed with.
fn malformed() -> Vec<(Value, &'static str)> {
    let mut deployment = review(pod(json!({})), "demo");
    deployment["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    let mut unknown_field = review(pod(json!({"linnet.io/inject": "enabled"})), "demo");
    unknown_field["request"]["object"]["spec"]["containerz"] = json!([]);
    let mut not_an_object = review(json!("a pod"), "demo");
    not_an_object["request"]["object"] = json!(["a pod"]);
    vec![
        (
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}),
            "linnet inject: malformed AdmissionReview: no request",
        ),
        (deployment, "linnet inject: not a Pod: apps/Deployment"),
        (unknown_field, "unknown field spec.containerz"),
        (not_an_object, "not a Pod"),
        (
            json!({"apiVersion": "v1", "kind": "Pod"}),
            "linnet inject: not an admission.k8s.io/v1 AdmissionReview",
        ),
    ]
}

#[tokio::test]
async fn a_malformed_review_is_allowed_with_a_warning() {
    let webhook = Webhook::start(|_| {}).await;
    for (review, warning) in malformed() {
        let (status, body) = webhook
            .post("/inject", serde_json::to_vec(&review).unwrap())
            .await;
        assert_eq!(status, StatusCode::OK);
        let response = &serde_json::from_slice::<Value>(&body).unwrap()["response"];
        assert_eq!(response["allowed"], true, "{response}");
        assert!(response.get("patch").is_none(), "{response}");
        let warnings = response["warnings"].as_array().unwrap();
        assert_eq!(warnings.len(), 1);
        let text = warnings[0].as_str().unwrap();
        assert!(
            text.starts_with("linnet inject: ") && text.contains(warning),
            "{text:?} should say {warning:?}"
        );
        // The uid is answered when there is one.
        assert_eq!(
            response["uid"],
            review["request"]["uid"].as_str().unwrap_or("")
        );
    }
}

#[tokio::test]
async fn fail_closed_denies_a_malformed_review() {
    let webhook = Webhook::start(|o| o.fail_closed = true).await;
    for (review, warning) in malformed() {
        let (status, body) = webhook
            .post("/inject", serde_json::to_vec(&review).unwrap())
            .await;
        assert_eq!(status, StatusCode::OK);
        let response = &serde_json::from_slice::<Value>(&body).unwrap()["response"];
        assert_eq!(response["allowed"], false, "{response}");
        assert!(response.get("warnings").is_none(), "{response}");
        let message = response["status"]["message"].as_str().unwrap();
        assert!(
            message.contains(warning),
            "{message:?} should say {warning:?}"
        );
    }
    // What it can serve, it still serves.
    let response = webhook
        .review(pod(json!({"linnet.io/inject": "enabled"})), "demo")
        .await;
    assert!(patch_of(&response).is_some());
}

#[tokio::test]
async fn a_body_that_is_no_review_is_a_bad_request() {
    let webhook = Webhook::start(|_| {}).await;
    for body in [&b"not json"[..], b"[1, 2]", b""] {
        let (status, text) = webhook.post("/inject", body.to_vec()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let text = String::from_utf8(text.to_vec()).unwrap();
        assert!(text.contains("not an AdmissionReview"), "{text}");
    }
    let (status, _) = webhook.post("/elsewhere", b"{}".to_vec()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_oversized_body_is_refused() {
    let webhook = Webhook::start(|o| o.max_body = 16 * 1024).await;
    let mut pod = pod(json!({"linnet.io/inject": "enabled"}));
    pod["metadata"]["annotations"]["padding"] = json!("x".repeat(32 * 1024));
    let (status, _) = webhook
        .post("/inject", serde_json::to_vec(&review(pod, "demo")).unwrap())
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed_at_once_and_counted() {
    use std::time::Duration;
    use tokio::io::AsyncReadExt as _;
    let webhook = Webhook::start(|o| o.max_connections = 1).await;
    // The first connection is served, and held open.
    let first = webhook.connect().await.unwrap();
    assert_eq!(
        webhook
            .scrape()
            .await
            .sum("inject_webhook_connections", &[]),
        1.0
    );
    // A second one is accepted, then closed before any TLS, and counted.
    let mut second = tokio::net::TcpStream::connect(webhook.addr).await.unwrap();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf))
        .await
        .expect("closed at once, not left waiting");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let scrape = webhook.scrape().await;
    assert_eq!(
        scrape.sum("inject_webhook_connections_refused_total", &[]),
        1.0
    );
    // Once the first is closed, a new connection is served again (its task
    // is reaped when the next one is accepted, so allow a few tries).
    drop(first);
    linnet_test_support::eventually(
        "the slot to be given back",
        Duration::from_secs(5),
        || async { webhook.connect().await.ok() },
    )
    .await;
}
