//! Backends from the control plane's messages: balancers (with their
//! load estimate and queue), forwards, and the distributions over them.

use super::{
    Cx, DEFAULT_MAX_RETRY_AFTER, DEFAULT_PENALTY, duration, meta,
    opaque::{opaque_filter, tls_filter},
    routes, timeout,
};
use crate::{
    outbound::{Backend, BackendKind, Distribution, OpaqueFilter, RouteBackend},
    params::{Load, Penalty, Queue},
};
use linkerd2_proxy_api::outbound::{self, backend};
use std::sync::Arc;

fn backend(b: Option<outbound::Backend>, cx: &mut Cx<'_>) -> Option<Backend> {
    let Some(b) = b else {
        cx.skip("no_backend");
        return None;
    };
    let kind = match b.kind {
        None => {
            cx.skip("no_backend");
            return None;
        }
        Some(backend::Kind::Forward(mut addr)) => {
            addr.weight = addr.weight.max(1);
            BackendKind::Forward(Arc::new((cx.forward)(addr)?))
        }
        Some(backend::Kind::Balancer(p2c)) => {
            let path = match p2c.discovery.and_then(|d| d.kind) {
                Some(backend::endpoint_discovery::Kind::Dst(d)) if !d.path.is_empty() => {
                    d.path.to_ascii_lowercase()
                }
                _ => {
                    cx.skip("no_discovery");
                    return None;
                }
            };
            BackendKind::Balancer {
                path,
                load: load(p2c.load, cx),
            }
        }
    };
    Some(Backend {
        meta: meta(b.metadata),
        queue: queue(b.queue, cx),
        kind,
    })
}

fn load(l: Option<backend::balance_p2c::Load>, cx: &mut Cx<'_>) -> Load {
    use backend::balance_p2c::Load as L;
    let d = Load::default();
    match l {
        None => d,
        Some(L::PeakEwma(p)) => Load {
            default_rtt: duration(p.default_rtt, cx).unwrap_or(d.default_rtt),
            decay: timeout(p.decay, cx).unwrap_or(d.decay),
            penalty: None,
        },
        Some(L::PenaltyPeakEwma(p)) => {
            let decay = timeout(p.decay, cx).unwrap_or(d.decay);
            Load {
                default_rtt: duration(p.default_rtt, cx).unwrap_or(d.default_rtt),
                decay,
                penalty: Some(Penalty {
                    penalty: duration(p.penalty, cx).unwrap_or(DEFAULT_PENALTY),
                    max_retry_after: duration(p.max_retry_after, cx)
                        .unwrap_or(DEFAULT_MAX_RETRY_AFTER),
                    decay: timeout(p.penalty_decay, cx).unwrap_or(decay),
                }),
            }
        }
    }
}

fn queue(q: Option<outbound::Queue>, cx: &mut Cx<'_>) -> Queue {
    let d = Queue::default();
    let Some(q) = q else {
        return d;
    };
    Queue {
        capacity: match usize::try_from(q.capacity) {
            Ok(0) | Err(_) => d.capacity,
            Ok(c) => c,
        },
        failfast_timeout: timeout(q.failfast_timeout, cx).unwrap_or(d.failfast_timeout),
    }
}

/// Defines the conversion of one route kind's `Distribution` (the four
/// kinds have the same shape in different generated modules).
macro_rules! distribution {
    ($name:ident, $module:ident, $filter:ty, $convert_filter:path) => {
        pub(super) fn $name(
            d: Option<outbound::$module::Distribution>,
            cx: &mut Cx<'_>,
        ) -> Distribution<$filter> {
            use outbound::$module::distribution::Kind as D;
            fn route_backend(
                rb: outbound::$module::RouteBackend,
                cx: &mut Cx<'_>,
            ) -> Option<RouteBackend<$filter>> {
                let backend = backend(rb.backend, cx)?;
                let filters = rb
                    .filters
                    .into_iter()
                    .filter_map(|f| $convert_filter(f, cx))
                    .collect();
                Some(RouteBackend { backend, filters })
            }
            let dist = match d.and_then(|d| d.kind) {
                None => {
                    cx.skip("no_distribution");
                    Distribution::Empty
                }
                Some(D::Empty(_)) => Distribution::Empty,
                Some(D::FirstAvailable(f)) => Distribution::FirstAvailable(
                    f.backends
                        .into_iter()
                        .filter_map(|rb| route_backend(rb, cx))
                        .collect(),
                ),
                Some(D::RandomAvailable(r)) => Distribution::RandomAvailable(
                    r.backends
                        .into_iter()
                        .filter_map(|wb| {
                            if wb.weight == 0 {
                                cx.skip("zero_weight");
                                return None;
                            }
                            let Some(rb) = wb.backend else {
                                cx.skip("no_backend");
                                return None;
                            };
                            Some((route_backend(rb, cx)?, wb.weight))
                        })
                        .collect(),
                ),
            };
            if dist.is_empty() {
                Distribution::Empty
            } else {
                dist
            }
        }
    };
}

distribution!(
    http_distribution,
    http_route,
    crate::outbound::HttpFilter,
    routes::http_filter
);
distribution!(
    grpc_distribution,
    grpc_route,
    crate::outbound::GrpcFilter,
    routes::grpc_filter
);
distribution!(
    opaque_distribution,
    opaque_route,
    OpaqueFilter,
    opaque_filter
);
distribution!(tls_distribution, tls_route, OpaqueFilter, tls_filter);
