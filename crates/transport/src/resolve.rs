//! Names the proxy resolves itself, the way the system does: explicit
//! proxy mode's targets (`curl -x` to `http://api.local:8080/`) and the
//! DNS fallback for names the control plane does not know.
//!
//! - `localhost` and `*.localhost` are always the loopback addresses,
//!   `::1` and `127.0.0.1`, without asking anyone (RFC 6761, as `curl`
//!   does): a server listening on only one of them is reached.
//! - The hosts file ([`hosts`]) is read on every lookup, as `getaddrinfo`
//!   does: a name it holds is answered from it alone, never asked of DNS.
//! - Without a control plane, explicit mode asks the system's resolver
//!   ([`system`], `getaddrinfo`: the hosts file, DNS, whatever the system
//!   is configured with); with one, `linnet-discovery` asks DNS itself
//!   (to follow TTLs) after the two steps above.
//!
//! Every address a name resolves to is kept ([`Addrs`], at most
//! [`MAX_ADDRS`]), IPv6 and IPv4 interleaved, and connected to with happy
//! eyeballs ([`crate::happy_eyeballs`]). Each lookup is counted in
//! `name_resolutions_total` ([`linnet_metrics::resolve`]).

pub mod hosts;

use linnet_metrics::resolve::{Outcome, ResolveMetrics, Source};
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};
use tokio::net::TcpStream;

/// The most addresses of one name kept (the first, in the order they are
/// tried): a DNS answer can hold many, and with attempts
/// [`crate::happy_eyeballs::ATTEMPT_DELAY`] apart only the first few are
/// reached within a connect timeout anyway.
pub const MAX_ADDRS: usize = 16;

/// Where a target is: one address, or the addresses a name resolved to.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum Addrs {
    /// An address given as such (an IP, or an endpoint the control plane
    /// named).
    One(SocketAddr),
    /// A name's addresses, in the order they are tried.
    Named(Arc<Named>),
}

/// A name and its addresses (never empty).
#[derive(Debug, Hash, PartialEq, Eq)]
pub struct Named {
    /// As the client wrote it, with the port (`localhost:8080`).
    name: Box<str>,
    addrs: Box<[SocketAddr]>,
}

impl From<SocketAddr> for Addrs {
    fn from(addr: SocketAddr) -> Self {
        Addrs::One(addr)
    }
}

impl Addrs {
    /// The addresses `name` resolved to, in the order to try them: IPv6
    /// and IPv4 interleaved, starting with the family of the first given
    /// (a resolver's preferred), each family in the order given (RFC 8305,
    /// section 4); duplicates dropped; at most [`MAX_ADDRS`]. `None` when
    /// there are none.
    pub fn named(name: &str, addrs: impl IntoIterator<Item = SocketAddr>) -> Option<Self> {
        let mut first_family = Vec::new();
        let mut other = Vec::new();
        let mut v6_first = None;
        for addr in addrs {
            let v6 = *v6_first.get_or_insert(addr.is_ipv6());
            let family = if addr.is_ipv6() == v6 {
                &mut first_family
            } else {
                &mut other
            };
            if !family.contains(&addr) {
                family.push(addr);
            }
        }
        let mut ordered = Vec::with_capacity((first_family.len() + other.len()).min(MAX_ADDRS));
        let (mut a, mut b) = (first_family.into_iter(), other.into_iter());
        loop {
            let (x, y) = (a.next(), b.next());
            if x.is_none() && y.is_none() {
                break;
            }
            ordered.extend(x);
            ordered.extend(y);
        }
        ordered.truncate(MAX_ADDRS);
        (!ordered.is_empty()).then(|| {
            Addrs::Named(Arc::new(Named {
                name: name.into(),
                addrs: ordered.into(),
            }))
        })
    }

    /// The address tried first (the one metrics name before a connection
    /// is made).
    pub fn first(&self) -> SocketAddr {
        match self {
            Addrs::One(a) => *a,
            // Never empty.
            Addrs::Named(n) => n.addrs.first().copied().unwrap_or(UNSPECIFIED),
        }
    }

    /// Every address, in the order tried.
    pub fn as_slice(&self) -> &[SocketAddr] {
        match self {
            Addrs::One(a) => std::slice::from_ref(a),
            Addrs::Named(n) => &n.addrs,
        }
    }

    /// The name the addresses came from, if any.
    pub fn name(&self) -> Option<&str> {
        match self {
            Addrs::One(_) => None,
            Addrs::Named(n) => Some(&n.name),
        }
    }

    /// Connects within `timeout`: to the one address, or to a name's first
    /// address to accept ([`crate::happy_eyeballs`]). Returns the
    /// connection and the address reached.
    pub async fn connect(
        &self,
        timeout: Duration,
        keepalive: Option<Duration>,
    ) -> Result<(TcpStream, SocketAddr), linnet_core::Error> {
        match self {
            Addrs::One(addr) => Ok((crate::connect(*addr, timeout, keepalive).await?, *addr)),
            Addrs::Named(n) => {
                Ok(crate::happy_eyeballs::connect(&n.name, &n.addrs, timeout, keepalive).await?)
            }
        }
    }
}

impl fmt::Display for Addrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addrs::One(a) => write!(f, "{a}"),
            Addrs::Named(n) => {
                write!(f, "{} (", n.name)?;
                for (i, a) in n.addrs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{a}")?;
                }
                f.write_str(")")
            }
        }
    }
}

const UNSPECIFIED: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

/// Whether `name` is `localhost` or under it (`*.localhost`), which always
/// means this host's loopback addresses (RFC 6761, section 6.3).
pub fn is_localhost(name: &str) -> bool {
    let name = name.trim_end_matches('.');
    let tail = name.len().saturating_sub("localhost".len());
    name.get(tail..)
        .is_some_and(|t| t.eq_ignore_ascii_case("localhost"))
        && (tail == 0 || name.as_bytes()[tail - 1] == b'.')
}

/// The loopback addresses, IPv6 first (as the system's address selection
/// orders them).
pub const LOOPBACK: [IpAddr; 2] = [
    IpAddr::V6(Ipv6Addr::LOCALHOST),
    IpAddr::V4(Ipv4Addr::LOCALHOST),
];

/// A name could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The name has no address.
    #[error("{name} has no address")]
    NotFound {
        /// The name.
        name: String,
    },
    /// The resolver did not answer in time.
    #[error("resolving {name} timed out after {timeout:?}")]
    Timeout {
        /// The name.
        name: String,
        /// How long it was given.
        timeout: Duration,
    },
    /// The resolver failed.
    #[error("resolving {name} failed")]
    Failed {
        /// The name.
        name: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The addresses of `host` (port `port`), as the system resolves it:
/// an IP as is; `localhost` as the loopback addresses; anything else by
/// `getaddrinfo` (hosts file, DNS, ...), within `timeout`. Counted in
/// `metrics` (an IP is not a lookup, and is not counted).
pub async fn system(
    host: &str,
    port: u16,
    timeout: Duration,
    metrics: &ResolveMetrics,
) -> Result<Addrs, ResolveError> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(Addrs::One(SocketAddr::new(ip, port)));
    }
    let name = format!("{host}:{port}");
    if is_localhost(host) {
        metrics.resolved(Source::Localhost, Outcome::Resolved);
        let addrs = LOOPBACK.iter().map(|ip| SocketAddr::new(*ip, port));
        return Addrs::named(&name, addrs).ok_or(ResolveError::NotFound { name });
    }
    let (outcome, result) =
        match tokio::time::timeout(timeout, tokio::net::lookup_host((host, port))).await {
            Err(_) => (
                Outcome::Timeout,
                Err(ResolveError::Timeout { name, timeout }),
            ),
            Ok(Ok(found)) => match Addrs::named(&name, found) {
                Some(addrs) => (Outcome::Resolved, Ok(addrs)),
                None => (Outcome::NotFound, Err(ResolveError::NotFound { name })),
            },
            Ok(Err(source)) if is_not_found(&source) => {
                (Outcome::NotFound, Err(ResolveError::NotFound { name }))
            }
            Ok(Err(source)) => (Outcome::Error, Err(ResolveError::Failed { name, source })),
        };
    metrics.resolved(Source::System, outcome);
    result
}

/// Whether `getaddrinfo`'s failure says the name has no address. The
/// standard library passes on only its message (`gai_strerror`), so the
/// messages of glibc and musl for `EAI_NONAME` and `EAI_NODATA` are
/// matched; anything else is a failure.
fn is_not_found(e: &std::io::Error) -> bool {
    let text = e.to_string();
    [
        "Name or service not known",
        "No address associated with hostname",
        "Name does not resolve",
        "Name has no usable address",
    ]
    .iter()
    .any(|m| text.contains(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn families_are_interleaved_starting_with_the_first() {
        let given = addrs(&[
            "[2001:db8::1]:80",
            "[2001:db8::2]:80",
            "[2001:db8::3]:80",
            "192.0.2.1:80",
            "192.0.2.2:80",
        ]);
        let a = Addrs::named("web:80", given).unwrap();
        assert_eq!(
            a.as_slice(),
            addrs(&[
                "[2001:db8::1]:80",
                "192.0.2.1:80",
                "[2001:db8::2]:80",
                "192.0.2.2:80",
                "[2001:db8::3]:80",
            ])
        );
        let given = addrs(&["192.0.2.1:80", "192.0.2.1:80", "[2001:db8::1]:80"]);
        let a = Addrs::named("web:80", given).unwrap();
        assert_eq!(a.as_slice(), addrs(&["192.0.2.1:80", "[2001:db8::1]:80"]));
        assert_eq!(a.first(), "192.0.2.1:80".parse().unwrap());
        assert_eq!(a.name(), Some("web:80"));
        assert_eq!(a.to_string(), "web:80 (192.0.2.1:80, [2001:db8::1]:80)");
        assert!(Addrs::named("none:80", []).is_none());
    }

    #[test]
    fn at_most_max_addrs_are_kept() {
        let many = (0..100u8).map(|i| SocketAddr::from(([192, 0, 2, i], 80)));
        assert_eq!(
            Addrs::named("many:80", many).unwrap().as_slice().len(),
            MAX_ADDRS
        );
    }

    #[test]
    fn localhost_names() {
        for yes in ["localhost", "LOCALHOST.", "a.localhost", "x.y.Localhost"] {
            assert!(is_localhost(yes), "{yes}");
        }
        for no in [
            "notlocalhost",
            "localhost.example",
            "local",
            "",
            "localhostx",
        ] {
            assert!(!is_localhost(no), "{no}");
        }
    }

    #[tokio::test]
    async fn the_system_resolver_answers_localhost_with_both_loopbacks() {
        let mut registry = Default::default();
        let metrics = ResolveMetrics::register(&mut registry);
        let a = system("localhost", 8080, Duration::from_secs(5), &metrics)
            .await
            .unwrap();
        assert_eq!(a.as_slice(), addrs(&["[::1]:8080", "127.0.0.1:8080"]));
        let ip = system("[::1]", 80, Duration::from_secs(5), &metrics)
            .await
            .unwrap();
        assert_eq!(ip, Addrs::One("[::1]:80".parse().unwrap()));
        let text = linnet_metrics::encode(&registry);
        assert!(
            text.contains("name_resolutions_total{source=\"localhost\",outcome=\"resolved\"} 1"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_failed_lookup_is_counted_by_its_outcome() {
        let mut registry = Default::default();
        let metrics = ResolveMetrics::register(&mut registry);
        // `.invalid` never resolves (RFC 6761, section 6.4); how the
        // system says so depends on its DNS.
        let e = system("nowhere.invalid", 80, Duration::from_secs(2), &metrics)
            .await
            .unwrap_err();
        let outcome = match e {
            ResolveError::NotFound { .. } => "not_found",
            ResolveError::Timeout { .. } => "timeout",
            ResolveError::Failed { .. } => "error",
        };
        assert!(e.to_string().contains("nowhere.invalid:80"), "{e}");
        let text = linnet_metrics::encode(&registry);
        let line = format!("name_resolutions_total{{source=\"system\",outcome=\"{outcome}\"}} 1");
        assert!(text.contains(&line), "{text}");
    }

    #[test]
    fn getaddrinfo_messages_for_no_address_are_not_found() {
        let gai =
            |m: &str| std::io::Error::other(format!("failed to lookup address information: {m}"));
        assert!(is_not_found(&gai("Name or service not known")));
        assert!(is_not_found(&gai("No address associated with hostname")));
        assert!(!is_not_found(&gai("Temporary failure in name resolution")));
    }
}
