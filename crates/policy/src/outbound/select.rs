//! Route selection: which route and rule a request (or a TLS connection's
//! SNI) takes, right after the HTTP server (or TLS detection) and before
//! the route's filters, timeouts, retries and backends.
//!
//! HTTP and gRPC follow the Gateway API's precedence: the route whose
//! hosts fit best (an exact host, then the longest wildcard suffix, then
//! a route that names no host), then, among the rules that fit, the most
//! specific match; ties go to the earlier route, then the earlier rule.
//! Selection is one pass over the routes with comparisons only: nothing
//! is allocated per request.

use super::{
    GrpcMatch, GrpcRoute, GrpcRule, HostMatch, HttpMatch, HttpRoute, HttpRule, OpaqueRoute,
    OpaqueRule, PathMatch, TlsRoute, TlsRule,
};
use http::Request;

/// The route and rule an HTTP request takes, and the match that took it.
#[derive(Clone, Copy, Debug)]
pub struct HttpSelection<'r> {
    /// The route.
    pub route: &'r HttpRoute,
    /// Its rule.
    pub rule: &'r HttpRule,
    /// The rule's match that fitted best; `None` when the rule has none
    /// (it takes every request).
    pub matched: Option<&'r HttpMatch>,
}

/// How well a route's hosts fit a request's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum HostRank {
    /// The route names no host.
    Any,
    /// A wildcard suffix of this length.
    Suffix(usize),
    /// The exact host.
    Exact,
}

/// How specific a path match is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum PathRank {
    Regex,
    Prefix(usize),
    Exact,
}

/// How specific an HTTP match is; fields in order of precedence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct HttpRank {
    path: PathRank,
    method: bool,
    headers: usize,
    query: usize,
}

/// How specific a gRPC match's service and method are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum RpcRank {
    Neither,
    Method,
    Service,
    Both,
}

/// How specific a gRPC match is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct GrpcRank {
    rpc: RpcRank,
    headers: usize,
}

/// A rule with no matches fits as the prefix `/` would.
const MATCH_ALL: HttpRank = HttpRank {
    path: PathRank::Prefix(1),
    method: false,
    headers: 0,
    query: 0,
};

/// The route and rule `req` takes, by the Gateway API's precedence: path
/// exact, then the longest prefix, then a regex; then a method over none;
/// then more header matches; then more query matches.
pub fn http<'r, B>(
    routes: &'r [HttpRoute],
    req: &Request<B>,
) -> Option<(&'r HttpRoute, &'r HttpRule)> {
    http_selection(routes, req).map(|s| (s.route, s.rule))
}

/// [`http()`], with the match that fitted (a redirect that replaces the
/// matched prefix needs it: [`HttpSelection::prefix`]).
pub fn http_selection<'r, B>(
    routes: &'r [HttpRoute],
    req: &Request<B>,
) -> Option<HttpSelection<'r>> {
    select_http(routes, req).map(|(route, rule, matched)| HttpSelection {
        route,
        rule,
        matched,
    })
}

/// A route as selection sees it: the hosts it serves and its rules, in
/// the control plane's order. Outbound and inbound routes both are one,
/// so that both sides choose by the same precedence.
pub(crate) trait Route {
    /// Its rules' type.
    type Rule;
    /// The hosts it serves; empty: any host.
    fn hosts(&self) -> &[HostMatch];
    /// Its rules, in order.
    fn rules(&self) -> &[Self::Rule];
}

/// A rule as selection sees it: its matches (`HttpMatch`es or
/// `GrpcMatch`es); none: every request fits.
pub(crate) trait Rule<M> {
    /// Its matches.
    fn matches(&self) -> &[M];
}

/// The route, rule and match `req` takes among any HTTP routes, by the
/// Gateway API's precedence (see [`http()`]).
pub(crate) fn select_http<'r, R, B>(
    routes: &'r [R],
    req: &Request<B>,
) -> Option<(&'r R, &'r R::Rule, Option<&'r HttpMatch>)>
where
    R: Route,
    R::Rule: Rule<HttpMatch>,
{
    let host = request_host(req).map(|(h, _)| h);
    let mut best = Best::default();
    for route in routes {
        let Some(host_rank) = host_rank(route.hosts(), host) else {
            continue;
        };
        if best.rank().is_some_and(|(h, _)| *h > host_rank) {
            continue;
        }
        for rule in route.rules() {
            if let Some((rank, matched)) = best_http_match(rule.matches(), req) {
                best.offer((host_rank, rank), (route, rule, matched));
            }
        }
    }
    best.into_inner()
}

/// The first route (whose hosts fit) and rule that `req` fits, in order:
/// a `ServiceProfile`'s semantics, where the first match wins.
pub fn http_first<'r, B>(routes: &'r [HttpRoute], req: &Request<B>) -> Option<HttpSelection<'r>> {
    let host = request_host(req).map(|(h, _)| h);
    routes
        .iter()
        .filter(|r| host_rank(&r.hosts, host).is_some())
        .find_map(|route| {
            route.rules.iter().find_map(|rule| {
                let (_, matched) = best_http_match(&rule.matches, req)?;
                Some(HttpSelection {
                    route,
                    rule,
                    matched,
                })
            })
        })
}

/// The route and rule a gRPC call takes: service and method exactly, then
/// service only, then method only, then neither; then more header
/// matches. The call's service and method come from its path
/// (`/pkg.Service/Method`).
pub fn grpc<'r, B>(
    routes: &'r [GrpcRoute],
    req: &Request<B>,
) -> Option<(&'r GrpcRoute, &'r GrpcRule)> {
    select_grpc(routes, req)
}

/// The route and rule a gRPC call takes among any gRPC routes (see
/// [`grpc()`]).
pub(crate) fn select_grpc<'r, R, B>(
    routes: &'r [R],
    req: &Request<B>,
) -> Option<(&'r R, &'r R::Rule)>
where
    R: Route,
    R::Rule: Rule<GrpcMatch>,
{
    let host = request_host(req).map(|(h, _)| h);
    let rpc = req
        .uri()
        .path()
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .filter(|(_, method)| !method.contains('/'));
    let mut best = Best::default();
    for route in routes {
        let Some(host_rank) = host_rank(route.hosts(), host) else {
            continue;
        };
        for rule in route.rules() {
            let matches = rule.matches();
            let rank = if matches.is_empty() {
                Some(GrpcRank {
                    rpc: RpcRank::Neither,
                    headers: 0,
                })
            } else {
                matches
                    .iter()
                    .filter_map(|m| grpc_rank(m, rpc, req.headers()))
                    .max()
            };
            if let Some(rank) = rank {
                best.offer((host_rank, rank), (route, rule));
            }
        }
    }
    best.into_inner()
}

/// The TLS route a connection with this SNI takes: an exact SNI, then the
/// longest suffix, then a route that names none; its first rule applies.
pub fn tls<'r>(routes: &'r [TlsRoute], sni: Option<&str>) -> Option<(&'r TlsRoute, &'r TlsRule)> {
    let sni = sni.map(|s| s.strip_suffix('.').unwrap_or(s));
    let mut best = Best::default();
    for route in routes {
        if let (Some(rank), Some(rule)) = (host_rank(&route.snis, sni), route.rules.first()) {
            best.offer(rank, (route, rule));
        }
    }
    best.into_inner()
}

/// The opaque route a connection takes: the first rule of the first route
/// (that has one).
pub fn opaque(routes: &[OpaqueRoute]) -> Option<(&OpaqueRoute, &OpaqueRule)> {
    routes
        .iter()
        .find_map(|r| r.rules.first().map(|rule| (r, rule)))
}

/// The request's host (from the URI's authority, else the `Host` header)
/// without its port or trailing dot, and the port if one is given.
pub(super) fn request_host<B>(req: &Request<B>) -> Option<(&str, Option<u16>)> {
    if let Some(a) = req.uri().authority() {
        return Some((trim_dot(a.host()), a.port_u16()));
    }
    let host = req.headers().get(http::header::HOST)?.to_str().ok()?;
    let (name, port) = if host.starts_with('[') {
        let end = host.find(']')?;
        (&host[..=end], host[end + 1..].strip_prefix(':'))
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    let name = trim_dot(name);
    (!name.is_empty()).then(|| (name, port.and_then(|p| p.parse().ok())))
}

fn trim_dot(host: &str) -> &str {
    host.strip_suffix('.').unwrap_or(host)
}

/// How well `hosts` fit `host`; `None` when they do not.
fn host_rank(hosts: &[HostMatch], host: Option<&str>) -> Option<HostRank> {
    if hosts.is_empty() {
        return Some(HostRank::Any);
    }
    let host = host?;
    hosts
        .iter()
        .filter(|h| h.matches(host))
        .map(|h| match h {
            HostMatch::Exact(_) => HostRank::Exact,
            HostMatch::Suffix(s) => HostRank::Suffix(s.len()),
        })
        .max()
}

/// The best of `matches` that fits `req` (the first among equals); a rule
/// with no matches fits everything, with no match to name.
fn best_http_match<'r, B>(
    matches: &'r [HttpMatch],
    req: &Request<B>,
) -> Option<(HttpRank, Option<&'r HttpMatch>)> {
    if matches.is_empty() {
        return Some((MATCH_ALL, None));
    }
    let mut best = Best::default();
    for m in matches {
        if let Some(rank) = http_rank(m, req) {
            best.offer(rank, m);
        }
    }
    best.0.map(|(rank, m)| (rank, Some(m)))
}

/// How specifically `m` fits `req`; `None` when it does not.
fn http_rank<B>(m: &HttpMatch, req: &Request<B>) -> Option<HttpRank> {
    let path = match &m.path {
        None => PathRank::Prefix(1),
        Some(p) if !p.matches(req.uri().path()) => return None,
        Some(PathMatch::Exact(_)) => PathRank::Exact,
        Some(PathMatch::Prefix(p)) => PathRank::Prefix(p.len()),
        Some(PathMatch::Regex(_)) => PathRank::Regex,
    };
    if m.method.as_ref().is_some_and(|want| want != req.method()) {
        return None;
    }
    if !m.headers.iter().all(|h| h.matches(req.headers())) {
        return None;
    }
    let query = req.uri().query();
    if !m.query.iter().all(|q| q.matches(query)) {
        return None;
    }
    Some(HttpRank {
        path,
        method: m.method.is_some(),
        headers: m.headers.len(),
        query: m.query.len(),
    })
}

/// How specifically `m` fits a call to `rpc` with `headers`.
fn grpc_rank(
    m: &GrpcMatch,
    rpc: Option<(&str, &str)>,
    headers: &http::HeaderMap,
) -> Option<GrpcRank> {
    let (service, method) = rpc.unzip();
    if m.service.is_some() && m.service.as_deref() != service {
        return None;
    }
    if m.method.is_some() && m.method.as_deref() != method {
        return None;
    }
    if !m.headers.iter().all(|h| h.matches(headers)) {
        return None;
    }
    let rpc = match (&m.service, &m.method) {
        (Some(_), Some(_)) => RpcRank::Both,
        (Some(_), None) => RpcRank::Service,
        (None, Some(_)) => RpcRank::Method,
        (None, None) => RpcRank::Neither,
    };
    Some(GrpcRank {
        rpc,
        headers: m.headers.len(),
    })
}

/// The highest-ranked candidate so far; the first among equals.
struct Best<K, T>(Option<(K, T)>);

impl<K, T> Default for Best<K, T> {
    fn default() -> Self {
        Self(None)
    }
}

impl<K: Ord, T> Best<K, T> {
    fn offer(&mut self, rank: K, candidate: T) {
        if self.0.as_ref().is_none_or(|(best, _)| rank > *best) {
            self.0 = Some((rank, candidate));
        }
    }

    fn rank(&self) -> Option<&K> {
        self.0.as_ref().map(|(rank, _)| rank)
    }

    fn into_inner(self) -> Option<T> {
        self.0.map(|(_, t)| t)
    }
}

// === impl HttpSelection ===

impl<'r> HttpSelection<'r> {
    /// The path prefix the request was matched by, if it was by prefix (a
    /// rule with no matches counts as the prefix `/`).
    pub fn prefix(&self) -> Option<&'r str> {
        match self.matched {
            None => Some("/"),
            Some(m) => m.prefix(),
        }
    }
}

// === impl Route for the outbound routes ===

impl Route for HttpRoute {
    type Rule = HttpRule;

    fn hosts(&self) -> &[HostMatch] {
        &self.hosts
    }

    fn rules(&self) -> &[HttpRule] {
        &self.rules
    }
}

impl Rule<HttpMatch> for HttpRule {
    fn matches(&self) -> &[HttpMatch] {
        &self.matches
    }
}

impl Route for GrpcRoute {
    type Rule = GrpcRule;

    fn hosts(&self) -> &[HostMatch] {
        &self.hosts
    }

    fn rules(&self) -> &[GrpcRule] {
        &self.rules
    }
}

impl Rule<GrpcMatch> for GrpcRule {
    fn matches(&self) -> &[GrpcMatch] {
        &self.matches
    }
}

#[cfg(test)]
mod tests;
