//! What discovery knows of the cluster, within its bounds, and the
//! services it makes of it.
//!
//! Each resource is a table of summaries whose total weight is bounded
//! (services: one each; slices: their addresses; pods: one each). An
//! object that would go over the bound is not taken, and counted; what
//! the table held stays. A list replaces a table whole; nothing else
//! removes from it but a deletion.

use super::objects::{Key, PodInfo, Resource, ServiceInfo, SliceInfo, Summary};
use crate::{
    config::{Discovery, Endpoint, Hint, Policy, Profile, Protocol, Service},
    discovered::Discovered,
};
use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::Arc,
};

/// A bound that stopped an object from being taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Limit {
    Services,
    Endpoints,
    Pods,
}

impl Limit {
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Services => "services",
            Self::Endpoints => "endpoints",
            Self::Pods => "pods",
        }
    }
}

/// Summaries of one resource's objects, with their total weight bounded.
#[derive(Debug)]
struct Table<T> {
    items: HashMap<Key, T>,
    used: usize,
    max: usize,
    weight: fn(&T) -> usize,
}

impl<T: PartialEq> Table<T> {
    fn new(max: usize, weight: fn(&T) -> usize) -> Self {
        Self {
            items: HashMap::new(),
            used: 0,
            max,
            weight,
        }
    }

    /// Puts `item` at `key`; `Ok(false)` when nothing changed, `Err`
    /// (keeping what was there) when it would go over the bound.
    fn put(&mut self, key: Key, item: T) -> Result<bool, ()> {
        let old = self.items.get(&key);
        if old == Some(&item) {
            return Ok(false);
        }
        let used = self.used - old.map_or(0, self.weight) + (self.weight)(&item);
        if used > self.max {
            return Err(());
        }
        self.used = used;
        self.items.insert(key, item);
        Ok(true)
    }

    fn remove(&mut self, key: &Key) -> bool {
        match self.items.remove(key) {
            Some(old) => {
                self.used -= (self.weight)(&old);
                true
            }
            None => false,
        }
    }

    /// Replaces everything with `items`, in order, leaving out those that
    /// do not fit; returns how many were left out.
    fn replace(&mut self, items: impl IntoIterator<Item = (Key, T)>) -> usize {
        let mut fresh = Self::new(self.max, self.weight);
        let mut dropped = 0;
        for (key, item) in items {
            // A later duplicate replaces an earlier one.
            fresh.remove(&key);
            if fresh.put(key, item).is_err() {
                dropped += 1;
            }
        }
        *self = fresh;
        dropped
    }
}

/// What discovery knows.
#[derive(Debug)]
pub(super) struct State {
    services: Table<ServiceInfo>,
    slices: Table<SliceInfo>,
    pods: Table<PodInfo>,
    /// Resources listed at least once: nothing is served before all are,
    /// so that no endpoint is served without the pod that says whether
    /// it is meshed.
    listed: [bool; 3],
}

fn index(r: Resource) -> usize {
    match r {
        Resource::Services => 0,
        Resource::EndpointSlices => 1,
        Resource::Pods => 2,
    }
}

impl State {
    pub(super) fn new(cfg: &Discovery) -> Self {
        Self {
            services: Table::new(cfg.max_services, |_| 1),
            slices: Table::new(cfg.max_endpoints, SliceInfo::weight),
            pods: Table::new(cfg.max_pods, |_| 1),
            listed: [false; 3],
        }
    }

    /// Whether every resource has been listed.
    pub(super) fn ready(&self) -> bool {
        self.listed.iter().all(|l| *l)
    }

    /// Replaces what is known of `r` with a list's items; returns the
    /// bound hit and how many items it left out.
    pub(super) fn listed(
        &mut self,
        r: Resource,
        items: Vec<(Key, Summary)>,
    ) -> Option<(Limit, usize)> {
        self.listed[index(r)] = true;
        let (mut services, mut slices, mut pods) = (Vec::new(), Vec::new(), Vec::new());
        for (key, summary) in items {
            match summary {
                Summary::Service(s) => services.push((key, s)),
                Summary::Slice(s) => slices.push((key, s)),
                Summary::Pod(s) => pods.push((key, s)),
            }
        }
        let dropped = match r {
            Resource::Services => (Limit::Services, self.services.replace(services)),
            Resource::EndpointSlices => (Limit::Endpoints, self.slices.replace(slices)),
            Resource::Pods => (Limit::Pods, self.pods.replace(pods)),
        };
        (dropped.1 > 0).then_some(dropped)
    }

    /// Puts one object; `Ok(changed)`, or the bound that refused it.
    pub(super) fn put(&mut self, key: Key, s: Summary) -> Result<bool, Limit> {
        match s {
            Summary::Service(s) => self.services.put(key, s).map_err(|()| Limit::Services),
            Summary::Slice(s) => self.slices.put(key, s).map_err(|()| Limit::Endpoints),
            Summary::Pod(s) => self.pods.put(key, s).map_err(|()| Limit::Pods),
        }
    }

    /// Forgets one object; whether it was known.
    pub(super) fn delete(&mut self, r: Resource, key: &Key) -> bool {
        match r {
            Resource::Services => self.services.remove(key),
            Resource::EndpointSlices => self.slices.remove(key),
            Resource::Pods => self.pods.remove(key),
        }
    }

    /// Panics unless every table is within its bound and counts its
    /// weight right.
    #[cfg(feature = "fuzzing")]
    pub(super) fn check(&self) {
        fn table<T: PartialEq>(t: &Table<T>, what: &str) {
            let used: usize = t.items.values().map(t.weight).sum();
            assert_eq!(used, t.used, "{what}: weight");
            assert!(t.used <= t.max, "{what}: {} over {}", t.used, t.max);
        }
        table(&self.services, "services");
        table(&self.slices, "endpoints");
        table(&self.pods, "pods");
    }

    /// The services all this stands for.
    pub(super) fn services(&self, cfg: &Discovery, trust_domain: &str) -> Discovered {
        let mut slices: HashMap<(&str, &str), Vec<&SliceInfo>> = HashMap::new();
        for ((ns, _), slice) in &self.slices.items {
            slices
                .entry((ns.as_str(), slice.service.as_str()))
                .or_default()
                .push(slice);
        }
        let mut out = BTreeMap::new();
        for ((ns, name), svc) in &self.services.items {
            let their_slices = slices
                .get(&(ns.as_str(), name.as_str()))
                .map_or(&[][..], Vec::as_slice);
            for (port_name, port) in &svc.ports {
                let fqdn = format!("{name}.{ns}.svc.{}", cfg.cluster_domain);
                let opaque = in_ranges(&svc.opaque, *port);
                let mut endpoints = BTreeMap::new();
                for slice in their_slices {
                    let Some((_, target)) = slice.ports.iter().find(|(n, _)| n == port_name) else {
                        continue;
                    };
                    for e in &slice.endpoints {
                        let pod = match &e.pod {
                            None => None,
                            // Not known yet (or beyond the bound): left
                            // out rather than served as unmeshed.
                            Some(p) => match self.pods.items.get(&(ns.clone(), p.clone())) {
                                Some(info) => Some((p, info)),
                                None => continue,
                            },
                        };
                        for ip in &e.addrs {
                            let addr = SocketAddr::new(*ip, *target);
                            endpoints
                                .entry(addr)
                                .or_insert_with(|| endpoint(addr, ns, pod, cfg, trust_domain));
                        }
                    }
                }
                let service = Service {
                    name: fqdn.clone(),
                    port: *port,
                    addresses: svc
                        .ips
                        .iter()
                        .map(|ip| SocketAddr::new(*ip, *port))
                        .collect(),
                    labels: [
                        ("namespace".to_string(), ns.clone()),
                        ("service".to_string(), name.clone()),
                    ]
                    .into(),
                    endpoints: endpoints.into_values().collect(),
                    profile: Profile {
                        opaque,
                        ..Profile::default()
                    },
                    policy: Policy {
                        protocol: if opaque {
                            Protocol::Opaque
                        } else {
                            Protocol::Detect
                        },
                        ..Policy::default()
                    },
                };
                out.insert(format!("{fqdn}:{port}"), Arc::new(service));
            }
        }
        Discovered::new(out)
    }
}

fn in_ranges(ranges: &[(u16, u16)], port: u16) -> bool {
    ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&port))
}

/// An endpoint as the mesh file would list it: a meshed pod with its
/// service account's identity, `h2` (or, on an opaque port, opaque with
/// the proxy's transport port); anything else plain.
fn endpoint(
    addr: SocketAddr,
    ns: &str,
    pod: Option<(&String, &PodInfo)>,
    cfg: &Discovery,
    trust_domain: &str,
) -> Endpoint {
    let mut e = Endpoint::plain(addr);
    let Some((name, pod)) = pod else {
        return e;
    };
    e.labels = [
        ("pod".to_string(), name.clone()),
        ("serviceaccount".to_string(), pod.service_account.clone()),
    ]
    .into();
    if let Some(inbound) = pod.proxy {
        e.identity = Some(format!(
            "{}.{ns}.serviceaccount.identity.{}.{trust_domain}",
            pod.service_account, cfg.control_plane_namespace
        ));
        if in_ranges(&pod.opaque, addr.port()) {
            e.protocol = Some(Hint::Opaque);
            e.opaque_transport_port = Some(inbound);
        } else {
            e.protocol = Some(Hint::H2);
        }
    }
    e
}

#[cfg(test)]
mod tests;
