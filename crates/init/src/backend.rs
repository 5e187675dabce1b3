//! Which `iptables` programs to run: one set per address family, in the
//! variant (`--iptables-mode`) the node uses.
//!
//! Only the `-save` and `-restore` programs are used: the current `nat`
//! table is read with `iptables-save -t nat` and every change is made by a
//! single `iptables-restore --noflush`, which applies as one transaction.

use std::fmt;

/// An IP address family; each has its own `nat` table and programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4, programmed with `iptables`.
    V4,
    /// IPv6, programmed with `ip6tables`.
    V6,
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        })
    }
}

/// The `iptables` variant to drive, as Linkerd's `--iptables-mode`.
///
/// Rules written through one backend are invisible to the other, so this
/// must match what the node's own networking (kube-proxy, the CNI) uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, clap::ValueEnum)]
pub enum IptablesMode {
    /// `iptables`, `iptables-save`, ...: whichever variant the system's
    /// alternatives point at.
    #[default]
    Plain,
    /// `iptables-nft`, `iptables-nft-save`, ...: the nf_tables backend.
    Nft,
    /// `iptables-legacy`, `iptables-legacy-save`, ...: the x_tables backend.
    Legacy,
}

// === impl IptablesMode ===

impl IptablesMode {
    /// The program that dumps a table, e.g. `ip6tables-nft-save`.
    pub fn save_program(self, family: Family) -> &'static str {
        match (self, family) {
            (Self::Plain, Family::V4) => "iptables-save",
            (Self::Plain, Family::V6) => "ip6tables-save",
            (Self::Nft, Family::V4) => "iptables-nft-save",
            (Self::Nft, Family::V6) => "ip6tables-nft-save",
            (Self::Legacy, Family::V4) => "iptables-legacy-save",
            (Self::Legacy, Family::V6) => "ip6tables-legacy-save",
        }
    }

    /// The program that applies a batch of changes, e.g.
    /// `ip6tables-nft-restore`.
    pub fn restore_program(self, family: Family) -> &'static str {
        match (self, family) {
            (Self::Plain, Family::V4) => "iptables-restore",
            (Self::Plain, Family::V6) => "ip6tables-restore",
            (Self::Nft, Family::V4) => "iptables-nft-restore",
            (Self::Nft, Family::V6) => "ip6tables-nft-restore",
            (Self::Legacy, Family::V4) => "iptables-legacy-restore",
            (Self::Legacy, Family::V6) => "ip6tables-legacy-restore",
        }
    }
}
