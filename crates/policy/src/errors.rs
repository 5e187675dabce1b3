//! Why the outbound stack answers a request itself, rather than an
//! endpoint: the errors the edge's rescue maps to a status (and gRPC
//! status) with `l5d-proxy-error`. (The timeout, queue and balancer
//! errors are beside their middleware.)

use http::StatusCode;
use std::sync::Arc;

/// No route of the target's policy matches the request: 404, or gRPC
/// UNIMPLEMENTED.
#[derive(Debug, thiserror::Error)]
#[error("no route of {parent} matches the request")]
pub struct NoRoute {
    /// The policy's name.
    pub parent: Arc<str>,
}

/// A route's failure-injection filter failed the request (or a redirect
/// could not be built): answered with the filter's status.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct InjectedFailure {
    /// The HTTP status to answer with.
    pub status: StatusCode,
    /// The gRPC status, for a gRPC route.
    pub grpc_code: Option<u32>,
    /// Why.
    pub message: String,
}

/// A route whose backends were all unusable (or none given): there is
/// nowhere to send its requests, and the target is not reached in
/// plaintext instead (it may be meshed). Answered like "no endpoints".
#[derive(Debug, thiserror::Error)]
#[error("the route has no backend")]
pub struct NoBackends;

/// The inbound route's authorizations admit no such client (its address,
/// TLS and identity): 403, or gRPC PERMISSION_DENIED.
#[derive(Debug, thiserror::Error)]
#[error("unauthorized request on route {route} of server {server}: {client}")]
pub struct Unauthorized {
    /// The server (the port's policy).
    pub server: Arc<str>,
    /// The route.
    pub route: Arc<str>,
    /// Who was refused, in words.
    pub client: String,
}

/// A request the inbound stack will not route: its `Host` names another
/// authority than its URI (HTTP/2 `:authority`, or an absolute-form
/// target), so routes and the application could read different hosts.
/// 400, or gRPC INVALID_ARGUMENT.
#[derive(Debug, thiserror::Error)]
#[error("the Host header ({host}) differs from the request's authority ({authority})")]
pub struct HostMismatch {
    /// The URI's authority.
    pub authority: String,
    /// The `Host` header.
    pub host: String,
}
