//! The processes a benchmark starts: spawning with logs to files, reading
//! their CPU time and memory from `/proc`, waiting for them to listen, and
//! killing them when dropped.

use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::{
    fs::File,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A process started by the harness; killed when dropped.
#[derive(Debug)]
pub(crate) struct Proc {
    /// Its role in the topology: `outbound`, `inbound`, `haproxy-out`...
    pub(crate) name: String,
    child: Child,
    log: std::path::PathBuf,
}

/// A process's memory, in KiB.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub(crate) struct Memory {
    /// Resident set size now (`VmRSS`).
    pub(crate) rss_kib: u64,
    /// Peak resident set size (`VmHWM`).
    pub(crate) peak_kib: u64,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr appended to `LOG_DIR/NAME.log`.
    pub(crate) fn spawn(name: &str, cmd: &mut Command, log_dir: &Path) -> Result<Self> {
        let log = log_dir.join(format!("{name}.log"));
        let out = File::options().create(true).append(true).open(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {name} ({:?})", cmd.get_program()))?;
        crate::cleanup::add_pid(child.id());
        Ok(Self {
            name: name.to_string(),
            child,
            log,
        })
    }

    /// Takes charge of a process started elsewhere (its output already
    /// handled), so that it is killed when dropped.
    pub(crate) fn adopt(name: &str, child: Child, log_dir: &Path) -> Self {
        crate::cleanup::add_pid(child.id());
        Self {
            name: name.to_string(),
            child,
            log: log_dir.join(format!("{name}.log")),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has exited, pointing at its log.
    pub(crate) fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let mut tail = String::new();
            if let Ok(mut f) = File::open(&self.log) {
                let _ = f.read_to_string(&mut tail);
            }
            let tail: String = tail.lines().rev().take(10).collect::<Vec<_>>().join("\n");
            bail!(
                "{} exited ({status}); its log, {}, ends (last line first):\n{tail}",
                self.name,
                self.log.display()
            );
        }
        Ok(())
    }

    /// User plus system CPU time used so far by all of its threads, in
    /// microseconds (`utime + stime` from `/proc/PID/stat`).
    pub(crate) fn cpu_us(&self) -> Result<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        cpu_us_from_stat(&stat, clock_ticks_per_second())
    }

    /// Current and peak RSS.
    pub(crate) fn memory(&self) -> Result<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        Ok(memory_from_status(&status))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        // Off the list before it is reaped: its id may then be reused.
        crate::cleanup::remove_pid(self.child.id());
        let _ = self.child.wait();
    }
}

fn clock_ticks_per_second() -> u64 {
    rustix::param::clock_ticks_per_second()
}

/// `utime + stime` in microseconds from the text of `/proc/PID/stat`.
fn cpu_us_from_stat(stat: &str, ticks_per_second: u64) -> Result<u64> {
    // The command name (field 2) is in parentheses and may hold spaces:
    // count fields from the last ')'.
    let rest = &stat[stat.rfind(')').context("malformed /proc/PID/stat")? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let field = |i: usize| -> Result<u64> {
        Ok(fields.get(i - 3).context("short /proc/PID/stat")?.parse()?)
    };
    let ticks = field(14)? + field(15)?;
    Ok(ticks * 1_000_000 / ticks_per_second.max(1))
}

fn memory_from_status(status: &str) -> Memory {
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Memory {
        rss_kib: field("VmRSS:"),
        peak_kib: field("VmHWM:"),
    }
}

/// A loopback port free at the time of asking, chosen below the kernel's
/// ephemeral range: a port from that range can be taken by an outgoing
/// connection (the load generator opens many) before the process it was
/// meant for binds it.
pub(crate) fn free_port() -> Result<u16> {
    use std::sync::atomic::{AtomicU16, Ordering};
    // Walk 20000..32000 from a per-process offset, so that concurrent
    // harnesses are unlikely to collide either.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = (std::process::id() % 12_000) as u16;
    for _ in 0..12_000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (start.wrapping_add(n) % 12_000);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A loopback address with a free port.
pub(crate) fn free_addr() -> Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
}

/// Whether something listens on `port` of 127.0.0.1, told by failing to
/// bind it, so that the listener never sees a probe connection (iperf3
/// and HAProxy would log or count one).
pub(crate) fn port_taken(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_err()
}

/// Whether `GET /ready` on a proxy's admin server answers 200.
pub(crate) fn admin_ready(admin: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&admin, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"GET /ready HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

/// Polls `ready` every 10ms until it holds, checking that `procs` are
/// still running; fails after `timeout`.
pub(crate) fn wait_until(
    what: &str,
    procs: &mut [Proc],
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return Ok(());
        }
        for p in procs.iter_mut() {
            p.check_running()?;
        }
        if Instant::now() > deadline {
            bail!("{what} not ready after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_time_past_a_command_with_spaces_and_parens() {
        // Fields 14 and 15 (utime, stime) are 250 and 50 ticks.
        let stat =
            "1234 (a (b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 5 1000 200";
        assert_eq!(cpu_us_from_stat(stat, 100).unwrap(), 3_000_000);
        assert!(cpu_us_from_stat("1234 (x) S 1", 100).is_err());
    }

    #[test]
    fn reads_memory() {
        let status = "Name:\tlinnet\nVmHWM:\t    9000 kB\nVmRSS:\t    4200 kB\n";
        let m = memory_from_status(status);
        assert_eq!((m.rss_kib, m.peak_kib), (4200, 9000));
    }
}
