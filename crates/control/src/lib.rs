//! `linnet control`: a small control plane that serves Linkerd's proxy
//! API from one YAML file, so that a mesh of Linnet proxies (or
//! linkerd2-proxies) runs anywhere, without Kubernetes.
//!
//! One gRPC server (HTTP/2, plaintext) serves:
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

pub mod config;
mod destination;
mod identity;
mod metrics;
mod policy;
mod store;

pub use self::{
    config::Mesh,
    destination::Destination,
    identity::{Ca, CaError, IdentityService},
    metrics::Metrics,
    policy::{Inbound, Outbound},
    store::Store,
};

use hyper_util::rt::{TokioExecutor, TokioIo};
use linkerd2_proxy_api::{
    destination::destination_server::DestinationServer, identity::identity_server::IdentityServer,
    inbound::inbound_server_policies_server::InboundServerPoliciesServer,
    outbound::outbound_policies_server::OutboundPoliciesServer,
};
use std::{convert::Infallible, future::Future, sync::Arc};
use tokio::net::TcpListener;
use tower_service::Service as _;

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

/// Serves the API on `listener` until `shutdown` resolves; open streams
/// are then cut.
pub async fn serve(listener: TcpListener, control: Control, shutdown: impl Future<Output = ()>) {
    let services = Services::new(&control);
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let services = services.clone();
        conns.spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let services = services.clone();
                async move { Ok::<_, Infallible>(services.call(req).await) }
            });
            if let Err(error) = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(%peer, %error, "control-plane client connection ended");
            }
        });
        // Reap finished connections.
        while conns.try_join_next().is_some() {}
    }
    conns.shutdown().await;
}

/// The gRPC services, routed by the request path's service name.
#[derive(Clone)]
struct Services {
    destination: DestinationServer<Destination>,
    identity: IdentityServer<IdentityService>,
    inbound: InboundServerPoliciesServer<Inbound>,
    outbound: OutboundPoliciesServer<Outbound>,
}

impl Services {
    fn new(c: &Control) -> Self {
        let (store, metrics) = (c.store.clone(), c.metrics.clone());
        Self {
            destination: DestinationServer::new(Destination {
                store: store.clone(),
                metrics: metrics.clone(),
            }),
            identity: IdentityServer::new(IdentityService {
                ca: c.ca.clone(),
                store: store.clone(),
                metrics: metrics.clone(),
            }),
            inbound: InboundServerPoliciesServer::new(Inbound {
                store: store.clone(),
                metrics: metrics.clone(),
            }),
            outbound: OutboundPoliciesServer::new(Outbound { store, metrics }),
        }
    }

    async fn call(
        mut self,
        req: http::Request<hyper::body::Incoming>,
    ) -> http::Response<tonic::body::Body> {
        let path = req.uri().path();
        let service = path.trim_start_matches('/').split('/').next().unwrap_or("");
        let rsp = match service {
            "io.linkerd.proxy.destination.Destination" => self.destination.call(req).await,
            "io.linkerd.proxy.identity.Identity" => self.identity.call(req).await,
            "io.linkerd.proxy.inbound.InboundServerPolicies" => self.inbound.call(req).await,
            "io.linkerd.proxy.outbound.OutboundPolicies" => self.outbound.call(req).await,
            _ => Ok(tonic::Status::unimplemented(format!("no service for {path}")).into_http()),
        };
        rsp.unwrap_or_else(|e| match e {})
    }
}
