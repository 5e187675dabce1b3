//! A fake Kubernetes API server for the tests: HTTPS on loopback with a
//! certificate from its own CA (`ca_pem`, to give the control plane as
//! `ca_file`), answering each request with a handler the test writes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use http_body_util::combinators::BoxBody;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use linnet_tls::rustls;
use std::{convert::Infallible, future::Future, sync::Arc};

/// What a handler answers with.
pub(crate) type Body = BoxBody<Bytes, Infallible>;

/// A running fake API server.
pub(crate) struct FakeApi {
    /// `https://127.0.0.1:PORT`.
    pub(crate) url: String,
    /// The CA its certificate chains to (PEM).
    pub(crate) ca_pem: String,
}

/// Serves HTTP/1.1 over TLS on `127.0.0.1:0`, every request answered by
/// `handler`, until the test's runtime ends.
pub(crate) async fn https_server<F, Fut>(handler: F) -> FakeApi
where
    F: Fn(http::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = http::Response<Body>> + Send + 'static,
{
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        )
        .unwrap();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, handler) = (acceptor.clone(), handler.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req| {
                    let rsp = handler(req);
                    async move { Ok::<_, Infallible>(rsp.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    FakeApi {
        url,
        ca_pem: ca_cert.pem(),
    }
}

/// A whole answer.
pub(crate) fn full(code: u16, body: impl Into<Bytes>) -> http::Response<Body> {
    use http_body_util::BodyExt;
    http::Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(body.into()).boxed())
        .unwrap()
}
