//! `linnet inject`: puts the Linnet sidecar into Kubernetes workloads.
//!
//! This sits before the request path: it rewrites a workload's pod
//! template so that, once scheduled, the pod's TCP goes through a Linnet
//! proxy. Per pod template it adds
//! - the `linnet-init` init container, which runs `linnet init` once to
//!   program the pod's iptables (`NET_ADMIN`, `NET_RAW`);
//! - the `linnet-proxy` container, as a native sidecar (an init container
//!   with `restartPolicy: Always`, Kubernetes ≥ 1.28) or, with
//!   [`Options::native_sidecar`] off, as the first regular container with a
//!   `postStart` hook that waits for the proxy to be ready;
//! - the proxy's environment under Linkerd's names (`LINKERD2_PROXY_*`),
//!   so a Linkerd control plane can drive it: identity from the pod's
//!   service account through the downward API, a projected token, trust
//!   anchors, the control plane's addresses and names;
//! - Prometheus scrape annotations for the admin port, and annotations
//!   that mark the template injected.
//!
//! [`inject`] is pure (objects in, objects out, no I/O), so the command
//! line and the admission webhook ([`webhook`]) share it; [`parse`] and [`to_yaml`] read
//! and write multi-document YAML. Objects are handled as `k8s-openapi`
//! types, never as string templates; kinds other than workloads pass
//! through as they were read.

mod annotations;
mod error;
mod namespace;
mod object;
mod options;
mod pod;
pub mod webhook;

pub use error::Error;
pub use namespace::Namespaces;
pub use object::{Object, parse, to_yaml};
pub use options::{ControlPlaneService, Options, ProxyResources, TrustAnchors};

/// Annotation marking a pod template as injected (value `"true"`); a
/// template that carries it is left as it is, which makes injection
/// idempotent.
pub const INJECTED_ANNOTATION: &str = "linnet.io/injected";
/// Annotation recording the version of `linnet inject` that injected the
/// template.
pub const PROXY_VERSION_ANNOTATION: &str = "linnet.io/proxy-version";
/// Name of the proxy container.
pub const PROXY_CONTAINER: &str = "linnet-proxy";
/// Name of the init container that programs iptables.
pub const INIT_CONTAINER: &str = "linnet-init";

/// Injects the proxy into every workload among `objects` (including the
/// items of `List` objects), leaving other kinds, workloads annotated
/// `linnet.io/inject: disabled` (or Linkerd's `linkerd.io/inject`),
/// host-network pods, and templates already injected as they are.
/// A `Namespace` among `objects` lends its inject and `config.*`
/// annotations to the workloads in it ([`Namespaces::from_objects`]).
///
/// Fails, naming the workload, on a per-workload annotation whose value
/// cannot be used (a malformed port list or resource quantity).
pub fn inject(objects: Vec<Object>, options: &Options) -> Result<Vec<Object>, Error> {
    inject_with_report(objects, options).map(|(objects, _)| objects)
}

/// [`inject`], also saying what it did with each workload, in order.
pub fn inject_with_report(
    objects: Vec<Object>,
    options: &Options,
) -> Result<(Vec<Object>, Vec<Outcome>), Error> {
    let namespaces = Namespaces::from_objects(&objects);
    inject_in(objects, options, &namespaces)
}

/// [`inject_with_report`], with the namespaces' annotations given rather
/// than found among `objects` (the webhook reads them from the API
/// server).
pub fn inject_in(
    objects: Vec<Object>,
    options: &Options,
    namespaces: &Namespaces,
) -> Result<(Vec<Object>, Vec<Outcome>), Error> {
    let mut report = Vec::new();
    let objects = objects
        .into_iter()
        .map(|o| pod::inject_object(o, options, namespaces, &mut report))
        .collect::<Result<_, _>>()?;
    Ok((objects, report))
}

/// What [`inject_with_report`] did with one workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The workload, as `Kind namespace/name`.
    pub workload: String,
    /// Injected, or why not.
    pub verdict: Verdict,
}

/// Whether a workload was injected, and if not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The proxy was added.
    Injected,
    /// Annotated `linnet.io/inject: disabled` (or `linkerd.io/inject`),
    /// itself or through its namespace.
    Disabled,
    /// Injected already, by `linnet inject` or by Linkerd.
    AlreadyInjected,
    /// A host-network pod: its iptables would be the node's.
    HostNetwork,
    /// No pod spec to inject into.
    NoPodSpec,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Injected => "injected",
            Verdict::Disabled => "skipped: injection disabled by annotation",
            Verdict::AlreadyInjected => "skipped: already injected",
            Verdict::HostNetwork => "skipped: uses the host network",
            Verdict::NoPodSpec => "skipped: no pod spec",
        })
    }
}
