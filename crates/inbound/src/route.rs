//! Route match: the route and rule of the port's policy that a request
//! takes (the Gateway API's precedence; gRPC routes on a gRPC port), read
//! from the policy in force now. No route: 404, or gRPC UNIMPLEMENTED.
//!
//! What the later layers need of the match travels with the request as
//! a [`Matched`] extension.

use crate::{accept::Conn, labels};
use futures_util::future::{Either, Ready, ready};
use http::{Request, Response};
use linnet_http::BoxBody;
use linnet_metrics::authz::ServerLabels;
use linnet_policy::{
    errors::{HostMismatch, NoRoute},
    inbound::{Authorization, Filters, Protocol, ServerPolicy},
    outbound::{GrpcFilter, HttpFilter, Meta},
};
use std::{
    sync::Arc,
    task::{Context, Poll},
};
use tower::Service;

/// The route a request took, for the layers below.
#[derive(Clone, Debug)]
pub struct Matched {
    /// The policy it was matched under (the same for every later layer,
    /// even if the policy changes meanwhile).
    pub policy: Arc<ServerPolicy>,
    /// The port.
    pub port: u16,
    /// The route's description.
    pub route: Meta,
    /// Which route of the policy it is (the address of its description
    /// in `policy`, which the match keeps alive): a key for caches.
    pub route_key: usize,
    /// Who the route admits.
    pub authorizations: Arc<[Authorization]>,
    /// The rule's filters.
    pub filters: RuleFilters,
}

/// A rule's filters, owned.
#[derive(Clone, Debug)]
pub enum RuleFilters {
    /// None (the common case: nothing to do).
    None,
    /// An HTTP rule's, with the path prefix it matched by (for redirects
    /// that replace it).
    Http(Arc<[HttpFilter]>, Option<Arc<str>>),
    /// A gRPC rule's.
    Grpc(Arc<[GrpcFilter]>),
}

/// Matches each request to a route of the connection's port policy.
#[derive(Clone, Debug)]
pub struct Route<S> {
    conn: Arc<Conn>,
    inner: S,
}

/// Route match for `conn`'s requests.
pub fn layer<S>(conn: Arc<Conn>) -> impl tower::Layer<S, Service = Route<S>> + Clone {
    tower::layer::layer_fn(move |inner| Route {
        conn: conn.clone(),
        inner,
    })
}

impl<S> Service<Request<BoxBody>> for Route<S>
where
    S: Service<Request<BoxBody>, Response = Response<BoxBody>, Error = linnet_core::Error>,
{
    type Response = Response<BoxBody>;
    type Error = linnet_core::Error;
    type Future = Either<Ready<Result<Response<BoxBody>, linnet_core::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<BoxBody>) -> Self::Future {
        if let Some(e) = host_mismatch(&req) {
            return Either::Left(ready(Err(e.into())));
        }
        let policy = self.conn.port.current();
        match matched(&policy, self.conn.port.port(), &req) {
            Some(m) => {
                req.extensions_mut().insert(m);
                Either::Right(self.inner.call(req))
            }
            None => {
                tracing::debug!(
                    port = self.conn.port.port(),
                    path = req.uri().path(),
                    "no inbound route matches"
                );
                Either::Left(ready(Err(NoRoute {
                    parent: labels::name(&policy.meta),
                }
                .into())))
            }
        }
    }
}

impl Matched {
    /// The server's labels.
    pub fn server(&self) -> ServerLabels {
        labels::server(&self.policy.meta, self.port)
    }
}

/// A request whose URI authority (HTTP/2 `:authority`, an absolute-form
/// target) and `Host` header differ: routes match the first, and the
/// application may read the second. (RFC 9113 §8.3.1 calls it malformed.)
fn host_mismatch<B>(req: &Request<B>) -> Option<HostMismatch> {
    let authority = req.uri().authority()?;
    let host = req.headers().get(http::header::HOST)?;
    let host = host.to_str().unwrap_or_default();
    (!host.eq_ignore_ascii_case(authority.as_str())).then(|| HostMismatch {
        authority: authority.to_string(),
        host: host.to_string(),
    })
}

/// The route `req` takes under `policy`, if any.
fn matched<B>(policy: &Arc<ServerPolicy>, port: u16, req: &Request<B>) -> Option<Matched> {
    let http = policy.http()?;
    let grpc = matches!(policy.protocol, Protocol::Grpc(_));
    let sel = http.select(req, grpc)?;
    let filters = match sel.filters {
        Filters::Http(f) if f.is_empty() => RuleFilters::None,
        Filters::Grpc(f) if f.is_empty() => RuleFilters::None,
        Filters::Http(f) => RuleFilters::Http(f.clone(), sel.prefix.map(Arc::from)),
        Filters::Grpc(f) => RuleFilters::Grpc(f.clone()),
    };
    Some(Matched {
        port,
        route: sel.meta.clone(),
        route_key: std::ptr::from_ref(sel.meta) as usize,
        authorizations: sel.authorizations.clone(),
        filters,
        policy: policy.clone(),
    })
}
