use super::*;
use crate::outbound::{
    Distribution, GrpcMatch, HeaderMatch, Meta, OpaqueRule, Pattern, QueryMatch, ValueMatch,
};
use http::{HeaderName, HeaderValue, Method};

// === builders ===

fn meta(name: &str) -> Meta {
    Meta::Default { name: name.into() }
}

fn rule(matches: Vec<HttpMatch>) -> HttpRule {
    HttpRule {
        matches,
        filters: vec![],
        backends: Distribution::Empty,
        timeouts: Default::default(),
        retry: None,
        allow_l5d_request_headers: false,
    }
}

fn route(name: &str, hosts: Vec<HostMatch>, rules: Vec<HttpRule>) -> HttpRoute {
    HttpRoute {
        meta: meta(name),
        hosts,
        rules,
    }
}

fn path(p: PathMatch) -> HttpMatch {
    HttpMatch {
        path: Some(p),
        ..Default::default()
    }
}

fn exact(p: &str) -> PathMatch {
    PathMatch::Exact(p.into())
}

fn regex(p: &str) -> PathMatch {
    PathMatch::Regex(Pattern::new(p).unwrap())
}

fn header(name: &'static str, value: &'static str) -> HeaderMatch {
    HeaderMatch {
        name: HeaderName::from_static(name),
        value: ValueMatch::Exact(HeaderValue::from_static(value)),
    }
}

fn query(name: &str, value: &str) -> QueryMatch {
    QueryMatch {
        name: name.into(),
        value: ValueMatch::Exact(value.into()),
    }
}

fn req(method: Method, uri: &str) -> Request<()> {
    Request::builder().method(method).uri(uri).body(()).unwrap()
}

fn get(uri: &str) -> Request<()> {
    req(Method::GET, uri)
}

/// The selected route's name and the rule's index in it.
fn chosen(routes: &[HttpRoute], req: &Request<()>) -> Option<(String, usize)> {
    let (route, rule) = http(routes, req)?;
    let idx = route.rules.iter().position(|r| std::ptr::eq(r, rule))?;
    Some((route.meta.name().to_string(), idx))
}

fn one(name: &str, m: HttpMatch) -> HttpRoute {
    route(name, vec![], vec![rule(vec![m])])
}

// === HTTP ===

#[test]
fn exact_beats_prefix_beats_regex() {
    let routes = [
        one("regex", path(regex("/api/.*"))),
        one("short", path(PathMatch::prefix("/api"))),
        one("long", path(PathMatch::prefix("/api/users/"))),
        one("exact", path(exact("/api/users/1"))),
    ];
    let name = |uri| chosen(&routes, &get(uri)).map(|(n, _)| n);
    assert_eq!(name("/api/users/1").as_deref(), Some("exact"));
    assert_eq!(name("/api/users/2").as_deref(), Some("long"));
    assert_eq!(name("/api/users").as_deref(), Some("long"));
    assert_eq!(name("/api/other").as_deref(), Some("short"));
    assert_eq!(name("/apix").as_deref(), None, "a prefix is whole segments");
}

#[test]
fn regex_is_anchored_and_used_when_nothing_else_fits() {
    let routes = [
        one("prefix", path(PathMatch::prefix("/static"))),
        one("regex", path(regex("/u/[0-9]+"))),
    ];
    assert_eq!(chosen(&routes, &get("/u/12")).unwrap().0, "regex");
    assert_eq!(chosen(&routes, &get("/u/12/x")), None);
    assert_eq!(chosen(&routes, &get("/x/u/12")), None);
}

#[test]
fn prefix_matches_on_segment_boundaries() {
    let routes = [one("api", path(PathMatch::prefix("/api/")))];
    for ok in ["/api", "/api/", "/api/x", "/api/x/y?q=1"] {
        assert!(chosen(&routes, &get(ok)).is_some(), "{ok}");
    }
    for no in ["/apix", "/ap", "/", "/x/api"] {
        assert!(chosen(&routes, &get(no)).is_none(), "{no}");
    }
}

#[test]
fn method_then_headers_then_query() {
    let routes = [
        one("plain", path(PathMatch::prefix("/"))),
        one(
            "query2",
            HttpMatch {
                query: vec![query("a", "1"), query("b", "2")],
                ..Default::default()
            },
        ),
        one(
            "header1",
            HttpMatch {
                headers: vec![header("x-a", "1")],
                ..Default::default()
            },
        ),
        one(
            "header2",
            HttpMatch {
                headers: vec![header("x-a", "1"), header("x-b", "2")],
                ..Default::default()
            },
        ),
        one(
            "method",
            HttpMatch {
                method: Some(Method::POST),
                ..Default::default()
            },
        ),
    ];
    let name = |r: Request<()>| chosen(&routes, &r).unwrap().0;
    let with = |mut r: Request<()>, hs: &[(&'static str, &'static str)]| {
        for (n, v) in hs {
            r.headers_mut().append(*n, HeaderValue::from_static(v));
        }
        r
    };
    assert_eq!(name(get("/")), "plain");
    assert_eq!(name(get("/?b=2&a=1")), "query2");
    assert_eq!(name(with(get("/?a=1&b=2"), &[("x-a", "1")])), "header1");
    assert_eq!(
        name(with(get("/"), &[("x-a", "1"), ("x-b", "2")])),
        "header2"
    );
    assert_eq!(
        name(with(
            req(Method::POST, "/?a=1&b=2"),
            &[("x-a", "1"), ("x-b", "2")]
        )),
        "method"
    );
    // The path ranks above everything else.
    let mut more = routes.to_vec();
    more.push(one("exact", path(exact("/e"))));
    assert_eq!(
        chosen(&more, &with(req(Method::POST, "/e"), &[("x-a", "1")]))
            .unwrap()
            .0,
        "exact"
    );
}

#[test]
fn header_and_query_values_must_fit() {
    let routes = [one(
        "h",
        HttpMatch {
            headers: vec![HeaderMatch {
                name: HeaderName::from_static("x-v"),
                value: ValueMatch::Regex(Pattern::new("v[0-9]").unwrap()),
            }],
            query: vec![QueryMatch {
                name: "q".into(),
                value: ValueMatch::Regex(Pattern::new("[a-c]+").unwrap()),
            }],
            ..Default::default()
        },
    )];
    let mut r = get("/?q=abc&q=zzz");
    r.headers_mut()
        .append("x-v", HeaderValue::from_static("nope"));
    r.headers_mut()
        .append("x-v", HeaderValue::from_static("v7"));
    assert!(
        chosen(&routes, &r).is_some(),
        "any header value; the first query value"
    );
    let mut r = get("/?q=zzz&q=abc");
    r.headers_mut()
        .append("x-v", HeaderValue::from_static("v7"));
    assert!(chosen(&routes, &r).is_none());
    let mut r = get("/?q=abc");
    r.headers_mut()
        .append("x-v", HeaderValue::from_static("v77"));
    assert!(chosen(&routes, &r).is_none());
}

#[test]
fn ties_keep_route_then_rule_order() {
    let routes = [
        route(
            "first",
            vec![],
            vec![
                rule(vec![path(PathMatch::prefix("/a"))]),
                rule(vec![path(PathMatch::prefix("/a"))]),
            ],
        ),
        one("second", path(PathMatch::prefix("/a"))),
    ];
    assert_eq!(chosen(&routes, &get("/a/b")), Some(("first".into(), 0)));
    // A rule with no matches fits as the prefix `/`: a longer prefix wins.
    let routes = [
        route("catch-all", vec![], vec![rule(vec![])]),
        one("b", path(PathMatch::prefix("/b"))),
    ];
    assert_eq!(chosen(&routes, &get("/b")).unwrap().0, "b");
    assert_eq!(chosen(&routes, &get("/c")).unwrap().0, "catch-all");
    let sel = http_selection(&routes, &get("/c")).unwrap();
    assert_eq!(sel.prefix(), Some("/"));
    let sel = http_selection(&routes, &get("/b/x")).unwrap();
    assert_eq!(sel.prefix(), Some("/b"));
}

#[test]
fn exact_host_beats_longer_suffix_beats_shorter_beats_any() {
    let all = HttpMatch::default;
    let routes = [
        route("any", vec![], vec![rule(vec![all()])]),
        route(
            "short",
            vec![HostMatch::Suffix(".com".into())],
            vec![rule(vec![all()])],
        ),
        route(
            "long",
            vec![HostMatch::Suffix(".example.com".into())],
            vec![rule(vec![all()])],
        ),
        route(
            "exact",
            vec![HostMatch::Exact("api.example.com".into())],
            vec![rule(vec![all()])],
        ),
    ];
    let name = |r: Request<()>| chosen(&routes, &r).unwrap().0;
    assert_eq!(name(get("http://API.Example.com:8080/")), "exact");
    assert_eq!(name(get("http://web.example.com/")), "long");
    assert_eq!(
        name(get("http://example.com/")),
        "short",
        "a suffix needs a label before it"
    );
    assert_eq!(name(get("http://example.org/")), "any");
    assert_eq!(name(get("/")), "any", "no host: only host-less routes");
    let mut r = get("/");
    r.headers_mut().insert(
        http::header::HOST,
        HeaderValue::from_static("api.example.com.:80"),
    );
    assert_eq!(
        name(r),
        "exact",
        "the Host header, port and trailing dot stripped"
    );

    // The host ranks above the rule: an exact host with a catch-all rule
    // beats a wildcard host with an exact path.
    let routes = [
        route(
            "wild",
            vec![HostMatch::Suffix(".example.com".into())],
            vec![rule(vec![path(exact("/x"))])],
        ),
        route(
            "exact",
            vec![HostMatch::Exact("a.example.com".into())],
            vec![rule(vec![])],
        ),
    ];
    assert_eq!(
        chosen(&routes, &get("http://a.example.com/x")).unwrap().0,
        "exact"
    );
    assert_eq!(
        chosen(&routes, &get("http://b.example.com/x")).unwrap().0,
        "wild"
    );
    assert_eq!(chosen(&routes, &get("http://b.example.org/x")), None);
}

#[test]
fn request_host_forms() {
    let host = |h: &'static str| {
        let mut r = get("/");
        r.headers_mut()
            .insert(http::header::HOST, HeaderValue::from_static(h));
        request_host(&r).map(|(h, p)| (h.to_string(), p))
    };
    assert_eq!(host("a.b:81"), Some(("a.b".into(), Some(81))));
    assert_eq!(host("a.b"), Some(("a.b".into(), None)));
    assert_eq!(host("[::1]:82"), Some(("[::1]".into(), Some(82))));
    assert_eq!(host("[::1"), None);
    assert_eq!(host(""), None);
}

#[test]
fn thousand_routes_select_the_last() {
    let routes: Vec<HttpRoute> = (0..1000)
        .map(|i| {
            one(
                &format!("r{i}"),
                path(PathMatch::prefix(&format!("/svc{i}"))),
            )
        })
        .chain([route("catch-all", vec![], vec![rule(vec![])])])
        .collect();
    assert_eq!(
        chosen(&routes, &get("/svc999/items/7")),
        Some(("r999".into(), 0))
    );
    assert_eq!(chosen(&routes, &get("/svc9999")).unwrap().0, "catch-all");
    assert_eq!(chosen(&routes, &get("/svc12")).unwrap().0, "r12");
}

#[test]
fn profile_order_with_http_first() {
    let routes = [
        one("broad", path(regex("/a.*"))),
        one(
            "specific",
            HttpMatch {
                path: Some(regex(".*")),
                method: Some(Method::GET),
                ..Default::default()
            },
        ),
    ];
    assert_eq!(chosen(&routes, &get("/a")).unwrap().0, "specific");
    let first = http_first(&routes, &get("/a")).unwrap();
    assert_eq!(first.route.meta.name(), "broad");
    assert_eq!(
        http_first(&routes, &get("/b")).unwrap().route.meta.name(),
        "specific"
    );
    assert!(http_first(&routes, &req(Method::PUT, "/b")).is_none());
}

// === gRPC ===

fn grpc_rule(matches: Vec<GrpcMatch>) -> GrpcRule {
    GrpcRule {
        matches,
        filters: vec![],
        backends: Distribution::Empty,
        timeouts: Default::default(),
        retry: None,
        allow_l5d_request_headers: false,
    }
}

fn rpc(service: Option<&str>, method: Option<&str>, headers: Vec<HeaderMatch>) -> GrpcMatch {
    GrpcMatch {
        service: service.map(Into::into),
        method: method.map(Into::into),
        headers,
    }
}

#[test]
fn grpc_service_and_method_precedence() {
    let routes: Vec<GrpcRoute> = [
        ("neither", rpc(None, None, vec![])),
        ("method", rpc(None, Some("Get"), vec![])),
        ("service", rpc(Some("pkg.Svc"), None, vec![])),
        ("both", rpc(Some("pkg.Svc"), Some("Get"), vec![])),
        (
            "service+header",
            rpc(Some("pkg.Other"), None, vec![header("x-a", "1")]),
        ),
        ("service-other", rpc(Some("pkg.Other"), None, vec![])),
    ]
    .into_iter()
    .map(|(name, m)| GrpcRoute {
        meta: meta(name),
        hosts: vec![],
        rules: vec![grpc_rule(vec![m])],
    })
    .collect();
    let name = |r: Request<()>| grpc(&routes, &r).unwrap().0.meta.name().to_string();
    assert_eq!(name(req(Method::POST, "/pkg.Svc/Get")), "both");
    assert_eq!(name(req(Method::POST, "/pkg.Svc/Put")), "service");
    assert_eq!(name(req(Method::POST, "/pkg.Else/Get")), "method");
    assert_eq!(name(req(Method::POST, "/pkg.Else/Put")), "neither");
    assert_eq!(name(req(Method::POST, "/not-grpc")), "neither");
    let mut r = req(Method::POST, "/pkg.Other/Get");
    assert_eq!(name(r.clone()), "service-other");
    r.headers_mut().insert("x-a", HeaderValue::from_static("1"));
    assert_eq!(name(r), "service+header", "more headers win among equals");
}

// === TLS and opaque ===

fn tls_route(name: &str, snis: Vec<HostMatch>) -> TlsRoute {
    TlsRoute {
        meta: meta(name),
        snis,
        rules: vec![OpaqueRule {
            backends: Distribution::Empty,
            filters: vec![],
        }],
    }
}

#[test]
fn sni_exact_beats_longest_suffix() {
    let routes = [
        tls_route("any", vec![]),
        tls_route("short", vec![HostMatch::Suffix(".com".into())]),
        tls_route("long", vec![HostMatch::Suffix(".example.com".into())]),
        tls_route("exact", vec![HostMatch::Exact("db.example.com".into())]),
    ];
    let name = |sni| tls(&routes, sni).unwrap().0.meta.name().to_string();
    assert_eq!(name(Some("DB.example.com")), "exact");
    assert_eq!(name(Some("web.example.com")), "long");
    assert_eq!(name(Some("x.com")), "short");
    assert_eq!(name(Some("x.org")), "any");
    assert_eq!(name(None), "any");
    assert!(tls(&routes[1..], Some("x.org")).is_none());
}

#[test]
fn opaque_takes_the_first_rule() {
    let mut first = OpaqueRoute {
        meta: meta("first"),
        rules: vec![],
    };
    let second = OpaqueRoute {
        meta: meta("second"),
        rules: vec![OpaqueRule {
            backends: Distribution::Empty,
            filters: vec![],
        }],
    };
    let routes = [first.clone(), second.clone()];
    assert_eq!(opaque(&routes).unwrap().0.meta.name(), "second");
    first.rules = second.rules.clone();
    let routes = [first, second];
    assert_eq!(opaque(&routes).unwrap().0.meta.name(), "first");
    assert!(opaque(&[]).is_none());
}
