//! A route's filters, and applying them: after a request is matched to a
//! rule (and again after a backend is picked, for the backend's own
//! filters), before it is sent; and on the response's head on the way
//! back. Opaque and TLS routes only have reasons to refuse a connection.
//!
//! A filter either changes the request and lets it go on
//! ([`Outcome::Continue`]), answers it in the proxy's place with a
//! redirect ([`Outcome::Respond`]), or fails it on purpose
//! ([`Outcome::Fail`], failure injection); the caller turns the last into
//! its synthesised error response.

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, uri::Scheme};
use rand::Rng;
use std::{fmt::Write, sync::Arc};

/// An HTTP route's filter.
#[derive(Clone, Debug, PartialEq)]
pub enum HttpFilter {
    /// Change the request's headers.
    RequestHeaders(HeaderModifier),
    /// Change the response's headers.
    ResponseHeaders(HeaderModifier),
    /// Answer with a redirect instead of sending the request.
    Redirect(Redirect),
    /// Fail a share of requests on purpose (chaos testing).
    FailureInjector {
        /// The response's status.
        status: StatusCode,
        /// Why, for the `l5d-proxy-error` header and the log.
        message: Arc<str>,
        /// The share of requests failed.
        ratio: Ratio,
    },
}

/// A gRPC route's filter.
#[derive(Clone, Debug, PartialEq)]
pub enum GrpcFilter {
    /// Change the request's headers.
    RequestHeaders(HeaderModifier),
    /// Fail a share of calls on purpose.
    FailureInjector {
        /// The `grpc-status` answered.
        code: u32,
        /// The `grpc-message` answered.
        message: Arc<str>,
        /// The share of calls failed.
        ratio: Ratio,
    },
}

/// An opaque or TLS route's filter: a reason to refuse the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpaqueFilter {
    /// The control plane found the route invalid, and says why.
    Invalid(Arc<str>),
    /// The traffic is not allowed.
    Forbidden,
}

/// Header changes, applied in the Gateway API's order: additions, then
/// replacements, then removals.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeaderModifier {
    /// Appended beside any existing values.
    pub add: Vec<(HeaderName, HeaderValue)>,
    /// Replacing any existing values.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Removed.
    pub remove: Vec<HeaderName>,
}

/// A redirect: each part not given is the request's own.
#[derive(Clone, Debug, PartialEq)]
pub struct Redirect {
    /// The `Location`'s scheme.
    pub scheme: Option<Scheme>,
    /// The `Location`'s host.
    pub host: Option<String>,
    /// The `Location`'s port (omitted when it is the scheme's own).
    pub port: Option<u16>,
    /// How the path changes.
    pub path: Option<PathModifier>,
    /// A 3xx status (302 unless the control plane says otherwise).
    pub status: StatusCode,
}

/// How a redirect changes the path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathModifier {
    /// Replace the whole path.
    Full(String),
    /// Replace the prefix the rule matched (the rule must have matched by
    /// prefix).
    Prefix(String),
}

/// A share of requests, `numerator / denominator`, in `[0, 1]`.
///
/// The fields are private so that a denominator is never 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ratio {
    numerator: u32,
    denominator: u32,
}

/// What the filters decided about a request.
#[derive(Debug)]
pub enum Outcome {
    /// Send it (perhaps changed).
    Continue,
    /// Answer with this head (a redirect) and an empty body.
    Respond(Response<()>),
    /// Fail it: the caller synthesises the error response.
    Fail {
        /// The HTTP status (200 for gRPC, whose code is below).
        status: StatusCode,
        /// The `grpc-status`, for gRPC.
        grpc_code: Option<u32>,
        /// Why, for `l5d-proxy-error` / `grpc-message` and the log.
        message: String,
    },
}

/// Applies an HTTP rule's (or route backend's) filters to a request, in
/// order, until one answers or fails it.
///
/// `matched_prefix` is the path prefix the rule matched by
/// ([`HttpMatch::prefix`](super::HttpMatch::prefix)), which a redirect
/// that replaces the prefix needs; without one such a redirect fails the
/// request (500), as the Gateway API asks.
pub fn apply_request<B>(
    filters: &[HttpFilter],
    matched_prefix: Option<&str>,
    req: &mut Request<B>,
) -> Outcome {
    for filter in filters {
        match filter {
            HttpFilter::RequestHeaders(m) => m.apply(req.headers_mut()),
            HttpFilter::ResponseHeaders(_) => {}
            HttpFilter::Redirect(r) => return r.respond(matched_prefix, req),
            HttpFilter::FailureInjector {
                status,
                message,
                ratio,
            } => {
                if ratio.draw() {
                    return Outcome::Fail {
                        status: *status,
                        grpc_code: None,
                        message: message.to_string(),
                    };
                }
            }
        }
    }
    Outcome::Continue
}

/// Applies an HTTP rule's (or route backend's) response filters to a
/// response's head.
pub fn apply_response(filters: &[HttpFilter], parts: &mut http::response::Parts) {
    for filter in filters {
        if let HttpFilter::ResponseHeaders(m) = filter {
            m.apply(&mut parts.headers);
        }
    }
}

/// Applies a gRPC rule's (or route backend's) filters to a call, in
/// order, until one fails it.
pub fn apply_grpc_request<B>(filters: &[GrpcFilter], req: &mut Request<B>) -> Outcome {
    for filter in filters {
        match filter {
            GrpcFilter::RequestHeaders(m) => m.apply(req.headers_mut()),
            GrpcFilter::FailureInjector {
                code,
                message,
                ratio,
            } => {
                if ratio.draw() {
                    return Outcome::Fail {
                        status: StatusCode::OK,
                        grpc_code: Some(*code),
                        message: message.to_string(),
                    };
                }
            }
        }
    }
    Outcome::Continue
}

/// Why an opaque or TLS connection must be refused, if it must.
pub fn opaque_refusal(filters: &[OpaqueFilter]) -> Option<String> {
    filters.first().map(|f| match f {
        OpaqueFilter::Invalid(why) => format!("invalid route: {why}"),
        OpaqueFilter::Forbidden => "forbidden route".to_string(),
    })
}

// === impl HeaderModifier ===

impl HeaderModifier {
    /// Applies the changes to `headers`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

// === impl Redirect ===

impl Redirect {
    fn respond<B>(&self, matched_prefix: Option<&str>, req: &Request<B>) -> Outcome {
        match self.location(matched_prefix, req) {
            Ok(location) => {
                let mut rsp = Response::new(());
                *rsp.status_mut() = self.status;
                rsp.headers_mut().insert(http::header::LOCATION, location);
                Outcome::Respond(rsp)
            }
            Err(why) => Outcome::Fail {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                grpc_code: None,
                message: format!("redirect: {why}"),
            },
        }
    }

    /// The `Location` for `req`.
    fn location<B>(
        &self,
        matched_prefix: Option<&str>,
        req: &Request<B>,
    ) -> Result<HeaderValue, &'static str> {
        let scheme = match &self.scheme {
            Some(s) => s.as_str(),
            None => req.uri().scheme_str().unwrap_or("http"),
        };
        let (req_host, req_port) = super::select::request_host(req).unzip();
        let host = self
            .host
            .as_deref()
            .or(req_host)
            .ok_or("the request names no host")?;
        // A port of the request's own only carries over while the scheme
        // does (the Gateway API): a new scheme means its own port.
        let port = self
            .port
            .or(if self.scheme.is_none() {
                req_port.flatten()
            } else {
                None
            })
            .filter(|p| !matches!((scheme, *p), ("http", 80) | ("https", 443)));
        let path = req.uri().path();
        let mut loc = String::with_capacity(scheme.len() + host.len() + path.len() + 16);
        let _ = write!(loc, "{scheme}://{host}");
        if let Some(port) = port {
            let _ = write!(loc, ":{port}");
        }
        match &self.path {
            None => loc.push_str(path),
            Some(PathModifier::Full(p)) => {
                if !p.starts_with('/') {
                    loc.push('/');
                }
                loc.push_str(p);
            }
            Some(PathModifier::Prefix(replacement)) => {
                let prefix = matched_prefix.ok_or("prefix replacement without a prefix match")?;
                let rest = if prefix == "/" {
                    path
                } else {
                    path.strip_prefix(prefix)
                        .ok_or("the path does not start with the matched prefix")?
                };
                let rest = if rest == "/" { "" } else { rest };
                let replacement = replacement.trim_end_matches('/');
                // `rest` is empty or starts at a segment's `/`.
                let first = if replacement.is_empty() {
                    rest
                } else {
                    replacement
                };
                if !first.starts_with('/') {
                    loc.push('/');
                }
                loc.push_str(replacement);
                loc.push_str(rest);
            }
        }
        if let Some(q) = req.uri().query() {
            loc.push('?');
            loc.push_str(q);
        }
        HeaderValue::try_from(loc).map_err(|_| "the location is not a valid header value")
    }
}

// === impl Ratio ===

impl Ratio {
    /// Every request.
    pub const ALWAYS: Self = Self {
        numerator: 1,
        denominator: 1,
    };

    /// `numerator / denominator`; `None` when the denominator is 0; a
    /// numerator at or above the denominator is every request.
    pub fn new(numerator: u32, denominator: u32) -> Option<Self> {
        match (numerator, denominator) {
            (_, 0) => None,
            (n, d) if n >= d => Some(Self::ALWAYS),
            (n, d) => Some(Self {
                numerator: n,
                denominator: d,
            }),
        }
    }

    /// Draws whether this request is in the share.
    pub fn draw(&self) -> bool {
        if self.numerator == 0 {
            return false;
        }
        if self.numerator >= self.denominator {
            return true;
        }
        rand::rng().random_range(0..self.denominator) < self.numerator
    }
}

#[cfg(test)]
mod tests;
