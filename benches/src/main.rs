//! `linnet-bench`: Linnet's numbers, measured the way the field measures
//! them, next to HAProxy on the same machine in the same run.
//!
//! ```text
//! cargo run --release -p linnet-bench -- [--quick] [--scenario NAME...]
//! ```
//!
//! It starts everything itself (backends, the proxies under test,
//! HAProxy, iperf3), drives load with oha (HTTP) or a tonic client loop
//! (gRPC) at fixed rates, open loop with coordinated-omission correction,
//! and as fast as it goes; reads each proxy's CPU time and memory from
//! `/proc`; and writes JSON, Markdown and an SVG chart under
//! `target/bench/`. Scenarios run interleaved and repeated, so that the
//! machine's noise shows as the spread between repeats.
//!
//! The headline scenario, `mesh`, is two sidecars as Linkerd runs them
//! (identities, endpoints and policies from `linnet control`; the
//! endpoint hinted `h2`; routes, retries, the balancer and an inbound
//! authorization on the path: [`topology`]'s `mesh` module), with
//! `mesh-http1` (the same without the hint) and `haproxy` (two HAProxy
//! hops with mTLS) beside it. As root these three and their floor,
//! `direct`, run between two network namespaces joined by a veth pair,
//! the sidecars behind `linnet init`'s iptables rules (`--topology pods`,
//! the default as root); otherwise, and for every other scenario, on
//! loopback. The report says which.
//!
//! The proxy under test is any command line (`--proxy`, `--proxy-env`)
//! that reads Linkerd's `LINKERD2_PROXY_*` variables: the listeners, the
//! admin server, the control plane's addresses and, on loopback,
//! `*_ORIG_DST_ADDR`, which stands in for iptables. Stopped by a signal,
//! the harness kills what it started and deletes its namespaces
//! ([`cleanup`]).
//!
//! `--soak DURATION` runs one scenario (`mesh` unless `--scenario` says
//! otherwise) at one steady rate for that long instead, the mesh file
//! changing the service's endpoints every so often and the identity
//! certificates short-lived enough to renew several times, and writes
//! samples of each proxy's memory and CPU and of the load's p99 and
//! errors over time ([`soak`]).

mod backend;
mod cleanup;
mod load;
mod procs;
mod report;
mod soak;
mod topology;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use load::{Client, Load, Rate};
use procs::Memory;
use report::{Placement, ProxySample, Run, TcpRun};
use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};
use topology::{Dirs, HaMode, MeshKind, ProxyCmd, Shape, Topology};

#[derive(Parser, Debug)]
#[command(
    name = "linnet-bench",
    about = "Benchmarks of the Linnet proxy, beside HAProxy"
)]
struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
    /// A short run (one repeat, short loads, 1000 requests/s only) that
    /// finishes in about two minutes (`mesh-large` warms up the longest).
    #[arg(long)]
    quick: bool,
    /// Scenarios to run (default: all). Those measured against a floor
    /// bring it along (`http2` runs `http2-direct` too).
    #[arg(long = "scenario", value_enum)]
    scenarios: Vec<Selected>,
    /// Fixed rates in requests/s (default 1000 and 5000; 1000 with --quick).
    #[arg(long = "rate")]
    rates: Vec<u32>,
    /// Skip the saturation runs.
    #[arg(long)]
    no_saturation: bool,
    /// Seconds of measured load per run (default 6; 2 with --quick;
    /// saturation runs take at most 4).
    #[arg(long)]
    duration: Option<f64>,
    /// Seconds of warm-up load before each run (default 1; 0.5 with --quick).
    #[arg(long)]
    warmup: Option<f64>,
    /// Seconds of warm-up load before each `mesh-large` run, at most: it
    /// goes on while the endpoints the client sidecar has connections to
    /// keep growing.
    #[arg(long, default_value_t = 60.0)]
    large_warmup: f64,
    /// Endpoints of the service in `mesh-large`.
    #[arg(long, default_value_t = 10_000)]
    large_endpoints: usize,
    /// Routes of the policy in `mesh-large` (all but one match no request).
    #[arg(long, default_value_t = 1000)]
    large_routes: usize,
    /// Times each run is repeated, interleaved (default 3; 1 with --quick).
    #[arg(long)]
    repeats: Option<usize>,
    /// Client connections.
    #[arg(long, default_value_t = 10)]
    connections: u32,
    /// The proxy under test, as a command line (default: the `linnet`
    /// binary built beside this one, with `proxy`).
    #[arg(long)]
    proxy: Option<String>,
    /// Extra environment for the proxy under test, as NAME=VALUE.
    #[arg(long = "proxy-env")]
    proxy_env: Vec<String>,
    /// Run the mesh and HAProxy scenarios in plaintext instead of mTLS.
    #[arg(long)]
    plaintext: bool,
    /// Where `direct`, `mesh`, `mesh-http1` and `haproxy` run: `pods`
    /// (two network namespaces joined by a veth pair, with `linnet
    /// init`'s interception; needs root) or `loopback`. Default: `pods`
    /// as root, else `loopback`. Other scenarios always run on loopback.
    #[arg(long, value_enum)]
    topology: Option<Placement>,
    /// Where results go (default: `target/bench`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// A soak run of this long (`10m`, `90s`) instead of the benchmark:
    /// one scenario (default `mesh`) at one rate (default 1000/s), with
    /// endpoint churn and certificate rotation; writes `soak.json` and
    /// `soak.svg`.
    #[arg(long, value_parser = soak::parse_duration)]
    soak: Option<Duration>,
    /// How often a soak run samples memory, CPU, p99 and errors.
    #[arg(long, default_value = "5s", value_parser = soak::parse_duration)]
    sample_interval: Duration,
    /// How often a soak run changes the service's endpoints: a fixed
    /// period (`20s`) or a range picked from at random each time
    /// (`10s-30s`).
    #[arg(long, default_value = "10s-30s", value_parser = soak::parse_period)]
    churn_every: soak::Period,
    /// The lifetime of the identity certificates `linnet control` issues
    /// in a soak run (they renew at about 70% of it).
    #[arg(long, default_value = "60s", value_parser = soak::parse_duration)]
    cert_lifetime: Duration,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// New connections per second through one mTLS proxy pair (each a
    /// fresh mTLS handshake between the sidecars), beside two HAProxy hops
    /// with mTLS.
    Handshakes {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Connections opened at once.
        #[arg(long, default_value_t = 10)]
        concurrency: usize,
    },
    /// Runs a backend (used by the harness).
    #[command(hide = true)]
    Backend {
        #[arg(value_enum)]
        kind: backend::Kind,
        #[arg(default_value = "127.0.0.1:0")]
        addr: SocketAddr,
    },
}

/// Scenarios as named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Selected {
    Direct,
    Outbound,
    /// Two sidecars as Linkerd runs them: the endpoint hinted `h2`.
    Mesh,
    /// `mesh` without the hint: HTTP/1.1 inside mTLS between sidecars.
    #[value(name = "mesh-http1")]
    MeshHttp1,
    MeshAuthz,
    MeshBalanced,
    MeshLarge,
    Haproxy,
    Http2,
    Grpc,
    Tcp,
}

/// A request/response scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Direct,
    /// The floor of the loopback scenarios when `direct` runs in pods.
    DirectLoopback,
    Outbound,
    Mesh,
    MeshHttp1,
    MeshAuthz,
    MeshBalanced,
    MeshLarge,
    Haproxy,
    Http2Direct,
    Http2,
    GrpcDirect,
    Grpc,
}

impl Scenario {
    const ALL: [Scenario; 13] = [
        Scenario::Direct,
        Scenario::DirectLoopback,
        Scenario::Outbound,
        Scenario::Mesh,
        Scenario::MeshHttp1,
        Scenario::MeshAuthz,
        Scenario::MeshBalanced,
        Scenario::MeshLarge,
        Scenario::Haproxy,
        Scenario::Http2Direct,
        Scenario::Http2,
        Scenario::GrpcDirect,
        Scenario::Grpc,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::Direct => "direct",
            Scenario::DirectLoopback => "direct-loopback",
            Scenario::Outbound => "outbound",
            Scenario::Mesh => "mesh",
            Scenario::MeshHttp1 => "mesh-http1",
            Scenario::MeshAuthz => "mesh-authz",
            Scenario::MeshBalanced => "mesh-balanced",
            Scenario::MeshLarge => "mesh-large",
            Scenario::Haproxy => "haproxy",
            Scenario::Http2Direct => "http2-direct",
            Scenario::Http2 => "http2",
            Scenario::GrpcDirect => "grpc-direct",
            Scenario::Grpc => "grpc",
        }
    }

    fn client(self) -> Client {
        match self {
            Scenario::Direct
            | Scenario::DirectLoopback
            | Scenario::Outbound
            | Scenario::Mesh
            | Scenario::MeshHttp1
            | Scenario::MeshAuthz
            | Scenario::MeshBalanced
            | Scenario::MeshLarge
            | Scenario::Haproxy => Client::Http1,
            Scenario::Http2Direct | Scenario::Http2 => Client::Http2,
            Scenario::GrpcDirect | Scenario::Grpc => Client::Grpc,
        }
    }

    /// The floor it is compared with: the same client straight to the
    /// backend, placed as it is (`topology` is the run's).
    fn baseline(self, topology: Placement) -> Option<Scenario> {
        match self {
            Scenario::Mesh | Scenario::MeshHttp1 | Scenario::Haproxy => Some(Scenario::Direct),
            Scenario::Outbound
            | Scenario::MeshAuthz
            | Scenario::MeshBalanced
            | Scenario::MeshLarge => Some(match topology {
                Placement::Pods => Scenario::DirectLoopback,
                Placement::Loopback => Scenario::Direct,
            }),
            Scenario::Http2 => Some(Scenario::Http2Direct),
            Scenario::Grpc => Some(Scenario::GrpcDirect),
            _ => None,
        }
    }

    /// Where it runs in a run whose topology is `topology`: in pods only
    /// the scenarios that have a pod layout (the mesh as users run it,
    /// HAProxy beside it, and their floor).
    fn placement(self, topology: Placement) -> Placement {
        match (topology, self) {
            (
                Placement::Pods,
                Scenario::Direct | Scenario::Mesh | Scenario::MeshHttp1 | Scenario::Haproxy,
            ) => Placement::Pods,
            _ => Placement::Loopback,
        }
    }

    fn selected_by(self, s: Selected) -> bool {
        matches!(
            (s, self),
            (Selected::Direct, Scenario::Direct)
                | (Selected::Outbound, Scenario::Outbound)
                | (Selected::Mesh, Scenario::Mesh)
                | (Selected::MeshHttp1, Scenario::MeshHttp1)
                | (Selected::MeshAuthz, Scenario::MeshAuthz)
                | (Selected::MeshBalanced, Scenario::MeshBalanced)
                | (Selected::MeshLarge, Scenario::MeshLarge)
                | (Selected::Haproxy, Scenario::Haproxy)
                | (Selected::Http2, Scenario::Http2)
                | (Selected::Grpc, Scenario::Grpc)
        )
    }
}

/// A bulk TCP path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TcpPath {
    Direct,
    Outbound,
    HaproxyHop,
    Mesh,
    Haproxy,
}

impl TcpPath {
    const ALL: [TcpPath; 5] = [
        TcpPath::Direct,
        TcpPath::Outbound,
        TcpPath::HaproxyHop,
        TcpPath::Mesh,
        TcpPath::Haproxy,
    ];

    fn name(self) -> &'static str {
        match self {
            TcpPath::Direct => "tcp-direct",
            TcpPath::Outbound => "tcp-outbound",
            TcpPath::HaproxyHop => "tcp-haproxy-hop",
            TcpPath::Mesh => "tcp-mesh",
            TcpPath::Haproxy => "tcp-haproxy",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            TcpPath::Direct => "iperf3 straight to its server",
            TcpPath::Outbound => "one proxy hop (outbound)",
            TcpPath::HaproxyHop => "one HAProxy hop (mode tcp)",
            TcpPath::Mesh => "two proxies (outbound, then inbound)",
            TcpPath::Haproxy => "two HAProxy hops (mode tcp)",
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    match args.command {
        Some(Sub::Backend { kind, addr }) => backend::serve(kind, addr),
        Some(Sub::Handshakes {
            seconds,
            concurrency,
        }) => handshakes(&args, seconds, concurrency),
        None if args.soak.is_some() => soak::run(&args),
        None => bench(&args),
    }
}

/// Everything a run needs.
struct Harness {
    settings: report::Settings,
    proxy: ProxyCmd,
    dirs: Dirs,
    load: Load,
    http_backend: SocketAddr,
    grpc_backend: Option<SocketAddr>,
    /// The `linnet` binary, for `linnet control` in the mTLS mesh.
    control: Option<PathBuf>,
    rt: tokio::runtime::Runtime,
    _backends: Vec<procs::Proc>,
}

fn bench(args: &Args) -> Result<()> {
    let started = Instant::now();
    let quick = args.quick;
    let secs = |v: Option<f64>, full: f64, short: f64| {
        Duration::from_secs_f64(v.unwrap_or(if quick { short } else { full }).max(0.0))
    };
    let topology = match args.topology {
        Some(Placement::Pods) => {
            topology::pods_available().context("--topology pods")?;
            Placement::Pods
        }
        Some(Placement::Loopback) => Placement::Loopback,
        None if topology::pods_available().is_ok() => Placement::Pods,
        None => Placement::Loopback,
    };
    let mut scenarios: Vec<Scenario> = Scenario::ALL
        .into_iter()
        .filter(|s| args.scenarios.is_empty() || args.scenarios.iter().any(|&x| s.selected_by(x)))
        // Only ever a floor.
        .filter(|s| *s != Scenario::DirectLoopback)
        .collect();
    // Floors come along with what is measured against them.
    for s in scenarios.clone() {
        if let Some(b) = s.baseline(topology) {
            if !scenarios.contains(&b) {
                scenarios.push(b);
            }
        }
    }
    scenarios.sort_by_key(|s| Scenario::ALL.iter().position(|x| x == s));
    let tcp = args.scenarios.is_empty() || args.scenarios.contains(&Selected::Tcp);
    let rates = if args.rates.is_empty() {
        if quick { vec![1000] } else { vec![1000, 5000] }
    } else {
        args.rates.clone()
    };
    if rates.contains(&0) {
        bail!("--rate must be at least 1 request/s");
    }
    let settings = report::Settings {
        quick,
        scenarios: scenarios.iter().map(|s| s.name().to_string()).collect(),
        tcp,
        rates: rates.clone(),
        saturation: !args.no_saturation,
        duration_s: secs(args.duration, 6.0, 2.0).as_secs_f64(),
        warmup_s: secs(args.warmup, 1.0, 0.5).as_secs_f64(),
        saturation_s: secs(args.duration.map(|d| d.min(4.0)), 4.0, 2.0).as_secs_f64(),
        tcp_duration_s: secs(args.duration, 3.0, 1.0).as_secs_f64(),
        repeats: args.repeats.unwrap_or(if quick { 1 } else { 3 }).max(1),
        connections: args.connections.max(1),
        mtls: !args.plaintext,
        topology,
        proxy: String::new(),
        large_endpoints: args.large_endpoints,
        large_routes: args.large_routes.max(1),
        large_warmup_s: args.large_warmup.max(0.0),
    };

    let (h, out, oha) = harness(args, settings, &scenarios)?;
    let h = &h;

    let mut loads: Vec<Rate> = h.settings.rates.iter().map(|&r| Rate::Fixed(r)).collect();
    if h.settings.saturation {
        loads.push(Rate::Max);
    }
    let mut runs = Vec::new();
    let mut tcp_runs = Vec::new();
    for repeat in 0..h.settings.repeats {
        for &rate in &loads {
            // Rotate the order each repeat, so that no scenario always
            // runs first (or right after the heaviest).
            let n = scenarios.len();
            for i in 0..n {
                let s = scenarios[(i + repeat) % n];
                let run = h
                    .measure(s, rate, repeat)
                    .with_context(|| format!("scenario {} at {}", s.name(), rate.label()))?;
                eprintln!("{}", run.summary());
                runs.push(run);
            }
        }
        if tcp {
            let n = TcpPath::ALL.len();
            for i in 0..n {
                let p = TcpPath::ALL[(i + repeat) % n];
                let run = h
                    .measure_tcp(p, repeat)
                    .with_context(|| format!("TCP path {}", p.name()))?;
                eprintln!("{}", run.summary());
                tcp_runs.push(run);
            }
        }
    }

    let machine = report::Machine::read(&oha);
    let report = report::Report::build(
        h.settings.clone(),
        machine,
        runs,
        tcp_runs,
        started.elapsed(),
    );
    std::fs::create_dir_all(&out)?;
    let json = out.join("results.json");
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)?;
    let md = report.markdown();
    std::fs::write(out.join("results.md"), &md)?;
    std::fs::write(out.join("latency.svg"), report.svg())?;
    println!("{md}");
    eprintln!(
        "wrote {}, results.md and latency.svg in {:.0}s",
        json.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Everything the runs of `scenarios` need, started: the output
/// directories, the tools (installed if missing), the proxy under test,
/// the backends. Returns the harness, where results go, and oha.
fn harness(
    args: &Args,
    settings: report::Settings,
    scenarios: &[Scenario],
) -> Result<(Harness, PathBuf, PathBuf)> {
    let tcp = settings.tcp;
    let exe = std::env::current_exe()?;
    let out = match &args.out {
        Some(o) => o.clone(),
        None => exe
            .parent()
            .and_then(Path::parent)
            .context("cannot place target/bench")?
            .join("bench"),
    };
    let dirs = Dirs {
        logs: out.join("logs"),
        work: out.join("work"),
    };
    for d in [&dirs.logs, &dirs.work] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }

    let mut need = Vec::new();
    if scenarios.contains(&Scenario::Haproxy) || tcp {
        need.push(("haproxy", "haproxy"));
    }
    if tcp {
        need.push(("iperf3", "iperf3"));
    }
    topology::ensure_packages(&need)?;
    let oha = find_or_install_oha()?;
    let proxy = match &args.proxy {
        Some(line) => {
            let mut words = line.split_whitespace().map(String::from);
            ProxyCmd {
                program: words.next().context("--proxy is empty")?.into(),
                args: words.collect(),
                env: Vec::new(),
            }
        }
        None => default_proxy(&exe)?,
    };
    let mut proxy = proxy;
    for kv in &args.proxy_env {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--proxy-env {kv}: expected NAME=VALUE"))?;
        proxy.env.push((k.to_string(), v.to_string()));
    }
    let mut settings = settings;
    settings.proxy = std::iter::once(proxy.program.display().to_string())
        .chain(proxy.args.iter().cloned())
        .chain(proxy.env.iter().map(|(k, v)| format!("{k}={v}")))
        .collect::<Vec<_>>()
        .join(" ");

    let mut backends = Vec::new();
    let http_backend = start_backend(&exe, backend::Kind::Http, &dirs, &mut backends)?;
    let grpc_backend = if scenarios.iter().any(|s| s.client() == Client::Grpc) {
        Some(start_backend(
            &exe,
            backend::Kind::Grpc,
            &dirs,
            &mut backends,
        )?)
    } else {
        None
    };
    let control = linnet_beside(&exe);
    if settings.topology == Placement::Pods && control.is_none() {
        bail!("the pods need `linnet init` and `linnet control`: build linnet");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    cleanup::on_signal_clean_up(&rt).context("cannot watch for signals")?;
    let h = Harness {
        proxy,
        dirs,
        load: Load {
            oha: oha.clone(),
            connections: settings.connections,
        },
        http_backend,
        grpc_backend,
        control,
        rt,
        _backends: backends,
        settings,
    };

    Ok((h, out, oha))
}

impl Harness {
    fn start(&self, s: Scenario) -> Result<Topology> {
        let http = self.http_backend;
        let grpc = || self.grpc_backend.context("no gRPC backend");
        let mtls = self.settings.mtls;
        let linnet = || {
            self.control
                .as_deref()
                .context("the mesh needs `linnet control`: build linnet")
        };
        if s.placement(self.settings.topology) == Placement::Pods {
            return match s {
                Scenario::Direct => Topology::direct_pods(&self.dirs),
                Scenario::Haproxy => Topology::haproxy_pods(mtls, &self.dirs),
                Scenario::Mesh | Scenario::MeshHttp1 => Topology::linnet_mesh_pods(
                    &self.proxy,
                    linnet()?,
                    s == Scenario::Mesh,
                    mtls,
                    &self.dirs,
                ),
                _ => bail!("{} has no pod layout", s.name()),
            };
        }
        match s {
            Scenario::Direct | Scenario::DirectLoopback | Scenario::Http2Direct => {
                Ok(Topology::direct(http))
            }
            Scenario::GrpcDirect => Ok(Topology::direct(grpc()?)),
            Scenario::Outbound => Topology::linnet(&self.proxy, 1, http, &self.dirs),
            Scenario::Mesh | Scenario::MeshHttp1 => Topology::linnet_mesh(
                &self.proxy,
                linnet()?,
                s == Scenario::Mesh,
                mtls,
                http,
                &self.dirs,
            ),
            Scenario::Http2 => self.mesh(MeshKind::Http, http),
            Scenario::MeshAuthz => {
                let control = self
                    .control
                    .as_deref()
                    .context("the policy mesh needs `linnet control`: build linnet")?;
                Topology::linnet_mtls(&self.proxy, control, MeshKind::Authorized, http, &self.dirs)
            }
            Scenario::Grpc => self.mesh(MeshKind::Http, grpc()?),
            Scenario::MeshBalanced | Scenario::MeshLarge => {
                let control = self
                    .control
                    .as_deref()
                    .context("the balanced mesh needs `linnet control`: build linnet")?;
                let shape = match s {
                    Scenario::MeshLarge => Shape {
                        servers: 3,
                        endpoints: self.settings.large_endpoints,
                        routes: self.settings.large_routes,
                    },
                    _ => Shape {
                        servers: 3,
                        endpoints: 3,
                        routes: 1,
                    },
                };
                let mtls = self.settings.mtls;
                Topology::linnet_balanced(&self.proxy, control, shape, http, mtls, &self.dirs)
            }
            Scenario::Haproxy => {
                Topology::haproxy(HaMode::Http, 2, http, self.settings.mtls, &self.dirs)
            }
        }
    }

    /// Two sidecars: over mTLS with identities from `linnet control`, or
    /// in plaintext with `--plaintext`.
    fn mesh(&self, kind: MeshKind, target: SocketAddr) -> Result<Topology> {
        match (&self.control, self.settings.mtls) {
            (Some(control), true) => {
                Topology::linnet_mtls(&self.proxy, control, kind, target, &self.dirs)
            }
            _ => Topology::linnet(&self.proxy, 2, target, &self.dirs),
        }
    }

    /// One run: fresh processes, warm-up, measured load.
    fn measure(&self, s: Scenario, rate: Rate, repeat: usize) -> Result<Run> {
        let mut topo = self.start(s)?;
        std::thread::sleep(Duration::from_millis(100));
        let idle = memory(&topo.proxies)?;
        let (warmup, warm) = self.warm_up(s, rate, &topo)?;
        let cpu_before = cpu(&topo.proxies)?;
        let duration = match rate {
            Rate::Fixed(_) => self.settings.duration_s,
            Rate::Max => self.settings.saturation_s,
        };
        let outcome = self.load.run(
            &self.rt,
            s.client(),
            topo.entry,
            rate,
            Duration::from_secs_f64(duration),
            topo.client_pod(),
        )?;
        let cpu_after = cpu(&topo.proxies)?;
        let end = memory(&topo.proxies)?;
        for p in &mut topo.proxies {
            p.check_running()?;
        }
        let path = topo.path_check()?;
        let balance = match (&topo.probe, warm) {
            (Some(probe), Some(warm)) => {
                let b = probe.balance(&warm, &probe.snapshot()?, warmup.as_secs_f64());
                if let Some(w) = b.warning() {
                    eprintln!("warning: {} at {}: {w}", s.name(), rate.label());
                }
                Some(b)
            }
            _ => None,
        };
        let mut proxies: Vec<ProxySample> = topo
            .proxies
            .iter()
            .enumerate()
            .map(|(i, p)| ProxySample {
                name: p.name.clone(),
                cpu_us_per_request: (cpu_after[i] - cpu_before[i]) as f64
                    / outcome.requests.max(1) as f64,
                rss_idle_kib: idle[i].rss_kib,
                rss_end_kib: end[i].rss_kib,
                rss_peak_kib: end[i].peak_kib,
            })
            .collect();
        if let Some(from) = topo.summed_from.filter(|&i| i + 1 < proxies.len()) {
            let summed = proxies.split_off(from);
            proxies.push(ProxySample {
                name: format!("inbound ×{}", summed.len()),
                cpu_us_per_request: summed.iter().map(|p| p.cpu_us_per_request).sum(),
                rss_idle_kib: summed.iter().map(|p| p.rss_idle_kib).sum(),
                rss_end_kib: summed.iter().map(|p| p.rss_end_kib).sum(),
                rss_peak_kib: summed.iter().map(|p| p.rss_peak_kib).sum(),
            });
        }
        Ok(Run {
            scenario: s.name(),
            baseline: s.baseline(self.settings.topology).map(Scenario::name),
            placement: s.placement(self.settings.topology),
            client: s.client(),
            load: rate.label(),
            rate: match rate {
                Rate::Fixed(r) => Some(r),
                Rate::Max => None,
            },
            repeat,
            success_rate: outcome.success_rate(),
            outcome,
            proxies,
            balance,
            path,
        })
    }

    /// Warm-up load before a run; returns how long it lasted and, for a
    /// balanced mesh, what its probe saw at the end.
    ///
    /// `mesh-large` goes on, two seconds at a time, while the endpoints
    /// its client sidecar has connections to keep growing (by more than
    /// 1% of them a step), for up to `--large-warmup` seconds in all: each
    /// endpoint's first request opens its connection, and P2C does not
    /// take the endpoints in turn.
    fn warm_up(
        &self,
        s: Scenario,
        rate: Rate,
        topo: &Topology,
    ) -> Result<(Duration, Option<topology::Snapshot>)> {
        let started = Instant::now();
        let run = |d: Duration| {
            self.load
                .run(&self.rt, s.client(), topo.entry, rate, d, topo.client_pod())
        };
        let first = Duration::from_secs_f64(self.settings.warmup_s);
        if !first.is_zero() {
            run(first)?;
        }
        let Some(probe) = &topo.probe else {
            return Ok((started.elapsed(), None));
        };
        let mut seen = probe.snapshot()?;
        if s == Scenario::MeshLarge {
            let cap = Duration::from_secs_f64(self.settings.large_warmup_s);
            let step = Duration::from_secs(2);
            while started.elapsed() + step <= cap {
                run(step)?;
                let next = probe.snapshot()?;
                let grew = next.connected().saturating_sub(seen.connected());
                seen = next;
                if seen.connected() > 0 && grew <= probe.endpoints / 100 {
                    break;
                }
            }
        }
        Ok((started.elapsed(), Some(seen)))
    }

    fn measure_tcp(&self, path: TcpPath, repeat: usize) -> Result<TcpRun> {
        let (mut server, addr) = topology::iperf3_server(&self.dirs)?;
        let mut topo = match path {
            TcpPath::Direct => Topology::direct(addr),
            TcpPath::Outbound => Topology::linnet(&self.proxy, 1, addr, &self.dirs)?,
            TcpPath::Mesh => self.mesh(MeshKind::Opaque, addr)?,
            TcpPath::HaproxyHop => Topology::haproxy(HaMode::Tcp, 1, addr, false, &self.dirs)?,
            TcpPath::Haproxy => {
                Topology::haproxy(HaMode::Tcp, 2, addr, self.settings.mtls, &self.dirs)?
            }
        };
        let idle = memory(&topo.proxies)?;
        let cpu_before = cpu(&topo.proxies)?;
        let duration = Duration::from_secs_f64(self.settings.tcp_duration_s);
        let gbit_s = topology::iperf3_client(topo.entry, duration, &self.dirs)?;
        let cpu_after = cpu(&topo.proxies)?;
        let end = memory(&topo.proxies)?;
        for p in &mut topo.proxies {
            p.check_running()?;
        }
        drop(topo);
        let _ = server.check_running();
        Ok(TcpRun {
            path: path.name(),
            describe: path.describe(),
            repeat,
            gbit_s,
            proxies: topo_samples(&idle, &end, &cpu_before, &cpu_after, duration, path),
        })
    }
}

fn topo_samples(
    idle: &[Memory],
    end: &[Memory],
    before: &[u64],
    after: &[u64],
    duration: Duration,
    path: TcpPath,
) -> Vec<report::TcpProxySample> {
    let names: &[&str] = match path {
        TcpPath::Direct => &[],
        TcpPath::Outbound => &["outbound"],
        TcpPath::Mesh => &["outbound", "inbound"],
        TcpPath::HaproxyHop => &["haproxy"],
        TcpPath::Haproxy => &["haproxy-out", "haproxy-in"],
    };
    names
        .iter()
        .enumerate()
        .map(|(i, name)| report::TcpProxySample {
            name: (*name).to_string(),
            cpu_percent: (after[i] - before[i]) as f64 / duration.as_micros() as f64 * 100.0,
            rss_idle_kib: idle[i].rss_kib,
            rss_end_kib: end[i].rss_kib,
            rss_peak_kib: end[i].peak_kib,
        })
        .collect()
}

fn memory(procs: &[procs::Proc]) -> Result<Vec<Memory>> {
    procs.iter().map(procs::Proc::memory).collect()
}

fn cpu(procs: &[procs::Proc]) -> Result<Vec<u64>> {
    procs.iter().map(procs::Proc::cpu_us).collect()
}

fn start_backend(
    exe: &Path,
    kind: backend::Kind,
    dirs: &Dirs,
    all: &mut Vec<procs::Proc>,
) -> Result<SocketAddr> {
    let name = match kind {
        backend::Kind::Http => "http",
        backend::Kind::Grpc => "grpc",
    };
    let mut cmd = Command::new(exe);
    cmd.args(["backend", name]);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .trim()
        .parse()
        .with_context(|| format!("the {name} backend did not print its address"))?;
    all.push(procs::Proc::adopt(
        &format!("{name}-backend"),
        child,
        &dirs.logs,
    ));
    Ok(addr)
}

/// The `linnet` binary beside this one, built first when running under
/// cargo (so a stale binary is never measured).
fn default_proxy(exe: &Path) -> Result<ProxyCmd> {
    let dir = exe.parent().context("no directory")?;
    let linnet = dir.join("linnet");
    if let Some(cargo) = std::env::var_os("CARGO") {
        let profile = match dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev",
            Some(p) => p,
        };
        eprintln!("building linnet ({profile} profile)");
        let status = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "-p",
                "linnet",
                "--bin",
                "linnet",
                "--profile",
                profile,
            ])
            .status()?;
        if !status.success() {
            bail!("cannot build linnet");
        }
    }
    if !linnet.is_file() {
        bail!(
            "no proxy at {}: build it (cargo build --release -p linnet) or pass --proxy",
            linnet.display()
        );
    }
    Ok(ProxyCmd {
        program: linnet,
        args: vec!["proxy".to_string()],
        env: Vec::new(),
    })
}

/// oha from the PATH or cargo's bin directory, installed with
/// `cargo install oha --locked` when missing.
fn find_or_install_oha() -> Result<PathBuf> {
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|h| h.join("bin").join("oha"));
    let find = || topology::on_path("oha").or_else(|| cargo_bin.clone().filter(|p| p.is_file()));
    if let Some(p) = find() {
        return Ok(p);
    }
    eprintln!("installing oha (cargo install oha --locked); this takes a few minutes, once");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["install", "oha", "--locked"])
        // oha's own rust-toolchain.toml names a toolchain that may not be
        // installed; the stable one builds it.
        .env("RUSTUP_TOOLCHAIN", "stable")
        .status()
        .context("cannot run cargo install")?;
    if !status.success() {
        bail!("cargo install oha failed");
    }
    find().context("oha installed but not found on the PATH or in cargo's bin directory")
}

/// The `linnet` binary beside this one, if built.
fn linnet_beside(exe: &Path) -> Option<PathBuf> {
    let p = exe.parent()?.join("linnet");
    p.is_file().then_some(p)
}

/// A server that answers one byte with one byte, then closes.
fn byte_server(rt: &tokio::runtime::Runtime) -> Result<SocketAddr> {
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    rt.spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut b = [0u8; 1];
                if s.read_exact(&mut b).await.is_ok() {
                    let _ = s.write_all(&b).await;
                }
            });
        }
    });
    Ok(addr)
}

/// Closed-loop new connections (connect, one byte each way, close)
/// through `entry` for `secs`; connections per second and failures.
fn connect_loop(
    rt: &tokio::runtime::Runtime,
    entry: SocketAddr,
    secs: f64,
    concurrency: usize,
) -> (f64, u64) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let ok = std::sync::Arc::new(AtomicU64::new(0));
    let failed = std::sync::Arc::new(AtomicU64::new(0));
    let duration = Duration::from_secs_f64(secs);
    let start = Instant::now();
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..concurrency {
            let (ok, failed) = (ok.clone(), failed.clone());
            tasks.spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                while start.elapsed() < duration {
                    let attempt = async {
                        let mut s = tokio::net::TcpStream::connect(entry).await?;
                        s.write_all(b"x").await?;
                        let mut b = [0u8; 1];
                        s.read_exact(&mut b).await?;
                        Ok::<_, std::io::Error>(())
                    };
                    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
                        Ok(Ok(())) => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    });
    let n = ok.load(Ordering::Relaxed);
    (
        n as f64 / start.elapsed().as_secs_f64(),
        failed.load(Ordering::Relaxed),
    )
}

fn handshakes(args: &Args, secs: f64, concurrency: usize) -> Result<()> {
    let exe = std::env::current_exe()?;
    let out = args.out.clone().unwrap_or_else(|| {
        exe.parent()
            .and_then(Path::parent)
            .map_or_else(|| PathBuf::from("bench"), |p| p.join("bench"))
    });
    let dirs = Dirs {
        logs: out.join("logs"),
        work: out.join("work"),
    };
    for d in [&dirs.logs, &dirs.work] {
        std::fs::create_dir_all(d)?;
    }
    topology::ensure_packages(&[("haproxy", "haproxy")])?;
    let proxy = default_proxy(&exe)?;
    let control = linnet_beside(&exe).context("no linnet binary beside this one")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let sink = byte_server(&rt)?;
    println!(
        "| pair | new connections/s | failed | CPU µs per connection (client side / server side) |"
    );
    println!("|---|---:|---:|---|");
    for name in ["linnet", "haproxy"] {
        let topo = match name {
            "linnet" => Topology::linnet_mtls(&proxy, &control, MeshKind::Opaque, sink, &dirs)?,
            _ => Topology::haproxy(HaMode::Tcp, 2, sink, true, &dirs)?,
        };
        // Warm up, then measure.
        connect_loop(&rt, topo.entry, 0.5, concurrency);
        let before = cpu(&topo.proxies)?;
        let start = Instant::now();
        let (rate, failed) = connect_loop(&rt, topo.entry, secs, concurrency);
        let elapsed = start.elapsed().as_secs_f64();
        let after = cpu(&topo.proxies)?;
        let conns = (rate * elapsed).max(1.0);
        let per: Vec<String> = before
            .iter()
            .zip(&after)
            .map(|(b, a)| format!("{:.0}", (a - b) as f64 / conns))
            .collect();
        println!("| {name} | {rate:.0} | {failed} | {} |", per.join(" / "));
    }
    Ok(())
}
