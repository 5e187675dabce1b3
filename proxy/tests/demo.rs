//! `linnet demo`: the README's first command. It must bring up a mesh whose
//! requests cross mTLS, and the curl it prints must work.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

const BIN: &str = env!("CARGO_BIN_EXE_linnet");
const CLIENT: &str = "client.demo.serviceaccount.identity.linkerd.cluster.local";

#[test]
fn demo_check_passes() {
    let out = Command::new(BIN)
        .args(["demo", "--check"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("hello from web; the mesh says you are {CLIENT}")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("hello from api; the mesh says you are {CLIENT}")),
        "{stdout}"
    );
}

#[test]
fn the_printed_curl_works_and_ctrl_c_stops_it() {
    let mut demo = Command::new(BIN)
        .arg("demo")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(demo.stdout.take().unwrap()).lines();
    let proxy = loop {
        let line = lines
            .next()
            .expect("the demo printed its addresses")
            .unwrap();
        if let Some(rest) = line.trim().strip_prefix("client sidecar: outbound ") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    // Wait until it says it is running.
    for line in lines.by_ref() {
        if line.unwrap().starts_with("Running until Ctrl-C") {
            break;
        }
    }
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-x", &format!("http://{proxy}")])
        .arg("http://api.demo.svc.cluster.local/")
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.contains(&format!("the mesh says you are {CLIENT}")),
        "{body} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ok = Command::new("kill")
        .args(["-INT", &demo.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    for _ in 0..250 {
        if let Some(status) = demo.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = demo.kill();
    panic!("the demo did not stop on SIGINT");
}
