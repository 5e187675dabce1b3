//! The identity client against `linnet control`'s CA: certification,
//! renewal with short-lived certificates, token rotation, and refusing a
//! certificate that is not ours.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use linkerd2_proxy_api::identity::{
    CertifyRequest, CertifyResponse, identity_client::IdentityClient, identity_server,
};
use linnet_control::{Ca, Control, Mesh, Metrics as ControlMetrics, Store};
use linnet_identity::{Config, Identity, Metrics};
use linnet_test_support::eventually;
use linnet_tls::Id;
use std::{net::SocketAddr, sync::Arc, time::Duration};

const ID: &str = "web.ns.serviceaccount.identity.linkerd.cluster.local";

struct Plane {
    addr: SocketAddr,
    anchors: String,
    dir: tempfile::TempDir,
}

async fn control(lifetime: &str) -> Plane {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    std::fs::write(
        &path,
        format!("identity:\n  certificate_lifetime: {lifetime}\n  clock_skew_allowance: 0s\n  tokens:\n    {ID}: right\n"),
    )
    .unwrap();
    let mesh = Mesh::load(&path).unwrap();
    let ca = Ca::load_or_generate(&mesh.identity).unwrap();
    let anchors = ca.trust_anchors_pem().to_string();
    let mut registry = linnet_metrics::registry();
    let metrics = ControlMetrics::register(&mut registry);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let control = Control {
        store: Store::new(mesh),
        metrics,
        ca: Arc::new(ca),
    };
    tokio::spawn(linnet_control::serve(
        listener,
        control,
        std::future::pending(),
    ));
    Plane { addr, anchors, dir }
}

fn identity(plane: &Plane, token: &str) -> (Identity, prometheus_client::registry::Registry) {
    let token_file = plane.dir.path().join("token");
    std::fs::write(&token_file, token).unwrap();
    let mut registry = linnet_metrics::registry();
    let metrics = Metrics::register(&mut registry);
    let config = Config {
        local: Id::parse(ID).unwrap(),
        trust_anchors_pem: plane.anchors.clone(),
        token_file,
        dir: None,
        min_refresh: Duration::from_millis(500),
        max_refresh: Duration::from_secs(24 * 3600),
    };
    (Identity::new(config, metrics).unwrap(), registry)
}

async fn client(addr: SocketAddr) -> IdentityClient<tonic::transport::Channel> {
    IdentityClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

fn text(r: &prometheus_client::registry::Registry) -> String {
    let mut s = String::new();
    prometheus_client::encoding::text::encode(&mut s, r).unwrap();
    s
}

#[tokio::test]
async fn certifies_then_renews_before_expiry() {
    let plane = control("3s").await;
    let (id, registry) = identity(&plane, "right\n");
    let id = Arc::new(id);
    let mut ready = id.ready();
    assert!(!*ready.borrow());
    tokio::spawn(id.clone().run(client(plane.addr).await));
    tokio::time::timeout(Duration::from_secs(5), ready.wait_for(|r| *r))
        .await
        .unwrap()
        .unwrap();
    let first = id.store().leaf().unwrap();
    assert!(Id::parse(ID).unwrap().is_named_in(&first));
    // Renewal comes at 70% of the 3s lifetime.
    let renewed = eventually(
        "the certificate to be renewed",
        Duration::from_secs(6),
        || async {
            let now = id.store().leaf().unwrap();
            (now != first).then_some(now)
        },
    )
    .await;
    assert!(Id::parse(ID).unwrap().is_named_in(&renewed));
    let m = text(&registry);
    assert!(
        m.contains("identity_cert_refresh_total{result=\"ok\"}"),
        "{m}"
    );
    let expiry: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("identity_cert_expiration_timestamp_seconds "))
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(expiry > now && expiry < now + 10.0, "{expiry} vs {now}");
}

#[tokio::test]
async fn the_token_is_read_again_on_each_attempt() {
    let plane = control("1h").await;
    let (id, registry) = identity(&plane, "wrong");
    let id = Arc::new(id);
    let mut ready = id.ready();
    tokio::spawn(id.clone().run(client(plane.addr).await));
    eventually(
        "an attempt with the wrong token",
        Duration::from_secs(10),
        || async {
            text(&registry)
                .contains("identity_cert_refresh_total{result=\"rpc_error\"}")
                .then_some(())
        },
    )
    .await;
    assert!(!*ready.borrow(), "certified with a wrong token");
    // The token is rotated under the running proxy.
    std::fs::write(plane.dir.path().join("token"), "right").unwrap();
    tokio::time::timeout(Duration::from_secs(10), ready.wait_for(|r| *r))
        .await
        .unwrap()
        .unwrap();
}

/// An identity service that signs with a CA nobody trusts.
struct Rogue;

#[tonic::async_trait]
impl identity_server::Identity for Rogue {
    async fn certify(
        &self,
        _req: tonic::Request<CertifyRequest>,
    ) -> Result<tonic::Response<CertifyResponse>, tonic::Status> {
        let ca = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec![ID.to_string()]).unwrap();
        p.is_ca = rcgen::IsCa::NoCa;
        let cert = p.self_signed(&ca).unwrap();
        Ok(tonic::Response::new(CertifyResponse {
            leaf_certificate: cert.der().to_vec(),
            intermediate_certificates: Vec::new(),
            valid_until: Some(prost_types::Timestamp {
                seconds: 4_000_000_000,
                nanos: 0,
            }),
        }))
    }
}

#[tokio::test]
async fn a_certificate_that_does_not_chain_is_refused() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tower_service::Service as _;
    let plane = control("1h").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = identity_server::IdentityServer::new(Rogue);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let svc = svc.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let mut svc = svc.clone();
                    async move { svc.call(req).await }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let (id, _) = identity(&plane, "right");
    let e = id.certify(&mut client(addr).await).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("does not chain to the trust anchors"),
        "{e}"
    );
    assert!(id.store().leaf().is_none());
    assert!(!*id.ready().borrow());
}

#[test]
fn renewal_is_at_70_percent_within_bounds() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let plane = rt.block_on(control("1h"));
    let (id, _) = identity(&plane, "right");
    let now = std::time::SystemTime::now();
    let in_100s = id.refresh_in(now + Duration::from_secs(100));
    assert!(
        in_100s > Duration::from_secs(68) && in_100s <= Duration::from_secs(70),
        "{in_100s:?}"
    );
    // Clamped below (min_refresh 500ms) and above (24h).
    assert_eq!(id.refresh_in(now), Duration::from_millis(500));
    assert_eq!(
        id.refresh_in(now + Duration::from_secs(10 * 24 * 3600)),
        Duration::from_secs(24 * 3600)
    );
}

#[test]
fn the_key_persists_under_identity_dir() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let plane = rt.block_on(control("1h"));
    let dir = tempfile::tempdir().unwrap();
    let config = |d: &std::path::Path| Config {
        local: Id::parse(ID).unwrap(),
        trust_anchors_pem: plane.anchors.clone(),
        token_file: plane.dir.path().join("token"),
        dir: Some(d.to_path_buf()),
        min_refresh: Duration::from_secs(10),
        max_refresh: Duration::from_secs(3600),
    };
    Identity::new(config(dir.path()), Metrics::default()).unwrap();
    let key = std::fs::read(dir.path().join("key.p8")).unwrap();
    Identity::new(config(dir.path()), Metrics::default()).unwrap();
    assert_eq!(std::fs::read(dir.path().join("key.p8")).unwrap(), key);
    assert!(dir.path().join("csr.der").exists());
    // Bad trust anchors are a clear error.
    let mut bad = config(dir.path());
    bad.trust_anchors_pem = "not PEM".into();
    assert!(Identity::new(bad, Metrics::default()).is_err());
}
