//! An I/O wrapper that counts the bytes read and written through it, for
//! connections whose bytes are moved by someone else (hyper).

use linnet_metrics::tcp::ConnMetrics;
use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `io`, counted into `metrics`; when dropped, the connection is recorded
/// as closed: cleanly, unless an I/O error was seen.
#[derive(Debug)]
pub struct CountingIo<I> {
    io: I,
    metrics: Option<ConnMetrics>,
    error: linnet_metrics::tcp::CloseReason,
}

impl<I> CountingIo<I> {
    /// Wraps `io`.
    pub fn new(io: I, metrics: ConnMetrics) -> Self {
        Self {
            io,
            metrics: Some(metrics),
            error: linnet_metrics::tcp::CloseReason::CLEAN,
        }
    }

    /// The inner I/O.
    pub fn get_ref(&self) -> &I {
        &self.io
    }

    fn wrote(&mut self, result: &io::Result<usize>) {
        match result {
            Ok(n) => {
                if let Some(m) = &self.metrics {
                    m.write_bytes.inc_by(*n as u64);
                }
            }
            Err(e) => self.error = linnet_metrics::tcp::CloseReason::error("io", Some(e)),
        }
    }

    fn note(&mut self, result: &io::Result<()>, error: &'static str) {
        if let Err(e) = result {
            self.error = linnet_metrics::tcp::CloseReason::error(error, Some(e));
        }
    }
}

impl<I> Drop for CountingIo<I> {
    fn drop(&mut self) {
        if let Some(m) = self.metrics.take() {
            m.close(self.error);
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for CountingIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = ready!(Pin::new(&mut self.io).poll_read(cx, buf));
        self.note(&result, "io");
        if let Some(m) = &self.metrics {
            m.read_bytes.inc_by((buf.filled().len() - before) as u64);
        }
        Poll::Ready(result)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for CountingIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = ready!(Pin::new(&mut self.io).poll_write(cx, buf));
        self.wrote(&result);
        Poll::Ready(result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, bufs));
        self.wrote(&result);
        Poll::Ready(result)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = ready!(Pin::new(&mut self.io).poll_shutdown(cx));
        self.note(&result, "io");
        Poll::Ready(result)
    }
}
