//! `deploy/control.yaml` as linnet control reads it: its mesh file is
//! valid and turns Kubernetes endpoint discovery on, and its service
//! account may read every resource discovery lists and watches.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde::Deserialize;
use std::path::Path;
use yaml_serde::Value;

fn documents() -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/control.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    yaml_serde::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> impl Iterator<Item = &'a Value> {
    docs.iter()
        .filter(move |d| d["kind"].as_str() == Some(kind))
}

#[test]
fn the_deployed_mesh_file_turns_discovery_on() {
    let docs = documents();
    let map = kind(&docs, "ConfigMap")
        .find(|m| m["metadata"]["name"].as_str() == Some("linnet-mesh"))
        .expect("the linnet-mesh ConfigMap");
    let text = map["data"]["mesh.yaml"].as_str().unwrap();
    let mesh = linnet_control::Mesh::parse(text, Path::new("/etc/linnet")).unwrap();
    let discovery = mesh.discovery.expect("discovery.kubernetes");
    assert_eq!(
        discovery.api.token_file,
        Path::new("/var/run/secrets/kubernetes.io/serviceaccount/token")
    );
    assert!(mesh.identity.kubernetes.is_some());
}

#[test]
fn linnet_control_may_read_what_discovery_watches() {
    let docs = documents();
    let bound: Vec<&str> = kind(&docs, "ClusterRoleBinding")
        .filter(|b| {
            b["subjects"].as_sequence().into_iter().flatten().any(|s| {
                s["kind"].as_str() == Some("ServiceAccount")
                    && s["name"].as_str() == Some("linnet-control")
                    && s["namespace"].as_str() == Some("linkerd")
            })
        })
        .filter_map(|b| b["roleRef"]["name"].as_str())
        .collect();
    let rules: Vec<&Value> = kind(&docs, "ClusterRole")
        .filter(|r| bound.contains(&r["metadata"]["name"].as_str().unwrap_or_default()))
        .flat_map(|r| r["rules"].as_sequence().into_iter().flatten())
        .collect();
    let strings = |v: &Value| -> Vec<String> {
        v.as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    };
    for (group, resource) in [
        ("", "services"),
        ("", "pods"),
        ("discovery.k8s.io", "endpointslices"),
    ] {
        for verb in ["get", "list", "watch"] {
            assert!(
                rules
                    .iter()
                    .any(|r| strings(&r["apiGroups"]).contains(&group.to_string())
                        && strings(&r["resources"]).contains(&resource.to_string())
                        && strings(&r["verbs"]).contains(&verb.to_string())),
                "no {verb} on {group}/{resource}"
            );
        }
    }
}
