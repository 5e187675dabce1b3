//! The flags of `linnet init`, named and defaulted as Linkerd's
//! `proxy-init` so existing pod specs keep working.
//!
//! Lists are comma-separated and may be empty (`--subnets-to-ignore ""`);
//! port lists take ranges (`25,8000-8100`). Every value is parsed into a
//! typed field here, so a bad port or subnet is reported by clap next to the
//! flag and value at fault; what only makes sense across flags is checked by
//! [`RuleSet::from_args`](crate::RuleSet::from_args).

use std::path::PathBuf;

use clap::ArgAction;

use crate::backend::IptablesMode;
use crate::ports::{PortList, PortRange};
use crate::subnet::SubnetList;

/// The proxy's default inbound port (Linkerd's `proxy.ports.inbound`).
pub const DEFAULT_INCOMING_PROXY_PORT: u16 = 4143;
/// The proxy's default outbound port (Linkerd's `proxy.ports.outbound`).
pub const DEFAULT_OUTGOING_PROXY_PORT: u16 = 4140;
/// The uid the proxy runs as by default (Linkerd's `proxy.uid`).
pub const DEFAULT_PROXY_UID: u32 = 2102;
/// Inbound ports never redirected by default: the proxy's control (4190)
/// and admin (4191) ports, and 4567/4568 (Linkerd's default
/// `ignoreInboundPorts`, kept for compatibility).
pub const DEFAULT_INBOUND_PORTS_TO_IGNORE: &str = "4190,4191,4567,4568";
/// Outbound ports never redirected by default (Linkerd's default
/// `ignoreOutboundPorts`).
pub const DEFAULT_OUTBOUND_PORTS_TO_IGNORE: &str = "4567,4568";

/// Redirect the pod's TCP traffic through the Linnet proxy (`linnet init`).
///
/// Inbound TCP (nat `PREROUTING`) is redirected to the proxy's inbound port
/// and outbound TCP (nat `OUTPUT`) to its outbound port, through the chains
/// `PROXY_INIT_REDIRECT` and `PROXY_INIT_OUTPUT`. Running it again replaces
/// the rules instead of adding a second set; `--remove` takes them out.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct InitArgs {
    /// Port the proxy accepts redirected inbound connections on.
    #[arg(long, short = 'p', value_name = "PORT", default_value_t = DEFAULT_INCOMING_PROXY_PORT)]
    pub incoming_proxy_port: u16,

    /// Port the proxy accepts redirected outbound connections on.
    #[arg(long, short = 'o', value_name = "PORT", default_value_t = DEFAULT_OUTGOING_PROXY_PORT)]
    pub outgoing_proxy_port: u16,

    /// User id the proxy runs as. Its own outbound traffic is never
    /// redirected, or it would loop back into itself.
    #[arg(long, short = 'u', value_name = "UID", default_value_t = DEFAULT_PROXY_UID)]
    pub proxy_uid: u32,

    /// Group id whose outbound traffic is not redirected either (optional).
    #[arg(long, short = 'g', value_name = "GID")]
    pub proxy_gid: Option<u32>,

    /// Redirect only inbound connections to these ports and ranges (e.g.
    /// `80,8000-8100`); empty means all ports.
    #[arg(
        long,
        short = 'r',
        value_name = "PORTS",
        default_value = "",
        hide_default_value = true
    )]
    pub ports_to_redirect: PortList,

    /// Inbound ports and ranges that go straight to the application.
    /// Takes precedence over every other setting.
    #[arg(long, value_name = "PORTS", default_value = DEFAULT_INBOUND_PORTS_TO_IGNORE)]
    pub inbound_ports_to_ignore: PortList,

    /// Outbound destination ports and ranges that bypass the proxy.
    #[arg(long, value_name = "PORTS", default_value = DEFAULT_OUTBOUND_PORTS_TO_IGNORE)]
    pub outbound_ports_to_ignore: PortList,

    /// Inbound connections from these source subnets (IPv4 and/or IPv6
    /// CIDRs) go straight to the application.
    #[arg(
        long,
        value_name = "CIDRS",
        default_value = "",
        hide_default_value = true
    )]
    pub subnets_to_ignore: SubnetList,

    /// Outbound connections to these destination subnets bypass the proxy.
    /// (Not in Linkerd's proxy-init, which has only the inbound kind.)
    #[arg(
        long,
        value_name = "CIDRS",
        default_value = "",
        hide_default_value = true
    )]
    pub outbound_subnets_to_ignore: SubnetList,

    /// Also program IPv6 (ip6tables); `--ipv6=false` leaves it alone, and
    /// IPv6 subnets are then ignored.
    #[arg(
        long,
        value_name = "BOOL",
        action = ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_value_t = true,
        default_missing_value = "true"
    )]
    pub ipv6: bool,

    /// Which iptables variant to drive; it must be the one the node uses.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = IptablesMode::Plain)]
    pub iptables_mode: IptablesMode,

    /// Print the iptables-restore input that would be applied, change nothing.
    #[arg(long, alias = "simulate")]
    pub dry_run: bool,

    /// Remove our chains and the jumps into them instead of installing them.
    #[arg(long)]
    pub remove: bool,

    /// Network namespace (a path such as /proc/PID/ns/net or
    /// /var/run/netns/NAME) to program, entered with `nsenter`.
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,

    /// Pass `-w` so iptables-restore waits for the xtables lock instead of
    /// failing when another program holds it.
    #[arg(long, short = 'w')]
    pub use_wait_flag: bool,

    /// Set the conntrack CLOSE_WAIT timeout
    /// (net.netfilter.nf_conntrack_tcp_timeout_close_wait); 0 leaves it.
    #[arg(long, value_name = "SECS")]
    pub timeout_close_wait_secs: Option<u32>,
}

/// The same values as `linnet init` with no flags.
impl Default for InitArgs {
    fn default() -> Self {
        Self {
            incoming_proxy_port: DEFAULT_INCOMING_PROXY_PORT,
            outgoing_proxy_port: DEFAULT_OUTGOING_PROXY_PORT,
            proxy_uid: DEFAULT_PROXY_UID,
            proxy_gid: None,
            ports_to_redirect: PortList::default(),
            inbound_ports_to_ignore: [4190, 4191, 4567, 4568]
                .into_iter()
                .map(PortRange::single)
                .collect(),
            outbound_ports_to_ignore: [4567, 4568].into_iter().map(PortRange::single).collect(),
            subnets_to_ignore: SubnetList::default(),
            outbound_subnets_to_ignore: SubnetList::default(),
            ipv6: true,
            iptables_mode: IptablesMode::Plain,
            dry_run: false,
            remove: false,
            netns: None,
            use_wait_flag: false,
            timeout_close_wait_secs: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// Stands in for the `linnet` binary, which flattens `InitArgs` into its
    /// `init` subcommand.
    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        init: InitArgs,
    }

    fn parse(args: &[&str]) -> Result<InitArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("init").chain(args.iter().copied())).map(|c| c.init)
    }

    #[test]
    fn defaults_match_linkerd_and_default_impl() {
        let args = parse(&[]).unwrap();
        assert_eq!(args, InitArgs::default());
        assert_eq!(args.incoming_proxy_port, 4143);
        assert_eq!(args.outgoing_proxy_port, 4140);
        assert_eq!(args.proxy_uid, 2102);
        assert_eq!(
            args.inbound_ports_to_ignore.to_string(),
            "4190,4191,4567,4568"
        );
        assert_eq!(args.outbound_ports_to_ignore.to_string(), "4567,4568");
        assert!(args.subnets_to_ignore.is_empty());
        assert!(args.ipv6);
        assert!(!args.dry_run && !args.remove);
    }

    #[test]
    fn parses_linkerd_style_flags() {
        let args = parse(&[
            "--incoming-proxy-port",
            "5143",
            "-o",
            "5140",
            "--proxy-uid=1000",
            "--proxy-gid",
            "1001",
            "--inbound-ports-to-ignore",
            "4190,4191,25,8000-8100",
            "--outbound-ports-to-ignore",
            "",
            "--subnets-to-ignore",
            "10.0.0.0/8,fd00::/8",
            "--ipv6=false",
            "--iptables-mode",
            "nft",
            "--simulate",
            "-w",
        ])
        .unwrap();
        assert_eq!(args.incoming_proxy_port, 5143);
        assert_eq!(args.outgoing_proxy_port, 5140);
        assert_eq!(args.proxy_uid, 1000);
        assert_eq!(args.proxy_gid, Some(1001));
        assert!(args.inbound_ports_to_ignore.contains(8050));
        assert!(args.outbound_ports_to_ignore.is_empty());
        assert_eq!(args.subnets_to_ignore.subnets().len(), 2);
        assert!(!args.ipv6);
        assert_eq!(args.iptables_mode, IptablesMode::Nft);
        assert!(args.dry_run);
        assert!(args.use_wait_flag);
    }

    #[test]
    fn ipv6_takes_an_optional_value() {
        assert!(parse(&["--ipv6"]).unwrap().ipv6);
        assert!(parse(&["--ipv6=true"]).unwrap().ipv6);
        assert!(!parse(&["--ipv6=false"]).unwrap().ipv6);
        assert!(parse(&["--ipv6=maybe"]).is_err());
    }

    #[test]
    fn bad_values_name_the_flag_and_the_value() {
        for (args, flag, value) in [
            (
                &["--inbound-ports-to-ignore", "25,70000"][..],
                "--inbound-ports-to-ignore",
                "70000",
            ),
            (
                &["--outbound-ports-to-ignore", "9-1"][..],
                "--outbound-ports-to-ignore",
                "9-1",
            ),
            (
                &["--ports-to-redirect", "http"][..],
                "--ports-to-redirect",
                "http",
            ),
            (
                &["--subnets-to-ignore", "10.0.0.0/33"][..],
                "--subnets-to-ignore",
                "10.0.0.0/33",
            ),
            (
                &["--outbound-subnets-to-ignore", "x"][..],
                "--outbound-subnets-to-ignore",
                "x",
            ),
            (
                &["--incoming-proxy-port", "65536"][..],
                "--incoming-proxy-port",
                "65536",
            ),
            (&["--proxy-uid=-1"][..], "--proxy-uid", "-1"),
            (&["--iptables-mode", "auto"][..], "--iptables-mode", "auto"),
        ] {
            let err = parse(args).unwrap_err().to_string();
            assert!(err.contains(flag), "{args:?}: {err}");
            assert!(err.contains(value), "{args:?}: {err}");
        }
    }
}
