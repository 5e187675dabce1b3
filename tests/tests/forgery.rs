//! No forged identity reaches an application: on every inbound path that
//! serves HTTP (a redirected connection, terminated mesh mTLS, the
//! transport port with an HTTP session protocol) the application sees the
//! client's verified identity in `l5d-client-id`, or none, never the
//! client's own; and bytes that would carry a request past the proxy's
//! HTTP handling (empty lines before it, or waiting out protocol
//! detection on a port whose policy says HTTP) do not.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use linnet_app::OrigDst;
use linnet_test_support::{control::ControlPlane, eventually, http::HttpServer, proxy::Proxy};
use linnet_tls::pki_types::ServerName;
use std::{sync::Arc, time::Duration};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const SERVER: &str = "web.test.serviceaccount.identity.linkerd.cluster.local";
const CLIENT: &str = "app.test.serviceaccount.identity.linkerd.cluster.local";
const FORGED: &str = "admin.kube-system.serviceaccount.identity.linkerd.cluster.local";

fn tokens() -> String {
    format!("identity:\n  tokens:\n    {SERVER}: s\n    {CLIENT}: c\n")
}

/// Sends `request` (raw bytes) and reads the response head's status line.
async fn raw_request<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, request: &[u8]) -> String {
    s.write_all(request).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(n @ 1..)) => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn forged_get(extra: &str) -> Vec<u8> {
    format!("{extra}GET /forgery HTTP/1.1\r\nhost: web\r\nl5d-client-id: {FORGED}\r\nL5D-Client-Id: {FORGED}\r\nl5d-orig-proto: HTTP/1.1\r\n\r\n").into_bytes()
}

/// The `l5d-client-id` values the application saw on its requests for
/// `/forgery`, one list per request.
fn client_ids(app: &HttpServer) -> Vec<Vec<String>> {
    app.seen()
        .iter()
        .filter(|s| s.uri.path() == "/forgery")
        .map(|s| {
            s.headers
                .get_all("l5d-client-id")
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn a_redirected_plaintext_client_cannot_claim_an_identity() {
    let app = HttpServer::start().await;
    let proxy = Proxy::start(OrigDst::Fixed(app.addr), &[]).await;
    // As it comes, and after empty lines (which an HTTP server skips, and
    // which must not make the proxy pass the request on as opaque bytes).
    for extra in ["", "\r\n", "\r\n\r\n\n"] {
        let mut s = tokio::net::TcpStream::connect(proxy.inbound).await.unwrap();
        let status = raw_request(&mut s, &forged_get(extra)).await;
        assert!(status.contains(" 200 "), "{extra:?}: {status}");
    }
    let ids = client_ids(&app);
    assert_eq!(ids.len(), 3);
    assert!(ids.iter().all(Vec::is_empty), "{ids:?}");
    assert!(
        app.seen()
            .iter()
            .all(|s| s.headers.get("l5d-orig-proto").is_none())
    );
}

#[tokio::test]
async fn an_outbound_client_cannot_say_how_its_request_travels() {
    let app = HttpServer::start().await;
    let proxy = Proxy::start(OrigDst::Fixed(app.addr), &[]).await;
    let mut s = tokio::net::TcpStream::connect(proxy.outbound)
        .await
        .unwrap();
    let status = raw_request(&mut s, &forged_get("")).await;
    assert!(status.contains(" 200 "), "{status}");
    let seen = app.seen();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].headers.get("l5d-orig-proto").is_none(),
        "{:?}",
        seen[0].headers
    );
}

#[tokio::test]
async fn terminated_mesh_mtls_carries_only_the_verified_identity() {
    let app = HttpServer::start().await;
    let plane = ControlPlane::start(&tokens()).await;
    let server = plane
        .meshed_proxy(SERVER, "s", OrigDst::Fixed(app.addr), &[])
        .await;
    // A meshed client (a certificate for CLIENT) that dials the pod and
    // sends a request claiming to be someone else.
    let config = common::mesh_client_config(&plane, CLIENT, SERVER, vec![]);
    let tcp = tokio::net::TcpStream::connect(server.inbound)
        .await
        .unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(SERVER).unwrap(), tcp)
        .await
        .unwrap();
    let status = raw_request(&mut tls, &forged_get("")).await;
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(client_ids(&app), vec![vec![CLIENT.to_string()]]);
}

#[tokio::test]
async fn a_transport_header_with_http_is_served_as_http() {
    let app = HttpServer::start().await;
    let plane = ControlPlane::start(&tokens()).await;
    // Connections to the inbound port itself: the transport port.
    let server = plane
        .meshed_proxy(SERVER, "s", OrigDst::from_fn(|s| s.local_addr()), &[])
        .await;
    let config = common::mesh_client_config(
        &plane,
        CLIENT,
        SERVER,
        vec![linnet_transport::header::ALPN.to_vec()],
    );
    let tcp = tokio::net::TcpStream::connect(server.inbound)
        .await
        .unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(SERVER).unwrap(), tcp)
        .await
        .unwrap();
    let header = linnet_transport::header::TransportHeader {
        port: app.addr.port(),
        name: None,
        protocol: Some(linnet_transport::header::SessionProtocol::Http1),
    };
    tls.write_all(&header.encode()).await.unwrap();
    let status = raw_request(&mut tls, &forged_get("")).await;
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(client_ids(&app), vec![vec![CLIENT.to_string()]]);
    let m = server.metrics().await;
    assert!(
        m.sum(
            "request_total",
            &[
                ("direction", "inbound"),
                ("tls", "true"),
                ("client_id", CLIENT)
            ]
        ) >= 1.0,
        "{}",
        m.0
    );
}

#[tokio::test]
async fn an_http_port_does_not_pass_a_slow_client_on_as_bytes() {
    let app = HttpServer::start().await;
    let port = app.addr.port();
    let plane = ControlPlane::start(&format!(
        "{}workloads:\n  web:\n    ports:\n      {port}:\n        protocol: http1\n        authorizations: [{{unauthenticated: true}}]\n",
        tokens()
    ))
    .await;
    let addr = plane.addr.to_string();
    let server = plane
        .meshed_proxy(
            SERVER,
            "s",
            OrigDst::Fixed(app.addr),
            &[
                ("LINNET_POLICY_SVC_ADDR", &addr),
                ("LINNET_POLICY_WORKLOAD", "web"),
            ],
        )
        .await;
    // Once the port's policy is in force, what is not HTTP is refused.
    eventually("the port's policy", Duration::from_secs(10), || async {
        let mut s = tokio::net::TcpStream::connect(server.inbound).await.ok()?;
        let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await;
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
        .then_some(())
    })
    .await;
    // A client that waits out the detect timeout (1s here) before its
    // request: the proxy closes the connection rather than relaying it.
    let mut s = tokio::net::TcpStream::connect(server.inbound)
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0) | Err(_))), "{closed:?}");
    let _ = s.write_all(&forged_get("")).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
    assert!(client_ids(&app).is_empty(), "the request reached the app");
    let m = server.metrics().await;
    assert!(
        m.sum(
            "tcp_close_total",
            &[("direction", "inbound"), ("error", "not_http")]
        ) >= 2.0,
        "{}",
        m.0
    );
}
