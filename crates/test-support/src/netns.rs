//! Network namespaces for interception tests (root only).
//!
//! A [`Netns`] is created with a unique name and deleted when dropped, even
//! when the test fails. [`Netns::pair`] joins two namespaces with a veth
//! pair so they can reach each other by IP, like two pods.

use std::process::{Command, Output};

/// A network namespace, removed on drop.
#[derive(Debug)]
pub struct Netns {
    /// Its name (for `ip netns exec`).
    pub name: String,
}

impl Netns {
    /// Creates a namespace named `<prefix>-<pid>-<n>` with loopback up.
    ///
    /// Namespaces left behind by test processes that were killed before
    /// their `Drop` ran (a timed-out test) are removed first.
    pub fn new(prefix: &str) -> Self {
        remove_stale();
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        run("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Two namespaces joined by a veth pair, `a` at `10.77.<id>.1/24` and
    /// `b` at `10.77.<id>.2/24`; returns them with their IPs.
    pub fn pair(prefix: &str, id: u8) -> ((Self, String), (Self, String)) {
        let a = Self::new(&format!("{prefix}a"));
        let b = Self::new(&format!("{prefix}b"));
        let (va, vb) = (
            format!("lva{}", std::process::id() % 100_000),
            format!("lvb{}", std::process::id() % 100_000),
        );
        run(
            "ip",
            &[
                "link", "add", &va, "netns", &a.name, "type", "veth", "peer", "name", &vb, "netns",
                &b.name,
            ],
        );
        let (ipa, ipb) = (format!("10.77.{id}.1"), format!("10.77.{id}.2"));
        a.exec(&["ip", "addr", "add", &format!("{ipa}/24"), "dev", &va]);
        b.exec(&["ip", "addr", "add", &format!("{ipb}/24"), "dev", &vb]);
        a.exec(&["ip", "link", "set", &va, "up"]);
        b.exec(&["ip", "link", "set", &vb, "up"]);
        ((a, ipa), (b, ipb))
    }

    /// Runs a command in the namespace; panics if it fails.
    pub fn exec(&self, argv: &[&str]) -> Output {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(argv);
        run("ip", &full)
    }

    /// A `Command` that runs `program` in the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Netns {
    /// Runs `f` on a thread inside the namespace: sockets it creates belong
    /// to the namespace (and stay there when handed back).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter();
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// Runs a future to completion on a runtime inside the namespace.
    pub fn block_on<F: std::future::Future + Send>(&self, fut: F) -> F::Output
    where
        F::Output: Send,
    {
        self.run(|| runtime().block_on(fut))
    }

    /// Runs a future on its own thread and runtime inside the namespace.
    pub fn spawn<F>(&self, fut: F) -> std::thread::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let path = self.path();
        std::thread::spawn(move || {
            enter(&path);
            runtime().block_on(fut)
        })
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    fn enter(&self) {
        enter(&self.path());
    }
}

fn enter(path: &str) {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    rustix::thread::move_into_link_name_space(
        std::os::fd::AsFd::as_fd(&f),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .unwrap_or_else(|e| panic!("setns {path}: {e}"));
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace also removes its end of the veth pair.
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
    }
}

/// Deletes `lnt<...>-<pid>-<n>` namespaces whose process is gone.
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        // Only ours: every fixture prefix starts with "lnt".
        if !name.starts_with("lnt") {
            continue;
        }
        let mut parts = name.rsplitn(3, '-');
        let (Some(_n), Some(pid), Some(_prefix)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "delete", name]).output();
        }
    }
}

fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `linnet init` (the binary at `bin`) with `args` inside `ns`; panics
/// with its message if it fails.
pub fn pod_init(ns: &Netns, bin: &std::path::Path, args: &[&str]) {
    let out = ns
        .command(&bin.display().to_string())
        .arg("init")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "linnet init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The uid `linnet init` exempts from redirection: the proxy's.
pub const PROXY_UID: &str = "2102";

/// `program` inside `ns` as [`PROXY_UID`], with an empty environment:
/// how a pod's proxy runs, for callers that add its arguments and
/// environment and watch the process themselves (the benchmark harness).
/// The process id of the child is the program's (`ip netns exec` and
/// `setpriv` both exec).
pub fn as_proxy_uid(ns: &Netns, program: &std::path::Path) -> Command {
    let mut cmd = ns.command("setpriv");
    cmd.args([
        &format!("--reuid={PROXY_UID}"),
        &format!("--regid={PROXY_UID}"),
        "--clear-groups",
        "--",
    ])
    .arg(program)
    .env_clear();
    cmd
}

/// `linnet proxy` (the binary at `bin`, executable by [`PROXY_UID`])
/// inside `ns`, as the proxy's uid, with `env` and a 30s grace period;
/// with `ready`, returns once its `/ready` (admin on 127.0.0.1:4191)
/// answers 200, else once its admin server answers at all.
pub fn pod_proxy(
    ns: &Netns,
    bin: &std::path::Path,
    name: &str,
    env: &[(&str, &str)],
    ready: bool,
) -> crate::process::Process {
    let mut cmd = as_proxy_uid(ns, bin);
    cmd.arg("proxy")
        .env("LINNET_SHUTDOWN_GRACE_PERIOD", "30s")
        .env("LINNET_LOG", "warn,linnet=debug");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let p = crate::process::Process::spawn(name, cmd);
    for _ in 0..500 {
        let status = ns.block_on(async {
            crate::metrics::try_http("127.0.0.1:4191".parse().unwrap(), "GET", "/ready", "").await
        });
        match status {
            Ok((200, _)) => return p,
            Ok(_) if !ready => return p,
            _ => {}
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("{name} never became ready:\n{}", p.log());
}

/// `linnet control` (the binary at `bin`) inside `ns` on
/// `127.0.0.1:8086` (admin `127.0.0.1:9990`), serving `dir/mesh.yaml`,
/// plus `args`; returns once its `/ready` answers 200.
pub fn pod_control(
    ns: &Netns,
    bin: &std::path::Path,
    dir: &std::path::Path,
    name: &str,
    args: &[&str],
) -> crate::process::Process {
    let mut cmd = ns.command(&bin.display().to_string());
    cmd.args(["control", "--config"])
        .arg(dir.join("mesh.yaml"))
        .args([
            "--listen",
            "127.0.0.1:8086",
            "--admin-listen",
            "127.0.0.1:9990",
        ])
        .args(args);
    let p = crate::process::Process::spawn(name, cmd);
    for _ in 0..500 {
        let ready = ns.block_on(async {
            crate::metrics::try_http("127.0.0.1:9990".parse().unwrap(), "GET", "/ready", "").await
        });
        if ready.is_ok_and(|(s, _)| s == 200) {
            return p;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("{name} never became ready:\n{}", p.log());
}

/// A pod's applications, inside `ns` on all its addresses: an HTTP server
/// on `http_port` and a checked-exchange server on `opaque_port`, run on
/// a thread of their own for the rest of the test. Returns the HTTP
/// server (what it saw) and the exchange server's counts.
pub fn pod_apps(
    ns: &Netns,
    http_port: u16,
    opaque_port: u16,
) -> (crate::http::HttpServer, crate::tcp::Stats) {
    let bind = |port: u16| {
        let l = ns.run(|| std::net::TcpListener::bind(("0.0.0.0", port)).unwrap());
        l.set_nonblocking(true).unwrap();
        l
    };
    let (http, opaque) = (bind(http_port), bind(opaque_port));
    let (tx, rx) = std::sync::mpsc::channel();
    ns.spawn(async move {
        let app =
            crate::http::HttpServer::start_on(tokio::net::TcpListener::from_std(http).unwrap());
        let exchange = crate::tcp::ExchangeServer::start_on(
            tokio::net::TcpListener::from_std(opaque).unwrap(),
            4096,
        );
        tx.send((app, exchange.stats())).unwrap();
        std::future::pending::<()>().await;
    });
    rx.recv().unwrap()
}
