//! Fail closed, with real interception: two pods (network namespaces
//! joined by veth, `linnet init`'s iptables rules, `linnet proxy` as the
//! proxy's uid) and `linnet control` naming the server pod's identity.
//!
//! A request to the server pod's own IP arrives over mTLS with the
//! client's verified `l5d-client-id`; opaque TCP to a meshed endpoint
//! without a transport port arrives over mTLS. Then each failure (a bad
//! identity in the mesh file, a refused handshake, a control plane that
//! stops answering, a proxy not yet certified) ends in a failed request or
//! a reset connection, and servers on the server pod's side of the wire,
//! which record every byte they are sent, never see the application's
//! bytes.
//!
//! Needs root (CI runs as root); without it the test says it is skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use linnet_test_support::{
    is_root,
    metrics::{Scrape, http},
    netns::{Netns, pod_apps, pod_control, pod_init, pod_proxy},
    process::{Process, world_executable_copy},
    tcp::{exchange, random_payload},
};
use std::{
    io::Read,
    net::SocketAddr,
    path::Path,
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::{io::AsyncReadExt, io::AsyncWriteExt, net::TcpStream};

const SERVER: &str = "web.test.serviceaccount.identity.linkerd.cluster.local";
const CLIENT: &str = "app.test.serviceaccount.identity.linkerd.cluster.local";
const MARKER: &str = "plaintext-marker-91d2";
/// The server pod's application ports.
const HTTP_PORT: u16 = 8080;
const OPAQUE_PORT: u16 = 9000;
/// Ports the server pod's rules leave alone: recorders listen there, as
/// peers that are not the meshed proxy the control plane names.
const HANDSHAKE_PORT: u16 = 7000;
const BAD_ID_PORT: u16 = 7001;
const LATE_PORT: u16 = 7002;

fn mesh_file(server_ip: &str) -> String {
    let ep = |port: u16, id: &str, extra: &str| {
        format!("      - addr: \"{server_ip}:{port}\"\n        identity: \"{id}\"\n{extra}")
    };
    let svc = |name: &str, vip: u8, port: u16, profile: &str, endpoint: String| {
        format!(
            "  {name}.test.svc.cluster.local:{port}:\n    addresses: [\"10.96.0.{vip}:{port}\"]\n{profile}    endpoints:\n{endpoint}"
        )
    };
    let opaque = "        protocol: opaque\n";
    format!(
        "identity:\n  tokens:\n    {SERVER}: s\n    {CLIENT}: c\n\
         services:\n{}{}{}{}{}",
        svc("web", 1, HTTP_PORT, "", ep(HTTP_PORT, SERVER, "")),
        svc(
            "raw",
            2,
            OPAQUE_PORT,
            "    profile: {opaque: true}\n",
            ep(OPAQUE_PORT, SERVER, opaque)
        ),
        svc("imp", 3, HANDSHAKE_PORT, "", ep(HANDSHAKE_PORT, SERVER, "")),
        svc(
            "bad",
            4,
            BAD_ID_PORT,
            "",
            ep(
                BAD_ID_PORT,
                "-web.test.serviceaccount.identity.linkerd.cluster.local",
                ""
            )
        ),
        svc("late", 5, LATE_PORT, "", ep(LATE_PORT, SERVER, "")),
    )
}

/// A server that keeps every byte sent to it and answers nothing.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Vec<u8>>>>);

impl Recorder {
    fn start(ns: &Netns, port: u16) -> Self {
        let listener = ns.run(|| std::net::TcpListener::bind(("0.0.0.0", port)).unwrap());
        let r = Self::default();
        let conns = r.0.clone();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { return };
                let conns = conns.clone();
                std::thread::spawn(move || {
                    let i = {
                        let mut c = conns.lock().unwrap();
                        c.push(Vec::new());
                        c.len() - 1
                    };
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = s.read(&mut buf) {
                        conns.lock().unwrap()[i].extend_from_slice(&buf[..n]);
                    }
                });
            }
        });
        r
    }

    fn connections(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn saw_marker(&self) -> bool {
        self.0
            .lock()
            .unwrap()
            .iter()
            .any(|c| c.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()))
    }

    fn first_byte(&self) -> Option<u8> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .find_map(|c| c.first().copied())
    }
}

fn proxy_env<'a>(
    dir: &'a Path,
    id: &'a str,
    token: &'a str,
    anchors: &'a str,
) -> Vec<(String, String)> {
    let token_file = dir.join(format!("token-{id}-{token}"));
    std::fs::write(&token_file, token).unwrap();
    vec![
        (
            "LINNET_DESTINATION_SVC_ADDR".into(),
            "127.0.0.1:8086".into(),
        ),
        ("LINNET_IDENTITY_SVC_ADDR".into(), "127.0.0.1:8086".into()),
        ("LINNET_IDENTITY_LOCAL_NAME".into(), id.into()),
        (
            "LINNET_IDENTITY_TOKEN_FILE".into(),
            token_file.display().to_string(),
        ),
        ("LINNET_IDENTITY_TRUST_ANCHORS".into(), anchors.into()),
        ("LINNET_DISCOVERY_INITIAL_WAIT".into(), "500ms".into()),
        ("LINNET_OUTBOUND_CONNECT_TIMEOUT".into(), "500ms".into()),
    ]
}

fn start_proxy(
    ns: &Netns,
    bin: &Path,
    name: &str,
    env: &[(String, String)],
    ready: bool,
) -> Process {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    pod_proxy(ns, bin, name, &env, ready)
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

/// An HTTP/1 request carrying the marker, from the client pod to `addr`
/// (redirected to its proxy): the status and `l5d-proxy-error`.
fn http_attempt(ns: &Netns, addr: SocketAddr) -> (u16, String) {
    ns.block_on(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET /{MARKER} HTTP/1.1\r\nhost: web.test\r\nx-marker: {MARKER}\r\nl5d-client-id: forged.identity.linkerd.cluster.local\r\nconnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut rsp = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut rsp)).await;
        let text = String::from_utf8_lossy(&rsp).to_string();
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
        (status, error)
    })
}

/// Opaque bytes carrying the marker to `addr`: true when the connection is
/// reset or closed without a byte back.
fn opaque_refused(ns: &Netns, addr: SocketAddr) -> bool {
    ns.block_on(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(format!("{MARKER}\n").as_bytes()).await;
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    })
}

fn assert_fails_closed(ns: &Netns, addr: SocketAddr, recorder: &Recorder, reason: &str) {
    let (status, error) = http_attempt(ns, addr);
    assert_eq!(status, 502, "{reason}: {error}");
    assert!(error.contains(reason), "{reason}: {error}");
    assert!(opaque_refused(ns, addr), "{reason}: opaque was not refused");
    assert!(
        !recorder.saw_marker(),
        "{reason}: plaintext crossed the wire"
    );
    let m = scrape(ns);
    assert!(
        m.sum(
            "tls_fail_closed_total",
            &[("direction", "outbound"), ("reason", reason)]
        ) >= 2.0,
        "{reason}: {}",
        m.0
    );
}

#[test]
fn meshed_pods_are_reached_over_mtls_or_not_at_all() {
    if !is_root() {
        eprintln!(
            "SKIPPED meshed_pods_are_reached_over_mtls_or_not_at_all: needs root to create network namespaces and iptables rules (CI runs it as root)"
        );
        return;
    }
    let bin = world_executable_copy(Path::new(env!("CARGO_BIN_EXE_linnet")));
    let ((client_pod, _), (server_pod, server_ip)) = Netns::pair("lntm", 93);
    let ignore = format!("4190,4191,{HANDSHAKE_PORT},{BAD_ID_PORT},{LATE_PORT}");
    let init_args = ["--inbound-ports-to-ignore", ignore.as_str()];
    pod_init(&client_pod, &bin, &init_args);
    pod_init(&server_pod, &bin, &init_args);

    // One mesh file (and one CA) for a control plane in each pod, on
    // loopback; the proxy's uid reads the tokens.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), mesh_file(&server_ip)).unwrap();
    let _server_control = pod_control(&server_pod, &bin, dir.path(), "server-control", &[]);
    let client_control = pod_control(&client_pod, &bin, dir.path(), "client-control", &[]);
    let anchors = std::fs::read_to_string(dir.path().join("issuer.crt")).unwrap();

    // The server pod's applications, and recorders on the ports its rules
    // leave alone.
    let (app, exchanged) = pod_apps(&server_pod, HTTP_PORT, OPAQUE_PORT);
    let impostor = Recorder::start(&server_pod, HANDSHAKE_PORT);
    let bad_id = Recorder::start(&server_pod, BAD_ID_PORT);
    let late = Recorder::start(&server_pod, LATE_PORT);

    let _server_proxy = start_proxy(
        &server_pod,
        &bin,
        "mesh-server-proxy",
        &proxy_env(dir.path(), SERVER, "s", &anchors),
        true,
    );
    let mut client_proxy = start_proxy(
        &client_pod,
        &bin,
        "mesh-client-proxy",
        &proxy_env(dir.path(), CLIENT, "c", &anchors),
        true,
    );
    let at = |port: u16| -> SocketAddr { format!("{server_ip}:{port}").parse().unwrap() };

    // A request to the pod's own IP: mTLS, and the verified identity.
    let (status, error) = http_attempt(&client_pod, at(HTTP_PORT));
    assert_eq!(status, 200, "{error}");
    let seen = app.seen();
    assert_eq!(seen.len(), 1);
    let ids: Vec<_> = seen[0].headers.get_all("l5d-client-id").iter().collect();
    assert_eq!(ids, vec![CLIENT], "{:?}", seen[0].headers);

    // Opaque TCP to a meshed endpoint with no transport port.
    let payload = random_payload(300_000);
    let echoed = client_pod.block_on({
        let payload = payload.clone();
        async move { exchange(TcpStream::connect(at(OPAQUE_PORT)).await.unwrap(), &payload).await }
    });
    assert!(echoed.is_ok(), "{echoed:?}");
    // The server's side of the exchange ends just after the client's.
    for _ in 0..250 {
        if exchanged.completed() == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(exchanged.completed(), 1, "{:?}", exchanged.failures());
    let server = scrape(&server_pod);
    for port in [HTTP_PORT, OPAQUE_PORT] {
        assert!(
            server.sum(
                "tcp_open_total",
                &[
                    ("direction", "inbound"),
                    ("peer", "src"),
                    ("tls", "true"),
                    ("client_id", CLIENT),
                    ("target_addr", &at(port).to_string()),
                ]
            ) >= 1.0,
            "{port}: {}",
            server.0
        );
    }

    // A peer that is not the one the control plane names.
    assert_fails_closed(&client_pod, at(HANDSHAKE_PORT), &impostor, "handshake");
    assert_eq!(
        impostor.first_byte(),
        Some(0x16),
        "only a TLS handshake crossed"
    );
    // An identity in the mesh file that is not one.
    assert_fails_closed(&client_pod, at(BAD_ID_PORT), &bad_id, "bad_identity");
    assert_eq!(bad_id.connections(), 0);

    // The control plane stops answering: a target it has not spoken
    // about is not reached at all.
    signal(&client_control, "STOP");
    assert_fails_closed(&client_pod, at(LATE_PORT), &late, "discovery_timeout");
    assert_eq!(late.connections(), 0);
    signal(&client_control, "CONT");

    // A proxy that has no certificate yet (its token is refused).
    client_proxy.sigterm();
    assert!(client_proxy.wait_timeout(Duration::from_secs(40)).is_some());
    let dialled = impostor.connections();
    let _uncertified = start_proxy(
        &client_pod,
        &bin,
        "mesh-uncertified-proxy",
        &proxy_env(dir.path(), CLIENT, "wrong", &anchors),
        false,
    );
    assert_fails_closed(&client_pod, at(HANDSHAKE_PORT), &impostor, "no_certificate");
    assert_eq!(impostor.connections(), dialled, "nothing was dialled");
    let (status, _) = http_attempt(&client_pod, at(HTTP_PORT));
    assert_eq!(status, 502);
    assert_eq!(app.seen().len(), 1, "nothing reached the application");
}

fn signal(p: &Process, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &p.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}
