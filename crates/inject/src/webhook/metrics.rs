//! The webhook's own metrics, under `inject_webhook_`: what it answered
//! each review, the requests it could not read, the connections it
//! refused at its cap, its namespace look-ups, and how long it took.
//!
//! Every label value is one of a fixed few (`&'static str`), never
//! something a client sent, so the families stay small.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use std::time::Duration;

/// Why a review was allowed unpatched.
const SKIPPED: [&str; 7] = [
    "not_create",
    "not_opted_in",
    "disabled",
    "already_injected",
    "host_network",
    "no_pod_spec",
    "unchanged",
];
/// Why a review could not be served.
const FAILED: [&str; 4] = [
    "malformed_review",
    "not_a_pod",
    "bad_annotation",
    "internal",
];
/// Why a request got an HTTP error.
const MALFORMED: [&str; 6] = [
    "not_a_review",
    "too_large",
    "body_timeout",
    "body_error",
    "not_found",
    "method_not_allowed",
];
/// How a namespace look-up went.
const LOOKUPS: [&str; 4] = ["cached", "fetched", "error", "timeout"];
/// Why a TLS handshake failed.
const HANDSHAKES: [&str; 2] = ["error", "timeout"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReviewLabels {
    outcome: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// The webhook's counters and its latency histogram. Cloning shares
/// them; a `Metrics` never registered still counts, unseen.
#[derive(Clone, Debug)]
pub struct Metrics {
    reviews: Family<ReviewLabels, Counter>,
    malformed: Family<ReasonLabels, Counter>,
    refused: Counter,
    connections: Gauge,
    handshakes_failed: Family<ReasonLabels, Counter>,
    namespace_lookups: Family<OutcomeLabels, Counter>,
    duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            reviews: Family::default(),
            malformed: Family::default(),
            refused: Counter::default(),
            connections: Gauge::default(),
            handshakes_failed: Family::default(),
            namespace_lookups: Family::default(),
            // 0.5 ms to about 8 s: a review is answered in well under a
            // millisecond unless the API server is asked, and the API
            // server gives up on a webhook after at most 30 s.
            duration: Histogram::new(exponential_buckets(0.0005, 2.0, 15)),
        }
    }
}

/// What the webhook answered one review.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReviewOutcome {
    /// Allowed with the patch that injects the pod.
    Injected,
    /// Allowed as it is; why.
    Skipped(&'static str),
    /// Not served (why); allowed with a warning, or denied when fail-closed.
    Failed { reason: &'static str, denied: bool },
}

// === impl Metrics ===

impl Metrics {
    /// New families, registered in `registry` under `inject_webhook_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("inject_webhook");
        r.register(
            "reviews",
            "AdmissionReviews answered, by outcome (injected, skipped, failed_allowed, failed_denied) and reason",
            m.reviews.clone(),
        );
        r.register(
            "malformed_requests",
            "Requests answered with an HTTP error instead of a review, by reason (not_a_review, too_large, body_timeout, body_error, not_found, method_not_allowed)",
            m.malformed.clone(),
        );
        r.register(
            "connections_refused",
            "New connections closed at once because max_connections were open",
            m.refused.clone(),
        );
        r.register(
            "connections",
            "Connections open (TLS handshakes included)",
            m.connections.clone(),
        );
        r.register(
            "tls_handshakes_failed",
            "TLS handshakes that failed, by reason (error, timeout)",
            m.handshakes_failed.clone(),
        );
        r.register(
            "namespace_lookups",
            "Reads of a pod's namespace for its annotations, by outcome (cached, fetched, error, timeout)",
            m.namespace_lookups.clone(),
        );
        r.register(
            "review_duration_seconds",
            "Time from a review's request to its answer",
            m.duration.clone(),
        );
        // Every series there can be, at zero, so that rates and alerts see
        // them before they first move. (`get_or_create` hands back a read
        // guard, dropped at once.)
        let mut reviews = vec![("injected", "")];
        reviews.extend(SKIPPED.map(|r| ("skipped", r)));
        reviews.extend(FAILED.map(|r| ("failed_allowed", r)));
        reviews.extend(FAILED.map(|r| ("failed_denied", r)));
        for (outcome, reason) in reviews {
            drop(m.reviews.get_or_create(&ReviewLabels { outcome, reason }));
        }
        for reason in MALFORMED {
            drop(m.malformed.get_or_create(&ReasonLabels { reason }));
        }
        for reason in HANDSHAKES {
            drop(m.handshakes_failed.get_or_create(&ReasonLabels { reason }));
        }
        for outcome in LOOKUPS {
            drop(
                m.namespace_lookups
                    .get_or_create(&OutcomeLabels { outcome }),
            );
        }
        m
    }

    pub(crate) fn review(&self, outcome: ReviewOutcome) {
        let labels = match outcome {
            ReviewOutcome::Injected => ReviewLabels {
                outcome: "injected",
                reason: "",
            },
            ReviewOutcome::Skipped(reason) => ReviewLabels {
                outcome: "skipped",
                reason,
            },
            ReviewOutcome::Failed { reason, denied } => ReviewLabels {
                outcome: if denied {
                    "failed_denied"
                } else {
                    "failed_allowed"
                },
                reason,
            },
        };
        self.reviews.get_or_create(&labels).inc();
    }

    pub(crate) fn malformed(&self, reason: &'static str) {
        self.malformed.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub(crate) fn refused(&self) -> u64 {
        self.refused.inc() + 1
    }

    /// Counts an open connection until the guard is dropped.
    pub(crate) fn connection(&self) -> ConnectionGuard {
        self.connections.inc();
        ConnectionGuard(self.connections.clone())
    }

    pub(crate) fn handshake_failed(&self, reason: &'static str) {
        self.handshakes_failed
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub(crate) fn namespace_lookup(&self, outcome: &'static str) {
        self.namespace_lookups
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    pub(crate) fn review_took(&self, elapsed: Duration) {
        self.duration.observe(elapsed.as_secs_f64());
    }
}

/// Decrements the open-connections gauge when dropped.
#[derive(Debug)]
pub(crate) struct ConnectionGuard(Gauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
