//! Answering for a request the proxy could not complete.
//!
//! The one place where errors become responses, at the server edge. The
//! response says what failed in an `l5d-proxy-error` header (Linkerd's
//! name); a gRPC request gets HTTP 200 with `grpc-status` and
//! `grpc-message` instead, as gRPC clients expect.

use crate::BoxBody;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use linnet_transport::ConnectError;
use std::error::Error;

/// The header that carries the proxy's reason on responses it made up.
pub const L5D_PROXY_ERROR: &str = "l5d-proxy-error";

/// gRPC's UNAVAILABLE.
pub const GRPC_UNAVAILABLE: u16 = 14;
/// gRPC's DEADLINE_EXCEEDED.
pub const GRPC_DEADLINE_EXCEEDED: u16 = 4;
/// gRPC's RESOURCE_EXHAUSTED.
pub const GRPC_RESOURCE_EXHAUSTED: u16 = 8;
/// gRPC's INVALID_ARGUMENT.
pub const GRPC_INVALID_ARGUMENT: u16 = 3;
/// gRPC's UNIMPLEMENTED.
pub const GRPC_UNIMPLEMENTED: u16 = 12;
/// gRPC's PERMISSION_DENIED.
pub const GRPC_PERMISSION_DENIED: u16 = 7;

/// Reading the client's request body failed (broken framing, a reset):
/// the client's fault, answered with 400.
#[derive(Debug, thiserror::Error)]
#[error("reading the request body failed")]
pub struct RequestBodyError(#[source] pub hyper::Error);

/// A response made up by the proxy, and the `error` label it counts under.
#[derive(Debug)]
pub struct Rescued {
    /// The response to send.
    pub response: Response<BoxBody>,
    /// The metric label: why the proxy answered.
    pub error: &'static str,
    /// The gRPC status it carries, if the request was gRPC.
    pub grpc_status: Option<i32>,
}

/// Maps `error` (and its causes) to a response.
pub fn rescue(error: &(dyn Error + 'static), grpc: bool) -> Rescued {
    if linnet_core::is_caused_by::<http_body_util::LengthLimitError>(error) {
        return respond(
            StatusCode::PAYLOAD_TOO_LARGE,
            GRPC_RESOURCE_EXHAUSTED,
            "body_too_large",
            "the request body is larger than the proxy's limit",
            grpc,
        );
    }
    if linnet_core::is_caused_by::<crate::body::BodyIdle>(error) {
        // Only a request body can idle before there is a response.
        return respond(
            StatusCode::REQUEST_TIMEOUT,
            GRPC_DEADLINE_EXCEEDED,
            "request_body_idle",
            &linnet_core::display_chain(error),
            grpc,
        );
    }
    if linnet_core::is_caused_by::<RequestBodyError>(error) {
        return respond(
            StatusCode::BAD_REQUEST,
            GRPC_INVALID_ARGUMENT,
            "request_body",
            &linnet_core::display_chain(error),
            grpc,
        );
    }
    if let Some(refused) = linnet_core::find_cause::<linnet_tls::FailClosed>(error) {
        // A meshed peer that mTLS could not prove: refused, never plaintext.
        return respond(
            StatusCode::BAD_GATEWAY,
            GRPC_UNAVAILABLE,
            "tls_fail_closed",
            &refused.to_string(),
            grpc,
        );
    }
    if let Some(answer) = policy_answer(error, grpc) {
        return answer;
    }
    if let Some(e) = linnet_core::find_cause::<crate::endpoint::RequireIdMismatch>(error) {
        return respond(
            StatusCode::BAD_GATEWAY,
            GRPC_UNAVAILABLE,
            "require_id",
            &e.to_string(),
            grpc,
        );
    }
    let message = linnet_core::display_chain(error);
    match linnet_core::find_cause::<ConnectError>(error) {
        // The target did not accept in time: a gateway timeout.
        Some(ConnectError::Timeout { .. }) => respond(
            StatusCode::GATEWAY_TIMEOUT,
            GRPC_DEADLINE_EXCEEDED,
            "connect_timeout",
            &message,
            grpc,
        ),
        Some(ConnectError::Io { .. }) => respond(
            StatusCode::BAD_GATEWAY,
            GRPC_UNAVAILABLE,
            "connect",
            &message,
            grpc,
        ),
        // The connection to the target failed before a response came.
        None => respond(
            StatusCode::BAD_GATEWAY,
            GRPC_UNAVAILABLE,
            "upstream",
            &message,
            grpc,
        ),
    }
}

/// The answer for what a stack's policy decided: no route, an injected
/// failure, a timeout, a queue that failed fast or shed (outbound); an
/// unauthorized client or a rate limit (inbound).
fn policy_answer(error: &(dyn Error + 'static), grpc: bool) -> Option<Rescued> {
    use linnet_policy::{balance::queue, errors, inbound::RateLimited};
    let message = || linnet_core::display_chain(error);
    if linnet_policy::timeout::is_timeout(error) {
        return Some(respond(
            StatusCode::GATEWAY_TIMEOUT,
            GRPC_DEADLINE_EXCEEDED,
            "timeout",
            &message(),
            grpc,
        ));
    }
    if linnet_core::is_caused_by::<queue::FailFast>(error) {
        return Some(respond(
            StatusCode::SERVICE_UNAVAILABLE,
            GRPC_UNAVAILABLE,
            "failfast",
            &message(),
            grpc,
        ));
    }
    if linnet_core::is_caused_by::<queue::QueueFull>(error) {
        return Some(respond(
            StatusCode::SERVICE_UNAVAILABLE,
            GRPC_UNAVAILABLE,
            "load_shed",
            &message(),
            grpc,
        ));
    }
    if linnet_core::is_caused_by::<errors::NoRoute>(error) {
        return Some(respond(
            StatusCode::NOT_FOUND,
            GRPC_UNIMPLEMENTED,
            "no_route",
            &message(),
            grpc,
        ));
    }
    if linnet_core::is_caused_by::<errors::HostMismatch>(error) {
        return Some(respond(
            StatusCode::BAD_REQUEST,
            GRPC_INVALID_ARGUMENT,
            "host_mismatch",
            &message(),
            grpc,
        ));
    }
    if linnet_core::is_caused_by::<errors::Unauthorized>(error) {
        return Some(respond(
            StatusCode::FORBIDDEN,
            GRPC_PERMISSION_DENIED,
            "unauthorized",
            &message(),
            grpc,
        ));
    }
    if let Some(limited) = linnet_core::find_cause::<RateLimited>(error) {
        let mut rescued = respond(
            StatusCode::TOO_MANY_REQUESTS,
            GRPC_RESOURCE_EXHAUSTED,
            "rate_limited",
            &message(),
            grpc,
        );
        // Whole seconds, rounded up: a client told 0 would retry at once.
        let secs = limited.retry_after.as_secs_f64().ceil().max(1.0) as u64;
        rescued
            .response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return Some(rescued);
    }
    if linnet_core::is_caused_by::<errors::NoBackends>(error) {
        return Some(respond(
            StatusCode::GATEWAY_TIMEOUT,
            GRPC_DEADLINE_EXCEEDED,
            "no_endpoints",
            &message(),
            grpc,
        ));
    }
    if let Some(f) = linnet_core::find_cause::<errors::InjectedFailure>(error) {
        let code = f
            .grpc_code
            .and_then(|c| u16::try_from(c).ok())
            .unwrap_or(GRPC_UNAVAILABLE);
        return Some(respond(f.status, code, "injected", &f.message, grpc));
    }
    None
}

/// A response made up by the proxy: `status` (or, for gRPC, HTTP 200 with
/// `grpc_code`), `message` in `l5d-proxy-error`, counted as `label`.
pub fn respond(
    status: StatusCode,
    grpc_code: u16,
    label: &'static str,
    message: &str,
    grpc: bool,
) -> Rescued {
    let mut rsp = Response::new(
        Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    let headers = rsp.headers_mut();
    headers.insert(L5D_PROXY_ERROR, header_value(message));
    if grpc {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from(grpc_code));
        headers.insert("grpc-message", header_value(&grpc_percent_encode(message)));
        return Rescued {
            response: rsp,
            error: label,
            grpc_status: Some(i32::from(grpc_code)),
        };
    }
    *rsp.status_mut() = status;
    rsp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    Rescued {
        response: rsp,
        error: label,
        grpc_status: None,
    }
}

/// A header value from arbitrary text: visible ASCII only, at most 512
/// bytes (an error message can quote anything).
fn header_value(text: &str) -> HeaderValue {
    let clean: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(512)
        .collect();
    HeaderValue::from_str(&clean).unwrap_or_else(|_| HeaderValue::from_static("proxy error"))
}

/// gRPC's percent-encoding for `grpc-message`.
fn grpc_percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect_error() -> ConnectError {
        ConnectError::Io {
            addr: "10.0.0.1:80".parse().unwrap(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        }
    }

    #[test]
    fn connect_failure_is_502_with_the_reason() {
        let r = rescue(&connect_error(), false);
        assert_eq!(r.response.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(r.error, "connect");
        let reason = r.response.headers()[L5D_PROXY_ERROR].to_str().unwrap();
        assert!(
            reason.starts_with("connect to 10.0.0.1:80 failed"),
            "{reason}"
        );
    }

    #[test]
    fn a_refused_meshed_peer_is_502_or_unavailable_with_the_rule() {
        let refused = linnet_tls::FailClosed::new(
            linnet_tls::FailReason::NoCertificate,
            "to 10.0.0.1:80: this workload has no certificate yet",
            Some("web.ns.serviceaccount.identity.linkerd.cluster.local"),
        );
        // As hyper-util hands it over: boxed, under its own error.
        let boxed: linnet_core::Error = Box::new(refused);
        let r = rescue(&*boxed, false);
        assert_eq!(r.response.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(r.error, "tls_fail_closed");
        let reason = r.response.headers()[L5D_PROXY_ERROR].to_str().unwrap();
        assert_eq!(
            reason,
            "mTLS required (no_certificate): to 10.0.0.1:80: this workload has no certificate yet"
        );
        let r = rescue(&*boxed, true);
        assert_eq!(r.response.status(), StatusCode::OK);
        assert_eq!(r.grpc_status, Some(i32::from(GRPC_UNAVAILABLE)));
        assert_eq!(r.response.headers()["grpc-status"], "14");
    }

    #[test]
    fn connect_timeout_is_504() {
        let e = ConnectError::Timeout {
            addr: "10.0.0.1:80".parse().unwrap(),
            timeout: std::time::Duration::from_secs(1),
        };
        let r = rescue(&e, false);
        assert_eq!(r.response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(r.error, "connect_timeout");
        assert_eq!(rescue(&e, true).response.headers()["grpc-status"], "4");
    }

    #[test]
    fn grpc_gets_a_status() {
        let r = rescue(&connect_error(), true);
        assert_eq!(r.response.status(), StatusCode::OK);
        assert_eq!(r.response.headers()["grpc-status"], "14");
        assert_eq!(r.response.headers()["content-type"], "application/grpc");
        assert!(
            r.response.headers()["grpc-message"]
                .to_str()
                .unwrap()
                .contains("10.0.0.1:80")
        );
        assert_eq!(grpc_percent_encode("a%b\n"), "a%25b%0A");
    }
}
