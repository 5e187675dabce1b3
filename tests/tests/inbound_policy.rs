//! Inbound policy end to end, in-process with real sockets: a server proxy
//! in front of an application follows the policy `linnet control` serves
//! for its port (or its configured default), and meshed clients with
//! identities A and B reach it over mTLS through their own proxies. Each
//! test checks what the clients got against what the application itself
//! saw: route authorization (403, gRPC PERMISSION_DENIED), local rate
//! limits (in total, per identity, overridden), and the default policies
//! `deny`, `all-authenticated` and `audit`, with and without a policy
//! service; and that the proxy's metrics count what it refused.
//! (`proxy/tests/inbound_policy_netns.rs` covers the same policies with
//! real interception, in network namespaces.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use linnet_app::OrigDst;
use linnet_test_support::{
    control::ControlPlane,
    eventually,
    http::{HttpServer, collect, h1_client, h2_client},
    metrics::{self, Scrape},
    proxy::Proxy,
};
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SERVER: &str = "web.test.serviceaccount.identity.linkerd.cluster.local";
const A: &str = "a.test.serviceaccount.identity.linkerd.cluster.local";
const B: &str = "b.test.serviceaccount.identity.linkerd.cluster.local";
const VIP: &str = "10.96.0.4:80";

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The mesh file: tokens for the server and both clients, the service at
/// [`VIP`] whose one endpoint is `endpoint` (the server proxy's inbound
/// listener, with the server's identity), and `workloads` as given.
fn mesh(endpoint: SocketAddr, workloads: &str) -> String {
    format!(
        "identity:\n  tokens:\n    {SERVER}: s\n    {A}: a\n    {B}: b\n\
         services:\n  web.test.svc.cluster.local:80:\n    addresses: [\"{VIP}\"]\n    endpoints:\n      - addr: \"{endpoint}\"\n        identity: {SERVER}\n\
         {workloads}"
    )
}

/// `workloads:` with one server, for the application's `port`, of workload
/// `web`; `server` is its YAML, unindented.
fn web_server(port: u16, server: &str) -> String {
    let mut y = format!("workloads:\n  web:\n    ports:\n      {port}:\n");
    for line in server.lines() {
        y.push_str(&format!("        {line}\n"));
    }
    y
}

/// The application, its server proxy, and the two meshed clients.
struct Mesh {
    plane: ControlPlane,
    app: HttpServer,
    /// Identity [`SERVER`]; every connection to its inbound listener is
    /// redirected to the application, under the policy of `app`'s port.
    server: Proxy,
    /// Identity [`A`]; its outbound listener leads to [`VIP`].
    a: Proxy,
    /// Identity [`B`], likewise.
    b: Proxy,
}

impl Mesh {
    /// Starts it all, with the `workloads:` part of the mesh file made by
    /// `workloads` from the application's port.
    async fn start(workloads: impl Fn(u16) -> String) -> Self {
        let app = HttpServer::start().await;
        let workloads = workloads(app.addr.port());
        // The endpoint is the server proxy's listener, known once it runs.
        let plane = ControlPlane::start(&mesh("127.0.0.1:1".parse().unwrap(), &workloads)).await;
        let addr = plane.addr.to_string();
        let server = plane
            .meshed_proxy(
                SERVER,
                "s",
                OrigDst::Fixed(app.addr),
                &[
                    ("LINNET_POLICY_SVC_ADDR", &addr),
                    ("LINNET_POLICY_WORKLOAD", "web"),
                ],
            )
            .await;
        plane.write(&mesh(server.inbound, &workloads));
        let vip = OrigDst::Fixed(VIP.parse().unwrap());
        let a = plane.meshed_proxy(A, "a", vip.clone(), &[]).await;
        let b = plane.meshed_proxy(B, "b", vip, &[]).await;
        Self {
            plane,
            app,
            server,
            a,
            b,
        }
    }

    /// How many requests the application saw from `id` (by the
    /// `l5d-client-id` the server proxy set), and for `path` if given.
    fn seen_from(&self, id: &str, path: Option<&str>) -> usize {
        self.app
            .seen()
            .iter()
            .filter(|s| s.headers.get("l5d-client-id").is_some_and(|v| v == id))
            .filter(|s| path.is_none_or(|p| s.uri.path() == p))
            .count()
    }
}

/// `GET path` from `addr`: status and headers, or `None` when no response
/// came back.
async fn get(client: &HttpClient, addr: SocketAddr, path: &str) -> Option<(StatusCode, HeaderMap)> {
    let req = http::Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, headers, _, _) = collect(client.request(req).await.ok()?).await;
    Some((status, headers))
}

/// Waits until `GET path` through `addr` is answered 200 (the client
/// proxy has the server's endpoint); one such request reaches the app.
async fn until_ok(addr: SocketAddr, path: &str) {
    let client = h1_client();
    eventually("a 200 across the mesh", Duration::from_secs(10), || async {
        (get(&client, addr, path).await?.0 == StatusCode::OK).then_some(())
    })
    .await;
}

/// What came back from a burst of requests.
#[derive(Debug, Default)]
struct Burst {
    ok: usize,
    limited: usize,
    /// `Retry-After` of each 429, in seconds (0 when missing or not a number).
    retry_after: Vec<u64>,
    /// Any other outcome: status, or `None` for no response.
    other: Vec<Option<StatusCode>>,
    elapsed: Duration,
}

/// Sends `n` `GET path` to `addr` all at once, spread over four HTTP/2
/// connections.
async fn burst(addr: SocketAddr, path: &str, n: usize) -> Burst {
    let clients: Vec<HttpClient> = (0..4).map(|_| h2_client()).collect();
    let start = Instant::now();
    let results = futures_util::future::join_all(
        (0..n).map(|i| get(&clients[i % clients.len()], addr, path)),
    )
    .await;
    let mut b = Burst {
        elapsed: start.elapsed(),
        ..Burst::default()
    };
    for r in results {
        match r {
            Some((StatusCode::OK, _)) => b.ok += 1,
            Some((StatusCode::TOO_MANY_REQUESTS, h)) => {
                b.limited += 1;
                let after = h.get("retry-after").and_then(|v| v.to_str().ok());
                b.retry_after
                    .push(after.and_then(|v| v.parse().ok()).unwrap_or(0));
            }
            other => b.other.push(other.map(|(s, _)| s)),
        }
    }
    b
}

/// Asserts that `admitted` is what a limit of `rps` admits over `elapsed`:
/// the bucket's one second's worth, plus what refilled meanwhile (and a
/// little slack for rounding).
fn assert_within_limit(what: &str, admitted: usize, rps: usize, elapsed: Duration) {
    let most = rps + (rps as f64 * elapsed.as_secs_f64()).ceil() as usize + 2;
    assert!(
        (rps..=most).contains(&admitted),
        "{what}: {admitted} admitted by a limit of {rps}/s over {elapsed:?} (expected {rps}..={most})"
    );
}

/// Waits until the sum of `name{labels}` is at least `n`, and returns the
/// scrape.
async fn metric_reaches(proxy: &Proxy, name: &str, labels: &[(&str, &str)], n: f64) -> Scrape {
    eventually(name, Duration::from_secs(10), || async {
        let m = proxy.metrics().await;
        (m.sum(name, labels) >= n).then_some(m)
    })
    .await
}

/// Writes `bytes` on a new connection to `addr`; true when it was closed
/// or reset without a byte back.
async fn refused(addr: SocketAddr, bytes: &[u8]) -> bool {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

// === route authorization ===

#[tokio::test]
async fn a_route_admits_fewer_clients_than_its_server() {
    let m = Mesh::start(|port| {
        web_server(
            port,
            &format!(
                "authorizations: [{{identities: [{A}, {B}]}}]\n\
                 routes:\n  - name: admin\n    matches: [{{path_prefix: /admin}}]\n    authorizations: [{{identities: [{A}]}}]\n\
                 \x20 - name: root\n    matches: [{{path_prefix: /}}]\n"
            ),
        )
    })
    .await;
    until_ok(m.a.outbound, "/").await;
    until_ok(m.b.outbound, "/").await;
    let h1 = h1_client();
    for (proxy, path) in [(&m.a, "/admin"), (&m.a, "/"), (&m.b, "/")] {
        let (status, _) = get(&h1, proxy.outbound, path).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    let (status, headers) = get(&h1, m.b.outbound, "/admin").await.unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN);
    let error = headers["l5d-proxy-error"].to_str().unwrap();
    assert!(error.contains("unauthorized"), "{error}");

    assert_eq!(m.seen_from(A, Some("/admin")), 1);
    assert_eq!(
        m.seen_from(B, Some("/admin")),
        0,
        "B's /admin reached the app"
    );
    assert_eq!(m.seen_from(B, Some("/")), 2);
    let s = m.server.metrics().await;
    let deny = [("route_name", "admin"), ("client_id", B)];
    assert_eq!(
        s.sum("inbound_http_authz_deny_total", &deny),
        1.0,
        "{}",
        s.0
    );
    let allow = [("route_name", "admin"), ("client_id", A)];
    assert_eq!(
        s.sum("inbound_http_authz_allow_total", &allow),
        1.0,
        "{}",
        s.0
    );
    let root_denied = [("route_name", "root")];
    assert_eq!(s.sum("inbound_http_authz_deny_total", &root_denied), 0.0);

    // A request line the detector does not take for HTTP (two spaces; a
    // lenient server would still read it) travels as bytes: B may not
    // send those where a route refuses it, so the connection is reset
    // and the application never sees it. A may.
    let smuggled = b"GET  /admin HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n";
    assert!(
        refused(m.b.outbound, smuggled).await,
        "B's bytes were relayed"
    );
    let s = metric_reaches(
        &m.server,
        "inbound_tcp_authz_deny_total",
        &[("client_id", B)],
        1.0,
    )
    .await;
    assert_eq!(
        s.sum("inbound_tcp_authz_allow_total", &[("client_id", B)]),
        0.0
    );
    assert_eq!(m.seen_from(B, Some("/admin")), 0);
    let mut conn = tokio::net::TcpStream::connect(m.a.outbound).await.unwrap();
    conn.write_all(smuggled).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer)).await;
    assert!(!answer.is_empty(), "A's bytes were not relayed");
    metric_reaches(
        &m.server,
        "inbound_tcp_authz_allow_total",
        &[("client_id", A)],
        1.0,
    )
    .await;
}

#[tokio::test]
async fn a_grpc_route_denies_one_method() {
    let m = Mesh::start(|port| {
        web_server(
            port,
            "protocol: grpc\nauthorizations: [{identities: [\"*\"]}]\n\
             routes:\n  - name: delete\n    matches: [{service: t.Items, method: Delete}]\n    authorizations: []\n\
             \x20 - name: items\n    matches: [{service: t.Items}]\n",
        )
    })
    .await;
    let h2 = h2_client();
    let call = |method: &str| {
        http::Request::post(format!("http://{}/t.Items/{method}", m.a.outbound))
            .header("content-type", "application/grpc")
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
            .unwrap()
    };
    eventually(
        "a gRPC call across the mesh",
        Duration::from_secs(10),
        || async {
            let rsp = h2.request(call("Get")).await.ok()?;
            (collect(rsp).await.0 == StatusCode::OK).then_some(())
        },
    )
    .await;
    let (status, headers, _, _) = collect(h2.request(call("Delete")).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "gRPC errors travel as grpc-status");
    assert_eq!(
        headers["grpc-status"], "7",
        "PERMISSION_DENIED: {headers:?}"
    );
    assert!(headers.contains_key("l5d-proxy-error"), "{headers:?}");
    let (status, headers, _, _) = collect(h2.request(call("List")).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!headers.contains_key("grpc-status"), "{headers:?}");

    // A real gRPC client reads the refusal as PERMISSION_DENIED.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", m.a.outbound))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let err = grpc
        .unary(
            tonic::Request::new(b"x".to_vec()),
            http::uri::PathAndQuery::from_static("/t.Items/Delete"),
            linnet_test_support::grpc::Raw,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");

    assert_eq!(
        m.seen_from(A, Some("/t.Items/Delete")),
        0,
        "Delete reached the app"
    );
    assert_eq!(m.seen_from(A, Some("/t.Items/List")), 1);
    assert!(m.seen_from(A, Some("/t.Items/Get")) >= 1);
}

// === local rate limits ===

#[tokio::test]
async fn a_total_rate_limit_admits_one_seconds_worth_of_a_burst() {
    let m = Mesh::start(|port| {
        web_server(
            port,
            "authorizations: [{unauthenticated: true}]\nrate_limit: {total: 100}\n",
        )
    })
    .await;
    // Plaintext, straight to the server proxy: its first connections wait
    // for the port's policy, so the whole burst meets the limit.
    let b = burst(m.server.inbound, "/burst", 1_000).await;
    assert!(b.other.is_empty(), "{:?}", b.other);
    assert_eq!(b.ok + b.limited, 1_000);
    assert_within_limit("total", b.ok, 100, b.elapsed);
    assert!(
        b.retry_after.iter().all(|&s| s >= 1),
        "a 429 without Retry-After >= 1: {:?}",
        b.retry_after
    );
    let seen = m
        .app
        .seen()
        .iter()
        .filter(|s| s.uri.path() == "/burst")
        .count();
    assert_eq!(seen, b.ok, "the app saw exactly the admitted requests");
    let s = m.server.metrics().await;
    assert_eq!(
        s.sum("inbound_http_local_ratelimit_total", &[("limit", "total")]),
        b.limited as f64,
        "{}",
        s.0
    );
}

#[tokio::test]
async fn an_identity_rate_limit_keeps_clients_apart() {
    let m = Mesh::start(|port| {
        web_server(
            port,
            &format!(
                "authorizations: [{{identities: [{A}, {B}]}}]\nrate_limit: {{identity: 20}}\n"
            ),
        )
    })
    .await;
    let start = Instant::now();
    until_ok(m.a.outbound, "/warm-up").await;
    until_ok(m.b.outbound, "/warm-up").await;
    let a = burst(m.a.outbound, "/burst", 200).await;
    assert!(a.other.is_empty(), "{:?}", a.other);
    assert!(a.limited > 0, "{a:?}");
    // A's bucket served its warm-up too.
    assert_within_limit("A", a.ok + 1, 20, start.elapsed());
    assert_eq!(m.seen_from(A, None), a.ok + 1);

    // B's bucket is its own: untouched by A's burst.
    let b = burst(m.b.outbound, "/after", 10).await;
    assert_eq!((b.ok, b.limited), (10, 0), "{b:?}");
    assert_eq!(m.seen_from(B, Some("/after")), 10);
    let s = m.server.metrics().await;
    let limited_a = [("limit", "identity"), ("client_id", A)];
    assert_eq!(
        s.sum("inbound_http_local_ratelimit_total", &limited_a),
        a.limited as f64,
        "{}",
        s.0
    );
}

#[tokio::test]
async fn an_override_lifts_the_limit_for_the_identities_it_names() {
    let m = Mesh::start(|port| {
        web_server(
            port,
            &format!(
                "authorizations: [{{identities: [{A}, {B}]}}]\n\
                 rate_limit: {{identity: 5, overrides: [{{requests_per_second: 1000, identities: [{A}]}}]}}\n"
            ),
        )
    })
    .await;
    until_ok(m.a.outbound, "/warm-up").await;
    let start = Instant::now();
    until_ok(m.b.outbound, "/warm-up").await;
    let a = burst(m.a.outbound, "/burst", 200).await;
    assert_eq!((a.ok, a.limited), (200, 0), "{a:?}");
    let b = burst(m.b.outbound, "/burst", 50).await;
    assert!(b.other.is_empty(), "{:?}", b.other);
    assert_within_limit("B", b.ok + 1, 5, start.elapsed());
    assert_eq!(m.seen_from(A, Some("/burst")), 200);
    assert_eq!(m.seen_from(B, Some("/burst")), b.ok);
    let s = m.server.metrics().await;
    let limited_b = [("limit", "identity"), ("client_id", B)];
    assert_eq!(
        s.sum("inbound_http_local_ratelimit_total", &limited_b),
        b.limited as f64,
        "{}",
        s.0
    );
    assert_eq!(
        s.sum(
            "inbound_http_local_ratelimit_total",
            &[("limit", "override")]
        ),
        0.0
    );
}

// === default policies ===

#[tokio::test]
async fn a_deny_default_without_a_policy_service_refuses_every_connection() {
    let app = HttpServer::start().await;
    let proxy = Proxy::start(
        OrigDst::Fixed(app.addr),
        &[("LINNET_INBOUND_DEFAULT_POLICY", "deny")],
    )
    .await;
    assert!(refused(proxy.inbound, b"GET / HTTP/1.1\r\nhost: web\r\n\r\n").await);
    assert!(refused(proxy.inbound, b"SSH-2.0-OpenSSH_9.2\r\n").await);
    assert!(app.seen().is_empty(), "{:?}", app.seen());

    let (status, body) = metrics::http(proxy.admin, "GET", "/config.json", "").await;
    assert_eq!(status, 200);
    let config: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        config["control"]["inbound_default_policy"], "deny",
        "{body}"
    );

    let close = [("direction", "inbound"), ("error", "unauthorized")];
    let s = metric_reaches(&proxy, "tcp_close_total", &close, 2.0).await;
    assert_eq!(s.sum("tcp_close_total", &close), 2.0, "{}", s.0);
    let deny = [("srv_kind", "default"), ("srv_name", "deny")];
    assert_eq!(s.sum("inbound_tcp_authz_deny_total", &deny), 2.0, "{}", s.0);
}

#[tokio::test]
async fn a_workloads_deny_default_refuses_a_meshed_client_until_removed() {
    let deny = "workloads:\n  web:\n    default_inbound_policy: deny\n";
    let m = Mesh::start(|_| deny.to_string()).await;
    let h1 = h1_client();
    // Until the refusal comes from the server proxy (the client proxy may
    // not know the endpoint yet), the client gets errors all the same.
    let close = [("direction", "inbound"), ("error", "unauthorized")];
    eventually(
        "the server proxy refuses A",
        Duration::from_secs(10),
        || async {
            let status = get(&h1, m.a.outbound, "/").await.map(|(s, _)| s);
            assert!(status.is_none_or(|s| s.is_server_error()), "{status:?}");
            (m.server.metrics().await.sum("tcp_close_total", &close) >= 1.0).then_some(())
        },
    )
    .await;
    assert!(m.app.seen().is_empty(), "{:?}", m.app.seen());

    // The workload's default removed: the file's (all-unauthenticated).
    m.plane
        .write(&mesh(m.server.inbound, "workloads:\n  web: {}\n"));
    until_ok(m.a.outbound, "/admitted").await;
    assert_eq!(m.seen_from(A, Some("/admitted")), 1);
    assert_eq!(m.app.seen().len(), 1);
}

#[tokio::test]
async fn all_authenticated_refuses_plaintext_and_audit_only_counts_it_unless_identity_is_required()
{
    let h1 = h1_client();
    // all-authenticated: a plaintext request is refused before the app.
    let app = HttpServer::start().await;
    let strict = Proxy::start(
        OrigDst::Fixed(app.addr),
        &[("LINNET_INBOUND_DEFAULT_POLICY", "all-authenticated")],
    )
    .await;
    let (status, headers) = get(&h1, strict.inbound, "/").await.unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN, "{headers:?}");
    assert!(app.seen().is_empty(), "{:?}", app.seen());
    let s = strict.metrics().await;
    let deny = [("srv_name", "all-authenticated"), ("tls", "disabled")];
    assert_eq!(
        s.sum("inbound_http_authz_deny_total", &deny),
        1.0,
        "{}",
        s.0
    );

    // audit: admitted, and counted as what deny would have refused.
    let app = HttpServer::start().await;
    let audit = Proxy::start(
        OrigDst::Fixed(app.addr),
        &[("LINNET_INBOUND_DEFAULT_POLICY", "audit")],
    )
    .await;
    let (status, _) = get(&h1, audit.inbound, "/audited").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.seen().len(), 1);
    let s = audit.metrics().await;
    let audited = [("srv_name", "audit")];
    assert_eq!(
        s.sum("inbound_http_authz_deny_total", &audited),
        1.0,
        "{}",
        s.0
    );
    assert_eq!(
        s.sum("inbound_http_authz_allow_total", &audited),
        0.0,
        "{}",
        s.0
    );

    // audit, but the app's port requires identity: that port refuses.
    let app = HttpServer::start().await;
    let port = app.addr.port().to_string();
    let audit = Proxy::start(
        OrigDst::Fixed(app.addr),
        &[
            ("LINNET_INBOUND_DEFAULT_POLICY", "audit"),
            ("LINNET_INBOUND_PORTS_REQUIRE_IDENTITY", &port),
        ],
    )
    .await;
    let (status, _) = get(&h1, audit.inbound, "/").await.unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(app.seen().is_empty(), "{:?}", app.seen());
}
