//! The balanced mesh: a client sidecar that follows an outbound policy
//! (a route with a retry and a timeout) to a service of several endpoints,
//! each reaching one of a few server sidecars. The `mesh-balanced` and
//! `mesh-large` scenarios: the outbound stack's route selection, retries,
//! timeouts and balancer over several server sidecars and, in
//! `mesh-large`, thousands of endpoints and routes (`mesh` and
//! `mesh-http1` cross the same layers with one endpoint).
//!
//! A service of thousands of endpoints needs no thousands of processes:
//! a server sidecar listening on `0.0.0.0:PORT` is reached at every
//! loopback address `127.x.y.z:PORT`, and the client sidecar keeps one
//! endpoint (its own balancer entry and connection pool) per address.
//!
//! [`Probe`] looks afterwards at what the client sidecar did: how many
//! endpoints its balancer held, which endpoints it had connections to,
//! and how many requests each server sidecar served.

use super::{
    CLIENT_ID, Control, Dirs, MESH_SERVICE, MESH_VIP, ProxyCmd, SERVER_ID, Side, Topology,
    start_proxy_with,
};
use crate::{procs, report::Balance};
use anyhow::{Context, Result, bail};
use std::{
    collections::BTreeSet,
    fmt::Write as _,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    time::Duration,
};

/// The shape of a balanced mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Shape {
    /// Server sidecars, each its own process.
    pub(crate) servers: usize,
    /// Endpoints of the service: each server sidecar at 127.0.0.1, then
    /// the same sidecars in turn at other loopback addresses.
    pub(crate) endpoints: usize,
    /// Routes in the policy: `routes - 1` that match none of the
    /// benchmark's requests, listed first, then the route that takes them.
    pub(crate) routes: usize,
}

/// Loopback addresses available for endpoints beyond the first
/// `servers`: 127.0.1.1 to 127.0.255.254.
const MAX_ALIASES: usize = 255 * 254;

/// The benchmark's route: what `mesh-balanced` adds to `mesh`.
const DEFAULT_ROUTE: &str = "        - name: default\n          matches: [{path_prefix: /}]\n          timeouts: {request: 10s}\n          retry: {limit: 2, statuses: [\"5xx\"]}\n";

// === impl Shape ===

impl Shape {
    /// The address of each endpoint, given each server sidecar's port.
    fn endpoint_addrs(&self, ports: &[u16]) -> Vec<SocketAddr> {
        (0..self.endpoints)
            .map(|k| {
                let port = ports[k % ports.len()];
                let ip = match k.checked_sub(ports.len()) {
                    None => Ipv4Addr::LOCALHOST,
                    Some(a) => Ipv4Addr::new(127, 0, (1 + a / 254) as u8, (1 + a % 254) as u8),
                };
                SocketAddr::from((ip, port))
            })
            .collect()
    }

    /// The mesh file: identities, the service's endpoints (meshed when
    /// `mtls`) and its policy.
    fn mesh_yaml(&self, ports: &[u16], mtls: bool) -> String {
        let mut y = format!(
            "identity:\n  tokens:\n    {CLIENT_ID}: client-token\n    {SERVER_ID}: server-token\n\
             services:\n  {MESH_SERVICE}:\n    addresses: [\"{MESH_VIP}\"]\n    endpoints:\n"
        );
        // As `mesh-http1` lists its one endpoint: no protocol hint.
        for addr in self.endpoint_addrs(ports) {
            let _ = if mtls {
                writeln!(y, "      - {{addr: \"{addr}\", identity: {SERVER_ID}}}")
            } else {
                writeln!(y, "      - {{addr: \"{addr}\"}}")
            };
        }
        y.push_str("    policy:\n      routes:\n");
        // Selection looks at every route; these come first all the same,
        // so that a first-match selection would have to pass them too.
        for i in 1..self.routes {
            let _ = writeln!(
                y,
                "        - {{name: unmatched-{i:04}, matches: [{{path_prefix: /unmatched-{i:04}}}]}}"
            );
        }
        y.push_str(DEFAULT_ROUTE);
        y
    }
}

impl Topology {
    /// A client sidecar following the service's outbound policy over
    /// `shape`'s endpoints, served by `shape.servers` server sidecars
    /// forwarding to `target`; mTLS between them when `mtls`. Proxies:
    /// the client sidecar, then the server sidecars (summed in reports).
    pub(crate) fn linnet_balanced(
        cmd: &ProxyCmd,
        control: &std::path::Path,
        shape: Shape,
        target: SocketAddr,
        mtls: bool,
        dirs: &Dirs,
    ) -> Result<Self> {
        if shape.servers == 0 || shape.endpoints < shape.servers || shape.routes == 0 {
            bail!("a balanced mesh needs a server, an endpoint per server and a route: {shape:?}");
        }
        if shape.endpoints - shape.servers > MAX_ALIASES {
            bail!("at most {} endpoints", MAX_ALIASES + shape.servers);
        }
        let ports = (0..shape.servers)
            .map(|_| procs::free_port())
            .collect::<Result<Vec<u16>>>()?;
        let plane = Control::start(control, &shape.mesh_yaml(&ports, mtls), dirs)?;
        let env = |who: &str, id: &str| {
            if mtls {
                plane.identity(who, id)
            } else {
                Vec::new()
            }
        };
        // Only endpoints at other loopback addresses need the wildcard:
        // otherwise the sidecars listen on 127.0.0.1 alone, as in `mesh`.
        let host = if shape.endpoints > shape.servers {
            Ipv4Addr::UNSPECIFIED
        } else {
            Ipv4Addr::LOCALHOST
        };
        let mut servers = Vec::new();
        let mut server_admins = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let (mut p, _, admin) = start_proxy_with(
                cmd,
                &format!("inbound-{}-{}", plane.n, i + 1),
                Side::Inbound,
                Some(SocketAddr::from((host, *port))),
                Some(target),
                &env("server", SERVER_ID),
                dirs,
            )?;
            p.name = format!("inbound-{}", i + 1);
            servers.push(p);
            server_admins.push(admin);
        }
        let mut client_env = env("client", CLIENT_ID);
        for (k, v) in [
            (
                "LINKERD2_PROXY_DESTINATION_SVC_ADDR",
                plane.grpc.to_string(),
            ),
            ("LINKERD2_PROXY_POLICY_SVC_ADDR", plane.grpc.to_string()),
            ("LINKERD2_PROXY_POLICY_WORKLOAD", "bench-client".to_string()),
        ] {
            client_env.push((k.to_string(), v));
        }
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
        // The client sidecar looks the service up, and builds its balancer,
        // at the first request: the warm-up's.
        let probe = Probe {
            client_admin,
            server_admins,
            ports,
            endpoints: shape.endpoints,
        };
        let mut proxies = vec![client];
        proxies.extend(servers);
        Ok(Self {
            proxies,
            summed_from: Some(1),
            probe: Some(probe),
            _others: vec![plane.proc],
            ..Self::empty(entry)
        })
    }
}

/// Where to look at a balanced mesh from outside.
#[derive(Debug)]
pub(crate) struct Probe {
    client_admin: SocketAddr,
    server_admins: Vec<SocketAddr>,
    /// The server sidecars' ports: connections to them are the client
    /// sidecar's to the endpoints.
    ports: Vec<u16>,
    /// Endpoints in the mesh file.
    pub(crate) endpoints: usize,
}

/// What a [`Probe`] saw at one moment.
#[derive(Clone, Debug, Default)]
pub(crate) struct Snapshot {
    /// Requests each server sidecar has served so far.
    served: Vec<u64>,
    /// Connections the server sidecars have accepted so far.
    accepted: u64,
    /// Established connections to the endpoints, as (local, remote).
    connections: BTreeSet<(SocketAddr, SocketAddr)>,
    /// Endpoints in the client sidecar's balancer, in any state.
    balancer_endpoints: u64,
}

// === impl Snapshot ===

impl Snapshot {
    /// Endpoints with at least one established connection.
    pub(crate) fn connected(&self) -> usize {
        self.connections
            .iter()
            .map(|(_, remote)| remote)
            .collect::<BTreeSet<_>>()
            .len()
    }
}

// === impl Probe ===

impl Probe {
    /// Reads the server sidecars' request counts, the client sidecar's
    /// balancer and the open connections.
    pub(crate) fn snapshot(&self) -> Result<Snapshot> {
        let (mut served, mut accepted) = (Vec::new(), 0);
        for admin in &self.server_admins {
            let m = scrape(*admin)?;
            served.push(metric_sum(&m, "request_total", "direction=\"inbound\"") as u64);
            let from_peers = "direction=\"inbound\",peer=\"src\"";
            accepted += metric_sum(&m, "tcp_open_total", from_peers) as u64;
        }
        let tcp = std::fs::read_to_string("/proc/net/tcp").context("cannot read /proc/net/tcp")?;
        Ok(Snapshot {
            served,
            accepted,
            connections: connections_to(&tcp, &self.ports),
            balancer_endpoints: metric_sum(
                &scrape(self.client_admin)?,
                "outbound_http_balancer_endpoints",
                "",
            ) as u64,
        })
    }

    /// What happened between the end of the warm-up and the end of the
    /// measured load.
    pub(crate) fn balance(&self, warm: &Snapshot, end: &Snapshot, warmup_s: f64) -> Balance {
        Balance {
            endpoints: self.endpoints,
            balancer_endpoints: end.balancer_endpoints,
            warmup_s,
            connected_after_warmup: warm.connected(),
            connected_at_end: end.connected(),
            connections_opened: end.accepted.saturating_sub(warm.accepted),
            served: end
                .served
                .iter()
                .zip(warm.served.iter().chain(std::iter::repeat(&0)))
                .map(|(e, w)| e.saturating_sub(*w))
                .collect(),
        }
    }
}

/// The body of `GET /metrics` from an admin server.
pub(crate) fn scrape(admin: SocketAddr) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    // HTTP/1.0: the body ends with the connection, never chunked.
    s.write_all(b"GET /metrics HTTP/1.0\r\nhost: admin\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("no response from {admin}/metrics"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!(
            "{admin}/metrics: {}",
            head.lines().next().unwrap_or_default()
        );
    }
    Ok(body.to_string())
}

/// The sum of the samples of `name` whose labels contain `labels`.
pub(crate) fn metric_sum(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (series, value) = rest.rsplit_once(' ')?;
            let ours = series.is_empty() || series.starts_with('{');
            (ours && series.contains(labels)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// Established connections to loopback `ports`, as (local, remote), from
/// the text of `/proc/net/tcp`.
fn connections_to(proc_net_tcp: &str, ports: &[u16]) -> BTreeSet<(SocketAddr, SocketAddr)> {
    let addr = |hex: &str| -> Option<SocketAddr> {
        let (ip, port) = hex.split_once(':')?;
        // The address is printed as the 32-bit word in memory: in the
        // host's byte order.
        let ip = Ipv4Addr::from(u32::from_str_radix(ip, 16).ok()?.to_ne_bytes());
        Some(SocketAddr::new(
            IpAddr::V4(ip),
            u16::from_str_radix(port, 16).ok()?,
        ))
    };
    proc_net_tcp
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace().skip(1);
            let (local, remote, state) = (addr(f.next()?)?, addr(f.next()?)?, f.next()?);
            let to_endpoint = remote.ip().is_loopback() && ports.contains(&remote.port());
            (state == "01" && to_endpoint).then_some((local, remote))
        })
        .collect()
}

/// How many endpoints each server sidecar stands for.
#[cfg(test)]
fn per_server(shape: Shape, ports: &[u16]) -> std::collections::BTreeMap<u16, usize> {
    let mut m = std::collections::BTreeMap::new();
    for a in shape.endpoint_addrs(ports) {
        *m.entry(a.port()).or_default() += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_distinct_loopback_addresses_spread_over_the_servers() {
        let shape = Shape {
            servers: 3,
            endpoints: 10_000,
            routes: 1000,
        };
        let ports = [20001, 20002, 20003];
        let addrs = shape.endpoint_addrs(&ports);
        assert_eq!(addrs.iter().collect::<BTreeSet<_>>().len(), 10_000);
        assert!(addrs.iter().all(|a| a.ip().is_loopback()));
        assert_eq!(addrs[0], "127.0.0.1:20001".parse().unwrap());
        assert_eq!(addrs[3], "127.0.1.1:20001".parse().unwrap());
        let spread = per_server(shape, &ports);
        assert_eq!(
            spread.values().copied().collect::<Vec<_>>(),
            [3334, 3333, 3333]
        );
    }

    #[test]
    fn the_mesh_file_lists_every_endpoint_and_route_the_default_last() {
        let shape = Shape {
            servers: 3,
            endpoints: 5,
            routes: 3,
        };
        let y = shape.mesh_yaml(&[20001, 20002, 20003], true);
        assert_eq!(y.matches("- {addr:").count(), 5);
        assert_eq!(y.matches(&format!("identity: {SERVER_ID}}}")).count(), 5);
        assert!(y.contains("unmatched-0001") && y.contains("unmatched-0002"));
        assert!(!y.contains("unmatched-0003"));
        assert!(y.ends_with(DEFAULT_ROUTE));
        let plain = shape.mesh_yaml(&[20001, 20002, 20003], false);
        assert!(!plain.contains(&format!("identity: {SERVER_ID}}}")));
    }

    #[test]
    fn reads_connections_and_metrics() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue\n\
                   0: 0100007F:9C41 0100007F:4E21 01 00000000:00000000\n\
                   1: 0100007F:9C42 0101007F:4E22 01 00000000:00000000\n\
                   2: 0100007F:4E21 0100007F:9C41 01 00000000:00000000\n\
                   3: 0100007F:9C43 0100007F:4E21 06 00000000:00000000\n";
        let c = connections_to(tcp, &[0x4E21, 0x4E22]);
        let remotes: Vec<String> = c.iter().map(|(_, r)| r.to_string()).collect();
        assert_eq!(remotes, ["127.0.0.1:20001", "127.0.1.1:20002"]);

        let m = "# TYPE request_total counter\n\
                 request_total{direction=\"inbound\",x=\"a\"} 5\n\
                 request_total{direction=\"outbound\",x=\"a\"} 7\n\
                 request_total{direction=\"inbound\",x=\"b\"} 2\n\
                 request_total_other{direction=\"inbound\"} 100\n";
        assert_eq!(metric_sum(m, "request_total", "direction=\"inbound\""), 7.0);
        assert_eq!(metric_sum(m, "request_total", ""), 14.0);
    }
}
