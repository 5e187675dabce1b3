//! Graceful shutdown: stop accepting, let connections finish, then force-close.
//!
//! The process holds one [`Signal`]; every accept loop and every connection
//! task holds a [`Watch`] clone. Shutdown is two steps:
//!
//! 1. *draining*: [`Watch::draining`] resolves. Accept loops stop accepting
//!    and close their listeners, so new connections are refused; connections
//!    already open carry on.
//! 2. *closing*: when the grace period ends with connections still open,
//!    [`Watch::closing`] resolves and each connection task closes its
//!    sockets.
//!
//! [`Signal::drain`] returns once every `Watch` has been dropped, which is
//! how the process knows that all connections are done.

use std::time::Duration;
use tokio::sync::watch;

/// How long connection tasks get, after the grace period, to notice that
/// they must close before [`Signal::drain`] gives up waiting for them.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum State {
    Running,
    Draining,
    Closing,
}

/// Starts a drain, held by whoever owns the process's lifetime.
#[derive(Debug)]
pub struct Signal {
    tx: watch::Sender<State>,
}

/// Held by every accept loop and connection task; dropping it tells the
/// [`Signal`] that the holder is finished.
#[derive(Clone, Debug)]
pub struct Watch {
    rx: watch::Receiver<State>,
}

/// How a drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drained {
    /// Every holder finished within the grace period.
    Clean,
    /// The grace period ended first; this many holders were told to close.
    Forced {
        /// Holders still open when the grace period ended.
        remaining: usize,
    },
}

/// A new drain signal and its first watch.
pub fn channel() -> (Signal, Watch) {
    let (tx, rx) = watch::channel(State::Running);
    (Signal { tx }, Watch { rx })
}

// === impl Signal ===

impl Signal {
    /// Starts draining and waits until every [`Watch`] is dropped, for up
    /// to `grace`; then tells the remaining holders to close and waits a
    /// moment more for them.
    pub async fn drain(self, grace: Duration) -> Drained {
        self.tx.send_replace(State::Draining);
        if tokio::time::timeout(grace, self.tx.closed()).await.is_ok() {
            return Drained::Clean;
        }
        let remaining = self.tx.receiver_count();
        self.tx.send_replace(State::Closing);
        let _ = tokio::time::timeout(CLOSE_WAIT, self.tx.closed()).await;
        Drained::Forced { remaining }
    }

    /// Whether a drain has started (some other handle may still be running
    /// [`Signal::drain`]; this is for status reporting only).
    pub fn is_draining(&self) -> bool {
        *self.tx.borrow() >= State::Draining
    }
}

// === impl Watch ===

impl Watch {
    /// Resolves once draining has started: stop accepting new work.
    pub async fn draining(&mut self) {
        self.wait_for(State::Draining).await
    }

    /// Resolves once the grace period has ended: close what is still open.
    pub async fn closing(&mut self) {
        self.wait_for(State::Closing).await
    }

    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        *self.rx.borrow() >= State::Draining
    }

    async fn wait_for(&mut self, state: State) {
        // An error means the Signal was dropped without draining: the process
        // is going away, which is as final as a drain.
        let _ = self.rx.wait_for(|s| *s >= state).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn clean_when_watches_drop_in_time() {
        let (signal, mut watch) = channel();
        let task = tokio::spawn(async move {
            watch.draining().await;
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(watch);
        });
        assert_eq!(signal.drain(Duration::from_secs(10)).await, Drained::Clean);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn forced_after_grace_period() {
        let (signal, mut watch) = channel();
        let task = tokio::spawn(async move {
            watch.draining().await;
            assert!(watch.is_draining());
            // Ignores draining; only closes when told to.
            watch.closing().await;
        });
        let drained = signal.drain(Duration::from_secs(10)).await;
        assert_eq!(drained, Drained::Forced { remaining: 1 });
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_signal_releases_watches() {
        let (signal, mut watch) = channel();
        drop(signal);
        watch.closing().await;
    }
}
