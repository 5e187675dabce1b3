//! The harness's quick path, end to end: the `direct` and `outbound`
//! scenarios on loopback at a low rate for a few seconds, through the real `linnet`
//! binary, with oha. Checks that the report is complete and that every
//! request succeeded and the proxy's CPU and memory were read. The mesh
//! as users run it (`mesh`, `mesh-http1`, `haproxy` beside them) for a
//! second each, between two network namespaces as root (on loopback
//! otherwise): every request succeeded, crossed the mesh file's route and
//! authorization, and in `mesh` shared one connection between the
//! sidecars (the `h2` hint); the report names the topology, and no
//! namespace is left behind. And a soak of a few seconds: its JSON and
//! chart are written, parse, and hold samples of every proxy. No timing
//! is asserted: timings belong in the report, not in pass/fail tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use linnet_test_support::is_root;
use serde_json::Value;
use std::process::Command;

fn num(v: &Value, path: &str) -> f64 {
    let mut cur = v;
    for key in path.split('.') {
        cur = &cur[key];
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("{path} missing or not a number in {v:#}"))
}

/// This build's `linnet` (the proxy under test, and `linnet control`),
/// built if need be (a no-op when the workspace's tests already built
/// it), beside `linnet-bench`.
fn linnet() -> std::path::PathBuf {
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_linnet-bench"))
        .parent()
        .unwrap();
    let linnet = bin_dir.join("linnet");
    let mut build = Command::new(env!("CARGO"));
    build.args(["build", "--quiet", "-p", "linnet", "--bin", "linnet"]);
    if bin_dir.ends_with("release") {
        build.arg("--release");
    }
    let built = build.status().expect("run cargo build");
    assert!(
        built.success() && linnet.is_file(),
        "cannot build {}",
        linnet.display()
    );
    linnet
}

#[test]
fn quick_direct_and_outbound() {
    let linnet = linnet();
    let out = std::env::temp_dir().join(format!("linnet-bench-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let status = Command::new(env!("CARGO_BIN_EXE_linnet-bench"))
        .args(["--quick", "--scenario", "direct", "--scenario", "outbound"])
        .args(["--rate", "200", "--duration", "3", "--no-saturation"])
        // Both on loopback, whoever runs it (as root, `direct` would
        // otherwise run in pods, and `outbound` against its own floor).
        .args(["--topology", "loopback"])
        .arg("--proxy")
        .arg(format!("{} proxy", linnet.display()))
        .arg("--out")
        .arg(&out)
        .status()
        .expect("run linnet-bench");
    assert!(status.success(), "linnet-bench failed: {status}");

    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    for key in ["machine", "settings", "results", "tcp", "runs", "tcp_runs"] {
        assert!(!report[key].is_null(), "no {key} in the report");
    }
    let results = report["results"].as_array().unwrap();
    let names: Vec<&str> = results
        .iter()
        .map(|r| r["scenario"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["direct", "outbound"]);
    for r in results {
        assert_eq!(r["load"], "200 rps");
        assert_eq!(
            num(r, "success_rate"),
            1.0,
            "not every request succeeded: {r:#}"
        );
        // Three seconds at 200 requests/s, give or take the edges.
        assert!(num(r, "requests") >= 400.0, "{r:#}");
        for p in ["p50", "p90", "p99", "p99_9", "max"] {
            for s in ["min", "median", "max"] {
                assert!(num(r, &format!("latency_ms.{p}.{s}")) > 0.0, "{r:#}");
            }
        }
        assert!(num(r, "rps.median") > 0.0);
    }
    let (direct, outbound) = (&results[0], &results[1]);
    assert!(direct["proxies"].as_array().unwrap().is_empty());
    assert!(direct["added_ms"].is_null());
    // The outbound scenario is measured against the direct one.
    assert_eq!(outbound["added_ms"]["over"], "direct");
    num(outbound, "added_ms.p50.median");
    num(outbound, "added_ms.p99.median");
    let proxies = outbound["proxies"].as_array().unwrap();
    assert_eq!(proxies.len(), 1);
    let p = &proxies[0];
    assert_eq!(p["name"], "outbound");
    for field in [
        "cpu_us_per_request",
        "rss_idle_kib",
        "rss_end_kib",
        "rss_peak_kib",
    ] {
        assert!(
            num(p, &format!("{field}.median")) > 0.0,
            "{field} not read: {p:#}"
        );
    }
    assert!(num(p, "rss_peak_kib.max") >= num(p, "rss_end_kib.max"));

    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(md.contains("| outbound | 200 rps |"), "{md}");
    let svg = std::fs::read_to_string(out.join("latency.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("outbound"), "{svg}");
    std::fs::remove_dir_all(&out).unwrap();
}

/// Network namespaces whose name says the process `pid` made them.
fn namespaces_of(pid: u32) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output();
    let Ok(out) = out else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.contains(&format!("-{pid}-")))
        .map(String::from)
        .collect()
}

#[test]
fn quick_mesh_beside_haproxy_in_pods_as_root() {
    let linnet = linnet();
    let out = std::env::temp_dir().join(format!("linnet-bench-mesh-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut child = Command::new(env!("CARGO_BIN_EXE_linnet-bench"))
        .args(["--quick", "--scenario", "mesh", "--scenario", "mesh-http1"])
        .args(["--scenario", "haproxy", "--rate", "200", "--duration", "1"])
        .args(["--warmup", "0.3", "--no-saturation"])
        .arg("--proxy")
        .arg(format!("{} proxy", linnet.display()))
        .arg("--out")
        .arg(&out)
        .spawn()
        .expect("run linnet-bench");
    let pid = child.id();
    let status = child.wait().unwrap();
    assert!(status.success(), "linnet-bench failed: {status}");
    let topology = if is_root() { "pods" } else { "loopback" };
    if is_root() {
        assert_eq!(namespaces_of(pid), Vec::<String>::new(), "left behind");
    } else {
        eprintln!("the mesh ran on loopback: the two-pod topology needs root");
    }

    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(report["settings"]["topology"], topology);
    let results = report["results"].as_array().unwrap();
    let names: Vec<&str> = results
        .iter()
        .map(|r| r["scenario"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["direct", "mesh", "mesh-http1", "haproxy"]);
    for r in results {
        assert_eq!(r["placement"], topology, "{r:#}");
        assert_eq!(
            num(r, "success_rate"),
            1.0,
            "not every request succeeded: {r:#}"
        );
        assert!(num(r, "requests") >= 100.0, "{r:#}");
        if r["scenario"] != "direct" {
            assert_eq!(r["added_ms"]["over"], "direct", "{r:#}");
        }
    }
    let proxies = |i: usize| -> Vec<String> {
        let ps = results[i]["proxies"].as_array().unwrap();
        for p in ps {
            assert!(num(p, "cpu_us_per_request.median") > 0.0, "{p:#}");
            assert!(num(p, "rss_end_kib.median") > 0.0, "{p:#}");
        }
        ps.iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(proxies(1), ["outbound", "inbound"]);
    assert_eq!(proxies(2), ["outbound", "inbound"]);
    assert_eq!(proxies(3), ["haproxy-out", "haproxy-in"]);

    // Every request of the mesh runs took the route and the
    // authorization; with the hint, over one connection.
    for run in report["runs"].as_array().unwrap() {
        let scenario = run["scenario"].as_str().unwrap();
        if !scenario.starts_with("mesh") {
            assert!(run["path"].is_null(), "{run:#}");
            continue;
        }
        let requests = num(run, "outcome.requests");
        let path = &run["path"];
        assert!(num(path, "routed") >= requests, "{run:#}");
        assert!(num(path, "authorized") >= requests, "{run:#}");
        assert!(num(path, "peer_connections") >= 1.0, "{run:#}");
        if scenario == "mesh" {
            assert_eq!(num(path, "peer_connections"), 1.0, "{run:#}");
        }
    }
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(md.contains(&format!("Topology: **{topology}**")), "{md}");
    assert!(md.contains("| mesh-http1 | 200 rps |"), "{md}");
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn a_short_soak_writes_its_samples_and_chart() {
    let linnet = linnet();
    let out = std::env::temp_dir().join(format!("linnet-bench-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    // The mesh with churn every second and certificates of a few seconds,
    // so that both happen within the run (not asserted: the timing is the
    // machine's).
    let status = Command::new(env!("CARGO_BIN_EXE_linnet-bench"))
        .args(["--soak", "6s", "--sample-interval", "2s"])
        .args(["--churn-every", "1s", "--cert-lifetime", "4s"])
        .args(["--rate", "200", "--warmup", "0"])
        .arg("--proxy")
        .arg(format!("{} proxy", linnet.display()))
        .arg("--out")
        .arg(&out)
        .status()
        .expect("run linnet-bench --soak");
    assert!(status.success(), "linnet-bench --soak failed: {status}");

    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("soak.json")).unwrap()).unwrap();
    assert_eq!(report["scenario"], "mesh");
    assert_eq!(report["rate"], 200);
    let samples = report["samples"].as_array().unwrap();
    assert!(!samples.is_empty(), "no samples: {report:#}");
    for s in samples {
        num(s, "t_s");
        num(s, "p99_ms");
        num(s, "requests");
        let proxies = s["proxies"].as_array().unwrap();
        let names: Vec<&str> = proxies
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["outbound", "inbound-1", "inbound-2", "inbound-3"],
            "{s:#}"
        );
        for p in proxies {
            assert!(num(p, "rss_kib") > 0.0, "RSS not read: {p:#}");
            num(p, "cpu_percent");
        }
    }
    // Start, end and maximum of each proxy's RSS and CPU, and of p99.
    let extents = report["extents"].as_array().unwrap();
    assert_eq!(extents.len(), 4 * 2 + 1, "{report:#}");
    num(&report, "errors");
    assert!(report["events"].is_array());

    let svg = std::fs::read_to_string(out.join("soak.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
        "{svg}"
    );
    assert_eq!(svg.matches("<svg").count(), 1);
    // A line per proxy for RSS and for CPU, and one for p99.
    assert_eq!(svg.matches("<polyline").count(), 4 * 2 + 1, "{svg}");
    std::fs::remove_dir_all(&out).unwrap();
}
