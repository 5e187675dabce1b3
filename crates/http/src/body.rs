//! Body wrappers: the response's metrics, recorded when it ends, and the
//! body idle timeout.

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use linnet_metrics::{
    Direction,
    http::{GrpcStatus, LabeledMetrics, ResponseOutcome},
    limits::LimitMetrics,
};
use std::{
    pin::Pin,
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

/// What to record, and when the request started.
#[derive(Debug)]
pub(crate) struct Recorder {
    /// The request's in-flight permit, released when the response ends.
    pub(crate) _permit: tokio::sync::OwnedSemaphorePermit,
    pub(crate) metrics: LabeledMetrics,
    pub(crate) start: Instant,
    pub(crate) status: u16,
    pub(crate) grpc_status: Option<GrpcStatus>,
    /// The HTTP/1 client connection's reset flag: a body that fails
    /// resets the connection, so the client cannot take the truncated
    /// response for a complete one (a close-delimited body ends at the
    /// close). (HTTP/2 resets the stream itself.)
    pub(crate) reset: Option<crate::conn::ResetFlag>,
    /// Stops HTTP/1's request-head clock until the response ends.
    pub(crate) _in_request: Option<crate::head_clock::InRequest>,
}

impl Recorder {
    fn finish(self, error: &'static str) {
        let outcome = ResponseOutcome {
            status: Some(self.status),
            grpc_status: self.grpc_status,
            error,
        };
        self.metrics.response(outcome, self.start.elapsed());
    }
}

/// The target's response body, passed through frame by frame.
#[derive(Debug)]
pub(crate) struct MeteredBody {
    inner: IdleBody<crate::BoxBody>,
    recorder: Option<Recorder>,
}

impl MeteredBody {
    pub(crate) fn new(inner: crate::BoxBody, recorder: Recorder, idle: Option<Idle>) -> Self {
        Self {
            inner: IdleBody::new(inner, idle),
            recorder: Some(recorder),
        }
    }

    fn finish(&mut self, error: &'static str) {
        if let Some(r) = self.recorder.take() {
            r.finish(error);
        }
    }
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = linnet_core::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, linnet_core::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(trailers) = f.trailers_ref() {
                    let grpc = trailers
                        .get("grpc-status")
                        .map(|v| GrpcStatus::parse(v.to_str().unwrap_or_default()));
                    if let (Some(r), Some(g)) = (self.recorder.as_mut(), grpc) {
                        r.grpc_status = Some(g);
                    }
                }
                if self.inner.is_end_stream() {
                    self.finish("");
                }
            }
            Some(Err(e)) => {
                if let Some(reset) = self.recorder.as_ref().and_then(|r| r.reset.as_ref()) {
                    reset.set();
                }
                let error = if linnet_core::is_caused_by::<BodyIdle>(&**e) {
                    "response_body_idle"
                } else {
                    "response_body"
                };
                self.finish(error);
            }
            None => self.finish(""),
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

impl Drop for MeteredBody {
    fn drop(&mut self) {
        // Ended without a last frame: an empty body (never polled), or a
        // client that went away mid-response.
        let error = if self.inner.is_end_stream() {
            ""
        } else {
            "cancelled"
        };
        self.finish(error);
    }
}

/// A body that fails when it moves no data for its idle timeout.
#[derive(Debug)]
pub(crate) struct BodyIdle(Duration);

impl std::fmt::Display for BodyIdle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the body moved no data for {} (HTTP_BODY_IDLE_TIMEOUT)",
            linnet_config::parse::format_duration(self.0)
        )
    }
}

impl std::error::Error for BodyIdle {}

/// A body's idle timeout, and where it is counted.
#[derive(Clone, Debug)]
pub(crate) struct Idle {
    pub(crate) timeout: Duration,
    pub(crate) metrics: LimitMetrics,
    pub(crate) direction: Direction,
}

/// Fails a body that moves no data for its idle timeout (noticed after
/// between one and two of it). A timer is made only once the body first
/// has to wait, and re-armed once per period rather than per frame; a
/// body its reader stops polling (backpressure) is not idle.
#[derive(Debug)]
pub(crate) struct IdleBody<B> {
    inner: B,
    idle: Option<Idle>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A frame went by since the timer was last armed.
    moved: bool,
    failed: bool,
}

impl<B> IdleBody<B> {
    pub(crate) fn new(inner: B, idle: Option<Idle>) -> Self {
        Self {
            inner,
            idle,
            timer: None,
            moved: false,
            failed: false,
        }
    }

    /// Ready when a whole period passed without a frame.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<Duration> {
        let Some(idle) = &self.idle else {
            return Poll::Pending;
        };
        let period = idle.timeout;
        let timer = self.timer.get_or_insert_with(|| {
            // Armed now: only frames from here on count.
            Box::pin(tokio::time::sleep(period))
        });
        while timer.as_mut().poll(cx).is_ready() {
            if !self.moved {
                return Poll::Ready(period);
            }
            self.moved = false;
            timer.as_mut().reset(tokio::time::Instant::now() + period);
        }
        Poll::Pending
    }
}

impl<B> Body for IdleBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<linnet_core::Error>,
{
    type Data = Bytes;
    type Error = linnet_core::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, linnet_core::Error>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                self.moved = true;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                if self.timer.is_none() {
                    self.moved = false;
                }
                let period = ready!(self.poll_idle(cx));
                self.failed = true;
                if let Some(idle) = &self.idle {
                    idle.metrics
                        .idle(idle.direction, linnet_metrics::limits::Idle::HttpBody);
                }
                Poll::Ready(Some(Err(BodyIdle(period).into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
