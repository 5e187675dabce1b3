//! A real Prometheus server (Debian's `prometheus`) scrapes the proxy while
//! traffic flows; what it stores must match the connections made, and
//! `promtool` must parse the page.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use linnet_app::OrigDst;
use linnet_test_support::{
    control::ControlPlane,
    eventually,
    http::{HttpServer, collect, h1_client},
    metrics::try_http,
    process::free_port,
    proxy::Proxy,
    tcp::{ExchangeServer, exchange, random_payload},
};
use std::{
    io::Write,
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};
use tokio::net::TcpStream;

/// A Prometheus server, killed and its data removed on drop.
struct Prometheus {
    child: Child,
    dir: std::path::PathBuf,
    addr: SocketAddr,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every second. Its port is picked
    /// by binding port 0 and releasing it, which another process may take
    /// first: then Prometheus exits, and it is started again elsewhere.
    async fn start(targets: &[SocketAddr]) -> Self {
        // One directory per server, even for tests sharing a process.
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("linnet-prom-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: linnet\n    static_configs:\n      - targets: [{targets}]\n",
            targets = targets
                .iter()
                .map(|t| format!("'{t}'"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let log = dir.join("prometheus.log");
        for _attempt in 0..5 {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let mut child = Command::new("prometheus")
                .arg(format!(
                    "--config.file={}",
                    dir.join("prometheus.yml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("the prometheus binary (Debian package `prometheus`) must be installed");
            for _ in 0..300 {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                if try_http(addr, "GET", "/-/ready", "")
                    .await
                    .is_ok_and(|(s, _)| s == 200)
                {
                    return Self { child, dir, addr };
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "prometheus did not start; its log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Runs an instant query; returns the values of the result vector.
    async fn query(&self, promql: &str) -> Option<Vec<f64>> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let (status, body) = try_http(self.addr, "GET", &path, "").await.ok()?;
        if status != 200 {
            return None;
        }
        // The body may be chunked; the JSON object is what matters.
        let json = &body[body.find('{')?..=body.rfind('}')?];
        let v: serde_json::Value = serde_json::from_str(json).ok()?;
        let result = v["data"]["result"].as_array()?;
        Some(
            result
                .iter()
                .filter_map(|r| r["value"][1].as_str()?.parse().ok())
                .collect(),
        )
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_what_happened() {
    let server = ExchangeServer::start(64 * 1024).await;
    let proxy = Proxy::start(OrigDst::Fixed(server.addr), &[]).await;
    let web = HttpServer::start().await;
    let http_proxy = Proxy::start(OrigDst::Fixed(web.addr), &[]).await;
    let prometheus = Prometheus::start(&[proxy.admin, http_proxy.admin]).await;

    eventually(
        "prometheus sees the target up",
        Duration::from_secs(60),
        || async {
            (prometheus.query("up{job=\"linnet\"}").await? == vec![1.0, 1.0]).then_some(())
        },
    )
    .await;

    // Traffic while it scrapes: 12 outbound and 5 inbound connections.
    let mut sent = 0u64;
    for i in 0..17 {
        let via = if i < 12 {
            proxy.outbound
        } else {
            proxy.inbound
        };
        let payload = random_payload(10_000 + i * 1000);
        sent += payload.len() as u64 + 8 + 32;
        exchange(TcpStream::connect(via).await.unwrap(), &payload)
            .await
            .unwrap();
    }

    server.stats().assert_completed(17).await;
    let tcp = proxy.admin;
    let target = server.addr;
    for (direction, n) in [("outbound", 12.0), ("inbound", 5.0)] {
        let q = format!(
            "sum(tcp_open_total{{instance=\"{tcp}\",direction=\"{direction}\",peer=\"src\",target_addr=\"{target}\"}})"
        );
        eventually(
            &format!("prometheus stores {n} {direction} connections"),
            Duration::from_secs(30),
            || async { (prometheus.query(&q).await? == vec![n]).then_some(()) },
        )
        .await;
        let q = format!(
            "sum(tcp_close_total{{instance=\"{tcp}\",direction=\"{direction}\",error=\"\"}})"
        );
        eventually("closes stored", Duration::from_secs(30), || async {
            (prometheus.query(&q).await? == vec![2.0 * n]).then_some(())
        })
        .await;
    }
    let q = format!("sum(tcp_read_bytes_total{{instance=\"{tcp}\",peer=\"src\"}})");
    eventually("bytes stored", Duration::from_secs(30), || async {
        (prometheus.query(&q).await? == vec![sent as f64]).then_some(())
    })
    .await;

    // HTTP: 7 requests, 5 answered 200 and 2 answered 500.
    let client = h1_client();
    for path in [
        "/",
        "/",
        "/bytes/3",
        "/",
        "/bytes/9",
        "/status/500",
        "/status/500",
    ] {
        let req = http::Request::get(format!("http://{}{path}", http_proxy.outbound))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        collect(client.request(req).await.unwrap()).await;
    }
    let web_target = web.addr;
    for (q, want) in [
        (
            format!("sum(request_total{{target_addr=\"{web_target}\"}})"),
            7.0,
        ),
        (
            "sum(response_total{status_code=\"200\",classification=\"success\"})".to_string(),
            5.0,
        ),
        (
            "sum(response_total{status_code=\"500\",classification=\"failure\"})".to_string(),
            2.0,
        ),
        (
            format!("sum(response_latency_ms_count{{target_addr=\"{web_target}\"}})"),
            7.0,
        ),
        (
            format!("sum(response_latency_ms_bucket{{target_addr=\"{web_target}\",le=\"+Inf\"}})"),
            7.0,
        ),
    ] {
        eventually(
            &format!("prometheus stores {q} = {want}"),
            Duration::from_secs(30),
            || async { (prometheus.query(&q).await? == vec![want]).then_some(()) },
        )
        .await;
    }
    let rss = prometheus
        .query(&format!(
            "process_resident_memory_bytes{{instance=\"{tcp}\"}}"
        ))
        .await
        .unwrap();
    assert!(rss.len() == 1 && rss[0] > 0.0, "{rss:?}");
    let cpu = prometheus
        .query(&format!("process_cpu_seconds_total{{instance=\"{tcp}\"}}"))
        .await
        .unwrap();
    assert_eq!(cpu.len(), 1);
    let build = prometheus
        .query(&format!(
            "proxy_build_info{{instance=\"{tcp}\",vendor=\"linnet\"}}"
        ))
        .await
        .unwrap();
    assert_eq!(build, vec![1.0]);

    // promtool parses the page: exit 1 would be a parse error (3 is only
    // naming lints, which Linkerd-compatible names may trip).
    let page = http_proxy.metrics().await.0;
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`) must be installed");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "promtool failed: {report}\n{page}"
    );
    // Lints may name a metric with "error" in it; a parse failure says so.
    assert!(!report.contains("parsing error"), "promtool: {report}");
}

/// A mesh proxy with SPIFFE identity `id`, certified by `plane`.
async fn spiffe_proxy(
    plane: &ControlPlane,
    id: &str,
    token: &str,
    orig_dst: OrigDst,
    extra: &[(&str, &str)],
) -> Proxy {
    plane.meshed_proxy(id, token, orig_dst, extra).await
}

/// Label values that need escaping in the text format (a SPIFFE identity
/// may hold `"` and `\`) reach Prometheus intact: the scrape parses (the
/// target stays up) and the series holds the value as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_ingests_escaped_label_values() {
    const S: &str = r#"spiffe://cluster.local/ns/test/sa/ser\ver"#;
    const C: &str = r#"spiffe://cluster.local/ns/test/sa/"cli\ent""#;
    // YAML's double-quoted strings escape as PromQL's do.
    let quoted = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let backend = HttpServer::start().await;
    let vip = "10.96.0.9:80";
    let yaml = |endpoint: SocketAddr| {
        format!(
            "identity:\n  tokens:\n    {s}: s\n    {c}: c\n\
             services:\n  web.test.svc.cluster.local:80:\n    addresses: [\"{vip}\"]\n    endpoints:\n      - addr: \"{endpoint}\"\n        identity: {s}\n        server_name: server.test.sni.local\n",
            s = quoted(S),
            c = quoted(C),
        )
    };
    let plane = ControlPlane::start(&yaml("127.0.0.1:1".parse().unwrap())).await;
    let server = spiffe_proxy(
        &plane,
        S,
        "s",
        OrigDst::Fixed(backend.addr),
        &[("LINNET_IDENTITY_SERVER_NAME", "server.test.sni.local")],
    )
    .await;
    plane.write(&yaml(server.inbound));
    let client = spiffe_proxy(&plane, C, "c", OrigDst::Fixed(vip.parse().unwrap()), &[]).await;
    eventually("HTTP across the mesh", Duration::from_secs(10), || async {
        let uri = format!("http://{}/status/200", client.outbound);
        let rsp = h1_client().get(uri.parse().unwrap()).await.ok()?;
        (collect(rsp).await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(backend.seen().last().unwrap().headers["l5d-client-id"], C);
    // The page escapes the identities.
    let page = server.metrics().await.0;
    assert!(
        page.contains(r#"client_id="spiffe://cluster.local/ns/test/sa/\"cli\\ent\"""#),
        "{page}"
    );

    let prometheus = Prometheus::start(&[server.admin, client.admin]).await;
    eventually(
        "prometheus sees both targets up",
        Duration::from_secs(60),
        || async {
            (prometheus.query("up{job=\"linnet\"}").await? == vec![1.0, 1.0]).then_some(())
        },
    )
    .await;
    let (server_admin, client_admin) = (server.admin, client.admin);
    for q in [
        format!(
            "sum(request_total{{instance=\"{server_admin}\",direction=\"inbound\",client_id={c}}})",
            c = quoted(C)
        ),
        format!(
            "sum(tcp_open_total{{instance=\"{server_admin}\",direction=\"inbound\",client_id={c}}})",
            c = quoted(C)
        ),
        format!(
            "sum(tcp_open_total{{instance=\"{client_admin}\",peer=\"dst\",server_id={s}}})",
            s = quoted(S)
        ),
    ] {
        eventually(
            &format!("prometheus stores {q}"),
            Duration::from_secs(30),
            || async { (prometheus.query(&q).await?.first()? >= &1.0).then_some(()) },
        )
        .await;
    }
    // And nothing was stored under a mangled value.
    let mangled = format!(
        "count(tcp_open_total{{instance=\"{server_admin}\",client_id=~\"spiffe://.*\",client_id!={c}}})",
        c = quoted(C)
    );
    assert_eq!(prometheus.query(&mangled).await.unwrap(), Vec::<f64>::new());
}
