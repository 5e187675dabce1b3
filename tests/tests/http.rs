//! HTTP through the proxy: each case is sent directly and through the
//! proxy, and the answers compared.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use linnet_app::OrigDst;
use linnet_test_support::{
    eventually,
    http::{HttpServer, collect, h1_client, h2_client, pattern},
    proxy::Proxy,
};
use std::{net::SocketAddr, time::Duration};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

fn req(method: Method, addr: SocketAddr, path: &str, body: Bytes) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("x-keep", "end-to-end")
        .header("connection", "x-hop")
        .header("x-hop", "hop-by-hop")
        .body(Full::new(body))
        .unwrap()
}

#[tokio::test]
async fn http1_requests_are_transparent() {
    let server = HttpServer::start().await;
    let proxy = Proxy::start(OrigDst::Fixed(server.addr), &[]).await;
    let client = h1_client();
    let mib = pattern(1024 * 1024);
    let cases = [
        (Method::GET, "/", Bytes::new()),
        (Method::GET, "/bytes/0", Bytes::new()),
        (Method::GET, "/bytes/100000", Bytes::new()),
        (Method::POST, "/echo", mib.clone()),
        (Method::PUT, "/echo", Bytes::from_static(b"small")),
        (Method::PUT, "/echo", Bytes::new()),
        (Method::HEAD, "/bytes/100", Bytes::new()),
        (Method::GET, "/status/204", Bytes::new()),
        (Method::GET, "/status/304", Bytes::new()),
        (Method::DELETE, "/status/404", Bytes::new()),
        (Method::GET, "/status/503", Bytes::new()),
    ];
    for (method, path, body) in cases {
        let direct = collect(
            client
                .request(req(method.clone(), server.addr, path, body.clone()))
                .await
                .unwrap(),
        )
        .await;
        let proxied = collect(
            client
                .request(req(method.clone(), proxy.outbound, path, body))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(direct.0, proxied.0, "{method} {path}: status");
        assert!(
            direct.2 == proxied.2,
            "{method} {path}: body differs ({} vs {} bytes)",
            direct.2.len(),
            proxied.2.len()
        );
        for h in ["x-served-by", "content-length", "content-type"] {
            assert_eq!(
                direct.1.get(h),
                proxied.1.get(h),
                "{method} {path}: header {h}"
            );
        }
    }
    // What the server saw through the proxy: the client's Host, end-to-end
    // headers kept, hop-by-hop headers gone.
    let seen = server.seen();
    let through: Vec<_> = seen
        .iter()
        .filter(|s| s.headers["host"] == proxy.outbound.to_string())
        .collect();
    assert_eq!(through.len(), 11);
    for s in through {
        assert_eq!(s.headers["x-keep"], "end-to-end");
        assert!(!s.headers.contains_key("x-hop"), "{:?}", s.headers);
        assert!(!s.headers.contains_key("connection"));
    }
}

#[tokio::test]
async fn http2_multiplexes_100_streams_over_one_connection() {
    let server = HttpServer::start().await;
    let proxy = Proxy::start(OrigDst::Fixed(server.addr), &[]).await;
    let client = h2_client();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let client = client.clone();
        let addr = proxy.outbound;
        tasks.push(tokio::spawn(async move {
            let path = format!("/bytes/{}", 1000 + i);
            let rsp = client
                .request(req(Method::GET, addr, &path, Bytes::new()))
                .await
                .unwrap();
            collect(rsp).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let (status, _, body, _) = t.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, pattern(1000 + i));
    }
    let seen = server.seen();
    assert!(seen.len() >= 100, "{} requests seen", seen.len());
    assert!(seen.iter().all(|s| s.version == http::Version::HTTP_2));
    // One connection each side.
    let m = proxy.metrics().await;
    assert_eq!(m.sum("tcp_open_total", &[("peer", "src")]), 1.0, "{}", m.0);
    assert_eq!(m.sum("tcp_open_total", &[("peer", "dst")]), 1.0, "{}", m.0);
    assert_eq!(
        m.sum("protocol_detect_total", &[("protocol", "http/2")]),
        1.0
    );
}

#[tokio::test]
async fn trailers_pass_through_http2() {
    let server = HttpServer::start().await;
    let proxy = Proxy::start(OrigDst::Fixed(server.addr), &[]).await;
    let rsp = h2_client()
        .request(req(Method::GET, proxy.outbound, "/trailers", Bytes::new()))
        .await
        .unwrap();
    let (status, _, body, trailers) = collect(rsp).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"with trailers");
    let trailers = trailers.expect("trailers arrive");
    assert_eq!(trailers["x-trailer"], "yes");
    let admin = proxy.admin;
    eventually("grpc status counted", Duration::from_secs(5), || async {
        let m = linnet_test_support::metrics::scrape(admin).await;
        (m.sum(
            "response_total",
            &[("grpc_status", "0"), ("classification", "success")],
        ) == 1.0)
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn upgrades_become_tunnels() {
    let server = HttpServer::start().await;
    let proxy = Proxy::start(OrigDst::Fixed(server.addr), &[]).await;
    let mut c = TcpStream::connect(proxy.outbound).await.unwrap();
    c.write_all(
        b"GET /upgrade HTTP/1.1\r\nHost: echo\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        c.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    let payload = pattern(300_000);
    let (mut r, mut w) = c.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&payload).await.unwrap();
        w
    });
    let mut echoed = vec![0u8; 300_000];
    r.read_exact(&mut echoed).await.unwrap();
    assert!(echoed[..] == pattern(300_000)[..], "tunnel corrupted bytes");
    drop(writer.await.unwrap());
}

#[tokio::test]
async fn unreachable_target_is_rescued() {
    let (_reserved, dead) = linnet_test_support::tcp::refused_addr();
    let proxy = Proxy::start(OrigDst::Fixed(dead), &[]).await;
    let rsp = h1_client()
        .request(req(Method::GET, proxy.outbound, "/", Bytes::new()))
        .await
        .unwrap();
    let (status, headers, _, _) = collect(rsp).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let reason = headers["l5d-proxy-error"].to_str().unwrap();
    assert!(
        reason.contains(&format!("connect to {dead} failed")),
        "{reason}"
    );

    // gRPC: HTTP 200 with grpc-status UNAVAILABLE.
    let grpc = Request::post(format!("http://{}/pkg.Svc/Method", proxy.outbound))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap();
    let (status, headers, _, _) = collect(h2_client().request(grpc).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["grpc-status"], "14");

    let m = proxy.metrics().await;
    let labels = [
        ("status_code", "502"),
        ("error", "connect"),
        ("classification", "failure"),
    ];
    assert_eq!(m.sum("response_total", &labels), 1.0, "{}", m.0);
    assert_eq!(
        m.sum("response_total", &[("grpc_status", "14")]),
        1.0,
        "{}",
        m.0
    );
}

#[tokio::test]
async fn requests_and_responses_are_counted() {
    let server = HttpServer::start().await;
    let proxy = Proxy::start(OrigDst::Fixed(server.addr), &[]).await;
    let client = h1_client();
    for path in ["/", "/bytes/10", "/status/500"] {
        for _ in 0..3 {
            collect(
                client
                    .request(req(Method::GET, proxy.outbound, path, Bytes::new()))
                    .await
                    .unwrap(),
            )
            .await;
        }
    }
    let authority = proxy.outbound.to_string();
    let target = server.addr.to_string();
    let admin = proxy.admin;
    let m = eventually("responses counted", Duration::from_secs(5), || async {
        let m = linnet_test_support::metrics::scrape(admin).await;
        (m.sum("response_latency_ms_count", &[]) == 9.0).then_some(m)
    })
    .await;
    let base = [
        ("direction", "outbound"),
        ("authority", authority.as_str()),
        ("target_addr", target.as_str()),
    ];
    assert_eq!(m.sum("request_total", &base), 9.0, "{}", m.0);
    let ok = [
        base[0],
        base[1],
        base[2],
        ("status_code", "200"),
        ("classification", "success"),
    ];
    assert_eq!(m.sum("response_total", &ok), 6.0, "{}", m.0);
    let failed = [
        base[0],
        ("status_code", "500"),
        ("classification", "failure"),
    ];
    assert_eq!(m.sum("response_total", &failed), 3.0, "{}", m.0);
    assert_eq!(
        m.sum("protocol_detect_total", &[("protocol", "http/1")]),
        1.0,
        "keep-alive: one connection"
    );
}

#[tokio::test]
async fn requests_beyond_max_in_flight_are_shed() {
    let server = HttpServer::start().await;
    let proxy = Proxy::start(
        OrigDst::Fixed(server.addr),
        &[("LINNET_OUTBOUND_MAX_IN_FLIGHT", "1")],
    )
    .await;
    let client = h1_client();
    let slow = tokio::spawn({
        let client = client.clone();
        let addr = proxy.outbound;
        async move {
            collect(
                client
                    .request(req(Method::GET, addr, "/delay/500", Bytes::new()))
                    .await
                    .unwrap(),
            )
            .await
        }
    });
    // Wait until the slow request is at the server, holding the one permit.
    eventually("slow request in flight", Duration::from_secs(5), || async {
        (!server.seen().is_empty()).then_some(())
    })
    .await;
    let (status, headers, _, _) = collect(
        client
            .request(req(Method::GET, proxy.outbound, "/", Bytes::new()))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        headers["l5d-proxy-error"]
            .to_str()
            .unwrap()
            .contains("load shed")
    );
    assert_eq!(slow.await.unwrap().0, StatusCode::OK);
    // The permit is back once the slow response ended.
    let (status, _, _, _) = collect(
        client
            .request(req(Method::GET, proxy.outbound, "/", Bytes::new()))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum(
            "response_total",
            &[("error", "load_shed"), ("status_code", "503")]
        ),
        1.0,
        "{}",
        m.0
    );
}

#[tokio::test]
async fn inbound_http_reaches_the_application() {
    let server = HttpServer::start().await;
    let proxy = Proxy::start(OrigDst::Fixed(server.addr), &[]).await;
    for client in [h1_client(), h2_client()] {
        let rsp = client
            .request(req(Method::POST, proxy.inbound, "/echo", pattern(70_000)))
            .await
            .unwrap();
        let (status, _, body, _) = collect(rsp).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, pattern(70_000));
    }
    let admin = proxy.admin;
    let m = eventually(
        "inbound responses counted",
        Duration::from_secs(5),
        || async {
            let m = linnet_test_support::metrics::scrape(admin).await;
            (m.sum("response_total", &[("direction", "inbound")]) == 2.0).then_some(m)
        },
    )
    .await;
    assert_eq!(
        m.sum("request_total", &[("direction", "outbound")]),
        0.0,
        "{}",
        m.0
    );
}

#[tokio::test]
async fn a_target_that_does_not_accept_in_time_is_504() {
    let (hole, _fillers) = linnet_test_support::tcp::black_hole();
    let target = hole.local_addr().unwrap().as_socket().unwrap();
    let proxy = Proxy::start(
        OrigDst::Fixed(target),
        &[("LINNET_OUTBOUND_CONNECT_TIMEOUT", "300ms")],
    )
    .await;
    let rsp = h1_client()
        .request(req(Method::GET, proxy.outbound, "/", Bytes::new()))
        .await
        .unwrap();
    let (status, headers, _, _) = collect(rsp).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        headers["l5d-proxy-error"]
            .to_str()
            .unwrap()
            .contains("timed out"),
        "{headers:?}"
    );
}

#[tokio::test]
async fn a_request_the_client_abandons_is_counted_as_cancelled() {
    let server = HttpServer::start().await;
    let proxy = Proxy::start(OrigDst::Fixed(server.addr), &[]).await;
    let client = h2_client();
    // Keep the connection: a first request that completes.
    collect(
        client
            .request(req(Method::GET, proxy.outbound, "/", Bytes::new()))
            .await
            .unwrap(),
    )
    .await;
    let slow = tokio::spawn({
        let client = client.clone();
        let addr = proxy.outbound;
        async move {
            client
                .request(req(Method::GET, addr, "/delay/3000", Bytes::new()))
                .await
        }
    });
    eventually("slow request in flight", Duration::from_secs(5), || async {
        (server.seen().len() == 2).then_some(())
    })
    .await;
    // Dropping the request resets its HTTP/2 stream.
    slow.abort();
    let admin = proxy.admin;
    eventually(
        "the abandoned request counted",
        Duration::from_secs(5),
        || async {
            let m = linnet_test_support::metrics::scrape(admin).await;
            (m.sum(
                "response_total",
                &[("error", "cancelled"), ("status_code", "")],
            ) == 1.0)
                .then_some(())
        },
    )
    .await;
}
