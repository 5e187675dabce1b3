//! Malformed input: dropped, reported, never widened.

use super::*;

fn opaque(authzs: Vec<api::Authz>) -> (ServerPolicy, Vec<&'static str>) {
    convert(server(Some(pp::Kind::Opaque(pp::Opaque {})), authzs))
}

#[test]
fn bad_networks() {
    let bad_net = api::Network {
        net: None,
        except: vec![],
    };
    let bad_except = api::Network {
        net: Some(ipnet("10.0.0.0/8")),
        except: vec![net::IpNetwork {
            ip: None,
            prefix_len: 16,
        }],
    };
    let bad_prefix = api::Network {
        net: Some(net::IpNetwork {
            ip: Some("10.0.0.0".parse::<std::net::IpAddr>().unwrap().into()),
            prefix_len: 33,
        }),
        except: vec![],
    };
    let (p, skipped) = opaque(vec![
        authz(
            "bad",
            vec![bad_net, bad_except, bad_prefix],
            unauthenticated(),
        ),
        authz("none", vec![], unauthenticated()),
        authz(
            "partly",
            vec![
                network("192.168.0.0/16"),
                api::Network {
                    net: None,
                    except: vec![],
                },
            ],
            unauthenticated(),
        ),
    ]);
    assert_eq!(
        skipped,
        [
            "bad_network",
            "bad_network",
            "bad_network",
            "no_networks",
            "no_networks",
            "bad_network"
        ]
    );
    assert_eq!(p.authorizations.len(), 1);
    assert_eq!(p.authorizations[0].meta.name(), "partly");
    assert!(
        !p.admits_somewhere(&plain("10.1.2.3")),
        "the bad except did not widen"
    );
    assert!(p.admits_somewhere(&plain("192.168.1.1")));
}

#[test]
fn bad_authentications() {
    let (p, skipped) = opaque(vec![
        authz("unset", vec![network("0.0.0.0/0")], None),
        authz(
            "no-permit",
            vec![network("0.0.0.0/0")],
            Some(api::Authn { permit: None }),
        ),
        authz(
            "no-clients",
            vec![network("0.0.0.0/0")],
            Some(api::Authn {
                permit: Some(authn::Permit::MeshTls(authn::PermitMeshTls {
                    clients: None,
                })),
            }),
        ),
        authz(
            "narrowed",
            vec![network("0.0.0.0/0")],
            identities(&["", "a.ns"], &[&["ns", ""], &["x.y"], &["*"]]),
        ),
    ]);
    assert_eq!(
        skipped,
        [
            "no_authentication",
            "no_authentication",
            "no_authentication",
            "bad_identity",
            "bad_suffix",
            "bad_suffix",
            "bad_suffix"
        ]
    );
    assert_eq!(p.authorizations.len(), 1);
    assert_eq!(
        p.authorizations[0].authentication,
        Authentication::TlsAuthenticated {
            identities: [Arc::from("a.ns")].into(),
            suffixes: vec![],
        }
    );
    let other = Client {
        addr: "10.0.0.1".parse().unwrap(),
        tls: ClientTls::Mesh("b.ns"),
    };
    assert!(
        !p.admits_somewhere(&other),
        "dropped suffixes did not widen"
    );
}

#[test]
fn a_bad_route_refuses_the_whole_policy() {
    let regex = hr::HttpRouteMatch {
        path: Some(hr::PathMatch {
            kind: Some(hr::path_match::Kind::Regex("(".into())),
        }),
        ..Default::default()
    };
    let mut no_rules = http_route("no-rules", vec![]);
    no_rules.rules.clear();
    let mut bad_host = http_route("bad-host", vec![]);
    bad_host.hosts = vec![hr::HostMatch {
        r#match: Some(hr::host_match::Match::Exact("*.bad".into())),
    }];
    // Each alone, beside a good route that would take its requests if it
    // were dropped alone.
    for (bad, reason) in [
        (http_route("bad-regex", vec![regex]), "bad_regex"),
        (no_rules, "no_rules"),
        (bad_host, "bad_host"),
    ] {
        let (p, skipped) = try_convert(server(
            detect(vec![bad, http_route("root", vec![prefix("/")])]),
            vec![anyone("server")],
        ));
        let e = p.expect_err("refused");
        assert_eq!(e.reason, reason);
        assert_eq!(skipped.first(), Some(&reason));
    }
}

#[test]
fn a_bad_filter_refuses_the_whole_policy() {
    use api::http_route::{Filter, filter::Kind as F};
    for (filter, reason) in [
        (Filter { kind: None }, "no_filter"),
        (
            Filter {
                kind: Some(F::FailureInjector(hr::HttpFailureInjector {
                    status: 1000,
                    message: String::new(),
                    ratio: None,
                })),
            },
            "bad_failure_injector",
        ),
        (
            Filter {
                kind: Some(F::RequestHeaderModifier(hr::RequestHeaderModifier {
                    add: None,
                    set: None,
                    remove: vec!["bad header".into(), "x-ok".into()],
                })),
            },
            "bad_header",
        ),
    ] {
        let mut route = http_route("r", vec![prefix("/")]);
        route.rules[0].filters = vec![filter];
        let (p, _) = try_convert(server(detect(vec![route]), vec![]));
        assert_eq!(p.expect_err("refused").reason, reason);
    }
    // A host is normalised, not refused.
    let mut route = http_route("r", vec![prefix("/")]);
    route.hosts = vec![hr::HostMatch {
        r#match: Some(hr::host_match::Match::Exact("Web.Example.com.".into())),
    }];
    let (p, skipped) = convert(server(detect(vec![route]), vec![]));
    assert!(skipped.is_empty());
    let r = &p.http().unwrap().http_routes[0];
    assert_eq!(r.hosts, vec![HostMatch::Exact("web.example.com".into())]);
}

#[test]
fn bad_grpc_routes() {
    use api::grpc_route::{Filter, filter::Kind as F};
    let route = |filters: Vec<Filter>| api::GrpcRoute {
        metadata: default_meta("g"),
        hosts: vec![],
        authorizations: vec![anyone("g"), authz("bad", vec![], unauthenticated())],
        rules: vec![api::grpc_route::Rule {
            matches: vec![gr::GrpcRouteMatch {
                rpc: Some(gr::GrpcRpcMatch {
                    service: "pkg.Svc".into(),
                    method: String::new(),
                }),
                headers: vec![],
            }],
            filters,
        }],
    };
    let grpc = |r| server(Some(pp::Kind::Grpc(pp::Grpc { routes: vec![r] })), vec![]);
    let (p, _) = try_convert(grpc(route(vec![Filter {
        kind: Some(F::FailureInjector(gr::GrpcFailureInjector {
            code: 99,
            message: String::new(),
            ratio: None,
        })),
    }])));
    assert_eq!(p.expect_err("refused").reason, "bad_failure_injector");
    // A malformed authorization of a route only narrows it: dropped alone.
    let (p, skipped) = convert(grpc(route(vec![])));
    assert_eq!(skipped, ["no_networks"]);
    let r = &p.http().unwrap().grpc_routes[0];
    assert_eq!(r.authorizations.len(), 1);
    assert!(!p.denies_all());
}

#[test]
fn bad_detect_timeouts() {
    let timeout = |seconds, nanos| {
        Some(pp::Kind::Detect(pp::Detect {
            timeout: Some(prost_types::Duration { seconds, nanos }),
            http_routes: vec![],
            http_local_rate_limit: None,
        }))
    };
    let detect_timeout = |kind| {
        let (p, skipped) = convert(server(kind, vec![]));
        let Protocol::Detect { timeout, .. } = p.protocol else {
            panic!("{:?}", p.protocol);
        };
        (timeout, skipped)
    };
    assert_eq!(
        detect_timeout(timeout(0, 0)),
        (DEFAULT_DETECT_TIMEOUT, vec![])
    );
    assert_eq!(
        detect_timeout(timeout(-1, 0)),
        (DEFAULT_DETECT_TIMEOUT, vec!["bad_duration"])
    );
    assert_eq!(
        detect_timeout(timeout(3600, 0)),
        (MAX_DETECT_TIMEOUT, vec!["bad_detect_timeout"])
    );
    assert_eq!(
        detect_timeout(timeout(0, 1000)),
        (MIN_DETECT_TIMEOUT, vec!["bad_detect_timeout"])
    );
}
