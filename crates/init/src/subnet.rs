//! Subnets (CIDR blocks) whose traffic bypasses the proxy, as the flags take
//! them: a comma-separated list mixing IPv4 and IPv6, e.g.
//! `10.0.0.0/8,fd00::/8`.
//!
//! Each subnet belongs to one address family and ends up only in that
//! family's rules: `iptables` gets the IPv4 ones, `ip6tables` the IPv6 ones.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::backend::Family;
use crate::error::ValueError;

/// An IPv4 or IPv6 subnet: an address and a prefix length.
///
/// A bare address means that single host (`/32` or `/128`). Host bits
/// below the prefix are kept as written; `iptables` masks them itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subnet {
    addr: IpAddr,
    prefix: u8,
}

// === impl Subnet ===

impl Subnet {
    /// The subnet `addr/prefix`, or `None` when the prefix is longer than
    /// the address family allows.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        (prefix <= max_prefix(addr)).then_some(Self { addr, prefix })
    }

    /// The address part.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The address family whose rules this subnet belongs in.
    pub fn family(&self) -> Family {
        match self.addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// Always written with its prefix, e.g. `10.0.0.0/8` or `fd00::/8`.
impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let bad = || ValueError::Subnet(s.to_string());
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let prefix = match prefix {
            None => max_prefix(addr),
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                // More than three digits cannot be a valid prefix either way.
                p.parse::<u8>()
                    .map_err(|_| ValueError::PrefixTooLong(s.to_string()))?
            }
            Some(_) => return Err(bad()),
        };
        Self::new(addr, prefix).ok_or_else(|| ValueError::PrefixTooLong(s.to_string()))
    }
}

/// A comma-separated list of subnets, in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubnetList(Vec<Subnet>);

// === impl SubnetList ===

impl SubnetList {
    /// All subnets, in the order given.
    pub fn subnets(&self) -> &[Subnet] {
        &self.0
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The subnets of one address family, in the order given.
    pub fn of_family(&self, family: Family) -> impl Iterator<Item = &Subnet> + '_ {
        self.0.iter().filter(move |s| s.family() == family)
    }
}

impl From<Vec<Subnet>> for SubnetList {
    fn from(subnets: Vec<Subnet>) -> Self {
        Self(subnets)
    }
}

impl FromIterator<Subnet> for SubnetList {
    fn from_iter<I: IntoIterator<Item = Subnet>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

/// Written as the flags take it, e.g. `10.0.0.0/8,fd00::/8`.
impl fmt::Display for SubnetList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, subnet) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{subnet}")?;
        }
        Ok(())
    }
}

impl FromStr for SubnetList {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::parse)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_families() {
        let list: SubnetList = "10.0.0.0/8, fd00::/8 ,192.168.1.7".parse().unwrap();
        let v4: Vec<String> = list.of_family(Family::V4).map(|s| s.to_string()).collect();
        let v6: Vec<String> = list.of_family(Family::V6).map(|s| s.to_string()).collect();
        assert_eq!(v4, ["10.0.0.0/8", "192.168.1.7/32"]);
        assert_eq!(v6, ["fd00::/8"]);
        assert_eq!(list.to_string(), "10.0.0.0/8,fd00::/8,192.168.1.7/32");
    }

    #[test]
    fn empty_text_is_an_empty_list() {
        assert!("".parse::<SubnetList>().unwrap().is_empty());
    }

    #[test]
    fn rejects_bad_subnets() {
        for bad in [
            "10.0.0/8",
            "10.0.0.0/",
            "10.0.0.0/x",
            "example.com/8",
            "/8",
            "fd00::/-1",
        ] {
            assert_eq!(
                bad.parse::<Subnet>(),
                Err(ValueError::Subnet(bad.into())),
                "{bad:?}"
            );
        }
        for long in ["10.0.0.0/33", "fd00::/129", "10.0.0.0/1000"] {
            assert_eq!(
                long.parse::<Subnet>(),
                Err(ValueError::PrefixTooLong(long.into())),
                "{long:?}"
            );
        }
        let err = "10.0.0.0/8,nope".parse::<SubnetList>().unwrap_err();
        assert!(err.to_string().contains("`nope`"), "{err}");
    }

    #[test]
    fn zero_prefix_is_everything() {
        let s: Subnet = "0.0.0.0/0".parse().unwrap();
        assert_eq!(s.prefix(), 0);
        let s: Subnet = "::/0".parse().unwrap();
        assert_eq!(s.family(), Family::V6);
    }
}
