//! The inbound stack's layers over a stand-in application: route match,
//! route authorization, rate limits, filters, and policy changes between
//! requests of one connection; connection authorization and revocation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::{Client, ClientTls, Conn, PortPolicy, accept, authorize, filter, rate_limit, route};
use http::{Request, Response, StatusCode};
use linnet_http::{BoxBody, HttpStack};
use linnet_metrics::{authz::AuthzMetrics, bounded::Bounds, prometheus_client::registry::Registry};
use linnet_policy::{
    errors::{InjectedFailure, NoRoute, Unauthorized},
    inbound::{
        Authentication, Authorization, HttpPolicy, HttpRoute, HttpRule, LocalRateLimit, Network,
        Protocol, RateLimited, ServerPolicy,
    },
    outbound::{HeaderModifier, HttpFilter, HttpMatch, Meta, PathMatch},
};
use std::{
    num::NonZeroU32,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

const A: &str = "a.ns.serviceaccount.identity.linkerd.cluster.local";
const B: &str = "b.ns.serviceaccount.identity.linkerd.cluster.local";

fn meta(name: &str) -> Meta {
    Meta::Default { name: name.into() }
}

fn identities(name: &str, ids: &[&str]) -> Authorization {
    Authorization {
        meta: meta(name),
        networks: Network::all().into(),
        authentication: Authentication::TlsAuthenticated {
            identities: ids.iter().map(|&i| Arc::from(i)).collect(),
            suffixes: vec![],
        },
    }
}

fn route(
    name: &str,
    prefix: &str,
    authz: Vec<Authorization>,
    filters: Vec<HttpFilter>,
) -> HttpRoute {
    HttpRoute {
        meta: meta(name),
        hosts: vec![],
        authorizations: authz.into(),
        rules: vec![HttpRule {
            matches: vec![HttpMatch {
                path: Some(PathMatch::prefix(prefix)),
                ..Default::default()
            }],
            filters: filters.into(),
        }],
    }
}

/// A server: `/admin` for A only, `/` for A and B (with a header set).
fn policy(rate_limit: Option<LocalRateLimit>) -> ServerPolicy {
    let set = HttpFilter::RequestHeaders(HeaderModifier {
        set: vec![("x-route".parse().unwrap(), "root".parse().unwrap())],
        ..Default::default()
    });
    let routes = vec![
        route("admin", "/admin", vec![identities("a-only", &[A])], vec![]),
        route("root", "/", vec![identities("a-and-b", &[A, B])], vec![set]),
    ];
    ServerPolicy {
        meta: meta("web"),
        protocol: Protocol::Http1(Arc::new(HttpPolicy {
            http_routes: routes,
            grpc_routes: vec![],
            rate_limit: rate_limit.map(Arc::new),
        })),
        authorizations: vec![identities("a-and-b", &[A, B])].into(),
    }
}

struct Harness {
    registry: Registry,
    metrics: AuthzMetrics,
    /// Requests that reached the application.
    served: Arc<AtomicUsize>,
}

impl Harness {
    fn new() -> Self {
        let mut registry = linnet_metrics::registry();
        let bounds = Bounds::register(&mut registry, Default::default());
        let metrics = AuthzMetrics::register(&mut registry, &bounds);
        Self {
            registry,
            metrics,
            served: Default::default(),
        }
    }

    fn conn(&self, port: PortPolicy, id: Option<&str>) -> Arc<Conn> {
        let client = Client {
            addr: "10.0.0.9".parse().unwrap(),
            tls: id.map_or(ClientTls::None, |id| ClientTls::Mesh(id.into())),
        };
        Arc::new(Conn::new(
            port,
            client,
            "10.0.0.1:8080".parse().unwrap(),
            &self.metrics,
        ))
    }

    /// The stack of `http::stack`, over an application that answers 200
    /// with the `x-route` header it was sent.
    fn stack(&self, conn: Arc<Conn>) -> HttpStack {
        let served = self.served.clone();
        let app = tower::service_fn(move |req: Request<BoxBody>| {
            served.fetch_add(1, Ordering::SeqCst);
            let mut rsp = Response::new(BoxBody::default());
            if let Some(v) = req.headers().get("x-route") {
                rsp.headers_mut().insert("x-route", v.clone());
            }
            async move { Ok::<_, linnet_core::Error>(rsp) }
        });
        HttpStack::new(
            tower::ServiceBuilder::new()
                .layer(route::layer(conn.clone()))
                .layer(authorize::layer(conn.clone()))
                .layer(rate_limit::layer(conn))
                .layer(filter::layer())
                .service(app),
        )
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }

    fn text(&self) -> String {
        linnet_metrics::encode(&self.registry)
    }
}

fn get(path: &str) -> Request<BoxBody> {
    Request::get(path).body(BoxBody::default()).unwrap()
}

async fn call(stack: &HttpStack, path: &str) -> Result<Response<BoxBody>, linnet_core::Error> {
    linnet_http::call_stack(stack.clone(), get(path)).await
}

#[tokio::test]
async fn routes_admit_by_identity() {
    let h = Harness::new();
    let a = h.stack(h.conn(PortPolicy::fixed(8080, policy(None)), Some(A)));
    let b = h.stack(h.conn(PortPolicy::fixed(8080, policy(None)), Some(B)));
    let plain = h.stack(h.conn(PortPolicy::fixed(8080, policy(None)), None));

    let rsp = call(&a, "/admin/x").await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert!(
        rsp.headers().get("x-route").is_none(),
        "the admin rule has no filter"
    );
    let rsp = call(&b, "/").await.unwrap();
    assert_eq!(
        rsp.headers()["x-route"],
        "root",
        "the root rule's filter ran"
    );
    assert_eq!(h.served(), 2);

    let e = call(&b, "/admin").await.unwrap_err();
    let denied = linnet_core::find_cause::<Unauthorized>(&*e).expect("unauthorized");
    assert_eq!(&*denied.route, "admin");
    assert!(denied.client.contains(B), "{}", denied.client);
    assert!(call(&plain, "/").await.is_err());
    assert_eq!(
        h.served(),
        2,
        "refused requests never reach the application"
    );

    let text = h.text();
    for line in [
        format!(r#"inbound_http_authz_deny_total{{target_addr="10.0.0.1:8080",tls="true",client_id="{B}",srv_group="",srv_kind="default",srv_name="web",srv_port="8080",route_group="",route_kind="default",route_name="admin"}} 1"#),
        format!(r#"client_id="{A}",srv_group="",srv_kind="default",srv_name="web",srv_port="8080",route_group="",route_kind="default",route_name="admin",authz_group="",authz_kind="default",authz_name="a-only"}} 1"#),
        r#"inbound_http_authz_deny_total{target_addr="10.0.0.1:8080",tls="disabled",client_id="",srv_group="",srv_kind="default",srv_name="web",srv_port="8080",route_group="",route_kind="default",route_name="root"} 1"#.to_string(),
    ] {
        assert!(text.contains(&line), "missing {line}\n{text}");
    }
}

#[tokio::test]
async fn the_allow_counter_follows_the_route() {
    let h = Harness::new();
    let a = h.stack(h.conn(PortPolicy::fixed(8080, policy(None)), Some(A)));
    for path in ["/", "/", "/admin", "/", "/admin"] {
        call(&a, path).await.unwrap();
    }
    let text = h.text();
    let count = |route: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("inbound_http_authz_allow_total")
                    && l.contains(&format!(r#"route_name="{route}""#))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
    };
    assert_eq!(count("root"), Some(3), "{text}");
    assert_eq!(count("admin"), Some(2), "{text}");
}

#[tokio::test]
async fn no_route_is_not_found() {
    let h = Harness::new();
    let mut p = policy(None);
    if let Protocol::Http1(http) = &mut p.protocol {
        Arc::make_mut(http).http_routes.truncate(1);
    }
    let a = h.stack(h.conn(PortPolicy::fixed(8080, p), Some(A)));
    let e = call(&a, "/other").await.unwrap_err();
    assert!(linnet_core::is_caused_by::<NoRoute>(&*e), "{e}");
    assert_eq!(h.served(), 0);
}

#[tokio::test]
async fn a_policy_change_applies_to_the_next_request() {
    let h = Harness::new();
    let (tx, rx) = tokio::sync::watch::channel(Some(Arc::new(policy(None))));
    let port = PortPolicy::watched(8080, rx, policy(None));
    let b = h.stack(h.conn(port, Some(B)));
    assert!(call(&b, "/").await.is_ok());
    // Now `/` admits A only.
    let mut p = policy(None);
    if let Protocol::Http1(http) = &mut p.protocol {
        Arc::make_mut(http).http_routes[1].authorizations = vec![identities("a", &[A])].into();
    }
    tx.send_replace(Some(Arc::new(p)));
    let e = call(&b, "/").await.unwrap_err();
    assert!(linnet_core::is_caused_by::<Unauthorized>(&*e), "{e}");
    assert_eq!(h.served(), 1);
}

#[tokio::test(start_paused = true)]
async fn rate_limits_refuse_with_retry_after() {
    let h = Harness::new();
    let limit = LocalRateLimit::new(meta("rl"), NonZeroU32::new(3), None, vec![]);
    let a = h.stack(h.conn(PortPolicy::fixed(8080, policy(Some(limit))), Some(A)));
    for _ in 0..3 {
        assert!(call(&a, "/").await.is_ok());
    }
    let e = call(&a, "/").await.unwrap_err();
    let limited = linnet_core::find_cause::<RateLimited>(&*e).expect("rate limited");
    assert!(limited.retry_after > std::time::Duration::ZERO);
    assert_eq!(h.served(), 3);
    // The edge answers 429 with Retry-After.
    let rescued = linnet_http::rescue::rescue(&*e, false);
    assert_eq!(rescued.response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        rescued.response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    let grpc = linnet_http::rescue::rescue(&*e, true);
    assert_eq!(grpc.response.headers()["grpc-status"], "8");
    let text = h.text();
    assert!(text.contains(r#"rl_name="rl",limit="total"} 1"#), "{text}");
    // A second later the bucket has refilled.
    tokio::time::advance(std::time::Duration::from_secs(1)).await;
    assert!(call(&a, "/").await.is_ok());
}

#[tokio::test]
async fn unauthorized_is_403_or_permission_denied() {
    let h = Harness::new();
    let b = h.stack(h.conn(PortPolicy::fixed(8080, policy(None)), Some(B)));
    let e = call(&b, "/admin").await.unwrap_err();
    let rescued = linnet_http::rescue::rescue(&*e, false);
    assert_eq!(rescued.response.status(), StatusCode::FORBIDDEN);
    assert!(
        rescued.response.headers()["l5d-proxy-error"]
            .to_str()
            .unwrap()
            .contains("unauthorized")
    );
    let grpc = linnet_http::rescue::rescue(&*e, true);
    assert_eq!(grpc.response.headers()["grpc-status"], "7");
}

#[tokio::test]
async fn failure_injection_answers_after_authorization() {
    let h = Harness::new();
    let mut p = policy(None);
    if let Protocol::Http1(http) = &mut p.protocol {
        Arc::make_mut(http).http_routes[0].rules[0].filters = vec![HttpFilter::FailureInjector {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "chaos".into(),
            ratio: linnet_policy::outbound::filters::Ratio::ALWAYS,
        }]
        .into();
    }
    let a = h.stack(h.conn(PortPolicy::fixed(8080, p.clone()), Some(A)));
    let b = h.stack(h.conn(PortPolicy::fixed(8080, p), Some(B)));
    let e = call(&a, "/admin").await.unwrap_err();
    assert!(linnet_core::is_caused_by::<InjectedFailure>(&*e), "{e}");
    // A client the route refuses learns nothing of its filters.
    let e = call(&b, "/admin").await.unwrap_err();
    assert!(linnet_core::is_caused_by::<Unauthorized>(&*e), "{e}");
    assert_eq!(h.served(), 0);
}

#[tokio::test]
async fn connections_are_authorized_and_revoked() {
    let h = Harness::new();
    let mut opaque = policy(None);
    opaque.protocol = Protocol::Opaque;
    let (tx, rx) = tokio::sync::watch::channel(Some(Arc::new(opaque.clone())));
    let port = PortPolicy::watched(9090, rx, opaque.clone());
    let mut a = Conn::new(
        port.clone(),
        Client {
            addr: "10.0.0.9".parse().unwrap(),
            tls: ClientTls::Mesh(A.into()),
        },
        "10.0.0.1:9090".parse().unwrap(),
        &h.metrics,
    );
    let plain = Conn::new(
        port,
        Client {
            addr: "10.0.0.9".parse().unwrap(),
            tls: ClientTls::None,
        },
        "10.0.0.1:9090".parse().unwrap(),
        &h.metrics,
    );
    assert!(accept::refuse_before_detect(&a).is_ok());
    assert!(accept::authorize_tcp(&a).is_ok());
    assert!(accept::authorize_tcp(&plain).is_err());

    // A change that still admits A does not end its connection...
    let revoked = tokio::spawn(async move { accept::revoked(&mut a).await });
    tx.send_replace(Some(Arc::new(opaque.clone())));
    tokio::task::yield_now().await;
    assert!(!revoked.is_finished());
    // ...one that no longer does, does.
    let mut deny = opaque;
    deny.authorizations = vec![].into();
    deny.meta = meta("deny");
    tx.send_replace(Some(Arc::new(deny)));
    let denied = revoked.await.unwrap();
    assert_eq!(&*denied.server, "deny");
    let text = h.text();
    assert!(
        text.contains("inbound_tcp_authz_terminate_total{"),
        "{text}"
    );
    assert!(text.contains("inbound_tcp_authz_allow_total{"), "{text}");
    assert!(text.contains("inbound_tcp_authz_deny_total{"), "{text}");
}

#[tokio::test]
async fn a_policy_that_admits_no_one_refuses_before_detection() {
    let h = Harness::new();
    let mut deny = policy(None);
    deny.authorizations = vec![].into();
    deny.protocol = Protocol::Http1(Arc::new(HttpPolicy::default_routes(vec![].into())));
    let conn = h.conn(PortPolicy::fixed(8080, deny), Some(A));
    assert!(accept::refuse_before_detect(&conn).is_err());
    // Audit admits everyone, counted as denied.
    let mut audit = policy(None);
    let everyone = Authorization {
        meta: meta("audit"),
        networks: Network::all().into(),
        authentication: Authentication::Unauthenticated,
    };
    audit.authorizations = vec![everyone.clone()].into();
    audit.protocol = Protocol::Opaque;
    let conn = h.conn(PortPolicy::fixed(9090, audit), None);
    assert!(accept::authorize_tcp(&conn).is_ok());
    let text = h.text();
    assert!(
        text.contains(r#"tls="disabled",client_id="",srv_group="",srv_kind="default",srv_name="web",srv_port="9090"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn the_ports_kept_are_bounded() {
    use linnet_policy::inbound::{DefaultPolicy, Defaults};
    let mut registry = linnet_metrics::registry();
    let defaults = Defaults {
        policy: DefaultPolicy::Deny,
        cluster_networks: vec![],
        detect_timeout: std::time::Duration::from_secs(1),
        opaque_ports: Default::default(),
        require_identity_ports: Default::default(),
        require_tls_ports: Default::default(),
    };
    let policies = crate::Policies::new(defaults, None, std::time::Duration::ZERO, &mut registry);
    let extra = 44;
    for port in 1..=u16::try_from(crate::policy::MAX_PORTS + extra).unwrap() {
        // Every port still gets its policy, kept or not.
        assert!(policies.get(port).await.current().denies_all());
    }
    // Ports already kept are not counted again.
    policies.get(1).await;
    let text = linnet_metrics::encode(&registry);
    assert!(
        text.contains(&format!("inbound_policy_ports_full_total {extra}")),
        "{text}"
    );
}

#[tokio::test]
async fn a_full_table_of_rate_limited_identities_is_counted() {
    let h = Harness::new();
    let limit =
        LocalRateLimit::new(meta("rl"), None, NonZeroU32::new(100), vec![]).with_max_keys(1);
    let p = policy(Some(limit));
    let port = PortPolicy::fixed(8080, p);
    let a = h.stack(h.conn(port.clone(), Some(A)));
    let b = h.stack(h.conn(port, Some(B)));
    call(&a, "/").await.unwrap();
    // B is a second identity: the table (of one) is full.
    call(&b, "/").await.unwrap();
    let text = h.text();
    assert!(
        text.contains(r#"inbound_http_local_ratelimit_identities_full_total{srv_group="",srv_kind="default",srv_name="web",srv_port="8080",rl_group="",rl_kind="default",rl_name="rl"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn bytes_on_a_detect_port_need_every_route() {
    // The server admits A and B; `/admin` only A. Bytes that were not
    // recognised as HTTP could be a request for `/admin`: B's are refused.
    let h = Harness::new();
    let mut p = policy(None);
    let http = match &p.protocol {
        Protocol::Http1(http) => http.clone(),
        _ => unreachable!(),
    };
    p.protocol = Protocol::Detect {
        timeout: std::time::Duration::from_secs(1),
        http,
    };
    let port = PortPolicy::fixed(8080, p);
    let client = |id: &str| Client {
        addr: "10.0.0.9".parse().unwrap(),
        tls: ClientTls::Mesh(id.into()),
    };
    let target = "10.0.0.1:8080".parse().unwrap();
    let a = Conn::new(port.clone(), client(A), target, &h.metrics);
    let b = Conn::new(port, client(B), target, &h.metrics);
    assert!(accept::authorize_tcp(&a).is_ok());
    assert!(accept::authorize_tcp(&b).is_err());
}

#[tokio::test]
async fn a_host_that_is_not_the_authority_is_refused() {
    let h = Harness::new();
    let a = h.stack(h.conn(PortPolicy::fixed(8080, policy(None)), Some(A)));
    let req = |host: &str| {
        Request::get("http://public.example.com/admin")
            .header("host", host)
            .body(BoxBody::default())
            .unwrap()
    };
    let e = linnet_http::call_stack(a.clone(), req("admin.example.com"))
        .await
        .unwrap_err();
    let rescued = linnet_http::rescue::rescue(&*e, false);
    assert_eq!(rescued.response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(h.served(), 0);
    // The same authority, in any case, is fine.
    let rsp = linnet_http::call_stack(a, req("Public.Example.com")).await;
    assert!(rsp.is_ok());
}
