//! The inbound side of a connection's path, beside the shared one in
//! [`crate::tcp`]; the policy it enforces is `linnet-inbound`'s.
//!
//! A redirected connection ([`Forward::inbound`]): the port's server
//! policy → refused at once if it admits no one → detect (skipped on an
//! opaque port) → the mesh's own TLS terminated ([`Forward::terminate`])
//! or not → HTTP: served, each request through the inbound HTTP stack
//! (route → route authorization → rate limit → the application); not
//! HTTP: authorized against the server's authorizations before a byte
//! reaches the application, and closed if a policy change no longer
//! admits it.
//!
//! A connection to the inbound port itself ([`Forward::direct`], the
//! transport port): only mesh mTLS with a transport header naming a local
//! port, under that port's policy.

use crate::mesh::{HasTcp, MeshTls};
use crate::tcp::Forward;
use linnet_core::drain;
use linnet_detect::{PrefixedIo, Protocol};
use linnet_http::{EndpointClient, Route};
use linnet_inbound::{
    Client, ClientTls, Conn,
    accept::{self, Denied},
};
use linnet_metrics::tcp::{CloseReason, Peer, Tls};
use linnet_policy::inbound::{Protocol as PortProtocol, ServerPolicy};
use linnet_transport::reset_on_close;
use std::{net::SocketAddr, sync::Arc};
use tokio::net::TcpStream;

/// What the inbound listener needs beyond the shared forwarding.
#[derive(Debug)]
pub(crate) struct InboundPolicy {
    /// Each port's server policy.
    pub(crate) policies: linnet_inbound::Policies,
    /// What the policies decide, counted.
    pub(crate) metrics: linnet_metrics::authz::AuthzMetrics,
}

/// What a port's policy declares of its protocol.
#[derive(Clone, Copy, Debug)]
struct Declared {
    /// Opaque: no detection.
    opaque: bool,
    /// HTTP (or gRPC) only: nothing else is served.
    http_only: bool,
}

fn declared(policy: &ServerPolicy) -> Declared {
    Declared {
        opaque: matches!(policy.protocol, PortProtocol::Opaque),
        http_only: matches!(
            policy.protocol,
            PortProtocol::Http1(_) | PortProtocol::Http2(_) | PortProtocol::Grpc(_)
        ),
    }
}

impl Forward {
    /// The connection of `client` to `target`, under `target` port's
    /// policy.
    async fn conn(p: &InboundPolicy, client: Client, target: SocketAddr) -> Conn {
        let port = p.policies.get(target.port()).await;
        Conn::new(port, client, target, &p.metrics)
    }

    /// A redirected inbound connection; see the module docs.
    pub(crate) async fn inbound(
        self: Arc<Self>,
        p: Arc<InboundPolicy>,
        mut client: TcpStream,
        client_addr: SocketAddr,
        target: SocketAddr,
        mut watch: drain::Watch,
    ) {
        let direction = self.direction;
        let plain = Client {
            addr: client_addr.ip(),
            tls: ClientTls::None,
        };
        let conn = Self::conn(&p, plain, target).await;
        let policy = match accept::refuse_before_detect(&conn) {
            Ok(p) => p,
            Err(denied) => {
                return self.refuse_unauthorized(
                    &client,
                    client_addr,
                    target,
                    &Tls::DISABLED,
                    &denied,
                );
            }
        };
        let Declared { opaque, http_only } = declared(&policy);
        let skip = opaque.then_some(Protocol::Opaque);
        let Some(detected) = self
            .detect(&mut client, client_addr, target, skip, &mut watch)
            .await
        else {
            return;
        };
        if let (Some(mesh), Protocol::Tls { sni: Some(sni) }) = (&self.mesh, &detected.protocol) {
            if mesh.is_local(sni) {
                // The mesh's own TLS: terminated here.
                let client = PrefixedIo::new(detected.buffered.freeze(), client);
                return self
                    .terminate(&p, client, client_addr, conn, http_only, watch)
                    .await;
            }
        }
        // A port whose policy says HTTP serves nothing else: bytes that
        // are not HTTP (or that took longer than the detect timeout to
        // look like it) never reach the application unread.
        let version = match &detected.protocol {
            // A port whose policy says TLS (the application terminates
            // it) has no routes: whatever comes is carried as bytes.
            _ if matches!(policy.protocol, PortProtocol::Tls) => None,
            Protocol::Http1 => Some(linnet_http::Version::Http1),
            Protocol::Http2 => Some(linnet_http::Version::Http2),
            _ => None,
        };
        if http_only && version.is_none() {
            tracing::info!(
                %direction, client = %client_addr, %target, protocol = detected.protocol.as_str(),
                "refusing connection: the port's policy says HTTP, and the client did not speak it in time"
            );
            return self.refuse(&client, client_addr, CloseReason::error("not_http", None));
        }
        let tls = match &detected.protocol {
            Protocol::Tls { sni } => Tls {
                status: "opaque",
                sni: sni.as_deref().map(Arc::from),
                peer_id: None,
            },
            _ => Tls::DISABLED,
        };
        let client = PrefixedIo::new(detected.buffered.freeze(), client);
        match version {
            Some(version) => {
                let route = self.app_stack(conn, target);
                self.serve_http(client, client_addr, version, target, route, watch)
                    .await;
            }
            None => {
                if let Err(denied) = accept::authorize_tcp(&conn) {
                    return self.refuse_unauthorized(
                        client.get_ref(),
                        client_addr,
                        target,
                        &tls,
                        &denied,
                    );
                }
                self.connect_and_relay(client, client_addr, target, None, tls, Some(conn), watch)
                    .await;
            }
        }
    }

    /// The inbound HTTP stack of `conn`'s requests, in front of the
    /// application at `target`.
    fn app_stack(&self, conn: Conn, target: SocketAddr) -> Route {
        let app = EndpointClient::new(self.upstream(target));
        Route::Stack {
            stack: linnet_inbound::http::stack(Arc::new(conn), app),
            target,
        }
    }

    /// Refuses a connection that the port's policy does not admit: reset
    /// before a byte reaches the application, logged and counted (the
    /// policy's own count is `inbound_tcp_authz_deny_total`).
    fn refuse_unauthorized(
        &self,
        client: &TcpStream,
        client_addr: SocketAddr,
        target: SocketAddr,
        tls: &Tls,
        denied: &Denied,
    ) {
        tracing::info!(direction = %self.direction, client = %client_addr, %target, reason = %denied, "refusing connection: unauthorized");
        self.metrics.refused(
            self.direction,
            Peer::Src,
            tls,
            target,
            CloseReason::error("unauthorized", None),
        );
        reset_on_close(client);
    }

    /// A connection made straight to the inbound listener (not
    /// redirected): only mTLS for this workload's identity, with the
    /// transport header naming a local port, is accepted; then that
    /// port's policy applies.
    pub(crate) async fn direct(
        self: Arc<Self>,
        p: Arc<InboundPolicy>,
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
        let client_id = match client_id {
            Some(id) if alpn_ok => id,
            id => {
                let tcp = tls.get_ref().0.get_ref();
                return refuse(
                    tcp,
                    "direct_not_mesh_tls",
                    format!("client identity {id:?}, transport ALPN {alpn_ok}"),
                );
            }
        };
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
        // The port the header names decides, as if the client had
        // connected to it.
        let id: Arc<str> = Arc::from(client_id.to_string());
        let client = Client {
            addr: client_addr.ip(),
            tls: ClientTls::Mesh(id.clone()),
        };
        let conn = Self::conn(&p, client, target).await;
        let tls_label = Tls::mesh(Some(id));
        let policy = match accept::refuse_before_detect(&conn) {
            Ok(p) => p,
            Err(denied) => {
                let tcp = tls.get_ref().0.get_ref();
                return self.refuse_unauthorized(tcp, client_addr, target, &tls_label, &denied);
            }
        };
        use linnet_transport::header::SessionProtocol;
        let version = match header.protocol {
            Some(SessionProtocol::Http1) => Some(linnet_http::Version::Http1),
            Some(SessionProtocol::Http2) => Some(linnet_http::Version::Http2),
            None => None,
        };
        if let Some(version) = version {
            // HTTP inside the header: served as HTTP, so that the client's
            // own `l5d-*` headers are replaced by ours, and its requests
            // are authorized per route.
            tracing::debug!(%direction, client = %client_addr, %client_id, %target, "meshed HTTP connection with a transport header");
            let route = self.app_stack(conn, target);
            return self
                .serve_http_as(
                    tls,
                    client_addr,
                    version,
                    target,
                    route,
                    Some(Some(client_id)),
                    watch,
                )
                .await;
        }
        if declared(&policy).http_only {
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
        if let Err(denied) = accept::authorize_tcp(&conn) {
            let tcp = tls.get_ref().0.get_ref();
            return self.refuse_unauthorized(tcp, client_addr, target, &tls_label, &denied);
        }
        tracing::debug!(%direction, client = %client_addr, %client_id, %target, "meshed opaque connection");
        self.connect_and_relay(tls, client_addr, target, None, tls_label, Some(conn), watch)
            .await;
    }

    /// Terminates mesh mTLS on a redirected inbound connection, then
    /// serves what is inside: HTTP (with the client's verified identity as
    /// `l5d-client-id`, each request authorized) or bytes (authorized as
    /// a connection).
    async fn terminate(
        self: Arc<Self>,
        p: &InboundPolicy,
        client: PrefixedIo<TcpStream>,
        client_addr: SocketAddr,
        conn: Conn,
        http_only: bool,
        mut watch: drain::Watch,
    ) {
        let direction = self.direction;
        let target = conn.target;
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
        let id: Option<Arc<str>> = client_id.as_ref().map(|id| Arc::from(id.to_string()));
        let conn = Conn::new(
            conn.port,
            Client {
                addr: client_addr.ip(),
                tls: match &id {
                    Some(id) => ClientTls::Mesh(id.clone()),
                    None => ClientTls::NoIdentity,
                },
            },
            target,
            &p.metrics,
        );
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
        let label = Tls::mesh(id);
        match version {
            Some(version) => {
                let route = self.app_stack(conn, target);
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
                if let Err(denied) = accept::authorize_tcp(&conn) {
                    return self.refuse_unauthorized(
                        inner.tcp(),
                        client_addr,
                        target,
                        &label,
                        &denied,
                    );
                }
                self.connect_and_relay(inner, client_addr, target, None, label, Some(conn), watch)
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
    pub(crate) async fn accept_mesh_tls(
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
