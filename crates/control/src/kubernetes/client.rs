//! The one way `linnet control` talks to the Kubernetes API server, for
//! `TokenReview`s and for endpoint discovery alike: HTTP/1.1 over TLS
//! 1.3/1.2 verified against the service account's CA, with its bearer
//! token, one request per connection, and answers read within a bound.
//!
//! The CA and the token are read at each connection, since both are
//! files the kubelet rotates. Each connection is its own: reviews are
//! rare, and a watch holds its connection for minutes anyway.

use crate::config::ApiServer;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use linnet_tls::{TrustAnchors, pki_types::ServerName, rustls};
use std::sync::Arc;

/// Why a request to the API server failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// The CA or token file could not be used, or TLS could not be set up.
    #[error("{0}")]
    Setup(String),
    /// No connection (TCP, TLS or HTTP handshake).
    #[error("{0}")]
    Connect(String),
    /// The request failed or its answer broke off.
    #[error("{0}")]
    Http(String),
    /// The answer is larger than allowed.
    #[error("{what} is larger than {max} bytes")]
    TooLarge {
        /// What was read.
        what: &'static str,
        /// The bound.
        max: usize,
    },
    /// The API server answered with an error status.
    #[error("the Kubernetes API server answered {code}: {text}")]
    Status {
        /// The status.
        code: http::StatusCode,
        /// The start of its body.
        text: String,
    },
    /// The answer is not what was asked for.
    #[error("{0}")]
    Decode(String),
    /// No answer in time.
    #[error("{0}")]
    Timeout(String),
}

impl ApiError {
    /// A bounded name for metrics.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Self::Setup(_) => "setup",
            Self::Connect(_) => "connect",
            Self::Http(_) => "stream",
            Self::TooLarge { .. } => "too_large",
            Self::Status { code, .. } if *code == http::StatusCode::GONE => "gone",
            Self::Status { .. } => "status",
            Self::Decode(_) => "decode",
            Self::Timeout(_) => "timeout",
        }
    }
}

/// `what` failed because of `e`.
pub(crate) fn fail(what: impl std::fmt::Display, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// One connection to the API server, ready for a request.
pub(crate) struct Connection {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    conn: tokio::task::JoinHandle<()>,
    bearer: String,
    authority: String,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// Connects to the API server (not bounded in time here: callers bound
/// the whole request).
pub(crate) async fn connect(api: &ApiServer) -> Result<Connection, ApiError> {
    let setup = |what: String, e: &dyn std::fmt::Display| ApiError::Setup(fail(what, e));
    let ca = tokio::fs::read_to_string(&api.ca_file)
        .await
        .map_err(|e| setup(format!("cannot read {}", api.ca_file.display()), &e))?;
    let bearer = tokio::fs::read_to_string(&api.token_file)
        .await
        .map_err(|e| setup(format!("cannot read {}", api.token_file.display()), &e))?;
    let anchors =
        TrustAnchors::from_pem(&ca).map_err(|e| setup(api.ca_file.display().to_string(), &e))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| setup("TLS".into(), &e))?
        .with_root_certificates(anchors.roots())
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];

    // Validated on load: https, with a host.
    let host = api.api_server.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = api.api_server.port_u16().unwrap_or(443);
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| setup(format!("{host:?} is not a server name"), &e))?;
    let connect = |what: String, e: &dyn std::fmt::Display| ApiError::Connect(fail(what, e));
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| connect(format!("cannot connect to {host}:{port}"), &e))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| connect("TLS handshake with the Kubernetes API server".into(), &e))?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| connect("HTTP handshake with the Kubernetes API server".into(), &e))?;
    // The connection ends when the `Connection` is dropped.
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let authority = api
        .api_server
        .authority()
        .map_or_else(|| host.to_string(), |a| a.as_str().to_string());
    Ok(Connection {
        send,
        conn,
        bearer: bearer.trim().to_string(),
        authority,
    })
}

impl Connection {
    /// Sends `method` to `path` (with its query) with a JSON `body`, and
    /// returns the answer's head; its body is read by the caller.
    pub(crate) async fn send(
        &mut self,
        method: http::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<http::Response<Incoming>, ApiError> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("https://{}{path}", self.authority))
            .header(http::header::HOST, &self.authority)
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.bearer),
            );
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ApiError::Setup(fail("cannot build the request", e)))?;
        // The previous answer on this connection must have been read.
        self.send
            .ready()
            .await
            .map_err(|e| ApiError::Http(fail("the connection to the API server", e)))?;
        self.send
            .send_request(req)
            .await
            .map_err(|e| ApiError::Http(fail(format!("request to {path}"), e)))
    }
}

/// Reads a whole answer of at most `max` bytes; an error status is an
/// error, with the start of its body.
pub(crate) async fn read(
    rsp: http::Response<Incoming>,
    max: usize,
    what: &'static str,
) -> Result<Bytes, ApiError> {
    let code = rsp.status();
    let bytes = Limited::new(rsp.into_body(), max)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::TooLarge { what, max }
            } else {
                ApiError::Http(fail(format!("reading {what}"), e))
            }
        })?
        .to_bytes();
    if !code.is_success() {
        return Err(status_error(code, &bytes));
    }
    Ok(bytes)
}

/// An error status, with the start of its body.
pub(crate) fn status_error(code: http::StatusCode, body: &[u8]) -> ApiError {
    let text = String::from_utf8_lossy(&body[..body.len().min(256)]).into_owned();
    ApiError::Status { code, text }
}
