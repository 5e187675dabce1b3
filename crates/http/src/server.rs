//! Serving a client connection detected as HTTP.

use crate::{Proxy, Version};
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use linnet_config::HttpConfig;
use linnet_core::drain;

/// Streams a client may open at once on one HTTP/2 connection.
const MAX_CONCURRENT_STREAMS: u32 = 1000;
use tokio::io::{AsyncRead, AsyncWrite};

/// Runs a hyper server connection until it ends: when draining starts it
/// is shut down gracefully, and when the grace period ends it is dropped.
/// (A macro: hyper's HTTP/1 and HTTP/2 connections share no trait for
/// `graceful_shutdown`.)
macro_rules! drive {
    ($conn:expr, $watch:expr) => {{
        let conn = $conn;
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => return r,
            _ = $watch.draining() => conn.as_mut().graceful_shutdown(),
        }
        tokio::select! {
            r = conn.as_mut() => r,
            _ = $watch.closing() => Ok(()),
        }
    }};
}

/// Serves `io` with `proxy` until the client closes. When draining starts
/// the connection is shut down gracefully (HTTP/2 GOAWAY; HTTP/1 closes
/// after the request in flight); when the grace period ends it is dropped.
pub async fn serve<I>(
    io: I,
    version: Version,
    proxy: Proxy,
    config: &HttpConfig,
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
                .header_read_timeout(config.header_read_timeout)
                .preserve_header_case(true)
                // The target's response says whether it has a date.
                .auto_date_header(false)
                // A client may send its request and shut its write side
                // while it waits: the response is still owed.
                .half_close(true)
                .serve_connection(io, proxy)
                .with_upgrades();
            drive!(conn, watch)
        }
        Version::Http2 => {
            let adaptive = config.http2_initial_stream_window_size.is_none()
                && config.http2_initial_connection_window_size.is_none();
            let conn = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .auto_date_header(false)
                .adaptive_window(adaptive)
                .initial_stream_window_size(config.http2_initial_stream_window_size)
                .initial_connection_window_size(config.http2_initial_connection_window_size)
                .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
                .keep_alive_interval(config.http2_keepalive_interval)
                .keep_alive_timeout(config.http2_keepalive_timeout)
                .serve_connection(io, proxy);
            drive!(conn, watch)
        }
    }
}
