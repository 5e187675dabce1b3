//! An HTTP/1.1 and HTTP/2 test server, and clients.
//!
//! Routes of [`HttpServer`]:
//! - `/echo`: streams the request body back, with the request's
//!   `content-type`; headers it saw are recorded;
//! - `/status/<code>`: that status, no body;
//! - `/bytes/<n>`: `n` bytes of a repeating pattern;
//! - `/trailers`: a body, then trailers `grpc-status: 0`, `x-trailer: yes`;
//! - `/upgrade`: `101 Switching Protocols`, then echoes the raw stream;
//! - `/consume`: reads the whole request body, records whether it arrived
//!   complete ([`HttpServer::bodies`]), answers with its length;
//! - `/abort/<n>`: promises `2n` bytes, sends `n`, then fails;
//! - `/delay/<ms>`: answers `hello` after `ms` milliseconds;
//! - anything else: `hello`.

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
};
use tokio::{net::TcpListener, task::JoinHandle};

/// The test server's body type.
pub type Body = BoxBody<Bytes, linnet_core::Error>;

/// What the server saw of a request.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The method.
    pub method: Method,
    /// The request target as received.
    pub uri: Uri,
    /// The HTTP version.
    pub version: Version,
    /// The headers as received.
    pub headers: HeaderMap,
}

/// A server speaking HTTP/1.1 and HTTP/2 (prior knowledge).
#[derive(Debug)]
pub struct HttpServer {
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    bodies: Arc<Mutex<Vec<Result<usize, String>>>>,
    task: JoinHandle<()>,
}

impl HttpServer {
    /// Starts the server on `127.0.0.1:0`.
    pub async fn start() -> Self {
        Self::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap())
    }

    /// Starts the server on `listener` (one bound elsewhere, such as in
    /// a network namespace).
    pub fn start_on(listener: TcpListener) -> Self {
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let seen = seen.clone();
            let bodies = bodies.clone();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let seen = seen.clone();
                    let bodies = bodies.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let seen = seen.clone();
                            let bodies = bodies.clone();
                            async move { Ok::<_, Infallible>(route(req, &seen, &bodies).await) }
                        });
                        let _ = auto::Builder::new(TokioExecutor::new())
                            .serve_connection_with_upgrades(TokioIo::new(stream), service)
                            .await;
                    });
                }
            }
        });
        Self {
            addr,
            seen,
            bodies,
            task,
        }
    }

    /// How each `/consume` request body ended: its length, or the error.
    pub fn bodies(&self) -> Vec<Result<usize, String>> {
        self.bodies.lock().unwrap().clone()
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn route(
    mut req: Request<Incoming>,
    seen: &Mutex<Vec<Seen>>,
    bodies: &Mutex<Vec<Result<usize, String>>>,
) -> Response<Body> {
    seen.lock().unwrap().push(Seen {
        method: req.method().clone(),
        uri: req.uri().clone(),
        version: req.version(),
        headers: req.headers().clone(),
    });
    let path = req.uri().path().to_string();
    let mut rsp = if path == "/echo" {
        let ct = req.headers().get("content-type").cloned();
        let mut rsp = Response::new(req.into_body().map_err(linnet_core::Error::from).boxed());
        if let Some(ct) = ct {
            rsp.headers_mut().insert("content-type", ct);
        }
        rsp
    } else if path == "/consume" {
        let result = req.into_body().collect().await.map(|c| c.to_bytes().len());
        let rsp = match &result {
            Ok(n) => Response::new(full(Bytes::from(n.to_string()))),
            Err(_) => {
                let mut rsp = Response::new(empty());
                *rsp.status_mut() = StatusCode::BAD_REQUEST;
                rsp
            }
        };
        bodies
            .lock()
            .unwrap()
            .push(result.map_err(|e| e.to_string()));
        rsp
    } else if let Some(n) = path.strip_prefix("/abort/") {
        let n: usize = n.parse().unwrap_or(0);
        // Data first; the failure a moment later, once the head is out.
        let body = StreamBody::new(futures_util::stream::unfold(0, move |step| async move {
            match step {
                0 => Some((Ok::<_, std::io::Error>(Frame::data(pattern(n))), 1)),
                1 => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    Some((Err(std::io::Error::other("aborted on purpose")), 2))
                }
                _ => None,
            }
        }));
        let mut rsp = Response::new(body.map_err(linnet_core::Error::from).boxed());
        rsp.headers_mut()
            .insert("content-length", (2 * n).to_string().parse().unwrap());
        rsp
    } else if let Some(ms) = path.strip_prefix("/delay/") {
        let ms: u64 = ms.parse().unwrap_or(0);
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        Response::new(full(Bytes::from_static(b"hello")))
    } else if let Some(code) = path.strip_prefix("/status/") {
        let mut rsp = Response::new(empty());
        *rsp.status_mut() = code.parse().unwrap_or(StatusCode::BAD_REQUEST);
        rsp
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        let n: usize = n.parse().unwrap_or(0);
        Response::new(full(pattern(n)))
    } else if path == "/trailers" {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert("x-trailer", "yes".parse().unwrap());
        let frames = vec![
            Ok::<_, linnet_core::Error>(Frame::data(Bytes::from_static(b"with trailers"))),
            Ok(Frame::trailers(trailers)),
        ];
        Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed())
    } else if path == "/upgrade" {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = upgrade.await {
                let (mut r, mut w) = tokio::io::split(TokioIo::new(up));
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut rsp = Response::new(empty());
        *rsp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        rsp.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        rsp.headers_mut().insert("upgrade", "echo".parse().unwrap());
        rsp
    } else {
        Response::new(full(Bytes::from_static(b"hello")))
    };
    rsp.headers_mut()
        .insert("x-served-by", "test-server".parse().unwrap());
    rsp
}

/// `n` bytes of a repeating, position-dependent pattern.
pub fn pattern(n: usize) -> Bytes {
    (0..n).map(|i| (i % 251) as u8).collect::<Vec<_>>().into()
}

fn empty() -> Body {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|never| match never {}).boxed()
}

/// An HTTP/1.1 client.
pub fn h1_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 (prior knowledge) client.
pub fn h2_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// Collects a response: status, headers, body, trailers.
pub async fn collect(rsp: Response<Incoming>) -> (StatusCode, HeaderMap, Bytes, Option<HeaderMap>) {
    let (parts, body) = rsp.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (parts.status, parts.headers, collected.to_bytes(), trailers)
}

/// Runs `curl -sS --max-time 10 ARGS`; panics unless it succeeds. Returns
/// stdout and stderr.
pub async fn curl(args: &[&str]) -> (String, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .await
        .expect("curl must be installed");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
