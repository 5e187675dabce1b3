//! A backend's load balancer: a bounded queue in front of tower's P2C over
//! tower's PeakEWMA, over the backend's discovered endpoints.
//!
//! On the outbound path it sits below the weighted backend split and above
//! the endpoint clients:
//!
//! ```text
//! backend split → queue (load shed, fail-fast) → P2C → PeakEWMA
//!               → failure-accrual gate → endpoint client
//! ```
//!
//! [`balancer`] assembles it. Endpoints arrive as snapshots and become
//! tower [`Change`](tower::discover::Change)s ([`discover`]); each endpoint's
//! client is put behind its [failure-accrual gate](crate::accrual), then
//! measured by [`PeakEwma`](tower::load::PeakEwma) (or its [`penalty`]
//! variant, which backs off from endpoints that answer 429), and P2C picks
//! the less loaded of two random ready endpoints. The [`queue`] in front
//! bounds the requests waiting for an endpoint and fails them fast when
//! there has been none for a while.
//!
//! PeakEWMA counts a request as pending until its response's first body
//! frame (or its end, or an error, or the body being dropped). Latency is
//! then the time to first byte: a streaming response (a gRPC stream, a
//! watch) would otherwise stay "pending" for its whole life and record its
//! duration as a round-trip time.

pub mod discover;
pub mod penalty;
pub mod queue;
#[cfg(test)]
mod tests;

use self::discover::{EndpointChanges, Endpoints};
use crate::{accrual, params};
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use linnet_core::{Error, endpoint::Endpoint};
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};
use tower::{
    Service,
    balance::p2c::Balance,
    load::{PeakEwmaDiscover, TrackCompletion},
    util::BoxCloneSyncService,
};

type BoxBody = UnsyncBoxBody<Bytes, Error>;

/// A balancer's metrics, shared by its clones, its gates and its queue.
///
/// The stack builder takes each from its families, labelled with the
/// backend (`outbound_http_balancer_endpoints{endpoint_state="ready"}`,
/// ...); [`Default`] gives detached ones for tests.
#[derive(Clone, Debug, Default)]
pub struct BalancerMetrics {
    /// Endpoints whose last readiness check said ready
    /// (`endpoint_state="ready"`).
    pub endpoints_ready: Gauge,
    /// Endpoints not ready: connecting, or ejected by failure accrual
    /// (`endpoint_state="pending"`).
    pub endpoints_pending: Gauge,
    /// Times the balancer entered fail-fast (no ready endpoint for the
    /// fail-fast timeout).
    pub failfast: Counter,
    /// Requests shed because the queue was full.
    pub shed: Counter,
    /// Endpoints taken out of rotation by failure accrual.
    pub ejections: Counter,
    /// Ejected endpoints restored by a successful probe.
    pub restorations: Counter,
}

// === impl BalancerMetrics ===

impl BalancerMetrics {
    /// The gauge of ready endpoints, or of pending ones.
    pub(crate) fn endpoints(&self, ready: bool) -> &Gauge {
        if ready {
            &self.endpoints_ready
        } else {
            &self.endpoints_pending
        }
    }
}

/// The balancer of the backend `name` over the `endpoints` stream:
/// `make` builds each endpoint's client. See the [module docs](self).
///
/// Must be called within a tokio runtime: the queue's worker is spawned
/// onto it, and ends when every clone of the returned service is dropped.
/// Errors the edge should map: [`queue::FailFast`] (no ready endpoint for
/// the fail-fast timeout) and [`queue::QueueFull`] (load shed).
pub fn balancer<S, F>(
    name: Arc<str>,
    endpoints: impl futures_util::Stream<Item = Endpoints> + Send + Unpin + 'static,
    make: F,
    load: &params::Load,
    accrual: &params::Accrual,
    queue: &params::Queue,
    metrics: BalancerMetrics,
) -> BoxCloneSyncService<Request<BoxBody>, Response<BoxBody>, Error>
where
    F: Fn(&Arc<Endpoint>) -> S + Send + Sync + 'static,
    S: Service<Request<BoxBody>, Response = Response<BoxBody>> + Send + 'static,
    S::Error: Into<Error>,
    S::Future: Send + 'static,
{
    let pool = accrual::Pool::new(accrual, metrics.clone());
    let changes = EndpointChanges::new(endpoints, move |ep: &Arc<Endpoint>| {
        accrual::Gate::new(ep.addr, make(ep), pool.clone())
    });
    // tower's PeakEWMA asserts that both are positive.
    let default_rtt = load.default_rtt.max(Duration::from_micros(1));
    let decay = load.decay.max(Duration::from_millis(1));
    let ewma = PeakEwmaDiscover::new::<Request<BoxBody>>(
        changes,
        default_rtt,
        decay,
        CompleteOnFirstFrame,
    );
    match &load.penalty {
        None => queue::queue(name, Balance::new(Box::pin(ewma)), queue, metrics),
        Some(penalty) => {
            let penalized = penalty::PenaltyDiscover::new(ewma, penalty);
            queue::queue(name, Balance::new(Box::pin(penalized)), queue, metrics)
        }
    }
}

/// PeakEWMA's completion: the request stays pending until the response's
/// first body frame, its end, an error, or the body being dropped.
#[derive(Clone, Copy, Debug, Default)]
pub struct CompleteOnFirstFrame;

/// A response body holding PeakEWMA's handle until its first frame.
struct FirstFrameBody<H> {
    inner: BoxBody,
    handle: Option<H>,
}

// === impl CompleteOnFirstFrame ===

impl<H: Send + Unpin + 'static> TrackCompletion<H, Response<BoxBody>> for CompleteOnFirstFrame {
    type Output = Response<BoxBody>;

    fn track_completion(&self, handle: H, rsp: Response<BoxBody>) -> Response<BoxBody> {
        if rsp.body().is_end_stream() {
            drop(handle);
            return rsp;
        }
        rsp.map(|inner| {
            BoxBody::new(FirstFrameBody {
                inner,
                handle: Some(handle),
            })
        })
    }
}

// === impl FirstFrameBody ===

impl<H: Send + Unpin + 'static> Body for FirstFrameBody<H> {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        this.handle = None;
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
