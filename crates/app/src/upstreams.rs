//! The HTTP clients of targets, shared by every connection and stack of
//! a listener: one [`Upstream`] (pooled HTTP/1 and HTTP/2 connections)
//! per target address (or name and its addresses, in explicit mode),
//! identity, server name and protocol hint.
//!
//! This is where the fail-closed rule meets the endpoint client: an
//! upstream for a target the control plane names with an identity is
//! built with [`mesh::peer_tls`]'s answer, so it speaks mTLS proving that
//! identity, or refuses.

use crate::mesh::{self, MeshTls};
use linnet_config::{HttpConfig, ProxyConfig};
use linnet_http::{Upstream, client::ConnectConfig};
use linnet_metrics::{Direction, mesh::MeshMetrics, tcp::TcpMetrics};
use linnet_tls::PeerTls;
use linnet_transport::resolve::Addrs;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

/// A target, the identity it must present when meshed (and the SNI to
/// send it), and whether HTTP/1 goes to it as HTTP/2.
type UpstreamKey = (Addrs, Option<Arc<str>>, Option<Arc<str>>, bool);

/// Upstreams kept before unused ones are dropped.
const MAX_UPSTREAMS: usize = 1024;

/// One listener's upstreams.
#[derive(Debug)]
pub(crate) struct Upstreams {
    pub(crate) direction: Direction,
    pub(crate) config: ProxyConfig,
    pub(crate) http: HttpConfig,
    pub(crate) metrics: TcpMetrics,
    pub(crate) mesh_metrics: MeshMetrics,
    pub(crate) mesh: Option<Arc<MeshTls>>,
    pub(crate) cache: Mutex<HashMap<UpstreamKey, Arc<Upstream>>>,
}

impl Upstreams {
    /// The shared clients for `target`, which the control plane names
    /// with `identity` (reached with `sni`) when it is meshed: over mTLS
    /// proving it, or refused (see [`mesh::peer_tls`]).
    pub(crate) fn get(
        &self,
        target: impl Into<Addrs>,
        identity: Option<&str>,
        sni: Option<&str>,
        h2: bool,
    ) -> Arc<Upstream> {
        let target = target.into();
        let h2 = h2 && identity.is_some();
        let key: UpstreamKey = (
            target.clone(),
            identity.map(Arc::from),
            sni.map(Arc::from),
            h2,
        );
        let mut upstreams = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(u) = upstreams.get(&key) {
            return u.clone();
        }
        let tls = mesh::peer_tls(self.mesh.as_deref(), identity, sni, false);
        if let PeerTls::Refuse(_) = &tls {
            // Not kept: it only fails requests, saying why.
            return Arc::new(self.build(target, tls, false));
        }
        if upstreams.len() >= MAX_UPSTREAMS {
            // Drop the ones nothing uses; their pools close.
            upstreams.retain(|_, u| Arc::strong_count(u) > 1);
        }
        let u = Arc::new(self.build(target, tls, h2));
        upstreams.insert(key, u.clone());
        u
    }

    /// A new upstream for `target`, reached as `tls` says.
    pub(crate) fn build(&self, target: impl Into<Addrs>, tls: PeerTls, h2: bool) -> Upstream {
        let config = ConnectConfig {
            timeout: self.config.connect_timeout,
            keepalive: self.config.connect_keepalive,
        };
        Upstream::new(
            target,
            config,
            &self.http,
            linnet_http::UpstreamMetrics {
                tcp: self.metrics.clone(),
                mesh: self.mesh_metrics.clone(),
            },
            self.direction,
            tls,
            h2,
        )
    }
}
