//! File-descriptor exhaustion: `linnet proxy` runs with a low
//! `RLIMIT_NOFILE` (set with `prlimit`), and a flood of connections that
//! send nothing (each holds what the proxy gives it while it waits to
//! detect the protocol) hits the inbound listener. Meanwhile:
//! - a new inbound connection fails at once (refused or reset), rather
//!   than waiting in the accept queue for a descriptor;
//! - the failure is counted: `tcp_accept_errors_total` when the proxy ran
//!   out of descriptors, or `tcp_connection_limit_total` when the
//!   listener's connection limit (fitted to the open-file limit) refused
//!   it first;
//! - the admin server (`/ready`, `/metrics`) and the outbound listener
//!   keep working.
//!
//! Once the flood ends, the inbound listener serves again.
//!
//! Every check runs, and the test fails listing those that did not hold.

use crate::traffic::{self, App, Got, Kind, Transfer};
use linnet_test_support::{eventually, metrics::try_http, sidecar::Sidecar};
use std::{io, net::SocketAddr, time::Duration};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// The proxy's `RLIMIT_NOFILE`.
const NOFILE: u64 = 256;
/// Connections in the flood: more than the proxy can hold.
const FLOOD: usize = 2 * NOFILE as usize;
/// How long a check may take before it counts as hanging.
const HANG: Duration = Duration::from_secs(5);

const T: Transfer = Transfer {
    up: 16 * 1024,
    down: 16 * 1024,
};

/// How a new connection to `addr` that sends a request fares: `Ok` if
/// it was refused or reset, `Err` saying what happened otherwise.
async fn refused(addr: SocketAddr) -> Result<(), String> {
    let attempt = async {
        let mut s = match TcpStream::connect(addr).await {
            Err(e) => return Ok(e),
            Ok(s) => s,
        };
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.ok();
        let mut buf = [0u8; 64];
        match s.read(&mut buf).await {
            Err(e) => Ok(e),
            Ok(0) => Err("closed with a FIN".to_string()),
            Ok(n) => Err(format!("answered {:?}", String::from_utf8_lossy(&buf[..n]))),
        }
    };
    match tokio::time::timeout(HANG, attempt).await {
        Err(_) => Err(format!("neither refused nor reset within {HANG:?}")),
        Ok(Err(e)) => Err(e),
        Ok(Ok(e))
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
            ) =>
        {
            Ok(())
        }
        Ok(Ok(e)) => Err(format!("failed with {e}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptors_exhausted_by_an_inbound_flood() {
    let (http, tcp) = (App::start(Kind::Http1).await, App::start(Kind::Tcp).await);
    let (h, t) = (http.addr.to_string(), tcp.addr.to_string());
    let proxy = Sidecar::start_limited(
        "fds",
        &[
            ("LINNET_INBOUND_ORIG_DST_ADDR", &h),
            ("LINNET_OUTBOUND_ORIG_DST_ADDR", &t),
            ("LINNET_CORES", "1"),
        ],
        Some(NOFILE),
    )
    .await;
    assert_eq!(
        traffic::run(Kind::Http1, proxy.inbound, T).await.got,
        Got::Complete
    );
    let counted_before = refusals(&proxy).await;

    // The flood: connections that send nothing, so that each holds a
    // descriptor while the proxy waits to detect its protocol.
    let mut flood = Vec::new();
    for _ in 0..FLOOD {
        match tokio::time::timeout(HANG, TcpStream::connect(proxy.inbound)).await {
            Ok(Ok(s)) => flood.push(s),
            _ => break,
        }
    }
    // The flood has reached the proxy: out of descriptors, or refused by
    // its connection limit.
    let admin = proxy.admin;
    eventually("the flood refused", Duration::from_secs(10), || async {
        if proxy.fds() as u64 >= NOFILE - 2 {
            return Some(());
        }
        let (_, body) = try_http(admin, "GET", "/metrics", "").await.ok()?;
        (refused_in(&linnet_test_support::metrics::Scrape(body)) > counted_before).then_some(())
    })
    .await;
    println!(
        "a flood of {} connections: the proxy holds {} descriptors of {NOFILE}",
        flood.len(),
        proxy.fds()
    );

    let mut failed = Vec::new();
    if let Err(e) = refused(proxy.inbound).await {
        failed.push(format!("a new inbound connection: {e}"));
    }
    for path in ["/ready", "/metrics"] {
        match tokio::time::timeout(HANG, try_http(proxy.admin, "GET", path, "")).await {
            Ok(Ok((200, _))) => {}
            other => failed.push(format!("admin {path}: {other:?}")),
        }
    }
    match tokio::time::timeout(HANG, traffic::run(Kind::Tcp, proxy.outbound, T)).await {
        Ok(end) if end.got == Got::Complete => {}
        other => failed.push(format!("outbound: {other:?}")),
    }
    match tokio::time::timeout(HANG, refusals(&proxy)).await {
        Ok(n) if n > counted_before => {}
        other => failed.push(format!(
            "refusals counted: {other:?} (before {counted_before})"
        )),
    }

    drop(flood);
    let inbound = proxy.inbound;
    eventually("inbound serves again", Duration::from_secs(20), || async {
        let end = traffic::run(Kind::Http1, inbound, T).await;
        (end.got == Got::Complete).then_some(())
    })
    .await;
    assert!(failed.is_empty(), "while out of descriptors: {failed:#?}");
}

/// Inbound connections the proxy counted as refused or failed to accept.
async fn refusals(proxy: &Sidecar) -> f64 {
    refused_in(&proxy.metrics().await)
}

fn refused_in(m: &linnet_test_support::metrics::Scrape) -> f64 {
    let inbound = [("direction", "inbound")];
    m.sum("tcp_accept_errors_total", &inbound) + m.sum("tcp_connection_limit_total", &inbound)
}
