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
mod store;

pub use self::{
    config::Mesh,
    destination::Destination,
    identity::{Ca, CaError, IdentityService},
    metrics::Metrics,
    store::Store,
};

use hyper_util::rt::{TokioExecutor, TokioIo};
use linkerd2_proxy_api::{
    destination::destination_server::DestinationServer, identity::identity_server::IdentityServer,
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
    let destination = DestinationServer::new(Destination {
        store: control.store.clone(),
        metrics: control.metrics.clone(),
    });
    let identity = IdentityServer::new(IdentityService {
        ca: control.ca.clone(),
        store: control.store.clone(),
        metrics: control.metrics.clone(),
    });
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
        let (destination, identity) = (destination.clone(), identity.clone());
        conns.spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (mut destination, mut identity) = (destination.clone(), identity.clone());
                    async move {
                        let path = req.uri().path();
                        let service = path.trim_start_matches('/').split('/').next().unwrap_or("");
                        let rsp = match service {
                            "io.linkerd.proxy.destination.Destination" => {
                                destination.call(req).await
                            }
                            "io.linkerd.proxy.identity.Identity" => identity.call(req).await,
                            _ => Ok(
                                tonic::Status::unimplemented(format!("no service for {path}"))
                                    .into_http(),
                            ),
                        };
                        Ok::<_, Infallible>(rsp.unwrap_or_else(|e| match e {}))
                    }
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
