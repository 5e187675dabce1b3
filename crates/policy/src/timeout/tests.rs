use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tokio::sync::mpsc;
use tokio_test::{assert_pending, assert_ready, assert_ready_err, task};
use tower::{Layer, Service};
use tower_test::mock;

use super::*;
use crate::params::Timeouts;

type Handle = mock::Handle<http::Request<BoxBody>, http::Response<BoxBody>>;
type Mock = mock::Mock<http::Request<BoxBody>, http::Response<BoxBody>>;

fn service(layer: TimeoutLayer) -> (Timeout<Mock>, Handle) {
    let (mock, handle) = mock::pair();
    (layer.layer(mock), handle)
}

fn route(request: Option<u64>, idle: Option<u64>) -> TimeoutLayer {
    TimeoutLayer::new(Timeouts {
        request: request.map(Duration::from_millis),
        response: None,
        idle: idle.map(Duration::from_millis),
    })
}

fn request(headers: &[(&'static str, &'static str)]) -> http::Request<BoxBody> {
    let mut req = http::Request::new(BoxBody::default());
    for (k, v) in headers {
        req.headers_mut()
            .insert(*k, http::HeaderValue::from_static(v));
    }
    req
}

/// A response body fed frame by frame from the test.
fn streaming() -> (mpsc::Sender<Bytes>, BoxBody) {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Error>(Frame::data(b)), rx))
    });
    (tx, BoxBody::new(StreamBody::new(stream)))
}

async fn ready<S>(svc: &mut S) -> &mut S
where
    S: tower::Service<http::Request<BoxBody>, Error = Error>,
{
    use tower::ServiceExt;
    svc.ready().await.expect("ready")
}

async fn advance(ms: u64) {
    tokio::time::advance(Duration::from_millis(ms)).await;
}

fn request_timeout(err: &Error) -> &RequestTimeout {
    linnet_core::find_cause::<RequestTimeout>(&**err).expect("a RequestTimeout")
}

#[tokio::test(start_paused = true)]
async fn fires_at_the_route_timeout_not_before() {
    let (mut svc, mut handle) = service(route(Some(1000), None));
    handle.allow(1);
    let mut rsp = task::spawn(ready(&mut svc).await.call(request(&[])));
    let _pending = handle.next_request().await.expect("a request");

    advance(999).await;
    assert_pending!(rsp.poll());
    advance(1).await;
    let err = assert_ready_err!(rsp.poll());
    assert!(is_timeout(&*err));
    let t = request_timeout(&err);
    assert_eq!((t.after, t.grpc), (Duration::from_secs(1), false));
}

#[tokio::test(start_paused = true)]
async fn a_shorter_grpc_timeout_wins() {
    let (mut svc, mut handle) = service(route(Some(1000), None));
    handle.allow(1);
    let mut rsp = task::spawn(
        ready(&mut svc)
            .await
            .call(request(&[("grpc-timeout", "200m")])),
    );
    let (req, _send) = handle.next_request().await.expect("a request");
    assert_eq!(req.headers()["grpc-timeout"], "200m", "forwarded as it is");

    advance(199).await;
    assert_pending!(rsp.poll());
    advance(1).await;
    let err = assert_ready_err!(rsp.poll());
    let t = request_timeout(&err);
    assert_eq!((t.after, t.grpc), (Duration::from_millis(200), true));
    assert!(err.to_string().contains("grpc-timeout"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_longer_or_malformed_grpc_timeout_is_not_used() {
    for header in ["5S", "1.5S", "200", "123456789m", "200ms", "-1S", "10x"] {
        let (mut svc, mut handle) = service(route(Some(1000), None));
        handle.allow(1);
        let mut rsp = task::spawn(
            ready(&mut svc)
                .await
                .call(request(&[("grpc-timeout", header)])),
        );
        let _pending = handle.next_request().await.expect("a request");
        advance(999).await;
        assert_pending!(rsp.poll(), "{header}");
        advance(1).await;
        let err = assert_ready_err!(rsp.poll());
        assert_eq!(
            request_timeout(&err).after,
            Duration::from_secs(1),
            "{header}"
        );
    }
}

#[test]
fn grpc_timeout_units() {
    let p = |s: &'static str| parse_grpc_timeout(&http::HeaderValue::from_static(s));
    assert_eq!(p("1H"), Some(Duration::from_secs(3600)));
    assert_eq!(p("2M"), Some(Duration::from_secs(120)));
    assert_eq!(p("3S"), Some(Duration::from_secs(3)));
    assert_eq!(p("4m"), Some(Duration::from_millis(4)));
    assert_eq!(p("5u"), Some(Duration::from_micros(5)));
    assert_eq!(p("99999999n"), Some(Duration::from_nanos(99_999_999)));
    assert_eq!(p("S"), None);
    assert_eq!(p(" 1S"), None);
}

#[tokio::test(start_paused = true)]
async fn a_body_still_streaming_at_the_deadline_fails() {
    let (mut svc, mut handle) = service(route(Some(1000), None));
    handle.allow(1);
    let mut rsp = task::spawn(ready(&mut svc).await.call(request(&[])));
    let (_req, send) = handle.next_request().await.expect("a request");
    let (tx, body) = streaming();
    send.send_response(http::Response::new(body));
    let rsp = assert_ready!(rsp.poll()).expect("a response");

    let mut body = rsp.into_body();
    advance(400).await;
    tx.send(Bytes::from_static(b"first")).await.expect("sent");
    let frame = body.frame().await.expect("a frame").expect("data");
    assert_eq!(frame.into_data().ok(), Some(Bytes::from_static(b"first")));

    // Stalls: fails exactly at the request's deadline, not before.
    let mut next = task::spawn(body.frame());
    advance(599).await;
    assert_pending!(next.poll());
    advance(1).await;
    let err = assert_ready!(next.poll())
        .expect("a frame")
        .expect_err("a timeout");
    assert_eq!(request_timeout(&err).after, Duration::from_secs(1));
    drop(tx);
}

#[tokio::test(start_paused = true)]
async fn an_idle_body_fails_and_frames_reset_the_timer() {
    let (mut svc, mut handle) = service(route(None, Some(100)));
    handle.allow(1);
    let mut rsp = task::spawn(ready(&mut svc).await.call(request(&[])));
    let (_req, send) = handle.next_request().await.expect("a request");
    let (tx, body) = streaming();
    send.send_response(http::Response::new(body));
    let mut body = assert_ready!(rsp.poll()).expect("a response").into_body();

    // A frame every 90 ms keeps it alive past several idle periods.
    for _ in 0..5 {
        advance(90).await;
        tx.send(Bytes::from_static(b"x")).await.expect("sent");
        assert!(body.frame().await.expect("a frame").is_ok());
    }
    let mut next = task::spawn(body.frame());
    advance(99).await;
    assert_pending!(next.poll());
    advance(1).await;
    let err = assert_ready!(next.poll())
        .expect("a frame")
        .expect_err("a timeout");
    assert!(linnet_core::is_caused_by::<IdleTimeout>(&*err));
    assert!(is_timeout(&*err));
    drop(tx);
}

#[tokio::test(start_paused = true)]
async fn l5d_timeout_only_when_allowed_and_always_stripped() {
    for allow in [false, true] {
        let layer = route(Some(10_000), None).allow_l5d_request_headers(allow);
        let (mut svc, mut handle) = service(layer);
        handle.allow(1);
        let mut rsp = task::spawn(
            ready(&mut svc)
                .await
                .call(request(&[("l5d-timeout", "100ms")])),
        );
        let (req, _send) = handle.next_request().await.expect("a request");
        assert!(!req.headers().contains_key("l5d-timeout"), "stripped");

        advance(100).await;
        if allow {
            let err = assert_ready_err!(rsp.poll());
            assert_eq!(request_timeout(&err).after, Duration::from_millis(100));
        } else {
            assert_pending!(rsp.poll());
        }
    }
}

#[tokio::test(start_paused = true)]
async fn no_timeouts_pass_through() {
    let (mut svc, mut handle) = service(route(None, None));
    handle.allow(1);
    let mut rsp = task::spawn(ready(&mut svc).await.call(request(&[])));
    let (_req, send) = handle.next_request().await.expect("a request");
    advance(3_600_000).await;
    assert_pending!(rsp.poll());
    send.send_response(http::Response::new(BoxBody::default()));
    let rsp = assert_ready!(rsp.poll()).expect("a response");
    assert!(rsp.into_body().collect().await.is_ok());
}

#[test]
fn l5d_durations() {
    let p = |s: &'static str| parse_duration(&http::HeaderValue::from_static(s));
    assert_eq!(p("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(p("1.5s"), Some(Duration::from_millis(1500)));
    assert_eq!(p("2m"), Some(Duration::from_secs(120)));
    assert_eq!(p("10"), None);
    assert_eq!(p("ms"), None);
    assert_eq!(p(".5s"), None);
    assert_eq!(p("1e3s"), None);
}

#[tokio::test(start_paused = true)]
async fn waiting_for_response_headers_is_idle_time() {
    let (mut svc, mut handle) = service(route(None, Some(100)));
    handle.allow(1);
    let mut rsp = task::spawn(ready(&mut svc).await.call(request(&[])));
    let (_req, _send) = handle.next_request().await.expect("a request");
    advance(99).await;
    assert_pending!(rsp.poll());
    advance(1).await;
    let err = assert_ready_err!(rsp.poll());
    assert!(linnet_core::is_caused_by::<IdleTimeout>(&*err), "{err}");
}

#[tokio::test(start_paused = true)]
async fn an_uploading_request_is_not_idle() {
    let (mut svc, mut handle) = service(route(None, Some(100)));
    handle.allow(1);
    let (tx, body) = streaming();
    let mut req = request(&[]);
    *req.body_mut() = body;
    let mut rsp = task::spawn(ready(&mut svc).await.call(req));
    let (req, send) = handle.next_request().await.expect("a request");
    let mut upload = req.into_body();
    // A request-body frame every 90 ms, for five idle periods' worth.
    for _ in 0..5 {
        advance(90).await;
        tx.send(Bytes::from_static(b"x")).await.expect("sent");
        assert!(upload.frame().await.expect("a frame").is_ok());
        assert_pending!(rsp.poll());
    }
    // The upload ends; the answer comes 90 ms later: still in time.
    drop(tx);
    assert!(upload.frame().await.is_none());
    advance(90).await;
    assert_pending!(rsp.poll());
    send.send_response(http::Response::new(BoxBody::default()));
    assert_ready!(rsp.poll()).expect("a response");
}
