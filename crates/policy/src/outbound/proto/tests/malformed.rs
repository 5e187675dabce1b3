//! Malformed input: dropped, counted by reason, never a panic.

use super::*;

#[test]
fn unknown_protocol_is_an_empty_detect() {
    let (p, skipped) = convert(out::OutboundPolicy {
        protocol: Some(out::ProxyProtocol { kind: None }),
        metadata: None,
    });
    assert_eq!(skipped, HashMap::from([("unknown_protocol", 1)]));
    assert!(matches!(&p.protocol, Protocol::Detect { http1, .. } if http1.is_empty()));
}

#[test]
fn malformed_backends_are_dropped_and_counted() {
    let no_discovery = out::Backend {
        kind: Some(out::backend::Kind::Balancer(out::backend::BalanceP2c {
            discovery: None,
            load: None,
        })),
        ..Default::default()
    };
    let no_kind = out::Backend::default();
    let mut rule = http_rule(vec![]);
    rule.backends = http_dist(vec![
        (balancer("a:80"), 0),
        (no_discovery, 1),
        (no_kind, 1),
        (forward(0, 1), 1), // refused by the caller's `forward`
        (balancer("b:80"), 2),
    ]);
    // And one weighted backend with no route backend at all.
    if let Some(out::http_route::Distribution {
        kind: Some(out::http_route::distribution::Kind::RandomAvailable(r)),
    }) = &mut rule.backends
    {
        r.backends.push(out::http_route::WeightedRouteBackend {
            backend: None,
            weight: 1,
        });
    }
    let mut all_bad = http_rule(vec![prefix("/x")]);
    all_bad.backends = http_dist(vec![(balancer("a:80"), 0)]);
    let mut unset = http_rule(vec![prefix("/y")]);
    unset.backends = None;
    let (p, skipped) = convert(policy(http1(vec![http_route(vec![rule, all_bad, unset])])));
    assert_eq!(
        skipped,
        HashMap::from([
            ("zero_weight", 2),
            ("no_discovery", 1),
            ("no_backend", 2),
            ("no_distribution", 1)
        ])
    );
    let rules = &http_routes_of(&p)[0].rules;
    let Distribution::RandomAvailable(b) = &rules[0].backends else {
        panic!("{:?}", rules[0].backends)
    };
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].1, 2);
    assert_eq!(rules[1].backends, Distribution::Empty);
    assert_eq!(rules[2].backends, Distribution::Empty);
}

#[test]
fn malformed_matches_skip_their_rule() {
    let regex = hr::HttpRouteMatch {
        path: Some(hr::PathMatch {
            kind: Some(hr::path_match::Kind::Regex("(unclosed".into())),
        }),
        ..Default::default()
    };
    let escape = hr::HttpRouteMatch {
        path: Some(hr::PathMatch {
            kind: Some(hr::path_match::Kind::Regex("a)|(b".into())),
        }),
        ..Default::default()
    };
    let header = |name: &str, v: Option<hr::header_match::Value>| hr::HttpRouteMatch {
        headers: vec![hr::HeaderMatch {
            name: name.into(),
            value: v,
        }],
        ..Default::default()
    };
    let method = hr::HttpRouteMatch {
        method: Some(http_types::HttpMethod {
            r#type: Some(http_types::http_method::Type::Unregistered(
                "BAD METHOD".into(),
            )),
        }),
        ..Default::default()
    };
    let path = hr::HttpRouteMatch {
        path: Some(hr::PathMatch {
            kind: Some(hr::path_match::Kind::Exact("no-slash".into())),
        }),
        ..Default::default()
    };
    let query = hr::HttpRouteMatch {
        query_params: vec![hr::QueryParamMatch {
            name: String::new(),
            value: Some(hr::query_param_match::Value::Exact("x".into())),
        }],
        ..Default::default()
    };
    let rules = vec![
        http_rule(vec![prefix("/ok"), regex]),
        http_rule(vec![escape]),
        http_rule(vec![header(
            "bad name",
            Some(hr::header_match::Value::Exact(b"v".to_vec())),
        )]),
        http_rule(vec![header(
            "x",
            Some(hr::header_match::Value::Exact(b"\n".to_vec())),
        )]),
        http_rule(vec![header("x", None)]),
        http_rule(vec![method]),
        http_rule(vec![path]),
        http_rule(vec![query]),
        http_rule(vec![prefix("/good")]),
    ];
    let (p, skipped) = convert(policy(http1(vec![
        http_route(rules),
        // A route with only bad rules is dropped altogether.
        http_route(vec![http_rule(vec![header("", None)])]),
    ])));
    assert_eq!(
        skipped,
        HashMap::from([
            ("bad_regex", 2),
            ("bad_header", 4),
            ("bad_method", 1),
            ("bad_path", 1),
            ("bad_query", 1),
            ("no_rules", 1)
        ])
    );
    let routes = http_routes_of(&p);
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].rules.len(), 1);
    assert_eq!(
        routes[0].rules[0].matches[0].path,
        Some(PathMatch::Prefix("/good".into()))
    );
}

#[test]
fn routes_whose_hosts_are_all_bad_are_dropped() {
    let mut bad = http_route(vec![http_rule(vec![])]);
    bad.hosts = vec![
        hr::HostMatch { r#match: None },
        hr::HostMatch {
            r#match: Some(hr::host_match::Match::Suffix(hr::host_match::Suffix {
                reverse_labels: vec!["com".into(), String::new()],
            })),
        },
    ];
    let (p, skipped) = convert(policy(http1(vec![bad])));
    assert_eq!(skipped, HashMap::from([("bad_host", 2)]));
    assert!(http_routes_of(&p).is_empty());
}

#[test]
fn malformed_filters_are_dropped_and_counted() {
    use out::http_route::{Filter, filter::Kind as F};
    let mut rule = http_rule(vec![]);
    rule.filters = vec![
        Filter { kind: None },
        Filter {
            kind: Some(F::FailureInjector(hr::HttpFailureInjector {
                status: 500,
                message: String::new(),
                ratio: Some(hr::Ratio {
                    numerator: 1,
                    denominator: 0,
                }),
            })),
        },
        Filter {
            kind: Some(F::FailureInjector(hr::HttpFailureInjector {
                status: 70_000,
                message: String::new(),
                ratio: None,
            })),
        },
        Filter {
            kind: Some(F::ResponseHeaderModifier(hr::ResponseHeaderModifier {
                add: headers(&[("ok", b"1"), ("bad name", b"1")]),
                set: headers(&[("x", b"bad\r\n")]),
                remove: vec!["also bad".into(), "gone".into()],
            })),
        },
        Filter {
            kind: Some(F::Redirect(hr::RequestRedirect {
                scheme: Some(http_types::Scheme {
                    r#type: Some(http_types::scheme::Type::Registered(7)),
                }),
                ..Default::default()
            })),
        },
        Filter {
            kind: Some(F::Redirect(hr::RequestRedirect {
                port: 70_000,
                status: 200,
                ..Default::default()
            })),
        },
        Filter {
            kind: Some(F::FailureInjector(hr::HttpFailureInjector {
                status: 503,
                message: String::new(),
                ratio: Some(hr::Ratio {
                    numerator: 5,
                    denominator: 2,
                }),
            })),
        },
    ];
    let (p, skipped) = convert(policy(http1(vec![http_route(vec![rule])])));
    assert_eq!(
        skipped,
        HashMap::from([
            ("no_filter", 1),
            ("bad_ratio", 1),
            ("bad_failure_injector", 1),
            ("bad_header", 3),
            ("bad_redirect", 3)
        ])
    );
    let filters = &http_routes_of(&p)[0].rules[0].filters;
    assert_eq!(filters.len(), 3);
    assert!(matches!(&filters[0], HttpFilter::ResponseHeaders(h)
        if h.add.len() == 1 && h.set.is_empty() && h.remove.len() == 1));
    assert!(matches!(&filters[1], HttpFilter::Redirect(r)
        if r.port.is_none() && r.status == http::StatusCode::FOUND && r.scheme.is_none()));
    assert!(
        matches!(&filters[2], HttpFilter::FailureInjector { ratio, .. } if *ratio == Ratio::ALWAYS)
    );
}

#[test]
fn malformed_durations_and_retries() {
    let neg = Some(prost_types::Duration {
        seconds: -1,
        nanos: 0,
    });
    let bad_nanos = Some(prost_types::Duration {
        seconds: 1,
        nanos: 2_000_000_000,
    });
    let huge = Some(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 0,
    });
    let mut rule = http_rule(vec![]);
    rule.timeouts = Some(hr::Timeouts {
        response: neg,
        request: huge,
        idle: bad_nanos,
    });
    rule.retry = Some(out::http_route::Retry {
        max_retries: 1,
        conditions: Some(out::http_route::retry::Conditions {
            status_ranges: [(500, 599), (504, 500), (0, 10), (500, 600), (429, 429)]
                .into_iter()
                .map(|(start, end)| out::http_route::retry::conditions::StatusRange { start, end })
                .collect(),
        }),
        ..Default::default()
    });
    let mut no_conditions = http_rule(vec![prefix("/x")]);
    no_conditions.retry = Some(out::http_route::Retry::default());
    let (p, skipped) = convert(policy(out::proxy_protocol::Kind::Detect(
        out::proxy_protocol::Detect {
            timeout: neg,
            http1: Some(out::proxy_protocol::Http1 {
                routes: vec![http_route(vec![rule, no_conditions])],
                failure_accrual: None,
            }),
            ..Default::default()
        },
    )));
    assert_eq!(
        skipped,
        HashMap::from([
            ("bad_duration", 3),
            ("long_duration", 1),
            ("bad_status_range", 3),
            ("no_retry_conditions", 1)
        ])
    );
    assert!(
        matches!(p.protocol, Protocol::Detect { timeout, .. } if timeout == DEFAULT_DETECT_TIMEOUT)
    );
    let rules = &http_routes_of(&p)[0].rules;
    assert_eq!(
        rules[0].timeouts,
        params::Timeouts {
            request: Some(MAX_DURATION),
            response: None,
            idle: None
        }
    );
    assert_eq!(
        rules[0].retry.as_ref().unwrap().on,
        RetryOn::Http(vec![500..=599, 429..=429])
    );
    assert_eq!(rules[1].retry.as_ref().unwrap().on, RetryOn::Http(vec![]));
}

#[test]
fn failure_accrual_rules_off() {
    let accrual_of = |kind| {
        let (p, skipped) = convert(policy(out::proxy_protocol::Kind::Http1(
            out::proxy_protocol::Http1 {
                routes: vec![],
                failure_accrual: Some(out::FailureAccrual {
                    ejection: None,
                    kind: Some(kind),
                }),
            },
        )));
        (p.accrual.kind, skipped)
    };
    let (k, _) = accrual_of(out::failure_accrual::Kind::ConsecutiveFailures(
        out::failure_accrual::ConsecutiveFailures::default(),
    ));
    assert_eq!(k, FailureAccrual::None);
    let (k, _) = accrual_of(out::failure_accrual::Kind::Unified(
        out::failure_accrual::Unified::default(),
    ));
    assert_eq!(k, FailureAccrual::None);
    let (k, skipped) = accrual_of(out::failure_accrual::Kind::Unified(
        out::failure_accrual::Unified {
            success_rate_threshold: f64::NAN,
            max_consecutive_failures: 5,
            ..Default::default()
        },
    ));
    assert_eq!(skipped, HashMap::from([("bad_threshold", 1)]));
    assert!(
        matches!(k, FailureAccrual::SuccessRate { threshold, max_consecutive: 5, decay, .. }
        if threshold == 0.0 && decay == DEFAULT_ACCRUAL_DECAY)
    );
}

#[test]
fn peak_ewma_and_queue_defaults() {
    let mut b = balancer("svc:80");
    if let Some(out::backend::Kind::Balancer(p2c)) = &mut b.kind {
        p2c.load = Some(out::backend::balance_p2c::Load::PeakEwma(
            out::backend::balance_p2c::PeakEwma {
                default_rtt: None,
                decay: pd(2000),
            },
        ));
    }
    b.queue = Some(out::Queue {
        capacity: 7,
        failfast_timeout: None,
    });
    let mut rule = http_rule(vec![]);
    rule.backends = http_dist(vec![(b, 1)]);
    let (p, _) = convert(policy(http1(vec![http_route(vec![rule])])));
    let backend = http_routes_of(&p)[0].rules[0]
        .backends
        .backends()
        .next()
        .unwrap()
        .clone();
    assert_eq!(backend.queue.capacity, 7);
    assert_eq!(
        backend.queue.failfast_timeout,
        params::Queue::default().failfast_timeout
    );
    assert_eq!(
        backend.kind,
        BackendKind::Balancer {
            path: "svc:80".into(),
            load: Load {
                decay: Duration::from_secs(2),
                ..Load::default()
            }
        }
    );
}

#[test]
fn backends_are_cache_keys() {
    use std::collections::HashSet;
    let rule = http_rule(vec![]);
    let (p, _) = convert(policy(http1(vec![
        http_route(vec![rule.clone()]),
        http_route(vec![rule]),
    ])));
    let routes = http_routes_of(&p);
    let a = routes[0].rules[0].backends.backends().next().unwrap();
    let b = routes[1].rules[0].backends.backends().next().unwrap();
    let mut set = HashSet::new();
    set.insert(a.clone());
    assert!(set.contains(b), "equal backends hash alike");
    let mut other = b.clone();
    other.queue.capacity += 1;
    assert!(!set.contains(&other));
    // An unchanged update compares equal, so a watch can skip it.
    let (again, _) = convert(policy(http1(vec![http_route(vec![http_rule(vec![])])])));
    let (once, _) = convert(policy(http1(vec![http_route(vec![http_rule(vec![])])])));
    assert_eq!(again, once);
}

#[test]
fn default_messages_at_every_level_do_not_panic() {
    let (p, skipped) = convert(out::OutboundPolicy::default());
    assert_eq!(skipped, HashMap::from([("unknown_protocol", 1)]));
    assert_eq!(p.protocol.declared(), None);

    let rule = out::http_route::Rule {
        matches: vec![hr::HttpRouteMatch::default()],
        filters: vec![out::http_route::Filter::default()],
        backends: Some(Default::default()),
        timeouts: Some(Default::default()),
        retry: Some(Default::default()),
        ..Default::default()
    };
    let grpc_rule = out::grpc_route::Rule {
        matches: vec![gr::GrpcRouteMatch::default()],
        filters: vec![out::grpc_route::Filter::default()],
        retry: Some(Default::default()),
        ..Default::default()
    };
    let kinds = vec![
        out::proxy_protocol::Kind::Detect(Default::default()),
        http1(vec![http_route(vec![rule]), out::HttpRoute::default()]),
        out::proxy_protocol::Kind::Grpc(out::proxy_protocol::Grpc {
            routes: vec![out::GrpcRoute {
                rules: vec![grpc_rule],
                ..Default::default()
            }],
            failure_accrual: Some(out::FailureAccrual {
                ejection: Some(Default::default()),
                kind: Some(out::failure_accrual::Kind::Unified(Default::default())),
            }),
        }),
        out::proxy_protocol::Kind::Opaque(out::proxy_protocol::Opaque {
            routes: vec![out::OpaqueRoute {
                rules: vec![Default::default()],
                ..Default::default()
            }],
        }),
        out::proxy_protocol::Kind::Tls(out::proxy_protocol::Tls {
            routes: vec![out::TlsRoute {
                snis: vec![Default::default()],
                rules: vec![Default::default()],
                ..Default::default()
            }],
        }),
    ];
    let mut total = 0;
    for kind in kinds {
        let (_, skipped) = convert(policy(kind));
        total += skipped.values().sum::<usize>();
    }
    // The empty HTTP route (no rules), the unset filters, distributions
    // and retry conditions, the TLS route's empty SNI...
    assert!(total >= 8, "{total}");
}
