//! The client side's check of a server: its chain reaches the trust
//! anchors, and it carries exactly the expected identity.

use crate::{Id, TrustAnchors};
use rustls::{
    DigitallySignedStruct, Error, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::sync::Arc;

/// Verifies a server for one expected identity.
#[derive(Debug)]
pub struct IdentityVerifier {
    chain: Arc<WebPkiServerVerifier>,
    anchors: TrustAnchors,
    expected: Id,
    algs: WebPkiSupportedAlgorithms,
}

impl IdentityVerifier {
    /// Accepts servers chaining to `anchors` that name `expected`.
    pub fn new(
        anchors: &TrustAnchors,
        expected: Id,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, Error> {
        let algs = provider.signature_verification_algorithms;
        let chain = WebPkiServerVerifier::builder_with_provider(anchors.roots(), provider)
            .build()
            .map_err(|e| Error::General(e.to_string()))?;
        Ok(Self {
            chain,
            anchors: anchors.clone(),
            expected,
            algs,
        })
    }
}

impl ServerCertVerifier for IdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match &self.expected {
            // The chain, validity and the name (as sent in SNI) by webpki...
            Id::Dns(_) => {
                self.chain
                    .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
            }
            // ...or, for a URI identity (SNI cannot carry one), the chain
            // and validity alone.
            Id::Uri(_) => {
                let cert = webpki::EndEntityCert::try_from(end_entity).map_err(|e| {
                    Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                        Arc::new(e),
                    )))
                })?;
                let anchors: Vec<_> = self.anchors.roots().roots.clone();
                cert.verify_for_usage(
                    self.algs.all,
                    &anchors,
                    intermediates,
                    now,
                    webpki::KeyUsage::server_auth(),
                    None,
                    None,
                )
                .map_err(|e| Error::InvalidCertificate(map_webpki(e)))?;
            }
        }
        // ...then exactly the identity expected: no wildcard stands in.
        if !self.expected.is_named_in(end_entity) {
            return Err(Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

fn map_webpki(e: webpki::Error) -> rustls::CertificateError {
    use rustls::CertificateError as C;
    match e {
        webpki::Error::UnknownIssuer => C::UnknownIssuer,
        webpki::Error::CertExpired { .. } => C::Expired,
        webpki::Error::CertNotValidYet { .. } => C::NotValidYet,
        webpki::Error::CertNotValidForName(_) => C::NotValidForName,
        e => C::Other(rustls::OtherError(Arc::new(e))),
    }
}
