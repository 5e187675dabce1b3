//! Policies: `InboundServerPolicies` (a workload port's protocol, who may
//! connect, its routes and rate limit; built in [`inbound`]) and
//! `OutboundPolicies` (a target's protocol, routes with
//! their matches, filters, timeouts and retries, backends with their load
//! and queue, and failure accrual; built in [`target`] and [`routes`]).

use crate::{
    Metrics, Store,
    config::{self, Mesh},
    store::{Messages, follow},
};
use linkerd2_proxy_api::{
    meta::{Metadata, metadata},
    outbound::{self, OutboundPolicy, TrafficSpec, traffic_spec},
};
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tonic::{Request, Response, Status};

mod inbound;
mod routes;
mod target;

pub use self::inbound::Inbound;
use self::target::{forward_policy, service_policy};

/// How long proxies may wait to detect a protocol.
const DETECT_TIMEOUT: Duration = Duration::from_secs(10);

fn pd(d: Duration) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(d).ok()
}

fn named(name: impl Into<String>) -> Option<Metadata> {
    Some(Metadata {
        kind: Some(metadata::Kind::Default(name.into())),
    })
}

// === outbound ===

/// What an outbound policy lookup names.
#[derive(Clone, Debug)]
enum Target {
    Authority(String),
    Addr(SocketAddr),
}

fn traffic_target(spec: &TrafficSpec) -> Result<Target, Status> {
    match &spec.target {
        Some(traffic_spec::Target::Authority(a)) => {
            let (name, port) = config::parse_authority(a)
                .map_err(|r| Status::invalid_argument(format!("target: {r}")))?;
            Ok(Target::Authority(format!("{name}:{port}")))
        }
        Some(traffic_spec::Target::Addr(a)) => SocketAddr::try_from(*a)
            .map(Target::Addr)
            .map_err(|e| Status::invalid_argument(format!("target: {e}"))),
        None => Err(Status::invalid_argument("no target")),
    }
}

/// The policy for a target: its service's, or for an address that is not
/// a service, forward to that address as it is (detecting the protocol).
/// `None` for an authority the file does not know, and for any target
/// discovery could know before it has listed the cluster.
fn policy(mesh: &Mesh, t: &Target) -> Option<OutboundPolicy> {
    let svc = match t {
        Target::Authority(a) => mesh.named(a),
        Target::Addr(a) => mesh.service_by_addr(*a),
    };
    if svc.is_none() && awaits_discovery(mesh, t) {
        return None;
    }
    match (svc, t) {
        (Some(svc), _) => Some(service_policy(mesh, svc)),
        (None, Target::Addr(addr)) => Some(forward_policy(mesh, *addr)),
        (None, Target::Authority(_)) => None,
    }
}

fn awaits_discovery(mesh: &Mesh, t: &Target) -> bool {
    mesh.awaits_discovery(match t {
        Target::Authority(a) => Some(a.rsplit_once(':').map_or(a.as_str(), |(n, _)| n)),
        Target::Addr(_) => None,
    })
}

/// The mesh once it can answer for `t`: at once, unless discovery has
/// not listed the cluster yet and could name `t` (the client's own
/// deadline bounds the wait).
async fn settled(store: &Store, t: &Target) -> Arc<Mesh> {
    let mut rx = store.subscribe();
    loop {
        let mesh = rx.borrow_and_update().clone();
        if policy(&mesh, t).is_some() || !awaits_discovery(&mesh, t) || rx.changed().await.is_err()
        {
            return mesh;
        }
    }
}

/// The outbound policy service.
#[derive(Clone, Debug)]
pub struct Outbound {
    pub(crate) store: Store,
    pub(crate) metrics: Metrics,
}

#[tonic::async_trait]
impl outbound::outbound_policies_server::OutboundPolicies for Outbound {
    type WatchStream = Messages<OutboundPolicy>;

    async fn get(&self, req: Request<TrafficSpec>) -> Result<Response<OutboundPolicy>, Status> {
        self.metrics.request("OutboundPolicies.Get");
        let t = traffic_target(req.get_ref())?;
        let mesh = settled(&self.store, &t).await;
        policy(&mesh, &t)
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("no service {t:?} in the mesh file")))
    }

    async fn watch(
        &self,
        req: Request<TrafficSpec>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.metrics.request("OutboundPolicies.Watch");
        let t = traffic_target(req.get_ref())?;
        if policy(&*settled(&self.store, &t).await, &t).is_none() {
            return Err(Status::not_found(format!(
                "no service {t:?} in the mesh file"
            )));
        }
        let guard = self.metrics.watch("OutboundPolicies.Watch");
        // A named service that leaves the file keeps its last policy here;
        // its Destination.Get stream says it no longer exists.
        Ok(Response::new(follow(
            self.store.subscribe(),
            None::<OutboundPolicy>,
            move |mesh, last| match policy(mesh, &t) {
                Some(p) if last.as_ref() != Some(&p) => {
                    *last = Some(p.clone());
                    vec![p]
                }
                _ => Vec::new(),
            },
            guard,
        )))
    }
}
