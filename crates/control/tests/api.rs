//! The control plane's API, exercised with the `linkerd2-proxy-api`
//! crate's generated clients against a real server on loopback, with the
//! mesh file changed under it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use linkerd2_proxy_api::{
    destination::{
        self as dst, GetDestination, Update, destination_client::DestinationClient, update,
    },
    identity::{CertifyRequest, identity_client::IdentityClient},
};
use linnet_control::{Ca, Control, Mesh, Metrics, Store};
use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};
use tonic::{Code, Streaming};

const WEB: &str = "web.test.svc.cluster.local:80";
const WEB_ID: &str = "web.test.serviceaccount.identity.linkerd.cluster.local";

struct Plane {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    registry: Arc<prometheus_client::registry::Registry>,
    _task: tokio::task::JoinHandle<()>,
}

impl Plane {
    async fn start(yaml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.yaml");
        std::fs::write(&path, yaml).unwrap();
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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let control = Control { store, metrics, ca };
        let task = tokio::spawn(linnet_control::serve(
            listener,
            control,
            std::future::pending(),
        ));
        Self {
            addr,
            dir,
            registry: Arc::new(registry),
            _task: task,
        }
    }

    fn write(&self, yaml: &str) {
        std::fs::write(self.dir.path().join("mesh.yaml"), yaml).unwrap();
    }

    fn metrics(&self) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry).unwrap();
        s
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn endpoints(addrs: &[&str]) -> String {
    let mut y = format!("services:\n  {WEB}:\n    labels: {{service: web}}\n    endpoints:\n");
    for a in addrs {
        y.push_str(&format!(
            "      - {{addr: \"{a}\", identity: {WEB_ID}, protocol: h2}}\n"
        ));
    }
    y
}

async fn next(s: &mut Streaming<Update>) -> update::Update {
    tokio::time::timeout(Duration::from_secs(5), s.message())
        .await
        .expect("an update within 5s")
        .unwrap()
        .expect("the stream is open")
        .update
        .unwrap()
}

fn addrs(u: &update::Update) -> Vec<SocketAddr> {
    let mut v: Vec<SocketAddr> = match u {
        update::Update::Add(set) => set
            .addrs
            .iter()
            .map(|a| a.addr.unwrap().try_into().unwrap())
            .collect(),
        update::Update::Remove(set) => set.addrs.iter().map(|a| (*a).try_into().unwrap()).collect(),
        update::Update::NoEndpoints(_) => Vec::new(),
    };
    v.sort();
    v
}

fn get(path: &str) -> GetDestination {
    GetDestination {
        scheme: "k8s".into(),
        path: path.into(),
        context_token: String::new(),
    }
}

#[tokio::test]
async fn destination_get_follows_the_file() {
    let plane = Plane::start(&endpoints(&["127.0.0.1:8001"])).await;
    let mut client = DestinationClient::connect(plane.url()).await.unwrap();
    let mut stream = client.get(get(WEB)).await.unwrap().into_inner();
    let first = next(&mut stream).await;
    let update::Update::Add(set) = &first else {
        panic!("{first:?}")
    };
    assert_eq!(set.metric_labels["service"], "web");
    let ep = &set.addrs[0];
    assert_eq!(
        ep.tls_identity
            .as_ref()
            .unwrap()
            .server_name
            .as_ref()
            .unwrap()
            .name,
        WEB_ID
    );
    assert!(matches!(
        ep.protocol_hint.as_ref().unwrap().protocol,
        Some(dst::protocol_hint::Protocol::H2(_))
    ));

    // A second endpoint is added: only it is sent.
    plane.write(&endpoints(&["127.0.0.1:8001", "127.0.0.1:8002"]));
    let u = next(&mut stream).await;
    assert!(matches!(u, update::Update::Add(_)));
    assert_eq!(addrs(&u), ["127.0.0.1:8002".parse().unwrap()]);

    // An invalid file changes nothing, and says so in the metrics.
    plane.write("services:\n  web.test.svc.cluster.local:80:\n    endpoints: [{addr: nowhere}]\n");
    linnet_test_support::eventually(
        "the reload error counted",
        Duration::from_secs(5),
        || async {
            plane
                .metrics()
                .contains("control_config_reloads_total{result=\"error\"} 1")
                .then_some(())
        },
    )
    .await;
    assert!(plane.metrics().contains("control_config_last_reload_ok 0"));
    // The first one is removed (the next valid file): a removal, and the
    // stream carried nothing for the invalid file in between.
    plane.write(&endpoints(&["127.0.0.1:8002"]));
    let u = next(&mut stream).await;
    assert!(matches!(u, update::Update::Remove(_)), "{u:?}");
    assert_eq!(addrs(&u), ["127.0.0.1:8001".parse().unwrap()]);
    assert!(plane.metrics().contains("control_config_last_reload_ok 1"));
    assert!(
        plane
            .metrics()
            .contains("control_watches{rpc=\"Destination.Get\"} 1")
    );

    // The service goes away: no endpoints, and it does not exist.
    plane.write("services: {}\n");
    let u = next(&mut stream).await;
    assert!(matches!(u, update::Update::Remove(_)));
    let u = next(&mut stream).await;
    assert!(
        matches!(
            u,
            update::Update::NoEndpoints(dst::NoEndpoints { exists: false })
        ),
        "{u:?}"
    );

    // Unknown names are said to be unknown at once, so proxies fall back.
    let mut other = client
        .get(get("nowhere.test.svc.cluster.local:80"))
        .await
        .unwrap()
        .into_inner();
    let u = next(&mut other).await;
    assert!(matches!(
        u,
        update::Update::NoEndpoints(dst::NoEndpoints { exists: false })
    ));
    // Nonsense is refused.
    let err = client.get(get("not a name")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    drop(stream);
    drop(other);
    linnet_test_support::eventually("watches closed", Duration::from_secs(5), || async {
        plane
            .metrics()
            .contains("control_watches{rpc=\"Destination.Get\"} 0")
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn destination_get_profile() {
    let yaml = format!(
        "services:\n  {WEB}:\n    addresses: [\"10.96.0.1:80\"]\n    profile:\n      retry_budget: {{ratio: 0.25, min_per_second: 5, ttl: 3s}}\n      routes:\n        - {{name: items, method: GET, path: \"^/items$\", timeout: 2s, retryable: true, failure_statuses: [5xx]}}\n"
    );
    let plane = Plane::start(&yaml).await;
    let mut client = DestinationClient::connect(plane.url()).await.unwrap();
    for path in [WEB, "10.96.0.1:80"] {
        let mut s = client.get_profile(get(path)).await.unwrap().into_inner();
        let p = s.message().await.unwrap().unwrap();
        assert_eq!(p.fully_qualified_name, "web.test.svc.cluster.local");
        let b = p.retry_budget.unwrap();
        assert_eq!((b.retry_ratio, b.min_retries_per_second), (0.25, 5));
        assert_eq!(b.ttl.unwrap().seconds, 3);
        let r = &p.routes[0];
        assert!(r.is_retryable);
        assert_eq!(r.timeout.unwrap().seconds, 2);
        assert_eq!(r.metrics_labels["route"], "items");
        let class = r.response_classes[0]
            .condition
            .clone()
            .unwrap()
            .r#match
            .unwrap();
        assert!(matches!(
            class,
            dst::response_match::Match::Status(dst::HttpStatusRange { min: 500, max: 599 })
        ));
    }
    // Unknown: an empty profile.
    let mut s = client
        .get_profile(get("other.test.svc.cluster.local:80"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        s.message().await.unwrap().unwrap(),
        dst::DestinationProfile::default()
    );
    // The profile changes: the stream gets the new one.
    let mut s = client.get_profile(get(WEB)).await.unwrap().into_inner();
    s.message().await.unwrap().unwrap();
    plane.write(&format!(
        "services:\n  {WEB}:\n    profile: {{opaque: true}}\n"
    ));
    let p = tokio::time::timeout(Duration::from_secs(5), s.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(p.opaque_protocol && p.routes.is_empty());
}

fn csr(identity: &str) -> (Vec<u8>, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec![identity.to_string()]).unwrap();
    let csr = params.serialize_request(&key).unwrap();
    (csr.der().to_vec(), key)
}

#[tokio::test]
async fn certify_issues_verifiable_certificates_and_refuses_the_rest() {
    let yaml = format!("identity:\n  certificate_lifetime: 1h\n  tokens:\n    {WEB_ID}: s3cret\n");
    let plane = Plane::start(&yaml).await;
    // The issuer was generated beside the file.
    let anchor_pem = std::fs::read(plane.dir.path().join("issuer.crt")).unwrap();
    assert!(plane.dir.path().join("issuer.key").exists());
    let mut client = IdentityClient::connect(plane.url()).await.unwrap();

    let (der, _key) = csr(WEB_ID);
    let rsp = client
        .certify(CertifyRequest {
            identity: WEB_ID.into(),
            token: b"s3cret\n".to_vec(),
            certificate_signing_request: der.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let until = rsp.valid_until.unwrap().seconds;
    assert!(
        (now + 3500..=now + 3700).contains(&until),
        "{until} vs {now}"
    );
    verify(
        &anchor_pem,
        &rsp.leaf_certificate,
        &rsp.intermediate_certificates,
        WEB_ID,
    );
    // A PEM CSR is accepted too; the answer is DER either way.
    let key = rcgen::KeyPair::generate().unwrap();
    let pem = rcgen::CertificateParams::new(vec![WEB_ID.to_string()])
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let rsp = client
        .certify(CertifyRequest {
            identity: WEB_ID.into(),
            token: b"s3cret".to_vec(),
            certificate_signing_request: pem.into_bytes(),
        })
        .await
        .unwrap()
        .into_inner();
    verify(
        &anchor_pem,
        &rsp.leaf_certificate,
        &rsp.intermediate_certificates,
        WEB_ID,
    );

    let refused = |identity: &str, token: &[u8], csr: Vec<u8>| CertifyRequest {
        identity: identity.into(),
        token: token.to_vec(),
        certificate_signing_request: csr,
    };
    let e = client
        .certify(refused(WEB_ID, b"guess", der.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let e = client
        .certify(refused(
            "other.test.serviceaccount.identity.linkerd.cluster.local",
            b"s3cret",
            der.clone(),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = client
        .certify(refused(WEB_ID, b"s3cret", b"not a CSR".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message()
            .contains("malformed certificate signing request"),
        "{e:?}"
    );
    let (other_csr, _) = csr("someone.else.identity.linkerd.cluster.local");
    let e = client
        .certify(refused(WEB_ID, b"s3cret", other_csr))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // A CSR whose signature does not match its key.
    let mut tampered = der;
    let last = tampered.len() - 3;
    tampered[last] ^= 0x55;
    let e = client
        .certify(refused(WEB_ID, b"s3cret", tampered))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    let m = plane.metrics();
    for line in [
        "control_certify_total{result=\"issued\"} 2",
        "control_certify_total{result=\"bad_token\"} 1",
        "control_certify_total{result=\"unknown_identity\"} 1",
        "control_certify_total{result=\"bad_csr\"} 3",
    ] {
        assert!(m.contains(line), "{line} not in\n{m}");
    }
}

/// Verifies `leaf` for `identity` against the trust anchor, as a proxy
/// will.
fn verify(anchor_pem: &[u8], leaf: &[u8], intermediates: &[Vec<u8>], identity: &str) {
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject};
    let anchor = CertificateDer::from_pem_slice(anchor_pem).unwrap();
    let anchors = [webpki::anchor_from_trusted_cert(&anchor)
        .unwrap()
        .to_owned()];
    let leaf = CertificateDer::from(leaf.to_vec());
    let inter: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    let ee = webpki::EndEntityCert::try_from(&leaf).unwrap();
    for usage in [
        webpki::KeyUsage::server_auth(),
        webpki::KeyUsage::client_auth(),
    ] {
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &inter,
            UnixTime::now(),
            usage,
            None,
            None,
        )
        .unwrap();
    }
    ee.verify_is_valid_for_subject_name(&ServerName::try_from(identity).unwrap())
        .unwrap();
    assert!(
        ee.verify_is_valid_for_subject_name(
            &ServerName::try_from("other.identity.linkerd.cluster.local").unwrap()
        )
        .is_err()
    );
    // A certificate from another CA does not verify against this anchor.
    let other = Ca::generate().unwrap();
    let other_anchor =
        CertificateDer::from_pem_slice(other.trust_anchors_pem().as_bytes()).unwrap();
    let other_anchors = [webpki::anchor_from_trusted_cert(&other_anchor)
        .unwrap()
        .to_owned()];
    assert!(
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &other_anchors,
            &inter,
            UnixTime::now(),
            webpki::KeyUsage::server_auth(),
            None,
            None
        )
        .is_err()
    );
    let _ = Path::new("");
}

#[tokio::test]
async fn inbound_server_policies() {
    use linkerd2_proxy_api::inbound::{
        PortSpec, authn, inbound_server_policies_client::InboundServerPoliciesClient,
        proxy_protocol::Kind,
    };
    let yaml = "workloads:\n  web-1:\n    ports:\n      8080:\n        protocol: http1\n        authorizations:\n          - identities: [client.test.serviceaccount.identity.linkerd.cluster.local]\n          - {unauthenticated: true, networks: [10.0.0.0/8]}\n      5432: {protocol: opaque}\n";
    let plane = Plane::start(yaml).await;
    let mut client = InboundServerPoliciesClient::connect(plane.url())
        .await
        .unwrap();
    let spec = |workload: &str, port| PortSpec {
        workload: workload.into(),
        port,
    };
    let s = client
        .get_port(spec("web-1", 8080))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(s.protocol.unwrap().kind, Some(Kind::Http1(_))));
    assert_eq!(s.authorizations.len(), 2);
    let permit = s.authorizations[0]
        .authentication
        .clone()
        .unwrap()
        .permit
        .unwrap();
    let authn::Permit::MeshTls(mtls) = permit else {
        panic!("{permit:?}")
    };
    let Some(authn::permit_mesh_tls::Clients::Identities(ids)) = mtls.clients else {
        panic!()
    };
    assert_eq!(
        ids.identities[0].name,
        "client.test.serviceaccount.identity.linkerd.cluster.local"
    );
    let net = s.authorizations[1].networks[0].net.unwrap();
    assert_eq!(
        ipnet::IpNet::try_from(net).unwrap(),
        "10.0.0.0/8".parse::<ipnet::IpNet>().unwrap()
    );
    let s = client
        .get_port(spec("web-1", 5432))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(s.protocol.unwrap().kind, Some(Kind::Opaque(_))));
    // An unknown port gets the default: detect, and admit everyone.
    let s = client
        .get_port(spec("other", 80))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(s.protocol.unwrap().kind, Some(Kind::Detect(_))));
    assert!(matches!(
        s.authorizations[0].authentication.clone().unwrap().permit,
        Some(authn::Permit::Unauthenticated(_))
    ));
    assert_eq!(
        client
            .get_port(spec("web-1", 70000))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );

    // Watches follow the file.
    let mut w = client
        .watch_port(spec("web-1", 5432))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        w.message().await.unwrap().unwrap().protocol.unwrap().kind,
        Some(Kind::Opaque(_))
    ));
    plane.write("workloads:\n  web-1:\n    ports:\n      5432: {protocol: http2}\n");
    let s = tokio::time::timeout(Duration::from_secs(5), w.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(s.protocol.unwrap().kind, Some(Kind::Http2(_))));
    assert!(
        s.authorizations.is_empty(),
        "no authorizations: nobody is admitted"
    );
}

/// A reload that changes a port's policy reaches an open `WatchPort`
/// stream; a file that fails to validate (here, a rate limit on a gRPC
/// server) leaves the last good policy in force and sends nothing.
#[tokio::test]
async fn watch_port_follows_inbound_policy_reloads() {
    use linkerd2_proxy_api::inbound::{
        PortSpec, Server, inbound_server_policies_client::InboundServerPoliciesClient,
        proxy_protocol::Kind,
    };
    async fn next(w: &mut Streaming<Server>) -> Server {
        tokio::time::timeout(Duration::from_secs(5), w.message())
            .await
            .expect("a message within 5s")
            .unwrap()
            .expect("the stream is open")
    }
    let plane = Plane::start("default_inbound_policy: all-authenticated\n").await;
    let mut client = InboundServerPoliciesClient::connect(plane.url())
        .await
        .unwrap();
    let spec = PortSpec {
        workload: "web-1".into(),
        port: 8080,
    };
    let mut w = client.watch_port(spec).await.unwrap().into_inner();
    let s = next(&mut w).await;
    assert_eq!(s.labels["name"], "all-authenticated");
    assert_eq!(s.authorizations.len(), 1);

    // The workload denies by default.
    plane.write("default_inbound_policy: all-authenticated\nworkloads:\n  web-1:\n    default_inbound_policy: deny\n");
    let s = next(&mut w).await;
    assert_eq!(s.labels["name"], "deny");
    assert!(s.authorizations.is_empty());

    // An invalid file: counted, and nothing sent.
    plane.write(
        "workloads:\n  web-1:\n    ports:\n      8080: {protocol: grpc, rate_limit: {total: 5}}\n",
    );
    linnet_test_support::eventually(
        "the reload error counted",
        Duration::from_secs(5),
        || async {
            plane
                .metrics()
                .contains("control_config_reloads_total{result=\"error\"} 1")
                .then_some(())
        },
    )
    .await;

    // The port gets a server with a route.
    plane.write(&format!(
        "workloads:\n  web-1:\n    ports:\n      8080:\n        protocol: http2\n        authorizations: [{{identities: [{WEB_ID}]}}]\n        routes: [{{name: admin, matches: [{{path_prefix: /admin}}], authorizations: []}}]\n"
    ));
    let s = next(&mut w).await;
    assert_eq!(s.labels["name"], "web-1:8080");
    let Some(Kind::Http2(h)) = s.protocol.unwrap().kind else {
        panic!("not http2")
    };
    assert_eq!(h.routes.len(), 1);
    assert!(h.routes[0].authorizations.is_empty());
}

#[tokio::test]
async fn outbound_policies() {
    use linkerd2_proxy_api::outbound::{
        TrafficSpec, backend, outbound_policies_client::OutboundPoliciesClient,
        proxy_protocol::Kind, traffic_spec::Target,
    };
    let yaml = format!(
        "services:\n  {WEB}:\n    addresses: [\"10.96.0.1:80\"]\n    endpoints: [{{addr: \"10.0.0.1:8080\"}}]\n    policy:\n      protocol: http1\n      failure_accrual: {{consecutive_failures: 5, min_backoff: 2s}}\n      routes:\n        - name: split\n          matches: [{{path_prefix: /api, method: POST, headers: {{x-user: alice}}}}]\n          backends: [{{service: \"{WEB}\", weight: 3}}, {{service: \"canary.test.svc.cluster.local:80\", weight: 1}}]\n          timeout: 4s\n          retry: {{limit: 2, statuses: [\"502-504\"]}}\n  canary.test.svc.cluster.local:80: {{}}\n"
    );
    let plane = Plane::start(&yaml).await;
    let mut client = OutboundPoliciesClient::connect(plane.url()).await.unwrap();
    let spec = |target| TrafficSpec {
        source_workload: "client".into(),
        target: Some(target),
    };
    let by_name = spec(Target::Authority(WEB.into()));
    let by_addr = spec(Target::Addr(
        "10.96.0.1:80".parse::<SocketAddr>().unwrap().into(),
    ));
    for s in [by_name.clone(), by_addr] {
        let p = client.get(s).await.unwrap().into_inner();
        let Some(Kind::Http1(h1)) = p.protocol.unwrap().kind else {
            panic!()
        };
        let fa = h1.failure_accrual.unwrap();
        let Some(linkerd2_proxy_api::outbound::failure_accrual::Kind::ConsecutiveFailures(cf)) =
            fa.kind
        else {
            panic!()
        };
        assert_eq!(cf.max_failures, 5);
        assert_eq!(cf.backoff.unwrap().min_backoff.unwrap().seconds, 2);
        let rule = &h1.routes[0].rules[0];
        let m = &rule.matches[0];
        assert_eq!(m.headers[0].name, "x-user");
        assert!(m.method.is_some());
        assert_eq!(rule.timeouts.unwrap().request.unwrap().seconds, 4);
        let retry = rule.retry.clone().unwrap();
        assert_eq!(retry.max_retries, 2);
        assert_eq!(retry.conditions.unwrap().status_ranges[0].start, 502);
        let Some(linkerd2_proxy_api::outbound::http_route::distribution::Kind::RandomAvailable(ra)) =
            rule.backends.clone().unwrap().kind
        else {
            panic!()
        };
        let weights: Vec<(String, u32)> = ra
            .backends
            .iter()
            .map(|b| {
                let be = b.backend.clone().unwrap().backend.unwrap();
                let Some(backend::Kind::Balancer(p2c)) = be.kind else {
                    panic!()
                };
                let Some(backend::endpoint_discovery::Kind::Dst(d)) = p2c.discovery.unwrap().kind
                else {
                    panic!()
                };
                (d.path, b.weight)
            })
            .collect();
        assert_eq!(
            weights,
            [
                (WEB.to_string(), 3),
                ("canary.test.svc.cluster.local:80".to_string(), 1)
            ]
        );
    }
    // An address outside the mesh is forwarded as it is.
    let outside = spec(Target::Addr(
        "192.0.2.7:443".parse::<SocketAddr>().unwrap().into(),
    ));
    let p = client.get(outside).await.unwrap().into_inner();
    let Some(Kind::Detect(d)) = p.protocol.unwrap().kind else {
        panic!()
    };
    let be = d.opaque.unwrap().routes[0].rules[0]
        .backends
        .clone()
        .unwrap();
    assert!(format!("{be:?}").contains("Forward"), "{be:?}");
    // An unknown name is not found; nonsense is refused.
    let e = client
        .get(spec(Target::Authority(
            "nope.test.svc.cluster.local:80".into(),
        )))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = client
        .get(TrafficSpec {
            source_workload: String::new(),
            target: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Watch: the policy follows the file.
    let mut w = client.watch(by_name).await.unwrap().into_inner();
    w.message().await.unwrap().unwrap();
    plane.write(&format!(
        "services:\n  {WEB}:\n    policy: {{protocol: opaque}}\n"
    ));
    let p = tokio::time::timeout(Duration::from_secs(5), w.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(p.protocol.unwrap().kind, Some(Kind::Opaque(_))));
}

/// Everything the mesh file can say of a service's outbound policy reaches
/// a client of `OutboundPolicies.Get`.
#[tokio::test]
async fn outbound_policy_fields() {
    use linkerd2_proxy_api::{
        http_route::{header_match, path_match, path_modifier},
        meta::metadata,
        opaque_route::Forbidden,
        outbound::{
            OutboundPolicy, TrafficSpec, backend, failure_accrual,
            grpc_route::filter::Kind as GrpcFilter, http_route::filter::Kind as HttpFilter,
            outbound_policies_client::OutboundPoliciesClient, proxy_protocol::Kind,
            traffic_spec::Target,
        },
        tls_route::sni_match,
    };
    let yaml = format!(
        r#"services:
  {WEB}:
    labels: {{namespace: shop}}
    policy:
      protocol: http2
      failure_accrual:
        success_rate: {{threshold: 0.9, decay: 20s, min_requests: 7, max_consecutive_failures: 4}}
        min_ready_endpoints: 2
      routes:
        - name: api
          matches: [{{path_regex: "^/api/", method: GET, header_regex: {{x-user: "^a"}}, query_params: {{v: "2"}}}}]
          timeouts: {{request: 5s, response: 2s, idle: 30s}}
          allow_l5d_request_headers: true
          retry: {{limit: 2, statuses: ["5xx"], timeout: 1s, max_request_bytes: 2048, backoff: {{min: 10ms, max: 1s, jitter_ratio: 0.2, respect_retry_after: true}}}}
          filters:
            request_headers: {{set: {{x-mesh: linnet}}, remove: [x-debug]}}
            fail: {{status: 503, message: chaos, ratio: "1/10"}}
          backends:
            - {{service: "canary.test.svc.cluster.local:80", weight: 3, load: {{default_rtt: 50ms, penalty: {{penalty: 2s, max_retry_after: 20s, decay: 15s}}}}, queue: {{capacity: 10, failfast_timeout: 1s}}}}
            - {{address: "192.0.2.10:8443", identity: {WEB_ID}, protocol: h2}}
        - name: moved
          matches: [{{path_prefix: /old}}]
          filters: {{redirect: {{path_prefix: /new, status: 308}}}}
  canary.test.svc.cluster.local:80: {{}}
  rpc.test.svc.cluster.local:9000:
    policy:
      protocol: grpc
      routes:
        - name: items
          matches: [{{service: shop.Items, method: Get}}]
          retry: {{limit: 1, grpc: [unavailable, deadline_exceeded], backoff: {{min: 5ms}}}}
          filters: {{fail: {{grpc_code: unavailable, ratio: 0.5}}}}
  tls.test.svc.cluster.local:443:
    policy:
      protocol: tls
      tls_routes:
        - {{name: internal, snis: ["*.internal.example.com"]}}
        - {{name: rest, forbidden: true}}
  db.test.svc.cluster.local:5432:
    policy:
      protocol: opaque
      opaque_routes: [{{name: closed, forbidden: true}}]
"#
    );
    let plane = Plane::start(&yaml).await;
    let mut client = OutboundPoliciesClient::connect(plane.url()).await.unwrap();
    let mut get = async |authority: &str| -> OutboundPolicy {
        let spec = TrafficSpec {
            source_workload: "client".into(),
            target: Some(Target::Authority(authority.into())),
        };
        client.get(spec).await.unwrap().into_inner()
    };
    let resource = |m: Option<linkerd2_proxy_api::meta::Metadata>| match m.unwrap().kind {
        Some(metadata::Kind::Resource(r)) => (r.group, r.kind, r.name, r.namespace),
        other => panic!("{other:?}"),
    };
    let secs = |d: Option<prost_types::Duration>| d.unwrap().seconds;
    let millis = |d: Option<prost_types::Duration>| {
        let d = d.unwrap();
        d.seconds * 1000 + i64::from(d.nanos) / 1_000_000
    };

    // HTTP: matches, filters, timeouts, retries, backends, accrual.
    let Some(Kind::Http2(h2)) = get(WEB).await.protocol.unwrap().kind else {
        panic!()
    };
    let api = &h2.routes[0];
    assert_eq!(
        resource(api.metadata.clone()),
        (
            "gateway.networking.k8s.io".into(),
            "HTTPRoute".into(),
            "api".into(),
            "shop".into()
        )
    );
    let rule = &api.rules[0];
    let m = &rule.matches[0];
    assert_eq!(
        m.path.clone().unwrap().kind,
        Some(path_match::Kind::Regex("^/api/".into()))
    );
    assert!(m.method.is_some());
    assert_eq!(
        m.headers[0].value,
        Some(header_match::Value::Regex("^a".into()))
    );
    assert_eq!(m.query_params[0].name, "v");
    let kinds: Vec<_> = rule
        .filters
        .iter()
        .map(|f| f.kind.clone().unwrap())
        .collect();
    let [
        HttpFilter::RequestHeaderModifier(rh),
        HttpFilter::FailureInjector(fail),
    ] = &kinds[..]
    else {
        panic!("{kinds:?}")
    };
    assert_eq!(rh.set.clone().unwrap().headers[0].name, "x-mesh");
    assert_eq!(rh.remove, ["x-debug"]);
    assert_eq!((fail.status, fail.message.as_str()), (503, "chaos"));
    let ratio = fail.ratio.unwrap();
    assert_eq!((ratio.numerator, ratio.denominator), (1, 10));
    let t = rule.timeouts.unwrap();
    assert_eq!(
        (secs(t.request), secs(t.response), secs(t.idle)),
        (5, 2, 30)
    );
    assert!(rule.allow_l5d_request_headers);
    let retry = rule.retry.clone().unwrap();
    assert_eq!((retry.max_retries, retry.max_request_bytes), (2, 2048));
    assert_eq!(secs(retry.timeout), 1);
    let b = retry.backoff.unwrap();
    assert_eq!((millis(b.min_backoff), millis(b.max_backoff)), (10, 1000));
    assert!(b.respect_retry_after_hint && (b.jitter_ratio - 0.2).abs() < 1e-6);
    let Some(linkerd2_proxy_api::outbound::http_route::distribution::Kind::RandomAvailable(ra)) =
        rule.backends.clone().unwrap().kind
    else {
        panic!()
    };
    let canary = ra.backends[0].backend.clone().unwrap().backend.unwrap();
    assert_eq!(ra.backends[0].weight, 3);
    let q = canary.queue.unwrap();
    assert_eq!((q.capacity, secs(q.failfast_timeout)), (10, 1));
    let Some(backend::Kind::Balancer(p2c)) = canary.kind else {
        panic!()
    };
    let Some(backend::balance_p2c::Load::PenaltyPeakEwma(load)) = p2c.load else {
        panic!("{:?}", p2c.load)
    };
    assert_eq!(millis(load.default_rtt), 50);
    assert_eq!(
        (
            secs(load.penalty),
            secs(load.max_retry_after),
            secs(load.penalty_decay)
        ),
        (2, 20, 15)
    );
    let fwd = ra.backends[1].backend.clone().unwrap().backend.unwrap();
    // Linkerd's queue where the file gives none.
    assert_eq!(fwd.queue.unwrap().capacity, 100);
    let Some(backend::Kind::Forward(addr)) = fwd.kind else {
        panic!()
    };
    assert_eq!(
        SocketAddr::try_from(addr.addr.unwrap()).unwrap(),
        "192.0.2.10:8443".parse::<SocketAddr>().unwrap()
    );
    assert!(addr.tls_identity.is_some() && addr.protocol_hint.is_some());
    let redirect = &h2.routes[1].rules[0].filters[0];
    let Some(HttpFilter::Redirect(r)) = &redirect.kind else {
        panic!("{redirect:?}")
    };
    assert_eq!(r.status, 308);
    assert_eq!(
        r.path.clone().unwrap().replace,
        Some(path_modifier::Replace::Prefix("/new".into()))
    );
    let fa = h2.failure_accrual.unwrap();
    let Some(failure_accrual::Kind::Unified(u)) = fa.kind else {
        panic!("{fa:?}")
    };
    assert_eq!((u.success_rate_threshold, secs(u.decay)), (0.9, 20));
    assert_eq!((u.min_requests, u.max_consecutive_failures), (7, 4));
    assert_eq!(fa.ejection.unwrap().min_ready_endpoints, 2);

    // gRPC: RPC matches, retry conditions, an injected gRPC failure.
    let Some(Kind::Grpc(grpc)) = get("rpc.test.svc.cluster.local:9000")
        .await
        .protocol
        .unwrap()
        .kind
    else {
        panic!()
    };
    let route = &grpc.routes[0];
    let (_, kind, name, namespace) = resource(route.metadata.clone());
    assert_eq!((kind.as_str(), name.as_str()), ("GRPCRoute", "items"));
    assert_eq!(namespace, "default");
    let rule = &route.rules[0];
    let rpc = rule.matches[0].rpc.clone().unwrap();
    assert_eq!(
        (rpc.service.as_str(), rpc.method.as_str()),
        ("shop.Items", "Get")
    );
    let retry = rule.retry.unwrap();
    let c = retry.conditions.unwrap();
    assert!(c.unavailable && c.deadine_exceeded && !c.cancelled && !c.internal);
    assert_eq!(millis(retry.backoff.unwrap().min_backoff), 5);
    let Some(GrpcFilter::FailureInjector(fail)) = rule.filters[0].kind.clone() else {
        panic!("{:?}", rule.filters)
    };
    assert_eq!(fail.code, 14);
    assert_eq!(fail.ratio.unwrap().denominator, 2);

    // TLS: an SNI suffix by reversed labels; a forbidden route.
    let Some(Kind::Tls(tls)) = get("tls.test.svc.cluster.local:443")
        .await
        .protocol
        .unwrap()
        .kind
    else {
        panic!()
    };
    assert_eq!(resource(tls.routes[0].metadata.clone()).1, "TLSRoute");
    let Some(sni_match::Match::Suffix(s)) = tls.routes[0].snis[0].r#match.clone() else {
        panic!("{:?}", tls.routes[0].snis)
    };
    assert_eq!(s.reverse_labels, ["com", "example", "internal"]);
    assert!(tls.routes[0].rules[0].filters.is_empty());
    assert_eq!(
        tls.routes[1].rules[0].filters[0].kind,
        Some(linkerd2_proxy_api::outbound::tls_route::filter::Kind::Forbidden(Forbidden {}))
    );

    // Opaque: a forbidden route.
    let Some(Kind::Opaque(opaque)) = get("db.test.svc.cluster.local:5432")
        .await
        .protocol
        .unwrap()
        .kind
    else {
        panic!()
    };
    let route = &opaque.routes[0];
    assert_eq!(resource(route.metadata.clone()).1, "TCPRoute");
    assert_eq!(
        route.rules[0].filters[0].kind,
        Some(linkerd2_proxy_api::outbound::opaque_route::filter::Kind::Forbidden(Forbidden {}))
    );
}
