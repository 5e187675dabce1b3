//! One endpoint's failure-accrual state: what its outcomes add up to, and
//! whether it is in rotation, ejected, or being probed.
//!
//! Pure bookkeeping, no I/O and no clock of its own: the gate and the
//! responses it tracks call [`State::observe`] with the time and a random
//! number, which keeps the rules testable on their own.

use crate::params::{Backoff, FailureAccrual};
use std::{task::Waker, time::Duration};
use tokio::time::Instant;

/// Where an endpoint stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    /// Taking requests; outcomes count.
    InRotation,
    /// Out of rotation until `until`, then it may take one probe.
    Ejected { until: Instant },
    /// Its backoff passed: ready for exactly one probe request.
    ProbeReady,
    /// The probe is in flight: not ready until it ends.
    ProbeInFlight,
}

/// How one response ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// It ended well.
    Success,
    /// An error, a 5xx, or a gRPC status other than OK; with the delay a
    /// `Retry-After` header asked for, if any.
    Failure { retry_after: Option<Duration> },
    /// It was dropped before its outcome was known (the caller went away).
    Unknown,
}

/// What an outcome changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Transition {
    /// Nothing worth telling.
    None,
    /// Taken out of rotation for this long.
    Ejected(Duration),
    /// Its probe failed: out again, for this (longer) while.
    ProbeFailed(Duration),
    /// Its probe succeeded: back in rotation.
    Restored,
    /// The rule tripped, but the floor of ready endpoints kept it in.
    Kept,
}

/// One endpoint's state (behind the gate's lock).
#[derive(Debug)]
pub(super) struct State {
    pub(super) mode: Mode,
    /// Failures in a row while in rotation.
    consecutive: u32,
    /// The success rate, for the success-rate rule.
    rate: SuccessRate,
    /// Ejections in a row (probes that failed, plus the first): the
    /// backoff's exponent.
    ejections: u32,
    /// The gate's task, woken when a probe ends (it waits for nothing
    /// else that is not a timer of its own).
    pub(super) waker: Option<Waker>,
    /// The gate was dropped (its endpoint removed): later outcomes of its
    /// requests must not touch the balancer's counts.
    pub(super) removed: bool,
}

/// A success rate that forgets exponentially over a window: the sums of
/// successes and of outcomes, each decayed by `exp(-elapsed / decay)`.
/// Unlike a per-sample EWMA, outcomes that arrive at the same instant all
/// count equally.
#[derive(Debug)]
struct SuccessRate {
    successes: f64,
    total: f64,
    updated: Instant,
    /// Outcomes seen since the last reset (the cold-start guard).
    seen: u32,
}

// === impl State ===

impl State {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            mode: Mode::InRotation,
            consecutive: 0,
            rate: SuccessRate::new(now),
            ejections: 0,
            waker: None,
            removed: false,
        }
    }

    /// Counts `outcome` (of a probe, when `probe`) under `rule`.
    /// `try_eject` asks the balancer's floor whether this endpoint may
    /// leave; `random` in `[0, 1)` jitters the backoff.
    pub(super) fn observe(
        &mut self,
        rule: &FailureAccrual,
        outcome: Outcome,
        probe: bool,
        now: Instant,
        random: f64,
        try_eject: impl FnOnce() -> bool,
    ) -> Transition {
        if probe {
            return match outcome {
                Outcome::Success => {
                    self.mode = Mode::InRotation;
                    self.ejections = 0;
                    self.consecutive = 0;
                    self.rate = SuccessRate::new(now);
                    Transition::Restored
                }
                Outcome::Failure { retry_after } => {
                    let delay = self.backoff(rule, retry_after, random);
                    self.mode = Mode::Ejected { until: now + delay };
                    Transition::ProbeFailed(delay)
                }
                Outcome::Unknown => {
                    // The probe told us nothing; admit another.
                    self.mode = Mode::ProbeReady;
                    Transition::None
                }
            };
        }
        if self.mode != Mode::InRotation {
            // A request sent before the ejection: its news is stale.
            return Transition::None;
        }
        let retry_after = match outcome {
            Outcome::Unknown => return Transition::None,
            Outcome::Success => {
                self.consecutive = 0;
                self.rate.observe(true, now, rule);
                return Transition::None;
            }
            Outcome::Failure { retry_after } => {
                self.consecutive = self.consecutive.saturating_add(1);
                self.rate.observe(false, now, rule);
                retry_after
            }
        };
        if !self.tripped(rule) {
            return Transition::None;
        }
        if !try_eject() {
            return Transition::Kept;
        }
        let delay = self.backoff(rule, retry_after, random);
        self.mode = Mode::Ejected { until: now + delay };
        Transition::Ejected(delay)
    }

    fn tripped(&self, rule: &FailureAccrual) -> bool {
        match *rule {
            FailureAccrual::None => false,
            FailureAccrual::Consecutive { max_failures, .. } => {
                max_failures > 0 && self.consecutive >= max_failures
            }
            FailureAccrual::SuccessRate {
                threshold,
                min_requests,
                max_consecutive,
                ..
            } => {
                (max_consecutive > 0 && self.consecutive >= max_consecutive)
                    || (threshold > 0.0
                        && self.rate.seen >= min_requests
                        && self.rate.rate() < threshold)
            }
        }
    }

    /// The next ejection's length, counting it as one more in a row.
    fn backoff(
        &mut self,
        rule: &FailureAccrual,
        retry_after: Option<Duration>,
        random: f64,
    ) -> Duration {
        let Some(backoff) = backoff(rule) else {
            return Duration::ZERO;
        };
        let mut delay = backoff.delay(self.ejections, random);
        self.ejections = self.ejections.saturating_add(1);
        if let (true, Some(asked)) = (backoff.respect_retry_after, retry_after) {
            delay = delay.max(asked.min(backoff.max));
        }
        delay
    }
}

fn backoff(rule: &FailureAccrual) -> Option<&Backoff> {
    match rule {
        FailureAccrual::None => None,
        FailureAccrual::Consecutive { backoff, .. }
        | FailureAccrual::SuccessRate { backoff, .. } => Some(backoff),
    }
}

// === impl SuccessRate ===

impl SuccessRate {
    fn new(now: Instant) -> Self {
        Self {
            successes: 0.0,
            total: 0.0,
            updated: now,
            seen: 0,
        }
    }

    fn observe(&mut self, success: bool, now: Instant, rule: &FailureAccrual) {
        let FailureAccrual::SuccessRate { decay, .. } = *rule else {
            return;
        };
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        let keep = if decay.is_zero() {
            0.0
        } else {
            (-elapsed / decay.as_secs_f64()).exp()
        };
        self.successes = self.successes * keep + if success { 1.0 } else { 0.0 };
        self.total = self.total * keep + 1.0;
        self.updated = now;
        self.seen = self.seen.saturating_add(1);
    }

    fn rate(&self) -> f64 {
        if self.total > 0.0 {
            self.successes / self.total
        } else {
            1.0
        }
    }
}
