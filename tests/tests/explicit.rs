//! Explicit HTTP proxy mode: a client that dials the outbound listener
//! itself (`curl -x`) has its requests routed by their authority.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use linnet_app::OrigDst;
use linnet_test_support::{
    http::{HttpServer, curl, pattern},
    proxy::Proxy,
};

/// A proxy whose connections are never redirected: the lookup reports
/// the listener's own address, as the kernel does without iptables.
async fn unredirected() -> Proxy {
    Proxy::start(OrigDst::from_fn(|s| s.local_addr()), &[]).await
}

#[tokio::test]
async fn curl_x_routes_by_the_request_uri() {
    let server = HttpServer::start().await;
    let proxy = unredirected().await;
    let p = format!("http://{}", proxy.outbound);
    let (body, _) = curl(&["-x", &p, &format!("http://{}/bytes/7", server.addr)]).await;
    assert_eq!(body.as_bytes(), &pattern(7)[..]);
    // The target got an origin-form request with the client's Host.
    let seen = server.seen();
    assert_eq!(seen[0].uri, "/bytes/7");
    assert_eq!(seen[0].headers["host"], server.addr.to_string());
    let m = proxy.metrics().await;
    let target = server.addr.to_string();
    let labels = [
        ("direction", "outbound"),
        ("target_addr", target.as_str()),
        ("status_code", "200"),
    ];
    assert_eq!(m.sum("response_total", &labels), 1.0, "{}", m.0);
}

#[tokio::test]
async fn connect_opens_a_tunnel() {
    let server = HttpServer::start().await;
    let proxy = unredirected().await;
    let p = format!("http://{}", proxy.outbound);
    let (body, verbose) = curl(&["-v", "-p", "-x", &p, &format!("http://{}/", server.addr)]).await;
    assert_eq!(body, "hello");
    assert!(verbose.contains("CONNECT"), "{verbose}");
}

#[tokio::test]
async fn a_request_for_the_proxy_itself_is_508() {
    let proxy = unredirected().await;
    let p = format!("http://{}", proxy.outbound);
    let port = proxy.outbound.port();
    // The listener's own address, and other spellings that reach it.
    let selves = [
        format!("{p}/"),
        format!("http://0.0.0.0:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
    ];
    for url in &selves {
        let (code, _) = curl(&["-o", "/dev/null", "-w", "%{http_code}", "-x", &p, url]).await;
        assert_eq!(code, "508", "{url}");
    }
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum(
            "response_total",
            &[("error", "loop"), ("status_code", "508")]
        ),
        4.0,
        "{}",
        m.0
    );
}
