//! The limits that keep the proxy bounded by its configuration, and what
//! happened when one was hit:
//!
//! - `tcp_connection_limit_total`: connections a listener reset as soon as
//!   it accepted them, because it already had its `*_MAX_CONNECTIONS`
//!   open;
//! - `idle_timeout_total`: what was closed for being idle too long, by
//!   `kind`: `tcp` (opaque TCP, `TCP_IDLE_TIMEOUT`), `tunnel` (upgraded
//!   HTTP connections and `CONNECT`, the same setting), `http_connection`
//!   (an HTTP connection that started no request, `HTTP_IDLE_TIMEOUT`) and
//!   `http_body` (a request or response body that moved no data,
//!   `HTTP_BODY_IDLE_TIMEOUT`);
//! - `tunnel_close_total`: how upgraded connections (WebSocket, `CONNECT`)
//!   ended, by `reason`: `clean` (both sides closed), `client_failed` or
//!   `target_failed` (that side failed and the other was reset), `idle`,
//!   `shutdown` (still open at the end of the shutdown grace period: both
//!   sides reset).
//!
//! Every label has a fixed set of values.

use crate::Direction;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: Direction,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IdleLabels {
    direction: Direction,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TunnelLabels {
    direction: Direction,
    reason: &'static str,
}

/// What was closed for being idle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Idle {
    /// An opaque TCP connection.
    Tcp,
    /// An upgraded HTTP connection or a `CONNECT` tunnel.
    Tunnel,
    /// An HTTP connection that started no request.
    HttpConnection,
    /// An HTTP/1 request head that took longer than its timeout to arrive
    /// (counted from its first byte).
    HttpHeader,
    /// A request or response body that moved no data.
    HttpBody,
}

impl Idle {
    fn as_str(self) -> &'static str {
        match self {
            Idle::Tcp => "tcp",
            Idle::Tunnel => "tunnel",
            Idle::HttpConnection => "http_connection",
            Idle::HttpHeader => "http_header",
            Idle::HttpBody => "http_body",
        }
    }
}

/// How a tunnel ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TunnelEnd {
    /// Both sides closed cleanly.
    Clean,
    /// The client's side failed; the target's was reset.
    ClientFailed,
    /// The target's side failed; the client's was reset.
    TargetFailed,
    /// Idle too long: both reset.
    Idle,
    /// Still open when the shutdown grace period ended: both reset.
    Shutdown,
}

impl TunnelEnd {
    fn as_str(self) -> &'static str {
        match self {
            TunnelEnd::Clean => "clean",
            TunnelEnd::ClientFailed => "client_failed",
            TunnelEnd::TargetFailed => "target_failed",
            TunnelEnd::Idle => "idle",
            TunnelEnd::Shutdown => "shutdown",
        }
    }
}

/// The limit counters; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct LimitMetrics {
    connection_limit: Family<DirectionLabels, Counter>,
    idle: Family<IdleLabels, Counter>,
    tunnel_close: Family<TunnelLabels, Counter>,
}

impl LimitMetrics {
    /// Creates the families and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "tcp_connection_limit",
            "Total count of connections reset on accept because the listener already had its maximum open",
            m.connection_limit.clone(),
        );
        registry.register(
            "idle_timeout",
            "Total count of connections, tunnels and bodies closed for being idle longer than their timeout",
            m.idle.clone(),
        );
        registry.register(
            "tunnel_close",
            "Total count of upgraded HTTP connections and CONNECT tunnels closed, by how they ended",
            m.tunnel_close.clone(),
        );
        m
    }

    /// Counts a connection refused by a listener's connection limit.
    pub fn connection_limit(&self, direction: Direction) {
        self.connection_limit
            .get_or_create(&DirectionLabels { direction })
            .inc();
    }

    /// Counts something closed for being idle.
    pub fn idle(&self, direction: Direction, kind: Idle) {
        self.idle
            .get_or_create(&IdleLabels {
                direction,
                kind: kind.as_str(),
            })
            .inc();
    }

    /// Counts a tunnel's end.
    pub fn tunnel_closed(&self, direction: Direction, end: TunnelEnd) {
        self.tunnel_close
            .get_or_create(&TunnelLabels {
                direction,
                reason: end.as_str(),
            })
            .inc();
    }
}
