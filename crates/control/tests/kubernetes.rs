//! Kubernetes endpoint discovery end to end: a fake API server over
//! HTTPS lists Services, EndpointSlices and Pods and streams their watch
//! events as each test says; `linnet control` serves what it learns to a
//! tonic Destination client. The API server also breaks (errors, garbage,
//! hangs, closed and expired watches) and goes over the bounds, and the
//! tests check what is served and what is counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use hyper::body::{Bytes, Frame};
use linkerd2_proxy_api::{
    destination::{
        GetDestination, Update, WeightedAddr, destination_client::DestinationClient, protocol_hint,
        update,
    },
    outbound::{TrafficSpec, outbound_policies_client::OutboundPoliciesClient, traffic_spec},
};
use linnet_control::{Ca, Control, Mesh, Metrics, Store};
use linnet_test_support::eventually;
use serde_json::{Value, json};
use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::mpsc;
use tonic::Streaming;

const SERVICES: &str = "/api/v1/services";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const PODS: &str = "/api/v1/pods";
const WEB: &str = "web.demo.svc.cluster.local:80";
const WEB_ID: &str = "web.demo.serviceaccount.identity.linkerd.cluster.local";

// === the fake API server ===

/// A list answer.
#[derive(Clone)]
enum Reply {
    List(&'static str, Value),
    Code(u16),
    Garbage,
    Hang,
    /// A list, once the test opens the gate.
    Gated(&'static str, Value),
}

#[derive(Default)]
struct Script {
    /// List answers by path, in order; the last one repeats.
    lists: HashMap<&'static str, VecDeque<Reply>>,
    /// Each watch's stream by path, in the order they were asked for;
    /// `None` once the test closed it.
    watches: HashMap<String, Vec<Option<mpsc::UnboundedSender<Bytes>>>>,
    /// Every request: (path, query).
    seen: Vec<(String, String)>,
    /// Holds `Reply::Gated` back while false.
    gate: Option<tokio::sync::watch::Sender<bool>>,
}

#[derive(Clone)]
struct Fake(Arc<Mutex<Script>>);

impl Fake {
    fn new(lists: [(&'static str, Vec<Reply>); 3]) -> Self {
        let mut s = Script::default();
        for (path, replies) in lists {
            s.lists.insert(path, replies.into());
        }
        Self(Arc::new(Mutex::new(s)))
    }

    async fn answer(
        self,
        req: http::Request<hyper::body::Incoming>,
    ) -> http::Response<support::Body> {
        use http_body_util::BodyExt;
        assert_eq!(req.method(), http::Method::GET);
        assert_eq!(
            req.headers()[http::header::AUTHORIZATION],
            "Bearer control-plane-token"
        );
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or_default().to_string();
        let reply = {
            let mut s = self.0.lock().unwrap();
            s.seen.push((path.clone(), query.clone()));
            if query.contains("watch=true") {
                let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
                s.watches.entry(path).or_default().push(Some(tx));
                let body = futures_util::stream::unfold(rx, |mut rx| async move {
                    let data = rx.recv().await?;
                    Some((Ok(Frame::data(data)), rx))
                });
                return http::Response::builder()
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(http_body_util::StreamBody::new(body).boxed())
                    .unwrap();
            }
            let queue = s.lists.get_mut(path.as_str()).expect("a listed path");
            if queue.len() > 1 {
                queue.pop_front().unwrap()
            } else {
                queue.front().cloned().unwrap()
            }
        };
        if let Reply::Gated(..) = reply {
            let gate = self
                .0
                .lock()
                .unwrap()
                .gate
                .get_or_insert_default()
                .subscribe();
            let _ = { gate }.wait_for(|open| *open).await;
        }
        match reply {
            Reply::List(rv, items) | Reply::Gated(rv, items) => support::full(
                200,
                json!({"kind": "List", "apiVersion": "v1",
                       "metadata": {"resourceVersion": rv}, "items": items})
                .to_string(),
            ),
            Reply::Code(code) => support::full(
                code,
                json!({"kind": "Status", "code": code, "message": "broken"}).to_string(),
            ),
            Reply::Garbage => support::full(200, "{\"kind\": \"List\", \"items\": [{\"meta"),
            Reply::Hang => std::future::pending().await,
        }
    }

    /// Requests to `path`: (lists, the watches' queries).
    fn seen(&self, path: &str) -> (usize, Vec<String>) {
        let s = self.0.lock().unwrap();
        let of_path = s.seen.iter().filter(|(p, _)| p == path);
        let watches: Vec<String> = of_path
            .clone()
            .filter(|(_, q)| q.contains("watch=true"))
            .map(|(_, q)| q.clone())
            .collect();
        (of_path.count() - watches.len(), watches)
    }

    /// Sends `lines` on the `n`th watch (from 1) of `path`, once it is open.
    async fn send(&self, path: &str, n: usize, lines: &[Value]) {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        self.send_raw(path, n, text).await;
    }

    /// Sends bytes on the `n`th watch of `path`, once it is open.
    async fn send_raw(&self, path: &str, n: usize, data: impl Into<Bytes>) {
        let tx = eventually(
            &format!("watch {n} of {path}"),
            Duration::from_secs(10),
            || async {
                let s = self.0.lock().unwrap();
                s.watches.get(path)?.get(n - 1).cloned().flatten()
            },
        )
        .await;
        tx.send(data.into()).unwrap();
    }

    /// Lets `Reply::Gated` answer.
    fn open_gate(&self) {
        let mut s = self.0.lock().unwrap();
        s.gate.get_or_insert_default().send_replace(true);
    }

    /// Ends the `n`th watch of `path` cleanly.
    fn close(&self, path: &str, n: usize) {
        let mut s = self.0.lock().unwrap();
        s.watches.get_mut(path).unwrap()[n - 1] = None;
    }
}

// === Kubernetes objects ===

fn service(name: &str, ip: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": "demo", "resourceVersion": "1"},
           "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}})
}

/// A slice of `svc` on 8080: (address, pod) of ready endpoints; a pod of
/// "" is an endpoint that is no pod.
fn slice(name: &str, svc: &str, rv: &str, eps: &[(&str, &str)]) -> Value {
    let eps: Vec<Value> = eps
        .iter()
        .map(|(ip, pod)| {
            let mut e = json!({"addresses": [ip], "conditions": {"ready": true, "serving": true}});
            if !pod.is_empty() {
                e["targetRef"] = json!({"kind": "Pod", "name": pod, "namespace": "demo"});
            }
            e
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": name, "namespace": "demo", "resourceVersion": rv,
                        "labels": {"kubernetes.io/service-name": svc}},
           "addressType": "IPv4",
           "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
           "endpoints": eps})
}

fn pod(name: &str, sa: &str, meshed: bool, rv: &str) -> Value {
    let mut containers = vec![json!({"name": "app", "image": "app:1"})];
    if meshed {
        containers.push(json!({"name": "linnet-proxy", "image": "linnet:dev",
            "ports": [{"name": "linkerd-proxy", "containerPort": 4143}]}));
    }
    json!({"metadata": {"name": name, "namespace": "demo", "resourceVersion": rv},
           "spec": {"serviceAccountName": sa, "containers": containers},
           "status": {"phase": "Running"}})
}

fn event(kind: &str, object: Value) -> Value {
    json!({"type": kind, "object": object})
}

/// The usual cluster: `web` with one meshed pod, `plain` with one pod
/// without the proxy, and `hand`, which the mesh file also lists.
fn cluster() -> [(&'static str, Vec<Reply>); 3] {
    [
        (
            SERVICES,
            vec![Reply::List(
                "100",
                json!([
                    service("web", "10.96.0.10"),
                    service("plain", "10.96.0.11"),
                    service("hand", "10.96.0.12")
                ]),
            )],
        ),
        (
            SLICES,
            vec![Reply::List(
                "100",
                json!([
                    slice("web-abc", "web", "10", &[("10.1.0.1", "web-1")]),
                    slice("plain-xyz", "plain", "11", &[("10.2.0.1", "plain-1")]),
                    slice("hand-1", "hand", "12", &[("10.3.0.1", "")])
                ]),
            )],
        ),
        (
            PODS,
            vec![Reply::List(
                "100",
                json!([
                    pod("web-1", "web", true, "20"),
                    pod("plain-1", "plain", false, "21")
                ]),
            )],
        ),
    ]
}

// === the control plane ===

struct Plane {
    addr: SocketAddr,
    registry: prometheus_client::registry::Registry,
    dir: tempfile::TempDir,
}

impl Plane {
    async fn start(fake: &Fake, extra: &str) -> Self {
        let api = support::https_server({
            let fake = fake.clone();
            move |req| fake.clone().answer(req)
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), &api.ca_pem).unwrap();
        std::fs::write(dir.path().join("sa-token"), "control-plane-token\n").unwrap();
        let path = dir.path().join("mesh.yaml");
        std::fs::write(&path, mesh_file(&api.url, extra)).unwrap();
        let mesh = Mesh::load(&path).unwrap();
        let ca = Arc::new(Ca::load_or_generate(&mesh.identity).unwrap());
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Metrics::register(&mut registry);
        let store = Store::new(mesh);
        tokio::spawn(
            store
                .clone()
                .follow(path, Duration::from_millis(20), metrics.clone()),
        );
        tokio::spawn(linnet_control::discover(store.clone(), metrics.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let control = Control { store, metrics, ca };
        tokio::spawn(linnet_control::serve(
            listener,
            control,
            std::future::pending(),
        ));
        Self {
            addr,
            registry,
            dir,
        }
    }

    fn metrics(&self) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry).unwrap();
        s
    }

    /// Waits until the metrics have every one of `lines`.
    async fn counted(&self, lines: &[&str]) {
        eventually(&format!("{lines:?}"), Duration::from_secs(10), || async {
            let m = self.metrics();
            lines
                .iter()
                .all(|l| m.lines().any(|x| x == *l))
                .then_some(())
        })
        .await;
    }

    async fn get(&self, path: &str) -> Streaming<Update> {
        let mut client = DestinationClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap();
        client
            .get(GetDestination {
                path: path.to_string(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    }
}

fn mesh_file(url: &str, extra: &str) -> String {
    format!(
        "identity:\n  trust_domain: cluster.local\n\
         discovery:\n  kubernetes:\n    api_server: {url}\n    ca_file: ca.crt\n    token_file: sa-token\n    \
         timeout: 500ms\n    min_backoff: 10ms\n    max_backoff: 50ms\n{extra}\
         services:\n  hand.demo.svc.cluster.local:80:\n    endpoints: [{{addr: \"10.9.9.9:80\"}}]\n"
    )
}

/// The stream's next update.
async fn next(s: &mut Streaming<Update>) -> update::Update {
    tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .expect("an update within 10s")
        .unwrap()
        .unwrap()
        .update
        .unwrap()
}

/// The addresses an addition adds.
fn added_addrs(u: update::Update) -> Vec<String> {
    added(u).iter().map(addr).collect()
}

/// `web`'s slice changed: (address, pod) of its ready endpoints.
fn web_changed(rv: &str, eps: &[(&str, &str)]) -> Value {
    event("MODIFIED", slice("web-abc", "web", rv, eps))
}

fn added(u: update::Update) -> Vec<WeightedAddr> {
    match u {
        update::Update::Add(set) => set.addrs,
        other => panic!("expected an addition, got {other:?}"),
    }
}

fn removed(u: update::Update) -> Vec<String> {
    match u {
        update::Update::Remove(set) => set
            .addrs
            .iter()
            .map(|a| SocketAddr::try_from(*a).unwrap().to_string())
            .collect(),
        other => panic!("expected a removal, got {other:?}"),
    }
}

fn addr(w: &WeightedAddr) -> String {
    SocketAddr::try_from(w.addr.unwrap()).unwrap().to_string()
}

fn identity(w: &WeightedAddr) -> Option<String> {
    Some(w.tls_identity.as_ref()?.server_name.as_ref()?.name.clone())
}

fn is_h2(w: &WeightedAddr) -> bool {
    matches!(
        w.protocol_hint.as_ref().and_then(|h| h.protocol.as_ref()),
        Some(protocol_hint::Protocol::H2(_))
    )
}

// === the tests ===

#[tokio::test]
async fn endpoints_follow_the_cluster() {
    let fake = Fake::new(cluster());
    {
        // A relist of slices, after the watch expires: web-2 and an
        // endpoint that is no pod.
        let mut s = fake.0.lock().unwrap();
        s.lists.get_mut(SLICES).unwrap().push_back(Reply::List(
            "200",
            json!([
                slice(
                    "web-abc",
                    "web",
                    "30",
                    &[("10.1.0.2", "web-2"), ("10.1.0.9", "")]
                ),
                slice("plain-xyz", "plain", "11", &[("10.2.0.1", "plain-1")])
            ]),
        ));
    }
    let plane = Plane::start(&fake, "").await;

    // A meshed pod: its identity and h2.
    let mut web = plane.get(WEB).await;
    let first = added(next(&mut web).await);
    assert_eq!(
        first.iter().map(addr).collect::<Vec<_>>(),
        ["10.1.0.1:8080"]
    );
    assert_eq!(identity(&first[0]).as_deref(), Some(WEB_ID));
    assert!(is_h2(&first[0]));
    assert_eq!(first[0].metric_labels["pod"], "web-1");
    // A plain pod, by the service's cluster IP: neither.
    let mut plain = plane.get("10.96.0.11:80").await;
    let first = added(next(&mut plain).await);
    assert_eq!(
        first.iter().map(addr).collect::<Vec<_>>(),
        ["10.2.0.1:8080"]
    );
    assert_eq!(identity(&first[0]), None);
    assert!(first[0].protocol_hint.is_none());
    // The file's service wins over the discovered one of its name.
    let mut hand = plane.get("hand.demo.svc.cluster.local:80").await;
    let first = added(next(&mut hand).await);
    assert_eq!(first.iter().map(addr).collect::<Vec<_>>(), ["10.9.9.9:80"]);
    // The outbound policy of a cluster IP balances over the service.
    let mut policies = OutboundPoliciesClient::connect(format!("http://{}", plane.addr))
        .await
        .unwrap();
    let policy = policies
        .get(TrafficSpec {
            source_workload: "demo:client".into(),
            target: Some(traffic_spec::Target::Addr(
                "10.96.0.10:80".parse::<SocketAddr>().unwrap().into(),
            )),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        format!("{policy:?}").contains(&format!("path: \"{WEB}\"")),
        "{policy:?}"
    );

    // Each watch starts where its list ended.
    for path in [SERVICES, SLICES, PODS] {
        eventually(
            &format!("a watch of {path}"),
            Duration::from_secs(10),
            || async {
                let (lists, watches) = fake.seen(path);
                (lists == 1 && watches.len() == 1).then_some(())
            },
        )
        .await;
        let (_, watches) = fake.seen(path);
        assert!(watches[0].contains("resourceVersion=100"), "{watches:?}");
        assert!(
            watches[0].contains("allowWatchBookmarks=true"),
            "{watches:?}"
        );
    }

    // A new pod, then its endpoint: added, with its identity.
    fake.send(PODS, 1, &[event("ADDED", pod("web-2", "web", true, "101"))])
        .await;
    fake.send(
        SLICES,
        1,
        &[web_changed(
            "102",
            &[("10.1.0.1", "web-1"), ("10.1.0.2", "web-2")],
        )],
    )
    .await;
    let more = added(next(&mut web).await);
    assert_eq!(more.iter().map(addr).collect::<Vec<_>>(), ["10.1.0.2:8080"]);
    assert_eq!(identity(&more[0]).as_deref(), Some(WEB_ID));
    // The first endpoint goes: removed.
    fake.send(
        SLICES,
        1,
        &[json!({"type": "BOOKMARK", "object": {"kind": "EndpointSlice", "metadata": {"resourceVersion": "150"}}}),
          web_changed("103", &[("10.1.0.2", "web-2")])],
    )
    .await;
    assert_eq!(removed(next(&mut web).await), ["10.1.0.1:8080"]);

    // The watch expires: a relist, whose news arrive as changes.
    fake.send(
        SLICES,
        1,
        &[json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                 "message": "too old resource version: 103 (150)", "reason": "Expired", "code": 410}})],
    )
    .await;
    let relisted = added(next(&mut web).await);
    assert_eq!(
        relisted.iter().map(addr).collect::<Vec<_>>(),
        ["10.1.0.9:8080"]
    );
    assert_eq!(identity(&relisted[0]), None);
    assert_eq!(fake.seen(SLICES).0, 2);
    eventually(
        "a watch after the relist",
        Duration::from_secs(10),
        || async { (fake.seen(SLICES).1.len() == 2).then_some(()) },
    )
    .await;
    let (_, watches) = fake.seen(SLICES);
    assert!(watches[1].contains("resourceVersion=200"), "{watches:?}");
    plane
        .counted(&[
            "control_kubernetes_errors_total{resource=\"endpointslices\",reason=\"gone\"} 1",
            "control_kubernetes_lists_total{resource=\"endpointslices\"} 2",
            "control_kubernetes_lists_total{resource=\"pods\"} 1",
            "control_kubernetes_services 3",
        ])
        .await;

    // Discovery turned off in the file: what it found is gone.
    let yaml = "identity:\n  trust_domain: cluster.local\n";
    std::fs::write(plane.dir.path().join("mesh.yaml"), yaml).unwrap();
    let gone = next(&mut web).await;
    assert_eq!(removed(gone).len(), 2);
    assert!(matches!(
        next(&mut web).await,
        update::Update::NoEndpoints(n) if !n.exists
    ));
    plane.counted(&["control_kubernetes_services 0"]).await;
}

#[tokio::test]
async fn a_broken_api_server_keeps_the_last_known_state() {
    let mut lists = cluster();
    // After the first list of slices: a 500, garbage, a hang, and then
    // a good list with one more endpoint.
    let good = lists[1].1[0].clone();
    lists[1].1 = vec![
        good,
        Reply::Code(500),
        Reply::Garbage,
        Reply::Hang,
        Reply::List(
            "300",
            json!([
                slice(
                    "web-abc",
                    "web",
                    "40",
                    &[("10.1.0.1", "web-1"), ("10.1.0.4", "")]
                ),
                slice("plain-xyz", "plain", "11", &[("10.2.0.1", "plain-1")])
            ]),
        ),
    ];
    let fake = Fake::new(lists);
    let plane = Plane::start(&fake, "").await;
    let mut web = plane.get(WEB).await;
    let first = added(next(&mut web).await);
    assert_eq!(
        first.iter().map(addr).collect::<Vec<_>>(),
        ["10.1.0.1:8080"]
    );

    // A watch that closes is watched again from where it was, not relisted.
    fake.send(
        PODS,
        1,
        &[event("MODIFIED", pod("web-1", "web", true, "120"))],
    )
    .await;
    fake.close(PODS, 1);
    eventually(
        "a second watch of pods",
        Duration::from_secs(10),
        || async { (fake.seen(PODS).1.len() == 2).then_some(()) },
    )
    .await;
    let (lists, watches) = fake.seen(PODS);
    assert_eq!(lists, 1);
    assert!(watches[1].contains("resourceVersion=120"), "{watches:?}");

    // Garbage in the watch, then a 500, garbage and a hang for the
    // relists: each counted, and nothing taken away.
    fake.send_raw(SLICES, 1, "{\"type\": \"MODIFIED\", \"object\": [1, 2\n")
        .await;
    plane
        .counted(&[
            "control_kubernetes_errors_total{resource=\"endpointslices\",reason=\"decode\"} 2",
            "control_kubernetes_errors_total{resource=\"endpointslices\",reason=\"status\"} 1",
            "control_kubernetes_errors_total{resource=\"endpointslices\",reason=\"timeout\"} 1",
        ])
        .await;
    // A new stream is served what was known all along.
    let mut again = plane.get(WEB).await;
    assert_eq!(added_addrs(next(&mut again).await), ["10.1.0.1:8080"]);
    // The first stream saw no removal: its next update is the good
    // relist's addition.
    assert_eq!(added_addrs(next(&mut web).await), ["10.1.0.4:8080"]);
    plane
        .counted(&["control_kubernetes_lists_total{resource=\"endpointslices\"} 2"])
        .await;
}

#[tokio::test]
async fn bounds_are_counted_and_what_fits_is_served() {
    let mut lists = cluster();
    lists[0].1 = vec![Reply::List(
        "100",
        json!([
            service("web", "10.96.0.10"),
            service("plain", "10.96.0.11"),
            service("third", "10.96.0.13")
        ]),
    )];
    let fake = Fake::new(lists);
    let plane = Plane::start(
        &fake,
        "    max_services: 2\n    max_endpoints: 4\n    max_event_bytes: 2048\n",
    )
    .await;
    let mut web = plane.get(WEB).await;
    assert_eq!(added_addrs(next(&mut web).await), ["10.1.0.1:8080"]);
    // The third service did not fit; the two before it are served.
    let mut third = plane.get("third.demo.svc.cluster.local:80").await;
    assert!(matches!(next(&mut third).await, update::Update::NoEndpoints(n) if !n.exists));
    plane
        .counted(&[
            "control_kubernetes_limit_total{limit=\"services\"} 1",
            "control_kubernetes_services 2",
        ])
        .await;

    // Four endpoints in web's slice would make six in all: refused, and
    // web keeps its one.
    let four = [
        ("10.1.0.1", ""),
        ("10.1.0.2", ""),
        ("10.1.0.3", ""),
        ("10.1.0.4", ""),
    ];
    // An event larger than max_event_bytes: skipped.
    let mut huge = slice("web-abc", "web", "104", &[("10.1.0.7", "")]);
    huge["metadata"]["annotations"] = json!({"padding": "x".repeat(4096)});
    fake.send(
        SLICES,
        1,
        &[
            event("MODIFIED", slice("web-abc", "web", "103", &four)),
            event("MODIFIED", huge),
            web_changed("105", &[("10.1.0.1", "web-1"), ("10.1.0.5", "")]),
        ],
    )
    .await;
    // The event after them is taken.
    assert_eq!(added_addrs(next(&mut web).await), ["10.1.0.5:8080"]);
    plane
        .counted(&[
            "control_kubernetes_limit_total{limit=\"endpoints\"} 1",
            "control_kubernetes_limit_total{limit=\"event_bytes\"} 1",
            "control_kubernetes_endpoints 3",
        ])
        .await;
    // The watch went on: no relist.
    assert_eq!(fake.seen(SLICES).0, 1);
}

#[tokio::test]
async fn questions_before_the_first_list_wait_for_it() {
    let mut lists = cluster();
    // Pods are not listed until the test says so.
    let Reply::List(rv, pods) = lists[2].1[0].clone() else {
        unreachable!()
    };
    lists[2].1 = vec![Reply::Gated(rv, pods)];
    let fake = Fake::new(lists);
    let plane = Plane::start(&fake, "").await;
    let url = format!("http://{}", plane.addr);
    let by_addr = tokio::spawn({
        let url = url.clone();
        async move {
            let mut client = OutboundPoliciesClient::connect(url).await.unwrap();
            client
                .get(TrafficSpec {
                    source_workload: "demo:client".into(),
                    target: Some(traffic_spec::Target::Addr(
                        "10.96.0.10:80".parse::<SocketAddr>().unwrap().into(),
                    )),
                })
                .await
                .map(|r| r.into_inner())
        }
    });
    let mut web = plane.get(WEB).await;
    plane
        .counted(&[
            "control_requests_total{rpc=\"OutboundPolicies.Get\"} 1",
            "control_requests_total{rpc=\"Destination.Get\"} 1",
        ])
        .await;
    assert!(
        !by_addr.is_finished(),
        "answered before discovery listed pods"
    );
    fake.open_gate();
    // Not a forward to the cluster IP, not "no such service": the service.
    let policy = by_addr.await.unwrap().unwrap();
    assert!(
        format!("{policy:?}").contains(&format!("path: \"{WEB}\"")),
        "{policy:?}"
    );
    let first = added(next(&mut web).await);
    assert_eq!(identity(&first[0]).as_deref(), Some(WEB_ID));
    // Once listed, what is unknown is said so at once.
    let mut none = plane.get("nothing.demo.svc.cluster.local:80").await;
    assert!(matches!(next(&mut none).await, update::Update::NoEndpoints(n) if !n.exists));
}
