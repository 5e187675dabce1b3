//! The endpoint client: the bottom of every HTTP stack, where a request
//! meets one target's pooled connections ([`Upstream`]).
//!
//! What depends on the endpoint happens here, not at the server edge:
//! a client's `l5d-require-id` is checked against the identity the
//! endpoint must prove; HTTP/1 travels as HTTP/2 (with `l5d-orig-proto`)
//! to a meshed peer hinted `h2`; and the URI is made absolute so that the
//! connection pool is keyed by the target. Above it, the outbound stack
//! may have picked this endpoint among many (balancer) and may call it
//! again (retries); the edge knows none of that.

use crate::{
    BoxBody, Upstream, Version, headers,
    proxy::{L5D_ORIG_PROTO, L5D_REQUIRE_ID},
};
use http::{Request, Response, Uri, uri};
use http_body_util::BodyExt;
use std::{
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

/// A request that arrived in absolute form (`GET http://host/path`) in
/// transparent mode: it goes on in absolute form, as it came. (Set by the
/// edge as a request extension.)
#[derive(Clone, Copy, Debug)]
pub struct AbsoluteForm;

/// The client demanded (`l5d-require-id`) an identity the endpoint does
/// not prove: 502.
#[derive(Debug, thiserror::Error)]
#[error("l5d-require-id: {0}")]
pub struct RequireIdMismatch(pub String);

/// The connection to the endpoint failed before a response: nothing of
/// the request was answered, so a retry is safe.
#[derive(Debug, thiserror::Error)]
#[error("request to {target} failed")]
pub struct EndpointError {
    /// The endpoint.
    pub target: SocketAddr,
    /// Why.
    #[source]
    pub source: hyper_util::client::legacy::Error,
}

/// Sends requests to one endpoint.
#[derive(Clone, Debug)]
pub struct EndpointClient {
    upstream: Arc<Upstream>,
}

/// The endpoint client's response future.
pub type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<Response<BoxBody>, linnet_core::Error>> + Send + 'static>>;

// === impl EndpointClient ===

impl EndpointClient {
    /// A client for `upstream`'s endpoint.
    pub fn new(upstream: Arc<Upstream>) -> Self {
        Self { upstream }
    }

    /// The endpoint's address.
    pub fn target(&self) -> SocketAddr {
        self.upstream.target()
    }
}

impl tower_service::Service<Request<BoxBody>> for EndpointClient {
    type Response = Response<BoxBody>;
    type Error = linnet_core::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // hyper-util's pool takes every request; connection limits are the
        // balancer's and the queue's business above.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<BoxBody>) -> Self::Future {
        send(self.upstream.clone(), req)
    }
}

/// Sends `req` to `upstream`'s endpoint.
pub fn send(upstream: Arc<Upstream>, mut req: Request<BoxBody>) -> ResponseFuture {
    let target = upstream.target();
    // The client insists on a peer identity: only an mTLS peer proving
    // exactly it will do.
    if let Some(required) = req.headers_mut().remove(L5D_REQUIRE_ID) {
        let required = required.to_str().unwrap_or_default().trim();
        let proven = upstream.peer_identity();
        if !proven.is_some_and(|p| p.eq_ignore_ascii_case(required)) {
            let message = match proven {
                Some(p) => format!("{target} is {p}, not {required}"),
                None => format!("{target} is not meshed, so not {required}"),
            };
            return Box::pin(std::future::ready(Err(RequireIdMismatch(message).into())));
        }
    }
    let upgrade = headers::is_upgrade(&req);
    let connect = headers::is_connect(&req);
    let absolute_form = req.extensions_mut().remove::<AbsoluteForm>().is_some();
    let authority = headers::authority(&req);
    let mut out_version = if req.version() == http::Version::HTTP_2 {
        Version::Http2
    } else {
        Version::Http1
    };
    // HTTP/1 between meshed proxies travels as HTTP/2: upgraded here,
    // restored by the peer's inbound side. Upgrades and CONNECT stay
    // HTTP/1.
    if out_version == Version::Http1 && upstream.upgrades_h1() && !upgrade && !connect {
        let orig = if req.version() == http::Version::HTTP_10 {
            "HTTP/1.0"
        } else {
            "HTTP/1.1"
        };
        req.headers_mut()
            .insert(L5D_ORIG_PROTO, http::HeaderValue::from_static(orig));
        // HTTP/2 carries the authority in `:authority`.
        req.headers_mut().remove(http::header::HOST);
        *req.version_mut() = http::Version::HTTP_2;
        out_version = Version::Http2;
    }
    if !connect {
        // HTTP/2 carries the authority in the URI (`:authority`), and so
        // does an absolute-form request; otherwise the URI names the
        // target, so that the client's pool is keyed by target and not by
        // whatever `Host` a client sends (the header travels as is).
        let uri_authority = if out_version == Version::Http2 || absolute_form {
            authority
        } else {
            None
        };
        *req.uri_mut() = client_uri(req.uri(), uri_authority, target);
    }
    let fut = upstream.client(out_version, absolute_form).request(req);
    Box::pin(async move {
        // Keep the clients alive while the request is in flight, even if
        // the endpoint leaves the balancer meanwhile.
        let _upstream = upstream;
        match fut.await {
            Ok(rsp) => Ok(rsp.map(|body| body.map_err(linnet_core::Error::from).boxed_unsync())),
            Err(source) => Err(EndpointError { target, source }.into()),
        }
    })
}

/// The URI the upstream client is given: absolute, so that its pool has a
/// key and HTTP/2 gets `:scheme` and `:authority`; the authority is the
/// request's own (the connector dials the target whatever it says), or the
/// target's address when the request named none.
fn client_uri(original: &Uri, authority: Option<uri::Authority>, target: SocketAddr) -> Uri {
    let mut parts = original.clone().into_parts();
    if parts.scheme.is_none() {
        parts.scheme = Some(uri::Scheme::HTTP);
    }
    let authority = authority.or_else(|| target.to_string().parse().ok());
    parts.authority = authority;
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(uri::PathAndQuery::from_static("/"));
    }
    Uri::from_parts(parts).unwrap_or_else(|_| original.clone())
}
