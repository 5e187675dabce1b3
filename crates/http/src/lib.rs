//! HTTP proxying: what the proxy does with a connection detected as
//! HTTP/1 or HTTP/2.
//!
//! The path of a request: the [`server`] (hyper, HTTP/1.1 or HTTP/2 as
//! detected) → [`proxy::Proxy`] (header hygiene, upgrades and `CONNECT`
//! tunnels, metrics) → [`client::Upstream`] (pooled connections to the
//! target, HTTP/2 multiplexed) → the target. When the proxy cannot complete
//! a request it answers itself ([`rescue`]): a status with an
//! `l5d-proxy-error` header, or for gRPC a `grpc-status`.
//!
//! Bodies stream in both directions; nothing is buffered whole. A response
//! that fails midway is reset (HTTP/2) or its connection closed (HTTP/1),
//! never ended as if complete.

mod body;
pub mod client;
pub mod conn;
mod continue_gate;
pub mod endpoint;
mod head_clock;
pub mod headers;
pub mod proxy;
pub mod rescue;
pub mod server;

pub use self::{
    client::{Upstream, UpstreamMetrics},
    conn::{Connection, ResetFlag},
    endpoint::EndpointClient,
    proxy::{BoxFuture, Explicit, HttpStack, InFlight, Proxy, Resolved, Route, call_stack},
    server::serve,
};

/// The response body type of the proxy: a boxed stream of bytes.
pub type BoxBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, linnet_core::Error>;

/// Which HTTP version a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0 or HTTP/1.1.
    Http1,
    /// HTTP/2.
    Http2,
}
