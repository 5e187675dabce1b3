//! Channels to the control plane, for every control-plane client (the
//! Destination and policy watches here, `Identity.Certify` in
//! `linnet-identity`): one place decides how the control plane is spoken
//! to.
//!
//! linkerd2-proxy's rule: a service on a loopback address (127.0.0.0/8,
//! `::1`, `localhost`) is spoken to in plaintext; any other only over TLS
//! 1.3 whose server certificate chains to the trust anchors and names
//! the service's identity (`*_SVC_NAME`) as a DNS SAN, offering ALPN
//! `h2`. The client presents this workload's certificate once it has one
//! (none for `Certify`, which is how it gets one). There is no fallback:
//! without a name or trust anchors, [`channel`] refuses to build the
//! channel. A failed handshake is logged with its reason and counted in
//! `control_client_tls_errors_total{service, reason}`.

use crate::{ControlAddr, Metrics};
use hyper_util::rt::TokioIo;
use linnet_tls::{CertStore, Id, TrustAnchors, pki_types::ServerName, rustls};
use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};
use tonic::transport::{Channel, Endpoint};

/// How long a TCP connection to the control plane may take to open.
const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the TLS handshake may take after that.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// What TLS to the control plane verifies against and presents.
#[derive(Clone, Debug)]
pub struct ControlTls {
    anchors: TrustAnchors,
    /// This workload's certificate, presented once there is one; empty
    /// for the identity client.
    creds: Arc<CertStore>,
    metrics: Metrics,
}

impl ControlTls {
    /// Verifies servers against `anchors`, presenting no certificate;
    /// handshake failures are counted in `metrics`.
    pub fn new(anchors: TrustAnchors, metrics: Metrics) -> Self {
        Self {
            anchors,
            creds: Arc::new(CertStore::default()),
            metrics,
        }
    }

    /// The same, presenting the certificate in `creds` once it has one.
    pub fn with_client_certificate(mut self, creds: Arc<CertStore>) -> Self {
        self.creds = creds;
        self
    }
}

/// A channel could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The address is not a URI authority.
    #[error("{service} service address {addr:?}: {source}")]
    Addr {
        /// Which service.
        service: &'static str,
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// Off loopback, but no identity to verify.
    #[error(
        "{service} service at {addr} is not on loopback and has no identity (*_SVC_NAME) to verify; refusing plaintext"
    )]
    NoName {
        /// Which service.
        service: &'static str,
        /// The address.
        addr: String,
    },
    /// Off loopback, but no trust anchors to verify with.
    #[error(
        "{service} service at {addr} is not on loopback and there are no trust anchors to verify it; refusing plaintext"
    )]
    NoTrustAnchors {
        /// Which service.
        service: &'static str,
        /// The address.
        addr: String,
    },
    /// The identity is not a DNS-like name.
    #[error("{service} service identity {name:?} is not a DNS-like name")]
    BadName {
        /// Which service.
        service: &'static str,
        /// The name.
        name: String,
    },
    /// The TLS configuration could not be built.
    #[error("{service} service TLS: {source}")]
    Tls {
        /// Which service.
        service: &'static str,
        /// Why.
        #[source]
        source: rustls::Error,
    },
}

/// A lazily connecting channel to the control-plane service `service`
/// (a label: `destination`, `policy`, `identity`) at `addr`: plaintext
/// on loopback, else TLS with `tls` verifying `addr.name`.
pub fn channel(
    service: &'static str,
    addr: &ControlAddr,
    tls: Option<&ControlTls>,
) -> Result<Channel, ChannelError> {
    let endpoint = Endpoint::from_shared(format!("http://{}", addr.addr))
        .map_err(|source| ChannelError::Addr {
            service,
            addr: addr.addr.clone(),
            source,
        })?
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(3));
    if linnet_core::addr::is_loopback_authority(&addr.addr) {
        return Ok(endpoint.connect_timeout(TCP_CONNECT_TIMEOUT).connect_lazy());
    }
    let name = addr.name.as_deref().ok_or_else(|| ChannelError::NoName {
        service,
        addr: addr.addr.clone(),
    })?;
    let tls = tls.ok_or_else(|| ChannelError::NoTrustAnchors {
        service,
        addr: addr.addr.clone(),
    })?;
    let bad_name = || ChannelError::BadName {
        service,
        name: name.to_string(),
    };
    let id = match Id::parse(name) {
        Ok(id @ Id::Dns(_)) => id,
        _ => return Err(bad_name()),
    };
    let server_name = ServerName::try_from(id.to_string()).map_err(|_| bad_name())?;
    let config = linnet_tls::client_config(
        &tls.anchors,
        tls.creds.clone(),
        id.clone(),
        vec![b"h2".to_vec()],
    )
    .map_err(|source| ChannelError::Tls { service, source })?;
    let connector = TlsConnect {
        inner: Arc::new(Inner {
            service,
            addr: addr.addr.clone(),
            identity: id,
            server_name,
            tls: TlsConnector::from(Arc::new(config)),
            metrics: tls.metrics.clone(),
        }),
    };
    // The connector bounds each step itself (and counts what failed);
    // tonic's timeout is the outer bound.
    Ok(endpoint
        .connect_timeout(TCP_CONNECT_TIMEOUT + HANDSHAKE_TIMEOUT + Duration::from_secs(1))
        .connect_with_connector_lazy(connector))
}

// === impl TlsConnect ===

/// Dials the service and does the TLS handshake; tonic calls it for
/// every (re)connection.
#[derive(Clone, Debug)]
struct TlsConnect {
    inner: Arc<Inner>,
}

struct Inner {
    service: &'static str,
    /// `host:port`, resolved at each connection.
    addr: String,
    identity: Id,
    server_name: ServerName<'static>,
    tls: TlsConnector,
    metrics: Metrics,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("service", &self.service)
            .field("addr", &self.addr)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

type Connecting =
    Pin<Box<dyn Future<Output = Result<TokioIo<TlsStream<TcpStream>>, ConnectError>> + Send>>;

impl tower_service::Service<http::Uri> for TlsConnect {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = ConnectError;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move {
            let tcp = tokio::time::timeout(TCP_CONNECT_TIMEOUT, TcpStream::connect(&inner.addr))
                .await
                .map_err(|_| ConnectError::TcpTimeout)?
                .map_err(ConnectError::Tcp)?;
            let _ = tcp.set_nodelay(true);
            let handshake = inner.tls.connect(inner.server_name.clone(), tcp);
            let result = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok(tls)) => return Ok(TokioIo::new(tls)),
                Ok(Err(e)) => ConnectError::Handshake {
                    reason: reason(&e),
                    source: e,
                },
                Err(_) => ConnectError::HandshakeTimeout,
            };
            let reason = match &result {
                ConnectError::Handshake { reason, .. } => *reason,
                _ => "timeout",
            };
            inner.metrics.tls_error(inner.service, reason);
            tracing::warn!(
                service = inner.service, addr = %inner.addr, identity = %inner.identity, reason,
                error = %linnet_core::display_chain(&result),
                "TLS handshake with the control plane failed"
            );
            Err(result)
        })
    }
}

/// A connection to the control plane failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP did not connect in time.
    #[error("TCP connect timed out")]
    TcpTimeout,
    /// TCP failed.
    #[error("TCP connect failed")]
    Tcp(#[source] std::io::Error),
    /// The handshake did not finish in time.
    #[error("TLS handshake timed out")]
    HandshakeTimeout,
    /// The handshake failed: `reason` says how.
    #[error("TLS handshake failed ({reason})")]
    Handshake {
        /// The class of failure, as counted.
        reason: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The class of a handshake failure, for the metric and the log.
fn reason(e: &std::io::Error) -> &'static str {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    match e.get_ref().and_then(|e| e.downcast_ref::<E>()) {
        Some(E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. })) => {
            "wrong_name"
        }
        // A chain to no anchor, or to an anchor's name but not its key
        // (another CA of the same name, as generated CAs often are).
        Some(E::InvalidCertificate(C::UnknownIssuer | C::BadSignature)) => "unknown_ca",
        Some(E::InvalidCertificate(
            C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. },
        )) => "expired",
        Some(E::InvalidCertificate(_)) => "bad_certificate",
        Some(E::AlertReceived(A::NoApplicationProtocol)) | Some(E::NoApplicationProtocol) => "alpn",
        Some(E::AlertReceived(_)) => "alert",
        Some(_) => "protocol",
        None => "io",
    }
}
