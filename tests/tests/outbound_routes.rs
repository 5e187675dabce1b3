//! Outbound routes of every kind end to end, with `linnet control`: gRPC
//! routes by service and method, TLS routes by SNI, a forbidden opaque
//! route, a declared protocol served without detection, and the penalty
//! balancer backing off from an endpoint that answers 429.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use http_body_util::Full;
use linnet_test_support::{
    backend::{Backend, Behavior},
    control::ControlPlane,
    http::{collect, h1_client, h2_client},
    proxy::Proxy,
};
use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

const VIP: &str = "10.96.0.1:80";
const PARENT: &str = "web.test.svc.cluster.local:80";

/// The parent service at the VIP, with `policy` (indented under it) and
/// `others` (more services).
fn mesh(endpoints: &[SocketAddr], policy: &str, others: &str) -> String {
    let mut y = format!("services:\n  {PARENT}:\n    addresses: [\"{VIP}\"]\n");
    if endpoints.is_empty() {
        y.push_str("    endpoints: []\n");
    } else {
        y.push_str("    endpoints:\n");
        for e in endpoints {
            writeln!(y, "      - addr: \"{e}\"").unwrap();
        }
    }
    y.push_str("    policy:\n");
    for line in policy.lines() {
        writeln!(y, "      {line}").unwrap();
    }
    y.push_str(others);
    y
}

fn service(name: &str, endpoints: &[SocketAddr]) -> String {
    let mut y = format!("  {name}:\n    endpoints:\n");
    for e in endpoints {
        writeln!(y, "      - addr: \"{e}\"").unwrap();
    }
    y
}

async fn proxy_for(plane: &ControlPlane) -> Proxy {
    plane.policy_proxy(VIP.parse().unwrap()).await
}

#[tokio::test]
async fn grpc_routes_match_service_and_method() {
    let items = Backend::start("items").await;
    let other = Backend::start("other").await;
    let policy = "protocol: grpc\nroutes:\n  - name: get-item\n    matches: [{service: shop.Items, method: GetItem}]\n    backends: [{service: \"items.test.svc.cluster.local:80\", weight: 1}]\n  - name: shop\n    matches: [{service: shop.Other}]\n    backends: [{service: \"other.test.svc.cluster.local:80\", weight: 1}]\n";
    let others = service("items.test.svc.cluster.local:80", &[items.addr])
        + &service("other.test.svc.cluster.local:80", &[other.addr]);
    let plane = ControlPlane::start(&mesh(&[], policy, &others)).await;
    let proxy = proxy_for(&plane).await;
    let client = h2_client();
    let call = |path: &str| {
        http::Request::post(format!("http://{}{path}", proxy.outbound))
            .header("content-type", "application/grpc")
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
            .unwrap()
    };
    let backend = |h: &http::HeaderMap| h.get("x-backend").map(|v| v.to_str().unwrap().to_string());
    let (status, h, _, _) =
        collect(client.request(call("/shop.Items/GetItem")).await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(backend(&h).as_deref(), Some("items"));
    let (_, h, _, _) = collect(client.request(call("/shop.Other/Anything")).await.unwrap()).await;
    assert_eq!(backend(&h).as_deref(), Some("other"));
    // No route: UNIMPLEMENTED, with the reason.
    let (status, h, _, _) =
        collect(client.request(call("/shop.Items/Delete")).await.unwrap()).await;
    assert_eq!(status, 200, "gRPC errors travel as grpc-status");
    assert_eq!(h["grpc-status"], "12", "{h:?}");
    assert!(h["l5d-proxy-error"].to_str().unwrap().contains("no route"));
    assert_eq!(backend(&h), None);
}

/// A TCP server that records the first bytes of each connection.
async fn recorder() -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            let s = s.clone();
            tokio::spawn(async move {
                let mut buf = vec![0; 4096];
                if let Ok(n) = c.read(&mut buf).await {
                    s.lock().unwrap().push(buf[..n].to_vec());
                }
            });
        }
    });
    (addr, seen)
}

/// The first flight of a TLS client naming `sni`.
fn client_hello(sni: &str) -> Vec<u8> {
    use tokio_rustls::rustls;
    let roots = rustls::RootCertStore::empty();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), sni.to_string().try_into().unwrap())
            .unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

/// Sends `bytes` through the proxy; whether the connection was reset
/// (or closed) without an answer is the caller's to judge.
async fn through(proxy: &Proxy, bytes: &[u8]) -> std::io::Result<usize> {
    let mut c = TcpStream::connect(proxy.outbound).await?;
    c.write_all(bytes).await?;
    let mut buf = [0u8; 16];
    tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf))
        .await
        .unwrap_or(Ok(0))
}

#[tokio::test]
async fn tls_routes_pick_backends_by_sni() {
    let (login, login_seen) = recorder().await;
    let (internal, internal_seen) = recorder().await;
    let policy = "protocol: tls\ntls_routes:\n  - name: login\n    snis: [login.example.com]\n    backends: [{service: \"login.test.svc.cluster.local:443\"}]\n  - name: internal\n    snis: [\"*.internal.example.com\"]\n    backends: [{service: \"internal.test.svc.cluster.local:443\"}]\n  - {name: legacy, snis: [old.example.com], forbidden: true}\n";
    let others = service("login.test.svc.cluster.local:443", &[login])
        + &service("internal.test.svc.cluster.local:443", &[internal]);
    let plane = ControlPlane::start(&mesh(&[], policy, &others)).await;
    let proxy = proxy_for(&plane).await;

    let hello = client_hello("login.example.com");
    let _ = through(&proxy, &hello).await;
    let hello2 = client_hello("db.internal.example.com");
    let _ = through(&proxy, &hello2).await;
    linnet_test_support::eventually(
        "both backends got their ClientHello",
        Duration::from_secs(5),
        || async {
            (login_seen.lock().unwrap().len() == 1 && internal_seen.lock().unwrap().len() == 1)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        login_seen.lock().unwrap()[0],
        hello,
        "the bytes arrive as sent"
    );
    assert_eq!(internal_seen.lock().unwrap()[0], hello2);

    // A forbidden route, and a name no route matches: refused, nothing
    // forwarded.
    for sni in ["old.example.com", "other.example.com"] {
        let r = through(&proxy, &client_hello(sni)).await;
        assert!(matches!(r, Ok(0) | Err(_)), "{sni}: {r:?}");
    }
    assert_eq!(login_seen.lock().unwrap().len(), 1);
    assert_eq!(internal_seen.lock().unwrap().len(), 1);
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum(
            "tcp_close_total",
            &[("direction", "outbound"), ("error", "forbidden")]
        ),
        2.0,
        "{}",
        m.0
    );
}

#[tokio::test]
async fn a_forbidden_opaque_route_refuses_the_connection() {
    let (db, seen) = recorder().await;
    let policy = "protocol: opaque\nopaque_routes:\n  - {name: raw, forbidden: true}\n";
    let plane = ControlPlane::start(&mesh(&[db], policy, "")).await;
    let proxy = proxy_for(&plane).await;
    let r = through(&proxy, b"PING\r\n").await;
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    tokio::time::sleep(Duration::from_millis(200)).await; // nothing may arrive late
    assert!(
        seen.lock().unwrap().is_empty(),
        "no byte reached the backend"
    );

    // Allowed, the same bytes go through.
    let policy = "protocol: opaque\nopaque_routes:\n  - {name: raw, backends: [{service: \"web.test.svc.cluster.local:80\"}]}\n";
    plane.write(&mesh(&[db], policy, ""));
    linnet_test_support::eventually("the route allows it", Duration::from_secs(10), || async {
        let _ = through(&proxy, b"PING\r\n").await;
        (!seen.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    assert_eq!(seen.lock().unwrap()[0], b"PING\r\n");
}

#[tokio::test]
async fn a_declared_protocol_is_served_without_detection() {
    let app = Backend::start("app").await;
    let policy = "protocol: http1\nroutes:\n  - {name: all, matches: [{path_prefix: /}]}\n";
    let plane = ControlPlane::start(&mesh(&[app.addr], policy, "")).await;
    let proxy = proxy_for(&plane).await;
    let client = h1_client();
    let rsp = client
        .get(format!("http://{}/", proxy.outbound).parse().unwrap())
        .await
        .unwrap();
    assert_eq!(collect(rsp).await.0, 200);
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum(
            "protocol_detect_total",
            &[
                ("direction", "outbound"),
                ("protocol", "http/1"),
                ("reason", "skipped")
            ]
        ),
        1.0,
        "{}",
        m.0
    );
}

#[tokio::test]
async fn the_penalty_balancer_backs_off_from_429() {
    let ok = Backend::start("ok").await;
    let busy = Backend::start("busy").await;
    busy.set(Behavior {
        fail_percent: 100,
        fail_status: 429,
        ..Default::default()
    });
    let policy = "routes:\n  - name: all\n    matches: [{path_prefix: /}]\n    backends:\n      - service: \"web.test.svc.cluster.local:80\"\n        load: {penalty: {penalty: 1s, max_retry_after: 10s, decay: 10s}}\n";
    let plane = ControlPlane::start(&mesh(&[ok.addr, busy.addr], policy, "")).await;
    let proxy = proxy_for(&plane).await;
    let client = h1_client();
    for _ in 0..400 {
        let rsp = client
            .get(format!("http://{}/", proxy.outbound).parse().unwrap())
            .await
            .unwrap();
        collect(rsp).await;
    }
    let share = busy.served() as f64 / 400.0;
    assert!(
        share < 0.2,
        "the 429 endpoint got {:.0}% of requests",
        share * 100.0
    );
    assert!(ok.served() >= 320);
}

#[tokio::test]
async fn a_grpc_route_timeout_is_deadline_exceeded() {
    let slow = Backend::start("slow").await;
    slow.set(Behavior {
        latency: Duration::from_secs(3),
        ..Default::default()
    });
    let policy = "protocol: grpc\nroutes:\n  - name: slow\n    matches: [{service: shop.Items}]\n    timeouts: {request: 1s}\n";
    let plane = ControlPlane::start(&mesh(&[slow.addr], policy, "")).await;
    let proxy = proxy_for(&plane).await;
    let client = h2_client();
    let call = |timeout: Option<&str>| {
        let mut req = http::Request::post(format!("http://{}/shop.Items/Get", proxy.outbound))
            .header("content-type", "application/grpc");
        if let Some(t) = timeout {
            req = req.header("grpc-timeout", t);
        }
        req.body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
            .unwrap()
    };
    // The route's timeout; then a request's shorter `grpc-timeout` wins
    // (well under the route's second).
    for (timeout, at_least, under) in [(None, 1000, 2900), (Some("100m"), 100, 900)] {
        let start = std::time::Instant::now();
        let (status, h, _, _) = collect(client.request(call(timeout)).await.unwrap()).await;
        let took = start.elapsed();
        assert_eq!(status, 200);
        assert_eq!(h["grpc-status"], "4", "DEADLINE_EXCEEDED: {h:?}");
        assert!(h.contains_key("l5d-proxy-error"));
        assert!(
            took >= Duration::from_millis(at_least) && took < Duration::from_millis(under),
            "{timeout:?}: {took:?}"
        );
    }
}
