//! The `OutboundPolicy` for a target: the service's protocol with its
//! routes (HTTP and gRPC ones in [`super::routes`], TLS and opaque ones
//! here), its backends (P2C balancers over a service's endpoints, or
//! forwards to one address) and its failure accrual; or, for an address
//! that is no service, a forward to the address itself.

use super::{
    DETECT_TIMEOUT, named, pd,
    routes::{grpc_routes, http_routes, prefix_match},
};
use crate::{
    config::{self, AccrualKind, BackendTarget, Load, Mesh, Protocol, Queue, Service, Sni},
    destination::weighted_addr,
};
use linkerd2_proxy_api::{
    destination::WeightedAddr,
    meta::{Metadata, Resource, metadata},
    opaque_route::{Forbidden, Invalid},
    outbound::{
        self, Backend, EjectionConfig, FailureAccrual, OutboundPolicy, backend,
        proxy_protocol as out_proto,
    },
    tls_route::{SniMatch, sni_match},
};
use std::{collections::HashMap, net::SocketAddr};

/// The Gateway API's group, which the proxy's route metrics name.
const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

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

/// A named route's metadata, as if it were a Gateway API resource (`kind`
/// is `HTTPRoute`, `GRPCRoute`, `TLSRoute` or `TCPRoute`) in the
/// service's `namespace` label, else `default`.
pub(super) fn route_meta(svc: &Service, kind: &str, name: &str) -> Option<Metadata> {
    Some(Metadata {
        kind: Some(metadata::Kind::Resource(Resource {
            group: GATEWAY_GROUP.into(),
            kind: kind.into(),
            name: name.into(),
            namespace: svc
                .labels
                .get("namespace")
                .map_or("default", String::as_str)
                .into(),
            section: String::new(),
            port: 0,
        })),
    })
}

fn queue(q: &Queue) -> Option<outbound::Queue> {
    Some(outbound::Queue {
        capacity: q.capacity,
        failfast_timeout: pd(q.failfast_timeout),
    })
}

/// A backend that balances over the service's discovered endpoints.
fn balancer(svc: &Service, load: &Load, q: &Queue) -> Backend {
    use backend::balance_p2c::{self as p2c, Load as L};
    let load = match &load.penalty {
        None => L::PeakEwma(p2c::PeakEwma {
            default_rtt: pd(load.default_rtt),
            decay: pd(load.decay),
        }),
        Some(p) => L::PenaltyPeakEwma(p2c::PenaltyPeakEwma {
            default_rtt: pd(load.default_rtt),
            decay: pd(load.decay),
            penalty: pd(p.penalty),
            max_retry_after: pd(p.max_retry_after),
            penalty_decay: pd(p.decay),
        }),
    };
    Backend {
        metadata: service_meta(svc),
        queue: queue(q),
        kind: Some(backend::Kind::Balancer(backend::BalanceP2c {
            discovery: Some(backend::EndpointDiscovery {
                kind: Some(backend::endpoint_discovery::Kind::Dst(
                    backend::endpoint_discovery::DestinationGet {
                        path: format!("{}:{}", svc.name, svc.port),
                    },
                )),
            }),
            load: Some(load),
        })),
    }
}

fn forward(addr: WeightedAddr, name: &str, q: &Queue) -> Backend {
    Backend {
        metadata: named(name),
        queue: queue(q),
        kind: Some(backend::Kind::Forward(addr)),
    }
}

/// The weighted backends of a route: those it names, or the service
/// itself.
pub(super) fn backends(
    mesh: &Mesh,
    svc: &Service,
    list: &[config::Backend],
) -> Vec<(Backend, u32)> {
    if list.is_empty() {
        return vec![(balancer(svc, &Load::default(), &Queue::default()), 1)];
    }
    list.iter()
        .filter_map(|b| {
            let backend = match &b.target {
                BackendTarget::Service(s) => balancer(mesh.services.get(s)?, &b.load, &b.queue),
                BackendTarget::Address(ep) => {
                    forward(weighted_addr(ep), &ep.addr.to_string(), &b.queue)
                }
            };
            Some((backend, b.weight))
        })
        .collect()
}

/// The filters that refuse a TLS or opaque connection, if any.
fn refusals(forbidden: bool, invalid: Option<&str>) -> Vec<outbound::opaque_route::Filter> {
    use outbound::opaque_route::filter::Kind;
    let kind = match (forbidden, invalid) {
        (true, _) => Kind::Forbidden(Forbidden {}),
        (false, Some(m)) => Kind::Invalid(Invalid { message: m.into() }),
        (false, None) => return Vec::new(),
    };
    vec![outbound::opaque_route::Filter { kind: Some(kind) }]
}

fn opaque_rule(
    backends: Vec<(Backend, u32)>,
    filters: Vec<outbound::opaque_route::Filter>,
) -> outbound::opaque_route::Rule {
    use outbound::opaque_route as or;
    or::Rule {
        backends: Some(or::Distribution {
            kind: Some(or::distribution::Kind::RandomAvailable(
                or::distribution::RandomAvailable {
                    backends: backends
                        .into_iter()
                        .map(|(b, weight)| or::WeightedRouteBackend {
                            backend: Some(or::RouteBackend {
                                backend: Some(b),
                                filters: Vec::new(),
                            }),
                            weight,
                        })
                        .collect(),
                },
            )),
        }),
        filters,
    }
}

/// One opaque route to the backend.
fn opaque_default(b: Backend) -> outbound::OpaqueRoute {
    outbound::OpaqueRoute {
        metadata: named("default"),
        rules: vec![opaque_rule(vec![(b, 1)], Vec::new())],
    }
}

fn opaque(mesh: &Mesh, svc: &Service) -> out_proto::Opaque {
    let p = &svc.policy;
    if p.opaque_routes.is_empty() {
        let b = balancer(svc, &Load::default(), &Queue::default());
        return out_proto::Opaque {
            routes: vec![opaque_default(b)],
        };
    }
    let routes = p
        .opaque_routes
        .iter()
        .map(|r| outbound::OpaqueRoute {
            metadata: route_meta(svc, "TCPRoute", &r.name),
            rules: vec![opaque_rule(
                backends(mesh, svc, &r.backends),
                refusals(r.forbidden, r.invalid.as_deref()),
            )],
        })
        .collect();
    out_proto::Opaque { routes }
}

fn tls(mesh: &Mesh, svc: &Service) -> out_proto::Tls {
    use outbound::tls_route as tr;
    let one = |meta, snis: &[Sni], list: &[config::Backend], forbidden: bool| {
        let backends = backends(mesh, svc, list)
            .into_iter()
            .map(|(b, weight)| tr::WeightedRouteBackend {
                backend: Some(tr::RouteBackend {
                    backend: Some(b),
                    filters: Vec::new(),
                }),
                weight,
            })
            .collect();
        let rule = tr::Rule {
            backends: Some(tr::Distribution {
                kind: Some(tr::distribution::Kind::RandomAvailable(
                    tr::distribution::RandomAvailable { backends },
                )),
            }),
            filters: forbidden
                .then_some(tr::Filter {
                    kind: Some(tr::filter::Kind::Forbidden(Forbidden {})),
                })
                .into_iter()
                .collect(),
        };
        outbound::TlsRoute {
            metadata: meta,
            snis: snis.iter().map(sni).collect(),
            rules: vec![rule],
        }
    };
    let p = &svc.policy;
    let routes = if p.tls_routes.is_empty() {
        vec![one(named("default"), &[], &[], false)]
    } else {
        p.tls_routes
            .iter()
            .map(|r| {
                let meta = route_meta(svc, "TLSRoute", &r.name);
                one(meta, &r.snis, &r.backends, r.forbidden)
            })
            .collect()
    };
    out_proto::Tls { routes }
}

fn sni(s: &Sni) -> SniMatch {
    SniMatch {
        r#match: Some(match s {
            Sni::Exact(n) => sni_match::Match::Exact(n.clone()),
            Sni::Suffix(n) => sni_match::Match::Suffix(sni_match::Suffix {
                reverse_labels: n.rsplit('.').map(String::from).collect(),
            }),
        }),
    }
}

fn failure_accrual(f: Option<config::FailureAccrual>) -> Option<FailureAccrual> {
    use outbound::failure_accrual::{ConsecutiveFailures, Kind, Unified};
    let f = f?;
    let backoff = Some(outbound::ExponentialBackoff {
        min_backoff: pd(f.min_backoff),
        max_backoff: pd(f.max_backoff),
        jitter_ratio: f.jitter_ratio,
        respect_retry_after_hint: false,
    });
    let kind = match f.kind {
        AccrualKind::Consecutive(n) => Kind::ConsecutiveFailures(ConsecutiveFailures {
            max_failures: n,
            backoff,
        }),
        AccrualKind::SuccessRate(s) => Kind::Unified(Unified {
            success_rate_threshold: s.threshold,
            decay: pd(s.decay),
            min_requests: s.min_requests,
            max_consecutive_failures: s.max_consecutive_failures,
            backoff,
        }),
    };
    Some(FailureAccrual {
        kind: Some(kind),
        ejection: f.min_ready_endpoints.map(|n| EjectionConfig {
            min_ready_endpoints: n,
        }),
    })
}

pub(super) fn service_policy(mesh: &Mesh, svc: &Service) -> OutboundPolicy {
    let accrual = failure_accrual(svc.policy.failure_accrual);
    let http1 = || out_proto::Http1 {
        routes: http_routes(mesh, svc),
        failure_accrual: accrual,
    };
    let http2 = || out_proto::Http2 {
        routes: http_routes(mesh, svc),
        failure_accrual: accrual,
    };
    let kind = match svc.policy.protocol {
        Protocol::Opaque => out_proto::Kind::Opaque(opaque(mesh, svc)),
        Protocol::Tls => out_proto::Kind::Tls(tls(mesh, svc)),
        Protocol::Http1 => out_proto::Kind::Http1(http1()),
        Protocol::Http2 => out_proto::Kind::Http2(http2()),
        Protocol::Grpc => out_proto::Kind::Grpc(out_proto::Grpc {
            routes: grpc_routes(mesh, svc),
            failure_accrual: accrual,
        }),
        Protocol::Detect => out_proto::Kind::Detect(out_proto::Detect {
            timeout: pd(DETECT_TIMEOUT),
            opaque: Some(opaque(mesh, svc)),
            http1: Some(http1()),
            http2: Some(http2()),
        }),
    };
    OutboundPolicy {
        protocol: Some(outbound::ProxyProtocol { kind: Some(kind) }),
        metadata: service_meta(svc),
    }
}

/// Forward to the address itself (an endpoint, or outside the mesh).
pub(super) fn forward_policy(mesh: &Mesh, addr: SocketAddr) -> OutboundPolicy {
    let wa = match mesh.endpoint(addr) {
        Some((_, ep)) => weighted_addr(ep),
        None => WeightedAddr {
            addr: Some(addr.into()),
            weight: 1,
            metric_labels: HashMap::new(),
            ..Default::default()
        },
    };
    let backend = || forward(wa.clone(), "forward", &Queue::default());
    let opaque = || out_proto::Opaque {
        routes: vec![opaque_default(backend())],
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
                            backend: Some(backend()),
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
