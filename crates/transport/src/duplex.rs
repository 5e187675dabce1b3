//! The bidirectional copy at the heart of opaque TCP proxying.
//!
//! Bytes read from one side are written to the other, in order, until that
//! side reads EOF; then the other side's write half is shut down (a FIN),
//! and the opposite direction carries on until it too ends. So a client
//! that half-closes still receives the whole reply. The copy finishes when
//! both directions have ended, or fails at the first I/O error, saying on
//! which side it happened; the caller then resets both connections so that
//! neither peer mistakes a failure for a clean end.
//!
//! Each direction has its own buffer, allocated on first use and freed when
//! the direction ends; it starts small and grows once (to
//! [`MAX_BUFFER_SIZE`]) when a read fills it, which only bulk transfers do.
//! A direction only reads again once everything it read has been written,
//! so memory per connection is bounded and a slow reader slows its writer
//! (backpressure) rather than growing a queue.

use linnet_metrics::{prometheus_client::metrics::counter::Counter, tcp::Peer};
use std::{
    future::poll_fn,
    io,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The buffer size each direction starts with: enough for requests and
/// responses of ordinary size, cheap for the many mostly-idle connections a
/// sidecar holds.
pub const INITIAL_BUFFER_SIZE: usize = 8 * 1024;

/// The buffer size a direction grows to once a read fills its buffer: a
/// bulk transfer then moves in fewer, larger system calls (on loopback a
/// 64 KiB buffer costs about a third less CPU per byte than 16 KiB).
pub const MAX_BUFFER_SIZE: usize = 64 * 1024;

/// One side of the copy: its I/O and the counters it bumps.
#[derive(Debug)]
pub struct Side<'a, T> {
    /// The connection.
    pub io: &'a mut T,
    /// Bytes read from this side.
    pub read_bytes: &'a Counter,
    /// Bytes written to this side.
    pub write_bytes: &'a Counter,
}

/// What an I/O operation was doing when it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Reading.
    Read,
    /// Writing.
    Write,
    /// Shutting down the write half (sending FIN).
    Shutdown,
    /// Waiting: neither side moved a byte for the idle timeout.
    Idle,
}

/// The copy failed.
#[derive(Debug, thiserror::Error)]
#[error("{}", describe(*.side, *.op))]
pub struct CopyError {
    /// The side whose socket failed (for [`Op::Idle`], the client's).
    pub side: Peer,
    /// What was being done.
    pub op: Op,
    /// The underlying error.
    #[source]
    pub source: io::Error,
}

impl CopyError {
    /// Whether the copy ended because neither side moved a byte for the
    /// idle timeout.
    pub fn is_idle(&self) -> bool {
        self.op == Op::Idle
    }
}

fn describe(side: Peer, op: Op) -> String {
    let side = match side {
        Peer::Src => "client",
        Peer::Dst => "target",
    };
    match op {
        Op::Read => format!("reading from {side} failed"),
        Op::Write => format!("writing to {side} failed"),
        Op::Shutdown => format!("shutting down {side} failed"),
        Op::Idle => "no bytes moved either way for the idle timeout".to_string(),
    }
}

/// Bytes moved by a finished copy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transferred {
    /// From the client to the target.
    pub src_to_dst: u64,
    /// From the target to the client.
    pub dst_to_src: u64,
}

/// Copies between `src` and `dst` in both directions until both have
/// ended (see the module docs), or until no byte has moved either way for
/// `idle` (noticed after between one and two of it; the error's `op` is
/// then [`Op::Idle`]).
pub async fn duplex<S, D>(
    src: Side<'_, S>,
    dst: Side<'_, D>,
    idle: Option<Duration>,
) -> Result<Transferred, CopyError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    D: AsyncRead + AsyncWrite + Unpin,
{
    let mut up = Half::new(Peer::Src, Peer::Dst);
    let mut down = Half::new(Peer::Dst, Peer::Src);
    // The first failure, and how long the other direction may still run.
    let mut failure: Option<(CopyError, Pin<Box<tokio::time::Sleep>>)> = None;
    // One timer per connection, re-armed once per period rather than on
    // every read: at each expiry, the bytes moved since the last one say
    // whether the connection was idle.
    let mut idle = idle.map(|period| IdleCheck {
        period,
        timer: Box::pin(tokio::time::sleep(period)),
        moved: 0,
    });
    poll_fn(|cx| {
        // Poll both directions every time, so neither starves the other.
        let up_result = up.poll(
            cx,
            &mut *src.io,
            src.read_bytes,
            &mut *dst.io,
            dst.write_bytes,
        );
        let down_result = down.poll(
            cx,
            &mut *dst.io,
            dst.read_bytes,
            &mut *src.io,
            src.write_bytes,
        );
        for result in [up_result, down_result] {
            if let Poll::Ready(Err(e)) = result {
                if failure.is_none() {
                    // The other direction may still hold the peer's last
                    // words (a server's error reply to an upload it
                    // refused): let it finish, for a moment.
                    failure = Some((e, Box::pin(tokio::time::sleep(LINGER_AFTER_ERROR))));
                }
            }
        }
        if let (None, Some(check)) = (&failure, &mut idle) {
            if check.poll_idle(cx, up.bytes + down.bytes).is_ready() {
                return Poll::Ready(Err(CopyError {
                    side: Peer::Src,
                    op: Op::Idle,
                    source: io::ErrorKind::TimedOut.into(),
                }));
            }
        }
        if let Some((_, linger)) = &mut failure {
            if (up.finished() && down.finished()) || linger.as_mut().poll(cx).is_ready() {
                if let Some((e, _)) = failure.take() {
                    return Poll::Ready(Err(e));
                }
            }
            return Poll::Pending;
        }
        if up.finished() && down.finished() {
            Poll::Ready(Ok(Transferred {
                src_to_dst: up.bytes,
                dst_to_src: down.bytes,
            }))
        } else {
            Poll::Pending
        }
    })
    .await
}

/// The idle timeout's state.
struct IdleCheck {
    period: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    /// Bytes moved when the timer was last armed.
    moved: u64,
}

impl IdleCheck {
    /// Ready when a whole period passed with `moved` unchanged.
    fn poll_idle(&mut self, cx: &mut Context<'_>, moved: u64) -> Poll<()> {
        while self.timer.as_mut().poll(cx).is_ready() {
            if moved == self.moved {
                return Poll::Ready(());
            }
            self.moved = moved;
            let next = tokio::time::Instant::now() + self.period;
            self.timer.as_mut().reset(next);
        }
        Poll::Pending
    }
}

/// How long one direction may go on after the other failed.
const LINGER_AFTER_ERROR: Duration = Duration::from_secs(2);

enum State {
    Copying,
    ShuttingDown,
    Done,
    Failed,
}

/// One direction of the copy.
struct Half {
    from: Peer,
    to: Peer,
    /// Allocated on first use and freed when the direction ends.
    buf: Option<Box<[u8]>>,
    /// Read but not yet written: `buf[start..end]`.
    start: usize,
    end: usize,
    state: State,
    bytes: u64,
    /// Written since the last flush: a buffering writer (TLS) must be
    /// flushed before this direction waits for more input.
    need_flush: bool,
}

impl Half {
    fn new(from: Peer, to: Peer) -> Self {
        Self {
            from,
            to,
            buf: None,
            start: 0,
            end: 0,
            state: State::Copying,
            bytes: 0,
            need_flush: false,
        }
    }

    /// Whether this direction has ended, cleanly or not.
    fn finished(&self) -> bool {
        matches!(self.state, State::Done | State::Failed)
    }

    /// Polls this direction; an error leaves it `Failed` (and not polled
    /// again).
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        read_bytes: &Counter,
        writer: &mut W,
        write_bytes: &Counter,
    ) -> Poll<Result<(), CopyError>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if matches!(self.state, State::Failed) {
            return Poll::Ready(Ok(()));
        }
        let result = ready!(self.poll_copy(cx, reader, read_bytes, writer, write_bytes));
        if result.is_err() {
            self.state = State::Failed;
            self.buf = None;
        }
        Poll::Ready(result)
    }

    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: &mut R,
        read_bytes: &Counter,
        mut writer: &mut W,
        write_bytes: &Counter,
    ) -> Poll<Result<(), CopyError>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let (from, to) = (self.from, self.to);
        let err = |side, op, source| CopyError { side, op, source };
        loop {
            match self.state {
                State::Copying => {
                    let buf = self
                        .buf
                        .get_or_insert_with(|| vec![0; INITIAL_BUFFER_SIZE].into_boxed_slice());
                    if self.start == self.end {
                        if self.end == buf.len() && buf.len() < MAX_BUFFER_SIZE {
                            // The last read filled the buffer: this is a bulk
                            // transfer, and everything read has been written.
                            *buf = vec![0; MAX_BUFFER_SIZE].into_boxed_slice();
                        }
                        let mut rb = ReadBuf::new(buf);
                        match Pin::new(&mut reader).poll_read(cx, &mut rb) {
                            Poll::Ready(r) => r.map_err(|e| err(from, Op::Read, e))?,
                            Poll::Pending => {
                                // Nothing to read: push out what was written.
                                if self.need_flush {
                                    ready!(Pin::new(&mut writer).poll_flush(cx))
                                        .map_err(|e| err(to, Op::Write, e))?;
                                    self.need_flush = false;
                                }
                                return Poll::Pending;
                            }
                        }
                        let n = rb.filled().len();
                        if n == 0 {
                            self.state = State::ShuttingDown;
                            continue;
                        }
                        read_bytes.inc_by(n as u64);
                        self.start = 0;
                        self.end = n;
                    }
                    while self.start < self.end {
                        let n = ready!(
                            Pin::new(&mut writer).poll_write(cx, &buf[self.start..self.end])
                        )
                        .map_err(|e| err(to, Op::Write, e))?;
                        if n == 0 {
                            let e = io::Error::from(io::ErrorKind::WriteZero);
                            return Poll::Ready(Err(err(to, Op::Write, e)));
                        }
                        self.start += n;
                        self.bytes += n as u64;
                        self.need_flush = true;
                        write_bytes.inc_by(n as u64);
                    }
                }
                State::ShuttingDown => {
                    ready!(Pin::new(&mut writer).poll_shutdown(cx))
                        .map_err(|e| err(to, Op::Shutdown, e))?;
                    // Nothing more will be read this way: free the buffer.
                    self.buf = None;
                    self.state = State::Done;
                }
                State::Done | State::Failed => return Poll::Ready(Ok(())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex as pipe};

    #[tokio::test]
    async fn copies_both_ways_with_half_close() {
        // Small pipes: many short reads. Large ones: reads fill the buffer,
        // which then grows mid-stream.
        for capacity in [64, 1024 * 1024] {
            copy_through_pipes(capacity).await;
        }
    }

    async fn copy_through_pipes(capacity: usize) {
        let (client, mut src) = pipe(capacity);
        let (mut dst, mut server) = pipe(capacity);
        let counters: Vec<Counter> = (0..4).map(|_| Counter::default()).collect();
        let copy = tokio::spawn(async move {
            duplex(
                Side {
                    io: &mut src,
                    read_bytes: &counters[0],
                    write_bytes: &counters[1],
                },
                Side {
                    io: &mut dst,
                    read_bytes: &counters[2],
                    write_bytes: &counters[3],
                },
                None,
            )
            .await
            .map(|t| (t, counters.iter().map(|c| c.get()).collect::<Vec<_>>()))
        });
        let request: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let (mut client_rx, mut client_tx) = tokio::io::split(client);
        let sent = request.clone();
        let writer = tokio::spawn(async move {
            client_tx.write_all(&sent).await.unwrap();
            client_tx.shutdown().await.unwrap();
        });
        // The server sees the whole request, then EOF...
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(got, request);
        // ...and can still answer after the client's half-close.
        server.write_all(b"reply").await.unwrap();
        server.shutdown().await.unwrap();
        let mut reply = Vec::new();
        client_rx.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"reply");
        let (t, counts) = copy.await.unwrap().unwrap();
        assert_eq!(
            t,
            Transferred {
                src_to_dst: 300_000,
                dst_to_src: 5
            }
        );
        assert_eq!(counts, vec![300_000, 5, 5, 300_000]);
    }

    #[tokio::test]
    async fn flushes_a_buffering_writer_before_waiting() {
        let (mut client, mut src) = pipe(1024);
        let (dst, mut server) = pipe(1024);
        // A writer that holds bytes until flushed.
        let mut dst = tokio::io::BufWriter::new(dst);
        let c: Vec<Counter> = (0..4).map(|_| Counter::default()).collect();
        let copy = tokio::spawn(async move {
            let _ = duplex(
                Side {
                    io: &mut src,
                    read_bytes: &c[0],
                    write_bytes: &c[1],
                },
                Side {
                    io: &mut dst,
                    read_bytes: &c[2],
                    write_bytes: &c[3],
                },
                None,
            )
            .await;
        });
        client.write_all(b"hi").await.unwrap();
        let mut got = [0u8; 2];
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            server.read_exact(&mut got),
        )
        .await
        .expect("bytes are flushed while the client is quiet")
        .unwrap();
        assert_eq!(&got, b"hi");
        copy.abort();
    }

    #[tokio::test]
    async fn the_other_direction_finishes_after_a_failure() {
        let (client, mut src) = pipe(1024);
        let (mut dst, mut server) = pipe(1024);
        let c: Vec<Counter> = (0..4).map(|_| Counter::default()).collect();
        let copy = tokio::spawn(async move {
            duplex(
                Side {
                    io: &mut src,
                    read_bytes: &c[0],
                    write_bytes: &c[1],
                },
                Side {
                    io: &mut dst,
                    read_bytes: &c[2],
                    write_bytes: &c[3],
                },
                None,
            )
            .await
        });
        // The client uploads without end; the server refuses and goes away.
        let (mut client_rx, mut client_tx) = tokio::io::split(client);
        tokio::spawn(async move {
            let chunk = vec![1u8; 4096];
            while client_tx.write_all(&chunk).await.is_ok() {}
        });
        let uploader = tokio::spawn(async move {
            let mut reply = Vec::new();
            let _ = client_rx.read_to_end(&mut reply).await;
            reply
        });
        let mut some = [0u8; 100];
        server.read_exact(&mut some).await.unwrap();
        server.write_all(b"413 too large").await.unwrap();
        drop(server);
        let err = copy.await.unwrap().unwrap_err();
        assert_eq!((err.side, err.op), (Peer::Dst, Op::Write));
        // The refusal reached the client all the same.
        assert_eq!(uploader.await.unwrap(), b"413 too large");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_copy_ends_and_a_busy_one_does_not() {
        let (mut client, mut src) = pipe(1024);
        let (mut dst, mut server) = pipe(1024);
        let c: Vec<Counter> = (0..4).map(|_| Counter::default()).collect();
        let idle = std::time::Duration::from_secs(10);
        let copy = tokio::spawn(async move {
            duplex(
                Side {
                    io: &mut src,
                    read_bytes: &c[0],
                    write_bytes: &c[1],
                },
                Side {
                    io: &mut dst,
                    read_bytes: &c[2],
                    write_bytes: &c[3],
                },
                Some(idle),
            )
            .await
        });
        // A byte every 6 s, over 60 s: never a whole period without one.
        for _ in 0..10 {
            client.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            server.read_exact(&mut b).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_secs(6)).await;
            assert!(!copy.is_finished());
        }
        // Then silence: it ends within two periods.
        tokio::time::sleep(idle * 2).await;
        let err = copy.await.unwrap().unwrap_err();
        assert!(err.is_idle(), "{err}");
        assert_eq!(err.op, Op::Idle);
    }
}
