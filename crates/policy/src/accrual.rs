//! The failure-accrual gate: takes a failing endpoint out of its balancer
//! for a while, then lets one probe decide whether it comes back.
//!
//! It wraps each endpoint's client inside the balancer (balancer → PeakEWMA
//! → **gate** → endpoint client), so the balancer sees an ejected endpoint
//! as not ready and P2C does not pick it. Each response is classified when
//! it ends (or at its headers, when they already tell, or when it has no
//! body): an error, an HTTP 5xx, or a `grpc-status` other than 0 in the
//! headers or the trailers is a failure. The rule
//! ([`FailureAccrual`](crate::params::FailureAccrual)) decides when the
//! failures add up; the ejection lasts `backoff.delay(n)` (n: ejections in
//! a row; at least the `Retry-After` asked for when the backoff respects
//! it); then exactly one probe is admitted: success restores the endpoint,
//! failure ejects it again for longer.
//!
//! The gates of one balancer share a [`Pool`], which keeps
//! `min_ready_endpoints` of them in rotation whatever their failures.

mod state;
#[cfg(test)]
mod tests;

use self::state::{Mode, Outcome, State, Transition};
use crate::{balance::BalancerMetrics, params};
use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use linnet_core::Error;
use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};
use tokio::time::{Instant, Sleep};
use tower::Service;

type BoxBody = UnsyncBoxBody<Bytes, Error>;

/// What the gates of one balancer share: the rule, and how many endpoints
/// are in it and out of rotation, for the floor.
#[derive(Debug)]
pub struct Pool {
    /// The rule every gate applies.
    rule: params::FailureAccrual,
    /// The floor: an ejection that would leave fewer endpoints in rotation
    /// is refused, so a backend never ejects itself empty.
    min_ready: usize,
    /// Gates alive (endpoints in the balancer).
    endpoints: AtomicUsize,
    /// Gates out of rotation (ejected or probing).
    ejected: AtomicUsize,
    /// Endpoint states and ejections are counted here.
    metrics: BalancerMetrics,
}

/// A [`tower::Layer`] that puts one endpoint's client behind a [`Gate`].
#[derive(Clone, Debug)]
pub struct GateLayer {
    pool: Arc<Pool>,
    addr: SocketAddr,
}

/// The gate in front of one endpoint (see the [module docs](self)).
#[derive(Debug)]
pub struct Gate<S> {
    inner: S,
    shared: Arc<Shared>,
    /// Wakes the gate when its ejection ends; kept to reuse its timer entry.
    sleep: Option<Pin<Box<Sleep>>>,
    /// The state last shown in the endpoint gauges (`Some(true)`: ready),
    /// so each change moves exactly one gauge.
    shown: Option<bool>,
}

/// The state a gate shares with its responses, which report their outcome
/// after the gate has moved on (and possibly after it was dropped).
#[derive(Debug)]
struct Shared {
    addr: SocketAddr,
    pool: Arc<Pool>,
    state: Mutex<State>,
}

/// Reports one response's outcome exactly once; dropped unreported, it
/// reports [`Outcome::Unknown`].
#[derive(Debug)]
struct Tracker {
    shared: Option<Arc<Shared>>,
    /// This request is the ejected endpoint's probe.
    probe: bool,
}

pin_project_lite::pin_project! {
    /// The [`Gate`]'s response future: classifies the response head and
    /// wraps the body to see its end.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        tracker: Option<Tracker>,
    }
}

/// A response body that reports its outcome when it ends.
struct TrackBody {
    inner: BoxBody,
    tracker: Option<Tracker>,
}

// === impl Pool ===

impl Pool {
    /// The shared state of one balancer's gates.
    pub fn new(accrual: &params::Accrual, metrics: BalancerMetrics) -> Arc<Self> {
        Arc::new(Self {
            rule: accrual.kind.clone(),
            min_ready: usize::try_from(accrual.min_ready_endpoints).unwrap_or(usize::MAX),
            endpoints: AtomicUsize::new(0),
            ejected: AtomicUsize::new(0),
            metrics,
        })
    }

    /// How many of its endpoints are out of rotation.
    pub fn ejected(&self) -> usize {
        self.ejected.load(Ordering::Acquire)
    }

    fn tracks(&self) -> bool {
        !matches!(self.rule, params::FailureAccrual::None)
    }

    /// Counts one more ejection, unless it would break the floor.
    fn try_eject(&self) -> bool {
        let mut ejected = self.ejected.load(Ordering::Acquire);
        loop {
            let total = self.endpoints.load(Ordering::Acquire);
            if total.saturating_sub(ejected + 1) < self.min_ready {
                return false;
            }
            match self.ejected.compare_exchange(
                ejected,
                ejected + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => ejected = now,
            }
        }
    }
}

// === impl GateLayer ===

impl GateLayer {
    /// Gates for the endpoint at `addr`, sharing `pool`.
    pub fn new(pool: Arc<Pool>, addr: SocketAddr) -> Self {
        Self { pool, addr }
    }
}

impl<S> tower::Layer<S> for GateLayer {
    type Service = Gate<S>;

    fn layer(&self, inner: S) -> Gate<S> {
        Gate::new(self.addr, inner, self.pool.clone())
    }
}

// === impl Gate ===

impl<S> Gate<S> {
    /// Puts `inner`, the client of the endpoint at `addr`, behind a gate
    /// of `pool`.
    pub fn new(addr: SocketAddr, inner: S, pool: Arc<Pool>) -> Self {
        pool.endpoints.fetch_add(1, Ordering::AcqRel);
        Self {
            inner,
            shared: Arc::new(Shared {
                addr,
                pool,
                state: Mutex::new(State::new(Instant::now())),
            }),
            sleep: None,
            shown: None,
        }
    }

    /// Whether its endpoint may take a request, as far as accrual goes;
    /// registers for a wake-up when not.
    fn poll_admit(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let mut state = self.shared.lock();
            let until = match state.mode {
                Mode::InRotation | Mode::ProbeReady => return Poll::Ready(()),
                Mode::ProbeInFlight => {
                    state.waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                Mode::Ejected { until } if Instant::now() >= until => {
                    state.mode = Mode::ProbeReady;
                    tracing::info!(endpoint = %self.shared.addr, "failure accrual: probing the endpoint");
                    return Poll::Ready(());
                }
                Mode::Ejected { until } => until,
            };
            drop(state);
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
            if sleep.deadline() != until {
                sleep.as_mut().reset(until);
            }
            ready!(sleep.as_mut().poll(cx));
        }
    }

    /// Moves the endpoint gauges to `ready` (or pending).
    fn show(&mut self, ready: bool) {
        if self.shown == Some(ready) {
            return;
        }
        let metrics = &self.shared.pool.metrics;
        if let Some(was) = self.shown {
            metrics.endpoints(was).dec();
        }
        metrics.endpoints(ready).inc();
        self.shown = Some(ready);
    }
}

impl<S> Service<Request<BoxBody>> for Gate<S>
where
    S: Service<Request<BoxBody>, Response = Response<BoxBody>>,
    S::Error: Into<Error>,
{
    type Response = Response<BoxBody>;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.shared.pool.tracks() && self.poll_admit(cx).is_pending() {
            self.show(false);
            return Poll::Pending;
        }
        let ready = self.inner.poll_ready(cx).map_err(Into::into);
        self.show(ready.is_ready());
        ready
    }

    fn call(&mut self, req: Request<BoxBody>) -> Self::Future {
        let tracker = self.shared.pool.tracks().then(|| {
            let mut state = self.shared.lock();
            let probe = state.mode == Mode::ProbeReady;
            if probe {
                state.mode = Mode::ProbeInFlight;
            }
            Tracker {
                shared: Some(self.shared.clone()),
                probe,
            }
        });
        ResponseFuture {
            inner: self.inner.call(req),
            tracker,
        }
    }
}

impl<S> Drop for Gate<S> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.removed = true;
        let out = state.mode != Mode::InRotation;
        drop(state);
        let pool = &self.shared.pool;
        pool.endpoints.fetch_sub(1, Ordering::AcqRel);
        if out {
            pool.ejected.fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(was) = self.shown {
            pool.metrics.endpoints(was).dec();
        }
    }
}

// === impl Shared ===

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, outcome: Outcome, probe: bool) {
        let mut state = self.lock();
        if state.removed {
            return;
        }
        let pool = &self.pool;
        let transition = state.observe(
            &pool.rule,
            outcome,
            probe,
            Instant::now(),
            rand::random::<f64>(),
            || pool.try_eject(),
        );
        let waker = if probe { state.waker.take() } else { None };
        drop(state);
        let addr = self.addr;
        match transition {
            Transition::None => {}
            Transition::Ejected(backoff) => {
                pool.metrics.ejections.inc();
                tracing::info!(endpoint = %addr, ?backoff, "failure accrual: endpoint ejected");
            }
            Transition::ProbeFailed(backoff) => {
                tracing::info!(endpoint = %addr, ?backoff, "failure accrual: probe failed; endpoint ejected again");
            }
            Transition::Restored => {
                pool.ejected.fetch_sub(1, Ordering::AcqRel);
                pool.metrics.restorations.inc();
                tracing::info!(endpoint = %addr, "failure accrual: probe succeeded; endpoint restored");
            }
            Transition::Kept => {
                tracing::debug!(endpoint = %addr, "failure accrual: not ejected, to keep the minimum of ready endpoints");
            }
        }
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

// === impl Tracker ===

impl Tracker {
    fn report(mut self, outcome: Outcome) {
        if let Some(shared) = self.shared.take() {
            shared.record(outcome, self.probe);
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        // Only a probe needs to hear of it: it must not stay in flight.
        if let (Some(shared), true) = (self.shared.take(), self.probe) {
            shared.record(Outcome::Unknown, true);
        }
    }
}

// === impl ResponseFuture ===

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<BoxBody>, E>>,
    E: Into<Error>,
{
    type Output = Result<Response<BoxBody>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let Some(tracker) = this.tracker.take() else {
            return Poll::Ready(result.map_err(Into::into));
        };
        let rsp = match result {
            Ok(rsp) => rsp,
            Err(error) => {
                tracker.report(Outcome::Failure { retry_after: None });
                return Poll::Ready(Err(error.into()));
            }
        };
        let failed = rsp.status().is_server_error() || grpc_failed(rsp.headers());
        if failed {
            tracker.report(Outcome::Failure {
                retry_after: retry_after(rsp.headers()),
            });
            return Poll::Ready(Ok(rsp));
        }
        if rsp.body().is_end_stream() {
            tracker.report(Outcome::Success);
            return Poll::Ready(Ok(rsp));
        }
        Poll::Ready(Ok(rsp.map(|inner| {
            BoxBody::new(TrackBody {
                inner,
                tracker: Some(tracker),
            })
        })))
    }
}

// === impl TrackBody ===

impl TrackBody {
    fn report(&mut self, outcome: Outcome) {
        if let Some(tracker) = self.tracker.take() {
            tracker.report(outcome);
        }
    }
}

impl Body for TrackBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            None => this.report(Outcome::Success),
            Some(Err(_)) => this.report(Outcome::Failure { retry_after: None }),
            Some(Ok(frame)) => {
                // Trailers are the last frame; a reader may stop here.
                if let Some(trailers) = frame.trailers_ref() {
                    let outcome = if grpc_failed(trailers) {
                        Outcome::Failure { retry_after: None }
                    } else {
                        Outcome::Success
                    };
                    this.report(outcome);
                } else if this.inner.is_end_stream() {
                    this.report(Outcome::Success);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether `headers` (or trailers) carry a gRPC status other than OK.
fn grpc_failed(headers: &HeaderMap) -> bool {
    headers
        .get("grpc-status")
        .is_some_and(|status| status.as_bytes().trim_ascii() != b"0")
}

/// The delay a `Retry-After` header asks for, in its delay-seconds form
/// (an HTTP date is ignored).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}
