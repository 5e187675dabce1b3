//! Who may connect, and who may send a request: the authorizations of a
//! server (checked for a connection that is not HTTP, after detection
//! and mesh TLS, before the application is dialled, and again when the
//! policy changes) and of each route (checked per request, after the
//! route match, before the rate limit).
//!
//! An authorization names client networks and how the client must be
//! authenticated. Audit authorizations (`Meta::Default{"audit"}`) admit
//! but are reported as denials, so that a policy can be tried before it
//! is enforced.

use super::Meta;
use ipnet::IpNet;
use std::{collections::BTreeSet, net::IpAddr, sync::Arc};

/// One authorization (`inbound.Authz`).
#[derive(Clone, Debug, PartialEq)]
pub struct Authorization {
    /// For the `authz_*` metric labels; `Meta::Default{"audit"}` marks an
    /// audit authorization.
    pub meta: Meta,
    /// The client must come from one of these; none: no client does.
    pub networks: Vec<Network>,
    /// How the client must be authenticated.
    pub authentication: Authentication,
}

/// A client network, with holes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    /// The addresses admitted...
    pub net: IpNet,
    /// ...except these.
    pub except: Vec<IpNet>,
}

/// How a client must be authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Authentication {
    /// Anyone: plaintext, TLS or mesh TLS.
    Unauthenticated,
    /// TLS terminated by this proxy, with or without a client identity.
    TlsUnauthenticated,
    /// Mesh TLS with a verified client identity that is listed, or that
    /// ends with one of the suffixes. An identity named `*`, or an empty
    /// suffix, admits any identity.
    TlsAuthenticated {
        /// Identities admitted exactly.
        identities: BTreeSet<Arc<str>>,
        /// Identity suffixes admitted, by whole labels.
        suffixes: Vec<Suffix>,
    },
}

/// An identity suffix, matched by whole dot-separated labels: the parts
/// `[ns, serviceaccount]` admit `a.ns.serviceaccount`, not
/// `a.xns.serviceaccount` nor `ns.serviceaccount` itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suffix {
    /// `.` followed by the parts joined with `.`, lower-cased; empty for
    /// the suffix that admits any identity.
    dotted: String,
}

/// A client as authorization sees it.
#[derive(Clone, Copy, Debug)]
pub struct Client<'a> {
    /// Its address (an IPv4-mapped IPv6 address is taken as IPv4).
    pub addr: IpAddr,
    /// What TLS it spoke to this proxy.
    pub tls: ClientTls<'a>,
}

/// What TLS a client spoke to this proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientTls<'a> {
    /// Plaintext, or TLS passed through to the application (not
    /// terminated here).
    None,
    /// TLS terminated here, without a client certificate.
    Tls,
    /// Mesh TLS with this verified client identity.
    Mesh(&'a str),
}

/// What the authorizations decided.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict<'p> {
    /// Admitted by this authorization.
    Allow(&'p Authorization),
    /// Admitted only by this audit authorization: let through, but
    /// logged and counted as a denial.
    Audit(&'p Authorization),
    /// Admitted by none.
    Deny,
}

/// The verdict of `authorizations` on `client`: the first non-audit
/// authorization that permits it wins ([`Verdict::Allow`]); else the
/// first audit one that permits it ([`Verdict::Audit`]); else
/// [`Verdict::Deny`].
pub fn authorize<'p>(authorizations: &'p [Authorization], client: &Client<'_>) -> Verdict<'p> {
    let mut audit = None;
    for authz in authorizations.iter().filter(|a| a.permits(client)) {
        if !authz.is_audit() {
            return Verdict::Allow(authz);
        }
        audit = audit.or(Some(authz));
    }
    audit.map_or(Verdict::Deny, Verdict::Audit)
}

// === impl Authorization ===

impl Authorization {
    /// Whether `client` comes from one of the networks and is
    /// authenticated as required.
    pub fn permits(&self, client: &Client<'_>) -> bool {
        // Authentication first: among many authorizations by identity, it
        // is what rules most of them out.
        if !self.authentication.permits(client.tls) {
            return false;
        }
        let addr = client.addr.to_canonical();
        self.networks.iter().any(|n| n.contains(addr))
    }

    /// Whether this is an audit authorization (`Meta::Default{"audit"}`).
    pub fn is_audit(&self) -> bool {
        matches!(&self.meta, Meta::Default { name } if &**name == "audit")
    }
}

// === impl Network ===

impl Network {
    /// Every address of one family: `0.0.0.0/0` or `::/0`.
    pub fn all() -> [Self; 2] {
        [
            Self::from(IpNet::V4(Default::default())),
            Self::from(IpNet::V6(Default::default())),
        ]
    }

    /// Whether `addr` is in `net` and in none of `except`. `addr` must
    /// already be canonical (IPv4-mapped IPv6 taken as IPv4).
    fn contains(&self, addr: IpAddr) -> bool {
        self.net.contains(&addr) && !self.except.iter().any(|e| e.contains(&addr))
    }
}

impl From<IpNet> for Network {
    fn from(net: IpNet) -> Self {
        Self {
            net,
            except: Vec::new(),
        }
    }
}

// === impl Authentication ===

impl Authentication {
    /// Mesh TLS with any identity.
    pub fn any_identity() -> Self {
        Self::TlsAuthenticated {
            identities: BTreeSet::new(),
            suffixes: vec![Suffix::any()],
        }
    }

    /// Whether a client that spoke `tls` is authenticated enough.
    pub fn permits(&self, tls: ClientTls<'_>) -> bool {
        match self {
            Self::Unauthenticated => true,
            Self::TlsUnauthenticated => matches!(tls, ClientTls::Tls | ClientTls::Mesh(_)),
            Self::TlsAuthenticated {
                identities,
                suffixes,
            } => match tls {
                ClientTls::Mesh(id) => {
                    identities.contains(id)
                        || identities.contains("*")
                        || suffixes.iter().any(|s| s.matches(id))
                }
                ClientTls::None | ClientTls::Tls => false,
            },
        }
    }
}

// === impl Suffix ===

impl Suffix {
    /// The suffix that admits any identity.
    pub fn any() -> Self {
        Self {
            dotted: String::new(),
        }
    }

    /// A suffix from its labels, first to last (`["ns", "svc"]` admits
    /// `*.ns.svc`); `None` when a label is empty or holds a `.` or `*`.
    pub fn new<S: AsRef<str>>(parts: &[S]) -> Option<Self> {
        let mut dotted = String::new();
        for part in parts {
            let part = part.as_ref();
            if part.is_empty() || part.contains(['.', '*']) {
                return None;
            }
            dotted.push('.');
            dotted.push_str(&part.to_ascii_lowercase());
        }
        Some(Self { dotted })
    }

    /// Whether `id` ends with this suffix by whole labels (any `id` for
    /// the empty suffix).
    pub fn matches(&self, id: &str) -> bool {
        if self.dotted.is_empty() {
            return true;
        }
        id.len() > self.dotted.len()
            && id
                .get(id.len() - self.dotted.len()..)
                .is_some_and(|tail| tail.eq_ignore_ascii_case(&self.dotted))
    }
}

#[cfg(test)]
mod tests;
