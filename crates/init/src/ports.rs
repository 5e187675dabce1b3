//! Ports and inclusive port ranges as the flags take them (`25,8000-8100`),
//! and their packing into `-m multiport --dports` matches.
//!
//! The syntax is Linkerd's: a list separated by commas, each item a port or
//! `first-last`; blanks around items and empty items are ignored, so
//! `--outbound-ports-to-ignore ""` means "none".

use std::fmt;
use std::str::FromStr;

use crate::error::ValueError;

/// How many port "slots" one `multiport` match may hold. A single port takes
/// one slot and a range takes two; this is the kernel's limit, so longer
/// lists are split over several rules.
pub(crate) const MULTIPORT_SLOTS: usize = 15;

/// An inclusive range of TCP ports; a single port is a range of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    first: u16,
    last: u16,
}

// === impl PortRange ===

impl PortRange {
    /// The range `first..=last`, or `None` when `last < first`.
    pub fn new(first: u16, last: u16) -> Option<Self> {
        (first <= last).then_some(Self { first, last })
    }

    /// The range holding only `port`.
    pub fn single(port: u16) -> Self {
        Self {
            first: port,
            last: port,
        }
    }

    /// The lowest port in the range.
    pub fn first(&self) -> u16 {
        self.first
    }

    /// The highest port in the range.
    pub fn last(&self) -> u16 {
        self.last
    }

    /// Whether `port` falls in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    /// The range as `iptables` writes it: `25` or `8000:8100`.
    pub(crate) fn to_iptables(self) -> String {
        if self.first == self.last {
            self.first.to_string()
        } else {
            format!("{}:{}", self.first, self.last)
        }
    }

    fn slots(self) -> usize {
        if self.first == self.last { 1 } else { 2 }
    }
}

/// Written as the flags take it: `25` or `8000-8100`.
impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl FromStr for PortRange {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        match s.split_once('-') {
            None => parse_port(s).map(Self::single),
            Some((first, last)) => {
                let first = parse_port(first.trim())?;
                let last = parse_port(last.trim())?;
                Self::new(first, last).ok_or_else(|| ValueError::ReversedRange(s.to_string()))
            }
        }
    }
}

/// A decimal port number: digits only (no sign, no blanks), at most 65535.
fn parse_port(s: &str) -> Result<u16, ValueError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ValueError::Port(s.to_string()));
    }
    s.parse().map_err(|_| ValueError::Port(s.to_string()))
}

/// A comma-separated list of ports and port ranges, in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortList(Vec<PortRange>);

// === impl PortList ===

impl PortList {
    /// The ranges, in the order given.
    pub fn ranges(&self) -> &[PortRange] {
        &self.0
    }

    /// Whether the list names no port at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether some range of the list holds `port`.
    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|r| r.contains(port))
    }
}

impl From<Vec<PortRange>> for PortList {
    fn from(ranges: Vec<PortRange>) -> Self {
        Self(ranges)
    }
}

impl FromIterator<PortRange> for PortList {
    fn from_iter<I: IntoIterator<Item = PortRange>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

/// Written as the flags take it, e.g. `25,8000-8100`; empty for no ports.
impl fmt::Display for PortList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, range) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{range}")?;
        }
        Ok(())
    }
}

impl FromStr for PortList {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::parse)
            .collect()
    }
}

/// Packs `ranges` into as few `--dports` arguments as the multiport limit
/// allows, keeping their order. Each returned string is one rule's worth,
/// e.g. `4190,4191,8000:8100`.
pub(crate) fn multiport_chunks(ranges: &[PortRange]) -> Vec<String> {
    let mut chunks = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut used = 0;
    for range in ranges {
        if used + range.slots() > MULTIPORT_SLOTS {
            chunks.push(current.join(","));
            current.clear();
            used = 0;
        }
        current.push(range.to_iptables());
        used += range.slots();
    }
    if !current.is_empty() {
        chunks.push(current.join(","));
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ports_and_ranges() {
        let list: PortList = " 25, 8000-8100 ,,443 ".parse().unwrap();
        assert_eq!(
            list.ranges(),
            &[
                PortRange::single(25),
                PortRange::new(8000, 8100).unwrap(),
                PortRange::single(443)
            ]
        );
        assert_eq!(list.to_string(), "25,8000-8100,443");
        assert!(list.contains(8050));
        assert!(!list.contains(8101));
    }

    #[test]
    fn empty_text_is_an_empty_list() {
        assert!("".parse::<PortList>().unwrap().is_empty());
        assert!(" , ".parse::<PortList>().unwrap().is_empty());
    }

    #[test]
    fn single_port_range_collapses() {
        let r: PortRange = "80-80".parse().unwrap();
        assert_eq!(r, PortRange::single(80));
        assert_eq!(r.to_iptables(), "80");
    }

    #[test]
    fn rejects_bad_ports() {
        for bad in [
            "65536", "-1", "+5", "http", "1.5", "8000-", "-8000", "1-2-3", " ",
        ] {
            assert!(
                matches!(bad.parse::<PortRange>(), Err(ValueError::Port(_))),
                "{bad:?} should not parse"
            );
        }
        assert_eq!(
            "8100-8000".parse::<PortRange>(),
            Err(ValueError::ReversedRange("8100-8000".into()))
        );
        let err = "25,70000".parse::<PortList>().unwrap_err();
        assert_eq!(err, ValueError::Port("70000".into()));
        assert!(err.to_string().contains("`70000`"));
    }

    #[test]
    fn accepts_extremes() {
        assert_eq!(
            "0-65535".parse::<PortRange>().unwrap(),
            PortRange::new(0, 65535).unwrap()
        );
    }

    #[test]
    fn chunks_respect_the_multiport_limit() {
        let singles: Vec<_> = (1..=16).map(PortRange::single).collect();
        let chunks = multiport_chunks(&singles);
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].split(',').count(), 15);
        assert_eq!(chunks[1], "16");

        // Seven ranges take 14 slots; the eighth (2 slots) starts a new rule.
        let ranges: Vec<_> = (0..8)
            .map(|i| PortRange::new(i * 10, i * 10 + 5).unwrap())
            .collect();
        let chunks = multiport_chunks(&ranges);
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[1], "70:75");

        assert!(multiport_chunks(&[]).is_empty());
    }
}
