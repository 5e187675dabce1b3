//! The `Server` messages served for named ports (routes, their
//! authorizations, rate limits, excepts, `"*"` and `tls`) and for ports
//! under each default policy; and a `WatchPort` stream following a change.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::config::DEFAULT_CLUSTER_NETWORKS;
use authn::permit_mesh_tls::Clients as C;
use inbound::inbound_server_policies_server::InboundServerPolicies;
use std::path::Path;

const A: &str = "a.ns.serviceaccount.identity.linkerd.cluster.local";
const B: &str = "b.ns.serviceaccount.identity.linkerd.cluster.local";

fn mesh(yaml: &str) -> Mesh {
    Mesh::parse(yaml, Path::new("/")).unwrap()
}

fn nets(a: &inbound::Authz) -> Vec<(String, Vec<String>)> {
    a.networks
        .iter()
        .map(|n| {
            let s = |n: &IpNetwork| ipnet::IpNet::try_from(*n).unwrap().to_string();
            (s(n.net.as_ref().unwrap()), n.except.iter().map(s).collect())
        })
        .collect()
}

fn permit(a: &inbound::Authz) -> authn::Permit {
    a.authentication.clone().unwrap().permit.unwrap()
}

/// The identities and suffixes (joined) a meshed permit admits.
fn meshed(a: &inbound::Authz) -> (Vec<String>, Vec<String>) {
    let authn::Permit::MeshTls(m) = permit(a) else {
        panic!("not meshTLS: {a:?}")
    };
    let Some(C::Identities(ids)) = m.clients else {
        panic!("no identities: {a:?}")
    };
    (
        ids.identities.into_iter().map(|i| i.name).collect(),
        ids.suffixes
            .into_iter()
            .map(|s| s.parts.join("."))
            .collect(),
    )
}

fn resource(m: &Option<Metadata>) -> Resource {
    match m.clone().unwrap().kind.unwrap() {
        metadata::Kind::Resource(r) => r,
        k => panic!("not a resource: {k:?}"),
    }
}

fn default_name(m: &Option<Metadata>) -> String {
    match m.clone().unwrap().kind.unwrap() {
        metadata::Kind::Default(n) => n,
        k => panic!("not a default: {k:?}"),
    }
}

fn http1(s: &inbound::Server) -> in_proto::Http1 {
    match s.protocol.clone().unwrap().kind.unwrap() {
        in_proto::Kind::Http1(h) => h,
        k => panic!("not http1: {k:?}"),
    }
}

const FILE: &str = r#"
workloads:
  web:
    ports:
      8080:
        protocol: http1
        authorizations:
          - {identities: [IDA, IDB]}
          - {name: probes, unauthenticated: true, networks: [10.0.0.0/8, 192.168.0.0/16], except: [10.1.0.0/16, 10.2.0.0/16]}
        rate_limit:
          total: 100
          identity: 10
          overrides: [{requests_per_second: 50, identities: [IDA]}]
        routes:
          - name: admin
            hosts: ["*.example.com"]
            matches: [{path_prefix: /admin}]
            filters: {request_headers: {set: {x-admin: "1"}}}
            authorizations: [{identities: [IDA]}]
          - name: root
            matches: [{path_prefix: /}]
          - name: closed
            matches: [{path_exact: /closed}]
            filters: {fail: {status: 503}}
            authorizations: []
      9090:
        protocol: grpc
        authorizations: [{identities: ["*"]}, {tls: true, networks: ["fd00::/8"]}]
        routes:
          - {name: get, matches: [{service: shop.Items, method: Get}]}
          - {name: delete, matches: [{service: shop.Items, method: Delete}], authorizations: []}
"#;

#[test]
fn a_named_http_port() {
    let m = mesh(&FILE.replace("IDA", A).replace("IDB", B));
    let s = server(&m, "web", 8080);
    assert_eq!(s.labels["kind"], "server");
    assert_eq!(s.labels["name"], "web:8080");
    assert_eq!(s.labels["group"], "policy.linkerd.io");

    // The server's authorizations, named and with excepts.
    let [ids, probes] = &s.authorizations[..] else {
        panic!("{:?}", s.authorizations)
    };
    assert_eq!(meshed(ids), (vec![A.into(), B.into()], Vec::new()));
    let r = resource(&ids.metadata);
    assert_eq!(
        (
            r.group.as_str(),
            r.kind.as_str(),
            r.name.as_str(),
            r.namespace.as_str()
        ),
        (
            "policy.linkerd.io",
            "AuthorizationPolicy",
            "web:8080:0",
            "web"
        )
    );
    assert_eq!(ids.networks.len(), 2, "all of IPv4 and IPv6");
    assert!(matches!(permit(probes), authn::Permit::Unauthenticated(_)));
    assert_eq!(resource(&probes.metadata).name, "probes");
    assert_eq!(
        nets(probes),
        [
            (
                "10.0.0.0/8".into(),
                vec!["10.1.0.0/16".into(), "10.2.0.0/16".into()]
            ),
            ("192.168.0.0/16".into(), Vec::new()),
        ]
    );

    let h = http1(&s);
    // The rate limit.
    let rl = h.local_rate_limit.unwrap();
    assert_eq!(resource(&rl.metadata).kind, "HTTPLocalRateLimitPolicy");
    assert_eq!(resource(&rl.metadata).name, "web:8080");
    assert_eq!(rl.total.unwrap().requests_per_second, 100);
    assert_eq!(rl.identity.unwrap().requests_per_second, 10);
    let o = &rl.overrides[0];
    assert_eq!(o.limit.unwrap().requests_per_second, 50);
    assert_eq!(o.clients.clone().unwrap().identities[0].name, A);

    // Routes: their own authorizations, inherited ones, none.
    let [admin, root, closed] = &h.routes[..] else {
        panic!("{:?}", h.routes)
    };
    let r = resource(&admin.metadata);
    assert_eq!(
        (r.kind.as_str(), r.name.as_str(), r.namespace.as_str()),
        ("HTTPRoute", "admin", "web")
    );
    assert_eq!(admin.authorizations.len(), 1);
    assert_eq!(meshed(&admin.authorizations[0]).0, [A]);
    assert_eq!(
        resource(&admin.authorizations[0].metadata).name,
        "web:8080:admin:0"
    );
    let http_route::host_match::Match::Suffix(sfx) = admin.hosts[0].r#match.clone().unwrap() else {
        panic!()
    };
    assert_eq!(sfx.reverse_labels, ["com", "example"]);
    assert!(matches!(
        admin.rules[0].filters[0].kind,
        Some(inbound::http_route::filter::Kind::RequestHeaderModifier(_))
    ));
    assert_eq!(root.authorizations, s.authorizations, "inherited");
    assert!(closed.authorizations.is_empty(), "admits nobody");
    assert!(matches!(
        closed.rules[0].filters[0].kind,
        Some(inbound::http_route::filter::Kind::FailureInjector(_))
    ));
}

#[test]
fn a_named_grpc_port() {
    let m = mesh(&FILE.replace("IDA", A).replace("IDB", B));
    let s = server(&m, "web", 9090);
    // "*" is the empty suffix; tls is meshTLS without identities.
    assert_eq!(
        meshed(&s.authorizations[0]),
        (Vec::new(), vec![String::new()])
    );
    let authn::Permit::MeshTls(tls) = permit(&s.authorizations[1]) else {
        panic!()
    };
    assert!(matches!(tls.clients, Some(C::Unauthenticated(_))));
    assert_eq!(
        nets(&s.authorizations[1]),
        [("fd00::/8".into(), Vec::new())]
    );
    let Some(in_proto::Kind::Grpc(g)) = s.protocol.unwrap().kind else {
        panic!()
    };
    let [get, delete] = &g.routes[..] else {
        panic!()
    };
    assert_eq!(resource(&get.metadata).kind, "GRPCRoute");
    assert_eq!(get.authorizations.len(), 2);
    assert_eq!(get.rules[0].matches[0].rpc.clone().unwrap().method, "Get");
    assert!(delete.authorizations.is_empty(), "Delete is denied");
}

#[test]
fn a_server_without_routes_has_one_with_its_authorizations() {
    let m = mesh(&format!(
        "workloads:\n  w:\n    ports:\n      80: {{protocol: http2, authorizations: [{{identities: [{A}]}}]}}\n      81: {{protocol: grpc, authorizations: [{{tls: true}}]}}\n"
    ));
    let s = server(&m, "w", 80);
    let Some(in_proto::Kind::Http2(h)) = s.protocol.unwrap().kind else {
        panic!()
    };
    assert_eq!(h.routes.len(), 1);
    assert_eq!(default_name(&h.routes[0].metadata), "default");
    assert_eq!(h.routes[0].authorizations, s.authorizations);
    assert!(h.local_rate_limit.is_none());
    let s = server(&m, "w", 81);
    let Some(in_proto::Kind::Grpc(g)) = s.protocol.unwrap().kind else {
        panic!()
    };
    assert_eq!(g.routes[0].authorizations, s.authorizations);
}

/// What an unnamed port admits under `policy`: (networks, permit kind).
fn default_port(m: &Mesh, workload: &str) -> inbound::Server {
    let s = server(m, workload, 1234);
    let Some(in_proto::Kind::Detect(d)) = s.protocol.clone().unwrap().kind else {
        panic!("not detect: {s:?}")
    };
    assert_eq!(d.http_routes.len(), 1);
    assert_eq!(d.http_routes[0].authorizations, s.authorizations);
    assert_eq!(s.labels["kind"], "default");
    s
}

#[test]
fn unnamed_ports_under_each_default_policy() {
    let all = vec![
        ("0.0.0.0/0".to_string(), Vec::new()),
        ("::/0".into(), Vec::new()),
    ];
    let cluster: Vec<_> = DEFAULT_CLUSTER_NETWORKS
        .iter()
        .map(|n| (n.to_string(), Vec::new()))
        .collect();
    for (policy, networks, authenticated) in [
        ("all-unauthenticated", all.clone(), false),
        ("all-authenticated", all.clone(), true),
        ("cluster-unauthenticated", cluster.clone(), false),
        ("cluster-authenticated", cluster.clone(), true),
        ("audit", all.clone(), false),
    ] {
        // In the file, and in a workload overriding the file's.
        for yaml in [
            format!("default_inbound_policy: {policy}\n"),
            format!(
                "default_inbound_policy: deny\nworkloads:\n  w:\n    default_inbound_policy: {policy}\n"
            ),
        ] {
            let s = default_port(&mesh(&yaml), "w");
            assert_eq!(s.labels["name"], policy);
            let [a] = &s.authorizations[..] else {
                panic!("{policy}: {:?}", s.authorizations)
            };
            assert_eq!(default_name(&a.metadata), policy);
            assert_eq!(nets(a), networks, "{policy}");
            if authenticated {
                assert_eq!(meshed(a), (Vec::new(), vec![String::new()]), "any identity");
            } else {
                assert!(matches!(permit(a), authn::Permit::Unauthenticated(_)));
            }
        }
    }
    // Deny: nobody, whether the file or the workload says it.
    for yaml in [
        "default_inbound_policy: deny\n",
        "workloads:\n  w:\n    default_inbound_policy: deny\n",
    ] {
        let s = default_port(&mesh(yaml), "w");
        assert_eq!(s.labels["name"], "deny");
        assert!(s.authorizations.is_empty());
    }
    // Nothing said: all-unauthenticated; another workload keeps the file's.
    let m = mesh("workloads:\n  w:\n    default_inbound_policy: deny\n");
    assert_eq!(
        default_port(&m, "other").labels["name"],
        "all-unauthenticated"
    );
    // The cluster's networks are the file's.
    let m =
        mesh("default_inbound_policy: cluster-unauthenticated\ncluster_networks: [10.8.0.0/16]\n");
    assert_eq!(
        nets(&default_port(&m, "w").authorizations[0]),
        [("10.8.0.0/16".to_string(), Vec::new())]
    );
}

async fn next(w: &mut Messages<inbound::Server>) -> inbound::Server {
    use futures_util::StreamExt;
    let f = tokio::time::timeout(std::time::Duration::from_secs(5), w.next());
    f.await.expect("a message within 5s").unwrap().unwrap()
}

#[tokio::test]
async fn watch_port_follows_changes() {
    let store = Store::new(mesh(""));
    let mut registry = prometheus_client::registry::Registry::default();
    let svc = Inbound {
        store: store.clone(),
        metrics: Metrics::register(&mut registry),
    };
    let spec = PortSpec {
        workload: "w".into(),
        port: 80,
    };
    let mut w = svc
        .watch_port(Request::new(spec))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut w).await.labels["name"], "all-unauthenticated");
    store.replace(mesh("workloads:\n  w:\n    default_inbound_policy: deny\n"));
    let s = next(&mut w).await;
    assert_eq!(s.labels["name"], "deny");
    assert!(s.authorizations.is_empty());
    store.replace(mesh("workloads:\n  w:\n    ports:\n      80: {protocol: opaque, authorizations: [{tls: true}]}\n"));
    let s = next(&mut w).await;
    assert_eq!(s.labels["name"], "w:80");
    assert!(matches!(
        s.protocol.unwrap().kind,
        Some(in_proto::Kind::Opaque(_))
    ));
}

#[test]
fn an_except_applies_to_every_network_it_overlaps() {
    use crate::config::{Authorization, Clients};
    let net = |s: &str| s.parse::<ipnet::IpNet>().unwrap();
    let a = Authorization {
        name: "a".into(),
        networks: vec![net("10.0.0.0/8"), net("10.1.0.0/16"), net("192.168.0.0/16")],
        except: vec![net("10.0.0.0/12")],
        clients: Clients::Unauthenticated,
    };
    let nets = super::networks(&a);
    let excepts: Vec<usize> = nets.iter().map(|n| n.except.len()).collect();
    // The /16 lies inside the excepted /12: excluded there too; the
    // unrelated network keeps everything.
    assert_eq!(excepts, [1, 1, 0]);
}
