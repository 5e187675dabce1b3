//! The webhook's metrics, scraped from its admin server (as
//! `linnet inject --serve --admin-listen` serves them) after real HTTPS
//! requests: each outcome moves its own counter, and only that one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use http::StatusCode;
use linnet_test_support::metrics::{Scrape, http};
use serde_json::json;
use support::webhook::{Webhook, injected, pod, review};

const REVIEWS: &str = "inject_webhook_reviews_total";
const MALFORMED: &str = "inject_webhook_malformed_requests_total";

fn reviews(scrape: &Scrape, outcome: &str, reason: &str) -> f64 {
    scrape.sum(REVIEWS, &[("outcome", outcome), ("reason", reason)])
}

#[tokio::test]
async fn every_review_is_counted_by_outcome_and_timed() {
    let webhook = Webhook::start(|_| {}).await;
    assert_eq!(http(webhook.admin, "GET", "/ready", "").await.0, 200);
    assert_eq!(http(webhook.admin, "GET", "/live", "").await.0, 200);
    let before = webhook.scrape().await;
    assert_eq!(before.sum(REVIEWS, &[]), 0.0);
    assert!(
        before.0.contains("process_cpu_seconds_total"),
        "{}",
        before.0
    );

    let enabled = pod(json!({"linnet.io/inject": "enabled"}));
    webhook.review(enabled.clone(), "demo").await;
    webhook.review(enabled, "demo").await;
    webhook.review(pod(json!({})), "demo").await;
    webhook
        .review(pod(json!({"linkerd.io/inject": "disabled"})), "demo")
        .await;
    let once = serde_json::to_value(injected(&pod(json!({})))).unwrap();
    let mut once = once;
    once["metadata"]["annotations"]["linnet.io/inject"] = json!("enabled");
    webhook.review(once, "demo").await;
    let mut update = review(pod(json!({"linnet.io/inject": "enabled"})), "demo");
    update["request"]["operation"] = json!("UPDATE");
    webhook
        .post("/inject", serde_json::to_vec(&update).unwrap())
        .await;
    let mut bad = pod(json!({"linnet.io/inject": "enabled"}));
    bad["metadata"]["annotations"]["config.linkerd.io/proxy-uid"] = json!("0");
    webhook.review(bad, "demo").await;
    webhook
        .post(
            "/inject",
            serde_json::to_vec(&json!({"kind": "Pod"})).unwrap(),
        )
        .await;

    let s = webhook.scrape().await;
    assert_eq!(reviews(&s, "injected", ""), 2.0);
    assert_eq!(reviews(&s, "skipped", "not_opted_in"), 1.0);
    assert_eq!(reviews(&s, "skipped", "disabled"), 1.0);
    assert_eq!(reviews(&s, "skipped", "already_injected"), 1.0);
    assert_eq!(reviews(&s, "skipped", "not_create"), 1.0);
    assert_eq!(reviews(&s, "failed_allowed", "bad_annotation"), 1.0);
    assert_eq!(reviews(&s, "failed_allowed", "malformed_review"), 1.0);
    assert_eq!(s.sum(REVIEWS, &[("outcome", "failed_denied")]), 0.0);
    assert_eq!(s.sum(REVIEWS, &[]), 8.0);
    // Every review answered is timed.
    assert_eq!(
        s.sum("inject_webhook_review_duration_seconds_count", &[]),
        8.0
    );
    assert_eq!(s.sum(MALFORMED, &[]), 0.0);
    // No namespace look-up without a lookup configured.
    assert_eq!(s.sum("inject_webhook_namespace_lookups_total", &[]), 0.0);
}

#[tokio::test]
async fn fail_closed_denials_are_counted_apart() {
    let webhook = Webhook::start(|o| o.fail_closed = true).await;
    let mut deployment = review(pod(json!({})), "demo");
    deployment["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    let (status, _) = webhook
        .post("/inject", serde_json::to_vec(&deployment).unwrap())
        .await;
    assert_eq!(status, StatusCode::OK);
    let s = webhook.scrape().await;
    assert_eq!(reviews(&s, "failed_denied", "not_a_pod"), 1.0);
    assert_eq!(s.sum(REVIEWS, &[("outcome", "failed_allowed")]), 0.0);
}

#[tokio::test]
async fn requests_that_are_no_review_are_counted_by_reason() {
    let webhook = Webhook::start(|o| o.max_body = 1024).await;
    webhook.post("/inject", b"not json".to_vec()).await;
    webhook.post("/inject", b"[1]".to_vec()).await;
    webhook.post("/inject", vec![b' '; 4096]).await;
    webhook.post("/elsewhere", b"{}".to_vec()).await;
    let (status, _) = webhook.request("GET", "/inject", Vec::new()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    let s = webhook.scrape().await;
    let malformed = |reason| s.sum(MALFORMED, &[("reason", reason)]);
    assert_eq!(malformed("not_a_review"), 2.0);
    assert_eq!(malformed("too_large"), 1.0);
    assert_eq!(malformed("not_found"), 1.0);
    assert_eq!(malformed("method_not_allowed"), 1.0);
    assert_eq!(s.sum(REVIEWS, &[]), 0.0);
}

#[tokio::test]
async fn failed_tls_handshakes_are_counted() {
    use tokio::io::AsyncWriteExt as _;
    let webhook = Webhook::start(|_| {}).await;
    let mut tcp = tokio::net::TcpStream::connect(webhook.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    linnet_test_support::eventually(
        "the handshake failure to be counted",
        std::time::Duration::from_secs(5),
        || async {
            let s = webhook.scrape().await;
            let n = s.sum(
                "inject_webhook_tls_handshakes_failed_total",
                &[("reason", "error")],
            );
            (n == 1.0).then_some(())
        },
    )
    .await;
}
