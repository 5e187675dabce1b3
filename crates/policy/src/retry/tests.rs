use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderValue};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use super::*;
use crate::params::{self, Backoff, GrpcCodes, RetryOn};

// === an upstream that follows a script ===

/// How much of the request body the upstream reads before answering.
#[derive(Clone, Copy)]
enum Read {
    All,
    OneFrame,
    Nothing,
}

type Respond = Box<dyn FnOnce() -> Result<http::Response<BoxBody>, Error> + Send>;

struct Step {
    read: Read,
    /// Never answers (after reading).
    hang: bool,
    respond: Respond,
}

/// What the upstream saw of one attempt.
struct Seen {
    at: Instant,
    headers: HeaderMap,
    data: Bytes,
    trailers: Option<HeaderMap>,
}

#[derive(Default)]
struct Script {
    steps: VecDeque<Step>,
    seen: Vec<Seen>,
}

/// Answers each call with the next step; 503 once the script runs out.
#[derive(Clone, Default)]
struct Upstream(Arc<Mutex<Script>>);

impl Upstream {
    fn new(steps: Vec<Step>) -> Self {
        Self(Arc::new(Mutex::new(Script {
            steps: steps.into(),
            seen: Vec::new(),
        })))
    }

    fn calls(&self) -> usize {
        self.0.lock().unwrap().seen.len()
    }

    fn seen<T>(&self, f: impl FnOnce(&[Seen]) -> T) -> T {
        f(&self.0.lock().unwrap().seen)
    }
}

impl Service<http::Request<BoxBody>> for Upstream {
    type Response = http::Response<BoxBody>;
    type Error = Error;
    type Future = BoxFuture<'static, Result<http::Response<BoxBody>, Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<BoxBody>) -> Self::Future {
        let at = Instant::now();
        let step = self
            .0
            .lock()
            .unwrap()
            .steps
            .pop_front()
            .unwrap_or_else(|| status(503));
        let script = self.0.clone();
        Box::pin(async move {
            let (parts, mut body) = req.into_parts();
            let mut data = Vec::new();
            let mut trailers = None;
            let frames = match step.read {
                Read::All => usize::MAX,
                Read::OneFrame => 1,
                Read::Nothing => 0,
            };
            for _ in 0..frames {
                match body.frame().await {
                    Some(Ok(f)) if f.is_data() => data.extend_from_slice(&f.into_data().unwrap()),
                    Some(Ok(f)) => trailers = f.into_trailers().ok(),
                    Some(Err(e)) => return Err(e),
                    None => break,
                }
            }
            drop(body);
            script.lock().unwrap().seen.push(Seen {
                at,
                headers: parts.headers,
                data: data.into(),
                trailers,
            });
            if step.hang {
                std::future::pending::<()>().await;
            }
            (step.respond)()
        })
    }
}

fn respond(
    read: Read,
    f: impl FnOnce() -> Result<http::Response<BoxBody>, Error> + Send + 'static,
) -> Step {
    Step {
        read,
        hang: false,
        respond: Box::new(f),
    }
}

fn status_with(code: u16, headers: &'static [(&'static str, &'static str)]) -> Step {
    respond(Read::All, move || {
        let mut rsp = http::Response::new(BoxBody::new(
            Full::new(Bytes::from(format!("status {code}"))).map_err(|e| match e {}),
        ));
        *rsp.status_mut() = http::StatusCode::from_u16(code).unwrap();
        for (k, v) in headers {
            rsp.headers_mut().insert(*k, HeaderValue::from_static(v));
        }
        Ok(rsp)
    })
}

fn status(code: u16) -> Step {
    status_with(code, &[])
}

fn grpc_trailers(code: &'static str) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from_static(code));
    t
}

/// A gRPC response: optional data, then trailers with `code`.
fn grpc_body(data: bool, code: &'static str) -> Step {
    respond(Read::All, move || {
        let mut frames = Vec::new();
        if data {
            frames.push(Frame::data(Bytes::from_static(b"message")));
        }
        frames.push(Frame::trailers(grpc_trailers(code)));
        Ok(http::Response::new(body(frames)))
    })
}

fn fail(retryable: bool) -> Step {
    respond(Read::Nothing, move || {
        let e: Error = Box::new(std::io::Error::other("connection refused"));
        Err(if retryable { Box::new(Retryable(e)) } else { e })
    })
}

fn hang() -> Step {
    Step {
        hang: true,
        ..status(200)
    }
}

fn body(frames: Vec<Frame<Bytes>>) -> BoxBody {
    BoxBody::new(StreamBody::new(futures_util::stream::iter(
        frames.into_iter().map(Ok::<_, Error>),
    )))
}

fn post(frames: Vec<Frame<Bytes>>) -> http::Request<BoxBody> {
    http::Request::post("http://svc.test/")
        .body(body(frames))
        .unwrap()
}

fn get() -> http::Request<BoxBody> {
    http::Request::get("http://svc.test/")
        .body(BoxBody::default())
        .unwrap()
}

fn data(s: &'static str) -> Frame<Bytes> {
    Frame::data(Bytes::from_static(s.as_bytes()))
}

// === the retry layer under test ===

fn on_5xx(max_retries: u32) -> params::Retry {
    params::Retry {
        max_retries,
        max_request_bytes: params::DEFAULT_MAX_REQUEST_BYTES,
        on: RetryOn::Http(vec![500..=599]),
        timeout: None,
        backoff: None,
    }
}

fn on_grpc(codes: &[u32]) -> params::Retry {
    let codes = codes.iter().fold(GrpcCodes::default(), |c, &n| c.with(n));
    params::Retry {
        on: RetryOn::Grpc(codes),
        ..on_5xx(1)
    }
}

fn generous() -> Arc<TpsBudget> {
    budget(&params::Budget {
        ratio: 1.0,
        min_per_second: 1000,
        ttl: Duration::from_secs(10),
    })
}

fn layer(params: Option<params::Retry>) -> (RetryLayer, RetryMetrics) {
    let metrics = RetryMetrics::default();
    (
        RetryLayer::new(params, generous(), metrics.clone()),
        metrics,
    )
}

async fn send(
    svc: &mut Retry<Upstream>,
    req: http::Request<BoxBody>,
) -> Result<http::Response<BoxBody>, Error> {
    svc.ready().await?.call(req).await
}

async fn text(rsp: http::Response<BoxBody>) -> Bytes {
    rsp.into_body().collect().await.unwrap().to_bytes()
}

fn counts(m: &RetryMetrics) -> [u64; 5] {
    [
        m.requests.get(),
        m.successes.get(),
        m.limit_exceeded.get(),
        m.overflow.get(),
        m.body_too_large.get(),
    ]
}

// === tests ===

#[tokio::test(start_paused = true)]
async fn a_503_then_200_replays_the_body_and_its_trailers() {
    let up = Upstream::new(vec![status(503), status(200)]);
    let (layer, metrics) = layer(Some(on_5xx(2)));
    let mut svc = layer.layer(up.clone());
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("abc"));
    let req = post(vec![
        data("hello "),
        data("world"),
        Frame::trailers(trailers.clone()),
    ]);

    let rsp = send(&mut svc, req).await.unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(text(rsp).await, "status 200");
    up.seen(|seen| {
        assert_eq!(seen.len(), 2);
        for s in seen {
            assert_eq!(s.data, "hello world");
            assert_eq!(s.trailers.as_ref(), Some(&trailers));
        }
    });
    // One retry sent, which succeeded.
    assert_eq!(counts(&metrics), [1, 1, 0, 0, 0]);
}

#[tokio::test(start_paused = true)]
async fn a_later_attempt_continues_the_unread_client_body() {
    let up = Upstream::new(vec![
        respond(Read::OneFrame, || (status(503).respond)()),
        fail(true), // reads nothing
        status(200),
    ]);
    let (layer, _) = layer(Some(on_5xx(3)));
    let mut svc = layer.layer(up.clone());
    let req = post(vec![
        data("one "),
        data("two "),
        data("three"),
        Frame::trailers(grpc_trailers("0")),
    ]);

    let rsp = send(&mut svc, req).await.unwrap();
    assert_eq!(rsp.status(), 200);
    up.seen(|seen| {
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[0].data, "one ");
        assert_eq!(seen[1].data, "");
        assert_eq!(seen[2].data, "one two three");
        assert_eq!(seen[2].trailers, Some(grpc_trailers("0")));
    });
}

#[tokio::test(start_paused = true)]
async fn a_body_found_over_the_limit_is_sent_once() {
    let up = Upstream::new(vec![status(503), status(200)]);
    let metrics = RetryMetrics::default();
    let params = params::Retry {
        max_request_bytes: 8,
        ..on_5xx(2)
    };
    let mut svc = RetryLayer::new(Some(params), generous(), metrics.clone()).layer(up.clone());

    let rsp = send(&mut svc, post(vec![data("123456"), data("789abc")]))
        .await
        .unwrap();
    assert_eq!(rsp.status(), 503);
    assert_eq!(up.calls(), 1);
    up.seen(|seen| assert_eq!(seen[0].data, "123456789abc", "streamed whole"));
    assert_eq!(counts(&metrics), [0, 0, 0, 0, 1]);
}

#[tokio::test(start_paused = true)]
async fn a_body_declared_over_the_limit_is_sent_once() {
    let up = Upstream::new(vec![status(503), status(200)]);
    let metrics = RetryMetrics::default();
    let params = params::Retry {
        max_request_bytes: 8,
        ..on_5xx(2)
    };
    let mut svc = RetryLayer::new(Some(params), generous(), metrics.clone()).layer(up.clone());
    let mut req = post(vec![data("12345")]);
    req.headers_mut().insert(
        http::header::CONTENT_LENGTH,
        HeaderValue::from_static("100"),
    );

    let rsp = send(&mut svc, req).await.unwrap();
    assert_eq!(rsp.status(), 503);
    assert_eq!(up.calls(), 1);
    assert_eq!(metrics.body_too_large.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn grpc_codes_in_headers_and_trailers_only_bodies() {
    let unavailable_header = status_with(200, &[("grpc-status", "14")]);
    let ok = || grpc_body(false, "0");

    // In the headers: retried.
    let up = Upstream::new(vec![unavailable_header, ok()]);
    let mut svc = layer(Some(on_grpc(&[14]))).0.layer(up.clone());
    let rsp = send(&mut svc, get()).await.unwrap();
    assert_eq!(up.calls(), 2);
    assert!(rsp.headers().get("grpc-status").is_none());

    // Only trailers: retried; the final response keeps its trailers.
    let up = Upstream::new(vec![grpc_body(false, "14"), ok()]);
    let mut svc = layer(Some(on_grpc(&[14]))).0.layer(up.clone());
    let rsp = send(&mut svc, get()).await.unwrap();
    assert_eq!(up.calls(), 2);
    let collected = rsp.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers(), Some(&grpc_trailers("0")));

    // OK, or a code not in the set: returned.
    for code in ["0", "13"] {
        let up = Upstream::new(vec![grpc_body(false, code), ok()]);
        let mut svc = layer(Some(on_grpc(&[14]))).0.layer(up.clone());
        let rsp = send(&mut svc, get()).await.unwrap();
        assert_eq!(up.calls(), 1, "grpc-status {code}");
        let collected = rsp.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&grpc_trailers(code)));
    }

    // Data before the trailers: returned as it is.
    let up = Upstream::new(vec![grpc_body(true, "14"), ok()]);
    let mut svc = layer(Some(on_grpc(&[14]))).0.layer(up.clone());
    let rsp = send(&mut svc, get()).await.unwrap();
    assert_eq!(up.calls(), 1);
    let collected = rsp.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers(), Some(&grpc_trailers("14")));
    assert_eq!(collected.to_bytes(), "message");
}

#[tokio::test(start_paused = true)]
async fn max_retries_is_honoured() {
    let up = Upstream::default(); // always 503
    let (layer, metrics) = layer(Some(on_5xx(2)));
    let mut svc = layer.layer(up.clone());
    let rsp = send(&mut svc, get()).await.unwrap();
    assert_eq!(rsp.status(), 503);
    assert_eq!(text(rsp).await, "status 503", "the last response, whole");
    assert_eq!(up.calls(), 3);
    assert_eq!(counts(&metrics), [2, 0, 1, 0, 0]);
}

#[tokio::test(start_paused = true)]
async fn other_statuses_are_returned_as_they_are() {
    let up = Upstream::new(vec![status(404), status(200)]);
    let (layer, metrics) = layer(Some(on_5xx(2)));
    let mut svc = layer.layer(up.clone());
    let rsp = send(&mut svc, get()).await.unwrap();
    assert_eq!(rsp.status(), 404);
    assert_eq!(up.calls(), 1);
    assert_eq!(counts(&metrics), [0; 5]);
}

#[tokio::test(start_paused = true)]
async fn the_budget_caps_retries_at_its_ratio() {
    let up = Upstream::default(); // always 503
    let metrics = RetryMetrics::default();
    let budget = budget(&params::Budget {
        ratio: 0.2,
        min_per_second: 0,
        ttl: Duration::from_secs(10),
    });
    let mut svc = RetryLayer::new(Some(on_5xx(3)), budget, metrics.clone()).layer(up.clone());
    for _ in 0..100 {
        let rsp = send(&mut svc, get()).await.unwrap();
        assert_eq!(rsp.status(), 503);
    }
    let retries = up.calls() - 100;
    assert!((15..=22).contains(&retries), "{retries} retries");
    assert_eq!(metrics.requests.get(), retries as u64);
    assert!(metrics.overflow.get() >= 78, "{:?}", counts(&metrics));
}

#[tokio::test(start_paused = true)]
async fn the_budget_allows_its_minimum_per_second() {
    let budget = budget(&params::Budget {
        ratio: 0.2,
        min_per_second: 10,
        ttl: Duration::from_secs(1),
    });
    let allowed = (0..100).filter(|_| budget.withdraw()).count();
    assert_eq!(allowed, 10);
    tokio::time::advance(Duration::from_millis(1100)).await;
    let allowed = (0..100).filter(|_| budget.withdraw()).count();
    assert_eq!(allowed, 10, "replenished a second later");
}

#[tokio::test(start_paused = true)]
async fn backoff_spaces_the_attempts() {
    let up = Upstream::new(vec![status(503), status(503), status(200)]);
    let params = params::Retry {
        backoff: Some(Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(1),
            jitter: 0.0,
            respect_retry_after: false,
        }),
        ..on_5xx(2)
    };
    let mut svc = layer(Some(params)).0.layer(up.clone());
    let rsp = send(&mut svc, get()).await.unwrap();
    assert_eq!(rsp.status(), 200);
    up.seen(|seen| {
        let first = seen[1].at - seen[0].at;
        let second = seen[2].at - seen[1].at;
        assert!(first >= Duration::from_millis(100), "{first:?}");
        assert!(first < Duration::from_millis(110), "{first:?}");
        assert!(second >= Duration::from_millis(200), "{second:?}");
        assert!(second < Duration::from_millis(210), "{second:?}");
    });
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_up_to_the_backoff_max() {
    for (respect, header, expected) in [
        (true, "2", 2000),
        (true, "60", 3000),
        (false, "2", 10),
        (true, "Wed, 21 Oct 2015 07:28:00 GMT", 10),
    ] {
        let headers: &'static [(&'static str, &'static str)] =
            Box::leak(Box::new([("retry-after", header)]));
        let up = Upstream::new(vec![status_with(503, headers), status(200)]);
        let params = params::Retry {
            backoff: Some(Backoff {
                min: Duration::from_millis(10),
                max: Duration::from_secs(3),
                jitter: 0.0,
                respect_retry_after: respect,
            }),
            ..on_5xx(1)
        };
        let mut svc = layer(Some(params)).0.layer(up.clone());
        assert_eq!(send(&mut svc, get()).await.unwrap().status(), 200);
        let waited = up.seen(|seen| seen[1].at - seen[0].at);
        let expected = Duration::from_millis(expected);
        assert!(
            waited >= expected && waited < expected + Duration::from_millis(10),
            "{header}: waited {waited:?}, expected {expected:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn l5d_retry_headers_only_when_allowed_and_always_stripped() {
    for allow in [false, true] {
        let up = Upstream::default(); // always 503
        let mut svc = layer(Some(on_5xx(1)))
            .0
            .allow_l5d_request_headers(allow)
            .layer(up.clone());
        let mut req = get();
        req.headers_mut()
            .insert("l5d-retry-limit", HeaderValue::from_static("3"));
        req.headers_mut()
            .insert("l5d-retry-timeout", HeaderValue::from_static("1s"));
        req.headers_mut()
            .insert("l5d-timeout", HeaderValue::from_static("1s"));
        send(&mut svc, req).await.unwrap();
        assert_eq!(up.calls(), if allow { 4 } else { 2 }, "allowed: {allow}");
        up.seen(|seen| {
            for s in seen {
                assert!(s.headers.keys().all(|k| !k.as_str().starts_with("l5d-")));
            }
        });
    }
}

#[tokio::test(start_paused = true)]
async fn retryable_errors_are_retried_others_are_not() {
    let up = Upstream::new(vec![fail(true), status(200)]);
    let (layer, metrics) = layer(Some(on_5xx(1)));
    let mut svc = layer.layer(up.clone());
    assert_eq!(send(&mut svc, get()).await.unwrap().status(), 200);
    assert_eq!(up.calls(), 2);
    assert_eq!(metrics.successes.get(), 1);

    let up = Upstream::new(vec![fail(false), status(200)]);
    let mut svc = layer.layer(up.clone());
    let err = send(&mut svc, get()).await.unwrap_err();
    assert!(err.is::<std::io::Error>(), "{err}");
    assert_eq!(up.calls(), 1);

    // Giving up returns the cause, unmarked.
    let up = Upstream::new(vec![fail(true), fail(true)]);
    let mut svc = layer.layer(up.clone());
    let err = send(&mut svc, get()).await.unwrap_err();
    assert!(err.is::<std::io::Error>(), "{err}");
    assert_eq!(up.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_attempt_that_times_out_is_retried() {
    let up = Upstream::new(vec![hang(), status(200)]);
    let params = params::Retry {
        timeout: Some(Duration::from_secs(1)),
        ..on_5xx(1)
    };
    let mut svc = layer(Some(params)).0.layer(up.clone());
    let start = Instant::now();
    assert_eq!(send(&mut svc, get()).await.unwrap().status(), 200);
    assert_eq!(up.calls(), 2);
    assert_eq!(up.seen(|s| s[1].at) - start, Duration::from_secs(1));

    // Out of retries: the timeout is the error.
    let up = Upstream::new(vec![hang(), hang()]);
    let mut svc = layer(None)
        .0
        .with_response_timeout(Some(Duration::from_millis(500)))
        .layer(up.clone());
    let err = send(&mut svc, get()).await.unwrap_err();
    assert!(crate::timeout::is_timeout(&*err), "{err}");
    assert_eq!(up.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn upgrades_and_routes_without_retries_are_sent_once() {
    let (layer_on, metrics) = layer(Some(on_5xx(2)));
    let up = Upstream::default();
    let mut svc = layer_on.layer(up.clone());
    let mut req = get();
    req.headers_mut()
        .insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
    assert_eq!(send(&mut svc, req).await.unwrap().status(), 503);
    let connect = http::Request::connect("svc.test:443")
        .body(BoxBody::default())
        .unwrap();
    assert_eq!(send(&mut svc, connect).await.unwrap().status(), 503);
    assert_eq!(up.calls(), 2);
    assert_eq!(counts(&metrics), [0; 5]);

    let up = Upstream::default();
    let mut svc = layer(None).0.layer(up.clone());
    assert_eq!(send(&mut svc, get()).await.unwrap().status(), 503);
    assert_eq!(up.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn under_the_route_timeout_in_a_boxed_stack() {
    let up = Upstream::new((0..10).map(|_| hang()).collect());
    let params = params::Retry {
        timeout: Some(Duration::from_millis(300)),
        ..on_5xx(5)
    };
    let stack = tower::ServiceBuilder::new()
        .layer(crate::timeout::TimeoutLayer::new(params::Timeouts {
            request: Some(Duration::from_secs(1)),
            ..Default::default()
        }))
        .layer(layer(Some(params)).0)
        .service(up.clone());
    // What the stack builder does at its boundaries.
    let svc = tower::util::BoxCloneSyncService::new(stack);

    let start = Instant::now();
    let err = svc.oneshot(get()).await.unwrap_err();
    assert!(
        linnet_core::is_caused_by::<crate::timeout::RequestTimeout>(&*err),
        "{err}"
    );
    assert_eq!(Instant::now() - start, Duration::from_secs(1));
    // Attempts at 0, 300, 600 and 900 ms; the route's deadline ends the fourth.
    assert_eq!(up.calls(), 4);
}
