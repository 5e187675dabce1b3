//! A metric family whose series are leased to the handles that use them
//! and removed once idle: [`prometheus_client`]'s `Family`, plus eviction.

use super::{Bounds, Lease, Usage, due, idle, shrink};
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder},
    metrics::{MetricType, TypedMetric, family::MetricConstructor},
};
use std::{
    collections::HashMap,
    hash::Hash,
    sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard},
};

/// Series by label set; see [the module](super).
pub struct Family<S, M, C = fn() -> M> {
    table: Arc<RwLock<Table<S, M>>>,
    constructor: C,
    bounds: Bounds,
}

struct Table<S, M> {
    series: HashMap<S, Entry<M>>,
    last_sweep_ms: u64,
}

struct Entry<M> {
    metric: M,
    usage: Arc<Usage>,
}

/// One series' metric, kept from eviction while this (or a clone) lives.
#[derive(Debug)]
pub struct Series<M> {
    metric: M,
    _lease: Lease,
}

// === impl Family ===

impl<S, M, C> Family<S, M, C> {
    pub(super) fn new(bounds: Bounds, constructor: C) -> Self {
        Self {
            table: Arc::new(RwLock::new(Table {
                series: HashMap::new(),
                last_sweep_ms: 0,
            })),
            constructor,
            bounds,
        }
    }

    // A panic while holding the lock leaves a map that is still whole.
    fn read(&self) -> RwLockReadGuard<'_, Table<S, M>> {
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Table<S, M>> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The number of series.
    pub fn len(&self) -> usize {
        self.read().series.len()
    }

    /// Whether there are no series.
    pub fn is_empty(&self) -> bool {
        self.read().series.is_empty()
    }
}

impl<S: Hash + Eq, M, C> Family<S, M, C> {
    /// Removes the series that have been idle for the idle timeout.
    pub fn sweep(&self) {
        let now = self.bounds.now_ms();
        self.write().sweep(now, self.bounds.idle_ms());
    }
}

impl<S: Clone + Hash + Eq, M: Clone, C: MetricConstructor<M>> Family<S, M, C> {
    /// The series of `labels`, created if new, leased to the caller.
    pub fn get(&self, labels: &S) -> Series<M> {
        if let Some(e) = self.read().series.get(labels) {
            return e.lease();
        }
        let mut table = self.write();
        let now = self.bounds.now_ms();
        let idle_ms = self.bounds.idle_ms();
        if !table.series.contains_key(labels) && due(table.last_sweep_ms, now, idle_ms) {
            table.sweep(now, idle_ms);
        }
        table
            .series
            .entry(labels.clone())
            .or_insert_with(|| Entry {
                metric: self.constructor.new_metric(),
                usage: Usage::new(&self.bounds, now),
            })
            .lease()
    }
}

impl<S: Hash + Eq, M> Table<S, M> {
    fn sweep(&mut self, now_ms: u64, idle_ms: u64) {
        self.last_sweep_ms = now_ms;
        self.series.retain(|_, e| !idle(&e.usage, now_ms, idle_ms));
        shrink(&mut self.series);
    }
}

impl<M: Clone> Entry<M> {
    fn lease(&self) -> Series<M> {
        Series {
            metric: self.metric.clone(),
            _lease: Lease(self.usage.clone()),
        }
    }
}

impl<S, M, C: Clone> Clone for Family<S, M, C> {
    fn clone(&self) -> Self {
        Self {
            table: self.table.clone(),
            constructor: self.constructor.clone(),
            bounds: self.bounds.clone(),
        }
    }
}

impl<S, M, C> std::fmt::Debug for Family<S, M, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Family")
            .field("series", &self.len())
            .finish_non_exhaustive()
    }
}

impl<S, M: TypedMetric, C> TypedMetric for Family<S, M, C> {
    const TYPE: MetricType = M::TYPE;
}

impl<S, M, C> EncodeMetric for Family<S, M, C>
where
    S: EncodeLabelSet + Hash + Eq,
    M: EncodeMetric + TypedMetric,
{
    /// Sweeps, then encodes what is left: a scrape never shows a series
    /// past its idle timeout.
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        self.sweep();
        let table = self.read();
        for (labels, entry) in &table.series {
            entry.metric.encode(encoder.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }
}

// === impl Series ===

impl<M> std::ops::Deref for Series<M> {
    type Target = M;

    fn deref(&self) -> &M {
        &self.metric
    }
}

impl<M: Clone> Clone for Series<M> {
    fn clone(&self) -> Self {
        Self {
            metric: self.metric.clone(),
            _lease: self._lease.clone(),
        }
    }
}
