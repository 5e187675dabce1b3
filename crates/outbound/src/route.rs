//! Route match: the top of the outbound HTTP stack.
//!
//! Each request to a logical target (a service, or an address the
//! control plane has a policy for) is matched against the target's
//! current routes (HTTPRoute or GRPCRoute precedence; a profile's routes
//! in order), the rule's filters are applied (header modifiers, redirect,
//! failure injection), and the request goes down the rule's own stack:
//! timeout → retry → backend split. Rule stacks are built on first use
//! and kept until the policy changes; backends (queue and balancer) are
//! kept across policy changes for as long as some rule names them, so a
//! weight change moves traffic without dropping a balancer's state.
//! Response filters apply on the way back.

use crate::http::{Ctx, RuleParams};
use http::{Request, Response};
use linnet_discovery::{PolicyAnswer, Profile};
use linnet_http::{BoxBody, BoxFuture, HttpStack};
use linnet_metrics::route::{ParentLabels, RouteHandles};
use linnet_policy::errors::{InjectedFailure, NoRoute};
use linnet_policy::outbound::{
    Backend, Distribution, GrpcFilter, HttpFilter, OutboundPolicy, Protocol, RouteBackend, filters,
    select,
};
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};
use tokio::sync::watch;
use tower::Service;

/// The current policy of a logical target, and whether its HTTP routes
/// are a profile's (first match wins) rather than the Gateway API's
/// (most specific wins).
#[derive(Clone, Debug)]
pub struct Routes {
    /// The policy.
    pub policy: Arc<OutboundPolicy>,
    /// Profile semantics.
    pub first_match: bool,
    /// The retry budget of every route (a profile's), when given.
    pub budget: Option<linnet_policy::params::Budget>,
}

/// Where a logical target's routes come from.
pub(crate) enum Source {
    /// Its outbound policy, watched.
    Policy(watch::Receiver<PolicyAnswer>),
    /// A service with no outbound policy: its profile (when it has one),
    /// in front of one balancer over its endpoints.
    Profile {
        authority: String,
        profile: Option<watch::Receiver<Option<Profile>>>,
    },
}

/// The route layer for one logical target.
#[derive(Clone)]
pub struct Router {
    shared: Arc<Shared>,
}

struct Shared {
    ctx: Ctx,
    parent: ParentLabels,
    /// The logical target's address (its name in metrics and logs).
    addr: SocketAddr,
    /// Where a backend the control plane does not know goes: the logical
    /// target itself, when it has an address.
    fallback: Option<SocketAddr>,
    source: Source,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The routes last derived from the source, and the version of the
    /// source's answer they were derived from (its address).
    derived: Option<(usize, Routes)>,
    /// Rule stacks by the rule's address in `version` (stable while it is
    /// held).
    rules: HashMap<usize, Arc<RuleStack>>,
    /// Backend stacks by backend, shared by the rules naming them.
    backends: HashMap<Backend, HttpStack>,
}

// === impl State ===

impl State {
    /// New routes: every rule stack goes (their keys are addresses in the
    /// old policy), and so do the backends no rule of the new one names.
    fn replace(&mut self, version: usize, routes: Routes) {
        self.rules.clear();
        let named = named_backends(&routes.policy);
        self.backends.retain(|b, _| named.contains(&b));
        self.derived = Some((version, routes));
    }
}

/// What a request on one rule goes through.
struct RuleStack {
    stack: HttpStack,
    metrics: RouteHandles,
    /// The rule's response filters.
    response_filters: Arc<[HttpFilter]>,
}

// === impl Router ===

impl Router {
    /// A router following `routes`.
    pub(crate) fn new(
        ctx: Ctx,
        parent: ParentLabels,
        addr: SocketAddr,
        fallback: Option<SocketAddr>,
        source: Source,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                ctx,
                parent,
                addr,
                fallback,
                source,
                state: Mutex::new(State::default()),
            }),
        }
    }
}

impl Service<Request<BoxBody>> for Router {
    type Response = Response<BoxBody>;
    type Error = linnet_core::Error;
    type Future = BoxFuture<'static, Result<Response<BoxBody>, linnet_core::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<BoxBody>) -> Self::Future {
        // One lock per request: the current routes, then the rule's stack.
        let routed = {
            let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            let routes = self.shared.routes(&mut state);
            self.shared.route(&mut state, &routes, &mut req)
        };
        match routed {
            Ok(Routed::Stack(rule)) => {
                let start = tokio::time::Instant::now();
                let fut = linnet_http::call_stack(rule.stack.clone(), req);
                Box::pin(async move {
                    let metrics = &rule.metrics;
                    match fut.await {
                        Ok(rsp) => {
                            metrics.status(Some(rsp.status().as_u16()), "");
                            let (mut parts, body) = rsp.into_parts();
                            if !rule.response_filters.is_empty() {
                                filters::apply_response(&rule.response_filters, &mut parts);
                            }
                            // The duration runs until the body ends (or is
                            // dropped).
                            let body = BoxBody::new(Timed {
                                inner: body,
                                done: Some((metrics.duration.clone(), start)),
                            });
                            Ok(Response::from_parts(parts, body))
                        }
                        Err(e) => {
                            metrics.duration.observe(start.elapsed().as_secs_f64());
                            metrics.status(None, error_class(&*e));
                            Err(e)
                        }
                    }
                })
            }
            Ok(Routed::Respond(rsp)) => Box::pin(std::future::ready(Ok(rsp))),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
}

/// A response body that records its request's duration when it ends.
struct Timed {
    inner: BoxBody,
    done: Option<(
        linnet_metrics::prometheus_client::metrics::histogram::Histogram,
        tokio::time::Instant,
    )>,
}

impl Timed {
    fn finish(&mut self) {
        if let Some((h, start)) = self.done.take() {
            h.observe(start.elapsed().as_secs_f64());
        }
    }
}

impl http_body::Body for Timed {
    type Data = bytes::Bytes;
    type Error = linnet_core::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, linnet_core::Error>>> {
        let this = self.get_mut();
        let frame = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(frame, Poll::Ready(None | Some(Err(_))))
            || (matches!(frame, Poll::Ready(Some(Ok(_)))) && this.inner.is_end_stream())
        {
            this.finish();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Where the router sends a request.
enum Routed {
    Stack(Arc<RuleStack>),
    Respond(Response<BoxBody>),
}

// === impl Shared ===

impl Shared {
    /// The current routes: derived from the source's answer once per
    /// answer (its address is the version), not per request.
    fn routes(&self, state: &mut State) -> Routes {
        let current = |state: &State, version: usize| {
            state
                .derived
                .as_ref()
                .filter(|(v, _)| *v == version)
                .map(|(_, r)| r.clone())
        };
        match &self.source {
            Source::Policy(rx) => match &*rx.borrow() {
                PolicyAnswer::Found(found) => {
                    let version = Arc::as_ptr(&found.model) as usize;
                    current(state, version).unwrap_or_else(|| {
                        let r = Routes {
                            policy: found.model.clone(),
                            first_match: false,
                            budget: None,
                        };
                        state.replace(version, r.clone());
                        r
                    })
                }
                // A policy that went away: the last one known. (A stack is
                // only built once one was found.)
                _ => match &state.derived {
                    Some((_, r)) => r.clone(),
                    None => Routes {
                        policy: Arc::new(OutboundPolicy::empty(self.addr.to_string())),
                        first_match: false,
                        budget: None,
                    },
                },
            },
            Source::Profile { authority, profile } => {
                let borrowed = profile.as_ref().map(|rx| rx.borrow());
                let routes = borrowed
                    .as_ref()
                    .and_then(|p| p.as_ref())
                    .and_then(|p| p.routes.as_ref());
                let version = routes.map_or(1, |r| Arc::as_ptr(r) as usize);
                current(state, version).unwrap_or_else(|| {
                    let r = crate::http::profile_policy(authority, routes.map(|r| &**r));
                    state.replace(version, r.clone());
                    r
                })
            }
        }
    }

    fn route(
        &self,
        state: &mut State,
        routes: &Routes,
        req: &mut Request<BoxBody>,
    ) -> Result<Routed, linnet_core::Error> {
        let policy = &routes.policy;
        let no_route = || {
            self.ctx.metrics().no_route(&self.parent);
            linnet_core::Error::from(NoRoute {
                parent: policy.name.clone(),
            })
        };
        let http = |r: &'_ linnet_policy::outbound::HttpRoutes| r.clone();
        let http_routes = match &policy.protocol {
            Protocol::Http1(r) | Protocol::Http2(r) => Some(http(r)),
            Protocol::Detect { http1, http2, .. } => {
                Some(if req.version() == http::Version::HTTP_2 {
                    http(http2)
                } else {
                    http(http1)
                })
            }
            Protocol::Grpc(_) => None,
            Protocol::Opaque(_) | Protocol::Tls(_) => return Err(no_route()),
        };
        if let Some(http_routes) = http_routes {
            let selection = if routes.first_match {
                select::http_first(&http_routes, req)
            } else {
                select::http_selection(&http_routes, req)
            };
            let Some(sel) = selection else {
                return Err(no_route());
            };
            if let Some(answered) =
                filtered(filters::apply_request(&sel.rule.filters, sel.prefix(), req))
            {
                return answered;
            }
            let key = sel.rule as *const _ as usize;
            let rule = self.rule_stack(state, routes, key, || RuleParams {
                response_filters: sel
                    .rule
                    .filters
                    .iter()
                    .filter(|f| matches!(f, HttpFilter::ResponseHeaders(_)))
                    .cloned()
                    .collect(),
                meta: sel.route.meta.clone(),
                backends: weighted(&sel.rule.backends)
                    .map(|(b, w, f)| (b.clone(), w, http_request_filters(f)))
                    .collect(),
                timeouts: sel.rule.timeouts.clone(),
                retry: sel.rule.retry.clone(),
                allow_l5d_request_headers: sel.rule.allow_l5d_request_headers,
            });
            return Ok(Routed::Stack(rule));
        }
        let Protocol::Grpc(grpc_routes) = &policy.protocol else {
            return Err(no_route());
        };
        let Some((route, rule)) = select::grpc(grpc_routes, req) else {
            return Err(no_route());
        };
        if let Some(answered) = filtered(filters::apply_grpc_request(&rule.filters, req)) {
            return answered;
        }
        let key = rule as *const _ as usize;
        let stack = self.rule_stack(state, routes, key, || RuleParams {
            response_filters: Arc::new([]),
            meta: route.meta.clone(),
            backends: weighted(&rule.backends)
                .map(|(b, w, f)| (b.clone(), w, grpc_request_filters(f)))
                .collect(),
            timeouts: rule.timeouts.clone(),
            retry: rule.retry.clone(),
            allow_l5d_request_headers: rule.allow_l5d_request_headers,
        });
        Ok(Routed::Stack(stack))
    }

    /// The stack of the rule at `key` in `routes`' policy, built on first
    /// use.
    fn rule_stack(
        &self,
        state: &mut State,
        routes: &Routes,
        key: usize,
        params: impl FnOnce() -> RuleParams,
    ) -> Arc<RuleStack> {
        if let Some(r) = state.rules.get(&key) {
            return r.clone();
        }
        let params = params();
        let response_filters = params.response_filters.clone();
        let State { backends, .. } = state;
        let (stack, metrics) = self.ctx.rule_stack(
            &self.parent,
            params,
            routes.budget.as_ref(),
            &mut |b: &Backend| {
                backends
                    .entry(b.clone())
                    .or_insert_with(|| {
                        self.ctx.backend_stack(
                            &self.parent,
                            b,
                            &routes.policy.accrual,
                            self.fallback,
                        )
                    })
                    .clone()
            },
        );
        let rule = Arc::new(RuleStack {
            stack,
            metrics,
            response_filters,
        });
        state.rules.insert(key, rule.clone());
        rule
    }
}

/// What a rule's filters decided, when they answered the request (a
/// redirect) or failed it (failure injection); `None` to go on.
fn filtered(outcome: filters::Outcome) -> Option<Result<Routed, linnet_core::Error>> {
    match outcome {
        filters::Outcome::Continue => None,
        filters::Outcome::Respond(head) => {
            Some(Ok(Routed::Respond(head.map(|()| BoxBody::default()))))
        }
        filters::Outcome::Fail {
            status,
            grpc_code,
            message,
        } => Some(Err(InjectedFailure {
            status,
            grpc_code,
            message,
        }
        .into())),
    }
}

/// A rule's backends with their weights and filters: every backend of a
/// random distribution; the first of a first-available one.
fn weighted<F>(d: &Distribution<F>) -> impl Iterator<Item = (&Backend, u32, &[F])> {
    type Lists<'a, F> = (&'a [RouteBackend<F>], &'a [(RouteBackend<F>, u32)]);
    let (first, random): Lists<'_, F> = match d {
        Distribution::Empty => (&[], &[]),
        Distribution::FirstAvailable(b) => (b.get(..1).unwrap_or_default(), &[]),
        Distribution::RandomAvailable(b) => (&[], b),
    };
    first
        .iter()
        .map(|rb| (&rb.backend, 1, &rb.filters[..]))
        .chain(
            random
                .iter()
                .map(|(rb, w)| (&rb.backend, *w, &rb.filters[..])),
        )
}

/// The request-side filters of a route backend (HTTP).
fn http_request_filters(f: &[HttpFilter]) -> Arc<[HttpFilter]> {
    f.iter()
        .filter(|f| matches!(f, HttpFilter::RequestHeaders(_)))
        .cloned()
        .collect()
}

/// The request-side filters of a route backend (gRPC), as HTTP ones.
fn grpc_request_filters(f: &[GrpcFilter]) -> Arc<[HttpFilter]> {
    f.iter()
        .filter_map(|f| match f {
            GrpcFilter::RequestHeaders(m) => Some(HttpFilter::RequestHeaders(m.clone())),
            _ => None,
        })
        .collect()
}

/// Every backend `policy`'s HTTP and gRPC rules name.
fn named_backends(policy: &OutboundPolicy) -> Vec<&Backend> {
    fn http(routes: &[linnet_policy::outbound::HttpRoute]) -> impl Iterator<Item = &Backend> {
        routes
            .iter()
            .flat_map(|r| r.rules.iter().flat_map(|rule| rule.backends.backends()))
    }
    match &policy.protocol {
        Protocol::Http1(r) | Protocol::Http2(r) => http(r).collect(),
        Protocol::Detect { http1, http2, .. } => http(http1).chain(http(http2)).collect(),
        Protocol::Grpc(routes) => routes
            .iter()
            .flat_map(|r| r.rules.iter().flat_map(|rule| rule.backends.backends()))
            .collect(),
        Protocol::Opaque(_) | Protocol::Tls(_) => Vec::new(),
    }
}

/// The `error` label of a request that got no response.
fn error_class(e: &(dyn std::error::Error + 'static)) -> &'static str {
    if linnet_policy::timeout::is_timeout(e) {
        "timeout"
    } else if linnet_core::is_caused_by::<linnet_policy::balance::queue::FailFast>(e) {
        "failfast"
    } else if linnet_core::is_caused_by::<linnet_policy::balance::queue::QueueFull>(e) {
        "load_shed"
    } else if linnet_core::is_caused_by::<linnet_tls::FailClosed>(e) {
        "tls_fail_closed"
    } else if linnet_core::is_caused_by::<InjectedFailure>(e) {
        "injected"
    } else {
        "error"
    }
}
