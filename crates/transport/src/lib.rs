//! TCP transport of the Linnet proxy.
//!
//! The bottom of both stacks: binding listeners and accepting connections
//! ([`listen`]), recovering where an intercepted connection was going
//! ([`orig_dst`]), connecting to targets with a timeout ([`mod@connect`]), and
//! carrying bytes both ways without losing or reordering any ([`mod@duplex`]),
//! and the transport header meshed proxies put in front of opaque streams
//! ([`header`]). Names a client gives (explicit proxy mode) are resolved
//! as the system does ([`resolve`]) and connected to with happy eyeballs
//! ([`happy_eyeballs`]).
//! Nothing here knows about policy or protocols; the stacks in `linnet-app`
//! put these pieces together.

pub mod connect;
pub mod counting;
pub mod duplex;
pub mod happy_eyeballs;
pub mod header;
pub mod listen;
pub mod orig_dst;
pub mod resolve;

pub use self::{
    connect::{ConnectError, connect},
    counting::CountingIo,
    duplex::{CopyError, duplex},
    listen::{Accepted, bind},
    orig_dst::OrigDst,
};

use std::{io, time::Duration};
use tokio::net::TcpStream;

/// Sets TCP keepalive on `stream` so that a peer that vanished without a
/// FIN or RST is noticed: first probe after `idle`, then every `idle`
/// (capped at 10s), giving up after 3 unanswered probes.
pub fn set_keepalive(stream: &TcpStream, idle: Duration) -> io::Result<()> {
    socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive_params(idle))
}

fn keepalive_params(idle: Duration) -> socket2::TcpKeepalive {
    socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(idle.min(Duration::from_secs(10)))
        .with_retries(3)
}

/// Makes the next close of `stream` send a RST instead of a FIN, so that
/// the peer sees the connection fail rather than end cleanly. Used when
/// the other side of a proxied connection failed: a clean FIN would make a
/// truncated stream look complete.
pub fn reset_on_close(stream: &TcpStream) {
    // Zero linger never blocks; if it cannot be set, a FIN follows instead.
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}
