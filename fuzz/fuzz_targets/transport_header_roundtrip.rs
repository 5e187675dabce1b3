//! The transport header's encode → read round trip, over headers built
//! by `arbitrary`, followed by stream bytes, read in fragments.
//!
//! Checks: a header within [`MAX_LEN`] reads back as it was encoded and
//! leaves the stream after it untouched; a longer one is refused before
//! its message is read.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use linnet_fuzz::{End, Fragments, Head, block_on};
use linnet_transport::header::{
    self, HeaderError, MAX_LEN, PREFACE, SessionProtocol, TransportHeader,
};
use std::time::Duration;

#[derive(Arbitrary, Debug)]
struct Input {
    /// Made a TCP port (not 0).
    port: u16,
    /// `Some("")` is the same as `None` on the wire: made `None`.
    name: Option<String>,
    /// 0: none, 1: HTTP/1, 2: HTTP/2.
    protocol: u8,
    cuts: u8,
    stream: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let h = TransportHeader {
        port: input.port.max(1),
        name: input.name.filter(|n| !n.is_empty()),
        protocol: match input.protocol % 3 {
            0 => None,
            1 => Some(SessionProtocol::Http1),
            _ => Some(SessionProtocol::Http2),
        },
    };
    let encoded = h.encode();
    assert_eq!(&encoded[..PREFACE.len()], PREFACE);
    let len = u32::from_be_bytes(encoded[23..27].try_into().unwrap_or_default());
    assert_eq!(len as usize, encoded.len() - 27);
    let mut wire = encoded.to_vec();
    wire.extend_from_slice(&input.stream);
    let head = Head {
        flags: 0,
        cuts: input.cuts,
    };
    block_on(async {
        let mut peer = Fragments::new(head.fragments(&wire), End::Eof);
        match header::read(&mut peer, Duration::from_secs(10)).await {
            Ok(read) => {
                assert!(len <= MAX_LEN);
                assert_eq!(read, h);
                assert_eq!(
                    peer.remaining(),
                    input.stream,
                    "the stream after the header changed"
                );
            }
            Err(HeaderError::TooLong(n)) if len > MAX_LEN => {
                assert_eq!(n, len);
                assert_eq!(peer.remaining(), wire[27..], "read past a refused length");
            }
            Err(e) => panic!("{h:?} ({len} bytes) does not read back: {e}"),
        }
    });
});
