//! Inbound policy in the file: default policies, cluster networks,
//! servers with routes, rate limits and every form of authorization, and
//! every validation error naming its place in the file.

use super::{err, parse};
use crate::config::*;

const A: &str = "a.ns.serviceaccount.identity.linkerd.cluster.local";
const B: &str = "b.ns.serviceaccount.identity.linkerd.cluster.local";

/// A file with workload `w` whose port 80 is `server` (indented for it).
fn port80(server: &str) -> String {
    format!("workloads:\n  w:\n    ports:\n      80:\n{server}")
}

fn server(yaml: &str) -> Server {
    let m = parse(&port80(yaml)).unwrap();
    m.workloads["w"].ports[&80].clone()
}

fn net(s: &str) -> ipnet::IpNet {
    s.parse().unwrap()
}

#[test]
fn defaults() {
    let m = parse("").unwrap();
    assert_eq!(m.default_inbound_policy, DefaultPolicy::AllUnauthenticated);
    assert_eq!(m.cluster_networks.len(), 5);
    assert!(m.cluster_networks.contains(&net("fd00::/8")));
    assert_eq!(
        m.default_inbound_policy("anyone"),
        DefaultPolicy::AllUnauthenticated
    );

    let m = parse(
        "default_inbound_policy: cluster-authenticated\ncluster_networks: [10.0.0.0/16, 10.9.9.9]\nworkloads:\n  db:\n    default_inbound_policy: deny\n  web: {}\n",
    )
    .unwrap();
    assert_eq!(m.cluster_networks, [net("10.0.0.0/16"), net("10.9.9.9/32")]);
    assert_eq!(m.default_inbound_policy("db"), DefaultPolicy::Deny);
    assert_eq!(
        m.default_inbound_policy("web"),
        DefaultPolicy::ClusterAuthenticated
    );
    assert_eq!(
        m.default_inbound_policy("other"),
        DefaultPolicy::ClusterAuthenticated
    );
    for (name, p) in [
        ("all-unauthenticated", DefaultPolicy::AllUnauthenticated),
        ("all-authenticated", DefaultPolicy::AllAuthenticated),
        (
            "cluster-unauthenticated",
            DefaultPolicy::ClusterUnauthenticated,
        ),
        ("cluster-authenticated", DefaultPolicy::ClusterAuthenticated),
        ("deny", DefaultPolicy::Deny),
        ("audit", DefaultPolicy::Audit),
    ] {
        let m = parse(&format!("default_inbound_policy: {name}\n")).unwrap();
        assert_eq!(m.default_inbound_policy, p);
        assert_eq!(p.name(), name);
    }
}

#[test]
fn authorization_forms() {
    let s = server(&format!(
        r#"        authorizations:
          - {{name: health, unauthenticated: true, networks: [10.0.0.0/8, 192.168.0.0/16], except: [10.1.0.0/16]}}
          - identities: [{A}, "*"]
            suffixes: [.other.serviceaccount.identity.linkerd.cluster.local]
          - {{tls: true}}
          - {{tls: true, networks: ["fd00::/8"]}}
          - {{suffixes: ["*"]}}
"#
    ));
    let a = &s.authorizations;
    assert_eq!(s.name, "w:80");
    assert_eq!(a.len(), 5);
    assert_eq!(a[0].name, "health");
    assert_eq!(a[0].clients, Clients::Unauthenticated);
    assert_eq!(a[0].except, [net("10.1.0.0/16")]);
    assert_eq!(a[1].name, "w:80:1");
    assert_eq!(
        a[1].clients,
        Clients::Meshed {
            identities: vec![A.into()],
            suffixes: vec![
                String::new(),
                "other.serviceaccount.identity.linkerd.cluster.local".into()
            ],
        }
    );
    assert_eq!(a[2].clients, Clients::Tls);
    assert!(a[2].networks.is_empty());
    assert_eq!(a[3].networks, [net("fd00::/8")]);
    assert_eq!(a[4].clients, Clients::any_identity());
}

#[test]
fn routes_and_rate_limit() {
    let s = server(&format!(
        r#"        name: web-http
        protocol: http1
        authorizations: [{{identities: [{A}, {B}]}}]
        rate_limit:
          total: 100
          identity: 10
          overrides: [{{requests_per_second: 50, identities: [{A}]}}]
        routes:
          - name: admin
            hosts: [web.example.com, "*.web.example.com"]
            matches: [{{path_prefix: /admin, method: post}}]
            filters: {{request_headers: {{set: {{x-admin: "1"}}}}}}
            authorizations: [{{identities: [{A}]}}]
          - name: root
            matches: [{{path_prefix: /}}]
          - name: closed
            matches: [{{path_exact: /closed}}]
            authorizations: []
          - name: moved
            matches: [{{path_prefix: /old}}]
            filters: {{redirect: {{path_prefix: /new, status: 301}}}}
"#
    ));
    assert_eq!(s.name, "web-http");
    let rl = s.rate_limit.unwrap();
    assert_eq!(
        (rl.name.as_str(), rl.total, rl.identity),
        ("web-http", Some(100), Some(10))
    );
    assert_eq!(rl.overrides[0].requests_per_second, 50);
    let r = &s.routes;
    assert_eq!(r.len(), 4);
    assert_eq!(
        r[0].hosts,
        [
            HostMatch::Exact("web.example.com".into()),
            HostMatch::Suffix("web.example.com".into())
        ]
    );
    assert_eq!(r[0].matches[0].method.as_deref(), Some("POST"));
    assert!(r[0].filters.request_headers.is_some());
    let own = r[0].authorizations.as_ref().unwrap();
    assert_eq!(own[0].name, "w:80:admin:0");
    assert_eq!(r[1].authorizations, None, "inherits the server's");
    assert_eq!(r[2].authorizations, Some(Vec::new()), "admits nobody");
    assert!(r[3].filters.redirect.is_some());

    let s = server(
        r#"        protocol: grpc
        routes:
          - name: get
            matches: [{service: shop.Items, method: Get, headers: {x-tenant: blue}}]
            filters: {fail: {grpc_code: unavailable, message: chaos, ratio: "1/10"}}
"#,
    );
    let g = &s.routes[0].grpc_matches[0];
    assert_eq!(
        (g.service.as_deref(), g.method.as_deref()),
        (Some("shop.Items"), Some("Get"))
    );
    assert_eq!(s.routes[0].filters.fail.as_ref().unwrap().code, 14);
}

#[test]
fn errors_say_where() {
    let at = "workloads.w.ports.80";
    let cases: Vec<(String, String, &str)> = vec![
        // Authorizations.
        (
            port80("        authorizations: [{}]\n"),
            format!("{at}.authorizations[0]"),
            "says nobody",
        ),
        (
            port80("        authorizations: [{networks: [10.0.0.0/8]}]\n"),
            format!("{at}.authorizations[0]"),
            "says nobody",
        ),
        (
            port80("        authorizations: [{unauthenticated: true, tls: true}]\n"),
            format!("{at}.authorizations[0]"),
            "not several",
        ),
        (
            port80(&format!(
                "        authorizations: [{{unauthenticated: true, identities: [{A}]}}]\n"
            )),
            format!("{at}.authorizations[0]"),
            "not several",
        ),
        (
            port80(
                "        authorizations: [{tls: true, networks: [10.0.0.0/8], except: [192.168.0.0/16]}]\n",
            ),
            format!("{at}.authorizations[0]"),
            "except 192.168.0.0/16 is not inside",
        ),
        (
            port80("        authorizations: [{tls: true, except: [nope]}]\n"),
            format!("{at}.authorizations[0]"),
            "not a network",
        ),
        (
            port80("        authorizations: [{identities: [\"not an identity\"]}]\n"),
            format!("{at}.authorizations[0]"),
            "not a DNS name",
        ),
        (
            port80("        authorizations: [{suffixes: [\"bad suffix\"]}]\n"),
            format!("{at}.authorizations[0]"),
            "suffix",
        ),
        (
            port80(
                "        authorizations: [{name: x, tls: true}, {name: x, unauthenticated: true}]\n",
            ),
            format!("{at}.authorizations[1]"),
            "two authorizations are named x",
        ),
        (
            port80("        authorizations: [{name: \"\", tls: true}]\n"),
            format!("{at}.authorizations[0].name"),
            "empty",
        ),
        // Routes.
        (
            port80("        protocol: opaque\n        routes: [{name: r}]\n"),
            format!("{at}.routes"),
            "opaque or TLS server has none",
        ),
        (
            port80("        routes: [{name: r}, {name: r}]\n"),
            format!("{at}.routes.r"),
            "two routes have this name",
        ),
        (
            port80("        routes: [{name: \"\"}]\n"),
            format!("{at}.routes."),
            "needs a name",
        ),
        (
            port80("        routes: [{name: r, hosts: [\"bad host\"]}]\n"),
            format!("{at}.routes.r.hosts"),
            "a host name",
        ),
        (
            port80("        routes: [{name: r, matches: [{path_prefix: nope}]}]\n"),
            format!("{at}.routes.r"),
            "does not start with /",
        ),
        (
            port80(
                "        protocol: grpc\n        routes: [{name: r, matches: [{path_prefix: /x}]}]\n",
            ),
            format!("{at}.routes.r"),
            "is an HTTP match",
        ),
        (
            port80("        routes: [{name: r, filters: {response_headers: {remove: [x]}}}]\n"),
            format!("{at}.routes.r"),
            "request headers only",
        ),
        (
            port80(
                "        protocol: grpc\n        routes: [{name: r, filters: {redirect: {host: x.example}}}]\n",
            ),
            format!("{at}.routes.r"),
            "not gRPC ones",
        ),
        (
            port80("        routes: [{name: r, filters: {fail: {status: 700}}}]\n"),
            format!("{at}.routes.r.filters.fail"),
            "not from 100 to 599",
        ),
        (
            port80("        routes: [{name: r, authorizations: [{}]}]\n"),
            format!("{at}.routes.r.authorizations[0]"),
            "says nobody",
        ),
        (
            port80("        routes: [{name: r, timeout: 1s}]\n"),
            String::new(),
            "unknown field `timeout`",
        ),
        // Rate limits.
        (
            port80("        protocol: grpc\n        rate_limit: {total: 1}\n"),
            format!("{at}.rate_limit"),
            "no rate limit for gRPC servers",
        ),
        (
            port80("        protocol: opaque\n        rate_limit: {total: 1}\n"),
            format!("{at}.rate_limit"),
            "counts HTTP requests",
        ),
        (
            port80("        rate_limit: {}\n"),
            format!("{at}.rate_limit"),
            "no limit",
        ),
        (
            port80("        rate_limit: {total: 0}\n"),
            format!("{at}.rate_limit.total"),
            "0 requests per second",
        ),
        (
            port80("        rate_limit: {identity: 0}\n"),
            format!("{at}.rate_limit.identity"),
            "0 requests per second",
        ),
        (
            port80(
                "        rate_limit: {overrides: [{requests_per_second: 0, identities: [a.example]}]}\n",
            ),
            format!("{at}.rate_limit.overrides[0]"),
            "more than 0",
        ),
        (
            port80("        rate_limit: {overrides: [{requests_per_second: 5}]}\n"),
            format!("{at}.rate_limit.overrides[0]"),
            "an override is for some identities",
        ),
        (
            port80(
                "        rate_limit: {overrides: [{requests_per_second: 5, identities: [\"*\"]}]}\n",
            ),
            format!("{at}.rate_limit.overrides[0]"),
            "not a DNS name",
        ),
        (
            port80("        rate_limit: {total: -1}\n"),
            String::new(),
            "not valid YAML",
        ),
        // Servers, workloads, the file.
        (
            "workloads:\n  w:\n    ports:\n      0: {}\n".into(),
            "workloads.w.ports.0".into(),
            "port 0",
        ),
        (
            port80("        name: \"\"\n"),
            format!("{at}.name"),
            "empty",
        ),
        (
            "workloads:\n  w:\n    default_inbound_policy: allow\n".into(),
            String::new(),
            "unknown variant `allow`",
        ),
        (
            "default_inbound_policy: everyone\n".into(),
            String::new(),
            "unknown variant `everyone`",
        ),
        (
            "cluster_networks: []\n".into(),
            "cluster_networks".into(),
            "empty",
        ),
        (
            "cluster_networks: [10.0.0.0/8, 300.0.0.0/8]\n".into(),
            "cluster_networks[1]".into(),
            "not a network",
        ),
    ];
    for (yaml, at, want) in cases {
        let e = err(&yaml);
        assert!(e.contains(&at), "{yaml}: {e:?} does not say where ({at})");
        assert!(e.contains(want), "{yaml}: {e:?} does not say {want:?}");
    }
}
