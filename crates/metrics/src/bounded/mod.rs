//! Bounds on what peers can make the proxy remember through metric labels.
//!
//! Some label values are chosen by whoever is at the other end of a
//! connection: the `authority` a client sends, the `sni` of a ClientHello,
//! the address a client dials, a peer's mesh identity. Left alone, each new
//! value would add series that live for the life of the process. Here two
//! mechanisms bound them:
//!
//! - **Values** ([`LabelValues`]): each such label of each group of
//!   families (`tcp_*`, the HTTP families) holds at most
//!   [`Limits::max_values`] distinct values at once. A new value beyond
//!   that becomes [`OVERFLOW`] (`"<overflow>"`, which no authority, SNI,
//!   identity or address can be), and `metrics_label_overflow_total` counts
//!   it, once per resolution: per connection side for the `tcp_*` labels,
//!   per HTTP label set (a connection, or a request whose authority
//!   differs from its connection's previous one).
//! - **Series** ([`Family`]): a family whose label sets carry such values
//!   leases each series to the handles that count into it (a connection's
//!   [`crate::tcp::ConnMetrics`], an HTTP connection's
//!   [`crate::http::LabeledMetrics`]). A series no handle holds, untouched
//!   for [`Limits::idle_timeout`], is removed, and so is a value. A series
//!   in use is never removed. One that comes back after its removal starts
//!   counting from zero again, as Linkerd's do; Prometheus' `rate()` and
//!   `increase()` read that as a counter reset.
//!
//! Resolving a value or a series takes a read lock on its table (a write
//! lock when the table does not hold it: new, or overflowing) once per
//! connection and per change of authority, never per request.
//! `metrics_label_values` says how many values each label holds now.
//!
//! Idle entries are removed at each scrape (a family when it is encoded,
//! the value tables when `metrics_label_values` is), and, without
//! scrapes, when a new entry arrives and the last sweep is older than half
//! the idle timeout (or, for a full value table, 100 ms), so memory stays
//! bounded whether or not anyone scrapes. A table that a burst made grow
//! shrinks again once swept.

mod family;
mod values;

pub use self::{
    family::{Family, Series},
    values::{Bounded, LabelValues, OVERFLOW, Text, Value},
};
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder},
    metrics::{MetricType, counter::Counter, family::Family as PlainFamily, gauge::Gauge},
    registry::Registry,
};
use std::{
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// How many peer-chosen values a label may hold, and how long an unused
/// series is kept; from configuration (`METRICS_MAX_LABEL_VALUES`,
/// `METRICS_IDLE_TIMEOUT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Distinct values at once per label and family group; further ones
    /// are counted under [`OVERFLOW`].
    pub max_values: usize,
    /// How long a series (or value) that nothing holds is kept.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    /// 1000 values, 60 s: Linkerd evicts idle series after about a minute.
    fn default() -> Self {
        Self {
            max_values: 1000,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// The label set of `metrics_label_overflow_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OverflowLabels {
    /// The group of families (`tcp`, `http`).
    family: &'static str,
    /// The label whose values overflowed.
    label: &'static str,
}

/// What the bounded families and labels of one registry share: the
/// limits, the clock and the overflow counter.
#[derive(Clone, Debug)]
pub struct Bounds(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    limits: Limits,
    clock: Clock,
    overflows: PlainFamily<OverflowLabels, Counter>,
    /// The value tables, swept when `metrics_label_values` is encoded
    /// (each scrape).
    tables: Mutex<Vec<(OverflowLabels, Weak<dyn Sweep>)>>,
}

/// A table whose idle entries can be removed.
trait Sweep: Send + Sync {
    /// Removes the idle entries; returns how many are left.
    fn sweep(&self, now_ms: u64, idle_ms: u64) -> usize;
}

/// `metrics_label_values`, the number of values each bounded label holds;
/// encoding it first sweeps the value tables, so that a scrape frees the
/// values of evicted series too.
#[derive(Debug)]
struct ValuesMetric(Bounds);

// === impl Bounds ===

impl Bounds {
    /// Bounds with `limits`, registering `metrics_label_overflow_total`.
    pub fn register(registry: &mut Registry, limits: Limits) -> Self {
        Self::with_clock(registry, limits, Clock::system())
    }

    pub(crate) fn with_clock(registry: &mut Registry, limits: Limits, clock: Clock) -> Self {
        let bounds = Self(Arc::new(Shared {
            limits,
            clock,
            overflows: PlainFamily::default(),
            tables: Mutex::new(Vec::new()),
        }));
        registry.register(
            "metrics_label_overflow",
            "Total count of label values that were replaced by \"<overflow>\" because their label already had the most distinct values allowed",
            bounds.0.overflows.clone(),
        );
        registry.register(
            "metrics_label_values",
            "Number of distinct values a label whose values peers choose holds now",
            ValuesMetric(bounds.clone()),
        );
        bounds
    }

    /// The limits.
    pub fn limits(&self) -> Limits {
        self.0.limits
    }

    /// A family whose series are created with `M::default()`.
    pub fn family<S, M: Default>(&self) -> Family<S, M> {
        Family::new(self.clone(), M::default)
    }

    /// A family whose series are created by `constructor`.
    pub fn family_with<S, M, C>(&self, constructor: C) -> Family<S, M, C> {
        Family::new(self.clone(), constructor)
    }

    /// The value table of `label` in the families of `family`.
    pub fn values<T>(&self, family: &'static str, label: &'static str) -> LabelValues<T>
    where
        T: std::hash::Hash + Eq + Send + Sync + 'static,
    {
        let labels = OverflowLabels { family, label };
        let overflows = self.0.overflows.get_or_create_owned(&labels);
        let values = LabelValues::new(self.clone(), overflows);
        self.0
            .tables
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((labels, values.sweeper()));
        values
    }

    /// Sweeps the value tables that still exist; returns their labels and
    /// how many values each holds.
    fn sweep_values(&self) -> Vec<(OverflowLabels, usize)> {
        let (now, idle_ms) = (self.now_ms(), self.idle_ms());
        let mut tables = self.0.tables.lock().unwrap_or_else(|e| e.into_inner());
        tables.retain(|(_, t)| t.strong_count() > 0);
        tables
            .iter()
            .filter_map(|(labels, t)| Some((labels.clone(), t.upgrade()?.sweep(now, idle_ms))))
            .collect()
    }

    fn now_ms(&self) -> u64 {
        self.0.clock.now_ms()
    }

    fn idle_ms(&self) -> u64 {
        u64::try_from(self.0.limits.idle_timeout.as_millis()).unwrap_or(u64::MAX)
    }
}

impl EncodeMetric for ValuesMetric {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        for (labels, n) in self.0.sweep_values() {
            let gauge = Gauge::<i64>::default();
            gauge.set(i64::try_from(n).unwrap_or(i64::MAX));
            gauge.encode(encoder.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

/// Milliseconds since the clock's start: the system's monotonic clock, or
/// (in tests) one moved by hand.
#[derive(Clone, Debug)]
pub(crate) struct Clock(Arc<ClockKind>);

#[derive(Debug)]
enum ClockKind {
    System(Instant),
    #[cfg(test)]
    Manual(AtomicU64),
}

impl Clock {
    pub(crate) fn system() -> Self {
        Self(Arc::new(ClockKind::System(Instant::now())))
    }

    #[cfg(test)]
    pub(crate) fn manual() -> Self {
        Self(Arc::new(ClockKind::Manual(AtomicU64::new(0))))
    }

    #[cfg(test)]
    pub(crate) fn advance(&self, by: Duration) {
        if let ClockKind::Manual(ms) = &*self.0 {
            let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
            ms.fetch_add(by, Ordering::Relaxed);
        } else {
            panic!("only a manual clock can be moved");
        }
    }

    fn now_ms(&self) -> u64 {
        match &*self.0 {
            ClockKind::System(start) => {
                u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
            }
            #[cfg(test)]
            ClockKind::Manual(ms) => ms.load(Ordering::Relaxed),
        }
    }
}

/// The use of one table entry (a series or a value): the table holds one
/// reference and every [`Lease`] another, so the entry is in use while
/// more than one exists; `released_ms` says when a lease was last let go.
#[derive(Debug)]
struct Usage {
    released_ms: AtomicU64,
    bounds: Bounds,
}

impl Usage {
    fn new(bounds: &Bounds, now_ms: u64) -> Arc<Self> {
        Arc::new(Self {
            released_ms: AtomicU64::new(now_ms),
            bounds: bounds.clone(),
        })
    }
}

/// Whether an entry can go: no lease holds it and the last one was let go
/// at least the idle timeout ago. Called with the table's write lock held,
/// so no new lease can be taken meanwhile.
fn idle(usage: &Arc<Usage>, now_ms: u64, idle_ms: u64) -> bool {
    if Arc::strong_count(usage) > 1 {
        return false;
    }
    // Pairs with the release of the last lease's reference, which comes
    // after its `released_ms` store.
    std::sync::atomic::fence(Ordering::Acquire);
    now_ms.saturating_sub(usage.released_ms.load(Ordering::Relaxed)) >= idle_ms
}

/// Keeps a table entry from eviction while held, and records when it was
/// let go.
#[derive(Debug)]
struct Lease(Arc<Usage>);

impl Clone for Lease {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let now = self.0.bounds.now_ms();
        self.0.released_ms.fetch_max(now, Ordering::Relaxed);
    }
}

/// After a sweep: gives back what a burst made a table grow to, keeping
/// room to grow again, so that memory returns after the burst.
fn shrink<K: std::hash::Hash + Eq, V>(table: &mut std::collections::HashMap<K, V>) {
    if table.capacity() > 64 && table.len() * 4 < table.capacity() {
        table.shrink_to(table.len() * 2);
    }
}

/// The least time between two sweeps of a table that entries arrive in:
/// a sweep walks the whole table.
const MIN_SWEEP_MS: u64 = 100;

/// How often a table sweeps itself when entries arrive: every half idle
/// timeout (and at most every [`MIN_SWEEP_MS`]).
fn due(last_sweep_ms: u64, now_ms: u64, idle_ms: u64) -> bool {
    now_ms.saturating_sub(last_sweep_ms) >= (idle_ms / 2).max(MIN_SWEEP_MS)
}

#[cfg(test)]
mod tests;
