//! Service discovery: what the control plane says about where traffic
//! goes, watched once per target and shared.
//!
//! [`Discovery`] keeps one watch per key, shared by every connection and
//! stack that reads it and closed after an idle timeout: endpoint sets
//! per authority (`Destination.Get`, [`Resolution`]); profiles per
//! original destination (`Destination.GetProfile`, [`Profile`], with its
//! `routes`); outbound policies per original destination
//! (`OutboundPolicies.Watch`, [`OutboundPolicy`]: reduced, plus the whole
//! `model`); and each inbound port's protocol
//! (`InboundServerPolicies.WatchPort`). Names the control plane does not
//! know fall back to DNS.
//!
//! On the request path, once an outbound connection's original
//! destination is known and before protocol detection, the proxy asks
//! [`Discovery::outbound`] where it goes: forwarded as addressed, refused
//! because the control plane did not answer in time, or to a service
//! ([`Outbound::Service`]). A service's HTTP goes through the stack
//! `linnet-outbound` builds for its [`Logical`]; that crate hands
//! [`Discovery::endpoints`] answers to its balancers as change streams.
//! Opaque connections and explicit-proxy requests take one endpoint from
//! [`Balancer::pick`].
//!
//! Watches reconnect with jittered exponential backoff and keep their last
//! answer meanwhile, so an unreachable control plane leaves traffic
//! flowing to the endpoints last known. Malformed answers are skipped,
//! logged and counted.

pub mod control;
mod destination;
mod dns;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod metrics;
mod policy;
mod watch;

pub use linnet_core::endpoint::{Endpoint, Hint, plain};

pub use self::{
    dns::Dns,
    metrics::Metrics,
    policy::{BackendSpec, OutboundPolicy, PolicyAnswer},
};

use linkerd2_proxy_api::{
    destination::{GetDestination, destination_client::DestinationClient},
    inbound::{self, PortSpec, inbound_server_policies_client::InboundServerPoliciesClient},
    outbound::{TrafficSpec, outbound_policies_client::OutboundPoliciesClient, traffic_spec},
};
use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::watch as tw;
use tonic::transport::Channel;

/// A control-plane service's address: `host:port`, and the identity it
/// must present (off loopback; see [`control`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlAddr {
    /// `host:port` or `ip:port`.
    pub addr: String,
    /// The service's identity, if any.
    pub name: Option<String>,
}

/// Discovery settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// The Destination service; without it, nothing is discovered.
    pub destination: Option<ControlAddr>,
    /// The policy service.
    pub policy: Option<ControlAddr>,
    /// This workload, as the policy service knows it.
    pub workload: Option<String>,
    /// Sent with every Destination lookup.
    pub context_token: String,
    /// Watches nobody has used for this long are closed.
    pub idle_timeout: Duration,
    /// How long a connection waits for a first answer before going on
    /// without one.
    pub initial_wait: Duration,
    /// DNS servers for the fallback (the system's when empty).
    pub dns_servers: Vec<SocketAddr>,
    /// Bounds on how long DNS answers are kept.
    pub dns_min_ttl: Duration,
    /// See `dns_min_ttl`.
    pub dns_max_ttl: Duration,
    /// TLS to a control plane off loopback; without it only loopback
    /// services can be reached.
    pub tls: Option<control::ControlTls>,
}

/// What a lookup has found so far.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Resolution {
    /// No answer yet.
    #[default]
    Pending,
    /// The name does not exist here: fall back.
    NotFound,
    /// The endpoints (possibly none).
    Endpoints(Arc<BTreeMap<SocketAddr, Arc<Endpoint>>>),
}

/// What `GetProfile` says of an original destination.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Profile {
    /// The service it stands for (without the port), if it is one.
    pub name: Option<String>,
    /// Treat its connections as opaque TCP.
    pub opaque: bool,
    /// The endpoint it is, if it is one.
    pub endpoint: Option<Endpoint>,
    /// Its routes (timeouts, retries) and retry budget, when it has any.
    pub routes: Option<Arc<linnet_policy::outbound::profile::ProfileRoutes>>,
}

/// An inbound port's server policy, as the policy service last sent it.
pub type ServerPolicy = Arc<linnet_policy::inbound::ServerPolicy>;

const DST_GET: &str = "Destination.Get";
const DST_PROFILE: &str = "Destination.GetProfile";
const INBOUND_PORT: &str = "InboundServerPolicies.WatchPort";
const OUTBOUND_POLICY: &str = "OutboundPolicies.Watch";

/// The discovery service; cheap to clone.
#[derive(Clone, Debug)]
pub struct Discovery {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: Config,
    dst: Option<DestinationClient<Channel>>,
    policy: Option<InboundServerPoliciesClient<Channel>>,
    outbound_policy: Option<OutboundPoliciesClient<Channel>>,
    outbound_policies: watch::Cache<SocketAddr, PolicyAnswer>,
    endpoints: watch::Cache<String, Resolution>,
    profiles: watch::Cache<String, Option<Profile>>,
    ports: watch::Cache<u16, Option<ServerPolicy>>,
    dns_names: watch::Cache<(String, u16), Resolution>,
    dns: Dns,
    metrics: Metrics,
}

/// Discovery could not be set up.
#[derive(Debug)]
pub struct Error(String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl Discovery {
    /// Clients for the configured services (connected lazily).
    pub fn new(config: Config, metrics: Metrics) -> Result<Self, Error> {
        let dst = config
            .destination
            .as_ref()
            .map(|c| {
                control::channel("destination", c, config.tls.as_ref()).map(DestinationClient::new)
            })
            .transpose()
            .map_err(|e| Error(e.to_string()))?;
        let policy_channel = config
            .policy
            .as_ref()
            .map(|c| control::channel("policy", c, config.tls.as_ref()))
            .transpose()
            .map_err(|e| Error(e.to_string()))?;
        let policy = policy_channel.clone().map(InboundServerPoliciesClient::new);
        let outbound_policy = policy_channel.map(OutboundPoliciesClient::new);
        let dns = Dns::new(
            &config.dns_servers,
            config.dns_min_ttl,
            config.dns_max_ttl,
            metrics.resolutions.clone(),
        )
        .map_err(|e| Error(format!("DNS resolver: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                dst,
                policy,
                outbound_policy,
                outbound_policies: Default::default(),
                endpoints: Default::default(),
                profiles: Default::default(),
                ports: Default::default(),
                dns_names: Default::default(),
                dns,
                metrics,
            }),
        })
    }

    /// Whether a Destination service is configured.
    pub fn has_destination(&self) -> bool {
        self.inner.dst.is_some()
    }

    /// Whether a policy service is configured.
    pub fn has_policy(&self) -> bool {
        self.inner.policy.is_some()
    }

    /// How long a connection waits for a first answer.
    pub fn initial_wait(&self) -> Duration {
        self.inner.config.initial_wait
    }

    fn get(&self, path: &str) -> GetDestination {
        GetDestination {
            scheme: "k8s".to_string(),
            path: path.to_string(),
            context_token: self.inner.config.context_token.clone(),
        }
    }

    /// The endpoints of `authority` (`name:port`), watched.
    pub fn endpoints(&self, authority: &str) -> Option<tw::Receiver<Resolution>> {
        let client = self.inner.dst.clone()?;
        let key = authority.to_ascii_lowercase();
        let (idle, metrics) = (self.inner.config.idle_timeout, self.inner.metrics.clone());
        let req = self.get(&key);
        Some(
            self.inner
                .endpoints
                .get(&key, Resolution::default, move |tx, evict| {
                    let apply = destination::Endpoints {
                        metrics: metrics.clone(),
                    };
                    tokio::spawn(watch::run(
                        DST_GET,
                        tx,
                        evict,
                        idle,
                        metrics,
                        move || {
                            let mut client = client.clone();
                            let req = req.clone();
                            async move { client.get(req).await.map(|r| r.into_inner()) }
                        },
                        apply,
                    ));
                }),
        )
    }

    /// The profile of an original destination, watched.
    pub fn profile(&self, addr: SocketAddr) -> Option<tw::Receiver<Option<Profile>>> {
        self.profile_of(addr.to_string())
    }

    /// The profile of the service `authority` (`name:port`), watched.
    pub fn profile_named(&self, authority: &str) -> Option<tw::Receiver<Option<Profile>>> {
        self.profile_of(authority.to_ascii_lowercase())
    }

    fn profile_of(&self, path: String) -> Option<tw::Receiver<Option<Profile>>> {
        let client = self.inner.dst.clone()?;
        let (idle, metrics) = (self.inner.config.idle_timeout, self.inner.metrics.clone());
        let req = self.get(&path);
        Some(self.inner.profiles.get(
            &path,
            || None,
            move |tx, evict| {
                let apply = destination::Profiles {
                    metrics: metrics.clone(),
                };
                tokio::spawn(watch::run(
                    DST_PROFILE,
                    tx,
                    evict,
                    idle,
                    metrics,
                    move || {
                        let mut client = client.clone();
                        let req = req.clone();
                        async move { client.get_profile(req).await.map(|r| r.into_inner()) }
                    },
                    apply,
                ));
            },
        ))
    }

    /// `name` resolved with DNS, followed as its records expire.
    pub fn dns(&self, name: &str, port: u16) -> tw::Receiver<Resolution> {
        let key = (name.to_ascii_lowercase(), port);
        let dns = self.inner.dns.clone();
        let (name, port) = key.clone();
        self.inner
            .dns_names
            .get(&key, Resolution::default, move |tx, evict| {
                tokio::spawn(async move {
                    dns.follow(name, port, tx.clone()).await;
                    evict.try_evict(&tx);
                });
            })
    }

    /// The server policy of inbound `port`, watched; `None` until it
    /// arrives. `None` without a policy service.
    pub fn server_policy(&self, port: u16) -> Option<tw::Receiver<Option<ServerPolicy>>> {
        let client = self.inner.policy.clone()?;
        let workload = self.inner.config.workload.clone()?;
        let (idle, metrics) = (self.inner.config.idle_timeout, self.inner.metrics.clone());
        Some(self.inner.ports.get(
            &port,
            || None,
            move |tx, evict| {
                let apply = PortPolicies {
                    metrics: metrics.clone(),
                };
                tokio::spawn(watch::run(
                    INBOUND_PORT,
                    tx,
                    evict,
                    idle,
                    metrics,
                    move || {
                        let mut client = client.clone();
                        let req = PortSpec {
                            workload: workload.clone(),
                            port: u32::from(port),
                        };
                        async move { client.watch_port(req).await.map(|r| r.into_inner()) }
                    },
                    apply,
                ));
            },
        ))
    }

    /// The outbound policy for `orig_dst`, watched.
    pub fn outbound_policy(&self, orig_dst: SocketAddr) -> Option<tw::Receiver<PolicyAnswer>> {
        let client = self.inner.outbound_policy.clone()?;
        let (idle, metrics) = (self.inner.config.idle_timeout, self.inner.metrics.clone());
        let source_workload = self.inner.config.workload.clone().unwrap_or_default();
        Some(self.inner.outbound_policies.get(
            &orig_dst,
            PolicyAnswer::default,
            move |tx, evict| {
                let apply = policy::Policies {
                    metrics: metrics.clone(),
                };
                tokio::spawn(watch::run(
                    OUTBOUND_POLICY,
                    tx,
                    evict,
                    idle,
                    metrics,
                    move || {
                        let mut client = client.clone();
                        let req = TrafficSpec {
                            source_workload: source_workload.clone(),
                            target: Some(traffic_spec::Target::Addr(orig_dst.into())),
                        };
                        async move { client.watch(req).await.map(|r| r.into_inner()) }
                    },
                    apply,
                ));
            },
        ))
    }

    /// Where an outbound connection to `orig_dst` goes: the backends its
    /// outbound policy names; without one, the endpoints of the service
    /// its profile names, or the endpoint it is; without that, itself.
    /// When the control plane has not answered within the initial wait,
    /// [`Outbound::Undecided`]: whether the target is meshed is unknown,
    /// so it must not be reached in plaintext.
    pub async fn outbound(&self, orig_dst: SocketAddr) -> Outbound {
        let wait = self.inner.config.initial_wait;
        if let Some(mut rx) = self.outbound_policy(orig_dst) {
            let answer = match tokio::time::timeout(
                wait,
                rx.wait_for(|a| *a != PolicyAnswer::Pending),
            )
            .await
            {
                Ok(Ok(a)) => a.clone(),
                _ => PolicyAnswer::Pending,
            };
            match answer {
                PolicyAnswer::Found(p) => {
                    return Outbound::Service {
                        opaque: p.opaque,
                        logical: Logical::Policy(rx.clone()),
                        balancer: Balancer::with_policy(self.clone(), orig_dst, rx),
                        profile: None,
                    };
                }
                PolicyAnswer::NotFound => {}
                PolicyAnswer::Pending => {
                    tracing::info!(%orig_dst, ?wait, "no outbound policy from the control plane in time; trying the profile");
                }
            }
        }
        let Some(mut profile) = self.profile(orig_dst) else {
            return Outbound::Forward {
                opaque: false,
                endpoint: None,
            };
        };
        let p = match tokio::time::timeout(wait, profile.wait_for(Option::is_some)).await {
            Ok(Ok(p)) => p.clone().unwrap_or_default(),
            _ => {
                tracing::info!(%orig_dst, ?wait, "no profile from the control plane in time: whether the target is meshed is unknown");
                return Outbound::Undecided { waited: wait };
            }
        };
        match p.name {
            Some(name) => {
                let authority = format!("{name}:{}", orig_dst.port());
                Outbound::Service {
                    opaque: p.opaque,
                    logical: Logical::Service {
                        authority: authority.clone(),
                    },
                    balancer: Balancer::single(
                        self.clone(),
                        authority,
                        Fallback::Forward(orig_dst),
                    ),
                    profile: Some(profile),
                }
            }
            None => Outbound::Forward {
                opaque: p.opaque,
                // The control plane may name the pod the address belongs
                // to, and its identity.
                // (Whatever address it gives, the connection's own is the
                // one dialled, and the identity applies to it.)
                endpoint: p.endpoint.map(|mut e| {
                    e.addr = orig_dst;
                    Arc::new(e)
                }),
            },
        }
    }

    /// A balancer over `name:port`'s endpoints, falling back to DNS.
    pub fn authority(&self, name: &str, port: u16) -> Balancer {
        Balancer::single(
            self.clone(),
            format!("{}:{port}", name.trim_end_matches('.').to_ascii_lowercase()),
            Fallback::Dns {
                name: name.to_string(),
                port,
            },
        )
    }
}

/// Applies inbound server policies: each message replaces the port's
/// policy (keeping the rate limiter's buckets when its limits did not
/// change); a malformed piece is dropped and counted, never widened.
struct PortPolicies {
    metrics: Metrics,
}

impl watch::Apply<inbound::Server, Option<ServerPolicy>> for PortPolicies {
    fn message(&mut self, tx: &tw::Sender<Option<ServerPolicy>>, s: inbound::Server, _first: bool) {
        use linnet_policy::inbound::{HttpPolicy, Protocol, ServerPolicy as Policy};
        let metrics = &self.metrics;
        let converted = linnet_policy::inbound::proto::from_proto(s, &mut |reason| {
            tracing::warn!(
                reason,
                "control plane sent a malformed piece of an inbound server policy; skipped"
            );
            metrics.skipped(reason);
        });
        let mut policy = match converted {
            Ok(p) => p,
            Err(error) => {
                metrics.skipped("invalid_server_routes");
                if tx.borrow().is_some() {
                    tracing::warn!(%error, "keeping the port's previous policy");
                    return;
                }
                // Nothing to keep: nobody is admitted rather than more
                // than the control plane meant.
                tracing::warn!(%error, "admitting no one on the port until a usable policy arrives");
                Policy {
                    meta: linnet_policy::outbound::Meta::Default {
                        name: "invalid".into(),
                    },
                    protocol: Protocol::Detect {
                        timeout: linnet_policy::inbound::DEFAULT_DETECT_TIMEOUT,
                        http: Arc::new(HttpPolicy {
                            http_routes: Vec::new(),
                            grpc_routes: Vec::new(),
                            rate_limit: None,
                        }),
                    },
                    authorizations: Arc::from([]),
                }
            }
        };
        if let Some(prev) = tx.borrow().as_ref() {
            policy.carry_state_from(prev);
        }
        tx.send_if_modified(|current| {
            if current.as_deref() == Some(&policy) {
                return false;
            }
            *current = Some(Arc::new(policy));
            true
        });
    }
}

/// Where an outbound connection goes.
#[derive(Debug)]
pub enum Outbound {
    /// To its original destination.
    Forward {
        /// Skip protocol detection.
        opaque: bool,
        /// The endpoint the control plane says it is (with its identity,
        /// when meshed).
        endpoint: Option<Arc<Endpoint>>,
    },
    /// Nowhere: the control plane did not answer in time, so whether the
    /// target is meshed is unknown.
    Undecided {
        /// How long the answer was waited for.
        waited: Duration,
    },
    /// To the endpoints of a service.
    Service {
        /// Skip protocol detection.
        opaque: bool,
        /// What its HTTP stack follows.
        logical: Logical,
        /// Picks an endpoint per request or connection.
        balancer: Balancer,
        /// The profile's watch: hold it while the connection lasts, so it
        /// is not closed as idle.
        profile: Option<tw::Receiver<Option<Profile>>>,
    },
}

/// What a logical target's HTTP stack follows.
#[derive(Clone, Debug)]
pub enum Logical {
    /// Its outbound policy (routes, backends, timeouts, retries...).
    Policy(tw::Receiver<PolicyAnswer>),
    /// A service with no outbound policy (its profile, if any, is in
    /// [`Outbound::Service`]'s `profile`), balanced over its endpoints.
    Service {
        /// `name:port`, as `Destination.Get` knows it.
        authority: String,
    },
}

/// What to do when the control plane does not know an authority.
#[derive(Clone, Debug)]
enum Fallback {
    /// Resolve the name with DNS.
    Dns { name: String, port: u16 },
    /// Connect to the original destination.
    Forward(SocketAddr),
}

/// Picks endpoints, as the control plane's answers change: of one
/// authority, or of the weighted backends an outbound policy names.
#[derive(Clone, Debug)]
pub struct Balancer {
    discovery: Discovery,
    name: String,
    backends: Backends,
}

#[derive(Clone, Debug)]
enum Backends {
    /// One authority.
    Single(Arc<Target>),
    /// Whatever the policy says now; targets are kept per backend so
    /// their watches are shared across picks.
    Policy {
        rx: tw::Receiver<PolicyAnswer>,
        orig_dst: SocketAddr,
        targets: Arc<Mutex<PolicyTargets>>,
    },
}

/// The targets of a policy's backends, kept across picks; forgotten when
/// the policy no longer names them.
#[derive(Debug, Default)]
struct PolicyTargets {
    /// The backend list they were last checked against.
    seen: Option<Arc<Vec<(BackendSpec, u32)>>>,
    targets: HashMap<BackendSpec, Arc<Target>>,
}

/// One backend: a watched authority, or an address.
#[derive(Clone, Debug)]
enum Target {
    Service {
        authority: String,
        dst: Option<tw::Receiver<Resolution>>,
        fallback: Fallback,
    },
    /// One address (with its identity, when the control plane names one).
    Addr(Arc<Endpoint>),
}

/// No endpoint could be picked.
#[derive(Debug, PartialEq, Eq)]
pub enum PickError {
    /// The service exists but has no endpoints now.
    NoEndpoints(String),
    /// Neither the control plane nor DNS knows the name.
    NotFound(String),
    /// The control plane did not answer in time: whether the service's
    /// endpoints are meshed is unknown, so none is picked.
    Timeout(String),
}

impl std::fmt::Display for PickError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PickError::NoEndpoints(a) => write!(f, "{a} has no endpoints"),
            PickError::NotFound(a) => write!(f, "{a} is not known to the control plane or DNS"),
            PickError::Timeout(a) => {
                write!(f, "the control plane did not answer in time about {a}")
            }
        }
    }
}

impl std::error::Error for PickError {}

/// What [`Balancer::pick_or_resolve`] found.
#[derive(Clone, Debug)]
pub enum Picked {
    /// An endpoint, as [`Balancer::pick`] picks it.
    Endpoint(Arc<Endpoint>),
    /// Every address the DNS fallback has for a name the control plane
    /// does not know, IPv6 first (never empty): for the caller to try
    /// them all rather than one at random.
    Resolved(Vec<SocketAddr>),
}

/// What a target gives before a pick among a DNS answer.
enum Choice {
    One(Arc<Endpoint>),
    Dns(Arc<BTreeMap<SocketAddr, Arc<Endpoint>>>),
}

impl Balancer {
    fn single(discovery: Discovery, authority: String, fallback: Fallback) -> Self {
        let dst = discovery.endpoints(&authority);
        Self {
            discovery,
            name: authority.clone(),
            backends: Backends::Single(Arc::new(Target::Service {
                authority,
                dst,
                fallback,
            })),
        }
    }

    fn with_policy(
        discovery: Discovery,
        orig_dst: SocketAddr,
        rx: tw::Receiver<PolicyAnswer>,
    ) -> Self {
        Self {
            discovery,
            name: orig_dst.to_string(),
            backends: Backends::Policy {
                rx,
                orig_dst,
                targets: Default::default(),
            },
        }
    }

    /// What is balanced over: an authority, or the original destination
    /// whose policy names the backends.
    pub fn authority(&self) -> &str {
        &self.name
    }

    /// An endpoint: a backend chosen by weight, then one of its endpoints
    /// by weight, among those known now. Waits for a first answer (up to
    /// the initial wait) before falling back.
    pub async fn pick(&self) -> Result<Arc<Endpoint>, PickError> {
        match &self.backends {
            Backends::Single(t) => t.clone().pick(&self.discovery).await,
            Backends::Policy { rx, orig_dst, .. } => {
                let answer = rx.borrow().clone();
                let PolicyAnswer::Found(p) = answer else {
                    return Ok(plain(*orig_dst));
                };
                self.pick_among(&p.backends).await
            }
        }
    }

    /// An endpoint of one of `backends` (a route's), chosen by weight.
    /// Their watches are kept across picks while the policy names them.
    pub async fn pick_among(
        &self,
        backends: &Arc<Vec<(BackendSpec, u32)>>,
    ) -> Result<Arc<Endpoint>, PickError> {
        let target = match &self.backends {
            Backends::Single(t) => t.clone(),
            Backends::Policy {
                rx,
                orig_dst,
                targets,
            } => {
                if backends.is_empty() {
                    // A policy naming no usable backend (all malformed, or
                    // none given) is not a licence to dial the address in
                    // plaintext: it may be meshed.
                    return Err(PickError::NoEndpoints(orig_dst.to_string()));
                }
                let total: u64 = backends.iter().map(|(_, w)| u64::from(*w)).sum();
                let mut n = rand::random_range(0..total.max(1));
                let mut chosen = &backends[0].0;
                for (spec, w) in backends.iter() {
                    if n < u64::from(*w) {
                        chosen = spec;
                        break;
                    }
                    n -= u64::from(*w);
                }
                let mut t = targets.lock().unwrap_or_else(|e| e.into_inner());
                let named = |spec: &BackendSpec| {
                    backends.iter().any(|(s, _)| s == spec)
                        || matches!(&*rx.borrow(), PolicyAnswer::Found(p) if p.backends.iter().any(|(s, _)| s == spec))
                };
                if !t.seen.as_ref().is_some_and(|s| Arc::ptr_eq(s, backends)) {
                    // The policy changed: forget backends it no longer names.
                    t.targets.retain(|spec, _| named(spec));
                    t.seen = Some(backends.clone());
                }
                match t.targets.get(chosen) {
                    Some(target) => target.clone(),
                    None => {
                        let target = Arc::new(match chosen {
                            BackendSpec::Forward(e) => Target::Addr(e.clone()),
                            BackendSpec::Service(path) => Target::Service {
                                authority: path.clone(),
                                dst: self.discovery.endpoints(path),
                                fallback: Fallback::Forward(*orig_dst),
                            },
                        });
                        if t.targets.len() >= MAX_POLICY_TARGETS {
                            t.targets.clear();
                        }
                        t.targets.insert(chosen.clone(), target.clone());
                        target
                    }
                }
            }
        };
        target.pick(&self.discovery).await
    }

    /// Like [`Balancer::pick`], except that a name the control plane does
    /// not know, resolved by the DNS fallback, gives all its addresses.
    pub async fn pick_or_resolve(&self) -> Result<Picked, PickError> {
        let Backends::Single(t) = &self.backends else {
            return self.pick().await.map(Picked::Endpoint);
        };
        match t.choose(&self.discovery).await? {
            Choice::One(e) => Ok(Picked::Endpoint(e)),
            Choice::Dns(set) => {
                let (v6, v4): (Vec<SocketAddr>, Vec<SocketAddr>) =
                    set.keys().partition(|a| a.is_ipv6());
                let all: Vec<SocketAddr> = v6.into_iter().chain(v4).collect();
                if all.is_empty() {
                    return Err(PickError::NotFound(self.name.clone()));
                }
                Ok(Picked::Resolved(all))
            }
        }
    }
}

/// Backends of one policy whose watches a balancer keeps at once.
const MAX_POLICY_TARGETS: usize = 1024;

impl Target {
    async fn pick(&self, discovery: &Discovery) -> Result<Arc<Endpoint>, PickError> {
        match self.choose(discovery).await? {
            Choice::One(e) => Ok(e),
            Choice::Dns(set) => {
                let authority = match self {
                    Target::Service { authority, .. } => authority.as_str(),
                    Target::Addr(_) => "",
                };
                weighted(&set).ok_or_else(|| PickError::NotFound(authority.to_string()))
            }
        }
    }

    /// An endpoint, or a DNS answer to pick among.
    async fn choose(&self, discovery: &Discovery) -> Result<Choice, PickError> {
        let (authority, dst, fallback) = match self {
            Target::Addr(e) => return Ok(Choice::One(e.clone())),
            Target::Service {
                authority,
                dst,
                fallback,
            } => (authority, dst, fallback),
        };
        let wait = discovery.initial_wait();
        if let Some(rx) = dst {
            let mut rx = rx.clone();
            let r = match tokio::time::timeout(wait, rx.wait_for(|r| *r != Resolution::Pending))
                .await
            {
                Ok(Ok(r)) => r.clone(),
                _ => Resolution::Pending,
            };
            match r {
                Resolution::Endpoints(set) => {
                    return weighted(&set)
                        .map(Choice::One)
                        .ok_or_else(|| PickError::NoEndpoints(authority.clone()));
                }
                Resolution::NotFound => {}
                Resolution::Pending => {
                    // Not a licence for plaintext: its endpoints may be
                    // meshed.
                    tracing::info!(%authority, ?wait, "no answer from the control plane in time");
                    return Err(PickError::Timeout(authority.clone()));
                }
            }
        }
        match fallback {
            Fallback::Forward(addr) => Ok(Choice::One(plain(*addr))),
            Fallback::Dns { name, port } => {
                if let Ok(ip) = name.parse::<std::net::IpAddr>() {
                    return Ok(Choice::One(plain(SocketAddr::new(ip, *port))));
                }
                let mut rx = discovery.dns(name, *port);
                let r = match tokio::time::timeout(
                    wait + Duration::from_secs(4),
                    rx.wait_for(|r| *r != Resolution::Pending),
                )
                .await
                {
                    Ok(Ok(r)) => r.clone(),
                    _ => Resolution::NotFound,
                };
                match r {
                    Resolution::Endpoints(set) if !set.is_empty() => Ok(Choice::Dns(set)),
                    _ => Err(PickError::NotFound(authority.clone())),
                }
            }
        }
    }
}

fn weighted(set: &BTreeMap<SocketAddr, Arc<Endpoint>>) -> Option<Arc<Endpoint>> {
    let total: u64 = set.values().map(|e| u64::from(e.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut n = rand::random_range(0..total);
    for e in set.values() {
        let w = u64::from(e.weight);
        if n < w {
            return Some(e.clone());
        }
        n -= w;
    }
    None
}

#[cfg(test)]
mod tests;
