//! Services found outside the mesh file (by Kubernetes endpoint
//! discovery), indexed for the lookups every stream makes: by name, by
//! virtual address, by endpoint address.
//!
//! [`Mesh`](crate::Mesh) holds one beside the file's services and asks
//! the file first, so a hand-listed service wins over a discovered one.

use crate::config::{Endpoint, Service};
use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::Arc,
};

/// Discovered services, by `name:port`. The default is nothing yet:
/// discovery has not listed everything once.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Discovered {
    /// Made from a complete picture (every resource listed).
    synced: bool,
    services: BTreeMap<String, Arc<Service>>,
    /// Virtual address (cluster IP and port) → service key.
    by_addr: HashMap<SocketAddr, String>,
    /// Endpoint address → (service key, index in its endpoints); the
    /// first service in key order when several share a pod.
    by_endpoint: HashMap<SocketAddr, (String, usize)>,
}

impl Discovered {
    /// Indexes `services` (keyed `name:port`, normalised), found once
    /// every resource was listed.
    pub fn new(services: BTreeMap<String, Arc<Service>>) -> Self {
        let mut by_addr = HashMap::new();
        let mut by_endpoint = HashMap::new();
        for (key, svc) in &services {
            for a in &svc.addresses {
                by_addr.entry(*a).or_insert_with(|| key.clone());
            }
            for (i, e) in svc.endpoints.iter().enumerate() {
                by_endpoint
                    .entry(e.addr)
                    .or_insert_with(|| (key.clone(), i));
            }
        }
        Self {
            synced: true,
            services,
            by_addr,
            by_endpoint,
        }
    }

    /// Whether this is what discovery found (not the nothing before it
    /// has listed everything).
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// How many services there are.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// The services, by `name:port`.
    pub fn services(&self) -> impl Iterator<Item = (&str, &Service)> {
        self.services.iter().map(|(k, s)| (k.as_str(), &**s))
    }

    /// The service at `key` (`name:port`, normalised).
    pub fn service(&self, key: &str) -> Option<&Service> {
        self.services.get(key).map(|s| &**s)
    }

    /// The service one of whose virtual addresses is `addr`.
    pub fn service_by_addr(&self, addr: SocketAddr) -> Option<&Service> {
        self.service(self.by_addr.get(&addr)?)
    }

    /// The endpoint at `addr`, with its service.
    pub fn endpoint(&self, addr: SocketAddr) -> Option<(&Service, &Endpoint)> {
        let (key, i) = self.by_endpoint.get(&addr)?;
        let svc = self.service(key)?;
        Some((svc, svc.endpoints.get(*i)?))
    }
}
