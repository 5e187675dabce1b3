//! Entry points for the fuzz targets (feature `fuzzing`, never built
//! into the binary): a proxy's request, as the gRPC server decodes it,
//! handed to the service that answers it, with no server around it. A
//! stream's answer is its first message (`None` when it has none yet).

use crate::{Control, Destination, IdentityService, Inbound, Outbound};
use futures_util::StreamExt;
use linkerd2_proxy_api::{
    destination::{self as dst, destination_server::Destination as _},
    identity::{CertifyRequest, CertifyResponse, identity_server::Identity as _},
    inbound::{self, inbound_server_policies_server::InboundServerPolicies as _},
    outbound::{self, outbound_policies_server::OutboundPolicies as _},
};
use std::time::Duration;
use tonic::{Request, Status};

/// How long a stream's first message may take (a stream sends what it
/// has at once; nothing in this time is nothing).
const FIRST: Duration = Duration::from_secs(1);

async fn first<T>(
    rsp: Result<tonic::Response<crate::store::Messages<T>>, Status>,
) -> Result<Option<T>, Status> {
    let mut stream = rsp?.into_inner();
    match tokio::time::timeout(FIRST, stream.next()).await {
        Ok(Some(m)) => m.map(Some),
        Ok(None) | Err(_) => Ok(None),
    }
}

/// `Destination.Get`.
pub async fn get(c: &Control, req: dst::GetDestination) -> Result<Option<dst::Update>, Status> {
    let svc = Destination {
        store: c.store.clone(),
        metrics: c.metrics.clone(),
    };
    first(svc.get(Request::new(req)).await).await
}

/// `Destination.GetProfile`.
pub async fn get_profile(
    c: &Control,
    req: dst::GetDestination,
) -> Result<Option<dst::DestinationProfile>, Status> {
    let svc = Destination {
        store: c.store.clone(),
        metrics: c.metrics.clone(),
    };
    first(svc.get_profile(Request::new(req)).await).await
}

/// `InboundServerPolicies.GetPort`.
pub async fn get_port(c: &Control, req: inbound::PortSpec) -> Result<inbound::Server, Status> {
    let svc = Inbound {
        store: c.store.clone(),
        metrics: c.metrics.clone(),
    };
    Ok(svc.get_port(Request::new(req)).await?.into_inner())
}

/// `OutboundPolicies.Get`.
pub async fn outbound_get(
    c: &Control,
    req: outbound::TrafficSpec,
) -> Result<outbound::OutboundPolicy, Status> {
    let svc = Outbound {
        store: c.store.clone(),
        metrics: c.metrics.clone(),
    };
    Ok(svc.get(Request::new(req)).await?.into_inner())
}

/// `Identity.Certify`.
pub async fn certify(c: &Control, req: CertifyRequest) -> Result<CertifyResponse, Status> {
    let svc = IdentityService {
        ca: c.ca.clone(),
        store: c.store.clone(),
        metrics: c.metrics.clone(),
    };
    Ok(svc.certify(Request::new(req)).await?.into_inner())
}

/// Kubernetes endpoint discovery on what an API server sends (lists and
/// watch streams); see the fuzz target `kubernetes`.
pub fn kubernetes(data: &[u8]) {
    crate::kubernetes::fuzz(data);
}
