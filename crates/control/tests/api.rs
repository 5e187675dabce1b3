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
