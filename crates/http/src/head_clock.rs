//! HTTP/1's header read timeout, counted from a request head's first byte.
//!
//! hyper's own `header_read_timeout` starts as soon as the connection waits
//! for a request head, so a keep-alive connection that is merely idle is
//! closed when it runs out: a client's pooled connection would be cut after
//! `HTTP_HEADER_READ_TIMEOUT` rather than `HTTP_IDLE_TIMEOUT`, racing its
//! next request. Here the clock starts when bytes arrive while no request
//! is being served (the first byte of a head), and stops when the handler
//! is called with the parsed request. A client that trickles a head (a
//! slow-loris) is still cut; an idle one is left to the idle timeout.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::Notify,
    time::Instant,
};

/// One connection's clock. Shared by the connection's reader (which arms
/// it), the handler (which stops it) and the task driving the connection
/// (which enforces it).
#[derive(Debug)]
pub(crate) struct HeadClock {
    base: Instant,
    /// Requests being served: from the handler's call to the end of the
    /// response body (or to the handler's return when the response was
    /// the proxy's own).
    active: AtomicUsize,
    /// When the clock started, as milliseconds after `base` plus one; 0
    /// when it is stopped.
    armed: AtomicU64,
    armed_notify: Notify,
}

impl HeadClock {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            active: AtomicUsize::new(0),
            armed: AtomicU64::new(0),
            armed_notify: Notify::new(),
        })
    }

    /// A request's head is complete and its handling starts: the clock
    /// stops until the returned guard is dropped.
    pub(crate) fn request(self: &Arc<Self>) -> InRequest {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.armed.store(0, Ordering::Relaxed);
        InRequest(self.clone())
    }

    /// Bytes arrived: the first of a head when no request is being served.
    fn read(&self) {
        if self.active.load(Ordering::Relaxed) == 0 && self.armed.load(Ordering::Relaxed) == 0 {
            let since = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
            self.armed.store(since + 1, Ordering::Relaxed);
            self.armed_notify.notify_one();
        }
    }

    fn armed(&self) -> Option<u64> {
        match self.armed.load(Ordering::Relaxed) {
            0 => None,
            at => Some(at),
        }
    }

    /// Resolves once a head has taken longer than `timeout` to arrive.
    ///
    /// Lazy: while it sleeps for one head, newer heads re-arm the clock
    /// without waking it; when it wakes it follows the newest. Under load
    /// that is one timer per `timeout`, not one per request.
    pub(crate) async fn expired(&self, timeout: Duration) {
        loop {
            let at = match self.armed() {
                Some(at) => at,
                None => {
                    self.armed_notify.notified().await;
                    continue;
                }
            };
            let started = self.base + Duration::from_millis(at - 1);
            tokio::time::sleep_until(started + timeout).await;
            if self.armed() == Some(at) {
                return;
            }
        }
    }
}

/// Held while a request is served; see [`HeadClock::request`].
#[derive(Debug)]
pub(crate) struct InRequest(Arc<HeadClock>);

impl Drop for InRequest {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A client connection whose reads arm its [`HeadClock`].
#[derive(Debug)]
pub(crate) struct Clocked<I> {
    io: I,
    clock: Arc<HeadClock>,
}

impl<I> Clocked<I> {
    pub(crate) fn new(io: I, clock: Arc<HeadClock>) -> Self {
        Self { io, clock }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Clocked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.read();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Clocked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn idle_is_not_timed_a_started_head_is() {
        let clock = HeadClock::new();
        let (client, server) = tokio::io::duplex(64);
        let mut server = Clocked::new(server, clock.clone());
        let mut client = client;
        let expired = clock.expired(Duration::from_secs(10));
        tokio::pin!(expired);

        // Idle: an hour passes, the clock never starts.
        assert!(
            tokio::time::timeout(Duration::from_secs(3600), &mut expired)
                .await
                .is_err()
        );

        // A head's first bytes start it; its completion (the handler's
        // call) stops it before it runs out.
        client.write_all(b"GET / HT").await.unwrap();
        let mut b = [0u8; 64];
        let _ = server.read(&mut b).await.unwrap();
        tokio::time::advance(Duration::from_secs(9)).await;
        let serving = clock.request();
        // Bytes read while a request is served (its body, a pipelined
        // head) do not start it.
        client.write_all(b"body").await.unwrap();
        let _ = server.read(&mut b).await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_secs(60), &mut expired)
                .await
                .is_err()
        );
        drop(serving);

        // A head that takes too long.
        client.write_all(b"GET / HT").await.unwrap();
        let _ = server.read(&mut b).await.unwrap();
        let t = Instant::now();
        expired.await;
        assert!(t.elapsed() <= Duration::from_secs(10));
        assert!(t.elapsed() > Duration::from_secs(9));
    }
}
