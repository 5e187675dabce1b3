//! Micro-benchmarks of the pieces every connection or request passes
//! through: protocol detection, header hygiene, metric recording, and the
//! inbound policy layers.
//!
//! ```text
//! cargo bench -p linnet-bench --bench micro
//! ```
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, header};
use linnet_detect::{classify, test_util::client_hello};
use linnet_metrics::{
    Direction,
    http::{HttpMetrics, ResponseOutcome},
};
use std::{hint::black_box, time::Duration};

fn detection(c: &mut Criterion) {
    let mut g = c.benchmark_group("detect");
    let cases: [(&str, Vec<u8>); 4] = [
        (
            "http2_preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\x12\x04\0\0\0\0\0".to_vec(),
        ),
        (
            "http1_request",
            b"GET /api/v1/items?page=2 HTTP/1.1\r\nhost: svc.ns.svc.cluster.local\r\n\r\n".to_vec(),
        ),
        (
            "tls_client_hello",
            client_hello(Some("web.default.svc.cluster.local"), 0),
        ),
        (
            "opaque",
            b"\x16\x00binary protocol bytes\x00\x01\x02".to_vec(),
        ),
    ];
    for (name, bytes) in &cases {
        g.bench_function(*name, |b| b.iter(|| classify(black_box(bytes))));
    }
    g.finish();
}

fn request_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::HOST,
        HeaderValue::from_static("svc.ns.svc.cluster.local"),
    );
    h.insert(header::USER_AGENT, HeaderValue::from_static("curl/8.5.0"));
    h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
    h.insert(
        header::CONNECTION,
        HeaderValue::from_static("keep-alive, x-custom"),
    );
    h.insert("x-custom", HeaderValue::from_static("1"));
    h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    h.insert(
        "x-request-id",
        HeaderValue::from_static("c0ffee00-1234-5678-9abc-def012345678"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    h
}

fn headers(c: &mut Criterion) {
    let mut g = c.benchmark_group("headers");
    g.bench_function("strip_hop_by_hop", |b| {
        b.iter_batched_ref(
            request_headers,
            |h| linnet_http::headers::strip_hop_by_hop(black_box(h), false),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("strip_hop_by_hop_clean", |b| {
        // The common case: nothing to strip.
        let mut clean = request_headers();
        linnet_http::headers::strip_hop_by_hop(&mut clean, false);
        b.iter_batched_ref(
            || clean.clone(),
            |h| linnet_http::headers::strip_hop_by_hop(black_box(h), false),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn metrics(c: &mut Criterion) {
    let mut registry = linnet_metrics::registry();
    let bounds = linnet_metrics::bounded::Bounds::register(&mut registry, Default::default());
    let m = HttpMetrics::register(&mut registry, &bounds);
    let target = "10.1.2.3:8080".parse().unwrap();
    let authority = "svc.ns.svc.cluster.local:80";
    let ok = ResponseOutcome {
        status: Some(200),
        grpc_status: None,
        error: "",
    };
    let mut g = c.benchmark_group("metrics");
    // Per request, through the label set a connection resolved once.
    let labeled = m.labeled(Direction::Outbound, authority, target, "no_identity", None);
    g.bench_function("labeled_request_response", |b| {
        b.iter(|| {
            labeled.request();
            labeled.response(black_box(ok), Duration::from_micros(350));
        })
    });
    // Resolving the label set for every request instead (what a connection
    // whose requests change authority each time costs), for comparison.
    g.bench_function("resolve_request_response", |b| {
        b.iter(|| {
            let labeled = m.labeled(
                Direction::Outbound,
                black_box(authority),
                target,
                "no_identity",
                None,
            );
            labeled.request();
            labeled.response(black_box(ok), Duration::from_micros(350));
        })
    });
    g.bench_function("encode_registry", |b| {
        b.iter(|| linnet_metrics::encode(black_box(&registry)))
    });
    g.finish();
}

/// A server policy for `/`: `n` authorizations by identity, the client's
/// named by the last, and optionally a local rate limit too high to
/// refuse anything.
fn inbound_policy(n: usize, rate_limit: bool) -> linnet_policy::inbound::ServerPolicy {
    use linnet_policy::{
        inbound::{
            Authentication, Authorization, HttpPolicy, LocalRateLimit, Network, Protocol,
            ServerPolicy,
        },
        outbound::Meta,
    };
    use std::sync::Arc;
    let authz: Arc<[Authorization]> = (0..n)
        .map(|i| {
            let id = if i + 1 == n {
                INBOUND_CLIENT.to_string()
            } else {
                format!("other-{i}.ns.serviceaccount.identity.linkerd.cluster.local")
            };
            Authorization {
                meta: Meta::Default {
                    name: format!("authz-{i}").into(),
                },
                networks: Network::all().into(),
                authentication: Authentication::TlsAuthenticated {
                    identities: [Arc::from(id)].into(),
                    suffixes: vec![],
                },
            }
        })
        .collect();
    let mut http = HttpPolicy::default_routes(authz.clone());
    if rate_limit {
        let many = std::num::NonZeroU32::new(1_000_000_000);
        http.rate_limit = Some(Arc::new(LocalRateLimit::new(
            Meta::Default { name: "rl".into() },
            many,
            many,
            vec![],
        )));
    }
    ServerPolicy {
        meta: Meta::Default { name: "web".into() },
        protocol: Protocol::Http1(Arc::new(http)),
        authorizations: authz,
    }
}

const INBOUND_CLIENT: &str = "client.ns.serviceaccount.identity.linkerd.cluster.local";

/// One request through the inbound stack's policy layers (route match,
/// authorization, rate limit, filters) to a stand-in application, per
/// policy shape.
fn inbound(c: &mut Criterion) {
    use linnet_inbound::{Client, ClientTls, Conn, PortPolicy};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut registry = linnet_metrics::registry();
    let bounds = linnet_metrics::bounded::Bounds::register(&mut registry, Default::default());
    let metrics = linnet_metrics::authz::AuthzMetrics::register(&mut registry, &bounds);
    let mut g = c.benchmark_group("inbound");
    // The floor: the stand-in application alone, called the same way.
    let bare = linnet_http::HttpStack::new(tower::service_fn(
        |_req: http::Request<linnet_http::BoxBody>| async {
            Ok::<_, linnet_core::Error>(http::Response::new(linnet_http::BoxBody::default()))
        },
    ));
    g.bench_function("application_alone", |b| {
        b.iter(|| {
            let req = http::Request::get("/api/items")
                .header("host", "web.ns.svc.cluster.local")
                .body(linnet_http::BoxBody::default())
                .unwrap();
            assert!(
                rt.block_on(linnet_http::call_stack(bare.clone(), req))
                    .is_ok()
            );
        })
    });
    for (name, n, rate_limit) in [
        ("one_authorization", 1, false),
        ("100_authorizations", 100, false),
        ("100_authorizations_rate_limited", 100, true),
    ] {
        let conn = std::sync::Arc::new(Conn::new(
            PortPolicy::fixed(8080, inbound_policy(n, rate_limit)),
            Client {
                addr: "10.0.0.9".parse().unwrap(),
                tls: ClientTls::Mesh(INBOUND_CLIENT.into()),
            },
            "10.0.0.1:8080".parse().unwrap(),
            &metrics,
        ));
        let app = tower::service_fn(|_req: http::Request<linnet_http::BoxBody>| async {
            Ok::<_, linnet_core::Error>(http::Response::new(linnet_http::BoxBody::default()))
        });
        let stack = linnet_http::HttpStack::new(
            tower::ServiceBuilder::new()
                .layer(linnet_inbound::route::layer(conn.clone()))
                .layer(linnet_inbound::authorize::layer(conn.clone()))
                .layer(linnet_inbound::rate_limit::layer(conn))
                .layer(linnet_inbound::filter::layer())
                .service(app),
        );
        g.bench_function(name, |b| {
            b.iter(|| {
                let req = http::Request::get("/api/items")
                    .header("host", "web.ns.svc.cluster.local")
                    .body(linnet_http::BoxBody::default())
                    .unwrap();
                let rsp = rt.block_on(linnet_http::call_stack(stack.clone(), req));
                assert!(rsp.is_ok());
            })
        });
    }
    g.finish();
}

criterion_group!(benches, detection, headers, metrics, inbound);
criterion_main!(benches);
