//! Peers cannot grow the proxy's metrics without bound: requests with
//! distinct `Host` headers and TLS connections with distinct SNIs go
//! through one `linnet proxy` (its own process, one core, as a sidecar
//! runs) whose labels are capped at [`CAP`] values and whose idle series
//! go after [`IDLE`], in identical rounds (new names each time) of
//! [`REQUESTS`] and [`TLS_CONNECTIONS`]. After each round the page stays
//! under a bound derived from the cap and the overflow series count what
//! did not fit; once idle, every series the round made is gone (the page
//! is back to its size before any traffic) and so is every value
//! (`metrics_label_values` is 0).
//!
//! Memory: the proxy's `VmRSS` after [`ROUNDS`] rounds (100,000 requests
//! and 10,000 TLS connections), once their series are evicted, is within
//! 2 MiB of what it was before them (given the allocator's decay time,
//! about 10 s, to return the last round's pages). "Before" is measured
//! after one warm-up round: the allocator keeps its bookkeeping for the
//! first burst's high-water mark, and what this test asks is that later
//! bursts leave nothing behind. Growth without bound would keep about
//! 30 MiB a round.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use linnet_test_support::{eventually, metrics::Scrape, sidecar::Sidecar};
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
/// Rounds of traffic measured after the warm-up (their totals are
/// 100,000 requests and 10,000 TLS connections).
const ROUNDS: usize = 4;
/// Requests per round, each with a `Host` never sent before.
const REQUESTS: usize = 25_000;
/// TLS connections per round, each with an SNI never sent before.
const TLS_CONNECTIONS: usize = 2_500;
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
async fn requests(proxy: SocketAddr, round: usize, worker: usize) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let mine: Vec<usize> = (worker..REQUESTS).step_by(CONCURRENCY).collect();
    for batch in mine.chunks(PIPELINE) {
        let mut reqs = String::new();
        for i in batch {
            reqs.push_str(&format!(
                "GET / HTTP/1.1\r\nhost: h{round}-{i}.{DOMAIN}\r\n\r\n"
            ));
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
async fn hellos(proxy: SocketAddr, round: usize, worker: usize) {
    let mut sink = Vec::new();
    for i in (worker..TLS_CONNECTIONS).step_by(CONCURRENCY) {
        let hello =
            linnet_detect::test_util::client_hello(Some(&format!("s{round}-{i}.{DOMAIN}")), 0);
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
async fn round(proxy: &Sidecar, round: usize) -> (Duration, Scrape, Scrape) {
    let start = Instant::now();
    let kind = |tls: bool| async move {
        let mut tasks = JoinSet::new();
        for worker in 0..CONCURRENCY {
            if tls {
                tasks.spawn(hellos(proxy.outbound, round, worker));
            } else {
                tasks.spawn(requests(proxy.outbound, round, worker));
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
async fn evicted(proxy: &Sidecar) {
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
    let cap = CAP.to_string();
    let idle = format!("{}s", IDLE.as_secs());
    let backend = backend.to_string();
    let proxy = Sidecar::start(
        "cardinality",
        &[
            ("LINNET_OUTBOUND_ORIG_DST_ADDR", &backend),
            ("LINNET_CORES", "1"),
            ("LINNET_METRICS_MAX_LABEL_VALUES", &cap),
            ("LINNET_METRICS_IDLE_TIMEOUT", &idle),
        ],
    )
    .await;
    let base_len = proxy.metrics().await.0.len();
    let mut rss = vec![proxy.rss()];
    let mut counted = (0.0, 0.0);
    // Round 0 warms up; rounds 1 to ROUNDS are measured against it.
    for n in 0..=ROUNDS {
        let scrapes = round(&proxy, n).await;
        counted = check_round(&scrapes, base_len, counted);
        println!(
            "round {n}: {:?}, scrapes {} and {} bytes (before any traffic {base_len}), overflows {counted:?}, RSS {} KiB",
            scrapes.0,
            scrapes.1.0.len(),
            scrapes.2.0.len(),
            proxy.rss() / 1024
        );
        // Every measurement is taken in the same state: scrapes dropped,
        // series evicted.
        drop(scrapes);
        evicted(&proxy).await;
        let m = proxy.metrics().await;
        for (family, label) in [("http", "authority"), ("tcp", "sni")] {
            assert_eq!(
                m.sum(
                    "metrics_label_values",
                    &[("family", family), ("label", label)]
                ),
                0.0,
                "{family} {label} values left after eviction:\n{}",
                m.0
            );
        }
        rss.push(proxy.rss());
    }
    println!(
        "RSS (KiB) of the proxy before any traffic, then after each round's eviction (round 0 warms up): {:?}",
        rss.iter().map(|b| b / 1024).collect::<Vec<_>>()
    );
    // The allocator returns freed pages on a decay schedule (about 10 s):
    // the last round's may still be resident, so it gets that long.
    let before = rss[1];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut after = rss[ROUNDS + 1];
    while after > before + 2 * 1024 * 1024 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        after = proxy.rss();
    }
    rss.push(after);
    assert!(
        after <= before + 2 * 1024 * 1024,
        "RSS grew by {} KiB over {ROUNDS} rounds whose series were all evicted: {rss:?}",
        (after.saturating_sub(before)) / 1024
    );
    // What is left is what no peer chose: the page is back to its size
    // before any traffic, but for the few series of the connections the
    // proxy keeps open to the backend and the detection counts.
    let m = proxy.metrics().await;
    assert!(
        m.0.len() <= base_len + 8 * 1024,
        "{} bytes left (from {base_len}):\n{}",
        m.0.len(),
        m.0
    );
    // The counters that say what was dropped stay.
    assert_eq!(overflows(&m, "http", "authority"), counted.0);
    assert_eq!(overflows(&m, "tcp", "sni"), counted.1);
}
