//! A service's outbound policy as the mesh file says it: what the proxy's
//! outbound stack does with a connection to the service after it has
//! detected (or been told) the protocol.
//!
//! HTTP and gRPC routes carry matches, filters, timeouts, retries and
//! weighted backends; TLS routes match the SNI, opaque routes only pick
//! backends (or refuse). Each backend is a service (balanced with P2C over
//! its endpoints) or one address (forwarded to). `crate::policy` turns
//! these into `OutboundPolicies` messages; [`parse`] reads them from the
//! file.

use super::Endpoint;
use std::time::Duration;

mod backend;
pub(super) mod file;
pub(super) mod filters;
pub(super) mod parse;

/// The outbound policy for connections to a service.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policy {
    /// The protocol of the port.
    pub protocol: super::Protocol,
    /// HTTP or gRPC routes (gRPC when the protocol is), in file order; the
    /// proxy picks among matching ones by the Gateway API's precedence.
    pub routes: Vec<Route>,
    /// TLS routes by SNI, for `protocol: tls`; none sends everything to
    /// the service itself.
    pub tls_routes: Vec<TlsRoute>,
    /// Opaque routes, for `protocol: opaque` and the opaque part of
    /// `detect`; none sends everything to the service itself.
    pub opaque_routes: Vec<OpaqueRoute>,
    /// When to stop sending to a failing endpoint (HTTP and gRPC).
    pub failure_accrual: Option<FailureAccrual>,
}

impl Policy {
    /// Every backend of every route, with where the route is in the file
    /// (`routes.<name>`, `tls_routes.<name>` or `opaque_routes.<name>`),
    /// so that the file can be checked for backends that name no service.
    pub fn backends(&self) -> impl Iterator<Item = (String, &Backend)> {
        let http = self.routes.iter().map(|r| ("routes", &r.name, &r.backends));
        let tls = self
            .tls_routes
            .iter()
            .map(|r| ("tls_routes", &r.name, &r.backends));
        let opaque = self
            .opaque_routes
            .iter()
            .map(|r| ("opaque_routes", &r.name, &r.backends));
        http.chain(tls)
            .chain(opaque)
            .flat_map(|(kind, name, list)| list.iter().map(move |b| (format!("{kind}.{name}"), b)))
    }
}

/// An outbound HTTP or gRPC route.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Route {
    /// The name, for metrics and logs (sent as the route's metadata).
    pub name: String,
    /// An HTTP route's request matches (any of them); none matches every
    /// request.
    pub matches: Vec<HttpMatch>,
    /// A gRPC route's request matches (any of them); none matches every
    /// request.
    pub grpc_matches: Vec<GrpcMatch>,
    /// Where matching requests go; empty means the service itself.
    pub backends: Vec<Backend>,
    /// The route's timeouts.
    pub timeouts: Timeouts,
    /// Retries of failed requests.
    pub retry: Option<Retry>,
    /// What the proxy does to requests and responses on the way.
    pub filters: Filters,
    /// Whether callers may set timeouts and retries per request with
    /// `l5d-*` headers: only for callers the mesh trusts.
    pub allow_l5d_request_headers: bool,
}

/// What an HTTP request must have to match a route (all of it).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HttpMatch {
    /// The path.
    pub path: Option<PathMatch>,
    /// The method is this (upper case).
    pub method: Option<String>,
    /// Headers by exact value or regular expression.
    pub headers: Vec<ValueMatch>,
    /// Query parameters by exact value or regular expression.
    pub query_params: Vec<ValueMatch>,
}

/// How a path is matched.
#[derive(Clone, Debug, PartialEq)]
pub enum PathMatch {
    /// The path is this.
    Exact(String),
    /// The path starts with these segments.
    Prefix(String),
    /// The whole path matches this regular expression.
    Regex(String),
}

/// A header or query parameter that must be present with a value.
#[derive(Clone, Debug, PartialEq)]
pub struct ValueMatch {
    /// Its name (a header's in lower case).
    pub name: String,
    /// The value it must have.
    pub value: Value,
}

/// A value to match.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Exactly this.
    Exact(String),
    /// A regular expression the whole value matches.
    Regex(String),
}

/// What a gRPC request must have to match a route (all of it).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GrpcMatch {
    /// The gRPC service (`pkg.Service`); any when unset.
    pub service: Option<String>,
    /// The RPC method (`GetItem`); any when unset.
    pub method: Option<String>,
    /// Headers by exact value or regular expression.
    pub headers: Vec<ValueMatch>,
}

/// A route's timeouts; unset ones do not apply.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Timeouts {
    /// The whole request, retries included (the old `timeout`).
    pub request: Option<Duration>,
    /// From the end of the request until the response ends.
    pub response: Option<Duration>,
    /// A stream with nothing sent either way for this long ends.
    pub idle: Option<Duration>,
}

impl Timeouts {
    /// Whether any timeout is set (none: the proxy's defaults apply).
    pub fn is_set(&self) -> bool {
        self.request.is_some() || self.response.is_some() || self.idle.is_some()
    }
}

/// Retries of a route.
#[derive(Clone, Debug, PartialEq)]
pub struct Retry {
    /// Retries per request.
    pub limit: u32,
    /// HTTP: response statuses to retry (inclusive ranges).
    pub statuses: Vec<(u16, u16)>,
    /// gRPC: status codes to retry (of those the API can say: cancelled,
    /// deadline exceeded, resource exhausted, internal, unavailable).
    pub grpc: Vec<u32>,
    /// Each attempt's own timeout.
    pub timeout: Option<Duration>,
    /// The largest request body buffered so it can be sent again; a
    /// larger request is sent once.
    pub max_request_bytes: u32,
    /// The wait between attempts; the proxy's default when unset.
    pub backoff: Option<Backoff>,
}

/// The default largest body buffered for a retry: 64 KiB.
pub const DEFAULT_MAX_REQUEST_BYTES: u32 = 64 * 1024;

/// Exponential backoff with jitter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// The first wait.
    pub min: Duration,
    /// The longest wait.
    pub max: Duration,
    /// Randomness added to waits, as a share of the wait.
    pub jitter_ratio: f32,
    /// Wait as long as a response's `Retry-After` asks (within min..max).
    pub respect_retry_after: bool,
}

/// What a route does to requests and responses on the way, applied in
/// the order of the fields.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filters {
    /// Edits to request headers.
    pub request_headers: Option<HeaderEdits>,
    /// Edits to response headers (HTTP only).
    pub response_headers: Option<HeaderEdits>,
    /// Answer with a redirect instead of forwarding (HTTP only).
    pub redirect: Option<Redirect>,
    /// Answer with an error instead of forwarding (some or all requests).
    pub fail: Option<Fail>,
}

/// Header edits: additions, then replacements, then removals.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeaderEdits {
    /// Values added beside any the message already has.
    pub add: Vec<(String, String)>,
    /// Values that replace any the message has.
    pub set: Vec<(String, String)>,
    /// Headers removed.
    pub remove: Vec<String>,
}

/// A redirect; unset parts keep the request's.
#[derive(Clone, Debug, PartialEq)]
pub struct Redirect {
    /// `http` or `https`.
    pub scheme: Option<String>,
    /// The host.
    pub host: Option<String>,
    /// The port.
    pub port: Option<u16>,
    /// The new path.
    pub path: Option<RedirectPath>,
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
}

/// How a redirect rewrites the path.
#[derive(Clone, Debug, PartialEq)]
pub enum RedirectPath {
    /// Replace the whole path.
    Full(String),
    /// Replace the prefix the route matched.
    Prefix(String),
}

/// An injected failure.
#[derive(Clone, Debug, PartialEq)]
pub struct Fail {
    /// The HTTP status (HTTP routes) or gRPC status code (gRPC routes).
    pub code: u32,
    /// Logged and sent to the client with the error.
    pub message: String,
    /// The share of requests failed; all when unset.
    pub ratio: Option<Ratio>,
}

/// A share of requests, in [0, 1].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ratio {
    /// The part.
    pub numerator: u32,
    /// The whole, never 0.
    pub denominator: u32,
}

/// A weighted backend of a route.
#[derive(Clone, Debug, PartialEq)]
pub struct Backend {
    /// Where it is.
    pub target: BackendTarget,
    /// Relative weight, at least 1.
    pub weight: u32,
    /// How the balancer weighs a service's endpoints.
    pub load: Load,
    /// The queue in front of it.
    pub queue: Queue,
}

/// What a backend sends to.
#[derive(Clone, Debug, PartialEq)]
pub enum BackendTarget {
    /// A service in this file (its authority, `name:port`), balanced over
    /// its endpoints.
    Service(String),
    /// One address, described like a service's endpoint (its identity,
    /// server name and protocol hint), forwarded to.
    Address(Endpoint),
}

/// How a balancer estimates an endpoint's load (PeakEWMA).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Load {
    /// The latency assumed before any is measured.
    pub default_rtt: Duration,
    /// The window of the latency average.
    pub decay: Duration,
    /// Back off from endpoints that answer 429 or `Retry-After`.
    pub penalty: Option<Penalty>,
}

impl Default for Load {
    /// Linkerd's: 30ms, over 10s.
    fn default() -> Self {
        Self {
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
            penalty: None,
        }
    }
}

/// The penalty variant of PeakEWMA.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Penalty {
    /// Latency added to an endpoint's load for a 429 or `Retry-After`.
    pub penalty: Duration,
    /// The longest `Retry-After` honoured.
    pub max_retry_after: Duration,
    /// The window over which a penalty fades.
    pub decay: Duration,
}

/// The queue in front of a backend.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Queue {
    /// Requests that may wait for an endpoint; more are refused.
    pub capacity: u32,
    /// How long the backend may have no ready endpoint before the waiting
    /// requests fail.
    pub failfast_timeout: Duration,
}

impl Default for Queue {
    /// Linkerd's: 100 requests, 3s.
    fn default() -> Self {
        Self {
            capacity: 100,
            failfast_timeout: Duration::from_secs(3),
        }
    }
}

/// When to stop sending to a failing endpoint.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FailureAccrual {
    /// What trips it.
    pub kind: AccrualKind,
    /// First wait before probing again.
    pub min_backoff: Duration,
    /// Longest wait.
    pub max_backoff: Duration,
    /// Randomness added to waits.
    pub jitter_ratio: f32,
    /// Endpoints never ejected below this many ready ones, so that a bad
    /// spell cannot empty the balancer.
    pub min_ready_endpoints: Option<u32>,
}

/// What trips failure accrual.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AccrualKind {
    /// This many failures in a row.
    Consecutive(u32),
    /// A success rate below a threshold, or failures in a row.
    SuccessRate(SuccessRate),
}

/// The success-rate rule of failure accrual (sent as `Unified`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SuccessRate {
    /// Trips when the moving success rate falls below this (in [0, 1];
    /// 0 turns the rule off).
    pub threshold: f64,
    /// The window of the moving average.
    pub decay: Duration,
    /// Requests seen before the rate may trip (a cold-start guard).
    pub min_requests: u32,
    /// Failures in a row that trip it as well (0: off).
    pub max_consecutive_failures: u32,
}

/// A TLS route: connections whose SNI matches go to its backends.
#[derive(Clone, Debug, PartialEq)]
pub struct TlsRoute {
    /// The name, for metrics and logs.
    pub name: String,
    /// The SNIs it takes; any when empty.
    pub snis: Vec<Sni>,
    /// Where connections go; empty means the service itself.
    pub backends: Vec<Backend>,
    /// Refuse matching connections.
    pub forbidden: bool,
}

/// An SNI to match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sni {
    /// Exactly this name.
    Exact(String),
    /// Any name under this one (`*.example.com` is `example.com`).
    Suffix(String),
}

/// An opaque route.
#[derive(Clone, Debug, PartialEq)]
pub struct OpaqueRoute {
    /// The name, for metrics and logs.
    pub name: String,
    /// Where connections go; empty means the service itself.
    pub backends: Vec<Backend>,
    /// Refuse connections.
    pub forbidden: bool,
    /// Refuse connections as misconfigured, with this message.
    pub invalid: Option<String>,
}
