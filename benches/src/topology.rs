//! The processes between the load generator and the backend: proxies
//! under test (any command line that takes Linkerd's environment
//! variables), HAProxy, and iperf3.

use crate::procs::{self, Proc};
use anyhow::{Context, Result};
use std::{net::SocketAddr, path::PathBuf, process::Command, time::Duration};

const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The proxy under test: a command line and extra environment.
#[derive(Clone, Debug)]
pub(crate) struct ProxyCmd {
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
}

/// Where scratch files and logs go.
#[derive(Clone, Debug)]
pub(crate) struct Dirs {
    pub(crate) logs: PathBuf,
    pub(crate) work: PathBuf,
}

/// Started processes and the address the load generator dials.
#[derive(Debug)]
pub(crate) struct Topology {
    pub(crate) entry: SocketAddr,
    /// Proxies, client side first.
    pub(crate) proxies: Vec<Proc>,
}

/// HAProxy's mode.
#[derive(Clone, Copy, Debug)]
pub(crate) enum HaMode {
    Http,
    Tcp,
}

impl Topology {
    /// No proxy at all.
    pub(crate) fn direct(target: SocketAddr) -> Self {
        Self {
            entry: target,
            proxies: Vec::new(),
        }
    }

    /// One sidecar's outbound side in front of `target` (`hops == 1`), or
    /// a client sidecar's outbound side talking to a server sidecar's
    /// inbound side, as between two meshed pods (`hops == 2`). Without
    /// iptables, each listener's original destination is fixed by
    /// `*_ORIG_DST_ADDR`.
    pub(crate) fn linnet(
        cmd: &ProxyCmd,
        hops: usize,
        target: SocketAddr,
        dirs: &Dirs,
    ) -> Result<Self> {
        let mut proxies = Vec::new();
        let mut entry = target;
        if hops >= 2 {
            let (p, inbound) = start_proxy(cmd, "inbound", Side::Inbound, entry, dirs)?;
            proxies.push(p);
            entry = inbound;
        }
        let (p, outbound) = start_proxy(cmd, "outbound", Side::Outbound, entry, dirs)?;
        proxies.insert(0, p);
        Ok(Self {
            entry: outbound,
            proxies,
        })
    }

    /// The same shapes with HAProxy, one thread per process.
    pub(crate) fn haproxy(
        mode: HaMode,
        hops: usize,
        target: SocketAddr,
        dirs: &Dirs,
    ) -> Result<Self> {
        let mut proxies = Vec::new();
        let mut entry = target;
        let names: &[&str] = if hops >= 2 {
            &["haproxy-in", "haproxy-out"]
        } else {
            &["haproxy"]
        };
        for name in names {
            let listen = procs::free_addr()?;
            let cfg = dirs.work.join(format!("{name}.cfg"));
            std::fs::write(&cfg, haproxy_config(mode, listen, entry))?;
            let mut p = vec![Proc::spawn(
                name,
                Command::new("haproxy").arg("-db").arg("-f").arg(&cfg),
                &dirs.logs,
            )?];
            procs::wait_until(name, &mut p, START_TIMEOUT, || {
                procs::port_taken(listen.port())
            })?;
            proxies.insert(0, p.remove(0));
            entry = listen;
        }
        Ok(Self { entry, proxies })
    }
}

#[derive(Clone, Copy, Debug)]
enum Side {
    Outbound,
    Inbound,
}

/// Starts one proxy whose `side` listener forwards to `target`; returns it
/// and that listener's address once its admin server reports ready.
fn start_proxy(
    cmd: &ProxyCmd,
    name: &str,
    side: Side,
    target: SocketAddr,
    dirs: &Dirs,
) -> Result<(Proc, SocketAddr)> {
    let (outbound, inbound, admin) = (
        procs::free_addr()?,
        procs::free_addr()?,
        procs::free_addr()?,
    );
    let mut c = Command::new(&cmd.program);
    c.args(&cmd.args)
        // Linkerd's names, which Linnet reads too, so that other proxies
        // speaking them can be measured in the same topologies.
        .env("LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR", outbound.to_string())
        .env("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", inbound.to_string())
        .env("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", admin.to_string())
        .env("LINKERD2_PROXY_CORES", "1")
        .env("LINKERD2_PROXY_LOG", "warn");
    let (orig_dst_var, listen) = match side {
        Side::Outbound => ("LINKERD2_PROXY_OUTBOUND_ORIG_DST_ADDR", outbound),
        Side::Inbound => ("LINKERD2_PROXY_INBOUND_ORIG_DST_ADDR", inbound),
    };
    c.env(orig_dst_var, target.to_string());
    for (k, v) in &cmd.env {
        c.env(k, v);
    }
    let mut p = vec![Proc::spawn(name, &mut c, &dirs.logs)?];
    procs::wait_until(&format!("the {name} proxy"), &mut p, START_TIMEOUT, || {
        procs::admin_ready(admin)
    })?;
    Ok((p.remove(0), listen))
}

fn haproxy_config(mode: HaMode, listen: SocketAddr, target: SocketAddr) -> String {
    let (mode, reuse) = match mode {
        HaMode::Http => ("http", "  http-reuse always\n"),
        HaMode::Tcp => ("tcp", ""),
    };
    format!(
        "global\n  nbthread 1\n  maxconn 4096\n\
         defaults\n  mode {mode}\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  timeout http-keep-alive 60s\n\
         frontend front\n  bind {listen}\n  default_backend back\n\
         backend back\n{reuse}  server s1 {target}\n"
    )
}

/// An iperf3 server for one test; it exits after serving it.
pub(crate) fn iperf3_server(dirs: &Dirs) -> Result<(Proc, SocketAddr)> {
    let addr = procs::free_addr()?;
    let mut p = vec![Proc::spawn(
        "iperf3-server",
        Command::new("iperf3")
            .args(["-s", "-1", "-B", "127.0.0.1", "-p"])
            .arg(addr.port().to_string()),
        &dirs.logs,
    )?];
    procs::wait_until("iperf3 server", &mut p, START_TIMEOUT, || {
        procs::port_taken(addr.port())
    })?;
    Ok((p.remove(0), addr))
}

/// Streams to `target` with one iperf3 connection for `duration`; returns
/// the received Gbit/s.
pub(crate) fn iperf3_client(target: SocketAddr, duration: Duration, dirs: &Dirs) -> Result<f64> {
    let out = Command::new("iperf3")
        .args(["-J", "-c"])
        .arg(target.ip().to_string())
        .arg("-p")
        .arg(target.port().to_string())
        .arg("-t")
        .arg(format!("{:.1}", duration.as_secs_f64()))
        .output()
        .context("cannot run iperf3")?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("iperf3 printed no JSON ({})", out.status))?;
    if let Some(e) = json["error"].as_str() {
        anyhow::bail!("iperf3 failed: {e} (see {})", dirs.logs.display());
    }
    let bps = json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3's report has no end.sum_received.bits_per_second")?;
    Ok(bps / 1e9)
}

/// Whether `program` is on the PATH.
pub(crate) fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Installs Debian packages when running as root; otherwise says what to
/// install.
pub(crate) fn ensure_packages(programs: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = programs
        .iter()
        .filter(|(program, _)| on_path(program).is_none())
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing {}", missing.join(" "));
    let status = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", "-q"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        _ => anyhow::bail!(
            "{} missing and could not be installed: run `apt-get install {}` as root",
            missing.join(", "),
            missing.join(" ")
        ),
    }
}
