//! The outbound `policy:` of a service: every field read into the model,
//! the first format's files keeping their meaning, and every validation
//! error naming the service and the route.

use super::{err, parse};
use crate::config::*;
use std::time::Duration;

const OTHER: &str = "other.ns.svc.cluster.local:80";

/// A file with `web:80` (whose policy is `policy`, indented for it) and
/// another service for backends to name.
fn with_policy(policy: &str) -> String {
    format!(
        "services:\n  web.ns.svc.cluster.local:80:\n    labels: {{namespace: ns}}\n    policy:\n{policy}  {OTHER}: {{}}\n"
    )
}

fn web(yaml: &str) -> Policy {
    let m = parse(&with_policy(yaml)).unwrap();
    m.service("web.ns.svc.cluster.local:80")
        .unwrap()
        .policy
        .clone()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn http_route_fields() {
    let p = web(r#"      protocol: http2
      failure_accrual:
        success_rate: {threshold: 0.8, decay: 30s, min_requests: 50, max_consecutive_failures: 5}
        min_backoff: 2s
        max_backoff: 1m
        jitter_ratio: 0.2
        min_ready_endpoints: 2
      routes:
        - name: api
          matches:
            - path_regex: "^/v[0-9]+/items$"
              method: put
              headers: {X-Canary: "1"}
              header_regex: {x-user: "^admin-"}
              query_params: {debug: "1"}
              query_regex: {page: "^[0-9]+$"}
            - {path_exact: /health}
          timeouts: {request: 5s, response: 2s, idle: 30s}
          allow_l5d_request_headers: true
          retry:
            limit: 3
            statuses: ["5xx", "429"]
            timeout: 500ms
            max_request_bytes: 1024
            backoff: {min: 10ms, max: 1s, jitter_ratio: 0.1, respect_retry_after: true}
          filters:
            request_headers: {add: {x-added: a}, set: {X-Set: b}, remove: [x-secret]}
            response_headers: {set: {cache-control: no-store}}
            fail: {status: 503, message: chaos, ratio: "1/10"}
          backends:
            - service: other.ns.svc.cluster.local:80
              weight: 4
              load: {default_rtt: 50ms, decay: 5s, penalty: {penalty: 2s, max_retry_after: 20s, decay: 15s}}
              queue: {capacity: 10, failfast_timeout: 1s}
            - address: 192.0.2.10:8443
              identity: ext.ns.serviceaccount.identity.linkerd.cluster.local
              protocol: h2
              queue: {capacity: 5}
        - name: moved
          matches: [{path_prefix: /old}]
          filters:
            redirect: {scheme: https, host: new.example.com, port: 8443, path_prefix: /new, status: 308}
"#);
    assert_eq!(p.protocol, Protocol::Http2);
    let fa = p.failure_accrual.unwrap();
    assert_eq!(
        fa.kind,
        AccrualKind::SuccessRate(SuccessRate {
            threshold: 0.8,
            decay: Duration::from_secs(30),
            min_requests: 50,
            max_consecutive_failures: 5,
        })
    );
    assert_eq!(fa.min_ready_endpoints, Some(2));
    assert_eq!(
        (fa.min_backoff, fa.max_backoff, fa.jitter_ratio),
        (ms(2000), ms(60_000), 0.2)
    );

    let api = &p.routes[0];
    assert!(api.grpc_matches.is_empty());
    let m = &api.matches[0];
    assert_eq!(m.path, Some(PathMatch::Regex("^/v[0-9]+/items$".into())));
    assert_eq!(m.method.as_deref(), Some("PUT"));
    assert_eq!(
        m.headers,
        [
            ValueMatch {
                name: "x-canary".into(),
                value: Value::Exact("1".into())
            },
            ValueMatch {
                name: "x-user".into(),
                value: Value::Regex("^admin-".into())
            },
        ]
    );
    assert_eq!(
        m.query_params,
        [
            ValueMatch {
                name: "debug".into(),
                value: Value::Exact("1".into())
            },
            ValueMatch {
                name: "page".into(),
                value: Value::Regex("^[0-9]+$".into())
            },
        ]
    );
    assert_eq!(
        api.matches[1].path,
        Some(PathMatch::Exact("/health".into()))
    );
    assert_eq!(
        api.timeouts,
        Timeouts {
            request: Some(ms(5000)),
            response: Some(ms(2000)),
            idle: Some(ms(30_000)),
        }
    );
    assert!(api.allow_l5d_request_headers);
    let retry = api.retry.as_ref().unwrap();
    assert_eq!(retry.limit, 3);
    assert_eq!(retry.statuses, [(500, 599), (429, 429)]);
    assert!(retry.grpc.is_empty());
    assert_eq!(retry.timeout, Some(ms(500)));
    assert_eq!(retry.max_request_bytes, 1024);
    assert_eq!(
        retry.backoff,
        Some(Backoff {
            min: ms(10),
            max: ms(1000),
            jitter_ratio: 0.1,
            respect_retry_after: true,
        })
    );
    let f = &api.filters;
    let rh = f.request_headers.as_ref().unwrap();
    assert_eq!(rh.add, [("x-added".to_string(), "a".to_string())]);
    assert_eq!(rh.set, [("x-set".to_string(), "b".to_string())]);
    assert_eq!(rh.remove, ["x-secret"]);
    assert_eq!(
        f.response_headers.as_ref().unwrap().set,
        [("cache-control".to_string(), "no-store".to_string())]
    );
    assert_eq!(
        f.fail,
        Some(Fail {
            code: 503,
            message: "chaos".into(),
            ratio: Some(Ratio {
                numerator: 1,
                denominator: 10
            }),
        })
    );

    let b = &api.backends;
    assert_eq!(b[0].target, BackendTarget::Service(OTHER.into()));
    assert_eq!(b[0].weight, 4);
    assert_eq!(
        b[0].load,
        Load {
            default_rtt: ms(50),
            decay: ms(5000),
            penalty: Some(Penalty {
                penalty: ms(2000),
                max_retry_after: ms(20_000),
                decay: ms(15_000),
            }),
        }
    );
    assert_eq!(
        b[0].queue,
        Queue {
            capacity: 10,
            failfast_timeout: ms(1000)
        }
    );
    let BackendTarget::Address(ep) = &b[1].target else {
        panic!("{:?}", b[1].target)
    };
    assert_eq!(ep.addr, "192.0.2.10:8443".parse().unwrap());
    assert_eq!(ep.protocol, Some(Hint::H2));
    assert!(ep.identity.is_some());
    // Linkerd's failfast timeout where only the capacity is given.
    assert_eq!(
        b[1].queue,
        Queue {
            capacity: 5,
            failfast_timeout: ms(3000)
        }
    );

    let r = p.routes[1].filters.redirect.as_ref().unwrap();
    assert_eq!(
        *r,
        Redirect {
            scheme: Some("https".into()),
            host: Some("new.example.com".into()),
            port: Some(8443),
            path: Some(RedirectPath::Prefix("/new".into())),
            status: 308,
        }
    );
}

#[test]
fn grpc_route_fields() {
    let p = web(r#"      protocol: grpc
      routes:
        - name: get
          matches:
            - {service: shop.Items, method: Get, headers: {x-tenant: a}, header_regex: {x-user: "^b"}}
            - {service: shop.Admin}
          retry: {limit: 2, grpc: [unavailable, deadline_exceeded, CANCELLED, resource-exhausted, internal]}
          filters:
            request_headers: {set: {x-from: mesh}}
            fail: {grpc_code: unavailable, ratio: 0.25}
        - name: plain
          retry: {limit: 1}
          filters:
            fail: {grpc_code: 8}
"#);
    let get = &p.routes[0];
    assert!(get.matches.is_empty());
    assert_eq!(
        get.grpc_matches[0],
        GrpcMatch {
            service: Some("shop.Items".into()),
            method: Some("Get".into()),
            headers: vec![
                ValueMatch {
                    name: "x-tenant".into(),
                    value: Value::Exact("a".into())
                },
                ValueMatch {
                    name: "x-user".into(),
                    value: Value::Regex("^b".into())
                },
            ],
        }
    );
    assert_eq!(get.grpc_matches[1].method, None);
    assert_eq!(get.retry.as_ref().unwrap().grpc, [14, 4, 1, 8, 13]);
    let fail = get.filters.fail.as_ref().unwrap();
    assert_eq!(fail.code, 14);
    assert_eq!(
        fail.ratio,
        Some(Ratio {
            numerator: 1,
            denominator: 4
        })
    );
    // gRPC routes retried UNAVAILABLE before they could say more.
    assert_eq!(p.routes[1].retry.as_ref().unwrap().grpc, [14]);
    assert_eq!(p.routes[1].filters.fail.as_ref().unwrap().code, 8);
}

#[test]
fn tls_and_opaque_routes() {
    let p = web(r#"      protocol: tls
      tls_routes:
        - {name: api, snis: [API.Example.com, "*.internal.example.com"], backends: [{service: other.ns.svc.cluster.local:80}]}
        - {name: rest, forbidden: true}
"#);
    assert_eq!(
        p.tls_routes[0].snis,
        [
            Sni::Exact("api.example.com".into()),
            Sni::Suffix("internal.example.com".into())
        ]
    );
    assert_eq!(p.tls_routes[0].backends.len(), 1);
    assert!(!p.tls_routes[0].forbidden && p.tls_routes[1].forbidden);
    for protocol in ["opaque", "detect"] {
        let p = web(&format!(
            "      protocol: {protocol}\n      opaque_routes:\n        - {{name: db, backends: [{{address: \"192.0.2.1:5432\", weight: 2}}]}}\n        - {{name: no, forbidden: true}}\n        - {{name: bad, invalid: not yet}}\n"
        ));
        let o = &p.opaque_routes;
        assert_eq!(o[0].backends[0].weight, 2);
        assert!(o[1].forbidden);
        assert_eq!(o[2].invalid.as_deref(), Some("not yet"));
    }
}

#[test]
fn the_first_format_keeps_its_meaning() {
    let p = web(r#"      protocol: http1
      failure_accrual: {consecutive_failures: 3}
      routes:
        - name: r
          matches: [{path: /a/b, path_prefix: /a}]
          backends: [{service: other.ns.svc.cluster.local:80}]
          timeout: 2s
          retry: {statuses: ["502-504"], timeout: 1s}
"#);
    let r = &p.routes[0];
    // The exact path won over the prefix.
    assert_eq!(r.matches[0].path, Some(PathMatch::Exact("/a/b".into())));
    assert_eq!(r.timeouts.request, Some(ms(2000)));
    assert_eq!((r.timeouts.response, r.timeouts.idle), (None, None));
    let x = r.retry.as_ref().unwrap();
    assert_eq!((x.limit, x.timeout), (1, Some(ms(1000))));
    assert_eq!(x.max_request_bytes, 64 * 1024);
    assert_eq!(x.backoff, None);
    // The balancer's parameters as they were sent before they could be set.
    assert_eq!(r.backends[0].load, Load::default());
    assert_eq!(r.backends[0].queue, Queue::default());
    assert_eq!(
        p.failure_accrual.unwrap(),
        FailureAccrual {
            kind: AccrualKind::Consecutive(3),
            min_backoff: ms(1000),
            max_backoff: ms(60_000),
            jitter_ratio: 0.5,
            min_ready_endpoints: None,
        }
    );
}

#[test]
fn ratios() {
    for (ratio, want) in [
        ("\"1/10\"", (1, 10)),
        ("\"2/4\"", (1, 2)),
        ("0.25", (1, 4)),
        ("\"0.3\"", (3, 10)),
        ("0", (0, 1)),
        ("1", (1, 1)),
        ("\"0/3\"", (0, 1)),
    ] {
        let p = web(&format!(
            "      routes:\n        - {{name: r, filters: {{fail: {{status: 500, ratio: {ratio}}}}}}}\n"
        ));
        let r = p.routes[0].filters.fail.as_ref().unwrap().ratio.unwrap();
        assert_eq!((r.numerator, r.denominator), want, "{ratio}");
    }
}

#[test]
fn errors_name_the_service_and_route() {
    let route = |protocol: &str, r: &str| {
        with_policy(&format!(
            "      protocol: {protocol}\n      routes:\n        - {{name: r, {r}}}\n"
        ))
    };
    let at = "services.web.ns.svc.cluster.local:80.policy.routes.r";
    #[rustfmt::skip]
    let cases = [
        // Matches.
        ("http1", "matches: [{path_regex: \"(\"}]", "path_regex is not a regular expression"),
        ("http1", "matches: [{header_regex: {x-a: \"[\"}}]", "header_regex x-a is not a regular expression"),
        ("http1", "matches: [{query_regex: {q: \"(?P<\"}}]", "query_regex q is not a regular expression"),
        ("http1", "matches: [{path_regex: \"^/a\", path_prefix: /a}]", "path_regex cannot be given"),
        ("http1", "matches: [{path_prefix: a}]", "does not start with /"),
        ("http1", "matches: [{headers: {\"bad header\": x}}]", "not a header name"),
        ("http1", "matches: [{method: \"GE T\"}]", "not an HTTP method"),
        ("http1", "matches: [{service: shop.Items}]", "service is a gRPC match"),
        ("grpc", "matches: [{path_prefix: /shop}]", "path_prefix is an HTTP match"),
        ("grpc", "matches: [{query_params: {a: b}}]", "query_params is an HTTP match"),
        ("grpc", "matches: [{service: \"shop/Items\"}]", "not a gRPC service name"),
        // Timeouts.
        ("http1", "timeout: 1s, timeouts: {request: 2s}", "keep one"),
        ("http1", "timeouts: {idle: 0s}", "timeouts.idle must be more than 0"),
        ("http1", "timeouts: {response: soon}", "timeouts.response"),
        // Retries.
        ("http1", "retry: {statuses: [\"600\"]}", "not a status"),
        ("http1", "retry: {statuses: [\"504-500\"]}", "not a status"),
        ("http1", "retry: {statuses: [\"99\"]}", "not a status"),
        ("http1", "retry: {grpc: [unavailable]}", "retry.grpc is for gRPC routes"),
        ("grpc", "retry: {statuses: [\"5xx\"]}", "a gRPC route retries on retry.grpc"),
        ("grpc", "retry: {grpc: [not_found]}", "\"not_found\" is not one of"),
        ("http1", "retry: {timeout: 0ms}", "retry.timeout must be more than 0"),
        ("http1", "retry: {backoff: {min: 2s, max: 1s}}", "above retry.backoff.max"),
        ("http1", "retry: {backoff: {jitter_ratio: 1.5}}", "jitter_ratio must be from 0 to 1"),
        ("http1", "retry: {backoff: {min: 0s}}", "retry.backoff.min must be more than 0"),
        // Filters.
        ("http1", "filters: {redirect: {status: 200}}", "status 200 is not 301, 302, 303, 307 or 308"),
        ("http1", "filters: {redirect: {scheme: ftp}}", "not http or https"),
        ("http1", "filters: {redirect: {path_full: /a, path_prefix: /b}}", "not both"),
        ("http1", "matches: [{path_exact: /a}], filters: {redirect: {path_prefix: /b}}", "every match needs a path_prefix"),
        ("http1", "filters: {redirect: {}, fail: {status: 500}}", "redirects or fails"),
        ("http1", "filters: {fail: {status: 700}}", "status 700 is not from 100 to 599"),
        ("http1", "filters: {fail: {grpc_code: 14}}", "grpc_code is for gRPC routes"),
        ("http1", "filters: {fail: {message: x}}", "status is missing"),
        ("http1", "filters: {fail: {status: 500, ratio: \"1/0\"}}", "the denominator is 0"),
        ("http1", "filters: {fail: {status: 500, ratio: \"3/2\"}}", "more than 1"),
        ("http1", "filters: {fail: {status: 500, ratio: 1.5}}", "not from 0 to 1"),
        ("http1", "filters: {fail: {status: 500, ratio: -0.1}}", "not from 0 to 1"),
        ("http1", "filters: {request_headers: {add: {\"a b\": c}}}", "not a header name"),
        ("grpc", "filters: {redirect: {}}", "filters.redirect is for HTTP routes"),
        ("grpc", "filters: {response_headers: {remove: [a]}}", "filters.response_headers is for HTTP routes"),
        ("grpc", "filters: {fail: {status: 500}}", "status is for HTTP routes"),
        ("grpc", "filters: {fail: {grpc_code: 0}}", "not a gRPC error code"),
        // Backends.
        ("http1", "backends: [{service: other.ns.svc.cluster.local:80, weight: 0}]", "weight 0"),
        ("http1", "backends: [{address: \"192.0.2.1:80\", weight: 0}]", "weight 0"),
        ("http1", "backends: [{service: nowhere:80}]", "not a service in this file"),
        ("http1", "backends: [{}]", "a service or an address"),
        ("http1", "backends: [{service: other.ns.svc.cluster.local:80, address: \"192.0.2.1:80\"}]", "a service or an address"),
        ("http1", "backends: [{address: nowhere}]", "not IP:port"),
        ("http1", "backends: [{address: \"192.0.2.1:80\", load: {decay: 1s}}]", "an address is not balanced"),
        ("http1", "backends: [{service: other.ns.svc.cluster.local:80, identity: a.b}]", "identity describes an address backend"),
        ("http1", "backends: [{service: other.ns.svc.cluster.local:80, load: {decay: 0s}}]", "load.decay must be more than 0"),
        ("http1", "backends: [{service: other.ns.svc.cluster.local:80, load: {penalty: {max_retry_after: 1s}}}]", "missing field `penalty`"),
        ("http1", "backends: [{service: other.ns.svc.cluster.local:80, queue: {capacity: 0}}]", "queue.capacity 0"),
        ("http1", "backends: [{service: other.ns.svc.cluster.local:80, queue: {failfast_timeout: 0s}}]", "failfast_timeout must be more than 0"),
        // Unknown fields stay refused.
        ("http1", "timeouts: {total: 1s}", "unknown field `total`"),
        ("http1", "filters: {mirror: {}}", "unknown field `mirror`"),
    ];
    for (protocol, r, want) in cases {
        let e = err(&route(protocol, r));
        // serde's errors say where by line, ours by path.
        let named = e.contains(at) || e.starts_with("not valid YAML");
        assert!(
            named && e.contains(want),
            "{protocol} {r}: {e:?} does not mention {want:?}"
        );
    }

    #[rustfmt::skip]
    let policy_cases = [
        ("      protocol: tls\n      routes: [{name: r}]\n", "policy.routes: routes are HTTP or gRPC routes"),
        ("      protocol: http1\n      tls_routes: [{name: t}]\n", "policy.tls_routes: tls_routes need protocol: tls"),
        ("      protocol: grpc\n      opaque_routes: [{name: o}]\n", "opaque_routes need protocol: opaque or detect"),
        ("      protocol: tls\n      tls_routes: [{name: t, snis: [\"*.\"]}]\n", "policy.tls_routes.t: sni"),
        ("      protocol: tls\n      tls_routes: [{name: t, snis: [\"a.*.b\"]}]\n", "policy.tls_routes.t: sni"),
        ("      protocol: tls\n      tls_routes: [{name: t, backends: [{service: nowhere:80}]}]\n", "policy.tls_routes.t: backend nowhere:80 is not a service"),
        ("      protocol: opaque\n      opaque_routes: [{name: o, forbidden: true, invalid: x}]\n", "policy.opaque_routes.o: forbidden or invalid, not both"),
        ("      failure_accrual: {min_backoff: 1s}\n", "policy.failure_accrual: consecutive_failures or success_rate is missing"),
        ("      failure_accrual: {consecutive_failures: 0}\n", "at least 1"),
        ("      failure_accrual: {consecutive_failures: 3, success_rate: {threshold: 0.5}}\n", "not both"),
        ("      failure_accrual: {success_rate: {threshold: 1.5}}\n", "threshold must be from 0 to 1"),
        ("      failure_accrual: {success_rate: {threshold: 0}}\n", "never trip"),
        ("      failure_accrual: {success_rate: {threshold: 0.5, decay: 0s}}\n", "success_rate.decay must be more than 0"),
    ];
    for (policy, want) in policy_cases {
        let e = err(&with_policy(policy));
        assert!(
            e.contains("services.web.ns.svc.cluster.local:80.policy") && e.contains(want),
            "{policy}: {e:?} does not mention {want:?}"
        );
    }
}
