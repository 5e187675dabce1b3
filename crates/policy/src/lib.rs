//! What the control plane's policies decide, as the proxy acts on it.
//!
//! The outbound policy (`OutboundPolicies.Watch`) names, per target, its
//! protocol, its routes (matches, filters, timeouts, retries), their
//! weighted backends and how each backend balances over its endpoints,
//! and when an endpoint is taken out of rotation. This crate holds that
//! model ([`params`] for the numbers every layer reads) and the tower
//! middleware that carries it out, one per module. The stacks in
//! `linnet-outbound` put them in order; nothing here knows the order.
//!
//! The inbound policy (`InboundServerPolicies.WatchPort`, or the proxy's
//! configured default) says, per port, what it speaks, who may connect,
//! which routes requests take, who may use each route, and the port's
//! rate limit: [`inbound`], pure logic that `linnet-inbound`'s layers
//! consult.

pub mod accrual;
pub mod balance;
pub mod errors;
pub mod inbound;
pub mod outbound;
pub mod params;
pub mod retry;
pub mod timeout;
