use super::*;
use crate::{
    inbound::{Client, ClientTls},
    outbound::{HostMatch, PathMatch},
};
use linkerd2_proxy_api::{
    grpc_route as gr, http_route as hr,
    inbound::{authn, proxy_protocol as pp},
    meta as pm, net,
};

// === builders ===

fn labels(kind: &str, name: &str) -> HashMap<String, String> {
    [
        ("group", "policy.linkerd.io"),
        ("kind", kind),
        ("name", name),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn default_meta(name: &str) -> Option<pm::Metadata> {
    Some(pm::Metadata {
        kind: Some(pm::metadata::Kind::Default(name.into())),
    })
}

fn ipnet(s: &str) -> net::IpNetwork {
    s.parse::<ipnet::IpNet>().unwrap().into()
}

fn network(s: &str) -> api::Network {
    api::Network {
        net: Some(ipnet(s)),
        except: vec![],
    }
}

fn unauthenticated() -> Option<api::Authn> {
    Some(api::Authn {
        permit: Some(authn::Permit::Unauthenticated(
            authn::PermitUnauthenticated {},
        )),
    })
}

fn mesh(clients: authn::permit_mesh_tls::Clients) -> Option<api::Authn> {
    Some(api::Authn {
        permit: Some(authn::Permit::MeshTls(authn::PermitMeshTls {
            clients: Some(clients),
        })),
    })
}

fn identities(names: &[&str], suffixes: &[&[&str]]) -> Option<api::Authn> {
    mesh(authn::permit_mesh_tls::Clients::Identities(
        authn::permit_mesh_tls::PermitClientIdentities {
            identities: names
                .iter()
                .map(|n| api::Identity {
                    name: n.to_string(),
                })
                .collect(),
            suffixes: suffixes
                .iter()
                .map(|s| api::IdentitySuffix {
                    parts: s.iter().map(|p| p.to_string()).collect(),
                })
                .collect(),
        },
    ))
}

fn authz(name: &str, nets: Vec<api::Network>, authn: Option<api::Authn>) -> api::Authz {
    api::Authz {
        networks: nets,
        authentication: authn,
        labels: HashMap::new(),
        metadata: default_meta(name),
    }
}

fn anyone(name: &str) -> api::Authz {
    authz(name, vec![network("0.0.0.0/0")], unauthenticated())
}

fn server(protocol: Option<pp::Kind>, authzs: Vec<api::Authz>) -> api::Server {
    api::Server {
        protocol: protocol.map(|kind| api::ProxyProtocol { kind: Some(kind) }),
        server_ips: vec![],
        authorizations: authzs,
        labels: labels("Server", "web-http"),
    }
}

fn prefix(p: &str) -> hr::HttpRouteMatch {
    hr::HttpRouteMatch {
        path: Some(hr::PathMatch {
            kind: Some(hr::path_match::Kind::Prefix(p.into())),
        }),
        ..Default::default()
    }
}

fn http_route(name: &str, matches: Vec<hr::HttpRouteMatch>) -> api::HttpRoute {
    api::HttpRoute {
        metadata: default_meta(name),
        hosts: vec![],
        authorizations: vec![anyone(name)],
        rules: vec![api::http_route::Rule {
            matches,
            filters: vec![],
        }],
    }
}

fn detect(routes: Vec<api::HttpRoute>) -> Option<pp::Kind> {
    Some(pp::Kind::Detect(pp::Detect {
        timeout: Some(prost_types::Duration {
            seconds: 5,
            nanos: 0,
        }),
        http_routes: routes,
        http_local_rate_limit: None,
    }))
}

/// Converts a policy that must be accepted, collecting the skip reasons.
fn convert(s: api::Server) -> (ServerPolicy, Vec<&'static str>) {
    let (p, skipped) = try_convert(s);
    (p.expect("an acceptable policy"), skipped)
}

/// Converts, collecting the skip reasons.
fn try_convert(s: api::Server) -> (Result<ServerPolicy, InvalidRoutes>, Vec<&'static str>) {
    let mut skipped = Vec::new();
    let p = from_proto(s, &mut |r| skipped.push(r));
    (p, skipped)
}

fn plain(addr: &str) -> Client<'static> {
    Client {
        addr: addr.parse().unwrap(),
        tls: ClientTls::None,
    }
}

// === well formed ===

#[test]
fn a_detect_server_with_routes() {
    let (p, skipped) = convert(server(
        detect(vec![http_route("api", vec![prefix("/api")])]),
        vec![anyone("server")],
    ));
    assert_eq!(skipped, Vec::<&str>::new());
    assert_eq!(p.meta.kind(), "Server");
    assert_eq!(p.meta.name(), "web-http");
    assert_eq!(p.meta.group(), "policy.linkerd.io");
    assert_eq!(p.authorizations.len(), 1);
    assert_eq!(p.authorizations[0].meta.name(), "server");
    let Protocol::Detect { timeout, http } = &p.protocol else {
        panic!("{:?}", p.protocol);
    };
    assert_eq!(*timeout, Duration::from_secs(5));
    assert_eq!(http.http_routes.len(), 1);
    assert_eq!(http.http_routes[0].meta.name(), "api");
    assert_eq!(
        http.http_routes[0].rules[0].matches[0].path,
        Some(PathMatch::prefix("/api"))
    );
    assert_eq!(http.http_routes[0].authorizations[0].meta.name(), "api");
}

#[test]
fn no_routes_get_the_default_route() {
    for kind in [
        None,
        detect(vec![]),
        Some(pp::Kind::Http1(pp::Http1 {
            routes: vec![],
            local_rate_limit: None,
        })),
        Some(pp::Kind::Grpc(pp::Grpc { routes: vec![] })),
    ] {
        let grpc = matches!(kind, Some(pp::Kind::Grpc(_)));
        let (p, skipped) = convert(server(kind, vec![anyone("server")]));
        assert!(skipped.is_empty());
        let http = p.http().unwrap();
        let routes = if grpc {
            assert!(http.http_routes.is_empty());
            http.grpc_routes.len()
        } else {
            assert!(http.grpc_routes.is_empty());
            http.http_routes.len()
        };
        assert_eq!(routes, 1);
        let req = http::Request::get("/x/y").body(()).unwrap();
        let s = http.select(&req, grpc).unwrap();
        assert_eq!(s.meta.name(), "default");
        assert_eq!(**s.authorizations, *p.authorizations);
    }
    let (p, _) = convert(server(None, vec![]));
    assert!(
        matches!(p.protocol, Protocol::Detect { timeout, .. } if timeout == DEFAULT_DETECT_TIMEOUT)
    );
}

#[test]
fn opaque_and_tls() {
    let (p, _) = convert(server(Some(pp::Kind::Opaque(pp::Opaque {})), vec![]));
    assert_eq!(p.protocol, Protocol::Opaque);
    assert!(p.denies_all());
    let (p, _) = convert(server(Some(pp::Kind::Tls(pp::Tls {})), vec![anyone("a")]));
    assert_eq!(p.protocol, Protocol::Tls);
    assert!(p.admits_somewhere(&plain("10.0.0.1")));
}

#[test]
fn authentications() {
    use authn::permit_mesh_tls::Clients;
    let (p, skipped) = convert(server(
        Some(pp::Kind::Opaque(pp::Opaque {})),
        vec![
            authz("u", vec![network("0.0.0.0/0")], unauthenticated()),
            authz(
                "t",
                vec![network("0.0.0.0/0")],
                mesh(Clients::Unauthenticated(authn::PermitUnauthenticated {})),
            ),
            authz(
                "i",
                vec![network("0.0.0.0/0")],
                identities(&["a.ns", "*"], &[&["ns", "svc"], &[]]),
            ),
        ],
    ));
    assert!(skipped.is_empty());
    let a = &p.authorizations;
    assert_eq!(a[0].authentication, Authentication::Unauthenticated);
    assert_eq!(a[1].authentication, Authentication::TlsUnauthenticated);
    assert_eq!(
        a[2].authentication,
        Authentication::TlsAuthenticated {
            identities: [Arc::from("a.ns"), Arc::from("*")].into(),
            suffixes: vec![Suffix::new(&["ns", "svc"]).unwrap(), Suffix::any()],
        }
    );
}

#[test]
fn authz_labels_are_the_fallback_meta() {
    let mut a = anyone("ignored");
    a.metadata = None;
    a.labels = labels("ServerAuthorization", "legacy");
    let mut audit = anyone("ignored");
    audit.metadata = None;
    audit.labels = labels("default", "audit");
    let (p, _) = convert(server(None, vec![a, audit]));
    assert_eq!(p.authorizations[0].meta.kind(), "ServerAuthorization");
    assert_eq!(p.authorizations[0].meta.name(), "legacy");
    assert!(p.authorizations[1].is_audit());
}

#[test]
fn server_meta_defaults() {
    let mut s = server(None, vec![]);
    s.labels = labels("default", "all-unauthenticated");
    assert_eq!(
        convert(s).0.meta,
        Meta::Default {
            name: "all-unauthenticated".into()
        }
    );
    let mut s = server(None, vec![]);
    s.labels.clear();
    assert_eq!(convert(s).0.meta, Meta::Default { name: "".into() });
}

#[test]
fn rate_limits() {
    let limit = |rps| {
        Some(api::http_local_rate_limit::Limit {
            requests_per_second: rps,
        })
    };
    let rl = api::HttpLocalRateLimit {
        metadata: default_meta("rl"),
        total: limit(100),
        identity: limit(0),
        overrides: vec![
            api::http_local_rate_limit::Override {
                limit: limit(10),
                clients: Some(api::http_local_rate_limit::r#override::ClientIdentities {
                    identities: vec![api::Identity {
                        name: "a.ns".into(),
                    }],
                }),
            },
            api::http_local_rate_limit::Override {
                limit: limit(0),
                clients: Some(api::http_local_rate_limit::r#override::ClientIdentities {
                    identities: vec![api::Identity {
                        name: "b.ns".into(),
                    }],
                }),
            },
            api::http_local_rate_limit::Override {
                limit: limit(10),
                clients: None,
            },
        ],
    };
    let kind = pp::Kind::Http2(pp::Http2 {
        routes: vec![],
        local_rate_limit: Some(rl),
    });
    let (p, skipped) = convert(server(Some(kind), vec![anyone("a")]));
    assert_eq!(skipped, ["bad_rate_limit", "bad_rate_limit"]);
    assert!(matches!(p.protocol, Protocol::Http2(_)));
    let got = p.http().unwrap().rate_limit.as_deref().unwrap();
    let want = LocalRateLimit::new(
        Meta::Default { name: "rl".into() },
        NonZeroU32::new(100),
        None,
        vec![(vec![Arc::from("a.ns")], NonZeroU32::new(10).unwrap())],
    );
    assert_eq!(got, &want);
}

#[cfg(test)]
mod malformed;
