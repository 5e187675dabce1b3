//! The outbound HTTP stack, top to bottom. This module is the one place
//! that knows the order of the layers:
//!
//! 1. [`crate::route::Router`]: route match and the rule's filters (per logical
//!    target; the rest is per rule, built on first use);
//! 2. `TimeoutLayer`: the rule's request and idle timeouts, and a
//!    request's `grpc-timeout`;
//! 3. `RetryLayer`: the rule's retries, within a budget, replaying
//!    bodies up to a limit; each attempt bounded by the rule's response
//!    timeout;
//! 4. [`crate::split::Split`]: one of the rule's backends, by weight;
//! 5. per backend: [`crate::backend::Decided`] (no answer from the control plane
//!    in time: refused), then `balancer`: a bounded queue with fail-fast
//!    and load shedding, P2C over PeakEWMA over the endpoints discovery
//!    streams, and each endpoint's failure-accrual gate;
//! 6. the endpoint client ([`linnet_http::EndpointClient`]): HTTP/2 to
//!    meshed peers hinted `h2`, the mesh TLS connector.

use crate::{backend, route, split::Split};
use http::{Request, Response};
use linnet_core::endpoint::Endpoint;
use linnet_discovery::{Discovery, PolicyAnswer, Profile};
use linnet_http::{BoxBody, EndpointClient, HttpStack};
use linnet_metrics::route::{
    BackendLabels, BalancerLabels, ParentLabels, RouteHandles, RouteLabels, RouteMetrics,
};
use linnet_policy::{
    balance::{BalancerMetrics, balancer},
    outbound::{Backend, BackendKind, HttpFilter, Meta, OutboundPolicy, RouteMeta, filters},
    params,
    retry::{RetryLayer, RetryMetrics},
    timeout::TimeoutLayer,
};
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio::sync::watch;
use tower::{Layer, ServiceExt};

/// Makes the client of an endpoint (the proxy's mesh TLS and connection
/// settings live in the caller).
pub type NewEndpoint = Arc<dyn Fn(&Arc<Endpoint>) -> EndpointClient + Send + Sync>;

/// Builds the stacks of logical targets; one per outbound listener.
#[derive(Clone)]
pub struct Stacks {
    ctx: Ctx,
}

/// What every layer of every stack shares.
#[derive(Clone)]
pub(crate) struct Ctx {
    inner: Arc<CtxInner>,
}

struct CtxInner {
    discovery: Option<Discovery>,
    new_endpoint: NewEndpoint,
    metrics: RouteMetrics,
    initial_wait: Duration,
}

/// What a rule's stack is built from.
pub(crate) struct RuleParams {
    pub(crate) meta: RouteMeta,
    /// The rule's response filters (applied by the router).
    pub(crate) response_filters: Arc<[HttpFilter]>,
    /// Backends, weights, and the request filters of each.
    pub(crate) backends: Vec<(Backend, u32, Arc<[HttpFilter]>)>,
    pub(crate) timeouts: params::Timeouts,
    pub(crate) retry: Option<params::Retry>,
    pub(crate) allow_l5d_request_headers: bool,
}

// === impl Stacks ===

impl Stacks {
    /// Stacks whose endpoints come from `discovery` and whose endpoint
    /// clients `new_endpoint` makes.
    pub fn new(
        discovery: Option<Discovery>,
        new_endpoint: NewEndpoint,
        metrics: RouteMetrics,
    ) -> Self {
        let initial_wait = discovery
            .as_ref()
            .map_or(Duration::ZERO, Discovery::initial_wait);
        Self {
            ctx: Ctx {
                inner: Arc::new(CtxInner {
                    discovery,
                    new_endpoint,
                    metrics,
                    initial_wait,
                }),
            },
        }
    }

    /// The stack of `addr`, whose outbound policy `policy` follows.
    pub fn policy(&self, addr: SocketAddr, policy: watch::Receiver<PolicyAnswer>) -> HttpStack {
        let source = route::Source::Policy(policy);
        self.router(addr, Some(addr), source)
    }

    /// The stack of the service `authority` (`name:port`), reached at
    /// `addr`, with no outbound policy: its profile's routes (when it
    /// has one) in front of one balancer over its endpoints.
    pub fn profile(
        &self,
        addr: SocketAddr,
        authority: String,
        profile: Option<watch::Receiver<Option<Profile>>>,
    ) -> HttpStack {
        self.router(
            addr,
            Some(addr),
            route::Source::Profile { authority, profile },
        )
    }

    /// The stack of the service `authority`, named by a request in
    /// explicit mode (`port` is its port): as [`Stacks::profile`], but
    /// with no address to fall back to should the control plane stop
    /// knowing the name (its requests then fail fast).
    pub fn named(
        &self,
        authority: String,
        port: u16,
        profile: Option<watch::Receiver<Option<Profile>>>,
    ) -> HttpStack {
        let addr = SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), port);
        self.router(addr, None, route::Source::Profile { authority, profile })
    }

    /// `addr` names the parent in metrics; `fallback` is where a backend
    /// the control plane does not know goes.
    fn router(
        &self,
        addr: SocketAddr,
        fallback: Option<SocketAddr>,
        source: route::Source,
    ) -> HttpStack {
        let parent = ParentLabels {
            parent_group: "".into(),
            parent_kind: "default".into(),
            parent_name: addr.ip().to_string().into(),
            parent_namespace: "".into(),
            parent_port: addr.port(),
        };
        HttpStack::new(route::Router::new(
            self.ctx.clone(),
            parent,
            addr,
            fallback,
            source,
        ))
    }
}

impl std::fmt::Debug for Stacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stacks").finish_non_exhaustive()
    }
}

// === impl Ctx ===

impl Ctx {
    pub(crate) fn metrics(&self) -> &RouteMetrics {
        &self.inner.metrics
    }

    /// A rule's stack: timeout → retry → backend split over `backend`'s
    /// stacks. Returns the rule's metric handles too.
    pub(crate) fn rule_stack(
        &self,
        parent: &ParentLabels,
        rule: RuleParams,
        budget: Option<&params::Budget>,
        backend: &mut dyn FnMut(&Backend) -> HttpStack,
    ) -> (HttpStack, RouteHandles) {
        let labels = RouteLabels {
            parent: parent.clone(),
            route_group: rule.meta.group().into(),
            route_kind: rule.meta.kind().into(),
            route_name: rule.meta.name().into(),
            route_namespace: rule.meta.namespace().into(),
        };
        let handles = self.inner.metrics.route(labels.clone());
        let split = Split::new(
            rule.backends
                .iter()
                .map(|(b, weight, filters)| {
                    let counted = self.inner.metrics.backend_requests(&BackendLabels {
                        route: labels.clone(),
                        backend_group: b.meta.group().into(),
                        backend_kind: b.meta.kind().into(),
                        backend_name: b.meta.name().into(),
                        backend_namespace: b.meta.namespace().into(),
                        backend_port: backend_port(b),
                    });
                    (route_backend(backend(b), filters.clone(), counted), *weight)
                })
                .collect(),
        );
        let retry = RetryLayer::new(
            rule.retry.clone(),
            linnet_policy::retry::budget(&budget.cloned().unwrap_or_default()),
            RetryMetrics {
                requests: handles.retry_requests.clone(),
                successes: handles.retry_successes.clone(),
                limit_exceeded: handles.retry_limit_exceeded.clone(),
                overflow: handles.retry_overflow.clone(),
                body_too_large: handles.retry_body_too_large.clone(),
            },
        )
        .with_response_timeout(rule.timeouts.response)
        .allow_l5d_request_headers(rule.allow_l5d_request_headers);
        let timeout = TimeoutLayer::new(rule.timeouts.clone())
            .allow_l5d_request_headers(rule.allow_l5d_request_headers);
        let stack = HttpStack::new(timeout.layer(retry.layer(split)));
        (stack, handles)
    }

    /// A backend's stack: the wait for discovery's first answer, then the
    /// balancer (queue, P2C over PeakEWMA, failure-accrual gates) over its
    /// endpoints' clients. `fallback` is where a service the control
    /// plane does not know is reached (the logical target itself).
    pub(crate) fn backend_stack(
        &self,
        parent: &ParentLabels,
        b: &Backend,
        accrual: &params::Accrual,
        fallback: Option<SocketAddr>,
    ) -> HttpStack {
        let name: Arc<str> = match &b.kind {
            BackendKind::Forward(e) => e.addr.to_string().into(),
            BackendKind::Balancer { path, .. } => path.as_str().into(),
        };
        let h = self.inner.metrics.balancer(BalancerLabels {
            parent: parent.clone(),
            backend_name: name.clone(),
        });
        let metrics = BalancerMetrics {
            endpoints_ready: h.ready,
            endpoints_pending: h.pending,
            failfast: h.failfast,
            shed: h.shed,
            ejections: h.ejections,
            restorations: h.restorations,
        };
        let new_endpoint = self.inner.new_endpoint.clone();
        let make = move |e: &Arc<Endpoint>| {
            new_endpoint(e).map_err(|e: linnet_core::Error| {
                // Nothing was sent when the connection could not be made:
                // a retry is safe.
                let safe = linnet_core::find_cause::<linnet_http::endpoint::EndpointError>(&*e)
                    .is_some_and(|ee| ee.source.is_connect());
                if safe {
                    linnet_core::Error::from(linnet_policy::retry::Retryable(e))
                } else {
                    e
                }
            })
        };
        match &b.kind {
            BackendKind::Forward(e) => balancer(
                name,
                backend::fixed(e.clone()),
                make,
                &params::Load::default(),
                accrual,
                &b.queue,
                metrics,
            ),
            BackendKind::Balancer { path, load } => {
                let Some(rx) = self
                    .inner
                    .discovery
                    .as_ref()
                    .and_then(|d| d.endpoints(path))
                else {
                    // No Destination service: the logical target itself.
                    let endpoints = match fallback {
                        Some(addr) => backend::fixed(linnet_core::endpoint::plain(addr)),
                        None => Box::pin(futures_util::stream::pending()),
                    };
                    return balancer(name, endpoints, make, load, accrual, &b.queue, metrics);
                };
                let inner = balancer(
                    name.clone(),
                    backend::stream(rx.clone(), fallback),
                    make,
                    load,
                    accrual,
                    &b.queue,
                    metrics,
                );
                HttpStack::new(backend::Decided::new(
                    name,
                    rx,
                    self.inner.initial_wait,
                    inner,
                ))
            }
        }
    }
}

/// A backend's port, from its description or its address.
fn backend_port(b: &Backend) -> u16 {
    match (&b.meta, &b.kind) {
        (Meta::Resource { port, .. }, _) if *port != 0 => *port,
        (_, BackendKind::Forward(e)) => e.addr.port(),
        (_, BackendKind::Balancer { path, .. }) => path
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(0),
    }
}

/// A backend as one rule uses it: its request filters applied and its
/// requests counted, then the shared backend stack.
fn route_backend(
    stack: HttpStack,
    filters: Arc<[HttpFilter]>,
    counted: linnet_metrics::prometheus_client::metrics::counter::Counter,
) -> HttpStack {
    HttpStack::new(tower::service_fn(move |mut req: Request<BoxBody>| {
        counted.inc();
        if !filters.is_empty() {
            // Header modifiers only: a backend's filters never answer.
            let _ = filters::apply_request(&filters, None, &mut req);
        }
        linnet_http::call_stack(stack.clone(), req)
    }))
}

/// The response type of the stack's services.
pub type StackResponse = Response<BoxBody>;

/// A synthesised policy for a profile: its routes (first match wins),
/// then a catch-all, all to one balancer over `authority`.
pub(crate) fn profile_policy(
    authority: &str,
    routes: Option<&linnet_policy::outbound::profile::ProfileRoutes>,
) -> route::Routes {
    use linnet_policy::outbound::{Distribution, HttpRoute, HttpRule, Protocol, RouteBackend};
    let backend = Backend {
        meta: Meta::Default {
            name: authority.into(),
        },
        queue: params::Queue::default(),
        kind: BackendKind::Balancer {
            path: authority.to_ascii_lowercase(),
            load: params::Load::default(),
        },
    };
    let dist = Distribution::FirstAvailable(vec![RouteBackend {
        backend,
        filters: vec![],
    }]);
    let mut http: Vec<HttpRoute> = routes
        .map(|r| r.routes.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|mut r| {
            for rule in &mut r.rules {
                rule.backends = dist.clone();
            }
            r
        })
        .collect();
    http.push(HttpRoute {
        meta: Meta::Default {
            name: "default".into(),
        },
        hosts: vec![],
        rules: vec![HttpRule {
            matches: vec![],
            filters: vec![],
            backends: dist,
            timeouts: params::Timeouts::default(),
            retry: None,
            allow_l5d_request_headers: false,
        }],
    });
    let http: linnet_policy::outbound::HttpRoutes = http.into();
    route::Routes {
        policy: Arc::new(OutboundPolicy {
            protocol: Protocol::Detect {
                timeout: linnet_policy::outbound::DEFAULT_DETECT_TIMEOUT,
                http1: http.clone(),
                http2: http,
                opaque: Arc::new([]),
            },
            accrual: params::Accrual::default(),
            name: authority.into(),
            parent: Meta::Default {
                name: authority.into(),
            },
        }),
        first_match: true,
        budget: routes.and_then(|r| r.budget.clone()),
    }
}
