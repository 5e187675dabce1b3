//! The `linnet` binary as a child process.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

/// A running child process whose stderr goes to a log file; killed on drop.
#[derive(Debug)]
pub struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Spawns `cmd`, logging its stderr to `<tmp>/linnet-<name>-<pid>.log`.
    pub fn spawn(name: &str, mut cmd: Command) -> Self {
        let log = std::env::temp_dir().join(format!("linnet-{name}-{}.log", std::process::id()));
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        Self { child, log }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM {} failed", self.pid());
    }

    /// Its exit status, if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A copy of `binary` in a world-readable directory, so that a non-root
/// user can run it whatever the permissions of the build tree. One copy
/// per build of the binary (named by its size and modification time),
/// shared by every test process: a copy per process would leave a
/// hundred-odd megabytes in the temporary directory each run.
pub fn world_executable_copy(binary: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(binary).unwrap();
    let stamp = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("linnet-bin-{}-{stamp}", meta.len()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.join("linnet");
    if std::fs::metadata(&copy).is_ok_and(|m| m.len() == meta.len()) {
        return copy;
    }
    // Copied under a name of its own, then renamed into place, so that
    // tests running at once never run a half-written file.
    let partial = dir.join(format!("linnet.{}", std::process::id()));
    std::fs::copy(binary, &partial).unwrap();
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&partial, &copy).unwrap();
    copy
}

/// A free port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
