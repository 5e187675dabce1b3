//! `Destination` answers: `Get` updates applied to an authority's
//! endpoint set (the first message of each stream is the whole set), and
//! `GetProfile` answers read into [`Profile`]s, with their routes and
//! retry budget when they have any. [`endpoint`] also reads the forward
//! backends of outbound policies.

use crate::{Endpoint, Hint, Metrics, Profile, Resolution, watch::Apply};
use linkerd2_proxy_api::destination::{
    DestinationProfile, Update, WeightedAddr, protocol_hint, tls_identity, update,
};
use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};
use tokio::sync::watch;

/// Reads one endpoint; `None` (logged and counted) when it is unusable.
pub(crate) fn endpoint(w: WeightedAddr, metrics: &Metrics) -> Option<Endpoint> {
    let Some(addr) = w.addr.and_then(|a| SocketAddr::try_from(a).ok()) else {
        tracing::warn!("control plane sent an endpoint with no usable address; skipped");
        metrics.skipped("no_address");
        return None;
    };
    if addr.port() == 0 || addr.ip().is_unspecified() {
        tracing::warn!(%addr, "control plane sent an endpoint that cannot be connected to; skipped");
        metrics.skipped("bad_address");
        return None;
    }
    if w.weight == 0 {
        tracing::warn!(%addr, "control plane sent an endpoint with weight 0; skipped");
        metrics.skipped("zero_weight");
        return None;
    }
    let server_name = w
        .tls_identity
        .as_ref()
        .and_then(|t| t.server_name.as_ref())
        .map(|n| n.name.clone())
        .filter(|n| !n.is_empty());
    let identity = w.tls_identity.and_then(|t| match t.strategy {
        Some(tls_identity::Strategy::DnsLikeIdentity(d)) if !d.name.is_empty() => Some(d.name),
        Some(tls_identity::Strategy::UriLikeIdentity(u)) if !u.uri.is_empty() => Some(u.uri),
        _ => {
            tracing::warn!(%addr, "control plane sent a TLS identity with no name; using none");
            metrics.skipped("empty_identity");
            None
        }
    });
    let (hint, opaque_transport_port) = match w.protocol_hint {
        None => (Hint::Unknown, None),
        Some(h) => {
            let port = h
                .opaque_transport
                .and_then(|o| u16::try_from(o.inbound_port).ok().filter(|p| *p != 0));
            let hint = match h.protocol {
                Some(protocol_hint::Protocol::H2(_)) => Hint::H2,
                Some(protocol_hint::Protocol::Opaque(_)) => Hint::Opaque,
                None => {
                    if port.is_none() {
                        tracing::warn!(%addr, "control plane sent a protocol hint this proxy does not know; ignored");
                        metrics.skipped("unknown_protocol_hint");
                    }
                    Hint::Unknown
                }
            };
            (hint, port)
        }
    };
    Some(Endpoint {
        addr,
        weight: w.weight,
        identity,
        server_name,
        hint,
        opaque_transport_port,
        labels: w.metric_labels.into_iter().collect(),
    })
}

/// Applies `Destination.Get` updates to an endpoint set.
pub(crate) struct Endpoints {
    pub(crate) metrics: Metrics,
}

impl Apply<Update, Resolution> for Endpoints {
    fn message(&mut self, tx: &watch::Sender<Resolution>, msg: Update, first: bool) {
        let Some(u) = msg.update else {
            self.metrics.skipped("empty_update");
            return;
        };
        tx.send_modify(|r| {
            // The first message of a stream is the whole set: forget what
            // an earlier stream said.
            let mut set: BTreeMap<SocketAddr, Arc<Endpoint>> = match (&*r, first) {
                (Resolution::Endpoints(m), false) => (**m).clone(),
                _ => BTreeMap::new(),
            };
            match u {
                update::Update::Add(add) => {
                    for w in add.addrs {
                        if let Some(mut e) = endpoint(w, &self.metrics) {
                            for (k, v) in &add.metric_labels {
                                e.labels.entry(k.clone()).or_insert_with(|| v.clone());
                            }
                            set.insert(e.addr, Arc::new(e));
                        }
                    }
                    *r = Resolution::Endpoints(Arc::new(set));
                }
                update::Update::Remove(rm) => {
                    for a in rm.addrs {
                        match SocketAddr::try_from(a) {
                            Ok(a) => {
                                set.remove(&a);
                            }
                            Err(_) => self.metrics.skipped("no_address"),
                        }
                    }
                    *r = Resolution::Endpoints(Arc::new(set));
                }
                update::Update::NoEndpoints(n) => {
                    *r = if n.exists {
                        Resolution::Endpoints(Arc::default())
                    } else {
                        Resolution::NotFound
                    };
                }
            }
        });
    }

    fn error(&mut self, tx: &watch::Sender<Resolution>, status: &tonic::Status) {
        // A name the control plane refuses outright is as good as unknown;
        // anything else keeps the last answer.
        if status.code() == tonic::Code::InvalidArgument {
            tx.send_if_modified(|r| {
                if matches!(r, Resolution::Pending) {
                    *r = Resolution::NotFound;
                    true
                } else {
                    false
                }
            });
        }
    }
}

/// Applies `Destination.GetProfile` answers.
pub(crate) struct Profiles {
    pub(crate) metrics: Metrics,
}

impl Apply<DestinationProfile, Option<Profile>> for Profiles {
    fn message(
        &mut self,
        tx: &watch::Sender<Option<Profile>>,
        p: DestinationProfile,
        _first: bool,
    ) {
        let name = (!p.fully_qualified_name.is_empty()).then(|| {
            p.fully_qualified_name
                .trim_end_matches('.')
                .to_ascii_lowercase()
        });
        let endpoint = p.endpoint.clone().and_then(|e| endpoint(e, &self.metrics));
        let opaque = p.opaque_protocol;
        let routes = (!p.routes.is_empty() || p.retry_budget.is_some()).then(|| {
            let metrics = self.metrics.clone();
            Arc::new(linnet_policy::outbound::profile::from_profile(
                p,
                &mut |reason| metrics.skipped(reason),
            ))
        });
        let next = Profile {
            name,
            opaque,
            endpoint,
            routes,
        };
        // An unchanged profile keeps its routes (and the stacks built for
        // them).
        tx.send_if_modified(|current| {
            if current.as_ref() == Some(&next) {
                false
            } else {
                *current = Some(next);
                true
            }
        });
    }

    fn error(&mut self, tx: &watch::Sender<Option<Profile>>, status: &tonic::Status) {
        // A target the control plane refuses outright is unknown to it;
        // any other failure (unreachable, overloaded) says nothing about
        // whether it is meshed, so the answer stays pending.
        if !matches!(
            status.code(),
            tonic::Code::NotFound | tonic::Code::InvalidArgument
        ) {
            return;
        }
        tx.send_if_modified(|p| {
            if p.is_none() {
                *p = Some(Profile::default());
                true
            } else {
                false
            }
        });
    }
}
