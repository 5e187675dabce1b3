//! Kubernetes `TokenReview`s: how `Identity.Certify` admits a workload in
//! a cluster. Its proxy presents its projected service-account token; the
//! API server says whose it is, and the workload is admitted only for
//! that service account's identity,
//! `<sa>.<ns>.serviceaccount.identity.<control-ns>.<trust-domain>`.
//!
//! One review is one HTTP/1.1 POST over a fresh TLS connection: certify
//! calls are rare (one per proxy per certificate lifetime), so there is
//! no pool to keep healthy. The CA and the bearer token are read at each
//! review, since both are files the kubelet rotates.

use crate::config::Kubernetes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use linnet_tls::{TrustAnchors, pki_types::ServerName, rustls};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The largest review answer read; a real one is well under 4 KiB.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Why a token was not admitted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    /// The API server does not know the token (or it has expired).
    #[error("{0}")]
    Unauthenticated(String),
    /// The API server answered, and the answer does not admit the token
    /// for the identity.
    #[error("{0}")]
    Denied(String),
    /// No answer: the API server could not be asked, or answered
    /// something other than a review. The workload may retry.
    #[error("{0}")]
    Error(String),
}

/// The service account an identity names: `(namespace, name)`, when it
/// is `<sa>.<ns>.serviceaccount.identity.<control-ns>.<trust_domain>`.
pub(crate) fn service_account<'a>(
    identity: &'a str,
    trust_domain: &str,
) -> Option<(&'a str, &'a str)> {
    let (account, rest) = identity.split_once(".serviceaccount.identity.")?;
    // A namespace is a DNS label; a service account name may hold dots.
    let (sa, ns) = account.rsplit_once('.')?;
    let (control_ns, domain) = rest.split_once('.')?;
    let ok = !sa.is_empty()
        && !ns.is_empty()
        && !control_ns.is_empty()
        && domain.eq_ignore_ascii_case(trust_domain);
    ok.then_some((ns, sa))
}

/// Asks the API server whether `token` belongs to the service account
/// `ns`/`sa`, within the configured timeout.
pub(crate) async fn review(k: &Kubernetes, token: &str, ns: &str, sa: &str) -> Result<(), Refused> {
    let status = tokio::time::timeout(k.timeout, post(k, token))
        .await
        .map_err(|_| {
            Refused::Error(format!(
                "the Kubernetes API server did not answer the token review within {:?}",
                k.timeout
            ))
        })??;
    if !status.authenticated {
        let why = status.error.map(|e| format!(": {e}")).unwrap_or_default();
        return Err(Refused::Unauthenticated(format!(
            "the Kubernetes API server did not authenticate the token{why}"
        )));
    }
    let audiences = status.audiences.as_deref();
    if audiences.is_some_and(|auds| !auds.contains(&k.audience)) {
        return Err(Refused::Denied(format!(
            "the token is not for the audience {}",
            k.audience
        )));
    }
    let expected = format!("system:serviceaccount:{ns}:{sa}");
    let user = status.user.map(|u| u.username).unwrap_or_default();
    if user != expected {
        return Err(Refused::Denied(format!(
            "the token belongs to {user:?}, not {expected}"
        )));
    }
    Ok(())
}

/// POSTs the review and reads its status.
async fn post(k: &Kubernetes, token: &str) -> Result<TokenReviewStatus, Refused> {
    let ca = tokio::fs::read_to_string(&k.ca_file)
        .await
        .map_err(|e| fail(format!("cannot read {}", k.ca_file.display()), e))?;
    let bearer = tokio::fs::read_to_string(&k.token_file)
        .await
        .map_err(|e| fail(format!("cannot read {}", k.token_file.display()), e))?;
    let anchors = TrustAnchors::from_pem(&ca).map_err(|e| fail(k.ca_file.display(), e))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail("TLS", e))?
        .with_root_certificates(anchors.roots())
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];

    // Validated on load: https, with a host.
    let host = k.api_server.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = k.api_server.port_u16().unwrap_or(443);
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| fail(format!("{host:?} is not a server name"), e))?;
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| fail(format!("cannot connect to {host}:{port}"), e))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| fail("TLS handshake with the Kubernetes API server", e))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| fail("HTTP handshake with the Kubernetes API server", e))?;
    // The connection ends when `send` is dropped; the review's timeout
    // bounds the whole.
    let conn = tokio::spawn(conn);

    let body = serde_json::to_vec(&TokenReview {
        api_version: "authentication.k8s.io/v1",
        kind: "TokenReview",
        spec: TokenReviewSpec {
            token,
            audiences: [k.audience.as_str()],
        },
    })
    .map_err(|e| fail("cannot encode the review", e))?;
    let authority = k.api_server.authority().map_or(host, |a| a.as_str());
    let req = http::Request::post(format!(
        "https://{authority}/apis/authentication.k8s.io/v1/tokenreviews"
    ))
    .header(http::header::HOST, authority)
    .header(http::header::CONTENT_TYPE, "application/json")
    .header(http::header::ACCEPT, "application/json")
    .header(
        http::header::AUTHORIZATION,
        format!("Bearer {}", bearer.trim()),
    )
    .body(Full::new(Bytes::from(body)))
    .map_err(|e| fail("cannot build the request", e))?;
    let rsp = send
        .send_request(req)
        .await
        .map_err(|e| fail("token review request", e))?;
    let code = rsp.status();
    let bytes = Limited::new(rsp.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|e| fail("reading the token review's answer", e))?
        .to_bytes();
    drop(send);
    conn.abort();
    if !code.is_success() {
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(256)]).into_owned();
        return Err(Refused::Error(format!(
            "the Kubernetes API server answered the token review with {code}: {text}"
        )));
    }
    let review: TokenReviewAnswer = serde_json::from_slice(&bytes)
        .map_err(|e| fail("the token review's answer is not a TokenReview", e))?;
    Ok(review.status.unwrap_or_default())
}

/// A review that could not be done: `what` failed, because of `e`.
fn fail(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Refused {
    Refused::Error(format!("{what}: {e}"))
}

// === TokenReview, as much of it as is used ===

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenReview<'a> {
    api_version: &'static str,
    kind: &'static str,
    spec: TokenReviewSpec<'a>,
}

#[derive(Serialize)]
struct TokenReviewSpec<'a> {
    token: &'a str,
    audiences: [&'a str; 1],
}

#[derive(Deserialize)]
struct TokenReviewAnswer {
    status: Option<TokenReviewStatus>,
}

#[derive(Deserialize, Default)]
struct TokenReviewStatus {
    #[serde(default)]
    authenticated: bool,
    user: Option<UserInfo>,
    audiences: Option<Vec<String>>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct UserInfo {
    #[serde(default)]
    username: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_accounts() {
        let td = "cluster.local";
        assert_eq!(
            service_account("web.demo.serviceaccount.identity.linkerd.cluster.local", td),
            Some(("demo", "web"))
        );
        assert_eq!(
            service_account("a.b.demo.serviceaccount.identity.linkerd.cluster.local", td),
            Some(("demo", "a.b"))
        );
        assert_eq!(
            service_account("web.demo.serviceaccount.identity.linkerd.example.org", td),
            None
        );
        assert_eq!(service_account("web.demo.svc.cluster.local", td), None);
        assert_eq!(
            service_account("demo.serviceaccount.identity.linkerd.cluster.local", td),
            None
        );
    }
}
