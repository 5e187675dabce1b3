//! The proxy and `linnet control` off loopback: linkerd2-proxy's rule.
//! A control plane on a non-loopback address is spoken to only over TLS
//! that verifies its identity (`*_SVC_NAME`): with the right names the
//! proxy is certified and follows endpoints; with a wrong one it refuses
//! to talk (no certificate, no endpoints, the reason logged and counted).
//!
//! The non-loopback address is one added to `lo` for the test (root
//! only, as in CI); without root the tests say they are skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use linnet_app::OrigDst;
use linnet_test_support::{
    addr::ExtraAddr,
    control::ControlPlane,
    eventually,
    http::{HttpServer, collect, h1_client},
    metrics::try_http,
    proxy::Proxy,
};
use std::{net::SocketAddr, time::Duration};

const VIP: &str = "10.96.0.1:80";
const ID: &str = "web.test.serviceaccount.identity.linkerd.cluster.local";
const DST_NAME: &str = "linkerd-destination.linkerd.serviceaccount.identity.linkerd.cluster.local";
const ID_NAME: &str = "linkerd-identity.linkerd.serviceaccount.identity.linkerd.cluster.local";

fn mesh(backend: SocketAddr) -> String {
    format!(
        "identity:\n  tokens:\n    {ID}: secret\nservices:\n  web.test.svc.cluster.local:80:\n    addresses: [\"{VIP}\"]\n    endpoints:\n      - addr: \"{backend}\"\n"
    )
}

/// A proxy whose control plane is `plane`, expected to be `dst_name`
/// (Destination) and `id_name` (Identity).
async fn proxy(plane: &ControlPlane, dst_name: &str, id_name: &str) -> Proxy {
    let token = plane.dir().join("token");
    std::fs::write(&token, "secret").unwrap();
    let (addr, anchors, token) = (
        plane.addr.to_string(),
        plane.trust_anchors(),
        token.display().to_string(),
    );
    Proxy::start(
        OrigDst::Fixed(VIP.parse().unwrap()),
        &[
            ("LINNET_DESTINATION_SVC_ADDR", &addr),
            ("LINNET_DESTINATION_SVC_NAME", dst_name),
            ("LINNET_IDENTITY_SVC_ADDR", &addr),
            ("LINNET_IDENTITY_SVC_NAME", id_name),
            ("LINNET_IDENTITY_LOCAL_NAME", ID),
            ("LINNET_IDENTITY_TOKEN_FILE", &token),
            ("LINNET_IDENTITY_TRUST_ANCHORS", &anchors),
            ("LINNET_DISCOVERY_INITIAL_WAIT", "300ms"),
            ("LINNET_OUTBOUND_CONNECT_TIMEOUT", "300ms"),
        ],
    )
    .await
}

async fn ready(p: &Proxy) -> u16 {
    try_http(p.admin, "GET", "/ready", "").await.unwrap().0
}

async fn get(p: &Proxy) -> u16 {
    let rsp = h1_client()
        .get(format!("http://{}/status/200", p.outbound).parse().unwrap())
        .await
        .unwrap();
    collect(rsp).await.0.as_u16()
}

#[tokio::test]
async fn certified_and_discovered_over_tls_off_loopback() {
    let Some(extra) = ExtraAddr::add() else {
        println!("SKIPPED certified_and_discovered_over_tls_off_loopback: needs root");
        return;
    };
    let backend = HttpServer::start().await;
    let plane = ControlPlane::start_at(SocketAddr::new(extra.ip, 0), &mesh(backend.addr)).await;
    let p = proxy(&plane, DST_NAME, ID_NAME).await;
    eventually("certified over TLS", Duration::from_secs(10), || async {
        (ready(&p).await == 200).then_some(())
    })
    .await;
    // The service's endpoint, from Destination over TLS.
    eventually(
        "routed to the discovered endpoint",
        Duration::from_secs(10),
        || async { (get(&p).await == 200 && !backend.seen().is_empty()).then_some(()) },
    )
    .await;
    let m = p.metrics().await;
    assert!(
        m.sum("identity_cert_refresh_total", &[("result", "ok")]) >= 1.0,
        "{}",
        m.0
    );
    assert_eq!(
        m.sum("control_client_tls_errors_total", &[]),
        0.0,
        "{}",
        m.0
    );
}

#[tokio::test]
async fn refuses_a_control_plane_with_the_wrong_name() {
    let Some(extra) = ExtraAddr::add() else {
        println!("SKIPPED refuses_a_control_plane_with_the_wrong_name: needs root");
        return;
    };
    let backend = HttpServer::start().await;
    let plane = ControlPlane::start_at(SocketAddr::new(extra.ip, 0), &mesh(backend.addr)).await;
    let wrong = "linkerd-destination.evil.serviceaccount.identity.linkerd.cluster.local";
    let wrong_id = "linkerd-identity.evil.serviceaccount.identity.linkerd.cluster.local";
    let p = proxy(&plane, wrong, wrong_id).await;
    // A request makes the proxy ask Destination; neither service is
    // spoken to.
    let status = get(&p).await;
    eventually(
        "both handshakes refused for the name",
        Duration::from_secs(10),
        || async {
            let m = p.metrics().await;
            let refused = |service| {
                m.sum(
                    "control_client_tls_errors_total",
                    &[("service", service), ("reason", "wrong_name")],
                ) >= 1.0
            };
            (refused("identity") && refused("destination")).then_some(())
        },
    )
    .await;
    assert_ne!(status, 200);
    assert!(backend.seen().is_empty(), "no endpoints were learnt");
    assert_eq!(ready(&p).await, 503, "never certified");
    let m = p.metrics().await;
    assert_eq!(
        m.sum("identity_cert_refresh_total", &[("result", "ok")]),
        0.0
    );
    assert_eq!(m.sum("control_client_updates_total", &[]), 0.0, "{}", m.0);
}
