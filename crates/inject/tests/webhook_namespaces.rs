//! The webhook reads a pod's namespace from the Kubernetes API server (a
//! stand-in over HTTPS on loopback) for the annotations it lends its
//! pods, and goes on without them, warning, when the API server fails,
//! hangs, or answers something else.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use linnet_inject::{
    Namespaces,
    webhook::{LookupOptions, NamespaceLookup},
};
use serde_json::{Value, json};
use std::time::Duration;
use support::{
    api_server::{Answer, Asked, FakeApiServer, TOKEN},
    webhook::{TestCa, Webhook, injected_in, patch_of, patched, pod_in, warnings},
};

const LOOKUPS: &str = "inject_webhook_namespace_lookups_total";

/// A webhook reading namespaces from `api`, with `options`.
async fn webhook(api: &FakeApiServer, options: LookupOptions, inject_all: bool) -> Webhook {
    let lookup = NamespaceLookup::new(api.api.clone(), options);
    Webhook::start(move |o| {
        o.namespaces = Some(lookup);
        o.inject_all = inject_all;
    })
    .await
}

/// Namespaces holding `name` with `annotations`, as `inject_in` takes them.
fn namespaces(name: &str, annotations: &Value) -> Namespaces {
    let mut n = Namespaces::default();
    let pairs = annotations.as_object().unwrap().iter();
    n.insert(
        name,
        pairs.map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string())),
    );
    n
}

#[tokio::test]
async fn a_namespace_lends_its_pods_its_opt_in_and_settings() {
    let api = FakeApiServer::start().await;
    let shop = json!({
        "linkerd.io/inject": "enabled",
        "config.linkerd.io/proxy-cpu-limit": "2",
        "config.linnet.io/skip-subnets": "10.96.0.0/12",
        "config.linkerd.io/proxy-log-level": "debug",
        "owner.example.com/team": "shop",
    });
    api.set("shop", Answer::Namespace(shop.clone()));
    api.set("plain", Answer::Namespace(json!({})));
    let webhook = webhook(&api, LookupOptions::default(), false).await;

    // A pod with no annotation of its own is injected with the
    // namespace's settings, exactly as `linnet inject` does with them.
    let bare = pod_in("shop", json!({}));
    let response = webhook.review(bare.clone(), "shop").await;
    assert!(warnings(&response).is_empty(), "{response}");
    let pod = patched(&bare, &response);
    assert_eq!(pod, injected_in(&bare, &namespaces("shop", &shop)));
    let proxy = pod
        .spec
        .as_ref()
        .unwrap()
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == "linnet-proxy")
        .unwrap();
    let limits = proxy.resources.as_ref().unwrap().limits.as_ref().unwrap();
    assert_eq!(limits["cpu"].0, "2");

    // The pod's own annotations win.
    let own = pod_in("shop", json!({"config.linkerd.io/proxy-cpu-limit": "3"}));
    let pod = patched(&own, &webhook.review(own.clone(), "shop").await);
    assert_eq!(pod, injected_in(&own, &namespaces("shop", &shop)));
    let disabled = pod_in("shop", json!({"linnet.io/inject": "disabled"}));
    assert_eq!(patch_of(&webhook.review(disabled, "shop").await), None);

    // A namespace without the annotation does not opt its pods in.
    let response = webhook.review(pod_in("plain", json!({})), "plain").await;
    assert_eq!(patch_of(&response), None);

    // Asked once per namespace (then cached), as the service account.
    assert_eq!(
        api.asked(),
        [
            Asked {
                path: "/api/v1/namespaces/shop".to_string(),
                authorization: Some(format!("Bearer {TOKEN}")),
            },
            Asked {
                path: "/api/v1/namespaces/plain".to_string(),
                authorization: Some(format!("Bearer {TOKEN}")),
            },
        ]
    );
    let s = webhook.scrape().await;
    assert_eq!(s.sum(LOOKUPS, &[("outcome", "fetched")]), 2.0);
    assert_eq!(s.sum(LOOKUPS, &[("outcome", "cached")]), 2.0);
    assert_eq!(s.sum(LOOKUPS, &[]), 4.0);
    let injected = s.sum("inject_webhook_reviews_total", &[("outcome", "injected")]);
    assert_eq!(injected, 2.0);
}

#[tokio::test]
async fn a_namespace_disabled_keeps_its_pods_out_even_with_inject_all() {
    let api = FakeApiServer::start().await;
    api.set(
        "quiet",
        Answer::Namespace(json!({"linnet.io/inject": "disabled"})),
    );
    let webhook = webhook(&api, LookupOptions::default(), true).await;
    let response = webhook.review(pod_in("quiet", json!({})), "quiet").await;
    assert_eq!(patch_of(&response), None);
    // The pod's own enabled wins.
    let pod = pod_in("quiet", json!({"linkerd.io/inject": "enabled"}));
    assert!(patch_of(&webhook.review(pod, "quiet").await).is_some());
    let s = webhook.scrape().await;
    let skipped = s.sum(
        "inject_webhook_reviews_total",
        &[("outcome", "skipped"), ("reason", "disabled")],
    );
    assert_eq!(skipped, 1.0);
}

/// Reviews a pod annotated `enabled` in `namespace`: it is injected on its
/// own annotations, and the response warns that the namespace could not
/// be read, saying `why`.
async fn goes_on_without(webhook: &Webhook, namespace: &str, why: &str) {
    let own = pod_in(
        namespace,
        json!({"linnet.io/inject": "enabled", "config.linkerd.io/proxy-cpu-limit": "3"}),
    );
    let response = webhook.review(own.clone(), namespace).await;
    let pod = patched(&own, &response);
    assert_eq!(pod, injected_in(&own, &Namespaces::default()));
    let warnings = warnings(&response);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with(&format!(
            "linnet inject: the annotations of namespace {namespace} could not be read ("
        )) && warnings[0].contains(why),
        "{:?} should say {why:?}",
        warnings[0]
    );
}

#[tokio::test]
async fn a_failing_api_server_costs_a_warning_not_the_pod() {
    let api = FakeApiServer::start().await;
    api.set("forbidden", Answer::Status(403));
    api.set("garbage", Answer::Garbage);
    api.set("huge", Answer::Huge(64 * 1024));
    let options = LookupOptions {
        max_response: 16 * 1024,
        ..Default::default()
    };
    let webhook = webhook(&api, options, false).await;
    goes_on_without(
        &webhook,
        "forbidden",
        "answered GET namespace forbidden with 403 Forbidden",
    )
    .await;
    goes_on_without(&webhook, "garbage", "is not a Namespace").await;
    goes_on_without(&webhook, "huge", "at most 16384 bytes").await;
    goes_on_without(&webhook, "missing", "404 Not Found").await;
    // A failure is not cached: the next pod asks again.
    goes_on_without(&webhook, "forbidden", "403").await;
    assert_eq!(api.count("forbidden"), 2);
    let s = webhook.scrape().await;
    assert_eq!(s.sum(LOOKUPS, &[("outcome", "error")]), 5.0);
    assert_eq!(s.sum(LOOKUPS, &[]), 5.0);
    let injected = s.sum("inject_webhook_reviews_total", &[("outcome", "injected")]);
    assert_eq!(injected, 5.0);
}

#[tokio::test]
async fn a_hanging_api_server_is_given_up_on_after_the_timeout() {
    let api = FakeApiServer::start().await;
    api.set("stuck", Answer::Hang);
    let options = LookupOptions {
        timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let lookup = NamespaceLookup::new(api.api.clone(), options);
    // Even fail-closed: a namespace not read is a warning, not a denial.
    let webhook = Webhook::start(move |o| {
        o.namespaces = Some(lookup);
        o.fail_closed = true;
    })
    .await;
    goes_on_without(&webhook, "stuck", "did not answer within 300ms").await;
    let s = webhook.scrape().await;
    assert_eq!(s.sum(LOOKUPS, &[("outcome", "timeout")]), 1.0);
    assert_eq!(api.count("stuck"), 1);
}

#[tokio::test]
async fn an_api_server_the_ca_does_not_vouch_for_is_not_believed() {
    let (serving, trusted) = (TestCa::new(), TestCa::new());
    let api = FakeApiServer::start_with(&serving, &trusted).await;
    api.set(
        "shop",
        Answer::Namespace(json!({"linkerd.io/inject": "enabled"})),
    );
    let webhook = webhook(&api, LookupOptions::default(), false).await;
    goes_on_without(
        &webhook,
        "shop",
        "TLS handshake with the Kubernetes API server",
    )
    .await;
    // Never asked: the handshake failed before any request.
    assert!(api.asked().is_empty());
}

#[tokio::test]
async fn credentials_are_read_again_for_each_read() {
    let api = FakeApiServer::start().await;
    api.set(
        "shop",
        Answer::Namespace(json!({"linkerd.io/inject": "enabled"})),
    );
    // Nothing cached: every review reads the namespace.
    let options = LookupOptions {
        cache_ttl: Duration::ZERO,
        ..Default::default()
    };
    let webhook = webhook(&api, options, false).await;
    let pod = pod_in("shop", json!({}));
    assert!(patch_of(&webhook.review(pod.clone(), "shop").await).is_some());
    api.rotate_token("rotated-token");
    assert!(patch_of(&webhook.review(pod, "shop").await).is_some());
    let tokens: Vec<_> = api
        .asked()
        .into_iter()
        .map(|a| a.authorization.unwrap())
        .collect();
    assert_eq!(
        tokens,
        [
            format!("Bearer {TOKEN}"),
            "Bearer rotated-token".to_string()
        ]
    );
    // A namespace name that is not one is never asked for.
    let mut odd = pod_in("shop", json!({}));
    odd["metadata"]["namespace"] = json!("../../secrets");
    let response = webhook.review(odd, "shop").await;
    assert!(
        warnings(&response)[0].contains("is not a namespace name"),
        "{response}"
    );
    assert_eq!(api.asked().len(), 2);
}
