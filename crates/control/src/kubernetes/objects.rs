//! The three resources discovery watches, as much of each as it uses,
//! and the compact summary kept of each object.
//!
//! Everything is optional when read: an object that lacks a field is
//! summarised without it, never refused, and every unknown field is
//! ignored (the API server adds fields over time).

use serde::{Deserialize, de::DeserializeOwned};
use std::{collections::BTreeMap, net::IpAddr};

/// The annotations that name a workload's opaque ports, ours first.
const OPAQUE_PORTS: [&str; 2] = [
    "config.linnet.io/opaque-ports",
    "config.linkerd.io/opaque-ports",
];

/// The names of the proxy container in an injected pod: ours and
/// Linkerd's.
const PROXY_CONTAINERS: [&str; 2] = ["linnet-proxy", "linkerd-proxy"];

/// The proxy's inbound port (the transport port) when the container does
/// not name it.
const DEFAULT_INBOUND_PORT: u16 = 4143;

/// A resource discovery watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Resource {
    Services,
    EndpointSlices,
    Pods,
}

impl Resource {
    pub(super) const ALL: [Resource; 3] = [Self::Services, Self::EndpointSlices, Self::Pods];

    /// The collection's path, cluster-wide.
    pub(super) fn path(self) -> &'static str {
        match self {
            Self::Services => "/api/v1/services",
            Self::EndpointSlices => "/apis/discovery.k8s.io/v1/endpointslices",
            Self::Pods => "/api/v1/pods",
        }
    }

    /// Its name in logs and metrics.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Services => "services",
            Self::EndpointSlices => "endpointslices",
            Self::Pods => "pods",
        }
    }

    /// One page of a list: its objects summarised (in order), its
    /// resource version and continuation token.
    pub(super) fn decode_list(self, bytes: &[u8]) -> Result<Page, serde_json::Error> {
        match self {
            Self::Services => page::<ServiceObject>(bytes),
            Self::EndpointSlices => page::<SliceObject>(bytes),
            Self::Pods => page::<PodObject>(bytes),
        }
    }

    /// One line of a watch.
    pub(super) fn decode_event(self, line: &[u8]) -> Result<Event, serde_json::Error> {
        match self {
            Self::Services => event::<ServiceObject>(line),
            Self::EndpointSlices => event::<SliceObject>(line),
            Self::Pods => event::<PodObject>(line),
        }
    }
}

/// An object's namespace and name.
pub(crate) type Key = (String, String);

/// The summary kept of an object.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Summary {
    Service(ServiceInfo),
    Slice(SliceInfo),
    Pod(PodInfo),
}

/// What a Service contributes: its cluster IPs and TCP ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServiceInfo {
    /// Its cluster IPs (none when headless).
    pub(crate) ips: Vec<IpAddr>,
    /// Its TCP ports: (name, port); an EndpointSlice port of the same
    /// name is where the port's traffic goes.
    pub(crate) ports: Vec<(String, u16)>,
    /// Ports its annotation calls opaque (inclusive ranges).
    pub(crate) opaque: Vec<(u16, u16)>,
}

/// What an EndpointSlice contributes: the ready endpoints of one service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SliceInfo {
    /// The Service it belongs to (in the slice's namespace).
    pub(crate) service: String,
    /// Its TCP ports: (name, target port).
    pub(crate) ports: Vec<(String, u16)>,
    /// Its ready endpoints.
    pub(crate) endpoints: Vec<SliceEndpoint>,
}

/// A ready endpoint of a slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SliceEndpoint {
    /// Its addresses (one per family).
    pub(crate) addrs: Vec<IpAddr>,
    /// The pod it is, in the slice's namespace, if any.
    pub(crate) pod: Option<String>,
}

/// What a Pod contributes: whose it is, and whether it runs the proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PodInfo {
    /// Its service account.
    pub(crate) service_account: String,
    /// The proxy's inbound port, when the pod is meshed.
    pub(crate) proxy: Option<u16>,
    /// Ports its annotation calls opaque (inclusive ranges).
    pub(crate) opaque: Vec<(u16, u16)>,
}

impl SliceInfo {
    /// Its weight against `max_endpoints`: its addresses, and at least
    /// one, so that empty slices are bounded too.
    pub(crate) fn weight(&self) -> usize {
        self.endpoints
            .iter()
            .map(|e| e.addrs.len())
            .sum::<usize>()
            .max(1)
    }
}

/// One page of a list.
#[derive(Debug)]
pub(super) struct Page {
    pub(super) items: Vec<(Key, Option<Summary>)>,
    pub(super) resource_version: Option<String>,
    pub(super) next: Option<String>,
}

/// One watch event.
#[derive(Debug)]
pub(super) enum Event {
    /// Added or modified (`None`: nothing to keep of it, as if deleted).
    Put(Key, Option<Summary>, Option<String>),
    Deleted(Key, Option<String>),
    /// Only the resource version moved.
    Bookmark(Option<String>),
    /// The API server's error status (410: the version is too old).
    Error(i64, String),
}

// === the objects as read ===

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Meta {
    name: Option<String>,
    namespace: Option<String>,
    resource_version: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
}

impl Meta {
    fn key(&self) -> Key {
        (
            self.namespace.clone().unwrap_or_default(),
            self.name.clone().unwrap_or_default(),
        )
    }

    fn opaque_ports(&self) -> Vec<(u16, u16)> {
        let annotations = self.annotations.as_ref();
        OPAQUE_PORTS
            .iter()
            .find_map(|k| annotations?.get(*k))
            .map(|v| port_ranges(v))
            .unwrap_or_default()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListMeta {
    resource_version: Option<String>,
    #[serde(rename = "continue")]
    next: Option<String>,
}

#[derive(Deserialize)]
struct List<T> {
    metadata: Option<ListMeta>,
    items: Option<Vec<T>>,
}

#[derive(Deserialize)]
#[serde(tag = "type", content = "object")]
enum WatchEvent<T> {
    #[serde(rename = "ADDED")]
    Added(T),
    #[serde(rename = "MODIFIED")]
    Modified(T),
    #[serde(rename = "DELETED")]
    Deleted(T),
    #[serde(rename = "BOOKMARK")]
    Bookmark(Bookmark),
    #[serde(rename = "ERROR")]
    Error(Status),
}

#[derive(Deserialize)]
struct Bookmark {
    metadata: Option<Meta>,
}

#[derive(Deserialize)]
struct Status {
    code: Option<i64>,
    message: Option<String>,
}

/// An object of one of the resources.
trait Object: DeserializeOwned {
    fn meta(&self) -> Option<&Meta>;
    fn summary(self) -> Option<Summary>;
}

#[derive(Deserialize)]
struct ServiceObject {
    metadata: Option<Meta>,
    spec: Option<ServiceSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServiceSpec {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(rename = "clusterIP")]
    cluster_ip: Option<String>,
    #[serde(rename = "clusterIPs")]
    cluster_ips: Option<Vec<String>>,
    ports: Option<Vec<ServicePort>>,
}

#[derive(Deserialize)]
struct ServicePort {
    name: Option<String>,
    port: Option<i64>,
    protocol: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SliceObject {
    metadata: Option<Meta>,
    address_type: Option<String>,
    endpoints: Option<Vec<Endpoint>>,
    ports: Option<Vec<ServicePort>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Endpoint {
    addresses: Option<Vec<String>>,
    conditions: Option<Conditions>,
    target_ref: Option<ObjectRef>,
}

#[derive(Deserialize)]
struct Conditions {
    ready: Option<bool>,
}

#[derive(Deserialize)]
struct ObjectRef {
    kind: Option<String>,
    name: Option<String>,
}

#[derive(Deserialize)]
struct PodObject {
    metadata: Option<Meta>,
    spec: Option<PodSpec>,
    status: Option<PodStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    service_account_name: Option<String>,
    containers: Option<Vec<Container>>,
    init_containers: Option<Vec<Container>>,
}

#[derive(Deserialize)]
struct Container {
    name: Option<String>,
    ports: Option<Vec<ContainerPort>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerPort {
    name: Option<String>,
    container_port: Option<i64>,
}

#[derive(Deserialize)]
struct PodStatus {
    phase: Option<String>,
}

// === summaries ===

fn port(p: Option<i64>) -> Option<u16> {
    p.and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0)
}

/// TCP ports: (name, port), in order, without unusable ones.
fn tcp_ports(ports: Option<Vec<ServicePort>>) -> Vec<(String, u16)> {
    ports
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.protocol.as_deref().is_none_or(|t| t == "TCP"))
        .filter_map(|p| Some((p.name.unwrap_or_default(), port(p.port)?)))
        .collect()
}

impl Object for ServiceObject {
    fn meta(&self) -> Option<&Meta> {
        self.metadata.as_ref()
    }

    fn summary(self) -> Option<Summary> {
        let spec = self.spec?;
        if spec.kind.as_deref() == Some("ExternalName") {
            return None;
        }
        let mut ips: Vec<IpAddr> = spec
            .cluster_ips
            .unwrap_or_default()
            .into_iter()
            .chain(spec.cluster_ip)
            .filter_map(|ip| ip.parse().ok())
            .collect();
        ips.dedup();
        ips.sort_unstable();
        ips.dedup();
        Some(Summary::Service(ServiceInfo {
            ips,
            ports: tcp_ports(spec.ports),
            opaque: self
                .metadata
                .as_ref()
                .map(Meta::opaque_ports)
                .unwrap_or_default(),
        }))
    }
}

impl Object for SliceObject {
    fn meta(&self) -> Option<&Meta> {
        self.metadata.as_ref()
    }

    fn summary(self) -> Option<Summary> {
        let service = self
            .metadata?
            .labels?
            .remove("kubernetes.io/service-name")?;
        if !matches!(self.address_type.as_deref(), Some("IPv4" | "IPv6")) {
            return None;
        }
        let endpoints = self
            .endpoints
            .unwrap_or_default()
            .into_iter()
            // Unknown readiness is ready, as the API documents.
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
            .map(|e| SliceEndpoint {
                addrs: e
                    .addresses
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|a| a.parse().ok())
                    .collect(),
                pod: e
                    .target_ref
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| r.name),
            })
            .filter(|e| !e.addrs.is_empty())
            .collect();
        Some(Summary::Slice(SliceInfo {
            service,
            ports: tcp_ports(self.ports),
            endpoints,
        }))
    }
}

impl Object for PodObject {
    fn meta(&self) -> Option<&Meta> {
        self.metadata.as_ref()
    }

    fn summary(self) -> Option<Summary> {
        // A pod that has ended is no endpoint.
        if let Some("Succeeded" | "Failed") = self.status.as_ref().and_then(|s| s.phase.as_deref())
        {
            return None;
        }
        let spec = self.spec?;
        let proxy = spec
            .containers
            .into_iter()
            .flatten()
            .chain(spec.init_containers.into_iter().flatten())
            .find(|c| {
                c.name
                    .as_deref()
                    .is_some_and(|n| PROXY_CONTAINERS.contains(&n))
            })
            .map(|c| {
                c.ports
                    .into_iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some("linkerd-proxy"))
                    .and_then(|p| port(p.container_port))
                    .unwrap_or(DEFAULT_INBOUND_PORT)
            });
        Some(Summary::Pod(PodInfo {
            service_account: spec
                .service_account_name
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".to_string()),
            proxy,
            opaque: self
                .metadata
                .as_ref()
                .map(Meta::opaque_ports)
                .unwrap_or_default(),
        }))
    }
}

fn page<T: Object>(bytes: &[u8]) -> Result<Page, serde_json::Error> {
    let list: List<T> = serde_json::from_slice(bytes)?;
    let (resource_version, next) = list
        .metadata
        .map(|m| (m.resource_version, m.next.filter(|c| !c.is_empty())))
        .unwrap_or_default();
    let items = list
        .items
        .unwrap_or_default()
        .into_iter()
        .map(|o| (o.meta().map(Meta::key).unwrap_or_default(), o.summary()))
        .collect();
    Ok(Page {
        items,
        resource_version,
        next,
    })
}

fn event<T: Object>(line: &[u8]) -> Result<Event, serde_json::Error> {
    let version = |m: Option<&Meta>| m.and_then(|m| m.resource_version.clone());
    Ok(match serde_json::from_slice::<WatchEvent<T>>(line)? {
        WatchEvent::Added(o) | WatchEvent::Modified(o) => {
            let (key, rv) = (
                o.meta().map(Meta::key).unwrap_or_default(),
                version(o.meta()),
            );
            Event::Put(key, o.summary(), rv)
        }
        WatchEvent::Deleted(o) => Event::Deleted(
            o.meta().map(Meta::key).unwrap_or_default(),
            version(o.meta()),
        ),
        WatchEvent::Bookmark(b) => Event::Bookmark(version(b.metadata.as_ref())),
        WatchEvent::Error(s) => Event::Error(s.code.unwrap_or(0), s.message.unwrap_or_default()),
    })
}

/// `25,8000-8100` → inclusive ranges; what does not parse is left out.
pub(crate) fn port_ranges(value: &str) -> Vec<(u16, u16)> {
    let port = |s: &str| s.trim().parse::<u16>().ok().filter(|p| *p != 0);
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .filter_map(|item| match item.split_once('-') {
            Some((lo, hi)) => Some((port(lo)?, port(hi)?)).filter(|(lo, hi)| lo <= hi),
            None => port(item).map(|p| (p, p)),
        })
        .collect()
}
