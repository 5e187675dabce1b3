//! A connection's path, both directions: accept, find the target,
//! detect, then serve HTTP or copy bytes.
//!
//! The path: accept (keepalive, `TCP_NODELAY`) → original destination
//! (a connection that was not redirected is explicit proxy mode outbound,
//! the transport port inbound, see [`crate::outbound`] and
//! [`crate::inbound`]) → what the control plane says of the target
//! ([`Forward::destination`]: an endpoint, a service with its outbound
//! policy or profile, or undecided) → protocol detection (skipped when a
//! policy declares the protocol or the port is opaque; its bytes are
//! replayed) → HTTP: served by `linnet-http`, each request through the
//! target's outbound stack (`linnet-outbound`: routes, retries,
//! balancers) or to the one endpoint; anything else: the policy's opaque
//! or TLS route, then one endpoint per connection, connected within the
//! connect timeout (mTLS when the endpoint is meshed) and copied both
//! ways until both sides end.
//!
//! Backpressure: none is queued here. Each accepted connection gets its own
//! task and two fixed buffers, and a slow reader slows its writer; the
//! kernel's accept backlog is the only queue. (HTTP requests queue only in
//! a backend's bounded queue, in the outbound stack.)
//!
//! Failure is made visible to the client: if the target cannot be reached
//! or either side fails mid-stream, the other side is reset (RST), never
//! closed with a FIN that would make a truncated stream look complete.

use crate::{
    mesh::{self, HasTcp, MeshTls},
    outbound::{OpaqueRoute, declared, opaque_route, undecided},
    upstreams::Upstreams,
};
use linnet_config::{HttpConfig, ProxyConfig};
use linnet_core::drain;
use linnet_detect::{Detected, PrefixedIo, Protocol, Reason};
use linnet_discovery::{Balancer, Discovery, Endpoint, Logical, Outbound, PickError};
use linnet_http::{InFlight, Proxy, Route, Upstream};
use linnet_metrics::{
    Direction,
    http::HttpMetrics,
    limits::{Idle, LimitMetrics},
    mesh::MeshMetrics,
    tcp::{CloseReason, ConnMetrics, Peer, TcpMetrics, Tls},
};
use linnet_tls::{FailClosed, FailReason, PeerTls};
use linnet_transport::{
    Accepted, CopyError, CountingIo, OrigDst, connect, duplex,
    duplex::{Side, Transferred},
    reset_on_close,
};
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::either::Either;

/// One direction's forwarding: what every connection of that listener needs.
#[derive(Debug)]
pub(crate) struct Forward {
    pub(crate) direction: Direction,
    pub(crate) config: ProxyConfig,
    pub(crate) orig_dst: OrigDst,
    pub(crate) metrics: TcpMetrics,
    pub(crate) http_metrics: HttpMetrics,
    /// Names resolved in explicit proxy mode.
    pub(crate) resolve_metrics: linnet_metrics::resolve::ResolveMetrics,
    /// Refusals of meshed targets that mTLS could not prove.
    pub(crate) mesh_metrics: MeshMetrics,
    /// Connection limits and idle timeouts hit.
    pub(crate) limit_metrics: LimitMetrics,
    /// Where meshed workloads may be (`DESTINATION_PROFILE_NETWORKS`):
    /// only these addresses are looked up, and wait for the answer.
    pub(crate) profile_networks: Vec<linnet_config::parse::Network>,
    /// HTTP clients by target (and the identity it must present, for a
    /// meshed one), shared by all connections to that target.
    pub(crate) upstreams: Arc<Upstreams>,
    /// The outbound HTTP stacks of logical targets (outbound only).
    pub(crate) stacks: Option<crate::stacks::LogicalStacks>,
    /// The listener's bound on requests at once.
    pub(crate) in_flight: InFlight,
    /// HTTP settings.
    pub(crate) http: HttpConfig,
    /// The control plane's answers, when one is configured.
    pub(crate) discovery: Option<Discovery>,
    /// mTLS with meshed peers, when this proxy has an identity.
    pub(crate) mesh: Option<Arc<MeshTls>>,
    /// The inbound listener's server policies (inbound only).
    pub(crate) inbound: Option<Arc<crate::inbound::InboundPolicy>>,
}

/// Where a connection's bytes or requests go.
pub(crate) enum Dest {
    /// One address (with its identity, when the control plane names one).
    Addr(Arc<Endpoint>),
    /// A discovered service: its HTTP stack (routes, balancers), or for
    /// opaque bytes one endpoint per connection.
    Balanced(
        Balancer,
        Logical,
        Option<tokio::sync::watch::Receiver<Option<linnet_discovery::Profile>>>,
    ),
    /// Nowhere: the control plane did not say in time whether the target
    /// is meshed.
    Undecided(Duration),
}

/// What the control plane declares of an outbound connection's protocol.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Declared {
    /// Opaque: no protocol detection.
    pub(crate) opaque: bool,
    /// The outbound policy declares HTTP/1 or HTTP/2 (gRPC): served as
    /// that without detection.
    pub(crate) http: Option<linnet_http::Version>,
}

/// Accepts connections until draining starts, then closes the listener.
/// A connection beyond the listener's `max_connections` is reset at once
/// and counted; an accept error (EMFILE and friends) is logged, counted
/// and followed by a short pause, so the loop does not spin while the
/// condition lasts.
pub(crate) async fn serve(listener: TcpListener, fwd: Arc<Forward>, watch: drain::Watch) {
    let mut own = watch.clone();
    let draining = own.draining();
    tokio::pin!(draining);
    let open = Arc::new(tokio::sync::Semaphore::new(fwd.config.max_connections));
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut draining => break,
            a = linnet_transport::listen::accept(&listener, fwd.config.accept_keepalive) => a,
        };
        match accepted {
            Ok(conn) => match open.clone().try_acquire_owned() {
                Ok(permit) => {
                    let (fwd, watch) = (fwd.clone(), watch.clone());
                    tokio::spawn(async move {
                        fwd.forward(conn, watch).await;
                        drop(permit);
                    });
                }
                Err(_) => {
                    tracing::debug!(direction = %fwd.direction, client = %conn.client, max = fwd.config.max_connections, "refusing connection: the listener has its maximum open");
                    fwd.limit_metrics.connection_limit(fwd.direction);
                    fwd.refuse(
                        &conn.stream,
                        conn.client,
                        CloseReason::error("connection_limit", None),
                    );
                }
            },
            Err(error) => {
                tracing::warn!(direction = %fwd.direction, %error, "failed to accept a connection");
                fwd.metrics.accept_error(fwd.direction, &error);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    tracing::debug!(direction = %fwd.direction, "listener closed");
}

impl Forward {
    pub(crate) async fn forward(self: Arc<Self>, conn: Accepted, mut watch: drain::Watch) {
        let Accepted {
            stream: mut client,
            client: client_addr,
        } = conn;
        let direction = self.direction;
        let target = match self.orig_dst.lookup_redirected(&client) {
            Ok(Some(target)) if direction == Direction::Inbound => {
                return match self.inbound.clone() {
                    Some(p) => self.inbound(p, client, client_addr, target, watch).await,
                    None => {
                        self.refuse(&client, client_addr, CloseReason::error("no_policy", None))
                    }
                };
            }
            Ok(Some(target)) => target,
            Ok(None) if direction == Direction::Outbound => {
                // Dialled directly: HTTP is served in explicit proxy mode.
                return self.explicit(client, client_addr, watch).await;
            }
            Ok(None) if self.mesh.is_some() && self.inbound.is_some() => {
                // Meshed peers dial the inbound port itself.
                let Some(p) = self.inbound.clone() else {
                    return;
                };
                return self.direct(p, client, client_addr, watch).await;
            }
            Ok(None) => {
                tracing::warn!(
                    %direction, client = %client_addr,
                    "refusing connection: its original destination is this proxy (not redirected, or a loop)"
                );
                return self.refuse(&client, client_addr, CloseReason::error("loop", None));
            }
            Err(error) => {
                tracing::warn!(%direction, client = %client_addr, %error, "refusing connection: cannot read its original destination");
                return self.refuse(
                    &client,
                    client_addr,
                    CloseReason::error("orig_dst", Some(&error)),
                );
            }
        };

        let (dest, declared) = self.destination(target).await;
        let opaque = declared.opaque;
        let skip = match declared.http {
            Some(linnet_http::Version::Http1) => Some(Protocol::Http1),
            Some(linnet_http::Version::Http2) => Some(Protocol::Http2),
            None => opaque.then_some(Protocol::Opaque),
        };
        let Some(detected) = self
            .detect(&mut client, client_addr, target, skip, &mut watch)
            .await
        else {
            return;
        };
        let detected_sni = match &detected.protocol {
            Protocol::Tls { sni } => Some(sni.clone()),
            _ => None,
        };
        let tls = match &detected.protocol {
            Protocol::Tls { sni } => Tls {
                status: "opaque",
                sni: sni.as_deref().map(Arc::from),
                peer_id: None,
            },
            _ => Tls::DISABLED,
        };
        // Whatever takes the connection reads the detected bytes first.
        let client = PrefixedIo::new(detected.buffered.freeze(), client);
        let version = match detected.protocol {
            Protocol::Http1 => Some(linnet_http::Version::Http1),
            Protocol::Http2 => Some(linnet_http::Version::Http2),
            Protocol::Tls { .. } | Protocol::Opaque => None,
        };
        if let Some(version) = version {
            let route = match dest {
                Dest::Addr(e) => Route::Target(self.upstream_for(
                    e.addr,
                    e.identity.as_deref(),
                    e.server_name.as_deref(),
                    e.hint == linnet_discovery::Hint::H2,
                )),
                Dest::Balanced(_, logical, profile) => match &self.stacks {
                    Some(stacks) => Route::Stack {
                        stack: stacks.get(target, logical, profile),
                        target,
                    },
                    // (Only outbound discovers services.)
                    None => Route::Target(Arc::new(self.upstreams.build(
                        target,
                        PeerTls::Refuse(undecided(target, Duration::ZERO)),
                        false,
                    ))),
                },
                // Every request fails, saying why.
                Dest::Undecided(waited) => Route::Target(Arc::new(self.upstreams.build(
                    target,
                    PeerTls::Refuse(undecided(target, waited)),
                    false,
                ))),
            };
            return self
                .serve_http(client, client_addr, version, target, route, watch)
                .await;
        }
        let (target, endpoint) = match dest {
            Dest::Addr(e) => (e.addr, Some(e)),
            Dest::Balanced(balancer, logical, _profile) => {
                match opaque_route(&logical, &detected_sni) {
                    OpaqueRoute::Refuse(why) => {
                        tracing::info!(%direction, client = %client_addr, %target, reason = %why, "refusing connection: its route forbids it");
                        let src = self.metrics.open(direction, Peer::Src, &tls, target);
                        src.close(CloseReason::error("forbidden", None));
                        reset_on_close(client.get_ref());
                        return;
                    }
                    route => match match route {
                        OpaqueRoute::Backends(b) => balancer.pick_among(&b).await,
                        _ => balancer.pick().await,
                    } {
                        Ok(endpoint) => (endpoint.addr, Some(endpoint)),
                        Err(PickError::Timeout(authority)) => {
                            let e = FailClosed::new(
                                FailReason::DiscoveryTimeout,
                                format!(
                                    "the control plane did not answer in time about {authority}, whose endpoints may be meshed"
                                ),
                                None,
                            );
                            return self.refuse_meshed(
                                client.get_ref(),
                                client_addr,
                                target,
                                &tls,
                                &e,
                            );
                        }
                        Err(error) => {
                            tracing::info!(%direction, client = %client_addr, %target, %error, "no endpoint for the connection");
                            let src = self.metrics.open(direction, Peer::Src, &tls, target);
                            src.close(CloseReason::error("no_endpoints", None));
                            reset_on_close(client.get_ref());
                            return;
                        }
                    },
                }
            }
            Dest::Undecided(waited) => {
                let e = undecided(target, waited);
                return self.refuse_meshed(client.get_ref(), client_addr, target, &tls, &e);
            }
        };

        self.connect_and_relay(client, client_addr, target, endpoint, tls, None, watch)
            .await;
    }

    /// Connects to `target` (over mTLS when the endpoint is meshed and this
    /// proxy has an identity; to its proxy's transport port with a
    /// transport header when it has one) and relays bytes both ways; an
    /// inbound connection (`authorized`) for as long as its port's policy
    /// admits it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn connect_and_relay<C>(
        &self,
        client: C,
        client_addr: SocketAddr,
        target: SocketAddr,
        endpoint: Option<Arc<linnet_discovery::Endpoint>>,
        tls: Tls,
        authorized: Option<linnet_inbound::Conn>,
        mut watch: drain::Watch,
    ) where
        C: AsyncRead + AsyncWrite + Unpin + HasTcp,
    {
        let direction = self.direction;
        let transport_port = endpoint.as_ref().and_then(|e| e.opaque_transport_port);
        // The one rule: a meshed endpoint is reached over mTLS proving its
        // identity, at its proxy's transport port with a transport header
        // when it has one, else at the target port itself (its proxy
        // terminates the mTLS and detects what is inside); or not at all.
        let peer = match &endpoint {
            Some(e) => mesh::peer_tls(
                self.mesh.as_deref(),
                e.identity.as_deref(),
                e.server_name.as_deref(),
                transport_port.is_some(),
            ),
            None => PeerTls::Plain,
        };
        let meshed = match peer {
            PeerTls::Plain => None,
            PeerTls::Mesh(m) => Some(m),
            PeerTls::Refuse(e) => {
                return self.refuse_meshed(client.tcp(), client_addr, target, &tls, &e);
            }
        };
        if let Some(e) = meshed.as_ref().and_then(|m| m.ready().err()) {
            return self.refuse_meshed(client.tcp(), client_addr, target, &tls, &e);
        }
        let dst_tls = match &meshed {
            Some(m) => Tls::mesh(Some(m.identity_str().clone())),
            None => tls.clone(),
        };
        let src = self.metrics.open(direction, Peer::Src, &tls, target);
        let connect_to = match (&meshed, transport_port) {
            (Some(_), Some(port)) => SocketAddr::new(target.ip(), port),
            _ => target,
        };
        let connecting = async {
            let tcp = connect(
                connect_to,
                self.config.connect_timeout,
                self.config.connect_keepalive,
            )
            .await
            .map_err(|e| {
                let reason = CloseReason::error(e.reason(), e.io());
                (reason, linnet_core::display_chain(&e))
            })?;
            let Some(mesh) = &meshed else {
                return Ok(Either::Left(tcp));
            };
            let mut stream = match mesh.connect(tcp, self.config.connect_timeout).await {
                Ok(s) => s,
                Err(e) => {
                    self.count_fail_closed(client_addr, target, &e);
                    return Err((CloseReason::error("tls_fail_closed", None), e.to_string()));
                }
            };
            if transport_port.is_some() {
                use tokio::io::AsyncWriteExt;
                let header = linnet_transport::header::TransportHeader {
                    port: target.port(),
                    name: None,
                    protocol: None,
                };
                stream.write_all(&header.encode()).await.map_err(|e| {
                    (
                        CloseReason::error("io", Some(&e)),
                        format!("sending the transport header: {e}"),
                    )
                })?;
            }
            Ok(Either::Right(stream))
        };
        let server = tokio::select! {
            r = connecting => match r {
                Ok(s) => s,
                Err((reason, error)) => {
                    tracing::info!(%direction, client = %client_addr, %target, %connect_to, %error, "connection to target failed");
                    src.close(reason);
                    reset_on_close(client.tcp());
                    return;
                }
            },
            _ = watch.closing() => {
                src.close(CloseReason::error("shutdown", None));
                reset_on_close(client.tcp());
                return;
            }
        };
        self.relay(
            client,
            client_addr,
            server,
            target,
            src,
            &dst_tls,
            authorized,
            watch,
        )
        .await;
    }

    /// Copies bytes both ways until both sides end; a failure on one side
    /// resets the other, and so does a policy change that no longer
    /// admits the connection (`authorized`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn relay<C, S>(
        &self,
        mut client: C,
        client_addr: SocketAddr,
        mut server: S,
        target: SocketAddr,
        src: ConnMetrics,
        dst_tls: &Tls,
        authorized: Option<linnet_inbound::Conn>,
        mut watch: drain::Watch,
    ) where
        C: AsyncRead + AsyncWrite + Unpin + HasTcp,
        S: AsyncRead + AsyncWrite + Unpin + HasTcp,
    {
        let direction = self.direction;
        let dst = self.metrics.open(direction, Peer::Dst, dst_tls, target);
        let copy = duplex(
            Side {
                io: &mut client,
                read_bytes: &src.read_bytes,
                write_bytes: &src.write_bytes,
            },
            Side {
                io: &mut server,
                read_bytes: &dst.read_bytes,
                write_bytes: &dst.write_bytes,
            },
            Some(self.config.tcp_idle_timeout),
        );
        let revoked = async {
            match authorized {
                Some(mut conn) => linnet_inbound::accept::revoked(&mut conn).await,
                None => std::future::pending().await,
            }
        };
        let result = tokio::select! {
            r = copy => Some(Ok(r)),
            denied = revoked => Some(Err(denied)),
            _ = watch.closing() => None,
        };
        match result {
            Some(Err(denied)) => {
                tracing::info!(%direction, client = %client_addr, %target, reason = %denied, "closing connection: the port's policy no longer admits it");
                src.close(CloseReason::error("unauthorized", None));
                dst.close(CloseReason::error("unauthorized", None));
                reset_both(client.tcp(), server.tcp());
            }
            Some(Ok(Ok(Transferred {
                src_to_dst,
                dst_to_src,
            }))) => {
                tracing::debug!(%direction, client = %client_addr, %target, src_to_dst, dst_to_src, "connection closed");
                src.close(CloseReason::CLEAN);
                dst.close(CloseReason::CLEAN);
            }
            Some(Ok(Err(error))) if error.is_idle() => {
                tracing::info!(%direction, client = %client_addr, %target, idle = ?self.config.tcp_idle_timeout, "closing connection: idle for longer than TCP_IDLE_TIMEOUT");
                self.limit_metrics.idle(direction, Idle::Tcp);
                src.close(CloseReason::error("idle", None));
                dst.close(CloseReason::error("idle", None));
                reset_both(client.tcp(), server.tcp());
            }
            Some(Ok(Err(error))) => {
                tracing::info!(%direction, client = %client_addr, %target, error = %linnet_core::display_chain(&error), "connection failed");
                let CopyError {
                    side, ref source, ..
                } = error;
                let failed = CloseReason::error("io", Some(source));
                let other = CloseReason::error("peer_failed", None);
                let (src_reason, dst_reason) = match side {
                    Peer::Src => (failed, other),
                    Peer::Dst => (other, failed),
                };
                src.close(src_reason);
                dst.close(dst_reason);
                reset_both(client.tcp(), server.tcp());
            }
            None => {
                tracing::info!(%direction, client = %client_addr, %target, "closing connection: shutdown grace period ended");
                src.close(CloseReason::error("shutdown", None));
                dst.close(CloseReason::error("shutdown", None));
                reset_both(client.tcp(), server.tcp());
            }
        }
    }
}

impl Forward {
    /// Serves an HTTP connection: requests go to the target through the
    /// shared upstream clients.
    pub(crate) async fn serve_http<C>(
        &self,
        client: C,
        client_addr: SocketAddr,
        version: linnet_http::Version,
        target: SocketAddr,
        route: Route,
        watch: drain::Watch,
    ) where
        C: AsyncRead + AsyncWrite + Unpin + Send + HasTcp + 'static,
    {
        self.serve_http_as(client, client_addr, version, target, route, None, watch)
            .await;
    }

    /// [`Self::serve_http`], for a client whose mesh identity (`client_id`)
    /// was verified by mTLS, when it was.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn serve_http_as<C>(
        &self,
        client: C,
        client_addr: SocketAddr,
        version: linnet_http::Version,
        target: SocketAddr,
        route: Route,
        mtls: Option<Option<linnet_tls::Id>>,
        watch: drain::Watch,
    ) where
        C: AsyncRead + AsyncWrite + Unpin + Send + HasTcp + 'static,
    {
        let direction = self.direction;
        let tls = if let Some(id) = &mtls {
            Tls::mesh(id.as_ref().map(|id| Arc::from(id.to_string())))
        } else {
            Tls::DISABLED
        };
        let src = self.metrics.open(direction, Peer::Src, &tls, target);
        let reset = linnet_http::ResetFlag::default();
        let io = ResetOnDrop {
            io: CountingIo::new(client, src),
            flag: reset.clone(),
        };
        let client_id = mtls.flatten().map(|id| id.to_string());
        let proxy = Proxy::new(
            route,
            self.in_flight.clone(),
            self.http.max_request_body_size,
            version,
            self.http_metrics.clone(),
            direction,
            tls.status,
        )
        .with_client_id(client_id.as_deref())
        .with_connection(linnet_http::Connection {
            reset,
            tunnel_idle_timeout: self.config.tcp_idle_timeout,
            limits: self.limit_metrics.clone(),
        });
        if let Err(error) = linnet_http::serve(io, version, proxy, &self.http, watch).await {
            tracing::debug!(%direction, client = %client_addr, %target, %error, "HTTP connection ended with an error");
        }
    }

    /// The shared clients for `target` (the application, inbound).
    pub(crate) fn upstream(&self, target: SocketAddr) -> Arc<Upstream> {
        self.upstreams.get(target, None, None, false)
    }

    /// The shared clients for `target`, which the control plane names
    /// with `identity` (reached with `sni`) when it is meshed.
    pub(crate) fn upstream_for(
        &self,
        target: SocketAddr,
        identity: Option<&str>,
        sni: Option<&str>,
        h2: bool,
    ) -> Arc<Upstream> {
        self.upstreams.get(target, identity, sni, h2)
    }

    /// Counts and logs a meshed target that was not reached because mTLS
    /// proving it could not be done.
    pub(crate) fn count_fail_closed(
        &self,
        client_addr: SocketAddr,
        target: SocketAddr,
        e: &FailClosed,
    ) {
        tracing::info!(
            direction = %self.direction, client = %client_addr, %target,
            rule = e.reason.as_str(), identity = ?e.identity, error = %e.detail,
            "refusing to reach a meshed peer without mTLS proving its identity"
        );
        self.mesh_metrics
            .fail_closed(self.direction, e.reason.as_str());
    }

    /// Resets a client whose target is meshed (or may be) and cannot be
    /// reached over mTLS: counted, logged, never plaintext.
    pub(crate) fn refuse_meshed(
        &self,
        client: &TcpStream,
        client_addr: SocketAddr,
        target: SocketAddr,
        tls: &Tls,
        e: &FailClosed,
    ) {
        self.count_fail_closed(client_addr, target, e);
        self.metrics.refused(
            self.direction,
            Peer::Src,
            tls,
            target,
            CloseReason::error("tls_fail_closed", None),
        );
        reset_on_close(client);
    }

    /// Refuses a connection that has no target: counted under the
    /// listener's own address, and reset.
    pub(crate) fn refuse(&self, client: &TcpStream, client_addr: SocketAddr, reason: CloseReason) {
        let local = client.local_addr().unwrap_or(client_addr);
        self.metrics
            .refused(self.direction, Peer::Src, &Tls::DISABLED, local, reason);
        reset_on_close(client);
    }

    /// Detects the client's protocol, unless the target port skips it.
    /// `None` when the client failed or shutdown ended the wait (already
    /// counted and reset).
    pub(crate) async fn detect(
        &self,
        client: &mut TcpStream,
        client_addr: SocketAddr,
        target: SocketAddr,
        skip: Option<Protocol>,
        watch: &mut drain::Watch,
    ) -> Option<Detected> {
        let direction = self.direction;
        let skip = skip.or_else(|| {
            self.config
                .ports_disable_protocol_detection
                .contains(target.port())
                .then_some(Protocol::Opaque)
        });
        if let Some(protocol) = skip {
            self.metrics
                .detected(direction, protocol.as_str(), "skipped");
            return Some(Detected {
                protocol,
                reason: Reason::Matched,
                buffered: Default::default(),
            });
        }
        let failed = |client: &TcpStream, reason: CloseReason| {
            self.metrics
                .refused(direction, Peer::Src, &Tls::DISABLED, target, reason);
            reset_on_close(client);
        };
        let result = tokio::select! {
            r = linnet_detect::detect(&mut *client, self.config.detect_timeout) => r,
            _ = watch.closing() => {
                failed(client, CloseReason::error("shutdown", None));
                return None;
            }
        };
        match result {
            Ok(d) => {
                let reason = match d.reason {
                    Reason::Matched => "matched",
                    Reason::Timeout => "timeout",
                    Reason::Eof => "eof",
                    Reason::BufferFull => "buffer_full",
                };
                self.metrics
                    .detected(direction, d.protocol.as_str(), reason);
                tracing::debug!(%direction, client = %client_addr, %target, protocol = d.protocol.as_str(), reason, "detected");
                Some(d)
            }
            Err(error) => {
                tracing::info!(%direction, client = %client_addr, %target, %error, "client failed during protocol detection");
                failed(client, CloseReason::error("io", Some(&error)));
                None
            }
        }
    }
}

impl Forward {
    /// Where a redirected connection to `target` goes, and what the
    /// control plane declares of its protocol.
    pub(crate) async fn destination(&self, target: SocketAddr) -> (Dest, Declared) {
        let plain = || Dest::Addr(linnet_discovery::plain(target));
        let opaque = |opaque| Declared { opaque, http: None };
        let Some(discovery) = &self.discovery else {
            return (plain(), Declared::default());
        };
        match self.direction {
            Direction::Outbound if discovery.has_destination() || discovery.has_policy() => {
                if !self.in_profile_networks(target.ip()) {
                    // Outside the mesh's networks: never meshed.
                    return (plain(), Declared::default());
                }
                match discovery.outbound(target).await {
                    Outbound::Forward {
                        opaque: o,
                        endpoint,
                    } => (
                        Dest::Addr(endpoint.unwrap_or_else(|| linnet_discovery::plain(target))),
                        opaque(o),
                    ),
                    Outbound::Service {
                        opaque: o,
                        logical,
                        balancer,
                        profile,
                    } => {
                        use linnet_policy::outbound::Declared as D;
                        let declared = declared(&logical);
                        let http = match declared {
                            Some(D::Http1) => Some(linnet_http::Version::Http1),
                            Some(D::Http2 | D::Grpc) => Some(linnet_http::Version::Http2),
                            _ => None,
                        };
                        // TLS routes need the ClientHello's SNI: detected.
                        let tls = declared == Some(D::Tls);
                        let declared = Declared {
                            http,
                            ..opaque(o && http.is_none() && !tls)
                        };
                        (Dest::Balanced(balancer, logical, profile), declared)
                    }
                    Outbound::Undecided { waited } => {
                        (Dest::Undecided(waited), Declared::default())
                    }
                }
            }
            _ => (plain(), Declared::default()),
        }
    }

    /// Whether `ip` is where meshed workloads may be.
    pub(crate) fn in_profile_networks(&self, ip: std::net::IpAddr) -> bool {
        self.profile_networks.iter().any(|n| n.contains(ip))
    }
}

/// A served HTTP connection that closes with a reset (RST), not a FIN,
/// once the proxy has set its flag: a failed response body or tunnel must
/// not look complete to the client.
struct ResetOnDrop<C: HasTcp> {
    io: CountingIo<C>,
    flag: linnet_http::ResetFlag,
}

impl<C: HasTcp> Drop for ResetOnDrop<C> {
    fn drop(&mut self) {
        if self.flag.is_set() {
            reset_on_close(self.io.get_ref().tcp());
        }
    }
}

impl<C: HasTcp + AsyncRead + AsyncWrite + Unpin> AsyncRead for ResetOnDrop<C> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<C: HasTcp + AsyncRead + AsyncWrite + Unpin> AsyncWrite for ResetOnDrop<C> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

fn reset_both(a: &TcpStream, b: &TcpStream) {
    reset_on_close(a);
    reset_on_close(b);
}
