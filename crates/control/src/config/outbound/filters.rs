//! Validation of a route's `filters:` (header edits, redirects, injected
//! failures): which suit the route's protocol, and that their values are
//! ones the proxy can act on.

use super::{
    file::*,
    parse::{grpc_code_by_name, header_name, header_value},
    *,
};
use crate::config::{Error, invalid, parse_authority};
use std::collections::BTreeMap;

fn header_edits(e: FileHeaderEdits, at: &str, which: &str) -> Result<HeaderEdits, Error> {
    let at = format!("{at}.filters.{which}");
    let pairs = |m: BTreeMap<String, String>| {
        m.into_iter()
            .map(|(n, v)| {
                header_value(&n, &v, &at)?;
                Ok((header_name(&n, &at)?, v))
            })
            .collect::<Result<Vec<_>, Error>>()
    };
    Ok(HeaderEdits {
        add: pairs(e.add)?,
        set: pairs(e.set)?,
        remove: e
            .remove
            .iter()
            .map(|n| header_name(n, &at))
            .collect::<Result<_, _>>()?,
    })
}

pub(in crate::config) fn filters(
    f: FileFilters,
    grpc: bool,
    matches: &[HttpMatch],
    at: &str,
) -> Result<Filters, Error> {
    if grpc {
        for (field, set) in [
            ("response_headers", f.response_headers.is_some()),
            ("redirect", f.redirect.is_some()),
        ] {
            if set {
                return Err(invalid(
                    at,
                    format!("filters.{field} is for HTTP routes, not gRPC ones"),
                ));
            }
        }
    }
    if f.redirect.is_some() && f.fail.is_some() {
        return Err(invalid(at, "filters: a route redirects or fails, not both"));
    }
    Ok(Filters {
        request_headers: f
            .request_headers
            .map(|e| header_edits(e, at, "request_headers"))
            .transpose()?,
        response_headers: f
            .response_headers
            .map(|e| header_edits(e, at, "response_headers"))
            .transpose()?,
        redirect: f.redirect.map(|r| redirect(r, matches, at)).transpose()?,
        fail: f.fail.map(|x| fail(x, grpc, at)).transpose()?,
    })
}

fn redirect(r: FileRedirect, matches: &[HttpMatch], at: &str) -> Result<Redirect, Error> {
    let at = format!("{at}.filters.redirect");
    if let Some(s) = r
        .scheme
        .as_deref()
        .filter(|s| !["http", "https"].contains(s))
    {
        return Err(invalid(at, format!("scheme {s:?} is not http or https")));
    }
    let host = match r.host {
        None => None,
        Some(h) => Some(
            parse_authority(&format!("{h}:1"))
                .map_err(|e| invalid(&at, format!("host: {e}")))?
                .0,
        ),
    };
    if r.port == Some(0) {
        return Err(invalid(at, "port 0"));
    }
    let path = match (r.path_full, r.path_prefix) {
        (Some(_), Some(_)) => return Err(invalid(at, "path_full or path_prefix, not both")),
        (Some(p), None) => Some(RedirectPath::Full(p)),
        (None, Some(p)) => {
            // The proxy replaces the prefix the route matched: there must
            // be one in every match.
            let prefixed = matches
                .iter()
                .all(|m| matches!(m.path, Some(PathMatch::Prefix(_))));
            if !prefixed {
                return Err(invalid(
                    at,
                    "path_prefix replaces the matched prefix: every match needs a path_prefix",
                ));
            }
            Some(RedirectPath::Prefix(p))
        }
        (None, None) => None,
    };
    if let Some(RedirectPath::Full(p) | RedirectPath::Prefix(p)) = &path {
        if !p.starts_with('/') {
            return Err(invalid(at, format!("path {p:?} does not start with /")));
        }
    }
    // The Gateway API's default.
    let status = r.status.unwrap_or(302);
    if ![301, 302, 303, 307, 308].contains(&status) {
        return Err(invalid(
            at,
            format!("status {status} is not 301, 302, 303, 307 or 308"),
        ));
    }
    Ok(Redirect {
        scheme: r.scheme,
        host,
        port: r.port,
        path,
        status,
    })
}

fn fail(f: FileFail, grpc: bool, at: &str) -> Result<Fail, Error> {
    let at = format!("{at}.filters.fail");
    let code = match (grpc, f.status, f.grpc_code) {
        (false, Some(s), None) => {
            if !(100..=599).contains(&s) {
                return Err(invalid(at, format!("status {s} is not from 100 to 599")));
            }
            u32::from(s)
        }
        (true, None, Some(c)) => {
            let code = match &c {
                FileGrpcCode::Number(n) => Some(*n),
                FileGrpcCode::Name(n) => grpc_code_by_name(n),
            };
            match code {
                Some(n @ 1..=16) => n,
                _ => {
                    return Err(invalid(
                        at,
                        "grpc_code is not a gRPC error code (1 to 16, or a name like unavailable)",
                    ));
                }
            }
        }
        (false, _, Some(_)) => return Err(invalid(at, "grpc_code is for gRPC routes: use status")),
        (true, Some(_), _) => return Err(invalid(at, "status is for HTTP routes: use grpc_code")),
        (false, None, None) => return Err(invalid(at, "status is missing")),
        (true, None, None) => return Err(invalid(at, "grpc_code is missing")),
    };
    Ok(Fail {
        code,
        message: f.message,
        ratio: f.ratio.map(|r| ratio(&r, &at)).transpose()?,
    })
}

/// A ratio as a fraction: `"1/10"` as it is, a decimal with as few
/// digits as it has (`0.25` is 1/4).
fn ratio(r: &FileRatio, at: &str) -> Result<Ratio, Error> {
    let bad = |why: &str| invalid(at, format!("ratio: {why}"));
    let (numerator, denominator) = match r {
        FileRatio::Text(t) if t.contains('/') => {
            let (n, d) = t.split_once('/').unwrap_or_default();
            let n: u32 = n.trim().parse().map_err(|_| bad("not a fraction"))?;
            let d: u32 = d.trim().parse().map_err(|_| bad("not a fraction"))?;
            if d == 0 {
                return Err(bad("the denominator is 0"));
            }
            (n, d)
        }
        FileRatio::Text(t) => decimal(t.trim().parse().map_err(|_| bad("not a number"))?)
            .ok_or_else(|| bad("not from 0 to 1"))?,
        FileRatio::Number(f) => decimal(*f).ok_or_else(|| bad("not from 0 to 1"))?,
    };
    if numerator > denominator {
        return Err(bad("more than 1"));
    }
    let g = gcd(numerator, denominator);
    Ok(Ratio {
        numerator: numerator / g,
        denominator: denominator / g,
    })
}

/// `f` in [0, 1] as a fraction over a power of ten (to a millionth).
fn decimal(f: f64) -> Option<(u32, u32)> {
    if !(0.0..=1.0).contains(&f) {
        return None;
    }
    let mut d = 1u32;
    while d < 1_000_000 && ((f * f64::from(d)).round() - f * f64::from(d)).abs() > 1e-9 {
        d *= 10;
    }
    // In [0, 1e6]: the cast cannot truncate.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let n = (f * f64::from(d)).round() as u32;
    Some((n, d))
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a.max(1) } else { gcd(b, a % b) }
}
