//! Workload identities and the certificate names that carry them.

use rustls_pki_types::CertificateDer;
use std::fmt;

/// A workload identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Id {
    /// A DNS-like name, carried as a DNS SAN:
    /// `web.default.serviceaccount.identity.linkerd.cluster.local`.
    Dns(String),
    /// A SPIFFE ID, carried as a URI SAN: `spiffe://cluster.local/ns/default/sa/web`.
    Uri(String),
}

/// Not an identity.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an identity (a DNS-like name or a spiffe:// URI)")]
pub struct IdError(pub String);

impl Id {
    /// Parses a name: `spiffe://...` is a URI identity, anything else must
    /// be a DNS-like name (lower-cased).
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if let Some(rest) = s.strip_prefix("spiffe://") {
            if rest.is_empty() || rest.contains(|c: char| c.is_whitespace() || c.is_control()) {
                return Err(IdError(s.to_string()));
            }
            return Ok(Id::Uri(s.to_string()));
        }
        let name = s.trim_end_matches('.').to_ascii_lowercase();
        let ok = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if ok {
            Ok(Id::Dns(name))
        } else {
            Err(IdError(s.to_string()))
        }
    }

    /// The server name to send as SNI: the name itself, for DNS-like ids.
    pub fn server_name(&self) -> Option<&str> {
        match self {
            Id::Dns(n) => Some(n),
            Id::Uri(_) => None,
        }
    }

    /// Whether `cert` names exactly this identity (no wildcards).
    pub fn is_named_in(&self, cert: &CertificateDer<'_>) -> bool {
        identities(cert).is_ok_and(|ids| ids.contains(self))
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Id::Dns(n) | Id::Uri(n) => f.write_str(n),
        }
    }
}

/// The identities a certificate names: its DNS SANs (lower-cased, without
/// wildcards), then its `spiffe://` URI SANs.
pub fn identities(cert: &CertificateDer<'_>) -> Result<Vec<Id>, IdError> {
    use x509_parser::{extensions::GeneralName, prelude::FromDer};
    let (_, x509) = x509_parser::certificate::X509Certificate::from_der(cert)
        .map_err(|e| IdError(format!("unparsable certificate: {e}")))?;
    let mut dns = Vec::new();
    let mut uris = Vec::new();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) if !n.contains('*') => {
                    if let Ok(id @ Id::Dns(_)) = Id::parse(n) {
                        dns.push(id);
                    }
                }
                GeneralName::URI(u) if u.starts_with("spiffe://") => {
                    if let Ok(id) = Id::parse(u) {
                        uris.push(id);
                    }
                }
                _ => {}
            }
        }
    }
    dns.extend(uris);
    Ok(dns)
}
