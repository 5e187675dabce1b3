//! Prometheus metrics of the Linnet proxy.
//!
//! One [`prometheus_client`] registry per process, served by the admin
//! server at `/metrics`. Components register their own families here; the
//! names and labels follow Linkerd's so that existing dashboards and alerts
//! work unchanged. Label sets are types, and a connection resolves its label
//! set once (when it opens), never per read or write. Label values that
//! peers choose are bounded in number and evicted when idle ([`bounded`]),
//! and escaped as the text format requires ([`write_escaped`]).

pub mod authz;
pub mod bounded;
pub mod http;
pub mod limits;
pub mod mesh;
pub mod process;
pub mod resolve;
pub mod route;
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

/// Encodes every metric in `registry` in Prometheus' text format (0.0.4).
pub fn encode(registry: &Registry) -> String {
    let mut open_metrics = String::with_capacity(16 * 1024);
    // Writing into a String only fails if an encoder reports an error,
    // which ours never do; a partial page is still better than none.
    let _ = prometheus_client::encoding::text::encode_registry(&mut open_metrics, registry);
    to_prometheus_text(&open_metrics)
}

/// Rewrites `prometheus_client`'s OpenMetrics text as Prometheus' classic
/// text format, which every scraper and `promtool` read: a counter's
/// `# HELP`/`# TYPE` lines name it with its `_total` suffix, as its samples
/// do, and `# UNIT` lines (OpenMetrics only) are dropped.
fn to_prometheus_text(open_metrics: &str) -> String {
    let mut out = String::with_capacity(open_metrics.len());
    let mut lines = open_metrics.lines().peekable();
    while let Some(line) = lines.next() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let counter_name = |type_line: &str| {
            type_line
                .strip_prefix("# TYPE ")
                .and_then(|rest| rest.strip_suffix(" counter"))
                .filter(|name| !name.ends_with("_total"))
                .map(str::to_string)
        };
        if let Some(help) = line.strip_prefix("# HELP ") {
            if let Some(name) = lines.peek().and_then(|next| counter_name(next)) {
                let text = help.strip_prefix(name.as_str()).unwrap_or(help);
                let _ = writeln!(out, "# HELP {name}_total{text}");
                let _ = writeln!(out, "# TYPE {name}_total counter");
                lines.next();
                continue;
            }
        }
        if let Some(name) = counter_name(line) {
            let _ = writeln!(out, "# TYPE {name}_total counter");
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
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

/// Writes `text` as the inside of a quoted label value in the text
/// exposition format: `\\`, `\"` and newline escaped. `prometheus_client`
/// writes what it is given as is, so every label value that can hold such
/// characters (anything a peer chose) goes through here.
pub fn write_escaped(out: &mut impl std::fmt::Write, text: &str) -> std::fmt::Result {
    let mut rest = text;
    while let Some(at) = rest.find(['\\', '"', '\n']) {
        let (plain, tail) = rest.split_at(at);
        out.write_str(plain)?;
        let mut chars = tail.chars();
        out.write_str(match chars.next() {
            Some('\\') => "\\\\",
            Some('"') => "\\\"",
            _ => "\\n",
        })?;
        rest = chars.as_str();
    }
    out.write_str(rest)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_label_values() {
        let mut out = String::new();
        write_escaped(&mut out, "a\"b\\c\nd").unwrap();
        assert_eq!(out, r#"a\"b\\c\nd"#);
        let mut out = String::new();
        write_escaped(&mut out, "plain.example:80").unwrap();
        assert_eq!(out, "plain.example:80");
    }

    #[test]
    fn counters_are_named_with_total() {
        let text = "# HELP tcp_open Total count.\n# TYPE tcp_open counter\ntcp_open_total{a=\"b\"} 1\n\
                    # HELP up Up.\n# TYPE up gauge\n# UNIT up seconds\nup 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(text),
            "# HELP tcp_open_total Total count.\n# TYPE tcp_open_total counter\ntcp_open_total{a=\"b\"} 1\n\
             # HELP up Up.\n# TYPE up gauge\nup 1\n"
        );
    }
}
