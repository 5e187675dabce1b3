//! `Identity.Certify`: the mesh CA. A workload proves who it is with the
//! token configured for its identity (or, in a cluster, with its
//! service-account token, reviewed by the Kubernetes API server: see
//! `token_review`), sends a CSR for that identity, and
//! gets back a leaf certificate signed by the issuer, valid for the
//! configured lifetime.
//!
//! The issuer's certificate and key come from the files the mesh file
//! names; when neither exists, a self-signed ECDSA P-256 issuer is
//! generated and written there, and its certificate is the trust anchor
//! proxies must be given.

use crate::{Metrics, Store, config, token_review};
use linkerd2_proxy_api::identity::{CertifyRequest, CertifyResponse, identity_server};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::{path::Path, time::Duration};
use tonic::{Request, Response, Status};

/// The issuer.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    issuer_der: Vec<u8>,
    /// The trust anchor(s) proxies verify against, PEM.
    trust_anchors_pem: String,
    /// Whether the issuer is itself the trust anchor (otherwise it is
    /// sent as an intermediate).
    self_signed: bool,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("self_signed", &self.self_signed)
            .finish_non_exhaustive()
    }
}

/// The issuer could not be loaded or created.
#[derive(Debug, thiserror::Error)]
#[error("identity issuer: {0}")]
pub struct CaError(String);

impl Ca {
    /// Loads the issuer named in `id`, or generates one when neither of its
    /// files exists.
    pub fn load_or_generate(id: &config::Identity) -> Result<Self, CaError> {
        let (cert_path, key_path) = (&id.issuer_certificate, &id.issuer_key);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => Self::load(cert_path, key_path, id.trust_anchors.as_deref()),
            (false, false) => {
                let ca = Self::generate()?;
                write(cert_path, ca.trust_anchors_pem.as_bytes(), false)?;
                write(key_path, ca.issuer.key().serialize_pem().as_bytes(), true)?;
                tracing::info!(
                    certificate = %cert_path.display(), key = %key_path.display(),
                    "generated a new identity issuer; its certificate is the mesh's trust anchor"
                );
                Ok(ca)
            }
            _ => Err(CaError(format!(
                "only one of {} and {} exists: give both, or neither to generate them",
                cert_path.display(),
                key_path.display()
            ))),
        }
    }

    /// A fresh self-signed issuer, in memory.
    pub fn generate() -> Result<Self, CaError> {
        let key =
            KeyPair::generate().map_err(|e| CaError(format!("cannot generate a key: {e}")))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "identity.linnet.mesh");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(3650);
        let cert = params
            .self_signed(&key)
            .map_err(|e| CaError(format!("cannot self-sign: {e}")))?;
        Ok(Self {
            trust_anchors_pem: cert.pem(),
            issuer_der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
            self_signed: true,
        })
    }

    fn load(cert: &Path, key: &Path, anchors: Option<&Path>) -> Result<Self, CaError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p)
                .map_err(|e| CaError(format!("cannot read {}: {e}", p.display())))
        };
        let cert_pem = read(cert)?;
        let key = KeyPair::from_pem(&read(key)?)
            .map_err(|e| CaError(format!("{}: not a private key: {e}", key.display())))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
            .map_err(|e| CaError(format!("{}: not a CA certificate: {e}", cert.display())))?;
        let issuer_der = pem_der(&cert_pem)
            .ok_or_else(|| CaError(format!("{}: no certificate", cert.display())))?;
        let (trust_anchors_pem, self_signed) = match anchors {
            Some(a) => (read(a)?, false),
            None => (cert_pem, true),
        };
        Ok(Self {
            issuer,
            issuer_der,
            trust_anchors_pem,
            self_signed,
        })
    }

    /// The PEM proxies use as `IDENTITY_TRUST_ANCHORS`.
    pub fn trust_anchors_pem(&self) -> &str {
        &self.trust_anchors_pem
    }

    /// Signs a certificate for `identity` with the key in `csr`.
    fn sign(
        &self,
        identity: &str,
        csr_der: &[u8],
        id: &config::Identity,
    ) -> Result<(Vec<u8>, time::OffsetDateTime), Status> {
        // DER, as linkerd2-proxy sends it; PEM is accepted too.
        let parsed = match std::str::from_utf8(csr_der) {
            Ok(pem) if pem.trim_start().starts_with("-----BEGIN") => {
                use rustls_pki_types::{CertificateSigningRequestDer, pem::PemObject};
                CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
                    .map_err(|_| rcgen::Error::CouldNotParseCertificationRequest)
                    .and_then(|der| CertificateSigningRequestParams::from_der(&der))
            }
            _ => CertificateSigningRequestParams::from_der(&csr_der.to_vec().into()),
        };
        let mut csr = parsed.map_err(|e| {
            Status::invalid_argument(format!("malformed certificate signing request: {e}"))
        })?;
        let spiffe = identity.starts_with("spiffe://");
        let names_identity = csr.params.subject_alt_names.iter().any(|san| match san {
            SanType::DnsName(n) if !spiffe => n.as_str().eq_ignore_ascii_case(identity),
            SanType::URI(u) if spiffe => u.as_str() == identity,
            _ => false,
        });
        if !names_identity {
            return Err(Status::invalid_argument(format!(
                "the certificate signing request does not name {identity} in its subject alternative names"
            )));
        }
        let name = identity
            .to_string()
            .try_into()
            .map_err(|_| Status::invalid_argument("identity is not ASCII"))?;
        let san = if spiffe {
            SanType::URI(name)
        } else {
            SanType::DnsName(name)
        };
        let params = leaf_params(vec![san], (!spiffe).then_some(identity), id);
        let valid_until = params.not_after;
        csr.params = params;
        let leaf = csr
            .signed_by(&self.issuer)
            .map_err(|e| Status::internal(format!("cannot sign: {e}")))?;
        Ok((leaf.der().to_vec(), valid_until))
    }
}

/// A certificate for the control plane itself: what [`Ca::issue_server`]
/// returns.
pub struct ServerCert {
    /// The leaf, then the issuer when it is an intermediate.
    pub chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// The leaf's key (fresh for each certificate), PKCS#8.
    pub key: rustls_pki_types::PrivateKeyDer<'static>,
    /// When the leaf expires.
    pub valid_until: time::OffsetDateTime,
}

impl std::fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCert")
            .field("valid_until", &self.valid_until)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Issues the control plane a certificate of its own, with a fresh
    /// key, naming every one of `names` as a DNS SAN (so a client
    /// expecting any of them accepts it), valid for the mesh file's
    /// certificate lifetime.
    pub fn issue_server(
        &self,
        names: &[String],
        id: &config::Identity,
    ) -> Result<ServerCert, CaError> {
        let key =
            KeyPair::generate().map_err(|e| CaError(format!("cannot generate a key: {e}")))?;
        let sans = names
            .iter()
            .map(|n| {
                n.clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|_| CaError(format!("{n:?} is not a DNS name")))
            })
            .collect::<Result<_, _>>()?;
        let params = leaf_params(sans, names.first().map(String::as_str), id);
        let leaf = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| CaError(format!("cannot sign the control plane's certificate: {e}")))?;
        let mut chain = vec![leaf.der().clone()];
        if !self.self_signed {
            chain.push(self.issuer_der.clone().into());
        }
        Ok(ServerCert {
            chain,
            key: rustls_pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
            valid_until: params.not_after,
        })
    }
}

fn to_time(d: Duration) -> time::Duration {
    time::Duration::try_from(d).unwrap_or(time::Duration::MAX)
}

/// The first certificate of a PEM text, as DER.
fn pem_der(pem: &str) -> Option<Vec<u8>> {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::from_pem_slice(pem.as_bytes())
        .ok()
        .map(|c| c.to_vec())
}

fn write(path: &Path, bytes: &[u8], private: bool) -> Result<(), CaError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    opts.open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| CaError(format!("cannot write {}: {e}", path.display())))
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The Identity service.
#[derive(Debug)]
pub struct IdentityService {
    pub(crate) ca: std::sync::Arc<Ca>,
    pub(crate) store: Store,
    pub(crate) metrics: Metrics,
}

#[tonic::async_trait]
impl identity_server::Identity for IdentityService {
    async fn certify(
        &self,
        req: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        self.metrics.request("Identity.Certify");
        let req = req.into_inner();
        let refuse = |result: &'static str, status: Status| {
            tracing::warn!(identity = %req.identity, reason = %status.message(), "refused to certify");
            self.metrics.certified(result);
            Err(status)
        };
        if let Err(reason) = config::check_identity_name(&req.identity) {
            return refuse(
                "bad_identity",
                Status::invalid_argument(format!("identity: {reason}")),
            );
        }
        let mesh = self.store.current();
        if let Some(token) = mesh.identity.tokens.get(&req.identity) {
            // A static token takes precedence over a token review.
            if !same(token.as_bytes(), trim_token(&req.token)) {
                return refuse(
                    "bad_token",
                    Status::unauthenticated(format!("wrong token for {}", req.identity)),
                );
            }
        } else if let Some(k8s) = &mesh.identity.kubernetes {
            let Some((ns, sa)) =
                token_review::service_account(&req.identity, &mesh.identity.trust_domain)
            else {
                return refuse(
                    "unknown_identity",
                    Status::permission_denied(format!(
                        "no token is configured for {}, and it is not a service account's identity \
                         (<sa>.<ns>.serviceaccount.identity.<control-ns>.{})",
                        req.identity, mesh.identity.trust_domain
                    )),
                );
            };
            let Ok(token) = std::str::from_utf8(trim_token(&req.token)) else {
                return refuse(
                    "token_review_denied",
                    Status::unauthenticated("the token is not UTF-8"),
                );
            };
            match token_review::review(k8s, token, ns, sa).await {
                Ok(()) => {}
                Err(token_review::Refused::Unauthenticated(why)) => {
                    return refuse(
                        "token_review_denied",
                        Status::unauthenticated(format!(
                            "token review for {}: {why}",
                            req.identity
                        )),
                    );
                }
                Err(token_review::Refused::Denied(why)) => {
                    return refuse(
                        "token_review_denied",
                        Status::permission_denied(format!(
                            "token review for {}: {why}",
                            req.identity
                        )),
                    );
                }
                Err(token_review::Refused::Error(why)) => {
                    return refuse(
                        "token_review_error",
                        Status::unavailable(format!(
                            "cannot review the token for {}: {why}",
                            req.identity
                        )),
                    );
                }
            }
        } else {
            return refuse(
                "unknown_identity",
                Status::permission_denied(format!("no token is configured for {}", req.identity)),
            );
        }
        let (leaf, valid_until) = match self.ca.sign(
            &req.identity,
            &req.certificate_signing_request,
            &mesh.identity,
        ) {
            Ok(x) => x,
            Err(status) => return refuse("bad_csr", status),
        };
        self.metrics.certified("issued");
        tracing::info!(identity = %req.identity, %valid_until, "issued a certificate");
        let intermediate_certificates = if self.ca.self_signed {
            Vec::new()
        } else {
            vec![self.ca.issuer_der.clone()]
        };
        Ok(Response::new(CertifyResponse {
            leaf_certificate: leaf,
            intermediate_certificates,
            valid_until: Some(prost_types::Timestamp {
                seconds: valid_until.unix_timestamp(),
                nanos: 0,
            }),
        }))
    }
}

/// Tokens read from files often end with a newline.
fn trim_token(t: &[u8]) -> &[u8] {
    let end = t
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &t[..end]
}

/// A leaf for server and client authentication naming `sans` (and
/// `common_name`), valid from the clock-skew allowance ago for the mesh
/// file's certificate lifetime.
fn leaf_params(
    sans: Vec<SanType>,
    common_name: Option<&str>,
    id: &config::Identity,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    let mut dn = DistinguishedName::new();
    if let Some(cn) = common_name {
        dn.push(DnType::CommonName, cn);
    }
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - to_time(id.clock_skew_allowance);
    params.not_after = now + to_time(id.certificate_lifetime);
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip() {
        let ca = Ca::generate().unwrap();
        assert_eq!(pem_der(ca.trust_anchors_pem()).unwrap(), ca.issuer_der);
        assert_eq!(pem_der("no PEM here"), None);
    }

    #[test]
    fn token_comparison() {
        assert!(same(b"abc", trim_token(b"abc\n")));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
        assert_eq!(trim_token(b"  \n"), b"");
    }
}
