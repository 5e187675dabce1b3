//! Deciding from the bytes read so far: a protocol, or how far it is
//! worth reading to know. Pure, so [`crate::detect`]'s I/O loop stays
//! small and each rule is tested on bytes alone.

use crate::{MAX_HTTP_PEEK, MAX_TLS_PEEK, Protocol};

/// What the bytes so far say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Decided.
    Done(Protocol),
    /// Undecided: read more, up to `limit` bytes in all.
    NeedMore {
        /// How far it is worth reading.
        limit: usize,
    },
}

/// The HTTP/2 connection preface (RFC 9113, section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Longest method name worth waiting for.
const MAX_METHOD_LEN: usize = 32;

/// TLS record content type: handshake.
const TLS_HANDSHAKE: u8 = 0x16;
/// TLS handshake type: ClientHello.
const CLIENT_HELLO: u8 = 0x01;
/// TLS extension: server_name (RFC 6066).
const EXT_SERVER_NAME: u16 = 0;
/// The largest TLS record, plus the expansion allowed for compressed or
/// protected records; anything claiming more is not TLS.
const MAX_TLS_RECORD: usize = 16384 + 2048;

/// Classifies a connection by its first bytes.
pub fn classify(buf: &[u8]) -> Verdict {
    let need_http = Verdict::NeedMore {
        limit: MAX_HTTP_PEEK,
    };
    if buf.is_empty() {
        return need_http;
    }
    // Empty lines before an HTTP/1 request line are allowed (RFC 9112,
    // section 2.2) and servers skip them: they must not turn HTTP into
    // opaque bytes that reach the application unread.
    let newlines = leading_newlines(buf);
    if newlines > 0 {
        return match &buf[newlines..] {
            [] => need_http,
            rest => match request_line(rest) {
                Some(true) => Verdict::Done(Protocol::Http1),
                Some(false) => need_http,
                None => Verdict::Done(Protocol::Opaque),
            },
        };
    }
    match starts_with_partial(buf, H2_PREFACE) {
        Some(true) => return Verdict::Done(Protocol::Http2),
        Some(false) => return need_http,
        None => {}
    }
    if buf[0] == TLS_HANDSHAKE {
        return tls(buf);
    }
    match request_line(buf) {
        Some(true) => Verdict::Done(Protocol::Http1),
        Some(false) => need_http,
        None => Verdict::Done(Protocol::Opaque),
    }
}

/// Whether `buf` is the unfinished start of an HTTP/1 request line with
/// its method and a space already read: a request line too long for the
/// peek buffer (a long URL) is still HTTP, for the HTTP server to parse.
pub(crate) fn long_request_line(buf: &[u8]) -> bool {
    let newlines = leading_newlines(buf);
    if newlines == buf.len() {
        // Nothing but empty lines: what an HTTP server skips.
        return true;
    }
    let buf = &buf[newlines..];
    let method = buf.iter().take_while(|&&b| is_tchar(b)).count();
    (1..=MAX_METHOD_LEN).contains(&method)
        && buf.get(method) == Some(&b' ')
        && starts_with_partial(buf, H2_PREFACE).is_none()
        && request_line(buf) == Some(false)
}

/// How many CR and LF bytes `buf` starts with.
fn leading_newlines(buf: &[u8]) -> usize {
    buf.iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count()
}

/// `Some(true)` if `buf` starts with `pattern`, `Some(false)` if `buf` is a
/// proper prefix of it, `None` if they differ.
fn starts_with_partial(buf: &[u8], pattern: &[u8]) -> Option<bool> {
    let n = buf.len().min(pattern.len());
    (buf[..n] == pattern[..n]).then_some(buf.len() >= pattern.len())
}

/// Whether `buf` starts with an HTTP/1.x request line: `Some(true)` yes,
/// `Some(false)` not yet known, `None` no.
fn request_line(buf: &[u8]) -> Option<bool> {
    // method = token
    let method = buf.iter().take_while(|&&b| is_tchar(b)).count();
    if method == buf.len() {
        return (method <= MAX_METHOD_LEN).then_some(false);
    }
    if method == 0 || method > MAX_METHOD_LEN || buf[method] != b' ' {
        return None;
    }
    // request-target: visible ASCII, no spaces
    let rest = &buf[method + 1..];
    let target = rest
        .iter()
        .take_while(|&&b| (0x21..=0x7e).contains(&b))
        .count();
    if target == rest.len() {
        return Some(false);
    }
    if target == 0 || rest[target] != b' ' {
        return None;
    }
    // HTTP-version CRLF (a bare LF is tolerated, as servers do)
    let version = &rest[target + 1..];
    const PREFIX: &[u8] = b"HTTP/1.";
    match starts_with_partial(version, PREFIX) {
        None => return None,
        Some(false) => return Some(false),
        Some(true) => {}
    }
    let tail = &version[PREFIX.len()..];
    match tail {
        [] => Some(false),
        [b'0' | b'1'] => Some(false),
        [b'0' | b'1', b'\n', ..] => Some(true),
        [b'0' | b'1', b'\r'] => Some(false),
        [b'0' | b'1', b'\r', b'\n', ..] => Some(true),
        _ => None,
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Classifies a buffer that starts with the TLS handshake content type.
fn tls(buf: &[u8]) -> Verdict {
    let need = |limit: usize| Verdict::NeedMore { limit };
    // Record header: type, legacy version 3.x, length.
    if buf.len() >= 2 && buf[1] != 0x03 {
        return Verdict::Done(Protocol::Opaque);
    }
    if buf.len() < 5 {
        return need(MAX_TLS_PEEK);
    }
    let record_len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    if record_len == 0 || record_len > MAX_TLS_RECORD {
        return Verdict::Done(Protocol::Opaque);
    }
    if buf.len() >= 6 && buf[5] != CLIENT_HELLO {
        return Verdict::Done(Protocol::Opaque);
    }
    // Wait for the whole record, or as much of it as we hold.
    let wanted = (5 + record_len).min(MAX_TLS_PEEK);
    if buf.len() < wanted {
        return need(wanted);
    }
    let sni = server_name(&buf[5..wanted]);
    Verdict::Done(Protocol::Tls { sni })
}

/// The SNI host name of a ClientHello handshake message (possibly cut
/// short); `None` when absent or unreadable.
fn server_name(hs: &[u8]) -> Option<String> {
    let mut r = Reader(hs);
    if r.u8()? != CLIENT_HELLO {
        return None;
    }
    let _len = r.take(3)?;
    let _version = r.take(2)?;
    let _random = r.take(32)?;
    let session = usize::from(r.u8()?);
    r.take(session)?;
    let suites = usize::from(r.u16()?);
    r.take(suites)?;
    let compression = usize::from(r.u8()?);
    r.take(compression)?;
    let ext_len = usize::from(r.u16()?);
    let mut exts = Reader(r.take(ext_len).or(Some(r.0))?);
    while !exts.0.is_empty() {
        let ty = exts.u16()?;
        let len = usize::from(exts.u16()?);
        let body = exts.take(len)?;
        if ty != EXT_SERVER_NAME {
            continue;
        }
        let mut list = Reader(body);
        let list_len = usize::from(list.u16()?);
        let mut names = Reader(list.take(list_len)?);
        while !names.0.is_empty() {
            let kind = names.u8()?;
            let len = usize::from(names.u16()?);
            let name = names.take(len)?;
            if kind == 0 {
                let name = std::str::from_utf8(name).ok()?;
                // A trailing dot is not part of a server name (RFC 6066,
                // section 3) and TLS servers drop it: so does detection,
                // so that routes match the name the server sees.
                let name = name.strip_suffix('.').unwrap_or(name);
                let valid = !name.is_empty()
                    && name.split('.').all(|label| {
                        !label.is_empty()
                            && label
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    });
                return valid.then(|| name.to_ascii_lowercase());
            }
        }
        return None;
    }
    None
}

/// A cursor over bytes; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}
