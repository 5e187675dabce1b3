//! The outbound request stack end to end, with `linnet control` serving
//! the policy and backends the test controls: balancing by latency,
//! failure accrual, retries within their budget, replayed bodies,
//! timeouts, traffic splits, endpoint churn, route matches.
//!
//! Every proxy here has one logical target, the service's virtual
//! address; its policy's routes and backends come from the mesh file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use linnet_app::OrigDst;
use linnet_test_support::{
    backend::{Backend, Behavior},
    control::ControlPlane,
    eventually,
    http::{collect, h1_client},
    proxy::Proxy,
};
use std::{
    fmt::Write as _,
    sync::Arc,
    time::{Duration, Instant},
};

/// The parent service's virtual address.
const VIP: &str = "10.96.0.1:80";
const PARENT: &str = "web.test.svc.cluster.local:80";

/// A service named `name` with `backends` as its endpoints.
fn service(name: &str, backends: &[&Backend]) -> String {
    let mut y = format!("  {name}:\n    endpoints:\n");
    if backends.is_empty() {
        y = format!("  {name}:\n    endpoints: []\n");
    }
    for b in backends {
        writeln!(y, "      - addr: \"{}\"", b.addr).unwrap();
    }
    y
}

/// The parent service (at the VIP) with its own endpoints and `policy`
/// (YAML, indented under `policy:`), plus `others`.
fn mesh(endpoints: &[&Backend], policy: &str, others: &str) -> String {
    let mut y = format!("services:\n  {PARENT}:\n    addresses: [\"{VIP}\"]\n    endpoints:\n");
    if endpoints.is_empty() {
        y = format!("services:\n  {PARENT}:\n    addresses: [\"{VIP}\"]\n    endpoints: []\n");
    }
    for b in endpoints {
        writeln!(y, "      - addr: \"{}\"", b.addr).unwrap();
    }
    if !policy.is_empty() {
        y.push_str("    policy:\n");
        for line in policy.lines() {
            writeln!(y, "      {line}").unwrap();
        }
    }
    y.push_str(others);
    y
}

async fn proxy_for(plane: &ControlPlane) -> Proxy {
    plane.policy_proxy(VIP.parse().unwrap()).await
}

type H1 = Client<HttpConnector, Full<Bytes>>;

/// A POST of `body` to `path`.
async fn post(client: &H1, proxy: &Proxy, path: &str, body: Bytes) -> Answer {
    let req = http::Request::post(format!("http://{}{path}", proxy.outbound))
        .header("host", "web.test.svc.cluster.local")
        .body(Full::new(body))
        .unwrap();
    answer(client, req).await
}

/// One request: its status, `x-backend` and `l5d-proxy-error`.
async fn answer(client: &H1, req: http::Request<Full<Bytes>>) -> Answer {
    let rsp = client.request(req).await.unwrap();
    let (status, headers, _, _) = collect(rsp).await;
    let text = |n: &str| {
        headers
            .get(n)
            .map(|v| v.to_str().unwrap_or_default().to_string())
    };
    Answer {
        status: status.as_u16(),
        backend: text("x-backend"),
        error: text("l5d-proxy-error"),
    }
}

#[derive(Debug)]
struct Answer {
    status: u16,
    backend: Option<String>,
    error: Option<String>,
}

async fn get(client: &H1, proxy: &Proxy, path: &str) -> Answer {
    let req = http::Request::get(format!("http://{}{path}", proxy.outbound))
        .header("host", "web.test.svc.cluster.local")
        .body(Full::new(Bytes::new()))
        .unwrap();
    answer(client, req).await
}

/// `n` GETs, `concurrency` at a time.
async fn load(client: &H1, proxy: &Proxy, n: usize, concurrency: usize) -> Vec<Answer> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, next) = (client.clone(), next.clone());
        let outbound = proxy.outbound;
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let req = http::Request::get(format!("http://{outbound}/"))
                    .header("host", "web.test.svc.cluster.local")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                out.push(answer(&client, req).await);
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

fn share(answers: &[Answer], backend: &str) -> f64 {
    answers
        .iter()
        .filter(|a| a.backend.as_deref() == Some(backend))
        .count() as f64
        / answers.len() as f64
}

#[tokio::test]
async fn the_fast_endpoints_get_most_requests() {
    let fast1 = Backend::start("fast1").await;
    let fast2 = Backend::start("fast2").await;
    let slow = Backend::start("slow").await;
    for (b, ms) in [(&fast1, 5), (&fast2, 5), (&slow, 50)] {
        b.set(Behavior {
            latency: Duration::from_millis(ms),
            ..Default::default()
        });
    }
    let plane = ControlPlane::start(&mesh(&[&fast1, &fast2, &slow], "", "")).await;
    let proxy = proxy_for(&plane).await;
    let client = h1_client();
    let answers = load(&client, &proxy, 600, 6).await;
    assert!(answers.iter().all(|a| a.status == 200), "{answers:?}");
    let fast = share(&answers, "fast1") + share(&answers, "fast2");
    assert!(fast >= 0.8, "the fast endpoints got {:.0}%", fast * 100.0);
}

#[tokio::test]
async fn a_failing_endpoint_is_ejected_probed_and_restored() {
    let good = Backend::start("good").await;
    let bad = Backend::start("bad").await;
    bad.set(Behavior {
        fail_percent: 100,
        fail_status: 503,
        ..Default::default()
    });
    let policy = "failure_accrual:\n  consecutive_failures: 3\n  min_backoff: 1s\n  max_backoff: 1s\n  jitter_ratio: 0\n";
    let plane = ControlPlane::start(&mesh(&[&good, &bad], policy, "")).await;
    let proxy = proxy_for(&plane).await;
    let client = h1_client();

    // Until it is ejected, the bad endpoint fails some requests.
    load(&client, &proxy, 100, 2).await;
    let served_before = bad.served();
    assert!(served_before >= 3, "it was tried: {served_before}");
    // Ejected: over 3 s of traffic it gets at most a probe per second.
    let start = Instant::now();
    let mut answers = Vec::new();
    while start.elapsed() < Duration::from_secs(3) {
        answers.extend(load(&client, &proxy, 50, 2).await);
    }
    let probes = bad.served() - served_before;
    assert!(
        probes <= 4,
        "an ejected endpoint gets only probes: {probes} requests in 3 s"
    );
    let failed = answers.iter().filter(|a| a.status != 200).count();
    assert!(
        failed as u64 <= probes,
        "only probes fail: {failed} failures, {probes} probes"
    );
    // It recovers: within seconds it gets traffic again.
    bad.set(Behavior::default());
    eventually(
        "the recovered endpoint gets traffic",
        Duration::from_secs(10),
        || async {
            let before = bad.served();
            load(&client, &proxy, 40, 2).await;
            (bad.served() >= before + 5).then_some(())
        },
    )
    .await;
}

const RETRY_POLICY: &str = "routes:\n  - name: all\n    matches: [{path_prefix: /}]\n    retry: {limit: 3, statuses: [\"5xx\"]}\n";

/// A profile whose one route retries 5xx within a budget of half the
/// requests (plus 10 a second over 10 s).
const RETRY_PROFILE: &str = "profile:\n  retry_budget: {ratio: 0.5, min_per_second: 10, ttl: 10s}\n  routes:\n    - name: all\n      path: \"^/.*\"\n      retryable: true\n      failure_statuses: [\"5xx\"]\n";

/// The parent service with `profile` (YAML under the service) and no
/// outbound policy: a proxy without a policy service follows profiles.
fn profile_mesh(endpoints: &[&Backend], profile: &str) -> String {
    let mut y = mesh(endpoints, "", "");
    for line in profile.lines() {
        writeln!(y, "    {line}").unwrap();
    }
    y
}

async fn profile_proxy(plane: &ControlPlane) -> Proxy {
    let addr = plane.addr.to_string();
    Proxy::start(
        OrigDst::Fixed(VIP.parse().unwrap()),
        &[("LINNET_DESTINATION_SVC_ADDR", addr.as_str())],
    )
    .await
}

#[tokio::test]
async fn retries_hide_a_flaky_endpoint_within_the_budget() {
    let flaky = Backend::start("flaky").await;
    flaky.set(Behavior {
        fail_percent: 30,
        ..Default::default()
    });
    let plane = ControlPlane::start(&profile_mesh(&[&flaky], RETRY_PROFILE)).await;
    let proxy = profile_proxy(&plane).await;
    let client = h1_client();
    let answers = load(&client, &proxy, 1000, 4).await;
    let ok = answers.iter().filter(|a| a.status == 200).count();
    assert!(ok >= 990, "with retries, {ok} of 1000 succeeded");
    // The budget: half the requests, plus its reserve (10 a second over
    // its 10 s TTL).
    let load = flaky.served() as f64;
    assert!(
        load <= 1.5 * 1000.0 + 100.0,
        "backend load {load} for 1000 requests"
    );
    let m = proxy.metrics().await;
    assert!(m.sum("outbound_http_route_retry_requests_total", &[]) >= 300.0);
}

#[tokio::test]
async fn without_retries_the_failures_reach_the_client() {
    let flaky = Backend::start("flaky").await;
    flaky.set(Behavior {
        fail_percent: 30,
        ..Default::default()
    });
    let plane = ControlPlane::start(&mesh(&[&flaky], "", "")).await;
    let proxy = proxy_for(&plane).await;
    let client = h1_client();
    let answers = load(&client, &proxy, 500, 4).await;
    let ok = answers.iter().filter(|a| a.status == 200).count();
    assert!(
        (330..=370).contains(&ok),
        "without retries about 70%: {ok} of 500"
    );
    assert_eq!(flaky.served(), 500);
}

#[tokio::test]
async fn an_outage_does_not_become_a_retry_storm() {
    let down = Backend::start("down").await;
    down.set(Behavior {
        fail_percent: 100,
        ..Default::default()
    });
    let plane = ControlPlane::start(&mesh(&[&down], RETRY_POLICY, "")).await;
    let proxy = proxy_for(&plane).await;
    let client = h1_client();
    let answers = load(&client, &proxy, 1000, 4).await;
    assert!(answers.iter().all(|a| a.status == 500));
    // Policy routes carry no budget: the default's 20% of requests, plus
    // its reserve of 10 a second over 10 s. (A limit of 3 per request
    // alone would allow 3000.)
    let extra = down.served() as f64 - 1000.0;
    assert!(
        extra <= 0.2 * 1000.0 + 100.0 + 1.0,
        "retries during an outage: {extra}"
    );
    let m = proxy.metrics().await;
    assert!(m.sum("outbound_http_route_retry_overflow_total", &[]) > 0.0);
}

#[tokio::test]
async fn post_bodies_are_replayed_intact_up_to_the_limit() {
    let flaky = Backend::start("flaky").await;
    // Every other request fails: each POST needs one retry.
    flaky.set(Behavior {
        fail_percent: 50,
        ..Default::default()
    });
    let plane = ControlPlane::start(&mesh(&[&flaky], RETRY_POLICY, "")).await;
    let proxy = proxy_for(&plane).await;
    let client = h1_client();
    let small: Bytes = (0..32 * 1024)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    for _ in 0..4 {
        let a = post(&client, &proxy, "/", small.clone()).await;
        assert_eq!(a.status, 200, "{a:?}");
    }
    assert!(
        flaky.bodies().iter().all(|b| *b == small),
        "every attempt got the whole body"
    );
    assert!(
        flaky.bodies().len() >= 6,
        "retried: {}",
        flaky.bodies().len()
    );

    // Over the 64 KiB limit: sent once, never retried.
    let large: Bytes = vec![7u8; 100 * 1024].into();
    let before = flaky.served();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let a = post(&client, &proxy, "/", large.clone()).await;
        statuses.push(a.status);
    }
    assert_eq!(flaky.served() - before, 4, "one attempt each");
    assert!(
        statuses.contains(&500),
        "a failure is returned as is: {statuses:?}"
    );
    let m = proxy.metrics().await;
    assert!(m.sum("outbound_http_route_retry_body_too_large_total", &[]) >= 2.0);
}

#[tokio::test]
async fn a_route_timeout_answers_504() {
    let slow = Backend::start("slow").await;
    slow.set(Behavior {
        latency: Duration::from_secs(2),
        ..Default::default()
    });
    let policy = "routes:\n  - name: all\n    matches: [{path_prefix: /}]\n    timeout: 300ms\n";
    let plane = ControlPlane::start(&mesh(&[&slow], policy, "")).await;
    let proxy = proxy_for(&plane).await;
    let client = h1_client();
    let start = Instant::now();
    let a = get(&client, &proxy, "/").await;
    let took = start.elapsed();
    assert_eq!(a.status, 504, "{a:?}");
    assert!(a.error.is_some(), "l5d-proxy-error says why");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
        "{took:?}"
    );
}

fn split_mesh(a: &Backend, b: &Backend, wa: u32, wb: u32) -> String {
    let policy = format!(
        "routes:\n  - name: split\n    matches: [{{path_prefix: /}}]\n    backends:\n      - {{service: \"a.test.svc.cluster.local:80\", weight: {wa}}}\n      - {{service: \"b.test.svc.cluster.local:80\", weight: {wb}}}\n"
    );
    let others = service("a.test.svc.cluster.local:80", &[a])
        + &service("b.test.svc.cluster.local:80", &[b]);
    mesh(&[], &policy, &others)
}

#[tokio::test]
async fn traffic_splits_by_weight_and_moves_without_failures() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let plane = ControlPlane::start(&split_mesh(&a, &b, 80, 20)).await;
    let proxy = proxy_for(&plane).await;
    let client = h1_client();
    let answers = load(&client, &proxy, 2000, 4).await;
    assert!(answers.iter().all(|x| x.status == 200));
    let sa = share(&answers, "a");
    assert!(
        (0.75..=0.85).contains(&sa),
        "80/20 split: a got {:.1}%",
        sa * 100.0
    );

    // The weights change under load: no request fails, traffic moves.
    let running = {
        let (client, outbound) = (client.clone(), proxy.outbound);
        tokio::spawn(async move {
            let mut out = Vec::new();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(4) {
                let req = http::Request::get(format!("http://{outbound}/"))
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                out.push(answer(&client, req).await);
            }
            out
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    plane.write(&split_mesh(&a, &b, 20, 80));
    let during = running.await.unwrap();
    assert!(
        during.iter().all(|x| x.status == 200),
        "no failure while the split moved: {:?}",
        during
            .iter()
            .filter(|x| x.status != 200)
            .collect::<Vec<_>>()
    );
    eventually("traffic moves to b", Duration::from_secs(10), || async {
        let answers = load(&client, &proxy, 400, 4).await;
        (share(&answers, "b") > 0.7).then_some(())
    })
    .await;
}

#[tokio::test]
async fn endpoint_churn_under_load_fails_no_request() {
    let backends: Vec<Backend> = futures_util::future::join_all(
        (0..4).map(|i| Backend::start(Box::leak(format!("b{i}").into_boxed_str()))),
    )
    .await;
    let all: Vec<&Backend> = backends.iter().collect();
    let plane = ControlPlane::start(&mesh(&all, "", "")).await;
    let proxy = proxy_for(&plane).await;
    let client = h1_client();
    let running = {
        let (client, outbound) = (client.clone(), proxy.outbound);
        tokio::spawn(async move {
            let mut out = Vec::new();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                let req = http::Request::get(format!("http://{outbound}/"))
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                out.push(answer(&client, req).await);
            }
            out
        })
    };
    // Every 100 ms, one endpoint leaves or comes back (two always stay).
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < Duration::from_secs(10) {
        let gone = 2 + (i % 2);
        let now: Vec<&Backend> = all
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != gone || i % 4 < 2)
            .map(|(_, b)| *b)
            .collect();
        plane.write(&mesh(&now, "", ""));
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answers = running.await.unwrap();
    let failed: Vec<_> = answers.iter().filter(|a| a.status != 200).collect();
    assert!(answers.len() > 100, "load ran: {}", answers.len());
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        answers.len()
    );
}

#[tokio::test]
async fn routes_pick_backends_and_no_match_is_404() {
    let api = Backend::start("api").await;
    let canary = Backend::start("canary").await;
    let posts = Backend::start("posts").await;
    let policy = "routes:\n  - name: canary\n    matches: [{path_prefix: /api, headers: {x-canary: \"1\"}}]\n    backends: [{service: \"canary.test.svc.cluster.local:80\", weight: 1}]\n  - name: api\n    matches: [{path_prefix: /api}]\n    backends: [{service: \"api.test.svc.cluster.local:80\", weight: 1}]\n  - name: posts\n    matches: [{method: POST, path_exact: /submit}]\n    backends: [{service: \"posts.test.svc.cluster.local:80\", weight: 1}]\n";
    let others = service("api.test.svc.cluster.local:80", &[&api])
        + &service("canary.test.svc.cluster.local:80", &[&canary])
        + &service("posts.test.svc.cluster.local:80", &[&posts]);
    let plane = ControlPlane::start(&mesh(&[], policy, &others)).await;
    let proxy = proxy_for(&plane).await;
    let client = h1_client();

    let a = get(&client, &proxy, "/api/items").await;
    assert_eq!(
        (a.status, a.backend.as_deref()),
        (200, Some("api")),
        "{a:?}"
    );
    let req = http::Request::get(format!("http://{}/api/items", proxy.outbound))
        .header("x-canary", "1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let a = answer(&client, req).await;
    assert_eq!(a.backend.as_deref(), Some("canary"), "{a:?}");
    let req = http::Request::post(format!("http://{}/submit", proxy.outbound))
        .body(Full::new(Bytes::from_static(b"x")))
        .unwrap();
    let a = answer(&client, req).await;
    assert_eq!(a.backend.as_deref(), Some("posts"), "{a:?}");
    // `/apix` is not under `/api`; nothing else matches.
    let a = get(&client, &proxy, "/apix").await;
    assert_eq!(a.status, 404, "{a:?}");
    assert!(a.error.unwrap().contains("no route"));
    let a = get(&client, &proxy, "/submit").await;
    assert_eq!(a.status, 404, "GET is not the POST route");
}

#[tokio::test]
async fn explicit_mode_goes_through_the_service_stack() {
    // Half of the endpoint's answers fail; the service's route retries
    // them, so an explicit-mode client (curl -x) sees none of it.
    let flaky = Backend::start("flaky").await;
    flaky.set(Behavior {
        fail_percent: 50,
        ..Default::default()
    });
    let plane = ControlPlane::start(&profile_mesh(&[&flaky], RETRY_PROFILE)).await;
    let dst = plane.addr.to_string();
    let proxy = Proxy::start(
        OrigDst::from_fn(|s| s.local_addr()),
        &[("LINNET_DESTINATION_SVC_ADDR", &dst)],
    )
    .await;
    let proxy_url = format!("http://{}", proxy.outbound);
    for _ in 0..10 {
        let (code, _) = linnet_test_support::http::curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-x",
            &proxy_url,
            "http://web.test.svc.cluster.local/",
        ])
        .await;
        assert_eq!(code, "200");
    }
    assert!(
        flaky.failed() >= 4,
        "the endpoint failed: {}",
        flaky.failed()
    );
    let m = proxy.metrics().await;
    assert!(m.sum("outbound_http_route_retry_requests_total", &[]) >= 4.0);
}
