//! `OutboundPolicies.Watch` answers, read whole and reduced.
//!
//! `read()` gives both views of a policy: `model`, the whole
//! `linnet_policy::outbound::OutboundPolicy` (routes, filters, timeouts,
//! retries, backends) that the outbound HTTP stack follows; and the
//! reduced view the opaque path acts on: whether the target is opaque,
//! and the weighted backends of its default route (services to balance
//! over, or addresses to forward to), which [`crate::Balancer`] picks
//! from. Malformed parts are skipped and counted.

use crate::{Endpoint, Metrics, watch::Apply};
use linkerd2_proxy_api::outbound::{self, backend, proxy_protocol::Kind};
use std::sync::Arc;
use tokio::sync::watch;

/// What a policy lookup has found so far.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum PolicyAnswer {
    /// No answer yet.
    #[default]
    Pending,
    /// The policy service has none for the target.
    NotFound,
    /// The policy.
    Found(OutboundPolicy),
}

/// An outbound policy: whole (the HTTP stack's routes), and reduced to
/// what the opaque path acts on.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboundPolicy {
    /// Skip protocol detection.
    pub opaque: bool,
    /// Where opaque traffic goes, by weight.
    pub backends: Arc<Vec<(BackendSpec, u32)>>,
    /// The whole policy.
    pub model: Arc<linnet_policy::outbound::OutboundPolicy>,
}

/// One backend of a route.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum BackendSpec {
    /// A service's endpoints, by its `Destination.Get` path.
    Service(String),
    /// One address, with the identity the control plane names for it.
    Forward(Arc<Endpoint>),
}

type RouteBackends = Vec<(Option<outbound::Backend>, u32)>;

macro_rules! distribution {
    ($dist:expr, $m:ident) => {{
        use $m::distribution::Kind as D;
        match $dist.and_then(|d| d.kind) {
            Some(D::RandomAvailable(r)) => r
                .backends
                .into_iter()
                .map(|b| (b.backend.and_then(|rb| rb.backend), b.weight))
                .collect::<RouteBackends>(),
            Some(D::FirstAvailable(f)) => f
                .backends
                .into_iter()
                .take(1)
                .map(|rb| (rb.backend, 1))
                .collect::<RouteBackends>(),
            Some(D::Empty(_)) | None => Vec::new(),
        }
    }};
}

/// The default route's backends: the route matching every path when
/// there is one, else the first.
fn http_backends(routes: Vec<outbound::HttpRoute>) -> RouteBackends {
    let catch_all = |r: &outbound::HttpRoute| {
        r.rules.iter().any(|rule| {
            rule.matches.is_empty()
                || rule.matches.iter().any(|m| {
                    m.headers.is_empty()
                        && m.query_params.is_empty()
                        && m.method.is_none()
                        && match m.path.as_ref().and_then(|p| p.kind.as_ref()) {
                            None => true,
                            Some(linkerd2_proxy_api::http_route::path_match::Kind::Prefix(p)) => {
                                p == "/" || p.is_empty()
                            }
                            Some(_) => false,
                        }
                })
        })
    };
    let idx = routes.iter().position(catch_all).unwrap_or(0);
    routes
        .into_iter()
        .nth(idx)
        .and_then(|r| r.rules.into_iter().last())
        .map(|rule| distribution!(rule.backends, outbound_http))
        .unwrap_or_default()
}

mod outbound_http {
    pub(super) use linkerd2_proxy_api::outbound::http_route::distribution;
}
mod outbound_grpc {
    pub(super) use linkerd2_proxy_api::outbound::grpc_route::distribution;
}
mod outbound_opaque {
    pub(super) use linkerd2_proxy_api::outbound::opaque_route::distribution;
}
mod outbound_tls {
    pub(super) use linkerd2_proxy_api::outbound::tls_route::distribution;
}

fn opaque_backends(routes: Vec<outbound::OpaqueRoute>) -> RouteBackends {
    routes
        .into_iter()
        .next()
        .and_then(|r| r.rules.into_iter().next())
        .map(|rule| distribution!(rule.backends, outbound_opaque))
        .unwrap_or_default()
}

/// Reads a policy whole, and reduced; malformed parts are skipped and
/// counted.
pub(crate) fn read(p: outbound::OutboundPolicy, metrics: &Metrics) -> OutboundPolicy {
    let model = linnet_policy::outbound::proto::from_proto(
        p.clone(),
        &mut |w| crate::destination::endpoint(w, metrics),
        &mut |reason| metrics.skipped(reason),
    );
    let (opaque, backends) = reduce(p, metrics);
    OutboundPolicy {
        opaque,
        backends,
        model: Arc::new(model),
    }
}

/// Reduces a policy (whether it is opaque, and its opaque backends).
fn reduce(p: outbound::OutboundPolicy, metrics: &Metrics) -> (bool, Arc<Vec<(BackendSpec, u32)>>) {
    let (opaque, raw) = match p.protocol.and_then(|p| p.kind) {
        Some(Kind::Opaque(o)) => (true, opaque_backends(o.routes)),
        Some(Kind::Detect(d)) => {
            let http = d.http1.map(|h| http_backends(h.routes)).unwrap_or_default();
            if http.is_empty() {
                (
                    false,
                    d.opaque
                        .map(|o| opaque_backends(o.routes))
                        .unwrap_or_default(),
                )
            } else {
                (false, http)
            }
        }
        Some(Kind::Http1(h)) => (false, http_backends(h.routes)),
        Some(Kind::Http2(h)) => (false, http_backends(h.routes)),
        Some(Kind::Grpc(g)) => (
            false,
            g.routes
                .into_iter()
                .next()
                .and_then(|r| r.rules.into_iter().next())
                .map(|rule| distribution!(rule.backends, outbound_grpc))
                .unwrap_or_default(),
        ),
        Some(Kind::Tls(t)) => (
            true,
            t.routes
                .into_iter()
                .next()
                .and_then(|r| r.rules.into_iter().next())
                .map(|rule| distribution!(rule.backends, outbound_tls))
                .unwrap_or_default(),
        ),
        None => {
            tracing::warn!(
                "control plane sent an outbound policy with no protocol this proxy knows; forwarding as is"
            );
            metrics.skipped("unknown_protocol");
            (false, Vec::new())
        }
    };
    let backends = raw
        .into_iter()
        .filter_map(|(b, weight)| {
            if weight == 0 {
                metrics.skipped("zero_weight");
                return None;
            }
            let spec = match b.and_then(|b| b.kind) {
                Some(backend::Kind::Balancer(p2c)) => match p2c.discovery.and_then(|d| d.kind) {
                    Some(backend::endpoint_discovery::Kind::Dst(d)) if !d.path.is_empty() => {
                        BackendSpec::Service(d.path.to_ascii_lowercase())
                    }
                    _ => {
                        metrics.skipped("no_discovery");
                        return None;
                    }
                },
                Some(backend::Kind::Forward(w)) => {
                    // Read as a Destination endpoint is: its identity, SNI
                    // and hints count as much here.
                    let mut w = w;
                    if w.weight == 0 {
                        w.weight = 1;
                    }
                    BackendSpec::Forward(Arc::new(crate::destination::endpoint(w, metrics)?))
                }
                None => {
                    metrics.skipped("no_backend");
                    return None;
                }
            };
            Some((spec, weight))
        })
        .collect();
    (opaque, Arc::new(backends))
}

/// Applies `OutboundPolicies.Watch` answers.
pub(crate) struct Policies {
    pub(crate) metrics: Metrics,
}

impl Apply<outbound::OutboundPolicy, PolicyAnswer> for Policies {
    fn message(
        &mut self,
        tx: &watch::Sender<PolicyAnswer>,
        p: outbound::OutboundPolicy,
        _first: bool,
    ) {
        let next = read(p, &self.metrics);
        // An unchanged policy keeps the stacks built for it.
        tx.send_if_modified(|current| {
            if matches!(current, PolicyAnswer::Found(c) if *c == next) {
                false
            } else {
                *current = PolicyAnswer::Found(next);
                true
            }
        });
    }

    fn error(&mut self, tx: &watch::Sender<PolicyAnswer>, status: &tonic::Status) {
        if matches!(
            status.code(),
            tonic::Code::NotFound | tonic::Code::InvalidArgument | tonic::Code::Unimplemented
        ) {
            tx.send_if_modified(|a| {
                if matches!(a, PolicyAnswer::Pending) {
                    *a = PolicyAnswer::NotFound;
                    true
                } else {
                    false
                }
            });
        }
    }
}
