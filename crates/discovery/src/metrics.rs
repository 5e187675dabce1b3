//! The control-plane client's metrics: open watches, updates, errors,
//! reconnects and skipped data, by API; failed TLS handshakes, by service
//! and reason.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    api: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    api: &'static str,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TlsLabels {
    service: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SkipLabels {
    reason: &'static str,
}

/// Counters and gauges of the control-plane client.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    watches: Family<ApiLabels, Gauge>,
    connected: Family<ApiLabels, Gauge>,
    updates: Family<ApiLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    reconnects: Family<ApiLabels, Counter>,
    skipped: Family<SkipLabels, Counter>,
    tls_errors: Family<TlsLabels, Counter>,
    /// The DNS fallback's lookups, counted with the proxy's other name
    /// resolutions (registered by whoever gives it, see
    /// [`Metrics::with_resolutions`]).
    pub(crate) resolutions: linnet_metrics::resolve::ResolveMetrics,
}

impl Metrics {
    /// Registers the families under `control_client_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("control_client");
        r.register("watches", "Open watches by API", m.watches.clone());
        r.register(
            "watches_connected",
            "Watches whose stream to the control plane is up, by API",
            m.connected.clone(),
        );
        r.register("updates", "Updates received by API", m.updates.clone());
        r.register(
            "errors",
            "Failed watch streams by API and gRPC code (the watch reconnects; the last answer stays in use)",
            m.errors.clone(),
        );
        r.register(
            "reconnects",
            "Watch streams reopened, by API",
            m.reconnects.clone(),
        );
        r.register(
            "skipped",
            "Malformed items in control-plane answers, skipped, by reason",
            m.skipped.clone(),
        );
        r.register(
            "tls_errors",
            "Failed TLS handshakes with the control plane, by service and reason (wrong_name, unknown_ca, expired, bad_certificate, alpn, alert, protocol, io, timeout); nothing is sent in plaintext instead",
            m.tls_errors.clone(),
        );
        m
    }

    /// Counts the DNS fallback's lookups in `resolutions` (unregistered,
    /// they are not exported).
    pub fn with_resolutions(
        mut self,
        resolutions: linnet_metrics::resolve::ResolveMetrics,
    ) -> Self {
        self.resolutions = resolutions;
        self
    }

    pub(crate) fn tls_error(&self, service: &'static str, reason: &'static str) {
        self.tls_errors
            .get_or_create(&TlsLabels { service, reason })
            .inc();
    }

    pub(crate) fn watch_opened(&self, api: &'static str) -> Gauge {
        let g = self.watches.get_or_create(&ApiLabels { api }).clone();
        g.inc();
        g
    }

    pub(crate) fn connected(&self, api: &'static str) -> Gauge {
        self.connected.get_or_create(&ApiLabels { api }).clone()
    }

    pub(crate) fn update(&self, api: &'static str) {
        self.updates.get_or_create(&ApiLabels { api }).inc();
    }

    pub(crate) fn error(&self, api: &'static str, code: tonic::Code) {
        self.errors
            .get_or_create(&ErrorLabels {
                api,
                code: format!("{code:?}"),
            })
            .inc();
    }

    pub(crate) fn reconnect(&self, api: &'static str) {
        self.reconnects.get_or_create(&ApiLabels { api }).inc();
    }

    pub(crate) fn skipped(&self, reason: &'static str) {
        self.skipped.get_or_create(&SkipLabels { reason }).inc();
    }
}
