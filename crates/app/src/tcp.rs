//! The opaque TCP stack: accept, find the target, connect, copy.
//!
//! Both directions use it for now. A connection's path: accept (with
//! keepalive and `TCP_NODELAY`) → original destination (refused when the
//! connection was not redirected to us: a loop, or a client that dialled
//! the proxy port itself) → protocol detection (skipped for the configured
//! ports; its bytes are replayed) → connect to the target within the
//! connect timeout → copy bytes both ways until both sides end. Until the
//! HTTP stack exists, every detected protocol takes the byte path; TLS is
//! labelled `tls="opaque"` with its SNI.
//!
//! Backpressure: none is queued here. Each accepted connection gets its own
//! task and two fixed buffers, and a slow reader slows its writer; the
//! kernel's accept backlog is the only queue.
//!
//! Failure is made visible to the client: if the target cannot be reached
//! or either side fails mid-stream, the other side is reset (RST), never
//! closed with a FIN that would make a truncated stream look complete.

use crate::{
    mesh::{self, HasTcp, MeshTls},
    upstreams::Upstreams,
};
use linnet_config::{HttpConfig, ProxyConfig};
use linnet_core::drain;
use linnet_detect::{Detected, PrefixedIo, Protocol, Reason};
use linnet_discovery::{Balancer, Discovery, Endpoint, Logical, Outbound, PickError, PortProtocol};
use linnet_http::{
    BoxFuture, Explicit, InFlight, Proxy, Resolved, Route, Upstream, client::ConnectConfig,
};
use linnet_metrics::{
    Direction,
    http::HttpMetrics,
    mesh::MeshMetrics,
    tcp::{CloseReason, ConnMetrics, Peer, TcpMetrics, Tls},
};
use linnet_tls::{FailClosed, FailReason, PeerTls};
use linnet_transport::{
    Accepted, CopyError, CountingIo, OrigDst, connect, duplex,
    duplex::{Side, Transferred},
    reset_on_close,
};
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};
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
    /// Refusals of meshed targets that mTLS could not prove.
    pub(crate) mesh_metrics: MeshMetrics,
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
    /// Inbound port policies, watched for the life of the proxy once a
    /// port has seen a connection.
    pub(crate) port_policies:
        Mutex<HashMap<u16, tokio::sync::watch::Receiver<Option<PortProtocol>>>>,
}

/// Inbound ports whose policies are kept watched.
const MAX_PORT_POLICIES: usize = 256;

/// Where a connection's bytes or requests go.
enum Dest {
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

/// What the control plane declares of a connection's protocol.
#[derive(Clone, Copy, Debug, Default)]
struct Declared {
    /// Opaque: no protocol detection.
    opaque: bool,
    /// An inbound port whose policy says HTTP: nothing else is served.
    http_only: bool,
    /// The outbound policy declares HTTP/1 or HTTP/2 (gRPC): served as
    /// that without detection.
    http: Option<linnet_http::Version>,
}

/// Accepts connections until draining starts, then closes the listener.
pub(crate) async fn serve(listener: TcpListener, fwd: Arc<Forward>, watch: drain::Watch) {
    let mut own = watch.clone();
    let draining = own.draining();
    tokio::pin!(draining);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut draining => break,
            a = linnet_transport::listen::accept(&listener, fwd.config.accept_keepalive) => a,
        };
        match accepted {
            Ok(conn) => {
                tokio::spawn(fwd.clone().forward(conn, watch.clone()));
            }
            Err(error) => {
                // EMFILE and friends: log, and pause so the loop does not spin
                // while the condition lasts.
                tracing::warn!(direction = %fwd.direction, %error, "failed to accept a connection");
                fwd.metrics.accept_error(fwd.direction, &error);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    tracing::debug!(direction = %fwd.direction, "listener closed");
}

impl Forward {
    async fn forward(self: Arc<Self>, conn: Accepted, mut watch: drain::Watch) {
        let Accepted {
            stream: mut client,
            client: client_addr,
        } = conn;
        let direction = self.direction;
        let target = match self.orig_dst.lookup_redirected(&client) {
            Ok(Some(target)) => target,
            Ok(None) if direction == Direction::Outbound => {
                // Dialled directly: HTTP is served in explicit proxy mode.
                return self.explicit(client, client_addr, watch).await;
            }
            Ok(None) if self.mesh.is_some() => {
                // Meshed peers dial the inbound port itself.
                return self.direct(client, client_addr, watch).await;
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
        let (opaque, http_only) = (declared.opaque, declared.http_only);
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
        // A port whose policy says HTTP serves nothing else: bytes that
        // are not HTTP (or that took longer than the detect timeout to
        // look like it) never reach the application unread.
        if let (Some(mesh), Protocol::Tls { sni: Some(sni) }) = (&self.mesh, &detected.protocol) {
            if direction == Direction::Inbound && mesh.is_local(sni) {
                // The mesh's own TLS: terminated here.
                let client = PrefixedIo::new(detected.buffered.freeze(), client);
                return self
                    .terminate(client, client_addr, target, http_only, watch)
                    .await;
            }
        }
        if http_only && !matches!(detected.protocol, Protocol::Http1 | Protocol::Http2) {
            tracing::info!(
                %direction, client = %client_addr, %target, protocol = detected.protocol.as_str(),
                "refusing connection: the port's policy says HTTP, and the client did not speak it in time"
            );
            return self.refuse(&client, client_addr, CloseReason::error("not_http", None));
        }
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
                    // (Inbound never discovers services.)
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

        self.connect_and_relay(client, client_addr, target, endpoint, tls, watch)
            .await;
    }

    /// Connects to `target` (over mTLS when the endpoint is meshed and this
    /// proxy has an identity; to its proxy's transport port with a
    /// transport header when it has one) and relays bytes both ways.
    async fn connect_and_relay<C>(
        &self,
        client: C,
        client_addr: SocketAddr,
        target: SocketAddr,
        endpoint: Option<Arc<linnet_discovery::Endpoint>>,
        tls: Tls,
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
        self.relay(client, client_addr, server, target, src, &dst_tls, watch)
            .await;
    }

    /// Copies bytes both ways until both sides end; a failure on one side
    /// resets the other.
    #[allow(clippy::too_many_arguments)]
    async fn relay<C, S>(
        &self,
        mut client: C,
        client_addr: SocketAddr,
        mut server: S,
        target: SocketAddr,
        src: ConnMetrics,
        dst_tls: &Tls,
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
        );
        let result = tokio::select! {
            r = copy => Some(r),
            _ = watch.closing() => None,
        };
        match result {
            Some(Ok(Transferred {
                src_to_dst,
                dst_to_src,
            })) => {
                tracing::debug!(%direction, client = %client_addr, %target, src_to_dst, dst_to_src, "connection closed");
                src.close(CloseReason::CLEAN);
                dst.close(CloseReason::CLEAN);
            }
            Some(Err(error)) => {
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

    /// A connection made straight to the inbound listener (not
    /// redirected): only mTLS for this workload's identity, with the
    /// transport header naming a local port, is accepted.
    async fn direct(
        self: Arc<Self>,
        mut client: TcpStream,
        client_addr: SocketAddr,
        mut watch: drain::Watch,
    ) {
        let direction = self.direction;
        let local = client.local_addr().unwrap_or(client_addr);
        let Some(mesh) = self.mesh.clone() else {
            return self.refuse(&client, client_addr, CloseReason::error("loop", None));
        };
        let Some(detected) = self
            .detect(&mut client, client_addr, local, None, &mut watch)
            .await
        else {
            return;
        };
        let refuse = |client: &TcpStream, why: &'static str, detail: String| {
            tracing::info!(%direction, client = %client_addr, reason = why, %detail, "refusing a direct connection");
            self.refuse(client, client_addr, CloseReason::error(why, None));
        };
        match &detected.protocol {
            Protocol::Tls { sni: Some(sni) } if mesh.is_local(sni) => {}
            Protocol::Tls { sni } => {
                return refuse(
                    &client,
                    "direct_not_mesh_tls",
                    format!("TLS for {sni:?}, not {}", mesh.local()),
                );
            }
            other => {
                return refuse(
                    &client,
                    "direct_not_mesh_tls",
                    format!("{} instead of mTLS", other.as_str()),
                );
            }
        }
        let io = PrefixedIo::new(detected.buffered.freeze(), client);
        let timeout = self.config.detect_timeout;
        let Some(mut tls) = self.accept_mesh_tls(&mesh, io, client_addr, local).await else {
            return;
        };
        let (_, conn) = tls.get_ref();
        let client_id = linnet_tls::peer_identity(conn);
        let alpn_ok = conn.alpn_protocol() == Some(crate::mesh::TRANSPORT_ALPN);
        if client_id.is_none() || !alpn_ok {
            let tcp = tls.get_ref().0.get_ref();
            return refuse(
                tcp,
                "direct_not_mesh_tls",
                format!("client identity {client_id:?}, transport ALPN {alpn_ok}"),
            );
        }
        let header = match linnet_transport::header::read(&mut tls, timeout).await {
            Ok(h) => h,
            Err(error) => {
                let tcp = tls.get_ref().0.get_ref();
                return refuse(tcp, "transport_header", error.to_string());
            }
        };
        let target = SocketAddr::new(local.ip(), header.port);
        if target.port() == self.config.listen_addr.port() || target == local {
            let tcp = tls.get_ref().0.get_ref();
            return refuse(
                tcp,
                "loop",
                format!("the transport header names {target}, this proxy"),
            );
        }
        use linnet_transport::header::SessionProtocol;
        let version = match header.protocol {
            Some(SessionProtocol::Http1) => Some(linnet_http::Version::Http1),
            Some(SessionProtocol::Http2) => Some(linnet_http::Version::Http2),
            None => None,
        };
        if let Some(version) = version {
            // HTTP inside the header: served as HTTP, so that the client's
            // own `l5d-*` headers are replaced by ours.
            tracing::debug!(%direction, client = %client_addr, client_id = ?client_id, %target, "meshed HTTP connection with a transport header");
            let route = Route::Target(self.upstream(target));
            return self
                .serve_http_as(
                    tls,
                    client_addr,
                    version,
                    target,
                    route,
                    Some(client_id),
                    watch,
                )
                .await;
        }
        if self.inbound_port(target.port()).http_only {
            let tcp = tls.get_ref().0.get_ref();
            return refuse(
                tcp,
                "not_http",
                format!(
                    "the policy of port {} says HTTP; the transport header says opaque",
                    target.port()
                ),
            );
        }
        tracing::debug!(%direction, client = %client_addr, client_id = ?client_id, %target, "meshed opaque connection");
        let tls_label = Tls::mesh(client_id.as_ref().map(|id| Arc::from(id.to_string())));
        self.connect_and_relay(tls, client_addr, target, None, tls_label, watch)
            .await;
    }
}

impl Forward {
    /// Terminates mesh mTLS on a redirected inbound connection, then
    /// serves what is inside: HTTP (with the client's verified identity as
    /// `l5d-client-id`) or bytes.
    async fn terminate(
        self: Arc<Self>,
        client: PrefixedIo<TcpStream>,
        client_addr: SocketAddr,
        target: SocketAddr,
        http_only: bool,
        mut watch: drain::Watch,
    ) {
        let direction = self.direction;
        let Some(mesh) = self.mesh.clone() else {
            return;
        };
        let timeout = self.config.detect_timeout;
        let Some(mut tls) = self
            .accept_mesh_tls(&mesh, client, client_addr, target)
            .await
        else {
            return;
        };
        let client_id = linnet_tls::peer_identity(tls.get_ref().1);
        let detected = tokio::select! {
            r = linnet_detect::detect(&mut tls, timeout) => r,
            _ = watch.closing() => return,
        };
        let detected = match detected {
            Ok(d) => d,
            Err(error) => {
                tracing::info!(%direction, client = %client_addr, %error, "client failed inside mTLS");
                return;
            }
        };
        self.metrics
            .detected(direction, detected.protocol.as_str(), "matched");
        let version = match detected.protocol {
            Protocol::Http1 => Some(linnet_http::Version::Http1),
            Protocol::Http2 => Some(linnet_http::Version::Http2),
            _ => None,
        };
        if version.is_none() && http_only {
            tracing::info!(
                %direction, client = %client_addr, %target, protocol = detected.protocol.as_str(),
                "refusing mTLS connection: the port's policy says HTTP, and the client did not speak it in time"
            );
            let tcp = tls.get_ref().0.get_ref();
            return self.refuse(tcp, client_addr, CloseReason::error("not_http", None));
        }
        let inner = PrefixedIo::new(detected.buffered.freeze(), tls);
        match version {
            Some(version) => {
                let route = Route::Target(self.upstream(target));
                self.serve_http_as(
                    inner,
                    client_addr,
                    version,
                    target,
                    route,
                    Some(client_id),
                    watch,
                )
                .await;
            }
            None => {
                let label = Tls::mesh(client_id.as_ref().map(|id| Arc::from(id.to_string())));
                self.connect_and_relay(inner, client_addr, target, None, label, watch)
                    .await;
            }
        }
    }
}

impl HasTcp for PrefixedIo<tokio_rustls::server::TlsStream<PrefixedIo<TcpStream>>> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().get_ref().0.get_ref()
    }
}

impl Forward {
    /// The server side of a mesh mTLS handshake, within the detect
    /// timeout; a failure is logged and counted against `target`.
    async fn accept_mesh_tls(
        &self,
        mesh: &MeshTls,
        io: PrefixedIo<TcpStream>,
        client_addr: SocketAddr,
        target: SocketAddr,
    ) -> Option<tokio_rustls::server::TlsStream<PrefixedIo<TcpStream>>> {
        let direction = self.direction;
        let accept = tokio_rustls::TlsAcceptor::from(mesh.server()).accept(io);
        let failure = match tokio::time::timeout(self.config.detect_timeout, accept).await {
            Ok(Ok(tls)) => return Some(tls),
            Ok(Err(error)) => error.to_string(),
            Err(_) => "timed out".to_string(),
        };
        tracing::info!(%direction, client = %client_addr, error = %failure, "mTLS handshake failed");
        self.metrics.refused(
            direction,
            Peer::Src,
            &Tls::DISABLED,
            target,
            CloseReason::error("tls_handshake", None),
        );
        None
    }
}

impl Forward {
    /// Serves an HTTP connection: requests go to the target through the
    /// shared upstream clients.
    async fn serve_http<C>(
        &self,
        client: C,
        client_addr: SocketAddr,
        version: linnet_http::Version,
        target: SocketAddr,
        route: Route,
        watch: drain::Watch,
    ) where
        C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.serve_http_as(client, client_addr, version, target, route, None, watch)
            .await;
    }

    /// [`Self::serve_http`], for a client whose mesh identity (`client_id`)
    /// was verified by mTLS, when it was.
    #[allow(clippy::too_many_arguments)]
    async fn serve_http_as<C>(
        &self,
        client: C,
        client_addr: SocketAddr,
        version: linnet_http::Version,
        target: SocketAddr,
        route: Route,
        mtls: Option<Option<linnet_tls::Id>>,
        watch: drain::Watch,
    ) where
        C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let direction = self.direction;
        let tls = if let Some(id) = &mtls {
            Tls::mesh(id.as_ref().map(|id| Arc::from(id.to_string())))
        } else {
            Tls::DISABLED
        };
        let src = self.metrics.open(direction, Peer::Src, &tls, target);
        let io = CountingIo::new(client, src);
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
        .with_client_id(client_id.as_deref());
        if let Err(error) = linnet_http::serve(io, version, proxy, &self.http, watch).await {
            tracing::debug!(%direction, client = %client_addr, %target, %error, "HTTP connection ended with an error");
        }
    }

    /// A connection made to the outbound listener itself (not
    /// redirected): HTTP is routed by each request's authority, as an
    /// explicit proxy; anything else would loop, and is refused.
    async fn explicit(
        self: Arc<Self>,
        mut client: TcpStream,
        client_addr: SocketAddr,
        mut watch: drain::Watch,
    ) {
        let local = client.local_addr().unwrap_or(client_addr);
        let Some(detected) = self
            .detect(&mut client, client_addr, local, None, &mut watch)
            .await
        else {
            return;
        };
        let version = match detected.protocol {
            Protocol::Http1 => linnet_http::Version::Http1,
            Protocol::Http2 => linnet_http::Version::Http2,
            Protocol::Tls { .. } | Protocol::Opaque => {
                tracing::warn!(
                    direction = %self.direction, client = %client_addr,
                    "refusing connection: not redirected and not HTTP (a loop, or a client dialling the proxy port)"
                );
                return self.refuse(&client, client_addr, CloseReason::error("loop", None));
            }
        };
        let client = PrefixedIo::new(detected.buffered.freeze(), client);
        let route = Route::Explicit(Arc::new(ExplicitRoutes {
            fwd: self.clone(),
            local,
        }));
        self.serve_http(client, client_addr, version, local, route, watch)
            .await;
    }

    /// The shared clients for `target` (the application, inbound).
    fn upstream(&self, target: SocketAddr) -> Arc<Upstream> {
        self.upstreams.get(target, None, None, false)
    }

    /// The shared clients for `target`, which the control plane names
    /// with `identity` (reached with `sni`) when it is meshed.
    fn upstream_for(
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
    fn count_fail_closed(&self, client_addr: SocketAddr, target: SocketAddr, e: &FailClosed) {
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
    fn refuse_meshed(
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
    fn refuse(&self, client: &TcpStream, client_addr: SocketAddr, reason: CloseReason) {
        let local = client.local_addr().unwrap_or(client_addr);
        self.metrics
            .refused(self.direction, Peer::Src, &Tls::DISABLED, local, reason);
        reset_on_close(client);
    }

    /// Detects the client's protocol, unless the target port skips it.
    /// `None` when the client failed or shutdown ended the wait (already
    /// counted and reset).
    async fn detect(
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
    async fn destination(&self, target: SocketAddr) -> (Dest, Declared) {
        let plain = || Dest::Addr(linnet_discovery::plain(target));
        let opaque = |opaque| Declared {
            opaque,
            http_only: false,
            http: None,
        };
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
                        let http = declared_http(&logical);
                        // TLS routes need the ClientHello's SNI: detected.
                        let tls = declared_tls(&logical);
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
            Direction::Inbound => (plain(), self.inbound_port(target.port())),
            _ => (plain(), Declared::default()),
        }
    }

    /// What the policy of inbound `port` declares: opaque (no detection),
    /// or HTTP (or gRPC), when nothing but HTTP is served there.
    fn inbound_port(&self, port: u16) -> Declared {
        let Some(discovery) = &self.discovery else {
            return Declared::default();
        };
        let protocol = self.port_policy(discovery, port);
        Declared {
            http: None,
            opaque: protocol == Some(PortProtocol::Opaque),
            http_only: matches!(
                protocol,
                Some(PortProtocol::Http1 | PortProtocol::Http2 | PortProtocol::Grpc)
            ),
        }
    }

    /// Whether `ip` is where meshed workloads may be.
    fn in_profile_networks(&self, ip: std::net::IpAddr) -> bool {
        self.profile_networks.iter().any(|n| n.contains(ip))
    }

    /// The protocol the port's policy sets, if it has arrived; until then
    /// the default applies (detection).
    fn port_policy(&self, discovery: &Discovery, port: u16) -> Option<PortProtocol> {
        let mut ports = self.port_policies.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = ports.get(&port) {
            return *rx.borrow();
        }
        let rx = discovery.port_protocol(port)?;
        let now = *rx.borrow();
        if ports.len() < MAX_PORT_POLICIES {
            ports.insert(port, rx);
        }
        now
    }
}

/// What an outbound policy's opaque or TLS routes say of a connection.
enum OpaqueRoute {
    /// No routes apply: the policy's default backends.
    Default,
    /// A route forbids it (or it matched no TLS route): reset.
    Refuse(String),
    /// The matched rule's backends.
    Backends(Arc<Vec<(linnet_discovery::BackendSpec, u32)>>),
}

/// The route of a non-HTTP connection: by its SNI (`sni` is `Some` for
/// TLS, with the name if it sent one) for a TLS policy, else the policy's
/// opaque route.
fn opaque_route(logical: &Logical, sni: &Option<Option<String>>) -> OpaqueRoute {
    use linnet_policy::outbound::{
        BackendKind, Distribution, OpaqueRule, Protocol as P, filters, select,
    };
    let Logical::Policy(rx) = logical else {
        return OpaqueRoute::Default;
    };
    let answer = rx.borrow();
    let linnet_discovery::PolicyAnswer::Found(p) = &*answer else {
        return OpaqueRoute::Default;
    };
    let rule: &OpaqueRule = match &p.model.protocol {
        P::Tls(routes) => {
            let name = sni.as_ref().and_then(|s| s.as_deref());
            match select::tls(routes, name) {
                Some((_, rule)) => rule,
                None => {
                    return OpaqueRoute::Refuse(format!(
                        "no TLS route of the policy matches SNI {}",
                        name.unwrap_or("(none)")
                    ));
                }
            }
        }
        P::Opaque(routes) | P::Detect { opaque: routes, .. } => match select::opaque(routes) {
            Some((_, rule)) => rule,
            None => return OpaqueRoute::Default,
        },
        _ => return OpaqueRoute::Default,
    };
    if let Some(why) = filters::opaque_refusal(&rule.filters) {
        return OpaqueRoute::Refuse(why);
    }
    let spec = |b: &linnet_policy::outbound::Backend| match &b.kind {
        BackendKind::Forward(e) => linnet_discovery::BackendSpec::Forward(e.clone()),
        BackendKind::Balancer { path, .. } => linnet_discovery::BackendSpec::Service(path.clone()),
    };
    let backends = match &rule.backends {
        Distribution::Empty => Vec::new(),
        Distribution::FirstAvailable(b) => {
            b.iter().take(1).map(|rb| (spec(&rb.backend), 1)).collect()
        }
        Distribution::RandomAvailable(b) => {
            b.iter().map(|(rb, w)| (spec(&rb.backend), *w)).collect()
        }
    };
    OpaqueRoute::Backends(Arc::new(backends))
}

/// Whether an outbound policy declares TLS (routed by SNI).
fn declared_tls(logical: &Logical) -> bool {
    let Logical::Policy(rx) = logical else {
        return false;
    };
    matches!(&*rx.borrow(), linnet_discovery::PolicyAnswer::Found(p)
        if p.model.protocol.declared() == Some(linnet_policy::outbound::Declared::Tls))
}

/// The HTTP version an outbound policy declares, when it declares one.
fn declared_http(logical: &Logical) -> Option<linnet_http::Version> {
    use linnet_policy::outbound::Declared;
    let Logical::Policy(rx) = logical else {
        return None;
    };
    let answer = rx.borrow();
    let linnet_discovery::PolicyAnswer::Found(p) = &*answer else {
        return None;
    };
    match p.model.protocol.declared() {
        Some(Declared::Http1) => Some(linnet_http::Version::Http1),
        Some(Declared::Http2 | Declared::Grpc) => Some(linnet_http::Version::Http2),
        _ => None,
    }
}

/// Where a request's client is not at hand (logs only).
const UNKNOWN_CLIENT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

/// The refusal for a target the control plane did not decide on in time.
fn undecided(target: SocketAddr, waited: Duration) -> FailClosed {
    FailClosed::new(
        FailReason::DiscoveryTimeout,
        format!(
            "the control plane did not say within {waited:?} whether {target} is meshed; it is not reached in plaintext"
        ),
        None,
    )
}

/// Explicit proxy mode's view of the stack.
#[derive(Debug)]
struct ExplicitRoutes {
    fwd: Arc<Forward>,
    /// The listener the client dialled.
    local: SocketAddr,
}

impl ExplicitRoutes {
    /// What the control plane says of an address, as if a connection had
    /// been redirected to it: the pod it is (and its identity), or a
    /// service's endpoint; a control plane that does not answer in time
    /// fails it.
    async fn by_address(&self, addr: SocketAddr) -> Result<Arc<Endpoint>, String> {
        match self.fwd.destination(addr).await.0 {
            Dest::Addr(e) => Ok(e),
            Dest::Balanced(balancer, _, _) => self.pick(&balancer).await,
            Dest::Undecided(waited) => {
                let e = undecided(addr, waited);
                self.fwd.count_fail_closed(UNKNOWN_CLIENT, addr, &e);
                Err(e.to_string())
            }
        }
    }

    /// An endpoint of `balancer`; a control plane that does not answer in
    /// time is counted as a refusal (the target may be meshed).
    async fn pick(&self, balancer: &Balancer) -> Result<Arc<Endpoint>, String> {
        balancer.pick().await.map_err(|error| {
            if let PickError::Timeout(authority) = &error {
                let e = FailClosed::new(
                    FailReason::DiscoveryTimeout,
                    format!("the control plane did not answer in time about {authority}"),
                    None,
                );
                self.fwd
                    .count_fail_closed(UNKNOWN_CLIENT, UNKNOWN_CLIENT, &e);
            }
            error.to_string()
        })
    }
}

impl Explicit for ExplicitRoutes {
    fn upstream(&self, addr: SocketAddr, identity: Option<&str>) -> Arc<Upstream> {
        self.fwd.upstream_for(addr, identity, None, false)
    }

    fn is_self(&self, addr: SocketAddr) -> bool {
        // Any address that reaches this listener: its own, loopback, or
        // the unspecified address (which connects to this host), in any of
        // their IPv4, IPv6 or mapped spellings.
        let ip = addr.ip().to_canonical();
        addr.port() == self.local.port()
            && (ip == self.local.ip().to_canonical() || ip.is_loopback() || ip.is_unspecified())
    }

    fn connect_config(&self) -> ConnectConfig {
        ConnectConfig {
            timeout: self.fwd.config.connect_timeout,
            keepalive: self.fwd.config.connect_keepalive,
        }
    }

    fn resolve<'a>(
        &'a self,
        authority: &'a http::uri::Authority,
        default_port: u16,
        connect: bool,
    ) -> BoxFuture<'a, Result<Resolved, String>> {
        let endpoint = |e: Arc<Endpoint>| Resolved::Endpoint {
            addr: e.addr,
            identity: e.identity.clone(),
        };
        let Some(discovery) = self.fwd.discovery.as_ref().filter(|d| d.has_destination()) else {
            return Box::pin(async move {
                linnet_http::proxy::resolve(authority, default_port, self.connect_config().timeout)
                    .await
                    .map(|addr| Resolved::Endpoint {
                        addr,
                        identity: None,
                    })
                    .map_err(|e| e.to_string())
            });
        };
        let port = authority.port_u16().unwrap_or(default_port);
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            let addr = SocketAddr::new(ip, port);
            return Box::pin(async move {
                // As if a connection had been redirected to it: a service's
                // address goes through its stack.
                if !connect {
                    if let (Dest::Balanced(_, logical, profile), _) =
                        self.fwd.destination(addr).await
                    {
                        if let Some(stacks) = &self.fwd.stacks {
                            return Ok(Resolved::Stack {
                                stack: stacks.get(addr, logical, profile),
                                target: addr,
                            });
                        }
                    }
                }
                self.by_address(addr).await.map(endpoint)
            });
        }
        let name = format!("{}:{port}", host.trim_end_matches('.').to_ascii_lowercase());
        let balancer = discovery.authority(host, port);
        Box::pin(async move {
            // A service the control plane knows: through its stack.
            if let (false, Some(stacks), Some(mut rx)) =
                (connect, &self.fwd.stacks, discovery.endpoints(&name))
            {
                let known = matches!(
                    tokio::time::timeout(
                        discovery.initial_wait(),
                        rx.wait_for(|r| *r != linnet_discovery::Resolution::Pending)
                    )
                    .await
                    .map(|r| r.map(|r| matches!(*r, linnet_discovery::Resolution::Endpoints(_)))),
                    Ok(Ok(true))
                );
                if known {
                    // Its routes (timeouts, retries) apply from the first
                    // request: wait for them as for the endpoints.
                    let profile = discovery.profile_named(&name);
                    if let Some(mut p) = profile.clone() {
                        let _ = tokio::time::timeout(
                            discovery.initial_wait(),
                            p.wait_for(Option::is_some),
                        )
                        .await;
                    }
                    return Ok(Resolved::Stack {
                        stack: stacks.get_named(&name, port, profile),
                        target: SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), port),
                    });
                }
            }
            let e = self.pick(&balancer).await?;
            if e.identity.is_some() {
                return Ok(endpoint(e));
            }
            // An address from DNS (or an endpoint named without an
            // identity): the control plane may still name the pod it is.
            self.by_address(e.addr).await.map(endpoint)
        })
    }
}

fn reset_both(a: &TcpStream, b: &TcpStream) {
    reset_on_close(a);
    reset_on_close(b);
}
