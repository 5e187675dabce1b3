//! Endpoint discovery from Kubernetes: the services of a cluster served
//! beside the mesh file's, so that a Destination `Get` for
//! `<svc>.<ns>.svc.<cluster-domain>:<port>` (or the Service's cluster
//! IP and port) streams the Service's ready endpoints as they change.
//!
//! Turned on by the mesh file's `discovery.kubernetes` section (see
//! [`Discovery`]). Three watchers ([`watch`]) list then watch Services,
//! `discovery.k8s.io/v1` EndpointSlices and Pods, cluster-wide, over the
//! same API client as `TokenReview`s ([`client`]); one task keeps what
//! they say within the configured bounds ([`state`]) and puts the
//! services it makes of it into the [`Store`] beside the file's, where
//! every stream sees them.
//!
//! An endpoint whose pod runs the proxy (a `linnet-proxy` or
//! `linkerd-proxy` container) is served as the mesh file would list it
//! by hand: with its service account's identity
//! (`<sa>.<ns>.serviceaccount.identity.<control-ns>.<trust-domain>`) and
//! the `h2` hint, or on a port its `config.linkerd.io/opaque-ports`
//! annotation names, the opaque hint with the proxy's transport port. Any
//! other endpoint is served plain. An endpoint whose pod is not known
//! (yet) is left out rather than served as plain.
//!
//! Nothing the API server does (errors, garbage, hangs, closed streams)
//! takes away what is known: only a successful list replaces it.

pub(crate) mod client;
mod objects;
mod state;
mod watch;

use self::{objects::Resource, state::State, watch::Update};
use crate::{Metrics, Store, config::Discovery};
use std::sync::Arc;
use tokio::{sync::mpsc, task::JoinHandle};

/// Runs endpoint discovery while the mesh file turns it on, restarting it
/// when its settings change and forgetting what it found when it is
/// turned off; runs until dropped.
pub async fn discover(store: Store, metrics: Metrics) {
    let mut rx = store.subscribe();
    let mut running: Option<((Discovery, String), Abort)> = None;
    loop {
        let want = {
            let mesh = rx.borrow_and_update();
            mesh.discovery
                .clone()
                .map(|d| (d, mesh.identity.trust_domain.clone()))
        };
        if want.as_ref() != running.as_ref().map(|(w, _)| w) {
            let was_on = running.take().is_some();
            match want {
                Some(w) => {
                    tracing::info!(api_server = %w.0.api.api_server, "Kubernetes endpoint discovery on");
                    let task = tokio::spawn(run(
                        w.0.clone(),
                        w.1.clone(),
                        store.clone(),
                        metrics.clone(),
                    ));
                    running = Some((w, Abort(task)));
                }
                None => {
                    if was_on {
                        tracing::info!("Kubernetes endpoint discovery off");
                    }
                    store.set_discovered(Arc::default());
                    metrics.kubernetes_tracked(0, 0);
                }
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Aborts its task when dropped.
struct Abort(JoinHandle<()>);

impl Drop for Abort {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Discovery with one set of settings: the watchers, and the state they
/// feed, published whenever it changes once every resource is listed.
async fn run(cfg: Discovery, trust_domain: String, store: Store, metrics: Metrics) {
    let cfg = Arc::new(cfg);
    let (tx, mut rx) = mpsc::channel(256);
    let _watchers: Vec<Abort> = Resource::ALL
        .iter()
        .map(|r| {
            Abort(tokio::spawn(watch::run(
                *r,
                cfg.clone(),
                tx.clone(),
                metrics.clone(),
            )))
        })
        .collect();
    drop(tx);
    let mut state = State::new(&cfg);
    let mut changed = false;
    while let Some(update) = rx.recv().await {
        changed |= apply(&mut state, update, &metrics);
        // Whatever else is already waiting goes into the same snapshot.
        while let Ok(update) = rx.try_recv() {
            changed |= apply(&mut state, update, &metrics);
        }
        if changed && state.ready() {
            changed = false;
            let discovered = state.services(&cfg, &trust_domain);
            let endpoints = discovered.services().map(|(_, s)| s.endpoints.len()).sum();
            metrics.kubernetes_tracked(discovered.len(), endpoints);
            store.set_discovered(Arc::new(discovered));
        }
    }
}

/// Applies one update; whether anything changed.
fn apply(state: &mut State, update: Update, metrics: &Metrics) -> bool {
    match update {
        Update::Listed(r, items, left_out) => {
            if let Some((limit, dropped)) = state.listed(r, items) {
                metrics.kubernetes_limit(limit.name(), dropped as u64);
                tracing::warn!(
                    resource = r.name(),
                    limit = limit.name(),
                    left_out = dropped,
                    "discovery is at its bound; objects beyond it are not served"
                );
            }
            if left_out > 0 {
                tracing::warn!(
                    resource = r.name(),
                    left_out,
                    "a list is larger than discovery's bound; objects beyond it are not served"
                );
                let limit = match r {
                    Resource::Services => "services",
                    Resource::EndpointSlices => "endpoints",
                    Resource::Pods => "pods",
                };
                metrics.kubernetes_limit(limit, left_out as u64);
            }
            true
        }
        Update::Put(key, summary) => match state.put(key, summary) {
            Ok(changed) => changed,
            Err(limit) => {
                metrics.kubernetes_limit(limit.name(), 1);
                tracing::warn!(
                    limit = limit.name(),
                    "discovery is at its bound; a changed object is not taken"
                );
                false
            }
        },
        Update::Deleted(r, key) => state.delete(r, &key),
    }
}

/// What discovery does with what an API server sends, for the fuzz
/// target: the first byte picks the resource of lines that do not name
/// one (a line may start with `S`, `E` or `P` for Services,
/// EndpointSlices or Pods) and where the stream is cut into reads, the
/// second the largest event; the rest is read as a list and then as a
/// watch stream, applied to a small bounded state. Panics when a line
/// longer than the bound gets through, a table goes over its bound or
/// miscounts it, or a service made of the state cannot be found by its
/// name, addresses and endpoints.
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz(data: &[u8]) {
    use objects::{Event, Summary};
    let [first, size, rest @ ..] = data else {
        return;
    };
    let default = Resource::ALL[usize::from(*first % 3)];
    let cfg = Discovery {
        max_services: 4,
        max_endpoints: 8,
        max_pods: 4,
        max_event_bytes: 64 * (1 + usize::from(*size)),
        ..Discovery::default()
    };
    let mut state = State::new(&cfg);
    if let Ok(page) = default.decode_list(rest) {
        let items: Vec<(objects::Key, Summary)> = page
            .items
            .into_iter()
            .filter_map(|(k, s)| Some((k, s?)))
            .collect();
        state.listed(default, items);
        state.check();
    }
    let mut lines = watch::Lines::new(cfg.max_event_bytes);
    for chunk in rest.chunks(usize::from(*first / 3).max(1)) {
        for line in lines.push(chunk).into_iter().flatten() {
            assert!(line.len() <= cfg.max_event_bytes, "a line over the bound");
            let (r, json) = match line.split_first() {
                Some((b'S', json)) => (Resource::Services, json),
                Some((b'E', json)) => (Resource::EndpointSlices, json),
                Some((b'P', json)) => (Resource::Pods, json),
                _ => (default, &line[..]),
            };
            match r.decode_event(json) {
                Ok(Event::Put(key, Some(summary), _)) => {
                    let _ = state.put(key, summary);
                }
                Ok(Event::Put(key, None, _) | Event::Deleted(key, _)) => {
                    state.delete(r, &key);
                }
                Ok(Event::Bookmark(_) | Event::Error(..)) | Err(_) => {}
            }
            state.check();
        }
    }
    let found = state.services(&cfg, "cluster.local");
    for (key, svc) in found.services() {
        assert!(
            found.service(key).is_some_and(|s| std::ptr::eq(s, svc)),
            "{key}"
        );
        for a in &svc.addresses {
            assert!(found.service_by_addr(*a).is_some(), "{a} of {key}");
        }
        for e in &svc.endpoints {
            assert!(found.endpoint(e.addr).is_some(), "{} of {key}", e.addr);
        }
    }
}
