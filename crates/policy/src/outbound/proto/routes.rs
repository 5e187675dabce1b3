//! HTTP and gRPC routes from the control plane's messages: hosts, rules,
//! matches, filters, timeouts and retries.

use super::{
    Cx, Skip,
    backends::{grpc_distribution, http_distribution},
    backoff, exact_host, meta, suffix_host, timeout,
};
use crate::{
    outbound::{
        GrpcFilter, GrpcMatch, GrpcRoute, GrpcRoutes, GrpcRule, HeaderMatch, HeaderModifier,
        HostMatch, HttpFilter, HttpMatch, HttpRoute, HttpRoutes, HttpRule, PathMatch, Pattern,
        QueryMatch, Ratio, Redirect, ValueMatch, filters::PathModifier,
    },
    params::{self, Backoff, GrpcCodes, RetryOn},
};
use http::{HeaderName, HeaderValue, StatusCode};
use linkerd2_proxy_api::{grpc_route as grpc_api, http_route as api, http_types, outbound};

/// The highest gRPC status code (`UNAUTHENTICATED`).
const MAX_GRPC_CODE: u32 = 16;

pub(super) fn http_routes(routes: Vec<outbound::HttpRoute>, cx: &mut Cx<'_>) -> HttpRoutes {
    routes
        .into_iter()
        .filter_map(|r| {
            let hosts = hosts(r.hosts, cx)?;
            let rules: Vec<HttpRule> = r
                .rules
                .into_iter()
                .filter_map(|rule| http_rule(rule, cx))
                .collect();
            if rules.is_empty() {
                cx.skip("no_rules");
                return None;
            }
            Some(HttpRoute {
                meta: meta(r.metadata),
                hosts,
                rules,
            })
        })
        .collect()
}

pub(super) fn grpc_routes(routes: Vec<outbound::GrpcRoute>, cx: &mut Cx<'_>) -> GrpcRoutes {
    routes
        .into_iter()
        .filter_map(|r| {
            let hosts = hosts(r.hosts, cx)?;
            let rules: Vec<GrpcRule> = r
                .rules
                .into_iter()
                .filter_map(|rule| grpc_rule(rule, cx))
                .collect();
            if rules.is_empty() {
                cx.skip("no_rules");
                return None;
            }
            Some(GrpcRoute {
                meta: meta(r.metadata),
                hosts,
                rules,
            })
        })
        .collect()
}

/// A route's hosts; `None` when it named some and none was usable (the
/// route must not widen to every host).
pub(crate) fn hosts(hosts: Vec<api::HostMatch>, cx: &mut dyn Skip) -> Option<Vec<HostMatch>> {
    if hosts.is_empty() {
        return Some(Vec::new());
    }
    let out: Vec<HostMatch> = hosts
        .into_iter()
        .filter_map(|h| {
            let m = match h.r#match {
                Some(api::host_match::Match::Exact(e)) => exact_host(&e),
                Some(api::host_match::Match::Suffix(s)) => suffix_host(&s.reverse_labels),
                None => None,
            };
            if m.is_none() {
                cx.skip("bad_host");
            }
            m
        })
        .collect();
    (!out.is_empty()).then_some(out)
}

// === rules ===

/// A rule; `None` (counted) when one of its matches is unusable: a rule
/// whose match cannot be checked must not take requests it was not for.
fn http_rule(rule: outbound::http_route::Rule, cx: &mut Cx<'_>) -> Option<HttpRule> {
    #[allow(deprecated)] // Read only when `timeouts` is unset, as the API asks.
    let legacy = rule.request_timeout;
    let matches = rule
        .matches
        .into_iter()
        .map(|m| http_match(m, cx))
        .collect::<Option<Vec<_>>>()?;
    Some(HttpRule {
        matches,
        filters: rule
            .filters
            .into_iter()
            .filter_map(|f| http_filter(f, cx))
            .collect(),
        backends: http_distribution(rule.backends, cx),
        timeouts: timeouts(rule.timeouts, legacy, cx),
        retry: rule.retry.map(|r| http_retry(r, cx)),
        allow_l5d_request_headers: rule.allow_l5d_request_headers,
    })
}

fn grpc_rule(rule: outbound::grpc_route::Rule, cx: &mut Cx<'_>) -> Option<GrpcRule> {
    #[allow(deprecated)] // Read only when `timeouts` is unset, as the API asks.
    let legacy = rule.request_timeout;
    let matches = rule
        .matches
        .into_iter()
        .map(|m| grpc_match(m, cx))
        .collect::<Option<Vec<_>>>()?;
    Some(GrpcRule {
        matches,
        filters: rule
            .filters
            .into_iter()
            .filter_map(|f| grpc_filter(f, cx))
            .collect(),
        backends: grpc_distribution(rule.backends, cx),
        timeouts: timeouts(rule.timeouts, legacy, cx),
        retry: rule.retry.map(|r| grpc_retry(r, cx)),
        allow_l5d_request_headers: rule.allow_l5d_request_headers,
    })
}

/// A rule's timeouts; the deprecated `requestTimeout` counts as the
/// request timeout when `timeouts` is unset.
fn timeouts(
    t: Option<api::Timeouts>,
    legacy: Option<prost_types::Duration>,
    cx: &mut Cx<'_>,
) -> params::Timeouts {
    match t {
        Some(t) => params::Timeouts {
            request: timeout(t.request, cx),
            response: timeout(t.response, cx),
            idle: timeout(t.idle, cx),
        },
        None => params::Timeouts {
            request: timeout(legacy, cx),
            ..Default::default()
        },
    }
}

// === matches ===

pub(crate) fn http_match(m: api::HttpRouteMatch, cx: &mut dyn Skip) -> Option<HttpMatch> {
    use api::path_match::Kind;
    let path = match m.path.and_then(|p| p.kind) {
        None => None,
        Some(Kind::Exact(p)) if !p.starts_with('/') => {
            cx.skip("bad_path");
            return None;
        }
        Some(Kind::Prefix(p)) if !p.is_empty() && !p.starts_with('/') => {
            cx.skip("bad_path");
            return None;
        }
        Some(Kind::Exact(p)) => Some(PathMatch::Exact(p)),
        Some(Kind::Prefix(p)) => Some(PathMatch::prefix(&p)),
        Some(Kind::Regex(r)) => Some(PathMatch::Regex(pattern(&r, cx)?)),
    };
    let method = match m.method {
        None => None,
        Some(method) => match http::Method::try_from(method) {
            Ok(method) => Some(method),
            Err(_) => {
                cx.skip("bad_method");
                return None;
            }
        },
    };
    Some(HttpMatch {
        path,
        headers: header_matches(m.headers, cx)?,
        query: m
            .query_params
            .into_iter()
            .map(|q| query_match(q, cx))
            .collect::<Option<_>>()?,
        method,
    })
}

pub(crate) fn grpc_match(m: grpc_api::GrpcRouteMatch, cx: &mut dyn Skip) -> Option<GrpcMatch> {
    let (service, method) = m.rpc.map(|r| (r.service, r.method)).unwrap_or_default();
    Some(GrpcMatch {
        service: (!service.is_empty()).then_some(service),
        method: (!method.is_empty()).then_some(method),
        headers: header_matches(m.headers, cx)?,
    })
}

fn header_matches(hs: Vec<api::HeaderMatch>, cx: &mut dyn Skip) -> Option<Vec<HeaderMatch>> {
    hs.into_iter()
        .map(|h| {
            let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
                cx.skip("bad_header");
                return None;
            };
            let value = match h.value {
                Some(api::header_match::Value::Exact(v)) => match HeaderValue::from_bytes(&v) {
                    Ok(v) => ValueMatch::Exact(v),
                    Err(_) => {
                        cx.skip("bad_header");
                        return None;
                    }
                },
                Some(api::header_match::Value::Regex(r)) => ValueMatch::Regex(pattern(&r, cx)?),
                None => {
                    cx.skip("bad_header");
                    return None;
                }
            };
            Some(HeaderMatch { name, value })
        })
        .collect()
}

fn query_match(q: api::QueryParamMatch, cx: &mut dyn Skip) -> Option<QueryMatch> {
    let value = match q.value {
        _ if q.name.is_empty() => None,
        Some(api::query_param_match::Value::Exact(v)) => Some(ValueMatch::Exact(v)),
        Some(api::query_param_match::Value::Regex(r)) => Some(ValueMatch::Regex(pattern(&r, cx)?)),
        None => None,
    };
    let Some(value) = value else {
        cx.skip("bad_query");
        return None;
    };
    Some(QueryMatch {
        name: q.name,
        value,
    })
}

fn pattern(source: &str, cx: &mut dyn Skip) -> Option<Pattern> {
    match Pattern::new(source) {
        Ok(p) => Some(p),
        Err(error) => {
            tracing::debug!(%error, source, "a route's regex does not compile");
            cx.skip("bad_regex");
            None
        }
    }
}

// === filters ===

pub(super) fn http_filter(f: outbound::http_route::Filter, cx: &mut Cx<'_>) -> Option<HttpFilter> {
    use outbound::http_route::filter::Kind as F;
    match f.kind {
        Some(F::RequestHeaderModifier(m)) => {
            Some(HttpFilter::RequestHeaders(request_header_modifier(m, cx)))
        }
        Some(F::ResponseHeaderModifier(m)) => Some(HttpFilter::ResponseHeaders(header_modifier(
            m.add, m.set, m.remove, cx,
        ))),
        Some(F::Redirect(r)) => redirect(r, cx).map(HttpFilter::Redirect),
        Some(F::FailureInjector(fi)) => http_failure_injector(fi, cx),
        None => {
            cx.skip("no_filter");
            None
        }
    }
}

pub(super) fn grpc_filter(f: outbound::grpc_route::Filter, cx: &mut Cx<'_>) -> Option<GrpcFilter> {
    use outbound::grpc_route::filter::Kind as F;
    match f.kind {
        Some(F::RequestHeaderModifier(m)) => {
            Some(GrpcFilter::RequestHeaders(request_header_modifier(m, cx)))
        }
        Some(F::FailureInjector(fi)) => grpc_failure_injector(fi, cx),
        None => {
            cx.skip("no_filter");
            None
        }
    }
}

/// An HTTP failure injector; `None` (counted) when its status is
/// impossible or its ratio has a zero denominator.
pub(crate) fn http_failure_injector(
    fi: api::HttpFailureInjector,
    cx: &mut dyn Skip,
) -> Option<HttpFilter> {
    let status = u16::try_from(fi.status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .filter(|s| (100..=599).contains(&s.as_u16()));
    let Some(status) = status else {
        cx.skip("bad_failure_injector");
        return None;
    };
    Some(HttpFilter::FailureInjector {
        status,
        message: fi.message.into(),
        ratio: ratio(fi.ratio, cx)?,
    })
}

/// A gRPC failure injector; `None` (counted) when its code is unknown or
/// its ratio has a zero denominator.
pub(crate) fn grpc_failure_injector(
    fi: grpc_api::GrpcFailureInjector,
    cx: &mut dyn Skip,
) -> Option<GrpcFilter> {
    if fi.code > MAX_GRPC_CODE {
        cx.skip("bad_failure_injector");
        return None;
    }
    Some(GrpcFilter::FailureInjector {
        code: fi.code,
        message: fi.message.into(),
        ratio: ratio(fi.ratio, cx)?,
    })
}

/// A request header modifier; invalid headers in it are dropped (counted).
pub(crate) fn request_header_modifier(
    m: api::RequestHeaderModifier,
    cx: &mut dyn Skip,
) -> HeaderModifier {
    header_modifier(m.add, m.set, m.remove, cx)
}

/// A failure injector's share: unset is every request.
fn ratio(r: Option<api::Ratio>, cx: &mut dyn Skip) -> Option<Ratio> {
    let Some(r) = r else {
        return Some(Ratio::ALWAYS);
    };
    let ratio = Ratio::new(r.numerator, r.denominator);
    if ratio.is_none() {
        cx.skip("bad_ratio");
    }
    ratio
}

fn header_modifier(
    add: Option<http_types::Headers>,
    set: Option<http_types::Headers>,
    remove: Vec<String>,
    cx: &mut dyn Skip,
) -> HeaderModifier {
    let mut pairs = |hs: Option<http_types::Headers>| -> Vec<(HeaderName, HeaderValue)> {
        hs.map(|h| h.headers)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|h| {
                let name = HeaderName::from_bytes(h.name.as_bytes());
                let value = HeaderValue::from_bytes(&h.value);
                match (name, value) {
                    (Ok(n), Ok(v)) => Some((n, v)),
                    _ => {
                        cx.skip("bad_header");
                        None
                    }
                }
            })
            .collect()
    };
    let add = pairs(add);
    let set = pairs(set);
    let remove = remove
        .into_iter()
        .filter_map(|n| match HeaderName::from_bytes(n.as_bytes()) {
            Ok(n) => Some(n),
            Err(_) => {
                cx.skip("bad_header");
                None
            }
        })
        .collect();
    HeaderModifier { add, set, remove }
}

/// A redirect; `None` (counted) when its scheme is unusable. A bad port or
/// status is counted and ignored (the request's port, 302).
pub(crate) fn redirect(r: api::RequestRedirect, cx: &mut dyn Skip) -> Option<Redirect> {
    let scheme = match r.scheme {
        Some(s) if s.r#type.is_some() => match http::uri::Scheme::try_from(s) {
            Ok(s) => Some(s),
            Err(_) => {
                cx.skip("bad_redirect");
                return None;
            }
        },
        _ => None,
    };
    let port = match r.port {
        0 => None,
        p => {
            let port = u16::try_from(p).ok();
            if port.is_none() {
                cx.skip("bad_redirect");
            }
            port
        }
    };
    let status = match r.status {
        0 => StatusCode::FOUND,
        s => match u16::try_from(s)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
        {
            Some(s) if s.is_redirection() => s,
            _ => {
                cx.skip("bad_redirect");
                StatusCode::FOUND
            }
        },
    };
    let path = r.path.and_then(|p| p.replace).map(|p| match p {
        api::path_modifier::Replace::Full(p) => PathModifier::Full(p),
        api::path_modifier::Replace::Prefix(p) => PathModifier::Prefix(p),
    });
    Some(Redirect {
        scheme,
        host: (!r.host.is_empty()).then_some(r.host),
        port,
        path,
        status,
    })
}

// === retries ===

/// The largest body buffered for replay: 0 means the default.
fn max_request_bytes(n: u32) -> u64 {
    if n == 0 {
        params::DEFAULT_MAX_REQUEST_BYTES
    } else {
        u64::from(n)
    }
}

fn http_retry(r: outbound::http_route::Retry, cx: &mut Cx<'_>) -> params::Retry {
    let ranges = match r.conditions {
        None => {
            cx.skip("no_retry_conditions");
            Vec::new()
        }
        Some(c) => c
            .status_ranges
            .into_iter()
            .filter_map(|sr| {
                let ok = sr.start <= sr.end && (100..=599).contains(&sr.start) && sr.end <= 599;
                if !ok {
                    cx.skip("bad_status_range");
                    return None;
                }
                Some(u16::try_from(sr.start).ok()?..=u16::try_from(sr.end).ok()?)
            })
            .collect(),
    };
    params::Retry {
        max_retries: r.max_retries,
        max_request_bytes: max_request_bytes(r.max_request_bytes),
        on: RetryOn::Http(ranges),
        timeout: timeout(r.timeout, cx),
        backoff: r.backoff.map(|b| backoff(b, Backoff::default(), cx)),
    }
}

fn grpc_retry(r: outbound::grpc_route::Retry, cx: &mut Cx<'_>) -> params::Retry {
    let codes = match r.conditions {
        None => {
            cx.skip("no_retry_conditions");
            GrpcCodes::default()
        }
        Some(c) => [
            (c.cancelled, 1),
            (c.deadine_exceeded, 4),
            (c.resource_exhausted, 8),
            (c.internal, 13),
            (c.unavailable, 14),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .fold(GrpcCodes::default(), |codes, (_, code)| codes.with(code)),
    };
    params::Retry {
        max_retries: r.max_retries,
        max_request_bytes: max_request_bytes(r.max_request_bytes),
        on: RetryOn::Grpc(codes),
        timeout: timeout(r.timeout, cx),
        backoff: r.backoff.map(|b| backoff(b, Backoff::default(), cx)),
    }
}
