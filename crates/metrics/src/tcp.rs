//! TCP connection metrics, with Linkerd's names and labels.
//!
//! Each proxied connection has two sides: `peer="src"` is the accepted
//! connection (the client), `peer="dst"` the connection the proxy opened to
//! the target. Byte counters are shared handles that the transport bumps as
//! bytes move, so a long-lived connection's traffic shows up while it is
//! still open.
//!
//! `sni`, `client_id`, `server_id` and `target_addr` are bounded
//! ([`crate::bounded`]): each connection side leases its values and series
//! while it is open; a series no connection has used for the idle timeout
//! is removed.

use crate::{
    AddrLabel, Direction,
    bounded::{self, Bounded, Bounds, LabelValues, Series, Text, Value},
};
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use std::{fmt::Write as _, net::SocketAddr, sync::Arc};

/// Which side of a proxied connection a metric describes.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Peer {
    /// The accepted connection: the client.
    Src,
    /// The connection to the target.
    Dst,
}

impl EncodeLabelValue for Peer {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Peer::Src => "src",
            Peer::Dst => "dst",
        })
    }
}

/// The label set of one side of a connection.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    /// Inbound or outbound.
    pub direction: Direction,
    /// Client side or target side.
    pub peer: Peer,
    /// The connection's TLS status: `disabled` until identity is
    /// configured; `opaque` for TLS the proxy passes through unread.
    pub tls: &'static str,
    /// The server name a passed-through TLS client asked for (SNI).
    pub sni: Option<Bounded<Text>>,
    /// The client's verified mesh identity (inbound, mTLS).
    pub client_id: Option<Bounded<Text>>,
    /// The server's verified mesh identity (outbound, mTLS).
    pub server_id: Option<Bounded<Text>>,
    /// The original destination the connection was for.
    pub target_addr: Bounded<AddrLabel>,
}

/// The label set of a protocol detection.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DetectLabels {
    direction: Direction,
    protocol: &'static str,
    reason: &'static str,
}

/// What a connection's TLS label says, and the SNI when passed through.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tls {
    /// The `tls` label value.
    pub status: &'static str,
    /// The SNI, for passed-through TLS.
    pub sni: Option<Arc<str>>,
    /// The peer's verified mesh identity: the client's inbound, the
    /// server's outbound.
    pub peer_id: Option<Arc<str>>,
}

impl Tls {
    /// No TLS: identity is not configured.
    pub const DISABLED: Tls = Tls {
        status: "disabled",
        sni: None,
        peer_id: None,
    };

    /// Mesh mTLS with a peer whose identity was verified (if it showed
    /// one).
    pub fn mesh(peer_id: Option<Arc<str>>) -> Tls {
        Tls {
            status: "true",
            sni: None,
            peer_id,
        }
    }
}

/// The label set of a closed connection: why it closed, when it failed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpCloseLabels {
    #[prometheus(flatten)]
    conn: TcpLabels,
    /// Our reason class (`connect_refused`, `connect_timeout`, `loop`,
    /// `io`, `shutdown`, ...); empty for a clean close.
    error: &'static str,
    /// The OS error, as Linkerd reports it (`ECONNRESET`); empty when none.
    errno: Errno,
}

/// An OS error number as a label value: its symbolic name when known.
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq)]
pub struct Errno(pub Option<i32>);

impl EncodeLabelValue for Errno {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        match self.0 {
            None => Ok(()),
            Some(n) => match errno_name(n) {
                Some(name) => encoder.write_str(name),
                None => write!(encoder, "{n}"),
            },
        }
    }
}

/// The names of the errors a proxied connection is likely to meet.
fn errno_name(n: i32) -> Option<&'static str> {
    Some(match n {
        1 => "EPERM",
        11 => "EAGAIN",
        13 => "EACCES",
        23 => "ENFILE",
        24 => "EMFILE",
        32 => "EPIPE",
        98 => "EADDRINUSE",
        99 => "EADDRNOTAVAIL",
        100 => "ENETDOWN",
        101 => "ENETUNREACH",
        103 => "ECONNABORTED",
        104 => "ECONNRESET",
        105 => "ENOBUFS",
        107 => "ENOTCONN",
        110 => "ETIMEDOUT",
        111 => "ECONNREFUSED",
        113 => "EHOSTUNREACH",
        _ => return None,
    })
}

/// The label set of a failed accept.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AcceptErrorLabels {
    direction: Direction,
    errno: Errno,
}

/// Why a connection closed, for `tcp_close_total`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CloseReason {
    /// The reason class; empty for a clean close.
    pub error: &'static str,
    /// The OS error behind it, if any.
    pub errno: Option<i32>,
}

impl CloseReason {
    /// A clean close.
    pub const CLEAN: Self = Self {
        error: "",
        errno: None,
    };

    /// A failure of class `error`, with the OS error of `io` if it has one.
    pub fn error(error: &'static str, io: Option<&std::io::Error>) -> Self {
        Self {
            error,
            errno: io.and_then(|e| e.raw_os_error()),
        }
    }
}

/// The TCP metric families, cheap to clone.
#[derive(Clone, Debug)]
pub struct TcpMetrics(Arc<Families>);

#[derive(Debug)]
struct Families {
    open_total: bounded::Family<TcpLabels, Counter>,
    open_connections: bounded::Family<TcpLabels, Gauge>,
    close_total: bounded::Family<TcpCloseLabels, Counter>,
    read_bytes_total: bounded::Family<TcpLabels, Counter>,
    write_bytes_total: bounded::Family<TcpLabels, Counter>,
    accept_errors_total: Family<AcceptErrorLabels, Counter>,
    detect_total: Family<DetectLabels, Counter>,
    sni: LabelValues<Text>,
    client_id: LabelValues<Text>,
    server_id: LabelValues<Text>,
    target_addr: LabelValues<AddrLabel>,
}

/// The metrics of one open connection side: counts it open now and closed
/// when [`ConnMetrics::close`] is called (or, failing that, when dropped).
/// While it lives, its series and label values are not evicted.
#[derive(Debug)]
pub struct ConnMetrics {
    metrics: TcpMetrics,
    labels: TcpLabels,
    /// Bytes read from this side's socket.
    pub read_bytes: Counter,
    /// Bytes written to this side's socket.
    pub write_bytes: Counter,
    open: Series<Gauge>,
    /// Leases on the other series and on the label values.
    _held: Held,
    closed: bool,
}

/// What an open connection side holds only to keep it from eviction.
#[derive(Debug)]
struct Held {
    _series: [Series<Counter>; 3],
    _target: Value<AddrLabel>,
    _sni: Option<Value<Text>>,
    _peer_id: Option<Value<Text>>,
}

// === impl TcpMetrics ===

impl TcpMetrics {
    /// Creates the families and registers them in `registry`; their
    /// peer-chosen labels are bounded by `bounds`.
    pub fn register(registry: &mut Registry, bounds: &Bounds) -> Self {
        let m = Families {
            open_total: bounds.family(),
            open_connections: bounds.family(),
            close_total: bounds.family(),
            read_bytes_total: bounds.family(),
            write_bytes_total: bounds.family(),
            accept_errors_total: Family::default(),
            detect_total: Family::default(),
            sni: bounds.values("tcp", "sni"),
            client_id: bounds.values("tcp", "client_id"),
            server_id: bounds.values("tcp", "server_id"),
            target_addr: bounds.values("tcp", "target_addr"),
        };
        registry.register(
            "tcp_open",
            "Total count of opened connections",
            m.open_total.clone(),
        );
        registry.register(
            "tcp_open_connections",
            "Number of currently-open connections",
            m.open_connections.clone(),
        );
        registry.register(
            "tcp_close",
            "Total count of closed connections",
            m.close_total.clone(),
        );
        registry.register(
            "tcp_read_bytes",
            "Total count of bytes read from peers",
            m.read_bytes_total.clone(),
        );
        registry.register(
            "tcp_write_bytes",
            "Total count of bytes written to peers",
            m.write_bytes_total.clone(),
        );
        registry.register(
            "tcp_accept_errors",
            "Total count of failures to accept a connection (such as running out of file descriptors)",
            m.accept_errors_total.clone(),
        );
        registry.register(
            "protocol_detect",
            "Total count of protocol detections, by outcome",
            m.detect_total.clone(),
        );
        Self(Arc::new(m))
    }

    /// Counts a protocol detection: what was found (`http/1`, `http/2`,
    /// `tls`, `opaque`) and how (`matched`, `timeout`, `eof`,
    /// `buffer_full`, or `skipped` for ports configured to skip it).
    pub fn detected(&self, direction: Direction, protocol: &'static str, reason: &'static str) {
        self.0
            .detect_total
            .get_or_create(&DetectLabels {
                direction,
                protocol,
                reason,
            })
            .inc();
    }

    /// Counts a failed `accept`.
    pub fn accept_error(&self, direction: Direction, error: &std::io::Error) {
        self.0
            .accept_errors_total
            .get_or_create(&AcceptErrorLabels {
                direction,
                errno: Errno(error.raw_os_error()),
            })
            .inc();
    }

    /// Counts a connection side as open and returns its handles.
    pub fn open(
        &self,
        direction: Direction,
        peer: Peer,
        tls: &Tls,
        target: SocketAddr,
    ) -> ConnMetrics {
        let m = &*self.0;
        let target = m.target_addr.get(target);
        let sni = tls.sni.as_deref().map(|s| m.sni.get(s));
        let ids = match direction {
            Direction::Inbound => &m.client_id,
            Direction::Outbound => &m.server_id,
        };
        let peer_id = tls.peer_id.as_deref().map(|id| ids.get(id));
        let peer_label = peer_id.as_ref().map(|v| v.label().clone());
        let labels = TcpLabels {
            direction,
            peer,
            tls: tls.status,
            sni: sni.as_ref().map(|v| v.label().clone()),
            client_id: peer_label
                .clone()
                .filter(|_| direction == Direction::Inbound),
            server_id: peer_label.filter(|_| direction == Direction::Outbound),
            target_addr: target.label().clone(),
        };
        let opened = m.open_total.get(&labels);
        opened.inc();
        let open = m.open_connections.get(&labels);
        open.inc();
        let read = m.read_bytes_total.get(&labels);
        let write = m.write_bytes_total.get(&labels);
        ConnMetrics {
            read_bytes: (*read).clone(),
            write_bytes: (*write).clone(),
            open,
            _held: Held {
                _series: [opened, read, write],
                _target: target,
                _sni: sni,
                _peer_id: peer_id,
            },
            metrics: self.clone(),
            labels,
            closed: false,
        }
    }

    /// Counts a connection side that closed without ever being open in the
    /// proxy's terms, such as a client refused before a target was chosen.
    pub fn refused(
        &self,
        direction: Direction,
        peer: Peer,
        tls: &Tls,
        target: SocketAddr,
        reason: CloseReason,
    ) {
        self.open(direction, peer, tls, target).close(reason);
    }
}

// === impl ConnMetrics ===

impl ConnMetrics {
    /// Records the close and why.
    pub fn close(mut self, reason: CloseReason) {
        self.record_close(reason);
    }

    fn record_close(&mut self, reason: CloseReason) {
        if std::mem::replace(&mut self.closed, true) {
            return;
        }
        self.open.dec();
        self.metrics
            .0
            .close_total
            .get(&TcpCloseLabels {
                conn: self.labels.clone(),
                error: reason.error,
                errno: Errno(reason.errno),
            })
            .inc();
    }
}

impl Drop for ConnMetrics {
    fn drop(&mut self) {
        // A task that ends without saying why (cancelled, or a bug) still
        // leaves the open-connections gauge right.
        self.record_close(CloseReason::error("dropped", None));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disabled() -> Tls {
        Tls::DISABLED
    }

    fn register(registry: &mut Registry) -> TcpMetrics {
        let bounds = Bounds::register(registry, Default::default());
        TcpMetrics::register(registry, &bounds)
    }

    #[test]
    fn counts_open_close_and_bytes() {
        let mut registry = Registry::default();
        let tcp = register(&mut registry);
        let target: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let conn = tcp.open(Direction::Outbound, Peer::Dst, &disabled(), target);
        conn.read_bytes.inc_by(10);
        conn.write_bytes.inc_by(7);
        let text = crate::encode(&registry);
        assert!(text.contains(r#"tcp_open_connections{direction="outbound",peer="dst",tls="disabled",sni="",client_id="",server_id="",target_addr="10.0.0.1:80"} 1"#), "{text}");
        conn.close(CloseReason::error(
            "io",
            Some(&std::io::Error::from_raw_os_error(104)),
        ));
        tcp.refused(
            Direction::Inbound,
            Peer::Src,
            &disabled(),
            target,
            CloseReason::error("loop", None),
        );
        tcp.accept_error(Direction::Inbound, &std::io::Error::from_raw_os_error(24));
        let text = crate::encode(&registry);
        for line in [
            r#"tcp_open_total{direction="outbound",peer="dst",tls="disabled",sni="",client_id="",server_id="",target_addr="10.0.0.1:80"} 1"#,
            r#"tcp_open_connections{direction="outbound",peer="dst",tls="disabled",sni="",client_id="",server_id="",target_addr="10.0.0.1:80"} 0"#,
            r#"tcp_read_bytes_total{direction="outbound",peer="dst",tls="disabled",sni="",client_id="",server_id="",target_addr="10.0.0.1:80"} 10"#,
            r#"tcp_write_bytes_total{direction="outbound",peer="dst",tls="disabled",sni="",client_id="",server_id="",target_addr="10.0.0.1:80"} 7"#,
            r#"tcp_close_total{direction="outbound",peer="dst",tls="disabled",sni="",client_id="",server_id="",target_addr="10.0.0.1:80",error="io",errno="ECONNRESET"} 1"#,
            r#"tcp_close_total{direction="inbound",peer="src",tls="disabled",sni="",client_id="",server_id="",target_addr="10.0.0.1:80",error="loop",errno=""} 1"#,
            r#"tcp_accept_errors_total{direction="inbound",errno="EMFILE"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn dropped_connection_is_closed_once() {
        let mut registry = Registry::default();
        let tcp = register(&mut registry);
        let target: SocketAddr = "10.0.0.1:80".parse().unwrap();
        drop(tcp.open(Direction::Inbound, Peer::Src, &disabled(), target));
        let text = crate::encode(&registry);
        assert!(text.contains(r#"error="dropped",errno=""} 1"#), "{text}");
        assert!(text.contains(r#"tcp_open_connections{direction="inbound",peer="src",tls="disabled",sni="",client_id="",server_id="",target_addr="10.0.0.1:80"} 0"#));
    }
}
