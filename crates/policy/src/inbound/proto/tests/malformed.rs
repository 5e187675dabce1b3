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
fn bad_routes_are_dropped_without_the_default_route() {
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
    let (p, skipped) = convert(server(
        detect(vec![
            http_route("bad-regex", vec![regex]),
            no_rules,
            bad_host,
        ]),
        vec![anyone("server")],
    ));
    assert_eq!(skipped, ["bad_regex", "no_rules", "no_rules", "bad_host"]);
    let http = p.http().unwrap();
    assert!(http.http_routes.is_empty());
    let req = http::Request::get("/").body(()).unwrap();
    assert!(
        http.select(&req, false).is_none(),
        "nothing admitted by default"
    );
}

#[test]
fn bad_filters_are_dropped_alone() {
    use api::http_route::{Filter, filter::Kind as F};
    let mut route = http_route("r", vec![prefix("/")]);
    route.hosts = vec![hr::HostMatch {
        r#match: Some(hr::host_match::Match::Exact("Web.Example.com.".into())),
    }];
    route.rules[0].filters = vec![
        Filter { kind: None },
        Filter {
            kind: Some(F::FailureInjector(hr::HttpFailureInjector {
                status: 1000,
                message: String::new(),
                ratio: None,
            })),
        },
        Filter {
            kind: Some(F::RequestHeaderModifier(hr::RequestHeaderModifier {
                add: None,
                set: None,
                remove: vec!["bad header".into(), "x-ok".into()],
            })),
        },
    ];
    let (p, skipped) = convert(server(detect(vec![route]), vec![]));
    assert_eq!(skipped, ["no_filter", "bad_failure_injector", "bad_header"]);
    let r = &p.http().unwrap().http_routes[0];
    assert_eq!(r.hosts, vec![HostMatch::Exact("web.example.com".into())]);
    assert!(matches!(
        &r.rules[0].filters[..],
        [HttpFilter::RequestHeaders(m)] if m.remove.len() == 1
    ));
}

#[test]
fn bad_grpc_routes() {
    use api::grpc_route::{Filter, filter::Kind as F};
    let route = api::GrpcRoute {
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
            filters: vec![Filter {
                kind: Some(F::FailureInjector(gr::GrpcFailureInjector {
                    code: 99,
                    message: String::new(),
                    ratio: None,
                })),
            }],
        }],
    };
    let (p, skipped) = convert(server(
        Some(pp::Kind::Grpc(pp::Grpc {
            routes: vec![route],
        })),
        vec![],
    ));
    assert_eq!(skipped, ["bad_failure_injector", "no_networks"]);
    let r = &p.http().unwrap().grpc_routes[0];
    assert_eq!(r.authorizations.len(), 1);
    assert!(r.rules[0].filters.is_empty());
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
