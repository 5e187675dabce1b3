//! The redirect rules, as pure functions from the flags (and the table as
//! it is now) to the text of one `iptables-restore --noflush` call per
//! address family. Nothing here runs a command.
//!
//! Inbound packets enter nat `PREROUTING`, which jumps to
//! `PROXY_INIT_REDIRECT`: ignored ports and source subnets `RETURN`, other
//! TCP is `REDIRECT`ed to the proxy's inbound port. Locally sent packets
//! enter nat `OUTPUT`, which jumps to `PROXY_INIT_OUTPUT`: the proxy's own
//! traffic (by uid/gid), traffic leaving through `lo`, and ignored ports
//! and destination subnets `RETURN`; other TCP goes to the outbound port.
//! Every rule carries a `linnet-init/...` comment so it can be recognised
//! in `iptables-save` output.

use crate::args::InitArgs;
use crate::backend::Family;
use crate::error::InitError;
use crate::ports::{PortList, multiport_chunks};
use crate::saved::NatTable;
use crate::subnet::SubnetList;

/// Our chain for inbound traffic, jumped to from nat `PREROUTING`.
pub const REDIRECT_CHAIN: &str = "PROXY_INIT_REDIRECT";
/// Our chain for locally sent traffic, jumped to from nat `OUTPUT`.
pub const OUTPUT_CHAIN: &str = "PROXY_INIT_OUTPUT";
/// How every comment we write begins.
pub const COMMENT_PREFIX: &str = "linnet-init/";

/// Each of our chains, the built-in chain that jumps to it, and the
/// comment on that jump.
const HOOKS: [(&str, &str, &str); 2] = [
    ("PREROUTING", REDIRECT_CHAIN, "install-prerouting"),
    ("OUTPUT", OUTPUT_CHAIN, "install-output"),
];

/// The validated settings the rules are made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    incoming_proxy_port: u16,
    outgoing_proxy_port: u16,
    proxy_uid: u32,
    proxy_gid: Option<u32>,
    ports_to_redirect: PortList,
    inbound_ports_to_ignore: PortList,
    outbound_ports_to_ignore: PortList,
    subnets_to_ignore: SubnetList,
    outbound_subnets_to_ignore: SubnetList,
}

// === impl RuleSet ===

impl RuleSet {
    /// Checks what the flags' types cannot: the proxy ports must be real,
    /// distinct ports.
    pub fn from_args(args: &InitArgs) -> Result<Self, InitError> {
        check_proxy_port("incoming-proxy-port", args.incoming_proxy_port)?;
        check_proxy_port("outgoing-proxy-port", args.outgoing_proxy_port)?;
        if args.incoming_proxy_port == args.outgoing_proxy_port {
            return Err(InitError::InvalidFlag {
                flag: "outgoing-proxy-port",
                value: args.outgoing_proxy_port.to_string(),
                reason: "it must differ from --incoming-proxy-port".to_string(),
            });
        }
        Ok(Self {
            incoming_proxy_port: args.incoming_proxy_port,
            outgoing_proxy_port: args.outgoing_proxy_port,
            proxy_uid: args.proxy_uid,
            proxy_gid: args.proxy_gid,
            ports_to_redirect: args.ports_to_redirect.clone(),
            inbound_ports_to_ignore: args.inbound_ports_to_ignore.clone(),
            outbound_ports_to_ignore: args.outbound_ports_to_ignore.clone(),
            subnets_to_ignore: args.subnets_to_ignore.clone(),
            outbound_subnets_to_ignore: args.outbound_subnets_to_ignore.clone(),
        })
    }

    /// The rules of our two chains for one family, as `-A CHAIN ...` lines
    /// in the order they are evaluated. Subnets of the other family are
    /// left out.
    pub fn chain_rules(&self, family: Family) -> Vec<String> {
        let mut rules = Vec::new();

        // Inbound. Ignored ports come first: they win over everything.
        for ports in multiport_chunks(self.inbound_ports_to_ignore.ranges()) {
            rules.push(rule(
                REDIRECT_CHAIN,
                &format!("-p tcp -m multiport --dports {ports}"),
                &format!("ignore-port-{ports}"),
                "RETURN",
            ));
        }
        for subnet in self.subnets_to_ignore.of_family(family) {
            rules.push(rule(
                REDIRECT_CHAIN,
                &format!("-s {subnet}"),
                &format!("ignore-subnet-{subnet}"),
                "RETURN",
            ));
        }
        let to_inbound = format!("REDIRECT --to-ports {}", self.incoming_proxy_port);
        if self.ports_to_redirect.is_empty() {
            rules.push(rule(
                REDIRECT_CHAIN,
                "-p tcp",
                "redirect-all-incoming-to-proxy-port",
                &to_inbound,
            ));
        } else {
            for ports in multiport_chunks(self.ports_to_redirect.ranges()) {
                rules.push(rule(
                    REDIRECT_CHAIN,
                    &format!("-p tcp -m multiport --dports {ports}"),
                    &format!("redirect-port-{ports}-to-proxy-port"),
                    &to_inbound,
                ));
            }
        }

        // Outbound. The proxy's own connections must not come back to it.
        rules.push(rule(
            OUTPUT_CHAIN,
            &format!("-m owner --uid-owner {}", self.proxy_uid),
            "ignore-proxy-user-id",
            "RETURN",
        ));
        if let Some(gid) = self.proxy_gid {
            rules.push(rule(
                OUTPUT_CHAIN,
                &format!("-m owner --gid-owner {gid}"),
                "ignore-proxy-group-id",
                "RETURN",
            ));
        }
        rules.push(rule(OUTPUT_CHAIN, "-o lo", "ignore-loopback", "RETURN"));
        for ports in multiport_chunks(self.outbound_ports_to_ignore.ranges()) {
            rules.push(rule(
                OUTPUT_CHAIN,
                &format!("-p tcp -m multiport --dports {ports}"),
                &format!("ignore-port-{ports}"),
                "RETURN",
            ));
        }
        for subnet in self.outbound_subnets_to_ignore.of_family(family) {
            rules.push(rule(
                OUTPUT_CHAIN,
                &format!("-d {subnet}"),
                &format!("ignore-subnet-{subnet}"),
                "RETURN",
            ));
        }
        rules.push(rule(
            OUTPUT_CHAIN,
            "-p tcp",
            "redirect-all-outgoing-to-proxy-port",
            &format!("REDIRECT --to-ports {}", self.outgoing_proxy_port),
        ));
        rules
    }

    /// The `iptables-restore --noflush` input that installs our rules for
    /// one family, given the `nat` table as it is now.
    ///
    /// Declaring our chains creates them, or empties them if they exist, so
    /// their contents are always exactly [`chain_rules`](Self::chain_rules).
    /// The jump from each built-in chain is added only when there is none
    /// yet; surplus jumps (left by an older tool) are deleted, so exactly one
    /// remains. The whole input is one transaction.
    pub fn apply_input(&self, family: Family, current: &NatTable) -> String {
        let mut lines = vec!["*nat".to_string()];
        for (_, chain, _) in HOOKS {
            lines.push(format!(":{chain} - [0:0]"));
        }
        lines.extend(self.chain_rules(family));
        for (builtin, chain, comment) in HOOKS {
            let existing: Vec<_> = current.jumps(builtin, chain).collect();
            match existing.split_first() {
                None => lines.push(rule(builtin, "", comment, chain)),
                Some((_kept, surplus)) => {
                    for r in surplus {
                        lines.push(format!("-D {} {}", r.chain, r.spec));
                    }
                }
            }
        }
        lines.push("COMMIT".to_string());
        lines.join("\n") + "\n"
    }
}

fn check_proxy_port(flag: &'static str, port: u16) -> Result<(), InitError> {
    if port == 0 {
        return Err(InitError::InvalidFlag {
            flag,
            value: port.to_string(),
            reason: "the proxy cannot listen on port 0".to_string(),
        });
    }
    Ok(())
}

/// The `iptables-restore --noflush` input that removes our chains and every
/// rule that jumps into them, and nothing else; `None` when there is
/// nothing of ours in the table.
pub fn remove_input(current: &NatTable) -> Option<String> {
    let ours = [REDIRECT_CHAIN, OUTPUT_CHAIN];
    let is_ours = |name: &str| ours.contains(&name);
    let references: Vec<_> = current
        .rules()
        .iter()
        .filter(|r| !is_ours(&r.chain) && r.target.as_deref().is_some_and(is_ours))
        .collect();
    let chains: Vec<_> = ours.into_iter().filter(|c| current.has_chain(c)).collect();
    if references.is_empty() && chains.is_empty() {
        return None;
    }

    // A chain can only be deleted once nothing refers to it and it is empty
    // (our chains may refer to each other, hence flush all, then delete).
    let mut lines = vec!["*nat".to_string()];
    lines.extend(
        references
            .iter()
            .map(|r| format!("-D {} {}", r.chain, r.spec)),
    );
    lines.extend(chains.iter().map(|c| format!("-F {c}")));
    lines.extend(chains.iter().map(|c| format!("-X {c}")));
    lines.push("COMMIT".to_string());
    Some(lines.join("\n") + "\n")
}

/// One `-A` line with our comment; `matches` may be empty.
fn rule(chain: &str, matches: &str, comment: &str, target: &str) -> String {
    let sep = if matches.is_empty() { "" } else { " " };
    format!(
        "-A {chain}{sep}{matches} -m comment --comment \"{COMMENT_PREFIX}{comment}\" -j {target}"
    )
}

#[cfg(test)]
mod tests;
