//! `Expect: 100-continue`, end to end.
//!
//! hyper's server sends the client `100 Continue` the first time the
//! request body is read. Reading it at once would tell the client to send
//! its body before the target agreed, defeating the point: a target that
//! answers `417` or `401` straight away would receive an upload it
//! refused. So the body is held back behind a gate until the target sends
//! its own `100 Continue` (or a second passes, as curl itself waits, for
//! targets that never do). If the target answers finally first, the body
//! is never read and the client never told to continue.

use hyper::body::{Body, Frame, SizeHint};
use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, ready},
    time::Duration,
};
use tokio::sync::oneshot;

/// How long the body waits for the target's `100 Continue`.
const CONTINUE_WAIT: Duration = Duration::from_secs(1);

/// Whether a request asks to wait for `100 Continue`.
pub(crate) fn expects_continue<B>(req: &http::Request<B>) -> bool {
    req.headers()
        .get(http::header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"))
}

/// Holds `req`'s body until the target sends `100 Continue` (for at most a
/// second).
pub(crate) fn gate<B>(req: &mut http::Request<B>) -> Gate {
    let (tx, rx) = oneshot::channel();
    let tx = Arc::new(Mutex::new(Some(tx)));
    hyper::ext::on_informational(req, move |rsp| {
        if rsp.status() == http::StatusCode::CONTINUE {
            if let Some(tx) = tx.lock().ok().and_then(|mut t| t.take()) {
                let _ = tx.send(());
            }
        }
    });
    Gate(Some(Box::pin(async move {
        let _ = tokio::time::timeout(CONTINUE_WAIT, rx).await;
    })))
}

/// The opening condition of a [`Gated`] body; `None` once open.
pub(crate) struct Gate(Option<Pin<Box<dyn Future<Output = ()> + Send>>>);

impl Gate {
    /// A gate that is already open.
    pub(crate) fn open() -> Self {
        Gate(None)
    }
}

/// A body that is not read until its gate opens.
pub(crate) struct Gated<B> {
    gate: Gate,
    inner: B,
}

impl<B> Gated<B> {
    pub(crate) fn new(inner: B, gate: Gate) -> Self {
        Self { gate, inner }
    }
}

impl<B: Body + Unpin> Body for Gated<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        if let Some(gate) = self.gate.0.as_mut() {
            ready!(gate.as_mut().poll(cx));
            self.gate.0 = None;
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
