//! How the balanced mesh scenarios spread their load: what the client
//! sidecar's balancer held, the endpoints it had connections to, the
//! connections it opened while measured, and the requests each server
//! sidecar served; and the text that says what those scenarios are.

use super::{Run, Settings};
use serde::Serialize;
use std::fmt::Write as _;

/// What a balanced mesh run did, seen from outside the proxies.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Balance {
    /// Endpoints in the mesh file.
    pub(crate) endpoints: usize,
    /// Endpoints in the client sidecar's balancer at the end
    /// (`outbound_http_balancer_endpoints`, every state).
    pub(crate) balancer_endpoints: u64,
    /// Seconds of warm-up load before the measured load.
    pub(crate) warmup_s: f64,
    /// Endpoints the client sidecar had a connection to when the warm-up
    /// ended.
    pub(crate) connected_after_warmup: usize,
    /// ...and when the measured load ended.
    pub(crate) connected_at_end: usize,
    /// Connections the server sidecars accepted during the measured load
    /// (`tcp_open_total`): each one an mTLS handshake inside the figures.
    pub(crate) connections_opened: u64,
    /// Requests each server sidecar served during the measured load
    /// (retries included).
    pub(crate) served: Vec<u64>,
}

// === impl Balance ===

impl Balance {
    /// For a progress line.
    pub(crate) fn summary(&self) -> String {
        format!(
            "balancer {} endpoints, {} connected ({} after warm-up), {} connections accepted, served {}",
            self.balancer_endpoints,
            self.connected_at_end,
            self.connected_after_warmup,
            self.connections_opened,
            served_text(&self.served)
        )
    }

    /// Why this run's figures may not mean what they seem.
    pub(crate) fn warning(&self) -> Option<String> {
        if self.served.contains(&0) {
            Some(format!(
                "a server sidecar served no request (served {}): the load was not balanced",
                served_text(&self.served)
            ))
        } else if (self.balancer_endpoints as usize) < self.endpoints {
            Some(format!(
                "the balancer held {} of {} endpoints",
                self.balancer_endpoints, self.endpoints
            ))
        } else {
            None
        }
    }
}

/// Requests per server sidecar, as `12 / 11 / 13`.
fn served_text(served: &[u64]) -> String {
    served
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(" / ")
}

/// The balanced mesh section of the Markdown report: what the scenarios
/// are, then one line per run.
pub(crate) fn markdown(s: &mut String, settings: &Settings, runs: &[Run]) {
    let balanced: Vec<(&Run, &Balance)> = runs
        .iter()
        .filter_map(|r| r.balance.as_ref().map(|b| (r, b)))
        .collect();
    if balanced.is_empty() {
        return;
    }
    s.push_str("### Balanced mesh\n\n");
    let _ = writeln!(
        s,
        "`mesh-balanced` is `mesh` with the client sidecar following an outbound policy \
         (`LINKERD2_PROXY_POLICY_SVC_ADDR`): one route, `retry: {{limit: 2, statuses: [5xx]}}` and \
         `timeouts: {{request: 10s}}`, to the service's three endpoints, each its own server \
         sidecar with the server identity, all forwarding to the same backend. `mesh-large` \
         adds {} routes that match no request (distinct `path_prefix` values, listed before the \
         benchmark's route) and lists {} endpoints: the three sidecars, and the same three again \
         at other loopback addresses (each one an endpoint of its own to the client sidecar, with \
         its own connections). Endpoints are listed as in `mesh` (no protocol hint). Their \
         `inbound ×3` rows above are the three server sidecars summed: CPU per request (comparable \
         with `mesh`'s one `inbound`) and RSS (three processes' worth).\n",
        settings.large_routes.saturating_sub(1),
        settings.large_endpoints,
    );
    if balanced.iter().any(|(r, _)| r.scenario == "mesh-large") {
        let _ = writeln!(
            s,
            "`mesh-large` warms up while the endpoints the client sidecar has connections to \
             keep growing (by more than 1% of them in 2 s), for at most {} s (`--large-warmup`). \
             Its rows include connection churn all the same: \
             the client sidecar opens a connection (an mTLS handshake) when it picks an endpoint \
             it has none to, the first time or after the connection was closed as idle, and \
             with thousands of endpoints each one is picked seldom. The table counts the \
             connections the server sidecars accepted during the measured load.\n",
            settings.large_warmup_s
        );
    }
    s.push_str("| scenario | load | repeat | warm-up s | balancer endpoints | endpoints connected after warm-up / at end | connections accepted while measured | requests served per server sidecar |\n");
    s.push_str("|---|---|---:|---:|---:|---:|---:|---|\n");
    for (r, b) in &balanced {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.1} | {} | {} / {} | {} | {} |",
            r.scenario,
            r.load,
            r.repeat + 1,
            b.warmup_s,
            b.balancer_endpoints,
            b.connected_after_warmup,
            b.connected_at_end,
            b.connections_opened,
            served_text(&b.served)
        );
    }
    s.push('\n');
    for (r, b) in &balanced {
        if let Some(w) = b.warning() {
            let _ = writeln!(
                s,
                "**{} at {} (repeat {}): {w}.**\n",
                r.scenario,
                r.load,
                r.repeat + 1
            );
        }
    }
}
