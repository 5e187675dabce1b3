//! This workload's credentials, swapped in place when renewed.

use rustls::{
    client::ResolvesClientCert,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::{
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

/// The current certificate chain and key; empty until the first is set.
#[derive(Debug, Default)]
pub struct CertStore {
    current: RwLock<Option<Arc<CertifiedKey>>>,
    /// When the current leaf expires.
    not_after: RwLock<Option<SystemTime>>,
}

impl CertStore {
    /// Replaces the credentials: new handshakes use them at once.
    pub fn set(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<(), rustls::Error> {
        let key = crate::provider().key_provider.load_private_key(key)?;
        let certified = CertifiedKey::new(chain, key);
        certified.keys_match().or_else(|e| match e {
            // Some keys cannot report their public half; nothing to check.
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown) => Ok(()),
            e => Err(e),
        })?;
        let not_after = certified.cert.first().and_then(not_after);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(certified));
        *self.not_after.write().unwrap_or_else(|e| e.into_inner()) = not_after;
        Ok(())
    }

    /// When the certificate in force expires, if there is one.
    pub fn not_after(&self) -> Option<SystemTime> {
        *self.not_after.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether there are credentials to present now: `NoCertificate`
    /// before the first, `CertificateExpired` once the current one has
    /// expired.
    pub fn usable(&self) -> Result<(), crate::FailReason> {
        if self.get().is_none() {
            return Err(crate::FailReason::NoCertificate);
        }
        match self.not_after() {
            Some(t) if t <= SystemTime::now() => Err(crate::FailReason::CertificateExpired),
            _ => Ok(()),
        }
    }

    /// The credentials in force.
    pub fn get(&self) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The leaf certificate in force.
    pub fn leaf(&self) -> Option<CertificateDer<'static>> {
        self.get().and_then(|c| c.cert.first().cloned())
    }
}

/// The end of a certificate's validity; `None` when it does not parse.
fn not_after(cert: &CertificateDer<'_>) -> Option<SystemTime> {
    use x509_parser::prelude::FromDer;
    let (_, x509) = x509_parser::certificate::X509Certificate::from_der(cert).ok()?;
    let secs = u64::try_from(x509.validity().not_after.timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get()
    }
}

impl ResolvesClientCert for CertStore {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.get()
    }

    fn has_certs(&self) -> bool {
        self.get().is_some()
    }
}
