//! The control plane's TLS and its server's bounds, with real sockets.
//!
//! Off loopback (an address added to `lo`, root only: without root those
//! tests say they are skipped) clients must speak TLS 1.3 and verify the
//! control plane's identity; on loopback they speak plaintext, even to the
//! same listener. The bounds (connection cap, idle timeout, handshake
//! timeout) are checked by what a client sees and by the metrics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use linkerd2_proxy_api::{
    destination::{GetDestination, destination_client::DestinationClient, update},
    identity::{CertifyRequest, identity_client::IdentityClient},
};
use linnet_control::{Ca, Control, Mesh, Metrics, ServeOptions, Store};
use linnet_discovery::{ControlAddr, control::ControlTls};
use linnet_test_support::{addr::ExtraAddr, eventually, metrics::Scrape};
use linnet_tls::TrustAnchors;
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio::io::AsyncReadExt;

const WEB: &str = "web.test.svc.cluster.local:80";
const DST_ID: &str = "linkerd-destination.linkerd.serviceaccount.identity.linkerd.cluster.local";
const ID_ID: &str = "linkerd-identity.linkerd.serviceaccount.identity.linkerd.cluster.local";
const CLIENT_ID: &str = "client.test.serviceaccount.identity.linkerd.cluster.local";

fn mesh() -> String {
    format!(
        "identity:\n  tokens:\n    {CLIENT_ID}: secret\nservices:\n  {WEB}:\n    endpoints:\n      - addr: 127.0.0.1:8001\n"
    )
}

struct Plane {
    /// The port, on every address (the listener is on 0.0.0.0).
    port: u16,
    anchors: String,
    registry: Arc<prometheus_client::registry::Registry>,
    _dir: tempfile::TempDir,
    _task: tokio::task::JoinHandle<()>,
}

impl Plane {
    async fn start(listen: SocketAddr, options: ServeOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.yaml");
        std::fs::write(&path, mesh()).unwrap();
        let mesh = Mesh::load(&path).unwrap();
        let ca = Arc::new(Ca::load_or_generate(&mesh.identity).unwrap());
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Metrics::register(&mut registry);
        let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let control = Control {
            store: Store::new(mesh),
            metrics,
            ca: ca.clone(),
        };
        let task = tokio::spawn(linnet_control::serve_with(
            listener,
            control,
            options,
            std::future::pending(),
        ));
        Self {
            port,
            anchors: ca.trust_anchors_pem().to_string(),
            registry: Arc::new(registry),
            _dir: dir,
            _task: task,
        }
    }

    fn metrics(&self) -> Scrape {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry).unwrap();
        Scrape(s)
    }
}

/// A client's TLS settings and the registry its failures are counted in.
fn client_tls(anchors: &str) -> (ControlTls, prometheus_client::registry::Registry) {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = linnet_discovery::Metrics::register(&mut registry);
    let tls = ControlTls::new(TrustAnchors::from_pem(anchors).unwrap(), metrics);
    (tls, registry)
}

fn scrape(registry: &prometheus_client::registry::Registry) -> Scrape {
    let mut s = String::new();
    prometheus_client::encoding::text::encode(&mut s, registry).unwrap();
    Scrape(s)
}

fn get() -> GetDestination {
    GetDestination {
        scheme: "k8s".into(),
        path: WEB.into(),
        context_token: String::new(),
    }
}

/// The first endpoint update of `WEB`, through `channel`.
async fn first_update(channel: tonic::transport::Channel) -> Result<update::Update, tonic::Status> {
    let mut client = DestinationClient::new(channel);
    let mut stream = client.get(get()).await?.into_inner();
    let msg = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("an answer within 5s")?
        .expect("the stream is open");
    Ok(msg.update.unwrap())
}

fn addr(ip: std::net::IpAddr, port: u16, name: &str) -> ControlAddr {
    ControlAddr {
        addr: SocketAddr::new(ip, port).to_string(),
        name: Some(name.to_string()),
    }
}

#[tokio::test]
async fn tls_off_loopback_verifies_the_control_planes_identity() {
    let Some(extra) = ExtraAddr::add() else {
        println!("SKIPPED tls_off_loopback_verifies_the_control_planes_identity: needs root");
        return;
    };
    let plane = Plane::start("0.0.0.0:0".parse().unwrap(), ServeOptions::default()).await;
    let (tls, client_registry) = client_tls(&plane.anchors);

    // The right name: endpoints over TLS...
    let ch = linnet_discovery::control::channel(
        "destination",
        &addr(extra.ip, plane.port, DST_ID),
        Some(&tls),
    )
    .unwrap();
    assert!(matches!(
        first_update(ch).await.unwrap(),
        update::Update::Add(_)
    ));
    // ...and a certificate (Certify, with no client certificate), under
    // another of the control plane's names.
    let ch = linnet_discovery::control::channel(
        "identity",
        &addr(extra.ip, plane.port, ID_ID),
        Some(&tls),
    )
    .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![CLIENT_ID.to_string()]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key).unwrap();
    let rsp = IdentityClient::new(ch)
        .certify(CertifyRequest {
            identity: CLIENT_ID.into(),
            token: b"secret".to_vec(),
            certificate_signing_request: csr.der().to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!rsp.leaf_certificate.is_empty());
    // The control plane's certificate expires when the mesh file says.
    let expiry = plane.metrics().sum(
        "control_server_certificate_expiration_timestamp_seconds",
        &[],
    );
    assert!(expiry > 0.0);

    // A wrong name: the handshake fails, nothing is sent, the reason is
    // counted.
    let ch = linnet_discovery::control::channel(
        "destination",
        &addr(
            extra.ip,
            plane.port,
            "linkerd-destination.other.serviceaccount.identity.linkerd.cluster.local",
        ),
        Some(&tls),
    )
    .unwrap();
    let status = first_update(ch).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
    let m = scrape(&client_registry);
    assert_eq!(
        m.sum(
            "control_client_tls_errors_total",
            &[("service", "destination"), ("reason", "wrong_name")]
        ),
        1.0,
        "{}",
        m.0
    );

    // Trust anchors the control plane's issuer is not under: unknown CA.
    let other = Ca::generate().unwrap();
    let (foreign, foreign_registry) = client_tls(other.trust_anchors_pem());
    let ch = linnet_discovery::control::channel(
        "destination",
        &addr(extra.ip, plane.port, DST_ID),
        Some(&foreign),
    )
    .unwrap();
    first_update(ch).await.unwrap_err();
    let m = scrape(&foreign_registry);
    assert_eq!(
        m.sum(
            "control_client_tls_errors_total",
            &[("reason", "unknown_ca")]
        ),
        1.0,
        "{}",
        m.0
    );

    // A plaintext client to the same address: refused, counted by the
    // server as not TLS.
    let plain = tonic::transport::Endpoint::from_shared(format!(
        "http://{}",
        SocketAddr::new(extra.ip, plane.port)
    ))
    .unwrap()
    .connect_lazy();
    first_update(plain).await.unwrap_err();
    eventually(
        "the server counts the plaintext client",
        Duration::from_secs(5),
        || async {
            let n = plane.metrics().sum(
                "control_server_tls_handshake_errors_total",
                &[("reason", "not_tls")],
            );
            (n >= 1.0).then_some(())
        },
    )
    .await;

    // The same listener still speaks plaintext to a loopback client.
    let loopback = linnet_discovery::control::channel(
        "destination",
        &ControlAddr {
            addr: format!("127.0.0.1:{}", plane.port),
            name: None,
        },
        None,
    )
    .unwrap();
    assert!(matches!(
        first_update(loopback).await.unwrap(),
        update::Update::Add(_)
    ));
}

#[tokio::test]
async fn channels_off_loopback_are_never_plaintext() {
    let no_name = ControlAddr {
        addr: "10.0.0.1:8086".into(),
        name: None,
    };
    let err = linnet_discovery::control::channel("destination", &no_name, None).unwrap_err();
    assert!(
        matches!(err, linnet_discovery::control::ChannelError::NoName { .. }),
        "{err}"
    );
    let named = ControlAddr {
        addr: "linkerd-dst.linkerd.svc.cluster.local:8086".into(),
        name: Some(DST_ID.into()),
    };
    let err = linnet_discovery::control::channel("destination", &named, None).unwrap_err();
    assert!(
        matches!(
            err,
            linnet_discovery::control::ChannelError::NoTrustAnchors { .. }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_silent_client_is_closed_after_the_handshake_timeout() {
    let Some(extra) = ExtraAddr::add() else {
        println!("SKIPPED a_silent_client_is_closed_after_the_handshake_timeout: needs root");
        return;
    };
    let options = ServeOptions {
        handshake_timeout: Duration::from_millis(200),
        ..Default::default()
    };
    let plane = Plane::start(SocketAddr::new(extra.ip, 0), options).await;
    let mut silent = tokio::net::TcpStream::connect(SocketAddr::new(extra.ip, plane.port))
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf))
        .await
        .expect("closed well within 10s")
        .unwrap_or(0);
    assert_eq!(n, 0, "the server closes without a word");
    let m = plane.metrics();
    assert_eq!(
        m.sum(
            "control_server_tls_handshake_errors_total",
            &[("reason", "timeout")]
        ),
        1.0,
        "{}",
        m.0
    );
}

#[tokio::test]
async fn an_idle_connection_is_closed() {
    let options = ServeOptions {
        idle_timeout: Duration::from_millis(200),
        keepalive_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let plane = Plane::start("127.0.0.1:0".parse().unwrap(), options).await;
    // Connects, and never sends a request.
    let mut idle = tokio::net::TcpStream::connect(("127.0.0.1", plane.port))
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 256];
        // The server's HTTP/2 preface (SETTINGS) and GOAWAY may come
        // first; then the end.
        while idle.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    })
    .await;
    assert!(closed.is_ok(), "closed well within 10s");
    eventually("the connection is gone", Duration::from_secs(5), || async {
        (plane.metrics().sum("control_server_connections", &[]) == 0.0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed() {
    let options = ServeOptions {
        max_connections: 1,
        ..Default::default()
    };
    let plane = Plane::start("127.0.0.1:0".parse().unwrap(), options).await;
    let target: SocketAddr = format!("127.0.0.1:{}", plane.port).parse().unwrap();
    let first = tokio::net::TcpStream::connect(target).await.unwrap();
    eventually(
        "the first connection is served",
        Duration::from_secs(5),
        || async { (plane.metrics().sum("control_server_connections", &[]) == 1.0).then_some(()) },
    )
    .await;
    // The second is closed at once, before any HTTP/2.
    let mut second = tokio::net::TcpStream::connect(target).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), second.read(&mut buf))
        .await
        .expect("closed well within 10s")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let m = plane.metrics();
    assert_eq!(
        m.sum("control_server_connections_refused_total", &[]),
        1.0,
        "{}",
        m.0
    );
    // Once the first goes, a client is served again.
    drop(first);
    eventually(
        "the first connection is gone",
        Duration::from_secs(5),
        || async { (plane.metrics().sum("control_server_connections", &[]) == 0.0).then_some(()) },
    )
    .await;
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{target}"))
        .unwrap()
        .connect_lazy();
    assert!(matches!(
        first_update(ch).await.unwrap(),
        update::Update::Add(_)
    ));
}
