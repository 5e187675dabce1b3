use super::*;
use std::collections::HashMap;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

#[test]
fn defaults() {
    let c = Config::from_env(&env(&[])).unwrap();
    assert_eq!(c.outbound.listen_addr, "127.0.0.1:4140".parse().unwrap());
    assert_eq!(c.inbound.listen_addr, "0.0.0.0:4143".parse().unwrap());
    assert_eq!(c.admin.listen_addr, "127.0.0.1:4191".parse().unwrap());
    assert_eq!(c.outbound.connect_timeout, Duration::from_secs(1));
    assert_eq!(c.inbound.connect_timeout, Duration::from_millis(300));
    assert_eq!(c.shutdown_grace_period, Duration::from_secs(120));
    assert_eq!(c.log.filter, "warn,linnet=info");
    assert_eq!(c.log.format, LogFormat::Plain);
    assert!(c.cores >= 1);
    assert_eq!(c.outbound.detect_timeout, Duration::from_secs(10));
    for port in [25, 587, 3306, 4444, 5432, 6379, 9300, 11211] {
        assert!(c.inbound.ports_disable_protocol_detection.contains(port));
        assert!(c.outbound.ports_disable_protocol_detection.contains(port));
    }
    assert!(!c.outbound.ports_disable_protocol_detection.contains(80));
    assert_eq!(c.http.header_read_timeout, Duration::from_secs(10));
    assert_eq!(c.http.http2_initial_stream_window_size, None);
    assert_eq!(c.http.http2_keepalive_interval, Duration::from_secs(10));
    let c = Config::from_env(&env(&[(
        "LINNET_HTTP2_INITIAL_STREAM_WINDOW_SIZE",
        "1048576",
    )]))
    .unwrap();
    assert_eq!(c.http.http2_initial_stream_window_size, Some(1_048_576));
}

#[test]
fn limits_have_defaults_and_can_be_set() {
    let c = Config::from_env(&env(&[])).unwrap();
    assert_eq!(c.inbound.max_connections, 20_000);
    assert_eq!(c.outbound.max_connections, 20_000);
    assert_eq!(c.inbound.tcp_idle_timeout, Duration::from_secs(3600));
    assert_eq!(c.http.idle_timeout, Duration::from_secs(3600));
    assert_eq!(c.http.body_idle_timeout, Duration::from_secs(3600));
    assert_eq!(c.http.http2_max_concurrent_streams, 1000);
    assert!(!c.http.http2_adaptive_window);
    let c = Config::from_env(&env(&[
        ("LINNET_INBOUND_MAX_CONNECTIONS", "10"),
        ("LINKERD2_PROXY_OUTBOUND_MAX_CONNECTIONS", "20"),
        ("LINNET_TCP_IDLE_TIMEOUT", "5s"),
        ("LINNET_HTTP_IDLE_TIMEOUT", "6s"),
        ("LINNET_HTTP_BODY_IDLE_TIMEOUT", "7s"),
        ("LINNET_HTTP2_MAX_CONCURRENT_STREAMS", "8"),
        ("LINNET_HTTP2_ADAPTIVE_WINDOW", "true"),
        ("LINNET_HTTP2_INITIAL_CONNECTION_WINDOW_SIZE", "16777216"),
    ]))
    .unwrap();
    assert_eq!(c.inbound.max_connections, 10);
    assert_eq!(c.outbound.max_connections, 20);
    assert_eq!(c.outbound.tcp_idle_timeout, Duration::from_secs(5));
    assert_eq!(c.http.idle_timeout, Duration::from_secs(6));
    assert_eq!(c.http.body_idle_timeout, Duration::from_secs(7));
    assert_eq!(c.http.http2_max_concurrent_streams, 8);
    assert!(c.http.http2_adaptive_window);
    assert_eq!(c.http.http2_initial_connection_window_size, Some(16 << 20));
}

#[test]
fn reads_both_prefixes_and_ours_wins() {
    let c = Config::from_env(&env(&[
        ("LINKERD2_PROXY_OUTBOUND_CONNECT_TIMEOUT", "3s"),
        ("LINKERD2_PROXY_INBOUND_CONNECT_TIMEOUT", "2s"),
        ("LINNET_INBOUND_CONNECT_TIMEOUT", "250ms"),
        ("LINKERD2_PROXY_LOG_FORMAT", "json"),
        ("LINNET_SHUTDOWN_GRACE_PERIOD", "5s"),
        ("LINKERD2_PROXY_INBOUND_CONNECT_KEEPALIVE", "0s"),
    ]))
    .unwrap();
    assert_eq!(c.outbound.connect_timeout, Duration::from_secs(3));
    assert_eq!(c.inbound.connect_timeout, Duration::from_millis(250));
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(c.shutdown_grace_period, Duration::from_secs(5));
    assert_eq!(c.inbound.connect_keepalive, None);
}

#[test]
fn bad_values_name_the_variable() {
    let cases = [
        ("LINNET_OUTBOUND_LISTEN_ADDR", "localhost"),
        ("LINNET_INBOUND_LISTEN_ADDR", "1.2.3.4"),
        ("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", "nope:4191"),
        ("LINNET_OUTBOUND_CONNECT_TIMEOUT", "0s"),
        ("LINKERD2_PROXY_INBOUND_CONNECT_TIMEOUT", "10"),
        ("LINNET_OUTBOUND_ACCEPT_KEEPALIVE", "soon"),
        ("LINNET_SHUTDOWN_GRACE_PERIOD", "2 minutes"),
        ("LINNET_LOG", "warn,linnet=loud"),
        ("LINNET_LOG_FORMAT", "xml"),
        ("LINNET_CORES", "0"),
        ("LINNET_OUTBOUND_DETECT_TIMEOUT", "0ms"),
        ("LINKERD2_PROXY_INBOUND_DETECT_TIMEOUT", "10"),
        ("LINNET_INBOUND_PORTS_DISABLE_PROTOCOL_DETECTION", "25,smtp"),
        ("LINNET_OUTBOUND_PORTS_DISABLE_PROTOCOL_DETECTION", "99999"),
        ("LINNET_OUTBOUND_MAX_IN_FLIGHT", "0"),
        ("LINNET_HTTP_HEADER_READ_TIMEOUT", "0s"),
        ("LINNET_HTTP_MAX_REQUEST_BODY_SIZE", "1MB"),
        ("LINNET_HTTP2_INITIAL_STREAM_WINDOW_SIZE", "1000"),
        ("LINNET_HTTP2_INITIAL_CONNECTION_WINDOW_SIZE", "4294967295"),
        ("LINNET_HTTP2_INITIAL_STREAM_WINDOW_SIZE", "16777217"),
        ("LINNET_HTTP2_MAX_CONCURRENT_STREAMS", "0"),
        ("LINNET_HTTP2_ADAPTIVE_WINDOW", "maybe"),
        ("LINNET_INBOUND_MAX_CONNECTIONS", "0"),
        ("LINNET_TCP_IDLE_TIMEOUT", "0s"),
        ("LINNET_HTTP_IDLE_TIMEOUT", "forever"),
        ("LINNET_HTTP_BODY_IDLE_TIMEOUT", "0ms"),
        ("LINNET_HTTP2_KEEPALIVE_INTERVAL", "often"),
        ("LINNET_HTTP2_KEEPALIVE_TIMEOUT", "3"),
        ("LINKERD2_PROXY_INBOUND_MAX_IN_FLIGHT", "many"),
        ("LINNET_METRICS_MAX_LABEL_VALUES", "0"),
        ("LINNET_METRICS_MAX_LABEL_VALUES", "-5"),
        ("LINNET_METRICS_MAX_LABEL_VALUES", "lots"),
        ("LINNET_METRICS_IDLE_TIMEOUT", "0s"),
        ("LINNET_METRICS_IDLE_TIMEOUT", "60"),
    ];
    for (var, value) in cases {
        let err = Config::from_env(&env(&[(var, value)])).unwrap_err();
        assert_eq!(err.var, var);
        assert_eq!(err.value, value);
        let msg = err.to_string();
        assert!(msg.contains(var) && msg.contains(value), "{msg}");
    }
}

#[test]
fn reports_unknown_linnet_variables() {
    let e = env(&[
        ("LINNET_OUTBOUND_LISTEN_ADR", "x"),
        ("LINNET_LOG", "info"),
        ("LINKERD2_PROXY_SOMETHING_ELSE", "y"),
    ]);
    assert_eq!(
        Config::unknown_variables(&e),
        vec!["LINNET_OUTBOUND_LISTEN_ADR"]
    );
}

#[test]
fn serialises_durations_readably() {
    let c = Config::from_env(&env(&[])).unwrap();
    let json: serde_json::Value = serde_json::from_str(&c.to_json()).unwrap();
    assert_eq!(json["inbound"]["connect_timeout"], "300ms");
    assert_eq!(json["shutdown_grace_period"], "2m");
    assert_eq!(json["log"]["format"], "plain");
}

#[test]
fn linkerd_log_filters_apply_to_linnet() {
    let c = Config::from_env(&env(&[(
        "LINKERD2_PROXY_LOG",
        "warn,linkerd=info,linkerd2_proxy::app=debug,hyper=warn",
    )]))
    .unwrap();
    assert_eq!(
        c.log.filter,
        "warn,linnet=info,linkerd2_proxy::app=debug,hyper=warn"
    );
}

#[test]
fn fixed_original_destinations() {
    let c = Config::from_env(&env(&[])).unwrap();
    assert_eq!(c.outbound.orig_dst_addr, None);
    assert_eq!(c.inbound.orig_dst_addr, None);
    let c = Config::from_env(&env(&[
        ("LINKERD2_PROXY_OUTBOUND_ORIG_DST_ADDR", "127.0.0.1:4143"),
        ("LINNET_INBOUND_ORIG_DST_ADDR", "[::1]:8080"),
    ]))
    .unwrap();
    assert_eq!(
        c.outbound.orig_dst_addr,
        Some("127.0.0.1:4143".parse().unwrap())
    );
    assert_eq!(c.inbound.orig_dst_addr, Some("[::1]:8080".parse().unwrap()));
    let err =
        Config::from_env(&env(&[("LINNET_INBOUND_ORIG_DST_ADDR", "backend:80")])).unwrap_err();
    assert_eq!(err.var, "LINNET_INBOUND_ORIG_DST_ADDR");
    assert!(Config::unknown_variables(&env(&[("LINNET_INBOUND_ORIG_DST_ADDR", "x")])).is_empty());
}

#[test]
fn control_plane() {
    let c = Config::from_env(&env(&[])).unwrap().control;
    assert_eq!(c.destination, None);
    assert_eq!(c.discovery_idle_timeout, Duration::from_secs(5));
    assert_eq!(c.inbound_default_policy, DefaultPolicy::AllUnauthenticated);
    // Linkerd's private ranges, and no port requiring anything.
    assert_eq!(c.cluster_networks.len(), 5);
    assert!(
        c.cluster_networks
            .iter()
            .any(|n| n.contains("10.1.2.3".parse().unwrap()))
    );
    assert!(
        !c.cluster_networks
            .iter()
            .any(|n| n.contains("8.8.8.8".parse().unwrap()))
    );
    assert!(!c.inbound_ports_require_identity.contains(8080));
    let c = Config::from_env(&env(&[
        (
            "LINKERD2_PROXY_DESTINATION_SVC_ADDR",
            "linkerd-dst-headless.linkerd.svc.cluster.local.:8086",
        ),
        (
            "LINKERD2_PROXY_DESTINATION_SVC_NAME",
            "linkerd-destination.linkerd.serviceaccount.identity.linkerd.cluster.local",
        ),
        ("LINKERD2_PROXY_POLICY_SVC_ADDR", "127.0.0.1:8090"),
        (
            "LINKERD2_PROXY_POLICY_WORKLOAD",
            "{\"ns\":\"default\",\"pod\":\"web-1\"}",
        ),
        ("LINKERD2_PROXY_OUTBOUND_DISCOVERY_IDLE_TIMEOUT", "90s"),
        ("LINKERD2_PROXY_INBOUND_DEFAULT_POLICY", "deny"),
        ("LINKERD2_PROXY_POLICY_CLUSTER_NETWORKS", "10.42.0.0/16"),
        (
            "LINKERD2_PROXY_INBOUND_PORTS_REQUIRE_IDENTITY",
            "8080,9000-9010",
        ),
        ("LINKERD2_PROXY_INBOUND_PORTS_REQUIRE_TLS", "5432"),
        // A destination off loopback is reached over TLS: the identity's
        // trust anchors verify it.
        ("LINKERD2_PROXY_IDENTITY_SVC_ADDR", "127.0.0.1:8080"),
        (
            "LINKERD2_PROXY_IDENTITY_LOCAL_NAME",
            "web.ns.serviceaccount.identity.linkerd.cluster.local",
        ),
        (
            "LINKERD2_PROXY_IDENTITY_TOKEN_FILE",
            "/var/run/secrets/token",
        ),
        ("LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS", PEM),
        ("LINNET_DNS_SERVERS", "127.0.0.1:5353, 10.0.0.10"),
    ]))
    .unwrap()
    .control;
    let d = c.destination.unwrap();
    assert_eq!(
        d.addr,
        "linkerd-dst-headless.linkerd.svc.cluster.local.:8086"
    );
    assert!(d.name.unwrap().starts_with("linkerd-destination."));
    assert_eq!(c.policy.unwrap().addr, "127.0.0.1:8090");
    assert_eq!(
        c.workload.as_deref(),
        Some("{\"ns\":\"default\",\"pod\":\"web-1\"}")
    );
    assert_eq!(c.discovery_idle_timeout, Duration::from_secs(90));
    assert_eq!(c.inbound_default_policy, DefaultPolicy::Deny);
    assert_eq!(c.cluster_networks.len(), 1);
    assert!(c.cluster_networks[0].contains("10.42.9.9".parse().unwrap()));
    assert!(c.inbound_ports_require_identity.contains(9005));
    assert!(!c.inbound_ports_require_identity.contains(5432));
    assert!(c.inbound_ports_require_tls.contains(5432));
    assert_eq!(
        c.dns_servers,
        [
            "127.0.0.1:5353".parse().unwrap(),
            "10.0.0.10:53".parse().unwrap()
        ]
    );
    for (vars, var) in [
        (
            vec![("LINNET_DESTINATION_SVC_ADDR", "no-port")],
            "LINNET_DESTINATION_SVC_ADDR",
        ),
        (
            vec![("LINNET_POLICY_SVC_ADDR", "127.0.0.1:8090")],
            "LINNET_POLICY_WORKLOAD",
        ),
        (
            vec![("LINNET_INBOUND_DEFAULT_POLICY", "maybe")],
            "LINNET_INBOUND_DEFAULT_POLICY",
        ),
        (
            vec![("LINNET_DNS_SERVERS", "dns.example")],
            "LINNET_DNS_SERVERS",
        ),
        (vec![("LINNET_DNS_MIN_TTL", "10m")], "LINNET_DNS_MIN_TTL"),
        (
            vec![("LINNET_POLICY_CLUSTER_NETWORKS", "10.0.0.0/33")],
            "LINNET_POLICY_CLUSTER_NETWORKS",
        ),
        (
            vec![("LINNET_INBOUND_PORTS_REQUIRE_TLS", "x")],
            "LINNET_INBOUND_PORTS_REQUIRE_TLS",
        ),
    ] {
        let err = Config::from_env(&env(&vars)).unwrap_err();
        assert_eq!(err.var, var, "{err}");
    }
}

const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

#[test]
fn identity_settings() {
    let pem = PEM;
    let base = [
        ("LINKERD2_PROXY_IDENTITY_SVC_ADDR", "127.0.0.1:8080"),
        (
            "LINKERD2_PROXY_IDENTITY_LOCAL_NAME",
            "web.ns.serviceaccount.identity.linkerd.cluster.local",
        ),
        (
            "LINKERD2_PROXY_IDENTITY_TOKEN_FILE",
            "/var/run/secrets/token",
        ),
        ("LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS", pem),
    ];
    let c = Config::from_env(&env(&base)).unwrap();
    let id = c.identity.unwrap();
    assert_eq!(
        id.local_name,
        "web.ns.serviceaccount.identity.linkerd.cluster.local"
    );
    assert_eq!(id.min_refresh, Duration::from_secs(10));
    assert_eq!(id.max_refresh, Duration::from_secs(86400));
    assert!(!c.identity_disabled);
    let mut named = base.to_vec();
    named.push(("LINNET_IDENTITY_SERVER_NAME", "Web-1.NS.pod.cluster.local."));
    let c = Config::from_env(&env(&named)).unwrap();
    assert_eq!(
        c.identity.unwrap().server_name.as_deref(),
        Some("web-1.ns.pod.cluster.local")
    );
    let mut bad_name = base.to_vec();
    bad_name.push(("LINNET_IDENTITY_SERVER_NAME", "not a name"));
    assert_eq!(
        Config::from_env(&env(&bad_name)).unwrap_err().var,
        "LINNET_IDENTITY_SERVER_NAME"
    );
    // No identity service: no identity (the plaintext foundation).
    assert!(Config::from_env(&env(&[])).unwrap().identity.is_none());
    // Disabled on purpose.
    let mut off = base.to_vec();
    off.push(("LINNET_IDENTITY_DISABLED", "true"));
    let c = Config::from_env(&env(&off)).unwrap();
    assert!(c.identity.is_none() && c.identity_disabled);
    // Each required setting, missing, is named.
    for missing in 1..4 {
        let vars: Vec<_> = base
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != missing)
            .map(|(_, v)| *v)
            .collect();
        let err = Config::from_env(&env(&vars)).unwrap_err();
        assert_eq!(
            err.var,
            base[missing].0.replace("LINKERD2_PROXY_", "LINNET_"),
            "{err}"
        );
    }
    let mut bad = base.to_vec();
    bad.push(("LINNET_IDENTITY_TRUST_ANCHORS", "/etc/anchors.pem"));
    assert_eq!(
        Config::from_env(&env(&bad)).unwrap_err().var,
        "LINNET_IDENTITY_TRUST_ANCHORS"
    );
}

#[test]
fn profile_networks_default_to_every_address() {
    let c = Config::from_env(&env(&[])).unwrap();
    for ip in ["10.1.2.3", "192.168.0.1", "fd00::1", "2001:db8::1"] {
        let ip = ip.parse().unwrap();
        assert!(c.control.profile_networks.iter().any(|n| n.contains(ip)));
    }
    let c = Config::from_env(&env(&[(
        "LINKERD2_PROXY_DESTINATION_PROFILE_NETWORKS",
        "10.0.0.0/8,fd00::/8",
    )]))
    .unwrap();
    let inside = |ip: &str| {
        let ip = ip.parse().unwrap();
        c.control.profile_networks.iter().any(|n| n.contains(ip))
    };
    assert!(inside("10.9.9.9") && inside("fd00::5"));
    assert!(!inside("192.168.0.1") && !inside("2001:db8::1"));
}

#[test]
fn identity_settings_need_the_identity_service() {
    let e = Config::from_env(&env(&[(
        "LINNET_IDENTITY_LOCAL_NAME",
        "web.default.serviceaccount.identity.linkerd.cluster.local",
    )]))
    .unwrap_err();
    assert_eq!(e.var, "LINNET_IDENTITY_LOCAL_NAME");
    // Disabled on purpose: the settings are ignored.
    let c = Config::from_env(&env(&[
        ("LINNET_IDENTITY_LOCAL_NAME", "web"),
        ("LINNET_IDENTITY_DISABLED", "true"),
    ]))
    .unwrap();
    assert!(c.identity.is_none());
}

/// linkerd2-proxy's rule: a control plane on loopback is spoken to in
/// plaintext, any other only over TLS verified against `*_SVC_NAME` and
/// the trust anchors; a configuration that cannot do that is refused.
#[test]
fn control_plane_off_loopback_needs_a_name_and_trust_anchors() {
    let identity = [
        (
            "LINNET_IDENTITY_LOCAL_NAME",
            "web.ns.serviceaccount.identity.linkerd.cluster.local",
        ),
        ("LINNET_IDENTITY_TOKEN_FILE", "/var/run/secrets/token"),
        ("LINNET_IDENTITY_TRUST_ANCHORS", PEM),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut v = identity.to_vec();
        v.extend_from_slice(extra);
        Config::from_env(&env(&v))
    };
    // Loopback: no name needed, with or without an identity.
    for addr in [
        "127.0.0.1:8086",
        "[::1]:8086",
        "localhost:8086",
        "127.9.9.9:1",
    ] {
        let c = Config::from_env(&env(&[("LINNET_DESTINATION_SVC_ADDR", addr)])).unwrap();
        assert_eq!(c.control.destination.unwrap().name, None);
    }
    // Off loopback, each service needs its name, named in the error.
    for svc in ["DESTINATION", "POLICY", "IDENTITY"] {
        for addr in [
            "10.0.0.1:8086",
            "linkerd-dst.linkerd.svc.cluster.local:8086",
            "[fd00::1]:8086",
        ] {
            let var = format!("LINNET_{svc}_SVC_ADDR");
            let mut v = identity.to_vec();
            v.push(("LINNET_IDENTITY_SVC_ADDR", "127.0.0.1:8080"));
            v.push(("LINNET_POLICY_WORKLOAD", "w"));
            v.push((&var, addr));
            let err = Config::from_env(&env(&v)).unwrap_err();
            assert_eq!(err.var, format!("LINNET_{svc}_SVC_NAME"), "{err}");
            assert!(err.to_string().contains(addr), "{err}");
        }
    }
    // A missing setting is named in our spelling (as identity's are).
    let err = Config::from_env(&env(&[(
        "LINKERD2_PROXY_DESTINATION_SVC_ADDR",
        "10.0.0.1:8086",
    )]))
    .unwrap_err();
    assert_eq!(err.var, "LINNET_DESTINATION_SVC_NAME");
    // With a name and the trust anchors: fine.
    let c = with(&[
        ("LINNET_IDENTITY_SVC_ADDR", "10.0.0.2:8080"),
        (
            "LINNET_IDENTITY_SVC_NAME",
            "Linkerd-Identity.linkerd.serviceaccount.identity.linkerd.cluster.local.",
        ),
        ("LINNET_DESTINATION_SVC_ADDR", "10.0.0.1:8086"),
        (
            "LINNET_DESTINATION_SVC_NAME",
            "linkerd-destination.linkerd.serviceaccount.identity.linkerd.cluster.local",
        ),
    ])
    .unwrap();
    assert_eq!(
        c.control.identity.unwrap().name.as_deref(),
        Some("linkerd-identity.linkerd.serviceaccount.identity.linkerd.cluster.local")
    );
    // A name that is no identity.
    let err = Config::from_env(&env(&[
        ("LINNET_DESTINATION_SVC_ADDR", "10.0.0.1:8086"),
        ("LINNET_DESTINATION_SVC_NAME", "not a name"),
    ]))
    .unwrap_err();
    assert_eq!(err.var, "LINNET_DESTINATION_SVC_NAME");
    // Without trust anchors (no identity, or identity disabled): refused,
    // never plaintext.
    let named = [
        ("LINNET_DESTINATION_SVC_ADDR", "10.0.0.1:8086"),
        (
            "LINNET_DESTINATION_SVC_NAME",
            "linkerd-destination.linkerd.serviceaccount.identity.linkerd.cluster.local",
        ),
    ];
    let err = Config::from_env(&env(&named)).unwrap_err();
    assert_eq!(err.var, "LINNET_DESTINATION_SVC_ADDR", "{err}");
    assert!(err.reason.contains("IDENTITY_TRUST_ANCHORS"), "{err}");
    let mut disabled = named.to_vec();
    disabled.extend_from_slice(&identity);
    disabled.push(("LINNET_IDENTITY_SVC_ADDR", "127.0.0.1:8080"));
    disabled.push(("LINNET_IDENTITY_DISABLED", "true"));
    let err = Config::from_env(&env(&disabled)).unwrap_err();
    assert_eq!(err.var, "LINNET_DESTINATION_SVC_ADDR", "{err}");
    assert!(err.reason.contains("IDENTITY_DISABLED"), "{err}");
    // Disabled identity with a loopback control plane stays allowed.
    let c = Config::from_env(&env(&[
        ("LINNET_DESTINATION_SVC_ADDR", "127.0.0.1:8086"),
        ("LINNET_IDENTITY_DISABLED", "true"),
    ]))
    .unwrap();
    assert!(c.identity_disabled);
}

#[test]
fn metrics_bounds() {
    let c = Config::from_env(&env(&[])).unwrap();
    assert_eq!(c.metrics.max_label_values, 1000);
    assert_eq!(c.metrics.idle_timeout, Duration::from_secs(60));
    let e = env(&[
        ("LINNET_METRICS_MAX_LABEL_VALUES", "50"),
        ("LINNET_METRICS_IDLE_TIMEOUT", "2s"),
    ]);
    let c = Config::from_env(&e).unwrap();
    assert_eq!(c.metrics.max_label_values, 50);
    assert_eq!(c.metrics.idle_timeout, Duration::from_secs(2));
    assert!(Config::unknown_variables(&e).is_empty());
    let json: serde_json::Value = serde_json::from_str(&c.to_json()).unwrap();
    assert_eq!(json["metrics"]["max_label_values"], 50);
    assert_eq!(json["metrics"]["idle_timeout"], "2s");
}
