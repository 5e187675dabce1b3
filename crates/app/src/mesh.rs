//! Mutual TLS between meshed proxies, for the stacks: the TLS configs
//! built from the workload identity (the server config once, client
//! configs per peer identity), and access to the TCP socket under any
//! stream the stacks carry (for resets).

use linnet_detect::PrefixedIo;
use linnet_identity::Identity;
use linnet_tls::{Id, rustls};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};
use tokio::net::TcpStream;

/// ALPN offered and accepted between proxies for the transport header.
pub(crate) const TRANSPORT_ALPN: &[u8] = linnet_transport::header::ALPN;

/// The TLS side of the mesh.
pub(crate) struct MeshTls {
    identity: Arc<Identity>,
    /// The SNI peers use to reach us.
    server_name: Option<String>,
    server: Arc<rustls::ServerConfig>,
    clients: Mutex<HashMap<(Id, bool), Arc<rustls::ClientConfig>>>,
}

impl std::fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshTls")
            .field("local", self.identity.local())
            .finish_non_exhaustive()
    }
}

impl MeshTls {
    pub(crate) fn new(
        identity: Arc<Identity>,
        server_name: Option<String>,
    ) -> Result<Self, rustls::Error> {
        let server_name = server_name.or_else(|| identity.local().server_name().map(String::from));
        if server_name.is_none() {
            tracing::warn!(identity = %identity.local(), "no IDENTITY_SERVER_NAME for a SPIFFE identity: peers cannot reach this proxy over mTLS");
        }
        let server = linnet_tls::server_config(
            identity.anchors(),
            identity.store(),
            vec![
                TRANSPORT_ALPN.to_vec(),
                b"h2".to_vec(),
                b"http/1.1".to_vec(),
            ],
        )?;
        Ok(Self {
            identity,
            server_name,
            server: Arc::new(server),
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// This workload's identity.
    pub(crate) fn local(&self) -> &Id {
        self.identity.local()
    }

    /// Whether a ClientHello's SNI names this workload: such TLS is the
    /// mesh's, and terminated here.
    pub(crate) fn is_local(&self, sni: &str) -> bool {
        self.server_name
            .as_deref()
            .is_some_and(|n| n.eq_ignore_ascii_case(sni.trim_end_matches('.')))
    }

    pub(crate) fn server(&self) -> Arc<rustls::ServerConfig> {
        self.server.clone()
    }

    /// A client config expecting `peer`, offering the transport header's
    /// ALPN when `transport`.
    pub(crate) fn client(
        &self,
        peer: &Id,
        transport: bool,
    ) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(&(peer.clone(), transport)) {
            return Ok(c.clone());
        }
        let alpn = if transport {
            vec![TRANSPORT_ALPN.to_vec()]
        } else {
            Vec::new()
        };
        let config = Arc::new(linnet_tls::client_config(
            self.identity.anchors(),
            self.identity.store(),
            peer.clone(),
            alpn,
        )?);
        // Peers come and go; a bounded cache is enough.
        if clients.len() >= 1024 {
            clients.clear();
        }
        clients.insert((peer.clone(), transport), config.clone());
        Ok(config)
    }
}

/// The TCP socket under a stream.
pub(crate) trait HasTcp {
    fn tcp(&self) -> &TcpStream;
}

impl HasTcp for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl HasTcp for PrefixedIo<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref()
    }
}

impl<T: HasTcp> HasTcp for tokio_rustls::client::TlsStream<T> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0.tcp()
    }
}

impl<T: HasTcp> HasTcp for tokio_rustls::server::TlsStream<T> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0.tcp()
    }
}

impl<A: HasTcp, B: HasTcp> HasTcp for tokio_util::either::Either<A, B> {
    fn tcp(&self) -> &TcpStream {
        match self {
            tokio_util::either::Either::Left(a) => a.tcp(),
            tokio_util::either::Either::Right(b) => b.tcp(),
        }
    }
}
