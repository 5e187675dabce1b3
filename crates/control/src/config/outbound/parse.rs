//! Validation of a service's `policy:`: every error names the service and
//! the route (`services.<authority>.policy.routes.<name>`) and says what
//! is wrong, so that a reload that fails can be fixed from the log line.

use super::{
    backend::{backends, failure_accrual, sni},
    file::*,
    filters::filters,
    *,
};
use crate::config::{Error, Protocol, invalid, method, statuses};
use linnet_config::parse::duration;
use std::collections::BTreeMap;

/// gRPC status codes by number, named as in the gRPC spec (snake case).
const GRPC_CODES: [&str; 17] = [
    "ok",
    "cancelled",
    "unknown",
    "invalid_argument",
    "deadline_exceeded",
    "not_found",
    "already_exists",
    "permission_denied",
    "resource_exhausted",
    "failed_precondition",
    "aborted",
    "out_of_range",
    "unimplemented",
    "internal",
    "unavailable",
    "data_loss",
    "unauthenticated",
];

/// The codes `GrpcRoute.Retry.Conditions` can name.
const RETRYABLE_GRPC: [u32; 5] = [1, 4, 8, 13, 14];

/// Validates a service's `policy:`; `at` is `services.<authority>.policy`.
pub(in crate::config) fn policy(p: FilePolicy, at: &str) -> Result<Policy, Error> {
    let grpc = p.protocol == Protocol::Grpc;
    if p.protocol == Protocol::Tls && !p.routes.is_empty() {
        return Err(invalid(
            format!("{at}.routes"),
            "routes are HTTP or gRPC routes: a TLS service has tls_routes",
        ));
    }
    if p.protocol != Protocol::Tls && !p.tls_routes.is_empty() {
        return Err(invalid(
            format!("{at}.tls_routes"),
            "tls_routes need protocol: tls",
        ));
    }
    if !matches!(p.protocol, Protocol::Opaque | Protocol::Detect) && !p.opaque_routes.is_empty() {
        return Err(invalid(
            format!("{at}.opaque_routes"),
            "opaque_routes need protocol: opaque or detect",
        ));
    }
    let routes = p
        .routes
        .into_iter()
        .map(|r| {
            let at = format!("{at}.routes.{}", r.name);
            route(r, grpc, &at)
        })
        .collect::<Result<_, _>>()?;
    let tls_routes = p
        .tls_routes
        .into_iter()
        .map(|r| {
            let at = format!("{at}.tls_routes.{}", r.name);
            Ok(TlsRoute {
                snis: r
                    .snis
                    .iter()
                    .map(|s| sni(s).map_err(|e| invalid(&at, e)))
                    .collect::<Result<_, _>>()?,
                backends: backends(r.backends, &at)?,
                forbidden: r.forbidden,
                name: r.name,
            })
        })
        .collect::<Result<_, _>>()?;
    let opaque_routes = p
        .opaque_routes
        .into_iter()
        .map(|r| {
            let at = format!("{at}.opaque_routes.{}", r.name);
            if r.forbidden && r.invalid.is_some() {
                return Err(invalid(at, "forbidden or invalid, not both"));
            }
            Ok(OpaqueRoute {
                backends: backends(r.backends, &at)?,
                forbidden: r.forbidden,
                invalid: r.invalid,
                name: r.name,
            })
        })
        .collect::<Result<_, _>>()?;
    let failure_accrual = p
        .failure_accrual
        .map(|f| failure_accrual(f, &format!("{at}.failure_accrual")))
        .transpose()?;
    Ok(Policy {
        protocol: p.protocol,
        routes,
        tls_routes,
        opaque_routes,
        failure_accrual,
    })
}

/// A duration that must be more than zero.
pub(super) fn positive(s: &str, at: &str, field: &str) -> Result<Duration, Error> {
    let d = duration(s).map_err(|r| invalid(at, format!("{field}: {r}")))?;
    if d.is_zero() {
        return Err(invalid(at, format!("{field} must be more than 0")));
    }
    Ok(d)
}

pub(super) fn opt_positive(
    s: &Option<String>,
    at: &str,
    field: &str,
) -> Result<Option<Duration>, Error> {
    s.as_deref().map(|s| positive(s, at, field)).transpose()
}

pub(super) fn positive_or(
    s: &Option<String>,
    at: &str,
    field: &str,
    default: Duration,
) -> Result<Duration, Error> {
    Ok(opt_positive(s, at, field)?.unwrap_or(default))
}

fn route(r: FileRoute, grpc: bool, at: &str) -> Result<Route, Error> {
    let (matches, grpc_matches) = if grpc {
        let m = r.matches.into_iter().map(|m| grpc_match(m, at));
        (Vec::new(), m.collect::<Result<_, _>>()?)
    } else {
        let m = r.matches.into_iter().map(|m| http_match(m, at));
        (m.collect::<Result<_, _>>()?, Vec::new())
    };
    let mut timeouts = Timeouts::default();
    if let Some(t) = &r.timeouts {
        if r.timeout.is_some() && t.request.is_some() {
            return Err(invalid(
                at,
                "timeout and timeouts.request say the same: keep one",
            ));
        }
        timeouts.response = opt_positive(&t.response, at, "timeouts.response")?;
        timeouts.idle = opt_positive(&t.idle, at, "timeouts.idle")?;
        timeouts.request = opt_positive(&t.request, at, "timeouts.request")?;
    }
    if let Some(t) = &r.timeout {
        timeouts.request = Some(positive(t, at, "timeout")?);
    }
    let filters = filters(r.filters, grpc, &matches, at)?;
    Ok(Route {
        matches,
        grpc_matches,
        backends: backends(r.backends, at)?,
        timeouts,
        retry: r.retry.map(|x| retry(x, grpc, at)).transpose()?,
        filters,
        allow_l5d_request_headers: r.allow_l5d_request_headers,
        name: r.name,
    })
}

fn regex(re: &str, at: &str, what: &str) -> Result<(), Error> {
    regex_syntax::Parser::new()
        .parse(re)
        .map(|_| ())
        .map_err(|e| invalid(at, format!("{what} is not a regular expression: {e}")))
}

pub(in crate::config) fn header_name(name: &str, at: &str) -> Result<String, Error> {
    http::HeaderName::from_bytes(name.as_bytes())
        .map(|n| n.as_str().to_string())
        .map_err(|_| invalid(at, format!("{name:?} is not a header name")))
}

pub(super) fn header_value(name: &str, value: &str, at: &str) -> Result<(), Error> {
    http::HeaderValue::from_str(value).map(|_| ()).map_err(|_| {
        invalid(
            at,
            format!("header {name}: {value:?} is not a header value"),
        )
    })
}

/// Header matches: exact values, then regular expressions.
fn header_matches(
    exact: BTreeMap<String, String>,
    regexes: BTreeMap<String, String>,
    at: &str,
) -> Result<Vec<ValueMatch>, Error> {
    let mut out = Vec::new();
    for (name, v) in exact {
        header_value(&name, &v, at)?;
        out.push(ValueMatch {
            name: header_name(&name, at)?,
            value: Value::Exact(v),
        });
    }
    for (name, re) in regexes {
        regex(&re, at, &format!("header_regex {name}"))?;
        out.push(ValueMatch {
            name: header_name(&name, at)?,
            value: Value::Regex(re),
        });
    }
    Ok(out)
}

pub(in crate::config) fn http_match(m: FileMatch, at: &str) -> Result<HttpMatch, Error> {
    if m.service.is_some() {
        return Err(invalid(
            at,
            "service is a gRPC match: this is an HTTP route",
        ));
    }
    for path in [&m.path_prefix, &m.path_exact].into_iter().flatten() {
        if !path.starts_with('/') {
            return Err(invalid(at, format!("path {path:?} does not start with /")));
        }
    }
    // The first format let path and path_prefix be given together, the
    // exact path winning; a regex is new and stands alone.
    let path = match (m.path_exact, m.path_prefix, m.path_regex) {
        (None, None, None) => None,
        (Some(p), _, None) => Some(PathMatch::Exact(p)),
        (None, Some(p), None) => Some(PathMatch::Prefix(p)),
        (None, None, Some(re)) => {
            regex(&re, at, "path_regex")?;
            Some(PathMatch::Regex(re))
        }
        _ => {
            return Err(invalid(
                at,
                "path_regex cannot be given with path_exact or path_prefix",
            ));
        }
    };
    let mut query_params = Vec::new();
    for (name, v) in m.query_params {
        if name.is_empty() {
            return Err(invalid(at, "an empty query parameter name"));
        }
        query_params.push(ValueMatch {
            name,
            value: Value::Exact(v),
        });
    }
    for (name, re) in m.query_regex {
        if name.is_empty() {
            return Err(invalid(at, "an empty query parameter name"));
        }
        regex(&re, at, &format!("query_regex {name}"))?;
        query_params.push(ValueMatch {
            name,
            value: Value::Regex(re),
        });
    }
    Ok(HttpMatch {
        path,
        method: method(&m.method, at)?,
        headers: header_matches(m.headers, m.header_regex, at)?,
        query_params,
    })
}

pub(in crate::config) fn grpc_match(m: FileMatch, at: &str) -> Result<GrpcMatch, Error> {
    let http_only = [
        ("path_prefix", m.path_prefix.is_some()),
        ("path_exact", m.path_exact.is_some()),
        ("path_regex", m.path_regex.is_some()),
        ("query_params", !m.query_params.is_empty()),
        ("query_regex", !m.query_regex.is_empty()),
    ];
    if let Some((field, _)) = http_only.iter().find(|(_, set)| *set) {
        return Err(invalid(
            at,
            format!("{field} is an HTTP match: a gRPC route matches service, method and headers"),
        ));
    }
    let name = |s: Option<String>, what: &str| match s {
        Some(s) if s.is_empty() || s.contains('/') || s.contains(char::is_whitespace) => Err(
            invalid(at, format!("{what} {s:?} is not a gRPC {what} name")),
        ),
        s => Ok(s),
    };
    Ok(GrpcMatch {
        service: name(m.service, "service")?,
        method: name(m.method, "method")?,
        headers: header_matches(m.headers, m.header_regex, at)?,
    })
}

fn retry(x: FileRetry, grpc: bool, at: &str) -> Result<Retry, Error> {
    let grpc_codes = match (grpc, x.grpc) {
        (false, Some(_)) => {
            return Err(invalid(
                at,
                "retry.grpc is for gRPC routes: an HTTP route retries on statuses",
            ));
        }
        (false, None) => Vec::new(),
        // gRPC routes retried UNAVAILABLE before they could say more.
        (true, None) => vec![14],
        (true, Some(names)) => names
            .iter()
            .map(|n| match grpc_code_by_name(n) {
                Some(c) if RETRYABLE_GRPC.contains(&c) => Ok(c),
                _ => Err(invalid(
                    at,
                    format!(
                        "retry.grpc: {n:?} is not one of cancelled, deadline_exceeded, \
                         resource_exhausted, internal, unavailable"
                    ),
                )),
            })
            .collect::<Result<_, _>>()?,
    };
    if grpc && !x.statuses.is_empty() {
        return Err(invalid(
            at,
            "retry.statuses are HTTP statuses: a gRPC route retries on retry.grpc codes",
        ));
    }
    let backoff = match x.backoff {
        None => None,
        Some(b) => {
            let jitter_ratio = b.jitter_ratio.unwrap_or(0.5);
            if !(0.0..=1.0).contains(&jitter_ratio) {
                return Err(invalid(
                    at,
                    "retry.backoff.jitter_ratio must be from 0 to 1",
                ));
            }
            let min = positive_or(&b.min, at, "retry.backoff.min", Duration::from_millis(25))?;
            let max = positive_or(&b.max, at, "retry.backoff.max", Duration::from_millis(250))?;
            if min > max {
                return Err(invalid(at, "retry.backoff.min is above retry.backoff.max"));
            }
            Some(Backoff {
                min,
                max,
                jitter_ratio,
                respect_retry_after: b.respect_retry_after,
            })
        }
    };
    Ok(Retry {
        limit: x.limit.unwrap_or(1),
        statuses: statuses(&x.statuses, &format!("{at}.retry.statuses"))?,
        grpc: grpc_codes,
        timeout: opt_positive(&x.timeout, at, "retry.timeout")?,
        max_request_bytes: x.max_request_bytes.unwrap_or(DEFAULT_MAX_REQUEST_BYTES),
        backoff,
    })
}

pub(super) fn grpc_code_by_name(name: &str) -> Option<u32> {
    let name = name.trim().to_ascii_lowercase().replace('-', "_");
    GRPC_CODES
        .iter()
        .position(|c| *c == name)
        .and_then(|i| u32::try_from(i).ok())
}
