//! Kubernetes `TokenReview`s: how `Identity.Certify` admits a workload in
//! a cluster. Its proxy presents its projected service-account token; the
//! API server says whose it is, and the workload is admitted only for
//! that service account's identity,
//! `<sa>.<ns>.serviceaccount.identity.<control-ns>.<trust-domain>`.
//!
//! One review is one POST over a fresh connection
//! ([`crate::kubernetes::client`], shared with endpoint discovery):
//! certify calls are rare (one per proxy per certificate lifetime), so
//! there is no pool to keep healthy.

use crate::{config::Kubernetes, kubernetes::client};
use serde::{Deserialize, Serialize};

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
    let status = tokio::time::timeout(k.api.timeout, post(k, token))
        .await
        .map_err(|_| {
            Refused::Error(format!(
                "the Kubernetes API server did not answer the token review within {:?}",
                k.api.timeout
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
    let body = serde_json::to_vec(&TokenReview {
        api_version: "authentication.k8s.io/v1",
        kind: "TokenReview",
        spec: TokenReviewSpec {
            token,
            audiences: [k.audience.as_str()],
        },
    })
    .map_err(|e| Refused::Error(client::fail("cannot encode the review", e)))?;
    let error = |e: client::ApiError| match e {
        client::ApiError::Status { code, text } => Refused::Error(format!(
            "the Kubernetes API server answered the token review with {code}: {text}"
        )),
        e => Refused::Error(e.to_string()),
    };
    let mut conn = client::connect(&k.api).await.map_err(error)?;
    let rsp = conn
        .send(
            http::Method::POST,
            "/apis/authentication.k8s.io/v1/tokenreviews",
            Some(body),
        )
        .await
        .map_err(error)?;
    let bytes = client::read(rsp, MAX_RESPONSE_BYTES, "the token review's answer")
        .await
        .map_err(error)?;
    let review: TokenReviewAnswer = serde_json::from_slice(&bytes).map_err(|e| {
        Refused::Error(client::fail(
            "the token review's answer is not a TokenReview",
            e,
        ))
    })?;
    Ok(review.status.unwrap_or_default())
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
