//! The `mesh` and `mesh-http1` scenarios: a client sidecar and a server
//! sidecar configured the way a real deployment has them, from one mesh
//! file served by `linnet control`.
//!
//! The mesh file ([`MeshFile`]) gives the service what Linkerd's control
//! plane gives a meshed service: its endpoint with the server's identity
//! and, in `mesh`, the `h2` protocol hint (so the client sidecar carries
//! HTTP/1.1 requests to the server sidecar as HTTP/2, with
//! `l5d-orig-proto`; `mesh-http1` leaves the hint out, so they travel as
//! HTTP/1.1 inside mTLS); an outbound policy whose routes (one that
//! matches no benchmark request, then the default route with a request
//! timeout and retries on 5xx) lead to a balancer (PeakEWMA, a bounded
//! queue, consecutive-failure accrual) over the service's endpoints; a
//! profile with the same default route and a retry budget, for proxies
//! that follow profiles rather than policies (Linnet follows the policy,
//! whose retries its default budget bounds: 20%, 10/s, 10 s); and the
//! server workload's inbound policy: one server on the application's port
//! admitting the client's identity only, with one route. Both sidecars
//! follow it all through the policy API (`*_POLICY_SVC_ADDR`), so every
//! request crosses route selection, the timeout and retry layers, the
//! balancer and the server's authorization, as in a cluster.
//!
//! [`Sidecars::check`] reads back from the two sidecars that it did: how
//! many connections the client sidecar made to the server sidecar (one
//! with `h2`: every request is multiplexed on it), how many requests took
//! the default route, and how many the authorization admitted.
//!
//! Loopback placement is here ([`Topology::linnet_mesh`]); between two
//! network namespaces, see [`super::pods`].

use super::{
    CLIENT_ID, Control, Dirs, MESH_SERVICE, MESH_VIP, ProxyCmd, SERVER_ID, Side, Topology,
    metric_sum, pods::Pods, scrape, start_proxy_with,
};
use crate::procs;
use anyhow::Result;
use serde::Serialize;
use std::{fmt::Write as _, net::SocketAddr};

/// The route the benchmark's requests take.
pub(crate) const ROUTE: &str = "default";
/// The server sidecar's authorization that admits the client.
pub(crate) const AUTHZ: &str = "bench-client";
/// The server workload, as its sidecar names it to the policy API.
pub(crate) const SERVER_WORKLOAD: &str = "bench-server";
/// The client workload.
pub(crate) const CLIENT_WORKLOAD: &str = "bench-client";

/// The mesh file of `mesh` and `mesh-http1`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MeshFile {
    /// The service's one endpoint: where the server sidecar is reached
    /// (its inbound listener on loopback; the server pod's application
    /// port, intercepted, between pods).
    pub(crate) endpoint: SocketAddr,
    /// The application's port, which the server's inbound policy covers.
    pub(crate) app_port: u16,
    /// Whether the endpoint carries the `h2` hint.
    pub(crate) h2: bool,
    /// Identities and mTLS (else plaintext, `--plaintext`: no identities,
    /// and an authorization of unauthenticated clients).
    pub(crate) mtls: bool,
}

// === impl MeshFile ===

impl MeshFile {
    pub(crate) fn yaml(&self) -> String {
        let mut y = String::new();
        if self.mtls {
            let _ = write!(
                y,
                "identity:\n  tokens:\n    {CLIENT_ID}: client-token\n    {SERVER_ID}: server-token\n"
            );
        }
        let _ = write!(
            y,
            "services:\n  {MESH_SERVICE}:\n    addresses: [\"{MESH_VIP}\"]\n    labels: {{namespace: bench, service: bench}}\n    endpoints:\n      - addr: \"{}\"\n",
            self.endpoint
        );
        if self.mtls {
            let _ = writeln!(y, "        identity: {SERVER_ID}");
        }
        if self.h2 {
            y.push_str("        protocol: h2\n");
        }
        y.push_str("        labels: {pod: bench-server-1}\n");
        // For proxies that follow profiles: the default route and a budget.
        y.push_str(
            "    profile:\n      retry_budget: {ratio: 0.2, min_per_second: 10, ttl: 10s}\n      routes:\n\
             \x20       - {name: default, path: \"^/.*\", timeout: 10s, retryable: true, failure_statuses: [\"5xx\"]}\n",
        );
        let _ = write!(
            y,
            "    policy:\n      protocol: detect\n      failure_accrual: {{consecutive_failures: 7, min_backoff: 1s, max_backoff: 60s, jitter_ratio: 0.5}}\n      routes:\n\
             \x20       - name: uploads\n          matches: [{{path_prefix: /uploads, method: POST}}]\n          timeouts: {{request: 30s}}\n\
             \x20       - name: {ROUTE}\n          matches: [{{path_prefix: /}}]\n          backends:\n\
             \x20           - service: {MESH_SERVICE}\n              load: {{default_rtt: 30ms, decay: 10s}}\n              queue: {{capacity: 100, failfast_timeout: 3s}}\n\
             \x20         timeouts: {{request: 10s}}\n          retry: {{limit: 2, statuses: [\"5xx\"], backoff: {{min: 25ms, max: 250ms}}}}\n"
        );
        let client = if self.mtls {
            format!("identities: [{CLIENT_ID}]")
        } else {
            "unauthenticated: true".to_string()
        };
        let _ = write!(
            y,
            "workloads:\n  {SERVER_WORKLOAD}:\n    ports:\n      {}:\n        name: bench-http\n        protocol: detect\n        authorizations:\n\
             \x20         - {{name: {AUTHZ}, {client}}}\n        routes:\n          - {{name: root, matches: [{{path_prefix: /}}]}}\n",
            self.app_port
        );
        y
    }

    /// The environment a sidecar needs to follow this mesh's policies
    /// from the control plane at `control`: the server's or the client's.
    pub(crate) fn policy_env(control: SocketAddr, server: bool) -> Vec<(String, String)> {
        let mut env = vec![(
            "LINKERD2_PROXY_POLICY_SVC_ADDR".to_string(),
            control.to_string(),
        )];
        if server {
            env.push((
                "LINKERD2_PROXY_POLICY_WORKLOAD".into(),
                SERVER_WORKLOAD.into(),
            ));
        } else {
            env.push((
                "LINKERD2_PROXY_POLICY_WORKLOAD".into(),
                CLIENT_WORKLOAD.into(),
            ));
            env.push((
                "LINKERD2_PROXY_DESTINATION_SVC_ADDR".into(),
                control.to_string(),
            ));
        }
        env
    }
}

/// Where to read what a mesh's two sidecars did.
#[derive(Debug)]
pub(crate) struct Sidecars {
    pub(crate) client_admin: SocketAddr,
    pub(crate) server_admin: SocketAddr,
}

/// What the requests of a run crossed, read from the sidecars.
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct PathCheck {
    /// Connections the server sidecar accepted from the client sidecar:
    /// one with the `h2` hint (requests multiplexed), usually more
    /// without it (one per request in flight).
    pub(crate) peer_connections: u64,
    /// Requests the client sidecar sent down the mesh file's default
    /// route.
    pub(crate) routed: u64,
    /// Requests the server sidecar's policy admitted by the mesh file's
    /// authorization of the client.
    pub(crate) authorized: u64,
}

// === impl Sidecars ===

impl Sidecars {
    /// Scrapes both sidecars (from inside their pods, when they are in
    /// pods).
    pub(crate) fn check(&self, pods: Option<&Pods>) -> Result<PathCheck> {
        let (client, server) = match pods {
            Some(p) => (
                p.client.run(|| scrape(self.client_admin))?,
                p.server.run(|| scrape(self.server_admin))?,
            ),
            None => (scrape(self.client_admin)?, scrape(self.server_admin)?),
        };
        let route = format!("route_name=\"{ROUTE}\"");
        let authz = format!("authz_name=\"{AUTHZ}\"");
        Ok(PathCheck {
            peer_connections: metric_sum(
                &server,
                "tcp_open_total",
                "direction=\"inbound\",peer=\"src\"",
            ) as u64,
            routed: metric_sum(
                &client,
                "outbound_http_route_backend_requests_total",
                &route,
            ) as u64,
            authorized: metric_sum(&server, "inbound_http_authz_allow_total", &authz) as u64,
        })
    }
}

impl Topology {
    /// `mesh` (`h2`) or `mesh-http1` on loopback: the client sidecar's
    /// original destination is fixed to the service's virtual address,
    /// the server sidecar's to `target` (the backend).
    pub(crate) fn linnet_mesh(
        cmd: &ProxyCmd,
        control: &std::path::Path,
        h2: bool,
        mtls: bool,
        target: SocketAddr,
        dirs: &Dirs,
    ) -> Result<Self> {
        let inbound = procs::free_addr()?;
        let file = MeshFile {
            endpoint: inbound,
            app_port: target.port(),
            h2,
            mtls,
        };
        let plane = Control::start(control, &file.yaml(), dirs)?;
        let id = |who: &str, id: &str| {
            if mtls {
                plane.identity(who, id)
            } else {
                Vec::new()
            }
        };
        let mut server_env = id("server", SERVER_ID);
        server_env.extend(MeshFile::policy_env(plane.grpc, true));
        let (mut server, _, server_admin) = start_proxy_with(
            cmd,
            &format!("inbound-{}", plane.n),
            Side::Inbound,
            Some(inbound),
            Some(target),
            &server_env,
            dirs,
        )?;
        let mut client_env = id("client", CLIENT_ID);
        client_env.extend(MeshFile::policy_env(plane.grpc, false));
        let (mut client, entry, client_admin) = start_proxy_with(
            cmd,
            &format!("outbound-{}", plane.n),
            Side::Outbound,
            None,
            Some(MESH_VIP.parse()?),
            &client_env,
            dirs,
        )?;
        client.name = "outbound".into();
        server.name = "inbound".into();
        Ok(Self {
            entry,
            proxies: vec![client, server],
            sidecars: Some(Sidecars {
                client_admin,
                server_admin,
            }),
            _others: vec![plane.proc],
            ..Self::empty(entry)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(h2: bool, mtls: bool) -> MeshFile {
        MeshFile {
            endpoint: "10.77.200.2:8080".parse().unwrap(),
            app_port: 8080,
            h2,
            mtls,
        }
    }

    #[test]
    fn only_mesh_hints_h2() {
        let y = file(true, true).yaml();
        assert!(y.contains("protocol: h2"), "{y}");
        assert!(y.contains(&format!("identity: {SERVER_ID}")), "{y}");
        assert!(!file(false, true).yaml().contains("protocol: h2"));
    }

    #[test]
    fn the_file_has_routes_retries_a_balancer_and_an_authorization() {
        let y = file(true, true).yaml();
        for part in [
            "retry_budget:",
            "name: default",
            "retry: {limit: 2",
            "load: {default_rtt",
            "queue: {capacity",
            "failure_accrual:",
            "      8080:",
            &format!("{{name: {AUTHZ}, identities: [{CLIENT_ID}]}}"),
        ] {
            assert!(y.contains(part), "{part} missing from\n{y}");
        }
        // `linnet control` takes it as it is.
        let mesh = linnet_control::config::Mesh::parse(&y, std::path::Path::new("."))
            .unwrap_or_else(|e| panic!("{e}\n{y}"));
        let svc = &mesh.services[MESH_SERVICE];
        assert_eq!(
            svc.endpoints[0].protocol,
            Some(linnet_control::config::Hint::H2)
        );
        assert!(mesh.workloads.contains_key(SERVER_WORKLOAD));
        let plain = file(true, false).yaml();
        linnet_control::config::Mesh::parse(&plain, std::path::Path::new("."))
            .unwrap_or_else(|e| panic!("{e}\n{plain}"));
        assert!(!plain.contains("identity"), "{plain}");
        assert!(plain.contains("unauthenticated: true"), "{plain}");
    }
}
