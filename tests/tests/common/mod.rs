//! Fixtures shared by the mesh tests: certificates from the mesh's CA, and
//! a TCP server that records every byte it is sent.
#![allow(dead_code, unreachable_pub)]

use linnet_test_support::control::ControlPlane;
use linnet_tls::{Id, TrustAnchors, client_config};
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};
use tokio::io::AsyncReadExt;

/// A client config presenting a certificate for `client` from the mesh's
/// CA (minted here, as the control plane would), expecting `server`.
pub fn mesh_client_config(
    plane: &ControlPlane,
    client: &str,
    server: &str,
    alpn: Vec<Vec<u8>>,
) -> linnet_tls::rustls::ClientConfig {
    use rcgen::{CertificateParams, Issuer, KeyPair, SanType};
    let dir = plane.dir();
    let ca_key =
        KeyPair::from_pem(&std::fs::read_to_string(dir.join("issuer.key")).unwrap()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&plane.trust_anchors(), ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![SanType::DnsName(client.to_string().try_into().unwrap())];
    let cert = p.signed_by(&key, &issuer).unwrap();
    let store = Arc::new(linnet_tls::CertStore::default());
    store
        .set(
            vec![cert.der().clone()],
            linnet_tls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let anchors = TrustAnchors::from_pem(&plane.trust_anchors()).unwrap();
    client_config(&anchors, store, Id::parse(server).unwrap(), alpn).unwrap()
}

/// A TCP server that keeps every byte each connection sends it (what a
/// capture on the server side of the wire would see), and answers
/// nothing; it closes a connection when the peer does.
#[derive(Clone, Debug)]
pub struct Recorder {
    /// Where it listens.
    pub addr: SocketAddr,
    conns: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Recorder {
    /// Listens on `127.0.0.1:0`.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener)
    }

    /// Records on `listener`.
    pub fn start_on(listener: tokio::net::TcpListener) -> Self {
        let r = Self {
            addr: listener.local_addr().unwrap(),
            conns: Default::default(),
        };
        let conns = r.conns.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let conns = conns.clone();
                let i = {
                    let mut c = conns.lock().unwrap();
                    c.push(Vec::new());
                    c.len() - 1
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = s.read(&mut buf).await {
                        conns.lock().unwrap()[i].extend_from_slice(&buf[..n]);
                    }
                });
            }
        });
        r
    }

    /// How many connections it has accepted.
    pub fn connections(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    /// Everything received, over all connections.
    pub fn bytes(&self) -> Vec<u8> {
        self.conns.lock().unwrap().concat()
    }

    /// Whether `needle` appears in what any connection sent.
    pub fn saw(&self, needle: &[u8]) -> bool {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .any(|c| c.windows(needle.len()).any(|w| w == needle))
    }
}
