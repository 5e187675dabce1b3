//! The server's local rate limit (`HttpLocalRateLimit`): in total, per
//! client identity, and for named identities. Refused: 429, or gRPC
//! RESOURCE_EXHAUSTED, with `Retry-After`, counted in
//! `inbound_http_local_ratelimit_total`.

use crate::{
    accept::Conn,
    guard::{self, Check, Guard},
    labels,
    route::Matched,
};
use http::Request;
use linnet_http::BoxBody;
use std::sync::Arc;

/// Admits requests within the server's rate limit.
#[derive(Clone, Copy, Debug)]
pub struct RateLimit;

/// Rate limiting for `conn`'s requests.
pub fn layer<S>(conn: Arc<Conn>) -> impl tower::Layer<S, Service = Guard<RateLimit, S>> + Clone {
    guard::layer(RateLimit, conn)
}

impl Check for RateLimit {
    fn check(&self, conn: &Conn, req: &mut Request<BoxBody>) -> Result<(), linnet_core::Error> {
        let Some(m) = req.extensions().get::<Matched>() else {
            return Ok(());
        };
        let Some(limit) = m.policy.http().and_then(|h| h.rate_limit.as_ref()) else {
            return Ok(());
        };
        match limit.check(conn.client.identity()) {
            Ok(admitted) => {
                if admitted.keys_full {
                    conn.metrics
                        .rate_limit_identities_full(&m.server(), &labels::rate_limit(limit.meta()));
                }
                Ok(())
            }
            Err(limited) => {
                let (srv, rl) = (m.server(), labels::rate_limit(limit.meta()));
                if limited.keys_full {
                    conn.metrics.rate_limit_identities_full(&srv, &rl);
                }
                conn.metrics.rate_limited(&srv, &rl, limited.kind.as_str());
                tracing::debug!(
                    port = conn.port.port(), client = %conn.client, limit = limited.kind.as_str(),
                    "request refused by the local rate limit"
                );
                Err(limited.into())
            }
        }
    }
}
