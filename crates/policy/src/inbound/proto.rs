//! From the control plane's `inbound.Server` to the model the proxy acts
//! on: run once per `InboundServerPolicies.WatchPort` update, off the
//! request path.
//!
//! Nothing here panics, whatever arrives, and nothing malformed widens
//! what is admitted (fail closed): a malformed authorization is dropped
//! (it admits no one), a network whose address or exception is malformed
//! is dropped; a malformed piece of a route (host, match, rule, filter)
//! refuses the whole policy ([`InvalidRoutes`]: dropping it alone could
//! send its requests to a broader route, or skip a failure injection or
//! redirect). Each is reported to the caller's `skipped` with a short
//! reason, which the caller counts. The route pieces shared with
//! outbound (hosts, matches, filters) are converted by the outbound code
//! and report its reasons (`bad_regex`, `bad_header`, `bad_host`, ...:
//! see [`crate::outbound::proto`]); the inbound ones are:
//!
//! | reason | what was dropped |
//! |---|---|
//! | `bad_network` | a network with no or an invalid address, or an invalid exception |
//! | `no_networks` | an authorization with no (usable) network: it would admit no one |
//! | `no_authentication` | an authorization without authentication (or mesh TLS without clients) |
//! | `bad_identity` | an empty identity name |
//! | `bad_suffix` | an identity suffix with an empty part, or one holding `.` or `*` |
//! | `no_rules` | a route with no usable rule |
//! | `bad_detect_timeout` | a detect timeout under 100 ms or over 1 min (clamped) |
//! | `bad_rate_limit` | a rate-limit override with no limit or no identity |
//!
//! A server the control plane gives no routes gets the default route
//! (the server's authorizations for every request).

use super::{
    Authentication, Authorization, DEFAULT_DETECT_TIMEOUT, GrpcRoute, GrpcRule, HostMatch,
    HttpPolicy, HttpRoute, HttpRule, LocalRateLimit, Meta, Network, Protocol, ServerPolicy, Suffix,
};
use crate::outbound::proto::{self as shared, Skip};
use linkerd2_proxy_api::inbound as api;
use std::{
    collections::{BTreeSet, HashMap},
    num::NonZeroU32,
    sync::Arc,
    time::Duration,
};

/// The shortest detect timeout taken as given.
pub const MIN_DETECT_TIMEOUT: Duration = Duration::from_millis(100);
/// The longest detect timeout taken as given.
pub const MAX_DETECT_TIMEOUT: Duration = Duration::from_secs(60);

/// Converts a `Server` message; every malformed piece is dropped and
/// reported to `skipped` with a short static reason (see the module
/// docs). `server_ips` is not read: the proxy serves the pod's own
/// addresses.
pub fn from_proto(
    server: api::Server,
    skipped: &mut dyn FnMut(&'static str),
) -> Result<ServerPolicy, InvalidRoutes> {
    let cx = &mut Cx {
        skipped,
        in_routes: false,
        route_error: None,
    };
    let meta = labels_meta(&server.labels);
    let authorizations = authorizations(server.authorizations, cx);
    let protocol = protocol(server.protocol.and_then(|p| p.kind), &authorizations, cx);
    if let Some(reason) = cx.route_error {
        return Err(InvalidRoutes { reason });
    }
    Ok(ServerPolicy {
        meta,
        protocol,
        authorizations,
    })
}

/// A server policy whose routes (a host, a match, a rule, a filter) are
/// malformed: refused as a whole. Dropping the piece alone could widen
/// what is admitted (a request falling through to a broader route, a
/// failure injection or redirect that no longer happens), so the caller
/// keeps the policy it had (linkerd2-proxy refuses such an update too).
#[derive(Debug, thiserror::Error)]
#[error("the server policy's routes are malformed ({reason}): refused as a whole")]
pub struct InvalidRoutes {
    /// The first malformed piece's reason.
    pub reason: &'static str,
}

/// The caller's `skipped`, logging as it reports; and whether anything
/// dropped was part of a route (which refuses the whole policy).
struct Cx<'a> {
    skipped: &'a mut dyn FnMut(&'static str),
    /// Converting a route's hosts, matches or filters.
    in_routes: bool,
    /// The first thing dropped while `in_routes`.
    route_error: Option<&'static str>,
}

impl Skip for Cx<'_> {
    fn skip(&mut self, reason: &'static str) {
        tracing::debug!(reason, "dropped a malformed piece of an inbound policy");
        if self.in_routes {
            self.route_error.get_or_insert(reason);
        }
        (self.skipped)(reason);
    }
}

impl Cx<'_> {
    /// Runs `f` converting route pieces, or (`false`) not.
    fn routes<T>(&mut self, in_routes: bool, f: impl FnOnce(&mut Self) -> T) -> T {
        let was = std::mem::replace(&mut self.in_routes, in_routes);
        let t = f(self);
        self.in_routes = was;
        t
    }
}

fn protocol(
    kind: Option<api::proxy_protocol::Kind>,
    server_authzs: &Arc<[Authorization]>,
    cx: &mut Cx<'_>,
) -> Protocol {
    use api::proxy_protocol::Kind;
    let http = |routes, limit: Option<api::HttpLocalRateLimit>, cx: &mut Cx<'_>| {
        Arc::new(HttpPolicy {
            rate_limit: limit.map(|l| Arc::new(rate_limit(l, cx))),
            ..http_routes(routes, server_authzs, cx)
        })
    };
    match kind {
        None => Protocol::Detect {
            timeout: DEFAULT_DETECT_TIMEOUT,
            http: Arc::new(http_routes(Vec::new(), server_authzs, cx)),
        },
        Some(Kind::Detect(d)) => Protocol::Detect {
            timeout: detect_timeout(d.timeout, cx),
            http: http(d.http_routes, d.http_local_rate_limit, cx),
        },
        Some(Kind::Http1(h)) => Protocol::Http1(http(h.routes, h.local_rate_limit, cx)),
        Some(Kind::Http2(h)) => Protocol::Http2(http(h.routes, h.local_rate_limit, cx)),
        Some(Kind::Grpc(g)) => Protocol::Grpc(Arc::new(grpc_routes(g.routes, server_authzs, cx))),
        Some(Kind::Opaque(_)) => Protocol::Opaque,
        Some(Kind::Tls(_)) => Protocol::Tls,
    }
}

fn detect_timeout(d: Option<prost_types::Duration>, cx: &mut Cx<'_>) -> Duration {
    let Some(t) = shared::timeout(d, cx) else {
        return DEFAULT_DETECT_TIMEOUT;
    };
    if !(MIN_DETECT_TIMEOUT..=MAX_DETECT_TIMEOUT).contains(&t) {
        cx.skip("bad_detect_timeout");
    }
    t.clamp(MIN_DETECT_TIMEOUT, MAX_DETECT_TIMEOUT)
}

// === metadata ===

/// A `Server`'s (or a label-only authorization's) description from its
/// labels `group`, `kind`, `name`: a default when `kind` is `default` or
/// there is no name.
fn labels_meta(labels: &HashMap<String, String>) -> Meta {
    let get = |k: &str| labels.get(k).map(String::as_str).unwrap_or_default();
    let (kind, name) = (get("kind"), get("name"));
    if kind == "default" || kind.is_empty() || name.is_empty() {
        return Meta::Default {
            name: Arc::from(name),
        };
    }
    Meta::Resource {
        group: Arc::from(get("group")),
        kind: Arc::from(kind),
        name: Arc::from(name),
        namespace: Arc::from(""),
        section: Arc::from(""),
        port: 0,
    }
}

// === authorizations ===

fn authorizations(authzs: Vec<api::Authz>, cx: &mut Cx<'_>) -> Arc<[Authorization]> {
    authzs
        .into_iter()
        .filter_map(|a| authorization(a, cx))
        .collect()
}

fn authorization(a: api::Authz, cx: &mut Cx<'_>) -> Option<Authorization> {
    let networks: Vec<Network> = a
        .networks
        .into_iter()
        .filter_map(|n| network(n, cx))
        .collect();
    if networks.is_empty() {
        cx.skip("no_networks");
        return None;
    }
    let authentication = authentication(a.authentication, cx)?;
    let meta = match a.metadata {
        Some(m) => shared::meta(Some(m)),
        None => labels_meta(&a.labels),
    };
    Some(Authorization {
        meta,
        networks,
        authentication,
    })
}

/// A network; `None` (counted) when its address or any exception is
/// malformed: dropping only the exception would widen it.
fn network(n: api::Network, cx: &mut Cx<'_>) -> Option<Network> {
    let net = n.net.and_then(|n| ipnet::IpNet::try_from(n).ok());
    let except: Option<Vec<_>> = n
        .except
        .into_iter()
        .map(|e| ipnet::IpNet::try_from(e).ok())
        .collect();
    match (net, except) {
        (Some(net), Some(except)) => Some(Network { net, except }),
        _ => {
            cx.skip("bad_network");
            None
        }
    }
}

fn authentication(a: Option<api::Authn>, cx: &mut Cx<'_>) -> Option<Authentication> {
    use api::authn::{Permit, permit_mesh_tls::Clients};
    match a.and_then(|a| a.permit) {
        Some(Permit::Unauthenticated(_)) => Some(Authentication::Unauthenticated),
        Some(Permit::MeshTls(m)) => match m.clients {
            Some(Clients::Unauthenticated(_)) => Some(Authentication::TlsUnauthenticated),
            Some(Clients::Identities(ids)) => Some(Authentication::TlsAuthenticated {
                identities: identities(ids.identities, cx),
                suffixes: ids
                    .suffixes
                    .into_iter()
                    .filter_map(|s| {
                        let suffix = Suffix::new(&s.parts);
                        if suffix.is_none() {
                            cx.skip("bad_suffix");
                        }
                        suffix
                    })
                    .collect(),
            }),
            None => {
                cx.skip("no_authentication");
                None
            }
        },
        None => {
            cx.skip("no_authentication");
            None
        }
    }
}

fn identities(ids: Vec<api::Identity>, cx: &mut Cx<'_>) -> BTreeSet<Arc<str>> {
    ids.into_iter()
        .filter_map(|id| {
            if id.name.is_empty() {
                cx.skip("bad_identity");
                return None;
            }
            Some(Arc::from(id.name))
        })
        .collect()
}

// === routes ===

/// A Detect/HTTP port's routes; the default route when none were given.
fn http_routes(
    routes: Vec<api::HttpRoute>,
    server_authzs: &Arc<[Authorization]>,
    cx: &mut Cx<'_>,
) -> HttpPolicy {
    if routes.is_empty() {
        return HttpPolicy {
            grpc_routes: Vec::new(),
            ..HttpPolicy::default_routes(server_authzs.clone())
        };
    }
    let http_routes = routes
        .into_iter()
        .filter_map(|r| {
            let (meta, hosts, authorizations, rules) = route_parts(
                r.metadata,
                r.hosts,
                r.authorizations,
                r.rules,
                http_rule,
                cx,
            )?;
            Some(HttpRoute {
                meta,
                hosts,
                authorizations,
                rules,
            })
        })
        .collect();
    HttpPolicy {
        http_routes,
        grpc_routes: Vec::new(),
        rate_limit: None,
    }
}

/// A gRPC port's routes; the default route when none were given.
fn grpc_routes(
    routes: Vec<api::GrpcRoute>,
    server_authzs: &Arc<[Authorization]>,
    cx: &mut Cx<'_>,
) -> HttpPolicy {
    if routes.is_empty() {
        return HttpPolicy {
            http_routes: Vec::new(),
            ..HttpPolicy::default_routes(server_authzs.clone())
        };
    }
    let grpc_routes = routes
        .into_iter()
        .filter_map(|r| {
            let (meta, hosts, authorizations, rules) = route_parts(
                r.metadata,
                r.hosts,
                r.authorizations,
                r.rules,
                grpc_rule,
                cx,
            )?;
            Some(GrpcRoute {
                meta,
                hosts,
                authorizations,
                rules,
            })
        })
        .collect();
    HttpPolicy {
        http_routes: Vec::new(),
        grpc_routes,
        rate_limit: None,
    }
}

/// A route's description, hosts, authorizations and rules.
type RouteParts<R> = (Meta, Vec<HostMatch>, Arc<[Authorization]>, Vec<R>);

/// What an HTTP or gRPC route is made of, converted: `None` (counted as a
/// route error, which refuses the policy) when its hosts or a rule are
/// malformed, or no rule is left. Its authorizations are not route
/// errors: a malformed one only narrows the route.
fn route_parts<P, R>(
    metadata: Option<linkerd2_proxy_api::meta::Metadata>,
    hosts: Vec<linkerd2_proxy_api::http_route::HostMatch>,
    authzs: Vec<api::Authz>,
    rules: Vec<P>,
    rule: fn(P, &mut Cx<'_>) -> Option<R>,
    cx: &mut Cx<'_>,
) -> Option<RouteParts<R>> {
    let (hosts, rules) = cx.routes(true, |cx| {
        let hosts = shared::hosts(hosts, cx)?;
        let rules: Vec<R> = rules.into_iter().filter_map(|r| rule(r, cx)).collect();
        if rules.is_empty() {
            cx.skip("no_rules");
            return None;
        }
        Some((hosts, rules))
    })?;
    let authorizations = cx.routes(false, |cx| authorizations(authzs, cx));
    Some((shared::meta(metadata), hosts, authorizations, rules))
}

/// A rule; `None` (counted) when one of its matches is unusable. A
/// filter that is unusable is dropped alone (counted), as outbound does.
fn http_rule(rule: api::http_route::Rule, cx: &mut Cx<'_>) -> Option<HttpRule> {
    use api::http_route::filter::Kind as F;
    let matches = rule
        .matches
        .into_iter()
        .map(|m| shared::http_match(m, cx))
        .collect::<Option<Vec<_>>>()?;
    let filters: Vec<_> = rule
        .filters
        .into_iter()
        .filter_map(|f| match f.kind {
            Some(F::FailureInjector(fi)) => shared::http_failure_injector(fi, cx),
            Some(F::RequestHeaderModifier(m)) => Some(crate::outbound::HttpFilter::RequestHeaders(
                shared::request_header_modifier(m, cx),
            )),
            Some(F::Redirect(r)) => {
                shared::redirect(r, cx).map(crate::outbound::HttpFilter::Redirect)
            }
            None => {
                cx.skip("no_filter");
                None
            }
        })
        .collect();
    Some(HttpRule {
        matches,
        filters: filters.into(),
    })
}

fn grpc_rule(rule: api::grpc_route::Rule, cx: &mut Cx<'_>) -> Option<GrpcRule> {
    use api::grpc_route::filter::Kind as F;
    let matches = rule
        .matches
        .into_iter()
        .map(|m| shared::grpc_match(m, cx))
        .collect::<Option<Vec<_>>>()?;
    let filters: Vec<_> = rule
        .filters
        .into_iter()
        .filter_map(|f| match f.kind {
            Some(F::FailureInjector(fi)) => shared::grpc_failure_injector(fi, cx),
            Some(F::RequestHeaderModifier(m)) => Some(crate::outbound::GrpcFilter::RequestHeaders(
                shared::request_header_modifier(m, cx),
            )),
            None => {
                cx.skip("no_filter");
                None
            }
        })
        .collect();
    Some(GrpcRule {
        matches,
        filters: filters.into(),
    })
}

// === rate limit ===

/// A rate limit; a limit of 0 is no limit (as Linkerd reads it).
fn rate_limit(l: api::HttpLocalRateLimit, cx: &mut Cx<'_>) -> LocalRateLimit {
    let rps = |l: Option<api::http_local_rate_limit::Limit>| {
        l.and_then(|l| NonZeroU32::new(l.requests_per_second))
    };
    let overrides = l
        .overrides
        .into_iter()
        .filter_map(|o| {
            let ids: Vec<Arc<str>> = o
                .clients
                .map(|c| c.identities)
                .unwrap_or_default()
                .into_iter()
                .filter(|id| !id.name.is_empty())
                .map(|id| Arc::from(id.name))
                .collect();
            match rps(o.limit) {
                Some(rps) if !ids.is_empty() => Some((ids, rps)),
                _ => {
                    cx.skip("bad_rate_limit");
                    None
                }
            }
        })
        .collect();
    LocalRateLimit::new(
        shared::meta(l.metadata),
        rps(l.total),
        rps(l.identity),
        overrides,
    )
}

#[cfg(test)]
mod tests;
