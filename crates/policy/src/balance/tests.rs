//! Tests of the balancer: its endpoint changes, P2C over PeakEWMA (and the
//! penalty variant), the queue's fail-fast and load shedding, and failure
//! accrual inside it. Endpoints are fakes whose latency is a sleep, in
//! paused time.

use super::{discover::*, queue::*, *};
use crate::params::{Accrual, Backoff, FailureAccrual, Load, Penalty, Queue};
use futures_util::{StreamExt, future::BoxFuture};
use http_body_util::{BodyExt, Empty};
use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::Mutex,
};
use tokio::{sync::mpsc, time::Instant};
use tokio_test::{assert_pending, assert_ready};
use tower::{ServiceExt, discover::Change, load::Load as _};

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], port))
}

fn endpoints(ports: &[u16]) -> Endpoints {
    Arc::new(
        ports
            .iter()
            .map(|&p| (addr(p), linnet_core::endpoint::plain(addr(p))))
            .collect(),
    )
}

fn empty() -> BoxBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn req() -> Request<BoxBody> {
    Request::new(empty())
}

type Svc = BoxCloneSyncService<Request<BoxBody>, Response<BoxBody>, Error>;

/// One request through the balancer. (A plain `fn` returning a boxed
/// future: inside a spawned `async` block, `oneshot` trips rustc's
/// higher-ranked inference over the `dyn Error` in the body type.)
fn send(svc: &Svc) -> BoxFuture<'static, Result<Response<BoxBody>, Error>> {
    Box::pin(svc.clone().oneshot(req()))
}

/// A stream of snapshots fed by the test.
fn feed() -> (
    mpsc::UnboundedSender<Endpoints>,
    impl futures_util::Stream<Item = Endpoints> + Send + Unpin + 'static,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let next = rx.recv().await?;
        Some((next, rx))
    });
    (tx, Box::pin(stream))
}

/// How each fake endpoint behaves, and what it saw.
#[derive(Clone, Default)]
struct Fleet(Arc<Mutex<HashMap<SocketAddr, Behaviour>>>);

#[derive(Clone, Debug)]
struct Behaviour {
    latency: Duration,
    status: u16,
    calls: usize,
    dropped: usize,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            latency: Duration::from_millis(10),
            status: 200,
            calls: 0,
            dropped: 0,
        }
    }
}

struct Fake {
    addr: SocketAddr,
    fleet: Fleet,
}

impl Fleet {
    fn set(&self, port: u16, f: impl FnOnce(&mut Behaviour)) {
        f(self.0.lock().unwrap().entry(addr(port)).or_default());
    }

    fn get(&self, port: u16) -> Behaviour {
        self.0
            .lock()
            .unwrap()
            .get(&addr(port))
            .cloned()
            .unwrap_or_default()
    }

    fn calls(&self) -> Vec<usize> {
        (1..=3).map(|p| self.get(p).calls).collect()
    }

    fn make(&self) -> impl Fn(&Arc<Endpoint>) -> Fake + Send + Sync + 'static {
        let fleet = self.clone();
        move |ep| Fake {
            addr: ep.addr,
            fleet: fleet.clone(),
        }
    }
}

impl Service<Request<BoxBody>> for Fake {
    type Response = Response<BoxBody>;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Response<BoxBody>, Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<BoxBody>) -> Self::Future {
        let mut fleet = self.fleet.0.lock().unwrap();
        let b = fleet.entry(self.addr).or_default();
        b.calls += 1;
        let (latency, status) = (b.latency, b.status);
        Box::pin(async move {
            tokio::time::sleep(latency).await;
            Ok(Response::builder().status(status).body(empty()).unwrap())
        })
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        if let Ok(mut fleet) = self.fleet.0.lock() {
            fleet.entry(self.addr).or_default().dropped += 1;
        }
    }
}

#[derive(Default)]
struct Setup {
    load: Load,
    accrual: Accrual,
    queue: Queue,
}

impl Setup {
    fn build(
        &self,
        fleet: &Fleet,
        initial: Endpoints,
    ) -> (Svc, mpsc::UnboundedSender<Endpoints>, BalancerMetrics) {
        let (tx, stream) = feed();
        tx.send(initial).unwrap();
        let metrics = BalancerMetrics::default();
        let svc = balancer(
            "api".into(),
            stream,
            fleet.make(),
            &self.load,
            &self.accrual,
            &self.queue,
            metrics.clone(),
        );
        (svc, tx, metrics)
    }
}

/// Sends `workers × each` requests, `workers` at a time.
async fn load(svc: &Svc, workers: usize, each: usize) {
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                for _ in 0..each {
                    let rsp = send(&svc).await.unwrap();
                    rsp.into_body().collect().await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test]
async fn discover_diffs_snapshots() {
    let mut changed = endpoints(&[1, 2]).as_ref().clone();
    let mut two = (*changed[&addr(2)]).clone();
    two.weight = 7;
    changed.insert(addr(2), Arc::new(two));
    let changed = Arc::new(changed);
    let same_again = Arc::new(changed.as_ref().clone());
    let snapshots = vec![
        endpoints(&[1, 2]),
        changed.clone(),
        same_again,
        Arc::new(BTreeMap::from([(addr(2), changed[&addr(2)].clone())])),
    ];
    let changes = EndpointChanges::new(futures_util::stream::iter(snapshots), |ep| {
        (ep.addr.port(), ep.weight)
    });
    let changes: Vec<_> = changes
        .map(|change| match change.unwrap() {
            Change::Insert(key, svc) => format!("+{} {:?}", key.port(), svc),
            Change::Remove(key) => format!("-{}", key.port()),
        })
        .collect()
        .await;
    assert_eq!(changes, ["+1 (1, 1)", "+2 (2, 1)", "+2 (2, 7)", "-1"]);
}

#[tokio::test(start_paused = true)]
async fn peak_ewma_cost_reads_back() {
    // Pins tower's `Cost` Debug form, which the penalty variant reads.
    let ewma = tower::load::PeakEwma::new(
        (),
        Duration::from_millis(10),
        1e9,
        tower::load::CompleteOnResponse::default(),
    );
    assert_eq!(penalty::cost_nanos(ewma.load()), 10_000_000.0);
}

#[tokio::test(start_paused = true)]
async fn p2c_prefers_the_fast_endpoints() {
    let fleet = Fleet::default();
    fleet.set(3, |b| b.latency = Duration::from_millis(100));
    let (svc, _tx, metrics) = Setup::default().build(&fleet, endpoints(&[1, 2, 3]));
    load(&svc, 10, 100).await;
    let calls = fleet.calls();
    assert_eq!(calls.iter().sum::<usize>(), 1000);
    assert!(calls[0] + calls[1] >= 800, "calls per endpoint: {calls:?}");
    assert_eq!(
        metrics.endpoints_ready.get() + metrics.endpoints_pending.get(),
        3
    );
}

#[tokio::test(start_paused = true)]
async fn penalty_backs_off_from_429_until_it_stops() {
    let fleet = Fleet::default();
    fleet.set(3, |b| b.status = 429);
    let setup = Setup {
        load: Load {
            penalty: Some(Penalty {
                penalty: Duration::from_millis(100),
                max_retry_after: Duration::from_secs(10),
                decay: Duration::from_secs(1),
            }),
            ..Load::default()
        },
        ..Setup::default()
    };
    let (svc, _tx, _) = setup.build(&fleet, endpoints(&[1, 2, 3]));
    load(&svc, 6, 100).await;
    let during = fleet.calls();
    assert!(during[2] * 5 < 600, "a 429ing endpoint's calls: {during:?}");

    fleet.set(3, |b| b.status = 200);
    tokio::time::sleep(Duration::from_secs(10)).await;
    load(&svc, 6, 100).await;
    let after: Vec<_> = fleet
        .calls()
        .iter()
        .zip(&during)
        .map(|(a, d)| a - d)
        .collect();
    assert!(
        after[2] * 5 > 600,
        "a recovered endpoint's calls: {after:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn fails_fast_without_endpoints_until_one_is_ready() {
    let fleet = Fleet::default();
    let (svc, tx, metrics) = Setup::default().build(&fleet, endpoints(&[]));
    let start = Instant::now();
    let waiting = tokio::spawn(send(&svc));
    tokio::time::sleep(Duration::from_millis(2999)).await;
    assert!(!waiting.is_finished(), "failed before the timeout");
    let error = waiting.await.unwrap().unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    assert!(linnet_core::is_caused_by::<FailFast>(&*error), "{error}");
    assert_eq!(error.to_string(), "backend api: no ready endpoint for 3s");
    assert_eq!(metrics.failfast.get(), 1);

    // While failing fast, new requests fail at once.
    let start = Instant::now();
    let error = send(&svc).await.unwrap_err();
    assert!(linnet_core::is_caused_by::<FailFast>(&*error));
    assert_eq!(start.elapsed(), Duration::ZERO);

    // An endpoint clears it.
    tx.send(endpoints(&[1])).unwrap();
    let rsp = send(&svc).await.unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(metrics.failfast.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn sheds_at_once_when_the_queue_is_full() {
    let fleet = Fleet::default();
    let setup = Setup {
        queue: Queue {
            capacity: 2,
            failfast_timeout: Duration::from_secs(60),
        },
        ..Setup::default()
    };
    let (svc, _tx, metrics) = setup.build(&fleet, endpoints(&[]));
    // The worker holds the first request while it waits for an endpoint;
    // the queue holds two more; the fourth is shed.
    let mut first = tokio_test::task::spawn(send(&svc));
    assert_pending!(first.poll());
    tokio::time::sleep(Duration::from_millis(1)).await;
    let mut queued: Vec<_> = (0..2)
        .map(|_| tokio_test::task::spawn(send(&svc)))
        .collect();
    for q in &mut queued {
        assert_pending!(q.poll());
    }
    let mut shed = tokio_test::task::spawn(send(&svc));
    let error = assert_ready!(shed.poll()).unwrap_err();
    assert!(linnet_core::is_caused_by::<QueueFull>(&*error), "{error}");
    assert_eq!(metrics.shed.get(), 1);
    assert_pending!(first.poll());
}

#[tokio::test(start_paused = true)]
async fn removing_an_endpoint_spares_its_requests_in_flight() {
    let fleet = Fleet::default();
    fleet.set(1, |b| b.latency = Duration::from_secs(1));
    let (svc, tx, _) = Setup::default().build(&fleet, endpoints(&[1]));
    let in_flight = tokio::spawn(send(&svc));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fleet.get(1).calls, 1);

    // The balancer sees the removal when it next looks for an endpoint.
    tx.send(endpoints(&[2])).unwrap();
    let rsp = send(&svc).await.unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(fleet.get(2).calls, 1);
    assert_eq!(
        fleet.get(1).dropped,
        1,
        "the removed endpoint's client is dropped"
    );
    assert!(!in_flight.is_finished());

    let rsp = in_flight.await.unwrap().unwrap();
    assert_eq!(rsp.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn balancer_sends_an_ejected_endpoint_nothing_until_its_probe() {
    let fleet = Fleet::default();
    fleet.set(2, |b| b.status = 500);
    let setup = Setup {
        accrual: Accrual {
            kind: FailureAccrual::Consecutive {
                max_failures: 1,
                backoff: Backoff {
                    min: Duration::from_secs(1),
                    max: Duration::from_secs(60),
                    jitter: 0.0,
                    respect_retry_after: false,
                },
            },
            min_ready_endpoints: 0,
        },
        // A short window, so that the idle prober's latency estimate
        // fades below the busy endpoint's and P2C picks it at once.
        load: Load {
            decay: Duration::from_millis(100),
            ..Load::default()
        },
        ..Setup::default()
    };
    let (svc, _tx, metrics) = setup.build(&fleet, endpoints(&[1, 2]));
    // 50 requests of 10 ms: the failing endpoint is ejected after its
    // first and gets nothing more within its 1 s backoff.
    load(&svc, 1, 50).await;
    assert_eq!(fleet.get(2).calls, 1);
    assert_eq!(metrics.ejections.get(), 1);

    // After the backoff, one probe at most; it fails, and the next
    // backoff (2 s) holds.
    tokio::time::sleep(Duration::from_millis(600)).await;
    load(&svc, 1, 100).await;
    assert_eq!(fleet.get(2).calls, 2, "exactly one probe");
    assert_eq!(fleet.get(1).calls, 148);
}
