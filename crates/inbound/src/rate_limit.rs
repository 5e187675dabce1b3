//! The server's local rate limit (`HttpLocalRateLimit`): in total, per
//! client identity, and for named identities. Refused: 429, or gRPC
//! RESOURCE_EXHAUSTED, with `Retry-After`, counted in
//! `inbound_http_local_ratelimit_total`.

use crate::{accept::Conn, labels, route::Matched};
use futures_util::future::{Either, Ready, ready};
use http::{Request, Response};
use linnet_http::BoxBody;
use std::{
    sync::Arc,
    task::{Context, Poll},
};
use tower::Service;

/// Admits requests within the server's rate limit.
#[derive(Clone, Debug)]
pub struct RateLimit<S> {
    conn: Arc<Conn>,
    inner: S,
}

/// Rate limiting for `conn`'s requests.
pub fn layer<S>(conn: Arc<Conn>) -> impl tower::Layer<S, Service = RateLimit<S>> + Clone {
    tower::layer::layer_fn(move |inner| RateLimit {
        conn: conn.clone(),
        inner,
    })
}

impl<S> Service<Request<BoxBody>> for RateLimit<S>
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
        let Some(m) = req.extensions().get::<Matched>() else {
            return Either::Right(self.inner.call(req));
        };
        let Some(limit) = m.policy.http().and_then(|h| h.rate_limit.as_ref()) else {
            return Either::Right(self.inner.call(req));
        };
        match limit.check(conn.client.identity()) {
            Ok(admitted) => {
                if admitted.keys_full {
                    conn.metrics
                        .rate_limit_identities_full(&m.server(), &labels::rate_limit(limit.meta()));
                }
                Either::Right(self.inner.call(req))
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
                Either::Left(ready(Err(limited.into())))
            }
        }
    }
}
