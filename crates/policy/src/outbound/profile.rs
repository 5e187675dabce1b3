//! Routes from a `ServiceProfile` (`Destination.GetProfile`), for targets
//! whose control plane speaks profiles rather than outbound policies.
//!
//! A profile's routes are older and simpler than the Gateway API's: a
//! request condition built of path regexes and methods with `all`, `any`
//! and `not`, a timeout, and whether failures may be retried. They become
//! [`HttpRoute`]s of one rule each, so that the same middleware serves
//! both; but a profile's first matching route wins, so they are selected
//! with [`select::http_first`](super::select::http_first), not by the
//! Gateway API's precedence.

use super::{
    Distribution, HttpMatch, HttpRoute, HttpRule, Meta, PathMatch, Pattern,
    proto::{Cx, timeout},
};
use crate::params::{self, Budget, RetryOn};
use linkerd2_proxy_api::destination::{
    DestinationProfile, RequestMatch, ResponseClass, ResponseMatch, request_match, response_match,
};
use std::ops::RangeInclusive;

/// Retries a retryable profile route allows: profiles bound retries by
/// their budget, not per request, so this is only a backstop against a
/// request retried for ever within a generous budget.
pub const PROFILE_MAX_RETRIES: u32 = 3;

/// The most alternatives one condition may expand to (an `all` of `any`s
/// multiplies); beyond it the route is dropped.
const MAX_ALTERNATIVES: usize = 64;

/// How deep `all`/`any`/`not` may nest.
const MAX_DEPTH: usize = 16;

/// A profile's routes, budget and protocol.
#[derive(Clone, Debug, PartialEq)]
pub struct ProfileRoutes {
    /// In the profile's order, one rule each. Their backends are
    /// [`Distribution::Empty`]: a profile route goes to the target
    /// itself (or its traffic split), which the caller knows.
    pub routes: Vec<HttpRoute>,
    /// The cap on the retries of all the profile's routes together.
    pub budget: Option<Budget>,
    /// The target is opaque TCP: its routes are not used.
    pub opaque: bool,
}

/// Converts a profile. A route whose condition cannot be expressed (a
/// `not`, an `all` of two different paths, a bad regex or method, no
/// condition) is dropped and reported to `skipped`, as are failure
/// classes other than status ranges and their `any`. The reasons:
/// `no_condition`, `unsupported_condition`, `bad_regex`, `bad_method`,
/// `unsupported_class`, `bad_budget` (a budget ratio that is not a
/// non-negative number: the default's), and the duration reasons of
/// [`from_proto`](super::proto::from_proto).
///
/// A retryable route retries up to [`PROFILE_MAX_RETRIES`] times on the
/// statuses its failure classes name, or on 5xx when it names none (the
/// profile's budget bounds them overall).
pub fn from_profile(p: DestinationProfile, skipped: &mut dyn FnMut(&'static str)) -> ProfileRoutes {
    let mut forward = |_| None;
    let mut cx = Cx {
        forward: &mut forward,
        skipped,
    };
    let cx = &mut cx;
    let routes = p
        .routes
        .into_iter()
        .filter_map(|r| {
            let Some(condition) = r.condition else {
                cx.skip("no_condition");
                return None;
            };
            let matches = alternatives(condition, 0, cx)?;
            if matches.is_empty() {
                // A condition nothing can satisfy: as a rule with no
                // matches it would take every request.
                cx.skip("unsupported_condition");
                return None;
            }
            let retry = r.is_retryable.then(|| params::Retry {
                max_retries: PROFILE_MAX_RETRIES,
                max_request_bytes: params::DEFAULT_MAX_REQUEST_BYTES,
                on: RetryOn::Http(failure_statuses(r.response_classes, cx)),
                timeout: None,
                backoff: None,
            });
            let name = r.metrics_labels.get("route").map_or("", String::as_str);
            Some(HttpRoute {
                meta: Meta::Default { name: name.into() },
                hosts: Vec::new(),
                rules: vec![HttpRule {
                    matches,
                    filters: Vec::new(),
                    backends: Distribution::Empty,
                    timeouts: params::Timeouts {
                        request: timeout(r.timeout, cx),
                        ..Default::default()
                    },
                    retry,
                    allow_l5d_request_headers: false,
                }],
            })
        })
        .collect();
    let budget = p.retry_budget.map(|b| {
        let d = Budget::default();
        let ratio = f64::from(b.retry_ratio);
        Budget {
            ratio: if ratio.is_finite() && ratio >= 0.0 {
                ratio
            } else {
                cx.skip("bad_budget");
                d.ratio
            },
            min_per_second: b.min_retries_per_second,
            ttl: timeout(b.ttl, cx).unwrap_or(d.ttl),
        }
    });
    ProfileRoutes {
        routes,
        budget,
        opaque: p.opaque_protocol,
    }
}

/// `m` as alternatives (any one fits); empty when nothing can fit;
/// `None` (counted) when it cannot be expressed.
fn alternatives(m: RequestMatch, depth: usize, cx: &mut Cx<'_>) -> Option<Vec<HttpMatch>> {
    use request_match::Match;
    if depth > MAX_DEPTH {
        cx.skip("unsupported_condition");
        return None;
    }
    match m.r#match {
        None => {
            cx.skip("no_condition");
            None
        }
        Some(Match::Path(p)) => match Pattern::new(&p.regex) {
            Ok(p) => Some(vec![HttpMatch {
                path: Some(PathMatch::Regex(p)),
                ..Default::default()
            }]),
            Err(_) => {
                cx.skip("bad_regex");
                None
            }
        },
        Some(Match::Method(m)) => match http::Method::try_from(m) {
            Ok(m) => Some(vec![HttpMatch {
                method: Some(m),
                ..Default::default()
            }]),
            Err(_) => {
                cx.skip("bad_method");
                None
            }
        },
        Some(Match::Not(_)) => {
            cx.skip("unsupported_condition");
            None
        }
        Some(Match::Any(seq)) => {
            let mut out = Vec::new();
            for m in seq.matches {
                out.extend(alternatives(m, depth + 1, cx)?);
            }
            bounded(out, cx)
        }
        Some(Match::All(seq)) => {
            let mut acc = vec![HttpMatch::default()];
            for m in seq.matches {
                let next = alternatives(m, depth + 1, cx)?;
                let mut product = Vec::new();
                for a in &acc {
                    for b in &next {
                        match both(a, b) {
                            Ok(Some(m)) => product.push(m),
                            Ok(None) => {}
                            Err(()) => {
                                cx.skip("unsupported_condition");
                                return None;
                            }
                        }
                    }
                }
                acc = bounded(product, cx)?;
            }
            Some(acc)
        }
    }
}

fn bounded(ms: Vec<HttpMatch>, cx: &mut Cx<'_>) -> Option<Vec<HttpMatch>> {
    if ms.len() > MAX_ALTERNATIVES {
        cx.skip("unsupported_condition");
        return None;
    }
    Some(ms)
}

/// One match that fits when both do: `Ok(None)` when none can (two
/// methods), `Err` when one match cannot say it (two different paths).
fn both(a: &HttpMatch, b: &HttpMatch) -> Result<Option<HttpMatch>, ()> {
    let path = match (&a.path, &b.path) {
        (Some(x), Some(y)) if x != y => return Err(()),
        (x, y) => x.clone().or_else(|| y.clone()),
    };
    let method = match (&a.method, &b.method) {
        (Some(x), Some(y)) if x != y => return Ok(None),
        (x, y) => x.clone().or_else(|| y.clone()),
    };
    Ok(Some(HttpMatch {
        path,
        method,
        headers: Vec::new(),
        query: Vec::new(),
    }))
}

/// The statuses a route's failure classes name, or 5xx when they name
/// none. Simplified: a success class listed before a failure class does
/// not carve its statuses out.
fn failure_statuses(classes: Vec<ResponseClass>, cx: &mut Cx<'_>) -> Vec<RangeInclusive<u16>> {
    let mut out = Vec::new();
    for class in classes.into_iter().filter(|c| c.is_failure) {
        match class.condition.and_then(|c| status_ranges(c, 0)) {
            Some(ranges) => out.extend(ranges),
            None => cx.skip("unsupported_class"),
        }
    }
    if out.is_empty() {
        out.push(500..=599);
    }
    out
}

fn status_ranges(m: ResponseMatch, depth: usize) -> Option<Vec<RangeInclusive<u16>>> {
    use response_match::Match;
    match m.r#match? {
        // One bound unset: the range is the other, alone.
        Match::Status(s) => {
            let (min, max) = match (s.min, s.max) {
                (0, 0) => return None,
                (0, v) | (v, 0) => (v, v),
                (min, max) => (min, max),
            };
            let min = u16::try_from(min)
                .ok()
                .filter(|s| (100..=599).contains(s))?;
            let max = u16::try_from(max)
                .ok()
                .filter(|s| (min..=599).contains(s))?;
            Some(vec![min..=max])
        }
        Match::Any(seq) if depth < MAX_DEPTH => {
            let mut out = Vec::new();
            for m in seq.matches {
                out.extend(status_ranges(m, depth + 1)?);
            }
            Some(out)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
