//! Properties of `linnet_inject::inject` over the golden inputs and a few
//! hand-written cases.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use k8s_openapi::api::core::v1::{Container, PodSpec};
use linnet_inject::{
    Error, INIT_CONTAINER, INJECTED_ANNOTATION, Object, PROXY_CONTAINER, TrustAnchors, inject,
    parse, to_yaml,
};
use support::{INPUTS, each_template, objects, options};

/// Annotations injection adds (the scrape ones only where missing).
const ADDED_ANNOTATIONS: &[&str] = &[
    INJECTED_ANNOTATION,
    linnet_inject::PROXY_VERSION_ANNOTATION,
    "prometheus.io/scrape",
    "prometheus.io/port",
    "prometheus.io/path",
    "kubectl.kubernetes.io/default-container",
];

fn templates(object: &Object) -> Vec<PodSpec> {
    let mut specs = Vec::new();
    each_template(&mut object.clone(), &mut |_, spec| specs.push(spec.clone()));
    specs
}

fn proxy_of(spec: &PodSpec) -> Option<&Container> {
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.name == PROXY_CONTAINER)
}

fn env<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)?
        .value
        .as_deref()
}

#[test]
fn injecting_twice_is_injecting_once() {
    for native in [true, false] {
        for name in INPUTS {
            let once = inject(objects(name), &options(native)).unwrap();
            let twice = inject(once.clone(), &options(native)).unwrap();
            assert_eq!(once, twice, "{name}");
            // And through YAML, as `linnet inject | linnet inject` would.
            let reread = parse(&to_yaml(&once).unwrap()).unwrap();
            assert_eq!(inject(reread, &options(native)).unwrap(), once, "{name}");
        }
    }
}

/// Removes what injection adds; applied to both sides, what remains must
/// be equal field for field.
fn strip(object: &mut Object) {
    each_template(object, &mut |meta, spec| {
        if let Some(m) = meta {
            if let Some(a) = m.annotations.as_mut() {
                for k in ADDED_ANNOTATIONS {
                    a.remove(*k);
                }
                if a.is_empty() {
                    m.annotations = None;
                }
            }
            if *m == Default::default() {
                *meta = None;
            }
        }
        let ours = |name: &str| name == PROXY_CONTAINER || name == INIT_CONTAINER;
        spec.containers.retain(|c| !ours(&c.name));
        if let Some(c) = spec.init_containers.as_mut() {
            c.retain(|c| !ours(&c.name));
            if c.is_empty() {
                spec.init_containers = None;
            }
        }
        if let Some(v) = spec.volumes.as_mut() {
            v.retain(|v| {
                v.name != "linkerd-identity-token" && v.name != "linnet-init-xtables-lock"
            });
            if v.is_empty() {
                spec.volumes = None;
            }
        }
    });
}

#[test]
fn every_other_field_is_kept() {
    for native in [true, false] {
        for name in INPUTS {
            let mut before = objects(name);
            let mut after = inject(before.clone(), &options(native)).unwrap();
            if *name != "mixed" {
                assert_ne!(before, after, "{name}: nothing injected");
            }
            before.iter_mut().for_each(strip);
            after.iter_mut().for_each(strip);
            assert_eq!(before, after, "{name}");
        }
    }
}

#[test]
fn every_workload_is_injected_and_typed() {
    for native in [true, false] {
        // `mixed` and `namespace` hold other kinds and disabled workloads.
        for name in INPUTS
            .iter()
            .filter(|n| !["mixed", "namespace"].contains(*n))
        {
            let out = inject(objects(name), &options(native)).unwrap();
            let uid = if *name == "annotated" { 2103 } else { 2102 };
            for object in &out {
                for spec in templates(object) {
                    let proxy = proxy_of(&spec).expect(name);
                    assert_eq!(
                        proxy.security_context.as_ref().unwrap().run_as_user,
                        Some(uid)
                    );
                    let inits = spec.init_containers.as_ref().unwrap();
                    assert!(inits.iter().any(|c| c.name == INIT_CONTAINER), "{name}");
                }
            }
            // Written and read back, each is its typed object again.
            let reread = parse(&to_yaml(&out).unwrap()).unwrap();
            assert_eq!(reread, out, "{name}");
            assert!(
                !reread.iter().any(|o| matches!(o, Object::Other(_))),
                "{name}"
            );
        }
    }
}

#[test]
fn a_job_gets_a_native_sidecar() {
    let out = inject(objects("job"), &options(true)).unwrap();
    let spec = &templates(&out[0])[0];
    let inits = spec.init_containers.as_ref().unwrap();
    let names: Vec<_> = inits.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, [INIT_CONTAINER, PROXY_CONTAINER]);
    assert_eq!(inits[1].restart_policy.as_deref(), Some("Always"));
    assert!(inits[1].startup_probe.is_some());
    assert!(spec.containers.iter().all(|c| c.name != PROXY_CONTAINER));
}

#[test]
fn without_native_sidecars_the_proxy_is_the_first_container() {
    let out = inject(objects("deployment"), &options(false)).unwrap();
    let spec = &templates(&out[0])[0];
    let proxy = &spec.containers[0];
    assert_eq!(proxy.name, PROXY_CONTAINER);
    assert_eq!(proxy.restart_policy, None);
    let hook = proxy
        .lifecycle
        .as_ref()
        .unwrap()
        .post_start
        .as_ref()
        .unwrap();
    let command = hook.exec.as_ref().unwrap().command.as_ref().unwrap();
    assert_eq!(command[1], "wait-ready");
    // The user's init container runs before iptables is set up.
    let inits = spec.init_containers.as_ref().unwrap();
    assert_eq!(inits.last().unwrap().name, INIT_CONTAINER);
}

#[test]
fn annotations_override_settings_in_either_spelling() {
    let out = inject(objects("deployment"), &options(true)).unwrap();
    let spec = &templates(&out[0])[0];
    let proxy = proxy_of(spec).unwrap();
    // config.linkerd.io/opaque-ports on the template.
    assert_eq!(
        env(
            proxy,
            "LINKERD2_PROXY_INBOUND_PORTS_DISABLE_PROTOCOL_DETECTION"
        ),
        Some("6379")
    );
    assert_eq!(env(proxy, "LINKERD2_PROXY_LOG"), Some("warn,linnet=debug"));
    let resources = proxy.resources.as_ref().unwrap();
    let limits = resources.limits.as_ref().unwrap();
    // From the Deployment's own annotations.
    assert_eq!(limits["cpu"].0, "500m");
    assert_eq!(limits["memory"].0, "128Mi");
    assert_eq!(resources.requests.as_ref().unwrap()["cpu"].0, "100m");
    let init = &spec.init_containers.as_ref().unwrap()[0];
    let args = init.args.as_ref().unwrap().join(" ");
    assert!(
        args.contains("--inbound-ports-to-ignore 4190,4191,4567,4568,9000,9100-9110"),
        "{args}"
    );
    assert!(
        args.contains("--outbound-ports-to-ignore 4567,4568,5432"),
        "{args}"
    );
}

#[test]
fn identity_comes_from_the_downward_api() {
    let out = inject(objects("pod"), &options(true)).unwrap();
    let sidecar = proxy_of(&templates(&out[0])[0]).unwrap().clone();
    let proxy = sidecar;
    assert_eq!(
        env(&proxy, "LINKERD2_PROXY_IDENTITY_LOCAL_NAME"),
        Some("$(_pod_sa).$(_pod_ns).serviceaccount.identity.linkerd.cluster.local")
    );
    assert_eq!(
        env(&proxy, "LINKERD2_PROXY_POLICY_WORKLOAD"),
        Some(r#"{"ns":"$(_pod_ns)","pod":"$(_pod_name)"}"#)
    );
    let vars: Vec<_> = proxy
        .env
        .iter()
        .flatten()
        .map(|e| e.name.as_str())
        .collect();
    let pos = |n: &str| vars.iter().position(|v| *v == n).unwrap();
    // Kubernetes expands $(VAR) only from variables defined before.
    assert!(pos("_pod_sa") < pos("LINKERD2_PROXY_IDENTITY_LOCAL_NAME"));
    let anchors = proxy
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS")
        .unwrap();
    let cm = anchors
        .value_from
        .as_ref()
        .unwrap()
        .config_map_key_ref
        .as_ref()
        .unwrap();
    assert_eq!(
        (cm.name.as_str(), cm.key.as_str()),
        ("linkerd-identity-trust-roots", "ca-bundle.crt")
    );

    let mut o = options(true);
    o.trust_domain = "example.org".to_string();
    o.trust_anchors = TrustAnchors::Pem("-----BEGIN CERTIFICATE-----\n".to_string());
    let out = inject(objects("pod"), &o).unwrap();
    let sidecar = proxy_of(&templates(&out[0])[0]).unwrap().clone();
    assert_eq!(
        env(&sidecar, "LINKERD2_PROXY_IDENTITY_LOCAL_NAME"),
        Some("$(_pod_sa).$(_pod_ns).serviceaccount.identity.linkerd.example.org")
    );
    assert_eq!(
        env(&sidecar, "LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS"),
        Some("-----BEGIN CERTIFICATE-----\n")
    );
}

#[test]
fn user_scrape_annotations_are_kept() {
    let out = inject(objects("daemonset"), &options(true)).unwrap();
    let Object::DaemonSet(ds) = &out[0] else {
        panic!()
    };
    let a = ds
        .spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap();
    assert_eq!(a["prometheus.io/port"], "9100");
    assert_eq!(a["prometheus.io/path"], "/metrics");
    assert_eq!(a[INJECTED_ANNOTATION], "true");
}

#[test]
fn disabled_host_network_and_other_kinds_pass_through() {
    let input = objects("mixed");
    assert!(matches!(
        &input[..],
        [
            Object::Other(_),
            Object::Other(_),
            Object::Deployment(_),
            Object::Pod(_)
        ]
    ));
    let out = inject(input.clone(), &options(true)).unwrap();
    assert_eq!(out, input);
    // Written back in the order the keys were read.
    let text = to_yaml(&out).unwrap();
    assert!(
        text.contains("data:\n  zeta: last\n  alpha: first\n"),
        "{text}"
    );

    let disabled_on_workload = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: x\n  annotations:\n    linnet.io/inject: disabled\nspec:\n  selector: {}\n  template:\n    spec:\n      containers: [{name: x, image: x}]\n";
    let input = parse(disabled_on_workload).unwrap();
    assert_eq!(inject(input.clone(), &options(true)).unwrap(), input);
    // The template's own annotation wins over its workload's.
    let enabled_on_template = disabled_on_workload.replace(
        "  template:\n",
        "  template:\n    metadata:\n      annotations:\n        linkerd.io/inject: enabled\n",
    );
    let input = parse(&enabled_on_template).unwrap();
    let out = inject(input.clone(), &options(true)).unwrap();
    assert!(proxy_of(&templates(&out[0])[0]).is_some());
}

#[test]
fn the_report_says_what_happened_to_each_workload() {
    let mut input = objects("mixed");
    input.extend(objects("list"));
    let (injected, report) = linnet_inject::inject_with_report(input, &options(true)).unwrap();
    let report: Vec<_> = report
        .iter()
        .map(|o| format!("{}: {}", o.workload, o.verdict))
        .collect();
    assert_eq!(
        report,
        [
            "Deployment demo/legacy: skipped: injection disabled by annotation",
            "Pod monitoring/node-exporter: skipped: uses the host network",
            "Deployment demo/web: injected",
        ]
    );
    let (_, again) = linnet_inject::inject_with_report(injected, &options(true)).unwrap();
    assert_eq!(again[2].verdict, linnet_inject::Verdict::AlreadyInjected);
}

#[test]
fn a_list_is_injected_item_by_item() {
    let out = inject(objects("list"), &options(true)).unwrap();
    let Object::List { items, fields } = &out[0] else {
        panic!()
    };
    assert!(matches!(&items[0], Object::Other(_)));
    assert!(proxy_of(&templates(&items[1])[0]).is_some());
    assert!(fields.contains_key("metadata"));
    let text = to_yaml(&out).unwrap();
    assert!(text.starts_with("apiVersion: v1\nkind: List\n"), "{text}");
}

#[test]
fn malformed_input_names_the_document() {
    let err = parse("kind: ConfigMap\n---\nmetadata: [\n").unwrap_err();
    assert!(matches!(err, Error::Parse { document: 2, .. }), "{err}");
    assert!(err.to_string().starts_with("document 2: "), "{err}");

    let err = parse("- a\n- b\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "document 1: not a Kubernetes object (a mapping)"
    );

    let bad_type = "apiVersion: v1\nkind: ConfigMap\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  selector: {}\n  template:\n    spec:\n      containers: nope\n";
    let err = parse(bad_type).unwrap_err().to_string();
    assert!(err.starts_with("document 2: Deployment web: "), "{err}");

    // A field the types do not know would be lost: refused, like
    // `kubectl apply` does.
    let typo = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, creationTimestamp: null}\nspec:\n  containers:\n  - name: a\n    image: a\n    imagePullPolicy: Always\n    imagePulPolicy: Never\n";
    let err = parse(typo).unwrap_err().to_string();
    assert_eq!(
        err,
        "document 1: Pod p: unknown field spec.containers[0].imagePulPolicy (misspelt, or newer than the Kubernetes API this linnet knows)"
    );
}

#[test]
fn a_bad_annotation_names_the_workload() {
    let text = "apiVersion: batch/v1\nkind: Job\nmetadata: {name: j, namespace: ns}\nspec:\n  template:\n    metadata:\n      annotations:\n        config.linkerd.io/skip-inbound-ports: http\n    spec:\n      containers: [{name: x, image: x}]\n";
    let err = inject(parse(text).unwrap(), &options(true))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(
            "Job ns/j: annotation config.linkerd.io/skip-inbound-ports: \"http\" is not a list"
        ),
        "{err}"
    );
    let text = text.replace(
        "config.linkerd.io/skip-inbound-ports: http",
        "config.linnet.io/proxy-memory-limit: lots",
    );
    let err = inject(parse(&text).unwrap(), &options(true))
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not a resource quantity"), "{err}");
}

/// `linnet init`'s own flags, to read the init container's arguments.
#[derive(clap::Parser)]
struct Init {
    #[command(flatten)]
    args: linnet_init::InitArgs,
}

/// The init container's arguments, read as `linnet init` reads them.
fn init_args(spec: &PodSpec) -> linnet_init::InitArgs {
    use clap::Parser as _;
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == INIT_CONTAINER)
        .unwrap();
    assert_eq!(init.command.as_ref().unwrap()[1], "init");
    let argv = std::iter::once("linnet-init").chain(init.args.iter().flatten().map(String::as_str));
    Init::try_parse_from(argv).unwrap().args
}

#[test]
fn linnet_init_takes_the_init_containers_arguments() {
    for native in [true, false] {
        for name in INPUTS {
            let out = inject(objects(name), &options(native)).unwrap();
            for spec in out.iter().flat_map(templates) {
                let Some(proxy) = proxy_of(&spec) else {
                    continue;
                };
                let args = init_args(&spec);
                // The uid it exempts is the proxy's.
                let uid = proxy.security_context.as_ref().unwrap().run_as_user;
                assert_eq!(uid, Some(i64::from(args.proxy_uid)), "{name}");
                assert_eq!(
                    (args.incoming_proxy_port, args.outgoing_proxy_port),
                    (4143, 4140)
                );
                let inbound = args.inbound_ports_to_ignore.to_string();
                assert!(inbound.starts_with("4190,4191"), "{name}: {inbound}");
            }
        }
    }
}

/// The one pod template of the first object of input `name`, injected.
fn injected_spec(name: &str, native: bool) -> PodSpec {
    let out = inject(objects(name), &options(native)).unwrap();
    templates(&out[0]).remove(0)
}

#[test]
fn annotations_set_images_uid_subnets_log_format_and_shutdown() {
    for native in [true, false] {
        let spec = injected_spec("annotated", native);
        let proxy = proxy_of(&spec).unwrap();
        // The template's image, the workload's version for its tag.
        assert_eq!(
            proxy.image.as_deref(),
            Some("registry.example:5000/mirror/linnet:0.9.0")
        );
        let init = spec
            .init_containers
            .iter()
            .flatten()
            .find(|c| c.name == INIT_CONTAINER)
            .unwrap();
        assert_eq!(
            init.image.as_deref(),
            Some("registry.example:5000/mirror/linnet-init:edge")
        );
        // The template's uid wins over the workload's.
        let args = init_args(&spec);
        assert_eq!(args.proxy_uid, 2103);
        assert_eq!(
            args.subnets_to_ignore.to_string(),
            "169.254.169.254/32,fd00::/8"
        );
        assert_eq!(args.outbound_ports_to_ignore.to_string(), "4567,4568,25");
        assert_eq!(env(proxy, "LINKERD2_PROXY_LOG_FORMAT"), Some("json"));
        assert_eq!(
            env(proxy, "LINKERD2_PROXY_SHUTDOWN_GRACE_PERIOD"),
            Some("90000ms")
        );
        let lifecycle = proxy.lifecycle.as_ref().unwrap();
        let sleep = lifecycle.pre_stop.as_ref().unwrap().sleep.as_ref().unwrap();
        assert_eq!(sleep.seconds, 20);
        // Without native sidecars the postStart wait is still there.
        assert_eq!(lifecycle.post_start.is_some(), !native);
    }
    // Without the annotations: the default images, no subnets, no hook.
    let spec = injected_spec("deployment", true);
    let proxy = proxy_of(&spec).unwrap();
    assert_eq!(proxy.image, Some(options(true).image));
    assert_eq!(proxy.lifecycle, None);
    assert_eq!(env(proxy, "LINKERD2_PROXY_LOG_FORMAT"), None);
    assert!(init_args(&spec).subnets_to_ignore.is_empty());
}

#[test]
fn namespaces_in_the_input_lend_their_annotations() {
    let (out, report) =
        linnet_inject::inject_with_report(objects("namespace"), &options(true)).unwrap();
    let report: Vec<_> = report
        .iter()
        .map(|o| format!("{}: {}", o.workload, o.verdict))
        .collect();
    assert_eq!(
        report,
        [
            "Deployment shop/cart: injected",
            "Deployment quiet/batch: skipped: injection disabled by annotation",
            "Deployment quiet/front: injected",
        ]
    );
    // The Namespaces pass through as they were.
    assert_eq!(out[..2], objects("namespace")[..2]);

    let cart = &templates(&out[2])[0];
    let proxy = proxy_of(cart).unwrap();
    let limits = proxy.resources.as_ref().unwrap().limits.as_ref().unwrap();
    assert_eq!(limits["cpu"].0, "2");
    // The template's own log level wins over the namespace's.
    assert_eq!(env(proxy, "LINKERD2_PROXY_LOG"), Some("warn"));
    assert_eq!(
        init_args(cart).subnets_to_ignore.to_string(),
        "10.96.0.0/12"
    );
    // Nothing from shop reaches quiet.
    let front = &templates(&out[4])[0];
    assert!(init_args(front).subnets_to_ignore.is_empty());

    // A Namespace inside a List counts too; only the annotations a
    // workload inherits are kept.
    let list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata:\n    name: shop\n    annotations: {linkerd.io/inject: enabled, owner.example.com/team: shop}\n";
    let namespaces = linnet_inject::Namespaces::from_objects(&parse(list).unwrap());
    let keys: Vec<_> = namespaces.get("shop").unwrap().keys().collect();
    assert_eq!(keys, ["linkerd.io/inject"]);
}

#[test]
fn bad_new_annotations_name_the_workload() {
    let base = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: ns\n  annotations:\n    KEY: VALUE\nspec:\n  terminationGracePeriodSeconds: 10\n  containers: [{name: x, image: x}]\n";
    for (key, value, reason) in [
        ("config.linkerd.io/proxy-uid", "\"0\"", "is root"),
        ("config.linnet.io/proxy-uid", "nobody", "is not a user id"),
        (
            "config.linkerd.io/proxy-image",
            "Bad Image",
            "is not an image reference",
        ),
        (
            "config.linkerd.io/proxy-version",
            "v1/2",
            "is not an image tag",
        ),
        (
            "config.linkerd.io/init-image-version",
            "-rc",
            "is not an image tag",
        ),
        (
            "config.linkerd.io/skip-subnets",
            "10.0.0.0/40",
            "is not a list of subnets",
        ),
        (
            "config.linkerd.io/proxy-log-format",
            "yaml",
            "is not a log format",
        ),
        (
            "config.linkerd.io/shutdown-grace-period",
            "\"30\"",
            "is not a duration",
        ),
        (
            "config.alpha.linkerd.io/proxy-wait-before-exit-seconds",
            "\"11\"",
            "is longer than the pod's terminationGracePeriodSeconds (10)",
        ),
        (
            "config.linnet.io/proxy-wait-before-exit-seconds",
            "soon",
            "is not a whole number of seconds",
        ),
    ] {
        let text = base.replace("KEY", key).replace("VALUE", value);
        let err = inject(parse(&text).unwrap(), &options(true))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("Pod ns/p: annotation {key}: ")) && err.contains(reason),
            "{key}: {err}"
        );
    }
    // Within the grace period, it is fine.
    let text = base
        .replace(
            "KEY",
            "config.alpha.linkerd.io/proxy-wait-before-exit-seconds",
        )
        .replace("VALUE", "\"10\"");
    assert!(inject(parse(&text).unwrap(), &options(true)).is_ok());
}
