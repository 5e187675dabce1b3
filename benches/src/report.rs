//! Results: every run as measured, the repeats of each scenario summed up
//! as min/median/max, the latency each scenario adds over its floor, and
//! the same as JSON, Markdown and an SVG chart.

mod balance;

pub(crate) use balance::Balance;

use crate::{
    load::{Client, Outcome},
    topology::PathCheck,
};
use serde::Serialize;
use std::{fmt::Write as _, path::Path, process::Command, time::Duration};

/// Where a scenario's processes run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Placement {
    /// Two network namespaces joined by a veth pair: the load generator
    /// and the client-side proxy in one, the backend and the server-side
    /// proxy in the other; sidecars behind `linnet init`'s interception.
    Pods,
    /// Everything on the host's loopback, original destinations fixed by
    /// `*_ORIG_DST_ADDR`.
    Loopback,
}

/// How the harness ran.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Settings {
    pub(crate) quick: bool,
    pub(crate) scenarios: Vec<String>,
    pub(crate) tcp: bool,
    pub(crate) rates: Vec<u32>,
    pub(crate) saturation: bool,
    pub(crate) duration_s: f64,
    pub(crate) warmup_s: f64,
    pub(crate) saturation_s: f64,
    pub(crate) tcp_duration_s: f64,
    pub(crate) repeats: usize,
    pub(crate) connections: u32,
    /// Whether the mesh and HAProxy scenarios use mTLS between the hops.
    pub(crate) mtls: bool,
    /// Where `direct`, `mesh`, `mesh-http1` and `haproxy` ran (the other
    /// scenarios run on loopback).
    pub(crate) topology: Placement,
    /// The proxy under test, as a command line with its extra environment.
    pub(crate) proxy: String,
    /// `mesh-large`'s endpoints and routes.
    pub(crate) large_endpoints: usize,
    pub(crate) large_routes: usize,
    /// `mesh-large`'s longest warm-up.
    pub(crate) large_warmup_s: f64,
}

/// Where it ran.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Machine {
    pub(crate) cores: usize,
    pub(crate) cpu: String,
    pub(crate) kernel: String,
    pub(crate) oha: String,
    pub(crate) haproxy: String,
    pub(crate) iperf3: String,
    pub(crate) commit: String,
}

impl Machine {
    pub(crate) fn read(oha: &Path) -> Self {
        let first_line = |program: &Path, arg: &str| -> String {
            Command::new(program)
                .arg(arg)
                .output()
                .ok()
                .and_then(|o| {
                    let text = String::from_utf8_lossy(&o.stdout).into_owned();
                    text.lines().next().map(|l| l.trim().to_string())
                })
                .unwrap_or_else(|| "not found".to_string())
        };
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
            .unwrap_or_default();
        Self {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            oha: first_line(oha, "--version"),
            // "HAProxy version 2.6.12-1+deb12u3 2025/10/03 - https://..."
            haproxy: first_line(Path::new("haproxy"), "-v")
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
            iperf3: first_line(Path::new("iperf3"), "--version"),
            commit: Command::new("git")
                .args(["rev-parse", "--short", "HEAD"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default(),
        }
    }
}

/// One proxy process in one run.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ProxySample {
    pub(crate) name: String,
    /// User plus system CPU time over the measured load, per request.
    pub(crate) cpu_us_per_request: f64,
    pub(crate) rss_idle_kib: u64,
    pub(crate) rss_end_kib: u64,
    pub(crate) rss_peak_kib: u64,
}

/// One measured request/response run.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Run {
    pub(crate) scenario: &'static str,
    pub(crate) baseline: Option<&'static str>,
    pub(crate) placement: Placement,
    pub(crate) client: Client,
    pub(crate) load: String,
    pub(crate) rate: Option<u32>,
    pub(crate) repeat: usize,
    pub(crate) success_rate: f64,
    pub(crate) outcome: Outcome,
    pub(crate) proxies: Vec<ProxySample>,
    /// How a balanced mesh spread the load.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) balance: Option<Balance>,
    /// What the requests crossed, read from the sidecars afterwards
    /// (`mesh`, `mesh-http1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) path: Option<PathCheck>,
}

impl Run {
    /// A progress line.
    pub(crate) fn summary(&self) -> String {
        let l = &self.outcome.latency;
        let mut s = format!(
            "{:<13} {:<10} #{} {:>7} req {:>8.0} req/s ok {:>6.2}% p50 {:.3} p99 {:.3} ms",
            self.scenario,
            self.load,
            self.repeat + 1,
            self.outcome.requests,
            self.outcome.rps,
            self.success_rate * 100.0,
            l.p50,
            l.p99,
        );
        if !self.outcome.errors.is_empty() {
            let _ = write!(s, " errors {:?}", self.outcome.errors);
        }
        for p in &self.proxies {
            let _ = write!(
                s,
                " | {} {:.0} us/req {} KiB",
                p.name, p.cpu_us_per_request, p.rss_peak_kib
            );
        }
        if let Some(b) = &self.balance {
            let _ = write!(s, " | {}", b.summary());
        }
        if let Some(p) = &self.path {
            let _ = write!(
                s,
                " | {} peer connection(s), {} routed, {} authorized",
                p.peer_connections, p.routed, p.authorized
            );
        }
        if self.placement == Placement::Pods {
            s.push_str(" [pods]");
        }
        s
    }
}

/// One proxy process in one TCP run.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct TcpProxySample {
    pub(crate) name: String,
    /// CPU time over the stream's duration (100 = one core).
    pub(crate) cpu_percent: f64,
    pub(crate) rss_idle_kib: u64,
    pub(crate) rss_end_kib: u64,
    pub(crate) rss_peak_kib: u64,
}

/// One bulk TCP stream.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct TcpRun {
    pub(crate) path: &'static str,
    pub(crate) describe: &'static str,
    pub(crate) repeat: usize,
    pub(crate) gbit_s: f64,
    pub(crate) proxies: Vec<TcpProxySample>,
}

impl TcpRun {
    /// A progress line.
    pub(crate) fn summary(&self) -> String {
        let mut s = format!(
            "{:<16} #{} {:>6.2} Gbit/s",
            self.path,
            self.repeat + 1,
            self.gbit_s
        );
        for p in &self.proxies {
            let _ = write!(
                s,
                " | {} {:.0}% CPU {} KiB",
                p.name, p.cpu_percent, p.rss_peak_kib
            );
        }
        s
    }
}

/// The smallest, middle and largest of a figure's repeats.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub(crate) struct Spread {
    pub(crate) min: f64,
    pub(crate) median: f64,
    pub(crate) max: f64,
}

impl Spread {
    fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Self::default();
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Self {
            min: v[0],
            median,
            max: v[n - 1],
        }
    }

    /// `median (min–max)`, or the value alone when all repeats agree.
    fn show(&self, digits: usize) -> String {
        let m = format!("{:.*}", digits, self.median);
        let (lo, hi) = (
            format!("{:.*}", digits, self.min),
            format!("{:.*}", digits, self.max),
        );
        if lo == hi {
            m
        } else {
            format!("{m} ({lo}–{hi})")
        }
    }
}

/// Latency percentiles over the repeats, in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct LatencySpread {
    pub(crate) p50: Spread,
    pub(crate) p90: Spread,
    pub(crate) p99: Spread,
    pub(crate) p99_9: Spread,
    pub(crate) max: Spread,
}

/// Latency added over the floor, paired repeat by repeat.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Added {
    pub(crate) over: &'static str,
    pub(crate) p50: Spread,
    pub(crate) p99: Spread,
}

/// One proxy's figures over the repeats.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ProxyRow {
    pub(crate) name: String,
    pub(crate) cpu_us_per_request: Spread,
    pub(crate) rss_idle_kib: Spread,
    pub(crate) rss_end_kib: Spread,
    pub(crate) rss_peak_kib: Spread,
}

/// A scenario at one load, over its repeats.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Row {
    pub(crate) scenario: &'static str,
    pub(crate) placement: Placement,
    pub(crate) client: Client,
    pub(crate) load: String,
    pub(crate) rate: Option<u32>,
    pub(crate) repeats: usize,
    pub(crate) requests: u64,
    /// The lowest success rate of the repeats.
    pub(crate) success_rate: f64,
    pub(crate) rps: Spread,
    pub(crate) latency_ms: LatencySpread,
    /// Only at fixed rates, and when the floor was measured.
    pub(crate) added_ms: Option<Added>,
    pub(crate) proxies: Vec<ProxyRow>,
}

/// A TCP path over its repeats.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct TcpRow {
    pub(crate) path: &'static str,
    pub(crate) describe: &'static str,
    pub(crate) gbit_s: Spread,
    /// Throughput as a share of the direct path's, paired by repeat.
    pub(crate) percent_of_direct: Option<Spread>,
    pub(crate) proxies: Vec<TcpProxyRow>,
}

/// One proxy in a TCP path, over the repeats.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct TcpProxyRow {
    pub(crate) name: String,
    pub(crate) cpu_percent: Spread,
    pub(crate) rss_peak_kib: Spread,
}

/// Everything, as written to `results.json`.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) generated_unix_s: u64,
    pub(crate) elapsed_s: f64,
    pub(crate) machine: Machine,
    pub(crate) settings: Settings,
    pub(crate) results: Vec<Row>,
    pub(crate) tcp: Vec<TcpRow>,
    pub(crate) runs: Vec<Run>,
    pub(crate) tcp_runs: Vec<TcpRun>,
}

impl Report {
    pub(crate) fn build(
        settings: Settings,
        machine: Machine,
        runs: Vec<Run>,
        tcp_runs: Vec<TcpRun>,
        elapsed: Duration,
    ) -> Self {
        let mut results = Vec::new();
        let mut keys: Vec<(&'static str, String)> = Vec::new();
        for r in &runs {
            let key = (r.scenario, r.load.clone());
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        // Group by load first (in the order run), then scenario.
        let mut loads: Vec<String> = Vec::new();
        for (_, l) in &keys {
            if !loads.contains(l) {
                loads.push(l.clone());
            }
        }
        for load in &loads {
            for scenario in settings.scenarios.iter() {
                let group: Vec<&Run> = runs
                    .iter()
                    .filter(|r| r.scenario == scenario && &r.load == load)
                    .collect();
                if let Some(row) = row(&group, &runs) {
                    results.push(row);
                }
            }
        }
        let mut tcp = Vec::new();
        let mut paths: Vec<&'static str> = Vec::new();
        for r in &tcp_runs {
            if !paths.contains(&r.path) {
                paths.push(r.path);
            }
        }
        paths.sort_by_key(|p| TCP_ORDER.iter().position(|x| x == p));
        for path in paths {
            let group: Vec<&TcpRun> = tcp_runs.iter().filter(|r| r.path == path).collect();
            tcp.push(tcp_row(&group, &tcp_runs));
        }
        Self {
            generated_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            elapsed_s: elapsed.as_secs_f64(),
            machine,
            settings,
            results,
            tcp,
            runs,
            tcp_runs,
        }
    }

    /// The tables.
    pub(crate) fn markdown(&self) -> String {
        let mut s = String::new();
        let m = &self.machine;
        let st = &self.settings;
        let _ = writeln!(
            s,
            "Machine: {} cores ({}), Linux {}. Proxy under test: `{}`; {}, one thread per proxy process; {}. \
             Load: {}, {} connections, {} s measured after {} s warm-up, {} repeat(s) interleaved; \
             figures are the median of the repeats with (min–max). Commit {}.\n",
            m.cores,
            m.cpu,
            m.kernel,
            st.proxy,
            m.haproxy,
            if st.mtls {
                "mesh and HAProxy hops talk TLS 1.3 with client certificates (mTLS)"
            } else {
                "mesh and HAProxy hops in plaintext"
            },
            m.oha,
            st.connections,
            st.duration_s,
            st.warmup_s,
            st.repeats,
            if m.commit.is_empty() {
                "unknown"
            } else {
                &m.commit
            },
        );
        s.push_str(&topology_note(st.topology, &self.results));
        let has = |name: &str| self.results.iter().any(|r| r.scenario == name);
        if has("mesh") || has("mesh-http1") {
            s.push_str(
                "`mesh` is two sidecars as Linkerd runs them: identities, endpoints and policies \
                 from `linnet control`, the endpoint hinted `h2` (HTTP/1.1 requests travel as HTTP/2 \
                 between the sidecars); the client sidecar follows the service's outbound policy \
                 (routes, a request timeout, retries on 5xx within the retry budget, a PeakEWMA \
                 balancer with a bounded queue, failure accrual), the server sidecar its workload's \
                 inbound policy (a server on the application's port admitting the client's \
                 identity, one route). `mesh-http1` is the same without the hint: HTTP/1.1 inside \
                 mTLS between the sidecars.\n\n",
            );
        }
        if has("mesh-authz") {
            let _ = writeln!(
                s,
                "`mesh-authz` is the plain two-sidecar mesh (no `h2` hint, no outbound policy, on \
                 loopback) with the server sidecar following an inbound policy \
                 (`LINKERD2_PROXY_POLICY_SVC_ADDR`) for the application's port: {} authorizations \
                 by identity, the client's named by the last (so each request is checked against \
                 all of them), and a local rate limit, total and per identity, too high to refuse \
                 anything.\n",
                crate::topology::AUTHORIZATIONS,
            );
        }
        let fixed: Vec<&Row> = self.results.iter().filter(|r| r.rate.is_some()).collect();
        if !fixed.is_empty() {
            s.push_str("### Latency at fixed rates (ms)\n\n");
            s.push_str("| scenario | load | p50 | p90 | p99 | p99.9 | max | added p50 | added p99 | success |\n");
            s.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
            for r in &fixed {
                let l = &r.latency_ms;
                let (a50, a99) = r
                    .added_ms
                    .as_ref()
                    .map_or(("".into(), "".into()), |a| (a.p50.show(3), a.p99.show(3)));
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {:.3} | {} | {:.3} | {:.3} | {} | {} | {:.2}% |",
                    r.scenario,
                    r.load,
                    l.p50.show(3),
                    l.p90.median,
                    l.p99.show(3),
                    l.p99_9.median,
                    l.max.median,
                    a50,
                    a99,
                    r.success_rate * 100.0
                );
            }
            s.push('\n');
        }
        if self.results.iter().any(|r| !r.proxies.is_empty()) {
            s.push_str("### Cost per proxy process\n\n");
            s.push_str("| scenario | load | proxy | CPU µs/request | RSS idle MiB | RSS end MiB | peak RSS MiB |\n");
            s.push_str("|---|---|---|---:|---:|---:|---:|\n");
            let mib = |x: &Spread| format!("{:.1}", x.median / 1024.0);
            for r in &self.results {
                for p in &r.proxies {
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | {} | {} | {} | {:.1} |",
                        r.scenario,
                        r.load,
                        p.name,
                        p.cpu_us_per_request.show(0),
                        mib(&p.rss_idle_kib),
                        mib(&p.rss_end_kib),
                        p.rss_peak_kib.max / 1024.0
                    );
                }
            }
            s.push('\n');
        }
        balance::markdown(&mut s, st, &self.runs);
        let sat: Vec<&Row> = self.results.iter().filter(|r| r.rate.is_none()).collect();
        if !sat.is_empty() {
            s.push_str("### Saturation (closed loop)\n\n");
            s.push_str("| scenario | requests/s | p50 ms | p99 ms | success |\n");
            s.push_str("|---|---:|---:|---:|---:|\n");
            for r in &sat {
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.3} | {:.3} | {:.2}% |",
                    r.scenario,
                    r.rps.show(0),
                    r.latency_ms.p50.median,
                    r.latency_ms.p99.median,
                    r.success_rate * 100.0
                );
            }
            s.push('\n');
        }
        if !self.tcp.is_empty() {
            s.push_str("### Bulk TCP, one iperf3 stream\n\n");
            s.push_str("| path | what | Gbit/s | % of direct | proxies: CPU %, peak RSS MiB |\n");
            s.push_str("|---|---|---:|---:|---|\n");
            for t in &self.tcp {
                let procs: Vec<String> = t
                    .proxies
                    .iter()
                    .map(|p| {
                        format!(
                            "{} {:.0}%, {:.1}",
                            p.name,
                            p.cpu_percent.median,
                            p.rss_peak_kib.max / 1024.0
                        )
                    })
                    .collect();
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} |",
                    t.path,
                    t.describe,
                    t.gbit_s.show(2),
                    t.percent_of_direct.map_or(String::new(), |p| p.show(0)),
                    procs.join("; ")
                );
            }
            s.push('\n');
        }
        s
    }

    /// Latency percentiles by scenario, one panel per fixed rate.
    pub(crate) fn svg(&self) -> String {
        let rates: Vec<u32> = {
            let mut r: Vec<u32> = self.results.iter().filter_map(|r| r.rate).collect();
            r.dedup();
            r.sort_unstable();
            r.dedup();
            r
        };
        let (width, panel_h, top) = (960.0_f64, 300.0_f64, 40.0_f64);
        let height = top + panel_h * rates.len().max(1) as f64 + 20.0;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="22" text-anchor="middle" font-size="15">Latency by scenario (ms, median of repeats; open loop, corrected)</text>"#,
            width / 2.0
        );
        let series = [
            ("p50", "#4c78a8"),
            ("p90", "#72b7b2"),
            ("p99", "#f58518"),
            ("p99.9", "#e45756"),
        ];
        for (i, (name, color)) in series.iter().enumerate() {
            let x = width - 330.0 + i as f64 * 80.0;
            let _ = writeln!(
                s,
                r#"<rect x="{x}" y="30" width="12" height="12" fill="{color}"/><text x="{}" y="40">{name}</text>"#,
                x + 16.0
            );
        }
        for (pi, rate) in rates.iter().enumerate() {
            let rows: Vec<&Row> = self
                .results
                .iter()
                .filter(|r| r.rate == Some(*rate))
                .collect();
            let y0 = top + pi as f64 * panel_h + 30.0;
            let plot_h = panel_h - 80.0;
            let (left, right) = (60.0, width - 20.0);
            let max = rows
                .iter()
                .map(|r| r.latency_ms.p99_9.median)
                .fold(0.0_f64, f64::max);
            let step = nice_step(max / 5.0);
            let ymax = (max / step).ceil().max(1.0) * step;
            let y = |v: f64| y0 + plot_h - v / ymax * plot_h;
            let _ = writeln!(
                s,
                r#"<text x="{left}" y="{}" font-size="13">{rate} requests/s</text>"#,
                y0 - 8.0
            );
            let mut t = 0.0;
            while t <= ymax + step / 2.0 {
                let _ = writeln!(
                    s,
                    r##"<line x1="{left}" x2="{right}" y1="{0:.1}" y2="{0:.1}" stroke="#ddd"/><text x="{1}" y="{2:.1}" text-anchor="end">{3}</text>"##,
                    y(t),
                    left - 6.0,
                    y(t) + 4.0,
                    trim(t)
                );
                t += step;
            }
            let group_w = (right - left) / rows.len().max(1) as f64;
            let bar_w = (group_w * 0.8 / series.len() as f64).min(28.0);
            for (gi, r) in rows.iter().enumerate() {
                let gx = left + gi as f64 * group_w + (group_w - bar_w * series.len() as f64) / 2.0;
                let l = &r.latency_ms;
                let values = [l.p50.median, l.p90.median, l.p99.median, l.p99_9.median];
                for (bi, v) in values.iter().enumerate() {
                    let x = gx + bi as f64 * bar_w;
                    let _ = writeln!(
                        s,
                        r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} {} {}: {:.3} ms</title></rect>"#,
                        y(*v),
                        bar_w - 2.0,
                        (y0 + plot_h - y(*v)).max(0.0),
                        series[bi].1,
                        r.scenario,
                        r.load,
                        series[bi].0,
                        v
                    );
                }
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                    left + (gi as f64 + 0.5) * group_w,
                    y0 + plot_h + 18.0,
                    r.scenario
                );
            }
        }
        s.push_str("</svg>\n");
        s
    }
}

/// Where the run's scenarios ran, in words.
fn topology_note(topology: Placement, results: &[Row]) -> String {
    let mut names: Vec<String> = Vec::new();
    let mut loopback = false;
    for r in results {
        let name = format!("`{}`", r.scenario);
        match r.placement {
            Placement::Pods if !names.contains(&name) => names.push(name),
            Placement::Pods => {}
            Placement::Loopback => loopback = true,
        }
    }
    match topology {
        Placement::Pods => {
            let listed = match names.split_last() {
                Some((last, [])) => last.clone(),
                Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
                None => "No scenario".to_string(),
            };
            let mut s = format!(
                "Topology: **pods**. {listed} ran between two network namespaces joined by a veth \
                 pair: the client pod holds oha and the client-side proxy, the server pod the \
                 backend and the server-side proxy. The sidecars run as the proxy's uid behind \
                 `linnet init`'s iptables rules (oha dials the service's virtual address); \
                 HAProxy's hops are addressed explicitly."
            );
            if loopback {
                s.push_str(
                    " The other scenarios ran on loopback, measured against `direct-loopback`.",
                );
            }
            s.push_str("\n\n");
            s
        }
        Placement::Loopback => "Topology: **loopback**. Every process on the host's loopback, the \
             proxies' original destinations fixed by `*_ORIG_DST_ADDR` instead of iptables (run \
             as root for the two-pod topology).\n\n"
            .to_string(),
    }
}

const TCP_ORDER: [&str; 5] = [
    "tcp-direct",
    "tcp-outbound",
    "tcp-haproxy-hop",
    "tcp-mesh",
    "tcp-haproxy",
];

fn row(group: &[&Run], all: &[Run]) -> Option<Row> {
    let first = group.first()?;
    let lat = |f: fn(&crate::load::Latency) -> f64| {
        Spread::of(group.iter().map(|r| f(&r.outcome.latency)))
    };
    let added = match (first.baseline, first.rate) {
        (Some(b), Some(_)) => {
            let pairs: Vec<(&Run, &Run)> = group
                .iter()
                .filter_map(|r| {
                    all.iter()
                        .find(|x| x.scenario == b && x.load == r.load && x.repeat == r.repeat)
                        .map(|base| (*r, base))
                })
                .collect();
            (!pairs.is_empty()).then(|| Added {
                over: b,
                p50: Spread::of(
                    pairs
                        .iter()
                        .map(|(r, b)| r.outcome.latency.p50 - b.outcome.latency.p50),
                ),
                p99: Spread::of(
                    pairs
                        .iter()
                        .map(|(r, b)| r.outcome.latency.p99 - b.outcome.latency.p99),
                ),
            })
        }
        _ => None,
    };
    let proxies = first
        .proxies
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let of = |f: fn(&ProxySample) -> f64| {
                Spread::of(group.iter().filter_map(|r| r.proxies.get(i)).map(f))
            };
            ProxyRow {
                name: p.name.clone(),
                cpu_us_per_request: of(|p| p.cpu_us_per_request),
                rss_idle_kib: of(|p| p.rss_idle_kib as f64),
                rss_end_kib: of(|p| p.rss_end_kib as f64),
                rss_peak_kib: of(|p| p.rss_peak_kib as f64),
            }
        })
        .collect();
    Some(Row {
        scenario: first.scenario,
        placement: first.placement,
        client: first.client,
        load: first.load.clone(),
        rate: first.rate,
        repeats: group.len(),
        requests: group.iter().map(|r| r.outcome.requests).sum(),
        success_rate: group.iter().map(|r| r.success_rate).fold(1.0, f64::min),
        rps: Spread::of(group.iter().map(|r| r.outcome.rps)),
        latency_ms: LatencySpread {
            p50: lat(|l| l.p50),
            p90: lat(|l| l.p90),
            p99: lat(|l| l.p99),
            p99_9: lat(|l| l.p99_9),
            max: lat(|l| l.max),
        },
        added_ms: added,
        proxies,
    })
}

fn tcp_row(group: &[&TcpRun], all: &[TcpRun]) -> TcpRow {
    let first = group[0];
    let direct: Vec<f64> = group
        .iter()
        .filter_map(|r| {
            all.iter()
                .find(|x| x.path == "tcp-direct" && x.repeat == r.repeat)
                .map(|d| r.gbit_s / d.gbit_s * 100.0)
        })
        .collect();
    TcpRow {
        path: first.path,
        describe: first.describe,
        gbit_s: Spread::of(group.iter().map(|r| r.gbit_s)),
        percent_of_direct: (!direct.is_empty()).then(|| Spread::of(direct)),
        proxies: first
            .proxies
            .iter()
            .enumerate()
            .map(|(i, p)| TcpProxyRow {
                name: p.name.clone(),
                cpu_percent: Spread::of(
                    group
                        .iter()
                        .filter_map(|r| r.proxies.get(i))
                        .map(|p| p.cpu_percent),
                ),
                rss_peak_kib: Spread::of(
                    group
                        .iter()
                        .filter_map(|r| r.proxies.get(i))
                        .map(|p| p.rss_peak_kib as f64),
                ),
            })
            .collect(),
    }
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
pub(crate) fn nice_step(raw: f64) -> f64 {
    if raw.is_nan() || raw <= 0.0 {
        return 0.1;
    }
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * p)
}

pub(crate) fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_repeats() {
        let s = Spread::of([3.0, 1.0, 2.0]);
        assert_eq!((s.min, s.median, s.max), (1.0, 2.0, 3.0));
        assert_eq!(Spread::of([4.0, 1.0]).median, 2.5);
        assert_eq!(Spread::of([f64::NAN]).median, 0.0);
        assert_eq!(s.show(1), "2.0 (1.0–3.0)");
        assert_eq!(Spread::of([2.0]).show(1), "2.0");
    }

    #[test]
    fn chart_steps() {
        assert_eq!(nice_step(0.13), 0.2);
        assert_eq!(nice_step(0.5), 0.5);
        assert_eq!(nice_step(3.1), 5.0);
        assert_eq!(nice_step(0.0), 0.1);
    }
}
