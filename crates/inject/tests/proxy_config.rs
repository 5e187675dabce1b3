//! The environment `linnet inject` gives the proxy is one the proxy
//! accepts: expanded the way the kubelet expands it, it goes through
//! `linnet_config::Config::from_env` and means what was intended.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use linnet_inject::{Object, PROXY_CONTAINER, inject};
use std::collections::BTreeMap;
use support::{objects, options};

/// The proxy container's environment as the kubelet would set it for pod
/// `web-1` of service account `web` in namespace `demo`.
fn kubelet_env(object: &Object) -> BTreeMap<String, String> {
    let Object::Deployment(d) = object else {
        panic!("not a Deployment")
    };
    let spec = d.spec.template.spec.as_ref().unwrap();
    let proxy = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == PROXY_CONTAINER)
        .unwrap();
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for var in proxy.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(v), _) => {
                // $(NAME) expands to a variable defined before it.
                let mut v = v.clone();
                for (name, value) in &env {
                    v = v.replace(&format!("$({name})"), value);
                }
                v
            }
            (None, Some(from)) => {
                if let Some(field) = &from.field_ref {
                    let value: &str = match field.field_path.as_str() {
                        "metadata.name" => "web-1",
                        "metadata.namespace" => "demo",
                        "spec.nodeName" => "node-1",
                        "spec.serviceAccountName" => "web",
                        other => panic!("unexpected field {other}"),
                    };
                    value.to_string()
                } else {
                    assert!(from.config_map_key_ref.is_some());
                    "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".to_string()
                }
            }
            (None, None) => String::new(),
        };
        env.insert(var.name.clone(), value);
    }
    env
}

#[test]
fn the_proxy_accepts_the_injected_environment() {
    let out = inject(objects("deployment"), &options(true)).unwrap();
    let env = kubelet_env(&out[0]);
    let config = linnet_config::Config::from_env(&env).unwrap();
    let identity = config.identity.as_ref().unwrap();
    assert_eq!(
        identity.local_name,
        "web.demo.serviceaccount.identity.linkerd.cluster.local"
    );
    assert_eq!(
        identity.token_file.to_str(),
        Some("/var/run/secrets/tokens/linkerd-identity-token")
    );
    assert_eq!(config.admin.listen_addr.to_string(), "0.0.0.0:4191");
    assert_eq!(
        config.control.workload.as_deref(),
        Some(r#"{"ns":"demo","pod":"web-1"}"#)
    );
    let json = config.to_json();
    assert!(json.contains("6379"), "opaque port missing: {json}");
}

#[test]
fn the_proxy_accepts_the_settings_annotations_give_it() {
    let out = inject(objects("annotated"), &options(true)).unwrap();
    let env = kubelet_env(&out[0]);
    let config = linnet_config::Config::from_env(&env).unwrap();
    assert_eq!(config.log.format, linnet_config::LogFormat::Json);
    assert_eq!(
        config.shutdown_grace_period,
        std::time::Duration::from_secs(90)
    );
    // Inherited from a namespace in the same input.
    let out = inject(objects("namespace"), &options(true)).unwrap();
    let config = linnet_config::Config::from_env(&kubelet_env(&out[2])).unwrap();
    assert_eq!(config.log.filter, "warn");
}
