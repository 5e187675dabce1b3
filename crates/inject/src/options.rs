//! What `linnet inject` puts into a pod, with Linkerd's defaults.

/// Settings of an injection that apply to every workload; per-workload
/// annotations (and their namespaces') override the images, the proxy's
/// uid, ports and subnets, logging, shutdown and resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Image of the proxy container (runs `linnet proxy`).
    pub image: String,
    /// Image of the init container: it needs `iptables`, which the
    /// distroless proxy image has not (the Dockerfile's `init` target).
    pub init_image: String,
    /// Recorded in the `linnet.io/proxy-version` annotation.
    pub proxy_version: String,
    /// The proxy as a native sidecar (Kubernetes ≥ 1.28): Jobs complete,
    /// and the application starts only once the proxy is ready. Without
    /// it the proxy is the first regular container with a `postStart`
    /// wait, and a Job's pod never completes while the proxy runs.
    pub native_sidecar: bool,
    /// Trust domain of identities (`cluster.local`): the last part of
    /// `<sa>.<ns>.serviceaccount.identity.<control-ns>.<trust-domain>`.
    pub trust_domain: String,
    /// Namespace of the control plane (`linkerd`), part of identity names.
    pub control_plane_namespace: String,
    /// The destination service (`LINKERD2_PROXY_DESTINATION_SVC_*`).
    pub destination: ControlPlaneService,
    /// The policy service (`LINKERD2_PROXY_POLICY_SVC_*`).
    pub policy: ControlPlaneService,
    /// The identity service (`LINKERD2_PROXY_IDENTITY_SVC_*`).
    pub identity: ControlPlaneService,
    /// Where the proxy finds the trust anchors.
    pub trust_anchors: TrustAnchors,
    /// Default log filter (`LINKERD2_PROXY_LOG`).
    pub log_level: String,
    /// Default resources of the proxy container.
    pub resources: ProxyResources,
}

/// A control-plane service: where to reach it, and the identity its
/// certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlaneService {
    /// `host:port` (`*_SVC_ADDR`).
    pub addr: String,
    /// Its identity (`*_SVC_NAME`).
    pub name: String,
}

/// Where the proxy's trust anchors (PEM) come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustAnchors {
    /// A key of a ConfigMap in the pod's own namespace (a `configMapKeyRef`
    /// can name no other), e.g. distributed by trust-manager.
    ConfigMap {
        /// The ConfigMap's name (`linkerd-identity-trust-roots`).
        name: String,
        /// The key holding the PEM bundle (`ca-bundle.crt`).
        key: String,
    },
    /// The PEM itself, written into the pod spec (what Linkerd's injector
    /// does), so no ConfigMap is needed in each namespace.
    Pem(String),
}

/// Requests and limits of the proxy container; `None` leaves one unset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyResources {
    /// `requests.cpu`.
    pub cpu_request: Option<String>,
    /// `limits.cpu`; the proxy sizes its runtime from the CPU quota.
    pub cpu_limit: Option<String>,
    /// `requests.memory`.
    pub memory_request: Option<String>,
    /// `limits.memory`.
    pub memory_limit: Option<String>,
}

// === impl Options ===

impl Options {
    /// Linkerd's defaults for a control plane in `namespace` with identities
    /// in `trust_domain`, the given images, and a native sidecar.
    pub fn new(image: String, init_image: String, namespace: &str, trust_domain: &str) -> Self {
        let id = |sa: &str| {
            format!("{sa}.{namespace}.serviceaccount.identity.{namespace}.{trust_domain}")
        };
        let addr = |svc: &str, port: u16| format!("{svc}.{namespace}.svc.cluster.local.:{port}");
        Options {
            image,
            init_image,
            proxy_version: env!("CARGO_PKG_VERSION").to_string(),
            native_sidecar: true,
            trust_domain: trust_domain.to_string(),
            control_plane_namespace: namespace.to_string(),
            destination: ControlPlaneService {
                addr: addr("linkerd-dst-headless", 8086),
                name: id("linkerd-destination"),
            },
            // The policy controller runs in the destination pod, under its
            // service account.
            policy: ControlPlaneService {
                addr: addr("linkerd-policy", 8090),
                name: id("linkerd-destination"),
            },
            identity: ControlPlaneService {
                addr: addr("linkerd-identity-headless", 8080),
                name: id("linkerd-identity"),
            },
            trust_anchors: TrustAnchors::ConfigMap {
                name: "linkerd-identity-trust-roots".to_string(),
                key: "ca-bundle.crt".to_string(),
            },
            log_level: "warn,linnet=info".to_string(),
            resources: ProxyResources {
                cpu_request: Some("100m".to_string()),
                cpu_limit: Some("1".to_string()),
                memory_request: Some("20Mi".to_string()),
                memory_limit: Some("250Mi".to_string()),
            },
        }
    }

    /// The default proxy image for this version.
    pub fn default_image() -> String {
        format!("ghcr.io/linnet-proxy/linnet:{}", env!("CARGO_PKG_VERSION"))
    }

    /// The default init image for this version.
    pub fn default_init_image() -> String {
        format!(
            "ghcr.io/linnet-proxy/linnet-init:{}",
            env!("CARGO_PKG_VERSION")
        )
    }

    /// The proxy's identity, from the downward-API variables `_pod_sa` and
    /// `_pod_ns` that Kubernetes expands in the container's environment.
    pub(crate) fn local_identity(&self) -> String {
        format!(
            "$(_pod_sa).$(_pod_ns).serviceaccount.identity.{}.{}",
            self.control_plane_namespace, self.trust_domain
        )
    }
}

/// Linkerd's defaults: control plane in `linkerd`, trust domain
/// `cluster.local`, this version's images.
impl Default for Options {
    fn default() -> Self {
        Options::new(
            Options::default_image(),
            Options::default_init_image(),
            "linkerd",
            "cluster.local",
        )
    }
}
