//! `tls_fail_closed_total`: connections and requests to meshed peers that
//! were refused because mTLS proving the peer's identity could not be
//! done, by which part of the rule failed (`no_certificate`,
//! `bad_identity`, `handshake`, `discovery_timeout`, ...). Every such
//! refusal is one of these, never a plaintext connection.

use crate::Direction;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailLabels {
    direction: Direction,
    reason: &'static str,
}

/// The fail-closed counter.
#[derive(Clone, Debug, Default)]
pub struct MeshMetrics {
    fail_closed: Family<FailLabels, Counter>,
}

impl MeshMetrics {
    /// Creates the family and registers it.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "tls_fail_closed",
            "Total count of connections or requests to meshed peers refused because mTLS proving the peer's identity could not be done",
            m.fail_closed.clone(),
        );
        m
    }

    /// Counts one refusal; `reason` is a fixed set of values.
    pub fn fail_closed(&self, direction: Direction, reason: &'static str) {
        self.fail_closed
            .get_or_create(&FailLabels { direction, reason })
            .inc();
    }
}
