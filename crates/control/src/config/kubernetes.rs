//! The Kubernetes parts of the mesh file: how to reach the API server
//! (shared by `identity.kubernetes`, for `TokenReview`s, and
//! `discovery.kubernetes`), and what endpoint discovery tracks and how
//! much of it.

use super::{Error, dur, invalid, parse_authority};
use serde::Deserialize;
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

/// How to reach the Kubernetes API server.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiServer {
    /// The API server's base URL, `https://host[:port]`.
    pub api_server: http::Uri,
    /// The CA certificates (PEM) the API server's certificate must chain
    /// to; read at each connection.
    pub ca_file: PathBuf,
    /// The control plane's own bearer token for the API server; read at
    /// each connection, since the kubelet rotates it.
    pub token_file: PathBuf,
    /// How long one request may take, connection included (for a watch:
    /// until its answer starts).
    pub timeout: Duration,
}

impl Default for ApiServer {
    /// What a pod sees in a cluster: the in-cluster API server and its
    /// mounted service-account files.
    fn default() -> Self {
        Self {
            api_server: http::Uri::from_static("https://kubernetes.default.svc"),
            ca_file: PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"),
            token_file: PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token"),
            timeout: Duration::from_secs(5),
        }
    }
}

/// How to reach the Kubernetes API server for `TokenReview`s.
#[derive(Clone, Debug, PartialEq)]
pub struct Kubernetes {
    /// Where the API server is and how to talk to it.
    pub api: ApiServer,
    /// The audience workload tokens must be issued for.
    pub audience: String,
}

impl Default for Kubernetes {
    /// The in-cluster API server, and Linkerd's audience.
    fn default() -> Self {
        Self {
            api: ApiServer::default(),
            audience: "identity.l5d.io".to_string(),
        }
    }
}

/// Endpoint discovery from Kubernetes: Services, their EndpointSlices and
/// the Pods these target, listed then watched, served as services
/// beside the file's own (which win on a conflict).
#[derive(Clone, Debug, PartialEq)]
pub struct Discovery {
    /// Where the API server is and how to talk to it.
    pub api: ApiServer,
    /// The cluster's DNS domain: a Service is served as
    /// `<svc>.<ns>.svc.<cluster_domain>:<port>`.
    pub cluster_domain: String,
    /// The control plane's namespace, part of the identities of meshed
    /// pods: `<sa>.<ns>.serviceaccount.identity.<control-ns>.<trust-domain>`
    /// (the trust domain is `identity.trust_domain`).
    pub control_plane_namespace: String,
    /// Services tracked at most; beyond it new ones are ignored (and
    /// counted) until a relist finds room.
    pub max_services: usize,
    /// Endpoints (addresses of EndpointSlices) tracked at most.
    pub max_endpoints: usize,
    /// Pods tracked at most (every pod of the cluster is watched, for
    /// the service account and the proxy of those the slices name).
    pub max_pods: usize,
    /// The largest watch event read (one JSON line); a larger one is
    /// skipped and counted.
    pub max_event_bytes: usize,
    /// The largest list answer (one page) read; a larger one fails the
    /// list, which is retried after a backoff.
    pub max_list_bytes: usize,
    /// How long the API server keeps a watch open before ending it (a
    /// new one then continues from where it ended); a watch that sends
    /// nothing for this long and `api.timeout` more is taken as hung.
    pub watch_timeout: Duration,
    /// The first wait after a failure; it doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// The longest wait after failures.
    pub max_backoff: Duration,
}

impl Default for Discovery {
    fn default() -> Self {
        Self {
            api: ApiServer::default(),
            cluster_domain: "cluster.local".to_string(),
            control_plane_namespace: "linkerd".to_string(),
            max_services: 5_000,
            max_endpoints: 50_000,
            max_pods: 50_000,
            max_event_bytes: 1024 * 1024,
            max_list_bytes: 64 * 1024 * 1024,
            watch_timeout: Duration::from_secs(290),
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

// === the file as written ===

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileKubernetes {
    api_server: Option<String>,
    ca_file: Option<PathBuf>,
    token_file: Option<PathBuf>,
    timeout: Option<String>,
    audience: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileDiscovery {
    kubernetes: Option<FileKubeDiscovery>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileKubeDiscovery {
    api_server: Option<String>,
    ca_file: Option<PathBuf>,
    token_file: Option<PathBuf>,
    timeout: Option<String>,
    cluster_domain: Option<String>,
    control_plane_namespace: Option<String>,
    max_services: Option<usize>,
    max_endpoints: Option<usize>,
    max_pods: Option<usize>,
    max_event_bytes: Option<usize>,
    max_list_bytes: Option<usize>,
    watch_timeout: Option<String>,
    min_backoff: Option<String>,
    max_backoff: Option<String>,
}

// === validation ===

/// The API server's settings, `at` the section they are in.
fn api_server(
    url: Option<String>,
    ca_file: Option<PathBuf>,
    token_file: Option<PathBuf>,
    timeout: &Option<String>,
    at: &str,
    dir: &Path,
) -> Result<ApiServer, Error> {
    let d = ApiServer::default();
    let api_server = match url {
        None => d.api_server,
        Some(s) => {
            let at = format!("{at}.api_server");
            let uri: http::Uri = s
                .parse()
                .map_err(|e| invalid(&at, format!("{s:?} is not a URL: {e}")))?;
            if uri.scheme_str() != Some("https") || uri.host().is_none() {
                return Err(invalid(at, format!("{s:?} is not https://host[:port]")));
            }
            if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
                return Err(invalid(at, format!("{s:?}: give no path")));
            }
            uri
        }
    };
    let timeout = dur(timeout, &format!("{at}.timeout"), d.timeout)?;
    if timeout.is_zero() {
        return Err(invalid(format!("{at}.timeout"), "must not be 0"));
    }
    Ok(ApiServer {
        api_server,
        ca_file: dir.join(ca_file.unwrap_or(d.ca_file)),
        token_file: dir.join(token_file.unwrap_or(d.token_file)),
        timeout,
    })
}

pub(super) fn kubernetes(k: FileKubernetes, dir: &Path) -> Result<Kubernetes, Error> {
    let at = "identity.kubernetes";
    let api = api_server(k.api_server, k.ca_file, k.token_file, &k.timeout, at, dir)?;
    let audience = k.audience.unwrap_or_else(|| Kubernetes::default().audience);
    if audience.trim().is_empty() {
        return Err(invalid(format!("{at}.audience"), "empty"));
    }
    Ok(Kubernetes { api, audience })
}

pub(super) fn discovery(d: FileDiscovery, dir: &Path) -> Result<Option<Discovery>, Error> {
    let Some(k) = d.kubernetes else {
        return Ok(None);
    };
    let at = "discovery.kubernetes";
    let def = Discovery::default();
    let api = api_server(k.api_server, k.ca_file, k.token_file, &k.timeout, at, dir)?;
    let name = |v: Option<String>, field: &str, default: String| -> Result<String, Error> {
        let Some(v) = v else { return Ok(default) };
        let v = v.trim_end_matches('.').to_ascii_lowercase();
        parse_authority(&format!("{v}:1")).map_err(|r| invalid(format!("{at}.{field}"), r))?;
        Ok(v)
    };
    let cluster_domain = name(k.cluster_domain, "cluster_domain", def.cluster_domain)?;
    let control_plane_namespace = name(
        k.control_plane_namespace,
        "control_plane_namespace",
        def.control_plane_namespace,
    )?;
    if control_plane_namespace.contains('.') {
        return Err(invalid(
            format!("{at}.control_plane_namespace"),
            "a namespace is one DNS label",
        ));
    }
    let positive = |v: Option<usize>, field: &str, default: usize| match v {
        None => Ok(default),
        Some(0) => Err(invalid(format!("{at}.{field}"), "must be at least 1")),
        Some(n) => Ok(n),
    };
    let positive_dur = |v: &Option<String>, field: &str, default: Duration| {
        let d = dur(v, &format!("{at}.{field}"), default)?;
        if d.is_zero() {
            return Err(invalid(format!("{at}.{field}"), "must not be 0"));
        }
        Ok(d)
    };
    let watch_timeout = positive_dur(&k.watch_timeout, "watch_timeout", def.watch_timeout)?;
    if watch_timeout < Duration::from_secs(1) {
        return Err(invalid(
            format!("{at}.watch_timeout"),
            "must be at least 1s (the API server counts it in seconds)",
        ));
    }
    let min_backoff = positive_dur(&k.min_backoff, "min_backoff", def.min_backoff)?;
    let max_backoff = positive_dur(&k.max_backoff, "max_backoff", def.max_backoff)?;
    if max_backoff < min_backoff {
        return Err(invalid(
            format!("{at}.max_backoff"),
            "must not be less than min_backoff",
        ));
    }
    Ok(Some(Discovery {
        api,
        cluster_domain,
        control_plane_namespace,
        max_services: positive(k.max_services, "max_services", def.max_services)?,
        max_endpoints: positive(k.max_endpoints, "max_endpoints", def.max_endpoints)?,
        max_pods: positive(k.max_pods, "max_pods", def.max_pods)?,
        max_event_bytes: positive(k.max_event_bytes, "max_event_bytes", def.max_event_bytes)?,
        max_list_bytes: positive(k.max_list_bytes, "max_list_bytes", def.max_list_bytes)?,
        watch_timeout,
        min_backoff,
        max_backoff,
    }))
}
