//! Explicit proxy mode finds a name in the system's hosts file, as
//! `getaddrinfo` would: without a control plane (the system's resolver),
//! and with one that does not know the name (the DNS fallback, whose DNS
//! server here never answers and must not be asked).
//!
//! The machine's `/etc/hosts` is not touched: the proxy binary runs in a
//! private mount namespace (`unshare --mount`) with a temporary file
//! bind-mounted over `/etc/hosts`, so it reads that file through the real
//! path. Root only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use linnet_test_support::{
    control::ControlPlane,
    eventually,
    http::{HttpServer, curl, pattern},
    is_root,
    metrics::{Scrape, try_http},
    process::{Process, free_port},
};
use std::{
    net::SocketAddr,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

const BIN: &str = env!("CARGO_BIN_EXE_linnet");

/// Names only the temporary hosts file knows: `web4` on 127.0.0.1,
/// `web6` on ::1, `both` on both (its server listens on 127.0.0.1 only).
const HOSTS: &str = "\
127.0.0.1 localhost
127.0.0.1 web4.hosts.linnet.test both.hosts.linnet.test
::1 web6.hosts.linnet.test both.hosts.linnet.test
";

/// Runs `linnet proxy` with `env`, in its own mount namespace where
/// `hosts` is `/etc/hosts`; returns it and its outbound and admin
/// addresses once it is ready.
async fn proxy_with_hosts(
    hosts: &std::path::Path,
    env: &[(&str, String)],
) -> (Process, SocketAddr, SocketAddr) {
    let outbound: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(r#"mount --bind "$0" /etc/hosts && exec "$1" proxy"#)
        .arg(hosts)
        .arg(BIN)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LINNET_OUTBOUND_LISTEN_ADDR", outbound.to_string())
        .env("LINNET_INBOUND_LISTEN_ADDR", "127.0.0.1:0")
        .env("LINNET_ADMIN_LISTEN_ADDR", admin.to_string());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let proxy = Process::spawn("hosts-file", cmd);
    eventually(
        "the proxy in its mount namespace is ready",
        Duration::from_secs(20),
        || async {
            matches!(try_http(admin, "GET", "/ready", "").await, Ok((200, _))).then_some(())
        },
    )
    .await;
    (proxy, outbound, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_in_the_hosts_file_is_found_in_explicit_mode() {
    if !is_root() {
        eprintln!("SKIPPED a_name_in_the_hosts_file_is_found_in_explicit_mode: needs root");
        return;
    }
    // The names exist only inside the proxy's namespace.
    let outside = Command::new("getent")
        .args(["hosts", "web4.hosts.linnet.test"])
        .output()
        .unwrap();
    assert!(!outside.status.success(), "the machine knows the test name");

    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, HOSTS).unwrap();
    let v4 = HttpServer::start().await;
    let v6 = HttpServer::start_on(tokio::net::TcpListener::bind("[::1]:0").await.unwrap());
    let plane = ControlPlane::start("services: {}\n").await;
    // A DNS server that never answers, counting what it is asked.
    let dns = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dns_addr = dns.local_addr().unwrap();
    let queries = Arc::new(AtomicUsize::new(0));
    let counter = queries.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while dns.recv_from(&mut buf).await.is_ok() {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });

    let targets = [
        ("web4.hosts.linnet.test", &v4),
        ("web6.hosts.linnet.test", &v6),
        ("both.hosts.linnet.test", &v4),
    ];
    for with_control_plane in [false, true] {
        let env = if with_control_plane {
            vec![
                ("LINNET_DESTINATION_SVC_ADDR", plane.addr.to_string()),
                ("LINNET_DNS_SERVERS", dns_addr.to_string()),
                ("LINNET_DNS_MIN_TTL", "10m".to_string()),
                ("LINNET_DNS_MAX_TTL", "10m".to_string()),
            ]
        } else {
            Vec::new()
        };
        let (proxy, outbound, admin) = proxy_with_hosts(&hosts, &env).await;
        let p = format!("http://{outbound}");
        let before = (v4.seen().len(), v6.seen().len());
        for (name, server) in targets {
            let url = format!("http://{name}:{}/bytes/5", server.addr.port());
            let (body, _) = curl(&["-x", &p, &url]).await;
            assert_eq!(
                body.as_bytes(),
                &pattern(5)[..],
                "{url} (control plane: {with_control_plane}); log:\n{}",
                proxy.log()
            );
        }
        assert_eq!(v4.seen().len() - before.0, 2);
        assert_eq!(v6.seen().len() - before.1, 1);
        let (status, text) = try_http(admin, "GET", "/metrics", "").await.unwrap();
        assert_eq!(status, 200);
        let m = Scrape(text);
        // Three names, each looked up once: by the system's resolver, or
        // by the DNS fallback from the hosts file.
        let source = if with_control_plane {
            "hosts"
        } else {
            "system"
        };
        let resolved = [("source", source), ("outcome", "resolved")];
        assert_eq!(m.sum("name_resolutions_total", &resolved), 3.0, "{}", m.0);
        assert_eq!(m.sum("name_resolutions_total", &[]), 3.0, "{}", m.0);
        let ok = [("direction", "outbound"), ("status_code", "200")];
        assert_eq!(m.sum("response_total", &ok), 3.0, "{}", m.0);
    }
    // The hosts file answered alone: DNS was never asked.
    assert_eq!(queries.load(Ordering::SeqCst), 0);
}
