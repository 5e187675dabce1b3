//! The inbound side of a connection's path, beside the shared one in
//! [`crate::tcp`]: the mesh's own TLS terminated on a redirected
//! connection (then HTTP with `l5d-client-id`, or bytes); the inbound
//! port itself, which takes only mesh mTLS with a transport header naming
//! a local port; and each port's server policy (opaque, or HTTP only).

use crate::mesh::{HasTcp, MeshTls};
use crate::tcp::{Declared, Forward, MAX_PORT_POLICIES};
use linnet_core::drain;
use linnet_detect::{PrefixedIo, Protocol};
use linnet_discovery::{Discovery, PortProtocol};
use linnet_http::Route;
use linnet_metrics::tcp::{CloseReason, Peer, Tls};
use std::{net::SocketAddr, sync::Arc};
use tokio::net::TcpStream;

impl Forward {
    /// A connection made straight to the inbound listener (not
    /// redirected): only mTLS for this workload's identity, with the
    /// transport header naming a local port, is accepted.
    pub(crate) async fn direct(
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
    pub(crate) async fn terminate(
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

impl Forward {
    /// What the policy of inbound `port` declares: opaque (no detection),
    /// or HTTP (or gRPC), when nothing but HTTP is served there.
    pub(crate) fn inbound_port(&self, port: u16) -> Declared {
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

    /// The protocol the port's policy sets, if it has arrived; until then
    /// the default applies (detection).
    pub(crate) fn port_policy(&self, discovery: &Discovery, port: u16) -> Option<PortProtocol> {
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
