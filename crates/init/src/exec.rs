//! Running the `iptables` programs.
//!
//! Every command goes through a [`Runner`]. The real one, [`Executor`], can
//! put a prefix in front of each command (`ip netns exec NAME`, or
//! `nsenter --net=PATH --`), which is how `--netns` works and how the
//! integration tests program a throwaway network namespace. Tests of the
//! flow substitute a fake runner that records commands and returns canned
//! `iptables-save` output.

use std::fmt;
use std::io::Write;
use std::process::{Command, Stdio};

use crate::error::InitError;

/// One command to run: a program, its arguments and, optionally, what to
/// feed it on standard input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// The program, looked up in `PATH`.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Text written to its standard input (the `iptables-restore` input).
    pub stdin: Option<String>,
}

// === impl Invocation ===

impl Invocation {
    /// `program args...` with nothing on standard input.
    pub fn new<I, S>(program: impl Into<String>, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            stdin: None,
        }
    }

    /// The same command, fed `input` on standard input.
    pub fn with_stdin(self, input: impl Into<String>) -> Self {
        Self {
            stdin: Some(input.into()),
            ..self
        }
    }
}

/// The command line as a shell would take it (arguments with blanks or
/// quotes are single-quoted); standard input is not shown.
impl fmt::Display for Invocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_word(f, &self.program)?;
        for arg in &self.args {
            f.write_str(" ")?;
            write_word(f, arg)?;
        }
        Ok(())
    }
}

fn write_word(f: &mut fmt::Formatter<'_>, word: &str) -> fmt::Result {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+%".contains(c));
    if plain {
        f.write_str(word)
    } else {
        write!(f, "'{}'", word.replace('\'', r"'\''"))
    }
}

/// Something that runs commands and returns what they print.
pub trait Runner {
    /// Runs `invocation` to completion and returns its standard output, or
    /// an error naming the command (and its standard error) when it could
    /// not be started or exited unsuccessfully.
    fn run(&self, invocation: &Invocation) -> Result<String, InitError>;
}

/// Runs commands on this machine, each behind an optional prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Executor {
    /// Words put in front of every command, e.g. `["ip", "netns", "exec",
    /// "NAME"]`; empty to run commands as they are.
    prefix: Vec<String>,
}

// === impl Executor ===

impl Executor {
    /// Runs commands as they are, in the current network namespace.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs every command behind `prefix`, e.g. `["nsenter",
    /// "--net=/proc/42/ns/net", "--"]`.
    pub fn with_prefix<I, S>(prefix: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            prefix: prefix.into_iter().map(Into::into).collect(),
        }
    }

    /// Runs every command inside the named network namespace (one made by
    /// `ip netns add NAME`).
    pub fn in_netns(name: &str) -> Self {
        Self::with_prefix(["ip", "netns", "exec", name])
    }

    /// The prefix put in front of every command.
    pub fn prefix(&self) -> &[String] {
        &self.prefix
    }

    /// `invocation` with the prefix in front: what is really run.
    pub fn full(&self, invocation: &Invocation) -> Invocation {
        let mut words = self
            .prefix
            .iter()
            .chain(std::iter::once(&invocation.program))
            .chain(&invocation.args)
            .cloned();
        // The prefix is empty or not; either way there is a first word.
        let program = words.next().unwrap_or_default();
        Invocation {
            program,
            args: words.collect(),
            stdin: invocation.stdin.clone(),
        }
    }
}

impl Runner for Executor {
    fn run(&self, invocation: &Invocation) -> Result<String, InitError> {
        let full = self.full(invocation);
        let command = full.to_string();
        let mut child = Command::new(&full.program)
            .args(&full.args)
            .stdin(if full.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| InitError::Spawn {
                command: command.clone(),
                source,
            })?;

        // Feed stdin from another thread while this one drains stdout and
        // stderr, so neither side can block on a full pipe. A write error
        // (the program exited early) shows up in its exit status instead.
        let stdin = child.stdin.take();
        let output = std::thread::scope(|scope| {
            if let (Some(mut pipe), Some(input)) = (stdin, full.stdin.as_deref()) {
                scope.spawn(move || {
                    let _ = pipe.write_all(input.as_bytes());
                });
            }
            child.wait_with_output()
        })
        .map_err(|source| InitError::Spawn {
            command: command.clone(),
            source,
        })?;

        if !output.status.success() {
            return Err(InitError::CommandFailed {
                command,
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        String::from_utf8(output.stdout).map_err(|_| InitError::NotUtf8 { command })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_like_a_shell_command() {
        let inv = Invocation::new("iptables-restore", ["--noflush", "-w"]);
        assert_eq!(inv.to_string(), "iptables-restore --noflush -w");
        let inv = Invocation::new("sh", ["-c", "echo 'hi' there", ""]);
        assert_eq!(inv.to_string(), r#"sh -c 'echo '\''hi'\'' there' ''"#);
    }

    #[test]
    fn prefix_goes_in_front() {
        let exec = Executor::in_netns("test-ns");
        let full = exec.full(&Invocation::new("iptables-save", ["-t", "nat"]).with_stdin("x"));
        assert_eq!(full.program, "ip");
        assert_eq!(
            full.args,
            ["netns", "exec", "test-ns", "iptables-save", "-t", "nat"]
        );
        assert_eq!(full.stdin.as_deref(), Some("x"));
        assert_eq!(Executor::new().full(&full), full);
    }

    #[test]
    fn returns_stdout_and_feeds_stdin() {
        let out = Executor::new()
            .run(&Invocation::new("cat", Vec::<String>::new()).with_stdin("*nat\nCOMMIT\n"))
            .unwrap();
        assert_eq!(out, "*nat\nCOMMIT\n");
    }

    #[test]
    fn prefix_is_run() {
        let out = Executor::with_prefix(["env", "LINNET_TEST=1"])
            .run(&Invocation::new("sh", ["-c", "echo $LINNET_TEST"]))
            .unwrap();
        assert_eq!(out, "1\n");
    }

    #[test]
    fn failure_names_the_command_and_its_stderr() {
        let err = Executor::with_prefix(["sh", "-c"])
            .run(&Invocation::new("echo 'line 3 failed' >&2; exit 4", ["sh"]))
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, InitError::CommandFailed { .. }), "{err:?}");
        assert!(msg.contains("sh -c"), "{msg}");
        assert!(msg.contains("line 3 failed"), "{msg}");
        assert!(msg.contains("exit status: 4"), "{msg}");
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = Executor::new()
            .run(&Invocation::new("linnet-no-such-program", ["-t", "nat"]))
            .unwrap_err();
        assert!(matches!(err, InitError::Spawn { .. }), "{err:?}");
        assert!(err.to_string().contains("linnet-no-such-program -t nat"));
    }
}
