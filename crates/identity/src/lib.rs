//! This workload's identity: a private key that never leaves the process
//! (or `IDENTITY_DIR`), a certificate for it from `Identity.Certify`, and
//! renewal before it expires.
//!
//! At start an ECDSA P-256 key and a CSR for the local identity are made.
//! Each certification reads the token file afresh (tokens are rotated
//! under the proxy), sends the CSR, checks that the leaf it gets back
//! chains to the trust anchors and names this identity, and installs it
//! in the [`CertStore`] (new handshakes use it at once; connections up
//! already are not touched). The next renewal is at 70% of the remaining
//! lifetime, clamped to the configured bounds; failures retry with
//! jittered exponential backoff, and the current certificate stays in use
//! meanwhile.

use linkerd2_proxy_api::identity::{CertifyRequest, identity_client::IdentityClient};
use linnet_tls::{
    CertStore, Id, TrustAnchors,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime},
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};
use tokio::sync::watch;

/// Identity settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// This workload's identity.
    pub local: Id,
    /// The trust anchors, PEM.
    pub trust_anchors_pem: String,
    /// The file holding the token to present (re-read on every call).
    pub token_file: PathBuf,
    /// Where to keep the key and CSR; in memory when `None`.
    pub dir: Option<PathBuf>,
    /// The earliest a renewal may come after a certificate arrives.
    pub min_refresh: Duration,
    /// The latest.
    pub max_refresh: Duration,
}

/// The identity could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The trust anchors are unusable.
    #[error(transparent)]
    Trust(#[from] linnet_tls::TrustError),
    /// The key or CSR could not be made or kept.
    #[error("key or CSR: {0}")]
    Key(String),
}

/// Why one certification failed.
#[derive(Debug, thiserror::Error)]
pub enum CertifyError {
    /// The token file could not be read.
    #[error("cannot read the identity token {path}: {source}")]
    Token {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The identity service refused or failed.
    #[error("identity service: {0}")]
    Rpc(#[from] tonic::Status),
    /// What came back is not a certificate for us.
    #[error("the identity service's certificate is not usable: {0}")]
    Invalid(String),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// Identity metrics, Linkerd's names.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    expiry: Gauge,
    refreshes: Family<ResultLabels, Counter>,
}

impl Metrics {
    /// Registers `identity_cert_expiration_timestamp_seconds` and
    /// `identity_cert_refresh_total{result}`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "identity_cert_expiration_timestamp_seconds",
            "When the current certificate expires (Unix time, seconds)",
            m.expiry.clone(),
        );
        registry.register(
            "identity_cert_refresh",
            "Certifications by result (ok, or the kind of failure)",
            m.refreshes.clone(),
        );
        m
    }

    fn refreshed(&self, result: &'static str) {
        self.refreshes.get_or_create(&ResultLabels { result }).inc();
    }
}

/// The local identity: its key, CSR and current certificate.
pub struct Identity {
    config: Config,
    anchors: TrustAnchors,
    key_der: Vec<u8>,
    csr_der: Vec<u8>,
    store: Arc<CertStore>,
    ready: watch::Sender<bool>,
    metrics: Metrics,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("local", &self.config.local)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Makes (or, under `IDENTITY_DIR`, reuses) the key and CSR.
    pub fn new(config: Config, metrics: Metrics) -> Result<Self, Error> {
        let anchors = TrustAnchors::from_pem(&config.trust_anchors_pem)?;
        let (key_der, csr_der) = key_and_csr(&config)?;
        Ok(Self {
            config,
            anchors,
            key_der,
            csr_der,
            store: Arc::new(CertStore::default()),
            ready: watch::Sender::new(false),
            metrics,
        })
    }

    /// The credentials TLS uses.
    pub fn store(&self) -> Arc<CertStore> {
        self.store.clone()
    }

    /// The trust anchors.
    pub fn anchors(&self) -> &TrustAnchors {
        &self.anchors
    }

    /// This workload's identity.
    pub fn local(&self) -> &Id {
        &self.config.local
    }

    /// Becomes true once the first certificate is in place.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// One certification: returns when the new certificate expires.
    pub async fn certify(
        &self,
        client: &mut IdentityClient<tonic::transport::Channel>,
    ) -> Result<SystemTime, CertifyError> {
        let path = &self.config.token_file;
        let token = std::fs::read(path).map_err(|source| CertifyError::Token {
            path: path.clone(),
            source,
        })?;
        let rsp = client
            .certify(CertifyRequest {
                identity: self.config.local.to_string(),
                token,
                certificate_signing_request: self.csr_der.clone(),
            })
            .await?
            .into_inner();
        let leaf = CertificateDer::from(rsp.leaf_certificate);
        let intermediates: Vec<CertificateDer<'static>> = rsp
            .intermediate_certificates
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        self.check(&leaf, &intermediates)?;
        let valid_until = rsp
            .valid_until
            .and_then(|t| u64::try_from(t.seconds).ok())
            .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
            .ok_or_else(|| CertifyError::Invalid("no expiry".to_string()))?;
        let mut chain = vec![leaf];
        chain.extend(intermediates);
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        self.store
            .set(chain, key)
            .map_err(|e| CertifyError::Invalid(e.to_string()))?;
        self.ready.send_replace(true);
        Ok(valid_until)
    }

    /// The leaf must chain to the anchors and name us.
    fn check(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), CertifyError> {
        let anchors = self.anchors.roots().roots.clone();
        let cert = webpki::EndEntityCert::try_from(leaf)
            .map_err(|e| CertifyError::Invalid(format!("leaf: {e}")))?;
        cert.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            intermediates,
            UnixTime::now(),
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| CertifyError::Invalid(format!("does not chain to the trust anchors: {e}")))?;
        if !self.config.local.is_named_in(leaf) {
            return Err(CertifyError::Invalid(format!(
                "does not name {}",
                self.config.local
            )));
        }
        Ok(())
    }

    /// When to renew a certificate expiring at `valid_until`: at 70% of
    /// the time left, within the configured bounds.
    pub fn refresh_in(&self, valid_until: SystemTime) -> Duration {
        let left = valid_until
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        left.mul_f64(0.7)
            .clamp(self.config.min_refresh, self.config.max_refresh)
    }

    /// Certifies, then renews before expiry, forever; retries failures with
    /// backoff, keeping the current certificate.
    pub async fn run(self: Arc<Self>, mut client: IdentityClient<tonic::transport::Channel>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.certify(&mut client).await {
                Ok(valid_until) => {
                    backoff = Duration::from_millis(100);
                    let secs = valid_until
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    self.metrics
                        .expiry
                        .set(i64::try_from(secs).unwrap_or(i64::MAX));
                    self.metrics.refreshed("ok");
                    let wait = self.refresh_in(valid_until);
                    tracing::info!(identity = %self.config.local, expires_in = ?valid_until.duration_since(SystemTime::now()).unwrap_or_default(), renew_in = ?wait, "certified");
                    tokio::time::sleep(wait).await;
                }
                Err(error) => {
                    self.metrics.refreshed(match &error {
                        CertifyError::Token { .. } => "token_error",
                        CertifyError::Rpc(_) => "rpc_error",
                        CertifyError::Invalid(_) => "invalid_certificate",
                    });
                    let jittered = backoff.mul_f64(rand::random_range(0.5..=1.0));
                    tracing::warn!(identity = %self.config.local, %error, retry_in = ?jittered, "certification failed; retrying");
                    tokio::time::sleep(jittered).await;
                    backoff =
                        (backoff * 2).min(self.config.max_refresh.min(Duration::from_secs(30)));
                }
            }
        }
    }
}

/// The key (PKCS#8 DER) and CSR (DER) for `config.local`: made in memory,
/// or read from `IDENTITY_DIR` (and written there the first time).
fn key_and_csr(config: &Config) -> Result<(Vec<u8>, Vec<u8>), Error> {
    let err = |e: &dyn std::fmt::Display| Error::Key(e.to_string());
    let key = match &config.dir {
        Some(dir) if dir.join("key.p8").exists() => {
            let der = std::fs::read(dir.join("key.p8")).map_err(|e| err(&e))?;
            let key = PrivatePkcs8KeyDer::from(der);
            rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&key, &rcgen::PKCS_ECDSA_P256_SHA256)
                .map_err(|e| err(&e))?
        }
        _ => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| err(&e))?,
    };
    let san = match &config.local {
        Id::Dns(n) => rcgen::SanType::DnsName(n.clone().try_into().map_err(|e| err(&e))?),
        Id::Uri(u) => rcgen::SanType::URI(u.clone().try_into().map_err(|e| err(&e))?),
    };
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![san];
    if let Id::Dns(n) = &config.local {
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, n.clone());
    }
    let csr = params.serialize_request(&key).map_err(|e| err(&e))?;
    if let Some(dir) = &config.dir {
        std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        let key_path = dir.join("key.p8");
        if !key_path.exists() {
            write_private(&key_path, &key.serialize_der()).map_err(|e| err(&e))?;
        }
        std::fs::write(dir.join("csr.der"), csr.der()).map_err(|e| err(&e))?;
    }
    Ok((key.serialize_der(), csr.der().to_vec()))
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(bytes)
}
