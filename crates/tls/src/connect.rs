//! The one rule for reaching a peer: a target the control plane names with
//! an identity is reached only over mTLS that proves that identity, or not
//! at all.
//!
//! [`PeerTls`] is the decision, made once per target by whoever knows the
//! control plane's answer: plaintext (no identity named), mTLS
//! ([`MeshClient`]), or a refusal ([`FailClosed`]) when the identity is
//! named but cannot be proven (unusable identity or server name, no
//! client config, no identity of our own). [`MeshClient::connect`] is the
//! one mTLS connector that HTTP and opaque paths share; it refuses, too,
//! while this workload has no certificate (or only an expired one), since
//! a handshake without a client certificate would not prove who we are.

use crate::{CertStore, Id};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use std::{sync::Arc, time::Duration};
use tokio::io::{AsyncRead, AsyncWrite};

/// How one target is reached.
#[derive(Clone, Debug)]
pub enum PeerTls {
    /// The control plane names no identity for it: plaintext.
    Plain,
    /// mTLS that proves the named identity.
    Mesh(Arc<MeshClient>),
    /// Named with an identity that cannot be proven: every connection to
    /// it is refused.
    Refuse(FailClosed),
}

impl PeerTls {
    /// The identity the peer must prove, when one is named.
    pub fn identity(&self) -> Option<&str> {
        match self {
            PeerTls::Plain => None,
            PeerTls::Mesh(m) => Some(&m.identity_str),
            PeerTls::Refuse(f) => f.identity.as_deref(),
        }
    }
}

/// Why a meshed target was not reached: which part of the rule failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailReason {
    /// This proxy has no identity (disabled or not configured), so it
    /// cannot prove itself to a meshed peer.
    NoLocalIdentity,
    /// The identity the control plane named does not parse.
    BadIdentity,
    /// No usable server name to send as SNI.
    BadServerName,
    /// The TLS client configuration could not be built.
    ClientConfig,
    /// This workload has no certificate yet.
    NoCertificate,
    /// This workload's certificate has expired.
    CertificateExpired,
    /// The handshake failed or the peer did not prove the identity.
    Handshake,
    /// The control plane did not say in time whether the target is meshed.
    DiscoveryTimeout,
}

impl FailReason {
    /// The metric label value and `l5d-proxy-error` prefix.
    pub fn as_str(self) -> &'static str {
        match self {
            FailReason::NoLocalIdentity => "no_local_identity",
            FailReason::BadIdentity => "bad_identity",
            FailReason::BadServerName => "bad_server_name",
            FailReason::ClientConfig => "client_config",
            FailReason::NoCertificate => "no_certificate",
            FailReason::CertificateExpired => "certificate_expired",
            FailReason::Handshake => "handshake",
            FailReason::DiscoveryTimeout => "discovery_timeout",
        }
    }
}

/// A meshed target could not be reached over mTLS, so it was not reached.
#[derive(Clone, Debug, thiserror::Error)]
#[error("mTLS required ({}): {detail}", reason.as_str())]
pub struct FailClosed {
    /// Which part of the rule failed.
    pub reason: FailReason,
    /// What exactly, for logs and `l5d-proxy-error`.
    pub detail: Arc<str>,
    /// The identity named for the target, when there was one.
    pub identity: Option<Arc<str>>,
}

impl FailClosed {
    /// A refusal for `reason`.
    pub fn new(reason: FailReason, detail: impl Into<Arc<str>>, identity: Option<&str>) -> Self {
        Self {
            reason,
            detail: detail.into(),
            identity: identity.map(Arc::from),
        }
    }
}

/// mTLS to one meshed peer: the client config (which checks the peer's
/// chain and identity), the SNI, and our own credentials.
#[derive(Debug)]
pub struct MeshClient {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    identity: Id,
    identity_str: Arc<str>,
    store: Arc<CertStore>,
}

impl MeshClient {
    /// A connector for a peer that must prove `identity`, reached with
    /// `sni` (the identity itself when it is DNS-like). `config` must
    /// verify `identity` and present `store`'s credentials.
    pub fn new(
        config: Arc<ClientConfig>,
        identity: Id,
        sni: Option<&str>,
        store: Arc<CertStore>,
    ) -> Result<Self, FailClosed> {
        let identity_str: Arc<str> = Arc::from(identity.to_string());
        let name = sni.or(identity.server_name()).ok_or_else(|| {
            FailClosed::new(
                FailReason::BadServerName,
                format!("{identity} has no server name to send as SNI"),
                Some(&identity_str),
            )
        })?;
        let server_name = ServerName::try_from(name.to_string()).map_err(|e| {
            FailClosed::new(
                FailReason::BadServerName,
                format!("{name:?} cannot be sent as SNI: {e}"),
                Some(&identity_str),
            )
        })?;
        Ok(Self {
            config,
            server_name,
            identity,
            identity_str,
            store,
        })
    }

    /// The identity the peer must prove.
    pub fn identity(&self) -> &Id {
        &self.identity
    }

    /// The same, as text (for labels and `l5d-require-id`).
    pub fn identity_str(&self) -> &Arc<str> {
        &self.identity_str
    }

    /// Whether our own credentials can be presented now.
    pub fn ready(&self) -> Result<(), FailClosed> {
        self.store.usable().map_err(|reason| {
            let detail = match reason {
                FailReason::CertificateExpired => "this workload's certificate has expired",
                _ => "this workload has no certificate yet",
            };
            FailClosed::new(reason, detail, Some(&self.identity_str))
        })
    }

    /// The handshake over `io`, within `timeout`: the peer's chain and
    /// identity are checked before a byte of application data is sent.
    pub async fn connect<IO>(
        &self,
        io: IO,
        timeout: Duration,
    ) -> Result<tokio_rustls::client::TlsStream<IO>, FailClosed>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        self.ready()?;
        let handshake = tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(self.server_name.clone(), io);
        let failed = |detail: String| {
            FailClosed::new(FailReason::Handshake, detail, Some(&self.identity_str))
        };
        match tokio::time::timeout(timeout, handshake).await {
            Ok(Ok(tls)) => Ok(tls),
            Ok(Err(e)) => Err(failed(format!(
                "mTLS handshake with {}: {e}",
                self.identity
            ))),
            Err(_) => Err(failed(format!(
                "mTLS handshake with {} timed out after {timeout:?}",
                self.identity
            ))),
        }
    }
}
