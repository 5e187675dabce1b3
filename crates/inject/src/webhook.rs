//! `linnet inject --serve`: the injection as a Kubernetes mutating
//! admission webhook over HTTPS.
//!
//! The API server sends each pod it is about to create as an
//! `admission.k8s.io/v1` `AdmissionReview` (`POST /inject`, or `/`); the
//! answer allows it, with a JSON patch (RFC 6902) that turns it into what
//! [`crate::inject`] makes of it when it is to be injected ([`answer`]:
//! the logic, in `review.rs`; [`patch`]: the diff). Which pods are sent
//! is the MutatingWebhookConfiguration's business: its namespaceSelector
//! (or objectSelector) does a namespace's opt-in, and with
//! [`WebhookOptions::inject_all`] every pod sent is injected; without it,
//! only pods annotated `linnet.io/inject: enabled` (or
//! `linkerd.io/inject`), themselves or through their namespace.
//!
//! A pod's namespace lends it its annotations (`linkerd.io/inject:
//! enabled` and the `config.*` settings; the pod's own win) when
//! [`WebhookOptions::namespaces`] can read it from the API server
//! ([`NamespaceLookup`], in `namespaces.rs`); a namespace that cannot be
//! read costs a warning, not the pod.
//!
//! A webhook that fails must not stop a cluster from creating pods: a
//! review that cannot be used or a pod that cannot be injected is allowed
//! as it is, with a warning the client sees (`kubectl` prints it), unless
//! [`WebhookOptions::fail_closed`]. Only a body that is no review at all
//! gets an HTTP error (400), and one too large 413.
//!
//! What it did is counted in [`Metrics`] (`metrics.rs`), which the
//! command line serves on its admin port.

mod metrics;
mod namespaces;
pub mod patch;
mod review;

pub use metrics::Metrics;
pub use namespaces::{ApiServer, LookupOptions, NamespaceLookup};
pub use review::{NotAReview, answer};

use crate::Options;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::net::TcpListener;
use tokio_rustls::{TlsAcceptor, rustls};

/// How the webhook injects and when it serves what.
#[derive(Debug, Clone)]
pub struct WebhookOptions {
    /// What is injected: the same settings as `linnet inject`.
    pub inject: Options,
    /// Inject every pod sent, not only those annotated `enabled`: the
    /// webhook configuration's namespaceSelector then chooses the pods.
    pub inject_all: bool,
    /// Deny a pod the webhook cannot serve instead of allowing it
    /// uninjected. Off by default: a broken webhook then costs the mesh a
    /// pod, not the cluster its deployments.
    pub fail_closed: bool,
    /// The largest request body read, in bytes; beyond it 413. The API
    /// server's own limit on an object is about 3 MiB.
    pub max_body: usize,
    /// How long a client may take to finish the TLS handshake.
    pub handshake_timeout: Duration,
    /// How long a client may take to send a request's headers (HTTP/1).
    pub header_timeout: Duration,
    /// How long a request's body may take to arrive.
    pub body_timeout: Duration,
    /// A connection with no request for this long is closed; also bounds
    /// a whole connection's life (HTTP/2 pings it meanwhile).
    pub idle_timeout: Duration,
    /// The most connections served at once (TLS handshakes included);
    /// beyond it a new connection is closed as soon as it is accepted.
    /// The API server needs a handful; the bound keeps a flood of idle
    /// clients from holding a task and a socket each until the process
    /// runs out of file descriptors.
    pub max_connections: usize,
    /// Reads each pod's namespace for the annotations it lends its pods;
    /// `None` decides on the pod's own annotations alone.
    pub namespaces: Option<NamespaceLookup>,
    /// Where reviews, refusals and look-ups are counted.
    pub metrics: Metrics,
}

impl WebhookOptions {
    /// The default bounds, injecting with `inject`.
    pub fn new(inject: Options) -> Self {
        WebhookOptions {
            inject,
            inject_all: false,
            fail_closed: false,
            max_body: 4 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(90),
            max_connections: 1000,
            namespaces: None,
            metrics: Metrics::default(),
        }
    }
}

/// The certificate or key of the webhook cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("webhook TLS: {0}")]
pub struct TlsError(String);

/// A TLS server configuration from a PEM certificate chain and a PEM
/// private key, offering HTTP/2 and HTTP/1.1 (the API server speaks
/// either).
pub fn tls_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("certificate: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError(
            "certificate: no CERTIFICATE in the PEM".to_string(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError(format!("key: {e}")))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves the webhook on `listener` over TLS with `tls` until `shutdown`
/// resolves; connections still open are then cut. Beyond
/// [`WebhookOptions::max_connections`] open at once, a new connection is
/// closed at once, logged and counted.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    options: WebhookOptions,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let options = Arc::new(options);
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        while conns.try_join_next().is_some() {}
        if conns.len() >= options.max_connections {
            // Dropped before any TLS work: the client sees the close.
            drop(stream);
            let refused = options.metrics.refused();
            tracing::warn!(
                %peer,
                limit = options.max_connections,
                refused,
                "too many webhook connections; closed a new one"
            );
            continue;
        }
        let (acceptor, options) = (acceptor.clone(), options.clone());
        let open = options.metrics.connection();
        conns.spawn(async move {
            let handshake =
                tokio::time::timeout(options.handshake_timeout, acceptor.accept(stream));
            match handshake.await {
                Ok(Ok(tls)) => connection(tls, options, peer).await,
                Ok(Err(error)) => {
                    options.metrics.handshake_failed("error");
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                }
                Err(_) => {
                    options.metrics.handshake_failed("timeout");
                    tracing::debug!(%peer, "TLS handshake timed out");
                }
            }
            drop(open);
        });
    }
    conns.shutdown().await;
}

/// Serves one connection until it ends or has lived for the idle timeout
/// (then it is closed gracefully: a request in flight is answered).
async fn connection<I>(io: I, options: Arc<WebhookOptions>, peer: SocketAddr)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc_options = options.clone();
    let svc = hyper::service::service_fn(move |req| {
        let options = svc_options.clone();
        async move { Ok::<_, Infallible>(handle(req, &options).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(options.idle_timeout / 3)
        .max_concurrent_streams(100);
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(error) = r {
                tracing::debug!(%peer, %error, "webhook connection ended");
            }
            return;
        }
        _ = tokio::time::sleep(options.idle_timeout) => {}
    }
    conn.as_mut().graceful_shutdown();
    if tokio::time::timeout(options.body_timeout, conn)
        .await
        .is_err()
    {
        tracing::debug!(%peer, "a connection did not close in time; dropping it");
    }
}

/// Answers one request.
async fn handle(req: Request<Incoming>, options: &WebhookOptions) -> Response<Full<Bytes>> {
    let metrics = &options.metrics;
    if !matches!(req.uri().path(), "/inject" | "/") {
        metrics.malformed("not_found");
        return text(StatusCode::NOT_FOUND, "not found: POST /inject");
    }
    if req.method() != Method::POST {
        metrics.malformed("method_not_allowed");
        return text(StatusCode::METHOD_NOT_ALLOWED, "POST an AdmissionReview");
    }
    let start = Instant::now();
    let body = Limited::new(req.into_body(), options.max_body).collect();
    let body = match tokio::time::timeout(options.body_timeout, body).await {
        Ok(Ok(body)) => body.to_bytes(),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
            metrics.malformed("too_large");
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the body is larger than {} bytes", options.max_body),
            );
        }
        Ok(Err(error)) => {
            metrics.malformed("body_error");
            return text(
                StatusCode::BAD_REQUEST,
                &format!("reading the body: {error}"),
            );
        }
        Err(_) => {
            metrics.malformed("body_timeout");
            return text(StatusCode::REQUEST_TIMEOUT, "the body took too long");
        }
    };
    let answer = review::answer(&body, options).await;
    metrics.review_took(start.elapsed());
    match answer {
        Ok(json) => Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(json)))
            .unwrap_or_default(),
        Err(error) => {
            metrics.malformed("not_a_review");
            tracing::warn!(%error, "not an AdmissionReview");
            text(StatusCode::BAD_REQUEST, &format!("linnet inject: {error}"))
        }
    }
}

fn text(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(format!("{message}\n"))))
        .unwrap_or_default()
}
