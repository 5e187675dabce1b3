//! The mesh file in force, re-read when it changes, with the services
//! discovery found beside it. Every watch streams from a
//! [`tokio::sync::watch`] of the two together; a file that fails to
//! validate is logged and counted, and the last good one stays in force.

use crate::{Metrics, config::Mesh, discovered::Discovered};
use futures_util::{Stream, stream};
use std::{
    collections::VecDeque,
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    time::{Duration, SystemTime},
};
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

    /// Puts `mesh` in force, with the services discovered so far; every
    /// watch sees it.
    pub fn replace(&self, mut mesh: Mesh) {
        self.tx.send_if_modified(|cur| {
            mesh.discovered = cur.discovered.clone();
            if **cur == mesh {
                false
            } else {
                *cur = Arc::new(mesh);
                true
            }
        });
    }

    /// Puts `discovered` in force beside the file; every watch sees it.
    pub fn set_discovered(&self, discovered: Arc<Discovered>) {
        self.tx.send_if_modified(|cur| {
            if cur.discovered == discovered {
                return false;
            }
            let mut mesh = Mesh::clone(cur);
            mesh.discovered = discovered;
            *cur = Arc::new(mesh);
            true
        });
    }

    /// Whether `file` is the file in force (whatever was discovered).
    fn is_in_force(&self, file: &Mesh) -> bool {
        let cur = self.current();
        let file = Mesh {
            discovered: cur.discovered.clone(),
            ..file.clone()
        };
        *cur == file
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<Mesh>> {
        self.tx.subscribe()
    }

    /// Looks at `path` every `interval` and puts each valid change in
    /// force; runs until dropped.
    ///
    /// Nothing here blocks the runtime: the file's metadata and text are
    /// read with `tokio::fs`, and it is validated (which reads token
    /// files) on the blocking pool. The text is read only when the
    /// modification time or length moved, or while the modification time
    /// is recent: file times are coarse (a few milliseconds), so two
    /// writes of the same length in one tick would otherwise look alike.
    pub async fn follow(self, path: PathBuf, interval: Duration, metrics: Metrics) {
        // Nothing is taken as read: the file may have changed since the
        // mesh in force was loaded from it. What the first look finds is
        // a reload only if it differs from that mesh.
        let (mut stamp, mut last, mut first) = (None, None, true);
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let now = Stamp::of(&path).await;
            if now == stamp && !now.as_ref().is_some_and(Stamp::is_recent) {
                continue;
            }
            stamp = now;
            let text = tokio::fs::read(&path).await.ok();
            if text == last {
                continue;
            }
            last = text;
            let load = {
                let path = path.clone();
                tokio::task::spawn_blocking(move || Mesh::load(&path))
            };
            let initial = std::mem::take(&mut first);
            match load.await {
                Ok(Ok(mesh)) if initial && self.is_in_force(&mesh) => {}
                Ok(Ok(mesh)) => {
                    tracing::info!(path = %path.display(), "mesh file reloaded");
                    metrics.reloaded(true);
                    self.replace(mesh);
                }
                Ok(Err(error)) => {
                    tracing::error!(path = %path.display(), %error, "mesh file rejected; the last good one stays in force");
                    metrics.reloaded(false);
                }
                Err(error) => {
                    tracing::error!(path = %path.display(), %error, "mesh file reload failed; the last good one stays in force");
                    metrics.reloaded(false);
                }
            }
        }
    }
}

/// What says a file may have changed: its modification time and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: SystemTime,
    len: u64,
}

impl Stamp {
    async fn of(path: &std::path::Path) -> Option<Self> {
        let meta = tokio::fs::metadata(path).await.ok()?;
        Some(Self {
            modified: meta.modified().ok()?,
            len: meta.len(),
        })
    }

    /// Modified so recently that a later write could share its time.
    fn is_recent(&self) -> bool {
        SystemTime::now()
            .duration_since(self.modified)
            .map_or(true, |age| age < Duration::from_secs(2))
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
