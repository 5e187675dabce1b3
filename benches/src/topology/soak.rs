//! The soak run's mesh: the `mesh` scenario's client sidecar and a
//! service whose endpoints change while traffic flows. Three server
//! sidecars stand ready; the mesh file lists one or two of them at a time
//! ([`Churn`] rewrites it, and `linnet control` sends the change to the
//! client sidecar), so that over a cycle every sidecar is added and
//! removed. With mTLS, `linnet control` issues certificates of the given
//! lifetime, and the sidecars renew them several times in a run.

use super::{
    CLIENT_ID, Control, Dirs, MESH_SERVICE, MESH_VIP, ProxyCmd, SERVER_ID, Side, Topology,
    start_proxy_with,
};
use crate::procs;
use anyhow::Result;
use std::{fmt::Write as _, net::SocketAddr, path::PathBuf, time::Duration};

/// Server sidecars that take turns as the service's endpoints.
const SERVERS: usize = 3;

/// Where the soak topology's proxies are watched from.
#[derive(Debug)]
pub(crate) struct Soak {
    /// Each proxy's name and admin address, in the topology's order.
    pub(crate) admins: Vec<(String, SocketAddr)>,
}

/// The service's endpoints, changed one step at a time.
#[derive(Debug)]
pub(crate) struct Churn {
    file: PathBuf,
    servers: Vec<SocketAddr>,
    mtls: bool,
    cert_lifetime: Duration,
    /// Which of [`Churn::set`]'s steps the mesh file holds.
    step: usize,
}

// === impl Churn ===

impl Churn {
    /// The servers (indexes into `servers`) listed at `step`: one, then
    /// it and the next, then the next alone, and so on round the servers,
    /// so that each step adds or removes one endpoint and never leaves
    /// none.
    fn set(step: usize, servers: usize) -> Vec<usize> {
        let first = (step / 2) % servers;
        if step % 2 == 0 {
            vec![first]
        } else {
            vec![first, (first + 1) % servers]
        }
    }

    /// The mesh file with the servers of `step`.
    fn yaml(&self, step: usize) -> String {
        let mut y = String::new();
        if self.mtls {
            let _ = write!(
                y,
                "identity:\n  certificate_lifetime: {}ms\n  tokens:\n    {CLIENT_ID}: client-token\n    {SERVER_ID}: server-token\n",
                self.cert_lifetime.as_millis().max(1000)
            );
        }
        let _ = write!(
            y,
            "services:\n  {MESH_SERVICE}:\n    addresses: [\"{MESH_VIP}\"]\n    endpoints:\n"
        );
        for i in Self::set(step, self.servers.len()) {
            let _ = writeln!(y, "      - addr: \"{}\"", self.servers[i]);
            if self.mtls {
                let _ = writeln!(y, "        identity: {SERVER_ID}");
            }
        }
        y
    }

    /// Moves to the next step: rewrites the mesh file (whole, by a
    /// rename, so that it is never read half written). Returns the
    /// endpoints now listed, by name (`inbound-2`).
    pub(crate) fn advance(&mut self) -> Result<String> {
        self.step += 1;
        let partial = self.file.with_extension("yaml.new");
        std::fs::write(&partial, self.yaml(self.step))?;
        std::fs::rename(&partial, &self.file)?;
        Ok(self.describe())
    }

    /// The endpoints listed now, by name.
    pub(crate) fn describe(&self) -> String {
        Self::set(self.step, self.servers.len())
            .iter()
            .map(|i| format!("inbound-{}", i + 1))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// How many endpoints are listed now.
    pub(crate) fn endpoints(&self) -> usize {
        Self::set(self.step, self.servers.len()).len()
    }
}

impl Topology {
    /// The client sidecar (following the service's endpoints from
    /// `linnet control`, which looks at its mesh file every second) and
    /// three server sidecars forwarding to `target`, over mTLS with
    /// certificates of `cert_lifetime` when `mtls`. Proxies: the client
    /// sidecar, then the server sidecars, each reported on its own.
    pub(crate) fn linnet_soak(
        cmd: &ProxyCmd,
        control: &std::path::Path,
        target: SocketAddr,
        mtls: bool,
        cert_lifetime: Duration,
        dirs: &Dirs,
    ) -> Result<(Self, Soak, Churn)> {
        let servers = (0..SERVERS)
            .map(|_| procs::free_addr())
            .collect::<Result<Vec<_>>>()?;
        let mut churn = Churn {
            file: PathBuf::new(),
            servers: servers.clone(),
            mtls,
            cert_lifetime,
            // Two endpoints to begin with.
            step: 1,
        };
        let plane = Control::start_reloading(control, &churn.yaml(churn.step), dirs, "1s")?;
        churn.file = plane.work.join("mesh.yaml");
        let env = |who: &str, id: &str| {
            let mut env = if mtls {
                plane.identity(who, id)
            } else {
                Vec::new()
            };
            // Renewal at 70% of a short lifetime must not wait for the
            // default minimum of 10 s.
            env.push(("LINKERD2_PROXY_IDENTITY_MIN_REFRESH".into(), "1s".into()));
            env
        };
        let mut proxies = Vec::new();
        let mut admins = Vec::new();
        for (i, addr) in servers.iter().enumerate() {
            let (mut p, _, admin) = start_proxy_with(
                cmd,
                &format!("inbound-{}-{}", plane.n, i + 1),
                Side::Inbound,
                Some(*addr),
                Some(target),
                &env("server", SERVER_ID),
                dirs,
            )?;
            p.name = format!("inbound-{}", i + 1);
            admins.push((p.name.clone(), admin));
            proxies.push(p);
        }
        let mut client_env = env("client", CLIENT_ID);
        client_env.push((
            "LINKERD2_PROXY_DESTINATION_SVC_ADDR".into(),
            plane.grpc.to_string(),
        ));
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
        proxies.insert(0, client);
        admins.insert(0, ("outbound".into(), client_admin));
        let topology = Self {
            proxies,
            _others: vec![plane.proc],
            ..Self::empty(entry)
        };
        Ok((topology, Soak { admins }, churn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_step_adds_or_removes_one_endpoint_and_never_leaves_none() {
        let sets: Vec<Vec<usize>> = (0..7).map(|s| Churn::set(s, 3)).collect();
        assert_eq!(
            sets,
            [
                vec![0],
                vec![0, 1],
                vec![1],
                vec![1, 2],
                vec![2],
                vec![2, 0],
                vec![0]
            ]
        );
    }

    #[test]
    fn the_mesh_file_names_the_listed_servers_and_the_lifetime() {
        let churn = Churn {
            file: PathBuf::new(),
            servers: vec![
                "127.0.0.1:20001".parse().unwrap(),
                "127.0.0.1:20002".parse().unwrap(),
                "127.0.0.1:20003".parse().unwrap(),
            ],
            mtls: true,
            cert_lifetime: Duration::from_secs(60),
            step: 1,
        };
        let y = churn.yaml(3);
        assert!(y.contains("certificate_lifetime: 60000ms"), "{y}");
        assert!(y.contains("127.0.0.1:20002") && y.contains("127.0.0.1:20003"));
        assert!(!y.contains("127.0.0.1:20001"));
        assert_eq!(y.matches(&format!("identity: {SERVER_ID}")).count(), 2);
        assert_eq!(churn.describe(), "inbound-1, inbound-2");
        assert_eq!(churn.endpoints(), 2);
    }
}
