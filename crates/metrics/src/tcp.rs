//! TCP connection metrics, with Linkerd's names and labels.
//!
//! Each proxied connection has two sides: `peer="src"` is the accepted
//! connection (the client), `peer="dst"` the connection the proxy opened to
//! the target. Byte counters are shared handles that the transport bumps as
//! bytes move, so a long-lived connection's traffic shows up while it is
//! still open.

use crate::{AddrLabel, Direction};
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
    pub sni: Option<Arc<str>>,
    /// The client's verified mesh identity (inbound, mTLS).
    pub client_id: Option<Arc<str>>,
    /// The server's verified mesh identity (outbound, mTLS).
    pub server_id: Option<Arc<str>>,
    /// The original destination the connection was for.
    pub target_addr: AddrLabel,
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

/// The TCP metric families.
#[derive(Clone, Debug, Default)]
pub struct TcpMetrics {
    open_total: Family<TcpLabels, Counter>,
    open_connections: Family<TcpLabels, Gauge>,
    close_total: Family<TcpCloseLabels, Counter>,
    read_bytes_total: Family<TcpLabels, Counter>,
    write_bytes_total: Family<TcpLabels, Counter>,
    accept_errors_total: Family<AcceptErrorLabels, Counter>,
    detect_total: Family<DetectLabels, Counter>,
}

/// The metrics of one open connection side: counts it open now and closed
/// when [`ConnMetrics::close`] is called (or, failing that, when dropped).
#[derive(Debug)]
pub struct ConnMetrics {
    metrics: TcpMetrics,
    labels: TcpLabels,
    /// Bytes read from this side's socket.
    pub read_bytes: Counter,
    /// Bytes written to this side's socket.
    pub write_bytes: Counter,
    closed: bool,
}

// === impl TcpMetrics ===

impl TcpMetrics {
    /// Creates the families and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
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
        m
    }

    /// Counts a protocol detection: what was found (`http/1`, `http/2`,
    /// `tls`, `opaque`) and how (`matched`, `timeout`, `eof`,
    /// `buffer_full`, or `skipped` for ports configured to skip it).
    pub fn detected(&self, direction: Direction, protocol: &'static str, reason: &'static str) {
        self.detect_total
            .get_or_create(&DetectLabels {
                direction,
                protocol,
                reason,
            })
            .inc();
    }

    /// Counts a failed `accept`.
    pub fn accept_error(&self, direction: Direction, error: &std::io::Error) {
        self.accept_errors_total
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
        let labels = TcpLabels {
            direction,
            peer,
            tls: tls.status,
            sni: tls.sni.clone(),
            client_id: match direction {
                Direction::Inbound => tls.peer_id.clone(),
                Direction::Outbound => None,
            },
            server_id: match direction {
                Direction::Outbound => tls.peer_id.clone(),
                Direction::Inbound => None,
            },
            target_addr: AddrLabel(target),
        };
        self.open_total.get_or_create(&labels).inc();
        self.open_connections.get_or_create(&labels).inc();
        ConnMetrics {
            read_bytes: self.read_bytes_total.get_or_create_owned(&labels),
            write_bytes: self.write_bytes_total.get_or_create_owned(&labels),
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
        self.metrics
            .open_connections
            .get_or_create(&self.labels)
            .dec();
        self.metrics
            .close_total
            .get_or_create(&TcpCloseLabels {
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

    #[test]
    fn counts_open_close_and_bytes() {
        let mut registry = Registry::default();
        let tcp = TcpMetrics::register(&mut registry);
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
        let tcp = TcpMetrics::register(&mut registry);
        let target: SocketAddr = "10.0.0.1:80".parse().unwrap();
        drop(tcp.open(Direction::Inbound, Peer::Src, &disabled(), target));
        let text = crate::encode(&registry);
        assert!(text.contains(r#"error="dropped",errno=""} 1"#), "{text}");
        assert!(text.contains(r#"tcp_open_connections{direction="inbound",peer="src",tls="disabled",sni="",client_id="",server_id="",target_addr="10.0.0.1:80"} 0"#));
    }
}
