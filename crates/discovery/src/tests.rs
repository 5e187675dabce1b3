use super::*;
use linkerd2_proxy_api::destination::{
    AddrSet, NoEndpoints, ProtocolHint, TlsIdentity, Update, WeightedAddr, WeightedAddrSet,
    protocol_hint, tls_identity, update,
};
use watch::Apply;

fn wa(addr: &str, weight: u32) -> WeightedAddr {
    WeightedAddr {
        addr: Some(addr.parse::<SocketAddr>().unwrap().into()),
        weight,
        ..Default::default()
    }
}

fn add(addrs: Vec<WeightedAddr>) -> Update {
    Update {
        update: Some(update::Update::Add(WeightedAddrSet {
            addrs,
            metric_labels: [("service".to_string(), "web".to_string())].into(),
        })),
    }
}

fn addrs(r: &Resolution) -> Vec<String> {
    match r {
        Resolution::Endpoints(m) => m.keys().map(ToString::to_string).collect(),
        other => vec![format!("{other:?}")],
    }
}

#[test]
fn updates_build_the_set_and_skip_malformed_endpoints() {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::register(&mut registry);
    let mut apply = destination::Endpoints {
        metrics: metrics.clone(),
    };
    let (tx, rx) = tw::channel(Resolution::Pending);
    let mut identified = wa("10.0.0.1:80", 2);
    identified.tls_identity = Some(TlsIdentity {
        server_name: None,
        strategy: Some(tls_identity::Strategy::DnsLikeIdentity(
            tls_identity::DnsLikeIdentity {
                name: "web.ns.serviceaccount.identity.linkerd.cluster.local".into(),
            },
        )),
    });
    identified.protocol_hint = Some(ProtocolHint {
        protocol: Some(protocol_hint::Protocol::H2(protocol_hint::H2 {})),
        opaque_transport: None,
    });
    let no_addr = WeightedAddr {
        addr: None,
        weight: 1,
        ..Default::default()
    };
    let mut unknown_hint = wa("10.0.0.3:80", 1);
    unknown_hint.protocol_hint = Some(ProtocolHint {
        protocol: None,
        opaque_transport: None,
    });
    apply.message(
        &tx,
        add(vec![
            identified,
            no_addr,
            wa("10.0.0.2:80", 0),
            unknown_hint,
        ]),
        true,
    );
    assert_eq!(addrs(&rx.borrow()), ["10.0.0.1:80", "10.0.0.3:80"]);
    let Resolution::Endpoints(set) = rx.borrow().clone() else {
        panic!()
    };
    let e = &set[&"10.0.0.1:80".parse().unwrap()];
    assert_eq!(e.hint, Hint::H2);
    assert_eq!(e.weight, 2);
    assert_eq!(
        e.identity.as_deref(),
        Some("web.ns.serviceaccount.identity.linkerd.cluster.local")
    );
    assert_eq!(e.labels["service"], "web");
    assert_eq!(set[&"10.0.0.3:80".parse().unwrap()].hint, Hint::Unknown);

    // Removal, then an update with no content.
    apply.message(
        &tx,
        Update {
            update: Some(update::Update::Remove(AddrSet {
                addrs: vec!["10.0.0.1:80".parse::<SocketAddr>().unwrap().into()],
            })),
        },
        false,
    );
    assert_eq!(addrs(&rx.borrow()), ["10.0.0.3:80"]);
    apply.message(&tx, Update { update: None }, false);
    assert_eq!(addrs(&rx.borrow()), ["10.0.0.3:80"]);

    // A reconnected stream's first message replaces the set.
    apply.message(&tx, add(vec![wa("10.0.0.9:80", 1)]), true);
    assert_eq!(addrs(&rx.borrow()), ["10.0.0.9:80"]);
    apply.message(
        &tx,
        Update {
            update: Some(update::Update::NoEndpoints(NoEndpoints { exists: false })),
        },
        false,
    );
    assert_eq!(*rx.borrow(), Resolution::NotFound);

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for reason in [
        "no_address",
        "zero_weight",
        "unknown_protocol_hint",
        "empty_update",
    ] {
        assert!(
            text.contains(&format!(
                "control_client_skipped_total{{reason=\"{reason}\"}} 1"
            )),
            "{reason}: {text}"
        );
    }
}

#[test]
fn weighted_picks_follow_weights() {
    let mut set = BTreeMap::new();
    for (a, w) in [("10.0.0.1:80", 1u32), ("10.0.0.2:80", 3)] {
        let addr: SocketAddr = a.parse().unwrap();
        let mut e = (*plain(addr)).clone();
        e.weight = w;
        set.insert(addr, Arc::new(e));
    }
    let heavy: SocketAddr = "10.0.0.2:80".parse().unwrap();
    let n = (0..4000)
        .filter(|_| weighted(&set).unwrap().addr == heavy)
        .count();
    // 3 in 4 on average; far outside chance if weights were ignored.
    assert!((2700..3300).contains(&n), "{n}");
    assert_eq!(weighted(&BTreeMap::new()), None);
}

/// A server whose one HTTP route has the path regex `path`.
fn server_with_route(path_regex: &str) -> inbound::Server {
    use linkerd2_proxy_api::http_route as hr;
    inbound::Server {
        protocol: Some(inbound::ProxyProtocol {
            kind: Some(inbound::proxy_protocol::Kind::Http1(
                inbound::proxy_protocol::Http1 {
                    routes: vec![inbound::HttpRoute {
                        rules: vec![inbound::http_route::Rule {
                            matches: vec![hr::HttpRouteMatch {
                                path: Some(hr::PathMatch {
                                    kind: Some(hr::path_match::Kind::Regex(path_regex.into())),
                                }),
                                ..Default::default()
                            }],
                            filters: vec![],
                        }],
                        ..Default::default()
                    }],
                    local_rate_limit: None,
                },
            )),
        }),
        ..Default::default()
    }
}

#[test]
fn a_server_policy_with_malformed_routes_is_refused_whole() {
    let (tx, rx) = tokio::sync::watch::channel(None);
    let mut apply = PortPolicies {
        metrics: Metrics::default(),
    };
    // The first answer is unusable: nobody is admitted (not the default).
    apply.message(&tx, server_with_route("("), true);
    let first = rx.borrow().clone().unwrap();
    assert!(first.denies_all(), "{first:?}");
    // A usable one replaces it...
    apply.message(&tx, server_with_route("/a.*"), false);
    let good = rx.borrow().clone().unwrap();
    assert_eq!(good.http().unwrap().http_routes.len(), 1);
    // ...and a later unusable one leaves it in force.
    apply.message(&tx, server_with_route("(("), false);
    assert!(Arc::ptr_eq(&good, rx.borrow().as_ref().unwrap()));
}
