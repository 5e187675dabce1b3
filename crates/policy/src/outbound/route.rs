//! Routes and their matches: what [`select`](super::select) compares a
//! request (or a TLS ClientHello's SNI) against, after detection and
//! before the route's timeouts, retries and backends.
//!
//! Everything here was checked when it was converted: header names are
//! valid, regexes compiled and anchored, hosts lower-cased and paths
//! normalised, so that matching only compares.

use super::{Distribution, GrpcFilter, HttpFilter, OpaqueFilter, RouteMeta};
use crate::params;
use http::{HeaderName, HeaderValue, Method};

/// An HTTP route (`outbound.HttpRoute`).
#[derive(Clone, Debug, PartialEq)]
pub struct HttpRoute {
    /// For the `route_*` metric labels.
    pub meta: RouteMeta,
    /// The hosts it serves; empty: any host.
    pub hosts: Vec<HostMatch>,
    /// Its rules, in the order the control plane gave them (ties go to
    /// the earlier one).
    pub rules: Vec<HttpRule>,
}

/// One rule of an HTTP route: which requests, and what happens to them.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpRule {
    /// Any one of these must fit; empty: every request fits.
    pub matches: Vec<HttpMatch>,
    /// Applied in order before the request is sent.
    pub filters: Vec<HttpFilter>,
    /// Where the request goes.
    pub backends: Distribution<HttpFilter>,
    /// The request's and each attempt's time limits.
    pub timeouts: params::Timeouts,
    /// Whether and when a failed attempt is tried again.
    pub retry: Option<params::Retry>,
    /// Whether `l5d-retry-*` / `l5d-timeout` request headers may override
    /// the rule's retries and timeouts.
    pub allow_l5d_request_headers: bool,
}

/// What an HTTP request must look like; every part set must fit.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HttpMatch {
    /// The path; `None`: any (as the prefix `/`).
    pub path: Option<PathMatch>,
    /// Headers that must be present with a fitting value.
    pub headers: Vec<HeaderMatch>,
    /// Query parameters that must be present with a fitting value.
    pub query: Vec<QueryMatch>,
    /// The method; `None`: any.
    pub method: Option<Method>,
}

/// How a path must look.
#[derive(Clone, Debug, PartialEq)]
pub enum PathMatch {
    /// Exactly this path.
    Exact(String),
    /// This path or one below it, by whole segments (`/api` fits `/api`
    /// and `/api/x`, not `/apix`). Stored without a trailing `/` (except
    /// `/` itself).
    Prefix(String),
    /// A regex that must match the whole path.
    Regex(Pattern),
}

/// A header that must be present with a fitting value (any of its values).
#[derive(Clone, Debug, PartialEq)]
pub struct HeaderMatch {
    /// Its name.
    pub name: HeaderName,
    /// How its value must look.
    pub value: ValueMatch<HeaderValue>,
}

/// A query parameter that must be present (its first occurrence is
/// compared, as sent: no percent-decoding).
#[derive(Clone, Debug, PartialEq)]
pub struct QueryMatch {
    /// Its name.
    pub name: String,
    /// How its value must look.
    pub value: ValueMatch<String>,
}

/// How a header or query value must look.
#[derive(Clone, Debug, PartialEq)]
pub enum ValueMatch<T> {
    /// Exactly this.
    Exact(T),
    /// A regex that must match the whole value.
    Regex(Pattern),
}

/// A host (or SNI) a route serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostMatch {
    /// Exactly this name, lower-cased.
    Exact(String),
    /// Names ending with this suffix, lower-cased, with its leading dot
    /// (`*.example.com` is `.example.com`; `*` alone is the empty suffix).
    Suffix(String),
}

/// An SNI a TLS route serves: the same shape as a host.
pub type SniMatch = HostMatch;

/// A regex, compiled once and anchored so that it must match the whole
/// value (the Gateway API's semantics).
#[derive(Clone, Debug)]
pub struct Pattern {
    /// The compiled, anchored regex.
    regex: regex::Regex,
    /// The source as the control plane sent it, for logs and equality.
    source: String,
}

/// A gRPC route (`outbound.GrpcRoute`).
#[derive(Clone, Debug, PartialEq)]
pub struct GrpcRoute {
    /// For the `route_*` metric labels.
    pub meta: RouteMeta,
    /// The hosts it serves; empty: any host.
    pub hosts: Vec<HostMatch>,
    /// Its rules, in order.
    pub rules: Vec<GrpcRule>,
}

/// One rule of a gRPC route.
#[derive(Clone, Debug, PartialEq)]
pub struct GrpcRule {
    /// Any one of these must fit; empty: every call fits.
    pub matches: Vec<GrpcMatch>,
    /// Applied in order before the call is sent.
    pub filters: Vec<GrpcFilter>,
    /// Where the call goes.
    pub backends: Distribution<GrpcFilter>,
    /// The call's and each attempt's time limits.
    pub timeouts: params::Timeouts,
    /// Whether and when a failed attempt is tried again.
    pub retry: Option<params::Retry>,
    /// Whether `l5d-*` request headers may override retries and timeouts.
    pub allow_l5d_request_headers: bool,
}

/// What a gRPC call must look like.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GrpcMatch {
    /// The service (`pkg.Service`), exactly; `None`: any.
    pub service: Option<String>,
    /// The method, exactly; `None`: any.
    pub method: Option<String>,
    /// Headers that must be present with a fitting value.
    pub headers: Vec<HeaderMatch>,
}

/// An opaque route (`outbound.OpaqueRoute`).
#[derive(Clone, Debug, PartialEq)]
pub struct OpaqueRoute {
    /// For the `route_*` metric labels.
    pub meta: RouteMeta,
    /// Its rules; the first applies.
    pub rules: Vec<OpaqueRule>,
}

/// One rule of an opaque or TLS route.
#[derive(Clone, Debug, PartialEq)]
pub struct OpaqueRule {
    /// Where the connection goes.
    pub backends: Distribution<OpaqueFilter>,
    /// Reasons to refuse the connection (see
    /// [`opaque_refusal`](super::filters::opaque_refusal)).
    pub filters: Vec<OpaqueFilter>,
}

/// A TLS route (`outbound.TlsRoute`).
#[derive(Clone, Debug, PartialEq)]
pub struct TlsRoute {
    /// For the `route_*` metric labels.
    pub meta: RouteMeta,
    /// The SNIs it serves; empty: any (or none).
    pub snis: Vec<SniMatch>,
    /// Its rules; the first applies.
    pub rules: Vec<TlsRule>,
}

/// One rule of a TLS route: the same as an opaque one.
pub type TlsRule = OpaqueRule;

// === impl HttpMatch ===

impl HttpMatch {
    /// The prefix this match strips, for a redirect's prefix replacement.
    pub fn prefix(&self) -> Option<&str> {
        match &self.path {
            Some(PathMatch::Prefix(p)) => Some(p),
            None => Some("/"),
            _ => None,
        }
    }
}

// === impl PathMatch ===

impl PathMatch {
    /// A prefix, normalised: without its trailing `/`s (but `/` stays).
    pub fn prefix(p: &str) -> Self {
        let trimmed = p.trim_end_matches('/');
        Self::Prefix(if trimmed.is_empty() {
            "/".to_string()
        } else {
            trimmed.to_string()
        })
    }

    /// Whether `path` fits.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(p) => path == p,
            Self::Prefix(p) => prefix_matches(p, path),
            Self::Regex(r) => r.is_match(path),
        }
    }
}

/// Whether `prefix` (normalised) covers `path` by whole segments.
pub(super) fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

// === impl HeaderMatch ===

impl HeaderMatch {
    /// Whether any of `headers`' values for this name fits.
    pub fn matches(&self, headers: &http::HeaderMap) -> bool {
        headers
            .get_all(&self.name)
            .iter()
            .any(|v| match &self.value {
                ValueMatch::Exact(want) => v == want,
                ValueMatch::Regex(r) => v.to_str().is_ok_and(|v| r.is_match(v)),
            })
    }
}

// === impl QueryMatch ===

impl QueryMatch {
    /// Whether the query string's first parameter of this name fits.
    pub fn matches(&self, query: Option<&str>) -> bool {
        let Some(query) = query else {
            return false;
        };
        let found = query
            .split('&')
            .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
            .find(|(k, _)| *k == self.name);
        match (found, &self.value) {
            (None, _) => false,
            (Some((_, v)), ValueMatch::Exact(want)) => v == want,
            (Some((_, v)), ValueMatch::Regex(r)) => r.is_match(v),
        }
    }
}

// === impl HostMatch ===

impl HostMatch {
    /// Whether `host` (any case, no port) fits.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(h) => host.eq_ignore_ascii_case(h),
            Self::Suffix(s) => {
                host.len() > s.len()
                    && host
                        .get(host.len() - s.len()..)
                        .is_some_and(|tail| tail.eq_ignore_ascii_case(s))
            }
        }
    }
}

// === impl Pattern ===

/// The largest compiled regex accepted from the control plane.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

impl Pattern {
    /// Compiles `source`, anchored at both ends.
    pub fn new(source: &str) -> Result<Self, regex::Error> {
        // Checked alone first: a source that closes the group early (as
        // `a)|(b`) would otherwise escape the anchors.
        regex::RegexBuilder::new(source)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()?;
        let regex = regex::RegexBuilder::new(&format!("^(?:{source})$"))
            .size_limit(REGEX_SIZE_LIMIT)
            .build()?;
        Ok(Self {
            regex,
            source: source.to_string(),
        })
    }

    /// Whether the whole of `s` matches.
    pub fn is_match(&self, s: &str) -> bool {
        self.regex.is_match(s)
    }

    /// The source as given (without the anchors).
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}
