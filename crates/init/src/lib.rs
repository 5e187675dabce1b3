//! `linnet init`: programs a pod's `nat` table so that its TCP traffic goes
//! through the Linnet proxy, the way Linkerd's `proxy-init` does.
//!
//! It runs once, before the proxy and the application start (as an init
//! container, with `NET_ADMIN`), and sits in front of the whole request
//! path: inbound connections are `REDIRECT`ed to the proxy's inbound port
//! (4143) and the application's outbound connections to the proxy's
//! outbound port (4140), where the proxy recovers the original destination
//! with `SO_ORIGINAL_DST`.
//!
//! The pieces, in the order a run uses them:
//! - [`InitArgs`]: the flags (Linkerd-compatible names and defaults);
//! - [`RuleSet`], [`remove_input`]: pure functions producing the text of one
//!   `iptables-restore --noflush` call per address family;
//! - [`NatTable`]: the current table as `iptables-save -t nat` prints it,
//!   read so that running twice leaves one set of rules;
//! - [`Executor`]: runs the commands, optionally behind a prefix such as
//!   `ip netns exec NAME`.

use std::fmt;
use std::io::{self, Write};

mod args;
mod backend;
mod error;
mod exec;
mod ports;
mod rules;
mod saved;
mod subnet;

pub use crate::args::{
    DEFAULT_INBOUND_PORTS_TO_IGNORE, DEFAULT_INCOMING_PROXY_PORT, DEFAULT_OUTBOUND_PORTS_TO_IGNORE,
    DEFAULT_OUTGOING_PROXY_PORT, DEFAULT_PROXY_UID, InitArgs,
};
pub use crate::backend::{Family, IptablesMode};
pub use crate::error::{InitError, ValueError};
pub use crate::exec::{Executor, Invocation, Runner};
pub use crate::ports::{PortList, PortRange};
pub use crate::rules::{COMMENT_PREFIX, OUTPUT_CHAIN, REDIRECT_CHAIN, RuleSet, remove_input};
pub use crate::saved::{NatTable, SavedRule};
pub use crate::subnet::{Subnet, SubnetList};

/// What a run did, per address family, in the order they were handled
/// (IPv4 first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// One entry per family handled.
    pub families: Vec<FamilyOutcome>,
}

/// What a run did to one address family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyOutcome {
    /// The family.
    pub family: Family,
    /// What happened.
    pub action: Action,
    /// The `iptables-restore --noflush` input that was applied (or, in a dry
    /// run, would have been); `None` when there was nothing to do.
    pub restore_input: Option<String>,
}

/// What happened to one family's `nat` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Our chains were (re)written and hooked in.
    Installed,
    /// Our chains and the jumps into them were removed.
    Removed,
    /// `--remove` found nothing of ours; nothing was run.
    NothingToRemove,
    /// `--dry-run`: the input was printed, nothing was changed.
    DryRun,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, family) in self.families.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            let action = match family.action {
                Action::Installed => "rules installed",
                Action::Removed => "rules removed",
                Action::NothingToRemove => "nothing to remove",
                Action::DryRun => "dry run, nothing changed",
            };
            write!(f, "{}: {action}", family.family)?;
        }
        Ok(())
    }
}

/// Runs `linnet init` with the real [`Executor`] (behind `nsenter` when
/// `--netns` is given), printing dry-run output to standard output.
pub fn run(args: &InitArgs) -> Result<Outcome, InitError> {
    let executor = match &args.netns {
        None => Executor::new(),
        Some(path) => {
            let path = path.to_str().ok_or_else(|| InitError::InvalidFlag {
                flag: "netns",
                value: path.display().to_string(),
                reason: "the path must be valid UTF-8".to_string(),
            })?;
            Executor::with_prefix(["nsenter", &format!("--net={path}"), "--"])
        }
    };
    run_with(args, &executor, &mut io::stdout().lock())
}

/// Runs `linnet init` with the given runner, writing dry-run output to
/// `out` (nothing is written otherwise).
///
/// For each family (IPv4, then IPv6 unless `--ipv6=false`) it reads the
/// `nat` table with `iptables-save -t nat` and, unless this is a dry run or
/// there is nothing to do, applies one `iptables-restore --noflush`. A dry
/// run still reads the table, so it shows exactly what would be applied; if
/// the table cannot be read (no privileges), it says so and shows the input
/// for an empty table. A failure stops the run: an IPv4 change already made
/// stays in place, and running again completes it.
pub fn run_with<R, W>(args: &InitArgs, runner: &R, out: &mut W) -> Result<Outcome, InitError>
where
    R: Runner + ?Sized,
    W: Write + ?Sized,
{
    let rules = RuleSet::from_args(args)?;
    let mut outcome = Outcome::default();

    if let Some(secs) = args
        .timeout_close_wait_secs
        .filter(|s| *s > 0 && !args.remove)
    {
        let setting = format!("net.netfilter.nf_conntrack_tcp_timeout_close_wait={secs}");
        let sysctl = Invocation::new("sysctl", ["-w", setting.as_str()]);
        if args.dry_run {
            writeln!(out, "# would run: {sysctl}").map_err(InitError::Output)?;
        } else {
            runner.run(&sysctl)?;
        }
    }

    let families: &[Family] = if args.ipv6 {
        &[Family::V4, Family::V6]
    } else {
        &[Family::V4]
    };
    for &family in families {
        let save = Invocation::new(args.iptables_mode.save_program(family), ["-t", "nat"]);
        let current = match runner.run(&save) {
            Ok(dump) => NatTable::parse(&dump),
            Err(error) if args.dry_run => {
                // Keep the note one comment line even if stderr had several.
                let error = error.to_string().replace('\n', " ");
                writeln!(
                    out,
                    "# {family}: {error}; showing the input for a table with nothing of ours"
                )
                .map_err(InitError::Output)?;
                NatTable::default()
            }
            Err(error) => return Err(error),
        };

        let input = if args.remove {
            remove_input(&current)
        } else {
            Some(rules.apply_input(family, &current))
        };
        let mut restore_args = vec!["--noflush"];
        if args.use_wait_flag {
            restore_args.push("-w");
        }
        let restore = Invocation::new(args.iptables_mode.restore_program(family), restore_args);

        let action = match (&input, args.dry_run) {
            (None, dry_run) => {
                if dry_run {
                    writeln!(out, "# {family}: nothing of ours to remove")
                        .map_err(InitError::Output)?;
                }
                Action::NothingToRemove
            }
            (Some(input), true) => {
                writeln!(out, "# {family}: would run `{restore}` with this input:")
                    .and_then(|()| out.write_all(input.as_bytes()))
                    .map_err(InitError::Output)?;
                Action::DryRun
            }
            (Some(input), false) => {
                runner.run(&restore.with_stdin(input.as_str()))?;
                if args.remove {
                    Action::Removed
                } else {
                    Action::Installed
                }
            }
        };
        outcome.families.push(FamilyOutcome {
            family,
            action,
            restore_input: input,
        });
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests;
