//! One inbound port's server policy, as the proxy acts on it.
//!
//! Where it sits on the inbound path: accept → **the port's server
//! policy** (this model, read from the port's watch) → refused at once if
//! it admits no one ([`ServerPolicy::denies_all`]) → protocol detection
//! and mesh TLS → for bytes that are not HTTP, connection authorization
//! against the server's authorizations ([`authz`]); for HTTP, per
//! request: route match ([`select`]) → route authorization ([`authz`]) →
//! rate limit ([`rate_limit`]) → client to the application.
//!
//! The model comes from the control plane's `InboundServerPolicies`
//! watch ([`proto::from_proto`]), or from the proxy's configured default
//! when there is none ([`defaults`]). Everything is checked and compiled
//! there, once, so that the request path only compares. The route and
//! match types are the outbound ones ([`crate::outbound`]): both sides
//! match requests the same way, by the same Gateway API precedence.

use std::{sync::Arc, time::Duration};

pub mod authz;
pub mod defaults;
pub mod proto;
pub mod rate_limit;
pub mod select;

pub use self::{
    authz::{
        Authentication, Authorization, Client, ClientTls, Network, Suffix, Verdict, authorize,
    },
    defaults::{DefaultPolicy, Defaults, Ports},
    rate_limit::{Admitted, LimitKind, LocalRateLimit, MAX_RATE_LIMIT_KEYS, RateLimited},
    select::{Filters, Selected},
};
pub use crate::outbound::{GrpcFilter, GrpcMatch, HostMatch, HttpFilter, HttpMatch, Meta};

/// How long detection waits for the first bytes when the control plane
/// does not say: Linkerd's 10 s.
pub const DEFAULT_DETECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An inbound port's policy: what it speaks, who may connect, and the
/// HTTP routes with their own authorizations.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerPolicy {
    /// The server (a `Server` resource, or a default), for the `srv_*`
    /// metric labels.
    pub meta: Meta,
    /// What the port speaks, with its HTTP part.
    pub protocol: Protocol,
    /// The server-level authorizations: what an opaque or TLS connection
    /// is checked against (HTTP requests are checked against their
    /// route's, which the control plane fills with the server's too).
    pub authorizations: Arc<[Authorization]>,
}

/// What a port speaks.
#[derive(Clone, Debug, PartialEq)]
pub enum Protocol {
    /// Read the first bytes to tell HTTP from anything else.
    Detect {
        /// How long the control plane says to wait for enough bytes.
        /// (Kept, not used: the proxy waits `INBOUND_DETECT_TIMEOUT`, its
        /// own setting, on every port.)
        timeout: Duration,
        /// The routes for detected HTTP (1 or 2).
        http: Arc<HttpPolicy>,
    },
    /// HTTP/1, declared: no detection.
    Http1(Arc<HttpPolicy>),
    /// HTTP/2, declared.
    Http2(Arc<HttpPolicy>),
    /// gRPC, declared: requests take [`HttpPolicy::grpc_routes`].
    Grpc(Arc<HttpPolicy>),
    /// Opaque TCP: only the server-level authorizations apply.
    Opaque,
    /// TLS that the application terminates: passed through, only the
    /// server-level authorizations apply.
    Tls,
}

/// The HTTP part of a port's policy, shared by every connection to it.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpPolicy {
    /// The routes of a Detect, HTTP/1 or HTTP/2 port.
    pub http_routes: Vec<HttpRoute>,
    /// The routes of a gRPC port.
    pub grpc_routes: Vec<GrpcRoute>,
    /// The port's local rate limit, shared by every connection (its
    /// buckets live inside).
    pub rate_limit: Option<Arc<LocalRateLimit>>,
}

/// An inbound HTTP route (`inbound.HttpRoute`).
#[derive(Clone, Debug, PartialEq)]
pub struct HttpRoute {
    /// For the `route_*` metric labels.
    pub meta: Meta,
    /// The hosts it serves; empty: any host.
    pub hosts: Vec<HostMatch>,
    /// Who may use it: a request on this route is checked against these
    /// alone (the control plane includes the server's own).
    pub authorizations: Arc<[Authorization]>,
    /// Its rules, in order (ties go to the earlier one).
    pub rules: Vec<HttpRule>,
}

/// One rule of an inbound HTTP route.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpRule {
    /// Any one of these must fit; empty: every request fits.
    pub matches: Vec<HttpMatch>,
    /// Applied in order before the request goes to the application.
    pub filters: Arc<[HttpFilter]>,
}

/// An inbound gRPC route (`inbound.GrpcRoute`).
#[derive(Clone, Debug, PartialEq)]
pub struct GrpcRoute {
    /// For the `route_*` metric labels.
    pub meta: Meta,
    /// The hosts it serves; empty: any host.
    pub hosts: Vec<HostMatch>,
    /// Who may use it.
    pub authorizations: Arc<[Authorization]>,
    /// Its rules, in order.
    pub rules: Vec<GrpcRule>,
}

/// One rule of an inbound gRPC route.
#[derive(Clone, Debug, PartialEq)]
pub struct GrpcRule {
    /// Any one of these must fit; empty: every call fits.
    pub matches: Vec<GrpcMatch>,
    /// Applied in order before the call goes to the application.
    pub filters: Arc<[GrpcFilter]>,
}

// === impl ServerPolicy ===

impl ServerPolicy {
    /// The HTTP part, for Detect/Http1/Http2/Grpc; `None` for Opaque/Tls.
    pub fn http(&self) -> Option<&Arc<HttpPolicy>> {
        match &self.protocol {
            Protocol::Detect { http, .. }
            | Protocol::Http1(http)
            | Protocol::Http2(http)
            | Protocol::Grpc(http) => Some(http),
            Protocol::Opaque | Protocol::Tls => None,
        }
    }

    /// Whether no client at all could be admitted: no server-level
    /// authorization and no route authorization (the "deny" policy).
    /// Connections under such a policy are refused before detection.
    pub fn denies_all(&self) -> bool {
        self.authorizations.is_empty() && self.route_authorizations().all(<[_]>::is_empty)
    }

    /// Whether any authorization, server-level or in any route, permits
    /// `client`: false means nothing the client could send would be
    /// admitted. (The proxy refuses before detection only what
    /// [`Self::denies_all`] says, so that a refused HTTP request gets its
    /// 403 and the reason.)
    pub fn admits_somewhere(&self, client: &Client<'_>) -> bool {
        self.authorizations.iter().any(|a| a.permits(client))
            || self
                .route_authorizations()
                .any(|authzs| authzs.iter().any(|a| a.permits(client)))
    }

    /// Keeps `prev`'s rate limiter (with its buckets) when the
    /// rate-limit configuration is unchanged, so that a re-sent policy
    /// does not reset the limits.
    pub fn carry_state_from(&mut self, prev: &ServerPolicy) {
        let Some(prev_limit) = prev.http().and_then(|h| h.rate_limit.as_ref()) else {
            return;
        };
        let http = match &mut self.protocol {
            Protocol::Detect { http, .. }
            | Protocol::Http1(http)
            | Protocol::Http2(http)
            | Protocol::Grpc(http) => http,
            Protocol::Opaque | Protocol::Tls => return,
        };
        let same = http
            .rate_limit
            .as_ref()
            .is_some_and(|new| Arc::ptr_eq(new, prev_limit) || **new == **prev_limit);
        if same {
            Arc::make_mut(http).rate_limit = Some(prev_limit.clone());
        }
    }

    /// Every route's authorizations, HTTP and gRPC.
    fn route_authorizations(&self) -> impl Iterator<Item = &[Authorization]> {
        let http = self.http().map(|h| &**h);
        let http_routes = http.map_or(&[][..], |h| &h.http_routes[..]);
        let grpc_routes = http.map_or(&[][..], |h| &h.grpc_routes[..]);
        http_routes
            .iter()
            .map(|r| &*r.authorizations)
            .chain(grpc_routes.iter().map(|r| &*r.authorizations))
    }
}

// === impl HttpPolicy ===

impl HttpPolicy {
    /// A policy with one route, [`HttpRoute::default_route`] (and its
    /// gRPC twin) carrying `authorizations`: "the server's authorizations
    /// for every request", for a server the control plane gave no routes.
    pub fn default_routes(authorizations: Arc<[Authorization]>) -> Self {
        Self {
            http_routes: vec![HttpRoute::default_route(authorizations.clone())],
            grpc_routes: vec![GrpcRoute::default_route(authorizations)],
            rate_limit: None,
        }
    }
}

// === impl HttpRoute ===

impl HttpRoute {
    /// The route a server without routes gets: `Meta::Default{"default"}`,
    /// any host, one rule matching every path (the prefix `/`).
    pub fn default_route(authorizations: Arc<[Authorization]>) -> Self {
        Self {
            meta: default_meta(),
            hosts: Vec::new(),
            authorizations,
            rules: vec![HttpRule {
                matches: vec![HttpMatch {
                    path: Some(crate::outbound::PathMatch::prefix("/")),
                    ..Default::default()
                }],
                filters: Arc::new([]),
            }],
        }
    }
}

// === impl GrpcRoute ===

impl GrpcRoute {
    /// The gRPC route a server without routes gets: any host, one rule
    /// matching every call.
    pub fn default_route(authorizations: Arc<[Authorization]>) -> Self {
        Self {
            meta: default_meta(),
            hosts: Vec::new(),
            authorizations,
            rules: vec![GrpcRule {
                matches: vec![GrpcMatch::default()],
                filters: Arc::new([]),
            }],
        }
    }
}

fn default_meta() -> Meta {
    Meta::Default {
        name: Arc::from("default"),
    }
}

#[cfg(test)]
mod tests;
