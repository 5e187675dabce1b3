//! The outbound HTTP stack: what happens to a request from a pod's
//! application to a service, between the proxy's HTTP server and the
//! endpoint client.
//!
//! [`http`] builds it, top to bottom (a rule's stack and a backend's,
//! below the [`route::Router`]): route match
//! and filters → per-route timeout → retry → weighted backend split →
//! (per backend) the wait for discovery's first answer → queue and P2C
//! balancer over PeakEWMA → failure-accrual gate → endpoint client.
//!
//! Backpressure: each backend has one bounded queue in front of its
//! balancer. A request waits there while no endpoint is ready; when the
//! queue is full it is shed at once (503), and when the balancer has had
//! no ready endpoint for the queue's fail-fast timeout (Linkerd's 3 s),
//! every waiting request fails (503). Nothing else queues: the split and
//! the route layers never wait.

pub mod backend;
pub mod http;
pub mod route;
pub mod split;
