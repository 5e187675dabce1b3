//! The outbound stack's metrics, with Linkerd's names: per route
//! (`outbound_http_route_*`), per route backend, per balancer
//! (`outbound_http_balancer_*`), and retries by outcome.
//!
//! Label values come from the control plane's policy (route, backend and
//! parent names) and from the logical targets it has a policy for, so
//! their number is bounded by configuration, not by traffic; handles are
//! resolved once per route or backend when its stack is built, never per
//! request.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use std::{collections::HashMap, sync::Arc};

/// What a route belongs to: the service (or address) its policy is for.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ParentLabels {
    /// `core` for a Service, or the resource's API group.
    pub parent_group: Arc<str>,
    /// `Service`, or the kind of resource the policy names; `default` for
    /// a policy the control plane synthesised.
    pub parent_kind: Arc<str>,
    /// Its name.
    pub parent_name: Arc<str>,
    /// Its namespace.
    pub parent_namespace: Arc<str>,
    /// The port the application dialled.
    pub parent_port: u16,
}

/// A route of a parent.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Its parent.
    #[prometheus(flatten)]
    pub parent: ParentLabels,
    /// `gateway.networking.k8s.io`, or empty for a synthesised route.
    pub route_group: Arc<str>,
    /// `HTTPRoute`, `GRPCRoute`, or `default`.
    pub route_kind: Arc<str>,
    /// Its name.
    pub route_name: Arc<str>,
    /// Its namespace.
    pub route_namespace: Arc<str>,
}

/// A backend of a route.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    /// Its route.
    #[prometheus(flatten)]
    pub route: RouteLabels,
    /// `core` for a Service.
    pub backend_group: Arc<str>,
    /// `Service`, or `default`.
    pub backend_kind: Arc<str>,
    /// Its name.
    pub backend_name: Arc<str>,
    /// Its namespace.
    pub backend_namespace: Arc<str>,
    /// Its port.
    pub backend_port: u16,
}

/// A balancer: a backend of a parent (shared by the routes naming it).
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BalancerLabels {
    /// The parent.
    #[prometheus(flatten)]
    pub parent: ParentLabels,
    /// The backend's name (`name:port` or its address).
    pub backend_name: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    #[prometheus(flatten)]
    route: RouteLabels,
    /// The response's status, or empty when there was none.
    http_status: String,
    /// Why there was no response (`timeout`, `failfast`, ...), or empty.
    error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointStateLabels {
    #[prometheus(flatten)]
    balancer: BalancerLabels,
    endpoint_state: &'static str,
}

/// The outbound stack's families.
#[derive(Clone, Debug)]
pub struct RouteMetrics {
    duration: Family<RouteLabels, Histogram>,
    statuses: Family<StatusLabels, Counter>,
    backend_requests: Family<BackendLabels, Counter>,
    retry_requests: Family<RouteLabels, Counter>,
    retry_successes: Family<RouteLabels, Counter>,
    retry_limit_exceeded: Family<RouteLabels, Counter>,
    retry_overflow: Family<RouteLabels, Counter>,
    retry_body_too_large: Family<RouteLabels, Counter>,
    endpoints: Family<EndpointStateLabels, Gauge>,
    failfast: Family<BalancerLabels, Counter>,
    shed: Family<BalancerLabels, Counter>,
    ejections: Family<BalancerLabels, Counter>,
    restorations: Family<BalancerLabels, Counter>,
    no_route: Family<ParentLabels, Counter>,
    /// Logical targets' stacks dropped to make room (the bound was hit).
    stacks_evicted: Counter,
    /// Logical targets' stacks kept now.
    stacks: Gauge,
}

/// One route's handles.
#[derive(Clone, Debug)]
pub struct RouteHandles {
    labels: RouteLabels,
    metrics: RouteMetrics,
    /// The route's status counters seen so far, so that a request costs
    /// a read lock, not a label set built and hashed.
    statuses: Arc<std::sync::RwLock<HashMap<(u16, &'static str), Counter>>>,
    /// Request duration, from the route's start to the response's end.
    pub duration: Histogram,
    /// Retries sent.
    pub retry_requests: Counter,
    /// Requests that succeeded after a retry.
    pub retry_successes: Counter,
    /// Requests still failing after their last retry.
    pub retry_limit_exceeded: Counter,
    /// Retries the budget refused.
    pub retry_overflow: Counter,
    /// Requests not retried because their body was over the replay limit.
    pub retry_body_too_large: Counter,
}

/// One balancer's handles.
#[derive(Clone, Debug)]
pub struct BalancerHandles {
    /// Endpoints ready to take requests.
    pub ready: Gauge,
    /// Endpoints not ready (connecting, or ejected by failure accrual).
    pub pending: Gauge,
    /// Times the balancer's queue entered fail-fast.
    pub failfast: Counter,
    /// Requests shed because the queue was full.
    pub shed: Counter,
    /// Endpoints ejected by failure accrual.
    pub ejections: Counter,
    /// Ejected endpoints restored after a good probe.
    pub restorations: Counter,
}

// === impl RouteMetrics ===

impl RouteMetrics {
    /// Creates the families and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.5, 12))
            }),
            statuses: Family::default(),
            backend_requests: Family::default(),
            retry_requests: Family::default(),
            retry_successes: Family::default(),
            retry_limit_exceeded: Family::default(),
            retry_overflow: Family::default(),
            retry_body_too_large: Family::default(),
            endpoints: Family::default(),
            failfast: Family::default(),
            shed: Family::default(),
            ejections: Family::default(),
            restorations: Family::default(),
            no_route: Family::default(),
            stacks_evicted: Counter::default(),
            stacks: Gauge::default(),
        };
        let r = registry;
        r.register(
            "outbound_http_route_request_duration_seconds",
            "The time each request takes on an outbound route, retries included, until its response ends",
            m.duration.clone(),
        );
        r.register(
            "outbound_http_route_request_statuses",
            "Outbound route requests by response status, or by the error that ended them",
            m.statuses.clone(),
        );
        r.register(
            "outbound_http_route_backend_requests",
            "Requests (attempts) sent to each backend of an outbound route",
            m.backend_requests.clone(),
        );
        r.register(
            "outbound_http_route_retry_requests",
            "Retries sent on an outbound route",
            m.retry_requests.clone(),
        );
        r.register(
            "outbound_http_route_retry_successes",
            "Requests on an outbound route that succeeded after a retry",
            m.retry_successes.clone(),
        );
        r.register(
            "outbound_http_route_retry_limit_exceeded",
            "Requests on an outbound route still failing after their last retry",
            m.retry_limit_exceeded.clone(),
        );
        r.register(
            "outbound_http_route_retry_overflow",
            "Retries on an outbound route that the retry budget refused",
            m.retry_overflow.clone(),
        );
        r.register(
            "outbound_http_route_retry_body_too_large",
            "Requests on an outbound route not retried because their body was larger than the replay buffer",
            m.retry_body_too_large.clone(),
        );
        r.register(
            "outbound_http_balancer_endpoints",
            "Endpoints of each outbound balancer, by state (ready, pending)",
            m.endpoints.clone(),
        );
        r.register(
            "outbound_http_balancer_queue_failfast",
            "Times an outbound balancer's queue failed fast: no endpoint was ready for its fail-fast timeout",
            m.failfast.clone(),
        );
        r.register(
            "outbound_http_balancer_queue_shed",
            "Requests shed because an outbound balancer's queue was full",
            m.shed.clone(),
        );
        r.register(
            "outbound_http_balancer_endpoint_ejections",
            "Endpoints taken out of an outbound balancer by failure accrual",
            m.ejections.clone(),
        );
        r.register(
            "outbound_http_balancer_endpoint_restorations",
            "Ejected endpoints put back into an outbound balancer after a successful probe",
            m.restorations.clone(),
        );
        r.register(
            "outbound_http_logical_stacks",
            "Outbound stacks of logical targets (services, policy addresses) kept now",
            m.stacks.clone(),
        );
        r.register(
            "outbound_http_logical_stacks_evicted",
            "Outbound stacks of logical targets dropped while in recent use, to stay within the bound",
            m.stacks_evicted.clone(),
        );
        r.register(
            "outbound_http_route_not_found",
            "Outbound requests that matched no route of their target's policy",
            m.no_route.clone(),
        );
        m
    }

    /// Families registered nowhere (tests).
    pub fn unregistered() -> Self {
        Self::register(&mut Registry::default())
    }

    /// The handles of a route.
    pub fn route(&self, labels: RouteLabels) -> RouteHandles {
        // One statement per lookup: a family's read guard lives until the
        // end of its statement, and the next new series needs its write
        // lock.
        let duration = self.duration.get_or_create(&labels).clone();
        let retry_requests = get(&self.retry_requests, &labels);
        let retry_successes = get(&self.retry_successes, &labels);
        let retry_limit_exceeded = get(&self.retry_limit_exceeded, &labels);
        let retry_overflow = get(&self.retry_overflow, &labels);
        let retry_body_too_large = get(&self.retry_body_too_large, &labels);
        RouteHandles {
            duration,
            retry_requests,
            retry_successes,
            retry_limit_exceeded,
            retry_overflow,
            retry_body_too_large,
            labels,
            metrics: self.clone(),
            statuses: Arc::default(),
        }
    }

    /// A backend's request counter.
    pub fn backend_requests(&self, labels: &BackendLabels) -> Counter {
        self.backend_requests.get_or_create(labels).clone()
    }

    /// The handles of a balancer.
    pub fn balancer(&self, labels: BalancerLabels) -> BalancerHandles {
        let state = |endpoint_state| EndpointStateLabels {
            balancer: labels.clone(),
            endpoint_state,
        };
        let ready = self.endpoints.get_or_create(&state("ready")).clone();
        let pending = self.endpoints.get_or_create(&state("pending")).clone();
        let failfast = get(&self.failfast, &labels);
        let shed = get(&self.shed, &labels);
        let ejections = get(&self.ejections, &labels);
        let restorations = get(&self.restorations, &labels);
        BalancerHandles {
            ready,
            pending,
            failfast,
            shed,
            ejections,
            restorations,
        }
    }

    /// Says how many logical stacks are kept, and counts evictions forced
    /// by the bound.
    pub fn stacks(&self, kept: usize, evicted: bool) {
        self.stacks.set(i64::try_from(kept).unwrap_or(i64::MAX));
        if evicted {
            self.stacks_evicted.inc();
        }
    }

    /// Counts a request that matched no route of `parent`'s policy.
    pub fn no_route(&self, parent: &ParentLabels) {
        self.no_route.get_or_create(parent).inc();
    }
}

/// A counter of `family`, the guard released before it returns.
#[allow(clippy::let_and_return)] // The binding ends the guard's life.
fn get<L: Clone + std::hash::Hash + Eq>(family: &Family<L, Counter>, labels: &L) -> Counter {
    let c = family.get_or_create(labels).clone();
    c
}

// === impl RouteHandles ===

impl RouteHandles {
    /// Counts a request's end: its status, or the error class that ended
    /// it.
    pub fn status(&self, status: Option<u16>, error: &'static str) {
        let key = (status.unwrap_or(0), error);
        {
            let seen = self.statuses.read().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = seen.get(&key) {
                c.inc();
                return;
            }
        }
        let counter = get(
            &self.metrics.statuses,
            &StatusLabels {
                route: self.labels.clone(),
                http_status: status.map(|s| s.to_string()).unwrap_or_default(),
                error,
            },
        );
        counter.inc();
        let mut seen = self.statuses.write().unwrap_or_else(|e| e.into_inner());
        // Statuses are at most 600 and errors a fixed set per route.
        seen.insert(key, counter);
    }

    /// The route's labels.
    pub fn labels(&self) -> &RouteLabels {
        &self.labels
    }
}
