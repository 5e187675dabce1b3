//! Identity names (`linnet_tls::Id::parse`, what configuration, the
//! control plane's endpoints and certificates' SANs are read with), and
//! certificates naming arbitrary SANs, made with rcgen, read back with
//! `linnet_tls::identities`.
//!
//! Checks: a parsed identity is canonical (it parses to itself; DNS-like
//! names are lower case, within DNS's lengths); every identity a proxy
//! accepts, `linnet control` accepts too (`check_identity_name`); and a
//! certificate's identities are exactly its DNS SANs that are identities
//! (lower-cased, without wildcards), then its `spiffe://` URI SANs.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use linnet_tls::{Id, identities, pki_types::CertificateDer};
use rcgen::{CertificateParams, KeyPair, SanType, string::Ia5String};
use std::sync::OnceLock;

#[derive(Arbitrary, Debug)]
enum San {
    Dns(String),
    Uri(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    name: String,
    sans: Vec<San>,
}

fuzz_target!(|input: Input| {
    check_name(&input.name);
    check_certificate(&input.sans);
});

fn check_name(name: &str) {
    let Ok(id) = Id::parse(name) else {
        return;
    };
    let text = id.to_string();
    match Id::parse(&text) {
        Ok(again) => assert_eq!(again, id),
        Err(e) => panic!("{id:?} does not parse again: {e}"),
    }
    match &id {
        Id::Dns(n) => {
            assert!(!n.bytes().any(|b| b.is_ascii_uppercase()));
            assert!(n.len() <= 253 && n.split('.').all(|l| (1..=63).contains(&l.len())));
            assert_eq!(id.server_name(), Some(n.as_str()));
        }
        Id::Uri(u) => {
            assert!(u.starts_with("spiffe://"));
            assert_eq!(id.server_name(), None);
        }
    }
    if let Err(e) = linnet_control::config::check_identity_name(name) {
        panic!("the proxy takes {name:?} as {id:?}, linnet control refuses it: {e}");
    }
}

fn check_certificate(sans: &[San]) {
    let mut params = CertificateParams::default();
    let mut dns = Vec::new();
    let mut uris = Vec::new();
    for san in sans.iter().take(8) {
        match san {
            San::Dns(n) => {
                let Ok(ia5) = Ia5String::try_from(n.as_str()) else {
                    return;
                };
                params.subject_alt_names.push(SanType::DnsName(ia5));
                if !n.contains('*')
                    && let Ok(id @ Id::Dns(_)) = Id::parse(n)
                {
                    dns.push(id);
                }
            }
            San::Uri(u) => {
                let Ok(ia5) = Ia5String::try_from(u.as_str()) else {
                    return;
                };
                params.subject_alt_names.push(SanType::URI(ia5));
                if u.starts_with("spiffe://")
                    && let Ok(id) = Id::parse(u)
                {
                    uris.push(id);
                }
            }
        }
    }
    let Ok(cert) = params.self_signed(key()) else {
        return;
    };
    let der = CertificateDer::from(cert.der().to_vec());
    dns.extend(uris);
    match identities(&der) {
        Ok(ids) => assert_eq!(ids, dns, "SANs {sans:?}"),
        Err(e) => panic!("rcgen's certificate for {sans:?} does not read: {e}"),
    }
}

/// One key for every certificate: generating one per input would cost
/// more than the rest.
fn key() -> &'static KeyPair {
    static KEY: OnceLock<KeyPair> = OnceLock::new();
    KEY.get_or_init(|| KeyPair::generate().unwrap_or_else(|e| panic!("key: {e}")))
}
