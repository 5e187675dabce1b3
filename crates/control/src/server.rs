//! The control plane's server: accept (at most `max_connections` at
//! once), TLS for clients off loopback, HTTP/2 with bounded streams,
//! headers, keepalive and idle time, then the gRPC services routed by
//! service name.
//!
//! What is TLS and when: a connection whose local address (the address
//! the client dialled) is loopback is served in plaintext, as
//! linkerd2-proxy speaks plaintext to a loopback control plane; any other
//! only after a TLS 1.3 handshake (ALPN `h2`) with the control plane's
//! own certificate ([`crate::server_tls`]). A listener bound to loopback
//! never needs the certificate; one bound elsewhere issues it at start,
//! and if it cannot, serves its loopback clients only and closes the
//! rest: never plaintext off loopback.

use crate::{Control, Destination, IdentityService, Inbound, Outbound, server_tls::ServerTls};
use http_body_util::BodyExt as _;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use linkerd2_proxy_api::{
    destination::destination_server::DestinationServer, identity::identity_server::IdentityServer,
    inbound::inbound_server_policies_server::InboundServerPoliciesServer,
    outbound::outbound_policies_server::OutboundPoliciesServer,
};
use std::{convert::Infallible, future::Future, net::SocketAddr, sync::Arc, time::Duration};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::{Semaphore, watch},
};
use tower_service::Service as _;

/// The server's bounds.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Connections served at once; beyond it new ones are closed at once
    /// (`control_server_connections_refused_total`). Each proxy holds
    /// one or two.
    pub max_connections: usize,
    /// How long a client off loopback may take to finish the TLS
    /// handshake (a silent client is closed after it).
    pub handshake_timeout: Duration,
    /// A connection with no open stream for this long is closed (a
    /// client that connects and never sends a request included). Watches
    /// are streams, so a proxy following the mesh is never idle.
    pub idle_timeout: Duration,
    /// How often an HTTP/2 connection is pinged...
    pub keepalive_interval: Duration,
    /// ...and how long a ping may go unanswered before it is closed;
    /// also how long an idle connection has to close gracefully.
    pub keepalive_timeout: Duration,
    /// Streams (watches and calls) one connection may have open.
    pub max_concurrent_streams: u32,
    /// The largest header block a request may send, in bytes.
    pub max_header_list_size: u32,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(20),
            max_concurrent_streams: 10_000,
            max_header_list_size: 16 * 1024,
        }
    }
}

/// Serves the API on `listener` with the default bounds until `shutdown`
/// resolves; open streams are then cut.
pub async fn serve(listener: TcpListener, control: Control, shutdown: impl Future<Output = ()>) {
    serve_with(listener, control, ServeOptions::default(), shutdown).await;
}

/// Serves the API on `listener` with `options` until `shutdown`
/// resolves; open streams are then cut. See the module docs for when
/// connections are TLS.
pub async fn serve_with(
    listener: TcpListener,
    control: Control,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let local = listener.local_addr().ok();
    let tls = match local {
        Some(a) if linnet_core::addr::is_loopback_ip(a.ip()) => {
            tracing::info!(listen = %a, "serving plaintext: the listener is on loopback");
            None
        }
        _ => match ServerTls::start(
            control.ca.clone(),
            control.store.clone(),
            control.metrics.clone(),
        ) {
            Ok(tls) => {
                tracing::info!(listen = ?local, "serving TLS to clients off loopback, plaintext to loopback clients");
                Some(tls)
            }
            Err(error) => {
                tracing::error!(listen = ?local, %error, "cannot set up TLS: serving loopback clients only; every other connection is closed");
                None
            }
        },
    };
    let tls = tls.map(|t| (tokio_rustls::TlsAcceptor::from(t.config.clone()), t));
    let services = Services::new(&control);
    let options = Arc::new(options);
    let permits = Arc::new(Semaphore::new(options.max_connections));
    let metrics = control.metrics.clone();
    let mut conns = tokio::task::JoinSet::new();
    let mut warned_cap = false;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Reap finished connections.
        while conns.try_join_next().is_some() {}
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics.connection_refused();
            // Once at warning level (a flood must not flood the log too);
            // the metric counts every one.
            if std::mem::replace(&mut warned_cap, true) {
                tracing::debug!(%peer, "too many connections; closing a new one");
            } else {
                tracing::warn!(%peer, max_connections = options.max_connections, "too many connections; closing new ones (counted in control_server_connections_refused_total)");
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (services, options, metrics) = (services.clone(), options.clone(), metrics.clone());
        let acceptor = tls.as_ref().map(|(a, _)| a.clone());
        conns.spawn(async move {
            let _permit = permit;
            let _open = metrics.connection_opened();
            let plaintext = stream
                .local_addr()
                .is_ok_and(|a| linnet_core::addr::is_loopback_ip(a.ip()));
            if plaintext {
                return serve_h2(stream, services, &options, peer).await;
            }
            let Some(acceptor) = acceptor else {
                tracing::warn!(%peer, "no TLS to serve a client off loopback with; closing");
                return;
            };
            let handshake = tokio::time::timeout(options.handshake_timeout, acceptor.accept(stream));
            match handshake.await {
                Ok(Ok(tls)) => serve_h2(tls, services, &options, peer).await,
                Ok(Err(error)) => {
                    let reason = handshake_reason(&error);
                    metrics.handshake_failed(reason);
                    tracing::debug!(%peer, reason, %error, "TLS handshake failed");
                }
                Err(_) => {
                    metrics.handshake_failed("timeout");
                    tracing::debug!(%peer, timeout = ?options.handshake_timeout, "TLS handshake timed out");
                }
            }
        });
    }
    drop(tls);
    conns.shutdown().await;
}

/// Serves one connection's HTTP/2 until it ends, or until it has had no
/// open stream for the idle timeout.
async fn serve_h2<I>(io: I, services: Services, options: &ServeOptions, peer: SocketAddr)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (streams, mut open) = watch::channel(0usize);
    let svc = hyper::service::service_fn(move |req| {
        let services = services.clone();
        let guard = StreamGuard::new(streams.clone());
        async move {
            let rsp = services.call(req).await;
            // The stream is open until its response body is dropped:
            // the guard goes with the body.
            Ok::<_, Infallible>(rsp.map(move |body| {
                body.map_frame(move |frame| {
                    let _open = &guard;
                    frame
                })
            }))
        }
    });
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(options.keepalive_interval)
        .keep_alive_timeout(options.keepalive_timeout)
        .max_concurrent_streams(options.max_concurrent_streams)
        .max_header_list_size(options.max_header_list_size)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    // Once idle, the connection is closed gracefully (GOAWAY); a client
    // that never even sent the HTTP/2 preface cannot take part in that,
    // so after the keepalive timeout it is dropped.
    let force = tokio::time::sleep(Duration::MAX);
    tokio::pin!(force);
    let mut closing = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(error) = r {
                    tracing::debug!(%peer, %error, "control-plane client connection ended");
                }
                return;
            }
            _ = idle(&mut open, options.idle_timeout), if !closing => {
                tracing::debug!(%peer, "closing an idle connection");
                closing = true;
                conn.as_mut().graceful_shutdown();
                force.as_mut().reset(tokio::time::Instant::now() + options.keepalive_timeout);
            }
            _ = &mut force, if closing => {
                tracing::debug!(%peer, "an idle connection did not close in time; dropping it");
                return;
            }
        }
    }
}

/// Resolves once no stream has been open for `timeout`.
async fn idle(open: &mut watch::Receiver<usize>, timeout: Duration) {
    loop {
        if open.wait_for(|n| *n == 0).await.is_err() {
            return std::future::pending().await;
        }
        tokio::select! {
            _ = tokio::time::sleep(timeout) => return,
            r = open.changed() => if r.is_err() {
                return std::future::pending().await;
            },
        }
    }
}

/// Counts a stream as open until dropped.
struct StreamGuard(watch::Sender<usize>);

impl StreamGuard {
    fn new(tx: watch::Sender<usize>) -> Self {
        tx.send_modify(|n| *n += 1);
        Self(tx)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// The class of a failed server handshake, for the metric.
fn handshake_reason(e: &std::io::Error) -> &'static str {
    use linnet_tls::rustls::Error as E;
    match e.get_ref().and_then(|e| e.downcast_ref::<E>()) {
        Some(E::InvalidCertificate(_)) => "bad_client_certificate",
        Some(E::AlertReceived(_)) => "alert",
        Some(E::NoApplicationProtocol) => "alpn",
        Some(
            E::InvalidMessage(_)
            | E::InappropriateHandshakeMessage { .. }
            | E::InappropriateMessage { .. },
        ) => "not_tls",
        Some(E::PeerIncompatible(_)) => "incompatible",
        Some(_) => "protocol",
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => "eof",
        None => "io",
    }
}

/// The gRPC services, routed by the request path's service name.
#[derive(Clone)]
struct Services {
    destination: DestinationServer<Destination>,
    identity: IdentityServer<IdentityService>,
    inbound: InboundServerPoliciesServer<Inbound>,
    outbound: OutboundPoliciesServer<Outbound>,
}

impl Services {
    fn new(c: &Control) -> Self {
        let (store, metrics) = (c.store.clone(), c.metrics.clone());
        Self {
            destination: DestinationServer::new(Destination {
                store: store.clone(),
                metrics: metrics.clone(),
            }),
            identity: IdentityServer::new(IdentityService {
                ca: c.ca.clone(),
                store: store.clone(),
                metrics: metrics.clone(),
            }),
            inbound: InboundServerPoliciesServer::new(Inbound {
                store: store.clone(),
                metrics: metrics.clone(),
            }),
            outbound: OutboundPoliciesServer::new(Outbound { store, metrics }),
        }
    }

    async fn call(
        mut self,
        req: http::Request<hyper::body::Incoming>,
    ) -> http::Response<tonic::body::Body> {
        let path = req.uri().path();
        let service = path.trim_start_matches('/').split('/').next().unwrap_or("");
        let rsp = match service {
            "io.linkerd.proxy.destination.Destination" => self.destination.call(req).await,
            "io.linkerd.proxy.identity.Identity" => self.identity.call(req).await,
            "io.linkerd.proxy.inbound.InboundServerPolicies" => self.inbound.call(req).await,
            "io.linkerd.proxy.outbound.OutboundPolicies" => self.outbound.call(req).await,
            _ => Ok(tonic::Status::unimplemented(format!("no service for {path}")).into_http()),
        };
        rsp.unwrap_or_else(|e| match e {})
    }
}
