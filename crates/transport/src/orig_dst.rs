//! Where an intercepted connection was going.
//!
//! iptables' `REDIRECT` rewrites a connection's destination to the proxy's
//! listener; the kernel keeps the original one, which `SO_ORIGINAL_DST`
//! (IPv4) and `IP6T_SO_ORIGINAL_DST` (IPv6) read back. Tests and laptops
//! have no iptables, so the lookup is a value the stacks are given: the
//! real socket option, or a stand-in.

use std::{fmt, io, net::SocketAddr, sync::Arc};
use tokio::net::TcpStream;

type LookupFn = dyn Fn(&TcpStream) -> io::Result<SocketAddr> + Send + Sync;

/// How to find an accepted connection's original destination.
#[derive(Clone)]
pub enum OrigDst {
    /// Ask the kernel (`SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`).
    Socket,
    /// Every connection was for this address (tests).
    Fixed(SocketAddr),
    /// Any other rule (tests).
    Fn(Arc<LookupFn>),
}

impl OrigDst {
    /// A lookup by an arbitrary function.
    pub fn from_fn(
        f: impl Fn(&TcpStream) -> io::Result<SocketAddr> + Send + Sync + 'static,
    ) -> Self {
        OrigDst::Fn(Arc::new(f))
    }

    /// The original destination of `stream`.
    ///
    /// A connection that was not redirected has none: the kernel answers
    /// `ENOENT`, or, when conntrack is loaded, the listener's own address.
    /// Callers treat both the same (see [`OrigDst::lookup_redirected`]).
    pub fn lookup(&self, stream: &TcpStream) -> io::Result<SocketAddr> {
        match self {
            OrigDst::Socket => socket_orig_dst(stream),
            OrigDst::Fixed(addr) => Ok(*addr),
            OrigDst::Fn(f) => f(stream),
        }
    }

    /// The original destination of `stream` if it was redirected to us;
    /// `Ok(None)` if it was not (it was made to our listener directly).
    pub fn lookup_redirected(&self, stream: &TcpStream) -> io::Result<Option<SocketAddr>> {
        let local = stream.local_addr()?;
        match self.lookup(stream) {
            Ok(dst) if same_addr(dst, local) => Ok(None),
            Ok(dst) => Ok(Some(dst)),
            Err(e) if not_tracked(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl fmt::Debug for OrigDst {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OrigDst::Socket => f.write_str("Socket"),
            OrigDst::Fixed(a) => f.debug_tuple("Fixed").field(a).finish(),
            OrigDst::Fn(_) => f.write_str("Fn"),
        }
    }
}

/// Whether a lookup error means "no original destination": `ENOENT`
/// (conntrack has no entry for the connection) or `ENOPROTOOPT` /
/// `EOPNOTSUPP` (conntrack is not loaded at all, as on a laptop).
fn not_tracked(e: &io::Error) -> bool {
    const ENOENT: i32 = 2;
    const ENOPROTOOPT: i32 = 92;
    const EOPNOTSUPP: i32 = 95;
    matches!(e.raw_os_error(), Some(ENOENT | ENOPROTOOPT | EOPNOTSUPP))
}

/// Compares addresses, treating an IPv4-mapped IPv6 address as the IPv4
/// address it carries (a dual-stack listener sees IPv4 peers that way).
fn same_addr(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}

fn socket_orig_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let local = stream.local_addr()?;
    // An IPv4 connection on a dual-stack IPv6 listener is tracked as IPv4.
    let addr = if local.ip().to_canonical().is_ipv4() {
        sock.original_dst_v4()?
    } else {
        sock.original_dst_v6()?
    };
    addr.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "original destination is not an IP address",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn direct_connection_is_not_redirected() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        // Without a NAT rule the kernel has no original destination (or,
        // with conntrack loaded, reports our own address): not redirected.
        assert_eq!(OrigDst::Socket.lookup_redirected(&server).unwrap(), None);
        // A stand-in that reports our own address: also not redirected.
        assert_eq!(
            OrigDst::Fixed(addr).lookup_redirected(&server).unwrap(),
            None
        );
        let other: SocketAddr = "10.1.2.3:80".parse().unwrap();
        assert_eq!(
            OrigDst::Fixed(other).lookup_redirected(&server).unwrap(),
            Some(other)
        );
    }

    #[test]
    fn untracked_errors_mean_not_redirected() {
        for errno in [2, 92, 95] {
            assert!(not_tracked(&io::Error::from_raw_os_error(errno)));
        }
        assert!(!not_tracked(&io::Error::from_raw_os_error(9)));
    }

    #[test]
    fn mapped_addresses_compare_equal() {
        let v4: SocketAddr = "127.0.0.1:4143".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:4143".parse().unwrap();
        assert!(same_addr(v4, mapped));
        assert!(!same_addr(v4, "127.0.0.1:4140".parse().unwrap()));
    }
}
