//! Linkerd's retry request headers: a client's overrides of its route's
//! retry settings.
//!
//! They are always taken off the request (they are for this proxy, not the
//! server); the retry layer honours them only when the route allows
//! (`allow_l5d_request_headers`). A malformed value is ignored.

use std::{ops::RangeInclusive, time::Duration};

use http::{HeaderMap, HeaderValue, header::HeaderName};

use crate::{
    params::GrpcCodes,
    timeout::{L5D_TIMEOUT, parse_duration},
};

const RETRY_LIMIT: HeaderName = HeaderName::from_static("l5d-retry-limit");
const RETRY_HTTP: HeaderName = HeaderName::from_static("l5d-retry-http");
const RETRY_GRPC: HeaderName = HeaderName::from_static("l5d-retry-grpc");
const RETRY_TIMEOUT: HeaderName = HeaderName::from_static("l5d-retry-timeout");
const RESPONSE_TIMEOUT: HeaderName = HeaderName::from_static("l5d-response-timeout");

/// What a request's headers ask of its retries.
#[derive(Debug, Default)]
pub(super) struct Overrides {
    /// `l5d-retry-limit`: retries after the first attempt.
    pub(super) limit: Option<u32>,
    /// `l5d-retry-http`: e.g. `5xx,429,500-504`.
    pub(super) http: Option<Vec<RangeInclusive<u16>>>,
    /// `l5d-retry-grpc`: e.g. `unavailable,internal`.
    pub(super) grpc: Option<GrpcCodes>,
    /// `l5d-retry-timeout`: each attempt's timeout.
    pub(super) retry_timeout: Option<Duration>,
    /// `l5d-response-timeout`: the backend response timeout.
    pub(super) response_timeout: Option<Duration>,
}

impl Overrides {
    /// Removes the headers from `headers` (and `l5d-timeout`, which the
    /// timeout layer reads before this), and parses them.
    pub(super) fn take(headers: &mut HeaderMap) -> Self {
        headers.remove(L5D_TIMEOUT);
        Self {
            limit: headers
                .remove(RETRY_LIMIT)
                .and_then(|v| v.to_str().ok()?.trim().parse().ok()),
            http: headers.remove(RETRY_HTTP).and_then(|v| parse_http(&v)),
            grpc: headers.remove(RETRY_GRPC).and_then(|v| parse_grpc(&v)),
            retry_timeout: headers
                .remove(RETRY_TIMEOUT)
                .and_then(|v| parse_duration(&v)),
            response_timeout: headers
                .remove(RESPONSE_TIMEOUT)
                .and_then(|v| parse_duration(&v)),
        }
    }

    /// Whether the headers ask for retries where the route has none.
    pub(super) fn configures_retries(&self) -> bool {
        self.limit.is_some() || self.http.is_some() || self.grpc.is_some()
    }
}

/// `5xx`, `429`, `500-504`, comma-separated; any bad item spoils the lot.
fn parse_http(value: &HeaderValue) -> Option<Vec<RangeInclusive<u16>>> {
    let code = |s: &str| {
        s.trim()
            .parse::<u16>()
            .ok()
            .filter(|c| (100..=599).contains(c))
    };
    value
        .to_str()
        .ok()?
        .split(',')
        .map(|item| {
            let item = item.trim();
            if let Some(class) = item.strip_suffix("xx").or_else(|| item.strip_suffix("XX")) {
                let c = class.parse::<u16>().ok().filter(|c| (1..=5).contains(c))?;
                return Some(c * 100..=c * 100 + 99);
            }
            match item.split_once('-') {
                Some((lo, hi)) => {
                    let (lo, hi) = (code(lo)?, code(hi)?);
                    (lo <= hi).then_some(lo..=hi)
                }
                None => code(item).map(|c| c..=c),
            }
        })
        .collect()
}

/// gRPC code names (`unavailable`, `deadline-exceeded`, ...),
/// comma-separated; any unknown name spoils the lot.
fn parse_grpc(value: &HeaderValue) -> Option<GrpcCodes> {
    value
        .to_str()
        .ok()?
        .split(',')
        .try_fold(GrpcCodes::default(), |codes, name| {
            let name = name.trim().to_ascii_lowercase().replace('_', "-");
            let code = match name.as_str() {
                "cancelled" => 1,
                "unknown" => 2,
                "invalid-argument" => 3,
                "deadline-exceeded" => 4,
                "not-found" => 5,
                "already-exists" => 6,
                "permission-denied" => 7,
                "resource-exhausted" => 8,
                "failed-precondition" => 9,
                "aborted" => 10,
                "out-of-range" => 11,
                "unimplemented" => 12,
                "internal" => 13,
                "unavailable" => 14,
                "data-loss" => 15,
                "unauthenticated" => 16,
                _ => return None,
            };
            Some(codes.with(code))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http_conditions() {
        let v = HeaderValue::from_static("5xx, 429,500-504");
        assert_eq!(parse_http(&v), Some(vec![500..=599, 429..=429, 500..=504]));
        for bad in ["6xx", "504-500", "abc", "5xx,", "42"] {
            assert_eq!(parse_http(&HeaderValue::from_static(bad)), None, "{bad}");
        }
    }

    #[test]
    fn parses_grpc_conditions() {
        let v = HeaderValue::from_static("unavailable, DEADLINE_EXCEEDED");
        let codes = parse_grpc(&v).unwrap();
        assert!(codes.contains(14) && codes.contains(4) && !codes.contains(13));
        assert_eq!(
            parse_grpc(&HeaderValue::from_static("unavailable,nope")),
            None
        );
    }

    #[test]
    fn takes_every_header() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("l5d-retry-limit", "3"),
            ("l5d-retry-http", "5xx"),
            ("l5d-retry-grpc", "internal"),
            ("l5d-retry-timeout", "250ms"),
            ("l5d-response-timeout", "2s"),
            ("l5d-timeout", "5s"),
            ("x-keep", "1"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let o = Overrides::take(&mut h);
        assert_eq!(o.limit, Some(3));
        assert_eq!(o.retry_timeout, Some(Duration::from_millis(250)));
        assert_eq!(o.response_timeout, Some(Duration::from_secs(2)));
        assert!(o.grpc.is_some_and(|c| c.contains(13)));
        assert_eq!(h.len(), 1, "only x-keep is left: {h:?}");
    }
}
