//! From the control plane's `OutboundPolicy` to the model the proxy acts
//! on: run once per `OutboundPolicies.Watch` update, off the request path.
//!
//! The control plane is trusted to mean well but not to be well formed:
//! nothing here panics, whatever arrives. A malformed piece is dropped
//! (with the smallest blast radius that stays safe: one backend, one
//! header, one rule, one route) and reported to the caller's `skipped`
//! with a short reason, which the caller counts:
//!
//! | reason | what was dropped |
//! |---|---|
//! | `unknown_protocol` | the protocol (the policy becomes an empty detect) |
//! | `zero_weight` | a backend with weight 0 |
//! | `no_backend` | a route backend that names no backend |
//! | `no_discovery` | a balancer with no `Destination.Get` path |
//! | `no_distribution` | a rule's unset distribution (it has no backends) |
//! | `bad_regex` | a rule with a regex that does not compile |
//! | `bad_header` | a rule matching an invalid header; an invalid header in a modifier |
//! | `bad_query` | a rule matching a query parameter with no name or value |
//! | `bad_method` | a rule matching an invalid method |
//! | `bad_path` | a rule matching a path that does not start with `/` |
//! | `bad_host` | a host or SNI (a route whose every host is bad) |
//! | `no_rules` | a route with no usable rule |
//! | `no_filter` | a filter of no known kind |
//! | `bad_ratio` | a failure injector whose ratio has a zero denominator |
//! | `bad_failure_injector` | a failure injector with an impossible status or code |
//! | `bad_redirect` | a redirect with an unusable scheme (or a bad port/status, ignored) |
//! | `bad_duration` | a negative duration (as unset) |
//! | `long_duration` | a duration over a year (clamped to a year) |
//! | `bad_backoff` | a backoff whose max is below its min (max raised) |
//! | `bad_jitter` | a jitter outside `[0, 1]` (clamped) |
//! | `bad_threshold` | a success-rate threshold outside `[0, 1]` (that rule off) |
//! | `bad_status_range` | a retry status range backwards or outside 100–599 |
//! | `no_retry_conditions` | a retry without conditions (connection errors only) |
//!
//! A `Forward` backend's address goes through the caller's `forward`,
//! which counts its own reasons when it refuses one.

use super::{
    Backend, BackendKind, DEFAULT_DETECT_TIMEOUT, Distribution, HostMatch, Meta, OpaqueFilter,
    OpaqueRoute, OpaqueRoutes, OpaqueRule, OutboundPolicy, Protocol, RouteBackend, TlsRoute,
    TlsRoutes,
};
use crate::params::{self, Backoff, FailureAccrual, Load, Penalty, Queue};
use linkerd2_proxy_api::{
    destination::WeightedAddr,
    meta,
    outbound::{self, backend, failure_accrual, proxy_protocol::Kind},
    tls_route::sni_match,
};
use linnet_core::endpoint::Endpoint;
use std::{sync::Arc, time::Duration};

mod routes;

/// The longest duration taken as given; longer ones are clamped to it.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// The latency penalty of `PenaltyPeakEwma` when the control plane sends
/// none.
pub const DEFAULT_PENALTY: Duration = Duration::from_secs(1);
/// The longest `Retry-After` honoured when the control plane sends none.
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// The success-rate window when the control plane sends none.
pub const DEFAULT_ACCRUAL_DECAY: Duration = Duration::from_secs(10);

/// Converts a policy; see the module docs for what is dropped and why.
///
/// `forward` turns a `Forward` backend's address (its weight raised to 1
/// when 0: it is the only endpoint) into an endpoint, or refuses it;
/// `skipped` is told the reason for every malformed piece dropped.
pub fn from_proto(
    p: outbound::OutboundPolicy,
    forward: &mut dyn FnMut(WeightedAddr) -> Option<Endpoint>,
    skipped: &mut dyn FnMut(&'static str),
) -> OutboundPolicy {
    let mut cx = Cx { forward, skipped };
    let cx = &mut cx;
    let parent = meta(p.metadata);
    let (protocol, accrual) = match p.protocol.and_then(|p| p.kind) {
        Some(Kind::Detect(mut d)) => {
            let fa = d
                .http1
                .as_mut()
                .and_then(|h| h.failure_accrual.take())
                .or_else(|| d.http2.as_mut().and_then(|h| h.failure_accrual.take()));
            let protocol = Protocol::Detect {
                timeout: timeout(d.timeout, cx).unwrap_or(DEFAULT_DETECT_TIMEOUT),
                http1: routes::http_routes(d.http1.map(|h| h.routes).unwrap_or_default(), cx),
                http2: routes::http_routes(d.http2.map(|h| h.routes).unwrap_or_default(), cx),
                opaque: opaque_routes(d.opaque.map(|o| o.routes).unwrap_or_default(), cx),
            };
            (protocol, accrual(fa, cx))
        }
        Some(Kind::Http1(h)) => (
            Protocol::Http1(routes::http_routes(h.routes, cx)),
            accrual(h.failure_accrual, cx),
        ),
        Some(Kind::Http2(h)) => (
            Protocol::Http2(routes::http_routes(h.routes, cx)),
            accrual(h.failure_accrual, cx),
        ),
        Some(Kind::Grpc(g)) => (
            Protocol::Grpc(routes::grpc_routes(g.routes, cx)),
            accrual(g.failure_accrual, cx),
        ),
        Some(Kind::Opaque(o)) => (
            Protocol::Opaque(opaque_routes(o.routes, cx)),
            params::Accrual::default(),
        ),
        Some(Kind::Tls(t)) => (
            Protocol::Tls(tls_routes(t.routes, cx)),
            params::Accrual::default(),
        ),
        None => {
            cx.skip("unknown_protocol");
            let empty = OutboundPolicy::empty("");
            (empty.protocol, empty.accrual)
        }
    };
    OutboundPolicy {
        protocol,
        accrual,
        name: Arc::from(parent.name()),
        parent,
    }
}

/// The caller's two callbacks, threaded through the conversion.
pub(super) struct Cx<'a> {
    pub(super) forward: &'a mut dyn FnMut(WeightedAddr) -> Option<Endpoint>,
    pub(super) skipped: &'a mut dyn FnMut(&'static str),
}

impl Cx<'_> {
    pub(super) fn skip(&mut self, reason: &'static str) {
        tracing::debug!(reason, "dropped a malformed piece of an outbound policy");
        (self.skipped)(reason);
    }
}

// === metadata ===

fn meta(m: Option<meta::Metadata>) -> Meta {
    match m.and_then(|m| m.kind) {
        Some(meta::metadata::Kind::Default(name)) => Meta::Default { name: name.into() },
        Some(meta::metadata::Kind::Resource(r)) => Meta::Resource {
            group: r.group.into(),
            kind: r.kind.into(),
            name: r.name.into(),
            namespace: r.namespace.into(),
            section: r.section.into(),
            port: u16::try_from(r.port).unwrap_or(0),
        },
        None => Meta::Default {
            name: Arc::from(""),
        },
    }
}

// === durations ===

/// A duration; negative or denormal ones are unset, huge ones clamped.
fn duration(d: Option<prost_types::Duration>, cx: &mut Cx<'_>) -> Option<Duration> {
    let d = d?;
    let (Ok(secs), Ok(nanos)) = (u64::try_from(d.seconds), u32::try_from(d.nanos)) else {
        cx.skip("bad_duration");
        return None;
    };
    if nanos >= 1_000_000_000 {
        cx.skip("bad_duration");
        return None;
    }
    let d = Duration::new(secs, nanos);
    if d > MAX_DURATION {
        cx.skip("long_duration");
        return Some(MAX_DURATION);
    }
    Some(d)
}

/// A timeout: a zero duration is no timeout, as unset.
pub(super) fn timeout(d: Option<prost_types::Duration>, cx: &mut Cx<'_>) -> Option<Duration> {
    duration(d, cx).filter(|d| !d.is_zero())
}

fn backoff(b: outbound::ExponentialBackoff, default: Backoff, cx: &mut Cx<'_>) -> Backoff {
    let min = duration(b.min_backoff, cx).unwrap_or(default.min);
    let mut max = duration(b.max_backoff, cx).unwrap_or(default.max);
    if max < min {
        cx.skip("bad_backoff");
        max = min;
    }
    let mut jitter = f64::from(b.jitter_ratio);
    if !(0.0..=1.0).contains(&jitter) {
        cx.skip("bad_jitter");
        jitter = if jitter > 1.0 { 1.0 } else { 0.0 };
    }
    Backoff {
        min,
        max,
        jitter,
        respect_retry_after: b.respect_retry_after_hint,
    }
}

// === failure accrual ===

/// Linkerd's failure-accrual backoff: 1 s to 1 min, half jitter.
fn accrual_backoff() -> Backoff {
    Backoff {
        min: Duration::from_secs(1),
        max: Duration::from_secs(60),
        jitter: 0.5,
        respect_retry_after: false,
    }
}

fn accrual(fa: Option<outbound::FailureAccrual>, cx: &mut Cx<'_>) -> params::Accrual {
    let Some(fa) = fa else {
        return params::Accrual::default();
    };
    let min_ready_endpoints = fa.ejection.map_or(0, |e| e.min_ready_endpoints);
    let backoff_or_default = |b: Option<outbound::ExponentialBackoff>, cx: &mut Cx<'_>| {
        b.map_or_else(accrual_backoff, |b| backoff(b, accrual_backoff(), cx))
    };
    let kind = match fa.kind {
        None => FailureAccrual::None,
        Some(failure_accrual::Kind::ConsecutiveFailures(c)) if c.max_failures > 0 => {
            FailureAccrual::Consecutive {
                max_failures: c.max_failures,
                backoff: backoff_or_default(c.backoff, cx),
            }
        }
        Some(failure_accrual::Kind::ConsecutiveFailures(_)) => FailureAccrual::None,
        Some(failure_accrual::Kind::Unified(u)) => {
            let mut threshold = u.success_rate_threshold;
            if !(0.0..=1.0).contains(&threshold) {
                cx.skip("bad_threshold");
                threshold = 0.0;
            }
            if threshold == 0.0 && u.max_consecutive_failures == 0 {
                FailureAccrual::None
            } else {
                FailureAccrual::SuccessRate {
                    threshold,
                    decay: timeout(u.decay, cx).unwrap_or(DEFAULT_ACCRUAL_DECAY),
                    min_requests: u.min_requests,
                    max_consecutive: u.max_consecutive_failures,
                    backoff: backoff_or_default(u.backoff, cx),
                }
            }
        }
    };
    params::Accrual {
        kind,
        min_ready_endpoints,
    }
}

// === backends ===

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
        fn $name(
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
    super::HttpFilter,
    routes::http_filter
);
distribution!(
    grpc_distribution,
    grpc_route,
    super::GrpcFilter,
    routes::grpc_filter
);
distribution!(
    opaque_distribution,
    opaque_route,
    OpaqueFilter,
    opaque_filter
);
distribution!(tls_distribution, tls_route, OpaqueFilter, tls_filter);

// === opaque and TLS routes ===

fn opaque_routes(routes: Vec<outbound::OpaqueRoute>, cx: &mut Cx<'_>) -> OpaqueRoutes {
    routes
        .into_iter()
        .filter_map(|r| {
            let rules: Vec<OpaqueRule> = r
                .rules
                .into_iter()
                .map(|rule| OpaqueRule {
                    backends: opaque_distribution(rule.backends, cx),
                    filters: rule
                        .filters
                        .into_iter()
                        .filter_map(|f| opaque_filter(f, cx))
                        .collect(),
                })
                .collect();
            if rules.is_empty() {
                cx.skip("no_rules");
                return None;
            }
            Some(OpaqueRoute {
                meta: meta(r.metadata),
                rules,
            })
        })
        .collect()
}

fn tls_routes(routes: Vec<outbound::TlsRoute>, cx: &mut Cx<'_>) -> TlsRoutes {
    routes
        .into_iter()
        .filter_map(|r| {
            let had_snis = !r.snis.is_empty();
            let snis: Vec<HostMatch> = r
                .snis
                .into_iter()
                .filter_map(|s| {
                    let m = match s.r#match {
                        Some(sni_match::Match::Exact(e)) => exact_host(&e),
                        Some(sni_match::Match::Suffix(s)) => suffix_host(&s.reverse_labels),
                        None => None,
                    };
                    if m.is_none() {
                        cx.skip("bad_host");
                    }
                    m
                })
                .collect();
            if had_snis && snis.is_empty() {
                // Every SNI was bad: the route must not widen to any SNI.
                return None;
            }
            let rules: Vec<OpaqueRule> = r
                .rules
                .into_iter()
                .map(|rule| OpaqueRule {
                    backends: tls_distribution(rule.backends, cx),
                    filters: rule
                        .filters
                        .into_iter()
                        .filter_map(|f| tls_filter(f, cx))
                        .collect(),
                })
                .collect();
            if rules.is_empty() {
                cx.skip("no_rules");
                return None;
            }
            Some(TlsRoute {
                meta: meta(r.metadata),
                snis,
                rules,
            })
        })
        .collect()
}

fn opaque_filter(f: outbound::opaque_route::Filter, cx: &mut Cx<'_>) -> Option<OpaqueFilter> {
    use outbound::opaque_route::filter::Kind as F;
    match f.kind {
        Some(F::Invalid(i)) => Some(OpaqueFilter::Invalid(i.message.into())),
        Some(F::Forbidden(_)) => Some(OpaqueFilter::Forbidden),
        None => {
            cx.skip("no_filter");
            None
        }
    }
}

fn tls_filter(f: outbound::tls_route::Filter, cx: &mut Cx<'_>) -> Option<OpaqueFilter> {
    use outbound::tls_route::filter::Kind as F;
    match f.kind {
        Some(F::Invalid(i)) => Some(OpaqueFilter::Invalid(i.message.into())),
        Some(F::Forbidden(_)) => Some(OpaqueFilter::Forbidden),
        None => {
            cx.skip("no_filter");
            None
        }
    }
}

// === hosts ===

/// An exact host or SNI, lower-cased without a trailing dot.
fn exact_host(h: &str) -> Option<HostMatch> {
    let h = h.strip_suffix('.').unwrap_or(h);
    (!h.is_empty() && !h.contains('*') && h.is_ascii())
        .then(|| HostMatch::Exact(h.to_ascii_lowercase()))
}

/// A wildcard suffix from its labels, last first (`[com, example]` is
/// `*.example.com`; none at all is `*`).
fn suffix_host(reverse_labels: &[String]) -> Option<HostMatch> {
    let mut suffix = String::new();
    for label in reverse_labels.iter().rev() {
        if label.is_empty() || label.contains(['.', '*']) || !label.is_ascii() {
            return None;
        }
        suffix.push('.');
        suffix.push_str(&label.to_ascii_lowercase());
    }
    Some(HostMatch::Suffix(suffix))
}

#[cfg(test)]
mod tests;
