//! The local rate limit of an inbound HTTP server
//! (`HTTPLocalRateLimitPolicy`): checked per request after the route's
//! authorization admitted it, before the request goes to the
//! application. A refused request is answered 429 (gRPC:
//! RESOURCE_EXHAUSTED) with a `Retry-After`.
//!
//! Linkerd's semantics: `total` bounds every request to the server
//! together; `identity` bounds each client identity separately, every
//! unmeshed client sharing one bucket; an override gives the identities
//! it lists one bucket of their own limit (shared by them, as Linkerd
//! does) instead of the per-identity one. A request must pass both its
//! own bucket (identity or override) and the total one.
//!
//! Buckets are GCRA ([`governor`]) with a burst of one second's worth.
//! A request's own bucket is checked first: one refused there spends
//! nothing of the total (a client over its share does not eat the
//! others'). One refused by the total has spent its own token, which
//! governor cannot give back; that only shortens the client's burst while
//! the whole server is over its limit.
//!
//! The per-identity buckets are keyed by what peers present, so they are
//! bounded ([`MAX_RATE_LIMIT_KEYS`]): when full, a new identity shares
//! one overflow bucket, and the caller is told (`keys_full`). Idle
//! buckets are forgotten: a bucket unused for a second is full again, so
//! forgetting it loses nothing. (This is governor's `retain_recent`, done
//! by hand: governor's keyed store cannot tell whether a key is present
//! without inserting it, so it cannot be bounded.)

use super::Meta;
use governor::{
    Quota, RateLimiter, clock::Clock, middleware::NoOpMiddleware, nanos::Nanos,
    state::InMemoryState, state::NotKeyed,
};
use std::{
    collections::HashMap,
    fmt,
    num::NonZeroU32,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

/// How many identities get a bucket of their own at most.
pub const MAX_RATE_LIMIT_KEYS: usize = 4096;

/// How long a per-identity bucket may stay unused before it is forgotten:
/// a bucket of one second's burst is full again after a second.
const IDLE: Duration = Duration::from_secs(1);

/// How often, at most, idle buckets are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// A server's local rate limit, with its buckets. `PartialEq` compares
/// the configuration only (meta, limits, overrides), not the buckets.
pub struct LocalRateLimit {
    config: Config,
    clock: TokioClock,
    total: Option<Bucket>,
    identity: Option<PerIdentity>,
    /// Each overridden identity's bucket (one per override, shared by
    /// the identities it lists).
    overrides: HashMap<Arc<str>, Arc<Bucket>>,
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("rate limited: the {kind} limit of {rps} requests per second is used up")]
pub struct RateLimited {
    /// Which bucket refused it.
    pub kind: LimitKind,
    /// How long until that bucket admits a request again (the caller
    /// rounds it up to whole seconds for `Retry-After`:
    /// [`RateLimited::retry_after_secs`]).
    pub retry_after: Duration,
    /// That bucket's limit.
    pub rps: NonZeroU32,
    /// Whether the per-identity buckets were all taken, so that this
    /// client shared the overflow bucket.
    pub keys_full: bool,
}

/// Which bucket refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// The server's total.
    Total,
    /// The client identity's own (or the unmeshed clients' shared one).
    Identity,
    /// An override's.
    Override,
}

/// A request the limit admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admitted {
    /// Whether the per-identity buckets were all taken, so that this
    /// client shared the overflow bucket (the caller counts it).
    pub keys_full: bool,
}

/// The configuration, as the control plane gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Config {
    meta: Meta,
    total: Option<NonZeroU32>,
    identity: Option<NonZeroU32>,
    overrides: Vec<(Vec<Arc<str>>, NonZeroU32)>,
    max_keys: usize,
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Nanos>>;

/// One GCRA bucket and its limit.
struct Bucket {
    rps: NonZeroU32,
    limiter: Limiter,
}

/// The per-identity buckets.
struct PerIdentity {
    rps: NonZeroU32,
    clock: TokioClock,
    /// Every unmeshed client's.
    unmeshed: Bucket,
    /// The identities' past the bound.
    overflow: Bucket,
    keyed: Mutex<Keyed>,
}

struct Keyed {
    buckets: HashMap<Arc<str>, (Bucket, Nanos)>,
    last_sweep: Nanos,
}

/// Governor's clock over tokio's: the real monotonic clock, or paused
/// time in tests.
#[derive(Clone, Copy, Debug)]
struct TokioClock {
    start: tokio::time::Instant,
}

// === impl LocalRateLimit ===

impl LocalRateLimit {
    /// A limit: `total` for all requests together, `identity` for each
    /// client identity, and overrides giving the identities listed their
    /// own (shared) bucket instead. `None`: no such limit.
    pub fn new(
        meta: Meta,
        total: Option<NonZeroU32>,
        identity: Option<NonZeroU32>,
        overrides: Vec<(Vec<Arc<str>>, NonZeroU32)>,
    ) -> Self {
        Self::build(Config {
            meta,
            total,
            identity,
            overrides,
            max_keys: MAX_RATE_LIMIT_KEYS,
        })
    }

    /// The same limit with at most `n` per-identity buckets (fresh
    /// buckets).
    pub fn with_max_keys(self, n: usize) -> Self {
        Self::build(Config {
            max_keys: n,
            ..self.config
        })
    }

    fn build(config: Config) -> Self {
        let clock = TokioClock {
            start: tokio::time::Instant::now(),
        };
        let total = config.total.map(|rps| Bucket::new(rps, clock));
        let identity = config.identity.map(|rps| PerIdentity {
            rps,
            clock,
            unmeshed: Bucket::new(rps, clock),
            overflow: Bucket::new(rps, clock),
            keyed: Mutex::new(Keyed {
                buckets: HashMap::new(),
                last_sweep: clock.now(),
            }),
        });
        let mut overrides = HashMap::new();
        for (ids, rps) in &config.overrides {
            let bucket = Arc::new(Bucket::new(*rps, clock));
            for id in ids {
                overrides
                    .entry(id.clone())
                    .or_insert_with(|| bucket.clone());
            }
        }
        Self {
            config,
            clock,
            total,
            identity,
            overrides,
        }
    }

    /// The `HTTPLocalRateLimitPolicy` it comes from, for metric labels.
    pub fn meta(&self) -> &Meta {
        &self.config.meta
    }

    /// Checks (and spends) one request for a client with mesh identity
    /// `client_id` (`None`: not meshed).
    pub fn check(&self, client_id: Option<&str>) -> Result<Admitted, RateLimited> {
        let now = self.clock.now();
        let mut keys_full = false;
        let over = client_id.and_then(|id| self.overrides.get(id));
        let own = if let Some(bucket) = over {
            Some((bucket.check(now), bucket.rps, LimitKind::Override))
        } else if let Some(per) = &self.identity {
            let (result, full) = per.check(client_id, now, self.config.max_keys);
            keys_full = full;
            Some((result, per.rps, LimitKind::Identity))
        } else {
            None
        };
        if let Some((Err(retry_after), rps, kind)) = own {
            return Err(RateLimited {
                kind,
                retry_after,
                rps,
                keys_full,
            });
        }
        if let Some(total) = &self.total {
            total.check(now).map_err(|retry_after| RateLimited {
                kind: LimitKind::Total,
                retry_after,
                rps: total.rps,
                keys_full,
            })?;
        }
        Ok(Admitted { keys_full })
    }
}

impl PartialEq for LocalRateLimit {
    fn eq(&self, other: &Self) -> bool {
        self.config == other.config
    }
}

impl fmt::Debug for LocalRateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalRateLimit")
            .field("meta", &self.config.meta)
            .field("total", &self.config.total)
            .field("identity", &self.config.identity)
            .field("overrides", &self.config.overrides)
            .field("max_keys", &self.config.max_keys)
            .finish_non_exhaustive()
    }
}

// === impl PerIdentity ===

impl PerIdentity {
    /// Checks `id`'s bucket; also says whether the bound was hit.
    fn check(&self, id: Option<&str>, now: Nanos, max_keys: usize) -> (Result<(), Duration>, bool) {
        let Some(id) = id else {
            return (self.unmeshed.check(now), false);
        };
        let mut keyed = self.keyed.lock().unwrap_or_else(PoisonError::into_inner);
        keyed.sweep(now);
        if let Some((bucket, last)) = keyed.buckets.get_mut(id) {
            *last = now;
            return (bucket.check(now), false);
        }
        if keyed.buckets.len() >= max_keys {
            drop(keyed);
            return (self.overflow.check(now), true);
        }
        let bucket = Bucket::new(self.rps, self.clock);
        let result = bucket.check(now);
        keyed.buckets.insert(Arc::from(id), (bucket, now));
        (result, false)
    }
}

impl Keyed {
    /// Forgets the buckets idle for [`IDLE`], at most every
    /// [`SWEEP_EVERY`].
    fn sweep(&mut self, now: Nanos) {
        if since(now, self.last_sweep) < SWEEP_EVERY {
            return;
        }
        self.last_sweep = now;
        self.buckets.retain(|_, (_, last)| since(now, *last) < IDLE);
    }
}

fn since(now: Nanos, then: Nanos) -> Duration {
    Duration::from_nanos(now.as_u64().saturating_sub(then.as_u64()))
}

// === impl Bucket ===

impl Bucket {
    fn new(rps: NonZeroU32, clock: TokioClock) -> Self {
        Self {
            rps,
            limiter: RateLimiter::direct_with_clock(Quota::per_second(rps), clock),
        }
    }

    /// Spends a token, or says how long until one is there.
    fn check(&self, now: Nanos) -> Result<(), Duration> {
        self.limiter.check().map_err(|nu| nu.wait_time_from(now))
    }
}

// === impl RateLimited ===

impl RateLimited {
    /// `retry_after` in whole seconds, rounded up, at least 1: the
    /// `Retry-After` header's value.
    pub fn retry_after_secs(&self) -> u64 {
        let d = self.retry_after;
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
    }
}

// === impl LimitKind ===

impl LimitKind {
    /// `total`, `identity` or `override`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Total => "total",
            Self::Identity => "identity",
            Self::Override => "override",
        }
    }
}

impl fmt::Display for LimitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl TokioClock ===

impl Clock for TokioClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.start.elapsed())
    }
}

#[cfg(test)]
mod tests;
