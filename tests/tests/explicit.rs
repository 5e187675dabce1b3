//! Explicit HTTP proxy mode: a client that dials the outbound listener
//! itself (`curl -x`) has its requests routed by their authority, names
//! resolved as the system resolves them and every address they resolve
//! to tried (a name in the hosts file: `proxy/tests/hosts_file.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use linnet_app::OrigDst;
use linnet_test_support::{
    control::ControlPlane,
    http::{HttpServer, curl, pattern},
    proxy::Proxy,
};
use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
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

/// Where explicit mode gets a name's addresses.
#[derive(Clone, Copy, Debug)]
enum Resolver {
    /// No control plane: the system's resolver.
    System,
    /// A control plane that does not know the name: its DNS fallback,
    /// whose DNS server here never answers (and counts what it is asked).
    DnsFallback,
}

/// An unredirected proxy resolving names as `resolver` says, the control
/// plane it follows (kept alive), and how many queries its DNS server got.
async fn explicit_with(resolver: Resolver) -> (Proxy, Option<ControlPlane>, Arc<AtomicUsize>) {
    let queries = Arc::new(AtomicUsize::new(0));
    match resolver {
        Resolver::System => (unredirected().await, None, queries),
        Resolver::DnsFallback => {
            let plane = ControlPlane::start("services: {}\n").await;
            let dns = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let dns_addr = dns.local_addr().unwrap().to_string();
            let counter = queries.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 512];
                while dns.recv_from(&mut buf).await.is_ok() {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
            });
            let dst = plane.addr.to_string();
            let proxy = Proxy::start(
                OrigDst::from_fn(|s| s.local_addr()),
                &[
                    ("LINNET_DESTINATION_SVC_ADDR", &dst),
                    ("LINNET_DNS_SERVERS", &dns_addr),
                    // One lookup per name for the whole test.
                    ("LINNET_DNS_MIN_TTL", "10m"),
                    ("LINNET_DNS_MAX_TTL", "10m"),
                ],
            )
            .await;
            (proxy, Some(plane), queries)
        }
    }
}

/// `curl -i -x proxy url`: the status and the `l5d-proxy-error` header.
async fn status_and_error(proxy: &Proxy, url: &str) -> (String, String) {
    let p = format!("http://{}", proxy.outbound);
    let (out, _) = curl(&["-i", "-o", "-", "-x", &p, url]).await;
    let status = out
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_default()
        .to_string();
    let error = out
        .lines()
        .find_map(|l| l.strip_prefix("l5d-proxy-error: "))
        .unwrap_or_default()
        .trim_end()
        .to_string();
    (status, error)
}

#[tokio::test]
async fn localhost_reaches_a_server_on_either_loopback_address() {
    for resolver in [Resolver::System, Resolver::DnsFallback] {
        let (proxy, _plane, dns_queries) = explicit_with(resolver).await;
        let p = format!("http://{}", proxy.outbound);
        // A server on 127.0.0.1 only, and one on [::1] only.
        let v4 = HttpServer::start().await;
        let v6 = HttpServer::start_on(tokio::net::TcpListener::bind("[::1]:0").await.unwrap());
        for server in [&v4, &v6] {
            let url = format!("http://localhost:{}/bytes/7", server.addr.port());
            // curl itself reaches it (it tries both addresses)...
            let (direct, _) = curl(&[&url]).await;
            assert_eq!(direct.as_bytes(), &pattern(7)[..], "{resolver:?} {url}");
            // ...and so does the proxy.
            let (body, _) = curl(&["-x", &p, &url]).await;
            assert_eq!(body.as_bytes(), &pattern(7)[..], "{resolver:?} {url}");
            assert_eq!(server.seen().len(), 2, "{resolver:?} {url}");
            assert_eq!(
                server.seen()[1].headers["host"],
                format!("localhost:{}", server.addr.port())
            );
        }
        let m = proxy.metrics().await;
        let ok = [("direction", "outbound"), ("status_code", "200")];
        assert_eq!(m.sum("response_total", &ok), 2.0, "{}", m.0);
        // One lookup per request (system) or per name and port (the DNS
        // fallback's answers are kept), both answered without asking
        // anyone.
        let localhost = [("source", "localhost"), ("outcome", "resolved")];
        assert_eq!(m.sum("name_resolutions_total", &localhost), 2.0, "{}", m.0);
        assert_eq!(m.sum("name_resolutions_total", &[]), 2.0, "{}", m.0);
        assert_eq!(dns_queries.load(Ordering::SeqCst), 0, "{resolver:?}");
    }
}

#[tokio::test]
async fn when_no_address_accepts_the_error_names_the_name_and_each_address() {
    for resolver in [Resolver::System, Resolver::DnsFallback] {
        let (proxy, _plane, _) = explicit_with(resolver).await;
        // A port nothing listens on, on either loopback address (almost
        // certainly: it was just freed on 127.0.0.1).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://localhost:{port}/");
        let (status, error) = status_and_error(&proxy, &url).await;
        assert_eq!(status, "502", "{resolver:?}");
        for part in [
            format!("localhost:{port}"),
            format!("[::1]:{port}"),
            format!("127.0.0.1:{port}"),
        ] {
            assert!(error.contains(&part), "{resolver:?}: {part} not in {error}");
        }
        let m = proxy.metrics().await;
        let labels = [("error", "connect"), ("status_code", "502")];
        assert_eq!(m.sum("response_total", &labels), 1.0, "{}", m.0);
    }
}

#[tokio::test]
async fn a_name_nobody_knows_is_counted_as_not_resolved() {
    let proxy = unredirected().await;
    // `.invalid` never resolves (RFC 6761); how the system says so
    // (no such name, or a failing DNS server) depends on the machine.
    let (status, error) = status_and_error(&proxy, "http://nowhere.invalid/").await;
    assert_eq!(status, "502");
    assert!(error.contains("nowhere.invalid"), "{error}");
    let m = proxy.metrics().await;
    let resolved = [("source", "system"), ("outcome", "resolved")];
    assert_eq!(m.sum("name_resolutions_total", &resolved), 0.0, "{}", m.0);
    let system = [("source", "system")];
    assert_eq!(m.sum("name_resolutions_total", &system), 1.0, "{}", m.0);
}
