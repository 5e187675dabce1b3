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

use super::{DEFAULT_DETECT_TIMEOUT, HostMatch, Meta, OutboundPolicy, Protocol};
use crate::params::{self, Backoff, FailureAccrual};
use linkerd2_proxy_api::{
    destination::WeightedAddr,
    meta,
    outbound::{self, failure_accrual, proxy_protocol::Kind},
};
use linnet_core::endpoint::Endpoint;
use std::{sync::Arc, time::Duration};

mod backends;
mod opaque;
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
                opaque: opaque::opaque_routes(d.opaque.map(|o| o.routes).unwrap_or_default(), cx),
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
            Protocol::Opaque(opaque::opaque_routes(o.routes, cx)),
            params::Accrual::default(),
        ),
        Some(Kind::Tls(t)) => (
            Protocol::Tls(opaque::tls_routes(t.routes, cx)),
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

/// Where a conversion reports a malformed piece it dropped. The helpers
/// that both the outbound and the inbound conversions use (matches,
/// hosts, filters, durations, metadata) take one.
pub(crate) trait Skip {
    /// Reports one dropped piece, with a short static reason.
    fn skip(&mut self, reason: &'static str);
}

impl Skip for Cx<'_> {
    fn skip(&mut self, reason: &'static str) {
        Cx::skip(self, reason);
    }
}

pub(crate) use self::routes::{
    grpc_failure_injector, grpc_match, hosts, http_failure_injector, http_match, redirect,
    request_header_modifier,
};

// === metadata ===

pub(crate) fn meta(m: Option<meta::Metadata>) -> Meta {
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
pub(crate) fn duration(d: Option<prost_types::Duration>, cx: &mut dyn Skip) -> Option<Duration> {
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
pub(crate) fn timeout(d: Option<prost_types::Duration>, cx: &mut dyn Skip) -> Option<Duration> {
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
