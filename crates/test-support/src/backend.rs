//! A backend whose behaviour a test changes while it runs: latency,
//! failures (every request, or a share of them, deterministically), `429`
//! with `Retry-After`, and a gRPC status; it counts what it served and
//! keeps the bodies it received.
//!
//! Used by the outbound stack's end-to-end tests: balancing by latency,
//! failure accrual, retries and their budget, traffic splits.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::{net::TcpListener, task::JoinHandle};

/// How the backend answers now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Behavior {
    /// Time before each answer.
    pub latency: Duration,
    /// Fail this many of every 100 requests (spread evenly: request `n`
    /// fails when `n * fail_percent / 100` steps up), with `fail_status`.
    pub fail_percent: u32,
    /// The status of a failure (500 when 0).
    pub fail_status: u16,
    /// Answer failures with `Retry-After: <seconds>`.
    pub retry_after: Option<u32>,
}

/// A backend a test controls.
#[derive(Debug)]
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its name, in the `x-backend` response header.
    pub name: String,
    behavior: Arc<Mutex<Behavior>>,
    served: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    bodies: Arc<Mutex<Vec<Bytes>>>,
    task: JoinHandle<()>,
}

impl Backend {
    /// Starts a backend on `127.0.0.1:0` answering `200 <name>`.
    pub async fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let behavior = Arc::new(Mutex::new(Behavior::default()));
        let served = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (behavior, served, failed, bodies) = (
                behavior.clone(),
                served.clone(),
                failed.clone(),
                bodies.clone(),
            );
            let name = name.to_string();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (behavior, served, failed, bodies, name) = (
                        behavior.clone(),
                        served.clone(),
                        failed.clone(),
                        bodies.clone(),
                        name.clone(),
                    );
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let (behavior, served, failed, bodies, name) = (
                                behavior.clone(),
                                served.clone(),
                                failed.clone(),
                                bodies.clone(),
                                name.clone(),
                            );
                            async move {
                                Ok::<_, Infallible>(
                                    answer(req, &behavior, &served, &failed, &bodies, &name).await,
                                )
                            }
                        });
                        let _ = auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            }
        });
        Self {
            addr,
            name: name.to_string(),
            behavior,
            served,
            failed,
            bodies,
            task,
        }
    }

    /// Changes how it answers from the next request on.
    pub fn set(&self, behavior: Behavior) {
        *self.behavior.lock().unwrap() = behavior;
    }

    /// Requests it answered (failures included).
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Requests it failed on purpose.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// The bodies of the requests it received, in order.
    pub fn bodies(&self) -> Vec<Bytes> {
        self.bodies.lock().unwrap().clone()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    req: Request<Incoming>,
    behavior: &Mutex<Behavior>,
    served: &AtomicU64,
    failed: &AtomicU64,
    bodies: &Mutex<Vec<Bytes>>,
    name: &str,
) -> Response<Full<Bytes>> {
    let b = behavior.lock().unwrap().clone();
    let body = req.into_body().collect().await.map(|c| c.to_bytes());
    if let Ok(body) = body {
        if !body.is_empty() {
            bodies.lock().unwrap().push(body);
        }
    }
    if !b.latency.is_zero() {
        tokio::time::sleep(b.latency).await;
    }
    let n = served.fetch_add(1, Ordering::Relaxed) + 1;
    let fail = b.fail_percent > 0
        && (n * u64::from(b.fail_percent)) / 100 != ((n - 1) * u64::from(b.fail_percent)) / 100;
    let mut rsp = Response::new(Full::new(Bytes::from(name.to_string())));
    rsp.headers_mut().insert("x-backend", name.parse().unwrap());
    if fail {
        failed.fetch_add(1, Ordering::Relaxed);
        *rsp.status_mut() = StatusCode::from_u16(if b.fail_status == 0 {
            500
        } else {
            b.fail_status
        })
        .unwrap();
        if let Some(s) = b.retry_after {
            rsp.headers_mut().insert("retry-after", s.into());
        }
    }
    rsp
}
