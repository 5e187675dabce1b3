//! HTTP request and response metrics, with Linkerd's names and labels:
//! `request_total`, `response_total`, `response_latency_ms`.
//!
//! A response is classified `success` unless its status is 5xx, its gRPC
//! status is not OK, or the proxy failed it (then `error` says why).
//! Latency runs from the request's headers arriving to the response
//! stream's end, as Linkerd measures it.

use crate::{AddrLabel, Direction};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
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
    pub authority: Arc<str>,
    /// The original destination of the connection.
    pub target_addr: AddrLabel,
    /// TLS status of the connection.
    pub tls: &'static str,
    /// The client's verified mesh identity (inbound, over mTLS).
    pub client_id: Option<Arc<str>>,
}

impl RequestLabels {
    /// The same, with the client's verified identity.
    pub fn with_client_id(mut self, id: Option<Arc<str>>) -> Self {
        self.client_id = id;
        self
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResponseLabels {
    #[prometheus(flatten)]
    request: RequestLabels,
    status_code: Option<u16>,
    classification: &'static str,
    grpc_status: Option<i32>,
    error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    #[prometheus(flatten)]
    request: RequestLabels,
    status_code: Option<u16>,
}

/// How a response ended, for `response_total`.
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq)]
pub struct ResponseOutcome {
    /// The HTTP status, if a response head was sent.
    pub status: Option<u16>,
    /// The gRPC status, for gRPC responses that carried one.
    pub grpc_status: Option<i32>,
    /// Why the proxy failed it, if it did (empty otherwise).
    pub error: &'static str,
}

impl ResponseOutcome {
    fn classification(&self) -> &'static str {
        let failed = !self.error.is_empty()
            || self.status.is_none_or(|s| s >= 500)
            || self.grpc_status.is_some_and(|g| g != 0);
        if failed { "failure" } else { "success" }
    }
}

/// The HTTP metric families.
#[derive(Clone, Debug)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    responses: Family<ResponseLabels, Counter>,
    latency: Family<LatencyLabels, Histogram>,
}

impl HttpMetrics {
    /// Creates the families and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            responses: Family::default(),
            latency: Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS_MS)),
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
        m
    }

    /// The label set for requests to `authority` at `target`.
    pub fn labels(
        direction: Direction,
        authority: Arc<str>,
        target: SocketAddr,
        tls: &'static str,
    ) -> RequestLabels {
        RequestLabels {
            direction,
            authority,
            target_addr: AddrLabel(target),
            tls,
            client_id: None,
        }
    }

    /// The metrics of one label set, resolved once and kept by whoever
    /// sends many requests with it (a connection).
    pub fn labeled(&self, labels: RequestLabels) -> LabeledMetrics {
        LabeledMetrics(Arc::new(Labeled {
            requests: self.requests.get_or_create_owned(&labels),
            metrics: self.clone(),
            labels,
            responses: Mutex::new(HashMap::new()),
        }))
    }

    /// Counts a request.
    pub fn request(&self, labels: &RequestLabels) {
        self.requests.get_or_create(labels).inc();
    }

    /// Counts a response and records its latency.
    pub fn response(&self, labels: &RequestLabels, outcome: ResponseOutcome, elapsed: Duration) {
        self.responses
            .get_or_create(&ResponseLabels {
                request: labels.clone(),
                status_code: outcome.status,
                classification: outcome.classification(),
                grpc_status: outcome.grpc_status,
                error: outcome.error,
            })
            .inc();
        self.latency
            .get_or_create(&LatencyLabels {
                request: labels.clone(),
                status_code: outcome.status,
            })
            .observe(elapsed.as_secs_f64() * 1000.0);
    }
}

/// [`HttpMetrics`] for one label set: the request counter, and the
/// response counter and latency histogram of each outcome as it first
/// occurs, so that a request and its response cost no family lookups.
#[derive(Clone, Debug)]
pub struct LabeledMetrics(Arc<Labeled>);

#[derive(Debug)]
struct Labeled {
    metrics: HttpMetrics,
    labels: RequestLabels,
    requests: Counter,
    responses: Mutex<HashMap<ResponseOutcome, (Counter, Histogram)>>,
}

impl LabeledMetrics {
    /// The label set.
    pub fn labels(&self) -> &RequestLabels {
        &self.0.labels
    }

    /// Counts a request.
    pub fn request(&self) {
        self.0.requests.inc();
    }

    /// Counts a response and records its latency.
    pub fn response(&self, outcome: ResponseOutcome, elapsed: Duration) {
        let mut responses = self.0.responses.lock().unwrap_or_else(|e| e.into_inner());
        let (counter, histogram) = responses.entry(outcome).or_insert_with(|| {
            let m = &self.0.metrics;
            let counter = m.responses.get_or_create_owned(&ResponseLabels {
                request: self.0.labels.clone(),
                status_code: outcome.status,
                classification: outcome.classification(),
                grpc_status: outcome.grpc_status,
                error: outcome.error,
            });
            let histogram = m.latency.get_or_create_owned(&LatencyLabels {
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
        let m = HttpMetrics::register(&mut registry);
        let l = HttpMetrics::labels(
            Direction::Outbound,
            "web:80".into(),
            "10.0.0.1:80".parse().unwrap(),
            "disabled",
        );
        m.request(&l);
        m.response(
            &l,
            ResponseOutcome {
                status: Some(200),
                ..Default::default()
            },
            Duration::from_millis(3),
        );
        m.response(
            &l,
            ResponseOutcome {
                status: Some(200),
                grpc_status: Some(14),
                error: "",
            },
            Duration::from_millis(3),
        );
        m.response(
            &l,
            ResponseOutcome {
                status: Some(502),
                grpc_status: None,
                error: "connect",
            },
            Duration::from_millis(3),
        );
        // The same series, through a kept label set.
        let kept = m.labeled(l.clone());
        kept.request();
        kept.response(
            ResponseOutcome {
                status: Some(200),
                ..Default::default()
            },
            Duration::from_millis(30),
        );
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
}
