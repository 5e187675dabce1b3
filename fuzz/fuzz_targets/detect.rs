//! Protocol detection (`linnet_detect::detect`) over a client whose bytes
//! arrive in fragments the fuzzer chose, then end or stall.
//!
//! Input: [`Head`] (flags bit 0: the client stalls instead of closing),
//! then the client's bytes.
//!
//! Checks: detection never panics and never holds more than it may; the
//! bytes it read, replayed by `PrefixedIo` before the rest, are exactly
//! the client's bytes; and the verdict does not depend on how the bytes
//! were cut (a client's TCP segments must not change where it goes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use linnet_detect::{MAX_TLS_PEEK, PrefixedIo, Protocol, Reason, detect};
use linnet_fuzz::{End, Fragments, Head, block_on};
use std::time::Duration;
use tokio::io::AsyncReadExt;

const TIMEOUT: Duration = Duration::from_secs(10);

fuzz_target!(|input: &[u8]| {
    let (head, data) = Head::split(input);
    let end = if head.flags & 1 == 1 {
        End::Stall
    } else {
        End::Eof
    };
    block_on(async {
        let mut client = Fragments::new(head.fragments(data), end);
        let detected = match detect(&mut client, TIMEOUT).await {
            Ok(d) => d,
            Err(e) => panic!("a reader that never fails failed: {e}"),
        };
        let held = detected.buffered.len();
        assert!(held <= MAX_TLS_PEEK, "held {held} bytes");
        assert_eq!(&detected.buffered[..], &data[..held], "held bytes differ");
        match (end, detected.reason) {
            (End::Stall, Reason::Eof) => panic!("EOF from a client that never closed"),
            (End::Eof, Reason::Timeout) => panic!("timed out on a client that closed"),
            _ => {}
        }

        // Replayed, then the rest: exactly what the client sent.
        let rest = Fragments::new([client.remaining()].into(), End::Eof);
        let mut replay = PrefixedIo::new(detected.buffered.clone().freeze(), rest);
        let mut seen = Vec::new();
        if let Err(e) = replay.read_to_end(&mut seen).await {
            panic!("replay failed: {e}");
        }
        assert_eq!(seen, data, "replayed bytes differ from the client's");

        // The same bytes in one read decide the same way (when the
        // client closed: a stall's verdict depends on what had arrived).
        if end == End::Eof {
            let mut whole = Fragments::new(Head::default().fragments(data), End::Eof);
            let once = match detect(&mut whole, TIMEOUT).await {
                Ok(d) => d,
                Err(e) => panic!("a reader that never fails failed: {e}"),
            };
            assert_eq!(
                once.protocol, detected.protocol,
                "in one read: {:?} ({:?}); in fragments: {:?} ({:?})",
                once.protocol, once.reason, detected.protocol, detected.reason
            );
        }
        if let Protocol::Tls { sni: Some(name) } = &detected.protocol {
            assert!(!name.is_empty() && !name.bytes().any(|b| b.is_ascii_uppercase()));
        }
    });
});
