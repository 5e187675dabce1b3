//! Label values chosen by peers, at most [`super::Limits::max_values`] of
//! them at once per label; the rest are [`OVERFLOW`].

use super::{Bounds, Lease, MIN_SWEEP_MS, Sweep, Usage, due, idle, shrink};
use crate::AddrLabel;
use prometheus_client::{
    encoding::{EncodeLabelValue, LabelValueEncoder},
    metrics::counter::Counter,
};
use std::{
    borrow::Borrow,
    collections::HashMap,
    hash::Hash,
    net::SocketAddr,
    sync::{Arc, RwLock},
};

/// The value that stands for every value beyond the limit. No authority
/// (`<` is not a URI character), SNI, mesh identity or address can be it.
pub const OVERFLOW: &str = "<overflow>";

/// A peer's label value, or [`OVERFLOW`].
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum Bounded<T> {
    /// The value itself.
    Value(T),
    /// One of the values beyond the limit.
    Overflow,
}

/// Text from a peer as a label value: escaped as the text format requires
/// (`\\`, `\"`, `\n`), which `prometheus_client` leaves to us.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Text(pub Arc<str>);

/// The values one label has now; see [the module](super).
pub struct LabelValues<T> {
    table: Arc<RwLock<Table<T>>>,
    bounds: Bounds,
    overflows: Counter,
}

struct Table<T> {
    values: HashMap<T, Arc<Usage>>,
    last_sweep_ms: u64,
}

/// A resolved label value, kept from eviction while this (or a clone)
/// lives.
#[derive(Clone, Debug)]
pub struct Value<T> {
    label: Bounded<T>,
    _lease: Option<Lease>,
}

// === impl LabelValues ===

impl<T> LabelValues<T> {
    pub(super) fn new(bounds: Bounds, overflows: Counter) -> Self {
        Self {
            table: Arc::new(RwLock::new(Table {
                values: HashMap::new(),
                last_sweep_ms: 0,
            })),
            bounds,
            overflows,
        }
    }

    /// A handle the [`Bounds`] keep to sweep this table at each scrape.
    pub(super) fn sweeper(&self) -> std::sync::Weak<dyn Sweep>
    where
        T: Hash + Eq + Send + Sync + 'static,
    {
        let table: Arc<dyn Sweep> = self.table.clone();
        Arc::downgrade(&table)
    }

    /// The number of values held now.
    pub fn len(&self) -> usize {
        self.table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values
            .len()
    }

    /// Whether no value is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T: Clone + Hash + Eq> LabelValues<T> {
    /// `value`, or [`OVERFLOW`] when the label holds as many values as it
    /// may and `value` is not one of them.
    fn resolve<Q>(&self, value: &Q, owned: impl FnOnce(&Q) -> T) -> Value<T>
    where
        T: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let found = |table: &Table<T>| {
            table.values.get_key_value(value).map(|(v, usage)| Value {
                label: Bounded::Value(v.clone()),
                _lease: Some(Lease(usage.clone())),
            })
        };
        if let Some(v) = found(&self.table.read().unwrap_or_else(|e| e.into_inner())) {
            return v;
        }
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = found(&table) {
            return v;
        }
        let now = self.bounds.now_ms();
        let idle_ms = self.bounds.idle_ms();
        // A full table sweeps sooner, but at most every `MIN_SWEEP_MS`, so
        // that a flood of new values against a table of live ones costs a
        // lookup each, not a sweep each.
        let full = table.values.len() >= self.bounds.limits().max_values;
        if due(table.last_sweep_ms, now, idle_ms)
            || (full && now.saturating_sub(table.last_sweep_ms) >= MIN_SWEEP_MS)
        {
            table.sweep(now, idle_ms);
        }
        if table.values.len() >= self.bounds.limits().max_values {
            self.overflows.inc();
            return Value::overflow();
        }
        let v = owned(value);
        let usage = Usage::new(&self.bounds, now);
        table.values.insert(v.clone(), usage.clone());
        Value {
            label: Bounded::Value(v),
            _lease: Some(Lease(usage)),
        }
    }
}

impl<T: Hash + Eq> Table<T> {
    fn sweep(&mut self, now_ms: u64, idle_ms: u64) {
        self.last_sweep_ms = now_ms;
        self.values.retain(|_, usage| !idle(usage, now_ms, idle_ms));
        shrink(&mut self.values);
    }
}

impl<T: Hash + Eq + Send + Sync> Sweep for RwLock<Table<T>> {
    fn sweep(&self, now_ms: u64, idle_ms: u64) -> usize {
        let mut table = self.write().unwrap_or_else(|e| e.into_inner());
        table.sweep(now_ms, idle_ms);
        table.values.len()
    }
}

impl LabelValues<Text> {
    /// The value for `text`.
    pub fn get(&self, text: &str) -> Value<Text> {
        if text == OVERFLOW {
            // Not counted: it is not a new value, only one that looks like
            // ours; it must not make a second series with our labels.
            return Value::overflow();
        }
        self.resolve(text, |t| Text(Arc::from(t)))
    }
}

impl LabelValues<AddrLabel> {
    /// The value for `addr`.
    pub fn get(&self, addr: SocketAddr) -> Value<AddrLabel> {
        self.resolve(&AddrLabel(addr), |a| *a)
    }
}

impl<T> Clone for LabelValues<T> {
    fn clone(&self) -> Self {
        Self {
            table: self.table.clone(),
            bounds: self.bounds.clone(),
            overflows: self.overflows.clone(),
        }
    }
}

impl<T> std::fmt::Debug for LabelValues<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabelValues")
            .field("values", &self.len())
            .finish_non_exhaustive()
    }
}

// === impl Value ===

impl<T> Value<T> {
    fn overflow() -> Self {
        Self {
            label: Bounded::Overflow,
            _lease: None,
        }
    }

    /// The label value.
    pub fn label(&self) -> &Bounded<T> {
        &self.label
    }
}

// === impl Bounded ===

impl<T: EncodeLabelValue> EncodeLabelValue for Bounded<T> {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        match self {
            Bounded::Value(v) => v.encode(encoder),
            Bounded::Overflow => std::fmt::Write::write_str(encoder, OVERFLOW),
        }
    }
}

impl Bounded<Text> {
    /// Whether this is `text` itself (not [`OVERFLOW`]).
    pub fn is(&self, text: &str) -> bool {
        matches!(self, Bounded::Value(Text(v)) if &**v == text)
    }
}

// === impl Text ===

impl Borrow<str> for Text {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl EncodeLabelValue for Text {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        crate::write_escaped(encoder, &self.0)
    }
}
