//! `Identity.Certify` with Kubernetes `TokenReview`s, against a fake API
//! server on loopback (HTTPS, its own CA) that answers reviews from a
//! table and records the bearer token it was sent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use http_body_util::BodyExt;
use linkerd2_proxy_api::identity::{CertifyRequest, identity_client::IdentityClient};
use linnet_control::{Ca, Control, Mesh, Metrics, Store};
use linnet_tls::rustls;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};
use tonic::Code;

const WEB_ID: &str = "web.demo.serviceaccount.identity.linkerd.cluster.local";
const STATIC_ID: &str = "db.demo.serviceaccount.identity.linkerd.cluster.local";

/// What the fake API server answers for a token.
#[derive(Clone)]
enum Answer {
    /// A review whose status authenticates (or not) this user.
    User(bool, &'static str),
    /// This HTTP status, no review.
    Code(u16),
    /// Nothing, ever.
    Hang,
}

/// The fake API server.
struct Api {
    url: String,
    ca_pem: String,
    /// The `Authorization` header of every request, in order.
    bearers: Arc<Mutex<Vec<String>>>,
}

async fn fake_api(table: HashMap<&'static str, Answer>) -> Api {
    let bearers = Arc::new(Mutex::new(Vec::new()));
    let seen = bearers.clone();
    let table = Arc::new(table);
    let api = support::https_server(move |req| answer(req, table.clone(), seen.clone())).await;
    Api {
        url: api.url,
        ca_pem: api.ca_pem,
        bearers,
    }
}

async fn answer(
    req: http::Request<hyper::body::Incoming>,
    table: Arc<HashMap<&'static str, Answer>>,
    seen: Arc<Mutex<Vec<String>>>,
) -> http::Response<support::Body> {
    assert_eq!(req.method(), http::Method::POST);
    assert_eq!(
        req.uri().path(),
        "/apis/authentication.k8s.io/v1/tokenreviews"
    );
    let bearer = req.headers()[http::header::AUTHORIZATION]
        .to_str()
        .unwrap()
        .to_string();
    seen.lock().unwrap().push(bearer);
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let review: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(review["kind"], "TokenReview");
    assert_eq!(review["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(
        review["spec"]["audiences"],
        serde_json::json!(["identity.l5d.io"])
    );
    let token = review["spec"]["token"].as_str().unwrap();
    let rsp = |code: u16, body: serde_json::Value| support::full(code, body.to_string());
    match table.get(token).cloned() {
        None => rsp(
            201,
            serde_json::json!({"status": {"authenticated": false, "error": "unknown token"}}),
        ),
        Some(Answer::User(authenticated, username)) => rsp(
            201,
            serde_json::json!({
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "status": {
                    "authenticated": authenticated,
                    "user": {"username": username, "uid": "1", "groups": ["system:serviceaccounts"]},
                    "audiences": ["identity.l5d.io"],
                },
            }),
        ),
        Some(Answer::Code(code)) => rsp(code, serde_json::json!({"kind": "Status"})),
        Some(Answer::Hang) => std::future::pending().await,
    }
}

struct Plane {
    url: String,
    registry: prometheus_client::registry::Registry,
    _dir: tempfile::TempDir,
}

async fn plane(api: &Api) -> Plane {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.crt"), &api.ca_pem).unwrap();
    std::fs::write(dir.path().join("sa-token"), "control-plane-token\n").unwrap();
    let yaml = format!(
        "identity:\n  tokens:\n    {STATIC_ID}: s3cret\n  kubernetes:\n    api_server: {}\n    ca_file: ca.crt\n    token_file: sa-token\n    timeout: 500ms\n",
        api.url
    );
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mesh = Mesh::load(&path).unwrap();
    let ca = Arc::new(Ca::load_or_generate(&mesh.identity).unwrap());
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::register(&mut registry);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let control = Control {
        store: Store::new(mesh),
        metrics,
        ca,
    };
    tokio::spawn(linnet_control::serve(
        listener,
        control,
        std::future::pending(),
    ));
    Plane {
        url,
        registry,
        _dir: dir,
    }
}

fn certify(identity: &str, token: &str) -> CertifyRequest {
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::new(vec![identity.to_string()])
        .unwrap()
        .serialize_request(&key)
        .unwrap();
    CertifyRequest {
        identity: identity.into(),
        token: token.as_bytes().to_vec(),
        certificate_signing_request: csr.der().to_vec(),
    }
}

#[tokio::test]
async fn token_reviews_admit_only_the_named_service_account() {
    let api = fake_api(HashMap::from([
        (
            "web-jwt",
            Answer::User(true, "system:serviceaccount:demo:web"),
        ),
        (
            "other-sa",
            Answer::User(true, "system:serviceaccount:demo:db"),
        ),
        (
            "other-ns",
            Answer::User(true, "system:serviceaccount:prod:web"),
        ),
        (
            "not-authn",
            Answer::User(false, "system:serviceaccount:demo:web"),
        ),
        ("boom", Answer::Code(500)),
        ("slow", Answer::Hang),
    ]))
    .await;
    let plane = plane(&api).await;
    let mut client = IdentityClient::connect(plane.url.clone()).await.unwrap();

    let rsp = client
        .certify(certify(WEB_ID, "web-jwt\n"))
        .await
        .unwrap()
        .into_inner();
    assert!(!rsp.leaf_certificate.is_empty());
    let der = rustls::pki_types::CertificateDer::from(rsp.leaf_certificate);
    webpki::EndEntityCert::try_from(&der)
        .unwrap()
        .verify_is_valid_for_subject_name(&rustls::pki_types::ServerName::try_from(WEB_ID).unwrap())
        .unwrap();
    // What the API server saw: the control plane's own token.
    assert_eq!(*api.bearers.lock().unwrap(), ["Bearer control-plane-token"]);

    for (token, code) in [
        ("other-sa", Code::PermissionDenied),
        ("other-ns", Code::PermissionDenied),
        ("not-authn", Code::Unauthenticated),
        ("unknown", Code::Unauthenticated),
        ("boom", Code::Unavailable),
        ("slow", Code::Unavailable),
    ] {
        let err = client.certify(certify(WEB_ID, token)).await.unwrap_err();
        assert_eq!(err.code(), code, "{token}: {}", err.message());
    }
    // Not a service account's identity: not reviewed.
    let err = client
        .certify(certify("web.demo.svc.cluster.local", "web-jwt"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // A static token still works, and is not reviewed.
    client.certify(certify(STATIC_ID, "s3cret")).await.unwrap();
    assert_eq!(
        client
            .certify(certify(STATIC_ID, "web-jwt"))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    assert_eq!(api.bearers.lock().unwrap().len(), 7);

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &plane.registry).unwrap();
    for line in [
        "control_certify_total{result=\"issued\"} 2",
        "control_certify_total{result=\"token_review_denied\"} 4",
        "control_certify_total{result=\"token_review_error\"} 2",
        "control_certify_total{result=\"unknown_identity\"} 1",
        "control_certify_total{result=\"bad_token\"} 1",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
}
