use super::*;

fn rules(args: &InitArgs, family: Family) -> Vec<String> {
    RuleSet::from_args(args).unwrap().chain_rules(family)
}

fn with(edit: impl FnOnce(&mut InitArgs)) -> InitArgs {
    let mut args = InitArgs::default();
    edit(&mut args);
    args
}

#[test]
fn default_rules() {
    let expected = [
        r#"-A PROXY_INIT_REDIRECT -p tcp -m multiport --dports 4190,4191,4567,4568 -m comment --comment "linnet-init/ignore-port-4190,4191,4567,4568" -j RETURN"#,
        r#"-A PROXY_INIT_REDIRECT -p tcp -m comment --comment "linnet-init/redirect-all-incoming-to-proxy-port" -j REDIRECT --to-ports 4143"#,
        r#"-A PROXY_INIT_OUTPUT -m owner --uid-owner 2102 -m comment --comment "linnet-init/ignore-proxy-user-id" -j RETURN"#,
        r#"-A PROXY_INIT_OUTPUT -o lo -m comment --comment "linnet-init/ignore-loopback" -j RETURN"#,
        r#"-A PROXY_INIT_OUTPUT -p tcp -m multiport --dports 4567,4568 -m comment --comment "linnet-init/ignore-port-4567,4568" -j RETURN"#,
        r#"-A PROXY_INIT_OUTPUT -p tcp -m comment --comment "linnet-init/redirect-all-outgoing-to-proxy-port" -j REDIRECT --to-ports 4140"#,
    ];
    let args = InitArgs::default();
    assert_eq!(rules(&args, Family::V4), expected);
    // Without subnets, both families get the same rules.
    assert_eq!(rules(&args, Family::V6), expected);
}

#[test]
fn ports_ranges_and_proxy_ports() {
    let args = with(|a| {
        a.incoming_proxy_port = 5143;
        a.outgoing_proxy_port = 5140;
        a.inbound_ports_to_ignore = "25,8000-8100".parse().unwrap();
        a.outbound_ports_to_ignore = "".parse().unwrap();
    });
    let r = rules(&args, Family::V4);
    assert!(r[0].contains("--dports 25,8000:8100 "), "{}", r[0]);
    assert!(r[1].ends_with("-j REDIRECT --to-ports 5143"), "{}", r[1]);
    assert!(r.last().unwrap().ends_with("-j REDIRECT --to-ports 5140"));
    assert!(
        !r.iter()
            .any(|l| l.starts_with("-A PROXY_INIT_OUTPUT -p tcp -m multiport")),
        "no outbound ports are ignored"
    );
}

#[test]
fn long_port_lists_are_split_over_rules() {
    let list: Vec<String> = (1000..1020).map(|p| p.to_string()).collect();
    let args = with(|a| a.inbound_ports_to_ignore = list.join(",").parse().unwrap());
    let ignores: Vec<_> = rules(&args, Family::V4)
        .into_iter()
        .filter(|l| l.contains("ignore-port-"))
        .filter(|l| l.starts_with("-A PROXY_INIT_REDIRECT"))
        .collect();
    assert_eq!(ignores.len(), 2);
    assert!(ignores[1].contains("--dports 1015,1016,1017,1018,1019 "));
}

#[test]
fn subnets_go_to_their_own_family() {
    let args = with(|a| {
        a.subnets_to_ignore = "10.0.0.0/8,fd00::/8".parse().unwrap();
        a.outbound_subnets_to_ignore = "192.168.0.0/16,2001:db8::/32".parse().unwrap();
    });
    let v4 = rules(&args, Family::V4).join("\n");
    let v6 = rules(&args, Family::V6).join("\n");

    assert!(v4.contains(
        r#"-A PROXY_INIT_REDIRECT -s 10.0.0.0/8 -m comment --comment "linnet-init/ignore-subnet-10.0.0.0/8" -j RETURN"#
    ));
    assert!(v4.contains(
        r#"-A PROXY_INIT_OUTPUT -d 192.168.0.0/16 -m comment --comment "linnet-init/ignore-subnet-192.168.0.0/16" -j RETURN"#
    ));
    assert!(!v4.contains("fd00::") && !v4.contains("2001:db8::"));

    assert!(v6.contains("-A PROXY_INIT_REDIRECT -s fd00::/8 "));
    assert!(v6.contains("-A PROXY_INIT_OUTPUT -d 2001:db8::/32 "));
    assert!(!v6.contains("10.0.0.0") && !v6.contains("192.168."));
}

#[test]
fn ignores_come_before_redirects() {
    let args = with(|a| {
        a.subnets_to_ignore = "10.0.0.0/8".parse().unwrap();
        a.outbound_subnets_to_ignore = "10.0.0.0/8".parse().unwrap();
    });
    for chain in [REDIRECT_CHAIN, OUTPUT_CHAIN] {
        let in_chain: Vec<_> = rules(&args, Family::V4)
            .into_iter()
            .filter(|l| l.starts_with(&format!("-A {chain} ")))
            .collect();
        let (last, rest) = in_chain.split_last().unwrap();
        assert!(last.contains("-j REDIRECT"), "{last}");
        assert!(rest.iter().all(|l| l.ends_with("-j RETURN")), "{rest:?}");
    }
}

#[test]
fn proxy_uid_and_gid() {
    let args = with(|a| {
        a.proxy_uid = 0;
        a.proxy_gid = Some(1337);
    });
    let out: Vec<_> = rules(&args, Family::V4)
        .into_iter()
        .filter(|l| l.starts_with("-A PROXY_INIT_OUTPUT"))
        .collect();
    assert!(out[0].starts_with("-A PROXY_INIT_OUTPUT -m owner --uid-owner 0 "));
    assert!(out[1].starts_with("-A PROXY_INIT_OUTPUT -m owner --gid-owner 1337 "));
    assert!(out[2].starts_with("-A PROXY_INIT_OUTPUT -o lo "));
}

#[test]
fn listed_ports_replace_redirect_all() {
    let args = with(|a| a.ports_to_redirect = "80,8000-8100".parse().unwrap());
    let r = rules(&args, Family::V4);
    assert!(!r.iter().any(|l| l.contains("redirect-all-incoming")));
    assert!(r.contains(
        &r#"-A PROXY_INIT_REDIRECT -p tcp -m multiport --dports 80,8000:8100 -m comment --comment "linnet-init/redirect-port-80,8000:8100-to-proxy-port" -j REDIRECT --to-ports 4143"#.to_string()
    ));
    // Outbound is still redirected wholesale.
    assert!(r.iter().any(|l| l.contains("redirect-all-outgoing")));
}

#[test]
fn bad_proxy_ports_are_rejected() {
    for (args, flag) in [
        (with(|a| a.incoming_proxy_port = 0), "incoming-proxy-port"),
        (with(|a| a.outgoing_proxy_port = 0), "outgoing-proxy-port"),
        (
            with(|a| a.outgoing_proxy_port = 4143),
            "outgoing-proxy-port",
        ),
    ] {
        match RuleSet::from_args(&args) {
            Err(e @ InitError::InvalidFlag { .. }) => {
                assert!(e.to_string().contains(&format!("--{flag}")), "{e}");
            }
            other => panic!("expected an invalid {flag}, got {other:?}"),
        }
    }
}

const EMPTY: &str = "*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
COMMIT
";

/// What `iptables-save -t nat` printed after one run, plus a rule of
/// someone else's.
const INSTALLED: &str = r#"*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:PROXY_INIT_OUTPUT - [0:0]
:PROXY_INIT_REDIRECT - [0:0]
-A PREROUTING -p udp -m comment --comment someone-else -j RETURN
-A PREROUTING -m comment --comment "linnet-init/install-prerouting" -j PROXY_INIT_REDIRECT
-A OUTPUT -m comment --comment "linnet-init/install-output" -j PROXY_INIT_OUTPUT
-A PROXY_INIT_OUTPUT -o lo -m comment --comment "linnet-init/ignore-loopback" -j RETURN
-A PROXY_INIT_REDIRECT -p tcp -m comment --comment "linnet-init/redirect-all-incoming-to-proxy-port" -j REDIRECT --to-ports 4143
COMMIT
"#;

fn apply(dump: &str) -> String {
    RuleSet::from_args(&InitArgs::default())
        .unwrap()
        .apply_input(Family::V4, &NatTable::parse(dump))
}

#[test]
fn first_apply_declares_chains_and_adds_both_jumps() {
    let input = apply(EMPTY);
    let lines: Vec<_> = input.lines().collect();
    assert_eq!(lines[0], "*nat");
    assert_eq!(lines[1], ":PROXY_INIT_REDIRECT - [0:0]");
    assert_eq!(lines[2], ":PROXY_INIT_OUTPUT - [0:0]");
    assert_eq!(*lines.last().unwrap(), "COMMIT");
    assert!(input.ends_with("COMMIT\n"));
    let jumps: Vec<_> = lines
        .iter()
        .filter(|l| l.starts_with("-A PREROUTING") || l.starts_with("-A OUTPUT"))
        .copied()
        .collect();
    assert_eq!(
        jumps,
        [
            r#"-A PREROUTING -m comment --comment "linnet-init/install-prerouting" -j PROXY_INIT_REDIRECT"#,
            r#"-A OUTPUT -m comment --comment "linnet-init/install-output" -j PROXY_INIT_OUTPUT"#,
        ]
    );
    // Nothing but our chains is touched.
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("-D") || l.starts_with("-F"))
    );
}

#[test]
fn second_apply_adds_no_second_jump() {
    let input = apply(INSTALLED);
    assert!(!input.contains("-A PREROUTING"), "{input}");
    assert!(!input.contains("-A OUTPUT"), "{input}");
    assert!(!input.contains("-D "), "{input}");
    // The chains are redeclared, which empties them before the rules are
    // added again.
    assert!(input.contains(":PROXY_INIT_REDIRECT - [0:0]\n"));
    assert_eq!(
        input
            .lines()
            .filter(|l| l.starts_with("-A PROXY_INIT_"))
            .count(),
        InitArgs::default().chain_rule_count()
    );
}

#[test]
fn surplus_jumps_are_deleted() {
    let dump = INSTALLED.replace(
        "-A OUTPUT -m comment",
        "-A OUTPUT -j PROXY_INIT_OUTPUT\n-A OUTPUT -m comment",
    );
    let input = apply(&dump);
    let changes: Vec<_> = input
        .lines()
        .filter(|l| {
            l.starts_with("-D") || l.starts_with("-A OUTPUT") || l.starts_with("-A PREROUTING")
        })
        .collect();
    assert_eq!(
        changes,
        [r#"-D OUTPUT -m comment --comment "linnet-init/install-output" -j PROXY_INIT_OUTPUT"#]
    );
}

#[test]
fn remove_deletes_only_our_chains_and_jumps() {
    let input = remove_input(&NatTable::parse(INSTALLED)).unwrap();
    assert_eq!(
        input,
        r#"*nat
-D PREROUTING -m comment --comment "linnet-init/install-prerouting" -j PROXY_INIT_REDIRECT
-D OUTPUT -m comment --comment "linnet-init/install-output" -j PROXY_INIT_OUTPUT
-F PROXY_INIT_REDIRECT
-F PROXY_INIT_OUTPUT
-X PROXY_INIT_REDIRECT
-X PROXY_INIT_OUTPUT
COMMIT
"#
    );
    assert!(!input.contains("someone-else"));
}

#[test]
fn remove_is_a_no_op_when_nothing_is_installed() {
    assert_eq!(remove_input(&NatTable::parse(EMPTY)), None);
    assert_eq!(remove_input(&NatTable::default()), None);
}

#[test]
fn remove_handles_a_chain_without_its_jump() {
    let dump = "*nat\n:OUTPUT ACCEPT [0:0]\n:PROXY_INIT_OUTPUT - [0:0]\nCOMMIT\n";
    assert_eq!(
        remove_input(&NatTable::parse(dump)).unwrap(),
        "*nat\n-F PROXY_INIT_OUTPUT\n-X PROXY_INIT_OUTPUT\nCOMMIT\n"
    );
}

impl InitArgs {
    /// How many rules the defaults put in our chains (for one family).
    fn chain_rule_count(&self) -> usize {
        RuleSet::from_args(self)
            .unwrap()
            .chain_rules(Family::V4)
            .len()
    }
}
