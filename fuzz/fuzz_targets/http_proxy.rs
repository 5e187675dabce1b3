//! The HTTP server with the proxy's edge handler (`linnet_http::serve`
//! with `linnet_http::Proxy`) over an in-memory duplex: the fuzzer's
//! bytes are the client's, written in fragments it chose; a mock stack
//! below the edge stands for the upstream and records what reaches it.
//!
//! Input: [`Head`], then the client's bytes. The flags:
//!
//! | bit | set | clear |
//! |---|---|---|
//! | 0 | HTTP/2 (prior knowledge) | HTTP/1 |
//! | 1 | inbound | outbound |
//! | 2 | explicit proxy mode | a service's stack |
//! | 3 | the client has a mesh identity (inbound) | it has none |
//! | 4 | a 64-byte request body limit | no limit |
//! | 5–6 | the mock's answer: 0 a sized body, 1 a streamed body with a false `content-length`, 2 `204`, 3 an error | |
//!
//! Its answers carry hop-by-hop headers and `l5d-orig-proto` that must
//! not reach the client.
//!
//! Checks: no panic and no hang (time is paused, so a hang is a
//! connection that never ends); what reaches the upstream is well formed
//! and clean: no hop-by-hop headers (nor a header the client's
//! `Connection` named), one `content-length` that the body matches,
//! never one beside `transfer-encoding` in the client's request; inbound,
//! no `l5d-client-id` but the proxy's, no `l5d-orig-proto` or
//! `l5d-require-id`, and an HTTP/2 request with `l5d-orig-proto` restored
//! to HTTP/1 with a `Host`; in explicit mode no `proxy-authorization`.
//! What reaches the client has none of the answer's hop-by-hop headers.
#![no_main]

use bytes::Bytes;
use http::{
    HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version as HttpVersion, header,
};
use http_body_util::{BodyExt, Full, StreamBody};
use libfuzzer_sys::fuzz_target;
use linnet_config::HttpConfig;
use linnet_fuzz::{Head, debug, runtime};
use linnet_http::{
    BoxBody, BoxFuture, Explicit, HttpStack, InFlight, Proxy, Resolved, Route, Upstream, Version,
    client::ConnectConfig,
};
use linnet_metrics::{Direction, http::HttpMetrics};
use linnet_transport::resolve::Addrs;
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The mesh identity the proxy verified for the client (bit 3).
const CLIENT_ID: &str = "client.ns.serviceaccount.identity.linkerd.cluster.local";
/// The request body limit (bit 4).
const MAX_BODY: u64 = 64;
/// Longer than any run takes: a connection still open then is hung.
const HANG: Duration = Duration::from_secs(3600);
/// The target the mock stack stands for.
const TARGET: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)),
    80,
);

#[derive(Clone, Copy, Debug)]
struct Options {
    h2: bool,
    inbound: bool,
    explicit: bool,
    client_id: bool,
    max_body: bool,
    answer: u8,
}

impl Options {
    fn new(flags: u8) -> Self {
        Self {
            h2: flags & 1 != 0,
            inbound: flags & 2 != 0,
            explicit: flags & 4 != 0,
            client_id: flags & 8 != 0,
            max_body: flags & 16 != 0,
            answer: (flags >> 5) & 3,
        }
    }
}

/// A request as the mock upstream received it.
#[derive(Debug)]
struct Seen {
    method: Method,
    version: HttpVersion,
    has_authority: bool,
    headers: HeaderMap,
    /// The whole body, when it ended cleanly.
    body: Option<Vec<u8>>,
}

type Log = Arc<Mutex<Vec<Seen>>>;

fuzz_target!(|input: &[u8]| {
    let (head, data) = Head::split(input);
    let opts = Options::new(head.flags);
    let log = Log::default();
    let rt = runtime();
    let to_client = rt.block_on(run(opts, head, data, log.clone()));
    // Dropping the runtime drops what the connection left behind.
    drop(rt);
    let seen = std::mem::take(&mut *log.lock().unwrap_or_else(|e| e.into_inner()));
    if debug() {
        eprintln!(
            "{opts:?}\nupstream saw: {seen:#?}\nclient got: {:?}",
            String::from_utf8_lossy(&to_client)
        );
    }
    for s in &seen {
        check_upstream(opts, s);
    }
    if !opts.h2 {
        if let Some(first) = seen.first() {
            check_first(opts, data, first);
        }
        check_client(&to_client);
    }
});

/// Serves one connection whose client sends `data`; returns what the
/// client received.
async fn run(opts: Options, head: Head, data: &[u8], log: Log) -> Vec<u8> {
    let version = if opts.h2 {
        Version::Http2
    } else {
        Version::Http1
    };
    let stack = mock(opts, log);
    let route = if opts.explicit {
        Route::Explicit(Arc::new(MockExplicit { stack }))
    } else {
        Route::Stack {
            stack,
            target: TARGET,
        }
    };
    let direction = if opts.inbound {
        Direction::Inbound
    } else {
        Direction::Outbound
    };
    let proxy = Proxy::new(
        route,
        InFlight::new(1000),
        opts.max_body.then_some(MAX_BODY),
        version,
        metrics().clone(),
        direction,
        "disabled",
    )
    .with_client_id(opts.client_id.then_some(CLIENT_ID));
    let (client, server) = tokio::io::duplex(16 * 1024);
    let (_signal, watch) = linnet_core::drain::channel();
    let serve = async {
        let _ = linnet_http::serve(server, version, proxy, config(), watch).await;
    };
    let (mut rd, mut wr) = tokio::io::split(client);
    let fragments = head.fragments(data);
    let write = async move {
        for f in fragments {
            if wr.write_all(&f).await.is_err() {
                return;
            }
            // Let the server read this fragment before the next.
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
        }
        let _ = wr.shutdown().await;
    };
    let read = async move {
        let mut out = Vec::new();
        let _ = rd.read_to_end(&mut out).await;
        out
    };
    let all = async { tokio::join!(serve, write, read).2 };
    match tokio::time::timeout(HANG, all).await {
        Ok(out) => out,
        Err(_) => panic!("the connection was still open after {HANG:?}"),
    }
}

// === the upstream ===

/// The stack below the edge: records each request and its body, then
/// answers as `opts.answer` says.
fn mock(opts: Options, log: Log) -> HttpStack {
    HttpStack::new(tower::service_fn(move |req: Request<BoxBody>| {
        let log = log.clone();
        async move {
            let (parts, mut body) = req.into_parts();
            let upgrade =
                parts.headers.contains_key(header::UPGRADE) || parts.method == Method::CONNECT;
            let index = {
                let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                log.push(Seen {
                    method: parts.method.clone(),
                    version: parts.version,
                    has_authority: parts.uri.authority().is_some(),
                    headers: parts.headers.clone(),
                    body: None,
                });
                log.len() - 1
            };
            let mut whole = Some(Vec::new());
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let (Some(data), Some(w)) = (f.data_ref(), whole.as_mut()) {
                            w.extend_from_slice(data);
                        }
                    }
                    Err(_) => {
                        whole = None;
                        break;
                    }
                }
            }
            log.lock().unwrap_or_else(|e| e.into_inner())[index].body = whole;
            answer(opts.answer, upgrade)
        }
    }))
}

fn answer(kind: u8, upgrade: bool) -> Result<Response<BoxBody>, linnet_core::Error> {
    let mut rsp = match kind {
        0 if upgrade => {
            let mut r = Response::new(empty());
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut()
                .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            return Ok(r);
        }
        0 => Response::new(
            Full::new(Bytes::from_static(b"ok"))
                .map_err(never)
                .boxed_unsync(),
        ),
        1 => {
            let chunks = [Bytes::from_static(b"o"), Bytes::from_static(b"k")]
                .map(|b| Ok::<_, linnet_core::Error>(http_body::Frame::data(b)));
            let mut r =
                Response::new(StreamBody::new(futures_util::stream::iter(chunks)).boxed_unsync());
            // A length that does not frame the body: never passed on.
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("7"));
            r
        }
        2 => {
            let mut r = Response::new(empty());
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        }
        _ => return Err("the mock upstream failed".into()),
    };
    let h = rsp.headers_mut();
    h.insert(
        header::CONNECTION,
        HeaderValue::from_static("x-hop, keep-alive"),
    );
    h.insert("x-hop", HeaderValue::from_static("1"));
    h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
    h.insert("l5d-orig-proto", HeaderValue::from_static("HTTP/1.1"));
    if kind == 0 {
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
    Ok(rsp)
}

fn empty() -> BoxBody {
    http_body_util::Empty::new().map_err(never).boxed_unsync()
}

fn never(n: std::convert::Infallible) -> linnet_core::Error {
    match n {}
}

/// Explicit mode's resolver: every name is the mock's stack, except
/// names under `.invalid`, which do not resolve.
#[derive(Debug)]
struct MockExplicit {
    stack: HttpStack,
}

impl Explicit for MockExplicit {
    fn upstream(&self, addrs: &Addrs, _: Option<&str>) -> Arc<Upstream> {
        unreachable!("the mock resolves to stacks only, never to {addrs:?}")
    }

    fn is_self(&self, _: SocketAddr) -> bool {
        false
    }

    fn connect_config(&self) -> ConnectConfig {
        ConnectConfig {
            timeout: Duration::from_secs(1),
            keepalive: None,
        }
    }

    fn resolve<'a>(
        &'a self,
        authority: &'a http::uri::Authority,
        _default_port: u16,
        _connect: bool,
    ) -> BoxFuture<'a, Result<Resolved, String>> {
        let r = if authority.host().ends_with(".invalid") {
            Err(format!("{authority} does not resolve"))
        } else {
            Ok(Resolved::Stack {
                stack: self.stack.clone(),
                target: TARGET,
            })
        };
        Box::pin(std::future::ready(r))
    }
}

// === checks ===

/// What reaches the upstream, whatever the client sent.
fn check_upstream(opts: Options, s: &Seen) {
    let h = &s.headers;
    for name in ["keep-alive", "proxy-connection", "transfer-encoding"] {
        assert!(!h.contains_key(name), "{name} reached the upstream: {s:?}");
    }
    for te in h.get_all(header::TE) {
        assert_eq!(te, "trailers", "te reached the upstream: {s:?}");
    }
    let connection: Vec<_> = h.get_all(header::CONNECTION).iter().collect();
    if h.contains_key(header::UPGRADE) {
        assert!(
            s.version <= HttpVersion::HTTP_11,
            "upgrade over HTTP/2: {s:?}"
        );
        assert_eq!(
            connection,
            ["upgrade"],
            "an upgrade without its connection header: {s:?}"
        );
    } else {
        assert!(
            connection.is_empty(),
            "connection reached the upstream: {s:?}"
        );
    }

    // One length, which the body matches.
    let lengths: Vec<Option<u64>> = h
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("x").split(','))
        .map(|v| v.trim().parse().ok())
        .collect();
    if let Some(first) = lengths.first() {
        let Some(n) = first else {
            panic!("an unreadable content-length reached the upstream: {s:?}");
        };
        assert!(
            lengths.iter().all(|l| l == first),
            "conflicting lengths reached the upstream: {s:?}"
        );
        if let Some(body) = &s.body {
            assert_eq!(
                body.len() as u64,
                *n,
                "the body does not match its content-length: {s:?}"
            );
        }
    }

    match (opts.h2, opts.inbound) {
        (false, _) => assert!(s.version <= HttpVersion::HTTP_11, "{s:?}"),
        (true, false) => assert_eq!(s.version, HttpVersion::HTTP_2, "{s:?}"),
        // Restored from l5d-orig-proto, with the authority as Host.
        (true, true) => {
            if s.version != HttpVersion::HTTP_2 {
                assert!(
                    !s.has_authority || h.contains_key(header::HOST),
                    "no Host: {s:?}"
                );
            }
        }
    }
    if opts.inbound {
        assert!(!h.contains_key("l5d-orig-proto"), "{s:?}");
        assert!(!h.contains_key("l5d-require-id"), "{s:?}");
        let ids: Vec<_> = h.get_all("l5d-client-id").iter().collect();
        if opts.client_id {
            assert_eq!(ids, [CLIENT_ID], "{s:?}");
        } else {
            assert!(
                ids.is_empty(),
                "a client's l5d-client-id reached the application: {s:?}"
            );
        }
    }
    if opts.explicit {
        assert!(!h.contains_key(header::PROXY_AUTHORIZATION), "{s:?}");
    }
}

/// The first request the upstream saw, against the first the client
/// sent (HTTP/1; when every request reaches the stack, in order).
fn check_first(opts: Options, data: &[u8], s: &Seen) {
    if opts.explicit || opts.max_body {
        // The edge may answer a request itself: the first seen need not
        // be the first sent.
        return;
    }
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    // Servers skip empty lines before a request (and so does hyper).
    let start = data
        .iter()
        .take_while(|b| matches!(b, b'\r' | b'\n'))
        .count();
    if !matches!(req.parse(&data[start..]), Ok(httparse::Status::Complete(_))) {
        return;
    }
    assert_eq!(
        req.method,
        Some(s.method.as_str()),
        "not the first request: {s:?}"
    );
    let sent = |name: &'static str| {
        req.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
    };
    // Headers the client's Connection header named are hop-by-hop.
    let upgrade = s.headers.contains_key(header::UPGRADE);
    for value in sent("connection") {
        for token in String::from_utf8_lossy(value.value).split(',') {
            let token = token.trim().to_ascii_lowercase();
            if (upgrade && token == "upgrade")
                || (opts.client_id && opts.inbound && token == "l5d-client-id")
            {
                continue;
            }
            assert!(
                !s.headers.contains_key(token.as_str()),
                "{token}, named in Connection, reached the upstream: {s:?}"
            );
        }
    }
    // A length beside transfer-encoding is untrusted (smuggling).
    if sent("transfer-encoding").next().is_some() {
        assert!(
            !s.headers.contains_key(header::CONTENT_LENGTH),
            "a content-length sent beside transfer-encoding reached the upstream: {s:?}"
        );
    }
}

/// The first response the client got (HTTP/1).
fn check_client(out: &[u8]) {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut rsp = httparse::Response::new(&mut headers);
    if !matches!(rsp.parse(out), Ok(httparse::Status::Complete(_))) {
        return;
    }
    let has = |name: &str| {
        rsp.headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case(name))
    };
    for name in ["x-hop", "keep-alive", "proxy-connection", "l5d-orig-proto"] {
        assert!(
            !has(name),
            "{name} reached the client: {:?}",
            String::from_utf8_lossy(out)
        );
    }
    assert!(
        !(has("content-length") && has("transfer-encoding")),
        "a response framed twice: {:?}",
        String::from_utf8_lossy(out)
    );
}

// === fixtures ===

fn metrics() -> &'static HttpMetrics {
    static METRICS: OnceLock<HttpMetrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let mut registry = linnet_metrics::prometheus_client::registry::Registry::default();
        let bounds = linnet_metrics::bounded::Bounds::register(&mut registry, Default::default());
        HttpMetrics::register(&mut registry, &bounds)
    })
}

/// The proxy's HTTP settings when nothing is configured.
fn config() -> &'static HttpConfig {
    static CONFIG: OnceLock<HttpConfig> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let none = std::collections::HashMap::<String, String>::new();
        match linnet_config::Config::from_env(&none) {
            Ok(c) => c.http,
            Err(e) => panic!("the default configuration does not read: {e}"),
        }
    })
}
