//! The mesh file in force, re-read when it changes. Every watch streams
//! from a [`tokio::sync::watch`] of it; a file that fails to validate is
//! logged and counted, and the last good one stays in force.

use crate::{Metrics, config::Mesh};
use futures_util::{Stream, stream};
use std::{collections::VecDeque, path::PathBuf, pin::Pin, sync::Arc, time::Duration};
use tokio::sync::watch;

/// The current mesh, shared by every service.
#[derive(Clone, Debug)]
pub struct Store {
    tx: Arc<watch::Sender<Arc<Mesh>>>,
}

impl Store {
    /// A store holding `mesh`.
    pub fn new(mesh: Mesh) -> Self {
        Self {
            tx: Arc::new(watch::Sender::new(Arc::new(mesh))),
        }
    }

    /// The mesh in force.
    pub fn current(&self) -> Arc<Mesh> {
        self.tx.borrow().clone()
    }

    /// Puts `mesh` in force; every watch sees it.
    pub fn replace(&self, mesh: Mesh) {
        self.tx.send_if_modified(|cur| {
            if **cur == mesh {
                false
            } else {
                *cur = Arc::new(mesh);
                true
            }
        });
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<Mesh>> {
        self.tx.subscribe()
    }

    /// Re-reads `path` every `interval` and puts each valid change in
    /// force; runs until dropped.
    pub async fn follow(self, path: PathBuf, interval: Duration, metrics: Metrics) {
        let mut last = std::fs::read(&path).ok();
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let now = std::fs::read(&path).ok();
            if now == last {
                continue;
            }
            last = now;
            match Mesh::load(&path) {
                Ok(mesh) => {
                    tracing::info!(path = %path.display(), "mesh file reloaded");
                    metrics.reloaded(true);
                    self.replace(mesh);
                }
                Err(error) => {
                    tracing::error!(path = %path.display(), %error, "mesh file rejected; the last good one stays in force");
                    metrics.reloaded(false);
                }
            }
        }
    }
}

/// A boxed stream of messages.
pub(crate) type Messages<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send>>;

/// A stream of the messages `step` derives from each mesh in force: the
/// current one at once, then every change. `step` keeps what it already
/// sent in `state`, so it can send only differences.
pub(crate) fn follow<S, T, F>(
    rx: watch::Receiver<Arc<Mesh>>,
    state: S,
    step: F,
    guard: crate::metrics::WatchGuard,
) -> Messages<T>
where
    S: Send + 'static,
    T: Send + 'static,
    F: FnMut(&Mesh, &mut S) -> Vec<T> + Send + 'static,
{
    struct Follow<S, F, T> {
        rx: watch::Receiver<Arc<Mesh>>,
        state: S,
        step: F,
        queue: VecDeque<T>,
        first: bool,
        _guard: crate::metrics::WatchGuard,
    }
    let f = Follow {
        rx,
        state,
        step,
        queue: VecDeque::new(),
        first: true,
        _guard: guard,
    };
    Box::pin(stream::unfold(f, |mut f| async move {
        loop {
            if let Some(m) = f.queue.pop_front() {
                return Some((Ok(m), f));
            }
            if !f.first && f.rx.changed().await.is_err() {
                return None;
            }
            f.first = false;
            let mesh = f.rx.borrow_and_update().clone();
            let msgs = (f.step)(&mesh, &mut f.state);
            f.queue.extend(msgs);
        }
    }))
}

/// A stream of `value(mesh)` whenever it changes.
pub(crate) fn changes<T, F>(
    rx: watch::Receiver<Arc<Mesh>>,
    mut value: F,
    guard: crate::metrics::WatchGuard,
) -> Messages<T>
where
    T: Clone + PartialEq + Send + 'static,
    F: FnMut(&Mesh) -> T + Send + 'static,
{
    follow(
        rx,
        None::<T>,
        move |mesh, last| {
            let v = value(mesh);
            if last.as_ref() == Some(&v) {
                return Vec::new();
            }
            *last = Some(v.clone());
            vec![v]
        },
        guard,
    )
}
