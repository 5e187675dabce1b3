//! Real interception: `linnet init` and `linnet proxy` in network
//! namespaces joined by veth, like two pods. Needs root (CI runs as root);
//! without it the test says it is skipped, and why.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use linnet_test_support::{
    is_root,
    metrics::{Scrape, http},
    netns::{Netns, pod_init},
    process::{Process, world_executable_copy},
    tcp::{ExchangeServer, exchange, random_payload, recv_message},
};
use sha2::{Digest, Sha256};
use std::{process::Command, time::Duration};
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
};

const APP_PORT: u16 = 8080;

/// `linnet proxy` inside `ns`, as the proxy's uid (which the iptables
/// rules exempt from redirection), once ready.
fn start_proxy(ns: &Netns, bin: &std::path::Path, name: &str) -> Process {
    linnet_test_support::netns::pod_proxy(ns, bin, name, &[], true)
}

fn scrape(ns: &Netns) -> Scrape {
    ns.block_on(async {
        Scrape(
            http("127.0.0.1:4191".parse().unwrap(), "GET", "/metrics", "")
                .await
                .1,
        )
    })
}

#[test]
fn intercepts_pod_traffic_both_ways_and_drains_on_sigterm() {
    if !is_root() {
        eprintln!(
            "SKIPPED intercepts_pod_traffic_both_ways_and_drains_on_sigterm: needs root to create network namespaces and iptables rules (CI runs it as root)"
        );
        return;
    }
    let bin = world_executable_copy(std::path::Path::new(env!("CARGO_BIN_EXE_linnet")));
    let ((client_pod, _client_ip), (server_pod, server_ip)) = Netns::pair("lnt", 91);
    pod_init(&client_pod, &bin, &[]);
    pod_init(&server_pod, &bin, &[]);

    // The application in the server pod: runs the checked exchange on every
    // connection, and records the peer address it saw.
    let listener = server_pod.run(|| std::net::TcpListener::bind(("0.0.0.0", APP_PORT)).unwrap());
    listener.set_nonblocking(true).unwrap();
    let (stats_tx, stats_rx) = std::sync::mpsc::channel();
    let _app = server_pod.spawn(async move {
        let server = ExchangeServer::start_on(TcpListener::from_std(listener).unwrap(), 300_000);
        stats_tx.send(server.stats()).unwrap();
        std::future::pending::<()>().await;
    });
    let app = stats_rx.recv().unwrap();

    let mut client_proxy = start_proxy(&client_pod, &bin, "client-proxy");
    let server_proxy = start_proxy(&server_pod, &bin, "server-proxy");

    // A plain client in the client pod dials the server pod's IP.
    let target = format!("{server_ip}:{APP_PORT}");
    let results = client_pod.block_on({
        let target = target.clone();
        async move {
            let mut results = Vec::new();
            for i in 0..8 {
                let payload = random_payload(500_000 + i * 7);
                let stream = TcpStream::connect(&target).await.unwrap();
                results.push(exchange(stream, &payload).await);
            }
            results
        }
    });
    for r in &results {
        assert!(
            r.is_ok(),
            "exchange failed: {results:?}\nclient proxy:\n{}\nserver proxy:\n{}",
            client_proxy.log(),
            server_proxy.log()
        );
    }

    block_on(app.assert_completed(8));
    // Both proxies carried every connection.
    let out = scrape(&client_pod);
    let inbound = scrape(&server_pod);
    let labels = |dir| {
        [
            ("direction", dir),
            ("peer", "src"),
            ("target_addr", target.as_str()),
        ]
    };
    assert_eq!(
        out.sum("tcp_open_total", &labels("outbound")),
        8.0,
        "{}",
        out.0
    );
    assert_eq!(
        inbound.sum("tcp_open_total", &labels("inbound")),
        8.0,
        "{}",
        inbound.0
    );
    assert!(out.sum("tcp_read_bytes_total", &labels("outbound")) >= 8.0 * 500_000.0);

    // SIGTERM with a long-lived connection open: it completes; new
    // connections are refused; the proxy exits 0 within the grace period.
    let payload = random_payload(2_000_000);
    let digest = Sha256::digest(&payload);
    let mut w = client_pod.block_on({
        let target = target.clone();
        async move {
            TcpStream::connect(&target)
                .await
                .unwrap()
                .into_std()
                .unwrap()
        }
    });
    w.set_nonblocking(false).unwrap();
    let r = w.try_clone().unwrap();
    let (head, tail) = payload.split_at(1_000_000);
    {
        use std::io::Write;
        w.write_all(&(payload.len() as u64).to_be_bytes()).unwrap();
        w.write_all(head).unwrap();
    }
    client_proxy.sigterm();
    // New connections from the pod now find nothing at 4140.
    let refused = client_pod.block_on({
        let target = target.clone();
        async move {
            for _ in 0..250 {
                if TcpStream::connect(&target).await.is_err() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            false
        }
    });
    assert!(
        refused,
        "new connections still accepted while draining:\n{}",
        client_proxy.log()
    );
    {
        use std::io::Write;
        w.write_all(tail).unwrap();
        w.write_all(&digest).unwrap();
        w.shutdown(std::net::Shutdown::Write).unwrap();
    }
    r.set_nonblocking(true).unwrap();
    let reply = client_pod.block_on(async move {
        let mut s = TcpStream::from_std(r).unwrap();
        let reply = recv_message(&mut s).await;
        let _ = s.shutdown().await;
        reply
    });
    assert!(
        reply.is_ok(),
        "draining connection did not complete:\n{}",
        client_proxy.log()
    );
    let status = client_proxy
        .wait_timeout(Duration::from_secs(30))
        .unwrap_or_else(|| {
            panic!(
                "proxy did not exit within the grace period:\n{}",
                client_proxy.log()
            )
        });
    assert_eq!(status.code(), Some(0), "{}", client_proxy.log());

    // `linnet init --remove` leaves no rules of ours behind.
    let out = client_pod
        .command(bin.to_str().unwrap())
        .args(["init", "--remove"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rules = Command::new("ip")
        .args([
            "netns",
            "exec",
            &client_pod.name,
            "iptables-save",
            "-t",
            "nat",
        ])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&rules.stdout).contains("PROXY_INIT"));
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}
