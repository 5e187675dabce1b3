//! The objects as the API server writes them, summarised, bounded, and
//! made into services.

use super::*;
use crate::kubernetes::objects::{Event, Resource};
use serde_json::{Value, json};

const WEB_ID: &str = "web.demo.serviceaccount.identity.linkerd.cluster.local";

fn cfg() -> Discovery {
    Discovery::default()
}

fn list(r: Resource, items: serde_json::Value) -> Vec<(Key, Summary)> {
    let body = json!({"metadata": {"resourceVersion": "7"}, "items": items});
    let page = r.decode_list(body.to_string().as_bytes()).unwrap();
    assert_eq!(page.resource_version.as_deref(), Some("7"));
    page.items
        .into_iter()
        .filter_map(|(k, s)| Some((k, s?)))
        .collect()
}

fn service(name: &str, ip: &str, ports: serde_json::Value) -> serde_json::Value {
    json!({
        "metadata": {"name": name, "namespace": "demo", "resourceVersion": "3", "uid": "x"},
        "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "ports": ports},
        "status": {"loadBalancer": {}},
    })
}

fn slice(name: &str, svc: &str, port: u16, eps: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "demo",
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": eps,
    })
}

fn pod(name: &str, sa: &str, meshed: bool) -> serde_json::Value {
    let mut containers = vec![json!({"name": "app", "image": "app:1"})];
    if meshed {
        containers.push(json!({"name": "linnet-proxy",
            "ports": [{"name": "linkerd-proxy", "containerPort": 4143}]}));
    }
    json!({
        "metadata": {"name": name, "namespace": "demo"},
        "spec": {"serviceAccountName": sa, "containers": containers},
        "status": {"phase": "Running", "podIP": "10.1.0.1"},
    })
}

/// An endpoint; a pod of "" is an endpoint that is no pod.
fn ready(ip: &str, pod: &str, ready: bool) -> serde_json::Value {
    let mut e = json!({"addresses": [ip], "conditions": {"ready": ready}});
    if !pod.is_empty() {
        e["targetRef"] = json!({"kind": "Pod", "name": pod, "namespace": "demo"});
    }
    e
}

/// `web`'s one slice, on 8080: (address, pod, ready) of its endpoints.
fn web_slice(eps: &[(&str, &str, bool)]) -> Vec<(Key, Summary)> {
    let eps: Vec<Value> = eps.iter().map(|(ip, p, r)| ready(ip, p, *r)).collect();
    list(
        Resource::EndpointSlices,
        json!([slice("web-1", "web", 8080, json!(eps))]),
    )
}

fn state(cfg: &Discovery) -> State {
    let mut s = State::new(cfg);
    assert!(!s.ready());
    s.listed(
        Resource::Services,
        list(
            Resource::Services,
            json!([service(
                "web",
                "10.96.0.10",
                json!([{"name": "http", "port": 80}])
            )]),
        ),
    );
    s.listed(
        Resource::EndpointSlices,
        web_slice(&[
            ("10.1.0.1", "web-a", true),
            ("10.1.0.2", "plain-b", true),
            ("10.1.0.3", "web-c", false),
            ("10.1.0.4", "unknown-d", true),
            ("10.1.0.5", "", true),
        ]),
    );
    assert!(!s.ready());
    s.listed(
        Resource::Pods,
        list(
            Resource::Pods,
            json!([
                pod("web-a", "web", true),
                pod("plain-b", "", false),
                pod("web-c", "web", true)
            ]),
        ),
    );
    assert!(s.ready());
    s
}

#[test]
fn services_are_served_as_the_file_would_list_them() {
    let cfg = cfg();
    let d = state(&cfg).services(&cfg, "cluster.local");
    assert_eq!(d.len(), 1);
    let svc = d.service("web.demo.svc.cluster.local:80").unwrap();
    assert_eq!(svc.addresses, ["10.96.0.10:80".parse().unwrap()]);
    assert_eq!(svc.labels["namespace"], "demo");
    assert_eq!(svc.labels["service"], "web");
    assert_eq!(svc.policy.protocol, Protocol::Detect);
    // Ready endpoints only; the one whose pod is unknown left out.
    let addrs: Vec<String> = svc.endpoints.iter().map(|e| e.addr.to_string()).collect();
    assert_eq!(addrs, ["10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.5:8080"]);
    let meshed = &svc.endpoints[0];
    assert_eq!(meshed.identity.as_deref(), Some(WEB_ID));
    assert_eq!(meshed.protocol, Some(Hint::H2));
    assert_eq!(meshed.opaque_transport_port, None);
    assert_eq!(meshed.labels["pod"], "web-a");
    // A pod without the proxy, and an endpoint that is no pod: plain.
    for plain in &svc.endpoints[1..] {
        assert_eq!((plain.identity.as_ref(), plain.protocol), (None, None));
    }
    assert_eq!(svc.endpoints[1].labels["serviceaccount"], "default");
    // Lookups by address.
    assert_eq!(
        d.service_by_addr("10.96.0.10:80".parse().unwrap())
            .unwrap()
            .name,
        "web.demo.svc.cluster.local"
    );
    let (_, e) = d.endpoint("10.1.0.1:8080".parse().unwrap()).unwrap();
    assert_eq!(e.identity.as_deref(), Some(WEB_ID));
    assert!(
        d.service_by_addr("10.96.0.10:81".parse().unwrap())
            .is_none()
    );
}

#[test]
fn settings_name_the_identity_and_opaque_ports_get_the_transport() {
    let cfg = Discovery {
        cluster_domain: "example.org".into(),
        control_plane_namespace: "mesh".into(),
        ..cfg()
    };
    let mut s = state(&cfg);
    let mut p = pod("web-a", "web", true);
    p["metadata"]["annotations"] = json!({"config.linkerd.io/opaque-ports": "3306, 8000-8100"});
    let Event::Put(key, Some(summary), _) = Resource::Pods
        .decode_event(
            json!({"type": "MODIFIED", "object": p})
                .to_string()
                .as_bytes(),
        )
        .unwrap()
    else {
        panic!("not a put")
    };
    assert_eq!(s.put(key, summary), Ok(true));
    let d = s.services(&cfg, "td.example");
    let svc = d.service("web.demo.svc.example.org:80").unwrap();
    let e = &svc.endpoints[0];
    assert_eq!(
        e.identity.as_deref(),
        Some("web.demo.serviceaccount.identity.mesh.td.example")
    );
    assert_eq!(e.protocol, Some(Hint::Opaque));
    assert_eq!(e.opaque_transport_port, Some(4143));
}

#[test]
fn bounds_keep_what_is_known() {
    let cfg = Discovery {
        max_services: 1,
        max_endpoints: 4,
        ..cfg()
    };
    let mut s = state(&cfg);
    // A second service does not fit.
    let more = list(
        Resource::Services,
        json!([
            service("web", "10.96.0.10", json!([{"name": "http", "port": 80}])),
            service("db", "10.96.0.11", json!([{"port": 5432}])),
        ]),
    );
    assert_eq!(
        s.listed(Resource::Services, more.clone()),
        Some((Limit::Services, 1))
    );
    assert_eq!(
        s.put(more[1].0.clone(), more[1].1.clone()),
        Err(Limit::Services)
    );
    // A slice that would take the endpoints over their bound is refused,
    // and the slice as it was stays.
    let big = web_slice(&[
        ("10.1.0.1", "web-a", true),
        ("10.1.0.6", "web-a", true),
        ("10.1.0.7", "web-a", true),
        ("10.1.0.8", "web-a", true),
        ("10.1.0.9", "web-a", true),
    ]);
    let (key, summary) = big[0].clone();
    assert_eq!(s.put(key, summary), Err(Limit::Endpoints));
    let d = s.services(&cfg, "cluster.local");
    assert_eq!(d.len(), 1);
    assert_eq!(
        d.service("web.demo.svc.cluster.local:80")
            .unwrap()
            .endpoints
            .len(),
        3
    );
    // The same object again changes nothing; deleting it does.
    let known = s
        .slices
        .items
        .iter()
        .next()
        .map(|(k, v)| (k.clone(), v.clone()))
        .unwrap();
    assert_eq!(s.put(known.0.clone(), Summary::Slice(known.1)), Ok(false));
    assert!(s.delete(Resource::EndpointSlices, &known.0));
    assert!(!s.delete(Resource::EndpointSlices, &known.0));
    assert!(
        s.services(&cfg, "cluster.local")
            .service("web.demo.svc.cluster.local:80")
            .unwrap()
            .endpoints
            .is_empty()
    );
}

#[test]
fn what_the_api_server_may_send() {
    // Objects with nothing in them are summarised without, not refused.
    let items = list(
        Resource::Services,
        json!([{}, {"metadata": {"name": "x"}, "spec": {}}]),
    );
    assert_eq!(items.len(), 1);
    let items = list(
        Resource::Pods,
        json!([{"metadata": {"name": "p"}, "spec": {}}]),
    );
    assert!(
        matches!(&items[0].1, Summary::Pod(p) if p.service_account == "default" && p.proxy.is_none())
    );
    // ExternalName services, ended pods and FQDN slices are not kept.
    assert!(
        list(
            Resource::Services,
            json!([{"metadata": {"name": "x"}, "spec": {"type": "ExternalName"}}])
        )
        .is_empty()
    );
    assert!(
        list(
            Resource::Pods,
            json!([{"metadata": {"name": "p"}, "spec": {}, "status": {"phase": "Succeeded"}}])
        )
        .is_empty()
    );
    let mut fqdn = slice("s", "web", 80, json!([]));
    fqdn["addressType"] = json!("FQDN");
    assert!(list(Resource::EndpointSlices, json!([fqdn])).is_empty());
    // Events.
    let ev = |v: serde_json::Value| Resource::Pods.decode_event(v.to_string().as_bytes());
    assert!(matches!(
        ev(json!({"type": "BOOKMARK", "object": {"kind": "Pod", "metadata": {"resourceVersion": "12"}}})).unwrap(),
        Event::Bookmark(Some(v)) if v == "12"
    ));
    assert!(matches!(
        ev(
            json!({"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}})
        )
        .unwrap(),
        Event::Error(410, _)
    ));
    assert!(matches!(
        ev(json!({"type": "DELETED", "object": pod("web-a", "web", true)})).unwrap(),
        Event::Deleted((ns, name), _) if ns == "demo" && name == "web-a"
    ));
    assert!(ev(json!({"type": "SURPRISE", "object": {}})).is_err());
    assert!(
        Resource::Pods
            .decode_event(b"{\"type\": \"ADDED\", \"obj")
            .is_err()
    );
    assert!(Resource::Pods.decode_list(b"<html>").is_err());
    assert!(Resource::Pods.decode_list(b"{\"items\": 3}").is_err());
    assert_eq!(
        crate::kubernetes::objects::port_ranges("25, 8000-8100,x,9-1,0"),
        [(25, 25), (8000, 8100)]
    );
}
