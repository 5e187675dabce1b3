//! Clients to one target: connection pools for HTTP/1 and HTTP/2.
//!
//! An [`Upstream`] is shared by every client connection to the same target
//! (original destination), so that keep-alive connections are reused
//! across them and HTTP/2 requests multiplex over one connection. Its
//! connector always dials the target, whatever the request's authority:
//! routing is by original destination; the authority travels untouched.
//! A target can also be a name's addresses (explicit proxy mode), dialled
//! with happy eyeballs: each new connection goes to the first that
//! accepts.

use hyper_util::{
    client::legacy::{
        Client,
        connect::{Connected, Connection},
    },
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use linnet_config::HttpConfig;
use linnet_metrics::{
    Direction,
    mesh::MeshMetrics,
    tcp::{Peer, TcpMetrics, Tls},
};
use linnet_tls::PeerTls;
use linnet_transport::{CountingIo, resolve::Addrs};
use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_util::either::Either;

/// The body of a request sent upstream: the client's, streamed (boxed, so
/// that a size limit can be put in front of it).
pub type RequestBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, linnet_core::Error>;

/// Idle connections kept per target and protocol.
const MAX_IDLE_PER_TARGET: usize = 64;
/// How long an idle pooled connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// How to reach a target.
#[derive(Clone, Debug)]
pub struct ConnectConfig {
    /// Time for the target to accept.
    pub timeout: Duration,
    /// TCP keepalive on the connection.
    pub keepalive: Option<Duration>,
}

/// Where an [`Upstream`]'s connections are counted.
#[derive(Clone, Debug)]
pub struct UpstreamMetrics {
    /// Its connections, as the `dst` side.
    pub tcp: TcpMetrics,
    /// Its refusals of a meshed target that mTLS could not prove.
    pub mesh: MeshMetrics,
}

/// The pooled clients for one target.
#[derive(Debug)]
pub struct Upstream {
    target: Addrs,
    /// How the target is reached: plaintext, mTLS proving its identity,
    /// or not at all.
    tls: PeerTls,
    /// Whether HTTP/1 requests travel to it as HTTP/2 (a meshed peer that
    /// said it takes HTTP/2), restored on its side from `l5d-orig-proto`.
    upgrade_h1: bool,
    h1: Client<Connector, RequestBody>,
    /// HTTP/1 for requests that arrived in absolute form
    /// (`GET http://host/path`): its connections are marked as proxied, so
    /// the request line is passed on in absolute form, as it came.
    h1_absolute: Client<Connector, RequestBody>,
    h2: Client<Connector, RequestBody>,
    /// The connector itself, for byte tunnels (`CONNECT`).
    connector: Connector,
}

impl Upstream {
    /// Clients for `target` (an address, or a name's addresses); their
    /// connections are counted in `metrics` as the `dst` side.
    pub fn new(
        target: impl Into<Addrs>,
        config: ConnectConfig,
        http: &HttpConfig,
        metrics: UpstreamMetrics,
        direction: Direction,
        tls: PeerTls,
        upgrade_h1: bool,
    ) -> Self {
        let target = target.into();
        let connector = Connector {
            target: target.clone(),
            config,
            metrics: metrics.tcp,
            mesh_metrics: metrics.mesh,
            direction,
            absolute_form: false,
            tls: tls.clone(),
        };
        let mut h1 = Client::builder(TokioExecutor::new());
        h1.pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_max_idle_per_host(MAX_IDLE_PER_TARGET)
            // The request's own Host (or its absence) travels as is.
            .set_host(false)
            .http1_preserve_header_case(true);
        let mut h2 = h1.clone();
        let adaptive = http.http2_adaptive_window;
        h2.http2_only(true)
            .http2_adaptive_window(adaptive)
            .http2_initial_stream_window_size(http.http2_initial_stream_window_size)
            .http2_initial_connection_window_size(http.http2_initial_connection_window_size)
            .http2_keep_alive_interval(http.http2_keepalive_interval)
            .http2_keep_alive_timeout(http.http2_keepalive_timeout);
        Self {
            target,
            upgrade_h1: upgrade_h1 && matches!(tls, PeerTls::Mesh(_)),
            tls,
            h1: h1.build(connector.clone()),
            h1_absolute: h1.build(Connector {
                absolute_form: true,
                ..connector.clone()
            }),
            h2: h2.build(connector.clone()),
            connector,
        }
    }

    /// A connection to the target for a byte tunnel (`CONNECT`), made the
    /// way the clients' are: mTLS proving the target's identity when it is
    /// meshed, or refused; counted as the `dst` side.
    pub async fn connect(&self) -> Result<UpstreamIo, linnet_core::Error> {
        let mut connector = self.connector.clone();
        let io = tower_service::Service::call(&mut connector, http::Uri::default()).await?;
        Ok(io.into_inner())
    }

    /// The identity the target must prove over mTLS, when it is meshed
    /// (connections to it fail when it cannot be proven).
    pub fn peer_identity(&self) -> Option<&str> {
        self.tls.identity()
    }

    /// How the target is reached.
    pub fn tls(&self) -> &PeerTls {
        &self.tls
    }

    /// Whether HTTP/1 requests to it are carried as HTTP/2 (meshed, and
    /// hinted so).
    pub fn upgrades_h1(&self) -> bool {
        self.upgrade_h1
    }

    /// The target (for a name, the address tried first).
    pub fn target(&self) -> SocketAddr {
        self.target.first()
    }

    /// The target's addresses.
    pub fn addrs(&self) -> &Addrs {
        &self.target
    }

    /// The client for `version`; for HTTP/1, `absolute_form` picks the
    /// one that keeps absolute-form request targets.
    pub fn client(
        &self,
        version: crate::Version,
        absolute_form: bool,
    ) -> &Client<Connector, RequestBody> {
        match version {
            crate::Version::Http1 if absolute_form => &self.h1_absolute,
            crate::Version::Http1 => &self.h1,
            crate::Version::Http2 => &self.h2,
        }
    }
}

/// Dials the one target of an [`Upstream`] (the first of a name's
/// addresses to accept).
#[derive(Clone, Debug)]
pub struct Connector {
    target: Addrs,
    config: ConnectConfig,
    metrics: TcpMetrics,
    mesh_metrics: MeshMetrics,
    direction: Direction,
    /// Whether its connections carry absolute-form requests.
    absolute_form: bool,
    /// Plaintext, mTLS, or refused: the one rule, decided for the target.
    tls: PeerTls,
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<UpstreamIo>;
    type Error = linnet_core::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, linnet_core::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), linnet_core::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let refused = |this: &Connector, mut e: linnet_tls::FailClosed| {
                e.detail = format!("to {}: {}", this.target, e.detail).into();
                tracing::info!(
                    direction = %this.direction, target = %this.target, rule = e.reason.as_str(),
                    identity = ?e.identity, error = %e.detail,
                    "refusing to reach a meshed peer without mTLS proving its identity"
                );
                this.mesh_metrics
                    .fail_closed(this.direction, e.reason.as_str());
                linnet_core::Error::from(e)
            };
            let mesh = match &this.tls {
                PeerTls::Refuse(e) => return Err(refused(&this, e.clone())),
                // Checked before dialling: no credentials, no connection.
                PeerTls::Mesh(m) => match m.ready() {
                    Ok(()) => Some(m.clone()),
                    Err(e) => return Err(refused(&this, e)),
                },
                PeerTls::Plain => None,
            };
            let (stream, addr) = this
                .target
                .connect(this.config.timeout, this.config.keepalive)
                .await?;
            let Some(mesh) = mesh else {
                let metrics = this
                    .metrics
                    .open(this.direction, Peer::Dst, &Tls::DISABLED, addr);
                return Ok(TokioIo::new(UpstreamIo {
                    io: CountingIo::new(Either::Left(stream), metrics),
                    absolute_form: this.absolute_form,
                }));
            };
            // The peer's identity is checked in the handshake, before a
            // byte of the request is sent.
            let stream = match mesh.connect(stream, this.config.timeout).await {
                Ok(s) => s,
                Err(e) => return Err(refused(&this, e)),
            };
            let metrics = this.metrics.open(
                this.direction,
                Peer::Dst,
                &Tls::mesh(Some(mesh.identity_str().clone())),
                addr,
            );
            Ok(TokioIo::new(UpstreamIo {
                io: CountingIo::new(Either::Right(Box::new(stream)), metrics),
                absolute_form: this.absolute_form,
            }))
        })
    }
}

/// A counted connection to a target.
#[derive(Debug)]
pub struct UpstreamIo {
    io: CountingIo<Either<TcpStream, Box<tokio_rustls::client::TlsStream<TcpStream>>>>,
    absolute_form: bool,
}

impl UpstreamIo {
    /// Makes the connection end with a reset (RST) rather than a FIN when
    /// it closes.
    pub fn reset_on_close(&self) {
        let tcp = match self.io.get_ref() {
            Either::Left(tcp) => tcp,
            Either::Right(tls) => tls.get_ref().0,
        };
        linnet_transport::reset_on_close(tcp);
    }
}

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        // "Proxied" is how hyper-util is told to keep absolute-form targets.
        Connected::new().proxy(self.absolute_form)
    }
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
