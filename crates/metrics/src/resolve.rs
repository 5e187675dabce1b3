//! `name_resolutions_total`: the names the proxy resolves itself (explicit
//! proxy mode's targets, the DNS fallback for names the control plane does
//! not know), by where the answer came from and how the lookup ended.
//!
//! Both labels take a fixed set of values; the name itself is never a
//! label (it is chosen by clients, and logged instead).

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

/// Where a name's answer came from (or was looked for).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Source {
    /// `localhost` and `*.localhost`: always the loopback addresses,
    /// nothing asked (RFC 6761).
    Localhost,
    /// The hosts file (`/etc/hosts`), read as the system's resolver does.
    Hosts,
    /// The system's resolver (`getaddrinfo`: hosts file, DNS, and
    /// whatever else the system is configured with).
    System,
    /// DNS servers, asked by the proxy.
    Dns,
}

impl Source {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Localhost => "localhost",
            Source::Hosts => "hosts",
            Source::System => "system",
            Source::Dns => "dns",
        }
    }
}

impl EncodeLabelValue for Source {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// How a lookup ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Outcome {
    /// At least one address.
    Resolved,
    /// The name has no address (it does not exist, or has no A or AAAA
    /// records).
    NotFound,
    /// No answer in time.
    Timeout,
    /// Any other failure (a server failure, an unreachable server, a
    /// malformed name).
    Error,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Resolved => "resolved",
            Outcome::NotFound => "not_found",
            Outcome::Timeout => "timeout",
            Outcome::Error => "error",
        }
    }
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResolveLabels {
    source: Source,
    outcome: Outcome,
}

/// The resolution counter; cheap to clone (the clones count into the same
/// family).
#[derive(Clone, Debug, Default)]
pub struct ResolveMetrics {
    resolutions: Family<ResolveLabels, Counter>,
}

impl ResolveMetrics {
    /// Creates the family and registers it.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "name_resolutions",
            "Names the proxy resolved itself (explicit proxy mode, the DNS fallback), by source (localhost, hosts, system, dns) and outcome (resolved, not_found, timeout, error)",
            m.resolutions.clone(),
        );
        m
    }

    /// Counts one lookup.
    pub fn resolved(&self, source: Source, outcome: Outcome) {
        self.resolutions
            .get_or_create(&ResolveLabels { source, outcome })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_source_and_outcome() {
        let mut registry = Registry::default();
        let m = ResolveMetrics::register(&mut registry);
        m.resolved(Source::Hosts, Outcome::Resolved);
        m.resolved(Source::Hosts, Outcome::Resolved);
        m.resolved(Source::Dns, Outcome::Timeout);
        let text = crate::encode(&registry);
        assert!(
            text.contains("name_resolutions_total{source=\"hosts\",outcome=\"resolved\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("name_resolutions_total{source=\"dns\",outcome=\"timeout\"} 1"),
            "{text}"
        );
    }
}
