//! Route match: the route and rule of the port's policy that a request
//! takes (the Gateway API's precedence; gRPC routes on a gRPC port), read
//! from the policy in force now. No route: 404, or gRPC UNIMPLEMENTED.
//!
//! What the later layers need of the match travels with the request as
//! a [`Matched`] extension.

use crate::{
    accept::Conn,
    guard::{self, Check, Guard},
    labels,
};
use http::Request;
use linnet_http::BoxBody;
use linnet_metrics::authz::ServerLabels;
use linnet_policy::{
    errors::{HostMismatch, NoRoute},
    inbound::{Authorization, Filters, Protocol, ServerPolicy},
    outbound::{GrpcFilter, HttpFilter, Meta},
};
use std::sync::Arc;

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
#[derive(Clone, Copy, Debug)]
pub struct RouteMatch;

/// Route match for `conn`'s requests.
pub fn layer<S>(conn: Arc<Conn>) -> impl tower::Layer<S, Service = Guard<RouteMatch, S>> + Clone {
    guard::layer(RouteMatch, conn)
}

impl Check for RouteMatch {
    fn check(&self, conn: &Conn, req: &mut Request<BoxBody>) -> Result<(), linnet_core::Error> {
        if let Some(e) = host_mismatch(req) {
            return Err(e.into());
        }
        let policy = conn.port.current();
        let Some(m) = matched(&policy, conn.port.port(), req) else {
            tracing::debug!(
                port = conn.port.port(),
                path = req.uri().path(),
                "no inbound route matches"
            );
            return Err(NoRoute {
                parent: labels::name(&policy.meta),
            }
            .into());
        };
        req.extensions_mut().insert(m);
        Ok(())
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
