//! A request body that can be sent more than once.
//!
//! The first attempt streams the client's body upstream as it arrives and
//! keeps a copy of each frame (cheap: `Bytes` are shared, not copied). A
//! later attempt replays the copy, and then, if no attempt read the body to
//! its end yet, carries on reading the client's body itself, copying as it
//! goes. Trailers are kept and replayed too.
//!
//! The copy is bounded: once the body has sent more than the limit, the
//! copy is dropped and the body cannot be replayed, so the retry layer
//! sends no further attempt ([`Replay::is_replayable`]). The attempt that
//! is reading carries on streaming, unaffected.
//!
//! Only one attempt reads the client's body at a time. If an earlier
//! attempt still holds it (its connection has not let go of the request
//! yet), a later one waits for it to be dropped, replaying what is copied
//! meanwhile.

use std::{
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{Context, Poll, Waker},
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use linnet_core::Error;

use super::BoxBody;

/// The retry layer's handle on a request body: makes each attempt's body.
pub(super) struct Replay {
    shared: Arc<Mutex<Shared>>,
}

/// One attempt's request body.
struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    /// The next copied frame to replay.
    next: usize,
    /// The client's body, while this attempt is the one reading it.
    original: Option<BoxBody>,
    /// Whether this attempt sent the trailers.
    trailers_sent: bool,
    /// Whether this attempt's body has ended.
    done: bool,
}

/// What the attempts share.
struct Shared {
    /// The data copied so far (while `replayable`).
    frames: Vec<Bytes>,
    /// The client's trailers, once seen.
    trailers: Option<HeaderMap>,
    /// Bytes of data read from the client so far.
    read: u64,
    /// The most that may be copied.
    max: u64,
    /// Whether everything read is copied: false once over `max` or after
    /// the client's body failed.
    replayable: bool,
    /// The client's body, when no attempt is reading it.
    original: Option<BoxBody>,
    /// Whether the client's body has ended.
    ended: bool,
    /// An attempt waiting for the client's body or for more copied frames.
    waiter: Option<Waker>,
}

/// Raised to an attempt that could not replay the body because an earlier
/// attempt's body grew past the limit meanwhile (the retry layer checks
/// before each attempt, so this is a narrow race).
#[derive(Debug, thiserror::Error)]
#[error("request body is too large to replay")]
struct NotReplayable;

// === impl Replay ===

impl Replay {
    pub(super) fn new(body: BoxBody, max: u64) -> Self {
        Self {
            shared: Arc::new(Mutex::new(Shared {
                frames: Vec::new(),
                trailers: None,
                read: 0,
                max,
                replayable: true,
                original: Some(body),
                ended: false,
                waiter: None,
            })),
        }
    }

    /// The next attempt's body.
    pub(super) fn attempt(&self) -> BoxBody {
        BoxBody::new(ReplayBody {
            shared: self.shared.clone(),
            next: 0,
            original: None,
            trailers_sent: false,
            done: false,
        })
    }

    /// Whether another attempt can send the whole body.
    pub(super) fn is_replayable(&self) -> bool {
        lock(&self.shared).replayable
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A panic elsewhere while holding the lock leaves consistent data: each
    // update is a single step.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

// === impl Shared ===

impl Shared {
    /// Copies a frame read from the client's body.
    fn record(&mut self, frame: &Frame<Bytes>) {
        if let Some(data) = frame.data_ref() {
            self.read = self.read.saturating_add(data.len() as u64);
            if self.read > self.max {
                self.replayable = false;
                self.frames = Vec::new();
            } else if self.replayable {
                self.frames.push(data.clone());
            }
        } else if let Some(trailers) = frame.trailers_ref() {
            if self.replayable {
                self.trailers = Some(trailers.clone());
            }
        }
        self.wake();
    }

    fn wake(&mut self) {
        if let Some(waker) = self.waiter.take() {
            waker.wake();
        }
    }
}

// === impl ReplayBody ===

impl ReplayBody {
    /// Reads the client's body, which this attempt holds.
    fn poll_original(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let Some(original) = self.original.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(original).poll_frame(cx);
        let mut shared = lock(&self.shared);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                shared.record(frame);
                self.next = shared.frames.len();
                if frame.is_trailers() {
                    self.trailers_sent = true;
                }
            }
            Poll::Ready(Some(Err(_))) => {
                shared.replayable = false;
                shared.frames = Vec::new();
                self.done = true;
            }
            Poll::Ready(None) => {
                shared.ended = true;
                shared.wake();
                self.original = None;
                self.done = true;
            }
            Poll::Pending => {}
        }
        polled
    }
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if this.original.is_some() {
            return this.poll_original(cx);
        }

        let mut shared = lock(&this.shared);
        if !shared.replayable {
            this.done = true;
            return Poll::Ready(Some(Err(Box::new(NotReplayable))));
        }
        if let Some(data) = shared.frames.get(this.next) {
            this.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(data.clone()))));
        }
        if shared.ended {
            if !this.trailers_sent {
                this.trailers_sent = true;
                if let Some(trailers) = shared.trailers.clone() {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
            }
            this.done = true;
            return Poll::Ready(None);
        }
        match shared.original.take() {
            Some(original) => {
                this.original = Some(original);
                drop(shared);
                this.poll_original(cx)
            }
            None => {
                // An earlier attempt still reads it: wait for a frame it
                // copies, or for it to let go.
                shared.waiter = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        if self.done {
            return true;
        }
        if let Some(original) = self.original.as_ref() {
            return original.is_end_stream();
        }
        let shared = lock(&self.shared);
        if self.next < shared.frames.len() || !shared.replayable {
            return false;
        }
        if shared.ended {
            return self.trailers_sent || shared.trailers.is_none();
        }
        shared.original.as_ref().is_some_and(|o| o.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if let Some(original) = self.original.as_ref() {
            return original.size_hint();
        }
        let shared = lock(&self.shared);
        let copied: u64 = shared
            .frames
            .get(self.next..)
            .unwrap_or_default()
            .iter()
            .map(|b| b.len() as u64)
            .sum();
        if shared.ended {
            return SizeHint::with_exact(copied);
        }
        match shared.original.as_ref() {
            Some(original) => {
                let rest = original.size_hint();
                let mut hint = SizeHint::new();
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(copied));
                }
                hint.set_lower(rest.lower().saturating_add(copied));
                hint
            }
            None => {
                let mut hint = SizeHint::new();
                hint.set_lower(copied);
                hint
            }
        }
    }
}

impl Drop for ReplayBody {
    fn drop(&mut self) {
        // Hand the client's body back for the next attempt.
        if let Some(original) = self.original.take() {
            let mut shared = lock(&self.shared);
            shared.original = Some(original);
            shared.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Full, StreamBody};
    use tokio::sync::mpsc;
    use tokio_test::{assert_pending, assert_ready, task};

    use super::*;

    fn channel() -> (mpsc::UnboundedSender<&'static str>, BoxBody) {
        let (tx, rx) = mpsc::unbounded_channel();
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            let s: &'static str = rx.recv().await?;
            Some((
                Ok::<_, Error>(Frame::data(Bytes::from_static(s.as_bytes()))),
                rx,
            ))
        });
        (tx, BoxBody::new(StreamBody::new(stream)))
    }

    async fn next_data(body: &mut BoxBody) -> Bytes {
        let frame = body.frame().await.expect("a frame").expect("no error");
        frame.into_data().expect("data")
    }

    #[tokio::test]
    async fn a_later_attempt_waits_for_an_earlier_one_to_let_go() {
        let (tx, original) = channel();
        let replay = Replay::new(original, 1024);
        let mut first = replay.attempt();
        tx.send("a").unwrap();
        assert_eq!(next_data(&mut first).await, "a");

        // The first attempt still holds the client's body (unread "b").
        tx.send("b").unwrap();
        let mut second = replay.attempt();
        assert_eq!(next_data(&mut second).await, "a", "replayed");
        let mut next = task::spawn(second.frame());
        assert_pending!(next.poll());

        drop(first);
        assert!(next.is_woken(), "woken when the first attempt lets go");
        let frame = assert_ready!(next.poll())
            .expect("a frame")
            .expect("no error");
        assert_eq!(frame.into_data().unwrap(), "b");
        drop(next);
        drop(tx);
        assert!(second.frame().await.is_none());
        assert!(replay.is_replayable());
    }

    #[tokio::test]
    async fn size_and_end_are_known_on_replay() {
        let original =
            BoxBody::new(Full::new(Bytes::from_static(b"hello")).map_err(|e| match e {}));
        let replay = Replay::new(original, 1024);
        let first = replay.attempt();
        assert_eq!(first.size_hint().exact(), Some(5), "the client's own hint");
        assert_eq!(first.collect().await.unwrap().to_bytes(), "hello");

        let mut second = replay.attempt();
        assert_eq!(second.size_hint().exact(), Some(5));
        assert!(!second.is_end_stream());
        assert_eq!(next_data(&mut second).await, "hello");
        assert!(second.is_end_stream());
    }

    #[tokio::test]
    async fn past_the_limit_it_cannot_replay() {
        let (tx, original) = channel();
        let replay = Replay::new(original, 4);
        let mut first = replay.attempt();
        tx.send("abc").unwrap();
        assert_eq!(next_data(&mut first).await, "abc");
        assert!(replay.is_replayable());
        tx.send("def").unwrap();
        assert_eq!(next_data(&mut first).await, "def", "still streams");
        assert!(!replay.is_replayable());
        drop(first);

        let mut second = replay.attempt();
        assert!(second.frame().await.expect("a frame").is_err());
    }
}
