//! Errors of `linnet init`.
//!
//! Two kinds: [`ValueError`] says why one value given to a flag is not
//! usable (clap shows it next to the flag and the value), and [`InitError`]
//! is what [`run`](crate::run) returns: a bad combination of flags, or a
//! command (`iptables-save`, `iptables-restore`, ...) that could not be run
//! or failed. Each `Display` prints only its own level; the cause, where
//! there is one, is the error's `source`.

use std::io;

/// Why a single flag value (a port, a port range, a subnet) was rejected.
///
/// Each variant carries the offending text so the message stands on its own
/// even inside a comma-separated list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// Not a decimal number between 0 and 65535.
    #[error("`{0}` is not a port number (expected 0-65535)")]
    Port(String),

    /// A range such as `8100-8000` whose end is below its start.
    #[error("port range `{0}` ends before it starts")]
    ReversedRange(String),

    /// Not an IPv4 or IPv6 address with an optional `/prefix`.
    #[error("`{0}` is not a subnet (expected e.g. 10.0.0.0/8 or fd00::/8)")]
    Subnet(String),

    /// A prefix longer than the address family allows (e.g. `/33` on IPv4).
    #[error("the prefix length of `{0}` is too long for its address family")]
    PrefixTooLong(String),
}

/// Why `linnet init` could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A flag's value is well formed but cannot be used, alone or together
    /// with another flag.
    #[error("invalid value `{value}` for `--{flag}`: {reason}")]
    InvalidFlag {
        /// The flag's long name, without the leading dashes.
        flag: &'static str,
        /// The value as the user would have written it.
        value: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A command could not be started at all (binary missing, no
    /// permission, ...).
    #[error("could not run `{command}`")]
    Spawn {
        /// The full command line, prefix included.
        command: String,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },

    /// A command ran and exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        /// The full command line, prefix included.
        command: String,
        /// The exit status as the OS reports it (`exit status: 1`, or the
        /// signal that killed it).
        status: String,
        /// What the command wrote to its standard error, trimmed. This is
        /// where `iptables-restore` says which input line it rejected.
        stderr: String,
    },

    /// A command's standard output was not UTF-8, so it cannot be read as an
    /// `iptables-save` dump.
    #[error("`{command}` printed output that is not UTF-8")]
    NotUtf8 {
        /// The full command line, prefix included.
        command: String,
    },

    /// The dry-run report could not be written.
    #[error("could not write the dry-run output")]
    Output(#[source] io::Error),
}
