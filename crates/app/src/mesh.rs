//! Mutual TLS between meshed proxies, for the stacks: the TLS configs
//! built from the workload identity (the server config once, client
//! configs per peer identity), and access to the TCP socket under any
//! stream the stacks carry (for resets).

use linnet_detect::PrefixedIo;
use linnet_identity::Identity;
use linnet_tls::{FailClosed, FailReason, Id, MeshClient, PeerTls, rustls};
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
    /// Connectors by peer identity, SNI and transport ALPN.
    peers: Mutex<HashMap<PeerKey, Arc<MeshClient>>>,
}

type PeerKey = (Arc<str>, Option<Arc<str>>, bool);

/// Peer connectors and client configs kept; peers come and go, so the
/// caches are cleared when full.
const MAX_PEERS: usize = 1024;

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
            peers: Mutex::new(HashMap::new()),
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
        if clients.len() >= MAX_PEERS {
            clients.clear();
        }
        clients.insert((peer.clone(), transport), config.clone());
        Ok(config)
    }
}

/// The one rule, decided for a target: a target the control plane names
/// with `identity` is reached only over mTLS proving it (sending
/// `server_name` as SNI when given, with the transport header's ALPN when
/// `transport`), or refused; one it names with no identity goes in
/// plaintext. `mesh` is `None` when this proxy has no identity of its own.
pub(crate) fn peer_tls(
    mesh: Option<&MeshTls>,
    identity: Option<&str>,
    server_name: Option<&str>,
    transport: bool,
) -> PeerTls {
    let Some(name) = identity else {
        return PeerTls::Plain;
    };
    let Some(mesh) = mesh else {
        return PeerTls::Refuse(FailClosed::new(
            FailReason::NoLocalIdentity,
            format!(
                "{name} is meshed, and this proxy has no identity to prove itself with (identity disabled or not configured)"
            ),
            Some(name),
        ));
    };
    let key: PeerKey = (Arc::from(name), server_name.map(Arc::from), transport);
    let mut peers = mesh.peers.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = peers.get(&key) {
        return PeerTls::Mesh(p.clone());
    }
    let refuse =
        |reason, detail: String| PeerTls::Refuse(FailClosed::new(reason, detail, Some(name)));
    let id = match Id::parse(name) {
        Ok(id) => id,
        Err(e) => return refuse(FailReason::BadIdentity, format!("unusable identity: {e}")),
    };
    let config = match mesh.client(&id, transport) {
        Ok(c) => c,
        Err(e) => {
            return refuse(
                FailReason::ClientConfig,
                format!("TLS client config for {id}: {e}"),
            );
        }
    };
    match MeshClient::new(config, id, server_name, mesh.identity.store()) {
        Ok(client) => {
            let client = Arc::new(client);
            if peers.len() >= MAX_PEERS {
                peers.clear();
            }
            peers.insert(key, client.clone());
            PeerTls::Mesh(client)
        }
        Err(e) => PeerTls::Refuse(e),
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
