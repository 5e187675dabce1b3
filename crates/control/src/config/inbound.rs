//! Inbound policy as the mesh file says it: for each workload's port, the
//! server the proxy's inbound stack enforces before a connection or
//! request reaches the application — its protocol, who may connect, its
//! routes (each with its own authorizations and filters) and its rate
//! limit — and, for every port the file names no server for, a default
//! policy by Linkerd's names.
//!
//! `crate::policy` turns these into `InboundServerPolicies` messages;
//! [`parse`] reads them from the file.

use super::{Filters, GrpcMatch, HttpMatch, Protocol};
use ipnet::IpNet;
use serde::Deserialize;
use std::collections::BTreeMap;

pub(super) mod parse;

/// Linkerd's default inbound policies: what a port the file names no
/// server for admits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultPolicy {
    /// Anyone, meshed or not, from anywhere (Linkerd's default).
    #[default]
    AllUnauthenticated,
    /// Meshed clients (any identity), from anywhere.
    AllAuthenticated,
    /// Anyone, meshed or not, from the cluster's networks.
    ClusterUnauthenticated,
    /// Meshed clients (any identity), from the cluster's networks.
    ClusterAuthenticated,
    /// Nobody.
    Deny,
    /// Anyone, but every connection and request is logged and counted as
    /// if denied: to see what `deny` would refuse before turning it on.
    Audit,
}

impl DefaultPolicy {
    /// Linkerd's name for it, as the file writes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::AllUnauthenticated => "all-unauthenticated",
            Self::AllAuthenticated => "all-authenticated",
            Self::ClusterUnauthenticated => "cluster-unauthenticated",
            Self::ClusterAuthenticated => "cluster-authenticated",
            Self::Deny => "deny",
            Self::Audit => "audit",
        }
    }

    /// The authorizations it stands for, each named after the policy;
    /// `cluster` is where the cluster-* policies admit clients from.
    pub fn authorizations(self, cluster: &[IpNet]) -> Vec<Authorization> {
        let (networks, clients) = match self {
            Self::AllUnauthenticated | Self::Audit => (Vec::new(), Clients::Unauthenticated),
            Self::AllAuthenticated => (Vec::new(), Clients::any_identity()),
            Self::ClusterUnauthenticated => (cluster.to_vec(), Clients::Unauthenticated),
            Self::ClusterAuthenticated => (cluster.to_vec(), Clients::any_identity()),
            Self::Deny => return Vec::new(),
        };
        vec![Authorization {
            name: self.name().to_string(),
            networks,
            except: Vec::new(),
            clients,
        }]
    }
}

/// Linkerd's default cluster networks: the private IPv4 ranges, the
/// carrier-grade NAT range and IPv6 unique local addresses.
pub const DEFAULT_CLUSTER_NETWORKS: [&str; 5] = [
    "10.0.0.0/8",
    "100.64.0.0/10",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fd00::/8",
];

/// [`DEFAULT_CLUSTER_NETWORKS`], parsed.
pub fn default_cluster_networks() -> Vec<IpNet> {
    DEFAULT_CLUSTER_NETWORKS
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// A workload's inbound policy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Workload {
    /// The policy of ports without a server here; the file's when unset.
    pub default_inbound_policy: Option<DefaultPolicy>,
    /// Servers by port.
    pub ports: BTreeMap<u16, Server>,
}

/// A workload's port: its protocol, who may connect, its routes and its
/// rate limit.
#[derive(Clone, Debug, PartialEq)]
pub struct Server {
    /// Its name, for the proxy's metrics and logs: the file's `name`, or
    /// `<workload>:<port>`.
    pub name: String,
    /// The protocol of the port.
    pub protocol: Protocol,
    /// Who may connect; nobody when empty. Routes without their own
    /// authorizations take these.
    pub authorizations: Vec<Authorization>,
    /// HTTP routes (gRPC ones on a gRPC server), in file order; none is
    /// one route that takes every request with the server's
    /// authorizations.
    pub routes: Vec<InboundRoute>,
    /// The server's HTTP rate limit (HTTP servers only).
    pub rate_limit: Option<RateLimit>,
}

/// One rule admitting clients.
#[derive(Clone, Debug, PartialEq)]
pub struct Authorization {
    /// Its name, for metrics and logs: the file's `name`, or
    /// `<workload>:<port>:<index>` (`<workload>:<port>:<route>:<index>`
    /// for a route's own), or the default policy's name.
    pub name: String,
    /// Client networks admitted; all (IPv4 and IPv6) when empty.
    pub networks: Vec<IpNet>,
    /// Parts of those networks not admitted; each lies inside one of them.
    pub except: Vec<IpNet>,
    /// Which clients are admitted from those networks.
    pub clients: Clients,
}

/// Which clients an authorization admits.
#[derive(Clone, Debug, PartialEq)]
pub enum Clients {
    /// Any client, meshed or not, TLS or not.
    Unauthenticated,
    /// Clients whose TLS the proxy terminates, with a client identity or
    /// without one.
    Tls,
    /// Meshed clients with one of these identities, or an identity under
    /// one of these suffixes. The empty suffix (`"*"` in the file) is
    /// every identity.
    Meshed {
        /// Client identities admitted.
        identities: Vec<String>,
        /// Client identity suffixes admitted
        /// (`ns.serviceaccount.identity.linkerd.cluster.local`).
        suffixes: Vec<String>,
    },
}

impl Clients {
    /// Any meshed client, whatever its identity.
    pub fn any_identity() -> Self {
        Self::Meshed {
            identities: Vec::new(),
            suffixes: vec![String::new()],
        }
    }
}

/// An inbound HTTP or gRPC route: which requests it takes, what it does
/// to them and who may send them.
#[derive(Clone, Debug, PartialEq)]
pub struct InboundRoute {
    /// Its name, for metrics and logs; unique on the server.
    pub name: String,
    /// The hosts (`:authority`) it takes; any when empty.
    pub hosts: Vec<HostMatch>,
    /// An HTTP route's request matches (any of them); none matches every
    /// request.
    pub matches: Vec<HttpMatch>,
    /// A gRPC route's request matches (any of them); none matches every
    /// call.
    pub grpc_matches: Vec<GrpcMatch>,
    /// Request header edits, and a redirect (HTTP) or injected failure.
    pub filters: Filters,
    /// Who may send requests on it: the server's authorizations when
    /// unset; nobody when empty.
    pub authorizations: Option<Vec<Authorization>>,
}

/// A host name to match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostMatch {
    /// Exactly this name.
    Exact(String),
    /// Any name under this one (`*.example.com` is `example.com`).
    Suffix(String),
}

/// A server's local HTTP rate limit, in requests per second.
#[derive(Clone, Debug, PartialEq)]
pub struct RateLimit {
    /// Its name, for metrics and logs: the file's `name`, or the server's.
    pub name: String,
    /// All clients together; unlimited when unset.
    pub total: Option<u32>,
    /// Each client identity (unauthenticated clients share one limit);
    /// unlimited when unset.
    pub identity: Option<u32>,
    /// Limits of their own for some identities, instead of `identity`.
    pub overrides: Vec<RateLimitOverride>,
}

/// A rate limit for some client identities.
#[derive(Clone, Debug, PartialEq)]
pub struct RateLimitOverride {
    /// Requests per second for these identities, instead of the
    /// `identity` limit.
    pub requests_per_second: u32,
    /// The client identities it applies to; never empty.
    pub identities: Vec<String>,
}
