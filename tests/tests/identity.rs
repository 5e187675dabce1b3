//! The proxy's workload identity against `linnet control`'s CA: not ready
//! until certified, certified with the right token, never with a wrong one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use linnet_app::OrigDst;
use linnet_test_support::{control::ControlPlane, eventually, metrics::try_http, proxy::Proxy};
use std::time::Duration;

const ID: &str = "web.test.serviceaccount.identity.linkerd.cluster.local";

async fn proxy(plane: &ControlPlane, token: &str) -> Proxy {
    let token_file = plane.dir().join(format!("token-{token}"));
    std::fs::write(&token_file, token).unwrap();
    let addr = plane.addr.to_string();
    let anchors = plane.trust_anchors();
    let token_file = token_file.display().to_string();
    Proxy::start(
        OrigDst::Fixed("127.0.0.1:9".parse().unwrap()),
        &[
            ("LINNET_IDENTITY_SVC_ADDR", &addr),
            ("LINNET_IDENTITY_LOCAL_NAME", ID),
            ("LINNET_IDENTITY_TOKEN_FILE", &token_file),
            ("LINNET_IDENTITY_TRUST_ANCHORS", &anchors),
        ],
    )
    .await
}

async fn ready(p: &Proxy) -> u16 {
    try_http(p.admin, "GET", "/ready", "").await.unwrap().0
}

#[tokio::test]
async fn ready_once_certified() {
    let plane = ControlPlane::start(&format!("identity:\n  tokens:\n    {ID}: right\n")).await;
    let p = proxy(&plane, "right").await;
    eventually("certified and ready", Duration::from_secs(10), || async {
        (ready(&p).await == 200).then_some(())
    })
    .await;
    let m = p.metrics().await;
    assert!(
        m.sum("identity_cert_refresh_total", &[("result", "ok")]) >= 1.0,
        "{}",
        m.0
    );
    let expiry = m.sum("identity_cert_expiration_timestamp_seconds", &[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    // The control plane's default lifetime is a day.
    assert!(expiry > now + 23.0 * 3600.0, "{expiry} vs {now}");
}

#[tokio::test]
async fn never_ready_with_a_wrong_token() {
    let plane = ControlPlane::start(&format!("identity:\n  tokens:\n    {ID}: right\n")).await;
    let p = proxy(&plane, "wrong").await;
    eventually(
        "a refused certification",
        Duration::from_secs(10),
        || async {
            let m = p.metrics().await;
            (m.sum("identity_cert_refresh_total", &[("result", "rpc_error")]) >= 1.0).then_some(())
        },
    )
    .await;
    assert_eq!(ready(&p).await, 503);
}

#[tokio::test]
async fn not_ready_while_the_certificate_has_expired() {
    // Certificates live 2s; the proxy renews only every 4s, so for about
    // two seconds of every four it holds an expired one.
    let plane = ControlPlane::start(&format!(
        "identity:\n  certificate_lifetime: 2s\n  clock_skew_allowance: 0s\n  tokens:\n    {ID}: right\n"
    ))
    .await;
    let p = plane
        .meshed_proxy_unready(
            ID,
            "right",
            OrigDst::Fixed("127.0.0.1:9".parse().unwrap()),
            &[
                ("LINNET_IDENTITY_MIN_REFRESH", "4s"),
                ("LINNET_IDENTITY_MAX_REFRESH", "4s"),
            ],
        )
        .await;
    eventually("certified and ready", Duration::from_secs(10), || async {
        (ready(&p).await == 200).then_some(())
    })
    .await;
    eventually(
        "not ready once the certificate expired",
        Duration::from_secs(10),
        || async { (ready(&p).await == 503).then_some(()) },
    )
    .await;
    eventually(
        "ready again once renewed",
        Duration::from_secs(10),
        || async { (ready(&p).await == 200).then_some(()) },
    )
    .await;
}
