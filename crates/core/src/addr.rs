//! Addresses as configuration gives them (`host:port`), and the one
//! question the control-plane clients ask of them: is this loopback?
//!
//! linkerd2-proxy speaks to a control plane on a loopback address in
//! plaintext and to any other only over TLS; Linnet keeps that rule, and
//! both the configuration check and the channel construction ask here.

use std::net::{IpAddr, SocketAddr};

/// Whether `authority` (`host:port`, `ip:port` or `[ipv6]:port`) names a
/// loopback address: an IP in 127.0.0.0/8 or `::1` (also IPv4-mapped), or
/// the name `localhost`. Any other DNS name counts as not loopback: what
/// it resolves to is not ours to trust.
pub fn is_loopback_authority(authority: &str) -> bool {
    let authority = authority.trim();
    if let Ok(addr) = authority.parse::<SocketAddr>() {
        return is_loopback_ip(addr.ip());
    }
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(host, _port)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return is_loopback_ip(ip);
    }
    host.trim_end_matches('.').eq_ignore_ascii_case("localhost")
}

/// Whether `ip` is a loopback address (IPv4-mapped IPv6 included).
pub fn is_loopback_ip(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_or_not() {
        for a in [
            "127.0.0.1:8086",
            "127.3.2.1:1",
            "[::1]:8086",
            "[::ffff:127.0.0.1]:8086",
            "localhost:8086",
            "LocalHost.:8086",
        ] {
            assert!(is_loopback_authority(a), "{a}");
        }
        for a in [
            "10.0.0.1:8086",
            "0.0.0.0:8086",
            "[fd00::1]:8086",
            "linkerd-dst-headless.linkerd.svc.cluster.local:8086",
            "localhost.example.com:8086",
            "mylocalhost:8086",
        ] {
            assert!(!is_loopback_authority(a), "{a}");
        }
    }
}
