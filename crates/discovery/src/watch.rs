//! Shared, reconnecting watches.
//!
//! One task per key drives a control-plane stream into a
//! [`tokio::sync::watch`] channel that every connection interested in the
//! key reads. When the stream fails, the task reconnects with jittered
//! exponential backoff while the last answer stays in force; when nobody
//! has read the channel for the idle timeout, the task ends and the entry
//! is dropped.

use crate::Metrics;
use std::{
    collections::HashMap,
    future::Future,
    hash::Hash,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::sync::watch;

/// Watches by key.
#[derive(Debug)]
pub(crate) struct Cache<K, V> {
    entries: Arc<Mutex<HashMap<K, watch::Sender<V>>>>,
}

impl<K, V> Clone for Cache<K, V> {
    fn clone(&self) -> Self {
        Self {
            entries: self.entries.clone(),
        }
    }
}

impl<K, V> Default for Cache<K, V> {
    fn default() -> Self {
        Self {
            entries: Default::default(),
        }
    }
}

/// Lets a watch's task remove its own entry once nobody reads it.
pub(crate) struct Evict<K, V> {
    cache: Cache<K, V>,
    key: K,
}

impl<K: Eq + Hash, V> Evict<K, V> {
    /// Removes the entry if `tx` has no readers; checked under the lock
    /// that new readers subscribe under, so none can slip in between.
    pub(crate) fn try_evict(&self, tx: &watch::Sender<V>) -> bool {
        let mut entries = self.cache.entries.lock().unwrap_or_else(|e| e.into_inner());
        if tx.receiver_count() > 0 {
            return false;
        }
        entries.remove(&self.key);
        true
    }
}

impl<K, V> Cache<K, V>
where
    K: Clone + Eq + Hash + Send + 'static,
    V: Send + Sync + 'static,
{
    /// The watch for `key`, starting its task with `spawn` if there is none.
    pub(crate) fn get(
        &self,
        key: &K,
        init: impl FnOnce() -> V,
        spawn: impl FnOnce(watch::Sender<V>, Evict<K, V>),
    ) -> watch::Receiver<V> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = entries.get(key) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(init());
        entries.insert(key.clone(), tx.clone());
        drop(entries);
        spawn(
            tx,
            Evict {
                cache: self.clone(),
                key: key.clone(),
            },
        );
        rx
    }

    /// How many watches are open.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Jittered exponential backoff, 100ms doubling to 10s.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(10);

    pub(crate) fn new() -> Self {
        Self { next: Self::MIN }
    }

    pub(crate) fn reset(&mut self) {
        self.next = Self::MIN;
    }

    /// The next wait: between half and all of the current step.
    pub(crate) fn next(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        let ms = u64::try_from(step.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::random_range(ms / 2..=ms))
    }
}

/// What a stream's task is told to do with each event.
pub(crate) trait Apply<M, V>: Send {
    /// A message; `first` when it is the first of a (re)opened stream,
    /// which carries the whole state rather than a change.
    fn message(&mut self, tx: &watch::Sender<V>, msg: M, first: bool);
    /// The stream failed (or could not open) with `status`.
    fn error(&mut self, _tx: &watch::Sender<V>, _status: &tonic::Status) {}
}

/// Drives streams opened by `open` into `tx` until nobody reads it for
/// `idle`.
pub(crate) async fn run<K, V, M, O, F>(
    api: &'static str,
    tx: watch::Sender<V>,
    evict: Evict<K, V>,
    idle: Duration,
    metrics: Metrics,
    mut open: O,
    mut apply: impl Apply<M, V>,
) where
    K: Eq + Hash,
    O: FnMut() -> F + Send,
    F: Future<Output = Result<tonic::Streaming<M>, tonic::Status>> + Send,
    M: Send,
{
    let gauge = metrics.watch_opened(api);
    let connected = metrics.connected(api);
    let idle_watch = async {
        let mut since: Option<Instant> = None;
        let mut ticks = tokio::time::interval(
            (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)),
        );
        loop {
            ticks.tick().await;
            if tx.receiver_count() > 0 {
                since = None;
                continue;
            }
            let s = *since.get_or_insert_with(Instant::now);
            if s.elapsed() >= idle && evict.try_evict(&tx) {
                return;
            }
        }
    };
    let work = async {
        let mut backoff = Backoff::new();
        let mut attempts = 0u64;
        loop {
            if attempts > 0 {
                metrics.reconnect(api);
            }
            attempts += 1;
            let status = match open().await {
                Ok(mut stream) => {
                    connected.inc();
                    let mut first = true;
                    let status = loop {
                        match stream.message().await {
                            Ok(Some(m)) => {
                                metrics.update(api);
                                apply.message(&tx, m, first);
                                first = false;
                                backoff.reset();
                            }
                            Ok(None) => {
                                break tonic::Status::unavailable(
                                    "the control plane ended the stream",
                                );
                            }
                            Err(status) => break status,
                        }
                    };
                    connected.dec();
                    status
                }
                Err(status) => status,
            };
            metrics.error(api, status.code());
            apply.error(&tx, &status);
            let wait = backoff.next();
            tracing::info!(api, code = ?status.code(), error = %status.message(), retry_in = ?wait, "control-plane watch failed; keeping the last answer and retrying");
            tokio::time::sleep(wait).await;
        }
    };
    tokio::select! {
        _ = idle_watch => {}
        _ = work => {}
    }
    gauge.dec();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_resets() {
        let mut b = Backoff::new();
        let first = b.next();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..20 {
            let d = b.next();
            assert!(d <= Duration::from_secs(10));
        }
        let late = b.next();
        assert!(late >= Duration::from_secs(5), "{late:?}");
        b.reset();
        assert!(b.next() <= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn shared_then_evicted_when_idle() {
        let cache: Cache<u32, u32> = Cache::default();
        let mut started = 0;
        let mut spawn = |tx: watch::Sender<u32>, evict: Evict<u32, u32>| {
            started += 1;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    if tx.receiver_count() == 0 && evict.try_evict(&tx) {
                        return;
                    }
                }
            });
        };
        let a = cache.get(&1, || 0, &mut spawn);
        let b = cache.get(&1, || 0, &mut spawn);
        assert_eq!(cache.len(), 1);
        drop((a, b));
        for _ in 0..100 {
            if cache.len() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(cache.len(), 0);
        let _c = cache.get(&1, || 0, &mut spawn);
        assert_eq!(started, 2);
    }
}
