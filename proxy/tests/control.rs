//! `linnet control` and `linnet proxy` as processes: the proxy follows a
//! service's endpoints as the mesh file changes, and keeps serving when
//! the control plane stops.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use linnet_test_support::{
    eventually,
    http::{HttpServer, collect, h1_client},
    metrics::try_http,
    process::{Process, free_port},
};
use std::{net::SocketAddr, process::Command, time::Duration};

const BIN: &str = env!("CARGO_BIN_EXE_linnet");

fn mesh(backends: &[SocketAddr]) -> String {
    let mut y = String::from(
        "services:\n  web.test.svc.cluster.local:80:\n    addresses: [\"10.96.0.1:80\"]\n    endpoints:\n",
    );
    for b in backends {
        y.push_str(&format!("      - addr: \"{b}\"\n"));
    }
    y
}

async fn ready(admin: SocketAddr, p: &Process) {
    for _ in 0..500 {
        if matches!(try_http(admin, "GET", "/ready", "").await, Ok((200, _))) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never ready; log:\n{}", p.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_follows_linnet_control() {
    let (a, b) = (HttpServer::start().await, HttpServer::start().await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    std::fs::write(&file, mesh(&[a.addr])).unwrap();
    let (grpc, control_admin) = (free_port(), free_port());
    let mut control = Process::spawn("control", {
        let mut c = Command::new(BIN);
        c.arg("control")
            .arg("--config")
            .arg(&file)
            .args(["--listen", &format!("127.0.0.1:{grpc}")])
            .args(["--admin-listen", &format!("127.0.0.1:{control_admin}")])
            .args(["--reload-interval", "50ms"]);
        c
    });
    let control_admin: SocketAddr = format!("127.0.0.1:{control_admin}").parse().unwrap();
    ready(control_admin, &control).await;
    // The issuer was generated beside the file.
    assert!(dir.path().join("issuer.crt").exists() && dir.path().join("issuer.key").exists());

    let (outbound, admin) = (free_port(), free_port());
    let proxy = Process::spawn("proxy-with-control", {
        let mut c = Command::new(BIN);
        c.arg("proxy")
            .env_clear()
            .env(
                "LINNET_OUTBOUND_LISTEN_ADDR",
                format!("127.0.0.1:{outbound}"),
            )
            .env("LINNET_INBOUND_LISTEN_ADDR", "127.0.0.1:0")
            .env("LINNET_ADMIN_LISTEN_ADDR", format!("127.0.0.1:{admin}"))
            .env("LINNET_OUTBOUND_ORIG_DST_ADDR", "10.96.0.1:80")
            .env("LINNET_DESTINATION_SVC_ADDR", format!("127.0.0.1:{grpc}"));
        c
    });
    let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    ready(admin, &proxy).await;

    let client = h1_client();
    let url = format!("http://127.0.0.1:{outbound}/status/200");
    let get = || async {
        let rsp = client.get(url.parse().unwrap()).await.unwrap();
        collect(rsp).await.0.as_u16()
    };
    for _ in 0..5 {
        assert_eq!(get().await, 200, "{}", proxy.log());
    }
    assert_eq!((a.seen().len(), b.seen().len()), (5, 0));

    // The file changes: traffic moves.
    std::fs::write(&file, mesh(&[b.addr])).unwrap();
    eventually(
        "traffic moves to the new endpoint",
        Duration::from_secs(10),
        || async {
            get().await;
            (!b.seen().is_empty()).then_some(())
        },
    )
    .await;
    let (_, m) = try_http(control_admin, "GET", "/metrics", "")
        .await
        .unwrap();
    assert!(
        m.contains("control_watches{rpc=\"Destination.Get\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("control_config_reloads_total{result=\"ok\"} 1"),
        "{m}"
    );

    // The control plane stops: the proxy keeps serving what it knew.
    control.sigterm();
    assert!(
        control.wait_timeout(Duration::from_secs(10)).is_some(),
        "control plane did not stop"
    );
    let before = a.seen().len();
    for _ in 0..10 {
        assert_eq!(get().await, 200);
    }
    assert_eq!(a.seen().len(), before);
}

#[test]
fn control_refuses_a_bad_mesh_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    std::fs::write(
        &file,
        "services:\n  web:80:\n    endpoints: [{addr: nowhere}]\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("control")
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("services.web:80.endpoints[0]") && err.contains("nowhere"),
        "{err}"
    );
    let out = Command::new(BIN)
        .args(["control", "--config", "/nonexistent/mesh.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}
