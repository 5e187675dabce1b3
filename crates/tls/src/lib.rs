//! Mesh TLS.
//!
//! - [`provider`]: rustls with the aws-lc-rs provider, TLS 1.3 only, key
//!   exchange X25519MLKEM768 first, then X25519 and P-256;
//! - [`Id`]: workload identities (DNS-like names, or `spiffe://` URIs) and
//!   how certificates are checked against them;
//! - [`CertStore`]: this workload's certificate and key, swapped in place
//!   when renewed: handshakes after the swap use the new one, connections
//!   already up are untouched;
//! - [`client_config`] and [`server_config`]: the client verifies that the
//!   server's chain reaches the trust anchors and carries exactly the
//!   identity it expects; the server asks for a client certificate, verifies
//!   it when given, and [`peer_identity`] says whose it is;
//! - [`PeerTls`] and [`MeshClient`]: the one rule for reaching a meshed
//!   peer (mTLS proving its identity, or a refusal), and the one mTLS
//!   connector every path uses.

mod connect;
mod id;
mod store;
mod verify;

pub use self::{
    connect::{FailClosed, FailReason, MeshClient, PeerTls},
    id::{Id, IdError, identities},
    store::CertStore,
    verify::IdentityVerifier,
};
pub use rustls;
pub use rustls_pki_types as pki_types;

use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    crypto::{CryptoProvider, aws_lc_rs},
    server::WebPkiClientVerifier,
};
use rustls_pki_types::{CertificateDer, pem::PemObject};
use std::sync::Arc;

/// The crypto provider: aws-lc-rs, TLS 1.3 suites only, key exchange
/// X25519MLKEM768 then X25519 then P-256.
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = aws_lc_rs::default_provider();
    p.cipher_suites
        .retain(|s| s.version() == &rustls::version::TLS13);
    p.kx_groups = vec![
        aws_lc_rs::kx_group::X25519MLKEM768,
        aws_lc_rs::kx_group::X25519,
        aws_lc_rs::kx_group::SECP256R1,
    ];
    Arc::new(p)
}

/// Bad trust anchors.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// No certificate in the PEM.
    #[error("no certificate in the trust anchors PEM")]
    Empty,
    /// A block is not a certificate.
    #[error("trust anchors PEM: {0}")]
    Pem(String),
    /// A certificate cannot be a trust anchor.
    #[error("trust anchor {index} is not usable: {reason}")]
    Anchor {
        /// Its position in the PEM.
        index: usize,
        /// Why.
        reason: String,
    },
}

/// The trust anchors (roots) identities chain to.
#[derive(Clone, Debug)]
pub struct TrustAnchors(Arc<RootCertStore>);

impl TrustAnchors {
    /// Reads every certificate in a PEM text.
    pub fn from_pem(pem: &str) -> Result<Self, TrustError> {
        let mut roots = RootCertStore::empty();
        let mut n = 0;
        for (index, cert) in CertificateDer::pem_slice_iter(pem.as_bytes()).enumerate() {
            let cert = cert.map_err(|e| TrustError::Pem(e.to_string()))?;
            roots.add(cert).map_err(|e| TrustError::Anchor {
                index,
                reason: e.to_string(),
            })?;
            n += 1;
        }
        if n == 0 {
            return Err(TrustError::Empty);
        }
        Ok(Self(Arc::new(roots)))
    }

    /// The root store.
    pub fn roots(&self) -> Arc<RootCertStore> {
        self.0.clone()
    }
}

/// A client config that presents `creds` (when it has a certificate) and
/// accepts only a server chaining to `anchors` with the identity
/// `expected`, offering `alpn`.
pub fn client_config(
    anchors: &TrustAnchors,
    creds: Arc<CertStore>,
    expected: Id,
    alpn: Vec<Vec<u8>>,
) -> Result<ClientConfig, rustls::Error> {
    let provider = provider();
    let verifier = IdentityVerifier::new(anchors, expected, provider.clone())?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(creds);
    config.alpn_protocols = alpn;
    Ok(config)
}

/// A server config presenting `creds`, asking clients for a certificate
/// chaining to `anchors` (optional: policy decides whether it is
/// required), accepting `alpn`.
pub fn server_config(
    anchors: &TrustAnchors,
    creds: Arc<CertStore>,
    alpn: Vec<Vec<u8>>,
) -> Result<ServerConfig, rustls::Error> {
    let provider = provider();
    let clients = WebPkiClientVerifier::builder_with_provider(anchors.roots(), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(clients)
        .with_cert_resolver(creds);
    config.alpn_protocols = alpn;
    Ok(config)
}

/// The identity of the peer's verified certificate, if it sent one.
pub fn peer_identity(conn: &rustls::CommonState) -> Option<Id> {
    let leaf = conn.peer_certificates()?.first()?;
    identities(leaf).ok()?.into_iter().next()
}
