//! A response body that records the response's metrics when it ends.

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use linnet_metrics::http::{GrpcStatus, LabeledMetrics, ResponseOutcome};
use std::{
    pin::Pin,
    task::{Context, Poll, ready},
    time::Instant,
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
    inner: crate::BoxBody,
    recorder: Option<Recorder>,
}

impl MeteredBody {
    pub(crate) fn new(inner: crate::BoxBody, recorder: Recorder) -> Self {
        Self {
            inner,
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
            Some(Err(_)) => self.finish("response_body"),
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
