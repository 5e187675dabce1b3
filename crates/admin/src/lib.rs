//! The admin server: what operators and Kubernetes ask the proxy.
//!
//! HTTP/1.1 on its own listener (default `127.0.0.1:4191`), off the data
//! path:
//!
//! | route | |
//! |---|---|
//! | `GET /live` | 200 while the process runs (liveness probe) |
//! | `GET /ready` | 200 once the proxy can serve, 503 before and while draining |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /config.json` | the effective configuration |
//! | `GET`/`PUT /proxy-log-level` | read or replace the log filter (loopback clients only) |
//! | `POST /shutdown` | start a graceful shutdown (loopback clients only) |

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::{TokioIo, TokioTimer};
use linnet_metrics::prometheus_client::registry::Registry;
use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use tokio::net::TcpListener;

/// The largest log filter accepted by `PUT /proxy-log-level`.
const MAX_LOG_LEVEL_BODY: usize = 4 * 1024;

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads and replaces the process's log filter.
pub trait LogLevel: Send + Sync + 'static {
    /// The filter in force.
    fn get(&self) -> String;
    /// Replaces the filter; an error says why `filter` is not one.
    fn set(&self, filter: &str) -> Result<(), String>;
}

/// Whether the proxy is ready to serve; shared by the stacks that decide it
/// and the admin server that reports it.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks the proxy ready, or not.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    /// Whether the proxy is ready.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// What the admin server serves.
pub struct Admin {
    /// The metrics registry, encoded on each scrape.
    pub registry: Arc<Registry>,
    /// The effective configuration, as JSON.
    pub config_json: Bytes,
    /// Readiness, set by the proxy.
    pub readiness: Readiness,
    /// Log-level control; `None` where logging cannot be changed.
    pub log_level: Option<Arc<dyn LogLevel>>,
    /// Starts a graceful shutdown.
    pub shutdown: Arc<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("readiness", &self.readiness)
            .finish_non_exhaustive()
    }
}

/// Serves `admin` on `listener` until `stop` resolves.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        let (stream, client) = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    tracing::warn!(%error, "admin server failed to accept a connection");
                    // Out of file descriptors, most likely: do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&admin, client, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = conn.await {
                tracing::debug!(%client, %error, "admin connection failed");
            }
        });
    }
}

/// Routes one request.
async fn handle<B>(admin: &Admin, client: SocketAddr, req: Request<B>) -> Response<Full<Bytes>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<linnet_core::Error>,
{
    let loopback = client.ip().to_canonical().is_loopback();
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/live") => text(StatusCode::OK, "live\n"),
        (&Method::GET | &Method::HEAD, "/ready") => {
            if admin.readiness.get() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        (&Method::GET | &Method::HEAD, "/metrics") => {
            let body = linnet_metrics::encode(&admin.registry);
            respond(StatusCode::OK, linnet_metrics::CONTENT_TYPE, body.into())
        }
        (&Method::GET | &Method::HEAD, "/config.json") => respond(
            StatusCode::OK,
            "application/json",
            admin.config_json.clone(),
        ),
        (_, "/proxy-log-level" | "/shutdown") if !loopback => {
            text(StatusCode::FORBIDDEN, "only loopback clients may do this\n")
        }
        (&Method::GET, "/proxy-log-level") => match &admin.log_level {
            Some(l) => text(StatusCode::OK, format!("{}\n", l.get())),
            None => text(
                StatusCode::NOT_FOUND,
                "log level control is not available\n",
            ),
        },
        (&Method::PUT, "/proxy-log-level") => put_log_level(admin, req).await,
        (&Method::POST, "/shutdown") => {
            tracing::info!(%client, "shutdown requested through the admin server");
            (admin.shutdown)();
            text(StatusCode::OK, "shutdown\n")
        }
        (
            _,
            "/live" | "/ready" | "/metrics" | "/config.json" | "/proxy-log-level" | "/shutdown",
        ) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

async fn put_log_level<B>(admin: &Admin, req: Request<B>) -> Response<Full<Bytes>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<linnet_core::Error>,
{
    let Some(control) = &admin.log_level else {
        return text(
            StatusCode::NOT_FOUND,
            "log level control is not available\n",
        );
    };
    let body = match Limited::new(req.into_body(), MAX_LOG_LEVEL_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a log filter is at most {MAX_LOG_LEVEL_BODY} bytes\n"),
            );
        }
    };
    let Ok(filter) = std::str::from_utf8(&body) else {
        return text(StatusCode::BAD_REQUEST, "the log filter is not UTF-8\n");
    };
    let filter = filter.trim();
    match control.set(filter) {
        Ok(()) => {
            tracing::info!(%filter, "log filter changed");
            text(StatusCode::NO_CONTENT, "")
        }
        Err(e) => text(
            StatusCode::BAD_REQUEST,
            format!("invalid log filter: {e}\n"),
        ),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    respond(status, "text/plain; charset=utf-8", body.into())
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(body));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    rsp
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    #[derive(Default)]
    struct FakeLog(Mutex<String>);
    impl LogLevel for FakeLog {
        fn get(&self) -> String {
            self.0.lock().unwrap().clone()
        }
        fn set(&self, filter: &str) -> Result<(), String> {
            if filter.contains('!') {
                return Err("bad".into());
            }
            *self.0.lock().unwrap() = filter.to_string();
            Ok(())
        }
    }

    fn admin(shutdowns: Arc<AtomicUsize>) -> Admin {
        Admin {
            registry: Arc::new(linnet_metrics::registry()),
            config_json: Bytes::from_static(b"{}"),
            readiness: Readiness::default(),
            log_level: Some(Arc::new(FakeLog::default())),
            shutdown: Arc::new(move || {
                shutdowns.fetch_add(1, Ordering::SeqCst);
            }),
        }
    }

    async fn call(
        admin: &Admin,
        client: &str,
        method: Method,
        path: &str,
        body: &str,
    ) -> (StatusCode, String) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let rsp = handle(admin, client.parse().unwrap(), req).await;
        let status = rsp.status();
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    const LOCAL: &str = "127.0.0.1:5000";
    const REMOTE: &str = "10.0.0.9:5000";

    #[tokio::test]
    async fn health_and_readiness() {
        let a = admin(Default::default());
        assert_eq!(
            call(&a, REMOTE, Method::GET, "/live", "").await.0,
            StatusCode::OK
        );
        assert_eq!(
            call(&a, REMOTE, Method::GET, "/ready", "").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        a.readiness.set(true);
        assert_eq!(
            call(&a, REMOTE, Method::GET, "/ready", "").await.0,
            StatusCode::OK
        );
        let (status, body) = call(&a, REMOTE, Method::GET, "/metrics", "").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("process_cpu_seconds_total"), "{body}");
        assert!(body.contains("proxy_build_info{"), "{body}");
        assert_eq!(
            call(&a, REMOTE, Method::GET, "/config.json", "").await,
            (StatusCode::OK, "{}".into())
        );
        assert_eq!(
            call(&a, REMOTE, Method::POST, "/ready", "").await.0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            call(&a, REMOTE, Method::GET, "/nope", "").await.0,
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn log_level_and_shutdown_are_loopback_only() {
        let shutdowns = Arc::new(AtomicUsize::new(0));
        let a = admin(shutdowns.clone());
        assert_eq!(
            call(&a, REMOTE, Method::PUT, "/proxy-log-level", "debug")
                .await
                .0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            call(&a, REMOTE, Method::GET, "/proxy-log-level", "")
                .await
                .0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            call(&a, REMOTE, Method::POST, "/shutdown", "").await.0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(shutdowns.load(Ordering::SeqCst), 0);

        assert_eq!(
            call(&a, LOCAL, Method::PUT, "/proxy-log-level", "debug\n")
                .await
                .0,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            call(&a, LOCAL, Method::GET, "/proxy-log-level", "").await,
            (StatusCode::OK, "debug\n".into())
        );
        assert_eq!(
            call(&a, LOCAL, Method::PUT, "/proxy-log-level", "bad!")
                .await
                .0,
            StatusCode::BAD_REQUEST
        );
        let huge = "x".repeat(MAX_LOG_LEVEL_BODY + 1);
        assert_eq!(
            call(&a, LOCAL, Method::PUT, "/proxy-log-level", &huge)
                .await
                .0,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            call(&a, "[::1]:5000", Method::POST, "/shutdown", "")
                .await
                .0,
            StatusCode::OK
        );
        assert_eq!(shutdowns.load(Ordering::SeqCst), 1);
    }
}
