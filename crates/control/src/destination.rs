//! `Destination.Get` and `Destination.GetProfile`: a service's endpoints
//! as a stream of additions and removals, and its profile whenever it
//! changes.

use crate::{
    Metrics,
    config::{Endpoint, Hint, Mesh, Service, parse_authority},
    store::{Messages, Store, follow},
};
use linkerd2_proxy_api::destination::{
    self as api, AddrSet, DestinationProfile, GetDestination, NoEndpoints, ProtocolHint,
    TlsIdentity, Update, WeightedAddr, WeightedAddrSet, protocol_hint, tls_identity, update,
};
use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
};
use tonic::{Request, Response, Status};

/// The Destination service.
#[derive(Clone, Debug)]
pub struct Destination {
    pub(crate) store: Store,
    pub(crate) metrics: Metrics,
}

/// What a lookup names.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    /// `name:port`, normalised.
    Name(String),
    Addr(SocketAddr),
}

fn target(path: &str) -> Result<Target, Status> {
    if let Ok(addr) = path.parse::<SocketAddr>() {
        return Ok(Target::Addr(addr));
    }
    parse_authority(path)
        .map(|(name, port)| Target::Name(format!("{name}:{port}")))
        .map_err(|reason| Status::invalid_argument(format!("path: {reason}")))
}

/// Endpoints by address, with the set's labels; `None` when the target
/// is unknown.
type Endpoints = (HashMap<String, String>, BTreeMap<SocketAddr, WeightedAddr>);

fn endpoints(mesh: &Mesh, t: &Target) -> Option<Endpoints> {
    let svc = match t {
        Target::Name(a) => mesh.named(a),
        Target::Addr(a) => match mesh.service_by_addr(*a) {
            Some(s) => Some(s),
            None => {
                // A single known endpoint (a pod's address).
                let (svc, ep) = mesh.endpoint(*a)?;
                let labels = labels(&svc.labels);
                return Some((labels, [(ep.addr, weighted_addr(ep))].into()));
            }
        },
    }?;
    Some((
        labels(&svc.labels),
        svc.endpoints
            .iter()
            .map(|e| (e.addr, weighted_addr(e)))
            .collect(),
    ))
}

/// Whether `t` is unknown only because discovery has not listed the
/// cluster yet.
fn awaits_discovery(mesh: &Mesh, t: &Target) -> bool {
    let name = match t {
        Target::Name(a) => Some(a.rsplit_once(':').map_or(a.as_str(), |(n, _)| n)),
        Target::Addr(_) => None,
    };
    mesh.awaits_discovery(name) && endpoints(mesh, t).is_none()
}

fn labels(l: &BTreeMap<String, String>) -> HashMap<String, String> {
    l.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// An endpoint in the API's terms.
pub(crate) fn weighted_addr(e: &Endpoint) -> WeightedAddr {
    let tls_identity = e.identity.as_ref().map(|id| {
        if id.starts_with("spiffe://") {
            TlsIdentity {
                server_name: e
                    .server_name
                    .as_ref()
                    .map(|n| tls_identity::DnsLikeIdentity { name: n.clone() }),
                strategy: Some(tls_identity::Strategy::UriLikeIdentity(
                    tls_identity::UriLikeIdentity { uri: id.clone() },
                )),
            }
        } else {
            let name = tls_identity::DnsLikeIdentity { name: id.clone() };
            TlsIdentity {
                server_name: Some(name.clone()),
                strategy: Some(tls_identity::Strategy::DnsLikeIdentity(name)),
            }
        }
    });
    let protocol_hint =
        (e.protocol.is_some() || e.opaque_transport_port.is_some()).then(|| ProtocolHint {
            protocol: e.protocol.map(|h| match h {
                Hint::H2 => protocol_hint::Protocol::H2(protocol_hint::H2 {}),
                Hint::Opaque => protocol_hint::Protocol::Opaque(protocol_hint::Opaque {}),
            }),
            opaque_transport: e
                .opaque_transport_port
                .map(|p| protocol_hint::OpaqueTransport {
                    inbound_port: u32::from(p),
                }),
        });
    WeightedAddr {
        addr: Some(e.addr.into()),
        weight: e.weight,
        metric_labels: labels(&e.labels),
        tls_identity,
        protocol_hint,
        ..Default::default()
    }
}

/// What a Get stream has told its client so far.
#[derive(Debug, Default)]
enum Sent {
    #[default]
    Nothing,
    /// `no_endpoints { exists: false }`.
    Unknown,
    /// These endpoints (none: `no_endpoints { exists: true }`).
    Known(BTreeMap<SocketAddr, WeightedAddr>),
}

/// The updates that take a client from `sent` to `now`.
fn updates(sent: &mut Sent, now: Option<Endpoints>) -> Vec<Update> {
    let msg = |u| Update { update: Some(u) };
    let mut out = Vec::new();
    let previous = std::mem::take(sent);
    if now.is_none() && matches!(previous, Sent::Unknown) {
        *sent = Sent::Unknown;
        return out;
    }
    let before = match previous {
        Sent::Known(m) => Some(m),
        Sent::Nothing | Sent::Unknown => None,
    };
    let was_unknown = before.is_none();
    let before = before.unwrap_or_default();
    match now {
        None => {
            if !before.is_empty() {
                out.push(msg(update::Update::Remove(AddrSet {
                    addrs: before.keys().map(|a| (*a).into()).collect(),
                })));
            }
            out.push(msg(update::Update::NoEndpoints(NoEndpoints {
                exists: false,
            })));
            *sent = Sent::Unknown;
        }
        Some((labels, now)) => {
            let removed: Vec<_> = before
                .keys()
                .filter(|a| !now.contains_key(a))
                .map(|a| (*a).into())
                .collect();
            if !removed.is_empty() {
                out.push(msg(update::Update::Remove(AddrSet { addrs: removed })));
            }
            let changed: Vec<WeightedAddr> = now
                .iter()
                .filter(|(a, w)| before.get(a) != Some(w))
                .map(|(_, w)| w.clone())
                .collect();
            if !changed.is_empty() {
                out.push(msg(update::Update::Add(WeightedAddrSet {
                    addrs: changed,
                    metric_labels: labels,
                })));
            }
            if now.is_empty() && (was_unknown || !before.is_empty()) {
                out.push(msg(update::Update::NoEndpoints(NoEndpoints {
                    exists: true,
                })));
            }
            *sent = Sent::Known(now);
        }
    }
    out
}

/// The profile for a target: its service's routes and budget, or for a
/// known endpoint the endpoint itself, or empty.
fn profile(mesh: &Mesh, t: &Target) -> DestinationProfile {
    let svc: Option<&Service> = match t {
        Target::Name(a) => mesh.named(a),
        Target::Addr(a) => mesh.service_by_addr(*a),
    };
    if let Some(svc) = svc {
        let p = &svc.profile;
        return DestinationProfile {
            fully_qualified_name: svc.name.clone(),
            opaque_protocol: p.opaque || svc.policy.protocol == crate::config::Protocol::Opaque,
            routes: p.routes.iter().map(profile_route).collect(),
            retry_budget: p.retry_budget.map(|b| api::RetryBudget {
                retry_ratio: b.ratio,
                min_retries_per_second: b.min_per_second,
                ttl: prost_types::Duration::try_from(b.ttl).ok(),
            }),
            ..Default::default()
        };
    }
    if let Target::Addr(a) = t {
        if let Some((_, ep)) = mesh.endpoint(*a) {
            return DestinationProfile {
                opaque_protocol: ep.protocol == Some(Hint::Opaque),
                endpoint: Some(weighted_addr(ep)),
                ..Default::default()
            };
        }
    }
    DestinationProfile::default()
}

fn profile_route(r: &crate::config::ProfileRoute) -> api::Route {
    use api::request_match::{Match, Seq};
    let mut all = Vec::new();
    if let Some(m) = &r.method {
        if let Ok(m) = http::Method::from_bytes(m.as_bytes()) {
            all.push(api::RequestMatch {
                r#match: Some(Match::Method(m.into())),
            });
        }
    }
    if let Some(p) = &r.path_regex {
        all.push(api::RequestMatch {
            r#match: Some(Match::Path(api::PathMatch { regex: p.clone() })),
        });
    }
    api::Route {
        condition: Some(api::RequestMatch {
            r#match: Some(Match::All(Seq { matches: all })),
        }),
        response_classes: r
            .failure_statuses
            .iter()
            .map(|(min, max)| api::ResponseClass {
                condition: Some(api::ResponseMatch {
                    r#match: Some(api::response_match::Match::Status(api::HttpStatusRange {
                        min: u32::from(*min),
                        max: u32::from(*max),
                    })),
                }),
                is_failure: true,
            })
            .collect(),
        metrics_labels: [("route".to_string(), r.name.clone())].into(),
        is_retryable: r.retryable,
        timeout: r
            .timeout
            .and_then(|t| prost_types::Duration::try_from(t).ok()),
    }
}

#[tonic::async_trait]
impl api::destination_server::Destination for Destination {
    type GetStream = Messages<Update>;
    type GetProfileStream = Messages<DestinationProfile>;

    async fn get(&self, req: Request<GetDestination>) -> Result<Response<Self::GetStream>, Status> {
        self.metrics.request("Destination.Get");
        let t = target(&req.get_ref().path)?;
        tracing::debug!(path = %req.get_ref().path, "Destination.Get");
        let guard = self.metrics.watch("Destination.Get");
        Ok(Response::new(follow(
            self.store.subscribe(),
            Sent::Nothing,
            move |mesh, sent| {
                if awaits_discovery(mesh, &t) {
                    return Vec::new();
                }
                updates(sent, endpoints(mesh, &t))
            },
            guard,
        )))
    }

    async fn get_profile(
        &self,
        req: Request<GetDestination>,
    ) -> Result<Response<Self::GetProfileStream>, Status> {
        self.metrics.request("Destination.GetProfile");
        let t = target(&req.get_ref().path)?;
        let guard = self.metrics.watch("Destination.GetProfile");
        Ok(Response::new(follow(
            self.store.subscribe(),
            None,
            move |mesh, last| {
                let p = profile(mesh, &t);
                if (p == DestinationProfile::default() && awaits_discovery(mesh, &t))
                    || last.as_ref() == Some(&p)
                {
                    return Vec::new();
                }
                *last = Some(p.clone());
                vec![p]
            },
            guard,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn mesh(yaml: &str) -> Mesh {
        Mesh::parse(yaml, Path::new(".")).unwrap()
    }

    const TWO: &str = "
services:
  web.default.svc.cluster.local:80:
    addresses: [10.96.0.10:80]
    labels: {service: web}
    endpoints:
      - addr: 10.0.0.1:8080
        identity: web.default.serviceaccount.identity.linkerd.cluster.local
        protocol: h2
      - addr: 10.0.0.2:8080
        weight: 3
";

    fn kinds(u: &[Update]) -> Vec<String> {
        u.iter()
            .map(|u| match u.update.as_ref().unwrap() {
                update::Update::Add(s) => format!("add {}", s.addrs.len()),
                update::Update::Remove(s) => format!("remove {}", s.addrs.len()),
                update::Update::NoEndpoints(n) => format!("none exists={}", n.exists),
            })
            .collect()
    }

    #[test]
    fn endpoints_follow_the_file() {
        let t = target("Web.Default.svc.cluster.local.:80").unwrap();
        let mut sent = Sent::Nothing;
        let first = updates(&mut sent, endpoints(&mesh(TWO), &t));
        assert_eq!(kinds(&first), ["add 2"]);
        let update::Update::Add(set) = first[0].update.clone().unwrap() else {
            unreachable!()
        };
        assert_eq!(set.metric_labels["service"], "web");
        let a = &set.addrs[0];
        assert_eq!(
            a.tls_identity
                .as_ref()
                .unwrap()
                .server_name
                .as_ref()
                .unwrap()
                .name,
            "web.default.serviceaccount.identity.linkerd.cluster.local"
        );
        assert!(matches!(
            a.protocol_hint.as_ref().unwrap().protocol,
            Some(protocol_hint::Protocol::H2(_))
        ));
        assert_eq!(set.addrs[1].weight, 3);
        // Nothing changed: nothing sent.
        assert!(updates(&mut sent, endpoints(&mesh(TWO), &t)).is_empty());
        // One removed, one re-weighted.
        let next = TWO.replace(
            "      - addr: 10.0.0.2:8080\n        weight: 3\n",
            "      - addr: 10.0.0.3:8080\n",
        );
        assert_eq!(
            kinds(&updates(&mut sent, endpoints(&mesh(&next), &t))),
            ["remove 1", "add 1"]
        );
        // All removed, then the service gone.
        let empty = "services:\n  web.default.svc.cluster.local:80: {}\n";
        assert_eq!(
            kinds(&updates(&mut sent, endpoints(&mesh(empty), &t))),
            ["remove 2", "none exists=true"]
        );
        assert_eq!(
            kinds(&updates(&mut sent, endpoints(&mesh(""), &t))),
            ["none exists=false"]
        );
        assert!(updates(&mut sent, endpoints(&mesh(""), &t)).is_empty());
    }

    #[test]
    fn lookups_by_address() {
        let m = mesh(TWO);
        // A service address stands for the service.
        let (_, eps) = endpoints(&m, &target("10.96.0.10:80").unwrap()).unwrap();
        assert_eq!(eps.len(), 2);
        assert_eq!(
            profile(&m, &target("10.96.0.10:80").unwrap()).fully_qualified_name,
            "web.default.svc.cluster.local"
        );
        // An endpoint's address is that endpoint.
        let (_, eps) = endpoints(&m, &target("10.0.0.2:8080").unwrap()).unwrap();
        assert_eq!(
            eps.keys().copied().collect::<Vec<_>>(),
            ["10.0.0.2:8080".parse().unwrap()]
        );
        let p = profile(&m, &target("10.0.0.1:8080").unwrap());
        assert!(p.endpoint.is_some() && p.fully_qualified_name.is_empty());
        // Anything else is unknown.
        assert!(endpoints(&m, &target("10.9.9.9:80").unwrap()).is_none());
        assert_eq!(
            profile(&m, &target("nowhere.example.com:80").unwrap()),
            DestinationProfile::default()
        );
        assert!(target("not a name:80").is_err());
        assert!(target("web:0").is_err());
    }
}
