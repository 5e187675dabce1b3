//! The run flow against a fake runner: which commands are run, in what
//! order, with what input, and what a dry run prints.

use std::cell::RefCell;

use super::*;

const EMPTY: &str = "*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
COMMIT
";

const INSTALLED: &str = r#"*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:PROXY_INIT_OUTPUT - [0:0]
:PROXY_INIT_REDIRECT - [0:0]
-A PREROUTING -m comment --comment "linnet-init/install-prerouting" -j PROXY_INIT_REDIRECT
-A OUTPUT -m comment --comment "linnet-init/install-output" -j PROXY_INIT_OUTPUT
COMMIT
"#;

/// Records every command; `*-save` prints `dump` (or fails when `dump` is
/// `None`), anything else succeeds silently unless it is `fail_program`.
struct Fake {
    dump: Option<&'static str>,
    fail_program: Option<&'static str>,
    log: RefCell<Vec<Invocation>>,
}

impl Fake {
    fn new(dump: Option<&'static str>) -> Self {
        Self {
            dump,
            fail_program: None,
            log: RefCell::new(Vec::new()),
        }
    }

    fn commands(&self) -> Vec<String> {
        self.log.borrow().iter().map(ToString::to_string).collect()
    }

    fn restore_inputs(&self) -> Vec<String> {
        self.log
            .borrow()
            .iter()
            .filter_map(|i| i.stdin.clone())
            .collect()
    }
}

impl Runner for Fake {
    fn run(&self, invocation: &Invocation) -> Result<String, InitError> {
        self.log.borrow_mut().push(invocation.clone());
        let failed = || InitError::CommandFailed {
            command: invocation.to_string(),
            status: "exit status: 1".into(),
            stderr: "Permission denied (you must be root)".into(),
        };
        if Some(invocation.program.as_str()) == self.fail_program {
            return Err(failed());
        }
        if invocation.program.ends_with("-save") {
            return self.dump.map(str::to_string).ok_or_else(failed);
        }
        Ok(String::new())
    }
}

fn run_fake(args: &InitArgs, fake: &Fake) -> (Result<Outcome, InitError>, String) {
    let mut out = Vec::new();
    let result = run_with(args, fake, &mut out);
    (result, String::from_utf8(out).unwrap())
}

#[test]
fn apply_reads_then_restores_each_family() {
    let fake = Fake::new(Some(EMPTY));
    let (result, printed) = run_fake(&InitArgs::default(), &fake);
    let outcome = result.unwrap();
    assert_eq!(
        fake.commands(),
        [
            "iptables-save -t nat",
            "iptables-restore --noflush",
            "ip6tables-save -t nat",
            "ip6tables-restore --noflush",
        ]
    );
    assert!(printed.is_empty(), "only a dry run prints: {printed}");
    assert_eq!(outcome.families.len(), 2);
    assert!(
        outcome
            .families
            .iter()
            .all(|f| f.action == Action::Installed)
    );
    assert_eq!(
        outcome.to_string(),
        "IPv4: rules installed; IPv6: rules installed"
    );
    let inputs = fake.restore_inputs();
    assert_eq!(inputs.len(), 2);
    assert!(inputs[0].contains("-A PREROUTING "));
    assert_eq!(Some(&inputs[0]), outcome.families[0].restore_input.as_ref());
}

#[test]
fn subnets_reach_only_their_family() {
    let args = InitArgs {
        subnets_to_ignore: "10.0.0.0/8,fd00::/8".parse().unwrap(),
        ..InitArgs::default()
    };
    let fake = Fake::new(Some(EMPTY));
    run_fake(&args, &fake).0.unwrap();
    let inputs = fake.restore_inputs();
    assert!(inputs[0].contains("-s 10.0.0.0/8 ") && !inputs[0].contains("fd00::"));
    assert!(inputs[1].contains("-s fd00::/8 ") && !inputs[1].contains("10.0.0.0"));
}

#[test]
fn already_installed_gets_no_second_jump() {
    let fake = Fake::new(Some(INSTALLED));
    run_fake(&InitArgs::default(), &fake).0.unwrap();
    for input in fake.restore_inputs() {
        assert!(!input.contains("-A PREROUTING"), "{input}");
        assert!(!input.contains("-A OUTPUT"), "{input}");
    }
}

#[test]
fn ipv6_false_leaves_ip6tables_alone() {
    let args = InitArgs {
        ipv6: false,
        ..InitArgs::default()
    };
    let fake = Fake::new(Some(EMPTY));
    let outcome = run_fake(&args, &fake).0.unwrap();
    assert_eq!(
        fake.commands(),
        ["iptables-save -t nat", "iptables-restore --noflush"]
    );
    assert_eq!(outcome.families.len(), 1);
}

#[test]
fn mode_and_wait_flag_pick_the_commands() {
    let args = InitArgs {
        iptables_mode: IptablesMode::Legacy,
        use_wait_flag: true,
        ipv6: false,
        ..InitArgs::default()
    };
    let fake = Fake::new(Some(EMPTY));
    run_fake(&args, &fake).0.unwrap();
    assert_eq!(
        fake.commands(),
        [
            "iptables-legacy-save -t nat",
            "iptables-legacy-restore --noflush -w"
        ]
    );
}

#[test]
fn dry_run_prints_and_changes_nothing() {
    let args = InitArgs {
        dry_run: true,
        timeout_close_wait_secs: Some(3600),
        ..InitArgs::default()
    };
    let fake = Fake::new(Some(EMPTY));
    let (result, printed) = run_fake(&args, &fake);
    let outcome = result.unwrap();
    assert_eq!(
        fake.commands(),
        ["iptables-save -t nat", "ip6tables-save -t nat"],
        "only reads"
    );
    assert!(outcome.families.iter().all(|f| f.action == Action::DryRun));
    assert!(printed.starts_with(
        "# would run: sysctl -w net.netfilter.nf_conntrack_tcp_timeout_close_wait=3600\n"
    ));
    assert!(
        printed.contains("# IPv4: would run `iptables-restore --noflush` with this input:\n*nat\n")
    );
    assert!(printed.contains("# IPv6: would run `ip6tables-restore --noflush`"));
    for family in &outcome.families {
        assert!(printed.contains(family.restore_input.as_deref().unwrap()));
    }
}

#[test]
fn dry_run_without_privileges_still_shows_the_input() {
    let args = InitArgs {
        dry_run: true,
        ipv6: false,
        ..InitArgs::default()
    };
    let fake = Fake::new(None);
    let (result, printed) = run_fake(&args, &fake);
    result.unwrap();
    assert!(
        printed.contains("# IPv4: `iptables-save -t nat` failed"),
        "{printed}"
    );
    assert!(printed.contains("-A PREROUTING "), "{printed}");
}

#[test]
fn unreadable_table_fails_a_real_run() {
    let fake = Fake::new(None);
    let err = run_fake(&InitArgs::default(), &fake).0.unwrap_err();
    assert!(err.to_string().contains("iptables-save -t nat"), "{err}");
    assert_eq!(fake.commands().len(), 1, "stops at the first failure");
}

#[test]
fn failed_restore_is_reported_with_its_command() {
    let fake = Fake {
        fail_program: Some("ip6tables-restore"),
        ..Fake::new(Some(EMPTY))
    };
    let err = run_fake(&InitArgs::default(), &fake).0.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("ip6tables-restore --noflush"), "{msg}");
    assert!(msg.contains("Permission denied"), "{msg}");
}

#[test]
fn remove_with_nothing_installed_runs_nothing() {
    let args = InitArgs {
        remove: true,
        timeout_close_wait_secs: Some(60),
        ..InitArgs::default()
    };
    let fake = Fake::new(Some(EMPTY));
    let outcome = run_fake(&args, &fake).0.unwrap();
    assert_eq!(
        fake.commands(),
        ["iptables-save -t nat", "ip6tables-save -t nat"]
    );
    assert!(
        outcome
            .families
            .iter()
            .all(|f| f.action == Action::NothingToRemove && f.restore_input.is_none())
    );
}

#[test]
fn remove_deletes_what_is_installed() {
    let args = InitArgs {
        remove: true,
        ipv6: false,
        ..InitArgs::default()
    };
    let fake = Fake::new(Some(INSTALLED));
    let outcome = run_fake(&args, &fake).0.unwrap();
    assert_eq!(outcome.families[0].action, Action::Removed);
    let inputs = fake.restore_inputs();
    assert_eq!(inputs.len(), 1);
    assert!(inputs[0].contains("-X PROXY_INIT_REDIRECT\n"));
    assert!(inputs[0].contains("-D PREROUTING "));
}

#[test]
fn invalid_settings_run_nothing() {
    let args = InitArgs {
        incoming_proxy_port: 0,
        ..InitArgs::default()
    };
    let fake = Fake::new(Some(EMPTY));
    let err = run_fake(&args, &fake).0.unwrap_err();
    assert!(err.to_string().contains("--incoming-proxy-port"));
    assert!(fake.commands().is_empty());
}
