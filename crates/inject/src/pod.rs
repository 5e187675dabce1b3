//! The transformation of one pod template: the init container, the proxy,
//! its volumes and annotations.

use crate::{
    Error, INIT_CONTAINER, INJECTED_ANNOTATION, Namespaces, Object, Options, Outcome,
    PROXY_CONTAINER, PROXY_VERSION_ANNOTATION, TrustAnchors, Verdict,
    annotations::{self, Annotations, Overrides},
};
use k8s_openapi::{
    api::core::v1::{
        Capabilities, ConfigMapKeySelector, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
        EnvVarSource, ExecAction, HTTPGetAction, Lifecycle, LifecycleHandler, ObjectFieldSelector,
        PodSpec, PodTemplateSpec, Probe, ProjectedVolumeSource, ResourceRequirements,
        SeccompProfile, SecurityContext, ServiceAccountTokenProjection, SleepAction, Volume,
        VolumeMount, VolumeProjection,
    },
    apimachinery::pkg::{
        api::resource::Quantity, apis::meta::v1::ObjectMeta, util::intstr::IntOrString,
    },
};
use std::collections::BTreeMap;

/// Linkerd's inbound port; its container port is named `linkerd-proxy`.
const INBOUND_PORT: u16 = 4143;
const OUTBOUND_PORT: u16 = 4140;
/// Admin port (`/metrics`, `/live`, `/ready`), named `linkerd-admin`.
const ADMIN_PORT: u16 = 4191;
/// The uid the proxy runs as, which `linnet init` exempts from redirection
/// (`config.linnet.io/proxy-uid` changes it).
const PROXY_UID: i64 = 2102;
/// Kubernetes' default `terminationGracePeriodSeconds`.
const DEFAULT_TERMINATION_GRACE_SECONDS: i64 = 30;
/// The projected service-account token the identity service checks.
const TOKEN_VOLUME: &str = "linkerd-identity-token";
const TOKEN_DIR: &str = "/var/run/secrets/tokens";
const TOKEN_AUDIENCE: &str = "identity.l5d.io";
/// An emptyDir at `/run` for the xtables lock: the init container's root
/// filesystem is read-only.
const XTABLES_VOLUME: &str = "linnet-init-xtables-lock";
const BINARY: &str = "/usr/bin/linnet";

/// Injects every workload in `object`, with the annotations of its
/// namespace from `namespaces`, noting what it did with each in `report`.
pub(crate) fn inject_object(
    object: Object,
    opts: &Options,
    namespaces: &Namespaces,
    report: &mut Vec<Outcome>,
) -> Result<Object, Error> {
    let mut injector = Injector {
        opts,
        namespaces,
        report,
    };
    let object = match object {
        Object::Pod(mut pod) => {
            let workload = name("Pod", &pod.metadata);
            match pod.spec.as_mut() {
                Some(spec) => {
                    let annotations = Annotations {
                        template: pod.metadata.annotations.as_ref(),
                        workload: None,
                        namespace: injector.namespace_of(&pod.metadata),
                        name: &workload,
                    };
                    if let Some(overrides) = injector.wanted(&annotations, spec)? {
                        inject_spec(&mut pod.metadata, spec, &overrides, opts);
                    }
                }
                None => injector.note(workload, Verdict::NoPodSpec),
            }
            Object::Pod(pod)
        }
        Object::Deployment(mut o) => {
            let workload = name("Deployment", &o.metadata);
            injector.template(workload, &o.metadata, Some(&mut o.spec.template))?;
            Object::Deployment(o)
        }
        Object::StatefulSet(mut o) => {
            let workload = name("StatefulSet", &o.metadata);
            injector.template(workload, &o.metadata, Some(&mut o.spec.template))?;
            Object::StatefulSet(o)
        }
        Object::DaemonSet(mut o) => {
            let workload = name("DaemonSet", &o.metadata);
            injector.template(workload, &o.metadata, Some(&mut o.spec.template))?;
            Object::DaemonSet(o)
        }
        Object::ReplicaSet(mut o) => {
            let workload = name("ReplicaSet", &o.metadata);
            injector.template(workload, &o.metadata, o.spec.template.as_mut())?;
            Object::ReplicaSet(o)
        }
        Object::Job(mut o) => {
            let workload = name("Job", &o.metadata);
            let template = o.spec.as_mut().map(|s| &mut s.template);
            injector.template(workload, &o.metadata, template)?;
            Object::Job(o)
        }
        Object::CronJob(mut o) => {
            let workload = name("CronJob", &o.metadata);
            let template = o.spec.job_template.spec.as_mut().map(|s| &mut s.template);
            injector.template(workload, &o.metadata, template)?;
            Object::CronJob(o)
        }
        Object::List { fields, items } => Object::List {
            fields,
            items: items
                .into_iter()
                .map(|o| inject_object(o, opts, namespaces, report))
                .collect::<Result<_, _>>()?,
        },
        other @ Object::Other(_) => other,
    };
    Ok(object)
}

/// `Kind namespace/name`, for errors and the report.
fn name(kind: &str, meta: &ObjectMeta) -> String {
    let name = meta
        .name
        .as_deref()
        .or(meta.generate_name.as_deref())
        .unwrap_or("(unnamed)");
    match &meta.namespace {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

struct Injector<'a> {
    opts: &'a Options,
    namespaces: &'a Namespaces,
    report: &'a mut Vec<Outcome>,
}

impl<'a> Injector<'a> {
    /// The name and annotations of the namespace `meta` names, if known.
    fn namespace_of(&self, meta: &ObjectMeta) -> Option<(&'a str, &'a BTreeMap<String, String>)> {
        let namespaces: &'a Namespaces = self.namespaces;
        let name = meta.namespace.as_deref()?;
        namespaces.get_key_value(name)
    }

    fn note(&mut self, workload: String, verdict: Verdict) {
        self.report.push(Outcome { workload, verdict });
    }

    fn template(
        &mut self,
        workload: String,
        workload_meta: &ObjectMeta,
        template: Option<&mut PodTemplateSpec>,
    ) -> Result<(), Error> {
        let Some((meta, spec)) = template.and_then(|t| Some((&mut t.metadata, t.spec.as_mut()?)))
        else {
            self.note(workload, Verdict::NoPodSpec);
            return Ok(());
        };
        let annotations = Annotations {
            template: meta.as_ref().and_then(|m| m.annotations.as_ref()),
            workload: workload_meta.annotations.as_ref(),
            namespace: self.namespace_of(workload_meta),
            name: &workload,
        };
        if let Some(overrides) = self.wanted(&annotations, spec)? {
            let meta = meta.get_or_insert_with(Default::default);
            inject_spec(meta, spec, &overrides, self.opts);
        }
        Ok(())
    }

    /// The overrides to inject with, or `None` when the template is to be
    /// left as it is: injection disabled, already injected (by us or by
    /// Linkerd), or a host-network pod (whose iptables are the node's).
    /// Notes the verdict either way.
    fn wanted(
        &mut self,
        annotations: &Annotations<'_>,
        spec: &PodSpec,
    ) -> Result<Option<Overrides>, Error> {
        let injected = annotations
            .template
            .is_some_and(|a| a.contains_key(INJECTED_ANNOTATION));
        let has_proxy = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .any(|c| c.name == PROXY_CONTAINER || c.name == "linkerd-proxy");
        let verdict = if injected || has_proxy {
            Verdict::AlreadyInjected
        } else if annotations.disabled() {
            Verdict::Disabled
        } else if spec.host_network == Some(true) {
            Verdict::HostNetwork
        } else {
            let overrides = annotations.overrides()?;
            let grace = spec
                .termination_grace_period_seconds
                .unwrap_or(DEFAULT_TERMINATION_GRACE_SECONDS);
            if overrides
                .wait_before_exit_seconds
                .is_some_and(|w| w > grace)
            {
                if let Some(error) = annotations.wait_too_long(grace) {
                    return Err(error);
                }
            }
            self.note(annotations.name.to_string(), Verdict::Injected);
            return Ok(Some(overrides));
        };
        self.note(annotations.name.to_string(), verdict);
        Ok(None)
    }
}

fn inject_spec(meta: &mut ObjectMeta, spec: &mut PodSpec, o: &Overrides, opts: &Options) {
    let annotations = meta.annotations.get_or_insert_with(Default::default);
    // Scrape settings the user wrote are theirs; add only what is missing.
    for (k, v) in [
        ("prometheus.io/scrape", "true".to_string()),
        ("prometheus.io/port", ADMIN_PORT.to_string()),
        ("prometheus.io/path", "/metrics".to_string()),
    ] {
        annotations.entry(k.to_string()).or_insert(v);
    }
    annotations.insert(INJECTED_ANNOTATION.to_string(), "true".to_string());
    annotations.insert(
        PROXY_VERSION_ANNOTATION.to_string(),
        opts.proxy_version.clone(),
    );

    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    volumes.push(token_volume());
    volumes.push(Volume {
        name: XTABLES_VOLUME.to_string(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    });

    let init = init_container(o, opts);
    let mut proxy = proxy_container(o, opts);
    let inits = spec.init_containers.get_or_insert_with(Vec::new);
    if opts.native_sidecar {
        // First iptables, then the proxy, then the user's init containers,
        // whose traffic is then meshed like the application's.
        proxy.restart_policy = Some("Always".to_string());
        // The next containers start once this probe passes.
        proxy.startup_probe = Some(probe("/ready", 0, 1, 120));
        inits.splice(0..0, [init, proxy]);
    } else {
        // Last, so that the user's init containers (which run before any
        // proxy) still reach the network.
        inits.push(init);
        proxy
            .lifecycle
            .get_or_insert_with(Default::default)
            .post_start = Some(LifecycleHandler {
            exec: Some(ExecAction {
                command: Some(strings(&[BINARY, "wait-ready", "--timeout=2m"])),
            }),
            ..Default::default()
        });
        if let Some(app) = spec.containers.first() {
            // `kubectl logs` and `exec` keep meaning the application.
            annotations
                .entry("kubectl.kubernetes.io/default-container".to_string())
                .or_insert_with(|| app.name.clone());
        }
        spec.containers.insert(0, proxy);
    }
}

fn token_volume() -> Volume {
    Volume {
        name: TOKEN_VOLUME.to_string(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(TOKEN_AUDIENCE.to_string()),
                    expiration_seconds: Some(86400),
                    path: TOKEN_VOLUME.to_string(),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn init_container(o: &Overrides, opts: &Options) -> Container {
    let join = |default: &str, extra: &Option<String>| match extra.as_deref() {
        Some(e) if !e.is_empty() => format!("{default},{e}"),
        _ => default.to_string(),
    };
    // Linkerd's defaults, the same as `linnet init`'s: the admin and
    // tap ports inbound, and 4567-4568 (Linkerd's multicluster gateway).
    let inbound = join("4190,4191,4567,4568", &o.skip_inbound_ports);
    let outbound = join("4567,4568", &o.skip_outbound_ports);
    let mut args = vec![
        "--incoming-proxy-port".into(),
        INBOUND_PORT.to_string(),
        "--outgoing-proxy-port".into(),
        OUTBOUND_PORT.to_string(),
        "--proxy-uid".into(),
        o.proxy_uid.unwrap_or(PROXY_UID).to_string(),
        "--inbound-ports-to-ignore".into(),
        inbound,
        "--outbound-ports-to-ignore".into(),
        outbound,
    ];
    if let Some(subnets) = o.skip_subnets.as_ref().filter(|s| !s.is_empty()) {
        args.extend(["--subnets-to-ignore".into(), subnets.clone()]);
    }
    Container {
        name: INIT_CONTAINER.to_string(),
        image: Some(image(
            &opts.init_image,
            o.init_image.as_deref(),
            o.init_image_version.as_deref(),
        )),
        command: Some(strings(&[BINARY, "init"])),
        args: Some(args),
        resources: Some(resources(&[
            ("requests", "cpu", Some("10m")),
            ("requests", "memory", Some("10Mi")),
            ("limits", "cpu", Some("100m")),
            ("limits", "memory", Some("50Mi")),
        ])),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                add: Some(strings(&["NET_ADMIN", "NET_RAW"])),
                drop: Some(strings(&["ALL"])),
            }),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            // iptables needs root (with the two capabilities above only).
            run_as_non_root: Some(false),
            run_as_user: Some(0),
            seccomp_profile: Some(runtime_default()),
            ..Default::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        volume_mounts: Some(vec![VolumeMount {
            name: XTABLES_VOLUME.to_string(),
            mount_path: "/run".to_string(),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

fn proxy_container(o: &Overrides, opts: &Options) -> Container {
    let r = &opts.resources;
    let pick = |a: &Option<String>, b: &Option<String>| a.clone().or_else(|| b.clone());
    let (cpu_req, cpu_lim) = (
        pick(&o.cpu_request, &r.cpu_request),
        pick(&o.cpu_limit, &r.cpu_limit),
    );
    let (mem_req, mem_lim) = (
        pick(&o.memory_request, &r.memory_request),
        pick(&o.memory_limit, &r.memory_limit),
    );
    Container {
        name: PROXY_CONTAINER.to_string(),
        image: Some(image(
            &opts.image,
            o.proxy_image.as_deref(),
            o.proxy_version.as_deref(),
        )),
        command: Some(strings(&[BINARY, "proxy"])),
        env: Some(env(o, opts)),
        ports: Some(vec![
            port("linkerd-proxy", INBOUND_PORT),
            port("linkerd-admin", ADMIN_PORT),
        ]),
        liveness_probe: Some(probe("/live", 10, 10, 3)),
        readiness_probe: Some(probe("/ready", 2, 10, 3)),
        resources: Some(resources(&[
            ("requests", "cpu", cpu_req.as_deref()),
            ("requests", "memory", mem_req.as_deref()),
            ("limits", "cpu", cpu_lim.as_deref()),
            ("limits", "memory", mem_lim.as_deref()),
        ])),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(strings(&["ALL"])),
                ..Default::default()
            }),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(o.proxy_uid.unwrap_or(PROXY_UID)),
            seccomp_profile: Some(runtime_default()),
            ..Default::default()
        }),
        // Holds back the proxy's SIGTERM, so that it still serves while
        // the endpoints controller and load balancers let the pod go.
        lifecycle: o
            .wait_before_exit_seconds
            .filter(|s| *s > 0)
            .map(|seconds| Lifecycle {
                pre_stop: Some(LifecycleHandler {
                    sleep: Some(SleepAction { seconds }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        volume_mounts: Some(vec![VolumeMount {
            name: TOKEN_VOLUME.to_string(),
            mount_path: TOKEN_DIR.to_string(),
            read_only: Some(true),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

/// The proxy's environment, in Linkerd's names.
fn env(o: &Overrides, opts: &Options) -> Vec<EnvVar> {
    let field = |name: &str, path: &str| EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let var = |name: &str, value: String| EnvVar {
        name: format!("LINKERD2_PROXY_{name}"),
        value: Some(value),
        ..Default::default()
    };
    let mut env = vec![
        // Downward API first: later values expand `$(_pod_ns)` and the like.
        field("_pod_name", "metadata.name"),
        field("_pod_ns", "metadata.namespace"),
        field("_pod_nodeName", "spec.nodeName"),
        field("_pod_sa", "spec.serviceAccountName"),
        var(
            "LOG",
            o.log_level
                .clone()
                .unwrap_or_else(|| opts.log_level.clone()),
        ),
        var("OUTBOUND_LISTEN_ADDR", format!("127.0.0.1:{OUTBOUND_PORT}")),
        var("INBOUND_LISTEN_ADDR", format!("0.0.0.0:{INBOUND_PORT}")),
        // Not loopback: the kubelet's probes and Prometheus come from outside.
        var("ADMIN_LISTEN_ADDR", format!("0.0.0.0:{ADMIN_PORT}")),
    ];
    if let Some(format) = &o.log_format {
        env.push(var("LOG_FORMAT", format.clone()));
    }
    if let Some(grace) = &o.shutdown_grace_period {
        env.push(var("SHUTDOWN_GRACE_PERIOD", grace.clone()));
    }
    if let Some(ports) = &o.opaque_ports {
        env.push(var(
            "INBOUND_PORTS_DISABLE_PROTOCOL_DETECTION",
            ports.clone(),
        ));
    }
    env.extend([
        var("DESTINATION_SVC_ADDR", opts.destination.addr.clone()),
        var("DESTINATION_SVC_NAME", opts.destination.name.clone()),
        var(
            "DESTINATION_CONTEXT",
            r#"{"ns":"$(_pod_ns)","nodeName":"$(_pod_nodeName)","pod":"$(_pod_name)"}"#.to_string(),
        ),
        var("POLICY_SVC_ADDR", opts.policy.addr.clone()),
        var("POLICY_SVC_NAME", opts.policy.name.clone()),
        var(
            "POLICY_WORKLOAD",
            r#"{"ns":"$(_pod_ns)","pod":"$(_pod_name)"}"#.to_string(),
        ),
        var("IDENTITY_SVC_ADDR", opts.identity.addr.clone()),
        var("IDENTITY_SVC_NAME", opts.identity.name.clone()),
        var("IDENTITY_LOCAL_NAME", opts.local_identity()),
        var("IDENTITY_TOKEN_FILE", format!("{TOKEN_DIR}/{TOKEN_VOLUME}")),
    ]);
    env.push(match &opts.trust_anchors {
        TrustAnchors::Pem(pem) => var("IDENTITY_TRUST_ANCHORS", pem.clone()),
        TrustAnchors::ConfigMap { name, key } => EnvVar {
            name: "LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS".to_string(),
            value_from: Some(EnvVarSource {
                config_map_key_ref: Some(ConfigMapKeySelector {
                    name: name.clone(),
                    key: key.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
    });
    env
}

/// The image to run: `default` (`--image`), or the annotation's `name`
/// (taking `default`'s tag when it has none), with its tag replaced by
/// `version` when that is set.
fn image(default: &str, name: Option<&str>, version: Option<&str>) -> String {
    // The name without its digest and tag, and what pinned it.
    let split = |reference: &str| -> (String, String) {
        let (rest, digest) = reference.split_once('@').unwrap_or((reference, ""));
        let (repository, tag) = annotations::split_tag(rest);
        let pin = match (tag, digest) {
            (Some(tag), "") => format!(":{tag}"),
            (Some(tag), digest) => format!(":{tag}@{digest}"),
            (None, "") => String::new(),
            (None, digest) => format!("@{digest}"),
        };
        (repository.to_string(), pin)
    };
    let (default_repository, default_pin) = split(default);
    match (name.map(split), version) {
        (None, None) => default.to_string(),
        (None, Some(tag)) => format!("{default_repository}:{tag}"),
        (Some((repository, _)), Some(tag)) => format!("{repository}:{tag}"),
        (Some((repository, pin)), None) if pin.is_empty() => {
            format!("{repository}{default_pin}")
        }
        (Some(_), None) => name.unwrap_or(default).to_string(),
    }
}

fn port(name: &str, port: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_string()),
        container_port: i32::from(port),
        ..Default::default()
    }
}

fn probe(path: &str, initial_delay: i32, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::Int(i32::from(ADMIN_PORT)),
            ..Default::default()
        }),
        initial_delay_seconds: Some(initial_delay),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(1),
        ..Default::default()
    }
}

/// Requests and limits from `(section, resource, quantity)`; unset
/// quantities are left out.
fn resources(items: &[(&str, &str, Option<&str>)]) -> ResourceRequirements {
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    for (section, resource, quantity) in items {
        if let Some(q) = quantity {
            let map = if *section == "requests" {
                &mut requests
            } else {
                &mut limits
            };
            map.insert(resource.to_string(), Quantity(q.to_string()));
        }
    }
    ResourceRequirements {
        requests: (!requests.is_empty()).then_some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        ..Default::default()
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_string(),
        ..Default::default()
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::image;

    #[test]
    fn images_from_annotations() {
        let default = "ghcr.io/linnet-proxy/linnet:0.1.0";
        let cases = [
            (None, None, default),
            (None, Some("0.2.0"), "ghcr.io/linnet-proxy/linnet:0.2.0"),
            (
                Some("registry.example:5000/linnet"),
                None,
                "registry.example:5000/linnet:0.1.0",
            ),
            (
                Some("registry.example/linnet:edge"),
                None,
                "registry.example/linnet:edge",
            ),
            (
                Some("registry.example/linnet:edge"),
                Some("1.0"),
                "registry.example/linnet:1.0",
            ),
            (
                Some("localhost:5000/linnet"),
                Some("1.0"),
                "localhost:5000/linnet:1.0",
            ),
        ];
        for (name, version, expected) in cases {
            assert_eq!(
                image(default, name, version),
                expected,
                "{name:?} {version:?}"
            );
        }
        let pinned = "ghcr.io/linnet-proxy/linnet@sha256:0123456789abcdef0123456789abcdef";
        assert_eq!(
            image(pinned, Some("mirror.example/linnet"), None),
            "mirror.example/linnet@sha256:0123456789abcdef0123456789abcdef"
        );
        assert_eq!(
            image(pinned, None, Some("0.3.0")),
            "ghcr.io/linnet-proxy/linnet:0.3.0"
        );
    }
}
