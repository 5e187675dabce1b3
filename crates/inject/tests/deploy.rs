//! The manifests under `deploy/`: every document parses as its typed
//! Kubernetes object, strictly (a field the type does not know fails, as
//! `kubectl apply`'s validation would), and they agree with each other and
//! with `linnet inject`'s defaults.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use k8s_openapi::api::{
    admissionregistration::v1::MutatingWebhookConfiguration,
    apps::v1::Deployment,
    core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use linnet_inject::{Object, Options};
use serde::{Deserialize as _, Serialize, de::DeserializeOwned};
use std::path::PathBuf;
use yaml_serde::Value;

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy");

/// The Kubernetes objects of `deploy/`, by kind.
#[derive(Default)]
struct Manifests {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    deployments: Vec<Deployment>,
    services: Vec<Service>,
    config_maps: Vec<ConfigMap>,
    secrets: Vec<Secret>,
    webhooks: Vec<MutatingWebhookConfiguration>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    /// Every document as read, for `linnet inject`.
    values: Vec<Value>,
}

fn files() -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(DEPLOY)
        .expect("deploy/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .filter(|p| p.file_name().is_some_and(|n| n != "prometheus.yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in deploy/");
    files
}

fn manifests() -> Manifests {
    let mut m = Manifests::default();
    for file in files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for document in yaml_serde::Deserializer::from_str(&text) {
            let value = Value::deserialize(document).unwrap();
            if value.is_null() {
                continue;
            }
            let at = |kind: &str| format!("{}: {kind}", file.display());
            let api = value.get("apiVersion").and_then(Value::as_str);
            let kind = value.get("kind").and_then(Value::as_str);
            match (api, kind) {
                (Some("v1"), Some("Namespace")) => {
                    m.namespaces.push(strict(&value, &at("Namespace")))
                }
                (Some("v1"), Some("ServiceAccount")) => m
                    .service_accounts
                    .push(strict(&value, &at("ServiceAccount"))),
                (Some("apps/v1"), Some("Deployment")) => {
                    m.deployments.push(strict(&value, &at("Deployment")))
                }
                (Some("v1"), Some("Service")) => m.services.push(strict(&value, &at("Service"))),
                (Some("v1"), Some("ConfigMap")) => {
                    m.config_maps.push(strict(&value, &at("ConfigMap")))
                }
                (Some("v1"), Some("Secret")) => m.secrets.push(strict(&value, &at("Secret"))),
                (Some("admissionregistration.k8s.io/v1"), Some("MutatingWebhookConfiguration")) => {
                    m.webhooks
                        .push(strict(&value, &at("MutatingWebhookConfiguration")))
                }
                (Some("rbac.authorization.k8s.io/v1"), Some("ClusterRole")) => {
                    m.cluster_roles.push(strict(&value, &at("ClusterRole")))
                }
                (Some("rbac.authorization.k8s.io/v1"), Some("ClusterRoleBinding")) => m
                    .cluster_role_bindings
                    .push(strict(&value, &at("ClusterRoleBinding"))),
                other => panic!(
                    "{}: a kind this test does not know: {other:?}",
                    file.display()
                ),
            }
            m.values.push(value);
        }
    }
    m
}

/// Reads `value` as a `T`, failing on a field `T` does not know: the
/// approach of `linnet_inject`'s own parser (read, write back, compare).
fn strict<T: DeserializeOwned + Serialize>(value: &Value, at: &str) -> T {
    let typed: T = yaml_serde::from_value(value.clone()).unwrap_or_else(|e| panic!("{at}: {e}"));
    let written = yaml_serde::to_value(&typed).unwrap();
    if let Some(path) = lost_field(value, &written, "") {
        panic!("{at}: unknown field {path}");
    }
    typed
}

/// The first field set in `read` and missing from `written`.
fn lost_field(read: &Value, written: &Value, path: &str) -> Option<String> {
    match (read, written) {
        (Value::Mapping(r), Value::Mapping(w)) => r.iter().find_map(|(k, v)| {
            let path = format!("{path}.{}", k.as_str().unwrap_or("?"));
            match w.get(k) {
                _ if v.is_null() => None,
                None => Some(path),
                Some(w) => lost_field(v, w, &path),
            }
        }),
        (Value::Sequence(r), Value::Sequence(w)) => r
            .iter()
            .zip(w)
            .enumerate()
            .find_map(|(i, (r, w))| lost_field(r, w, &format!("{path}[{i}]"))),
        _ => None,
    }
}

#[test]
fn every_manifest_parses_as_its_typed_object() {
    let m = manifests();
    assert!(!m.namespaces.is_empty() && !m.service_accounts.is_empty());
    assert!(!m.secrets.is_empty() && !m.config_maps.is_empty());
}

#[test]
fn an_unknown_field_is_refused() {
    let value: Value = yaml_serde::from_str(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\nspec: {finalisers: []}\n",
    )
    .unwrap();
    let result = std::panic::catch_unwind(|| strict::<Namespace>(&value, "test"));
    assert!(result.is_err(), "a misspelt field must fail");
}

#[test]
fn the_services_are_where_injected_proxies_dial() {
    let m = manifests();
    let options = Options::default();
    for svc in [&options.destination, &options.policy, &options.identity] {
        // name.namespace.svc.cluster.local.:port
        let (host, port) = svc.addr.rsplit_once(':').unwrap();
        let port: i32 = port.parse().unwrap();
        let mut labels = host.split('.');
        let (name, namespace) = (labels.next().unwrap(), labels.next().unwrap());
        let service = m
            .services
            .iter()
            .find(|s| {
                s.metadata.name.as_deref() == Some(name)
                    && s.metadata.namespace.as_deref() == Some(namespace)
            })
            .unwrap_or_else(|| panic!("no Service {namespace}/{name} for {}", svc.addr));
        let spec = service.spec.as_ref().unwrap();
        assert!(
            spec.ports.iter().flatten().any(|p| p.port == port),
            "Service {name} has no port {port}"
        );
        // It selects the linnet control pod.
        let control = m
            .deployments
            .iter()
            .find(|d| d.metadata.name.as_deref() == Some("linnet-control"))
            .unwrap();
        let labels = control
            .spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();
        for (k, v) in spec.selector.iter().flatten() {
            assert_eq!(
                labels.get(k),
                Some(v),
                "Service {name} does not select linnet control"
            );
        }
    }
    assert!(
        m.namespaces
            .iter()
            .any(|n| n.metadata.name.as_deref() == Some(options.control_plane_namespace.as_str())),
        "no Namespace {}",
        options.control_plane_namespace
    );
}

#[test]
fn the_webhook_is_called_on_inject() {
    let m = manifests();
    let config = m.webhooks.first().expect("a MutatingWebhookConfiguration");
    for webhook in config.webhooks.iter().flatten() {
        let service = webhook.client_config.service.as_ref().expect("a service");
        assert_eq!(service.path.as_deref(), Some("/inject"));
        assert!(
            m.services.iter().any(
                |s| s.metadata.name.as_deref() == Some(service.name.as_str())
                    && s.metadata.namespace.as_deref() == Some(service.namespace.as_str())
            ),
            "no Service {}/{}",
            service.namespace,
            service.name
        );
        assert_eq!(webhook.failure_policy.as_deref(), Some("Ignore"));
        assert_eq!(webhook.side_effects, "None");
        assert_eq!(webhook.admission_review_versions, ["v1"]);
    }
}

#[test]
fn linnet_control_reads_the_mounted_mesh_file() {
    let m = manifests();
    let control = m
        .deployments
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some("linnet-control"))
        .unwrap();
    let pod = control.spec.template.spec.as_ref().unwrap();
    let container = &pod.containers[0];
    let config = container
        .args
        .iter()
        .flatten()
        .find_map(|a| a.strip_prefix("--config="))
        .expect("--config=FILE");
    let (dir, file) = config.rsplit_once('/').unwrap();
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|v| v.mount_path == dir)
        .unwrap_or_else(|| panic!("nothing mounted at {dir}"));
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .unwrap();
    // Through JSON: whether the name is optional changed across versions.
    let source = serde_json::to_value(&volume.config_map).unwrap();
    let map_name = source["name"].as_str().expect("a ConfigMap volume");
    let map = m
        .config_maps
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(map_name))
        .unwrap_or_else(|| panic!("no ConfigMap {map_name}"));
    let mesh = map
        .data
        .as_ref()
        .and_then(|d| d.get(file))
        .unwrap_or_else(|| panic!("{map_name} has no {file}"));
    let _: Value = yaml_serde::from_str(mesh).expect("the mesh file is YAML");
}

#[test]
fn the_demo_workloads_inject() {
    let objects = manifests()
        .values
        .into_iter()
        .map(|v| Object::from_value(v).unwrap())
        .collect();
    let injected = linnet_inject::inject(objects, &Options::default()).unwrap();
    let text = linnet_inject::to_yaml(&injected).unwrap();
    assert!(text.contains(linnet_inject::PROXY_CONTAINER));
}

#[test]
fn prometheus_keeps_the_proxies_admin_port() {
    let text = std::fs::read_to_string(format!("{DEPLOY}/prometheus.yaml")).unwrap();
    let config: Value = yaml_serde::from_str(&text).unwrap();
    let jobs = config["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs");
    let keeps_admin = jobs.iter().any(|job| {
        job["relabel_configs"]
            .as_sequence()
            .into_iter()
            .flatten()
            .any(|rule| {
                rule["action"].as_str() == Some("keep")
                    && rule["regex"]
                        .as_str()
                        .is_some_and(|r| r.contains("linkerd-admin") || r.contains("4191"))
            })
    });
    assert!(keeps_admin, "no keep rule for the admin port");

    // The control plane's pods are scraped on the port they name
    // admin-http, and both linnet control and the injector name one so.
    let keeps_control_plane = jobs.iter().any(|job| {
        let in_linkerd = job["kubernetes_sd_configs"]
            .as_sequence()
            .into_iter()
            .flatten()
            .any(|sd| {
                sd["namespaces"]["names"]
                    .as_sequence()
                    .is_some_and(|n| n.iter().any(|n| n.as_str() == Some("linkerd")))
            });
        let keeps_port = job["relabel_configs"]
            .as_sequence()
            .into_iter()
            .flatten()
            .any(|rule| {
                rule["action"].as_str() == Some("keep")
                    && rule["regex"].as_str() == Some("admin-http")
            });
        in_linkerd && keeps_port
    });
    assert!(
        keeps_control_plane,
        "no job scrapes the control plane's admin-http ports"
    );
    let m = manifests();
    for name in ["linnet-control", "linnet-injector"] {
        let d = m
            .deployments
            .iter()
            .find(|d| d.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no Deployment {name}"));
        assert_eq!(d.metadata.namespace.as_deref(), Some("linkerd"), "{name}");
        let named = d
            .spec
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers
            .iter()
            .any(|c| {
                c.ports
                    .iter()
                    .flatten()
                    .any(|p| p.name.as_deref() == Some("admin-http"))
            });
        assert!(named, "{name} names no admin-http port");
    }
}

#[test]
fn the_injector_may_read_namespaces_and_serves_its_admin_port() {
    let m = manifests();
    let injector = m
        .deployments
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some("linnet-injector"))
        .unwrap();
    let template = &injector.spec.template;
    let pod = template.spec.as_ref().unwrap();
    let sa_name = pod.service_account_name.as_deref().unwrap();
    let sa_ns = injector.metadata.namespace.as_deref().unwrap();

    // Its token is mounted, and bound to a role that may get namespaces.
    let sa = m
        .service_accounts
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(sa_name))
        .unwrap();
    assert_ne!(sa.automount_service_account_token, Some(false));
    assert_ne!(pod.automount_service_account_token, Some(false));
    let bound = m.cluster_role_bindings.iter().any(|b| {
        let subject = b.subjects.iter().flatten().any(|s| {
            s.kind == "ServiceAccount" && s.name == sa_name && s.namespace.as_deref() == Some(sa_ns)
        });
        let role = m.cluster_roles.iter().find(|r| {
            b.role_ref.kind == "ClusterRole" && r.metadata.name.as_deref() == Some(&b.role_ref.name)
        });
        let gets_namespaces = role.is_some_and(|r| {
            r.rules.iter().flatten().any(|rule| {
                rule.api_groups.iter().flatten().any(|g| g.is_empty())
                    && rule.resources.iter().flatten().any(|r| r == "namespaces")
                    && rule.verbs.iter().any(|v| v == "get")
            })
        });
        subject && gets_namespaces
    });
    assert!(
        bound,
        "no ClusterRole letting {sa_ns}/{sa_name} get namespaces"
    );

    // The admin port it listens on is the port probed and scraped.
    let container = &pod.containers[0];
    let args = container.args.iter().flatten();
    let admin = args
        .clone()
        .find_map(|a| a.strip_prefix("--admin-listen="))
        .expect("--admin-listen");
    let port: i32 = admin.rsplit_once(':').unwrap().1.parse().unwrap();
    let named = container
        .ports
        .iter()
        .flatten()
        .find(|p| p.container_port == port)
        .and_then(|p| p.name.clone())
        .expect("the admin port is a named container port");
    for (probe, path) in [
        (&container.readiness_probe, "/ready"),
        (&container.liveness_probe, "/live"),
    ] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            serde_json::to_value(&get.port).unwrap(),
            serde_json::json!(named)
        );
    }
    let annotations = template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap();
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], port.to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    assert!(
        args.clone().any(|a| a == "--namespace-annotations=on"),
        "the injector reads namespaces"
    );
}
