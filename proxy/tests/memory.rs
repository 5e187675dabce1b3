//! Memory comes back after a burst: `linnet proxy` (its own process, one
//! core, as a sidecar runs) takes [`REQUESTS`] requests over
//! [`CONNECTIONS`] connections held open at once, and within
//! [`SETTLE`] of the connections closing its `VmRSS` is within 10% of
//! what it was before the burst.
//!
//! "Before" is measured after one warm-up burst of the same shape, the
//! house rule for memory tests (see `cardinality.rs`): the allocator keeps
//! its bookkeeping for the process's high-water mark. The first burst's
//! figures are printed too. The test also checks that the burst did raise
//! memory well above the baseline while its connections were open, so
//! that "came back" means something.
//!
//! With glibc's allocator this failed: the burst's memory stayed resident
//! for good (see `src/alloc.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use linnet_test_support::sidecar::Sidecar;
use std::{net::SocketAddr, time::Duration};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Barrier,
    task::JoinSet,
};

const CONNECTIONS: usize = 1_000;
const REQUESTS: usize = 20_000;
/// How long memory may take to come back.
const SETTLE: Duration = Duration::from_secs(30);

/// A keep-alive HTTP/1.1 backend answering every request `200 ok`.
async fn backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = Vec::with_capacity(1024);
                let mut chunk = [0u8; 1024];
                loop {
                    let n = match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
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

/// One client connection: its share of the requests, one at a time,
/// then it waits at `all_done` (so that every connection is open at
/// once) before closing.
async fn client(proxy: SocketAddr, requests: usize, all_done: &Barrier) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let mut buf = vec![0u8; 1024];
    for _ in 0..requests {
        s.write_all(b"GET / HTTP/1.1\r\nhost: burst.test\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        while !(got.ends_with(b"\r\n\r\nok")) {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "the proxy closed a connection mid-burst");
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 200"), "{got:?}");
    }
    all_done.wait().await;
}

/// A burst; returns the proxy's RSS while all its connections were open.
async fn burst(proxy: &Sidecar) -> u64 {
    let all_done = std::sync::Arc::new(Barrier::new(CONNECTIONS + 1));
    let mut clients = JoinSet::new();
    for _ in 0..CONNECTIONS {
        let all_done = all_done.clone();
        let outbound = proxy.outbound;
        clients.spawn(async move { client(outbound, REQUESTS / CONNECTIONS, &all_done).await });
    }
    all_done.wait().await;
    let peak = proxy.rss();
    while let Some(r) = clients.join_next().await {
        r.unwrap();
    }
    peak
}

/// Waits until RSS is within 10% of `baseline`; returns the RSS when it
/// was, or the last one seen when it never was.
async fn settles(proxy: &Sidecar, baseline: u64) -> Result<u64, u64> {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let rss = proxy.rss();
        if rss * 10 <= baseline * 11 {
            return Ok(rss);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(rss);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_comes_back_after_a_burst() {
    let app = backend().await;
    let app = app.to_string();
    let proxy = Sidecar::start(
        "memory",
        &[
            ("LINNET_OUTBOUND_ORIG_DST_ADDR", &app),
            ("LINNET_CORES", "1"),
        ],
    )
    .await;
    let idle = proxy.rss();
    let first_peak = burst(&proxy).await;
    // The first burst's memory has as long to come back as the second's.
    tokio::time::sleep(SETTLE).await;
    let warm = proxy.rss();
    println!(
        "first burst: idle {:.1} MiB, peak {:.1} MiB, settled at {:.1} MiB",
        mib(idle),
        mib(first_peak),
        mib(warm)
    );
    let peak = burst(&proxy).await;
    assert!(
        peak > warm + 10 * 1024 * 1024,
        "the burst should raise memory well above {:.1} MiB, it reached {:.1} MiB",
        mib(warm),
        mib(peak)
    );
    let settled = settles(&proxy, warm).await;
    println!(
        "second burst: before {:.1} MiB, peak {:.1} MiB, after {:.1} MiB",
        mib(warm),
        mib(peak),
        mib(settled.unwrap_or_else(|e| e))
    );
    let after = settled.unwrap_or_else(|rss| {
        panic!(
            "{SETTLE:?} after the burst, RSS is {:.1} MiB: more than 10% over the {:.1} MiB before it",
            mib(rss),
            mib(warm)
        )
    });
    assert!(after * 10 <= warm * 11);
}
