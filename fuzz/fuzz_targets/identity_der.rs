//! Identities from certificates (`linnet_tls::identities`, what a peer's
//! verified leaf or a freshly certified leaf is read with) on arbitrary
//! DER, and webpki's parse of the same bytes (what `linnet-identity`
//! checks a certified leaf with).
//!
//! Checks: no panic; every identity read is one `Id::parse` reads back
//! to itself, and the certificate names it (`is_named_in`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use linnet_tls::{Id, identities, pki_types::CertificateDer};

fuzz_target!(|der: &[u8]| {
    let cert = CertificateDer::from(der);
    let _ = webpki::EndEntityCert::try_from(&cert);
    let Ok(ids) = identities(&cert) else {
        return;
    };
    let mut uris = false;
    for id in &ids {
        match Id::parse(&id.to_string()) {
            Ok(again) => assert_eq!(&again, id),
            Err(e) => panic!("{id:?} read from a certificate does not parse: {e}"),
        }
        assert!(id.is_named_in(&cert));
        // DNS names first, then URIs.
        match id {
            Id::Dns(_) => assert!(!uris, "a DNS identity after a URI one: {ids:?}"),
            Id::Uri(_) => uris = true,
        }
    }
});
