//! Real TLS handshakes over in-memory pipes between the client and server
//! configs: the happy path, and every way a peer can be the wrong one.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use linnet_tls::{
    CertStore, Id, TrustAnchors, client_config, peer_identity,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName},
    server_config,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::sync::Arc;
use time::{Duration, OffsetDateTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WEB: &str = "web.ns.serviceaccount.identity.linkerd.cluster.local";
const CLIENT: &str = "client.ns.serviceaccount.identity.linkerd.cluster.local";

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        // Distinct names, so that a foreign chain is an unknown issuer
        // rather than a bad signature under a familiar name.
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        p.distinguished_name
            .push(DnType::CommonName, format!("test root {n}"));
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(p, key),
        }
    }

    fn anchors(&self) -> TrustAnchors {
        TrustAnchors::from_pem(&self.pem).unwrap()
    }

    /// A chain and key for `sans`, valid from `from` for `days`.
    fn parts(
        &self,
        sans: Vec<SanType>,
        from: OffsetDateTime,
        days: i64,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.subject_alt_names = sans;
        p.not_before = from;
        p.not_after = from + Duration::days(days);
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }

    /// A store holding a leaf for `sans` valid from `from` for `days`.
    fn leaf_at(&self, sans: Vec<SanType>, from: OffsetDateTime, days: i64) -> Arc<CertStore> {
        let (chain, key) = self.parts(sans, from, days);
        let store = Arc::new(CertStore::default());
        store.set(chain, key).unwrap();
        store
    }

    fn leaf(&self, name: &str) -> Arc<CertStore> {
        let san = if name.starts_with("spiffe://") {
            SanType::URI(name.to_string().try_into().unwrap())
        } else {
            SanType::DnsName(name.to_string().try_into().unwrap())
        };
        self.leaf_at(vec![san], OffsetDateTime::now_utc() - Duration::hours(1), 1)
    }
}

/// Connects a client expecting `expected` to a server presenting
/// `server_creds`; the client presents `client_creds`. Returns the
/// client's error, or the identity the server saw and the ALPN agreed.
async fn handshake(
    client_anchors: &TrustAnchors,
    server_anchors: &TrustAnchors,
    server_creds: Arc<CertStore>,
    client_creds: Arc<CertStore>,
    expected: &str,
) -> Result<(Option<Id>, Option<Vec<u8>>, CertificateDer<'static>), String> {
    let expected = Id::parse(expected).unwrap();
    let sni = expected.server_name().unwrap_or("uri.invalid").to_string();
    let alpn = vec![b"transport.l5d.io/v1".to_vec()];
    let client = client_config(client_anchors, client_creds, expected, alpn.clone()).unwrap();
    let server = server_config(server_anchors, server_creds, alpn).unwrap();
    let (c, s) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        let mut tls = tokio_rustls::TlsAcceptor::from(Arc::new(server))
            .accept(s)
            .await?;
        let id = peer_identity(tls.get_ref().1);
        let mut buf = [0u8; 5];
        tls.read_exact(&mut buf).await?;
        tls.write_all(b"world").await?;
        tls.flush().await?;
        Ok::<_, std::io::Error>(id)
    });
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let name = ServerName::try_from(sni).unwrap();
    let mut tls = match connector.connect(name, c).await {
        Ok(t) => t,
        Err(e) => {
            server.abort();
            return Err(e.to_string());
        }
    };
    tls.write_all(b"hello").await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 5];
    tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    assert_eq!(&buf, b"world");
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let (version, _) = (tls.get_ref().1.protocol_version(), ());
    assert_eq!(version, Some(linnet_tls::rustls::ProtocolVersion::TLSv1_3));
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned();
    let seen = server.await.unwrap().map_err(|e| e.to_string())?;
    Ok((seen, alpn, leaf))
}

#[tokio::test]
async fn mutual_tls_with_identities() {
    let ca = Ca::new();
    let (seen, alpn, _) = handshake(
        &ca.anchors(),
        &ca.anchors(),
        ca.leaf(WEB),
        ca.leaf(CLIENT),
        WEB,
    )
    .await
    .unwrap();
    assert_eq!(seen, Some(Id::parse(CLIENT).unwrap()));
    assert_eq!(alpn.as_deref(), Some(&b"transport.l5d.io/v1"[..]));
    // Without a client certificate the handshake works; nobody is named.
    let (seen, _, _) = handshake(
        &ca.anchors(),
        &ca.anchors(),
        ca.leaf(WEB),
        Arc::default(),
        WEB,
    )
    .await
    .unwrap();
    assert_eq!(seen, None);
}

#[tokio::test]
async fn a_server_from_another_ca_is_refused() {
    let (ca, other) = (Ca::new(), Ca::new());
    let e = handshake(
        &ca.anchors(),
        &other.anchors(),
        other.leaf(WEB),
        ca.leaf(CLIENT),
        WEB,
    )
    .await
    .unwrap_err();
    assert!(e.contains("UnknownIssuer"), "{e}");
}

#[tokio::test]
async fn a_valid_chain_for_another_identity_is_refused() {
    let ca = Ca::new();
    let other = "db.ns.serviceaccount.identity.linkerd.cluster.local";
    let e = handshake(
        &ca.anchors(),
        &ca.anchors(),
        ca.leaf(other),
        ca.leaf(CLIENT),
        WEB,
    )
    .await
    .unwrap_err();
    assert!(
        e.contains("not valid for name") || e.contains("NotValidForName"),
        "{e}"
    );
    // A wildcard does not stand in for an identity.
    let wildcard = ca.leaf_at(
        vec![SanType::DnsName(
            "*.ns.serviceaccount.identity.linkerd.cluster.local"
                .to_string()
                .try_into()
                .unwrap(),
        )],
        OffsetDateTime::now_utc() - Duration::hours(1),
        1,
    );
    let e = handshake(&ca.anchors(), &ca.anchors(), wildcard, ca.leaf(CLIENT), WEB)
        .await
        .unwrap_err();
    assert!(
        e.contains("not valid for name") || e.contains("NotValidForName"),
        "{e}"
    );
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let ca = Ca::new();
    let expired = ca.leaf_at(
        vec![SanType::DnsName(WEB.to_string().try_into().unwrap())],
        OffsetDateTime::now_utc() - Duration::days(3),
        1,
    );
    let e = handshake(&ca.anchors(), &ca.anchors(), expired, ca.leaf(CLIENT), WEB)
        .await
        .unwrap_err();
    assert!(e.contains("certificate expired"), "{e}");
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let (ca, other) = (Ca::new(), Ca::new());
    let e = handshake(
        &ca.anchors(),
        &ca.anchors(),
        ca.leaf(WEB),
        other.leaf(CLIENT),
        WEB,
    )
    .await;
    assert!(e.is_err(), "{e:?}");
}

#[tokio::test]
async fn spiffe_identities_are_uri_sans() {
    let ca = Ca::new();
    let id = "spiffe://cluster.local/ns/ns/sa/web";
    let (seen, _, _) = handshake(
        &ca.anchors(),
        &ca.anchors(),
        ca.leaf(id),
        ca.leaf("spiffe://cluster.local/ns/ns/sa/client"),
        id,
    )
    .await
    .unwrap();
    assert_eq!(
        seen,
        Some(Id::Uri("spiffe://cluster.local/ns/ns/sa/client".into()))
    );
    let e = handshake(
        &ca.anchors(),
        &ca.anchors(),
        ca.leaf("spiffe://cluster.local/ns/ns/sa/db"),
        ca.leaf(CLIENT),
        id,
    )
    .await
    .unwrap_err();
    assert!(
        e.contains("not valid for name") || e.contains("NotValidForName"),
        "{e}"
    );
    let other = Ca::new();
    let e = handshake(
        &ca.anchors(),
        &other.anchors(),
        other.leaf(id),
        ca.leaf(CLIENT),
        id,
    )
    .await
    .unwrap_err();
    assert!(e.contains("UnknownIssuer"), "{e}");
}

#[tokio::test]
async fn credentials_swap_for_new_handshakes() {
    let ca = Ca::new();
    let server = ca.leaf(WEB);
    let first = server.leaf().unwrap();
    let (_, _, seen) = handshake(
        &ca.anchors(),
        &ca.anchors(),
        server.clone(),
        ca.leaf(CLIENT),
        WEB,
    )
    .await
    .unwrap();
    assert_eq!(seen, first);
    let san = SanType::DnsName(WEB.to_string().try_into().unwrap());
    let (chain, key) = ca.parts(vec![san], OffsetDateTime::now_utc() - Duration::hours(1), 1);
    server.set(chain, key).unwrap();
    let second = server.leaf().unwrap();
    assert_ne!(first, second);
    let (_, _, seen) = handshake(
        &ca.anchors(),
        &ca.anchors(),
        server.clone(),
        ca.leaf(CLIENT),
        WEB,
    )
    .await
    .unwrap();
    assert_eq!(
        seen, second,
        "a handshake after the swap uses the new certificate"
    );
    // A key that does not match the certificate is refused, and the store
    // keeps what it had.
    let (chain, _) = ca.parts(
        vec![SanType::DnsName(WEB.to_string().try_into().unwrap())],
        OffsetDateTime::now_utc(),
        1,
    );
    let stray = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        KeyPair::generate().unwrap().serialize_der(),
    ));
    assert!(server.set(chain, stray).is_err());
    assert_eq!(server.leaf().unwrap(), second);
}

#[test]
fn identity_names() {
    assert_eq!(
        Id::parse("Web.NS.serviceaccount.identity.linkerd.cluster.local.").unwrap(),
        Id::Dns(WEB.to_string())
    );
    assert!(Id::parse("").is_err());
    assert!(Id::parse("bad name").is_err());
    assert!(Id::parse("-web.ns").is_err());
    assert!(Id::parse("spiffe://").is_err());
    assert_eq!(Id::parse("spiffe://td/ns/a").unwrap().server_name(), None);
    assert!(TrustAnchors::from_pem("").is_err());
    assert!(
        TrustAnchors::from_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
            .is_err()
    );
}

/// The control plane serves one certificate naming all its identities:
/// a client expecting any one of them accepts it, and only those.
#[tokio::test]
async fn a_certificate_with_several_names_is_accepted_for_each() {
    let ca = Ca::new();
    let names = [
        "linkerd-identity.linkerd.serviceaccount.identity.linkerd.cluster.local",
        "linkerd-destination.linkerd.serviceaccount.identity.linkerd.cluster.local",
        "linkerd-policy.linkerd.serviceaccount.identity.linkerd.cluster.local",
    ];
    let sans = names
        .iter()
        .map(|n| SanType::DnsName(n.to_string().try_into().unwrap()))
        .collect();
    let server = ca.leaf_at(sans, OffsetDateTime::now_utc() - Duration::hours(1), 1);
    for name in names {
        let (_, _, leaf) = handshake(
            &ca.anchors(),
            &ca.anchors(),
            server.clone(),
            Arc::default(),
            name,
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(Id::parse(name).unwrap().is_named_in(&leaf));
    }
    let e = handshake(
        &ca.anchors(),
        &ca.anchors(),
        server,
        Arc::default(),
        "linkerd-destination.other.serviceaccount.identity.linkerd.cluster.local",
    )
    .await
    .unwrap_err();
    assert!(
        e.contains("not valid for name") || e.contains("NotValidForName"),
        "{e}"
    );
}
