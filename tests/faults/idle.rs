//! 10,000 idle connections through `linnet proxy` as its own process
//! (one core): two fifths HTTP/1.1 keep-alive and two fifths HTTP/2
//! connections through the outbound listener, each idle after one
//! request (their requests share the proxy's pooled connections to the
//! application), and a fifth opaque TCP connections through the inbound
//! listener, relayed to an echo server (one byte there and back, then
//! nothing).
//! While they are open, new connections of every kind are served and the
//! admin server answers. The proxy's memory per idle connection (growth
//! of `VmRSS`, after a warm-up round of each kind opened and closed) is
//! printed, per kind and overall, and bounded.
//!
//! Descriptors: the test process holds one per connection (two per
//! opaque one, with the echo server's end); the proxy counts two per
//! connection when it fits its connection limits to its open-file limit
//! (and keeps 128 back), so 10,000 connections need a limit of about
//! 20,500. The test raises its own limit and the proxy's (beyond the hard
//! limit needs root with `CAP_SYS_RESOURCE`); where it cannot, it opens as
//! many as the limit allows and says so.

use crate::traffic::{self, App, Got, Kind, Transfer};
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use linnet_test_support::{
    eventually, is_root,
    sidecar::{Sidecar, nofile, raise_nofile},
};
use std::{net::SocketAddr, time::Duration};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinSet,
};

/// Idle connections wanted.
const IDLE: usize = 10_000;
/// What the proxy keeps back of its open-file limit, and what each
/// connection counts against the rest (`linnet_app`'s fitting).
const RESERVED: u64 = 128;
const PER_CONNECTION: u64 = 2;
/// Room per listener for the connections made beside the idle ones.
const SPARE: usize = 50;
/// The most the proxy's memory may grow per idle connection.
const MAX_PER_CONNECTION: u64 = 64 * 1024;
/// Connections opened at once.
const BATCH: usize = 250;

/// The digest of nothing: an empty upload to the HTTP application.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// An idle connection, kept open.
#[allow(dead_code)]
enum Idle {
    /// HTTP/1.1 keep-alive and opaque TCP: the socket.
    Socket(TcpStream),
    /// HTTP/2: the client's handle (its connection task runs on).
    Http2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

/// Echoes every connection's bytes back.
async fn echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// One connection of `kind` through `proxy`, used once, then idle.
async fn one(kind: Kind, proxy: SocketAddr) -> Idle {
    let mut s = TcpStream::connect(proxy).await.expect("connect");
    match kind {
        Kind::Tcp => {
            s.write_all(b"\x00").await.unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.expect("the echo");
            Idle::Socket(s)
        }
        Kind::Http1 => {
            let req = format!(
                "GET /transfer?down=0 HTTP/1.1\r\nhost: app.test\r\nx-sha256: {EMPTY_SHA256}\r\nx-len: 0\r\n\r\n"
            );
            s.write_all(req.as_bytes()).await.unwrap();
            let mut head = Vec::new();
            let mut b = [0u8; 512];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut b).await.unwrap();
                assert!(n > 0, "closed before the response");
                head.extend_from_slice(&b[..n]);
            }
            assert!(
                head.starts_with(b"HTTP/1.1 200"),
                "{:?}",
                String::from_utf8_lossy(&head)
            );
            Idle::Socket(s)
        }
        _ => {
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let req = http::Request::get("http://app.test/transfer?down=0")
                .header("x-sha256", EMPTY_SHA256)
                .header("x-len", "0")
                .body(Empty::new())
                .unwrap();
            let rsp = send.send_request(req).await.unwrap();
            assert_eq!(rsp.status(), 200);
            Idle::Http2(send)
        }
    }
}

/// Opens `n` idle connections of `kind` through `proxy`.
async fn open(kind: Kind, proxy: SocketAddr, n: usize) -> Vec<Idle> {
    let mut all = Vec::with_capacity(n);
    for batch in 0..n.div_ceil(BATCH) {
        let mut set = JoinSet::new();
        for _ in 0..BATCH.min(n - batch * BATCH) {
            set.spawn(one(kind, proxy));
        }
        while let Some(c) = set.join_next().await {
            all.push(c.unwrap());
        }
    }
    all
}

async fn open_connections(proxy: &Sidecar) -> f64 {
    proxy
        .metrics()
        .await
        .sum("tcp_open_connections", &[("peer", "src")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections() {
    let wanted = RESERVED + PER_CONNECTION * (IDLE + 2 * SPARE) as u64 + 100;
    let limit = if raise_nofile(wanted) {
        wanted
    } else {
        // The soft limit can always go up to the hard one.
        let hard = nofile().1.unwrap_or(u64::MAX);
        assert!(raise_nofile(hard));
        hard
    };
    let idle_count =
        IDLE.min(((limit.saturating_sub(RESERVED + 100)) / PER_CONNECTION) as usize - 2 * SPARE);
    if idle_count < IDLE {
        println!(
            "RLIMIT_NOFILE cannot be raised beyond {limit} here ({}; raising the hard limit needs CAP_SYS_RESOURCE): {idle_count} idle connections, not {IDLE}",
            if is_root() { "root" } else { "not root" }
        );
    }
    let opaque = idle_count / 5;
    let http1 = (idle_count - opaque) / 2;
    let http2 = idle_count - opaque - http1;
    let (max_out, max_in) = (
        (http1 + http2 + SPARE).to_string(),
        (opaque + SPARE).to_string(),
    );
    let (echo, app) = (echo().await, App::start(Kind::Http1).await);
    let (e, a) = (echo.to_string(), app.addr.to_string());
    // HTTP through the outbound listener, opaque TCP through the inbound.
    let proxy = Sidecar::start_limited(
        "idle",
        &[
            ("LINNET_OUTBOUND_ORIG_DST_ADDR", &a),
            ("LINNET_INBOUND_ORIG_DST_ADDR", &e),
            ("LINNET_OUTBOUND_MAX_CONNECTIONS", &max_out),
            ("LINNET_INBOUND_MAX_CONNECTIONS", &max_in),
            ("LINNET_CORES", "1"),
        ],
        Some(limit),
    )
    .await;
    let via = |kind: Kind| {
        if kind == Kind::Tcp {
            proxy.inbound
        } else {
            proxy.outbound
        }
    };
    let kinds = [
        (Kind::Http1, http1),
        (Kind::Http2, http2),
        (Kind::Tcp, opaque),
    ];

    // A warm-up round of each kind, opened and closed: what the
    // allocator keeps from it is not growth.
    for (kind, n) in kinds {
        drop(open(kind, via(kind), n / 4).await);
    }
    eventually("the warm-up closed", Duration::from_secs(20), || async {
        (open_connections(&proxy).await == 0.0).then_some(())
    })
    .await;

    let base = proxy.rss();
    let mut rss = base;
    let mut idle = Vec::new();
    for (kind, n) in kinds {
        idle.extend(open(kind, via(kind), n).await);
        let now = proxy.rss();
        println!(
            "{n} idle {kind:?} connections: VmRSS +{} KiB, {:.1} KiB per connection",
            now.saturating_sub(rss) / 1024,
            now.saturating_sub(rss) as f64 / n as f64 / 1024.0
        );
        rss = now;
    }
    let total = idle.len();
    assert_eq!(total, idle_count);
    // Every one was served, so the proxy has counted it open; a busy
    // machine may only be slow to show it.
    let counted = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if open_connections(&proxy).await == total as f64 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    if counted.is_err() {
        let scrape = proxy.metrics().await;
        let tcp: Vec<_> = scrape
            .0
            .lines()
            .filter(|l| !l.starts_with('#') && (l.starts_with("tcp_") || l.contains("limit")))
            .collect();
        panic!(
            "{total} idle connections open, the proxy counts {} open:\n{}\n{}",
            open_connections(&proxy).await,
            tcp.join("\n"),
            proxy.log()
        );
    }
    let per = rss.saturating_sub(base) / total as u64;
    println!(
        "{total} idle connections: VmRSS {} KiB before, {} KiB with them open: {:.1} KiB per idle connection ({} descriptors)",
        base / 1024,
        rss / 1024,
        rss.saturating_sub(base) as f64 / total as f64 / 1024.0,
        proxy.fds()
    );

    // New connections of every kind are served meanwhile (opaque TCP
    // goes to the echo server: what comes back is what went).
    let t = Transfer {
        up: 64 * 1024,
        down: 64 * 1024,
    };
    for kind in [Kind::Http1, Kind::Http2, Kind::Grpc, Kind::WebSocket] {
        let end = traffic::run(kind, via(kind), t).await;
        assert_eq!(
            end.got,
            Got::Complete,
            "{kind:?} beside {total} idle connections"
        );
    }
    let payload = linnet_test_support::tcp::random_payload(64 * 1024);
    let mut s = TcpStream::connect(proxy.inbound).await.unwrap();
    s.write_all(&payload).await.unwrap();
    let mut back = vec![0u8; payload.len()];
    s.read_exact(&mut back).await.unwrap();
    assert!(
        back == payload,
        "opaque TCP beside {total} idle connections"
    );
    // And idle ones still work.
    for c in idle.iter_mut().step_by(total / 20) {
        if let Idle::Socket(s) = c {
            if s.peer_addr().unwrap() == proxy.inbound {
                s.write_all(b"\x01").await.unwrap();
                let mut b = [0u8; 1];
                s.read_exact(&mut b).await.unwrap();
                assert_eq!(b, [1]);
            }
        }
    }
    assert!(per <= MAX_PER_CONNECTION, "{per} bytes per idle connection");
}
