//! Shared by the tests: the golden inputs, fixed options, a way to
//! reach every pod template of an object; the webhook on loopback
//! (`webhook`) and a stand-in Kubernetes API server (`api_server`).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

pub mod api_server;
pub mod webhook;

use k8s_openapi::{api::core::v1::PodSpec, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use linnet_inject::{Object, Options};
use std::path::PathBuf;

/// The inputs under `tests/golden/input`, by file stem.
pub const INPUTS: &[&str] = &[
    "pod",
    "deployment",
    "statefulset",
    "daemonset",
    "replicaset",
    "job",
    "cronjob",
    "list",
    "mixed",
    "annotated",
    "namespace",
];

/// `tests/golden`.
pub fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// The text of an input.
pub fn input(name: &str) -> String {
    std::fs::read_to_string(golden_dir().join("input").join(format!("{name}.yaml"))).unwrap()
}

/// The objects of an input.
pub fn objects(name: &str) -> Vec<Object> {
    linnet_inject::parse(&input(name)).unwrap()
}

/// Options that do not change with the crate's version.
pub fn options(native_sidecar: bool) -> Options {
    let mut o = Options::new(
        "ghcr.io/linnet-proxy/linnet:0.0.0-test".to_string(),
        "ghcr.io/linnet-proxy/linnet-init:0.0.0-test".to_string(),
        "linkerd",
        "cluster.local",
    );
    o.proxy_version = "0.0.0-test".to_string();
    o.native_sidecar = native_sidecar;
    o
}

/// Calls `f` with the metadata and spec of every pod template in `object`
/// (a Pod's own, those of a List's items).
pub fn each_template(
    object: &mut Object,
    f: &mut dyn FnMut(&mut Option<ObjectMeta>, &mut PodSpec),
) {
    let mut template = |t: &mut k8s_openapi::api::core::v1::PodTemplateSpec| {
        if let Some(spec) = t.spec.as_mut() {
            f(&mut t.metadata, spec);
        }
    };
    match object {
        Object::Pod(pod) => {
            if let Some(spec) = pod.spec.as_mut() {
                let mut meta = Some(std::mem::take(&mut pod.metadata));
                f(&mut meta, spec);
                pod.metadata = meta.unwrap_or_default();
            }
        }
        Object::Deployment(o) => template(&mut o.spec.template),
        Object::StatefulSet(o) => template(&mut o.spec.template),
        Object::DaemonSet(o) => template(&mut o.spec.template),
        Object::ReplicaSet(o) => {
            if let Some(t) = o.spec.template.as_mut() {
                template(t);
            }
        }
        Object::Job(o) => {
            if let Some(s) = o.spec.as_mut() {
                template(&mut s.template);
            }
        }
        Object::CronJob(o) => {
            if let Some(s) = o.spec.job_template.spec.as_mut() {
                template(&mut s.template);
            }
        }
        Object::List { items, .. } => {
            for item in items {
                each_template(item, f);
            }
        }
        Object::Other(_) => {}
    }
}
