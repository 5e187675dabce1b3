//! Inbound policy with real interception: a server pod (network namespace,
//! `linnet init`'s iptables rules, `linnet proxy` as the proxy's uid,
//! `linnet control` on its loopback following a mesh file) and clients in
//! another pod: plaintext ones from three addresses, and meshed ones
//! (in-process proxies certified as A and as B) whose outbound proxies
//! reach the server pod over mTLS, directly or through its transport port.
//!
//! The matrix: clients {plaintext, mTLS as A, mTLS as B, plaintext from an
//! allowed network, plaintext from another network} × policies {allow A
//! only, all-authenticated, a network, deny, audit} × {HTTP, opaque TCP,
//! opaque TCP through the transport port}. Each cell's outcome is checked
//! against the application's own counters: what a policy refuses never
//! arrives. Then a policy change reaches a new connection, the next
//! request of an open HTTP connection, and an open opaque connection (which
//! is closed), each within a second of the file changing.
//!
//! Needs root (CI runs as root); without it the test says it is skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use linnet_app::OrigDst;
use linnet_test_support::{
    eventually,
    http::HttpServer,
    is_root,
    metrics::{Scrape, http, try_http},
    netns::{Netns, pod_apps, pod_control, pod_init, pod_proxy},
    process::world_executable_copy,
    proxy::Proxy,
    tcp::{Stats, exchange, random_payload},
};
use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

const SERVER: &str = "web.test.serviceaccount.identity.linkerd.cluster.local";
const A: &str = "a.test.serviceaccount.identity.linkerd.cluster.local";
const B: &str = "b.test.serviceaccount.identity.linkerd.cluster.local";
const HTTP_PORT: u16 = 8080;
const OPAQUE_PORT: u16 = 9000;
/// The pods' subnet: `10.77.95.0/24`.
const NET: u8 = 95;
/// The client pod's extra addresses: one inside the allowed network, one
/// carved out of it.
const ALLOWED_SRC: &str = "10.77.95.4";
const OTHER_SRC: &str = "10.77.95.3";

/// The virtual addresses the meshed clients' proxies are fixed on.
const VIP_HTTP: &str = "10.96.0.1:8080";
const VIP_RAW: &str = "10.96.0.2:9000";
const VIP_TRANSPORT: &str = "10.96.0.3:9000";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Plain,
    A,
    B,
    AllowedNet,
    OtherNet,
}

const EVERYONE: [Who; 5] = [Who::Plain, Who::A, Who::B, Who::AllowedNet, Who::OtherNet];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Policy {
    AllowA,
    AllAuthenticated,
    Network,
    Deny,
    Audit,
}

impl Policy {
    /// The workload's part of the mesh file.
    fn yaml(self) -> String {
        let ports = |authz: &str| {
            format!(
                "    ports:\n      {HTTP_PORT}:\n        authorizations: {authz}\n      {OPAQUE_PORT}:\n        authorizations: {authz}\n"
            )
        };
        let body = match self {
            Policy::AllowA => ports(&format!("[{{identities: [\"{A}\"]}}]")),
            Policy::AllAuthenticated => ports("[{identities: [\"*\"]}]"),
            Policy::Network => ports(&format!(
                "[{{unauthenticated: true, networks: [10.77.{NET}.0/24], except: [\"{OTHER_SRC}/32\"]}}]"
            )),
            Policy::Deny => "    default_inbound_policy: deny\n".to_string(),
            Policy::Audit => "    default_inbound_policy: audit\n".to_string(),
        };
        format!("workloads:\n  web:\n{body}")
    }

    fn admits(self, who: Who) -> bool {
        match self {
            Policy::AllowA => who == Who::A,
            Policy::AllAuthenticated => matches!(who, Who::A | Who::B),
            // A and B connect from the client pod's own address, inside.
            Policy::Network => who != Who::OtherNet,
            Policy::Deny => false,
            Policy::Audit => true,
        }
    }
}

fn mesh_file(server_ip: &str, policy: Policy) -> String {
    let endpoint = |port: u16, extra: &str| {
        format!("      - addr: \"{server_ip}:{port}\"\n        identity: \"{SERVER}\"\n{extra}")
    };
    format!(
        "identity:\n  tokens:\n    {SERVER}: s\n    {A}: a\n    {B}: b\n\
         services:\n\
         \x20 web.test.svc.cluster.local:{HTTP_PORT}:\n    addresses: [\"{VIP_HTTP}\"]\n    endpoints:\n{}\
         \x20 raw.test.svc.cluster.local:{OPAQUE_PORT}:\n    addresses: [\"{VIP_RAW}\"]\n    profile: {{opaque: true}}\n    endpoints:\n{}\
         \x20 tpt.test.svc.cluster.local:{OPAQUE_PORT}:\n    addresses: [\"{VIP_TRANSPORT}\"]\n    profile: {{opaque: true}}\n    endpoints:\n{}\
         {}",
        endpoint(HTTP_PORT, ""),
        endpoint(OPAQUE_PORT, ""),
        endpoint(OPAQUE_PORT, "        opaque_transport_port: 4143\n"),
        policy.yaml(),
    )
}

/// The identity settings of a proxy certified as `id` with `token`.
fn identity_env(dir: &Path, id: &str, token: &str, anchors: &str) -> Vec<(String, String)> {
    let token_file = dir.join(format!("token-{token}"));
    std::fs::write(&token_file, token).unwrap();
    vec![
        ("LINNET_IDENTITY_SVC_ADDR".into(), "127.0.0.1:8086".into()),
        ("LINNET_IDENTITY_LOCAL_NAME".into(), id.into()),
        (
            "LINNET_IDENTITY_TOKEN_FILE".into(),
            token_file.display().to_string(),
        ),
        ("LINNET_IDENTITY_TRUST_ANCHORS".into(), anchors.into()),
        (
            "LINNET_DESTINATION_SVC_ADDR".into(),
            "127.0.0.1:8086".into(),
        ),
        ("LINNET_DISCOVERY_INITIAL_WAIT".into(), "500ms".into()),
        ("LINNET_INBOUND_DETECT_TIMEOUT".into(), "1s".into()),
    ]
}

/// The meshed clients' outbound listeners (in the client pod): per
/// identity, one for each virtual address.
#[derive(Clone, Copy, Debug)]
struct Meshed {
    http: SocketAddr,
    raw: SocketAddr,
    transport: SocketAddr,
}

/// Starts, in the client pod, three in-process proxies certified as `id`
/// (one per virtual address) and waits until they are ready.
fn meshed_clients(ns: &Netns, env: Vec<(String, String)>) -> Meshed {
    let (tx, rx) = std::sync::mpsc::channel();
    ns.spawn(async move {
        let vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut proxies = Vec::new();
        for vip in [VIP_HTTP, VIP_RAW, VIP_TRANSPORT] {
            proxies.push(Proxy::start(OrigDst::Fixed(vip.parse().unwrap()), &vars).await);
        }
        for p in &proxies {
            eventually("certified", Duration::from_secs(10), || async {
                (try_http(p.admin, "GET", "/ready", "").await.ok()?.0 == 200).then_some(())
            })
            .await;
        }
        tx.send(Meshed {
            http: proxies[0].outbound,
            raw: proxies[1].outbound,
            transport: proxies[2].outbound,
        })
        .unwrap();
        // The proxies run for the rest of the test.
        std::future::pending::<()>().await;
    });
    rx.recv().unwrap()
}

/// Everything the matrix needs.
struct Pods {
    client: Netns,
    server: Netns,
    server_ip: String,
    a: Meshed,
    b: Meshed,
    app: Arc<HttpServer>,
    exchanged: Stats,
}

/// Connects from the client pod: from `src` when given, else the pod's
/// own address.
async fn connect(src: Option<&str>, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(src) = src {
        socket.bind(SocketAddr::new(src.parse::<IpAddr>().unwrap(), 0))?;
    }
    tokio::time::timeout(Duration::from_secs(5), socket.connect(to))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// One HTTP/1.1 request on `s`: the status (0 when the connection was
/// refused or reset before a response) and `l5d-proxy-error`.
async fn request(s: &mut TcpStream, path: &str, close: bool) -> (u16, String) {
    let connection = if close { "close" } else { "keep-alive" };
    let req = format!("GET {path} HTTP/1.1\r\nhost: web.test\r\nconnection: {connection}\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    // Read the head (the test server's bodies are small and we only need
    // the status and headers).
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let error = text
        .lines()
        .find_map(|l| l.strip_prefix("l5d-proxy-error: "))
        .unwrap_or_default()
        .to_string();
    if !close {
        // Drain the body named by content-length so the connection can
        // carry the next request.
        let length: usize = text
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        let have = head
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(0, |p| head.len() - p - 4);
        let mut rest = vec![0u8; length.saturating_sub(have)];
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut rest)).await;
    }
    (status, error)
}

impl Pods {
    fn src(who: Who) -> Option<&'static str> {
        match who {
            Who::AllowedNet => Some(ALLOWED_SRC),
            Who::OtherNet => Some(OTHER_SRC),
            _ => None,
        }
    }

    fn meshed(&self, who: Who) -> Option<Meshed> {
        match who {
            Who::A => Some(self.a),
            Who::B => Some(self.b),
            _ => None,
        }
    }

    fn at(&self, port: u16) -> SocketAddr {
        format!("{}:{port}", self.server_ip).parse().unwrap()
    }

    /// An HTTP request from `who` to the server pod's HTTP port.
    fn http(&self, who: Who) -> (u16, String) {
        let to = self.meshed(who).map_or(self.at(HTTP_PORT), |m| m.http);
        let src = Self::src(who);
        self.client.block_on(async move {
            match connect(src, to).await {
                Ok(mut s) => request(&mut s, "/matrix", true).await,
                Err(_) => (0, String::new()),
            }
        })
    }

    /// An opaque exchange from `who` to the server pod's opaque port,
    /// through the transport port when `transport` (meshed clients only).
    fn opaque(&self, who: Who, transport: bool) -> bool {
        let to = match self.meshed(who) {
            Some(m) if transport => m.transport,
            Some(m) => m.raw,
            None => self.at(OPAQUE_PORT),
        };
        let src = Self::src(who);
        self.client.block_on(async move {
            let Ok(s) = connect(src, to).await else {
                return false;
            };
            let payload = random_payload(10_000);
            matches!(
                tokio::time::timeout(Duration::from_secs(10), exchange(s, &payload)).await,
                Ok(Ok(reply)) if !reply.is_empty()
            )
        })
    }

    /// Connections the opaque application has accepted.
    fn opaque_arrived(&self) -> usize {
        self.exchanged.completed() + self.exchanged.failures().len()
    }

    fn scrape(&self) -> Scrape {
        self.server.block_on(async {
            Scrape(
                http("127.0.0.1:4191".parse().unwrap(), "GET", "/metrics", "")
                    .await
                    .1,
            )
        })
    }
}

/// Rewrites the mesh file and waits until the server proxy enforces the
/// new policy: a probe that only the new policy decides this way.
fn switch(pods: &Pods, dir: &Path, policy: Policy) {
    std::fs::write(
        dir.join("mesh.yaml.tmp"),
        mesh_file(&pods.server_ip, policy),
    )
    .unwrap();
    std::fs::rename(dir.join("mesh.yaml.tmp"), dir.join("mesh.yaml")).unwrap();
    let (probe, expect_admitted) = match policy {
        Policy::AllowA => (Who::B, false),
        Policy::AllAuthenticated => (Who::B, true),
        Policy::Network => (Who::Plain, true),
        Policy::Deny => (Who::A, false),
        Policy::Audit => (Who::OtherNet, true),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = pods.http(probe);
        if (status == 200) == expect_admitted {
            return;
        }
        assert!(Instant::now() < deadline, "{policy:?} never took effect");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn who_is_plain(who: Who) -> bool {
    !matches!(who, Who::A | Who::B)
}

/// Checks one cell; returns how many opaque exchanges it expected to
/// reach the application.
fn check_cell(pods: &Pods, policy: Policy, who: Who) -> usize {
    let admitted = policy.admits(who);
    let cell = format!("{policy:?} × {who:?}");

    let before = pods.app.seen().len();
    let (status, error) = pods.http(who);
    let after = pods.app.seen().len();
    if admitted {
        assert_eq!(status, 200, "{cell}: HTTP: {error}");
        assert_eq!(after, before + 1, "{cell}: HTTP did not arrive");
    } else {
        assert_eq!(after, before, "{cell}: a refused HTTP request arrived");
        if policy == Policy::Deny && who_is_plain(who) {
            // A policy that admits no one refuses a new connection itself.
            assert_eq!(status, 0, "{cell}: HTTP: {error}");
        } else if policy == Policy::Deny {
            // A meshed client's proxy may still hold a connection opened
            // under the previous policy (its next request is refused,
            // 403), or open a new one (refused: its own 502).
            assert!(
                matches!(status, 403 | 502),
                "{cell}: HTTP {status}: {error}"
            );
        } else {
            assert_eq!(status, 403, "{cell}: HTTP: {error}");
            assert!(error.contains("unauthorized"), "{cell}: {error}");
        }
    }

    let transports: &[bool] = if matches!(who, Who::A | Who::B) {
        &[false, true]
    } else {
        &[false]
    };
    for &transport in transports {
        let before = pods.opaque_arrived();
        let ok = pods.opaque(who, transport);
        // The application counts an exchange once its side has finished,
        // which may be just after the client has its reply.
        let deadline = Instant::now() + Duration::from_secs(5);
        while ok && pods.opaque_arrived() == before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let arrived = pods.opaque_arrived() - before;
        let path = if transport {
            "transport port"
        } else {
            "opaque"
        };
        assert_eq!(ok, admitted, "{cell}: {path}");
        assert_eq!(
            arrived,
            usize::from(admitted),
            "{cell}: {path}: {arrived} connections reached the application"
        );
    }
    if admitted { transports.len() } else { 0 }
}

#[test]
fn inbound_policy_matrix_with_real_interception() {
    if !is_root() {
        eprintln!(
            "SKIPPED inbound_policy_matrix_with_real_interception: needs root to create network namespaces and iptables rules (CI runs it as root)"
        );
        return;
    }
    let bin = world_executable_copy(Path::new(env!("CARGO_BIN_EXE_linnet")));
    let ((client_pod, client_ip), (server_pod, server_ip)) = Netns::pair("lnip", NET);
    // The client pod's extra addresses, on its veth.
    let dev = client_pod.exec(&[
        "ip",
        "-o",
        "-4",
        "addr",
        "show",
        "to",
        &format!("{client_ip}/32"),
    ]);
    let dev = String::from_utf8_lossy(&dev.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    for ip in [ALLOWED_SRC, OTHER_SRC] {
        client_pod.exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", &dev]);
    }
    pod_init(
        &server_pod,
        &bin,
        &["--inbound-ports-to-ignore", "4190,4191"],
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("mesh.yaml"),
        mesh_file(&server_ip, Policy::AllowA),
    )
    .unwrap();
    let _server_control = pod_control(
        &server_pod,
        &bin,
        dir.path(),
        "policy-server-control",
        &["--reload-interval", "100ms"],
    );
    let _client_control = pod_control(
        &client_pod,
        &bin,
        dir.path(),
        "policy-client-control",
        &["--reload-interval", "100ms"],
    );
    let anchors = std::fs::read_to_string(dir.path().join("issuer.crt")).unwrap();

    // The server pod's applications.
    let (app, exchanged) = pod_apps(&server_pod, HTTP_PORT, OPAQUE_PORT);
    let app = Arc::new(app);

    let mut env = identity_env(dir.path(), SERVER, "s", &anchors);
    env.extend([
        ("LINNET_POLICY_SVC_ADDR".into(), "127.0.0.1:8086".into()),
        ("LINNET_POLICY_WORKLOAD".into(), "web".into()),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let server_proxy = pod_proxy(&server_pod, &bin, "policy-server-proxy", &env, true);

    let a = meshed_clients(&client_pod, identity_env(dir.path(), A, "a", &anchors));
    let b = meshed_clients(&client_pod, identity_env(dir.path(), B, "b", &anchors));
    let pods = Pods {
        client: client_pod,
        server: server_pod,
        server_ip,
        a,
        b,
        app,
        exchanged,
    };

    for policy in [
        Policy::AllowA,
        Policy::AllAuthenticated,
        Policy::Network,
        Policy::Deny,
        Policy::Audit,
    ] {
        switch(&pods, dir.path(), policy);
        let before = pods.opaque_arrived();
        let expected: usize = EVERYONE
            .iter()
            .map(|&who| check_cell(&pods, policy, who))
            .sum();
        // Nothing refused arrived late either.
        assert_eq!(pods.opaque_arrived() - before, expected, "{policy:?}");
    }

    // Whatever reached the application from a meshed client carried its
    // verified identity, and nothing else did.
    for seen in pods.app.seen() {
        if let Some(id) = seen.headers.get("l5d-client-id") {
            assert!(id == A || id == B, "{id:?}");
        }
    }

    // The policy's decisions, counted with Linkerd's names and labels.
    let m = pods.scrape();
    for (name, labels) in [
        ("inbound_http_authz_allow_total", vec![("client_id", A)]),
        ("inbound_http_authz_deny_total", vec![("client_id", B)]),
        ("inbound_tcp_authz_allow_total", vec![("client_id", A)]),
        ("inbound_tcp_authz_deny_total", vec![("srv_name", "deny")]),
        // Audit lets everything through, counted as denied.
        ("inbound_http_authz_deny_total", vec![("srv_name", "audit")]),
        ("inbound_tcp_authz_deny_total", vec![("srv_name", "audit")]),
    ] {
        assert!(m.sum(name, &labels) >= 1.0, "{name} {labels:?}:\n{}", m.0);
    }

    // A change applies within a second: to the next request on an open
    // HTTP connection, to a new connection, and to an open opaque
    // connection, which is closed.
    switch(&pods, dir.path(), Policy::Network);
    let (tx, rx) = std::sync::mpsc::channel::<Instant>();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let http_to: SocketAddr = pods.at(HTTP_PORT);
    let opaque_to: SocketAddr = pods.at(OPAQUE_PORT);
    let _watcher = pods.client.spawn(async move {
        // One keep-alive HTTP/1.1 connection, and one opaque connection,
        // both admitted under the current policy.
        let stream = connect(None, http_to).await.unwrap();
        let (mut open, conn) = hyper::client::conn::http1::handshake::<
            _,
            http_body_util::Empty<bytes::Bytes>,
        >(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
        tokio::spawn(conn);
        let get = |path: &str| {
            http::Request::get(path)
                .header("host", "web.test")
                .body(http_body_util::Empty::new())
                .unwrap()
        };
        assert_eq!(
            open.send_request(get("/before")).await.unwrap().status(),
            200
        );
        let mut tunnel = connect(None, opaque_to).await.unwrap();
        tunnel.write_all(&[0, 0, 0, 0]).await.unwrap();
        ready_tx.send(()).unwrap();
        let written = rx.recv().unwrap();
        // The next request on the open connection.
        let mut next = None;
        while written.elapsed() < Duration::from_secs(3) {
            let status = open.send_request(get("/after")).await.unwrap().status();
            if status == 403 {
                next = Some(written.elapsed());
                break;
            }
            assert_eq!(status, 200, "the open connection failed instead");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A new connection.
        let mut c = connect(None, http_to).await.unwrap();
        let new = request(&mut c, "/new", true).await.0;
        // The open opaque connection is closed (reset) by the proxy.
        let mut buf = [0u8; 16];
        let closed = loop {
            match tokio::time::timeout(Duration::from_secs(3), tunnel.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => break Some(written.elapsed()),
                Ok(Ok(_)) => continue,
                Err(_) => break None,
            }
        };
        done_tx.send((next, new, closed)).unwrap();
    });
    // Both connections open under the old policy first.
    ready_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    std::fs::write(
        dir.path().join("mesh.yaml.tmp"),
        mesh_file(&pods.server_ip, Policy::AllowA),
    )
    .unwrap();
    let written = Instant::now();
    std::fs::rename(
        dir.path().join("mesh.yaml.tmp"),
        dir.path().join("mesh.yaml"),
    )
    .unwrap();
    tx.send(written).unwrap();
    let (next, new, tunnel_closed) = done_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    let next = next.expect("the open connection's next request was not refused");
    assert!(next < Duration::from_secs(1), "took {next:?}");
    assert_eq!(new, 403);
    let closed = tunnel_closed.expect("the open opaque connection was not closed");
    assert!(closed < Duration::from_secs(1), "took {closed:?}");
    let m = pods.scrape();
    assert!(
        m.sum("inbound_tcp_authz_terminate_total", &[]) >= 1.0,
        "{}",
        m.0
    );
    drop(server_proxy);
}
