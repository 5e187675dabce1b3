//! Prometheus metrics of the Linnet proxy.
//!
//! One [`prometheus_client`] registry per process, served by the admin
//! server at `/metrics`. Components register their own families here; the
//! names and labels follow Linkerd's so that existing dashboards and alerts
//! work unchanged. Label sets are types, and a connection resolves its label
//! set once (when it opens), never per read or write.

pub mod process;
pub mod tcp;

pub use prometheus_client;
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};
use std::fmt::Write as _;

/// The content type of [`encode`]'s output (Prometheus' text format).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A registry holding the process and build-info metrics; components add
/// theirs.
pub fn registry() -> Registry {
    let mut registry = Registry::default();
    process::register(&mut registry);
    register_build_info(&mut registry);
    registry
}

/// Encodes every metric in `registry` in Prometheus' text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::with_capacity(16 * 1024);
    // Writing into a String only fails if an encoder reports an error,
    // which ours never do; a partial page is still better than none.
    let _ = prometheus_client::encoding::text::encode_registry(&mut out, registry);
    out
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    git_sha: &'static str,
    profile: &'static str,
    vendor: &'static str,
}

/// `proxy_build_info`, as Linkerd names it: which build is running.
fn register_build_info(registry: &mut Registry) {
    let family = Family::<BuildLabels, Gauge>::default();
    family
        .get_or_create(&BuildLabels {
            version: env!("CARGO_PKG_VERSION"),
            git_sha: option_env!("LINNET_GIT_SHA").unwrap_or("unknown"),
            profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
            vendor: "linnet",
        })
        .set(1);
    registry.register("proxy_build_info", "Proxy build info", family);
}

/// Which way a connection or request travels through the proxy.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Direction {
    /// Into the pod, towards the application.
    Inbound,
    /// Out of the pod, from the application.
    Outbound,
}

impl Direction {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A socket address as a label value, written without allocating a String
/// per label set.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct AddrLabel(pub std::net::SocketAddr);

impl EncodeLabelValue for AddrLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        write!(encoder, "{}", self.0)
    }
}
