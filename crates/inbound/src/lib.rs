//! The inbound stack: who may reach the application, on which port and
//! route, how often, and the HTTP stack in front of it.
//!
//! The path of an inbound connection, each step by name:
//!
//! 1. accept, then mesh TLS or not (`linnet-app`'s `inbound` module:
//!    the listener, the mTLS handshake, the transport port);
//! 2. the port's server policy: [`policy::Policies::get`], from the
//!    policy service's `WatchPort`, or the default policy
//!    (`INBOUND_DEFAULT_POLICY`, with the per-port overrides) until it
//!    arrives and without a policy service;
//! 3. connection authorization: [`accept::refuse_before_detect`] (a
//!    policy that admits no one), then, for a connection that is not
//!    HTTP, [`accept::authorize_tcp`] against the server's authorizations,
//!    and [`accept::revoked`] while it lasts (a policy change that no
//!    longer admits it closes it);
//! 4. detect, HTTP server (`linnet-http`: header hygiene, `l5d-client-id`,
//!    orig-proto downgrade);
//! 5. [`http::stack`], per request: [`route`] match → route
//!    [`authorize`] → [`rate_limit`] → the rule's [`filter`]s → the client
//!    to the application. The first three share one service shape,
//!    [`guard::Guard`]; each is a [`guard::Check`] in its own module.
//!
//! Policy is read per request from the port's watch, so a change applies
//! at once to new connections and to open connections' next request.
//!
//! Backpressure: none is added here. A request that the policy refuses
//! is answered at once (403, 404, 429); one it admits goes straight to
//! the application's pooled client, bounded by the listener's in-flight
//! limit at the edge.

pub mod accept;
pub mod authorize;
pub mod filter;
pub mod guard;
pub mod http;
mod labels;
pub mod policy;
pub mod rate_limit;
pub mod route;

pub use self::{
    accept::{Client, ClientTls, Conn},
    policy::{Policies, PortPolicy},
};

#[cfg(test)]
mod tests;
