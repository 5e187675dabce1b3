//! Serving a client connection detected as HTTP.

use crate::{
    Proxy, Version,
    conn::Serving,
    head_clock::{Clocked, HeadClock},
};
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use linnet_config::HttpConfig;
use linnet_core::drain;
use linnet_metrics::{
    Direction,
    limits::{Idle, LimitMetrics},
};

use tokio::io::{AsyncRead, AsyncWrite};

/// Runs a hyper server connection until it ends: when draining starts, or
/// when a whole `HTTP_IDLE_TIMEOUT` passes without a new request, it is
/// shut down gracefully; when the grace period ends, or when the `$head`
/// future says a request head took too long, it is dropped. (A
/// macro: hyper's HTTP/1 and HTTP/2 connections share no trait for
/// `graceful_shutdown`.)
macro_rules! drive {
    ($conn:expr, $watch:expr, $idle:expr, $head:expr) => {{
        let conn = $conn;
        tokio::pin!(conn);
        let idle = $idle;
        let head = $head;
        tokio::pin!(head);
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + idle.period,
            idle.period,
        );
        let mut seen = idle.proxy.requests_started();
        loop {
            tokio::select! {
                r = conn.as_mut() => return r,
                _ = $watch.draining() => break,
                _ = &mut head => {
                    tracing::debug!("closing an HTTP/1 connection: a request head took longer than HTTP_HEADER_READ_TIMEOUT");
                    if let Some(m) = &idle.metrics {
                        m.idle(idle.direction, Idle::HttpHeader);
                    }
                    return Ok(());
                }
                _ = tick.tick() => {
                    let started = idle.proxy.requests_started();
                    if started == seen {
                        tracing::debug!(idle = ?idle.period, "closing an HTTP connection: no request for HTTP_IDLE_TIMEOUT");
                        if let Some(m) = &idle.metrics {
                            m.idle(idle.direction, Idle::HttpConnection);
                        }
                        break;
                    }
                    seen = started;
                }
            }
        }
        conn.as_mut().graceful_shutdown();
        tokio::select! {
            r = conn.as_mut() => r,
            _ = $watch.closing() => Ok(()),
        }
    }};
}

/// The connection idle timeout's state.
struct IdleConn {
    period: std::time::Duration,
    proxy: Proxy,
    metrics: Option<LimitMetrics>,
    direction: Direction,
}

/// Serves `io` with `proxy` until the client closes. When draining starts
/// the connection is shut down gracefully (HTTP/2 GOAWAY; HTTP/1 closes
/// after the request in flight); when the grace period ends it is dropped.
/// The same graceful shutdown closes a connection that started no request
/// for `HTTP_IDLE_TIMEOUT` (noticed after between one and two of it).
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
    let clock = (version == Version::Http1).then(HeadClock::new);
    let proxy = proxy.serving(Serving {
        watch: watch.clone(),
        body_idle_timeout: config.body_idle_timeout,
        head_clock: clock.clone(),
    });
    let idle = IdleConn {
        period: config.idle_timeout,
        proxy: proxy.clone(),
        metrics: proxy.limit_metrics(),
        direction: proxy.direction(),
    };
    match version {
        Version::Http1 => {
            let clock = clock.unwrap_or_else(HeadClock::new);
            let io = TokioIo::new(Clocked::new(io, clock.clone()));
            let head_timeout = config.header_read_timeout;
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                // hyper's would also time an idle keep-alive connection
                // (see `head_clock`).
                .header_read_timeout(None)
                .preserve_header_case(true)
                // The target's response says whether it has a date.
                .auto_date_header(false)
                // A client may send its request and shut its write side
                // while it waits: the response is still owed.
                .half_close(true)
                .serve_connection(io, proxy)
                .with_upgrades();
            drive!(conn, watch, idle, clock.expired(head_timeout))
        }
        Version::Http2 => {
            let conn = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .auto_date_header(false)
                .adaptive_window(config.http2_adaptive_window)
                .initial_stream_window_size(config.http2_initial_stream_window_size)
                .initial_connection_window_size(config.http2_initial_connection_window_size)
                .max_concurrent_streams(config.http2_max_concurrent_streams)
                .keep_alive_interval(config.http2_keepalive_interval)
                .keep_alive_timeout(config.http2_keepalive_timeout)
                .serve_connection(TokioIo::new(io), proxy);
            drive!(conn, watch, idle, std::future::pending::<()>())
        }
    }
}
