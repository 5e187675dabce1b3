//! Peers cannot grow the proxy's metrics without bound: 100,000 requests
//! with distinct `Host` headers and 10,000 TLS connections with distinct
//! SNIs go through one proxy whose labels are capped at [`CAP`] values and
//! whose idle series go after [`IDLE`].
//!
//! Memory is measured as the process's `VmRSS` (the proxy runs in this
//! process). The allocator keeps freed memory for reuse rather than
//! returning all of it to the system, so the baseline is taken after a
//! warm-up round has run and been evicted; a second, identical round must
//! then leave the process within 2 MiB of that baseline once its series
//! are evicted. Growth without bound would show as a second round's worth
//! of series kept.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use linnet_app::OrigDst;
use linnet_test_support::{eventually, metrics::Scrape, proxy::Proxy};
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinSet,
};

/// `METRICS_MAX_LABEL_VALUES` for this proxy.
const CAP: usize = 100;
/// `METRICS_IDLE_TIMEOUT` for this proxy.
const IDLE: Duration = Duration::from_secs(2);
const REQUESTS: usize = 100_000;
const TLS_CONNECTIONS: usize = 10_000;
const CONCURRENCY: usize = 16;
/// Requests written at once on a connection (HTTP/1.1 pipelining).
const PIPELINE: usize = 8;
/// The most a scrape may grow per allowed value: an authority's
/// `request_total`, `response_total` and 28 `response_latency_ms` lines,
/// and an SNI's `tcp_*` lines on both sides, at most ~200 bytes each.
const BYTES_PER_VALUE: usize = 12 * 1024;
/// Hosts and SNIs all end with this, to find their series.
const DOMAIN: &str = "cardinality.test";

/// A backend for both kinds of traffic: a ClientHello is answered by a
/// close; HTTP/1.1 requests (no bodies) by `200 ok`, keep-alive.
async fn backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = Vec::with_capacity(4096);
                let mut chunk = [0u8; 4096];
                loop {
                    let n = match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if buf.is_empty() && chunk[0] == 0x16 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = find(&buf, b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if s.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One keep-alive connection's share of the requests, each with its own
/// `Host`, pipelined [`PIPELINE`] at a time.
async fn requests(proxy: SocketAddr, worker: usize) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let mine: Vec<usize> = (worker..REQUESTS).step_by(CONCURRENCY).collect();
    for batch in mine.chunks(PIPELINE) {
        let mut reqs = String::new();
        for i in batch {
            reqs.push_str(&format!("GET / HTTP/1.1\r\nhost: h{i}.{DOMAIN}\r\n\r\n"));
        }
        s.write_all(reqs.as_bytes()).await.unwrap();
        // Each response is its head and the two bytes of its body.
        let mut answered = 0;
        while answered < batch.len() {
            match find(&buf, b"\r\n\r\n") {
                Some(end) if buf.len() >= end + 6 => {
                    let rsp = &buf[..end + 6];
                    assert!(
                        rsp.starts_with(b"HTTP/1.1 200") && rsp.ends_with(b"ok"),
                        "{:?}",
                        String::from_utf8_lossy(rsp)
                    );
                    buf.drain(..end + 6);
                    answered += 1;
                }
                _ => {
                    let n = s.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "the proxy closed the connection");
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
    }
}

/// One worker's share of the TLS connections: a ClientHello with its own
/// SNI, then whatever comes back until the close.
async fn hellos(proxy: SocketAddr, worker: usize) {
    let mut sink = Vec::new();
    for i in (worker..TLS_CONNECTIONS).step_by(CONCURRENCY) {
        let hello = linnet_detect::test_util::client_hello(Some(&format!("s{i}.{DOMAIN}")), 0);
        let mut s = TcpStream::connect(proxy).await.unwrap();
        s.write_all(&hello).await.unwrap();
        sink.clear();
        // A reset instead of a close is fine too: only the labels matter.
        let _ = s.read_to_end(&mut sink).await;
    }
}

/// One round of both kinds of traffic at once. Each kind's overflow
/// series is idle (and soon evicted) once that kind is done, so the proxy
/// is scraped as each finishes: returns how long the round took and the
/// two scrapes, `(http, tls)`.
async fn round(proxy: &Proxy) -> (Duration, Scrape, Scrape) {
    let start = Instant::now();
    let kind = |tls: bool| async move {
        let mut tasks = JoinSet::new();
        for worker in 0..CONCURRENCY {
            if tls {
                tasks.spawn(hellos(proxy.outbound, worker));
            } else {
                tasks.spawn(requests(proxy.outbound, worker));
            }
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        proxy.metrics().await
    };
    let (http, tls) = tokio::join!(kind(false), kind(true));
    (start.elapsed(), http, tls)
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

fn overflows(m: &Scrape, family: &str, label: &str) -> f64 {
    m.sum(
        "metrics_label_overflow_total",
        &[("family", family), ("label", label)],
    )
}

/// Checks the scrapes taken as a round's two kinds of traffic finished;
/// returns the overflow counters `(authority, sni)`.
fn check_round(
    (elapsed, http, tls): &(Duration, Scrape, Scrape),
    base_len: usize,
    before: (f64, f64),
) -> (f64, f64) {
    let bound = base_len + (CAP + 1) * BYTES_PER_VALUE;
    for m in [http, tls] {
        assert!(
            m.0.len() <= bound,
            "a scrape of {} bytes, over the bound of {bound}",
            m.0.len()
        );
        let authorities =
            m.0.lines()
                .filter(|l| l.starts_with("request_total{") && l.contains(DOMAIN))
                .count();
        assert!(authorities <= CAP, "{authorities} authorities kept");
        let snis = m
            .0
            .lines()
            .filter(|l| {
                l.starts_with("tcp_open_total{") && l.contains("peer=\"src\"") && l.contains(DOMAIN)
            })
            .count();
        assert!(snis <= CAP, "{snis} SNIs kept");
    }

    // Values are freed after the idle timeout, so a round admits at most
    // a capful per idle timeout (and one more); the rest overflowed.
    let admitted = CAP as f64 * (elapsed.as_secs_f64() / IDLE.as_secs_f64() + 2.0);
    let counted = overflows(http, "http", "authority");
    let new = counted - before.0;
    assert!(
        new >= REQUESTS as f64 - admitted,
        "{new} authorities overflowed in {elapsed:?}"
    );
    // The overflow series counts each of those requests (it was idle, and
    // so evicted, between rounds).
    assert_eq!(
        http.sum("request_total", &[("authority", "<overflow>")]),
        new,
        "{}",
        http.0
    );
    assert_eq!(
        http.sum(
            "response_total",
            &[("authority", "<overflow>"), ("status_code", "200")]
        ),
        new
    );
    // Each TLS connection resolves its SNI on both sides (and a side may
    // find a value freed that the other did not).
    let counted_tls = overflows(tls, "tcp", "sni");
    let new = counted_tls - before.1;
    assert!(
        new >= 2.0 * (TLS_CONNECTIONS as f64 - admitted),
        "{new} SNIs overflowed in {elapsed:?}"
    );
    // The overflow series (both sides) count each of those resolutions.
    assert_eq!(
        tls.sum("tcp_open_total", &[("sni", "<overflow>")]),
        new,
        "{}",
        tls.0
    );
    (counted, counted_tls)
}

/// Waits for every series of the round to be evicted. Nothing can go
/// before the idle timeout has passed since the round ended, so the proxy
/// is not scraped before then: each scrape allocates a few large buffers,
/// which would only blur the memory figures.
async fn evicted(proxy: &Proxy) {
    let ended = Instant::now();
    eventually(
        "the round's series evicted",
        Duration::from_secs(30),
        || async {
            if ended.elapsed() < IDLE {
                return None;
            }
            let m = proxy.metrics().await;
            // (`"<overflow>"` alone is in a HELP line.)
            (!m.0.contains(DOMAIN) && !m.0.contains("=\"<overflow>\"")).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_chosen_labels_stay_bounded() {
    let backend = backend().await;
    let idle = format!("{}s", IDLE.as_secs());
    let cap = CAP.to_string();
    let proxy = Proxy::start(
        OrigDst::Fixed(backend),
        &[
            ("LINNET_METRICS_MAX_LABEL_VALUES", &cap),
            ("LINNET_METRICS_IDLE_TIMEOUT", &idle),
        ],
    )
    .await;
    let base_len = proxy.metrics().await.0.len();
    let rss_start = rss_bytes();

    // Warm-up round.
    let first = round(&proxy).await;
    let counted = check_round(&first, base_len, (0.0, 0.0));
    println!(
        "round 1: {:?}, scrapes {} and {} bytes (base {base_len}), overflows {counted:?}, RSS {} KiB",
        first.0,
        first.1.0.len(),
        first.2.0.len(),
        rss_bytes() / 1024
    );
    // Both measurements are taken in the same state: scrapes dropped,
    // series evicted.
    drop(first);
    evicted(&proxy).await;
    let rss_baseline = rss_bytes();

    // The same again.
    let second = round(&proxy).await;
    let counted = check_round(&second, base_len, counted);
    println!(
        "round 2: {:?}, scrapes {} and {} bytes, overflows {counted:?}, RSS {} KiB",
        second.0,
        second.1.0.len(),
        second.2.0.len(),
        rss_bytes() / 1024
    );
    drop(second);
    evicted(&proxy).await;
    let rss_after = rss_bytes();
    println!(
        "RSS: start {} KiB, baseline after round 1 {} KiB, after round 2 {} KiB",
        rss_start / 1024,
        rss_baseline / 1024,
        rss_after / 1024
    );
    assert!(
        rss_after <= rss_baseline + 2 * 1024 * 1024,
        "RSS grew from {rss_baseline} to {rss_after} bytes over a round whose series were all evicted"
    );
    // The counters that say what was dropped stay.
    let m = proxy.metrics().await;
    assert_eq!(overflows(&m, "http", "authority"), counted.0);
    assert_eq!(overflows(&m, "tcp", "sni"), counted.1);
}
