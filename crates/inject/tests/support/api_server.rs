//! A stand-in for the Kubernetes API server: HTTPS on `127.0.0.1:0` with
//! a certificate naming the IP address (as the in-cluster one does),
//! answering `GET /api/v1/namespaces/<name>` as each test sets, and
//! recording what it was asked with which token.

use super::webhook::TestCa;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use linnet_inject::webhook::ApiServer;
use serde_json::{Value, json};
use std::{
    collections::HashMap,
    convert::Infallible,
    path::PathBuf,
    sync::{Arc, Mutex},
};
use tokio_rustls::TlsAcceptor;

/// How the fake answers for a namespace.
#[derive(Clone, Debug)]
pub enum Answer {
    /// The Namespace, with these annotations.
    Namespace(Value),
    /// This status, with a Status body.
    Status(u16),
    /// Never: the request is read and left waiting.
    Hang,
    /// 200 with a body that is not JSON.
    Garbage,
    /// 200 with a Namespace whose annotations take `n` bytes.
    Huge(usize),
}

/// What the fake was asked: the path and the `Authorization` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Asked {
    pub path: String,
    pub authorization: Option<String>,
}

#[derive(Default)]
struct State {
    answers: HashMap<String, Answer>,
    asked: Vec<Asked>,
}

/// The fake API server and the credentials a client needs for it.
pub struct FakeApiServer {
    /// How to reach it: `127.0.0.1`, its port, its CA and a token.
    pub api: ApiServer,
    state: Arc<Mutex<State>>,
    dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// The token the fake's clients are given.
pub const TOKEN: &str = "test-service-account-token";

impl FakeApiServer {
    /// Serves with a certificate from a new CA, whose PEM (and the token)
    /// are written where [`FakeApiServer::api`] says.
    pub async fn start() -> Self {
        let ca = TestCa::new();
        Self::start_with(&ca, &ca).await
    }

    /// Serves with a certificate from `serving`, telling clients to trust
    /// `trusted` (another CA: the handshake must fail).
    pub async fn start_with(serving: &TestCa, trusted: &TestCa) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.crt");
        let token_file = dir.path().join("token");
        std::fs::write(&ca_file, &trusted.pem).unwrap();
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        let mut tls = Arc::unwrap_or_clone(serving.server(&["127.0.0.1"]));
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(tls));

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let serving_state = state.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    accepted = listener.accept() => accepted.unwrap(),
                    _ = &mut stopped => return,
                };
                let (acceptor, state) = (acceptor.clone(), serving_state.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(&state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        FakeApiServer {
            api: ApiServer {
                host: "127.0.0.1".to_string(),
                port,
                ca_file,
                token_file,
            },
            state,
            dir,
            _stop: stop,
        }
    }

    /// Answers for namespace `name` from now on.
    pub fn set(&self, name: &str, answer: Answer) {
        self.state
            .lock()
            .unwrap()
            .answers
            .insert(name.to_string(), answer);
    }

    /// Everything asked so far, in order.
    pub fn asked(&self) -> Vec<Asked> {
        self.state.lock().unwrap().asked.clone()
    }

    /// How many times namespace `name` was asked for.
    pub fn count(&self, name: &str) -> usize {
        let path = format!("/api/v1/namespaces/{name}");
        self.asked().iter().filter(|a| a.path == path).count()
    }

    /// Replaces the token clients read (the kubelet rotates it).
    pub fn rotate_token(&self, token: &str) {
        std::fs::write(self.dir.path().join("token"), token).unwrap();
    }

    /// The directory holding the CA and the token.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

async fn answer(state: &Mutex<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let authorization = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let found = {
        let mut state = state.lock().unwrap();
        state.asked.push(Asked {
            path: path.clone(),
            authorization,
        });
        path.strip_prefix("/api/v1/namespaces/")
            .and_then(|name| Some((name.to_string(), state.answers.get(name)?.clone())))
    };
    let json = |status: u16, body: Value| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    };
    let namespace = |name: &str, annotations: Value| {
        json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "uid": "5e0c4f1e", "annotations": annotations},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        })
    };
    match found {
        None => json(
            404,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
        ),
        Some((name, Answer::Namespace(annotations))) => json(200, namespace(&name, annotations)),
        Some((_, Answer::Status(code))) => json(
            code,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "refused by the test", "code": code}),
        ),
        Some((_, Answer::Hang)) => std::future::pending().await,
        Some((_, Answer::Garbage)) => Response::builder()
            .status(StatusCode::OK)
            .body(Full::new(Bytes::from_static(b"<html>not json</html>")))
            .unwrap(),
        Some((name, Answer::Huge(n))) => json(
            200,
            namespace(
                &name,
                json!({"config.linkerd.io/proxy-log-level": "x".repeat(n)}),
            ),
        ),
    }
}
