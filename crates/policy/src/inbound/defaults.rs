//! The proxy's own policy for a port the control plane gives none (no
//! policy controller configured, or while it has not answered yet):
//! looked up where the port's server policy would be, right after accept.
//!
//! The names are Linkerd's (`config.linkerd.io/default-inbound-policy`):
//! `all-*` admits every network, `cluster-*` only the cluster's
//! (`POLICY_CLUSTER_NETWORKS`); `*-unauthenticated` any client,
//! `*-authenticated` mesh TLS with any identity; `deny` no one; `audit`
//! everyone, through an audit authorization (admitted, counted as
//! denied). Per port: opaque ports skip detection; a port that requires
//! identity (`INBOUND_PORTS_REQUIRE_IDENTITY`) admits only mesh TLS with
//! an identity, one that requires TLS (`INBOUND_PORTS_REQUIRE_TLS`) only
//! TLS terminated here; neither loosens the default (`deny` stays
//! `deny`, `*-authenticated` stays so on a require-TLS port) and neither
//! widens its networks.

use super::{Authentication, Authorization, HttpPolicy, Meta, Network, Protocol, ServerPolicy};
use ipnet::IpNet;
use std::{fmt, str::FromStr, sync::Arc, time::Duration};

/// A default policy, by Linkerd's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultPolicy {
    /// `all-unauthenticated`: anyone from anywhere.
    AllUnauthenticated,
    /// `all-authenticated`: mesh TLS with any identity, from anywhere.
    AllAuthenticated,
    /// `cluster-unauthenticated`: anyone from the cluster's networks.
    ClusterUnauthenticated,
    /// `cluster-authenticated`: mesh TLS with any identity, from the
    /// cluster's networks.
    ClusterAuthenticated,
    /// `deny`: no one.
    Deny,
    /// `audit`: anyone, admitted by an audit authorization.
    Audit,
}

/// A name that is not a default policy's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown default policy {0:?}")]
pub struct UnknownDefaultPolicy(pub String);

/// The proxy's configured defaults, from which a port's policy is made.
#[derive(Clone, Debug, PartialEq)]
pub struct Defaults {
    /// The default policy.
    pub policy: DefaultPolicy,
    /// The cluster's networks (`POLICY_CLUSTER_NETWORKS`), for `cluster-*`.
    pub cluster_networks: Vec<IpNet>,
    /// How long detection waits for the first bytes.
    pub detect_timeout: Duration,
    /// Ports with detection disabled: their protocol is opaque.
    pub opaque_ports: Ports,
    /// Ports that admit only mesh TLS with an identity.
    pub require_identity_ports: Ports,
    /// Ports that admit only TLS terminated by this proxy.
    pub require_tls_ports: Ports,
}

/// A set of ports, as inclusive ranges (a setting like `8000-9000`
/// stays two numbers).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ports(pub Vec<(u16, u16)>);

impl Ports {
    /// Whether `port` is in the set.
    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| lo <= port && port <= hi)
    }
}

impl<const N: usize> From<[u16; N]> for Ports {
    fn from(ports: [u16; N]) -> Self {
        Self(ports.iter().map(|&p| (p, p)).collect())
    }
}

// === impl DefaultPolicy ===

impl DefaultPolicy {
    /// Every default policy.
    pub const ALL: [Self; 6] = [
        Self::AllUnauthenticated,
        Self::AllAuthenticated,
        Self::ClusterUnauthenticated,
        Self::ClusterAuthenticated,
        Self::Deny,
        Self::Audit,
    ];

    /// Linkerd's name for it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::AllUnauthenticated => "all-unauthenticated",
            Self::AllAuthenticated => "all-authenticated",
            Self::ClusterUnauthenticated => "cluster-unauthenticated",
            Self::ClusterAuthenticated => "cluster-authenticated",
            Self::Deny => "deny",
            Self::Audit => "audit",
        }
    }

    /// How it authenticates clients; `None` for `deny`.
    fn authentication(&self) -> Option<Authentication> {
        match self {
            Self::AllUnauthenticated | Self::ClusterUnauthenticated | Self::Audit => {
                Some(Authentication::Unauthenticated)
            }
            Self::AllAuthenticated | Self::ClusterAuthenticated => {
                Some(Authentication::any_identity())
            }
            Self::Deny => None,
        }
    }
}

impl FromStr for DefaultPolicy {
    type Err = UnknownDefaultPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownDefaultPolicy(s.to_string()))
    }
}

impl fmt::Display for DefaultPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Defaults ===

impl Defaults {
    /// The policy of `port`: the default, with the port's overrides.
    pub fn for_port(&self, port: u16) -> ServerPolicy {
        let name: Arc<str> = Arc::from(self.policy.as_str());
        let authorizations: Arc<[Authorization]> = match self.authentication(port) {
            None => Arc::new([]),
            Some(authentication) => Arc::new([Authorization {
                meta: Meta::Default { name: name.clone() },
                networks: self.networks(),
                authentication,
            }]),
        };
        let protocol = if self.opaque_ports.contains(port) {
            Protocol::Opaque
        } else {
            Protocol::Detect {
                timeout: self.detect_timeout,
                http: Arc::new(HttpPolicy::default_routes(authorizations.clone())),
            }
        };
        ServerPolicy {
            meta: Meta::Default { name },
            protocol,
            authorizations,
        }
    }

    /// The default's authentication, tightened for `port`.
    fn authentication(&self, port: u16) -> Option<Authentication> {
        let base = self.policy.authentication()?;
        if self.require_identity_ports.contains(port) {
            return Some(Authentication::any_identity());
        }
        if self.require_tls_ports.contains(port) && base == Authentication::Unauthenticated {
            return Some(Authentication::TlsUnauthenticated);
        }
        Some(base)
    }

    fn networks(&self) -> Vec<Network> {
        match self.policy {
            DefaultPolicy::ClusterUnauthenticated | DefaultPolicy::ClusterAuthenticated => self
                .cluster_networks
                .iter()
                .copied()
                .map(Network::from)
                .collect(),
            _ => Network::all().into(),
        }
    }
}

#[cfg(test)]
mod tests;
