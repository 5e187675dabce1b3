//! `linnet-bench --soak DURATION`: does anything grow or break when a
//! mesh runs for a long time while it changes?
//!
//! One scenario (`mesh` by default: two sidecars, identities and mTLS
//! from `linnet control`) takes a steady load (`--rate`, 1000 requests/s
//! by default, open loop as in the benchmark) for DURATION, cut into
//! samples of `--sample-interval`: each sample is one oha run, and after
//! it each proxy's RSS and CPU share over the sample are read from
//! `/proc`. Meanwhile, in the `mesh` scenario, the mesh file's endpoints
//! for the service change every `--churn-every` (one added or removed at
//! a time, see [`crate::topology::Churn`]), and the identity certificates
//! live `--cert-lifetime`, so the sidecars renew them several times;
//! renewals are read from each proxy's `identity_cert_refresh_total`.
//!
//! Written beside the benchmark's reports: `soak.json` (every sample and
//! event) and `soak.svg` (RSS, CPU and p99 over time, the changes marked).
//! Printed: each series' start, end and maximum, and the errors, with the
//! changes near the samples that had them: errors while endpoints change
//! or certificates renew are a finding, not noise.

mod svg;

use crate::{
    Args, Harness, Scenario, Selected, cpu, harness,
    load::Rate,
    memory, report,
    topology::{Churn, Topology},
};
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

/// Parses `500ms`, `90s`, `10m`, `1h` (a whole number and a unit).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or("a duration needs a unit: ms, s, m or h")?;
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s}: expected a whole number then a unit, like 10m"))?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("unknown unit {unit:?}: use ms, s, m or h")),
    };
    n.checked_mul(ms)
        .map(Duration::from_millis)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{s}: must be more than zero and not huge"))
}

/// A period, fixed or drawn at random from a range each time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Period {
    min: Duration,
    max: Duration,
}

/// Parses `20s` or `10s-30s`.
pub(crate) fn parse_period(s: &str) -> Result<Period, String> {
    let (min, max) = match s.split_once('-') {
        Some((a, b)) => (parse_duration(a)?, parse_duration(b)?),
        None => (parse_duration(s)?, parse_duration(s)?),
    };
    if min > max {
        return Err(format!("{s}: the range runs backwards"));
    }
    Ok(Period { min, max })
}

impl Period {
    /// A duration in the range, from `rng`.
    fn draw(&self, rng: &mut u64) -> Duration {
        // xorshift64: enough to spread the changes out.
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        let span = self.max.saturating_sub(self.min).as_millis() as u64;
        self.min + Duration::from_millis(if span == 0 { 0 } else { *rng % (span + 1) })
    }
}

/// One proxy in one sample.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ProxyPoint {
    pub(crate) name: String,
    pub(crate) rss_kib: u64,
    /// CPU time over the sample, as a share of one core.
    pub(crate) cpu_percent: f64,
    /// Certificates it has been issued so far (identity renewals + 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) certificates: Option<u64>,
}

/// What one sample measured.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Sample {
    /// Seconds since the soak began, at the sample's end.
    pub(crate) t_s: f64,
    pub(crate) requests: u64,
    pub(crate) succeeded: u64,
    /// Failures by kind (oha's words, or `HTTP 5xx`).
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    /// Endpoints the mesh file listed at the sample's end (churn only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) endpoints: Option<usize>,
    pub(crate) proxies: Vec<ProxyPoint>,
}

impl Sample {
    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Something the soak did to the mesh, or saw it do.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Event {
    pub(crate) t_s: f64,
    /// `churn` (the endpoints changed) or `renewal` (certificates were
    /// renewed during the sample ending at `t_s`).
    pub(crate) kind: &'static str,
    pub(crate) detail: String,
}

/// One series' start, end and maximum.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Extent {
    pub(crate) series: String,
    pub(crate) unit: &'static str,
    pub(crate) start: f64,
    pub(crate) end: f64,
    pub(crate) max: f64,
}

/// What `soak.json` holds.
#[derive(Debug, Serialize)]
pub(crate) struct SoakReport {
    pub(crate) scenario: &'static str,
    pub(crate) rate: u32,
    pub(crate) duration_s: f64,
    pub(crate) sample_interval_s: f64,
    pub(crate) churn_every: Option<Period>,
    pub(crate) cert_lifetime_s: Option<f64>,
    pub(crate) mtls: bool,
    pub(crate) proxy: String,
    pub(crate) machine: report::Machine,
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    pub(crate) error_kinds: BTreeMap<String, u64>,
    pub(crate) extents: Vec<Extent>,
    pub(crate) samples: Vec<Sample>,
    pub(crate) events: Vec<Event>,
}

/// Runs the soak `args` ask for.
pub(crate) fn run(args: &Args) -> Result<()> {
    let duration = args.soak.context("no --soak duration")?;
    let scenario = match args.scenarios.as_slice() {
        [] => Scenario::Mesh,
        [one] if *one != Selected::Tcp => Scenario::ALL
            .into_iter()
            .find(|s| s.selected_by(*one))
            .context("no such scenario")?,
        _ => bail!("--soak runs one request scenario: pass at most one --scenario (not tcp)"),
    };
    let rate = match args.rates.as_slice() {
        [] => 1000,
        [r] if *r > 0 => *r,
        _ => bail!("--soak runs at one rate: pass at most one --rate, above 0"),
    };
    let settings = report::Settings {
        quick: false,
        scenarios: vec![scenario.name().to_string()],
        tcp: false,
        rates: vec![rate],
        saturation: false,
        duration_s: duration.as_secs_f64(),
        warmup_s: args.warmup.unwrap_or(1.0).max(0.0),
        saturation_s: 0.0,
        tcp_duration_s: 0.0,
        repeats: 1,
        connections: args.connections.max(1),
        mtls: !args.plaintext,
        // A soak runs on loopback.
        topology: report::Placement::Loopback,
        proxy: String::new(),
        large_endpoints: args.large_endpoints,
        large_routes: args.large_routes.max(1),
        large_warmup_s: 0.0,
    };
    let (h, out, oha) = harness(args, settings, &[scenario])?;
    let soak = Soaking {
        h: &h,
        scenario,
        rate,
        duration,
        sample: args.sample_interval.min(duration),
        churn_every: args.churn_every,
        cert_lifetime: args.cert_lifetime,
    };
    let report = soak.run(report::Machine::read(&oha))?;
    std::fs::create_dir_all(&out)?;
    let json = out.join("soak.json");
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)?;
    std::fs::write(out.join("soak.svg"), svg::chart(&report))?;
    println!("{}", summary(&report));
    eprintln!("wrote {} and soak.svg", json.display());
    Ok(())
}

/// A soak in progress.
struct Soaking<'a> {
    h: &'a Harness,
    scenario: Scenario,
    rate: u32,
    duration: Duration,
    sample: Duration,
    churn_every: Period,
    cert_lifetime: Duration,
}

impl Soaking<'_> {
    fn run(&self, machine: report::Machine) -> Result<SoakReport> {
        let h = self.h;
        let mtls = h.settings.mtls;
        // The mesh changes only in the `mesh` scenario, which has a
        // control plane of its own for it.
        let (mut topo, admins, churn) = if self.scenario == Scenario::Mesh {
            let control = h
                .control
                .as_deref()
                .context("the soak mesh needs `linnet control`: build linnet")?;
            let (topo, soak, churn) = Topology::linnet_soak(
                &h.proxy,
                control,
                h.http_backend,
                mtls,
                self.cert_lifetime,
                &h.dirs,
            )?;
            (topo, soak.admins, Some(churn))
        } else {
            (h.start(self.scenario)?, Vec::new(), None)
        };
        let (client, entry) = (self.scenario.client(), topo.entry);
        let load = |d: Duration| {
            h.load
                .run(&h.rt, client, entry, Rate::Fixed(self.rate), d, None)
        };
        let warmup = Duration::from_secs_f64(h.settings.warmup_s);
        if !warmup.is_zero() {
            load(warmup)?;
        }
        eprintln!(
            "soak: {} at {} requests/s for {:.0} s, a sample every {:.0} s{}",
            self.scenario.name(),
            self.rate,
            self.duration.as_secs_f64(),
            self.sample.as_secs_f64(),
            if churn.is_some() {
                " (endpoint churn and certificate renewals)"
            } else {
                ""
            }
        );
        let started = Instant::now();
        let events = Arc::new(Mutex::new(Vec::new()));
        let endpoints = Arc::new(Mutex::new(churn.as_ref().map(Churn::endpoints)));
        let stop = Arc::new(AtomicBool::new(false));
        let churner = churn.map(|churn| {
            let (events, endpoints, stop) = (events.clone(), endpoints.clone(), stop.clone());
            let every = self.churn_every;
            std::thread::spawn(move || {
                churn_loop(churn, every, started, &stop, &events, &endpoints)
            })
        });
        let result = self.sample_loop(&mut topo, &admins, started, &load, &events, &endpoints);
        stop.store(true, Ordering::Relaxed);
        if let Some(t) = churner {
            t.join()
                .map_err(|_| anyhow::anyhow!("the churn thread panicked"))??;
        }
        let samples = result?;
        let mut events = std::mem::take(&mut *events.lock().unwrap_or_else(|e| e.into_inner()));
        events.sort_by(|a, b| a.t_s.total_cmp(&b.t_s));
        let mut error_kinds = BTreeMap::new();
        for s in &samples {
            for (k, n) in &s.errors {
                *error_kinds.entry(k.clone()).or_default() += n;
            }
        }
        Ok(SoakReport {
            scenario: self.scenario.name(),
            rate: self.rate,
            duration_s: started.elapsed().as_secs_f64(),
            sample_interval_s: self.sample.as_secs_f64(),
            churn_every: (self.scenario == Scenario::Mesh).then_some(self.churn_every),
            cert_lifetime_s: (self.scenario == Scenario::Mesh && mtls)
                .then_some(self.cert_lifetime.as_secs_f64()),
            mtls,
            proxy: h.settings.proxy.clone(),
            machine,
            requests: samples.iter().map(|s| s.requests).sum(),
            errors: error_kinds.values().sum(),
            extents: extents(&samples),
            error_kinds,
            samples,
            events,
        })
    }

    /// Load and samples until the soak's time is up.
    fn sample_loop(
        &self,
        topo: &mut Topology,
        admins: &[(String, SocketAddr)],
        started: Instant,
        load: &dyn Fn(Duration) -> Result<crate::load::Outcome>,
        events: &Mutex<Vec<Event>>,
        endpoints: &Mutex<Option<usize>>,
    ) -> Result<Vec<Sample>> {
        let mut samples: Vec<Sample> = Vec::new();
        let mut before = cpu(&topo.proxies)?;
        let mut at = Instant::now();
        while started.elapsed() < self.duration {
            let left = self.duration.saturating_sub(started.elapsed());
            // A sliver at the end is not worth a sample of its own.
            if left < Duration::from_millis(500) && !samples.is_empty() {
                break;
            }
            let outcome = load(self.sample.min(left))?;
            let after = cpu(&topo.proxies)?;
            let rss = memory(&topo.proxies)?;
            let elapsed_us = at.elapsed().as_micros().max(1) as f64;
            at = Instant::now();
            for p in &mut topo.proxies {
                p.check_running()?;
            }
            let certificates: Vec<Option<u64>> = topo
                .proxies
                .iter()
                .map(|p| {
                    admins
                        .iter()
                        .find(|(n, _)| *n == p.name)
                        .and_then(|(_, a)| certificates(*a))
                })
                .collect();
            let t_s = started.elapsed().as_secs_f64();
            if let Some(last) = samples.last() {
                let renewed: u64 = certificates
                    .iter()
                    .zip(&last.proxies)
                    .filter_map(|(now, p)| Some(now.as_ref()?.saturating_sub(p.certificates?)))
                    .sum();
                if renewed > 0 {
                    let mut e = events.lock().unwrap_or_else(|e| e.into_inner());
                    e.push(Event {
                        t_s,
                        kind: "renewal",
                        detail: format!("{renewed} certificate(s) renewed"),
                    });
                }
            }
            let sample = Sample {
                t_s,
                requests: outcome.requests,
                succeeded: outcome.succeeded,
                errors: outcome.errors.clone(),
                p50_ms: outcome.latency.p50,
                p99_ms: outcome.latency.p99,
                max_ms: outcome.latency.max,
                endpoints: *endpoints.lock().unwrap_or_else(|e| e.into_inner()),
                proxies: topo
                    .proxies
                    .iter()
                    .enumerate()
                    .map(|(i, p)| ProxyPoint {
                        name: p.name.clone(),
                        rss_kib: rss[i].rss_kib,
                        cpu_percent: (after[i] - before[i]) as f64 / elapsed_us * 100.0,
                        certificates: certificates[i],
                    })
                    .collect(),
            };
            before = after;
            eprintln!(
                "  {:>6.0} s  p99 {:>7.3} ms  {:>6} requests  {} errors  RSS {}",
                sample.t_s,
                sample.p99_ms,
                sample.requests,
                sample.error_count(),
                sample
                    .proxies
                    .iter()
                    .map(|p| format!("{} {:.1} MiB", p.name, p.rss_kib as f64 / 1024.0))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            samples.push(sample);
        }
        Ok(samples)
    }
}

/// Changes the endpoints every `every` until `stop`, recording each
/// change.
fn churn_loop(
    mut churn: Churn,
    every: Period,
    started: Instant,
    stop: &AtomicBool,
    events: &Mutex<Vec<Event>>,
    endpoints: &Mutex<Option<usize>>,
) -> Result<()> {
    let mut rng = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0x9e37_79b9, |d| d.as_nanos() as u64)
        | 1;
    loop {
        let due = Instant::now() + every.draw(&mut rng);
        while Instant::now() < due {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let listed = churn.advance()?;
        *endpoints.lock().unwrap_or_else(|e| e.into_inner()) = Some(churn.endpoints());
        events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Event {
                t_s: started.elapsed().as_secs_f64(),
                kind: "churn",
                detail: format!("endpoints: {listed}"),
            });
    }
}

/// Certificates a proxy has been issued so far, from its admin server
/// (`None` without an identity, or when it cannot be read).
fn certificates(admin: SocketAddr) -> Option<u64> {
    let text = crate::topology::scrape(admin).ok()?;
    let ok = crate::topology::metric_sum(&text, "identity_cert_refresh_total", "result=\"ok\"");
    (ok > 0.0).then_some(ok as u64)
}

/// Each series' start, end and maximum: per proxy RSS (MiB) and CPU (%),
/// then p99 (ms).
pub(crate) fn extents(samples: &[Sample]) -> Vec<Extent> {
    let mut out = Vec::new();
    let mut push = |series: String, unit: &'static str, values: Vec<f64>| {
        if let (Some(start), Some(end)) = (values.first(), values.last()) {
            out.push(Extent {
                series,
                unit,
                start: *start,
                end: *end,
                max: values.iter().copied().fold(f64::MIN, f64::max),
            });
        }
    };
    let names: Vec<String> = samples
        .first()
        .map(|s| s.proxies.iter().map(|p| p.name.clone()).collect())
        .unwrap_or_default();
    for (i, name) in names.iter().enumerate() {
        let of = |f: &dyn Fn(&ProxyPoint) -> f64| -> Vec<f64> {
            samples
                .iter()
                .filter_map(|s| s.proxies.get(i).map(f))
                .collect()
        };
        push(
            format!("{name} RSS"),
            "MiB",
            of(&|p| p.rss_kib as f64 / 1024.0),
        );
        push(format!("{name} CPU"), "%", of(&|p| p.cpu_percent));
    }
    push(
        "p99".into(),
        "ms",
        samples.iter().map(|s| s.p99_ms).collect(),
    );
    out
}

/// What the soak found, for the terminal.
pub(crate) fn summary(r: &SoakReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let churns = r.events.iter().filter(|e| e.kind == "churn").count();
    let renewed: u64 = r
        .samples
        .last()
        .map(|l| {
            l.proxies
                .iter()
                .filter_map(|p| p.certificates)
                .map(|n| n.saturating_sub(1))
                .sum()
        })
        .unwrap_or(0);
    let _ = writeln!(
        s,
        "soak: {} at {} requests/s for {:.0} s: {} samples, {} endpoint changes, {} certificate renewals",
        r.scenario,
        r.rate,
        r.duration_s,
        r.samples.len(),
        churns,
        renewed
    );
    let _ = writeln!(s, "| series | start | end | max |\n|---|---:|---:|---:|");
    for e in &r.extents {
        let _ = writeln!(
            s,
            "| {} ({}) | {:.2} | {:.2} | {:.2} |",
            e.series, e.unit, e.start, e.end, e.max
        );
    }
    let _ = writeln!(s, "errors: {} of {} requests", r.errors, r.requests);
    if r.errors > 0 {
        let kinds: Vec<String> = r
            .error_kinds
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        let _ = writeln!(s, "FINDING: requests failed ({})", kinds.join(", "));
        for sample in r.samples.iter().filter(|x| x.error_count() > 0) {
            let from = sample.t_s - r.sample_interval_s;
            let near: Vec<String> = r
                .events
                .iter()
                .filter(|e| e.t_s >= from - 1.0 && e.t_s <= sample.t_s + 1.0)
                .map(|e| format!("{} at {:.1} s ({})", e.kind, e.t_s, e.detail))
                .collect();
            let _ = writeln!(
                s,
                "  {:.0}–{:.0} s: {} errors; {}",
                from.max(0.0),
                sample.t_s,
                sample.error_count(),
                if near.is_empty() {
                    "no change to the mesh nearby".to_string()
                } else {
                    near.join("; ")
                }
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_periods() {
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5x").is_err());
        let p = parse_period("10s-30s").unwrap();
        let mut rng = 12345;
        for _ in 0..100 {
            let d = p.draw(&mut rng);
            assert!(d >= Duration::from_secs(10) && d <= Duration::from_secs(30));
        }
        let fixed = parse_period("20s").unwrap();
        assert_eq!(fixed.draw(&mut rng), Duration::from_secs(20));
        assert!(parse_period("30s-10s").is_err());
    }

    fn sample(t_s: f64, rss: u64, cpu: f64, p99: f64, errors: u64) -> Sample {
        let mut e = BTreeMap::new();
        if errors > 0 {
            e.insert("HTTP 503".to_string(), errors);
        }
        Sample {
            t_s,
            requests: 1000,
            succeeded: 1000 - errors,
            errors: e,
            p50_ms: p99 / 2.0,
            p99_ms: p99,
            max_ms: p99 * 2.0,
            endpoints: Some(2),
            proxies: vec![ProxyPoint {
                name: "outbound".into(),
                rss_kib: rss,
                cpu_percent: cpu,
                certificates: Some(1),
            }],
        }
    }

    #[test]
    fn extents_and_findings() {
        let samples = vec![
            sample(5.0, 10240, 20.0, 1.0, 0),
            sample(10.0, 12288, 30.0, 3.0, 4),
            sample(15.0, 11264, 25.0, 2.0, 0),
        ];
        let x = extents(&samples);
        assert_eq!(x.len(), 3);
        assert_eq!(x[0].series, "outbound RSS");
        assert_eq!((x[0].start, x[0].end, x[0].max), (10.0, 11.0, 12.0));
        assert_eq!((x[2].start, x[2].end, x[2].max), (1.0, 2.0, 3.0));
        let report = SoakReport {
            scenario: "mesh",
            rate: 200,
            duration_s: 15.0,
            sample_interval_s: 5.0,
            churn_every: None,
            cert_lifetime_s: None,
            mtls: true,
            proxy: String::new(),
            machine: report::Machine::default(),
            requests: 3000,
            errors: 4,
            error_kinds: [("HTTP 503".to_string(), 4)].into(),
            extents: x,
            samples,
            events: vec![Event {
                t_s: 7.5,
                kind: "churn",
                detail: "endpoints: inbound-2".into(),
            }],
        };
        let text = summary(&report);
        assert!(text.contains("errors: 4 of 3000 requests"), "{text}");
        assert!(text.contains("FINDING"), "{text}");
        assert!(text.contains("churn at 7.5 s"), "{text}");
        assert!(
            text.contains("| outbound RSS (MiB) | 10.00 | 11.00 | 12.00 |"),
            "{text}"
        );
        let svg = svg::chart(&report);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("outbound") && svg.contains("p99"));
    }
}
