//! Policies: `InboundServerPolicies` (a workload port's protocol and who
//! may connect) and `OutboundPolicies` (a target's protocol, routes to
//! weighted backends, timeouts, retries and failure accrual).

use crate::{
    Metrics, Store,
    config::{self, Authorization, Mesh, Protocol, Service},
    destination::weighted_addr,
    store::{Messages, changes, follow},
};
use linkerd2_proxy_api::{
    destination::WeightedAddr,
    grpc_route::GrpcRouteMatch,
    http_route::{self, HttpRouteMatch, Timeouts, header_match, path_match},
    inbound::{self, PortSpec, authn, proxy_protocol as in_proto},
    meta::{Metadata, Resource, metadata},
    net::IpNetwork,
    outbound::{
        self, Backend, FailureAccrual, OutboundPolicy, TrafficSpec, backend,
        proxy_protocol as out_proto, traffic_spec,
    },
};
use std::{collections::HashMap, net::SocketAddr, time::Duration};
use tonic::{Request, Response, Status};

/// How long proxies may wait to detect a protocol.
const DETECT_TIMEOUT: Duration = Duration::from_secs(10);

fn pd(d: Duration) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(d).ok()
}

fn named(name: impl Into<String>) -> Option<Metadata> {
    Some(Metadata {
        kind: Some(metadata::Kind::Default(name.into())),
    })
}

// === inbound ===

/// The server for a workload's port, or the default (detect the protocol,
/// admit everyone) when the file says nothing of it.
fn server(mesh: &Mesh, workload: &str, port: u16) -> inbound::Server {
    let Some(s) = mesh.workloads.get(workload).and_then(|w| w.get(&port)) else {
        return inbound::Server {
            protocol: Some(inbound_protocol(Protocol::Detect)),
            server_ips: Vec::new(),
            authorizations: vec![authz(
                &Authorization::Unauthenticated {
                    networks: Vec::new(),
                },
                "all-unauthenticated",
            )],
            labels: [
                ("kind".to_string(), "default".to_string()),
                ("name".to_string(), "all-unauthenticated".to_string()),
            ]
            .into(),
        };
    };
    inbound::Server {
        protocol: Some(inbound_protocol(s.protocol)),
        server_ips: Vec::new(),
        authorizations: s
            .authorizations
            .iter()
            .enumerate()
            .map(|(i, a)| authz(a, &format!("{workload}:{port}:{i}")))
            .collect(),
        labels: [
            ("kind".to_string(), "server".to_string()),
            ("name".to_string(), format!("{workload}:{port}")),
        ]
        .into(),
    }
}

fn inbound_protocol(p: Protocol) -> inbound::ProxyProtocol {
    let http_routes = || {
        vec![inbound::HttpRoute {
            metadata: named("default"),
            hosts: Vec::new(),
            authorizations: Vec::new(),
            rules: vec![inbound::http_route::Rule {
                matches: vec![prefix_match("/")],
                filters: Vec::new(),
            }],
        }]
    };
    let kind = match p {
        Protocol::Detect => in_proto::Kind::Detect(in_proto::Detect {
            timeout: pd(DETECT_TIMEOUT),
            http_routes: http_routes(),
            http_local_rate_limit: None,
        }),
        Protocol::Http1 => in_proto::Kind::Http1(in_proto::Http1 {
            routes: http_routes(),
            local_rate_limit: None,
        }),
        Protocol::Http2 => in_proto::Kind::Http2(in_proto::Http2 {
            routes: http_routes(),
            local_rate_limit: None,
        }),
        Protocol::Grpc => in_proto::Kind::Grpc(in_proto::Grpc {
            routes: vec![inbound::GrpcRoute {
                metadata: named("default"),
                hosts: Vec::new(),
                authorizations: Vec::new(),
                rules: vec![inbound::grpc_route::Rule {
                    matches: vec![GrpcRouteMatch::default()],
                    filters: Vec::new(),
                }],
            }],
        }),
        Protocol::Opaque => in_proto::Kind::Opaque(in_proto::Opaque {}),
    };
    inbound::ProxyProtocol { kind: Some(kind) }
}

fn networks(nets: &[ipnet::IpNet]) -> Vec<inbound::Network> {
    let all: [ipnet::IpNet; 2] = [
        ipnet::IpNet::V4(ipnet::Ipv4Net::default()),
        ipnet::IpNet::V6(ipnet::Ipv6Net::default()),
    ];
    let nets = if nets.is_empty() { &all[..] } else { nets };
    nets.iter()
        .map(|n| inbound::Network {
            net: Some(IpNetwork::from(*n)),
            except: Vec::new(),
        })
        .collect()
}

fn authz(a: &Authorization, name: &str) -> inbound::Authz {
    let (nets, permit) = match a {
        Authorization::Unauthenticated { networks } => (
            networks,
            authn::Permit::Unauthenticated(authn::PermitUnauthenticated {}),
        ),
        Authorization::MeshTls {
            identities,
            suffixes,
            networks,
        } => {
            let clients = if identities.is_empty() && suffixes.is_empty() {
                authn::permit_mesh_tls::Clients::Unauthenticated(authn::PermitUnauthenticated {})
            } else {
                authn::permit_mesh_tls::Clients::Identities(
                    authn::permit_mesh_tls::PermitClientIdentities {
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
                    },
                )
            };
            (
                networks,
                authn::Permit::MeshTls(authn::PermitMeshTls {
                    clients: Some(clients),
                }),
            )
        }
    };
    inbound::Authz {
        networks: networks(nets),
        authentication: Some(inbound::Authn {
            permit: Some(permit),
        }),
        labels: [("name".to_string(), name.to_string())].into(),
        metadata: named(name),
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

// === outbound ===

/// What an outbound policy lookup names.
#[derive(Clone, Debug)]
enum Target {
    Authority(String),
    Addr(SocketAddr),
}

fn traffic_target(spec: &TrafficSpec) -> Result<Target, Status> {
    match &spec.target {
        Some(traffic_spec::Target::Authority(a)) => {
            let (name, port) = config::parse_authority(a)
                .map_err(|r| Status::invalid_argument(format!("target: {r}")))?;
            Ok(Target::Authority(format!("{name}:{port}")))
        }
        Some(traffic_spec::Target::Addr(a)) => SocketAddr::try_from(*a)
            .map(Target::Addr)
            .map_err(|e| Status::invalid_argument(format!("target: {e}"))),
        None => Err(Status::invalid_argument("no target")),
    }
}

/// The policy for a target: its service's, or for an address that is not
/// a service, forward to that address as it is (detecting the protocol).
/// `None` for an authority the file does not know.
fn policy(mesh: &Mesh, t: &Target) -> Option<OutboundPolicy> {
    let svc = match t {
        Target::Authority(a) => mesh.services.get(a),
        Target::Addr(a) => mesh.service_by_addr(*a),
    };
    match (svc, t) {
        (Some(svc), _) => Some(service_policy(mesh, svc)),
        (None, Target::Addr(addr)) => Some(forward_policy(mesh, *addr)),
        (None, Target::Authority(_)) => None,
    }
}

fn service_meta(svc: &Service) -> Option<Metadata> {
    let mut labels = svc.name.split('.');
    let name = labels.next().unwrap_or_default().to_string();
    let namespace = labels.next().unwrap_or_default().to_string();
    Some(Metadata {
        kind: Some(metadata::Kind::Resource(Resource {
            group: "core".into(),
            kind: "Service".into(),
            name,
            namespace,
            section: String::new(),
            port: u32::from(svc.port),
        })),
    })
}

/// A backend that balances over the service's discovered endpoints.
fn balancer(svc: &Service) -> Backend {
    Backend {
        metadata: service_meta(svc),
        queue: Some(outbound::Queue {
            capacity: 100,
            failfast_timeout: pd(Duration::from_secs(3)),
        }),
        kind: Some(backend::Kind::Balancer(backend::BalanceP2c {
            discovery: Some(backend::EndpointDiscovery {
                kind: Some(backend::endpoint_discovery::Kind::Dst(
                    backend::endpoint_discovery::DestinationGet {
                        path: format!("{}:{}", svc.name, svc.port),
                    },
                )),
            }),
            load: Some(backend::balance_p2c::Load::PeakEwma(
                backend::balance_p2c::PeakEwma {
                    default_rtt: pd(Duration::from_millis(30)),
                    decay: pd(Duration::from_secs(10)),
                },
            )),
        })),
    }
}

fn forward(addr: WeightedAddr) -> Backend {
    Backend {
        metadata: named("forward"),
        queue: Some(outbound::Queue {
            capacity: 100,
            failfast_timeout: pd(Duration::from_secs(3)),
        }),
        kind: Some(backend::Kind::Forward(addr)),
    }
}

fn prefix_match(p: &str) -> HttpRouteMatch {
    HttpRouteMatch {
        path: Some(http_route::PathMatch {
            kind: Some(path_match::Kind::Prefix(p.to_string())),
        }),
        ..Default::default()
    }
}

fn route_matches(r: &config::Route) -> Vec<HttpRouteMatch> {
    if r.matches.is_empty() {
        return vec![prefix_match("/")];
    }
    r.matches
        .iter()
        .map(|m| HttpRouteMatch {
            path: m
                .path_exact
                .as_ref()
                .map(|p| path_match::Kind::Exact(p.clone()))
                .or_else(|| {
                    m.path_prefix
                        .as_ref()
                        .map(|p| path_match::Kind::Prefix(p.clone()))
                })
                .map(|kind| http_route::PathMatch { kind: Some(kind) }),
            headers: m
                .headers
                .iter()
                .map(|(k, v)| http_route::HeaderMatch {
                    name: k.clone(),
                    value: Some(header_match::Value::Exact(v.clone().into_bytes())),
                })
                .collect(),
            query_params: Vec::new(),
            method: m
                .method
                .as_ref()
                .and_then(|m| http::Method::from_bytes(m.as_bytes()).ok())
                .map(Into::into),
        })
        .collect()
}

/// The weighted backends of a route: the services it names, or the
/// service itself.
fn route_backends(mesh: &Mesh, svc: &Service, r: Option<&config::Route>) -> Vec<(Backend, u32)> {
    match r {
        Some(r) if !r.backends.is_empty() => r
            .backends
            .iter()
            .filter_map(|b| {
                mesh.services
                    .get(&b.service)
                    .map(|s| (balancer(s), b.weight))
            })
            .collect(),
        _ => vec![(balancer(svc), 1)],
    }
}

fn http_routes(mesh: &Mesh, svc: &Service) -> Vec<outbound::HttpRoute> {
    use outbound::http_route as hr;
    let one = |name: &str, r: Option<&config::Route>| {
        let backends = route_backends(mesh, svc, r)
            .into_iter()
            .map(|(b, weight)| hr::WeightedRouteBackend {
                backend: Some(hr::RouteBackend {
                    backend: Some(b),
                    ..Default::default()
                }),
                weight,
            })
            .collect();
        #[allow(deprecated)]
        let rule = hr::Rule {
            matches: r.map_or_else(|| vec![prefix_match("/")], route_matches),
            filters: Vec::new(),
            backends: Some(hr::Distribution {
                kind: Some(hr::distribution::Kind::RandomAvailable(
                    hr::distribution::RandomAvailable { backends },
                )),
            }),
            request_timeout: None,
            timeouts: r.and_then(|r| r.timeout).map(|t| Timeouts {
                request: pd(t),
                ..Default::default()
            }),
            retry: r.and_then(|r| r.retry.as_ref()).map(|x| hr::Retry {
                max_retries: x.limit,
                max_request_bytes: 64 * 1024,
                conditions: Some(hr::retry::Conditions {
                    status_ranges: x
                        .statuses
                        .iter()
                        .map(|(a, b)| hr::retry::conditions::StatusRange {
                            start: u32::from(*a),
                            end: u32::from(*b),
                        })
                        .collect(),
                }),
                timeout: x.timeout.and_then(pd),
                backoff: None,
            }),
            allow_l5d_request_headers: false,
        };
        outbound::HttpRoute {
            metadata: named(name),
            hosts: Vec::new(),
            rules: vec![rule],
        }
    };
    if svc.policy.routes.is_empty() {
        return vec![one("default", None)];
    }
    svc.policy
        .routes
        .iter()
        .map(|r| one(&r.name, Some(r)))
        .collect()
}

fn grpc_routes(mesh: &Mesh, svc: &Service) -> Vec<outbound::GrpcRoute> {
    use outbound::grpc_route as gr;
    let one = |name: &str, r: Option<&config::Route>| {
        let backends = route_backends(mesh, svc, r)
            .into_iter()
            .map(|(b, weight)| gr::WeightedRouteBackend {
                backend: Some(gr::RouteBackend {
                    backend: Some(b),
                    ..Default::default()
                }),
                weight,
            })
            .collect();
        #[allow(deprecated)]
        let rule = gr::Rule {
            matches: vec![GrpcRouteMatch::default()],
            filters: Vec::new(),
            backends: Some(gr::Distribution {
                kind: Some(gr::distribution::Kind::RandomAvailable(
                    gr::distribution::RandomAvailable { backends },
                )),
            }),
            request_timeout: None,
            timeouts: r.and_then(|r| r.timeout).map(|t| Timeouts {
                request: pd(t),
                ..Default::default()
            }),
            retry: r.and_then(|r| r.retry.as_ref()).map(|x| gr::Retry {
                max_retries: x.limit,
                max_request_bytes: 64 * 1024,
                conditions: Some(gr::retry::Conditions {
                    unavailable: true,
                    ..Default::default()
                }),
                timeout: x.timeout.and_then(pd),
                backoff: None,
            }),
            allow_l5d_request_headers: false,
        };
        outbound::GrpcRoute {
            metadata: named(name),
            hosts: Vec::new(),
            rules: vec![rule],
        }
    };
    if svc.policy.routes.is_empty() {
        return vec![one("default", None)];
    }
    svc.policy
        .routes
        .iter()
        .map(|r| one(&r.name, Some(r)))
        .collect()
}

fn opaque_route(b: Backend) -> outbound::OpaqueRoute {
    use outbound::opaque_route as or;
    outbound::OpaqueRoute {
        metadata: named("default"),
        rules: vec![or::Rule {
            backends: Some(or::Distribution {
                kind: Some(or::distribution::Kind::RandomAvailable(
                    or::distribution::RandomAvailable {
                        backends: vec![or::WeightedRouteBackend {
                            backend: Some(or::RouteBackend {
                                backend: Some(b),
                                filters: Vec::new(),
                            }),
                            weight: 1,
                        }],
                    },
                )),
            }),
            filters: Vec::new(),
        }],
    }
}

fn failure_accrual(f: Option<config::FailureAccrual>) -> Option<FailureAccrual> {
    f.map(|f| FailureAccrual {
        ejection: None,
        kind: Some(outbound::failure_accrual::Kind::ConsecutiveFailures(
            outbound::failure_accrual::ConsecutiveFailures {
                max_failures: f.consecutive_failures,
                backoff: Some(outbound::ExponentialBackoff {
                    min_backoff: pd(f.min_backoff),
                    max_backoff: pd(f.max_backoff),
                    jitter_ratio: f.jitter_ratio,
                    respect_retry_after_hint: false,
                }),
            },
        )),
    })
}

fn service_policy(mesh: &Mesh, svc: &Service) -> OutboundPolicy {
    let accrual = failure_accrual(svc.policy.failure_accrual);
    let kind = match svc.policy.protocol {
        Protocol::Opaque => out_proto::Kind::Opaque(out_proto::Opaque {
            routes: vec![opaque_route(balancer(svc))],
        }),
        Protocol::Http1 => out_proto::Kind::Http1(out_proto::Http1 {
            routes: http_routes(mesh, svc),
            failure_accrual: accrual,
        }),
        Protocol::Http2 => out_proto::Kind::Http2(out_proto::Http2 {
            routes: http_routes(mesh, svc),
            failure_accrual: accrual,
        }),
        Protocol::Grpc => out_proto::Kind::Grpc(out_proto::Grpc {
            routes: grpc_routes(mesh, svc),
            failure_accrual: accrual,
        }),
        Protocol::Detect => out_proto::Kind::Detect(out_proto::Detect {
            timeout: pd(DETECT_TIMEOUT),
            opaque: Some(out_proto::Opaque {
                routes: vec![opaque_route(balancer(svc))],
            }),
            http1: Some(out_proto::Http1 {
                routes: http_routes(mesh, svc),
                failure_accrual: accrual,
            }),
            http2: Some(out_proto::Http2 {
                routes: http_routes(mesh, svc),
                failure_accrual: accrual,
            }),
        }),
    };
    OutboundPolicy {
        protocol: Some(outbound::ProxyProtocol { kind: Some(kind) }),
        metadata: service_meta(svc),
    }
}

/// Forward to the address itself (an endpoint, or outside the mesh).
fn forward_policy(mesh: &Mesh, addr: SocketAddr) -> OutboundPolicy {
    let wa = match mesh.endpoint(addr) {
        Some((_, ep)) => weighted_addr(ep),
        None => WeightedAddr {
            addr: Some(addr.into()),
            weight: 1,
            metric_labels: HashMap::new(),
            ..Default::default()
        },
    };
    let opaque = || out_proto::Opaque {
        routes: vec![opaque_route(forward(wa.clone()))],
    };
    let http_route = || {
        use outbound::http_route as hr;
        #[allow(deprecated)]
        let rule = hr::Rule {
            matches: vec![prefix_match("/")],
            filters: Vec::new(),
            backends: Some(hr::Distribution {
                kind: Some(hr::distribution::Kind::FirstAvailable(
                    hr::distribution::FirstAvailable {
                        backends: vec![hr::RouteBackend {
                            backend: Some(forward(wa.clone())),
                            ..Default::default()
                        }],
                    },
                )),
            }),
            request_timeout: None,
            timeouts: None,
            retry: None,
            allow_l5d_request_headers: false,
        };
        vec![outbound::HttpRoute {
            metadata: named("default"),
            hosts: Vec::new(),
            rules: vec![rule],
        }]
    };
    OutboundPolicy {
        protocol: Some(outbound::ProxyProtocol {
            kind: Some(out_proto::Kind::Detect(out_proto::Detect {
                timeout: pd(DETECT_TIMEOUT),
                opaque: Some(opaque()),
                http1: Some(out_proto::Http1 {
                    routes: http_route(),
                    failure_accrual: None,
                }),
                http2: Some(out_proto::Http2 {
                    routes: http_route(),
                    failure_accrual: None,
                }),
            })),
        }),
        metadata: named("forward"),
    }
}

/// The outbound policy service.
#[derive(Clone, Debug)]
pub struct Outbound {
    pub(crate) store: Store,
    pub(crate) metrics: Metrics,
}

#[tonic::async_trait]
impl outbound::outbound_policies_server::OutboundPolicies for Outbound {
    type WatchStream = Messages<OutboundPolicy>;

    async fn get(&self, req: Request<TrafficSpec>) -> Result<Response<OutboundPolicy>, Status> {
        self.metrics.request("OutboundPolicies.Get");
        let t = traffic_target(req.get_ref())?;
        policy(&self.store.current(), &t)
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("no service {t:?} in the mesh file")))
    }

    async fn watch(
        &self,
        req: Request<TrafficSpec>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.metrics.request("OutboundPolicies.Watch");
        let t = traffic_target(req.get_ref())?;
        if policy(&self.store.current(), &t).is_none() {
            return Err(Status::not_found(format!(
                "no service {t:?} in the mesh file"
            )));
        }
        let guard = self.metrics.watch("OutboundPolicies.Watch");
        // A named service that leaves the file keeps its last policy here;
        // its Destination.Get stream says it no longer exists.
        Ok(Response::new(follow(
            self.store.subscribe(),
            None::<OutboundPolicy>,
            move |mesh, last| match policy(mesh, &t) {
                Some(p) if last.as_ref() != Some(&p) => {
                    *last = Some(p.clone());
                    vec![p]
                }
                _ => Vec::new(),
            },
            guard,
        )))
    }
}
