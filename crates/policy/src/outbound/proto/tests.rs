use super::*;
use crate::{
    outbound::{
        BackendKind, Distribution, GrpcFilter, HttpFilter, OpaqueFilter, PathMatch, Ratio,
        ValueMatch, filters::PathModifier,
    },
    params::{GrpcCodes, Load, Penalty, RetryOn},
};
use linkerd2_proxy_api::{
    destination, grpc_route as gr, http_route as hr, http_types, meta as pm, opaque_route,
    outbound as out, tls_route,
};
use std::{collections::BTreeMap, collections::HashMap, net::SocketAddr};

// === builders ===

fn pd(ms: u64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    })
}

fn resource(kind: &str, name: &str) -> Option<pm::Metadata> {
    Some(pm::Metadata {
        kind: Some(pm::metadata::Kind::Resource(pm::Resource {
            group: "gateway.networking.k8s.io".into(),
            kind: kind.into(),
            name: name.into(),
            namespace: "ns".into(),
            section: String::new(),
            port: 80,
        })),
    })
}

fn balancer(path: &str) -> out::Backend {
    out::Backend {
        metadata: resource("Service", "svc"),
        queue: Some(out::Queue {
            capacity: 0,
            failfast_timeout: pd(1000),
        }),
        kind: Some(out::backend::Kind::Balancer(out::backend::BalanceP2c {
            discovery: Some(out::backend::EndpointDiscovery {
                kind: Some(out::backend::endpoint_discovery::Kind::Dst(
                    out::backend::endpoint_discovery::DestinationGet { path: path.into() },
                )),
            }),
            load: Some(out::backend::balance_p2c::Load::PenaltyPeakEwma(
                out::backend::balance_p2c::PenaltyPeakEwma {
                    default_rtt: pd(50),
                    decay: None,
                    penalty: pd(200),
                    max_retry_after: None,
                    penalty_decay: None,
                },
            )),
        })),
    }
}

fn forward(port: u16, weight: u32) -> out::Backend {
    out::Backend {
        metadata: None,
        queue: None,
        kind: Some(out::backend::Kind::Forward(destination::WeightedAddr {
            addr: Some(SocketAddr::from(([10, 0, 0, 1], port)).into()),
            weight,
            ..Default::default()
        })),
    }
}

fn test_forward(w: destination::WeightedAddr) -> Option<Endpoint> {
    let addr = SocketAddr::try_from(w.addr?).ok()?;
    (addr.port() != 0).then(|| Endpoint {
        addr,
        weight: w.weight,
        identity: None,
        server_name: None,
        hint: Default::default(),
        opaque_transport_port: None,
        labels: BTreeMap::new(),
    })
}

fn convert(p: out::OutboundPolicy) -> (OutboundPolicy, HashMap<&'static str, usize>) {
    let mut skipped = HashMap::new();
    let policy = from_proto(p, &mut test_forward, &mut |r| {
        *skipped.entry(r).or_insert(0) += 1
    });
    (policy, skipped)
}

fn policy(kind: out::proxy_protocol::Kind) -> out::OutboundPolicy {
    out::OutboundPolicy {
        protocol: Some(out::ProxyProtocol { kind: Some(kind) }),
        metadata: resource("Service", "web"),
    }
}

fn http_dist(backends: Vec<(out::Backend, u32)>) -> Option<out::http_route::Distribution> {
    use out::http_route::{RouteBackend, WeightedRouteBackend, distribution};
    Some(out::http_route::Distribution {
        kind: Some(distribution::Kind::RandomAvailable(
            distribution::RandomAvailable {
                backends: backends
                    .into_iter()
                    .map(|(b, weight)| WeightedRouteBackend {
                        backend: Some(RouteBackend {
                            backend: Some(b),
                            filters: vec![],
                            ..Default::default()
                        }),
                        weight,
                    })
                    .collect(),
            },
        )),
    })
}

fn prefix(p: &str) -> hr::HttpRouteMatch {
    hr::HttpRouteMatch {
        path: Some(hr::PathMatch {
            kind: Some(hr::path_match::Kind::Prefix(p.into())),
        }),
        ..Default::default()
    }
}

fn http_rule(matches: Vec<hr::HttpRouteMatch>) -> out::http_route::Rule {
    out::http_route::Rule {
        matches,
        backends: http_dist(vec![(balancer("Web.NS.svc.cluster.local:80"), 1)]),
        ..Default::default()
    }
}

fn http_route(rules: Vec<out::http_route::Rule>) -> out::HttpRoute {
    out::HttpRoute {
        metadata: resource("HTTPRoute", "r"),
        hosts: vec![],
        rules,
    }
}

fn http1(routes: Vec<out::HttpRoute>) -> out::proxy_protocol::Kind {
    out::proxy_protocol::Kind::Http1(out::proxy_protocol::Http1 {
        routes,
        failure_accrual: None,
    })
}

fn http_routes_of(p: &OutboundPolicy) -> &[crate::outbound::HttpRoute] {
    match &p.protocol {
        Protocol::Http1(r) | Protocol::Http2(r) => r,
        Protocol::Detect { http1, .. } => http1,
        other => panic!("not HTTP: {other:?}"),
    }
}

fn headers(pairs: &[(&str, &[u8])]) -> Option<http_types::Headers> {
    Some(http_types::Headers {
        headers: pairs
            .iter()
            .map(|(n, v)| http_types::headers::Header {
                name: (*n).into(),
                value: v.to_vec(),
            })
            .collect(),
    })
}

// === realistic policies ===

#[test]
fn detect_http_policy() {
    use out::http_route::{Filter, filter::Kind as F};
    #[allow(deprecated)]
    let rule = out::http_route::Rule {
        matches: vec![
            hr::HttpRouteMatch {
                path: Some(hr::PathMatch {
                    kind: Some(hr::path_match::Kind::Regex("/u/[0-9]+".into())),
                }),
                headers: vec![hr::HeaderMatch {
                    name: "X-Env".into(),
                    value: Some(hr::header_match::Value::Exact(b"canary".to_vec())),
                }],
                query_params: vec![hr::QueryParamMatch {
                    name: "v".into(),
                    value: Some(hr::query_param_match::Value::Regex("[12]".into())),
                }],
                method: Some(http::Method::POST.into()),
            },
            prefix("/api/"),
        ],
        filters: vec![
            Filter {
                kind: Some(F::RequestHeaderModifier(hr::RequestHeaderModifier {
                    add: headers(&[("x-a", b"1")]),
                    set: headers(&[("x-b", b"2")]),
                    remove: vec!["x-c".into()],
                })),
            },
            Filter {
                kind: Some(F::Redirect(hr::RequestRedirect {
                    scheme: Some("https".into()),
                    host: "new.example.com".into(),
                    path: Some(hr::PathModifier {
                        replace: Some(hr::path_modifier::Replace::Prefix("/v2".into())),
                    }),
                    port: 8443,
                    status: 0,
                })),
            },
            Filter {
                kind: Some(F::FailureInjector(hr::HttpFailureInjector {
                    status: 503,
                    message: "chaos".into(),
                    ratio: Some(hr::Ratio {
                        numerator: 1,
                        denominator: 4,
                    }),
                })),
            },
        ],
        backends: http_dist(vec![
            (balancer("Web.NS.svc.cluster.local:80"), 9),
            (forward(8080, 0), 1),
        ]),
        request_timeout: pd(9000),
        timeouts: Some(hr::Timeouts {
            response: pd(1000),
            request: pd(3000),
            idle: pd(0),
        }),
        retry: Some(out::http_route::Retry {
            max_retries: 2,
            max_request_bytes: 0,
            conditions: Some(out::http_route::retry::Conditions {
                status_ranges: vec![out::http_route::retry::conditions::StatusRange {
                    start: 500,
                    end: 504,
                }],
            }),
            timeout: pd(250),
            backoff: Some(out::ExponentialBackoff {
                min_backoff: pd(10),
                max_backoff: pd(100),
                jitter_ratio: 0.25,
                respect_retry_after_hint: true,
            }),
        }),
        allow_l5d_request_headers: true,
    };
    let route = out::HttpRoute {
        metadata: resource("HTTPRoute", "web-api"),
        hosts: vec![
            hr::HostMatch {
                r#match: Some(hr::host_match::Match::Exact("Web.Example.COM.".into())),
            },
            hr::HostMatch {
                r#match: Some(hr::host_match::Match::Suffix(hr::host_match::Suffix {
                    reverse_labels: vec!["com".into(), "Example".into()],
                })),
            },
        ],
        rules: vec![rule],
    };
    let fa = out::FailureAccrual {
        ejection: Some(out::EjectionConfig {
            min_ready_endpoints: 2,
        }),
        kind: Some(out::failure_accrual::Kind::ConsecutiveFailures(
            out::failure_accrual::ConsecutiveFailures {
                max_failures: 7,
                backoff: None,
            },
        )),
    };
    let (p, skipped) = convert(policy(out::proxy_protocol::Kind::Detect(
        out::proxy_protocol::Detect {
            timeout: pd(5000),
            opaque: Some(out::proxy_protocol::Opaque { routes: vec![] }),
            http1: Some(out::proxy_protocol::Http1 {
                routes: vec![route.clone()],
                failure_accrual: Some(fa),
            }),
            http2: Some(out::proxy_protocol::Http2 {
                routes: vec![route],
                failure_accrual: None,
            }),
        },
    )));
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(&*p.name, "web");
    assert_eq!(p.parent.kind(), "Service");
    assert_eq!(p.protocol.declared(), None);
    let Protocol::Detect {
        timeout,
        http1,
        http2,
        opaque,
    } = &p.protocol
    else {
        panic!("{:?}", p.protocol)
    };
    assert_eq!(*timeout, Duration::from_secs(5));
    assert_eq!(http1, http2);
    assert!(opaque.is_empty());
    assert_eq!(
        p.accrual,
        params::Accrual {
            kind: FailureAccrual::Consecutive {
                max_failures: 7,
                backoff: accrual_backoff()
            },
            min_ready_endpoints: 2,
        }
    );

    let route = &http1[0];
    assert_eq!(route.meta.name(), "web-api");
    assert_eq!(
        route.hosts,
        vec![
            HostMatch::Exact("web.example.com".into()),
            HostMatch::Suffix(".example.com".into())
        ]
    );
    let rule = &route.rules[0];
    let m = &rule.matches[0];
    assert!(
        matches!(&m.path, Some(PathMatch::Regex(r)) if r.is_match("/u/42") && !r.is_match("/u/42/x"))
    );
    assert_eq!(m.headers[0].name, "x-env");
    assert_eq!(
        m.headers[0].value,
        ValueMatch::Exact(http::HeaderValue::from_static("canary"))
    );
    assert!(
        matches!(&m.query[0].value, ValueMatch::Regex(r) if r.is_match("2") && !r.is_match("12"))
    );
    assert_eq!(m.method, Some(http::Method::POST));
    assert_eq!(rule.matches[1].path, Some(PathMatch::Prefix("/api".into())));

    assert!(matches!(&rule.filters[0], HttpFilter::RequestHeaders(h)
        if h.add.len() == 1 && h.set.len() == 1 && h.remove[0] == "x-c"));
    let HttpFilter::Redirect(r) = &rule.filters[1] else {
        panic!("{:?}", rule.filters[1])
    };
    assert_eq!(r.scheme, Some(http::uri::Scheme::HTTPS));
    assert_eq!(r.host.as_deref(), Some("new.example.com"));
    assert_eq!(r.port, Some(8443));
    assert_eq!(r.status, http::StatusCode::FOUND);
    assert_eq!(r.path, Some(PathModifier::Prefix("/v2".into())));
    assert_eq!(
        rule.filters[2],
        HttpFilter::FailureInjector {
            status: http::StatusCode::SERVICE_UNAVAILABLE,
            message: "chaos".into(),
            ratio: Ratio::new(1, 4).unwrap(),
        }
    );

    let Distribution::RandomAvailable(backends) = &rule.backends else {
        panic!("{:?}", rule.backends)
    };
    assert_eq!(backends.len(), 2);
    let (svc, w) = &backends[0];
    assert_eq!(*w, 9);
    assert_eq!(
        svc.backend.queue.capacity,
        params::Queue::default().capacity
    );
    assert_eq!(svc.backend.queue.failfast_timeout, Duration::from_secs(1));
    assert_eq!(
        svc.backend.kind,
        BackendKind::Balancer {
            path: "web.ns.svc.cluster.local:80".into(),
            load: Load {
                default_rtt: Duration::from_millis(50),
                decay: Load::default().decay,
                penalty: Some(Penalty {
                    penalty: Duration::from_millis(200),
                    max_retry_after: DEFAULT_MAX_RETRY_AFTER,
                    decay: Load::default().decay,
                }),
            },
        }
    );
    let BackendKind::Forward(ep) = &backends[1].0.backend.kind else {
        panic!("{:?}", backends[1])
    };
    assert_eq!(ep.addr, SocketAddr::from(([10, 0, 0, 1], 8080)));
    assert_eq!(ep.weight, 1, "a forward's weight 0 is raised to 1");

    // `timeouts` wins over the deprecated field; a zero idle is unset.
    assert_eq!(
        rule.timeouts,
        params::Timeouts {
            request: Some(Duration::from_secs(3)),
            response: Some(Duration::from_secs(1)),
            idle: None,
        }
    );
    let retry = rule.retry.as_ref().unwrap();
    assert_eq!(retry.max_retries, 2);
    assert_eq!(retry.max_request_bytes, params::DEFAULT_MAX_REQUEST_BYTES);
    assert_eq!(retry.on, RetryOn::Http(vec![500..=504]));
    assert_eq!(retry.timeout, Some(Duration::from_millis(250)));
    let b = retry.backoff.as_ref().unwrap();
    assert_eq!(
        (b.min, b.max),
        (Duration::from_millis(10), Duration::from_millis(100))
    );
    assert!(b.respect_retry_after && (b.jitter - 0.25).abs() < 1e-6);
    assert!(rule.allow_l5d_request_headers);
}

#[test]
fn deprecated_request_timeout_when_timeouts_unset() {
    let mut rule = http_rule(vec![]);
    #[allow(deprecated)]
    {
        rule.request_timeout = pd(1500);
    }
    let (p, _) = convert(policy(http1(vec![http_route(vec![rule])])));
    let t = &http_routes_of(&p)[0].rules[0].timeouts;
    assert_eq!(t.request, Some(Duration::from_millis(1500)));
    assert_eq!(t.response, None);
}

#[test]
fn grpc_policy() {
    use out::grpc_route::{Filter, filter::Kind as F};
    let rule = out::grpc_route::Rule {
        matches: vec![gr::GrpcRouteMatch {
            rpc: Some(gr::GrpcRpcMatch {
                service: "pkg.Greeter".into(),
                method: String::new(),
            }),
            headers: vec![],
        }],
        filters: vec![Filter {
            kind: Some(F::FailureInjector(gr::GrpcFailureInjector {
                code: 14,
                message: "down".into(),
                ratio: None,
            })),
        }],
        backends: Some(out::grpc_route::Distribution {
            kind: Some(out::grpc_route::distribution::Kind::FirstAvailable(
                out::grpc_route::distribution::FirstAvailable {
                    backends: vec![out::grpc_route::RouteBackend {
                        backend: Some(balancer("g.ns.svc.cluster.local:8080")),
                        ..Default::default()
                    }],
                },
            )),
        }),
        retry: Some(out::grpc_route::Retry {
            max_retries: 3,
            max_request_bytes: 1024,
            conditions: Some(out::grpc_route::retry::Conditions {
                cancelled: true,
                deadine_exceeded: false,
                resource_exhausted: true,
                internal: false,
                unavailable: true,
            }),
            timeout: None,
            backoff: None,
        }),
        ..Default::default()
    };
    let fa = out::FailureAccrual {
        ejection: None,
        kind: Some(out::failure_accrual::Kind::Unified(
            out::failure_accrual::Unified {
                success_rate_threshold: 0.8,
                decay: pd(30_000),
                min_requests: 20,
                max_consecutive_failures: 0,
                backoff: Some(out::ExponentialBackoff {
                    min_backoff: pd(2000),
                    max_backoff: pd(1000),
                    jitter_ratio: 3.0,
                    respect_retry_after_hint: false,
                }),
            },
        )),
    };
    let (p, skipped) = convert(policy(out::proxy_protocol::Kind::Grpc(
        out::proxy_protocol::Grpc {
            routes: vec![out::GrpcRoute {
                metadata: resource("GRPCRoute", "g"),
                hosts: vec![],
                rules: vec![rule],
            }],
            failure_accrual: Some(fa),
        },
    )));
    // The accrual backoff's max below its min, and its jitter above 1.
    assert_eq!(
        skipped,
        HashMap::from([("bad_backoff", 1), ("bad_jitter", 1)])
    );
    assert_eq!(p.protocol.declared(), Some(crate::outbound::Declared::Grpc));
    assert!(p.protocol.skips_detection());
    let Protocol::Grpc(routes) = &p.protocol else {
        panic!()
    };
    let rule = &routes[0].rules[0];
    assert_eq!(rule.matches[0].service.as_deref(), Some("pkg.Greeter"));
    assert_eq!(rule.matches[0].method, None);
    assert_eq!(
        rule.filters,
        vec![GrpcFilter::FailureInjector {
            code: 14,
            message: "down".into(),
            ratio: Ratio::ALWAYS
        }]
    );
    assert!(matches!(&rule.backends, Distribution::FirstAvailable(b) if b.len() == 1));
    let retry = rule.retry.as_ref().unwrap();
    assert_eq!(retry.max_request_bytes, 1024);
    assert_eq!(
        retry.on,
        RetryOn::Grpc(GrpcCodes::default().with(1).with(8).with(14))
    );
    let FailureAccrual::SuccessRate {
        threshold,
        decay,
        min_requests,
        max_consecutive,
        backoff,
    } = &p.accrual.kind
    else {
        panic!("{:?}", p.accrual)
    };
    assert_eq!((*threshold, *decay), (0.8, Duration::from_secs(30)));
    assert_eq!((*min_requests, *max_consecutive), (20, 0));
    assert_eq!(backoff.max, backoff.min);
    assert_eq!(backoff.jitter, 1.0);
}

#[test]
fn opaque_policy() {
    use out::opaque_route::{Filter, filter::Kind as F};
    let (p, skipped) = convert(policy(out::proxy_protocol::Kind::Opaque(
        out::proxy_protocol::Opaque {
            routes: vec![out::OpaqueRoute {
                metadata: None,
                rules: vec![out::opaque_route::Rule {
                    backends: Some(out::opaque_route::Distribution {
                        kind: Some(out::opaque_route::distribution::Kind::FirstAvailable(
                            out::opaque_route::distribution::FirstAvailable {
                                backends: vec![out::opaque_route::RouteBackend {
                                    backend: Some(forward(5432, 3)),
                                    filters: vec![],
                                }],
                            },
                        )),
                    }),
                    filters: vec![
                        Filter {
                            kind: Some(F::Invalid(opaque_route::Invalid {
                                message: "no such port".into(),
                            })),
                        },
                        Filter {
                            kind: Some(F::Forbidden(opaque_route::Forbidden {})),
                        },
                        Filter { kind: None },
                    ],
                }],
            }],
        },
    )));
    assert_eq!(skipped, HashMap::from([("no_filter", 1)]));
    assert_eq!(
        p.protocol.declared(),
        Some(crate::outbound::Declared::Opaque)
    );
    assert_eq!(p.accrual, params::Accrual::default());
    let Protocol::Opaque(routes) = &p.protocol else {
        panic!()
    };
    let rule = &routes[0].rules[0];
    assert_eq!(
        rule.filters,
        vec![
            OpaqueFilter::Invalid("no such port".into()),
            OpaqueFilter::Forbidden
        ]
    );
    let b: Vec<_> = rule.backends.backends().collect();
    assert!(
        matches!(&b[0].kind, BackendKind::Forward(ep) if ep.addr.port() == 5432 && ep.weight == 3)
    );
    assert_eq!(b[0].queue, params::Queue::default());
}

#[test]
fn tls_policy() {
    let sni = |m| tls_route::SniMatch { r#match: Some(m) };
    let (p, skipped) = convert(policy(out::proxy_protocol::Kind::Tls(
        out::proxy_protocol::Tls {
            routes: vec![
                out::TlsRoute {
                    metadata: resource("TLSRoute", "t"),
                    snis: vec![
                        sni(tls_route::sni_match::Match::Exact("API.example.com".into())),
                        sni(tls_route::sni_match::Match::Suffix(
                            tls_route::sni_match::Suffix {
                                reverse_labels: vec!["com".into(), "example".into()],
                            },
                        )),
                        sni(tls_route::sni_match::Match::Exact(String::new())),
                    ],
                    rules: vec![out::tls_route::Rule {
                        backends: Some(out::tls_route::Distribution {
                            kind: Some(out::tls_route::distribution::Kind::Empty(
                                out::tls_route::distribution::Empty {},
                            )),
                        }),
                        filters: vec![],
                    }],
                },
                // Every SNI bad: dropped rather than widened to any SNI.
                out::TlsRoute {
                    metadata: None,
                    snis: vec![sni(tls_route::sni_match::Match::Exact("*".into()))],
                    rules: vec![out::tls_route::Rule::default()],
                },
            ],
        },
    )));
    assert_eq!(skipped, HashMap::from([("bad_host", 2)]));
    let Protocol::Tls(routes) = &p.protocol else {
        panic!()
    };
    assert_eq!(routes.len(), 1);
    assert_eq!(
        routes[0].snis,
        vec![
            HostMatch::Exact("api.example.com".into()),
            HostMatch::Suffix(".example.com".into())
        ]
    );
    assert_eq!(routes[0].rules[0].backends, Distribution::Empty);
}

#[test]
fn http2_is_declared() {
    let (p, _) = convert(policy(out::proxy_protocol::Kind::Http2(
        out::proxy_protocol::Http2 {
            routes: vec![http_route(vec![http_rule(vec![])])],
            failure_accrual: None,
        },
    )));
    assert_eq!(
        p.protocol.declared(),
        Some(crate::outbound::Declared::Http2)
    );
    assert_eq!(http_routes_of(&p).len(), 1);
}

mod malformed;
