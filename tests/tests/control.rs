//! The proxy with a control plane: endpoints followed as the mesh file
//! changes, traffic that survives the control plane's death, malformed
//! control-plane data skipped, and the DNS fallback for names the control
//! plane does not know.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use linnet_app::OrigDst;
use linnet_test_support::{
    control::ControlPlane,
    eventually,
    http::{HttpServer, collect, curl, h1_client},
    proxy::Proxy,
};
use std::{net::SocketAddr, time::Duration};

/// The service's virtual address: connections to it are connections to
/// the service.
const VIP: &str = "10.96.0.1:80";

fn mesh(backends: &[SocketAddr]) -> String {
    let mut y = format!(
        "services:\n  web.test.svc.cluster.local:80:\n    addresses: [\"{VIP}\"]\n    endpoints:\n"
    );
    if backends.is_empty() {
        y = format!(
            "services:\n  web.test.svc.cluster.local:80:\n    addresses: [\"{VIP}\"]\n    endpoints: []\n"
        );
    }
    for b in backends {
        y.push_str(&format!("      - addr: \"{b}\"\n"));
    }
    y
}

async fn proxy_for(plane: &ControlPlane, extra: &[(&str, &str)]) -> Proxy {
    let dst = plane.addr.to_string();
    let mut env = vec![("LINNET_DESTINATION_SVC_ADDR", dst.as_str())];
    env.extend_from_slice(extra);
    Proxy::start(OrigDst::Fixed(VIP.parse().unwrap()), &env).await
}

async fn get(client: &Client<HttpConnector, Full<Bytes>>, proxy: &Proxy, path: &str) -> u16 {
    let rsp = client
        .get(format!("http://{}{path}", proxy.outbound).parse().unwrap())
        .await
        .unwrap();
    collect(rsp).await.0.as_u16()
}

fn hits(s: &HttpServer) -> usize {
    s.seen().len()
}

fn delays(s: &HttpServer) -> usize {
    s.seen()
        .iter()
        .filter(|x| x.uri.path().starts_with("/delay"))
        .count()
}

#[tokio::test]
async fn follows_endpoints_as_the_file_changes() {
    let (a, b) = (HttpServer::start().await, HttpServer::start().await);
    let plane = ControlPlane::start(&mesh(&[a.addr])).await;
    let proxy = proxy_for(&plane, &[]).await;
    let client = h1_client();

    for _ in 0..10 {
        assert_eq!(get(&client, &proxy, "/status/200").await, 200);
    }
    assert_eq!((hits(&a), hits(&b)), (10, 0));

    // A second backend is added: it gets traffic. (The balancer weighs
    // endpoints by latency, and assumes a new one takes 30 ms until it
    // has answered: requests slower than that make it the better pick.)
    plane.write(&mesh(&[a.addr, b.addr]));
    eventually(
        "the new backend gets requests",
        Duration::from_secs(10),
        || async {
            get(&client, &proxy, "/delay/50").await;
            (hits(&b) > 0).then_some(())
        },
    )
    .await;

    // A slow request in flight at `a`: sent until one lands there.
    let in_flight = loop {
        let (a0, b0) = (delays(&a), delays(&b));
        let c = client.clone();
        let uri: hyper::Uri = format!("http://{}/delay/1500", proxy.outbound)
            .parse()
            .unwrap();
        let req = tokio::spawn(async move { collect(c.get(uri).await.unwrap()).await });
        let on_a = eventually("the slow request lands", Duration::from_secs(5), || async {
            if delays(&a) > a0 {
                Some(true)
            } else if delays(&b) > b0 {
                Some(false)
            } else {
                None
            }
        })
        .await;
        if on_a {
            break req;
        }
        req.await.unwrap();
    };
    // ...while `a` is removed from the file.
    plane.write(&mesh(&[b.addr]));
    eventually(
        "no new requests go to the removed backend",
        Duration::from_secs(10),
        || async {
            let before = hits(&a);
            for _ in 0..20 {
                get(&client, &proxy, "/status/200").await;
            }
            (hits(&a) == before).then_some(())
        },
    )
    .await;
    let before = hits(&a);
    for _ in 0..20 {
        assert_eq!(get(&client, &proxy, "/status/200").await, 200);
    }
    assert_eq!(hits(&a), before, "a removed backend got new requests");
    // The request in flight when it was removed finished normally.
    let (status, _, _, _) = in_flight.await.unwrap();
    assert_eq!(status.as_u16(), 200);

    // No endpoints at all: once the balancer has had none ready for its
    // fail-fast timeout (3 s), requests fail at once: 503, with the
    // reason.
    plane.write(&mesh(&[]));
    eventually(
        "requests fail fast with no endpoints",
        Duration::from_secs(15),
        || async { (get(&client, &proxy, "/status/200").await == 503).then_some(()) },
    )
    .await;
    let start = std::time::Instant::now();
    let rsp = client
        .get(
            format!("http://{}/status/200", proxy.outbound)
                .parse()
                .unwrap(),
        )
        .await
        .unwrap();
    let (status, headers, _, _) = collect(rsp).await;
    assert_eq!(status.as_u16(), 503);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "in fail-fast, at once"
    );
    let why = headers["l5d-proxy-error"].to_str().unwrap();
    assert!(
        why.contains("web.test.svc.cluster.local:80") && why.contains("no ready endpoint"),
        "{why}"
    );
    let m = proxy.metrics().await;
    assert!(
        m.sum(
            "control_client_updates_total",
            &[("api", "Destination.Get")]
        ) >= 3.0,
        "{}",
        m.0
    );
}

#[tokio::test]
async fn traffic_continues_while_the_control_plane_is_down() {
    let (a, b) = (HttpServer::start().await, HttpServer::start().await);
    let mut plane = ControlPlane::start(&mesh(&[a.addr])).await;
    let proxy = proxy_for(&plane, &[]).await;
    let client = h1_client();
    assert_eq!(get(&client, &proxy, "/status/200").await, 200);

    plane.kill();
    // Requests go on (keeping the watches in use) until the proxy has
    // noticed the control plane is gone...
    eventually(
        "the proxy notices the control plane is down",
        Duration::from_secs(10),
        || async {
            assert_eq!(get(&client, &proxy, "/status/200").await, 200);
            let m = proxy.metrics().await;
            (m.sum("control_client_errors_total", &[("api", "Destination.Get")]) >= 1.0)
                .then_some(())
        },
    )
    .await;
    // ...and still go to the last known endpoints, on the open connection
    // and on new ones.
    for _ in 0..20 {
        assert_eq!(get(&client, &proxy, "/status/200").await, 200);
    }
    let fresh = h1_client();
    assert_eq!(get(&fresh, &proxy, "/status/200").await, 200);
    assert_eq!(hits(&b), 0);

    // A change made while it was down applies once it is back.
    plane.write(&mesh(&[b.addr]));
    plane.restart().await;
    eventually(
        "the watch resumes and the change applies",
        Duration::from_secs(20),
        || async {
            get(&client, &proxy, "/status/200").await;
            (hits(&b) > 0).then_some(())
        },
    )
    .await;
    let before = hits(&a);
    for _ in 0..10 {
        assert_eq!(get(&client, &proxy, "/status/200").await, 200);
    }
    assert_eq!(hits(&a), before);
    let m = proxy.metrics().await;
    assert!(
        m.sum(
            "control_client_reconnects_total",
            &[("api", "Destination.Get")]
        ) >= 1.0,
        "{}",
        m.0
    );
}

/// A DNS server answering every A query for `name` with 127.0.0.1 and
/// `ttl`, and every other query with no records; counts queries for
/// `name`.
async fn dns_server(
    name: &'static str,
    ttl: u32,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let q = &buf[..n];
            if n < 12 {
                continue;
            }
            // The question: labels, then type and class.
            let mut i = 12;
            let mut labels = Vec::new();
            while i < n && q[i] != 0 {
                let len = q[i] as usize;
                labels.push(String::from_utf8_lossy(&q[i + 1..i + 1 + len]).to_ascii_lowercase());
                i += 1 + len;
            }
            let qend = i + 5;
            let qtype = u16::from_be_bytes([q[i + 1], q[i + 2]]);
            let asked = labels.join(".");
            let answer = qtype == 1 && asked == name;
            if asked == name && qtype == 1 {
                counter.fetch_add(1, Ordering::SeqCst);
            }
            let mut r = Vec::new();
            r.extend_from_slice(&q[..2]); // id
            r.extend_from_slice(&[0x81, 0x80]); // response, recursion available
            r.extend_from_slice(&[0, 1, 0, u8::from(answer), 0, 0, 0, 0]);
            r.extend_from_slice(&q[12..qend]);
            if answer {
                r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
                r.extend_from_slice(&ttl.to_be_bytes());
                r.extend_from_slice(&[0, 4, 127, 0, 0, 1]);
            }
            let _ = sock.send_to(&r, peer).await;
        }
    });
    (addr, count)
}

#[tokio::test]
async fn names_the_control_plane_does_not_know_fall_back_to_dns() {
    use std::sync::atomic::Ordering;
    let backend = HttpServer::start().await;
    let (dns, queries) = dns_server("backend.example.test", 1).await;
    let plane = ControlPlane::start("services: {}\n").await;
    let dst = plane.addr.to_string();
    let dns = dns.to_string();
    // Explicit proxy mode: connections to the proxy itself.
    let proxy = Proxy::start(
        OrigDst::from_fn(|s| s.local_addr()),
        &[
            ("LINNET_DESTINATION_SVC_ADDR", &dst),
            ("LINNET_DNS_SERVERS", &dns),
            // The 1s answer is kept for 3s: room for a second curl
            // within it on a busy machine.
            ("LINNET_DNS_MIN_TTL", "3s"),
            ("LINNET_DNS_MAX_TTL", "5s"),
        ],
    )
    .await;
    let url = format!(
        "http://backend.example.test:{}/status/200",
        backend.addr.port()
    );
    let proxy_url = format!("http://{}", proxy.outbound);
    let (out, err) = curl(&[
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-x",
        &proxy_url,
        &url,
    ])
    .await;
    assert_eq!(out, "200", "{err}");
    assert_eq!(backend.seen().len(), 1);
    assert_eq!(queries.load(Ordering::SeqCst), 1);
    // Within the TTL the answer is reused...
    let (out, _) = curl(&[
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-x",
        &proxy_url,
        &url,
    ])
    .await;
    assert_eq!(out, "200");
    assert_eq!(queries.load(Ordering::SeqCst), 1);
    // ...and after it, asked again.
    eventually(
        "the name is asked again once its answer expires",
        Duration::from_secs(15),
        || async {
            let (out, _) = curl(&[
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-x",
                &proxy_url,
                &url,
            ])
            .await;
            assert_eq!(out, "200");
            (queries.load(Ordering::SeqCst) >= 2).then_some(())
        },
    )
    .await;
    assert_eq!(queries.load(Ordering::SeqCst), 2);
    // A name neither knows: 502, naming it.
    let (out, _) = curl(&[
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-x",
        &proxy_url,
        "http://nowhere.example.test:80/",
    ])
    .await;
    assert_eq!(out, "502");
}

/// A Destination service that answers with malformed data beside one good
/// endpoint.
#[derive(Clone)]
struct Malformed {
    good: SocketAddr,
    decoy: SocketAddr,
}

type Stream<T> =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<T, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl linkerd2_proxy_api::destination::destination_server::Destination for Malformed {
    type GetStream = Stream<linkerd2_proxy_api::destination::Update>;
    type GetProfileStream = Stream<linkerd2_proxy_api::destination::DestinationProfile>;

    async fn get(
        &self,
        _req: tonic::Request<linkerd2_proxy_api::destination::GetDestination>,
    ) -> Result<tonic::Response<Self::GetStream>, tonic::Status> {
        use linkerd2_proxy_api::destination::{
            ProtocolHint, Update, WeightedAddr, WeightedAddrSet, update,
        };
        let wa = |addr: Option<SocketAddr>, weight| WeightedAddr {
            addr: addr.map(Into::into),
            weight,
            ..Default::default()
        };
        let mut unknown_hint = wa(Some(self.good), 1);
        // A hint with neither a protocol this proxy knows nor a port.
        unknown_hint.protocol_hint = Some(ProtocolHint {
            protocol: None,
            opaque_transport: None,
        });
        let updates = vec![
            Ok(Update { update: None }),
            Ok(Update {
                update: Some(update::Update::Add(WeightedAddrSet {
                    addrs: vec![wa(None, 1), wa(Some(self.decoy), 0), unknown_hint],
                    metric_labels: Default::default(),
                })),
            }),
        ];
        let s = futures_util::stream::iter(updates).chain(futures_util::stream::pending());
        Ok(tonic::Response::new(Box::pin(s)))
    }

    async fn get_profile(
        &self,
        _req: tonic::Request<linkerd2_proxy_api::destination::GetDestination>,
    ) -> Result<tonic::Response<Self::GetProfileStream>, tonic::Status> {
        let p = linkerd2_proxy_api::destination::DestinationProfile {
            fully_qualified_name: "web.test.svc.cluster.local".into(),
            ..Default::default()
        };
        let s = futures_util::stream::iter([Ok(p)]).chain(futures_util::stream::pending());
        Ok(tonic::Response::new(Box::pin(s)))
    }
}

use futures_util::StreamExt as _;

#[tokio::test]
async fn malformed_control_plane_data_is_skipped() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tower_service::Service as _;
    let (good, decoy) = (HttpServer::start().await, HttpServer::start().await);
    let svc =
        linkerd2_proxy_api::destination::destination_server::DestinationServer::new(Malformed {
            good: good.addr,
            decoy: decoy.addr,
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dst = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let svc = svc.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let mut svc = svc.clone();
                    async move { svc.call(req).await }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let proxy = Proxy::start(
        OrigDst::Fixed(VIP.parse().unwrap()),
        &[("LINNET_DESTINATION_SVC_ADDR", &dst)],
    )
    .await;
    let client = h1_client();
    for _ in 0..20 {
        assert_eq!(get(&client, &proxy, "/status/200").await, 200);
    }
    assert_eq!((hits(&good), hits(&decoy)), (20, 0));
    let m = proxy.metrics().await;
    for reason in [
        "no_address",
        "zero_weight",
        "unknown_protocol_hint",
        "empty_update",
    ] {
        assert_eq!(
            m.sum("control_client_skipped_total", &[("reason", reason)]),
            1.0,
            "{reason}: {}",
            m.0
        );
    }
}

#[tokio::test]
async fn outbound_policy_splits_traffic_between_services() {
    let (a, b) = (HttpServer::start().await, HttpServer::start().await);
    let yaml = |backends: &str| {
        format!(
            "services:\n  web.test.svc.cluster.local:80:\n    addresses: [\"{VIP}\"]\n    endpoints: [{{addr: \"{}\"}}]\n    policy:\n      routes:\n        - name: split\n          backends: [{backends}]\n  canary.test.svc.cluster.local:80:\n    endpoints: [{{addr: \"{}\"}}]\n",
            a.addr, b.addr
        )
    };
    let plane = ControlPlane::start(&yaml(
        "{service: web.test.svc.cluster.local:80, weight: 1}, {service: canary.test.svc.cluster.local:80, weight: 1}",
    ))
    .await;
    let addr = plane.addr.to_string();
    let proxy = proxy_for(
        &plane,
        &[
            ("LINNET_POLICY_SVC_ADDR", &addr),
            ("LINNET_POLICY_WORKLOAD", "client-1"),
        ],
    )
    .await;
    let client = h1_client();
    for _ in 0..40 {
        assert_eq!(get(&client, &proxy, "/status/200").await, 200);
    }
    // Both services get a share (each would miss all 40 with odds 2^-40).
    assert!(hits(&a) > 0 && hits(&b) > 0, "{} {}", hits(&a), hits(&b));

    // All traffic to the canary.
    plane.write(&yaml("{service: canary.test.svc.cluster.local:80}"));
    eventually(
        "the policy change applies",
        Duration::from_secs(10),
        || async {
            let before = hits(&a);
            for _ in 0..20 {
                get(&client, &proxy, "/status/200").await;
            }
            (hits(&a) == before).then_some(())
        },
    )
    .await;
    let m = proxy.metrics().await;
    assert!(
        m.sum(
            "control_client_updates_total",
            &[("api", "OutboundPolicies.Watch")]
        ) >= 2.0,
        "{}",
        m.0
    );
}
