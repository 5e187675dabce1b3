//! End to end against the real `iptables`: each test makes a throwaway
//! network namespace (`ip netns add`), runs `linnet init` inside it through
//! a prefixed [`Executor`], and checks the `nat` tables with
//! `iptables-save`/`ip6tables-save` run inside the same namespace.
//!
//! Programming iptables needs root; without it every test says why it is
//! skipped and passes. The namespace is always deleted afterwards, by a
//! guard, even when an assertion fails.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns: a panic is how they report a failure"
)]

use std::io::Write;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use linnet_init::{
    Action, Executor, Family, InitArgs, IptablesMode, NatTable, OUTPUT_CHAIN, REDIRECT_CHAIN,
    RuleSet, run_with,
};

/// A network namespace that exists for as long as this value does.
struct Netns {
    name: String,
}

impl Netns {
    /// Makes a namespace with a name no other test (or run) uses, or
    /// returns `None`, after saying why, when this process may not.
    fn create(test: &str) -> Option<Self> {
        if let Some(reason) = skip_reason() {
            // Straight to stderr rather than `eprintln!`, which the test
            // harness captures and hides for passing tests.
            let _ = writeln!(std::io::stderr(), "skipping {test}: {reason}");
            return None;
        }
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "linnet-init-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .unwrap_or_else(|e| panic!("could not run `ip netns add {name}`: {e}"));
        assert!(
            out.status.success(),
            "`ip netns add {name}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(Self { name })
    }

    fn executor(&self) -> Executor {
        Executor::in_netns(&self.name)
    }

    /// Runs a command inside the namespace and returns its stdout.
    fn exec(&self, program: &str, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("could not run {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The family's nat table as the plain `iptables-save` sees it.
    fn nat(&self, family: Family) -> String {
        self.nat_via(IptablesMode::Plain, family)
    }

    /// The family's nat table, read through `mode`'s backend, without the
    /// timestamped comment lines.
    fn nat_via(&self, mode: IptablesMode, family: Family) -> String {
        self.exec(mode.save_program(family), &["-t", "nat"])
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// Adds someone else's rules to the built-in chains, which every step
    /// must leave alone.
    fn add_foreign_rules(&self, mode: IptablesMode, family: Family) {
        let save = mode.save_program(family);
        let iptables = save.strip_suffix("-save").unwrap_or(save);
        for (chain, proto) in [
            ("PREROUTING", "udp"),
            ("OUTPUT", "udp"),
            ("POSTROUTING", "tcp"),
        ] {
            self.exec(
                iptables,
                &[
                    "-t",
                    "nat",
                    "-A",
                    chain,
                    "-p",
                    proto,
                    "--dport",
                    "5353",
                    "-m",
                    "comment",
                    "--comment",
                    "foreign",
                    "-j",
                    "RETURN",
                ],
            );
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        match Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status()
        {
            Ok(status) if status.success() => {}
            other => eprintln!(
                "could not delete network namespace {}: {other:?}",
                self.name
            ),
        }
    }
}

/// Why these tests cannot run here, if they cannot.
fn skip_reason() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    // "Uid:\treal\teffective\tsaved\tfs"
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .map(str::to_string);
    if euid.as_deref() != Some("0") {
        return Some(format!(
            "needs root to create network namespaces and program iptables (effective uid {})",
            euid.as_deref().unwrap_or("unknown")
        ));
    }
    for tool in [
        "ip",
        "iptables-save",
        "iptables-restore",
        "ip6tables-save",
        "ip6tables-restore",
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}

/// The rules of the table that are not ours, in order (chain declarations
/// included, counters dropped): what every step must leave as it was.
fn foreign(dump: &str) -> Vec<String> {
    let ours = |s: &str| s.contains(REDIRECT_CHAIN) || s.contains(OUTPUT_CHAIN);
    dump.lines()
        .filter(|l| !ours(l))
        .map(|l| l.split(" [").next().unwrap_or(l).to_string())
        .collect()
}

/// The comment of a rule spec (`--comment "x"` or `--comment x`).
fn comment_of(spec: &str) -> Option<String> {
    let rest = spec.split_once("--comment ")?.1;
    Some(match rest.strip_prefix('"') {
        Some(quoted) => quoted.split('"').next()?.to_string(),
        None => rest.split_whitespace().next()?.to_string(),
    })
}

fn settings() -> InitArgs {
    InitArgs {
        proxy_gid: Some(2103),
        inbound_ports_to_ignore: "4190,4191,25,8000-8100".parse().unwrap(),
        subnets_to_ignore: "10.0.0.0/8,fd00::/8".parse().unwrap(),
        outbound_subnets_to_ignore: "192.168.0.0/16,2001:db8::/32".parse().unwrap(),
        use_wait_flag: true,
        ..InitArgs::default()
    }
}

/// Exactly one jump from each built-in chain and exactly our rules, in
/// order, in each of our chains.
fn assert_installed_once(dump: &str, args: &InitArgs, family: Family) {
    let table = NatTable::parse(dump);
    assert_eq!(
        table.jumps("PREROUTING", REDIRECT_CHAIN).count(),
        1,
        "{family}:\n{dump}"
    );
    assert_eq!(
        table.jumps("OUTPUT", OUTPUT_CHAIN).count(),
        1,
        "{family}:\n{dump}"
    );

    let expected = RuleSet::from_args(args).unwrap().chain_rules(family);
    for chain in [REDIRECT_CHAIN, OUTPUT_CHAIN] {
        let want: Vec<_> = expected
            .iter()
            .filter(|r| r.starts_with(&format!("-A {chain} ")))
            .map(|r| comment_of(r))
            .collect();
        let have: Vec<_> = table
            .rules()
            .iter()
            .filter(|r| r.chain == chain)
            .map(|r| comment_of(&r.spec))
            .collect();
        assert_eq!(have, want, "{family} {chain}:\n{dump}");
    }
}

#[test]
fn apply_twice_then_remove() {
    let Some(ns) = Netns::create("apply_twice_then_remove") else {
        return;
    };
    apply_twice_then_remove_via(&ns, IptablesMode::Plain, &[Family::V4, Family::V6]);
}

#[test]
fn legacy_mode_apply_twice_then_remove() {
    let Some(ns) = Netns::create("legacy_mode_apply_twice_then_remove") else {
        return;
    };
    let legacy_works = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "iptables-legacy-save",
            "-t",
            "nat",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if !legacy_works {
        let _ = writeln!(
            std::io::stderr(),
            "skipping legacy_mode_apply_twice_then_remove: iptables-legacy does not work here"
        );
        return;
    }
    apply_twice_then_remove_via(&ns, IptablesMode::Legacy, &[Family::V4]);
}

/// Installs twice, checks one set of rules is there and nothing else
/// changed, removes, checks the tables are as they were, removes again.
fn apply_twice_then_remove_via(ns: &Netns, mode: IptablesMode, families: &[Family]) {
    let exec = ns.executor();
    for &family in families {
        ns.add_foreign_rules(mode, family);
    }
    let before: Vec<_> = families.iter().map(|&f| ns.nat_via(mode, f)).collect();

    let args = InitArgs {
        iptables_mode: mode,
        ipv6: families.contains(&Family::V6),
        ..settings()
    };
    for round in 1..=2 {
        let outcome = run_with(&args, &exec, &mut Vec::new())
            .unwrap_or_else(|e| panic!("round {round}: {e} ({:?})", std::error::Error::source(&e)));
        assert_eq!(outcome.families.len(), families.len());
        assert!(
            outcome
                .families
                .iter()
                .all(|f| f.action == Action::Installed)
        );
        for (&family, before) in families.iter().zip(&before) {
            let dump = ns.nat_via(mode, family);
            assert_installed_once(&dump, &args, family);
            assert_eq!(foreign(&dump), foreign(before), "round {round}, {family}");
        }
    }

    // Each family has only its own subnets.
    for &family in families {
        let dump = ns.nat_via(mode, family);
        let (own, other) = match family {
            Family::V4 => (
                ["-s 10.0.0.0/8 ", "-d 192.168.0.0/16 "],
                ["fd00::", "2001:db8::"],
            ),
            Family::V6 => (
                ["-s fd00::/8 ", "-d 2001:db8::/32 "],
                ["10.0.0.0", "192.168."],
            ),
        };
        assert!(own.iter().all(|s| dump.contains(s)), "{family}:\n{dump}");
        assert!(!other.iter().any(|s| dump.contains(s)), "{family}:\n{dump}");
        assert!(dump.contains("--dports 4190,4191,25,8000:8100 "), "{dump}");
    }

    let remove = InitArgs {
        remove: true,
        ..args
    };
    let outcome = run_with(&remove, &exec, &mut Vec::new()).unwrap();
    assert!(outcome.families.iter().all(|f| f.action == Action::Removed));
    for (&family, before) in families.iter().zip(&before) {
        let dump = ns.nat_via(mode, family);
        assert!(!dump.contains("PROXY_INIT"), "{family}:\n{dump}");
        assert_eq!(&dump, before, "{family}: back to how it was");
    }

    // Removing again finds nothing and runs nothing.
    let outcome = run_with(&remove, &exec, &mut Vec::new()).unwrap();
    assert!(
        outcome
            .families
            .iter()
            .all(|f| f.action == Action::NothingToRemove)
    );
}

#[test]
fn netns_flag_enters_the_namespace() {
    let Some(ns) = Netns::create("netns_flag_enters_the_namespace") else {
        return;
    };
    let args = InitArgs {
        netns: Some(format!("/var/run/netns/{}", ns.name).into()),
        ipv6: false,
        ..settings()
    };
    let outcome = linnet_init::run(&args).unwrap();
    assert_eq!(outcome.to_string(), "IPv4: rules installed");
    assert_installed_once(&ns.nat(Family::V4), &args, Family::V4);
}

#[test]
fn ipv6_false_leaves_ip6tables_alone() {
    let Some(ns) = Netns::create("ipv6_false_leaves_ip6tables_alone") else {
        return;
    };
    let v6_before = ns.nat(Family::V6);
    let args = InitArgs {
        ipv6: false,
        ..settings()
    };
    run_with(&args, &ns.executor(), &mut Vec::new()).unwrap();
    assert_installed_once(&ns.nat(Family::V4), &args, Family::V4);
    assert_eq!(ns.nat(Family::V6), v6_before);
}

#[test]
fn dry_run_changes_nothing() {
    let Some(ns) = Netns::create("dry_run_changes_nothing") else {
        return;
    };
    let before = [ns.nat(Family::V4), ns.nat(Family::V6)];
    let args = InitArgs {
        dry_run: true,
        ..settings()
    };
    let mut printed = Vec::new();
    let outcome = run_with(&args, &ns.executor(), &mut printed).unwrap();
    assert!(outcome.families.iter().all(|f| f.action == Action::DryRun));
    let printed = String::from_utf8(printed).unwrap();
    assert!(printed.contains("-A PREROUTING "), "{printed}");
    assert_eq!([ns.nat(Family::V4), ns.nat(Family::V6)], before);
}

#[test]
fn leftover_duplicate_jump_is_collapsed() {
    let Some(ns) = Netns::create("leftover_duplicate_jump_is_collapsed") else {
        return;
    };
    let args = InitArgs {
        ipv6: false,
        ..settings()
    };
    run_with(&args, &ns.executor(), &mut Vec::new()).unwrap();
    // As an older tool might have left it: a second, differently written
    // jump into our chain.
    ns.exec(
        "iptables",
        &["-t", "nat", "-A", "OUTPUT", "-j", OUTPUT_CHAIN],
    );
    assert_eq!(
        NatTable::parse(&ns.nat(Family::V4))
            .jumps("OUTPUT", OUTPUT_CHAIN)
            .count(),
        2
    );
    run_with(&args, &ns.executor(), &mut Vec::new()).unwrap();
    assert_installed_once(&ns.nat(Family::V4), &args, Family::V4);
}
