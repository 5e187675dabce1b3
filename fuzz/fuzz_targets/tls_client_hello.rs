//! The ClientHello reader behind detection's TLS verdict and SNI
//! (`linnet_detect::classify`), checked against rustls' own parser.
//!
//! Input: one flags byte, then either (bit 0 clear) the client's first
//! bytes as sent, or (bit 0 set) a ClientHello body (from the version on)
//! that the target frames as a handshake message in one TLS record, so
//! that the fuzzer spends its time in the hello rather than the framing.
//!
//! Checks: no panic; an SNI is a non-empty lower-case host name found in
//! the bytes; and when rustls accepts a hello that fits in the first
//! record and the peek buffer, and finds a server name in it, detection
//! reports the same name (routing by SNI sees what the TLS server sees).
#![no_main]

use libfuzzer_sys::fuzz_target;
use linnet_detect::{MAX_TLS_PEEK, Protocol, Verdict, classify};
use linnet_tls::rustls::server::Acceptor;

fuzz_target!(|input: &[u8]| {
    let Some((&flags, data)) = input.split_first() else {
        return;
    };
    let bytes = if flags & 1 == 1 {
        frame(data)
    } else {
        data.to_vec()
    };
    let bytes = &bytes[..bytes.len().min(MAX_TLS_PEEK)];
    let ours = match classify(bytes) {
        Verdict::Done(Protocol::Tls { sni }) => Some(sni),
        _ => None,
    };
    if let Some(Some(name)) = &ours {
        assert!(!name.is_empty());
        assert!(!name.bytes().any(|b| b.is_ascii_uppercase()), "{name:?}");
        let lower = bytes.to_ascii_lowercase();
        assert!(
            lower.windows(name.len()).any(|w| w == name.as_bytes()),
            "{name:?} is not in the hello"
        );
    }

    // What rustls, as a TLS server, makes of the same bytes.
    if !whole_hello_in_first_record(bytes) {
        return;
    }
    let mut acceptor = Acceptor::default();
    if acceptor.read_tls(&mut &bytes[..]).is_err() {
        return;
    }
    let Ok(Some(accepted)) = acceptor.accept() else {
        return;
    };
    let theirs = accepted
        .client_hello()
        .server_name()
        .map(str::to_ascii_lowercase);
    if let Some(name) = theirs {
        assert_eq!(
            ours,
            Some(Some(name.clone())),
            "rustls reads the server name {name:?}, detection {ours:?}"
        );
    }
});

/// `body` as a ClientHello handshake message in a TLS 1.0 record.
fn frame(body: &[u8]) -> Vec<u8> {
    let body = &body[..body.len().min(0xffff - 4)];
    let mut hs = vec![0x01];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend_from_slice(&hs);
    record
}

/// Whether `bytes` start with one handshake record that holds the whole
/// handshake message, within what detection reads.
fn whole_hello_in_first_record(bytes: &[u8]) -> bool {
    let [0x16, 0x03, _, a, b, 0x01, x, y, z, ..] = *bytes else {
        return false;
    };
    let record = usize::from(u16::from_be_bytes([a, b]));
    let message = u32::from_be_bytes([0, x, y, z]) as usize;
    5 + record <= bytes.len() && 4 + message <= record
}
