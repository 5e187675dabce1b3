//! Bounds a route's requests in time: the whole request, and the idle
//! gaps of the stream (no frame of the request body, and no response or
//! frame of its body, for `timeouts.idle`).
//!
//! On the outbound path this sits right after the route match and before
//! the retry layer, so its deadline covers every attempt, the backoff
//! between them, and the response body until it ends. The deadline is the
//! route's `timeouts.request` (or, when the route allows Linkerd's request
//! headers, `l5d-timeout`), shortened by the request's own `grpc-timeout`.
//! The response future races that deadline; once a response arrives its
//! body carries the rest of the deadline and the idle timer
//! (`timeouts.idle`) with it, and fails with [`RequestTimeout`] or
//! [`IdleTimeout`] if either runs out while it is still streaming. The
//! idle timer runs from the request's start: each frame of the request
//! body (seen by a thin wrapper that notes the time) or of the response
//! body restarts it, so a request still uploading, or a response still
//! streaming, is never idle; one waiting for response headers after its
//! body has ended is, once the timer runs out.
//!
//! The same future and body also carry the retry layer's per-attempt
//! deadline ([`ResponseTimeout`]); see [`crate::retry`].
//!
//! The edge maps any of these errors (see [`is_timeout`]) to 504 or gRPC
//! DEADLINE_EXCEEDED.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header::HeaderName};
use http_body::{Body, Frame, SizeHint};
use linnet_core::{Error, is_caused_by};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::params::Timeouts;

type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Error>;

/// gRPC's own deadline, set by the client.
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
/// Linkerd's whole-request timeout header (honoured only when allowed).
pub(crate) const L5D_TIMEOUT: HeaderName = HeaderName::from_static("l5d-timeout");

/// The request did not complete, response body included, in time.
#[derive(Debug, thiserror::Error)]
#[error("request timed out after {after:?}{}", if *.grpc { " (its grpc-timeout)" } else { "" })]
pub struct RequestTimeout {
    /// The timeout that ran out.
    pub after: Duration,
    /// Whether it was the request's own `grpc-timeout` (rather than the
    /// route's), which the edge may want to report differently.
    pub grpc: bool,
}

/// The response body sent no frame for this long.
#[derive(Debug, thiserror::Error)]
#[error("request idle for {0:?}")]
pub struct IdleTimeout(pub Duration);

/// One attempt (per-try or backend response timeout) took this long.
///
/// Raised inside the retry layer, which retries an attempt that fails
/// with it before a response.
#[derive(Debug, thiserror::Error)]
#[error("response timed out after {0:?}")]
pub struct ResponseTimeout(pub Duration);

/// Whether `error`, or anything in its chain, is one of this module's
/// timeouts: what the edge maps to 504 / DEADLINE_EXCEEDED.
pub fn is_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    is_caused_by::<RequestTimeout>(error)
        || is_caused_by::<IdleTimeout>(error)
        || is_caused_by::<ResponseTimeout>(error)
}

/// Builds [`Timeout`] services for one route.
#[derive(Clone, Debug)]
pub struct TimeoutLayer {
    /// The route's timeouts; `response` is the retry layer's business.
    timeouts: Timeouts,
    /// Whether the route lets clients set `l5d-timeout`.
    allow_l5d_request_headers: bool,
}

/// Bounds each request by the route's deadline and idle timeout.
#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
    timeouts: Timeouts,
    allow_l5d_request_headers: bool,
}

pin_project! {
    /// The response of a [`Timeout`] (or of one retry attempt): the inner
    /// future raced against a deadline; the response's body carries what is
    /// left of it.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        // Taken when the response arrives and moved into its body.
        deadline: Option<Deadline>,
        idle: Option<Idle>,
    }
}

/// The idle timer of a request: its length, the running sleep, and when
/// the request body last moved.
#[derive(Debug)]
struct Idle {
    after: Duration,
    sleep: Pin<Box<Sleep>>,
    activity: Arc<Activity>,
}

/// When a request body last yielded a frame (nanoseconds after `start`).
#[derive(Debug)]
struct Activity {
    start: Instant,
    last: AtomicU64,
}

/// A request body that notes when each of its frames goes by.
struct ActiveBody {
    inner: BoxBody,
    activity: Arc<Activity>,
}

/// A running deadline and the error it ends with.
#[derive(Debug)]
struct Deadline {
    /// Boxed so it can move from the future into the body.
    sleep: Pin<Box<Sleep>>,
    expiry: Expiry,
}

/// Which deadline this is, to build its error.
#[derive(Clone, Copy, Debug)]
enum Expiry {
    Request { after: Duration, grpc: bool },
    Response(Duration),
}

/// A response body bounded by a deadline and an idle timer.
struct TimeoutBody {
    inner: BoxBody,
    deadline: Option<Deadline>,
    /// How long a gap between frames may be, the running timer, and the
    /// request body's activity (which restarts it too).
    idle: Option<Idle>,
    /// Set once a timeout has been reported: the body has ended.
    failed: bool,
}

// === impl TimeoutLayer ===

impl TimeoutLayer {
    /// A layer enforcing `timeouts.request` and `timeouts.idle`.
    pub fn new(timeouts: Timeouts) -> Self {
        Self {
            timeouts,
            allow_l5d_request_headers: false,
        }
    }

    /// Lets a request's `l5d-timeout` header replace the route's request
    /// timeout (the route's `allow_l5d_request_headers`). The header is
    /// stripped either way.
    pub fn allow_l5d_request_headers(mut self, allow: bool) -> Self {
        self.allow_l5d_request_headers = allow;
        self
    }
}

impl<S> tower::Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout {
            inner,
            timeouts: self.timeouts.clone(),
            allow_l5d_request_headers: self.allow_l5d_request_headers,
        }
    }
}

// === impl Timeout ===

impl<S> Timeout<S> {
    /// The request's deadline: the route's (or an allowed `l5d-timeout`),
    /// or the request's `grpc-timeout` when that is earlier.
    fn deadline(&self, headers: &mut HeaderMap) -> Option<Expiry> {
        let header = headers.remove(L5D_TIMEOUT);
        let route = match header {
            Some(v) if self.allow_l5d_request_headers => {
                parse_duration(&v).or(self.timeouts.request)
            }
            _ => self.timeouts.request,
        };
        let grpc = headers.get(GRPC_TIMEOUT).and_then(parse_grpc_timeout);
        match (route, grpc) {
            (Some(r), Some(g)) if g < r => Some(Expiry::Request {
                after: g,
                grpc: true,
            }),
            (Some(r), _) => Some(Expiry::Request {
                after: r,
                grpc: false,
            }),
            (None, Some(g)) => Some(Expiry::Request {
                after: g,
                grpc: true,
            }),
            (None, None) => None,
        }
    }
}

impl<S> tower::Service<http::Request<BoxBody>> for Timeout<S>
where
    S: tower::Service<http::Request<BoxBody>, Response = http::Response<BoxBody>, Error = Error>,
{
    type Response = http::Response<BoxBody>;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<BoxBody>) -> Self::Future {
        let expiry = self.deadline(req.headers_mut());
        let idle = self.timeouts.idle.map(|after| {
            let activity = Arc::new(Activity {
                start: Instant::now(),
                last: AtomicU64::new(0),
            });
            let a = activity.clone();
            let req_body = std::mem::take(req.body_mut());
            *req.body_mut() = BoxBody::new(ActiveBody {
                inner: req_body,
                activity: a,
            });
            Idle {
                after,
                sleep: Box::pin(tokio::time::sleep(after)),
                activity,
            }
        });
        ResponseFuture::new(self.inner.call(req), expiry, idle)
    }
}

// === impl ResponseFuture ===

impl<F> ResponseFuture<F> {
    fn new(inner: F, expiry: Option<Expiry>, idle: Option<Idle>) -> Self {
        let deadline = expiry.map(|expiry| Deadline {
            sleep: Box::pin(tokio::time::sleep(expiry.after())),
            expiry,
        });
        Self {
            inner,
            deadline,
            idle,
        }
    }

    /// One attempt bounded by `timeout` (from now until its response
    /// body ends), failing with [`ResponseTimeout`].
    pub(crate) fn attempt(inner: F, timeout: Option<Duration>) -> Self {
        Self::new(inner, timeout.map(Expiry::Response), None)
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<BoxBody>, Error>>,
{
    type Output = Result<http::Response<BoxBody>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(result) = this.inner.poll(cx) {
            let deadline = this.deadline.take();
            let idle = this.idle.take();
            return Poll::Ready(result.map(|rsp| {
                if deadline.is_none() && idle.is_none() {
                    return rsp;
                }
                rsp.map(|inner| {
                    BoxBody::new(TimeoutBody {
                        inner,
                        deadline,
                        idle: idle.map(|mut i| {
                            // The response's arrival is activity too.
                            i.sleep.as_mut().reset(Instant::now() + i.after);
                            i
                        }),
                        failed: false,
                    })
                })
            }));
        }
        if let Some(deadline) = this.deadline.as_mut() {
            if deadline.sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(deadline.expiry.error()));
            }
        }
        if let Some(idle) = this.idle.as_mut() {
            if idle.expired(cx) {
                return Poll::Ready(Err(Box::new(IdleTimeout(idle.after))));
            }
        }
        Poll::Pending
    }
}

// === impl Idle ===

impl Idle {
    /// Whether the timer has run out with no request-body frame since it
    /// was set; a frame since restarts it from that frame (and registers
    /// `cx` for the new end).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            let last = self.activity.last();
            let end = last + self.after;
            if end <= Instant::now() {
                return true;
            }
            self.sleep.as_mut().reset(end);
        }
    }
}

// === impl Activity ===

impl Activity {
    fn touch(&self) {
        let nanos = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.store(nanos, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_nanos(self.last.load(Ordering::Relaxed))
    }
}

// === impl ActiveBody ===

impl Body for ActiveBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &frame {
            this.activity.touch();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// === impl Expiry ===

impl Expiry {
    fn after(self) -> Duration {
        match self {
            Self::Request { after, .. } | Self::Response(after) => after,
        }
    }

    fn error(self) -> Error {
        match self {
            Self::Request { after, grpc } => Box::new(RequestTimeout { after, grpc }),
            Self::Response(after) => Box::new(ResponseTimeout(after)),
        }
    }
}

// === impl TimeoutBody ===

impl Body for TimeoutBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(None);
        }
        // The deadline first: a body still streaming at its deadline fails,
        // even if a frame happens to be ready.
        if let Some(deadline) = this.deadline.as_mut() {
            if deadline.sleep.as_mut().poll(cx).is_ready() {
                this.failed = true;
                return Poll::Ready(Some(Err(deadline.expiry.error())));
            }
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(idle) = this.idle.as_mut() {
                    idle.sleep.as_mut().reset(Instant::now() + idle.after);
                }
                Poll::Ready(frame)
            }
            Poll::Pending => {
                if let Some(idle) = this.idle.as_mut() {
                    // A request body still uploading keeps it alive too.
                    if idle.expired(cx) {
                        this.failed = true;
                        return Poll::Ready(Some(Err(Box::new(IdleTimeout(idle.after)))));
                    }
                }
                Poll::Pending
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

// === parsing ===

/// Parses gRPC's `grpc-timeout`: 1 to 8 ASCII digits and one unit of
/// `H M S m u n`. Anything else is `None` (and ignored).
pub(crate) fn parse_grpc_timeout(value: &HeaderValue) -> Option<Duration> {
    let bytes = value.as_bytes();
    let (unit, digits) = bytes.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = std::str::from_utf8(digits).ok()?.parse::<u64>().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Parses a duration as Linkerd's headers write it: a non-negative number
/// (a fraction allowed) and a unit of `ns us ms s m h`, e.g. `500ms`,
/// `1.5s`. Anything else is `None` (and ignored).
pub(crate) fn parse_duration(value: &HeaderValue) -> Option<Duration> {
    let s = value.to_str().ok()?.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (number, unit) = s.split_at(split);
    if number.is_empty() || !number.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let n: f64 = number.parse().ok()?;
    let secs = match unit {
        "ns" => n / 1e9,
        "us" | "µs" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

#[cfg(test)]
mod tests;
