use super::*;

mod inbound;
mod outbound;

fn parse(yaml: &str) -> Result<Mesh, Error> {
    Mesh::parse(yaml, Path::new("/etc/linnet"))
}

fn err(yaml: &str) -> String {
    parse(yaml).unwrap_err().to_string()
}

#[test]
fn the_example_file_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let text = std::fs::read_to_string(dir.join("mesh.yaml")).unwrap();
    // Token files are read relative to the file: give them a home.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("tokens")).unwrap();
    std::fs::write(tmp.path().join("tokens/client"), "client-token\n").unwrap();
    let mesh = Mesh::parse(&text, tmp.path()).unwrap();
    assert!(!mesh.services.is_empty());
    assert!(!mesh.workloads.is_empty());
    assert!(!mesh.identity.tokens.is_empty());
    // Every kind of route is shown.
    let policy = |s: &str| &mesh.service(s).unwrap().policy;
    assert!(!policy("web.default.svc.cluster.local:80").routes.is_empty());
    assert!(
        !policy("api.default.svc.cluster.local:9090").routes[0]
            .grpc_matches
            .is_empty()
    );
    assert!(
        !policy("tls.default.svc.cluster.local:443")
            .tls_routes
            .is_empty()
    );
    assert!(
        !policy("db.default.svc.cluster.local:5432")
            .opaque_routes
            .is_empty()
    );
    // And every part of inbound policy.
    let web = &mesh.workloads["web-1"].ports[&8080];
    let admin = web.routes.iter().find(|r| r.name == "admin").unwrap();
    let root = web.routes.iter().find(|r| r.name == "root").unwrap();
    assert_eq!(admin.authorizations.as_ref().unwrap().len(), 1);
    assert_eq!(root.authorizations, None);
    assert!(!web.rate_limit.as_ref().unwrap().overrides.is_empty());
    assert!(!web.authorizations[1].except.is_empty());
    let api = &mesh.workloads["api-1"].ports[&9090];
    assert_eq!(api.protocol, Protocol::Grpc);
    assert!(
        api.routes
            .iter()
            .any(|r| r.authorizations.as_ref().is_some_and(Vec::is_empty))
    );
    assert_eq!(mesh.default_inbound_policy("db-1"), DefaultPolicy::Deny);
}

#[test]
fn empty_file_is_an_empty_mesh() {
    for text in ["", "# nothing yet\n"] {
        let m = parse(text).unwrap();
        assert!(m.services.is_empty() && m.workloads.is_empty() && m.identity.tokens.is_empty());
        // The issuer's files default to beside the mesh file.
        assert_eq!(
            m.identity.issuer_certificate,
            Path::new("/etc/linnet/issuer.crt")
        );
    }
}

#[test]
fn services_are_normalised() {
    let m = parse(
        "services:\n  Web.Default.svc.cluster.local.:80:\n    endpoints:\n      - addr: 127.0.0.1:8080\n",
    )
    .unwrap();
    let s = m.service("web.default.svc.cluster.local:80").unwrap();
    assert_eq!(
        (s.name.as_str(), s.port),
        ("web.default.svc.cluster.local", 80)
    );
    assert_eq!(s.endpoints[0].weight, 1);
    assert!(m.service("WEB.default.svc.cluster.local:80").is_some());
}

#[test]
fn full_policy_and_profile() {
    let m = parse(
        r#"
identity:
  certificate_lifetime: 1h
  tokens:
    web.ns.serviceaccount.identity.linkerd.cluster.local: secret
services:
  web.ns.svc.cluster.local:80:
    profile:
      retry_budget: {ratio: 0.2, min_per_second: 10, ttl: 10s}
      routes:
        - name: items
          method: get
          path: "^/items(/.*)?$"
          timeout: 2s
          retryable: true
          failure_statuses: ["5xx", "429"]
    policy:
      protocol: http1
      failure_accrual: {consecutive_failures: 7}
      routes:
        - name: api
          matches: [{path_prefix: /api, method: POST, headers: {x-canary: "1"}}]
          backends: [{service: web.ns.svc.cluster.local:80, weight: 9}]
          timeout: 5s
          retry: {limit: 2, statuses: ["500-599"], timeout: 1s}
workloads:
  web-1:
    ports:
      8080:
        protocol: http1
        authorizations:
          - unauthenticated: true
            networks: [10.0.0.0/8, 192.168.1.1]
          - identities: [client.ns.serviceaccount.identity.linkerd.cluster.local]
"#,
    )
    .unwrap();
    assert_eq!(m.identity.certificate_lifetime, Duration::from_secs(3600));
    assert_eq!(m.identity.issuer_key, Path::new("/etc/linnet/issuer.key"));
    let s = m.service("web.ns.svc.cluster.local:80").unwrap();
    let r = &s.profile.routes[0];
    assert_eq!(r.method.as_deref(), Some("GET"));
    assert_eq!(r.failure_statuses, [(500, 599), (429, 429)]);
    assert_eq!(s.policy.protocol, Protocol::Http1);
    assert_eq!(
        s.policy.routes[0].retry.as_ref().unwrap().statuses,
        [(500, 599)]
    );
    assert_eq!(
        s.policy.failure_accrual.unwrap().kind,
        AccrualKind::Consecutive(7)
    );
    let port = &m.workloads["web-1"].ports[&8080];
    assert_eq!(port.authorizations.len(), 2);
    let a = &port.authorizations[0];
    assert_eq!(a.clients, Clients::Unauthenticated);
    assert_eq!(a.networks.len(), 2);
}

#[test]
fn errors_say_where() {
    let cases = [
        (
            "services:\n  web:80:\n    endpoints:\n      - addr: nope\n",
            "services.web:80.endpoints[0]",
        ),
        (
            "services:\n  web:80:\n    endpoints:\n      - addr: 10.0.0.1:80\n        weight: 0\n",
            "weight 0",
        ),
        (
            "services:\n  web:80:\n    endpoints:\n      - addr: 10.0.0.1:80\n      - addr: 10.0.0.1:80\n",
            "listed twice",
        ),
        ("services:\n  web:0: {}\n", "no valid port"),
        ("services:\n  \"we b:80\": {}\n", "not a DNS name"),
        (
            "services:\n  web:80:\n    profile:\n      routes:\n        - {name: r, path: \"(\"}\n",
            "not a regular expression",
        ),
        (
            "services:\n  web:80:\n    profile:\n      routes:\n        - {name: r, failure_statuses: [\"700\"]}\n",
            "not a status",
        ),
        (
            "services:\n  web:80:\n    policy:\n      routes:\n        - {name: r, backends: [{service: other:80}]}\n",
            "not a service in this file",
        ),
        (
            "services:\n  web:80:\n    policy:\n      protocol: carrier-pigeon\n",
            "carrier-pigeon",
        ),
        (
            "workloads:\n  w:\n    ports:\n      80:\n        authorizations: [{networks: [\"10.0.0.0/33\"]}]\n",
            "not a network",
        ),
        ("identity:\n  tokens:\n    web: \"\"\n", "empty token"),
        (
            "identity:\n  kubernetes: {api_server: \"http://k8s\"}\n",
            "identity.kubernetes.api_server",
        ),
        (
            "identity:\n  kubernetes: {audience: \"\"}\n",
            "identity.kubernetes.audience",
        ),
        ("identity:\n  kubernetes: {tokn: x}\n", "unknown field"),
        (
            "identity:\n  certificate_lifetime: forever\n",
            "identity.certificate_lifetime",
        ),
        ("servics: {}\n", "unknown field"),
        ("services: [1, 2]\n", "not valid YAML for a mesh file"),
    ];
    for (yaml, want) in cases {
        let e = err(yaml);
        assert!(
            e.contains(want),
            "{yaml:?}: {e:?} does not mention {want:?}"
        );
    }
}

#[test]
fn status_ranges() {
    assert_eq!(status_range("5xx"), Some((500, 599)));
    assert_eq!(status_range("404"), Some((404, 404)));
    assert_eq!(status_range("500-504"), Some((500, 504)));
    assert_eq!(status_range("504-500"), None);
    assert_eq!(status_range("6xx"), None);
    assert_eq!(status_range("99"), None);
}

#[test]
fn control_plane_identities() {
    // Linkerd's, in the default trust domain.
    let m = parse("").unwrap();
    assert_eq!(m.identity.trust_domain, "cluster.local");
    assert_eq!(
        m.identity.control_plane_identities,
        [
            "linkerd-identity.linkerd.serviceaccount.identity.linkerd.cluster.local",
            "linkerd-destination.linkerd.serviceaccount.identity.linkerd.cluster.local",
            "linkerd-policy.linkerd.serviceaccount.identity.linkerd.cluster.local",
        ]
    );
    // In another trust domain.
    let m = parse("identity:\n  trust_domain: Example.ORG.\n").unwrap();
    assert_eq!(m.identity.trust_domain, "example.org");
    assert_eq!(
        m.identity.control_plane_identities[1],
        "linkerd-destination.linkerd.serviceaccount.identity.linkerd.example.org"
    );
    // Given: normalised, kept in order.
    let m =
        parse("identity:\n  control_plane_identities: [Control.Mesh.Example., dst.mesh.example]\n")
            .unwrap();
    assert_eq!(
        m.identity.control_plane_identities,
        ["control.mesh.example", "dst.mesh.example"]
    );
    for (yaml, at) in [
        (
            "identity:\n  control_plane_identities: []\n",
            "identity.control_plane_identities",
        ),
        (
            "identity:\n  control_plane_identities: [a.example, \"spiffe://x/y\"]\n",
            "identity.control_plane_identities[1]",
        ),
        (
            "identity:\n  control_plane_identities: [a.example, A.example]\n",
            "identity.control_plane_identities[1]",
        ),
        (
            "identity:\n  trust_domain: \"not a domain\"\n",
            "identity.trust_domain",
        ),
    ] {
        let e = err(yaml);
        assert!(e.contains(at), "{yaml}: {e}");
    }
}

#[test]
fn kubernetes_defaults() {
    let m = Mesh::parse("identity:\n  kubernetes: {}\n", Path::new("/etc/linnet")).unwrap();
    assert_eq!(m.identity.kubernetes, Some(Kubernetes::default()));
    assert_eq!(Mesh::default().identity.kubernetes, None);
    let m = Mesh::parse(
        "identity:\n  kubernetes: {api_server: \"https://10.0.0.1:6443\", ca_file: ca.crt, timeout: 1s}\n",
        Path::new("/etc/linnet"),
    )
    .unwrap();
    let k = m.identity.kubernetes.unwrap();
    assert_eq!(k.api.api_server.port_u16(), Some(6443));
    assert_eq!(k.api.ca_file, Path::new("/etc/linnet/ca.crt"));
    assert_eq!(k.api.timeout, Duration::from_secs(1));
}

#[test]
fn kubernetes_discovery() {
    assert_eq!(parse("").unwrap().discovery, None);
    assert_eq!(parse("discovery: {}\n").unwrap().discovery, None);
    let d = parse("discovery:\n  kubernetes: {}\n")
        .unwrap()
        .discovery
        .unwrap();
    assert_eq!(d, Discovery::default());
    assert_eq!(d.api, ApiServer::default());
    let d = parse(
        "discovery:\n  kubernetes:\n    api_server: https://127.0.0.1:6443\n    ca_file: ca.crt\n    \
         cluster_domain: Example.ORG.\n    control_plane_namespace: mesh\n    max_services: 2\n    \
         max_endpoints: 3\n    max_pods: 4\n    max_event_bytes: 5\n    max_list_bytes: 6\n    \
         watch_timeout: 1m\n    min_backoff: 10ms\n    max_backoff: 1s\n    timeout: 2s\n",
    )
    .unwrap()
    .discovery
    .unwrap();
    assert_eq!(d.api.ca_file, Path::new("/etc/linnet/ca.crt"));
    assert_eq!(d.api.timeout, Duration::from_secs(2));
    assert_eq!(d.cluster_domain, "example.org");
    assert_eq!(d.control_plane_namespace, "mesh");
    assert_eq!((d.max_services, d.max_endpoints, d.max_pods), (2, 3, 4));
    assert_eq!((d.max_event_bytes, d.max_list_bytes), (5, 6));
    assert_eq!(d.watch_timeout, Duration::from_secs(60));
    assert_eq!(
        (d.min_backoff, d.max_backoff),
        (Duration::from_millis(10), Duration::from_secs(1))
    );
    for (yaml, at) in [
        ("discovery:\n  consul: {}\n", "unknown field"),
        (
            "discovery:\n  kubernetes: {namespaces: [a]}\n",
            "unknown field",
        ),
        (
            "discovery:\n  kubernetes: {max_services: 0}\n",
            "discovery.kubernetes.max_services",
        ),
        (
            "discovery:\n  kubernetes: {max_endpoints: -1}\n",
            "max_endpoints",
        ),
        (
            "discovery:\n  kubernetes: {max_event_bytes: 0}\n",
            "discovery.kubernetes.max_event_bytes",
        ),
        (
            "discovery:\n  kubernetes: {api_server: \"http://x\"}\n",
            "discovery.kubernetes.api_server",
        ),
        (
            "discovery:\n  kubernetes: {timeout: 0s}\n",
            "discovery.kubernetes.timeout",
        ),
        (
            "discovery:\n  kubernetes: {watch_timeout: 500ms}\n",
            "discovery.kubernetes.watch_timeout",
        ),
        (
            "discovery:\n  kubernetes: {min_backoff: 2s, max_backoff: 1s}\n",
            "discovery.kubernetes.max_backoff",
        ),
        (
            "discovery:\n  kubernetes: {cluster_domain: \"no way\"}\n",
            "discovery.kubernetes.cluster_domain",
        ),
        (
            "discovery:\n  kubernetes: {control_plane_namespace: a.b}\n",
            "discovery.kubernetes.control_plane_namespace",
        ),
    ] {
        let e = err(yaml);
        assert!(e.contains(at), "{yaml}: {e}");
    }
}

#[test]
fn the_file_wins_over_discovered_services() {
    let mut mesh = parse(
        "services:\n  web.demo.svc.cluster.local:80:\n    addresses: [10.96.0.10:80]\n    \
         endpoints: [{addr: \"10.1.0.1:8080\", identity: web.demo.serviceaccount.identity.linkerd.cluster.local}]\n",
    )
    .unwrap();
    let svc = |name: &str, vip: &str, ep: &str| Service {
        name: name.to_string(),
        port: 80,
        addresses: vec![vip.parse().unwrap()],
        endpoints: vec![Endpoint::plain(ep.parse().unwrap())],
        ..Service::default()
    };
    mesh.discovered = Arc::new(Discovered::new(
        [
            (
                "web.demo.svc.cluster.local:80".to_string(),
                Arc::new(svc(
                    "web.demo.svc.cluster.local",
                    "10.96.0.99:80",
                    "10.1.0.9:8080",
                )),
            ),
            (
                "other.demo.svc.cluster.local:80".to_string(),
                Arc::new(svc(
                    "other.demo.svc.cluster.local",
                    "10.96.0.10:80",
                    "10.1.0.1:8080",
                )),
            ),
        ]
        .into(),
    ));
    // By name, by address, by endpoint: the file's.
    let web = mesh.service("web.demo.svc.cluster.local:80").unwrap();
    assert_eq!(web.endpoints[0].addr, "10.1.0.1:8080".parse().unwrap());
    let by_vip = mesh
        .service_by_addr("10.96.0.10:80".parse().unwrap())
        .unwrap();
    assert_eq!(by_vip.name, "web.demo.svc.cluster.local");
    let (_, ep) = mesh.endpoint("10.1.0.1:8080".parse().unwrap()).unwrap();
    assert!(ep.identity.is_some());
    // What only discovery knows is found.
    assert_eq!(
        mesh.named("other.demo.svc.cluster.local:80").unwrap().name,
        "other.demo.svc.cluster.local"
    );
    assert!(mesh.endpoint("10.1.0.9:8080".parse().unwrap()).is_some());
    // A shadowed service's own address leads to the file's.
    let by_its_vip = mesh
        .service_by_addr("10.96.0.99:80".parse().unwrap())
        .unwrap();
    assert_eq!(
        by_its_vip.endpoints[0].addr,
        "10.1.0.1:8080".parse().unwrap()
    );
}

#[test]
fn targets_await_discovery_until_it_has_listed_the_cluster() {
    let mut mesh = parse("discovery:\n  kubernetes: {cluster_domain: example.org}\n").unwrap();
    assert!(mesh.awaits_discovery(Some("web.demo.svc.example.org")));
    assert!(mesh.awaits_discovery(None));
    assert!(!mesh.awaits_discovery(Some("web.demo.svc.cluster.local")));
    assert!(!mesh.awaits_discovery(Some("example.org")));
    mesh.discovered = Arc::new(Discovered::new(BTreeMap::new()));
    assert!(!mesh.awaits_discovery(Some("web.demo.svc.example.org")));
    assert!(!mesh.awaits_discovery(None));
    assert!(!parse("").unwrap().awaits_discovery(None));
}

#[test]
fn the_example_shows_the_discovery_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/mesh.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let block: String = text
        .lines()
        .skip_while(|l| *l != "# discovery:")
        .take_while(|l| l.starts_with('#'))
        .map(|l| format!("{}\n", l.strip_prefix("# ").unwrap_or("")))
        .collect();
    assert!(block.contains("max_backoff"), "{block}");
    let d = Mesh::parse(&block, Path::new("/")).unwrap().discovery;
    assert_eq!(d, Some(Discovery::default()));
}

#[test]
fn files_that_never_end_are_refused() {
    // A token file naming a device that never ends, and one just too big.
    let tmp = tempfile::tempdir().unwrap();
    let big = "x".repeat(MAX_TOKEN_FILE_BYTES as usize + 1);
    std::fs::write(tmp.path().join("big"), &big).unwrap();
    std::fs::write(tmp.path().join("fits"), &big[1..]).unwrap();
    for file in ["/dev/zero", "big"] {
        let yaml = format!(
            "identity:\n  tokens:\n    web.default.serviceaccount.identity.linkerd.cluster.local: {{file: {file}}}\n"
        );
        let e = Mesh::parse(&yaml, tmp.path()).unwrap_err().to_string();
        assert!(e.contains("larger than 65536 bytes"), "{file}: {e}");
    }
    let yaml = "identity:\n  tokens:\n    web.default.serviceaccount.identity.linkerd.cluster.local: {file: fits}\n";
    assert!(Mesh::parse(yaml, tmp.path()).is_ok());
    // The mesh file itself.
    let mesh = tmp.path().join("mesh.yaml");
    std::os::unix::fs::symlink("/dev/zero", &mesh).unwrap();
    let e = Mesh::load(&mesh).unwrap_err();
    assert!(
        format!("{e} {:?}", std::error::Error::source(&e)).contains("larger than"),
        "{e:?}"
    );
}
