//! The `policy:` of a service as written, before validation. Unknown
//! fields are refused, so that a misspelt one is an error rather than a
//! setting silently not applied.

use crate::config::{Hint, Protocol};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct FilePolicy {
    #[serde(default)]
    pub(super) protocol: Protocol,
    #[serde(default)]
    pub(super) routes: Vec<FileRoute>,
    #[serde(default)]
    pub(super) tls_routes: Vec<FileTlsRoute>,
    #[serde(default)]
    pub(super) opaque_routes: Vec<FileOpaqueRoute>,
    pub(super) failure_accrual: Option<FileFailureAccrual>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRoute {
    pub(super) name: String,
    #[serde(default)]
    pub(super) matches: Vec<FileMatch>,
    #[serde(default)]
    pub(super) backends: Vec<FileBackend>,
    /// The first format's one timeout: the request timeout.
    pub(super) timeout: Option<String>,
    pub(super) timeouts: Option<FileTimeouts>,
    pub(super) retry: Option<FileRetry>,
    #[serde(default)]
    pub(super) filters: FileFilters,
    #[serde(default)]
    pub(super) allow_l5d_request_headers: bool,
}

/// One match: HTTP fields, or gRPC ones (`service`, and `method` as the
/// RPC method) on a gRPC route.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct FileMatch {
    pub(super) path_prefix: Option<String>,
    /// `path` is the first format's name for it.
    #[serde(alias = "path")]
    pub(super) path_exact: Option<String>,
    pub(super) path_regex: Option<String>,
    pub(super) method: Option<String>,
    #[serde(default)]
    pub(super) headers: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) header_regex: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) query_params: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) query_regex: BTreeMap<String, String>,
    pub(super) service: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileTimeouts {
    pub(super) request: Option<String>,
    pub(super) response: Option<String>,
    pub(super) idle: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRetry {
    pub(super) limit: Option<u32>,
    #[serde(default)]
    pub(super) statuses: Vec<String>,
    pub(super) grpc: Option<Vec<String>>,
    pub(super) timeout: Option<String>,
    pub(super) max_request_bytes: Option<u32>,
    pub(super) backoff: Option<FileBackoff>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileBackoff {
    pub(super) min: Option<String>,
    pub(super) max: Option<String>,
    pub(super) jitter_ratio: Option<f32>,
    #[serde(default)]
    pub(super) respect_retry_after: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct FileFilters {
    pub(super) request_headers: Option<FileHeaderEdits>,
    pub(super) response_headers: Option<FileHeaderEdits>,
    pub(super) redirect: Option<FileRedirect>,
    pub(super) fail: Option<FileFail>,
}

impl FileFilters {
    /// Whether it edits response headers, which inbound routes cannot.
    pub(in crate::config) fn edits_responses(&self) -> bool {
        self.response_headers.is_some()
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileHeaderEdits {
    #[serde(default)]
    pub(super) add: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) set: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) remove: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRedirect {
    pub(super) scheme: Option<String>,
    pub(super) host: Option<String>,
    pub(super) port: Option<u16>,
    pub(super) path_full: Option<String>,
    pub(super) path_prefix: Option<String>,
    pub(super) status: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileFail {
    pub(super) status: Option<u16>,
    pub(super) grpc_code: Option<FileGrpcCode>,
    #[serde(default)]
    pub(super) message: String,
    pub(super) ratio: Option<FileRatio>,
}

/// A gRPC status code by number or by name (`unavailable`).
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum FileGrpcCode {
    Number(u32),
    Name(String),
}

/// `"1/10"`, `"0.1"` or `0.1`.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum FileRatio {
    Number(f64),
    Text(String),
}

/// A backend: a `service`, or an `address` described like an endpoint.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileBackend {
    pub(super) service: Option<String>,
    pub(super) address: Option<String>,
    pub(super) weight: Option<u32>,
    pub(super) identity: Option<String>,
    pub(super) server_name: Option<String>,
    pub(super) protocol: Option<Hint>,
    pub(super) opaque_transport_port: Option<u16>,
    #[serde(default)]
    pub(super) labels: BTreeMap<String, String>,
    pub(super) load: Option<FileLoad>,
    pub(super) queue: Option<FileQueue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileLoad {
    pub(super) default_rtt: Option<String>,
    pub(super) decay: Option<String>,
    pub(super) penalty: Option<FilePenalty>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FilePenalty {
    pub(super) penalty: String,
    pub(super) max_retry_after: Option<String>,
    pub(super) decay: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileQueue {
    pub(super) capacity: Option<u32>,
    pub(super) failfast_timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileFailureAccrual {
    pub(super) consecutive_failures: Option<u32>,
    pub(super) success_rate: Option<FileSuccessRate>,
    pub(super) min_backoff: Option<String>,
    pub(super) max_backoff: Option<String>,
    pub(super) jitter_ratio: Option<f32>,
    pub(super) min_ready_endpoints: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileSuccessRate {
    pub(super) threshold: f64,
    pub(super) decay: Option<String>,
    pub(super) min_requests: Option<u32>,
    #[serde(default)]
    pub(super) max_consecutive_failures: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileTlsRoute {
    pub(super) name: String,
    #[serde(default)]
    pub(super) snis: Vec<String>,
    #[serde(default)]
    pub(super) backends: Vec<FileBackend>,
    #[serde(default)]
    pub(super) forbidden: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileOpaqueRoute {
    pub(super) name: String,
    #[serde(default)]
    pub(super) backends: Vec<FileBackend>,
    #[serde(default)]
    pub(super) forbidden: bool,
    pub(super) invalid: Option<String>,
}
