//! The one service shape behind route match, route authorization and the
//! rate limit: a per-request decision on the connection's policy that
//! either lets the request go on (perhaps with something added to it) or
//! answers with the error the edge's rescue turns into a response. Each
//! step is a [`Check`] in its own module; this is the plumbing they share.

use crate::accept::Conn;
use futures_util::future::{Either, Ready, ready};
use http::{Request, Response};
use linnet_http::BoxBody;
use std::{
    sync::Arc,
    task::{Context, Poll},
};
use tower::Service;

/// A per-request decision.
pub trait Check: Clone + Send + Sync + 'static {
    /// `Ok`: the request goes on (the check may add an extension); `Err`:
    /// it is answered with the error.
    fn check(&self, conn: &Conn, req: &mut Request<BoxBody>) -> Result<(), linnet_core::Error>;
}

/// Runs `C` before `S`.
#[derive(Clone, Debug)]
pub struct Guard<C, S> {
    check: C,
    conn: Arc<Conn>,
    inner: S,
}

/// The layer that runs `check` for `conn`'s requests.
pub fn layer<C: Check, S>(
    check: C,
    conn: Arc<Conn>,
) -> impl tower::Layer<S, Service = Guard<C, S>> + Clone {
    tower::layer::layer_fn(move |inner| Guard {
        check: check.clone(),
        conn: conn.clone(),
        inner,
    })
}

impl<C, S> Service<Request<BoxBody>> for Guard<C, S>
where
    C: Check,
    S: Service<Request<BoxBody>, Response = Response<BoxBody>, Error = linnet_core::Error>,
{
    type Response = Response<BoxBody>;
    type Error = linnet_core::Error;
    type Future = Either<Ready<Result<Response<BoxBody>, linnet_core::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<BoxBody>) -> Self::Future {
        match self.check.check(&self.conn, &mut req) {
            Ok(()) => Either::Right(self.inner.call(req)),
            Err(e) => Either::Left(ready(Err(e))),
        }
    }
}
