//! The queue in front of a balancer: bounded, shedding load when full,
//! and failing fast when the balancer has had no endpoint for too long.
//!
//! It is the top of the balancer (backend split → **queue** → P2C →
//! endpoints) and the outbound stack's backpressure decision: a request
//! never waits on an unbounded queue, nor forever. In order:
//!
//! - tower's [`LoadShed`] over tower's [`Buffer`] of `Queue.capacity`
//!   requests: when the buffer is full, a request fails at once with
//!   [`QueueFull`] (503 / UNAVAILABLE at the edge);
//! - the buffer's worker drives the balancer through [`FailFast`]: when
//!   the balancer has had no ready endpoint for `Queue.failfast_timeout`,
//!   every waiting request and every new one fails at once with the
//!   [`FailFast`] error, until an endpoint is ready again.
//!
//! The fail-fast clock runs only while a request waits: the worker polls
//! the balancer only when it has one.

use crate::{balance::BalancerMetrics, params};
use bytes::Bytes;
use futures_util::future::{self, Either};
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use linnet_core::Error;
use prometheus_client::metrics::counter::Counter;
use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tokio::time::{Instant, Sleep};
use tower::{
    Service, ServiceExt, buffer::Buffer, load_shed::LoadShed, load_shed::error::Overloaded,
    util::BoxCloneSyncService,
};

type BoxBody = UnsyncBoxBody<Bytes, Error>;

/// The balancer has had no ready endpoint for the fail-fast timeout; the
/// edge maps it to a synthesised response (the design's "no ready
/// endpoint": 504 / DEADLINE_EXCEEDED).
#[derive(Clone, Debug, thiserror::Error)]
#[error("backend {backend}: no ready endpoint for {timeout:?}")]
pub struct FailFast {
    /// The backend whose balancer failed fast.
    pub backend: Arc<str>,
    /// How long it had no ready endpoint.
    pub timeout: Duration,
}

/// The queue in front of the balancer was full: the request was shed
/// (the edge answers 503 / UNAVAILABLE).
#[derive(Clone, Debug, thiserror::Error)]
#[error("backend {backend}: queue of {capacity} requests is full")]
pub struct QueueFull {
    /// The backend whose queue was full.
    pub backend: Arc<str>,
    /// Its capacity.
    pub capacity: usize,
}

/// Puts the queue (see the [module docs](self)) in front of `balance`,
/// the balancer of the backend `name`. Spawns the buffer's worker.
pub fn queue<S>(
    name: Arc<str>,
    balance: S,
    params: &params::Queue,
    metrics: BalancerMetrics,
) -> BoxCloneSyncService<Request<BoxBody>, Response<BoxBody>, Error>
where
    S: Service<Request<BoxBody>, Response = Response<BoxBody>, Error = Error> + Send + 'static,
    S::Future: Send + 'static,
{
    let failfast = FailFastLayer::new(name.clone(), params.failfast_timeout, metrics.failfast);
    let capacity = params.capacity.max(1);
    let buffer = Buffer::new(tower::Layer::layer(&failfast, balance), capacity);
    let shed = metrics.shed;
    let svc = LoadShed::new(buffer).map_err(move |error: Error| {
        if error.is::<Overloaded>() {
            shed.inc();
            let full = QueueFull {
                backend: name.clone(),
                capacity,
            };
            Error::from(full)
        } else {
            error
        }
    });
    BoxCloneSyncService::new(svc)
}

/// A [`tower::Layer`] for [`FailFastService`].
#[derive(Clone, Debug)]
pub struct FailFastLayer {
    backend: Arc<str>,
    timeout: Duration,
    entered: Counter,
}

/// Fails requests at once while its inner service (the balancer) has not
/// been ready for `timeout` (see the [module docs](self)).
#[derive(Debug)]
pub struct FailFastService<S> {
    inner: S,
    backend: Arc<str>,
    timeout: Duration,
    /// Runs from the moment a request found the balancer not ready; when
    /// it fires, the service fails fast. Created on first use (it needs
    /// the runtime's timer), then reset.
    sleep: Option<Pin<Box<Sleep>>>,
    /// The sleep is running (the balancer was not ready last time).
    armed: bool,
    /// Failing fast: the balancer has had no ready endpoint for `timeout`.
    failing: bool,
    /// The balancer said ready: the next call goes to it, not to an error.
    ready: bool,
    /// Counts entries into fail-fast.
    entered: Counter,
}

/// [`FailFastService`]'s future: the balancer's, or the fail-fast error.
pub type ResponseFuture<F> = Either<F, future::Ready<Result<Response<BoxBody>, Error>>>;

// === impl FailFastLayer ===

impl FailFastLayer {
    /// Fails fast after `timeout` without a ready endpoint in `backend`,
    /// counting each entry into fail-fast in `entered`.
    pub fn new(backend: Arc<str>, timeout: Duration, entered: Counter) -> Self {
        Self {
            backend,
            timeout,
            entered,
        }
    }
}

impl<S> tower::Layer<S> for FailFastLayer {
    type Service = FailFastService<S>;

    fn layer(&self, inner: S) -> FailFastService<S> {
        FailFastService {
            inner,
            backend: self.backend.clone(),
            timeout: self.timeout,
            sleep: None,
            armed: false,
            failing: false,
            ready: false,
            entered: self.entered.clone(),
        }
    }
}

// === impl FailFastService ===

impl<S> FailFastService<S> {
    /// Whether the balancer has now been unready for the whole timeout;
    /// starts the clock when it was not running.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = Instant::now() + self.timeout;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            sleep.as_mut().reset(deadline);
            self.armed = true;
        }
        sleep.as_mut().poll(cx).is_ready()
    }
}

impl<S> Service<Request<BoxBody>> for FailFastService<S>
where
    S: Service<Request<BoxBody>, Response = Response<BoxBody>, Error = Error>,
{
    type Response = Response<BoxBody>;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // The buffer's worker fails for good on an error from here, so
        // failing fast is a ready service whose calls fail.
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => {
                if self.failing {
                    tracing::info!(backend = %self.backend, "an endpoint is ready; no longer failing fast");
                }
                self.failing = false;
                self.armed = false;
                self.ready = true;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending if self.failing => {
                self.ready = false;
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if !self.poll_expired(cx) {
                    return Poll::Pending;
                }
                tracing::warn!(
                    backend = %self.backend,
                    timeout = ?self.timeout,
                    "no ready endpoint; failing fast"
                );
                self.entered.inc();
                self.failing = true;
                self.ready = false;
                Poll::Ready(Ok(()))
            }
        }
    }

    fn call(&mut self, req: Request<BoxBody>) -> Self::Future {
        if std::mem::take(&mut self.ready) {
            return Either::Left(self.inner.call(req));
        }
        let error = FailFast {
            backend: self.backend.clone(),
            timeout: self.timeout,
        };
        Either::Right(future::ready(Err(error.into())))
    }
}
