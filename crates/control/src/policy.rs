//! Policies: `InboundServerPolicies` (a workload port's protocol and who
//! may connect) and `OutboundPolicies` (a target's protocol, routes with
//! their matches, filters, timeouts and retries, backends with their load
//! and queue, and failure accrual; built in [`target`] and [`routes`]).

use crate::{
    Metrics, Store,
    config::{self, Authorization, Mesh, Protocol},
    store::{Messages, changes, follow},
};
use linkerd2_proxy_api::{
    grpc_route::GrpcRouteMatch,
    inbound::{self, PortSpec, authn, proxy_protocol as in_proto},
    meta::{Metadata, metadata},
    net::IpNetwork,
    outbound::{self, OutboundPolicy, TrafficSpec, traffic_spec},
};
use std::{net::SocketAddr, time::Duration};
use tonic::{Request, Response, Status};

mod routes;
mod target;

use self::{
    routes::prefix_match,
    target::{forward_policy, service_policy},
};

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
        Protocol::Tls => in_proto::Kind::Tls(in_proto::Tls {}),
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
