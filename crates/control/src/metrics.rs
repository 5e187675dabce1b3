//! The control plane's own metrics: requests, watches, reloads,
//! certificates issued, its server's connections and TLS, and
//! Kubernetes endpoint discovery.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    rpc: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabels {
    resource: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceReasonLabels {
    resource: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

/// Counters and gauges of requests, watches, reloads and certificates.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    requests: Family<RpcLabels, Counter>,
    watches: Family<RpcLabels, Gauge>,
    reloads: Family<ResultLabels, Counter>,
    config_valid: Gauge,
    certify: Family<ResultLabels, Counter>,
    connections: Gauge,
    refused: Counter,
    handshake_errors: Family<ReasonLabels, Counter>,
    cert_expiry: Gauge,
    kube_lists: Family<ResourceLabels, Counter>,
    kube_events: Family<ResourceLabels, Counter>,
    kube_errors: Family<ResourceReasonLabels, Counter>,
    kube_limits: Family<LimitLabels, Counter>,
    kube_services: Gauge,
    kube_endpoints: Gauge,
}

impl Metrics {
    /// Registers the families in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("control");
        r.register("requests", "Requests by RPC", m.requests.clone());
        r.register(
            "watches",
            "Open watches (streams) by RPC",
            m.watches.clone(),
        );
        r.register(
            "config_reloads",
            "Reloads of the mesh file by result (ok, or error: the last good file stays in force)",
            m.reloads.clone(),
        );
        r.register(
            "config_last_reload_ok",
            "1 when the last reload of the mesh file succeeded, 0 when it was rejected",
            m.config_valid.clone(),
        );
        r.register(
            "certify",
            "Identity.Certify calls by result (issued, or why refused)",
            m.certify.clone(),
        );
        r.register(
            "server_connections",
            "Client connections open",
            m.connections.clone(),
        );
        r.register(
            "server_connections_refused",
            "New connections closed at once because max_connections were open",
            m.refused.clone(),
        );
        r.register(
            "server_tls_handshake_errors",
            "Failed TLS handshakes with clients off loopback, by reason (timeout, not_tls, alert, ...)",
            m.handshake_errors.clone(),
        );
        r.register(
            "server_certificate_expiration_timestamp_seconds",
            "When the control plane's own TLS certificate expires (Unix time, seconds)",
            m.cert_expiry.clone(),
        );
        r.register(
            "kubernetes_lists",
            "Successful lists of a Kubernetes resource by endpoint discovery (the first, and every relist)",
            m.kube_lists.clone(),
        );
        r.register(
            "kubernetes_events",
            "Watch events of a Kubernetes resource that endpoint discovery applied",
            m.kube_events.clone(),
        );
        r.register(
            "kubernetes_errors",
            "Failed lists and watches of a Kubernetes resource by reason (status, decode, timeout, stream, connect, too_large, gone, setup); what is known stays",
            m.kube_errors.clone(),
        );
        r.register(
            "kubernetes_limit",
            "Objects or events endpoint discovery did not take because a bound was hit (services, endpoints, pods, event_bytes, list_bytes)",
            m.kube_limits.clone(),
        );
        r.register(
            "kubernetes_services",
            "Services (name and port) served from Kubernetes endpoint discovery",
            m.kube_services.clone(),
        );
        r.register(
            "kubernetes_endpoints",
            "Endpoints of the services served from Kubernetes endpoint discovery",
            m.kube_endpoints.clone(),
        );
        m.config_valid.set(1);
        m
    }

    /// Counts an open connection until the guard is dropped.
    pub(crate) fn connection_opened(&self) -> WatchGuard {
        self.connections.inc();
        WatchGuard(self.connections.clone())
    }

    pub(crate) fn connection_refused(&self) {
        self.refused.inc();
    }

    pub(crate) fn handshake_failed(&self, reason: &'static str) {
        self.handshake_errors
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub(crate) fn server_certificate(&self, expires: i64) {
        self.cert_expiry.set(expires);
    }

    /// Counts a request to `rpc`.
    pub(crate) fn request(&self, rpc: &'static str) {
        self.requests.get_or_create(&RpcLabels { rpc }).inc();
    }

    /// Counts an open watch on `rpc` until the guard is dropped.
    pub(crate) fn watch(&self, rpc: &'static str) -> WatchGuard {
        let g = self.watches.get_or_create(&RpcLabels { rpc }).clone();
        g.inc();
        WatchGuard(g)
    }

    pub(crate) fn reloaded(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reloads.get_or_create(&ResultLabels { result }).inc();
        self.config_valid.set(i64::from(ok));
    }

    pub(crate) fn certified(&self, result: &'static str) {
        self.certify.get_or_create(&ResultLabels { result }).inc();
    }

    pub(crate) fn kubernetes_listed(&self, resource: &'static str) {
        self.kube_lists
            .get_or_create(&ResourceLabels { resource })
            .inc();
    }

    pub(crate) fn kubernetes_event(&self, resource: &'static str) {
        self.kube_events
            .get_or_create(&ResourceLabels { resource })
            .inc();
    }

    pub(crate) fn kubernetes_error(&self, resource: &'static str, reason: &'static str) {
        self.kube_errors
            .get_or_create(&ResourceReasonLabels { resource, reason })
            .inc();
    }

    /// Counts `n` objects or events not taken because of `limit`.
    pub(crate) fn kubernetes_limit(&self, limit: &'static str, n: u64) {
        self.kube_limits
            .get_or_create(&LimitLabels { limit })
            .inc_by(n);
    }

    pub(crate) fn kubernetes_tracked(&self, services: usize, endpoints: usize) {
        self.kube_services
            .set(i64::try_from(services).unwrap_or(i64::MAX));
        self.kube_endpoints
            .set(i64::try_from(endpoints).unwrap_or(i64::MAX));
    }
}

/// Decrements an open-watch (or open-connection) gauge when dropped.
#[derive(Debug)]
pub(crate) struct WatchGuard(Gauge);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
