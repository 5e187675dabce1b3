//! Protocol detection: what does a client speak?
//!
//! The proxy calls [`detect`] on an accepted connection once it knows
//! where the connection goes (ports the control plane or configuration
//! marks opaque skip it), and again inside mesh TLS it has terminated.
//! [`detect`] reads the first bytes into a bounded buffer and decides as
//! soon as they allow ([`classify`]):
//!
//! - the HTTP/2 connection preface → HTTP/2;
//! - an HTTP/1.x request line, after any empty lines, or the start of one
//!   too long for the buffer → HTTP/1;
//! - a TLS ClientHello → TLS, with its SNI when present (the caller
//!   terminates the mesh's own TLS and carries any other as bytes);
//! - anything else, an early EOF, or nothing within the timeout (a
//!   server-speaks-first protocol such as SMTP or MySQL) → opaque.
//!
//! The bytes read are returned; [`PrefixedIo`] replays them to whichever
//! path takes the connection, so nothing the client sent is lost.

mod classify;
mod prefixed;
#[cfg(any(test, feature = "test-util"))]
pub mod test_util;

pub use self::{
    classify::{Verdict, classify},
    prefixed::PrefixedIo,
};
use bytes::BytesMut;
use std::{io, time::Duration};
use tokio::io::{AsyncRead, AsyncReadExt};

/// How far detection reads looking for an HTTP request line or preface.
pub const MAX_HTTP_PEEK: usize = 1024;
/// How far detection reads looking for a whole ClientHello record.
pub const MAX_TLS_PEEK: usize = 8 * 1024;

/// The protocol a connection speaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.0 or HTTP/1.1.
    Http1,
    /// HTTP/2 with prior knowledge (the connection preface).
    Http2,
    /// TLS, with the server name the client asked for, if it said.
    Tls {
        /// The SNI host name.
        sni: Option<String>,
    },
    /// Anything else: carried as bytes.
    Opaque,
}

impl Protocol {
    /// A short name for logs and metric labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Http1 => "http/1",
            Protocol::Http2 => "http/2",
            Protocol::Tls { .. } => "tls",
            Protocol::Opaque => "opaque",
        }
    }
}

/// Why detection settled on what it did, for metrics and debugging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The bytes decided.
    Matched,
    /// The client sent nothing (or too little) within the timeout.
    Timeout,
    /// The client closed its side before the bytes decided.
    Eof,
    /// The peek buffer filled before the bytes decided.
    BufferFull,
}

/// The outcome of detection.
#[derive(Debug)]
pub struct Detected {
    /// What the client speaks.
    pub protocol: Protocol,
    /// How that was decided.
    pub reason: Reason,
    /// Everything read from the client; to be replayed before the rest.
    pub buffered: BytesMut,
}

/// Reads from `io` until the protocol is known, the buffer is full, the
/// client closes, or `timeout` passes. Only an I/O error is an error.
pub async fn detect<I: AsyncRead + Unpin>(io: &mut I, timeout: Duration) -> io::Result<Detected> {
    let mut buf = BytesMut::with_capacity(MAX_HTTP_PEEK);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let verdict = classify(&buf);
        let limit = match verdict {
            Verdict::Done(protocol) => {
                return Ok(Detected {
                    protocol,
                    reason: Reason::Matched,
                    buffered: buf,
                });
            }
            Verdict::NeedMore { limit } => limit,
        };
        if buf.len() >= limit {
            let protocol = if classify::long_request_line(&buf) {
                Protocol::Http1
            } else {
                Protocol::Opaque
            };
            return Ok(Detected {
                protocol,
                reason: Reason::BufferFull,
                buffered: buf,
            });
        }
        buf.reserve(limit - buf.len());
        let read = {
            // Never read past the limit: bytes beyond it are not ours to hold.
            let mut limited = (&mut *io).take((limit - buf.len()) as u64);
            tokio::time::timeout_at(deadline, limited.read_buf(&mut buf)).await
        };
        match read {
            Err(_elapsed) => {
                return Ok(Detected {
                    protocol: Protocol::Opaque,
                    reason: Reason::Timeout,
                    buffered: buf,
                });
            }
            Ok(Ok(0)) => {
                return Ok(Detected {
                    protocol: Protocol::Opaque,
                    reason: Reason::Eof,
                    buffered: buf,
                });
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests;
