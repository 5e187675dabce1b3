//! The webhook on loopback, as `linnet inject --serve` runs it: HTTPS with
//! a certificate from a fresh test CA, its metrics on an admin server;
//! and the reviews, pods and patches the tests send and check.

use super::{objects, options};
use base64::Engine as _;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use linnet_inject::{Namespaces, Object, webhook};
use linnet_test_support::metrics::Scrape;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::{Value, json};
use std::{net::SocketAddr, sync::Arc};
use tokio::sync::oneshot;
use tokio_rustls::{
    TlsConnector,
    client::TlsStream,
    rustls::{self, pki_types::ServerName},
};

/// The webhook's name in its certificate.
pub const WEBHOOK_NAME: &str = "linnet-webhook.linkerd.svc";
/// The uid of every review the tests send.
pub const UID: &str = "705ab4f5-6393-11e8-b7cc-42010a800002";

/// A certificate authority for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// Its certificate, PEM.
    pub pem: String,
    der: rustls::pki_types::CertificateDer<'static>,
}

impl TestCa {
    pub fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = p.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(p, key),
        }
    }

    /// A leaf for `names` (DNS names or IP addresses): its PEM
    /// certificate and key.
    pub fn leaf(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A TLS server config for `names`, as the webhook builds its own.
    pub fn server(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        let (cert, key) = self.leaf(names);
        webhook::tls_config(cert.as_bytes(), key.as_bytes()).unwrap()
    }

    /// A client trusting this CA only, speaking HTTP/1.1.
    pub fn client(&self) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsConnector::from(Arc::new(client))
    }
}

/// A webhook served on loopback, and its admin server.
pub struct Webhook {
    pub addr: SocketAddr,
    /// `/metrics`, `/ready`, `/live`.
    pub admin: SocketAddr,
    client: TlsConnector,
    _stop: oneshot::Sender<()>,
}

impl Webhook {
    /// The webhook with the test options (native sidecars), changed by
    /// `configure`; its metrics registered and served.
    pub async fn start(configure: impl FnOnce(&mut webhook::WebhookOptions)) -> Self {
        let ca = TestCa::new();
        let tls = ca.server(&[WEBHOOK_NAME]);
        let mut registry = linnet_metrics::registry();
        let mut options = webhook::WebhookOptions::new(options(true));
        options.metrics = webhook::Metrics::register(&mut registry);
        configure(&mut options);

        let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = admin_listener.local_addr().unwrap();
        let readiness = linnet_admin::Readiness::default();
        readiness.set(true);
        let admin_server = Arc::new(linnet_admin::Admin {
            registry: Arc::new(registry),
            config_json: Bytes::from_static(b"{}"),
            readiness,
            log_level: None,
            shutdown: Arc::new(|| {}),
        });
        tokio::spawn(linnet_admin::serve(
            admin_listener,
            admin_server,
            std::future::pending(),
        ));

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(webhook::serve(listener, tls, options, async {
            let _ = stopped.await;
        }));
        Webhook {
            addr,
            admin,
            client: ca.client(),
            _stop: stop,
        }
    }

    /// A new TLS connection to the webhook.
    pub async fn connect(&self) -> std::io::Result<TlsStream<tokio::net::TcpStream>> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        let name = ServerName::try_from(WEBHOOK_NAME).unwrap();
        self.client.connect(name, tcp).await
    }

    /// Sends `method` `path` with `body` on a new connection: the status
    /// and body of the answer.
    pub async fn request(&self, method: &str, path: &str, body: Vec<u8>) -> (StatusCode, Bytes) {
        let tls = self.connect().await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", WEBHOOK_NAME)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let rsp = sender.send_request(req).await.unwrap();
        let status = rsp.status();
        (status, rsp.into_body().collect().await.unwrap().to_bytes())
    }

    /// POSTs `body` to `path` on a new connection: the status and body.
    pub async fn post(&self, path: &str, body: Vec<u8>) -> (StatusCode, Bytes) {
        self.request("POST", path, body).await
    }

    /// Reviews `pod` (created in `namespace`): the answered `response`.
    pub async fn review(&self, pod: Value, namespace: &str) -> Value {
        let (status, body) = self
            .post(
                "/inject",
                serde_json::to_vec(&review(pod, namespace)).unwrap(),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let answer: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        answer["response"].clone()
    }

    /// The webhook's metrics, scraped from its admin server.
    pub async fn scrape(&self) -> Scrape {
        linnet_test_support::metrics::scrape(self.admin).await
    }
}

/// An AdmissionReview for the creation of `pod` in `namespace`.
pub fn review(pod: Value, namespace: &str) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": UID,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "object": pod,
        }
    })
}

/// The golden input pod (namespace `demo`) as JSON, with `annotations`.
pub fn pod(annotations: Value) -> Value {
    let Object::Pod(pod) = objects("pod").remove(0) else {
        panic!("the pod input is a Pod");
    };
    let mut pod = serde_json::to_value(pod).unwrap();
    pod["metadata"]["annotations"] = annotations;
    pod
}

/// [`pod`], in `namespace`.
pub fn pod_in(namespace: &str, annotations: Value) -> Value {
    let mut pod = pod(annotations);
    pod["metadata"]["namespace"] = json!(namespace);
    pod
}

/// What `linnet inject` makes of `pod`.
pub fn injected(pod: &Value) -> Pod {
    injected_in(pod, &Namespaces::default())
}

/// What `linnet inject` makes of `pod`, with `namespaces`' annotations.
pub fn injected_in(pod: &Value, namespaces: &Namespaces) -> Pod {
    let object = Object::from_value(yaml_serde::to_value(pod).unwrap()).unwrap();
    let (mut out, _) = linnet_inject::inject_in(vec![object], &options(true), namespaces).unwrap();
    let Some(Object::Pod(pod)) = out.pop() else {
        panic!("a Pod stays a Pod");
    };
    *pod
}

/// The decoded JSON patch of a response, which must be allowed.
pub fn patch_of(response: &Value) -> Option<Vec<Value>> {
    assert_eq!(response["uid"], UID);
    assert_eq!(response["allowed"], true, "{response}");
    let patch = response.get("patch")?.as_str().unwrap();
    assert_eq!(response["patchType"], "JSONPatch");
    let json = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .unwrap();
    Some(serde_json::from_slice(&json).unwrap())
}

/// `pod` with the response's patch applied, as a typed Pod.
pub fn patched(pod: &Value, response: &Value) -> Pod {
    let ops = patch_of(response).expect("a patch");
    let mut pod = pod.clone();
    apply(&mut pod, &ops);
    serde_json::from_value(pod).unwrap()
}

/// The response's warnings.
pub fn warnings(response: &Value) -> Vec<String> {
    response
        .get("warnings")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|w| w.as_str().unwrap().to_string())
        .collect()
}

/// Applies a JSON patch (`add`, `replace`, `remove`; RFC 6902) to `doc`.
pub fn apply(doc: &mut Value, ops: &[Value]) {
    for op in ops {
        let path = op["path"].as_str().unwrap();
        let (parent, last) = path.rsplit_once('/').unwrap();
        let last = last.replace("~1", "/").replace("~0", "~");
        let target = doc.pointer_mut(parent).unwrap_or_else(|| panic!("{path}"));
        match (op["op"].as_str().unwrap(), target) {
            ("add" | "replace", Value::Object(map)) => {
                if op["op"] == "replace" {
                    assert!(map.contains_key(&last), "replace of a missing {path}");
                }
                map.insert(last, op["value"].clone());
            }
            ("remove", Value::Object(map)) => {
                map.remove(&last).unwrap_or_else(|| panic!("remove {path}"));
            }
            ("replace", Value::Array(items)) => {
                items[last.parse::<usize>().unwrap()] = op["value"].clone();
            }
            (op, _) => panic!("unexpected {op} at {path}"),
        }
    }
}
