//! Serving a client connection detected as HTTP.

use crate::{Proxy, Version};
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use linnet_core::drain;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// How long a client may take to send a request's headers (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `io` with `proxy` until the client closes. When draining starts
/// the connection is shut down gracefully (HTTP/2 GOAWAY; HTTP/1 closes
/// after the request in flight); when the grace period ends it is dropped.
pub async fn serve<I>(
    io: I,
    version: Version,
    proxy: Proxy,
    mut watch: drain::Watch,
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    match version {
        Version::Http1 => {
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .preserve_header_case(true)
                // A client may send its request and shut its write side
                // while it waits: the response is still owed.
                .half_close(true)
                .serve_connection(io, proxy)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => return r,
                _ = watch.draining() => conn.as_mut().graceful_shutdown(),
            }
            tokio::select! {
                r = conn.as_mut() => r,
                _ = watch.closing() => Ok(()),
            }
        }
        Version::Http2 => {
            let conn = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .adaptive_window(true)
                .max_concurrent_streams(1000)
                .keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(3))
                .serve_connection(io, proxy);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => return r,
                _ = watch.draining() => conn.as_mut().graceful_shutdown(),
            }
            tokio::select! {
                r = conn.as_mut() => r,
                _ = watch.closing() => Ok(()),
            }
        }
    }
}
