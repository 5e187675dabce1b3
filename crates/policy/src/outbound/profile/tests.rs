use super::*;
use crate::outbound::select;
use linkerd2_proxy_api::destination::{
    HttpStatusRange, PathMatch as ProfilePath, RetryBudget, Route,
};
use std::{collections::HashMap, time::Duration};

fn path(re: &str) -> RequestMatch {
    RequestMatch {
        r#match: Some(request_match::Match::Path(ProfilePath { regex: re.into() })),
    }
}

fn method(m: http::Method) -> RequestMatch {
    RequestMatch {
        r#match: Some(request_match::Match::Method(m.into())),
    }
}

fn all(ms: Vec<RequestMatch>) -> RequestMatch {
    RequestMatch {
        r#match: Some(request_match::Match::All(request_match::Seq {
            matches: ms,
        })),
    }
}

fn any(ms: Vec<RequestMatch>) -> RequestMatch {
    RequestMatch {
        r#match: Some(request_match::Match::Any(request_match::Seq {
            matches: ms,
        })),
    }
}

fn status(min: u32, max: u32) -> ResponseMatch {
    ResponseMatch {
        r#match: Some(response_match::Match::Status(HttpStatusRange { min, max })),
    }
}

fn route(name: &str, condition: Option<RequestMatch>) -> Route {
    Route {
        condition,
        metrics_labels: HashMap::from([("route".to_string(), name.to_string())]),
        ..Default::default()
    }
}

fn convert(p: DestinationProfile) -> (ProfileRoutes, HashMap<&'static str, usize>) {
    let mut skipped = HashMap::new();
    let routes = from_profile(p, &mut |r| *skipped.entry(r).or_insert(0) += 1);
    (routes, skipped)
}

fn req(m: http::Method, uri: &str) -> http::Request<()> {
    http::Request::builder()
        .method(m)
        .uri(uri)
        .body(())
        .unwrap()
}

#[test]
fn profile_routes_timeouts_retries_and_budget() {
    let mut get_user = route(
        "GET /users/{id}",
        Some(all(vec![path("/users/[^/]+"), method(http::Method::GET)])),
    );
    get_user.timeout = Some(prost_types::Duration {
        seconds: 2,
        nanos: 0,
    });
    get_user.is_retryable = true;
    get_user.response_classes = vec![
        ResponseClass {
            condition: Some(ResponseMatch {
                r#match: Some(response_match::Match::Any(response_match::Seq {
                    matches: vec![status(502, 504), status(429, 0)],
                })),
            }),
            is_failure: true,
        },
        ResponseClass {
            condition: Some(status(200, 299)),
            is_failure: false,
        },
    ];
    let mut write = route(
        "writes",
        Some(any(vec![
            method(http::Method::POST),
            method(http::Method::PUT),
        ])),
    );
    write.is_retryable = true;
    let p = DestinationProfile {
        routes: vec![get_user, write],
        retry_budget: Some(RetryBudget {
            retry_ratio: 0.5,
            min_retries_per_second: 3,
            ttl: Some(prost_types::Duration {
                seconds: 5,
                nanos: 0,
            }),
        }),
        opaque_protocol: false,
        ..Default::default()
    };
    let (routes, skipped) = convert(p);
    assert!(skipped.is_empty(), "{skipped:?}");
    assert!(!routes.opaque);
    assert_eq!(
        routes.budget,
        Some(Budget {
            ratio: 0.5,
            min_per_second: 3,
            ttl: Duration::from_secs(5)
        })
    );
    let [get_user, write] = &routes.routes[..] else {
        panic!("{:?}", routes.routes)
    };
    assert_eq!(get_user.meta.name(), "GET /users/{id}");
    let rule = &get_user.rules[0];
    assert_eq!(rule.backends, Distribution::Empty);
    assert_eq!(rule.timeouts.request, Some(Duration::from_secs(2)));
    let retry = rule.retry.as_ref().unwrap();
    assert_eq!(retry.max_retries, PROFILE_MAX_RETRIES);
    assert_eq!(retry.on, RetryOn::Http(vec![502..=504, 429..=429]));
    assert_eq!(rule.matches.len(), 1);
    assert_eq!(rule.matches[0].method, Some(http::Method::GET));

    // A retryable route with no failure classes retries 5xx.
    assert_eq!(
        write.rules[0].retry.as_ref().unwrap().on,
        RetryOn::Http(vec![500..=599])
    );
    assert_eq!(write.rules[0].matches.len(), 2);

    let name = |r| select::http_first(&routes.routes, &r).map(|s| s.route.meta.name().to_string());
    assert_eq!(
        name(req(http::Method::GET, "/users/7")).as_deref(),
        Some("GET /users/{id}")
    );
    assert_eq!(name(req(http::Method::GET, "/users/7/x")), None);
    assert_eq!(
        name(req(http::Method::PUT, "/users/7")).as_deref(),
        Some("writes")
    );
    assert_eq!(name(req(http::Method::DELETE, "/users/7")), None);
}

#[test]
fn all_of_any_expands() {
    let (routes, skipped) = convert(DestinationProfile {
        routes: vec![route(
            "r",
            Some(all(vec![
                any(vec![path("/a"), path("/b")]),
                any(vec![method(http::Method::GET), method(http::Method::HEAD)]),
            ])),
        )],
        ..Default::default()
    });
    assert!(skipped.is_empty());
    assert_eq!(routes.routes[0].rules[0].matches.len(), 4);
    let fits = |m, p| select::http_first(&routes.routes, &req(m, p)).is_some();
    assert!(fits(http::Method::HEAD, "/b"));
    assert!(!fits(http::Method::POST, "/a"));
    assert!(!fits(http::Method::GET, "/c"));
}

#[test]
fn unexpressible_conditions_are_skipped_and_counted() {
    let not = RequestMatch {
        r#match: Some(request_match::Match::Not(Box::new(path("/a")))),
    };
    let mut deep = path("/x");
    for _ in 0..40 {
        deep = all(vec![deep]);
    }
    let (routes, skipped) = convert(DestinationProfile {
        routes: vec![
            route("not", Some(not)),
            route("two-paths", Some(all(vec![path("/a"), path("/b")]))),
            route("bad-regex", Some(path("(("))),
            route("none", None),
            route("empty-match", Some(RequestMatch { r#match: None })),
            route("never", Some(any(vec![]))),
            route("deep", Some(deep)),
            // Two methods at once can never fit: nothing left, dropped.
            route(
                "contradiction",
                Some(all(vec![
                    method(http::Method::GET),
                    method(http::Method::POST),
                ])),
            ),
            route("ok", Some(all(vec![]))),
        ],
        retry_budget: Some(RetryBudget {
            retry_ratio: f32::NAN,
            min_retries_per_second: 1,
            ttl: None,
        }),
        opaque_protocol: true,
        ..Default::default()
    });
    assert_eq!(
        skipped,
        HashMap::from([
            ("unsupported_condition", 5),
            ("bad_regex", 1),
            ("no_condition", 2),
            ("bad_budget", 1)
        ])
    );
    assert!(routes.opaque);
    assert_eq!(routes.routes.len(), 1);
    assert_eq!(routes.routes[0].meta.name(), "ok");
    assert_eq!(routes.budget.unwrap().ttl, Budget::default().ttl);
}

#[test]
fn unsupported_failure_classes_fall_back_to_5xx() {
    let mut r = route("r", Some(path("/.*")));
    r.is_retryable = true;
    r.response_classes = vec![
        ResponseClass {
            condition: Some(ResponseMatch {
                r#match: Some(response_match::Match::Not(Box::new(status(200, 0)))),
            }),
            is_failure: true,
        },
        ResponseClass {
            condition: Some(status(700, 800)),
            is_failure: true,
        },
    ];
    let (routes, skipped) = convert(DestinationProfile {
        routes: vec![r],
        ..Default::default()
    });
    assert_eq!(skipped, HashMap::from([("unsupported_class", 2)]));
    assert_eq!(
        routes.routes[0].rules[0].retry.as_ref().unwrap().on,
        RetryOn::Http(vec![500..=599])
    );
}
