//! Decides whether an attempt's outcome is worth another attempt.
//!
//! Errors are retried when marked [`Retryable`] or when the attempt's own
//! deadline ran out ([`ResponseTimeout`]). Responses are retried when their
//! status is in one of the route's ranges, or their `grpc-status` is one
//! of its codes: in the headers, or, for a response whose body begins with
//! its trailers (nothing but trailers), in those. To see that, the first
//! frame is peeked, and put back in front of the body when the response is
//! returned. A gRPC response that sends data is returned as it is.

use std::{
    ops::RangeInclusive,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use linnet_core::{Error, is_caused_by};

use super::{BoxBody, Retryable};
use crate::{
    params::{GrpcCodes, RetryOn},
    timeout::ResponseTimeout,
};

/// What makes a response retryable, for one route (or one request whose
/// headers override the route).
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Conditions {
    /// HTTP status ranges.
    pub(super) http: Vec<RangeInclusive<u16>>,
    /// gRPC codes, looked for in headers and trailers-only bodies.
    pub(super) grpc: GrpcCodes,
}

/// The outcome of one attempt, judged.
pub(super) enum Verdict {
    /// Return this to the caller.
    Final(Result<http::Response<BoxBody>, Error>),
    /// Worth another attempt.
    Retry {
        /// Returned if no other attempt is made.
        result: Result<http::Response<BoxBody>, Error>,
        /// The response's `Retry-After`, in delta-seconds.
        retry_after: Option<Duration>,
    },
}

/// A body whose first frame was read already, and is given back first.
struct Peeked {
    first: Option<Result<Frame<Bytes>, Error>>,
    rest: BoxBody,
}

// === impl Conditions ===

impl Conditions {
    pub(super) fn from_params(on: &RetryOn) -> Self {
        match on {
            RetryOn::Http(ranges) => Self {
                http: ranges.clone(),
                grpc: GrpcCodes::default(),
            },
            RetryOn::Grpc(codes) => Self {
                http: Vec::new(),
                grpc: *codes,
            },
        }
    }

    /// Retries on any 5xx: for a request that asks for retries with no
    /// route policy.
    pub(super) fn default_http() -> Self {
        Self {
            http: vec![500..=599],
            grpc: GrpcCodes::default(),
        }
    }

    /// These conditions, with the parts a request's headers name replaced.
    pub(super) fn with_overrides(
        &self,
        http: Option<Vec<RangeInclusive<u16>>>,
        grpc: Option<GrpcCodes>,
    ) -> Self {
        Self {
            http: http.unwrap_or_else(|| self.http.clone()),
            grpc: grpc.unwrap_or(self.grpc),
        }
    }

    fn status_matches(&self, status: http::StatusCode) -> bool {
        let s = status.as_u16();
        self.http.iter().any(|r| r.contains(&s))
    }

    fn grpc_matches(&self, headers: &HeaderMap) -> Option<bool> {
        let code = headers.get("grpc-status")?;
        let code = code.to_str().ok()?.parse::<u32>().ok()?;
        Some(self.grpc.contains(code))
    }
}

/// Judges one attempt; may read the first frame of a gRPC response's body.
pub(super) async fn classify(
    result: Result<http::Response<BoxBody>, Error>,
    conditions: &Conditions,
) -> Verdict {
    let rsp = match result {
        Ok(rsp) => rsp,
        Err(e) => {
            return if is_caused_by::<Retryable>(&*e) || is_caused_by::<ResponseTimeout>(&*e) {
                Verdict::Retry {
                    result: Err(e),
                    retry_after: None,
                }
            } else {
                Verdict::Final(Err(e))
            };
        }
    };

    let retry = |rsp: http::Response<BoxBody>| {
        let retry_after = retry_after(rsp.headers());
        Verdict::Retry {
            result: Ok(rsp),
            retry_after,
        }
    };

    if conditions.status_matches(rsp.status()) {
        return retry(rsp);
    }
    if conditions.grpc == GrpcCodes::default() {
        return Verdict::Final(Ok(rsp));
    }
    match conditions.grpc_matches(rsp.headers()) {
        Some(true) => return retry(rsp),
        Some(false) => return Verdict::Final(Ok(rsp)),
        None if rsp.body().is_end_stream() => return Verdict::Final(Ok(rsp)),
        None => {}
    }

    // No status in the headers: it may come in trailers with no data
    // before them. Read the first frame to know.
    let (parts, mut body) = rsp.into_parts();
    let first = body.frame().await;
    let matches = match &first {
        Some(Ok(frame)) => frame
            .trailers_ref()
            .and_then(|t| conditions.grpc_matches(t))
            .unwrap_or(false),
        _ => false,
    };
    let body = BoxBody::new(Peeked { first, rest: body });
    let rsp = http::Response::from_parts(parts, body);
    if matches {
        retry(rsp)
    } else {
        Verdict::Final(Ok(rsp))
    }
}

/// `Retry-After` as delta-seconds (an HTTP date is not honoured).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    let v = v.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse::<u64>().ok().map(Duration::from_secs)
}

// === impl Peeked ===

impl Body for Peeked {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(first));
        }
        Pin::new(&mut this.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.rest.size_hint();
        if let Some(Ok(frame)) = &self.first {
            if let Some(data) = frame.data_ref() {
                // The upper bound first: `set_lower` checks against it.
                let len = data.len() as u64;
                if let Some(upper) = hint.upper() {
                    hint.set_upper(upper.saturating_add(len));
                }
                hint.set_lower(hint.lower().saturating_add(len));
            }
        }
        hint
    }
}
