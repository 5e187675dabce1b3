use super::*;
use crate::{
    inbound::{Authentication, Network},
    outbound::{HeaderModifier, PathMatch},
};
use http::Request;
use std::sync::Arc;

fn authz(name: &str) -> Arc<[Authorization]> {
    Arc::new([Authorization {
        meta: Meta::Default { name: name.into() },
        networks: Network::all().into(),
        authentication: Authentication::Unauthenticated,
    }])
}

fn http_route(name: &str, hosts: Vec<HostMatch>, paths: &[PathMatch]) -> HttpRoute {
    HttpRoute {
        meta: Meta::Default { name: name.into() },
        hosts,
        authorizations: authz(name),
        rules: paths
            .iter()
            .map(|p| HttpRule {
                matches: vec![HttpMatch {
                    path: Some(p.clone()),
                    ..Default::default()
                }],
                filters: vec![HttpFilter::RequestHeaders(HeaderModifier::default())].into(),
            })
            .collect(),
    }
}

fn policy(http_routes: Vec<HttpRoute>, grpc_routes: Vec<GrpcRoute>) -> HttpPolicy {
    HttpPolicy {
        http_routes,
        grpc_routes,
        rate_limit: None,
    }
}

fn get(uri: &str) -> Request<()> {
    Request::get(uri).body(()).unwrap()
}

fn chosen(p: &HttpPolicy, uri: &str) -> Option<String> {
    p.select(&get(uri), false)
        .map(|s| s.meta.name().to_string())
}

#[test]
fn gateway_precedence() {
    let p = policy(
        vec![
            http_route("prefix", vec![], &[PathMatch::prefix("/api")]),
            http_route("longer", vec![], &[PathMatch::prefix("/api/v1")]),
            http_route("exact", vec![], &[PathMatch::Exact("/api/v1/x".into())]),
            http_route(
                "host",
                vec![HostMatch::Exact("web.example.com".into())],
                &[PathMatch::prefix("/")],
            ),
        ],
        vec![],
    );
    assert_eq!(chosen(&p, "/api/x").as_deref(), Some("prefix"));
    assert_eq!(chosen(&p, "/api/v1/y").as_deref(), Some("longer"));
    assert_eq!(chosen(&p, "/api/v1/x").as_deref(), Some("exact"));
    assert_eq!(chosen(&p, "/other"), None);
    assert_eq!(chosen(&p, "/apix"), None, "prefixes match whole segments");
    // A route naming the host beats any that names none.
    assert_eq!(
        chosen(&p, "http://web.example.com/api/v1/x").as_deref(),
        Some("host")
    );
}

#[test]
fn selected_carries_the_route_authorizations_filters_and_prefix() {
    let p = policy(
        vec![
            http_route("p", vec![], &[PathMatch::prefix("/api/")]),
            http_route("e", vec![], &[PathMatch::Exact("/e".into())]),
        ],
        vec![],
    );
    let s = p.select(&get("/api/x"), false).unwrap();
    assert_eq!(**s.authorizations, *authz("p"));
    assert_eq!(s.prefix, Some("/api"));
    assert!(matches!(
        s.filters,
        Filters::Http(f) if matches!(**f, [HttpFilter::RequestHeaders(_)])
    ));
    assert_eq!(p.select(&get("/e"), false).unwrap().prefix, None);
}

#[test]
fn the_default_route_takes_everything() {
    let p = HttpPolicy::default_routes(authz("server"));
    let s = p
        .select(&get("http://any.host/any/path?q=1"), false)
        .unwrap();
    assert_eq!(s.meta.name(), "default");
    assert_eq!(**s.authorizations, *authz("server"));
    assert_eq!(s.prefix, Some("/"));
    let s = p.select(&get("/pkg.Svc/Method"), true).unwrap();
    assert_eq!(s.meta.name(), "default");
    assert!(matches!(s.filters, Filters::Grpc(f) if f.is_empty()));
    assert_eq!(s.prefix, None);
}

#[test]
fn grpc_routes_for_grpc_ports() {
    let rpc = |service: &str, method: Option<&str>| GrpcRule {
        matches: vec![GrpcMatch {
            service: Some(service.into()),
            method: method.map(Into::into),
            headers: vec![],
        }],
        filters: vec![].into(),
    };
    let route = |name: &str, rules| GrpcRoute {
        meta: Meta::Default { name: name.into() },
        hosts: vec![],
        authorizations: authz(name),
        rules,
    };
    let p = policy(
        vec![http_route("http", vec![], &[PathMatch::prefix("/")])],
        vec![
            route("service", vec![rpc("pkg.Svc", None)]),
            route("method", vec![rpc("pkg.Svc", Some("Get"))]),
        ],
    );
    let name = |uri: &str, grpc| p.select(&get(uri), grpc).map(|s| s.meta.name().to_string());
    assert_eq!(name("/pkg.Svc/Get", true).as_deref(), Some("method"));
    assert_eq!(name("/pkg.Svc/Put", true).as_deref(), Some("service"));
    assert_eq!(name("/pkg.Other/Get", true), None);
    assert_eq!(name("/pkg.Svc/Get", false).as_deref(), Some("http"));
}
