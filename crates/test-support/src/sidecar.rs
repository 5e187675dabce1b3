//! `linnet proxy` as its own process, for what only a process shows: its
//! memory (`VmRSS`), its file descriptors, its resource limits and its
//! signal handling.
//!
//! The binary is the workspace's `target/<profile>/linnet`, beside the
//! test binary; only the `linnet` package's own tests get its path from
//! Cargo, so the other packages' tests find it there. `scripts/test`
//! builds it (`cargo nextest run --workspace`); running one test target
//! alone, build it first (`cargo build -p linnet`). A binary older than
//! the proxy's sources is refused rather than tested.

use crate::process::Process;
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    time::{Duration, SystemTime},
};

/// A running `linnet proxy`; killed on drop.
#[derive(Debug)]
pub struct Sidecar {
    /// The outbound listener.
    pub outbound: SocketAddr,
    /// The inbound listener.
    pub inbound: SocketAddr,
    /// The admin server.
    pub admin: SocketAddr,
    process: Process,
}

impl Sidecar {
    /// Starts `linnet proxy` on `127.0.0.1:0` with `env` (`LINNET_*`
    /// pairs, and nothing else of this process's environment); returns
    /// once it is ready.
    pub async fn start(name: &str, env: &[(&str, &str)]) -> Self {
        Self::start_limited(name, env, None).await
    }

    /// Like [`Sidecar::start`], with `RLIMIT_NOFILE` set to `nofile`
    /// (soft and hard) by `prlimit` from util-linux; raising it beyond
    /// this process's hard limit needs root.
    pub async fn start_limited(name: &str, env: &[(&str, &str)], nofile: Option<u64>) -> Self {
        let s = Self::spawn(name, env, nofile).await;
        let admin = s.admin;
        crate::eventually("the proxy is ready", Duration::from_secs(10), || async {
            let (status, _) = crate::metrics::try_http(admin, "GET", "/ready", "")
                .await
                .ok()?;
            (status == 200).then_some(())
        })
        .await;
        s
    }

    /// Starts `linnet proxy` and returns once it listens, ready or not.
    pub async fn spawn(name: &str, env: &[(&str, &str)], nofile: Option<u64>) -> Self {
        let bin = binary();
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        cmd.arg("proxy").env_clear();
        // The caller's settings win: the first setting of a name counts.
        let mut seen = std::collections::HashSet::new();
        for (k, v) in env.iter().chain(&[
            ("LINNET_OUTBOUND_LISTEN_ADDR", "127.0.0.1:0"),
            ("LINNET_INBOUND_LISTEN_ADDR", "127.0.0.1:0"),
            ("LINNET_ADMIN_LISTEN_ADDR", "127.0.0.1:0"),
            ("LINNET_LOG_FORMAT", "json"),
        ]) {
            if seen.insert(*k) {
                cmd.env(k, v);
            }
        }
        let process = Process::spawn(&format!("sidecar-{name}"), cmd);
        // The proxy logs the addresses it bound.
        let line = crate::eventually("the proxy listens", Duration::from_secs(10), || async {
            process
                .log()
                .lines()
                .find(|l| l.contains(r#""message":"listening""#))
                .map(str::to_string)
        })
        .await;
        let field = |name: &str| -> SocketAddr {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            v[name]
                .as_str()
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no {name} address in {line}"))
        };
        Self {
            outbound: field("outbound"),
            inbound: field("inbound"),
            admin: field("admin"),
            process,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Its resident memory (`VmRSS`), in bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS in /proc/PID/status")
            * 1024
    }

    /// How many file descriptors it has open.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        self.process.sigterm();
    }

    /// Waits up to `timeout` for the process to exit, without blocking
    /// the runtime.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.process.try_wait() {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Scrapes its `/metrics`.
    pub async fn metrics(&self) -> crate::metrics::Scrape {
        crate::metrics::scrape(self.admin).await
    }
}

/// The `linnet` binary of this build (see the module docs); panics when it
/// is missing or older than the sources it is built from.
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // <target>/<profile>/deps/<test binary>
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("linnet"))
        .expect("the test binary sits in <target>/<profile>/deps");
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} is missing: build it first (cargo build -p linnet)",
                bin.display()
            )
        });
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    if let Some((newest, when)) = newest_source(&root) {
        assert!(
            when <= built,
            "{} is older than {}: rebuild it (cargo build -p linnet)",
            bin.display(),
            newest.display()
        );
    }
    bin
}

/// The most recently modified source the binary is built from: the Rust
/// files of `proxy/` and `crates/` (but the test fixtures, and the unit
/// tests: `tests.rs` and `tests/` directories, which a build of the binary
/// does not read). Manifests and the lock file are left out: a change to
/// them (a dev-dependency, another package's dependency) need not relink
/// the binary, and would make it look stale forever.
fn newest_source(root: &Path) -> Option<(PathBuf, SystemTime)> {
    fn walk(dir: &Path, newest: &mut Option<(PathBuf, SystemTime)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(meta) = e.metadata() else { continue };
            let unit_tests = path
                .file_name()
                .is_some_and(|n| n == "tests" || n == "tests.rs");
            if unit_tests {
                continue;
            }
            if meta.is_dir() {
                walk(&path, newest);
            } else if path.extension().is_some_and(|x| x == "rs") {
                consider(path, &meta, newest);
            }
        }
    }
    fn consider(
        path: PathBuf,
        meta: &std::fs::Metadata,
        newest: &mut Option<(PathBuf, SystemTime)>,
    ) {
        if let Ok(t) = meta.modified() {
            if newest.as_ref().is_none_or(|(_, n)| t > *n) {
                *newest = Some((path, t));
            }
        }
    }
    let mut newest = None;
    let mut packages = vec![root.join("proxy")];
    if let Ok(crates) = std::fs::read_dir(root.join("crates")) {
        packages.extend(
            crates
                .flatten()
                .map(|e| e.path())
                .filter(|p| !p.ends_with("test-support")),
        );
    }
    for p in packages {
        walk(&p.join("src"), &mut newest);
    }
    newest
}

/// Raises this process's `RLIMIT_NOFILE` (soft and hard) to at least `n`;
/// false when it may not (beyond the hard limit, without root).
pub fn raise_nofile(n: u64) -> bool {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    if now.current.is_none_or(|c| c >= n) {
        return true;
    }
    let maximum = match now.maximum {
        Some(m) if m < n => Some(n),
        m => m,
    };
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(n),
            maximum,
        },
    )
    .is_ok()
}

/// This process's `RLIMIT_NOFILE`, soft and hard (`None`: unlimited).
pub fn nofile() -> (Option<u64>, Option<u64>) {
    let l = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    (l.current, l.maximum)
}
