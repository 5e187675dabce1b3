//! HTTP request and response metrics, with Linkerd's names and labels:
//! `request_total`, `response_total`, `response_latency_ms`.
//!
//! A response is classified `success` unless its status is 5xx, its gRPC
//! status is not OK, or the proxy failed it (then `error` says why).
//! Latency runs from the request's headers arriving to the response
//! stream's end, as Linkerd measures it.
//!
//! `authority`, `target_addr` and `client_id` are bounded
//! ([`crate::bounded`]), and so is `grpc_status` ([`GrpcStatus`]: 0–16, or
//! `other`). A [`LabeledMetrics`] holds its values and series while it
//! lives (a connection keeps the last one it used).

use crate::{
    AddrLabel, Direction,
    bounded::{self, Bounded, Bounds, LabelValues, Series, Text, Value},
};
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, histogram::Histogram},
    registry::Registry,
};
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

/// Linkerd's latency buckets, in milliseconds.
const LATENCY_BUCKETS_MS: [f64; 25] = [
    1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 100.0, 200.0, 300.0, 400.0, 500.0,
    1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 10000.0, 20000.0, 30000.0, 40000.0, 50000.0,
];

/// Where a request was going: the labels every HTTP metric carries.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Inbound or outbound.
    pub direction: Direction,
    /// The request's authority (`:authority` or `Host`).
    pub authority: Bounded<Text>,
    /// The original destination of the connection.
    pub target_addr: Bounded<AddrLabel>,
    /// TLS status of the connection.
    pub tls: &'static str,
    /// The client's verified mesh identity (inbound, over mTLS).
    pub client_id: Option<Bounded<Text>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResponseLabels {
    #[prometheus(flatten)]
    request: RequestLabels,
    status_code: Option<u16>,
    classification: &'static str,
    grpc_status: Option<GrpcStatus>,
    error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    #[prometheus(flatten)]
    request: RequestLabels,
    status_code: Option<u16>,
}

/// A gRPC status as a label value: its code when it is one of the 17 gRPC
/// defines (0–16), else `other`, so that an upstream cannot mint series
/// with made-up codes.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct GrpcStatus(u8);

impl GrpcStatus {
    /// `OK`.
    pub const OK: Self = Self(0);
    /// Any code outside 0–16, or a `grpc-status` that is not a number.
    pub const OTHER: Self = Self(u8::MAX);

    /// The status of `code`.
    pub fn from_code(code: i32) -> Self {
        match u8::try_from(code) {
            Ok(c) if c <= 16 => Self(c),
            _ => Self::OTHER,
        }
    }

    /// The status a `grpc-status` header or trailer value says.
    pub fn parse(value: &str) -> Self {
        value
            .trim()
            .parse::<i32>()
            .map_or(Self::OTHER, Self::from_code)
    }
}

impl EncodeLabelValue for GrpcStatus {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        if *self == Self::OTHER {
            encoder.write_str("other")
        } else {
            write!(encoder, "{}", self.0)
        }
    }
}

/// How a response ended, for `response_total`.
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq)]
pub struct ResponseOutcome {
    /// The HTTP status, if a response head was sent.
    pub status: Option<u16>,
    /// The gRPC status, for gRPC responses that carried one.
    pub grpc_status: Option<GrpcStatus>,
    /// Why the proxy failed it, if it did (empty otherwise).
    pub error: &'static str,
}

impl ResponseOutcome {
    fn classification(&self) -> &'static str {
        let failed = !self.error.is_empty()
            || self.status.is_none_or(|s| s >= 500)
            || self.grpc_status.is_some_and(|g| g != GrpcStatus::OK);
        if failed { "failure" } else { "success" }
    }
}

/// The HTTP metric families, cheap to clone.
#[derive(Clone, Debug)]
pub struct HttpMetrics(Arc<Families>);

#[derive(Debug)]
struct Families {
    requests: bounded::Family<RequestLabels, Counter>,
    responses: bounded::Family<ResponseLabels, Counter>,
    latency: bounded::Family<LatencyLabels, Histogram, fn() -> Histogram>,
    authority: LabelValues<Text>,
    target_addr: LabelValues<AddrLabel>,
    client_id: LabelValues<Text>,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS_MS)
}

impl HttpMetrics {
    /// Creates the families and registers them; their peer-chosen labels
    /// are bounded by `bounds`.
    pub fn register(registry: &mut Registry, bounds: &Bounds) -> Self {
        let m = Families {
            requests: bounds.family(),
            responses: bounds.family(),
            latency: bounds.family_with(latency_histogram as fn() -> Histogram),
            authority: bounds.values("http", "authority"),
            target_addr: bounds.values("http", "target_addr"),
            client_id: bounds.values("http", "client_id"),
        };
        registry.register(
            "request",
            "Total count of HTTP requests",
            m.requests.clone(),
        );
        registry.register(
            "response",
            "Total count of HTTP responses",
            m.responses.clone(),
        );
        registry.register(
            "response_latency_ms",
            "Elapsed times between a request's headers being received and its response stream completing",
            m.latency.clone(),
        );
        Self(Arc::new(m))
    }

    /// The metrics of requests to `authority` at `target`, resolved once
    /// and kept by whoever sends many requests with them (a connection).
    pub fn labeled(
        &self,
        direction: Direction,
        authority: &str,
        target: SocketAddr,
        tls: &'static str,
        client_id: Option<&str>,
    ) -> LabeledMetrics {
        let m = &*self.0;
        let authority_value = m.authority.get(authority);
        let target_value = m.target_addr.get(target);
        let client_id = client_id.map(|id| m.client_id.get(id));
        let labels = RequestLabels {
            direction,
            authority: authority_value.label().clone(),
            target_addr: target_value.label().clone(),
            tls,
            client_id: client_id.as_ref().map(|v| v.label().clone()),
        };
        // An authority that overflowed is remembered as asked, so that the
        // connection's next request to it reuses this label set.
        let overflowed = matches!(labels.authority, Bounded::Overflow).then(|| authority.into());
        LabeledMetrics(Arc::new(Labeled {
            requests: m.requests.get(&labels),
            metrics: self.clone(),
            labels,
            target,
            overflowed,
            responses: Mutex::new(HashMap::new()),
            _values: (authority_value, target_value, client_id),
        }))
    }
}

/// The response counter and latency histogram of one outcome.
type OutcomeSeries = (Series<Counter>, Series<Histogram>);

/// [`HttpMetrics`] for one label set: the request counter, and the
/// response counter and latency histogram of each outcome as it first
/// occurs, so that a request and its response cost no family lookups.
#[derive(Clone, Debug)]
pub struct LabeledMetrics(Arc<Labeled>);

#[derive(Debug)]
struct Labeled {
    metrics: HttpMetrics,
    labels: RequestLabels,
    /// The target asked for.
    target: SocketAddr,
    /// The authority asked for, when it became [`bounded::OVERFLOW`].
    overflowed: Option<Box<str>>,
    requests: Series<Counter>,
    /// At most one entry per outcome: statuses, bounded gRPC statuses and
    /// error classes are all finite.
    responses: Mutex<HashMap<ResponseOutcome, OutcomeSeries>>,
    /// Leases on the label values, kept from eviction while this lives.
    _values: (Value<Text>, Value<AddrLabel>, Option<Value<Text>>),
}

impl LabeledMetrics {
    /// The label set.
    pub fn labels(&self) -> &RequestLabels {
        &self.0.labels
    }

    /// Whether these are the metrics of requests to `authority` at
    /// `target` (the direction, TLS and client being the connection's).
    pub fn is_for(&self, authority: &str, target: SocketAddr) -> bool {
        let l = &self.0;
        l.target == target
            && match &l.overflowed {
                Some(asked) => **asked == *authority,
                None => l.labels.authority.is(authority),
            }
    }

    /// Counts a request.
    pub fn request(&self) {
        self.0.requests.inc();
    }

    /// Counts a response and records its latency.
    pub fn response(&self, outcome: ResponseOutcome, elapsed: Duration) {
        let mut responses = self.0.responses.lock().unwrap_or_else(|e| e.into_inner());
        let (counter, histogram) = responses.entry(outcome).or_insert_with(|| {
            let m = &self.0.metrics.0;
            let counter = m.responses.get(&ResponseLabels {
                request: self.0.labels.clone(),
                status_code: outcome.status,
                classification: outcome.classification(),
                grpc_status: outcome.grpc_status,
                error: outcome.error,
            });
            let histogram = m.latency.get(&LatencyLabels {
                request: self.0.labels.clone(),
                status_code: outcome.status,
            });
            (counter, histogram)
        });
        counter.inc();
        histogram.observe(elapsed.as_secs_f64() * 1000.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_and_encodes() {
        let mut registry = Registry::default();
        let bounds = Bounds::register(&mut registry, Default::default());
        let m = HttpMetrics::register(&mut registry, &bounds);
        let target = "10.0.0.1:80".parse().unwrap();
        let l = m.labeled(Direction::Outbound, "web:80", target, "disabled", None);
        assert!(l.is_for("web:80", target) && !l.is_for("web:81", target));
        let ok = ResponseOutcome {
            status: Some(200),
            ..Default::default()
        };
        l.request();
        l.response(ok, Duration::from_millis(3));
        l.response(
            ResponseOutcome {
                status: Some(200),
                grpc_status: Some(GrpcStatus::from_code(14)),
                error: "",
            },
            Duration::from_millis(3),
        );
        l.response(
            ResponseOutcome {
                status: Some(502),
                grpc_status: None,
                error: "connect",
            },
            Duration::from_millis(3),
        );
        // The same series, through another connection's label set.
        let other = m.labeled(Direction::Outbound, "web:80", target, "disabled", None);
        other.request();
        other.response(ok, Duration::from_millis(30));
        let text = crate::encode(&registry);
        let base = r#"direction="outbound",authority="web:80",target_addr="10.0.0.1:80",tls="disabled",client_id="""#;
        for line in [
            format!("request_total{{{base}}} 2"),
            format!(
                r#"response_total{{{base},status_code="200",classification="success",grpc_status="",error=""}} 2"#
            ),
            format!(
                r#"response_total{{{base},status_code="200",classification="failure",grpc_status="14",error=""}} 1"#
            ),
            format!(
                r#"response_total{{{base},status_code="502",classification="failure",grpc_status="",error="connect"}} 1"#
            ),
            format!(r#"response_latency_ms_count{{{base},status_code="200"}} 3"#),
            format!(r#"response_latency_ms_bucket{{le="3.0",{base},status_code="200"}} 2"#),
            format!(r#"response_latency_ms_bucket{{le="30.0",{base},status_code="200"}} 3"#),
        ] {
            assert!(text.contains(&line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn grpc_status_out_of_range_is_other() {
        for code in [0, 2, 16] {
            assert_eq!(GrpcStatus::from_code(code), GrpcStatus(code as u8));
        }
        for code in [-1, 17, 255, 256, i32::MAX, i32::MIN] {
            assert_eq!(GrpcStatus::from_code(code), GrpcStatus::OTHER);
        }
        assert_eq!(GrpcStatus::parse(" 4 "), GrpcStatus(4));
        assert_eq!(GrpcStatus::parse("99999999999"), GrpcStatus::OTHER);
        assert_eq!(GrpcStatus::parse("ok"), GrpcStatus::OTHER);

        let mut registry = Registry::default();
        let bounds = Bounds::register(&mut registry, Default::default());
        let m = HttpMetrics::register(&mut registry, &bounds);
        let l = m.labeled(
            Direction::Inbound,
            "grpc:80",
            "10.0.0.2:80".parse().unwrap(),
            "true",
            None,
        );
        // A thousand made-up codes make one series.
        for code in 17..1017 {
            l.response(
                ResponseOutcome {
                    status: Some(200),
                    grpc_status: Some(GrpcStatus::from_code(code)),
                    error: "",
                },
                Duration::from_millis(1),
            );
        }
        let text = crate::encode(&registry);
        let series: Vec<_> = text
            .lines()
            .filter(|l| l.starts_with("response_total{"))
            .collect();
        assert_eq!(series.len(), 1, "{text}");
        assert!(
            series[0].contains(r#"classification="failure",grpc_status="other""#)
                && series[0].ends_with(" 1000"),
            "{text}"
        );
    }
}
