//! Tests of the failure-accrual gate, alone over `tower_test` mocks, in
//! paused time.

use super::*;
use crate::params::{Accrual, Backoff, FailureAccrual};
use http_body_util::{BodyExt, Empty, StreamBody};
use tokio::time::advance;
use tokio_test::{assert_pending, assert_ready_ok};
use tower_test::mock;

type Mock = mock::Mock<Request<BoxBody>, Response<BoxBody>>;
type Handle = mock::Handle<Request<BoxBody>, Response<BoxBody>>;
type Spawned = mock::Spawn<Gate<Mock>>;

fn empty() -> BoxBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn rsp(status: u16) -> Response<BoxBody> {
    Response::builder().status(status).body(empty()).unwrap()
}

fn backoff(min_ms: u64) -> Backoff {
    Backoff {
        min: Duration::from_millis(min_ms),
        max: Duration::from_secs(60),
        jitter: 0.0,
        respect_retry_after: false,
    }
}

fn consecutive(max_failures: u32) -> Accrual {
    Accrual {
        kind: FailureAccrual::Consecutive {
            max_failures,
            backoff: backoff(1000),
        },
        min_ready_endpoints: 0,
    }
}

fn gate(pool: &Arc<Pool>, port: u16) -> (Spawned, Handle) {
    let pool = pool.clone();
    mock::spawn_with(move |mock| {
        Gate::new(SocketAddr::from(([10, 0, 0, 1], port)), mock, pool.clone())
    })
}

/// Sends one request through the gate, which must be ready, and answers it
/// with `rsp`.
async fn send(svc: &mut Spawned, handle: &mut Handle, rsp: Response<BoxBody>) -> Response<BoxBody> {
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(Request::new(empty()));
    let (_, reply) = handle.next_request().await.unwrap();
    reply.send_response(rsp);
    fut.await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_eject_then_one_probe_with_growing_backoff() {
    let metrics = BalancerMetrics::default();
    let pool = Pool::new(&consecutive(3), metrics.clone());
    let (mut svc, mut handle) = gate(&pool, 1);

    // Two failures in a row: still in rotation. The third ejects.
    send(&mut svc, &mut handle, rsp(500)).await;
    send(&mut svc, &mut handle, rsp(503)).await;
    assert_ready_ok!(svc.poll_ready());
    send(&mut svc, &mut handle, rsp(500)).await;
    assert_pending!(svc.poll_ready());
    assert_eq!(metrics.ejections.get(), 1);
    assert_eq!(pool.ejected(), 1);
    assert_eq!(metrics.endpoints_pending.get(), 1);
    assert_eq!(metrics.endpoints_ready.get(), 0);

    // Out for the whole first backoff (1 s).
    advance(Duration::from_millis(999)).await;
    assert_pending!(svc.poll_ready());
    advance(Duration::from_millis(1)).await;
    assert!(svc.is_woken());

    // Exactly one probe: ready once, then pending while it is in flight.
    assert_ready_ok!(svc.poll_ready());
    let probe = svc.call(Request::new(empty()));
    assert_pending!(svc.poll_ready());
    let (_, reply) = handle.next_request().await.unwrap();
    reply.send_response(rsp(500));
    probe.await.unwrap();

    // The probe failed: out again, for twice as long.
    assert_pending!(svc.poll_ready());
    advance(Duration::from_millis(1999)).await;
    assert_pending!(svc.poll_ready());
    advance(Duration::from_millis(1)).await;
    assert_eq!(
        metrics.ejections.get(),
        1,
        "a failed probe is no new ejection"
    );

    // A succeeding probe restores it, with its count of failures reset.
    send(&mut svc, &mut handle, rsp(200)).await;
    assert_eq!(metrics.restorations.get(), 1);
    assert_eq!(pool.ejected(), 0);
    send(&mut svc, &mut handle, rsp(500)).await;
    send(&mut svc, &mut handle, rsp(500)).await;
    assert_ready_ok!(svc.poll_ready());
    assert_eq!(metrics.endpoints_ready.get(), 1);

    // And its backoff starts over at 1 s.
    send(&mut svc, &mut handle, rsp(500)).await;
    assert_pending!(svc.poll_ready());
    advance(Duration::from_millis(1000)).await;
    assert_ready_ok!(svc.poll_ready());
}

#[tokio::test(start_paused = true)]
async fn success_rate_trips_below_threshold_only_after_min_requests() {
    let accrual = Accrual {
        kind: FailureAccrual::SuccessRate {
            threshold: 0.5,
            decay: Duration::from_secs(10),
            min_requests: 10,
            max_consecutive: 0,
            backoff: backoff(1000),
        },
        min_ready_endpoints: 0,
    };
    let pool = Pool::new(&accrual, BalancerMetrics::default());

    // Nothing but failures: ejected at the 10th, not before.
    let (mut svc, mut handle) = gate(&pool, 1);
    for _ in 0..9 {
        send(&mut svc, &mut handle, rsp(500)).await;
        assert_ready_ok!(svc.poll_ready());
    }
    send(&mut svc, &mut handle, rsp(500)).await;
    assert_pending!(svc.poll_ready());

    // 75% success stays in; failures then drag the rate down: 30 of 60 is
    // still not below 0.5, 30 of 61 is.
    let (mut svc, mut handle) = gate(&pool, 2);
    for i in 0..40 {
        let status = if i % 4 == 3 { 500 } else { 200 };
        send(&mut svc, &mut handle, rsp(status)).await;
    }
    for _ in 0..20 {
        send(&mut svc, &mut handle, rsp(500)).await;
    }
    assert_ready_ok!(svc.poll_ready());
    send(&mut svc, &mut handle, rsp(500)).await;
    assert_pending!(svc.poll_ready());
}

#[tokio::test(start_paused = true)]
async fn success_rate_max_consecutive_ejects_before_min_requests() {
    let accrual = Accrual {
        kind: FailureAccrual::SuccessRate {
            threshold: 0.5,
            decay: Duration::from_secs(10),
            min_requests: 100,
            max_consecutive: 3,
            backoff: backoff(1000),
        },
        min_ready_endpoints: 0,
    };
    let pool = Pool::new(&accrual, BalancerMetrics::default());
    let (mut svc, mut handle) = gate(&pool, 1);
    send(&mut svc, &mut handle, rsp(500)).await;
    send(&mut svc, &mut handle, rsp(500)).await;
    assert_ready_ok!(svc.poll_ready());
    send(&mut svc, &mut handle, rsp(500)).await;
    assert_pending!(svc.poll_ready());
}

#[tokio::test(start_paused = true)]
async fn min_ready_endpoints_keeps_the_last_in_rotation() {
    let metrics = BalancerMetrics::default();
    let accrual = Accrual {
        min_ready_endpoints: 2,
        ..consecutive(1)
    };
    let pool = Pool::new(&accrual, metrics.clone());
    let mut gates = vec![gate(&pool, 1), gate(&pool, 2), gate(&pool, 3)];
    for (svc, handle) in &mut gates {
        send(svc, handle, rsp(500)).await;
    }
    let mut pending = 0;
    for (svc, _) in &mut gates {
        pending += usize::from(svc.poll_ready().is_pending());
    }
    assert_eq!(pending, 1, "only one of three may go with a floor of two");
    assert_eq!(metrics.ejections.get(), 1);
    assert_eq!(pool.ejected(), 1);

    // Once an endpoint is removed, the floor still holds for the rest.
    gates.retain_mut(|(svc, _)| svc.poll_ready().is_ready());
    assert_eq!(pool.ejected(), 0, "the dropped gate no longer counts");
    for (svc, handle) in &mut gates {
        send(svc, handle, rsp(500)).await;
        assert_ready_ok!(svc.poll_ready());
    }
}

#[tokio::test(start_paused = true)]
async fn grpc_failure_in_trailers_counts_when_the_body_ends() {
    fn grpc(status: &'static str) -> Response<BoxBody> {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static(status));
        let frames = vec![
            Ok::<_, Error>(Frame::data(Bytes::from_static(b"msg"))),
            Ok(Frame::trailers(trailers)),
        ];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        Response::new(BoxBody::new(body))
    }

    let pool = Pool::new(&consecutive(1), BalancerMetrics::default());
    let (mut svc, mut handle) = gate(&pool, 1);

    let ok = send(&mut svc, &mut handle, grpc("0")).await;
    ok.into_body().collect().await.unwrap();
    assert_ready_ok!(svc.poll_ready());

    let failed = send(&mut svc, &mut handle, grpc("14")).await;
    assert_ready_ok!(svc.poll_ready()); // not known until the trailers
    let body = failed.into_body().collect().await.unwrap();
    assert_eq!(body.trailers().unwrap()["grpc-status"], "14");
    assert_pending!(svc.poll_ready());
}

#[tokio::test(start_paused = true)]
async fn retry_after_lengthens_the_ejection_when_respected() {
    let accrual = Accrual {
        kind: FailureAccrual::Consecutive {
            max_failures: 1,
            backoff: Backoff {
                respect_retry_after: true,
                ..backoff(1000)
            },
        },
        min_ready_endpoints: 0,
    };
    let pool = Pool::new(&accrual, BalancerMetrics::default());
    let (mut svc, mut handle) = gate(&pool, 1);
    let mut failed = rsp(503);
    failed.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("5"),
    );
    send(&mut svc, &mut handle, failed).await;
    advance(Duration::from_millis(4999)).await;
    assert_pending!(svc.poll_ready());
    advance(Duration::from_millis(1)).await;
    assert_ready_ok!(svc.poll_ready());
}

#[tokio::test(start_paused = true)]
async fn a_dropped_probe_admits_another_and_errors_count_as_failures() {
    let pool = Pool::new(&consecutive(1), BalancerMetrics::default());
    let (mut svc, mut handle) = gate(&pool, 1);
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(Request::new(empty()));
    let (_, reply) = handle.next_request().await.unwrap();
    reply.send_error("connection refused");
    assert!(fut.await.is_err());
    assert_pending!(svc.poll_ready());

    advance(Duration::from_secs(1)).await;
    assert_ready_ok!(svc.poll_ready());
    let probe = svc.call(Request::new(empty()));
    assert_pending!(svc.poll_ready());
    drop(probe);
    assert!(svc.is_woken());
    assert_ready_ok!(svc.poll_ready());
}
