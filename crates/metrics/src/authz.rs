//! The inbound policy's metrics, with Linkerd's names and labels: what
//! each server's authorizations allowed and denied, per connection
//! (`inbound_tcp_authz_*`) and per HTTP request (`inbound_http_authz_*`),
//! and what its local rate limit refused
//! (`inbound_http_local_ratelimit_total`).
//!
//! `target_addr` and `client_id` are chosen by clients, so they are
//! bounded ([`crate::bounded`]): an inbound connection leases its values
//! once, when it is authorized ([`AuthzMetrics::conn`]); its series are
//! resolved when they are counted. The server, route, authorization and
//! rate-limit labels come from the control plane's policy: their number
//! is bounded by its configuration.

use crate::{
    AddrLabel,
    bounded::{self, Bounded, Bounds, LabelValues, Series, Text, Value},
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use std::{net::SocketAddr, sync::Arc};

/// A server (a port's policy), as its labels name it.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabels {
    /// `policy.linkerd.io`, or empty for a default policy.
    pub srv_group: Arc<str>,
    /// `server`, or `default` for a default policy.
    pub srv_kind: Arc<str>,
    /// Its name (a default policy's: `all-unauthenticated`, `deny`, ...).
    pub srv_name: Arc<str>,
    /// The port it serves.
    pub srv_port: u16,
}

/// An inbound route.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Its API group.
    pub route_group: Arc<str>,
    /// `HTTPRoute`, `GRPCRoute`, or `default`.
    pub route_kind: Arc<str>,
    /// Its name.
    pub route_name: Arc<str>,
}

/// An authorization.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthzLabels {
    /// Its API group.
    pub authz_group: Arc<str>,
    /// `authorizationpolicy`, `serverauthorization`, or `default`.
    pub authz_kind: Arc<str>,
    /// Its name.
    pub authz_name: Arc<str>,
}

/// A local rate limit.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RateLimitLabels {
    /// Its API group.
    pub rl_group: Arc<str>,
    /// `HTTPLocalRateLimitPolicy`.
    pub rl_kind: Arc<str>,
    /// Its name.
    pub rl_name: Arc<str>,
}

/// What a connection contributes to every authorization label set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnLabels {
    target_addr: Bounded<AddrLabel>,
    /// `true` (mesh mTLS terminated here), `disabled` or `no_identity`.
    tls: &'static str,
    client_id: Option<Bounded<Text>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TcpAllowLabels {
    #[prometheus(flatten)]
    conn: ConnLabels,
    #[prometheus(flatten)]
    srv: ServerLabels,
    #[prometheus(flatten)]
    authz: AuthzLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TcpDenyLabels {
    #[prometheus(flatten)]
    conn: ConnLabels,
    #[prometheus(flatten)]
    srv: ServerLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpAllowLabels {
    #[prometheus(flatten)]
    conn: ConnLabels,
    #[prometheus(flatten)]
    srv: ServerLabels,
    #[prometheus(flatten)]
    route: RouteLabels,
    #[prometheus(flatten)]
    authz: AuthzLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpDenyLabels {
    #[prometheus(flatten)]
    conn: ConnLabels,
    #[prometheus(flatten)]
    srv: ServerLabels,
    #[prometheus(flatten)]
    route: RouteLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RateLimitedLabels {
    #[prometheus(flatten)]
    conn: ConnLabels,
    #[prometheus(flatten)]
    srv: ServerLabels,
    #[prometheus(flatten)]
    rl: RateLimitLabels,
    /// Which limit refused the request: `total`, `identity`, `override`.
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeysFullLabels {
    #[prometheus(flatten)]
    srv: ServerLabels,
    #[prometheus(flatten)]
    rl: RateLimitLabels,
}

/// The inbound policy's metric families; cheap to clone.
#[derive(Clone, Debug)]
pub struct AuthzMetrics(Arc<Families>);

#[derive(Debug)]
struct Families {
    tcp_allow: bounded::Family<TcpAllowLabels, Counter>,
    tcp_deny: bounded::Family<TcpDenyLabels, Counter>,
    tcp_terminate: bounded::Family<TcpDenyLabels, Counter>,
    http_allow: bounded::Family<HttpAllowLabels, Counter>,
    http_deny: bounded::Family<HttpDenyLabels, Counter>,
    rate_limited: bounded::Family<RateLimitedLabels, Counter>,
    keys_full: Family<KeysFullLabels, Counter>,
    target_addr: LabelValues<AddrLabel>,
    client_id: LabelValues<Text>,
}

/// One connection's share of the labels: counts what the policy decides
/// for it, and keeps its label values from eviction while it lives.
#[derive(Debug)]
pub struct AuthzConn {
    metrics: AuthzMetrics,
    labels: ConnLabels,
    _target: Value<AddrLabel>,
    _client_id: Option<Value<Text>>,
}

// === impl AuthzMetrics ===

impl AuthzMetrics {
    /// Creates the families and registers them in `registry`.
    pub fn register(registry: &mut Registry, bounds: &Bounds) -> Self {
        let m = Families {
            tcp_allow: bounds.family(),
            tcp_deny: bounds.family(),
            tcp_terminate: bounds.family(),
            http_allow: bounds.family(),
            http_deny: bounds.family(),
            rate_limited: bounds.family(),
            keys_full: Family::default(),
            target_addr: bounds.values("inbound_authz", "target_addr"),
            client_id: bounds.values("inbound_authz", "client_id"),
        };
        registry.register(
            "inbound_tcp_authz_allow",
            "Total count of connections that an authorization allowed",
            m.tcp_allow.clone(),
        );
        registry.register(
            "inbound_tcp_authz_deny",
            "Total count of connections that the server's policy refused",
            m.tcp_deny.clone(),
        );
        registry.register(
            "inbound_tcp_authz_terminate",
            "Total count of open connections closed because a policy change no longer allows them",
            m.tcp_terminate.clone(),
        );
        registry.register(
            "inbound_http_authz_allow",
            "Total count of HTTP requests that an authorization allowed",
            m.http_allow.clone(),
        );
        registry.register(
            "inbound_http_authz_deny",
            "Total count of HTTP requests that the route's policy refused",
            m.http_deny.clone(),
        );
        registry.register(
            "inbound_http_local_ratelimit",
            "Total count of HTTP requests refused by a local rate limit",
            m.rate_limited.clone(),
        );
        registry.register(
            "inbound_http_local_ratelimit_identities_full",
            "Total count of requests from a client identity that found the rate limit's table of identities full, and shared one bucket with the other newcomers",
            m.keys_full.clone(),
        );
        Self(Arc::new(m))
    }

    /// The labels of a connection to `target` from a client with the TLS
    /// status `tls` and, if it proved one, the mesh identity `client_id`.
    pub fn conn(
        &self,
        target: SocketAddr,
        tls: &'static str,
        client_id: Option<&str>,
    ) -> AuthzConn {
        let target = self.0.target_addr.get(target);
        let client_id = client_id.map(|id| self.0.client_id.get(id));
        AuthzConn {
            labels: ConnLabels {
                target_addr: target.label().clone(),
                tls,
                client_id: client_id.as_ref().map(|v| v.label().clone()),
            },
            metrics: self.clone(),
            _target: target,
            _client_id: client_id,
        }
    }
}

// === impl AuthzConn ===

impl AuthzConn {
    /// A connection that `authz` allowed.
    pub fn tcp_allow(&self, srv: &ServerLabels, authz: &AuthzLabels) {
        let labels = TcpAllowLabels {
            conn: self.labels.clone(),
            srv: srv.clone(),
            authz: authz.clone(),
        };
        self.metrics.0.tcp_allow.get(&labels).inc();
    }

    /// A connection that the server's policy refused.
    pub fn tcp_deny(&self, srv: &ServerLabels) {
        let labels = self.deny_labels(srv);
        self.metrics.0.tcp_deny.get(&labels).inc();
    }

    /// An open connection closed because the policy changed.
    pub fn tcp_terminate(&self, srv: &ServerLabels) {
        let labels = self.deny_labels(srv);
        self.metrics.0.tcp_terminate.get(&labels).inc();
    }

    /// A request that `authz` allowed on `route`.
    pub fn http_allow(&self, srv: &ServerLabels, route: &RouteLabels, authz: &AuthzLabels) {
        self.http_allow_series(srv, route, authz).inc();
    }

    /// The series counting requests that `authz` allowed on `route`: a
    /// connection whose requests keep taking one route keeps it, and
    /// counts into it without resolving the labels again.
    pub fn http_allow_series(
        &self,
        srv: &ServerLabels,
        route: &RouteLabels,
        authz: &AuthzLabels,
    ) -> Series<Counter> {
        let labels = HttpAllowLabels {
            conn: self.labels.clone(),
            srv: srv.clone(),
            route: route.clone(),
            authz: authz.clone(),
        };
        self.metrics.0.http_allow.get(&labels)
    }

    /// A request that `route`'s policy refused.
    pub fn http_deny(&self, srv: &ServerLabels, route: &RouteLabels) {
        let labels = HttpDenyLabels {
            conn: self.labels.clone(),
            srv: srv.clone(),
            route: route.clone(),
        };
        self.metrics.0.http_deny.get(&labels).inc();
    }

    /// A request that the `limit` (`total`, `identity`, `override`) of the
    /// rate limit `rl` refused.
    pub fn rate_limited(&self, srv: &ServerLabels, rl: &RateLimitLabels, limit: &'static str) {
        let labels = RateLimitedLabels {
            conn: self.labels.clone(),
            srv: srv.clone(),
            rl: rl.clone(),
            limit,
        };
        self.metrics.0.rate_limited.get(&labels).inc();
    }

    /// A request from an identity that found the rate limit's table of
    /// identities full.
    pub fn rate_limit_identities_full(&self, srv: &ServerLabels, rl: &RateLimitLabels) {
        self.metrics
            .0
            .keys_full
            .get_or_create(&KeysFullLabels {
                srv: srv.clone(),
                rl: rl.clone(),
            })
            .inc();
    }

    fn deny_labels(&self, srv: &ServerLabels) -> TcpDenyLabels {
        TcpDenyLabels {
            conn: self.labels.clone(),
            srv: srv.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn srv(name: &str) -> ServerLabels {
        ServerLabels {
            srv_group: "".into(),
            srv_kind: "default".into(),
            srv_name: name.into(),
            srv_port: 8080,
        }
    }

    #[test]
    fn labels_are_linkerds() {
        let mut registry = crate::registry();
        let bounds = Bounds::register(&mut registry, Default::default());
        let m = AuthzMetrics::register(&mut registry, &bounds);
        let conn = m.conn(
            "10.0.0.1:8080".parse().unwrap(),
            "true",
            Some("a.ns.serviceaccount"),
        );
        let authz = AuthzLabels {
            authz_group: "policy.linkerd.io".into(),
            authz_kind: "authorizationpolicy".into(),
            authz_name: "web".into(),
        };
        let route = RouteLabels {
            route_group: "policy.linkerd.io".into(),
            route_kind: "HTTPRoute".into(),
            route_name: "admin".into(),
        };
        conn.tcp_allow(&srv("all-authenticated"), &authz);
        conn.http_allow(&srv("web"), &route, &authz);
        conn.http_deny(&srv("web"), &route);
        conn.http_deny(&srv("web"), &route);
        let plain = m.conn("10.0.0.1:9090".parse().unwrap(), "disabled", None);
        plain.tcp_deny(&srv("deny"));
        plain.tcp_terminate(&srv("deny"));
        let rl = RateLimitLabels {
            rl_group: "policy.linkerd.io".into(),
            rl_kind: "HTTPLocalRateLimitPolicy".into(),
            rl_name: "web-rl".into(),
        };
        plain.rate_limited(&srv("web"), &rl, "total");
        plain.rate_limit_identities_full(&srv("web"), &rl);
        let text = crate::encode(&registry);
        for line in [
            r#"inbound_tcp_authz_allow_total{target_addr="10.0.0.1:8080",tls="true",client_id="a.ns.serviceaccount",srv_group="",srv_kind="default",srv_name="all-authenticated",srv_port="8080",authz_group="policy.linkerd.io",authz_kind="authorizationpolicy",authz_name="web"} 1"#,
            r#"inbound_http_authz_deny_total{target_addr="10.0.0.1:8080",tls="true",client_id="a.ns.serviceaccount",srv_group="",srv_kind="default",srv_name="web",srv_port="8080",route_group="policy.linkerd.io",route_kind="HTTPRoute",route_name="admin"} 2"#,
            r#"inbound_tcp_authz_deny_total{target_addr="10.0.0.1:9090",tls="disabled",client_id="",srv_group="",srv_kind="default",srv_name="deny",srv_port="8080"} 1"#,
            r#"inbound_tcp_authz_terminate_total{target_addr="10.0.0.1:9090",tls="disabled",client_id="",srv_group="",srv_kind="default",srv_name="deny",srv_port="8080"} 1"#,
            r#"inbound_http_local_ratelimit_total{target_addr="10.0.0.1:9090",tls="disabled",client_id="",srv_group="",srv_kind="default",srv_name="web",srv_port="8080",rl_group="policy.linkerd.io",rl_kind="HTTPLocalRateLimitPolicy",rl_name="web-rl",limit="total"} 1"#,
            r#"inbound_http_local_ratelimit_identities_full_total{srv_group="",srv_kind="default",srv_name="web",srv_port="8080",rl_group="policy.linkerd.io",rl_kind="HTTPLocalRateLimitPolicy",rl_name="web-rl"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line}\n{text}");
        }
    }
}
