//! `linnet-bench`: measures the proxy on loopback.
//!
//! For now one scenario, `tcp`: a single bulk TCP stream (1 GiB by default)
//! sent directly to a sink, then through one proxy hop, reporting Gbit/s
//! and the proxy process's RSS (idle, after the run, and peak) and CPU time.
//! The proxy under test is a separate process (this binary re-executed as
//! `linnet-bench fixed-proxy`), which runs the same `linnet_app::run` as
//! `linnet proxy`, with the original destination fixed to the sink instead
//! of read from iptables, so no root is needed.
//!
//! ```text
//! cargo run --release -p linnet-bench -- tcp [--bytes N]
//! cargo run --release -p linnet-bench -- http-backend [ADDR]
//! cargo run --release -p linnet-bench -- fixed-proxy TARGET
//! ```

use anyhow::{Context, Result, bail};
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("tcp") => tcp(&args[1..]),
        Some("fixed-proxy") => fixed_proxy(&args[1..]),
        Some("http-backend") => http_backend(&args[1..]),
        _ => bail!("usage: linnet-bench tcp [--bytes N] | fixed-proxy TARGET | http-backend ADDR"),
    }
}

/// Runs the proxy with every connection forwarded to `TARGET`; prints the
/// outbound listener's address on stdout once ready.
fn fixed_proxy(args: &[String]) -> Result<()> {
    let target: SocketAddr = args
        .first()
        .context("fixed-proxy needs a TARGET")?
        .parse()?;
    let env = [
        ("LINNET_OUTBOUND_LISTEN_ADDR", "127.0.0.1:0"),
        ("LINNET_INBOUND_LISTEN_ADDR", "127.0.0.1:0"),
        ("LINNET_ADMIN_LISTEN_ADDR", "127.0.0.1:0"),
        ("LINNET_CORES", "1"),
    ];
    let config = linnet_config::Config::from_env(env.as_slice())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listeners = linnet_app::Listeners::bind(&config)?;
        println!("{}", listeners.outbound.local_addr()?);
        let orig_dst = linnet_app::OrigDst::Fixed(target);
        linnet_app::run(
            config,
            listeners,
            orig_dst,
            Default::default(),
            std::future::pending(),
        )
        .await;
        Ok(())
    })
}

/// An HTTP/1.1 and HTTP/2 keep-alive backend answering every request with
/// 1 KiB, on one thread; prints its address once listening.
fn http_backend(args: &[String]) -> Result<()> {
    let addr: SocketAddr = args.first().map_or("127.0.0.1:0", String::as_str).parse()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        println!("{}", listener.local_addr()?);
        let body = bytes::Bytes::from(vec![b'x'; 1024]);
        loop {
            let (stream, _) = listener.accept().await?;
            let body = body.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let body = body.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(body),
                        ))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
            });
        }
    })
}

fn tcp(args: &[String]) -> Result<()> {
    let bytes: u64 = match args {
        [flag, n] if flag == "--bytes" => n.parse()?,
        [] => 1 << 30,
        _ => bail!("usage: linnet-bench tcp [--bytes N]"),
    };
    let sink = start_sink()?;
    let direct = stream(sink, bytes)?;

    let mut proxy = ProxyProcess::start(sink)?;
    std::thread::sleep(Duration::from_millis(200));
    let idle = proxy.status()?;
    let cpu_before = proxy.cpu_seconds()?;
    let hop = stream(proxy.addr, bytes)?;
    let cpu = proxy.cpu_seconds()? - cpu_before;
    let after = proxy.status()?;

    // Loaded: 64 connections at once, 16 MiB each, sampled mid-run.
    let conns = 64;
    let each = 16 << 20;
    let start = Instant::now();
    let senders: Vec<_> = (0..conns)
        .map(|_| {
            let addr = proxy.addr;
            std::thread::spawn(move || stream(addr, each))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let loaded = proxy.status()?;
    for s in senders {
        s.join().map_err(|_| anyhow::anyhow!("sender panicked"))??;
    }
    let concurrent = start.elapsed();
    let after_load = proxy.status()?;

    let gbit = |d: Duration| bytes as f64 * 8.0 / d.as_secs_f64() / 1e9;
    println!("| path | bytes | seconds | Gbit/s |");
    println!("|---|---:|---:|---:|");
    println!(
        "| direct | {bytes} | {:.3} | {:.2} |",
        direct.as_secs_f64(),
        gbit(direct)
    );
    println!(
        "| one proxy hop | {bytes} | {:.3} | {:.2} |",
        hop.as_secs_f64(),
        gbit(hop)
    );
    println!();
    println!("proxy / direct: {:.0}%", gbit(hop) / gbit(direct) * 100.0);
    println!("proxy CPU during the stream: {cpu:.3} s");
    println!(
        "proxy RSS: idle {} KiB, after the stream {} KiB, peak (VmHWM) {} KiB",
        idle.rss_kib, after.rss_kib, after.hwm_kib
    );
    println!(
        "{conns} concurrent streams of {} MiB through the proxy: {:.2} Gbit/s in all; \
         proxy RSS mid-run {} KiB, after {} KiB, peak (VmHWM) {} KiB",
        each >> 20,
        (conns * each) as f64 * 8.0 / concurrent.as_secs_f64() / 1e9,
        loaded.rss_kib,
        after_load.rss_kib,
        after_load.hwm_kib
    );
    proxy.child.kill().ok();
    Ok(())
}

/// A server that reads and discards everything, then closes.
fn start_sink() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 256 * 1024];
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    Ok(addr)
}

/// Sends `bytes` to `addr` and waits for the far end to close; returns
/// how long that took.
fn stream(addr: SocketAddr, bytes: u64) -> Result<Duration> {
    let mut s = TcpStream::connect(addr)?;
    let buf = vec![0x5au8; 256 * 1024];
    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        s.write_all(&buf[..n])?;
        left -= n as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    // The sink closes after reading everything: EOF means all arrived.
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)?;
    Ok(start.elapsed())
}

struct ProxyProcess {
    child: Child,
    addr: SocketAddr,
}

struct Memory {
    rss_kib: u64,
    hwm_kib: u64,
}

impl ProxyProcess {
    fn start(target: SocketAddr) -> Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["fixed-proxy", &target.to_string()])
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let addr = line
            .trim()
            .parse()
            .context("proxy did not print its address")?;
        Ok(Self { child, addr })
    }

    fn status(&self) -> Result<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        Ok(Memory {
            rss_kib: field("VmRSS:"),
            hwm_kib: field("VmHWM:"),
        })
    }

    fn cpu_seconds(&self) -> Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        let rest = &stat[stat.rfind(')').context("bad stat")? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15; `rest` starts at field 3.
        // /proc reports them in USER_HZ, which is 100 on Linux.
        let ticks = |i: usize| -> Result<u64> { Ok(f.get(i).context("short stat")?.parse()?) };
        Ok((ticks(11)? + ticks(12)?) as f64 / 100.0)
    }
}
