//! Connecting to a target, bounded by a timeout.

use std::{io, net::SocketAddr, time::Duration};
use tokio::net::{TcpSocket, TcpStream};

/// A connection to a target could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The target did not accept within the timeout.
    #[error("connect to {addr} timed out after {timeout:?}")]
    Timeout {
        /// The target.
        addr: SocketAddr,
        /// The timeout that expired.
        timeout: Duration,
    },
    /// The connection failed (refused, unreachable, ...).
    #[error("connect to {addr} failed")]
    Io {
        /// The target.
        addr: SocketAddr,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
}

impl ConnectError {
    /// The reason class, for metrics: `connect_timeout`, `connect_refused`
    /// or `connect_error`.
    pub fn reason(&self) -> &'static str {
        match self {
            ConnectError::Timeout { .. } => "connect_timeout",
            ConnectError::Io { source, .. }
                if source.kind() == io::ErrorKind::ConnectionRefused =>
            {
                "connect_refused"
            }
            ConnectError::Io { .. } => "connect_error",
        }
    }

    /// The OS error behind the failure, if any.
    pub fn io(&self) -> Option<&io::Error> {
        match self {
            ConnectError::Timeout { .. } => None,
            ConnectError::Io { source, .. } => Some(source),
        }
    }
}

/// Connects to `addr` within `timeout`, with `TCP_NODELAY` and, when given,
/// TCP keepalive.
pub async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    keepalive: Option<Duration>,
) -> Result<TcpStream, ConnectError> {
    match tokio::time::timeout(timeout, dial(addr, keepalive)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(source)) => Err(ConnectError::Io { addr, source }),
        Err(_) => Err(ConnectError::Timeout { addr, timeout }),
    }
}

/// One connection attempt to `addr`, unbounded in time (the caller
/// bounds it): `TCP_NODELAY` and, when given, TCP keepalive.
pub(crate) async fn dial(addr: SocketAddr, keepalive: Option<Duration>) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }?;
    if let Some(idle) = keepalive {
        // Keepalive is an optimisation; connect without it rather than fail.
        let _ = socket2::SockRef::from(&socket).set_tcp_keepalive(&crate::keepalive_params(idle));
    }
    let _ = socket.set_nodelay(true);
    socket.connect(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refused_is_classified() {
        // Bind then drop: the port is (almost certainly) closed now.
        let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let err = connect(addr, Duration::from_secs(1), None)
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "connect_refused");
        assert_eq!(err.io().and_then(|e| e.raw_os_error()), Some(111));
    }

    #[tokio::test]
    async fn connects_with_keepalive() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = connect(addr, Duration::from_secs(1), Some(Duration::from_secs(10)))
            .await
            .unwrap();
        assert!(socket2::SockRef::from(&stream).keepalive().unwrap());
        assert!(stream.nodelay().unwrap());
    }
}
