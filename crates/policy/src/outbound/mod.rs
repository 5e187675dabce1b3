//! One target's outbound policy, as the proxy acts on it.
//!
//! The outbound stack looks this up once per connection (after the
//! original destination is known, before protocol detection): the
//! [`Protocol`] says whether to detect and which routes apply, the routes
//! ([`route`]) say how a request is matched ([`select`]), changed or
//! refused ([`filters`]), how long it may take and whether it is retried,
//! and which [`Backend`]s it is spread over.
//!
//! The model is built from the control plane's messages by
//! [`proto::from_proto`] (and from a `ServiceProfile` by
//! [`profile::from_profile`]); every regex and header name is checked and
//! compiled there, once, so that the request path only compares. It is
//! cheap to clone: the route lists sit behind an `Arc`.

use crate::params;
use linnet_core::endpoint::Endpoint;
use std::{
    hash::{Hash, Hasher},
    sync::Arc,
    time::Duration,
};

pub mod filters;
pub mod profile;
pub mod proto;
pub mod route;
pub mod select;

pub use self::{
    filters::{GrpcFilter, HeaderModifier, HttpFilter, OpaqueFilter, Ratio, Redirect},
    route::{
        GrpcMatch, GrpcRoute, GrpcRule, HeaderMatch, HostMatch, HttpMatch, HttpRoute, HttpRule,
        OpaqueRoute, OpaqueRule, PathMatch, Pattern, QueryMatch, SniMatch, TlsRoute, TlsRule,
        ValueMatch,
    },
};

/// The HTTP routes of a target, shared by every connection to it.
pub type HttpRoutes = Arc<[HttpRoute]>;
/// The gRPC routes of a target.
pub type GrpcRoutes = Arc<[GrpcRoute]>;
/// The opaque (TCP) routes of a target.
pub type OpaqueRoutes = Arc<[OpaqueRoute]>;
/// The TLS (SNI) routes of a target.
pub type TlsRoutes = Arc<[TlsRoute]>;

/// How long protocol detection may wait for the first bytes when the
/// control plane does not say: Linkerd's 10 s.
pub const DEFAULT_DETECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A target's outbound policy.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboundPolicy {
    /// What the target speaks, and the routes for each protocol.
    pub protocol: Protocol,
    /// When the target's balancers take an endpoint out of rotation.
    pub accrual: params::Accrual,
    /// The policy's own name (a Service, an EgressNetwork, a default), for
    /// logs and metrics.
    pub name: Arc<str>,
    /// The policy's parent resource, for the `parent_*` metric labels.
    pub parent: Meta,
}

/// What a target speaks, with the routes for each protocol it may speak.
#[derive(Clone, Debug, PartialEq)]
pub enum Protocol {
    /// Read the first bytes to tell HTTP/1, HTTP/2 and anything else apart.
    Detect {
        /// How long to wait for enough bytes; then the connection is opaque.
        timeout: Duration,
        /// The routes for detected HTTP/1.
        http1: HttpRoutes,
        /// The routes for detected HTTP/2.
        http2: HttpRoutes,
        /// The routes for anything else.
        opaque: OpaqueRoutes,
    },
    /// HTTP/1, declared: no detection.
    Http1(HttpRoutes),
    /// HTTP/2, declared: no detection.
    Http2(HttpRoutes),
    /// gRPC (HTTP/2), declared.
    Grpc(GrpcRoutes),
    /// Opaque TCP, declared: bytes are forwarded as they come.
    Opaque(OpaqueRoutes),
    /// TLS that the application originates: routed by its SNI.
    Tls(TlsRoutes),
}

/// A protocol the control plane declares, so that detection is skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Declared {
    /// HTTP/1.
    Http1,
    /// HTTP/2.
    Http2,
    /// gRPC.
    Grpc,
    /// Opaque TCP.
    Opaque,
    /// TLS, routed by SNI.
    Tls,
}

/// The description of a route, a backend or a policy (`meta.Metadata`):
/// the source of the `route_*`, `backend_*` and `parent_*` metric labels.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Meta {
    /// A default the control plane made up (no resource behind it).
    Default {
        /// Its name, e.g. `http`, `opaq`.
        name: Arc<str>,
    },
    /// A (Kubernetes) resource.
    Resource {
        /// API group, e.g. `gateway.networking.k8s.io` (empty for core).
        group: Arc<str>,
        /// Resource kind, e.g. `HTTPRoute`, `Service`.
        kind: Arc<str>,
        /// Resource name.
        name: Arc<str>,
        /// Resource namespace.
        namespace: Arc<str>,
        /// The section (e.g. a listener or port name), when named.
        section: Arc<str>,
        /// The port, when the reference names one (0: none).
        port: u16,
    },
}

/// A route's description.
pub type RouteMeta = Meta;
/// A backend's description.
pub type BackendMeta = Meta;

/// How a rule spreads requests over its backends.
#[derive(Clone, Debug, PartialEq)]
pub enum Distribution<F> {
    /// No backend: requests fail (the route exists to refuse them).
    Empty,
    /// The first backend that is available, in order.
    FirstAvailable(Vec<RouteBackend<F>>),
    /// A backend at random among those available, by weight (each >0).
    RandomAvailable(Vec<(RouteBackend<F>, u32)>),
}

/// A backend as one rule uses it, with the filters applied on the way.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteBackend<F> {
    /// Where requests go.
    pub backend: Backend,
    /// Applied after the rule's own filters, for this backend only.
    pub filters: Vec<F>,
}

/// A backend: a service to balance over, or one address.
///
/// `Eq + Hash` so that the stack can cache one balancer per backend
/// across routes and policy updates (written by hand: the parameters'
/// types only promise `PartialEq`).
#[derive(Clone, Debug, PartialEq)]
pub struct Backend {
    /// Its description, for the `backend_*` metric labels.
    pub meta: BackendMeta,
    /// The queue in front of it.
    pub queue: params::Queue,
    /// How its endpoints are found.
    pub kind: BackendKind,
}

/// How a backend's endpoints are found.
#[derive(Clone, Debug, PartialEq)]
pub enum BackendKind {
    /// One endpoint, named by the control plane.
    Forward(Arc<Endpoint>),
    /// A P2C balancer over a `Destination.Get` stream.
    Balancer {
        /// The `Destination.Get` path (`name.ns.svc.cluster.local:port`),
        /// lower-cased so that equal services share a cache entry.
        path: String,
        /// How the balancer weighs its endpoints.
        load: params::Load,
    },
}

// === impl OutboundPolicy ===

impl OutboundPolicy {
    /// The policy of a target the control plane knows nothing about:
    /// detect, with no routes (the stack decides what "no route" means).
    pub fn empty(name: impl Into<Arc<str>>) -> Self {
        let name = name.into();
        Self {
            protocol: Protocol::Detect {
                timeout: DEFAULT_DETECT_TIMEOUT,
                http1: Arc::new([]),
                http2: Arc::new([]),
                opaque: Arc::new([]),
            },
            accrual: params::Accrual::default(),
            parent: Meta::Default { name: name.clone() },
            name,
        }
    }
}

// === impl Protocol ===

impl Protocol {
    /// The declared protocol, when detection can be skipped; `None` when
    /// the first bytes must be read to know.
    pub fn declared(&self) -> Option<Declared> {
        match self {
            Self::Detect { .. } => None,
            Self::Http1(_) => Some(Declared::Http1),
            Self::Http2(_) => Some(Declared::Http2),
            Self::Grpc(_) => Some(Declared::Grpc),
            Self::Opaque(_) => Some(Declared::Opaque),
            Self::Tls(_) => Some(Declared::Tls),
        }
    }

    /// Whether protocol detection can be skipped.
    pub fn skips_detection(&self) -> bool {
        self.declared().is_some()
    }
}

// === impl Meta ===

impl Meta {
    /// The name alone.
    pub fn name(&self) -> &str {
        match self {
            Self::Default { name } | Self::Resource { name, .. } => name,
        }
    }

    /// `default` or `resource`: Linkerd's `*_kind` label for a default is
    /// `default`; a resource's is its own kind (see [`Meta::kind`]).
    pub fn origin(&self) -> &'static str {
        match self {
            Self::Default { .. } => "default",
            Self::Resource { .. } => "resource",
        }
    }

    /// The `*_kind` metric label: `default`, or the resource's kind.
    pub fn kind(&self) -> &str {
        match self {
            Self::Default { .. } => "default",
            Self::Resource { kind, .. } => kind,
        }
    }

    /// The `*_group` metric label (empty for a default).
    pub fn group(&self) -> &str {
        match self {
            Self::Default { .. } => "",
            Self::Resource { group, .. } => group,
        }
    }

    /// The `*_namespace` metric label (empty for a default).
    pub fn namespace(&self) -> &str {
        match self {
            Self::Default { .. } => "",
            Self::Resource { namespace, .. } => namespace,
        }
    }
}

// === impl Distribution ===

impl<F> Distribution<F> {
    /// Every backend named, in order (weights aside).
    pub fn backends(&self) -> impl Iterator<Item = &Backend> {
        let first = match self {
            Self::FirstAvailable(b) => b.as_slice(),
            _ => &[],
        };
        let random = match self {
            Self::RandomAvailable(b) => b.as_slice(),
            _ => &[],
        };
        first
            .iter()
            .map(|rb| &rb.backend)
            .chain(random.iter().map(|(rb, _)| &rb.backend))
    }

    /// Whether there is no backend to send to.
    pub fn is_empty(&self) -> bool {
        self.backends().next().is_none()
    }
}

// === impl Backend ===

// Every field's equality is exact (durations and integers, no floats), so
// `PartialEq` is an equivalence.
impl Eq for Backend {}

impl Hash for Backend {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.meta.hash(state);
        self.queue.capacity.hash(state);
        self.queue.failfast_timeout.hash(state);
        self.kind.hash(state);
    }
}

// === impl BackendKind ===

impl Eq for BackendKind {}

impl Hash for BackendKind {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            Self::Forward(ep) => ep.hash(state),
            Self::Balancer { path, load } => {
                path.hash(state);
                load.default_rtt.hash(state);
                load.decay.hash(state);
                if let Some(p) = &load.penalty {
                    p.penalty.hash(state);
                    p.max_retry_after.hash(state);
                    p.decay.hash(state);
                }
            }
        }
    }
}
