//! What the proxy knows of the client connection it serves: whether that
//! connection must end with a reset, and what its tunnels need.
//!
//! A stream that fails on one side is reset on the other; only a complete
//! stream ends cleanly. hyper closes a client connection with a FIN
//! whatever the reason, which for a close-delimited HTTP/1 response or an
//! upgraded connection would make a truncated stream look complete. So the
//! connection's owner (which holds its socket) wraps it so that it is
//! closed with a reset once the [`ResetFlag`] is set, and the proxy sets
//! the flag when a response body or a tunnel fails.

use linnet_core::drain;
use linnet_metrics::limits::LimitMetrics;
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

/// Set when the client connection must be reset, not closed, when it
/// ends. Clones share the flag.
#[derive(Clone, Debug, Default)]
pub struct ResetFlag(Arc<AtomicBool>);

impl ResetFlag {
    /// Marks the connection for a reset.
    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether the connection must be reset.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The client connection's settings for what outlives a request on it:
/// tunnels (upgrades and `CONNECT`).
#[derive(Clone, Debug)]
pub struct Connection {
    /// Set to reset the client connection when it ends.
    pub reset: ResetFlag,
    /// How long a tunnel may move no bytes (`TCP_IDLE_TIMEOUT`).
    pub tunnel_idle_timeout: Duration,
    /// Where tunnel ends and idle timeouts are counted.
    pub limits: LimitMetrics,
}

/// What [`crate::serve`] adds for the connection's lifetime.
#[derive(Clone, Debug)]
pub(crate) struct Serving {
    /// Tunnels hold a clone: the shutdown waits for them, and they are
    /// reset when its grace period ends.
    pub(crate) watch: drain::Watch,
    /// How long a body may move no data (`HTTP_BODY_IDLE_TIMEOUT`).
    pub(crate) body_idle_timeout: Duration,
    /// HTTP/1's request-head clock, stopped while a request is served.
    pub(crate) head_clock: Option<Arc<crate::head_clock::HeadClock>>,
}
