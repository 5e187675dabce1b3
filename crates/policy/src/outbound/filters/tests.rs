use super::*;
use http::Method;

fn get(uri: &str) -> Request<()> {
    Request::builder()
        .method(Method::GET)
        .uri(uri)
        .body(())
        .unwrap()
}

fn hv(s: &'static str) -> HeaderValue {
    HeaderValue::from_static(s)
}

fn modifier() -> HeaderModifier {
    HeaderModifier {
        add: vec![
            (HeaderName::from_static("x-add"), hv("new")),
            (HeaderName::from_static("x-gone"), hv("added-then-removed")),
        ],
        set: vec![(HeaderName::from_static("x-set"), hv("only"))],
        remove: vec![HeaderName::from_static("x-gone")],
    }
}

fn redirect(path: Option<PathModifier>) -> Redirect {
    Redirect {
        scheme: None,
        host: None,
        port: None,
        path,
        status: StatusCode::FOUND,
    }
}

fn location(o: Outcome) -> (StatusCode, String) {
    match o {
        Outcome::Respond(rsp) => (
            rsp.status(),
            rsp.headers()[http::header::LOCATION]
                .to_str()
                .unwrap()
                .to_string(),
        ),
        other => panic!("not a redirect: {other:?}"),
    }
}

#[test]
fn request_headers_add_then_set_then_remove() {
    let mut req = get("/");
    req.headers_mut().insert("x-add", hv("old"));
    req.headers_mut().append("x-set", hv("a"));
    req.headers_mut().append("x-set", hv("b"));
    req.headers_mut().insert("x-gone", hv("old"));
    let filters = [
        HttpFilter::RequestHeaders(modifier()),
        // A response filter leaves the request alone.
        HttpFilter::ResponseHeaders(HeaderModifier {
            remove: vec![HeaderName::from_static("x-add")],
            ..Default::default()
        }),
    ];
    assert!(matches!(
        apply_request(&filters, None, &mut req),
        Outcome::Continue
    ));
    let h = req.headers();
    let adds: Vec<_> = h.get_all("x-add").iter().collect();
    assert_eq!(adds, [hv("old"), hv("new")]);
    let sets: Vec<_> = h.get_all("x-set").iter().collect();
    assert_eq!(sets, [hv("only")]);
    assert!(!h.contains_key("x-gone"));
}

#[test]
fn response_headers() {
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.headers.insert("x-gone", hv("v"));
    let filters = [
        HttpFilter::RequestHeaders(HeaderModifier {
            set: vec![(HeaderName::from_static("x-req"), hv("1"))],
            ..Default::default()
        }),
        HttpFilter::ResponseHeaders(modifier()),
    ];
    apply_response(&filters, &mut parts);
    assert_eq!(parts.headers["x-add"], "new");
    assert_eq!(parts.headers["x-set"], "only");
    assert!(!parts.headers.contains_key("x-gone"));
    assert!(!parts.headers.contains_key("x-req"));
}

#[test]
fn redirect_keeps_what_it_does_not_change() {
    let f = [HttpFilter::Redirect(redirect(None))];
    let o = apply_request(&f, None, &mut get("http://web.example.com:8080/a/b?x=1"));
    assert_eq!(
        location(o),
        (
            StatusCode::FOUND,
            "http://web.example.com:8080/a/b?x=1".into()
        )
    );
    // The Host header when the URI has no authority.
    let mut req = get("/p");
    req.headers_mut()
        .insert(http::header::HOST, hv("h.example:80"));
    assert_eq!(
        location(apply_request(&f, None, &mut req)).1,
        "http://h.example/p"
    );
}

#[test]
fn redirect_scheme_host_port_and_full_path() {
    let f = [HttpFilter::Redirect(Redirect {
        scheme: Some(Scheme::HTTPS),
        host: Some("new.example.com".into()),
        port: None,
        path: Some(PathModifier::Full("/moved".into())),
        status: StatusCode::MOVED_PERMANENTLY,
    })];
    let o = apply_request(&f, None, &mut get("http://old.example.com:8080/a"));
    // A new scheme drops the request's port (its own default is implied).
    assert_eq!(
        location(o),
        (
            StatusCode::MOVED_PERMANENTLY,
            "https://new.example.com/moved".into()
        )
    );
    let f = [HttpFilter::Redirect(Redirect {
        port: Some(8443),
        ..redirect(None)
    })];
    let o = apply_request(&f, None, &mut get("http://old.example.com/a"));
    assert_eq!(location(o).1, "http://old.example.com:8443/a");
}

#[test]
fn redirect_prefix_replacement() {
    let cases = [
        ("/api", "/v2", "/api/users/1", "/v2/users/1"),
        ("/api", "/v2/", "/api/users", "/v2/users"),
        ("/api", "/v2", "/api", "/v2"),
        ("/api", "/", "/api/users", "/users"),
        ("/api", "/", "/api", "/"),
        ("/api", "", "/api/x", "/x"),
        ("/", "/v2", "/x", "/v2/x"),
        ("/", "/v2", "/", "/v2"),
    ];
    for (prefix, replacement, path, want) in cases {
        let f = [HttpFilter::Redirect(redirect(Some(PathModifier::Prefix(
            replacement.into(),
        ))))];
        let mut req = get(&format!("http://h{path}?q=1"));
        let (_, loc) = location(apply_request(&f, Some(prefix), &mut req));
        assert_eq!(
            loc,
            format!("http://h{want}?q=1"),
            "{prefix} -> {replacement} on {path}"
        );
    }
    // Without a prefix match, the redirect cannot be built: a 500.
    let f = [HttpFilter::Redirect(redirect(Some(PathModifier::Prefix(
        "/v2".into(),
    ))))];
    let o = apply_request(&f, None, &mut get("http://h/api"));
    assert!(
        matches!(o, Outcome::Fail { status, .. } if status == StatusCode::INTERNAL_SERVER_ERROR)
    );
}

#[test]
fn redirect_without_a_host_fails() {
    let f = [HttpFilter::Redirect(redirect(None))];
    let o = apply_request(&f, None, &mut get("/p"));
    assert!(
        matches!(o, Outcome::Fail { status, grpc_code: None, .. } if status == StatusCode::INTERNAL_SERVER_ERROR)
    );
}

#[test]
fn filters_apply_in_order_until_one_answers() {
    let f = [
        HttpFilter::RequestHeaders(modifier()),
        HttpFilter::FailureInjector {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "chaos".into(),
            ratio: Ratio::ALWAYS,
        },
        HttpFilter::RequestHeaders(HeaderModifier {
            set: vec![(HeaderName::from_static("x-late"), hv("1"))],
            ..Default::default()
        }),
    ];
    let mut req = get("/");
    match apply_request(&f, None, &mut req) {
        Outcome::Fail {
            status,
            grpc_code,
            message,
        } => {
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(grpc_code, None);
            assert_eq!(message, "chaos");
        }
        other => panic!("{other:?}"),
    }
    assert!(req.headers().contains_key("x-add"));
    assert!(!req.headers().contains_key("x-late"));
}

fn failures(ratio: Ratio, draws: usize) -> usize {
    let f = [HttpFilter::FailureInjector {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: "x".into(),
        ratio,
    }];
    (0..draws)
        .filter(|_| matches!(apply_request(&f, None, &mut get("/")), Outcome::Fail { .. }))
        .count()
}

#[test]
fn failure_injection_ratio() {
    assert_eq!(failures(Ratio::new(0, 1).unwrap(), 1000), 0);
    assert_eq!(failures(Ratio::new(1, 1).unwrap(), 1000), 1000);
    assert_eq!(failures(Ratio::new(9, 3).unwrap(), 100), 100);
    // 1/2 over 10,000 draws: the mean is 5,000, the standard deviation
    // 50; 4,000..6,000 is twenty of them.
    let n = failures(Ratio::new(1, 2).unwrap(), 10_000);
    assert!((4000..=6000).contains(&n), "{n}");
    assert!(Ratio::new(1, 0).is_none());
}

#[test]
fn grpc_filters() {
    let f = [
        GrpcFilter::RequestHeaders(modifier()),
        GrpcFilter::FailureInjector {
            code: 14,
            message: "unavailable".into(),
            ratio: Ratio::ALWAYS,
        },
    ];
    let mut req = get("/pkg.Svc/Get");
    match apply_grpc_request(&f, &mut req) {
        Outcome::Fail {
            status,
            grpc_code,
            message,
        } => {
            assert_eq!(status, StatusCode::OK);
            assert_eq!(grpc_code, Some(14));
            assert_eq!(message, "unavailable");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(req.headers()["x-set"], "only");
    let never = [GrpcFilter::FailureInjector {
        code: 14,
        message: "".into(),
        ratio: Ratio::new(0, 5).unwrap(),
    }];
    assert!(matches!(
        apply_grpc_request(&never, &mut req),
        Outcome::Continue
    ));
}

#[test]
fn opaque_refusals() {
    assert_eq!(opaque_refusal(&[]), None);
    assert_eq!(
        opaque_refusal(&[OpaqueFilter::Forbidden]).as_deref(),
        Some("forbidden route")
    );
    let r = opaque_refusal(&[OpaqueFilter::Invalid("bad backend".into())]).unwrap();
    assert!(r.contains("bad backend"), "{r}");
}
