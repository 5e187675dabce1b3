//! Certificates and the issuer rotate under load between meshed proxies
//! (mTLS), and no transfer fails.
//!
//! The mesh's trust anchor is a root made here; `linnet control` issues
//! from an intermediate under it (sent to proxies beside their leaves).
//! Leaves live 2 s, so each proxy renews about every 1.4 s. Two client
//! proxies and two server proxies carry every kind at once: HTTP/1.1,
//! HTTP/2, gRPC and WebSocket to an HTTP service, and opaque TCP (with the
//! transport header) to an opaque one. Meanwhile the leaves rotate a few
//! times, then the issuer changes: a new intermediate under the same
//! root, and the control plane restarts with it. Then the leaves rotate
//! under the new issuer.
//!
//! What is correct: the trust anchor is unchanged, so every certificate
//! old or new chains to it; connections made before a rotation need not
//! notice it, and new handshakes use the new leaves. Nothing should fail
//! and nothing is retried by the clients, so the test asserts that every
//! transfer completes byte-exact, long-lived transfers (stalled
//! mid-upload across the whole rotation) included.

use crate::traffic::{self, App, Got, Kind, Transfer};
use linnet_app::OrigDst;
use linnet_test_support::{
    control::ControlPlane,
    eventually,
    fault::{Dir, FaultProxy},
    proxy::Proxy,
};
use linnet_tls::pki_types::ServerName;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

const SERVER: &str = "web.test.serviceaccount.identity.linkerd.cluster.local";
const CLIENT: &str = "app.test.serviceaccount.identity.linkerd.cluster.local";
const HTTP_VIP: &str = "10.96.13.2:80";
const TCP_VIP: &str = "10.96.13.3:5432";

/// A CA certificate and its key.
struct Ca {
    pem: String,
    der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str, parent: Option<&Ca>) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(match parent {
        None => BasicConstraints::Unconstrained,
        Some(_) => BasicConstraints::Constrained(0),
    });
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = match parent {
        None => p.self_signed(&key).unwrap(),
        Some(parent) => p.signed_by(&key, &parent.issuer).unwrap(),
    };
    Ca {
        pem: cert.pem(),
        der: cert.der().to_vec(),
        issuer: Issuer::new(p, key),
    }
}

/// Makes `ca` the issuer the mesh file names.
fn install(dir: &Path, ca: &Ca) {
    std::fs::write(dir.join("issuer.crt"), &ca.pem).unwrap();
    std::fs::write(dir.join("issuer.key"), ca.issuer.key().serialize_pem()).unwrap();
}

fn mesh(dir: &Path, http: SocketAddr, tcp_app: SocketAddr, transport_port: u16) -> String {
    let d = dir.display();
    format!(
        "identity:\n  issuer:\n    certificate: \"{d}/issuer.crt\"\n    key: \"{d}/issuer.key\"\n    trust_anchors: \"{d}/root.crt\"\n  certificate_lifetime: 2s\n  clock_skew_allowance: 0s\n  tokens:\n    {SERVER}: s\n    {CLIENT}: c\n\
         services:\n  web.test.svc.cluster.local:80:\n    addresses: [\"{HTTP_VIP}\"]\n    endpoints:\n      - addr: \"{http}\"\n        identity: {SERVER}\n\
         \x20 db.test.svc.cluster.local:5432:\n    addresses: [\"{TCP_VIP}\"]\n    profile: {{opaque: true}}\n    endpoints:\n      - addr: \"{tcp_app}\"\n        identity: {SERVER}\n        protocol: opaque\n        opaque_transport_port: {transport_port}\n"
    )
}

/// Successful certifications so far.
async fn certified(p: &Proxy) -> f64 {
    p.metrics()
        .await
        .sum("identity_cert_refresh_total", &[("result", "ok")])
}

/// The chain a new TLS connection to `inbound` is shown.
async fn chain_of(inbound: SocketAddr, anchors: &str) -> Vec<Vec<u8>> {
    let anchors = linnet_tls::TrustAnchors::from_pem(anchors).unwrap();
    let config = linnet_tls::client_config(
        &anchors,
        Arc::new(linnet_tls::CertStore::default()),
        linnet_tls::Id::parse(SERVER).unwrap(),
        Vec::new(),
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(inbound).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(SERVER).unwrap(), tcp)
        .await
        .expect("a handshake with the server proxy");
    tls.get_ref()
        .1
        .peer_certificates()
        .unwrap()
        .iter()
        .map(|c| c.to_vec())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_and_issuer_rotate_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let root = ca("root.faults.test", None);
    let (first, second) = (
        ca("issuer-1.faults.test", Some(&root)),
        ca("issuer-2.faults.test", Some(&root)),
    );
    std::fs::write(dir.path().join("root.crt"), &root.pem).unwrap();
    install(dir.path(), &first);

    let (http_app, tcp_app) = (App::start(Kind::Http1).await, App::start(Kind::Tcp).await);
    let unknown: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let mut plane = ControlPlane::start(&mesh(dir.path(), unknown, tcp_app.addr, 1)).await;
    let fast = [("LINNET_IDENTITY_MIN_REFRESH", "200ms")];
    let http_server = plane
        .meshed_proxy(SERVER, "s", OrigDst::Fixed(http_app.addr), &fast)
        .await;
    // The transport port is dialled directly.
    let tcp_server = plane
        .meshed_proxy(SERVER, "s", OrigDst::from_fn(|s| s.local_addr()), &fast)
        .await;
    plane.write(&mesh(
        dir.path(),
        http_server.inbound,
        tcp_app.addr,
        tcp_server.inbound.port(),
    ));
    let http_client = plane
        .meshed_proxy(
            CLIENT,
            "c",
            OrigDst::Fixed(HTTP_VIP.parse().unwrap()),
            &fast,
        )
        .await;
    let tcp_client = plane
        .meshed_proxy(CLIENT, "c", OrigDst::Fixed(TCP_VIP.parse().unwrap()), &fast)
        .await;
    let entry = |kind: Kind| {
        if kind == Kind::Tcp {
            tcp_client.outbound
        } else {
            http_client.outbound
        }
    };
    let small = Transfer {
        up: 32 * 1024,
        down: 64 * 1024,
    };
    for kind in Kind::ALL {
        eventually(
            &format!("{kind:?} across the mesh"),
            Duration::from_secs(10),
            || async {
                (traffic::run(kind, entry(kind), small).await.got == Got::Complete).then_some(())
            },
        )
        .await;
    }

    let warm_up = [http_app.uploads().len(), tcp_app.uploads().len()];

    // Long-lived transfers, held mid-upload for the whole rotation.
    let mut holds = Vec::new();
    let mut long = Vec::new();
    for kind in Kind::ALL {
        let hold = FaultProxy::start(entry(kind)).await;
        hold.stall_after(Dir::Up, 256 * 1024);
        let t = Transfer {
            up: 1024 * 1024,
            down: 1024 * 1024,
        };
        long.push((kind, tokio::spawn(traffic::run(kind, hold.addr, t))));
        holds.push(hold);
    }

    // Load: each kind in a loop.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let mut loops = Vec::new();
    for kind in Kind::ALL {
        let (stop, failures, to) = (stop.clone(), failures.clone(), entry(kind));
        loops.push(tokio::spawn(async move {
            let mut done = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let end = traffic::run(kind, to, small).await;
                if end.got != Got::Complete {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("{kind:?}: {:?}", end.got));
                }
                done += 1;
            }
            (kind, done)
        }));
    }
    let proxies = [&http_server, &tcp_server, &http_client, &tcp_client];

    // Leaves rotate under the first issuer.
    for p in proxies {
        eventually(
            "three certificates each",
            Duration::from_secs(20),
            || async { (certified(p).await >= 3.0).then_some(()) },
        )
        .await;
    }
    assert_eq!(chain_of(http_server.inbound, &root.pem).await[1], first.der);

    // The issuer changes under the same root; the control plane restarts.
    install(dir.path(), &second);
    plane.restart().await;
    let mut before = Vec::new();
    for p in proxies {
        before.push(certified(p).await);
    }
    for (p, before) in proxies.iter().zip(before) {
        eventually(
            "two certificates each from the new issuer",
            Duration::from_secs(20),
            || async { (certified(p).await >= before + 2.0).then_some(()) },
        )
        .await;
    }
    for server in [&http_server, &tcp_server] {
        let chain = chain_of(server.inbound, &root.pem).await;
        assert_eq!(chain.len(), 2, "a leaf and its issuer");
        assert_eq!(chain[1], second.der, "the new issuer");
    }

    stop.store(true, Ordering::SeqCst);
    for l in loops {
        let (kind, done) = l.await.unwrap();
        println!("{kind:?}: {done} transfers during the rotation");
        assert!(done >= 3, "{kind:?}: only {done} transfers");
    }
    assert_eq!(
        *failures.lock().unwrap(),
        Vec::<String>::new(),
        "transfers failed during the rotation"
    );
    for hold in &holds {
        hold.unstall(Dir::Up);
    }
    for (kind, t) in long {
        assert_eq!(
            t.await.unwrap().got,
            Got::Complete,
            "{kind:?}: a long-lived transfer"
        );
    }
    // And the applications saw every upload since the warm-up whole.
    for (app, skip) in [&http_app, &tcp_app].into_iter().zip(warm_up) {
        let uploads = app.uploads();
        assert!(
            uploads[skip..].iter().all(|u| *u == Got::Complete),
            "{uploads:?}"
        );
    }
}
