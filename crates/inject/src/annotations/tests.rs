#![allow(clippy::unwrap_used)]

use super::{
    Annotations, grace_period, image, inherited, log_format, ports, quantity, seconds, split_tag,
    subnets, tag, uid,
};
use std::collections::BTreeMap;

#[test]
fn port_lists() {
    assert_eq!(ports("25, 8000-8100 ,443").unwrap(), "25,8000-8100,443");
    assert_eq!(ports("").unwrap(), "");
    for bad in ["0", "70000", "http", "10-5", "1-"] {
        assert!(ports(bad).is_err(), "{bad}");
    }
}

#[test]
fn quantities() {
    for good in ["100m", "0.5", "1", "64Mi", "1Gi", "1e3", "2.5G"] {
        assert_eq!(quantity(good).unwrap(), good);
    }
    for bad in ["", "m", "1 cpu", "1.2.3", "5Xi", "1e"] {
        assert!(quantity(bad).is_err(), "{bad}");
    }
}

#[test]
fn subnet_lists_as_linnet_init_writes_them() {
    assert_eq!(
        subnets("10.0.0.0/8, fd00::/8 ,169.254.169.254").unwrap(),
        "10.0.0.0/8,fd00::/8,169.254.169.254/32"
    );
    for bad in [
        "10.0.0/8",
        "10.0.0.0/33",
        "example.com/8",
        "10.0.0.0/8,nope",
    ] {
        let err = subnets(bad).unwrap_err();
        assert!(err.starts_with("is not a list of subnets"), "{bad}: {err}");
    }
}

#[test]
fn image_references() {
    for good in [
        "linnet",
        "ghcr.io/linnet-proxy/linnet:0.1.0",
        "localhost:5000/linnet",
        "registry.example:443/team/linnet_proxy:v1.2.3-rc.1",
        "docker.io/library/busybox@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "Registry.Example/linnet:Latest",
    ] {
        assert_eq!(image(good).unwrap(), good);
    }
    for bad in [
        "",
        "Linnet",
        "ghcr.io//linnet",
        "ghcr.io/linnet:",
        "ghcr.io/linnet:-x",
        "ghcr.io/linnet@sha256:xyz",
        "ghcr.io/linnet proxy",
        "ghcr.io:port/linnet",
        "linnet/",
    ] {
        let err = image(bad).unwrap_err();
        assert!(err.starts_with("is not an image reference"), "{bad}: {err}");
    }
    assert_eq!(
        split_tag("localhost:5000/linnet"),
        ("localhost:5000/linnet", None)
    );
    assert_eq!(
        split_tag("localhost:5000/linnet:1"),
        ("localhost:5000/linnet", Some("1"))
    );
    assert!(tag("v1.2.3_4").is_ok());
    for bad in ["", ".x", "a/b", &"x".repeat(129)] {
        assert!(tag(bad).is_err(), "{bad}");
    }
}

#[test]
fn uids_log_formats_and_seconds() {
    assert_eq!(uid("2103").unwrap(), 2103);
    assert!(uid("0").unwrap_err().contains("root"));
    for bad in ["-1", "2147483648", "nobody", ""] {
        assert!(uid(bad).is_err(), "{bad}");
    }
    assert_eq!(log_format("JSON").unwrap(), "json");
    assert_eq!(log_format(" plain ").unwrap(), "plain");
    assert!(log_format("yaml").is_err());
    assert_eq!(seconds("10").unwrap(), 10);
    for bad in ["-1", "1.5", "10s", ""] {
        assert!(seconds(bad).is_err(), "{bad}");
    }
}

#[test]
fn grace_periods_read_as_go_writes_them() {
    for (value, ms) in [
        ("30s", "30000ms"),
        ("1m30s", "90000ms"),
        ("1.5m", "90000ms"),
        ("0.29s", "290ms"),
        ("500ms", "500ms"),
        ("1500us", "1ms"),
        ("0", "0ms"),
        ("2h", "7200000ms"),
    ] {
        assert_eq!(grace_period(value).unwrap(), ms, "{value}");
    }
    for bad in ["30", "", "s", "1d", "-5s", "1..5s", "25h", "1m 30s"] {
        assert!(grace_period(bad).is_err(), "{bad}");
    }
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_template_wins_over_the_workload_and_the_workload_over_its_namespace() {
    let template = map(&[("config.linkerd.io/proxy-log-level", "debug")]);
    let workload = map(&[
        ("config.linnet.io/proxy-log-level", "trace"),
        ("config.linnet.io/proxy-cpu-limit", "2"),
    ]);
    let namespace = map(&[
        ("config.linnet.io/proxy-cpu-limit", "3"),
        ("config.linkerd.io/proxy-memory-limit", "1Gi"),
        ("linkerd.io/inject", "disabled"),
    ]);
    let a = Annotations {
        template: Some(&template),
        workload: Some(&workload),
        namespace: Some(("shop", &namespace)),
        name: "Deployment shop/web",
    };
    let o = a.overrides().unwrap();
    assert_eq!(o.log_level.as_deref(), Some("debug"));
    assert_eq!(o.cpu_limit.as_deref(), Some("2"));
    assert_eq!(o.memory_limit.as_deref(), Some("1Gi"));
    assert!(a.disabled());

    let enabled = map(&[("linnet.io/inject", "enabled")]);
    let a = Annotations {
        workload: Some(&enabled),
        ..a
    };
    assert!(!a.disabled());

    // A bad value inherited from the namespace says so.
    let bad = map(&[("config.linkerd.io/skip-subnets", "10.0.0.0/99")]);
    let a = Annotations {
        template: None,
        workload: None,
        namespace: Some(("shop", &bad)),
        name: "Pod shop/p",
    };
    let err = a.overrides().unwrap_err().to_string();
    assert!(
        err.starts_with(
            "Pod shop/p: annotation config.linkerd.io/skip-subnets (of Namespace shop): \"10.0.0.0/99\""
        ),
        "{err}"
    );
}

#[test]
fn only_inject_and_config_annotations_are_inherited() {
    for key in [
        "linnet.io/inject",
        "linkerd.io/inject",
        "config.linnet.io/proxy-uid",
        "config.linkerd.io/skip-subnets",
        "config.alpha.linkerd.io/proxy-wait-before-exit-seconds",
    ] {
        assert!(inherited(key), "{key}");
    }
    for key in [
        "kubectl.kubernetes.io/last-applied-configuration",
        "linnet.io/injected",
        "prometheus.io/scrape",
        "config.linkerd.io",
    ] {
        assert!(!inherited(key), "{key}");
    }
}
