//! Route authorization: whether the matched route's authorizations admit
//! the client (its address, TLS and identity). Refused: 403, or gRPC
//! PERMISSION_DENIED, counted in `inbound_http_authz_deny_total`; an
//! audit authorization lets the request through, logged and counted as
//! denied.

use crate::{
    accept::Conn,
    guard::{self, Check, Guard},
    labels,
    route::Matched,
};
use http::Request;
use linnet_http::BoxBody;
use linnet_policy::{
    errors::Unauthorized,
    inbound::{self as model, Verdict},
};
use std::sync::Arc;

/// Admits the requests that their route's authorizations admit.
#[derive(Clone, Copy, Debug)]
pub struct Authorize;

/// Route authorization for `conn`'s requests.
pub fn layer<S>(conn: Arc<Conn>) -> impl tower::Layer<S, Service = Guard<Authorize, S>> + Clone {
    guard::layer(Authorize, conn)
}

impl Check for Authorize {
    fn check(&self, conn: &Conn, req: &mut Request<BoxBody>) -> Result<(), linnet_core::Error> {
        // Without a match (a stack assembled without route match) nothing
        // is known to admit the request: refused.
        let Some(m) = req.extensions().get::<Matched>() else {
            return Err(Unauthorized {
                server: "unknown".into(),
                route: "unknown".into(),
                client: conn.client.to_string(),
            }
            .into());
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
                return Err(Unauthorized {
                    server: srv.srv_name,
                    route: route.route_name,
                    client: conn.client.to_string(),
                }
                .into());
            }
        }
        Ok(())
    }
}
