//! `linnet control`: a small control plane that serves Linkerd's proxy
//! API from one YAML file, so that a mesh of Linnet proxies (or
//! linkerd2-proxies) runs anywhere, without Kubernetes.
//!
//! One gRPC server (HTTP/2; plaintext to clients on loopback, TLS 1.3
//! with the control plane's own certificate to any other, see
//! [`serve_with`]) serves:
//!
//! | service | RPCs |
//! |---|---|
//! | `io.linkerd.proxy.destination.Destination` | `Get` (endpoints), `GetProfile` |
//! | `io.linkerd.proxy.identity.Identity` | `Certify` (the mesh CA) |
//! | `io.linkerd.proxy.inbound.InboundServerPolicies` | `GetPort`, `WatchPort` |
//! | `io.linkerd.proxy.outbound.OutboundPolicies` | `Get`, `Watch` |
//!
//! The file is described in [`config`]; [`Store::follow`] re-reads it when
//! it changes, and every open stream receives the changes. A file that
//! fails to validate is logged and counted
//! (`control_config_reloads_total{result="error"}`), and the last good one
//! stays in force.
//!
//! In a Kubernetes cluster, [`discover`] adds the cluster's Services, with
//! their ready endpoints, beside the file's own when the file's
//! `discovery.kubernetes` section turns it on; the file's services win
//! over discovered ones of the same name, address or endpoint.

pub mod config;
mod destination;
mod discovered;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod identity;
mod kubernetes;
mod metrics;
mod policy;
mod server;
mod server_tls;
mod store;
mod token_review;

pub use self::{
    config::Mesh,
    destination::Destination,
    discovered::Discovered,
    identity::{Ca, CaError, IdentityService, ServerCert},
    kubernetes::discover,
    metrics::Metrics,
    policy::{Inbound, Outbound},
    server::{ServeOptions, serve, serve_with},
    store::Store,
};

use std::sync::Arc;

/// Everything the server serves from.
#[derive(Clone, Debug)]
pub struct Control {
    /// The mesh in force.
    pub store: Store,
    /// Where requests are counted.
    pub metrics: Metrics,
    /// The identity issuer.
    pub ca: Arc<Ca>,
}
