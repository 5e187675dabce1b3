//! `InboundServerPolicies`: the `Server` a proxy's inbound stack enforces
//! on a workload's port, before a connection or request reaches the
//! application. The proxy detects (or is told) the protocol, checks the
//! connection against the server's authorizations (opaque and TLS) or
//! each request against its route's (HTTP and gRPC), applies the route's
//! filters and the server's rate limit.
//!
//! What the file names is sent with `Resource` metadata in the group
//! `policy.linkerd.io` and the workload as the namespace: routes as
//! `HTTPRoute`/`GRPCRoute` by their name, authorizations as
//! `AuthorizationPolicy` by theirs (`<workload>:<port>:<index>` unless
//! named), the rate limit as `HTTPLocalRateLimitPolicy`. A port the file
//! names no server for gets its default policy's server, with `Default`
//! metadata named after the policy (`audit` is how the proxy knows to
//! admit and log).

use super::{
    DETECT_TIMEOUT, named, pd,
    routes::{
        grpc_failure, grpc_matches, http_failure, http_matches, prefix_match, redirect,
        request_headers,
    },
};
use crate::{
    Metrics, Store,
    config::{Authorization, Clients, HostMatch, InboundRoute, Mesh, Protocol, RateLimit, Server},
    store::{Messages, changes},
};
use linkerd2_proxy_api::{
    grpc_route::GrpcRouteMatch,
    http_route,
    inbound::{
        self, HttpLocalRateLimit, PortSpec, authn, http_local_rate_limit as rl,
        proxy_protocol as in_proto,
    },
    meta::{Metadata, Resource, metadata},
    net::IpNetwork,
};
use std::collections::HashMap;
use tonic::{Request, Response, Status};

#[cfg(test)]
mod tests;

/// The group of Linkerd's policy resources, which the proxy's metrics
/// name.
const POLICY_GROUP: &str = "policy.linkerd.io";

/// How a server's parts are named in metadata: the workload (sent as the
/// namespace of resources), or a default policy.
#[derive(Clone, Copy)]
enum Origin<'a> {
    File(&'a str),
    Default,
}

impl Origin<'_> {
    fn meta(self, kind: &str, name: &str) -> Option<Metadata> {
        match self {
            Origin::File(workload) => Some(Metadata {
                kind: Some(metadata::Kind::Resource(Resource {
                    group: POLICY_GROUP.into(),
                    kind: kind.into(),
                    name: name.into(),
                    namespace: workload.into(),
                    section: String::new(),
                    port: 0,
                })),
            }),
            Origin::Default => named(name),
        }
    }

    fn labels(self, kind: &str, name: &str) -> HashMap<String, String> {
        let pairs = match self {
            Origin::File(_) => vec![("group", POLICY_GROUP), ("kind", kind), ("name", name)],
            Origin::Default => vec![("kind", "default"), ("name", name)],
        };
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

/// The server for a workload's port: the file's, or its default policy's.
pub(super) fn server(mesh: &Mesh, workload: &str, port: u16) -> inbound::Server {
    match mesh
        .workloads
        .get(workload)
        .and_then(|w| w.ports.get(&port))
    {
        Some(s) => file_server(Origin::File(workload), s),
        None => {
            let policy = mesh.default_inbound_policy(workload);
            let s = Server {
                name: policy.name().to_string(),
                protocol: Protocol::Detect,
                authorizations: policy.authorizations(&mesh.cluster_networks),
                routes: Vec::new(),
                rate_limit: None,
            };
            file_server(Origin::Default, &s)
        }
    }
}

fn file_server(origin: Origin<'_>, s: &Server) -> inbound::Server {
    let authorizations = authzs(origin, &s.authorizations);
    inbound::Server {
        protocol: Some(protocol(origin, s, &authorizations)),
        server_ips: Vec::new(),
        authorizations,
        labels: origin.labels("server", &s.name),
    }
}

fn protocol(
    origin: Origin<'_>,
    s: &Server,
    server_authz: &[inbound::Authz],
) -> inbound::ProxyProtocol {
    let http_routes = || http_routes(origin, s, server_authz);
    let rate_limit = || s.rate_limit.as_ref().map(|r| rate_limit(origin, r));
    let kind = match s.protocol {
        Protocol::Detect => in_proto::Kind::Detect(in_proto::Detect {
            timeout: pd(DETECT_TIMEOUT),
            http_routes: http_routes(),
            http_local_rate_limit: rate_limit(),
        }),
        Protocol::Http1 => in_proto::Kind::Http1(in_proto::Http1 {
            routes: http_routes(),
            local_rate_limit: rate_limit(),
        }),
        Protocol::Http2 => in_proto::Kind::Http2(in_proto::Http2 {
            routes: http_routes(),
            local_rate_limit: rate_limit(),
        }),
        Protocol::Grpc => in_proto::Kind::Grpc(in_proto::Grpc {
            routes: grpc_routes(origin, s, server_authz),
        }),
        Protocol::Opaque => in_proto::Kind::Opaque(in_proto::Opaque {}),
        Protocol::Tls => in_proto::Kind::Tls(in_proto::Tls {}),
    };
    inbound::ProxyProtocol { kind: Some(kind) }
}

/// A route's authorizations: its own, or the server's.
fn route_authz(
    origin: Origin<'_>,
    r: &InboundRoute,
    server_authz: &[inbound::Authz],
) -> Vec<inbound::Authz> {
    match &r.authorizations {
        Some(own) => authzs(origin, own),
        None => server_authz.to_vec(),
    }
}

fn hosts(list: &[HostMatch]) -> Vec<http_route::HostMatch> {
    use http_route::host_match::{Match, Suffix};
    list.iter()
        .map(|h| http_route::HostMatch {
            r#match: Some(match h {
                HostMatch::Exact(n) => Match::Exact(n.clone()),
                HostMatch::Suffix(n) => Match::Suffix(Suffix {
                    reverse_labels: n.rsplit('.').map(String::from).collect(),
                }),
            }),
        })
        .collect()
}

fn http_routes(
    origin: Origin<'_>,
    s: &Server,
    server_authz: &[inbound::Authz],
) -> Vec<inbound::HttpRoute> {
    use inbound::http_route::{Filter, Rule, filter::Kind};
    if s.routes.is_empty() {
        return vec![inbound::HttpRoute {
            metadata: named("default"),
            hosts: Vec::new(),
            authorizations: server_authz.to_vec(),
            rules: vec![Rule {
                matches: vec![prefix_match("/")],
                filters: Vec::new(),
            }],
        }];
    }
    s.routes
        .iter()
        .map(|r| {
            let f = &r.filters;
            let filters = [
                f.request_headers
                    .as_ref()
                    .map(|e| Kind::RequestHeaderModifier(request_headers(e))),
                f.redirect.as_ref().map(|x| Kind::Redirect(redirect(x))),
                f.fail
                    .as_ref()
                    .map(|x| Kind::FailureInjector(http_failure(x))),
            ];
            inbound::HttpRoute {
                metadata: origin.meta("HTTPRoute", &r.name),
                hosts: hosts(&r.hosts),
                authorizations: route_authz(origin, r, server_authz),
                rules: vec![Rule {
                    matches: http_matches(&r.matches),
                    filters: filters
                        .into_iter()
                        .flatten()
                        .map(|k| Filter { kind: Some(k) })
                        .collect(),
                }],
            }
        })
        .collect()
}

fn grpc_routes(
    origin: Origin<'_>,
    s: &Server,
    server_authz: &[inbound::Authz],
) -> Vec<inbound::GrpcRoute> {
    use inbound::grpc_route::{Filter, Rule, filter::Kind};
    if s.routes.is_empty() {
        return vec![inbound::GrpcRoute {
            metadata: named("default"),
            hosts: Vec::new(),
            authorizations: server_authz.to_vec(),
            rules: vec![Rule {
                matches: vec![GrpcRouteMatch::default()],
                filters: Vec::new(),
            }],
        }];
    }
    s.routes
        .iter()
        .map(|r| {
            let f = &r.filters;
            let filters = [
                f.request_headers
                    .as_ref()
                    .map(|e| Kind::RequestHeaderModifier(request_headers(e))),
                f.fail
                    .as_ref()
                    .map(|x| Kind::FailureInjector(grpc_failure(x))),
            ];
            inbound::GrpcRoute {
                metadata: origin.meta("GRPCRoute", &r.name),
                hosts: hosts(&r.hosts),
                authorizations: route_authz(origin, r, server_authz),
                rules: vec![Rule {
                    matches: grpc_matches(&r.grpc_matches),
                    filters: filters
                        .into_iter()
                        .flatten()
                        .map(|k| Filter { kind: Some(k) })
                        .collect(),
                }],
            }
        })
        .collect()
}

fn rate_limit(origin: Origin<'_>, r: &RateLimit) -> HttpLocalRateLimit {
    let limit = |n: u32| rl::Limit {
        requests_per_second: n,
    };
    HttpLocalRateLimit {
        metadata: origin.meta("HTTPLocalRateLimitPolicy", &r.name),
        total: r.total.map(limit),
        identity: r.identity.map(limit),
        overrides: r
            .overrides
            .iter()
            .map(|o| rl::Override {
                limit: Some(limit(o.requests_per_second)),
                clients: Some(rl::r#override::ClientIdentities {
                    identities: o
                        .identities
                        .iter()
                        .map(|i| inbound::Identity { name: i.clone() })
                        .collect(),
                }),
            })
            .collect(),
    }
}

fn authzs(origin: Origin<'_>, list: &[Authorization]) -> Vec<inbound::Authz> {
    list.iter().map(|a| authz(origin, a)).collect()
}

/// Each network with the excepts inside it; all of IPv4 and IPv6 when
/// the authorization names none.
fn networks(a: &Authorization) -> Vec<inbound::Network> {
    let all = [
        ipnet::IpNet::V4(ipnet::Ipv4Net::default()),
        ipnet::IpNet::V6(ipnet::Ipv6Net::default()),
    ];
    let nets = if a.networks.is_empty() {
        &all[..]
    } else {
        &a.networks[..]
    };
    nets.iter()
        .map(|n| inbound::Network {
            net: Some(IpNetwork::from(*n)),
            except: a
                .except
                .iter()
                .filter(|x| n.contains(*x) || x.contains(n))
                .map(|x| IpNetwork::from(*x))
                .collect(),
        })
        .collect()
}

fn authz(origin: Origin<'_>, a: &Authorization) -> inbound::Authz {
    use authn::permit_mesh_tls::{Clients as C, PermitClientIdentities};
    let mesh_tls = |clients| {
        authn::Permit::MeshTls(authn::PermitMeshTls {
            clients: Some(clients),
        })
    };
    let permit = match &a.clients {
        Clients::Unauthenticated => authn::Permit::Unauthenticated(authn::PermitUnauthenticated {}),
        Clients::Tls => mesh_tls(C::Unauthenticated(authn::PermitUnauthenticated {})),
        Clients::Meshed {
            identities,
            suffixes,
        } => mesh_tls(C::Identities(PermitClientIdentities {
            identities: identities
                .iter()
                .map(|i| inbound::Identity { name: i.clone() })
                .collect(),
            suffixes: suffixes
                .iter()
                .map(|s| inbound::IdentitySuffix {
                    parts: s
                        .split('.')
                        .filter(|p| !p.is_empty())
                        .map(String::from)
                        .collect(),
                })
                .collect(),
        })),
    };
    inbound::Authz {
        networks: networks(a),
        authentication: Some(inbound::Authn {
            permit: Some(permit),
        }),
        labels: origin.labels("AuthorizationPolicy", &a.name),
        metadata: origin.meta("AuthorizationPolicy", &a.name),
    }
}

/// The inbound policy service.
#[derive(Clone, Debug)]
pub struct Inbound {
    pub(crate) store: Store,
    pub(crate) metrics: Metrics,
}

fn port_spec(spec: &PortSpec) -> Result<(String, u16), Status> {
    let port = u16::try_from(spec.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| Status::invalid_argument(format!("port {} is not a TCP port", spec.port)))?;
    Ok((spec.workload.clone(), port))
}

#[tonic::async_trait]
impl inbound::inbound_server_policies_server::InboundServerPolicies for Inbound {
    type WatchPortStream = Messages<inbound::Server>;

    async fn get_port(&self, req: Request<PortSpec>) -> Result<Response<inbound::Server>, Status> {
        self.metrics.request("InboundServerPolicies.GetPort");
        let (workload, port) = port_spec(req.get_ref())?;
        Ok(Response::new(server(
            &self.store.current(),
            &workload,
            port,
        )))
    }

    async fn watch_port(
        &self,
        req: Request<PortSpec>,
    ) -> Result<Response<Self::WatchPortStream>, Status> {
        self.metrics.request("InboundServerPolicies.WatchPort");
        let (workload, port) = port_spec(req.get_ref())?;
        let guard = self.metrics.watch("InboundServerPolicies.WatchPort");
        Ok(Response::new(changes(
            self.store.subscribe(),
            move |mesh| server(mesh, &workload, port),
            guard,
        )))
    }
}
