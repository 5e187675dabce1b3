//! What the harness leaves behind when it is stopped: nothing.
//!
//! Every process the harness starts and every network namespace it
//! creates is dropped (killed, deleted) when the run ends or fails. A
//! signal ends the process without running those drops, so the harness
//! keeps a list of what is alive ([`Live`]) and, on SIGINT, SIGTERM or
//! SIGHUP, kills the processes and deletes the namespaces on that list
//! before it exits. What a signal catches half made (a namespace created
//! but not yet listed) is left to the next run: the namespace fixture
//! deletes `lnt*` namespaces whose process is gone.

use std::{process::Command, sync::Mutex};

/// What is alive now.
#[derive(Debug, Default)]
struct Live {
    /// Process ids of children.
    pids: Vec<u32>,
    /// Names of network namespaces.
    namespaces: Vec<String>,
    /// Directories to remove.
    dirs: Vec<std::path::PathBuf>,
}

static LIVE: Mutex<Live> = Mutex::new(Live {
    pids: Vec::new(),
    namespaces: Vec::new(),
    dirs: Vec::new(),
});

fn live() -> std::sync::MutexGuard<'static, Live> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// A child process is alive.
pub(crate) fn add_pid(pid: u32) {
    live().pids.push(pid);
}

/// A child process has been reaped.
pub(crate) fn remove_pid(pid: u32) {
    live().pids.retain(|p| *p != pid);
}

/// A network namespace exists.
pub(crate) fn add_namespace(name: &str) {
    live().namespaces.push(name.to_string());
}

/// A network namespace has been deleted.
pub(crate) fn remove_namespace(name: &str) {
    live().namespaces.retain(|n| n != name);
}

/// A scratch directory exists.
pub(crate) fn add_dir(dir: &std::path::Path) {
    live().dirs.push(dir.to_path_buf());
}

/// A scratch directory has been removed.
pub(crate) fn remove_dir(dir: &std::path::Path) {
    live().dirs.retain(|d| d != dir);
}

/// Watches for SIGINT, SIGTERM and SIGHUP on `rt`; on the first, kills
/// and deletes what is alive and exits (130, 143 or 129).
pub(crate) fn on_signal_clean_up(rt: &tokio::runtime::Runtime) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let _guard = rt.enter();
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    rt.spawn(async move {
        let (name, code) = tokio::select! {
            _ = int.recv() => ("SIGINT", 130),
            _ = term.recv() => ("SIGTERM", 143),
            _ = hup.recv() => ("SIGHUP", 129),
        };
        eprintln!("{name}: stopping the processes and deleting the namespaces this run made");
        clean_up();
        std::process::exit(code);
    });
    Ok(())
}

/// Kills every listed process and deletes every listed namespace and
/// directory.
fn clean_up() {
    let mut live = live();
    for pid in live.pids.drain(..) {
        if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
    for ns in live.namespaces.drain(..) {
        let _ = Command::new("ip").args(["netns", "delete", &ns]).output();
    }
    for dir in live.dirs.drain(..) {
        let _ = std::fs::remove_dir_all(dir);
    }
}
