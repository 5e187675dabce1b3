//! A pod's namespace, read from the Kubernetes API server for its
//! annotations (the inject switch and `config.*` settings its pods
//! inherit): the AdmissionReview names the namespace, nothing more.
//!
//! One read is one `GET /api/v1/namespaces/<name>` over a fresh TLS
//! connection (HTTP/1.1), authenticated with the pod's service-account
//! token and verified with its CA, both re-read each time since the
//! kubelet rotates them; the whole read is bounded by a timeout and its
//! answer by a size. Answers are kept in a small cache, bounded in
//! entries and in age, so a burst of pods in one namespace costs one
//! read. `linnet control`'s `TokenReview` client (`crates/control`) is
//! the same shape; it is not shared, as `linnet-inject` does not depend on
//! the control plane.

use super::Metrics;
use crate::annotations;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::time::Instant;
use tokio_rustls::{TlsConnector, rustls};

/// Where a pod finds its service account's credentials.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The inherited annotations of a namespace.
pub(crate) type Annotations = Arc<BTreeMap<String, String>>;

/// How to reach the Kubernetes API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiServer {
    /// Its host: a DNS name, or an IP address (which its certificate
    /// must then name).
    pub host: String,
    /// Its port.
    pub port: u16,
    /// The PEM bundle its certificate must chain to.
    pub ca_file: PathBuf,
    /// The bearer token to present (the service account's).
    pub token_file: PathBuf,
}

/// Bounds of the look-ups and their cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupOptions {
    /// How long one read may take, connecting included; the review then
    /// goes on without the namespace. Well under the webhook's own
    /// timeout (10 s in `deploy/webhook.yaml`).
    pub timeout: Duration,
    /// How long an answer is used before the namespace is read again:
    /// how late a change to a namespace's annotations may apply.
    pub cache_ttl: Duration,
    /// The most namespaces kept; beyond it the oldest answer goes.
    pub cache_size: usize,
    /// The largest answer read, in bytes (a Namespace's annotations are
    /// at most 256 KiB).
    pub max_response: usize,
}

impl Default for LookupOptions {
    fn default() -> Self {
        LookupOptions {
            timeout: Duration::from_secs(2),
            cache_ttl: Duration::from_secs(30),
            cache_size: 512,
            max_response: 512 * 1024,
        }
    }
}

/// Why a namespace could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LookupError {
    /// No answer within [`LookupOptions::timeout`].
    #[error("the Kubernetes API server did not answer within {0:?}")]
    Timeout(Duration),
    /// Anything else, said.
    #[error("{0}")]
    Failed(String),
}

/// Reads namespaces' annotations from the API server, through a cache.
/// Cloning shares the cache.
#[derive(Clone, Debug)]
pub struct NamespaceLookup {
    api: Arc<ApiServer>,
    options: LookupOptions,
    cache: Arc<Mutex<Cache>>,
}

// === impl ApiServer ===

impl ApiServer {
    /// The API server as a pod sees it: `KUBERNETES_SERVICE_HOST` and
    /// `KUBERNETES_SERVICE_PORT` from `env`, and the service account's
    /// mounted `ca.crt` and `token`. Fails when the host is not set (not
    /// in a cluster) or the port is not a port.
    pub fn in_cluster(env: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let host = env("KUBERNETES_SERVICE_HOST")
            .filter(|h| !h.trim().is_empty())
            .ok_or("KUBERNETES_SERVICE_HOST is not set: not running in a Kubernetes pod")?;
        let port = match env("KUBERNETES_SERVICE_PORT") {
            None => 443,
            Some(p) => p
                .trim()
                .parse()
                .map_err(|_| format!("KUBERNETES_SERVICE_PORT={p:?} is not a port"))?,
        };
        Ok(ApiServer {
            host: host.trim().to_string(),
            port,
            ca_file: PathBuf::from(SERVICE_ACCOUNT_DIR).join("ca.crt"),
            token_file: PathBuf::from(SERVICE_ACCOUNT_DIR).join("token"),
        })
    }

    /// `host:port`, with brackets around an IPv6 address.
    fn authority(&self) -> String {
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("[{ip}]:{}", self.port),
            _ => format!("{}:{}", self.host, self.port),
        }
    }
}

// === impl NamespaceLookup ===

impl NamespaceLookup {
    /// Look-ups against `api`, bounded by `options`.
    pub fn new(api: ApiServer, options: LookupOptions) -> Self {
        let cache = Cache::new(options.cache_size, options.cache_ttl);
        NamespaceLookup {
            api: Arc::new(api),
            options,
            cache: Arc::new(Mutex::new(cache)),
        }
    }

    /// The inherited annotations of namespace `name`: from the cache, or
    /// read from the API server. Counts the outcome in `metrics`.
    pub(crate) async fn annotations(
        &self,
        name: &str,
        metrics: &Metrics,
    ) -> Result<Annotations, LookupError> {
        let cached = self
            .cache
            .lock()
            .ok()
            .and_then(|mut c| c.get(name, Instant::now()));
        if let Some(annotations) = cached {
            metrics.namespace_lookup("cached");
            return Ok(annotations);
        }
        let read = tokio::time::timeout(self.options.timeout, self.read(name)).await;
        let result = match read {
            Ok(r) => r,
            Err(_) => Err(LookupError::Timeout(self.options.timeout)),
        };
        match &result {
            Ok(annotations) => {
                metrics.namespace_lookup("fetched");
                if let Ok(mut cache) = self.cache.lock() {
                    cache.insert(name, annotations.clone(), Instant::now());
                }
            }
            Err(LookupError::Timeout(_)) => metrics.namespace_lookup("timeout"),
            Err(LookupError::Failed(_)) => metrics.namespace_lookup("error"),
        }
        result
    }

    /// One read, unbounded in time (the caller bounds it).
    async fn read(&self, name: &str) -> Result<Annotations, LookupError> {
        if !is_namespace_name(name) {
            return Err(fail(format!("{name:?} is not a namespace name"), ""));
        }
        let api = &self.api;
        let ca = tokio::fs::read(&api.ca_file)
            .await
            .map_err(|e| fail(format!("cannot read {}", api.ca_file.display()), e))?;
        let token = tokio::fs::read_to_string(&api.token_file)
            .await
            .map_err(|e| fail(format!("cannot read {}", api.token_file.display()), e))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&ca) {
            let cert = cert.map_err(|e| fail(api.ca_file.display(), e))?;
            roots
                .add(cert)
                .map_err(|e| fail(api.ca_file.display(), e))?;
        }
        if roots.is_empty() {
            return Err(fail(api.ca_file.display(), "no CERTIFICATE in the PEM"));
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| fail("TLS", e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let server_name = ServerName::try_from(api.host.clone())
            .map_err(|e| fail(format!("{:?} is not a server name", api.host), e))?;

        let authority = api.authority();
        let tcp = tokio::net::TcpStream::connect(&authority)
            .await
            .map_err(|e| fail(format!("cannot connect to {authority}"), e))?;
        let stream = TlsConnector::from(Arc::new(tls))
            .connect(server_name, tcp)
            .await
            .map_err(|e| fail("TLS handshake with the Kubernetes API server", e))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| fail("HTTP handshake with the Kubernetes API server", e))?;
        // Aborted when this read ends, or is dropped at its timeout: a
        // server that never answers must not keep a task and a socket.
        let _conn = AbortOnDrop(tokio::spawn(conn));
        let req = http::Request::get(format!("/api/v1/namespaces/{name}"))
            .header(http::header::HOST, &authority)
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("linnet-inject/", env!("CARGO_PKG_VERSION")),
            )
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", token.trim()),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|e| fail("cannot build the request", e))?;
        let answer = async {
            let rsp = send
                .send_request(req)
                .await
                .map_err(|e| fail(format!("reading namespace {name}"), e))?;
            let status = rsp.status();
            let body = Limited::new(rsp.into_body(), self.options.max_response)
                .collect()
                .await
                .map_err(|e| {
                    fail(
                        format!(
                            "reading the answer for namespace {name} (at most {} bytes)",
                            self.options.max_response
                        ),
                        e,
                    )
                })?
                .to_bytes();
            Ok::<_, LookupError>((status, body))
        }
        .await;
        let (status, body) = answer?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return Err(fail(
                format!("the Kubernetes API server answered GET namespace {name} with {status}"),
                text.trim(),
            ));
        }
        let namespace: Namespace = serde_json::from_slice(&body).map_err(|e| {
            fail(
                format!("the answer for namespace {name} is not a Namespace"),
                e,
            )
        })?;
        let kept = namespace
            .metadata
            .annotations
            .into_iter()
            .flatten()
            .filter(|(k, _)| annotations::inherited(k))
            .collect();
        Ok(Arc::new(kept))
    }
}

/// Aborts the task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A read that failed: `what`, because of `why`.
fn fail(what: impl std::fmt::Display, why: impl std::fmt::Display) -> LookupError {
    let why = why.to_string();
    if why.is_empty() {
        LookupError::Failed(what.to_string())
    } else {
        LookupError::Failed(format!("{what}: {why}"))
    }
}

/// A DNS label (RFC 1123), as namespace names are: nothing else goes
/// into the request's path.
fn is_namespace_name(name: &str) -> bool {
    let b = name.as_bytes();
    (1..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// As much of a `Namespace` as is read.
#[derive(serde::Deserialize)]
struct Namespace {
    metadata: Metadata,
}

#[derive(serde::Deserialize)]
struct Metadata {
    annotations: Option<BTreeMap<String, String>>,
}

// === Cache ===

/// Answers by namespace, each used for `ttl`; at most `size` of them.
#[derive(Debug)]
struct Cache {
    entries: HashMap<String, (Instant, Annotations)>,
    size: usize,
    ttl: Duration,
}

impl Cache {
    fn new(size: usize, ttl: Duration) -> Self {
        Cache {
            entries: HashMap::new(),
            size,
            ttl,
        }
    }

    /// The answer for `name`, unless it is older than the ttl (then it is
    /// dropped).
    fn get(&mut self, name: &str, now: Instant) -> Option<Annotations> {
        let (at, annotations) = self.entries.get(name)?;
        if now.saturating_duration_since(*at) < self.ttl {
            return Some(annotations.clone());
        }
        self.entries.remove(name);
        None
    }

    /// Keeps the answer for `name`, making room: first by dropping what
    /// has expired, then the oldest.
    fn insert(&mut self, name: &str, annotations: Annotations, now: Instant) {
        if self.size == 0 || self.ttl.is_zero() {
            return;
        }
        if !self.entries.contains_key(name) && self.entries.len() >= self.size {
            let ttl = self.ttl;
            self.entries
                .retain(|_, (at, _)| now.saturating_duration_since(*at) < ttl);
            while self.entries.len() >= self.size {
                let oldest = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (at, _))| *at)
                    .map(|(k, _)| k.clone());
                match oldest {
                    Some(k) => self.entries.remove(&k),
                    None => break,
                };
            }
        }
        self.entries.insert(name.to_string(), (now, annotations));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn answer(value: &str) -> Annotations {
        Arc::new(BTreeMap::from([(
            "config.linkerd.io/proxy-log-level".to_string(),
            value.to_string(),
        )]))
    }

    #[test]
    fn the_cache_is_bounded_in_age_and_size() {
        let mut cache = Cache::new(2, Duration::from_secs(30));
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        cache.insert("a", answer("a"), at(0));
        cache.insert("b", answer("b"), at(10));
        assert_eq!(cache.get("a", at(10)), Some(answer("a")));
        // A third: the oldest goes.
        cache.insert("c", answer("c"), at(10));
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get("a", at(10)), None);
        // Past its ttl an answer is gone, and dropped.
        assert_eq!(cache.get("b", at(40)), None);
        assert_eq!(cache.get("c", at(39)), Some(answer("c")));
        assert_eq!(cache.len(), 1);
        // Replacing one keeps one entry.
        cache.insert("c", answer("c2"), at(40));
        assert_eq!(cache.get("c", at(41)), Some(answer("c2")));
        assert_eq!(cache.len(), 1);
        // When full, what has expired goes before the oldest live one.
        cache.insert("d", answer("d"), at(60));
        cache.insert("e", answer("e"), at(75));
        assert_eq!(cache.get("d", at(75)), Some(answer("d")));
        assert_eq!(cache.get("c", at(75)), None);
        // A zero ttl or size keeps nothing.
        let mut none = Cache::new(2, Duration::ZERO);
        none.insert("a", answer("a"), t0);
        assert_eq!(none.len(), 0);
        let mut none = Cache::new(0, Duration::from_secs(1));
        none.insert("a", answer("a"), t0);
        assert_eq!(none.len(), 0);
    }

    #[test]
    fn namespace_names() {
        for good in ["default", "kube-system", "a", &"a".repeat(63), "ns1"] {
            assert!(is_namespace_name(good), "{good}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a.b",
            "a/b",
            "../x",
            &"a".repeat(64),
            "a b",
        ] {
            assert!(!is_namespace_name(bad), "{bad}");
        }
    }

    #[test]
    fn in_cluster_settings() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let api = ApiServer::in_cluster(env(&[
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBERNETES_SERVICE_PORT", "6443"),
        ]))
        .unwrap();
        assert_eq!(api.authority(), "10.96.0.1:6443");
        assert_eq!(
            api.token_file,
            PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token")
        );
        let api = ApiServer::in_cluster(env(&[("KUBERNETES_SERVICE_HOST", "fd00::1")])).unwrap();
        assert_eq!(api.authority(), "[fd00::1]:443");
        assert!(ApiServer::in_cluster(env(&[])).is_err());
        assert!(
            ApiServer::in_cluster(env(&[
                ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
                ("KUBERNETES_SERVICE_PORT", "https"),
            ]))
            .is_err()
        );
    }
}
