//! Where traffic goes: an endpoint as the control plane describes it.
//!
//! Discovery produces these, the outbound policy names them as backends,
//! and the endpoint client reads them to decide how to connect (mTLS with
//! the identity, HTTP/2 when hinted, the transport port for opaque bytes).

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

/// One endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Relative weight (at least 1).
    pub weight: u32,
    /// Its TLS identity, if it is meshed.
    pub identity: Option<String>,
    /// The server name to send it as SNI, when the control plane gives
    /// one (needed for SPIFFE identities, which SNI cannot carry).
    pub server_name: Option<String>,
    /// What its proxy accepts.
    pub hint: Hint,
    /// Its proxy's port for opaque traffic with a transport header.
    pub opaque_transport_port: Option<u16>,
    /// Labels for metrics.
    pub labels: BTreeMap<String, String>,
}

/// A protocol hint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Hint {
    /// None given.
    #[default]
    Unknown,
    /// HTTP/2 between proxies.
    H2,
    /// Opaque TCP.
    Opaque,
}

/// An endpoint the control plane says nothing about: no identity.
pub fn plain(addr: SocketAddr) -> Arc<Endpoint> {
    Arc::new(Endpoint {
        addr,
        weight: 1,
        identity: None,
        server_name: None,
        hint: Hint::Unknown,
        opaque_transport_port: None,
        labels: BTreeMap::new(),
    })
}
