//! Meshed opaque TCP: two proxies with identities from `linnet control`,
//! the client side's outbound connecting over mTLS to the server side's
//! inbound port with a transport header; and everything the server side
//! must refuse on that port.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use linnet_app::OrigDst;
use linnet_test_support::{
    control::ControlPlane,
    eventually,
    proxy::Proxy,
    tcp::{ExchangeServer, exchange, random_payload},
};
use linnet_tls::pki_types::ServerName;
use std::{sync::Arc, time::Duration};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SERVER: &str = "db.test.serviceaccount.identity.linkerd.cluster.local";
const CLIENT: &str = "app.test.serviceaccount.identity.linkerd.cluster.local";
const VIP: &str = "10.96.0.2:5432";

fn mesh(backend: std::net::SocketAddr, server_identity: &str, transport_port: u16) -> String {
    format!(
        "identity:\n  tokens:\n    {SERVER}: s\n    {CLIENT}: c\n\
         services:\n  db.test.svc.cluster.local:5432:\n    addresses: [\"{VIP}\"]\n    profile: {{opaque: true}}\n    endpoints:\n      - addr: \"{backend}\"\n        identity: {server_identity}\n        protocol: opaque\n        opaque_transport_port: {transport_port}\n"
    )
}

async fn meshed_proxy(plane: &ControlPlane, id: &str, token: &str, orig_dst: OrigDst) -> Proxy {
    meshed_proxy_with(plane, id, token, orig_dst, &[]).await
}

async fn meshed_proxy_with(
    plane: &ControlPlane,
    id: &str,
    token: &str,
    orig_dst: OrigDst,
    extra: &[(&str, &str)],
) -> Proxy {
    plane.meshed_proxy(id, token, orig_dst, extra).await
}

struct Mesh {
    plane: ControlPlane,
    backend: ExchangeServer,
    server: Proxy,
    client: Proxy,
}

async fn start(server_identity_in_file: &str) -> Mesh {
    let backend = ExchangeServer::start(4096).await;
    // The file names the server proxy's port once it is known.
    let plane = ControlPlane::start(&mesh(backend.addr, SERVER, 1)).await;
    // The server side: its inbound port is dialled directly.
    let server = meshed_proxy(&plane, SERVER, "s", OrigDst::from_fn(|s| s.local_addr())).await;
    plane.write(&mesh(
        backend.addr,
        server_identity_in_file,
        server.inbound.port(),
    ));
    let client = meshed_proxy(&plane, CLIENT, "c", OrigDst::Fixed(VIP.parse().unwrap())).await;
    Mesh {
        plane,
        backend,
        server,
        client,
    }
}

#[tokio::test]
async fn opaque_tcp_crosses_the_mesh_over_mtls() {
    let m = start(SERVER).await;
    let payload = random_payload(200_000);
    eventually(
        "an exchange across the mesh",
        Duration::from_secs(10),
        || async {
            let s = tokio::net::TcpStream::connect(m.client.outbound)
                .await
                .unwrap();
            exchange(s, &payload).await.ok().map(|_| ())
        },
    )
    .await;
    for _ in 0..3 {
        let s = tokio::net::TcpStream::connect(m.client.outbound)
            .await
            .unwrap();
        let reply = exchange(s, &payload).await.unwrap();
        assert!(!reply.is_empty());
    }
    assert!(m.backend.stats().completed() >= 4);
    let client = m.client.metrics().await;
    assert!(
        client.sum(
            "tcp_open_total",
            &[("direction", "outbound"), ("peer", "dst"), ("tls", "true")]
        ) >= 4.0,
        "{}",
        client.0
    );
    let server = m.server.metrics().await;
    assert!(
        server.sum(
            "tcp_open_total",
            &[("direction", "inbound"), ("peer", "src"), ("tls", "true")]
        ) >= 4.0,
        "{}",
        server.0
    );
    let _ = &m.plane;
}

#[tokio::test]
async fn a_peer_with_the_wrong_identity_is_refused() {
    // The file says the endpoint is someone else: the server's real
    // certificate does not match, and nothing reaches the backend.
    let m = start("other.test.serviceaccount.identity.linkerd.cluster.local").await;
    let s = tokio::net::TcpStream::connect(m.client.outbound)
        .await
        .unwrap();
    let r = exchange(s, b"secret").await;
    assert!(r.is_err(), "{r:?}");
    assert_eq!(m.backend.stats().completed(), 0);
    let client = m.client.metrics().await;
    assert!(
        client.sum(
            "tcp_close_total",
            &[("direction", "outbound"), ("error", "tls_fail_closed")]
        ) >= 1.0,
        "{}",
        client.0
    );
    assert!(
        client.sum(
            "tls_fail_closed_total",
            &[("direction", "outbound"), ("reason", "handshake")]
        ) >= 1.0,
        "{}",
        client.0
    );
}

/// Bytes written straight to the server proxy's inbound port; true when
/// the connection was closed or reset without a byte back.
async fn refused_raw(m: &Mesh, bytes: &[u8]) -> bool {
    let mut s = tokio::net::TcpStream::connect(m.server.inbound)
        .await
        .unwrap();
    let _ = s.write_all(bytes).await;
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// An mTLS client with a real certificate from the mesh's CA, to the
/// server proxy's inbound port; sends `bytes` after the handshake.
async fn mtls_then(m: &Mesh, bytes: &[u8], close: bool) -> bool {
    let config = test_client_config(&m.plane, vec![linnet_transport::header::ALPN.to_vec()]);
    let tcp = tokio::net::TcpStream::connect(m.server.inbound)
        .await
        .unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(SERVER).unwrap(), tcp)
        .await
        .unwrap();
    let _ = tls.write_all(bytes).await;
    if close {
        let _ = tls.shutdown().await;
    }
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// A client config with a certificate for CLIENT from the mesh's CA,
/// expecting SERVER.
fn test_client_config(
    plane: &ControlPlane,
    alpn: Vec<Vec<u8>>,
) -> linnet_tls::rustls::ClientConfig {
    common::mesh_client_config(plane, CLIENT, SERVER, alpn)
}

#[tokio::test]
async fn the_transport_port_refuses_all_but_mesh_mtls() {
    let m = start(SERVER).await;
    // A plaintext client.
    assert!(refused_raw(&m, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await);
    // Garbage instead of a ClientHello.
    assert!(refused_raw(&m, &[0x16, 0x03, 0x01, 0xff, 0xff, 0x00, 0x13, 0x37]).await);
    // A header longer than the limit.
    let mut long = linnet_transport::header::PREFACE.to_vec();
    long.extend_from_slice(&100_000u32.to_be_bytes());
    assert!(mtls_then(&m, &long, false).await);
    // A truncated header.
    assert!(mtls_then(&m, &linnet_transport::header::PREFACE[..10], true).await);
    assert_eq!(
        m.backend.stats().completed(),
        0,
        "nothing reached the application"
    );
    let server = m.server.metrics().await;
    for reason in ["direct_not_mesh_tls", "transport_header"] {
        assert!(
            server.sum(
                "tcp_close_total",
                &[("direction", "inbound"), ("error", reason)]
            ) >= 1.0,
            "{reason}: {}",
            server.0
        );
    }
}

#[tokio::test]
async fn http_crosses_the_mesh_over_mtls_with_the_client_identity() {
    use linnet_test_support::http::{HttpServer, collect, h1_client, h2_client};
    let backend = HttpServer::start().await;
    let vip = "10.96.0.3:80";
    let yaml = |endpoint: std::net::SocketAddr| {
        format!(
            "identity:\n  tokens:\n    {SERVER}: s\n    {CLIENT}: c\n\
             services:\n  web.test.svc.cluster.local:80:\n    addresses: [\"{vip}\"]\n    endpoints:\n      - addr: \"{endpoint}\"\n        identity: {SERVER}\n"
        )
    };
    let plane = ControlPlane::start(&yaml("127.0.0.1:1".parse().unwrap())).await;
    // The server side's inbound forwards to the application.
    let server = meshed_proxy(&plane, SERVER, "s", OrigDst::Fixed(backend.addr)).await;
    plane.write(&yaml(server.inbound));
    let client = meshed_proxy(&plane, CLIENT, "c", OrigDst::Fixed(vip.parse().unwrap())).await;

    let h1 = h1_client();
    let req = || {
        hyper::Request::get(format!("http://{}/status/200", client.outbound))
            .header("l5d-client-id", "forged.identity.linkerd.cluster.local")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    eventually(
        "HTTP/1 across the mesh",
        Duration::from_secs(10),
        || async {
            let rsp = h1.request(req()).await.ok()?;
            (collect(rsp).await.0 == 200).then_some(())
        },
    )
    .await;
    let h2 = h2_client();
    let (status, _, _, _) = collect(h2.request(req()).await.unwrap()).await;
    assert_eq!(status, 200);

    // l5d-require-id: the right identity passes, any other is refused
    // before the request leaves.
    let require = |id: &str| {
        hyper::Request::get(format!("http://{}/status/200", client.outbound))
            .header("l5d-require-id", id)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    let (status, _, _, _) = collect(h1.request(require(SERVER)).await.unwrap()).await;
    assert_eq!(status, 200);
    let before = backend.seen().len();
    let (status, headers, _, _) = collect(
        h1.request(require(
            "other.test.serviceaccount.identity.linkerd.cluster.local",
        ))
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 502);
    assert!(
        headers["l5d-proxy-error"]
            .to_str()
            .unwrap()
            .contains("l5d-require-id")
    );
    assert_eq!(
        backend.seen().len(),
        before,
        "a refused request reached the application"
    );

    let seen = backend.seen();
    assert!(seen.len() >= 3);
    for s in &seen {
        assert!(
            !s.headers.contains_key("l5d-require-id"),
            "l5d-require-id is the proxy's, not the application's"
        );
        let ids: Vec<_> = s.headers.get_all("l5d-client-id").iter().collect();
        assert_eq!(ids.len(), 1, "{:?}", s.headers);
        assert_eq!(
            ids[0], CLIENT,
            "the application sees the verified client, never the forged one"
        );
    }
    let c = client.metrics().await;
    assert!(
        c.sum(
            "tcp_open_total",
            &[
                ("direction", "outbound"),
                ("peer", "dst"),
                ("tls", "true"),
                ("server_id", SERVER)
            ]
        ) >= 1.0,
        "{}",
        c.0
    );
    let s = server.metrics().await;
    assert!(
        s.sum(
            "tcp_open_total",
            &[
                ("direction", "inbound"),
                ("peer", "src"),
                ("tls", "true"),
                ("client_id", CLIENT)
            ]
        ) >= 1.0,
        "{}",
        s.0
    );
    assert!(
        s.sum(
            "request_total",
            &[
                ("direction", "inbound"),
                ("tls", "true"),
                ("client_id", CLIENT)
            ]
        ) >= 2.0,
        "{}",
        s.0
    );
}

#[tokio::test]
async fn an_http_peer_with_the_wrong_identity_gets_502_and_nothing_is_sent() {
    use linnet_test_support::http::{HttpServer, collect, h1_client};
    let backend = HttpServer::start().await;
    let vip = "10.96.0.4:80";
    let yaml = |endpoint: std::net::SocketAddr, id: &str| {
        format!(
            "identity:\n  tokens:\n    {SERVER}: s\n    {CLIENT}: c\n\
             services:\n  web.test.svc.cluster.local:80:\n    addresses: [\"{vip}\"]\n    endpoints:\n      - addr: \"{endpoint}\"\n        identity: {id}\n"
        )
    };
    let plane = ControlPlane::start(&yaml("127.0.0.1:1".parse().unwrap(), SERVER)).await;
    let server = meshed_proxy(&plane, SERVER, "s", OrigDst::Fixed(backend.addr)).await;
    plane.write(&yaml(
        server.inbound,
        "impostor.test.serviceaccount.identity.linkerd.cluster.local",
    ));
    let client = meshed_proxy(&plane, CLIENT, "c", OrigDst::Fixed(vip.parse().unwrap())).await;
    let rsp = h1_client()
        .get(
            format!("http://{}/status/200", client.outbound)
                .parse()
                .unwrap(),
        )
        .await
        .unwrap();
    let (status, headers, _, _) = collect(rsp).await;
    assert_eq!(status, 502);
    let why = headers["l5d-proxy-error"].to_str().unwrap();
    assert!(why.contains("mTLS") && why.contains("impostor"), "{why}");
    assert!(backend.seen().is_empty());
}

/// A gRPC server answering `/t.T/Echo` with the request's bytes and the
/// `l5d-client-id` it saw.
async fn grpc_server() -> std::net::SocketAddr {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use linnet_test_support::grpc::{Msg, Raw};
    struct Echo(String);
    impl tonic::server::UnaryService<Msg> for Echo {
        type Response = Msg;
        type Future = std::pin::Pin<
            Box<
                dyn std::future::Future<Output = Result<tonic::Response<Msg>, tonic::Status>>
                    + Send,
            >,
        >;
        fn call(&mut self, req: tonic::Request<Msg>) -> Self::Future {
            let id = self.0.clone();
            let m = req.into_inner();
            Box::pin(async move {
                Ok(tonic::Response::new(
                    [m, b"|".to_vec(), id.into_bytes()].concat(),
                ))
            })
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let id = req
                            .headers()
                            .get("l5d-client-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        Ok::<_, std::convert::Infallible>(
                            tonic::server::Grpc::new(Raw).unary(Echo(id), req).await,
                        )
                    },
                );
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn grpc_crosses_the_mesh_over_mtls() {
    use linnet_test_support::grpc::Raw;
    let backend = grpc_server().await;
    let vip = "10.96.0.5:80";
    let yaml = |endpoint: std::net::SocketAddr| {
        format!(
            "identity:\n  tokens:\n    {SERVER}: s\n    {CLIENT}: c\n\
             services:\n  grpc.test.svc.cluster.local:80:\n    addresses: [\"{vip}\"]\n    endpoints:\n      - addr: \"{endpoint}\"\n        identity: {SERVER}\n"
        )
    };
    let plane = ControlPlane::start(&yaml("127.0.0.1:1".parse().unwrap())).await;
    let server = meshed_proxy(&plane, SERVER, "s", OrigDst::Fixed(backend)).await;
    plane.write(&yaml(server.inbound));
    let client = meshed_proxy(&plane, CLIENT, "c", OrigDst::Fixed(vip.parse().unwrap())).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", client.outbound))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    for i in 0..5u8 {
        grpc.ready().await.unwrap();
        let rsp = grpc
            .unary(
                tonic::Request::new(vec![i; 3]),
                http::uri::PathAndQuery::from_static("/t.T/Echo"),
                Raw,
            )
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            rsp,
            [vec![i; 3], b"|".to_vec(), CLIENT.as_bytes().to_vec()].concat()
        );
    }
    let s = server.metrics().await;
    assert_eq!(
        s.sum(
            "response_total",
            &[
                ("direction", "inbound"),
                ("tls", "true"),
                ("grpc_status", "0")
            ]
        ),
        5.0,
        "{}",
        s.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_traffic_without_losing_a_request() {
    use linnet_test_support::http::{HttpServer, collect, h1_client};
    let backend = HttpServer::start().await;
    let vip = "10.96.0.6:80";
    let yaml = |endpoint: std::net::SocketAddr| {
        format!(
            "identity:\n  certificate_lifetime: 2s\n  clock_skew_allowance: 0s\n  tokens:\n    {SERVER}: s\n    {CLIENT}: c\n\
             services:\n  web.test.svc.cluster.local:80:\n    addresses: [\"{vip}\"]\n    endpoints:\n      - addr: \"{endpoint}\"\n        identity: {SERVER}\n"
        )
    };
    let plane = ControlPlane::start(&yaml("127.0.0.1:1".parse().unwrap())).await;
    let fast = [("LINNET_IDENTITY_MIN_REFRESH", "200ms")];
    let server = meshed_proxy_with(&plane, SERVER, "s", OrigDst::Fixed(backend.addr), &fast).await;
    plane.write(&yaml(server.inbound));
    let client = meshed_proxy_with(
        &plane,
        CLIENT,
        "c",
        OrigDst::Fixed(vip.parse().unwrap()),
        &fast,
    )
    .await;
    let h1 = h1_client();
    eventually("traffic flows", Duration::from_secs(10), || async {
        let rsp = h1
            .get(
                format!("http://{}/status/200", client.outbound)
                    .parse()
                    .unwrap(),
            )
            .await
            .ok()?;
        (collect(rsp).await.0 == 200).then_some(())
    })
    .await;

    let config = Arc::new(test_client_config(&plane, Vec::new()));
    let mut leaves = Vec::new();
    let mut requests = 0;
    // Traffic goes on until three certificates (2s each, renewed at 70%)
    // have been shown. A renewal too late shows as a failed request or
    // handshake; the 30s bound only stops a test that would never end.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while leaves.len() < 3 || requests <= 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} certificates seen in 30s",
            leaves.len()
        );
        // Requests on pooled connections and on fresh ones: none may fail.
        for fresh in [false, true] {
            let c = if fresh { h1_client() } else { h1.clone() };
            let rsp = c
                .get(
                    format!("http://{}/status/200", client.outbound)
                        .parse()
                        .unwrap(),
                )
                .await
                .expect("a request failed during rotation");
            assert_eq!(collect(rsp).await.0, 200);
            requests += 1;
        }
        // What a new connection to the server side is shown now.
        let tcp = tokio::net::TcpStream::connect(server.inbound)
            .await
            .unwrap();
        let tls = tokio_rustls::TlsConnector::from(config.clone())
            .connect(ServerName::try_from(SERVER).unwrap(), tcp)
            .await
            .expect("a handshake failed during rotation");
        let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        if leaves.last() != Some(&leaf) {
            leaves.push(leaf);
        }
        // Pacing, not a wait: steady traffic across the rotations without
        // starving the proxies of the two cores.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Each certificate shown was certified (and counted) by the server side.
    eventually(
        "three certifications counted",
        Duration::from_secs(10),
        || async {
            let m = server.metrics().await;
            (m.sum("identity_cert_refresh_total", &[("result", "ok")]) >= 3.0).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn http1_travels_as_http2_between_meshed_proxies() {
    use linnet_test_support::http::{HttpServer, collect, h1_client};
    let backend = HttpServer::start().await;
    let vip = "10.96.0.7:80";
    let yaml = |endpoint: std::net::SocketAddr| {
        format!(
            "identity:\n  tokens:\n    {SERVER}: s\n    {CLIENT}: c\n\
             services:\n  web.test.svc.cluster.local:80:\n    addresses: [\"{vip}\"]\n    endpoints:\n      - addr: \"{endpoint}\"\n        identity: {SERVER}\n        protocol: h2\n"
        )
    };
    let plane = ControlPlane::start(&yaml("127.0.0.1:1".parse().unwrap())).await;
    let server = meshed_proxy(&plane, SERVER, "s", OrigDst::Fixed(backend.addr)).await;
    plane.write(&yaml(server.inbound));
    let client = meshed_proxy(&plane, CLIENT, "c", OrigDst::Fixed(vip.parse().unwrap())).await;
    let h1 = h1_client();
    let host = client.outbound.to_string();
    eventually(
        "HTTP/1 across the mesh",
        Duration::from_secs(10),
        || async {
            let rsp = h1
                .get(format!("http://{host}/status/200").parse().unwrap())
                .await
                .ok()?;
            (collect(rsp).await.0 == 200).then_some(())
        },
    )
    .await;
    // A body both ways, as HTTP/1 at both ends.
    let req = hyper::Request::post(format!("http://{host}/echo"))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"over h2 and back",
        )))
        .unwrap();
    let (status, _, body, _) = collect(h1.request(req).await.unwrap()).await;
    assert_eq!(status, 200);
    assert!(
        body.windows(16).any(|w| w == b"over h2 and back"),
        "{body:?}"
    );
    for s in backend.seen() {
        assert_eq!(
            s.version,
            http::Version::HTTP_11,
            "the application sees HTTP/1.1"
        );
        assert!(!s.headers.contains_key("l5d-orig-proto"), "{:?}", s.headers);
        assert_eq!(s.headers["host"], host.as_str(), "the Host is restored");
    }
    // Between the proxies it was HTTP/2.
    let m = server.metrics().await;
    assert!(
        m.sum(
            "protocol_detect_total",
            &[("direction", "inbound"), ("protocol", "http/2")]
        ) >= 1.0,
        "{}",
        m.0
    );
    assert_eq!(
        m.sum(
            "protocol_detect_total",
            &[("direction", "inbound"), ("protocol", "http/1")]
        ),
        0.0,
        "{}",
        m.0
    );
}

/// A TLS server at a meshed endpoint's address presenting `chain`/`key`
/// (answering HTTP/1 if a handshake ever succeeded).
async fn rogue_server(
    chain: Vec<linnet_tls::pki_types::CertificateDer<'static>>,
    key: linnet_tls::pki_types::PrivateKeyDer<'static>,
    anchors: &str,
) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let store = Arc::new(linnet_tls::CertStore::default());
    store.set(chain, key).unwrap();
    let config = linnet_tls::server_config(
        &linnet_tls::TrustAnchors::from_pem(anchors).unwrap(),
        store,
        Vec::new(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let (acceptor, count) = (acceptor.clone(), count.clone());
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(s).await {
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let _ = tls
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .await;
                }
            });
        }
    });
    (addr, served)
}

fn leaf(
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
    name: &str,
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
) -> (
    Vec<linnet_tls::pki_types::CertificateDer<'static>>,
    linnet_tls::pki_types::PrivateKeyDer<'static>,
) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.subject_alt_names = vec![rcgen::SanType::DnsName(
        name.to_string().try_into().unwrap(),
    )];
    p.not_before = not_before;
    p.not_after = not_after;
    let cert = p.signed_by(&key, issuer).unwrap();
    (
        vec![cert.der().clone()],
        linnet_tls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
}

#[tokio::test]
async fn impostor_servers_are_refused_before_a_request_is_sent() {
    use linnet_test_support::http::{collect, h1_client};
    let vip = "10.96.0.8:80";
    let yaml = |endpoint: std::net::SocketAddr| {
        format!(
            "identity:\n  tokens:\n    {CLIENT}: c\n\
             services:\n  web.test.svc.cluster.local:80:\n    addresses: [\"{vip}\"]\n    endpoints:\n      - addr: \"{endpoint}\"\n        identity: {SERVER}\n"
        )
    };
    let plane = ControlPlane::start(&yaml("127.0.0.1:1".parse().unwrap())).await;
    let client = meshed_proxy(&plane, CLIENT, "c", OrigDst::Fixed(vip.parse().unwrap())).await;
    let now = time::OffsetDateTime::now_utc();
    // The right name from another CA.
    let other_key = rcgen::KeyPair::generate().unwrap();
    let mut other = rcgen::CertificateParams::default();
    other.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    other
        .distinguished_name
        .push(rcgen::DnType::CommonName, "someone else's CA");
    let other_pem = other.self_signed(&other_key).unwrap().pem();
    let other = rcgen::Issuer::new(other, other_key);
    // The right name from the mesh's CA, but expired.
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(plane.dir().join("issuer.key")).unwrap())
            .unwrap();
    let mesh_ca = rcgen::Issuer::from_ca_cert_pem(&plane.trust_anchors(), ca_key).unwrap();
    let cases = [
        (
            leaf(
                &other,
                SERVER,
                now - time::Duration::hours(1),
                now + time::Duration::hours(1),
            ),
            other_pem.clone(),
            "UnknownIssuer",
        ),
        (
            leaf(
                &mesh_ca,
                SERVER,
                now - time::Duration::days(2),
                now - time::Duration::days(1),
            ),
            plane.trust_anchors(),
            "expired",
        ),
    ];
    for ((chain, key), anchors, why) in cases {
        let (addr, served) = rogue_server(chain, key, &anchors).await;
        plane.write(&yaml(addr));
        let (status, headers) = eventually(
            "the proxy tries the impostor",
            Duration::from_secs(10),
            || async {
                let rsp = h1_client()
                    .get(
                        format!("http://{}/status/200", client.outbound)
                            .parse()
                            .unwrap(),
                    )
                    .await
                    .ok()?;
                let (status, headers, _, _) = collect(rsp).await;
                let e = headers.get("l5d-proxy-error")?.to_str().ok()?.to_string();
                e.contains(&addr.to_string()).then_some((status, e))
            },
        )
        .await;
        assert_eq!(status, 502);
        assert!(headers.contains(why), "{why}: {headers}");
        assert_eq!(
            served.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "{why}: a request reached the impostor"
        );
    }
}

#[tokio::test]
async fn spiffe_identities_cross_the_mesh() {
    use linnet_test_support::http::{HttpServer, collect, h1_client};
    const S: &str = "spiffe://cluster.local/ns/test/sa/server";
    const C: &str = "spiffe://cluster.local/ns/test/sa/client";
    let backend = HttpServer::start().await;
    let vip = "10.96.0.9:80";
    let yaml = |endpoint: std::net::SocketAddr| {
        format!(
            "identity:\n  tokens:\n    \"{S}\": s\n    \"{C}\": c\n\
             services:\n  web.test.svc.cluster.local:80:\n    addresses: [\"{vip}\"]\n    endpoints:\n      - addr: \"{endpoint}\"\n        identity: \"{S}\"\n        server_name: server.test.sni.local\n"
        )
    };
    let plane = ControlPlane::start(&yaml("127.0.0.1:1".parse().unwrap())).await;
    let server = meshed_proxy_with(
        &plane,
        S,
        "s",
        OrigDst::Fixed(backend.addr),
        &[("LINNET_IDENTITY_SERVER_NAME", "server.test.sni.local")],
    )
    .await;
    plane.write(&yaml(server.inbound));
    let client = meshed_proxy(&plane, C, "c", OrigDst::Fixed(vip.parse().unwrap())).await;
    eventually(
        "HTTP across a SPIFFE mesh",
        Duration::from_secs(10),
        || async {
            let rsp = h1_client()
                .get(
                    format!("http://{}/status/200", client.outbound)
                        .parse()
                        .unwrap(),
                )
                .await
                .ok()?;
            (collect(rsp).await.0 == 200).then_some(())
        },
    )
    .await;
    let seen = backend.seen();
    assert_eq!(seen.last().unwrap().headers["l5d-client-id"], C);
    let m = client.metrics().await;
    assert!(
        m.sum(
            "tcp_open_total",
            &[("peer", "dst"), ("tls", "true"), ("server_id", S)]
        ) >= 1.0,
        "{}",
        m.0
    );
}
