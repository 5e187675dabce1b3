//! HTTP/1 on the wire through the proxy: HTTP/1.0, pipelining, chunked
//! bodies, `100-continue`, real curl, and bad input. Each well-formed case
//! is sent directly and through the proxy and the answers compared.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use linnet_app::OrigDst;
use linnet_test_support::{
    eventually,
    http::{HttpServer, curl, h1_client, pattern},
    proxy::Proxy,
};
use std::{net::SocketAddr, time::Duration};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Sends `request` raw, half-closes, and reads everything until the server
/// closes (or 5s of silence).
async fn raw(addr: SocketAddr, request: &[u8], half_close: bool) -> String {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(request).await.unwrap();
    if half_close {
        c.shutdown().await.unwrap();
    }
    read_all(c).await
}

/// Sends `start` (a head and the start of a body) raw, waits until the
/// target has the request, then sends `rest`, half-closes, and reads the
/// answer as [`raw`] does: whatever `rest` does to the body, it does to a
/// body the target is already reading.
async fn raw_split(addr: SocketAddr, server: &HttpServer, start: &[u8], rest: &[u8]) -> String {
    let before = server.seen().len();
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(start).await.unwrap();
    eventually(
        "the target to receive the request",
        Duration::from_secs(10),
        || async { (server.seen().len() > before).then_some(()) },
    )
    .await;
    c.write_all(rest).await.unwrap();
    c.shutdown().await.unwrap();
    read_all(c).await
}

/// Everything `c` reads until the peer closes (or 5s of silence).
async fn read_all(mut c: TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Responses with `date` headers removed (they differ by the second) and
/// each head's header lines sorted (their order carries no meaning).
fn normalise(rsp: &str) -> String {
    // A head may follow a body on the same line (bodies end without a
    // newline), so `date` is cut wherever it is, not only at a line start.
    let mut rsp = rsp.to_string();
    while let Some(at) = rsp.to_ascii_lowercase().find("\r\ndate: ") {
        let end = rsp[at + 2..].find("\r\n").map_or(rsp.len(), |e| at + 2 + e);
        rsp.replace_range(at..end, "");
    }
    let rsp = rsp.as_str();
    let mut out: Vec<String> = Vec::new();
    let mut head: Option<Vec<String>> = None;
    for line in rsp.split("\r\n") {
        match &mut head {
            Some(h) if line.is_empty() => {
                h.sort();
                out.append(h);
                out.push(String::new());
                head = None;
            }
            Some(h) => {
                if !line.to_ascii_lowercase().starts_with("date:") {
                    h.push(line.to_ascii_lowercase());
                }
            }
            None if line.starts_with("HTTP/") => {
                out.push(line.to_string());
                head = Some(Vec::new());
            }
            None => out.push(line.to_string()),
        }
    }
    out.join("\r\n")
}

async fn compare(server: &HttpServer, proxy: &Proxy, request: &[u8], half_close: bool) -> String {
    let direct = normalise(&raw(server.addr, request, half_close).await);
    let proxied = normalise(&raw(proxy.outbound, request, half_close).await);
    assert_eq!(
        direct,
        proxied,
        "request:\n{}",
        String::from_utf8_lossy(request)
    );
    proxied
}

/// How the bodies of the `/consume` requests the target saw ended, once
/// it has finished reading every one of them.
async fn finished_bodies(server: &HttpServer) -> Vec<Result<usize, String>> {
    eventually(
        "the target to finish reading every body it was sent",
        Duration::from_secs(10),
        || async {
            let sent = server
                .seen()
                .iter()
                .filter(|s| s.uri.path() == "/consume")
                .count();
            let bodies = server.bodies();
            (bodies.len() == sent).then_some(bodies)
        },
    )
    .await
}

async fn setup() -> (HttpServer, Proxy) {
    let server = HttpServer::start().await;
    let proxy = Proxy::start(OrigDst::Fixed(server.addr), &[]).await;
    (server, proxy)
}

#[tokio::test]
async fn http10_is_answered_as_http10_and_closed() {
    let (server, proxy) = setup().await;
    let rsp = compare(&server, &proxy, b"GET /bytes/10 HTTP/1.0\r\n\r\n", false).await;
    assert!(rsp.starts_with("HTTP/1.0 200"), "{rsp}");
    // HTTP/1.0 keep-alive, asked for, is honoured the same way.
    let rsp = compare(
        &server,
        &proxy,
        b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        true,
    )
    .await;
    assert!(rsp.starts_with("HTTP/1.0 200"), "{rsp}");
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (server, proxy) = setup().await;
    let mut many = Vec::new();
    for i in 0..20 {
        many.extend_from_slice(format!("GET /bytes/{i} HTTP/1.1\r\nHost: p\r\n\r\n").as_bytes());
    }
    let rsp = compare(&server, &proxy, &many, true).await;
    assert_eq!(rsp.matches("HTTP/1.1 200 OK").count(), 20, "{rsp}");
}

#[tokio::test]
async fn chunked_request_bodies_stream_through() {
    let (server, proxy) = setup().await;
    let req = b"POST /echo HTTP/1.1\r\nHost: c\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let rsp = compare(&server, &proxy, req, true).await;
    assert!(
        rsp.contains("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
        "{rsp}"
    );
}

#[tokio::test]
async fn conflicting_framing_never_reaches_the_target_twice_framed() {
    let (server, proxy) = setup().await;
    let req = b"POST /consume HTTP/1.1\r\nHost: c\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let rsp = raw(proxy.outbound, req, true).await;
    let status = rsp
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    // Rejected, or normalised to one framing: never both at the target.
    for seen in server.seen() {
        let both = seen.headers.contains_key("content-length")
            && seen.headers.contains_key("transfer-encoding");
        assert!(!both, "the target saw two framings: {:?}", seen.headers);
    }
    assert!(status == "400" || status == "200", "{rsp}");
    if status == "200" {
        assert_eq!(server.bodies(), vec![Ok(5)]);
    }
}

#[tokio::test]
async fn broken_chunked_framing_is_not_passed_on_as_complete() {
    let start =
        b"POST /consume HTTP/1.1\r\nHost: c\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n";
    let broken = b"ZZ\r\n";
    // All at once: refused; whatever the target got of it did not end well.
    let (server, proxy) = setup().await;
    let rsp = raw(proxy.outbound, &[&start[..], broken].concat(), true).await;
    assert!(!rsp.starts_with("HTTP/1.1 200"), "{rsp}");
    let bodies = finished_bodies(&server).await;
    assert!(bodies.iter().all(|b| b.is_err()), "{bodies:?}");
    // Broken once the target is reading the body: its body fails.
    let (server, proxy) = setup().await;
    let rsp = raw_split(proxy.outbound, &server, start, broken).await;
    assert!(!rsp.starts_with("HTTP/1.1 200"), "{rsp}");
    let bodies = finished_bodies(&server).await;
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert!(bodies[0].is_err(), "{bodies:?}");
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let (server, proxy) = setup().await;
    let mut req = b"GET / HTTP/1.1\r\nHost: big\r\n".to_vec();
    for i in 0..200 {
        req.extend_from_slice(format!("x-header-{i}: value\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    let rsp = raw(proxy.outbound, &req, true).await;
    assert!(rsp.starts_with("HTTP/1.1 431"), "{rsp}");
    assert!(server.seen().is_empty());
}

#[tokio::test]
async fn garbage_after_a_request_line_is_400() {
    let (server, proxy) = setup().await;
    let rsp = raw(
        proxy.outbound,
        b"GET / HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n",
        true,
    )
    .await;
    assert!(rsp.starts_with("HTTP/1.1 400"), "{rsp}");
    assert!(server.seen().is_empty());
}

#[tokio::test]
async fn a_response_that_fails_midway_is_never_complete() {
    let (_server, proxy) = setup().await;
    let rsp = h1_client()
        .request(
            http::Request::get(format!("http://{}/abort/1000", proxy.outbound))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    let body = http_body_util::BodyExt::collect(rsp.into_body()).await;
    assert!(body.is_err(), "a truncated body was presented as complete");
}

#[tokio::test]
async fn curl_through_the_proxy() {
    let (server, proxy) = setup().await;
    let p = proxy.outbound;
    let (body, _) = curl(&[&format!("http://{p}/")]).await;
    assert_eq!(body, "hello");
    let (body, _) = curl(&["--http2-prior-knowledge", &format!("http://{p}/bytes/5")]).await;
    assert_eq!(body.as_bytes(), &pattern(5)[..]);
    // A 2 MB upload: curl asks `Expect: 100-continue` and waits for it.
    let file = std::env::temp_dir().join(format!("linnet-upload-{}", std::process::id()));
    std::fs::write(&file, pattern(2_000_000)).unwrap();
    let (body, verbose) = curl(&[
        "-v",
        "--data-binary",
        &format!("@{}", file.display()),
        "-H",
        "Expect: 100-continue",
        &format!("http://{p}/consume"),
    ])
    .await;
    std::fs::remove_file(&file).unwrap();
    assert_eq!(body, "2000000");
    assert!(verbose.contains("100 Continue"), "{verbose}");
    assert_eq!(server.bodies(), vec![Ok(2_000_000)]);
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let server = HttpServer::start().await;
    let proxy = Proxy::start(
        OrigDst::Fixed(server.addr),
        &[("LINNET_HTTP_HEADER_READ_TIMEOUT", "500ms")],
    )
    .await;
    let c = TcpStream::connect(proxy.outbound).await.unwrap();
    let (mut r, mut w) = c.into_split();
    w.write_all(b"GET / HTTP/1.1\r\nHost: slow\r\n")
        .await
        .unwrap();
    // One header byte every 100ms: never a complete head.
    let dripper = tokio::spawn(async move {
        loop {
            if w.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    // The proxy gives up on the client long before the default 10s.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), r.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "a slowloris client was not cut off");
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.is_empty() || rest.starts_with("HTTP/1.1 408"),
        "{rest}"
    );
    dripper.abort();
    assert!(server.seen().is_empty());
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum("idle_timeout_total", &[("kind", "http_header")]),
        1.0,
        "{}",
        m.0
    );
}

/// The header read timeout times a request head from its first byte: a
/// keep-alive connection that waits between requests is left to the
/// (much longer) connection idle timeout, as are a slow request body
/// and a slow response.
#[tokio::test]
async fn an_idle_keep_alive_connection_outlives_the_header_timeout() {
    let server = HttpServer::start().await;
    let proxy = Proxy::start(
        OrigDst::Fixed(server.addr),
        &[("LINNET_HTTP_HEADER_READ_TIMEOUT", "200ms")],
    )
    .await;
    let mut c = TcpStream::connect(proxy.outbound).await.unwrap();
    let request = b"GET / HTTP/1.1\r\nHost: idle\r\n\r\n";
    for round in 0..3 {
        c.write_all(request).await.unwrap();
        let mut got = Vec::new();
        let mut b = [0u8; 1024];
        while !String::from_utf8_lossy(&got).ends_with("hello") {
            let n = c.read(&mut b).await.unwrap();
            assert!(
                n > 0,
                "round {round}: closed: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&b[..n]);
        }
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
        // Idle between requests for several header timeouts (the
        // idleness is the case under test, not a wait for something).
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    // A body sent slower than the header timeout is not cut either.
    c.write_all(b"POST /consume HTTP/1.1\r\nHost: idle\r\ncontent-length: 4\r\n\r\nab")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    c.write_all(b"cd").await.unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 1024];
    while !got.ends_with(b"\r\n\r\n4") {
        let n = c.read(&mut b).await.unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&b[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    let m = proxy.metrics().await;
    assert_eq!(m.sum("idle_timeout_total", &[("kind", "http_header")]), 0.0);
}

#[tokio::test]
async fn absolute_form_targets_are_kept() {
    let (server, proxy) = setup().await;
    let req = b"GET http://example.test:8080/x?y=1 HTTP/1.1\r\nHost: example.test:8080\r\n\r\n";
    compare(&server, &proxy, req, true).await;
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].uri, seen[1].uri);
    assert_eq!(seen[1].uri, "http://example.test:8080/x?y=1");
    assert_eq!(seen[1].headers["host"], "example.test:8080");
}

#[tokio::test]
async fn a_bad_header_past_the_detection_buffer_is_400() {
    let (server, proxy) = setup().await;
    let mut req = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    // Well past the 1 KiB detection reads: the request line alone decided.
    for i in 0..40 {
        req.extend_from_slice(format!("x-fine-{i}: {}\r\n", "v".repeat(40)).as_bytes());
    }
    assert!(req.len() > 2048);
    req.extend_from_slice(b"this is not a header\r\n\r\n");
    let rsp = raw(proxy.outbound, &req, true).await;
    assert!(rsp.starts_with("HTTP/1.1 400"), "{rsp}");
    assert!(server.seen().is_empty());
}

#[tokio::test]
async fn an_http2_response_that_fails_midway_resets_the_stream() {
    let (_server, proxy) = setup().await;
    let rsp = linnet_test_support::http::h2_client()
        .request(
            http::Request::get(format!("http://{}/abort/1000", proxy.outbound))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    let body = http_body_util::BodyExt::collect(rsp.into_body()).await;
    assert!(
        body.is_err(),
        "a truncated HTTP/2 body was presented as complete"
    );
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_and_never_arrive_whole() {
    let server = HttpServer::start().await;
    let proxy = Proxy::start(
        OrigDst::Fixed(server.addr),
        &[("LINNET_HTTP_MAX_REQUEST_BODY_SIZE", "1000")],
    )
    .await;
    // Declared too large: refused before the target is contacted.
    let req = format!(
        "POST /consume HTTP/1.1\r\nHost: c\r\nContent-Length: 5000\r\n\r\n{}",
        "x".repeat(5000)
    );
    let rsp = raw(proxy.outbound, req.as_bytes(), true).await;
    assert!(rsp.starts_with("HTTP/1.1 413"), "{rsp}");
    assert!(
        rsp.to_ascii_lowercase()
            .contains("l5d-proxy-error: the request body is larger"),
        "{rsp}"
    );
    assert!(server.seen().is_empty());
    // Chunked, too large: cut off; the target never sees it complete.
    let head = b"POST /consume HTTP/1.1\r\nHost: c\r\nTransfer-Encoding: chunked\r\n\r\n";
    let chunk = format!("1f4\r\n{}\r\n", "y".repeat(500)).into_bytes();
    let mut req = head.to_vec();
    for _ in 0..10 {
        req.extend_from_slice(&chunk);
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let rsp = raw(proxy.outbound, &req, true).await;
    assert!(rsp.starts_with("HTTP/1.1 413"), "{rsp}");
    let earlier = finished_bodies(&server).await;
    assert!(earlier.iter().all(|b| b.is_err()), "{earlier:?}");
    // The same, with the limit crossed once the target is reading it.
    let start = [&head[..], &chunk].concat();
    let rsp = raw_split(proxy.outbound, &server, &start, &req[start.len()..]).await;
    assert!(rsp.starts_with("HTTP/1.1 413"), "{rsp}");
    let bodies = finished_bodies(&server).await;
    assert_eq!(bodies.len(), earlier.len() + 1, "{bodies:?}");
    assert!(bodies.iter().all(|b| b.is_err()), "{bodies:?}");
    // Within the limit: passed on.
    let rsp = raw(
        proxy.outbound,
        b"POST /consume HTTP/1.1\r\nHost: c\r\nContent-Length: 5\r\n\r\nsmall",
        true,
    )
    .await;
    assert!(rsp.starts_with("HTTP/1.1 200"), "{rsp}");
}

#[tokio::test]
async fn long_request_lines_are_still_http() {
    let (server, proxy) = setup().await;
    let req = format!(
        "GET /bytes/3?token={} HTTP/1.1\r\nHost: long\r\n\r\n",
        "t".repeat(4000)
    );
    let rsp = compare(&server, &proxy, req.as_bytes(), true).await;
    assert!(rsp.starts_with("HTTP/1.1 200"), "{rsp}");
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum(
            "protocol_detect_total",
            &[("protocol", "http/1"), ("reason", "buffer_full")]
        ),
        1.0,
        "{}",
        m.0
    );
}

#[tokio::test]
async fn a_response_framed_twice_is_framed_once() {
    // A target that answers with both Transfer-Encoding and Content-Length.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await.unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
            .await
            .unwrap();
        let _ = s.read(&mut buf).await;
    });
    let proxy = Proxy::start(OrigDst::Fixed(addr), &[]).await;
    let rsp = raw(
        proxy.outbound,
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        false,
    )
    .await;
    let lower = rsp.to_ascii_lowercase();
    assert!(!lower.contains("content-length: 3"), "{rsp}");
    assert!(
        rsp.contains("hello"),
        "the body was cut to the untrusted length: {rsp}"
    );
}

#[tokio::test]
async fn a_refusal_before_100_continue_spares_the_client_its_upload() {
    // A target that refuses at once, without reading the body.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && s.read_exact(&mut b).await.is_ok() {
                    head.push(b[0]);
                }
                let _ = s
                    .write_all(b"HTTP/1.1 417 Expectation Failed\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    let proxy = Proxy::start(OrigDst::Fixed(addr), &[]).await;
    let mut c = TcpStream::connect(proxy.outbound).await.unwrap();
    c.write_all(b"PUT /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    // The client waits for 100 Continue before sending its body; the first
    // thing it hears must be the refusal.
    let mut first = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut first))
        .await
        .expect("an answer without the body")
        .unwrap();
    assert_eq!(
        &first,
        b"HTTP/1.1 417",
        "{}",
        String::from_utf8_lossy(&first)
    );
}
