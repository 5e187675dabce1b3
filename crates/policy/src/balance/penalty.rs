//! PeakEWMA with penalties: backing off from an endpoint that says it is
//! overloaded (`PenaltyPeakEwma` in the outbound policy).
//!
//! An endpoint that answers 429, or any response carrying `Retry-After`,
//! has a penalty added to its load: `Penalty.penalty` for a 429, or the
//! `Retry-After` delay capped at `max_retry_after` (the larger, when there
//! are both). The penalty is a latency, added to PeakEWMA's cost (a
//! latency times the pending requests, in nanoseconds), and fades
//! exponentially over `Penalty.decay`; a new one replaces a smaller
//! remainder. P2C, comparing loads, sends such an endpoint few requests
//! until it stops complaining. It sits between P2C and PeakEWMA.
//!
//! tower's PeakEWMA cost is opaque (no accessor for its number), so
//! `cost_nanos` reads it back from its `Debug` form, without allocating;
//! a test pins that form, so a tower upgrade that changes it fails CI.

use crate::{accrual::retry_after, params};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use linnet_core::Error;
use std::{
    fmt::Write,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll, ready},
    time::Duration,
};
use tokio::time::Instant;
use tower::{
    Service,
    discover::{Change, Discover},
    load::{Load, peak_ewma::Cost},
};

type BoxBody = UnsyncBoxBody<Bytes, Error>;

pin_project_lite::pin_project! {
    /// Wraps each endpoint a [`Discover`] inserts (a PeakEWMA service) in
    /// [`Penalized`].
    #[derive(Debug)]
    pub struct PenaltyDiscover<D> {
        #[pin]
        inner: D,
        params: Params,
    }
}

/// A PeakEWMA service whose load carries a fading penalty (see the
/// [module docs](self)).
#[derive(Debug)]
pub struct Penalized<S> {
    inner: S,
    penalty: Arc<Mutex<Decaying>>,
    params: Params,
}

/// [`Penalized`]'s load: PeakEWMA's cost plus the penalty, in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct PenalizedCost(pub f64);

pin_project_lite::pin_project! {
    /// [`Penalized`]'s response future: raises the penalty when the
    /// response asks for it.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        penalty: Arc<Mutex<Decaying>>,
        params: Params,
    }
}

/// The penalty's parameters, as read per response.
#[derive(Clone, Copy, Debug)]
struct Params {
    penalty: Duration,
    max_retry_after: Duration,
    decay: Duration,
}

/// A value, in nanoseconds, that fades exponentially since `at`.
#[derive(Debug)]
struct Decaying {
    nanos: f64,
    at: Instant,
}

// === impl PenaltyDiscover ===

impl<D> PenaltyDiscover<D> {
    /// Penalizes the endpoints of `inner` as `penalty` says.
    pub fn new(inner: D, penalty: &params::Penalty) -> Self {
        Self {
            inner,
            params: Params {
                penalty: penalty.penalty,
                max_retry_after: penalty.max_retry_after,
                decay: penalty.decay,
            },
        }
    }
}

impl<D: Discover> futures_util::Stream for PenaltyDiscover<D> {
    type Item = Result<Change<D::Key, Penalized<D::Service>>, D::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        let change = match ready!(this.inner.poll_discover(cx)) {
            None => return Poll::Ready(None),
            Some(Err(error)) => return Poll::Ready(Some(Err(error))),
            Some(Ok(Change::Remove(key))) => Change::Remove(key),
            Some(Ok(Change::Insert(key, inner))) => Change::Insert(
                key,
                Penalized {
                    inner,
                    penalty: Arc::new(Mutex::new(Decaying::new())),
                    params: *this.params,
                },
            ),
        };
        Poll::Ready(Some(Ok(change)))
    }
}

// === impl Penalized ===

impl<S> Penalized<S> {
    /// The penalty left now, in nanoseconds.
    fn penalty_nanos(&self) -> f64 {
        let decaying = self.penalty.lock().unwrap_or_else(PoisonError::into_inner);
        decaying.now(Instant::now(), self.params.decay)
    }
}

impl<S: Load<Metric = Cost>> Load for Penalized<S> {
    type Metric = PenalizedCost;

    fn load(&self) -> PenalizedCost {
        PenalizedCost(cost_nanos(self.inner.load()) + self.penalty_nanos())
    }
}

impl<S> Service<Request<BoxBody>> for Penalized<S>
where
    S: Service<Request<BoxBody>, Response = Response<BoxBody>>,
{
    type Response = Response<BoxBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<BoxBody>) -> Self::Future {
        ResponseFuture {
            inner: self.inner.call(req),
            penalty: self.penalty.clone(),
            params: self.params,
        }
    }
}

// === impl ResponseFuture ===

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<BoxBody>, E>>,
{
    type Output = Result<Response<BoxBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let rsp = ready!(this.inner.poll(cx))?;
        let asked = retry_after(rsp.headers()).map(|d| d.min(this.params.max_retry_after));
        let penalty = match (rsp.status() == StatusCode::TOO_MANY_REQUESTS, asked) {
            (true, asked) => Some(asked.unwrap_or_default().max(this.params.penalty)),
            (false, asked) => asked,
        };
        if let Some(penalty) = penalty {
            tracing::debug!(?penalty, status = %rsp.status(), "endpoint penalized");
            let mut decaying = this.penalty.lock().unwrap_or_else(PoisonError::into_inner);
            decaying.raise(Instant::now(), this.params.decay, penalty);
        }
        Poll::Ready(Ok(rsp))
    }
}

// === impl Decaying ===

impl Decaying {
    fn new() -> Self {
        Self {
            nanos: 0.0,
            at: Instant::now(),
        }
    }

    /// What is left at `now` of the value set at `self.at`.
    fn now(&self, now: Instant, decay: Duration) -> f64 {
        if self.nanos == 0.0 || decay.is_zero() {
            return 0.0;
        }
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.nanos * (-elapsed / decay.as_secs_f64()).exp()
    }

    /// Raises the value to `to`, unless more than that is left.
    fn raise(&mut self, now: Instant, decay: Duration, to: Duration) {
        self.nanos = self.now(now, decay).max(to.as_secs_f64() * 1e9);
        self.at = now;
    }
}

/// PeakEWMA's cost as a number (nanoseconds of latency times pending
/// requests), read from its `Debug` form (`Cost(123.0)`) into a stack
/// buffer. 0 if the form ever changes (a test guards against that).
pub(crate) fn cost_nanos(cost: Cost) -> f64 {
    /// Enough for any `f64` in its `Debug` form, with the wrapper.
    struct Buf {
        bytes: [u8; 64],
        len: usize,
    }
    impl Write for Buf {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            let end = self.len + s.len();
            let dst = self.bytes.get_mut(self.len..end).ok_or(std::fmt::Error)?;
            dst.copy_from_slice(s.as_bytes());
            self.len = end;
            Ok(())
        }
    }
    let mut buf = Buf {
        bytes: [0; 64],
        len: 0,
    };
    if write!(buf, "{cost:?}").is_err() {
        return 0.0;
    }
    buf.bytes
        .get(..buf.len)
        .and_then(|bytes| std::str::from_utf8(bytes).ok())
        .and_then(|s| s.strip_prefix("Cost(")?.strip_suffix(')'))
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or(0.0)
}
