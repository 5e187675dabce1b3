//! The control plane's own certificate, for TLS off loopback.
//!
//! [`ServerTls::start`] issues a certificate from the mesh CA naming every
//! control-plane identity in the mesh file as a DNS SAN, puts it in a
//! [`CertStore`] that the server config reads at each handshake, and
//! renews it at 70% of its lifetime, or at once when the mesh file
//! changes the identities or the lifetime. Connections up already keep
//! the certificate they were made with. Client certificates are asked for
//! and verified when given, never required: a proxy calling `Certify` has
//! none yet.

use crate::{Ca, Metrics, Store, config::Identity};
use linnet_tls::{CertStore, TrustAnchors, rustls};
use std::{sync::Arc, time::Duration};
use tokio::task::JoinHandle;

/// When to renew, as a share of the lifetime.
const RENEW_AT: f64 = 0.7;
/// How soon to retry after a failed issue (the current one stays).
const RETRY: Duration = Duration::from_secs(10);

/// The server side of the control plane's TLS.
#[derive(Debug)]
pub(crate) struct ServerTls {
    /// The rustls config: TLS 1.3, ALPN `h2`, the certificate from the
    /// store.
    pub(crate) config: Arc<rustls::ServerConfig>,
    /// The certificate in force (tests look at it).
    #[cfg(test)]
    certs: Arc<CertStore>,
    /// The renewal task; stopped when this is dropped.
    renew: JoinHandle<()>,
}

impl Drop for ServerTls {
    fn drop(&mut self) {
        self.renew.abort();
    }
}

/// The control plane's TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServerTlsError {
    /// The trust anchors do not parse.
    #[error("trust anchors: {0}")]
    Anchors(#[from] linnet_tls::TrustError),
    /// The certificate could not be issued.
    #[error(transparent)]
    Issue(#[from] crate::CaError),
    /// rustls refused the config or the key.
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

impl ServerTls {
    /// Issues the first certificate and starts renewing it.
    pub(crate) fn start(
        ca: Arc<Ca>,
        store: Store,
        metrics: Metrics,
    ) -> Result<Self, ServerTlsError> {
        let anchors = TrustAnchors::from_pem(ca.trust_anchors_pem())?;
        let certs = Arc::new(CertStore::default());
        let mesh = store.current();
        let lifetime = issue(&ca, &mesh.identity, &certs, &metrics)?;
        let config = linnet_tls::server_config(&anchors, certs.clone(), vec![b"h2".to_vec()])?;
        let renew = tokio::spawn(renew(ca, store, certs.clone(), metrics, lifetime));
        Ok(Self {
            config: Arc::new(config),
            #[cfg(test)]
            certs,
            renew,
        })
    }
}

/// Issues a certificate for the identities in `id` into `certs`; returns
/// its lifetime.
fn issue(
    ca: &Ca,
    id: &Identity,
    certs: &CertStore,
    metrics: &Metrics,
) -> Result<Duration, ServerTlsError> {
    let cert = ca.issue_server(&id.control_plane_identities, id)?;
    certs.set(cert.chain, cert.key)?;
    metrics.server_certificate(cert.valid_until.unix_timestamp());
    tracing::info!(
        identities = ?id.control_plane_identities, valid_until = %cert.valid_until,
        "issued the control plane its own certificate"
    );
    Ok(id.certificate_lifetime)
}

/// What the certificate depends on in the mesh file.
fn inputs(id: &Identity) -> (Vec<String>, Duration, Duration) {
    (
        id.control_plane_identities.clone(),
        id.certificate_lifetime,
        id.clock_skew_allowance,
    )
}

async fn renew(
    ca: Arc<Ca>,
    store: Store,
    certs: Arc<CertStore>,
    metrics: Metrics,
    lifetime: Duration,
) {
    let mut rx = store.subscribe();
    let mut current = inputs(&rx.borrow_and_update().identity);
    let mut wait = lifetime.mul_f64(RENEW_AT);
    loop {
        let deadline = tokio::time::Instant::now() + wait;
        // Sleep until renewal is due, unless the mesh file changes what
        // the certificate says first.
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                changed = rx.changed() => {
                    if changed.is_err() {
                        // The store is gone: nothing left to serve.
                        return;
                    }
                    let now = inputs(&rx.borrow_and_update().identity);
                    if now != current {
                        current = now;
                        break;
                    }
                }
            }
        }
        let mesh = store.current();
        wait = match issue(&ca, &mesh.identity, &certs, &metrics) {
            Ok(lifetime) => lifetime.mul_f64(RENEW_AT),
            Err(error) => {
                tracing::error!(%error, retry_in = ?RETRY, "cannot renew the control plane's certificate; the current one stays in use");
                RETRY
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Mesh;

    fn names(certs: &CertStore) -> Vec<String> {
        let leaf = certs.leaf().unwrap();
        linnet_tls::identities(&leaf)
            .unwrap()
            .into_iter()
            .map(|id| id.to_string())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn renews_at_70_percent_and_when_the_names_change() {
        let dir = std::path::Path::new("/nonexistent");
        let mesh = Mesh::parse("identity:\n  certificate_lifetime: 1h\n", dir).unwrap();
        let store = Store::new(mesh);
        let ca = Arc::new(Ca::generate().unwrap());
        let tls = ServerTls::start(ca, store.clone(), Metrics::default()).unwrap();
        assert_eq!(names(&tls.certs).len(), 3);
        let first = tls.certs.leaf().unwrap();

        // Not before 70% of the hour...
        tokio::time::sleep(Duration::from_secs(41 * 60)).await;
        assert_eq!(tls.certs.leaf().unwrap(), first);
        // ...but then.
        tokio::time::sleep(Duration::from_secs(2 * 60)).await;
        let second = tls.certs.leaf().unwrap();
        assert_ne!(second, first);

        // The file names other identities: a new certificate at once.
        store.replace(
            Mesh::parse(
                "identity:\n  certificate_lifetime: 1h\n  control_plane_identities: [control.mesh.example]\n",
                dir,
            )
            .unwrap(),
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(names(&tls.certs), ["control.mesh.example"]);
    }
}
