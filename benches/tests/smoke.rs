//! The harness's quick path, end to end: the `direct` and `outbound`
//! scenarios at a low rate for a few seconds, through the real `linnet`
//! binary, with oha. Checks that the report is complete and that every
//! request succeeded and the proxy's CPU and memory were read. No timing
//! is asserted: timings belong in the report, not in pass/fail tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

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

#[test]
fn quick_direct_and_outbound() {
    // The proxy under test: this build's `linnet`, built if need be (a
    // no-op when the workspace's tests already built it).
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

    let out = std::env::temp_dir().join(format!("linnet-bench-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let status = Command::new(env!("CARGO_BIN_EXE_linnet-bench"))
        .args(["--quick", "--scenario", "direct", "--scenario", "outbound"])
        .args(["--rate", "200", "--duration", "3", "--no-saturation"])
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
