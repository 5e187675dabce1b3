//! The mesh file: what `linnet control` serves, in YAML.
//!
//! The file format is ours; [`Mesh::parse`] reads and validates it into a
//! [`Mesh`], whose parts map onto Linkerd's proxy API (see
//! `examples/mesh.yaml` for a commented example). Every error names where
//! in the file it is.

use crate::discovered::Discovered;
use linnet_config::parse::duration;
use serde::Deserialize;

mod inbound;
mod kubernetes;
mod outbound;

pub use self::inbound::{
    Authorization, Clients, DEFAULT_CLUSTER_NETWORKS, DefaultPolicy, HostMatch, InboundRoute,
    RateLimit, RateLimitOverride, Server, Workload, default_cluster_networks,
};

pub use self::kubernetes::{ApiServer, Discovery, Kubernetes};
pub use self::outbound::{
    AccrualKind, Backend, BackendTarget, Backoff, DEFAULT_MAX_REQUEST_BYTES, Fail, FailureAccrual,
    Filters, GrpcMatch, HeaderEdits, HttpMatch, Load, OpaqueRoute, PathMatch, Penalty, Policy,
    Queue, Ratio, Redirect, RedirectPath, Retry, Route, Sni, SuccessRate, Timeouts, TlsRoute,
    Value, ValueMatch,
};
use self::{
    inbound::parse::{FileWorkload, cluster_networks, workload},
    kubernetes::{FileDiscovery, FileKubernetes, discovery, kubernetes},
    outbound::{file::FilePolicy, parse::policy},
};
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

/// A validated mesh file, and the services discovered beside it.
#[derive(Clone, Debug, PartialEq)]
pub struct Mesh {
    /// The identity issuer's settings (files, lifetimes, tokens).
    pub identity: Identity,
    /// Services by authority (`name:port`, lower case).
    pub services: BTreeMap<String, Service>,
    /// Inbound server policies by workload (the proxy's
    /// `LINKERD2_PROXY_POLICY_WORKLOAD`).
    pub workloads: BTreeMap<String, Workload>,
    /// The policy of ports the file names no server for, unless their
    /// workload has its own.
    pub default_inbound_policy: DefaultPolicy,
    /// Where the cluster-* default policies admit clients from.
    pub cluster_networks: Vec<ipnet::IpNet>,
    /// Endpoint discovery from Kubernetes, when the file turns it on.
    pub discovery: Option<Discovery>,
    /// The services discovery found (never from the file: the
    /// [`Store`](crate::Store) puts them in). Lookups ask the file's
    /// `services` first, so a service the file lists wins over a
    /// discovered one of the same name, address or endpoint.
    pub discovered: Arc<Discovered>,
}

impl Default for Mesh {
    /// Nothing in it; Linkerd's inbound defaults.
    fn default() -> Self {
        Self {
            identity: Identity::default(),
            services: BTreeMap::new(),
            workloads: BTreeMap::new(),
            default_inbound_policy: DefaultPolicy::default(),
            cluster_networks: default_cluster_networks(),
            discovery: None,
            discovered: Arc::default(),
        }
    }
}

/// The mesh CA.
#[derive(Clone, Debug, PartialEq)]
pub struct Identity {
    /// The issuer's certificate (PEM); generated at first start, with its
    /// key, when it does not exist.
    pub issuer_certificate: PathBuf,
    /// The issuer's private key (PEM, PKCS#8).
    pub issuer_key: PathBuf,
    /// The trust anchors (PEM), when the issuer is an intermediate under
    /// them; without them the issuer itself is the trust anchor.
    pub trust_anchors: Option<PathBuf>,
    /// How long issued certificates are valid.
    pub certificate_lifetime: Duration,
    /// How far back issued certificates' validity starts, for clocks that
    /// run behind.
    pub clock_skew_allowance: Duration,
    /// The token each identity must present to be certified.
    pub tokens: BTreeMap<String, String>,
    /// The trust domain, the last part of Linkerd's identity names
    /// (`<sa>.<ns>.serviceaccount.identity.linkerd.<trust-domain>`);
    /// only used for the default control-plane identities.
    pub trust_domain: String,
    /// The control plane's own identities: the DNS SANs of the
    /// certificate it issues itself and serves TLS with off loopback.
    /// Proxies name one of them as `*_SVC_NAME`. By default Linkerd's:
    /// `linkerd-{identity,destination,policy}.linkerd.serviceaccount.identity.linkerd.<trust-domain>`.
    pub control_plane_identities: Vec<String>,
    /// When set, an identity with no token in `tokens` is admitted by
    /// having the Kubernetes API server review the token it presents (its
    /// projected service-account token), as Linkerd's identity
    /// controller does.
    pub kubernetes: Option<Kubernetes>,
}

/// Linkerd's control-plane identities in `trust_domain`.
pub fn default_control_plane_identities(trust_domain: &str) -> Vec<String> {
    ["linkerd-identity", "linkerd-destination", "linkerd-policy"]
        .iter()
        .map(|sa| format!("{sa}.linkerd.serviceaccount.identity.linkerd.{trust_domain}"))
        .collect()
}

/// Linkerd's default trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

impl Default for Identity {
    fn default() -> Self {
        Self {
            trust_domain: DEFAULT_TRUST_DOMAIN.to_string(),
            control_plane_identities: default_control_plane_identities(DEFAULT_TRUST_DOMAIN),
            issuer_certificate: PathBuf::from("issuer.crt"),
            issuer_key: PathBuf::from("issuer.key"),
            trust_anchors: None,
            certificate_lifetime: Duration::from_secs(24 * 3600),
            clock_skew_allowance: Duration::from_secs(20),
            tokens: BTreeMap::new(),
            kubernetes: None,
        }
    }
}

/// A service: its endpoints, its profile and its outbound policy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Service {
    /// The service's name without the port (`web.default.svc.cluster.local`).
    pub name: String,
    /// The port.
    pub port: u16,
    /// Virtual addresses (cluster IPs) that stand for the service: a
    /// connection to one of them is a connection to the service.
    pub addresses: Vec<SocketAddr>,
    /// Labels for every endpoint's metrics.
    pub labels: BTreeMap<String, String>,
    /// The endpoints, in file order.
    pub endpoints: Vec<Endpoint>,
    /// Its service profile (`Destination.GetProfile`).
    pub profile: Profile,
    /// Its outbound policy (`OutboundPolicies`).
    pub policy: Policy,
}

/// One endpoint of a service.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Relative weight, at least 1.
    pub weight: u32,
    /// Its TLS identity, when it runs a proxy with one.
    pub identity: Option<String>,
    /// The name clients send as SNI; for a SPIFFE identity (which SNI
    /// cannot carry). A DNS-like identity is its own server name.
    pub server_name: Option<String>,
    /// What the endpoint's proxy accepts.
    pub protocol: Option<Hint>,
    /// The endpoint's proxy's inbound port, for opaque traffic wrapped in
    /// the transport header.
    pub opaque_transport_port: Option<u16>,
    /// Labels for its metrics.
    pub labels: BTreeMap<String, String>,
}

impl Endpoint {
    /// An endpoint at `addr` with nothing else said of it: weight 1, no
    /// identity (plaintext), no hint, no labels.
    pub fn plain(addr: SocketAddr) -> Self {
        Self {
            addr,
            weight: 1,
            identity: None,
            server_name: None,
            protocol: None,
            opaque_transport_port: None,
            labels: BTreeMap::new(),
        }
    }
}

/// A protocol hint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hint {
    /// HTTP/2, and HTTP/1 upgraded to it between proxies.
    H2,
    /// Opaque TCP.
    Opaque,
}

/// A service profile: routes with timeouts and retries, and a retry budget.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Profile {
    /// Treat connections to the service as opaque TCP.
    pub opaque: bool,
    /// Routes; the first that matches a request wins.
    pub routes: Vec<ProfileRoute>,
    /// The retry budget, if retries are allowed.
    pub retry_budget: Option<RetryBudget>,
}

/// A profile route.
#[derive(Clone, Debug, PartialEq)]
pub struct ProfileRoute {
    /// The route's name, for metrics.
    pub name: String,
    /// Method to match, if any.
    pub method: Option<String>,
    /// Regular expression the path must match, if any.
    pub path_regex: Option<String>,
    /// How long a request may take in all.
    pub timeout: Option<Duration>,
    /// Whether failed requests may be retried.
    pub retryable: bool,
    /// Response statuses that count as failures (inclusive ranges).
    pub failure_statuses: Vec<(u16, u16)>,
}

/// How much extra load retries may add.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryBudget {
    /// Retries allowed per original request (0.2: one in five).
    pub ratio: f32,
    /// Retries always allowed per second.
    pub min_per_second: u32,
    /// The window the ratio is computed over.
    pub ttl: Duration,
}

/// The protocol a port speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Detect it from the first bytes.
    #[default]
    Detect,
    /// HTTP/1.x.
    Http1,
    /// HTTP/2.
    Http2,
    /// gRPC (HTTP/2).
    Grpc,
    /// Opaque TCP: no detection.
    Opaque,
    /// TLS, routed by SNI (outbound) without being terminated.
    Tls,
}

/// A file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not YAML of the expected shape.
    #[error("not valid YAML for a mesh file: {0}")]
    Yaml(String),
    /// A value is wrong.
    #[error("{at}: {reason}")]
    Invalid {
        /// Where in the file.
        at: String,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(at: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::Invalid {
        at: at.into(),
        reason: reason.into(),
    }
}

// === the file as written ===

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileMesh {
    #[serde(default)]
    identity: Option<FileIdentity>,
    #[serde(default)]
    services: BTreeMap<String, FileService>,
    #[serde(default)]
    workloads: BTreeMap<String, FileWorkload>,
    default_inbound_policy: Option<DefaultPolicy>,
    cluster_networks: Option<Vec<String>>,
    discovery: Option<FileDiscovery>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileIdentity {
    issuer: Option<FileIssuer>,
    certificate_lifetime: Option<String>,
    clock_skew_allowance: Option<String>,
    #[serde(default)]
    tokens: BTreeMap<String, FileToken>,
    trust_domain: Option<String>,
    control_plane_identities: Option<Vec<String>>,
    kubernetes: Option<FileKubernetes>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileIssuer {
    certificate: PathBuf,
    key: PathBuf,
    trust_anchors: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum FileToken {
    Inline(String),
    File {
        #[serde(rename = "file")]
        file: PathBuf,
    },
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileService {
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    endpoints: Vec<FileEndpoint>,
    #[serde(default)]
    profile: Option<FileProfile>,
    #[serde(default)]
    policy: Option<FilePolicy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEndpoint {
    addr: String,
    weight: Option<u32>,
    identity: Option<String>,
    server_name: Option<String>,
    protocol: Option<Hint>,
    opaque_transport_port: Option<u16>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileProfile {
    #[serde(default)]
    opaque: bool,
    #[serde(default)]
    routes: Vec<FileProfileRoute>,
    retry_budget: Option<FileRetryBudget>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileProfileRoute {
    name: String,
    method: Option<String>,
    path: Option<String>,
    timeout: Option<String>,
    #[serde(default)]
    retryable: bool,
    #[serde(default)]
    failure_statuses: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRetryBudget {
    ratio: f32,
    #[serde(default)]
    min_per_second: u32,
    ttl: Option<String>,
}

// === validation ===

/// The largest mesh file read (a ConfigMap holds at most 1 MiB).
pub const MAX_MESH_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// The largest token file read (a service-account token is a few KiB).
pub const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

/// Reads `path` as UTF-8, refusing a file of more than `max` bytes (or a
/// device that never ends) rather than reading it all.
fn read_bounded(path: &Path, max: u64) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(max + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        ));
    }
    Ok(text)
}

impl Mesh {
    /// Reads and validates the file at `path`; relative paths inside it
    /// are relative to its directory.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = read_bounded(path, MAX_MESH_FILE_BYTES).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, dir)
    }

    /// Validates a mesh file's text; `dir` anchors relative paths.
    pub fn parse(text: &str, dir: &Path) -> Result<Self, Error> {
        let file: FileMesh = if text.trim().is_empty() {
            FileMesh::default()
        } else {
            yaml_serde::from_str(text).map_err(|e| Error::Yaml(e.to_string()))?
        };
        let mut mesh = Mesh {
            identity: identity(file.identity.unwrap_or_default(), dir)?,
            ..Mesh::default()
        };
        for (authority, svc) in file.services {
            let at = format!("services.{authority}");
            let (name, port) = parse_authority(&authority).map_err(|r| invalid(&at, r))?;
            let key = format!("{name}:{port}");
            if mesh.services.contains_key(&key) {
                return Err(invalid(&at, "listed twice"));
            }
            mesh.services.insert(key, service(name, port, svc, &at)?);
        }
        // Backends must name services that exist.
        for (authority, svc) in &mesh.services {
            for (route, b) in svc.policy.backends() {
                if let BackendTarget::Service(s) = &b.target {
                    if !mesh.services.contains_key(s) {
                        return Err(invalid(
                            format!("services.{authority}.policy.{route}"),
                            format!("backend {s} is not a service in this file"),
                        ));
                    }
                }
            }
        }
        for (name, w) in file.workloads {
            let w = workload(&name, w, &format!("workloads.{name}"))?;
            mesh.workloads.insert(name, w);
        }
        mesh.default_inbound_policy = file.default_inbound_policy.unwrap_or_default();
        mesh.cluster_networks = cluster_networks(file.cluster_networks)?;
        mesh.discovery = discovery(file.discovery.unwrap_or_default(), dir)?;
        Ok(mesh)
    }

    /// The default inbound policy of `workload`'s ports: its own, else
    /// the file's.
    pub fn default_inbound_policy(&self, workload: &str) -> DefaultPolicy {
        self.workloads
            .get(workload)
            .and_then(|w| w.default_inbound_policy)
            .unwrap_or(self.default_inbound_policy)
    }

    /// The service at `authority` (`name:port`, any case).
    pub fn service(&self, authority: &str) -> Option<&Service> {
        let (name, port) = parse_authority(authority).ok()?;
        self.named(&format!("{name}:{port}"))
    }

    /// The service at `key` (`name:port`, normalised): the file's, else
    /// a discovered one.
    pub fn named(&self, key: &str) -> Option<&Service> {
        self.services
            .get(key)
            .or_else(|| self.discovered.service(key))
    }

    /// The service one of whose virtual addresses is `addr`: the file's,
    /// else a discovered one (or, when the file lists a service of that
    /// name, the file's).
    pub fn service_by_addr(&self, addr: SocketAddr) -> Option<&Service> {
        self.services
            .values()
            .find(|s| s.addresses.contains(&addr))
            .or_else(|| {
                let found = self.discovered.service_by_addr(addr)?;
                let key = format!("{}:{}", found.name, found.port);
                Some(self.services.get(&key).unwrap_or(found))
            })
    }

    /// Whether the answer for a target must wait for discovery: it is on
    /// and has not listed the cluster yet, and the target (`name`
    /// without its port, or `None` for an address) is one it could know.
    /// Proxies are then told nothing rather than "unknown", so they do
    /// not go around a service the mesh is about to name.
    pub fn awaits_discovery(&self, name: Option<&str>) -> bool {
        let Some(d) = &self.discovery else {
            return false;
        };
        !self.discovered.is_synced()
            && name.is_none_or(|n| {
                n.strip_suffix(d.cluster_domain.as_str())
                    .is_some_and(|rest| rest.ends_with(".svc."))
            })
    }

    /// An endpoint at `addr`, with the service it belongs to: the file's,
    /// else a discovered one.
    pub fn endpoint(&self, addr: SocketAddr) -> Option<(&Service, &Endpoint)> {
        self.services
            .values()
            .find_map(|s| s.endpoints.iter().find(|e| e.addr == addr).map(|e| (s, e)))
            .or_else(|| self.discovered.endpoint(addr))
    }
}

/// `name:port` → (lower-case name without a trailing dot, port).
pub fn parse_authority(authority: &str) -> Result<(String, u16), String> {
    let (name, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| format!("{authority:?} is not name:port"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{authority:?} has no valid port"))?;
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !valid {
        return Err(format!("{name:?} is not a DNS name"));
    }
    Ok((name, port))
}

fn dur(s: &Option<String>, at: &str, default: Duration) -> Result<Duration, Error> {
    match s {
        None => Ok(default),
        Some(s) => duration(s).map_err(|r| invalid(at, r)),
    }
}

fn opt_dur(s: &Option<String>, at: &str) -> Result<Option<Duration>, Error> {
    s.as_ref()
        .map(|s| duration(s).map_err(|r| invalid(at, r)))
        .transpose()
}

fn identity(id: FileIdentity, dir: &Path) -> Result<Identity, Error> {
    let d = Identity::default();
    let (cert, key, anchors) = match id.issuer {
        Some(i) => (i.certificate, i.key, i.trust_anchors),
        None => (d.issuer_certificate, d.issuer_key, None),
    };
    let certificate_lifetime = dur(
        &id.certificate_lifetime,
        "identity.certificate_lifetime",
        d.certificate_lifetime,
    )?;
    if certificate_lifetime < Duration::from_secs(1) {
        return Err(invalid(
            "identity.certificate_lifetime",
            "must be at least 1s",
        ));
    }
    let mut tokens = BTreeMap::new();
    for (name, token) in id.tokens {
        let at = format!("identity.tokens.{name}");
        check_identity_name(&name).map_err(|r| invalid(&at, r))?;
        let token = match token {
            FileToken::Inline(t) => t,
            FileToken::File { file } => {
                let path = dir.join(file);
                read_bounded(&path, MAX_TOKEN_FILE_BYTES)
                    .map_err(|e| invalid(&at, format!("cannot read {}: {e}", path.display())))?
                    .trim()
                    .to_string()
            }
        };
        if token.is_empty() {
            return Err(invalid(at, "empty token"));
        }
        tokens.insert(name, token);
    }
    let trust_domain = match id.trust_domain {
        Some(t) => {
            let t = t.trim_end_matches('.').to_ascii_lowercase();
            parse_authority(&format!("{t}:1")).map_err(|r| invalid("identity.trust_domain", r))?;
            t
        }
        None => d.trust_domain,
    };
    let control_plane_identities = match id.control_plane_identities {
        None => default_control_plane_identities(&trust_domain),
        Some(names) => {
            if names.is_empty() {
                return Err(invalid(
                    "identity.control_plane_identities",
                    "empty: the control plane needs at least one identity to serve TLS with",
                ));
            }
            let mut seen = BTreeSet::new();
            let mut out = Vec::with_capacity(names.len());
            for (i, n) in names.iter().enumerate() {
                let at = format!("identity.control_plane_identities[{i}]");
                // Proxies verify the control plane by a DNS SAN, and send
                // the name as SNI: a SPIFFE URI cannot be one.
                let (name, _) = parse_authority(&format!("{n}:1"))
                    .map_err(|r| invalid(&at, format!("{r} (a DNS-like identity)")))?;
                if !seen.insert(name.clone()) {
                    return Err(invalid(at, format!("{name} is listed twice")));
                }
                out.push(name);
            }
            out
        }
    };
    Ok(Identity {
        trust_domain,
        control_plane_identities,
        issuer_certificate: dir.join(cert),
        issuer_key: dir.join(key),
        trust_anchors: anchors.map(|a| dir.join(a)),
        certificate_lifetime,
        clock_skew_allowance: dur(
            &id.clock_skew_allowance,
            "identity.clock_skew_allowance",
            d.clock_skew_allowance,
        )?,
        tokens,
        kubernetes: id.kubernetes.map(|k| kubernetes(k, dir)).transpose()?,
    })
}

/// An identity is a DNS-like name (or a `spiffe://` URI). (Looser than
/// the proxies' parser on purpose: the fail-closed tests need a control
/// plane that names identities proxies refuse.)
pub fn check_identity_name(name: &str) -> Result<(), String> {
    if let Some(rest) = name.strip_prefix("spiffe://") {
        if rest.is_empty() || rest.contains(char::is_whitespace) {
            return Err(format!("{name:?} is not a SPIFFE ID"));
        }
        return Ok(());
    }
    parse_authority(&format!("{name}:1")).map(|_| ())
}

fn service(name: String, port: u16, svc: FileService, at: &str) -> Result<Service, Error> {
    let addresses = svc
        .addresses
        .iter()
        .map(|a| {
            a.parse::<SocketAddr>()
                .map_err(|_| invalid(format!("{at}.addresses"), format!("{a:?} is not IP:port")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut seen = BTreeSet::new();
    let mut endpoints = Vec::new();
    for (i, e) in svc.endpoints.into_iter().enumerate() {
        let at = format!("{at}.endpoints[{i}]");
        let e = endpoint(e, &at)?;
        if !seen.insert(e.addr) {
            return Err(invalid(&at, format!("{} is listed twice", e.addr)));
        }
        endpoints.push(e);
    }
    let profile = match svc.profile {
        None => Profile::default(),
        Some(p) => profile(p, &format!("{at}.profile"))?,
    };
    let policy = match svc.policy {
        None => Policy::default(),
        Some(p) => policy(p, &format!("{at}.policy"))?,
    };
    Ok(Service {
        name,
        port,
        addresses,
        labels: svc.labels,
        endpoints,
        profile,
        policy,
    })
}

/// Validates one endpoint: a service's, or an address backend's.
fn endpoint(e: FileEndpoint, at: &str) -> Result<Endpoint, Error> {
    let addr: SocketAddr = e
        .addr
        .parse()
        .map_err(|_| invalid(at, format!("addr {:?} is not IP:port", e.addr)))?;
    if addr.port() == 0 || addr.ip().is_unspecified() {
        return Err(invalid(at, format!("addr {addr} cannot be connected to")));
    }
    let weight = e.weight.unwrap_or(1);
    if weight == 0 {
        return Err(invalid(at, "weight 0: remove the endpoint instead"));
    }
    if let Some(id) = &e.identity {
        check_identity_name(id).map_err(|r| invalid(at, r))?;
    }
    if e.opaque_transport_port == Some(0) {
        return Err(invalid(at, "opaque_transport_port 0"));
    }
    if let Some(n) = &e.server_name {
        parse_authority(&format!("{n}:1")).map_err(|r| invalid(at, format!("server_name: {r}")))?;
    }
    Ok(Endpoint {
        addr,
        weight,
        server_name: e.server_name,
        identity: e.identity,
        protocol: e.protocol,
        opaque_transport_port: e.opaque_transport_port,
        labels: e.labels,
    })
}

/// `500`, `500-599` or `5xx` → an inclusive range.
fn status_range(s: &str) -> Option<(u16, u16)> {
    let s = s.trim();
    let in_range = |n: u16| (100..=599).contains(&n);
    if let Some(d) = s.strip_suffix("xx") {
        let d: u16 = d.parse().ok()?;
        return (1..=5).contains(&d).then_some((d * 100, d * 100 + 99));
    }
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
        None => {
            let n = s.parse().ok()?;
            (n, n)
        }
    };
    (in_range(lo) && in_range(hi) && lo <= hi).then_some((lo, hi))
}

fn statuses(list: &[String], at: &str) -> Result<Vec<(u16, u16)>, Error> {
    list.iter()
        .map(|s| {
            status_range(s).ok_or_else(|| {
                invalid(
                    at,
                    format!("{s:?} is not a status, a range like 500-599, or 5xx"),
                )
            })
        })
        .collect()
}

fn method(m: &Option<String>, at: &str) -> Result<Option<String>, Error> {
    match m {
        None => Ok(None),
        Some(m) => {
            let up = m.to_ascii_uppercase();
            http::Method::from_bytes(up.as_bytes())
                .map_err(|_| invalid(at, format!("{m:?} is not an HTTP method")))?;
            Ok(Some(up))
        }
    }
}

fn profile(p: FileProfile, at: &str) -> Result<Profile, Error> {
    let mut routes = Vec::new();
    for r in p.routes {
        let at = format!("{at}.routes.{}", r.name);
        if let Some(path) = &r.path {
            regex_syntax::Parser::new()
                .parse(path)
                .map_err(|e| invalid(&at, format!("path is not a regular expression: {e}")))?;
        }
        routes.push(ProfileRoute {
            method: method(&r.method, &at)?,
            path_regex: r.path,
            timeout: opt_dur(&r.timeout, &format!("{at}.timeout"))?,
            retryable: r.retryable,
            failure_statuses: statuses(&r.failure_statuses, &format!("{at}.failure_statuses"))?,
            name: r.name,
        });
    }
    let retry_budget = match p.retry_budget {
        None => None,
        Some(b) => {
            if !(0.0..=1000.0).contains(&b.ratio) {
                return Err(invalid(
                    format!("{at}.retry_budget.ratio"),
                    "must be from 0 to 1000",
                ));
            }
            Some(RetryBudget {
                ratio: b.ratio,
                min_per_second: b.min_per_second,
                ttl: dur(
                    &b.ttl,
                    &format!("{at}.retry_budget.ttl"),
                    Duration::from_secs(10),
                )?,
            })
        }
    };
    Ok(Profile {
        opaque: p.opaque,
        routes,
        retry_budget,
    })
}

#[cfg(test)]
mod tests;
