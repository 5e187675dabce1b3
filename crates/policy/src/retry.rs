//! Retries a route's failed attempts, within a per-route budget.
//!
//! On the outbound path this sits after the route's [`crate::timeout`]
//! layer (whose deadline covers every attempt) and before the weighted
//! backend split, so each attempt may land on another backend and another
//! endpoint. It also owns each attempt's own deadline (`Retry.timeout` and
//! the route's `timeouts.response`): an attempt that runs out before its
//! response is retried.
//!
//! An attempt is retried when it fails before a response with an error
//! marked [`Retryable`] (or its deadline ran out), or when its response
//! matches the route's conditions ([`params::RetryOn`]: HTTP statuses, or
//! gRPC codes in the headers or in a body that is only trailers). Each
//! retry needs a token from the route's [`TpsBudget`] (one deposit per
//! request) and waits out the route's backoff (and `Retry-After` when the
//! route says so). The request body is kept for replay up to
//! `max_request_bytes` while the first attempt streams it (see
//! the `replay` module); a larger body is sent once and never retried.
//! Upgrade and CONNECT requests are never retried.
//!
//! When the route allows Linkerd's request headers (`l5d-retry-limit`,
//! `l5d-retry-http`, `l5d-retry-grpc`, `l5d-retry-timeout`,
//! `l5d-response-timeout`), they override the route's settings; they, and
//! `l5d-timeout`, are stripped before the request goes upstream either way.

mod classify;
mod l5d;
mod replay;

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use linnet_core::Error;
use pin_project_lite::pin_project;
use prometheus_client::metrics::counter::Counter;
use tower::retry::budget::{Budget as _, TpsBudget};

use self::{
    classify::{Conditions, Verdict},
    replay::Replay,
};
use crate::{params, timeout};

type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Error>;

/// One attempt's response, boxed: held across the retry task's awaits, an
/// inner future type trips the compiler's `Send` check on the boxed task
/// (rust-lang/rust#110338).
type Attempt = BoxFuture<'static, Result<http::Response<BoxBody>, Error>>;

/// Marks a failure that happened before the request could have been
/// processed (e.g. the connection could not be made), so retrying it is
/// safe: the endpoint client wraps such errors in this.
///
/// When the retry layer gives up, it returns the wrapped error itself.
#[derive(Debug, thiserror::Error)]
#[error("retryable failure")]
pub struct Retryable(#[source] pub Error);

/// What the retry layer counts, per route; the caller registers the
/// counters. No response is changed by them.
#[derive(Clone, Debug, Default)]
pub struct RetryMetrics {
    /// Retries sent (attempts after the first).
    pub requests: Counter,
    /// Requests that succeeded after at least one retry: their last
    /// attempt got a response the route does not retry.
    pub successes: Counter,
    /// Requests still failing after their last allowed retry.
    pub limit_exceeded: Counter,
    /// Retries the budget refused.
    pub overflow: Counter,
    /// Retries not made because the request body was too large to keep.
    pub body_too_large: Counter,
}

/// The retry budget for one route, from the policy's [`params::Budget`]:
/// the stack builder makes one per route and hands it to every
/// [`RetryLayer`] of that route.
///
/// [`TpsBudget`] keeps `min_per_second × ttl` tokens in reserve, so the
/// minimum is a rate averaged over the TTL, not a per-second cap. Values
/// outside what it accepts are clamped: `ttl` to 1–60 s, `ratio` to 0–1000.
pub fn budget(params: &params::Budget) -> Arc<TpsBudget> {
    let ttl = params
        .ttl
        .clamp(Duration::from_secs(1), Duration::from_secs(60));
    let ratio = if params.ratio.is_finite() {
        params.ratio.clamp(0.0, 1000.0) as f32
    } else {
        0.0
    };
    let min_per_second = params.min_per_second.min(i32::MAX as u32 - 1);
    Arc::new(TpsBudget::new(ttl, min_per_second, ratio))
}

/// Builds [`Retry`] services for one route.
#[derive(Clone, Debug)]
pub struct RetryLayer {
    policy: Policy,
}

/// Retries failed attempts of a request on the inner service.
#[derive(Clone, Debug)]
pub struct Retry<S> {
    inner: S,
    policy: Arc<Policy>,
}

pin_project! {
    /// The response of a [`Retry`]: one attempt when no retry is possible,
    /// otherwise the retrying task.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Once { #[pin] attempt: timeout::ResponseFuture<F> },
        Retrying { task: BoxFuture<'static, Result<http::Response<BoxBody>, Error>> },
    }
}

/// The route's retry settings, shared by its services.
#[derive(Clone, Debug)]
struct Policy {
    retry: Option<params::Retry>,
    /// `retry.on`, in the form the classifier reads.
    conditions: Arc<Conditions>,
    /// The route's `timeouts.response`, for each attempt.
    response_timeout: Option<Duration>,
    allow_l5d_request_headers: bool,
    /// Shared by all of the route's requests.
    budget: Arc<TpsBudget>,
    metrics: RetryMetrics,
}

/// What one request's retries may do, after the headers had their say.
struct Plan {
    max_retries: u32,
    max_request_bytes: u64,
    conditions: Arc<Conditions>,
    backoff: Option<params::Backoff>,
    attempt_timeout: Option<Duration>,
}

/// Where each attempt's request body comes from.
enum Source {
    /// No body: every attempt sends an empty one.
    Empty,
    /// Too large to keep: sent once, by the first attempt.
    Once(Option<BoxBody>),
    /// Kept for replay.
    Replay(Replay),
}

// === impl RetryLayer ===

impl RetryLayer {
    /// A layer retrying as `params` says (`None`: the route has no retry
    /// policy), spending tokens from `budget` and counting into `metrics`.
    pub fn new(
        params: Option<params::Retry>,
        budget: Arc<TpsBudget>,
        metrics: RetryMetrics,
    ) -> Self {
        let conditions = Arc::new(
            params
                .as_ref()
                .map(|p| Conditions::from_params(&p.on))
                .unwrap_or_default(),
        );
        Self {
            policy: Policy {
                retry: params,
                conditions,
                response_timeout: None,
                allow_l5d_request_headers: false,
                budget,
                metrics,
            },
        }
    }

    /// Bounds each attempt by the route's `timeouts.response` too (the
    /// shorter of it and `Retry.timeout` applies).
    pub fn with_response_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.policy.response_timeout = timeout;
        self
    }

    /// Lets a request's `l5d-retry-*` and `l5d-response-timeout` headers
    /// override the route's settings (the route's
    /// `allow_l5d_request_headers`). They are stripped either way.
    pub fn allow_l5d_request_headers(mut self, allow: bool) -> Self {
        self.policy.allow_l5d_request_headers = allow;
        self
    }
}

impl<S> tower::Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry {
            inner,
            policy: Arc::new(self.policy.clone()),
        }
    }
}

// === impl Retry ===

impl<S> tower::Service<http::Request<BoxBody>> for Retry<S>
where
    S: tower::Service<http::Request<BoxBody>, Response = http::Response<BoxBody>, Error = Error>,
    S: Clone + Send + 'static,
    S::Future: Send,
{
    type Response = http::Response<BoxBody>;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<BoxBody>) -> Self::Future {
        let (plan, attempt_timeout) = self.policy.plan(req.headers_mut());
        let plan = match plan {
            Some(plan) if plan.max_retries > 0 && !is_upgrade(&req) => plan,
            _ => {
                return ResponseFuture {
                    kind: Kind::Once {
                        attempt: timeout::ResponseFuture::attempt(
                            self.inner.call(req),
                            attempt_timeout,
                        ),
                    },
                };
            }
        };
        self.policy.budget.deposit();

        let (head, body) = req.into_parts();
        let mut source = Source::new(body, &head.headers, plan.max_request_bytes);
        let first = http::Request::from_parts(head.clone(), source.attempt());
        let first: Attempt = Box::pin(timeout::ResponseFuture::attempt(
            self.inner.call(first),
            attempt_timeout,
        ));
        let task = retry_loop(
            self.inner.clone(),
            first,
            head,
            source,
            plan,
            self.policy.clone(),
        );
        ResponseFuture {
            kind: Kind::Retrying {
                task: Box::pin(task),
            },
        }
    }
}

/// Upgrades and CONNECT tunnels cannot be replayed.
fn is_upgrade(req: &http::Request<BoxBody>) -> bool {
    req.method() == http::Method::CONNECT || req.headers().contains_key(http::header::UPGRADE)
}

/// Attempts after the first, until one is final or retries run out.
async fn retry_loop<S>(
    mut svc: S,
    first: Attempt,
    head: http::request::Parts,
    mut source: Source,
    plan: Plan,
    policy: Arc<Policy>,
) -> Result<http::Response<BoxBody>, Error>
where
    S: tower::Service<http::Request<BoxBody>, Response = http::Response<BoxBody>, Error = Error>,
    S::Future: Send + 'static,
{
    let metrics = &policy.metrics;
    let mut result = first.await;
    let mut retries = 0u32;
    loop {
        let (failed, retry_after) = match classify::classify(result, &plan.conditions).await {
            Verdict::Final(result) => {
                if retries > 0 && result.is_ok() {
                    metrics.successes.inc();
                }
                return result;
            }
            Verdict::Retry {
                result,
                retry_after,
            } => (result, retry_after),
        };
        if retries >= plan.max_retries {
            metrics.limit_exceeded.inc();
            return unwrap_retryable(failed);
        }
        if !source.is_replayable() {
            metrics.body_too_large.inc();
            return unwrap_retryable(failed);
        }
        if !policy.budget.withdraw() {
            metrics.overflow.inc();
            return unwrap_retryable(failed);
        }
        // Let the failed response go (and its connection) before waiting.
        drop(failed);

        if let Some(backoff) = plan.backoff.as_ref() {
            let mut delay = backoff.delay(retries, rand::random::<f64>());
            if backoff.respect_retry_after {
                if let Some(asked) = retry_after {
                    delay = delay.max(asked.min(backoff.max));
                }
            }
            tokio::time::sleep(delay).await;
        }

        retries += 1;
        metrics.requests.inc();
        tracing::debug!(retries, "retrying request");
        let req = http::Request::from_parts(head.clone(), source.attempt());
        std::future::poll_fn(|cx| svc.poll_ready(cx)).await?;
        let attempt: Attempt = Box::pin(timeout::ResponseFuture::attempt(
            svc.call(req),
            plan.attempt_timeout,
        ));
        result = attempt.await;
    }
}

/// The error a caller sees when retrying stops: the cause, without the
/// marker that made it retryable.
fn unwrap_retryable(
    result: Result<http::Response<BoxBody>, Error>,
) -> Result<http::Response<BoxBody>, Error> {
    result.map_err(|e| match e.downcast::<Retryable>() {
        Ok(retryable) => retryable.0,
        Err(e) => e,
    })
}

// === impl Policy ===

impl Policy {
    /// This request's retry plan (`None`: not retried) and each attempt's
    /// timeout, from the route and (when allowed) the request's headers,
    /// which are stripped.
    fn plan(&self, headers: &mut http::HeaderMap) -> (Option<Plan>, Option<Duration>) {
        let overrides = l5d::Overrides::take(headers);
        let overrides = if self.allow_l5d_request_headers {
            overrides
        } else {
            l5d::Overrides::default()
        };

        let response_timeout = overrides.response_timeout.or(self.response_timeout);
        let try_timeout = overrides
            .retry_timeout
            .or(self.retry.as_ref().and_then(|r| r.timeout));
        let attempt_timeout = match (response_timeout, try_timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };

        if self.retry.is_none() && !overrides.configures_retries() {
            return (None, attempt_timeout);
        }
        let conditions = if overrides.http.is_some() || overrides.grpc.is_some() {
            Arc::new(
                self.conditions
                    .with_overrides(overrides.http, overrides.grpc),
            )
        } else if self.retry.is_some() {
            self.conditions.clone()
        } else {
            Arc::new(Conditions::default_http())
        };
        let plan = Plan {
            max_retries: overrides
                .limit
                .or(self.retry.as_ref().map(|r| r.max_retries))
                .unwrap_or(1),
            max_request_bytes: self
                .retry
                .as_ref()
                .map_or(params::DEFAULT_MAX_REQUEST_BYTES, |r| r.max_request_bytes),
            conditions,
            backoff: self.retry.as_ref().and_then(|r| r.backoff.clone()),
            attempt_timeout,
        };
        (Some(plan), attempt_timeout)
    }
}

// === impl Source ===

impl Source {
    fn new(body: BoxBody, headers: &http::HeaderMap, max: u64) -> Self {
        use http_body::Body as _;
        if body.is_end_stream() {
            return Self::Empty;
        }
        let declared = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > max) || body.size_hint().lower() > max {
            return Self::Once(Some(body));
        }
        Self::Replay(Replay::new(body, max))
    }

    /// The body for the next attempt.
    fn attempt(&mut self) -> BoxBody {
        match self {
            Self::Empty => BoxBody::default(),
            Self::Once(body) => body.take().unwrap_or_default(),
            Self::Replay(replay) => replay.attempt(),
        }
    }

    /// Whether another attempt could send the same body.
    fn is_replayable(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Once(_) => false,
            Self::Replay(replay) => replay.is_replayable(),
        }
    }
}

// === impl ResponseFuture ===

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<BoxBody>, Error>>,
{
    type Output = Result<http::Response<BoxBody>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Once { attempt } => attempt.poll(cx),
            KindProj::Retrying { task } => task.as_mut().poll(cx),
        }
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
