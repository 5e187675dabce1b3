//! The transport header reader (`linnet_transport::header::read`) on
//! arbitrary bytes, arriving in fragments the fuzzer chose.
//!
//! Input: [`Head`] (flags bit 0: the peer stalls instead of closing),
//! then the peer's bytes.
//!
//! Checks: no panic; a header read consumed exactly the preface, the
//! length and the message the length announced, never a byte of the
//! stream after it; it names a TCP port; and it reads back the same
//! after encoding it again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use linnet_fuzz::{End, Fragments, Head, block_on};
use linnet_transport::header::{self, HeaderError, MAX_LEN, PREFACE};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);

fuzz_target!(|input: &[u8]| {
    let (head, data) = Head::split(input);
    block_on(async {
        let end = if head.flags & 1 == 1 {
            End::Stall
        } else {
            End::Eof
        };
        let mut peer = Fragments::new(head.fragments(data), end);
        let result = header::read(&mut peer, TIMEOUT).await;
        let left = peer.remaining();
        let used = data.len() - left.len();
        match result {
            Ok(h) => {
                assert_ne!(h.port, 0);
                assert_ne!(h.name.as_deref(), Some(""));
                assert_eq!(&data[..PREFACE.len()], PREFACE);
                let len = u32::from_be_bytes(data[23..27].try_into().unwrap_or_default());
                assert!(len <= MAX_LEN);
                assert_eq!(
                    used,
                    PREFACE.len() + 4 + len as usize,
                    "consumed too much or too little"
                );
                let again = h.encode();
                let mut io = &again[..];
                match header::read(&mut io, TIMEOUT).await {
                    Ok(h2) => assert_eq!(h2, h, "re-encoded header reads back differently"),
                    Err(e) => panic!("re-encoded {h:?} does not read back: {e}"),
                }
                assert!(io.is_empty());
            }
            // Never more than the header could hold.
            Err(HeaderError::Timeout(_)) | Err(HeaderError::Io(_)) => {
                assert!(used <= PREFACE.len() + 4 + MAX_LEN as usize)
            }
            Err(HeaderError::Preface) => assert!(used <= PREFACE.len()),
            Err(HeaderError::TooLong(n)) => {
                assert!(n > MAX_LEN);
                assert_eq!(used, PREFACE.len() + 4, "read past a refused length");
            }
            Err(HeaderError::Decode(_)) | Err(HeaderError::Port(_)) => {
                assert!(used <= PREFACE.len() + 4 + MAX_LEN as usize)
            }
        }
    });
});
