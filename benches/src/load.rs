//! Load generation: oha for HTTP/1.1 and HTTP/2, a tonic client loop for
//! gRPC. Fixed rates are open loop with coordinated-omission correction
//! (latency counts from when a request was due, not from when it could be
//! sent); the saturation load is closed loop, as fast as the connections
//! allow.

use crate::backend::GRPC_PATH;
use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use linnet_test_support::{grpc::Raw, netns::Netns};
use serde::Serialize;
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// The client protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Client {
    /// HTTP/1.1 keep-alive (oha).
    Http1,
    /// HTTP/2 with prior knowledge (oha `--http2`).
    Http2,
    /// Unary gRPC (a tonic client loop).
    Grpc,
}

/// How hard to push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rate {
    /// Requests per second, open loop.
    Fixed(u32),
    /// As fast as it goes, closed loop.
    Max,
}

impl Rate {
    /// `1000 rps` or `saturation`.
    pub(crate) fn label(self) -> String {
        match self {
            Rate::Fixed(r) => format!("{r} rps"),
            Rate::Max => "saturation".to_string(),
        }
    }
}

/// Latency percentiles, in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub(crate) struct Latency {
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) p99_9: f64,
    pub(crate) max: f64,
}

/// What one load run measured.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Outcome {
    /// Requests that completed or failed.
    pub(crate) requests: u64,
    /// Failures by kind (the load generator's words).
    pub(crate) errors: BTreeMap<String, u64>,
    /// Requests the load generator itself cancelled at the end of the run
    /// (oha does with HTTP/2 even when told to wait); not counted in
    /// `requests`.
    pub(crate) aborted_at_deadline: u64,
    /// Requests answered with success (2xx; gRPC OK).
    pub(crate) succeeded: u64,
    /// Completed requests per second.
    pub(crate) rps: f64,
    pub(crate) latency: Latency,
}

impl Outcome {
    /// Successes over all requests; 0 when there were none.
    pub(crate) fn success_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.succeeded as f64 / self.requests as f64
        }
    }
}

/// A load generator's settings.
#[derive(Clone, Debug)]
pub(crate) struct Load {
    pub(crate) oha: PathBuf,
    pub(crate) connections: u32,
}

impl Load {
    /// Sends load to `target` for `duration`, from inside the network
    /// namespace `within` when given (the client pod).
    pub(crate) fn run(
        &self,
        rt: &tokio::runtime::Runtime,
        client: Client,
        target: SocketAddr,
        rate: Rate,
        duration: Duration,
        within: Option<&Netns>,
    ) -> Result<Outcome> {
        let oha_cmd = || match within {
            Some(ns) => ns.command(&self.oha.display().to_string()),
            None => Command::new(&self.oha),
        };
        match (client, within) {
            (Client::Http1 | Client::Http2, _) => oha(
                oha_cmd(),
                &self.oha,
                client,
                target,
                rate,
                duration,
                self.connections,
            ),
            (Client::Grpc, None) => rt.block_on(grpc(target, rate, duration, self.connections)),
            (Client::Grpc, Some(_)) => bail!("the gRPC load runs on loopback only"),
        }
    }
}

fn oha(
    mut cmd: Command,
    oha: &Path,
    client: Client,
    target: SocketAddr,
    rate: Rate,
    duration: Duration,
    connections: u32,
) -> Result<Outcome> {
    cmd.args(["--no-tui", "--output-format", "json"])
        .arg("-z")
        .arg(format!("{}ms", duration.as_millis()))
        .arg("-c")
        .arg(connections.to_string())
        // In-flight requests at the deadline complete instead of counting
        // as errors.
        .arg("--wait-ongoing-requests-after-deadline");
    if let Rate::Fixed(r) = rate {
        cmd.arg("-q").arg(r.to_string()).arg("--latency-correction");
    }
    if client == Client::Http2 {
        cmd.arg("--http2");
    }
    cmd.arg(format!("http://{target}/"));
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", oha.display()))?;
    // Listed while it runs, so that a signal to the harness stops it too.
    let pid = child.id();
    crate::cleanup::add_pid(pid);
    let out = child.wait_with_output();
    crate::cleanup::remove_pid(pid);
    let out = out.with_context(|| format!("cannot run {}", oha.display()))?;
    if !out.status.success() {
        bail!(
            "oha failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_oha(&out.stdout).context("cannot read oha's JSON output")
}

/// Reads oha's `--output-format json` report.
fn parse_oha(json: &[u8]) -> Result<Outcome> {
    let v: serde_json::Value = serde_json::from_slice(json)?;
    let count = |key: &str, ok: &dyn Fn(&str) -> bool| -> u64 {
        v[key]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| ok(k))
                    .filter_map(|(_, n)| n.as_u64())
                    .sum()
            })
            .unwrap_or(0)
    };
    const DEADLINE: &str = "aborted due to deadline";
    let succeeded = count("statusCodeDistribution", &|s| s.starts_with('2'));
    let mut errors: BTreeMap<String, u64> = v["errorDistribution"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, n)| Some((k.clone(), n.as_u64()?)))
                .collect()
        })
        .unwrap_or_default();
    let aborted_at_deadline = errors.remove(DEADLINE).unwrap_or(0);
    for (code, n) in v["statusCodeDistribution"]
        .as_object()
        .into_iter()
        .flatten()
    {
        if !code.starts_with('2') {
            *errors.entry(format!("HTTP {code}")).or_default() += n.as_u64().unwrap_or(0);
        }
    }
    let requests = succeeded + errors.values().sum::<u64>();
    let secs = |x: &serde_json::Value| -> Result<f64> {
        Ok(x.as_f64().context("missing latency figure")? * 1000.0)
    };
    let p = &v["latencyPercentiles"];
    let s = &v["summary"];
    let latency = if succeeded > 0 {
        Latency {
            p50: secs(&p["p50"])?,
            p90: secs(&p["p90"])?,
            p99: secs(&p["p99"])?,
            p99_9: secs(&p["p99.9"])?,
            max: secs(&s["slowest"])?,
        }
    } else {
        Latency::default()
    };
    let total = s["total"].as_f64().context("missing summary.total")?;
    Ok(Outcome {
        requests,
        errors,
        aborted_at_deadline,
        succeeded,
        rps: if total > 0.0 {
            requests as f64 / total
        } else {
            0.0
        },
        latency,
    })
}

/// Unary gRPC calls over `connections` HTTP/2 connections. At a fixed
/// rate each call is due at its tick and its latency counts from then.
async fn grpc(
    target: SocketAddr,
    rate: Rate,
    duration: Duration,
    connections: u32,
) -> Result<Outcome> {
    let mut clients = Vec::new();
    for _ in 0..connections.max(1) {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{target}"))?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("cannot connect to {target}"))?;
        clients.push(tonic::client::Grpc::new(channel));
    }
    let stats = Arc::new(Stats {
        histogram: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
        requests: AtomicU64::new(0),
        succeeded: AtomicU64::new(0),
    });
    let request = vec![0u8; 16];
    let path = http::uri::PathAndQuery::from_static(GRPC_PATH);
    let start = Instant::now();
    match rate {
        Rate::Fixed(r) => {
            // A thread of its own paces the calls: tokio's timer wakes on
            // millisecond ticks, which would add up to a millisecond to
            // every latency measured from when a call was due.
            let period = Duration::from_secs(1) / r.max(1);
            let handle = tokio::runtime::Handle::current();
            let stats = stats.clone();
            let pacer = std::thread::spawn(move || {
                let mut calls = Vec::new();
                for n in 0u32.. {
                    let offset = period * n;
                    if offset >= duration {
                        break;
                    }
                    let due = start + offset;
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let mut c = clients[n as usize % clients.len()].clone();
                    let (stats, request, path) = (stats.clone(), request.clone(), path.clone());
                    calls.push(handle.spawn(async move {
                        let ok = call(&mut c, request, path).await;
                        stats.record(due.elapsed(), ok);
                    }));
                }
                calls
            });
            let calls = tokio::task::spawn_blocking(move || pacer.join())
                .await?
                .map_err(|_| anyhow::anyhow!("the gRPC pacer panicked"))?;
            for c in calls {
                c.await?;
            }
        }
        Rate::Max => {
            let mut workers = tokio::task::JoinSet::new();
            for mut c in clients {
                let (stats, request, path) = (stats.clone(), request.clone(), path.clone());
                workers.spawn(async move {
                    while start.elapsed() < duration {
                        let t = Instant::now();
                        let ok = call(&mut c, request.clone(), path.clone()).await;
                        stats.record(t.elapsed(), ok);
                    }
                });
            }
            while workers.join_next().await.is_some() {}
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let h = stats.histogram.lock().unwrap_or_else(|e| e.into_inner());
    let ms = |us: u64| us as f64 / 1000.0;
    let requests = stats.requests.load(Ordering::Relaxed);
    let succeeded = stats.succeeded.load(Ordering::Relaxed);
    let mut errors = BTreeMap::new();
    if requests > succeeded {
        errors.insert("gRPC call failed".to_string(), requests - succeeded);
    }
    Ok(Outcome {
        requests,
        errors,
        aborted_at_deadline: 0,
        succeeded,
        rps: requests as f64 / elapsed,
        latency: Latency {
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p99_9: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        },
    })
}

struct Stats {
    histogram: Mutex<Histogram<u64>>,
    requests: AtomicU64,
    succeeded: AtomicU64,
}

impl Stats {
    fn record(&self, latency: Duration, ok: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if ok {
            self.succeeded.fetch_add(1, Ordering::Relaxed);
            let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
            let mut h = self.histogram.lock().unwrap_or_else(|e| e.into_inner());
            h.saturating_record(us.max(1));
        }
    }
}

async fn call(
    c: &mut tonic::client::Grpc<tonic::transport::Channel>,
    request: Vec<u8>,
    path: http::uri::PathAndQuery,
) -> bool {
    if c.ready().await.is_err() {
        return false;
    }
    c.unary(tonic::Request::new(request), path, Raw)
        .await
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_oha_report() {
        let json = br#"{
            "summary": {"successRate": 1.0, "total": 2.0, "slowest": 0.004, "fastest": 0.0001,
                        "average": 0.0003, "requestsPerSec": 2000.0},
            "latencyPercentiles": {"p10": 0.0001, "p50": 0.0002, "p90": 0.0005, "p99": 0.001,
                                   "p99.9": 0.002, "p99.99": 0.003},
            "statusCodeDistribution": {"200": 3990, "503": 5},
            "errorDistribution": {"connection reset": 5, "aborted due to deadline": 2}
        }"#;
        let o = parse_oha(json).unwrap();
        assert_eq!(
            (o.requests, o.succeeded, o.aborted_at_deadline),
            (4000, 3990, 2)
        );
        assert_eq!(o.errors["connection reset"], 5);
        assert_eq!(o.errors["HTTP 503"], 5);
        assert!((o.rps - 2000.0).abs() < 1e-9);
        assert!((o.latency.p50 - 0.2).abs() < 1e-9);
        assert!((o.latency.p99_9 - 2.0).abs() < 1e-9);
        assert!((o.latency.max - 4.0).abs() < 1e-9);
        assert!((o.success_rate() - 0.9975).abs() < 1e-9);
        assert!(parse_oha(b"{}").is_err());
    }
}
