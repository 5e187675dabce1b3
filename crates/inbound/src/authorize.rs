//! Route authorization: whether the matched route's authorizations admit
//! the client (its address, TLS and identity). Refused: 403, or gRPC
//! PERMISSION_DENIED, counted in `inbound_http_authz_deny_total`; an
//! audit authorization lets the request through, logged and counted as
//! denied.

use crate::{accept::Conn, labels, route::Matched};
use futures_util::future::{Either, Ready, ready};
use http::{Request, Response};
use linnet_http::BoxBody;
use linnet_policy::{
    errors::Unauthorized,
    inbound::{self as model, Verdict},
};
use std::{
    sync::Arc,
    task::{Context, Poll},
};
use tower::Service;

/// Admits the requests that their route's authorizations admit.
#[derive(Clone, Debug)]
pub struct Authorize<S> {
    conn: Arc<Conn>,
    inner: S,
}

/// Route authorization for `conn`'s requests.
pub fn layer<S>(conn: Arc<Conn>) -> impl tower::Layer<S, Service = Authorize<S>> + Clone {
    tower::layer::layer_fn(move |inner| Authorize {
        conn: conn.clone(),
        inner,
    })
}

impl<S> Service<Request<BoxBody>> for Authorize<S>
where
    S: Service<Request<BoxBody>, Response = Response<BoxBody>, Error = linnet_core::Error>,
{
    type Response = Response<BoxBody>;
    type Error = linnet_core::Error;
    type Future = Either<Ready<Result<Response<BoxBody>, linnet_core::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<BoxBody>) -> Self::Future {
        let conn = &self.conn;
        // Without a match (a stack assembled without route match) nothing
        // is known to admit the request: refused.
        let Some(m) = req.extensions().get::<Matched>() else {
            return Either::Left(ready(Err(Unauthorized {
                server: "unknown".into(),
                route: "unknown".into(),
                client: conn.client.to_string(),
            }
            .into())));
        };
        match model::authorize(&m.authorizations, &conn.client.as_model()) {
            Verdict::Allow(authz) => conn.count_allowed(m, authz),
            Verdict::Audit(_) => {
                let (srv, route) = (m.server(), labels::route(&m.route));
                tracing::info!(
                    port = conn.port.port(), server = %srv.srv_name, route = %route.route_name,
                    client = %conn.client,
                    "audit: admitting a request that the policy would refuse"
                );
                conn.metrics.http_deny(&srv, &route);
            }
            Verdict::Deny => {
                let (srv, route) = (m.server(), labels::route(&m.route));
                conn.metrics.http_deny(&srv, &route);
                tracing::info!(
                    port = conn.port.port(), server = %srv.srv_name, route = %route.route_name,
                    client = %conn.client, "request refused by the route's authorizations"
                );
                return Either::Left(ready(Err(Unauthorized {
                    server: srv.srv_name,
                    route: route.route_name,
                    client: conn.client.to_string(),
                }
                .into())));
            }
        }
        Either::Right(self.inner.call(req))
    }
}
