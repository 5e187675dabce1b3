//! Listeners: bind, and accept with the socket options every proxied
//! connection gets.

use std::{io, net::SocketAddr, time::Duration};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// The accept backlog: generous, because a sidecar's listener takes every
/// connection of its pod.
const BACKLOG: u32 = 1024;

/// Binds a listener on `addr` (port 0 picks a free port).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// An accepted connection, configured.
#[derive(Debug)]
pub struct Accepted {
    /// The connection.
    pub stream: TcpStream,
    /// The client's address.
    pub client: SocketAddr,
}

/// Accepts one connection and sets `TCP_NODELAY` (the proxy forwards what
/// it has at once; the application chose its own write sizes) and, when
/// given, TCP keepalive.
pub async fn accept(listener: &TcpListener, keepalive: Option<Duration>) -> io::Result<Accepted> {
    let (stream, client) = listener.accept().await?;
    // Socket options are an optimisation; a connection is served without
    // them rather than dropped.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "could not set TCP_NODELAY");
    }
    if let Some(idle) = keepalive {
        if let Err(error) = crate::set_keepalive(&stream, idle) {
            tracing::debug!(%error, "could not set TCP keepalive");
        }
    }
    Ok(Accepted { stream, client })
}
