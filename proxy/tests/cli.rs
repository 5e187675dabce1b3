//! The `linnet` binary: configuration errors, aliases, and signals.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use linnet_test_support::{metrics::try_http, process::Process};
use std::{net::SocketAddr, process::Command, time::Duration};

const BIN: &str = env!("CARGO_BIN_EXE_linnet");

/// A command for `linnet proxy` with a clean environment and every listener
/// on a free loopback port (port 0: see [`admin_addr`]).
fn proxy_cmd() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("proxy")
        .env_clear()
        .env("LINNET_OUTBOUND_LISTEN_ADDR", "127.0.0.1:0")
        .env("LINNET_INBOUND_LISTEN_ADDR", "127.0.0.1:0")
        .env("LINNET_ADMIN_LISTEN_ADDR", "127.0.0.1:0");
    cmd
}

/// The admin address a started proxy logged (`listening ... admin=ADDR`).
fn admin_addr(p: &Process) -> SocketAddr {
    for _ in 0..500 {
        let log = p.log();
        if let Some(addr) = log
            .lines()
            .filter(|l| l.contains("listening"))
            .find_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("admin=")))
        {
            return addr.parse().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the proxy never logged its admin address:\n{}", p.log());
}

fn get(admin: SocketAddr, path: &str) -> Option<(u16, String)> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(try_http(admin, "GET", path, ""))
        .ok()
}

fn wait_ready(p: &Process) -> SocketAddr {
    let admin = admin_addr(p);
    for _ in 0..500 {
        if get(admin, "/ready").is_some_and(|(s, _)| s == 200) {
            return admin;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("proxy never became ready; log:\n{}", p.log());
}

#[test]
fn every_bad_value_exits_64_naming_the_variable() {
    let cases = [
        ("LINNET_OUTBOUND_LISTEN_ADDR", "4140"),
        ("LINNET_INBOUND_LISTEN_ADDR", "0.0.0.0"),
        ("LINNET_ADMIN_LISTEN_ADDR", "localhost:4191"),
        ("LINNET_OUTBOUND_CONNECT_TIMEOUT", "1"),
        ("LINNET_INBOUND_CONNECT_TIMEOUT", "fast"),
        ("LINNET_OUTBOUND_ACCEPT_KEEPALIVE", "10q"),
        ("LINNET_INBOUND_ACCEPT_KEEPALIVE", "-1s"),
        ("LINNET_OUTBOUND_CONNECT_KEEPALIVE", "1.5s"),
        ("LINNET_INBOUND_CONNECT_KEEPALIVE", "s"),
        ("LINNET_SHUTDOWN_GRACE_PERIOD", "2 minutes"),
        ("LINNET_LOG", "info,linnet=noisy"),
        ("LINNET_LOG_FORMAT", "yaml"),
        ("LINNET_CORES", "none"),
        ("LINKERD2_PROXY_OUTBOUND_CONNECT_TIMEOUT", "soon"),
        ("LINKERD2_PROXY_LOG_FORMAT", "xml"),
        ("LINNET_OUTBOUND_DETECT_TIMEOUT", "forever"),
        ("LINNET_INBOUND_DETECT_TIMEOUT", "0s"),
        (
            "LINNET_OUTBOUND_PORTS_DISABLE_PROTOCOL_DETECTION",
            "25,mysql",
        ),
        (
            "LINKERD2_PROXY_INBOUND_PORTS_DISABLE_PROTOCOL_DETECTION",
            "3306-25",
        ),
        (
            "LINNET_DESTINATION_PROFILE_NETWORKS",
            "10.0.0.0/8,10.0.0.0/99",
        ),
    ];
    for (var, value) in cases {
        let out = Command::new(BIN)
            .arg("proxy")
            .env_clear()
            .env(var, value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{var}={value}: {stderr}");
        assert!(
            stderr.contains(var) && stderr.contains(value),
            "{var}={value}: message does not name them: {stderr}"
        );
    }
}

/// A control plane off loopback without a name to verify, or without
/// trust anchors to verify it with: refused at start, never plaintext.
#[test]
fn a_control_plane_off_loopback_without_tls_exits_64() {
    let cases: [(&[(&str, &str)], &str); 3] = [
        (
            &[("LINKERD2_PROXY_DESTINATION_SVC_ADDR", "10.0.0.1:8086")],
            "LINNET_DESTINATION_SVC_NAME",
        ),
        (
            &[
                (
                    "LINNET_DESTINATION_SVC_ADDR",
                    "linkerd-dst-headless.linkerd.svc.cluster.local:8086",
                ),
                (
                    "LINNET_DESTINATION_SVC_NAME",
                    "linkerd-destination.linkerd.serviceaccount.identity.linkerd.cluster.local",
                ),
            ],
            "LINNET_DESTINATION_SVC_ADDR",
        ),
        (
            &[
                ("LINNET_IDENTITY_SVC_ADDR", "10.0.0.2:8080"),
                (
                    "LINNET_IDENTITY_SVC_NAME",
                    "linkerd-identity.linkerd.serviceaccount.identity.linkerd.cluster.local",
                ),
                ("LINNET_IDENTITY_DISABLED", "true"),
            ],
            "LINNET_IDENTITY_SVC_ADDR",
        ),
    ];
    for (vars, var) in cases {
        let out = Command::new(BIN)
            .arg("proxy")
            .env_clear()
            .envs(vars.iter().copied())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{vars:?}: {stderr}");
        assert!(
            stderr.contains(var),
            "{vars:?}: does not name {var}: {stderr}"
        );
    }
}

#[test]
fn linkerd_aliases_apply_and_linnet_wins() {
    let mut cmd = proxy_cmd();
    cmd.env_remove("LINNET_ADMIN_LISTEN_ADDR")
        .env("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", "127.0.0.1:0")
        .env("LINKERD2_PROXY_INBOUND_CONNECT_TIMEOUT", "2s")
        .env("LINNET_INBOUND_CONNECT_TIMEOUT", "250ms")
        .env("LINKERD2_PROXY_SHUTDOWN_GRACE_PERIOD", "7s");
    let p = Process::spawn("aliases", cmd);
    let admin = wait_ready(&p);
    let (status, body) = get(admin, "/config.json").unwrap();
    assert_eq!(status, 200);
    let config: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(config["admin"]["listen_addr"], "127.0.0.1:0");
    assert_eq!(config["inbound"]["connect_timeout"], "250ms");
    assert_eq!(config["shutdown_grace_period"], "7s");
    // The effective configuration is logged once at start.
    let log = p.log();
    assert_eq!(log.matches("starting linnet proxy").count(), 1, "{log}");
    assert!(log.contains(r#""connect_timeout":"250ms""#), "{log}");
}

#[test]
fn sigterm_and_sigint_exit_zero() {
    for signal in ["-TERM", "-INT"] {
        let mut p = Process::spawn("signal", proxy_cmd());
        wait_ready(&p);
        assert!(
            Command::new("kill")
                .args([signal, &p.pid().to_string()])
                .status()
                .unwrap()
                .success()
        );
        let status = p
            .wait_timeout(Duration::from_secs(10))
            .expect("exits after the signal");
        assert_eq!(status.code(), Some(0), "{signal}: {}", p.log());
    }
}

#[test]
fn unknown_settings_are_warned_about() {
    let mut cmd = proxy_cmd();
    cmd.env("LINNET_OUTBOUND_CONECT_TIMEOUT", "2s");
    let p = Process::spawn("unknown", cmd);
    wait_ready(&p);
    assert!(
        p.log().contains("LINNET_OUTBOUND_CONECT_TIMEOUT"),
        "{}",
        p.log()
    );
}

#[test]
fn bind_failure_is_reported() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let mut cmd = proxy_cmd();
    cmd.env("LINNET_ADMIN_LISTEN_ADDR", addr.to_string());
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen for admin connections on {addr}")),
        "{stderr}"
    );
}

#[test]
fn identity_settings_without_the_identity_service_exit_64() {
    // Without IDENTITY_SVC_ADDR nothing would certify the workload: the
    // proxy would run without mTLS, and say nothing.
    for var in [
        "LINNET_IDENTITY_LOCAL_NAME",
        "LINKERD2_PROXY_IDENTITY_TOKEN_FILE",
        "LINNET_IDENTITY_TRUST_ANCHORS",
    ] {
        let out = Command::new(BIN)
            .arg("proxy")
            .env_clear()
            .env(
                var,
                "web.default.serviceaccount.identity.linkerd.cluster.local",
            )
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{var}: {stderr}");
        assert!(
            stderr.contains(var) && stderr.contains("IDENTITY_SVC_ADDR"),
            "{var}: {stderr}"
        );
    }
}

#[test]
fn an_identity_that_cannot_be_set_up_stops_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t").unwrap();
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "not a directory").unwrap();
    let anchors_ok = linnet_control::Ca::generate()
        .unwrap()
        .trust_anchors_pem()
        .to_string();
    let cases: [(&str, String, &str); 2] = [
        // Trust anchors that are not certificates.
        (
            "LINNET_IDENTITY_TRUST_ANCHORS",
            "-----BEGIN CERTIFICATE-----\nMIIBdTCCARugAwIBAgIUQ==\n-----END CERTIFICATE-----\n"
                .to_string(),
            "trust anchors",
        ),
        // A key directory that cannot be created.
        (
            "LINNET_IDENTITY_DIR",
            blocker.join("id").display().to_string(),
            "cannot set up the workload identity",
        ),
    ];
    for (var, value, says) in cases {
        let mut cmd = proxy_cmd();
        cmd.env("LINNET_IDENTITY_SVC_ADDR", "127.0.0.1:1")
            .env(
                "LINNET_IDENTITY_LOCAL_NAME",
                "web.default.serviceaccount.identity.linkerd.cluster.local",
            )
            .env("LINNET_IDENTITY_TOKEN_FILE", &token)
            .env("LINNET_IDENTITY_TRUST_ANCHORS", &anchors_ok)
            .env(var, &value);
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{var}: {stderr}");
        assert!(
            stderr.contains("cannot set up the workload identity")
                && stderr.contains(says)
                && stderr.lines().count() < 20,
            "{var}: {stderr}"
        );
        assert!(!stderr.contains("listening"), "{var}: it served: {stderr}");
    }
}

#[test]
fn inject_adds_the_sidecar_to_a_manifest() {
    let input = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crates/inject/tests/golden/input/deployment.yaml"
    );
    let out = Command::new(BIN)
        .args(["inject", "-f", input])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr, "Deployment demo/web: injected\n");
    let text = String::from_utf8(out.stdout).unwrap();
    let objects = linnet_inject::parse(&text).unwrap();
    let [linnet_inject::Object::Deployment(d)] = &objects[..] else {
        panic!("{text}")
    };
    let spec = d.spec.template.spec.as_ref().unwrap();
    let proxy = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == "linnet-proxy")
        .expect("the proxy is a native sidecar");
    assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));

    // From stdin, the first container with --native-sidecar=false.
    let mut child = Command::new(BIN)
        .args(["inject", "--native-sidecar=false"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        std::fs::read(input).unwrap().as_slice(),
    )
    .unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("- wait-ready"), "{text}");
}

#[test]
fn inject_rejects_bad_input_with_64() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, "kind: ConfigMap\n---\nspec: [\n").unwrap();
    let out = Command::new(BIN)
        .args(["inject", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("document 2: "), "{stderr}");
}

#[test]
fn wait_ready_waits_for_the_proxy() {
    let p = Process::spawn("wait-ready", proxy_cmd());
    let admin = wait_ready(&p);
    let status = Command::new(BIN)
        .args(["wait-ready", "--timeout=10s", "--admin-addr"])
        .arg(admin.to_string())
        .status()
        .unwrap();
    assert!(status.success());
    // Nothing listening: gives up after the timeout.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let status = Command::new(BIN)
        .args(["wait-ready", "--timeout=300ms", "--admin-addr"])
        .arg(closed.to_string())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
}

/// A self-signed certificate and key for the webhook, made as the README
/// says: `(dir, cert, key)`.
fn webhook_certificate() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args([
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=linnet-injector.linkerd.svc",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl is installed");
    assert!(status.success());
    (dir, cert, key)
}

#[tokio::test]
async fn inject_serve_has_an_admin_port_with_metrics_and_stops_on_sigterm() {
    let (_dir, cert, key) = webhook_certificate();
    let mut cmd = Command::new(BIN);
    cmd.args([
        "inject",
        "--serve",
        "--listen=127.0.0.1:0",
        "--admin-listen=127.0.0.1:0",
    ])
    .arg("--tls-cert")
    .arg(&cert)
    .arg("--tls-key")
    .arg(&key)
    .env_remove("KUBERNETES_SERVICE_HOST");
    let mut p = Process::spawn("inject-serve", cmd);
    // The address it logged: `serving the injection webhook ... admin=ADDR`.
    let admin: SocketAddr = linnet_test_support::eventually(
        "the webhook to log its admin address",
        Duration::from_secs(10),
        || {
            let log = p.log();
            async move {
                log.lines()
                    .filter(|l| l.contains("serving the injection webhook"))
                    .find_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("admin=")))
                    .map(|a| a.parse().unwrap())
            }
        },
    )
    .await;
    assert!(
        p.log().contains("namespace_annotations=false"),
        "outside a pod, auto reads no namespace: {}",
        p.log()
    );
    let get = |path: &'static str| async move { try_http(admin, "GET", path, "").await.unwrap() };
    assert_eq!(get("/ready").await.0, 200);
    assert_eq!(get("/live").await.0, 200);
    let (status, metrics) = get("/metrics").await;
    assert_eq!(status, 200);
    for family in [
        "inject_webhook_reviews_total{outcome=\"injected\",reason=\"\"} 0",
        "inject_webhook_malformed_requests_total{reason=\"not_a_review\"} 0",
        "inject_webhook_namespace_lookups_total{outcome=\"timeout\"} 0",
        "inject_webhook_connections_refused_total 0",
        "inject_webhook_review_duration_seconds_count 0",
        "process_cpu_seconds_total",
    ] {
        assert!(metrics.contains(family), "{family} missing:\n{metrics}");
    }
    p.sigterm();
    let status = p.wait_timeout(Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(0), "{}", p.log());
}

#[test]
fn inject_serve_reading_namespaces_outside_a_pod_fails_at_start() {
    let (_dir, cert, key) = webhook_certificate();
    let out = Command::new(BIN)
        .args([
            "inject",
            "--serve",
            "--listen=127.0.0.1:0",
            "--admin-listen=127.0.0.1:0",
        ])
        .args(["--namespace-annotations", "on", "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("KUBERNETES_SERVICE_HOST"), "{stderr}");
}
