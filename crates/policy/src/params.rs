//! The parameters the policy's middleware reads: timeouts, retries,
//! budgets, backoff, failure accrual, balancer load and queues.
//!
//! Plain data, built from the control plane's messages (or defaults) and
//! shared by reference; each middleware takes the part it needs.

use std::{ops::RangeInclusive, time::Duration};

/// Exponential backoff with jitter (`ExponentialBackoff` in the API).
#[derive(Clone, Debug, PartialEq)]
pub struct Backoff {
    /// The first delay.
    pub min: Duration,
    /// The largest delay.
    pub max: Duration,
    /// How much random delay is added, as a share of the delay, in
    /// `[0, 1]` (see [`Backoff::delay`]).
    pub jitter: f64,
    /// Wait as long as a response's `Retry-After` asks (capped at `max`).
    pub respect_retry_after: bool,
}

impl Backoff {
    /// The delay before attempt `n` (0 for the first retry or probe):
    /// `min * 2^n`, at most `max`, with up to `jitter` of it added at
    /// random (`random` in `[0, 1)`), never beyond `max`.
    pub fn delay(&self, n: u32, random: f64) -> Duration {
        let base = self
            .min
            .checked_mul(1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX))
            .unwrap_or(self.max)
            .min(self.max);
        let extra = base.mul_f64(self.jitter.clamp(0.0, 1.0) * random.clamp(0.0, 1.0));
        (base + extra).min(self.max.max(self.min))
    }
}

impl Default for Backoff {
    /// Linkerd's retry backoff: 25 ms to 250 ms, half jitter.
    fn default() -> Self {
        Self {
            min: Duration::from_millis(25),
            max: Duration::from_millis(250),
            jitter: 0.5,
            respect_retry_after: false,
        }
    }
}

/// A route's timeouts (`http_route.Timeouts`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Timeouts {
    /// The whole request, retries included, from its start until its
    /// response ends: 504 / DEADLINE_EXCEEDED when it runs out.
    pub request: Option<Duration>,
    /// Each attempt on a backend, from the end of the request until the
    /// response ends (Linkerd's `response`; the backend request timeout).
    pub response: Option<Duration>,
    /// A stream with no frame in either direction for this long ends.
    pub idle: Option<Duration>,
}

/// What makes a failed attempt worth retrying.
#[derive(Clone, Debug, PartialEq)]
pub enum RetryOn {
    /// HTTP statuses, in inclusive ranges (e.g. `500..=599`).
    Http(Vec<RangeInclusive<u16>>),
    /// gRPC status codes (`grpc-status`), as a set of codes 0–16.
    Grpc(GrpcCodes),
}

/// A set of gRPC status codes (0–16).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrpcCodes(pub u32);

impl GrpcCodes {
    /// Whether `code` is in the set.
    pub fn contains(self, code: u32) -> bool {
        code < 32 && self.0 & (1 << code) != 0
    }

    /// The set with `code` added.
    pub fn with(self, code: u32) -> Self {
        if code < 32 {
            Self(self.0 | (1 << code))
        } else {
            self
        }
    }
}

/// A route's retries (`HttpRoute.Retry`, `GrpcRoute.Retry`).
#[derive(Clone, Debug, PartialEq)]
pub struct Retry {
    /// Retries after the first attempt (0: none).
    pub max_retries: u32,
    /// The largest request body buffered for replay; a larger one is
    /// sent once and never retried.
    pub max_request_bytes: u64,
    /// Which outcomes are retried (connection failures always are).
    pub on: RetryOn,
    /// Each attempt's own timeout; an attempt that runs out is retried.
    pub timeout: Option<Duration>,
    /// Between attempts.
    pub backoff: Option<Backoff>,
}

/// The default largest body buffered for replay: 64 KiB.
pub const DEFAULT_MAX_REQUEST_BYTES: u64 = 64 * 1024;

/// The cap on retries across a backend: Linkerd's profile semantics.
/// Retries are allowed while they stay within `ratio` of the requests of
/// the last `ttl`, plus `min_per_second` whatever the ratio.
#[derive(Clone, Debug, PartialEq)]
pub struct Budget {
    /// Extra load allowed, as a share of requests (0.2 = 20%).
    pub ratio: f64,
    /// Retries allowed per second even with no requests to earn them.
    pub min_per_second: u32,
    /// How long a request counts towards the budget.
    pub ttl: Duration,
}

impl Default for Budget {
    /// Linkerd's default budget: 20%, 10 per second, over 10 s.
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_second: 10,
            ttl: Duration::from_secs(10),
        }
    }
}

/// When an endpoint leaves the balancer (`FailureAccrual`).
#[derive(Clone, Debug, Default, PartialEq)]
pub enum FailureAccrual {
    /// Never.
    #[default]
    None,
    /// After `max_failures` failures in a row.
    Consecutive {
        /// Failures in a row that eject the endpoint.
        max_failures: u32,
        /// How long it stays out before a probe, growing while probes fail.
        backoff: Backoff,
    },
    /// When its success rate (an EWMA over `decay`) falls below
    /// `threshold` after at least `min_requests`, or after
    /// `max_consecutive` failures in a row (0: that rule off).
    SuccessRate {
        /// In `[0, 1]`; 0 turns this rule off.
        threshold: f64,
        /// The window of the moving average.
        decay: Duration,
        /// Requests seen before the rate may eject (a cold-start guard).
        min_requests: u32,
        /// Failures in a row that eject the endpoint (0: off).
        max_consecutive: u32,
        /// How long it stays out before a probe, growing while probes fail.
        backoff: Backoff,
    },
}

/// Failure accrual for a balancer, with its floor.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Accrual {
    /// The rule.
    pub kind: FailureAccrual,
    /// Never eject below this many ready endpoints (0: no floor).
    pub min_ready_endpoints: u32,
}

/// How a balancer estimates an endpoint's load (`BalanceP2c.load`).
#[derive(Clone, Debug, PartialEq)]
pub struct Load {
    /// The latency assumed for an endpoint before any is measured.
    pub default_rtt: Duration,
    /// The window of the latency average.
    pub decay: Duration,
    /// Backing off from endpoints that answer 429 or `Retry-After`
    /// (`PenaltyPeakEwma`), when set.
    pub penalty: Option<Penalty>,
}

impl Default for Load {
    /// Linkerd's defaults: 30 ms, over 10 s.
    fn default() -> Self {
        Self {
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
            penalty: None,
        }
    }
}

/// The penalty variant of PeakEWMA.
#[derive(Clone, Debug, PartialEq)]
pub struct Penalty {
    /// Latency added to an endpoint's load for a 429 (or `Retry-After`).
    pub penalty: Duration,
    /// The longest `Retry-After` honoured.
    pub max_retry_after: Duration,
    /// The window over which a penalty fades.
    pub decay: Duration,
}

/// The queue in front of a balancer (`Queue`).
#[derive(Clone, Debug, PartialEq)]
pub struct Queue {
    /// Requests waiting for an endpoint at most; more are shed (503).
    pub capacity: usize,
    /// How long the balancer may have no ready endpoint before the
    /// waiting requests fail (503 / UNAVAILABLE).
    pub failfast_timeout: Duration,
}

impl Default for Queue {
    /// Linkerd's defaults: 100 requests, 3 s.
    fn default() -> Self {
        Self {
            capacity: 100,
            failfast_timeout: Duration::from_secs(3),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_max() {
        let b = Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(1),
            jitter: 0.0,
            respect_retry_after: false,
        };
        assert_eq!(b.delay(0, 0.9), Duration::from_millis(100));
        assert_eq!(b.delay(2, 0.9), Duration::from_millis(400));
        assert_eq!(b.delay(10, 0.9), Duration::from_secs(1));
        assert_eq!(b.delay(u32::MAX, 0.9), Duration::from_secs(1));
        let j = Backoff { jitter: 1.0, ..b };
        assert_eq!(j.delay(0, 0.5), Duration::from_millis(150));
        assert_eq!(j.delay(9, 0.99), Duration::from_secs(1));
    }

    #[test]
    fn grpc_codes() {
        let c = GrpcCodes::default().with(14).with(4).with(99);
        assert!(c.contains(14) && c.contains(4));
        assert!(!c.contains(2) && !c.contains(99));
    }
}
