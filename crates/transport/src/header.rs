//! The transport header: how a meshed proxy tells the peer's inbound
//! proxy which local port an opaque connection is for, and in what
//! session protocol, when it connects to the peer's proxy port (4143)
//! rather than the application's.
//!
//! On the wire, inside mTLS negotiated with ALPN [`ALPN`]: the 23 bytes
//! [`PREFACE`], a big-endian `u32` length, and that many bytes of the
//! protobuf message `transport.l5d.io.Header { int32 port = 1; string
//! name = 2; SessionProtocol session_protocol = 3 }` (`SessionProtocol`
//! is a oneof of empty `Http1 = 1` and `Http2 = 2`); the connection's own
//! bytes follow.
//!
//! [`read`] consumes exactly the header, never a byte of the stream after
//! it, and bounds both its size ([`MAX_LEN`]) and the time it may take.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The ALPN protocol id that announces a transport header.
pub const ALPN: &[u8] = b"transport.l5d.io/v1";

/// The header's first bytes.
pub const PREFACE: &[u8; 23] = b"transport.l5d.io/v1\r\n\r\n";

/// The largest header message accepted, in bytes. A port, a DNS name of
/// at most 253 bytes and a protocol need well under 300.
pub const MAX_LEN: u32 = 1024;

/// A decoded header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportHeader {
    /// The application port on the peer.
    pub port: u16,
    /// A name, for gateways; `None` when empty.
    pub name: Option<String>,
    /// The session protocol, when known; `None` means opaque.
    pub protocol: Option<SessionProtocol>,
}

/// The session protocol a header announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionProtocol {
    /// HTTP/1.x.
    Http1,
    /// HTTP/2.
    Http2,
}

// The message, as protobuf sees it.
#[derive(Clone, PartialEq, Message)]
struct Wire {
    #[prost(int32, tag = "1")]
    port: i32,
    #[prost(string, tag = "2")]
    name: String,
    #[prost(message, optional, tag = "3")]
    session_protocol: Option<WireProtocol>,
}

#[derive(Clone, PartialEq, Message)]
struct WireProtocol {
    #[prost(oneof = "WireKind", tags = "1, 2")]
    kind: Option<WireKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum WireKind {
    #[prost(message, tag = "1")]
    Http1(Empty),
    #[prost(message, tag = "2")]
    Http2(Empty),
}

#[derive(Clone, PartialEq, Message)]
struct Empty {}

/// Why a header could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// The connection failed or ended before the header was complete.
    #[error("connection ended or failed inside the transport header")]
    Io(#[source] std::io::Error),
    /// The header took longer than allowed.
    #[error("the transport header did not arrive within {0:?}")]
    Timeout(Duration),
    /// The first bytes are not the preface.
    #[error("not a transport header: the preface does not match")]
    Preface,
    /// The length exceeds [`MAX_LEN`].
    #[error("transport header of {0} bytes is over the {MAX_LEN}-byte limit")]
    TooLong(u32),
    /// The message does not decode.
    #[error("transport header does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The port is not a TCP port.
    #[error("transport header names port {0}, which is not a TCP port")]
    Port(i32),
}

impl TransportHeader {
    /// The header's bytes: preface, length, message.
    pub fn encode(&self) -> Bytes {
        let wire = Wire {
            port: i32::from(self.port),
            name: self.name.clone().unwrap_or_default(),
            session_protocol: self.protocol.map(|p| WireProtocol {
                kind: Some(match p {
                    SessionProtocol::Http1 => WireKind::Http1(Empty {}),
                    SessionProtocol::Http2 => WireKind::Http2(Empty {}),
                }),
            }),
        };
        let len = wire.encoded_len();
        let mut buf = BytesMut::with_capacity(PREFACE.len() + 4 + len);
        buf.put_slice(PREFACE);
        // A header is tiny; its length always fits.
        buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
        wire.encode_raw(&mut buf);
        buf.freeze()
    }

    fn from_wire(w: Wire) -> Result<Self, HeaderError> {
        let port = u16::try_from(w.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or(HeaderError::Port(w.port))?;
        Ok(Self {
            port,
            name: (!w.name.is_empty()).then_some(w.name),
            protocol: w.session_protocol.and_then(|p| p.kind).map(|k| match k {
                WireKind::Http1(_) => SessionProtocol::Http1,
                WireKind::Http2(_) => SessionProtocol::Http2,
            }),
        })
    }
}

/// Reads exactly one header from `io`, within `timeout`.
pub async fn read<I: AsyncRead + Unpin>(
    io: &mut I,
    timeout: Duration,
) -> Result<TransportHeader, HeaderError> {
    tokio::time::timeout(timeout, read_inner(io))
        .await
        .map_err(|_| HeaderError::Timeout(timeout))?
}

async fn read_inner<I: AsyncRead + Unpin>(io: &mut I) -> Result<TransportHeader, HeaderError> {
    let mut preface = [0u8; PREFACE.len()];
    io.read_exact(&mut preface).await.map_err(HeaderError::Io)?;
    if &preface != PREFACE {
        return Err(HeaderError::Preface);
    }
    let len = io.read_u32().await.map_err(HeaderError::Io)?;
    if len > MAX_LEN {
        return Err(HeaderError::TooLong(len));
    }
    let mut msg = vec![0u8; len as usize];
    io.read_exact(&mut msg).await.map_err(HeaderError::Io)?;
    TransportHeader::from_wire(Wire::decode(msg.as_slice())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header's bytes, built by hand from the published format.
    fn bytes(msg: &[u8]) -> Vec<u8> {
        let mut v = b"transport.l5d.io/v1\r\n\r\n".to_vec();
        v.extend_from_slice(&u32::try_from(msg.len()).unwrap().to_be_bytes());
        v.extend_from_slice(msg);
        v
    }

    const NAME: &str = "web.ns.svc.cluster.local";

    fn cases() -> Vec<(TransportHeader, Vec<u8>)> {
        let mut named = vec![0x08, 0x90, 0x3f, 0x12, NAME.len() as u8];
        named.extend_from_slice(NAME.as_bytes());
        named.extend_from_slice(&[0x1a, 0x02, 0x12, 0x00]);
        vec![
            // port 8080: field 1, varint 0x90 0x3f.
            (
                TransportHeader {
                    port: 8080,
                    name: None,
                    protocol: None,
                },
                bytes(&[0x08, 0x90, 0x3f]),
            ),
            // port 80, HTTP/1: field 3, a message holding field 1 (empty).
            (
                TransportHeader {
                    port: 80,
                    name: None,
                    protocol: Some(SessionProtocol::Http1),
                },
                bytes(&[0x08, 0x50, 0x1a, 0x02, 0x0a, 0x00]),
            ),
            // A name (field 2) and HTTP/2 (field 3 holding field 2).
            (
                TransportHeader {
                    port: 8080,
                    name: Some(NAME.to_string()),
                    protocol: Some(SessionProtocol::Http2),
                },
                bytes(&named),
            ),
        ]
    }

    #[test]
    fn encodes_the_published_format() {
        for (h, wire) in cases() {
            assert_eq!(h.encode().as_ref(), wire.as_slice(), "{h:?}");
        }
    }

    #[tokio::test]
    async fn decodes_exactly_the_header_and_leaves_the_stream() {
        for (h, mut wire) in cases() {
            wire.extend_from_slice(b"GET / HTTP/1.1\r\n");
            let mut io = wire.as_slice();
            assert_eq!(read(&mut io, Duration::from_secs(1)).await.unwrap(), h);
            assert_eq!(io, b"GET / HTTP/1.1\r\n");
        }
    }

    #[tokio::test]
    async fn refuses_what_is_not_a_header() {
        let t = Duration::from_secs(1);
        // Not the preface.
        let mut io = &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..];
        assert!(matches!(read(&mut io, t).await, Err(HeaderError::Preface)));
        // Over the length limit: refused before reading the body.
        let mut long = PREFACE.to_vec();
        long.extend_from_slice(&(MAX_LEN + 1).to_be_bytes());
        assert!(matches!(
            read(&mut long.as_slice(), t).await,
            Err(HeaderError::TooLong(1025))
        ));
        // Truncated: in the preface, in the length, in the message.
        for cut in [10, 25, PREFACE.len() + 4 + 1] {
            let wire = bytes(&[0x08, 0x90, 0x3f]);
            let mut io = &wire[..cut];
            assert!(
                matches!(read(&mut io, t).await, Err(HeaderError::Io(_))),
                "cut at {cut}"
            );
        }
        // Garbage in the message.
        let mut io_bytes = bytes(&[0xff, 0xff, 0xff]);
        assert!(matches!(
            read(&mut io_bytes.as_slice(), t).await,
            Err(HeaderError::Decode(_))
        ));
        // Ports that are not TCP ports.
        for port in [
            vec![0x08, 0x00],
            vec![0x08, 0x80, 0x80, 0x04],
            vec![0x08, 0xff, 0xff, 0xff, 0xff, 0x0f],
        ] {
            io_bytes = bytes(&port);
            assert!(matches!(
                read(&mut io_bytes.as_slice(), t).await,
                Err(HeaderError::Port(_))
            ));
        }
    }

    #[tokio::test]
    async fn a_silent_peer_times_out() {
        let (mut a, _b) = tokio::io::duplex(64);
        let t = Duration::from_millis(50);
        assert!(matches!(
            read(&mut a, t).await,
            Err(HeaderError::Timeout(_))
        ));
    }
}
