//! Two pods: the placement of `direct`, `mesh`, `mesh-http1` and
//! `haproxy` when the harness runs as root.
//!
//! A [`Pods`] is two network namespaces joined by a veth pair (the test
//! fixture `linnet_test_support::netns`), made afresh for each run and
//! deleted after it (on a signal too: [`crate::cleanup`]). The client pod
//! holds the load generator and the client-side proxy; the server pod,
//! at [`Pods::server_ip`], the backend on [`APP_PORT`] and the
//! server-side proxy. In the meshed scenarios both pods have
//! `linnet init`'s iptables rules and the sidecars run as the proxy's
//! uid, as in a cluster: the load generator dials the service's virtual
//! address, the client pod's rules hand the connection to its sidecar,
//! and the server pod's rules hand the client sidecar's connection to the
//! server sidecar, whose original destination is the application. Each
//! pod has its own `linnet control` on its loopback, from one mesh file
//! (so one CA), as a node-local control plane would be reached. HAProxy
//! has no interception: its hops are addressed explicitly, in the same
//! pods. Ports inside the pods are fixed (each pod is a private
//! namespace); Linkerd's own: outbound 4140, inbound 4143, admin 4191.

use super::{
    CLIENT_ID, Dirs, HaMode, HaTls, MESH_VIP, ProxyCmd, SERVER_ID, START_TIMEOUT, Topology,
    haproxy_certs, haproxy_config,
    mesh::{MeshFile, Sidecars},
};
use crate::{
    cleanup,
    procs::{self, Proc},
};
use anyhow::{Context, Result, anyhow};
use linnet_test_support::{
    netns::{Netns, as_proxy_uid, pod_control, pod_init},
    process::{Process, world_executable_copy},
};
use std::{
    io::{BufRead, BufReader},
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// The application's port in the server pod.
pub(crate) const APP_PORT: u16 = 8080;
/// The pods' subnet: 10.77.`SUBNET`.0/24.
const SUBNET: u8 = 200;
/// The services' virtual addresses, routed from the client pod towards
/// the server pod (only to be intercepted before they leave).
const SERVICE_CIDR: &str = "10.96.0.0/12";
const OUTBOUND: SocketAddr = sock([127, 0, 0, 1], 4140);
const INBOUND: SocketAddr = sock([0, 0, 0, 0], 4143);
const ADMIN: SocketAddr = sock([127, 0, 0, 1], 4191);
/// Where each pod's `linnet control` listens, on its loopback.
const CONTROL: SocketAddr = sock([127, 0, 0, 1], 8086);

const fn sock(ip: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::V4(std::net::SocketAddrV4::new(
        Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]),
        port,
    ))
}

/// A client pod and a server pod.
#[derive(Debug)]
pub(crate) struct Pods {
    /// Control planes, stopped before the namespaces go.
    controls: Vec<Process>,
    /// The mesh file's directory, readable by the proxy's uid.
    dir: Option<PathBuf>,
    pub(crate) client: Netns,
    pub(crate) server: Netns,
    pub(crate) server_ip: Ipv4Addr,
}

/// Runs a fixture that panics on failure, as an error instead.
fn fixture<T>(what: &str, f: impl FnOnce() -> T) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|e| {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        anyhow!("{what}: {msg}")
    })
}

// === impl Pods ===

impl Pods {
    /// Two fresh pods; with `intercept`, both get `linnet init`'s rules
    /// (the binary `linnet`), with its defaults.
    pub(crate) fn new(intercept: Option<&Path>) -> Result<Self> {
        let ((client, _), (server, server_ip)) =
            fixture("cannot create the pods", || Netns::pair("lntbench", SUBNET))?;
        for ns in [&client, &server] {
            cleanup::add_namespace(&ns.name);
        }
        let pods = Self {
            controls: Vec::new(),
            dir: None,
            client,
            server,
            server_ip: server_ip.parse()?,
        };
        fixture("cannot route the service addresses", || {
            pods.client
                .exec(&["ip", "route", "add", SERVICE_CIDR, "via", &server_ip])
        })?;
        if let Some(linnet) = intercept {
            fixture("linnet init", || {
                pod_init(&pods.client, linnet, &[]);
                pod_init(&pods.server, linnet, &[]);
            })?;
        }
        Ok(pods)
    }

    /// The backend (this harness's `backend http`) in the server pod on
    /// [`APP_PORT`], all addresses.
    pub(crate) fn backend(&self, dirs: &Dirs) -> Result<Proc> {
        let exe = std::env::current_exe()?;
        let mut cmd = self.server.command(&exe.display().to_string());
        cmd.args(["backend", "http", &format!("0.0.0.0:{APP_PORT}")]);
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start the backend in the server pod")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let p = Proc::adopt("http-backend-pod", child, &dirs.logs);
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        line.trim()
            .parse::<SocketAddr>()
            .context("the backend in the server pod did not print its address")?;
        Ok(p)
    }

    /// The proxy under test in `ns` as the proxy's uid, on Linkerd's
    /// ports, with `env`; returns once its `/ready` answers 200.
    fn proxy(
        &self,
        ns: &Netns,
        cmd: &ProxyCmd,
        name: &str,
        env: &[(String, String)],
        dirs: &Dirs,
    ) -> Result<Proc> {
        let program = fixture("cannot copy the proxy for its uid", || {
            world_executable_copy(&cmd.program)
        })?;
        let mut c = as_proxy_uid(ns, &program);
        c.args(&cmd.args)
            .env("LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR", OUTBOUND.to_string())
            .env("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", INBOUND.to_string())
            .env("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", ADMIN.to_string())
            .env("LINKERD2_PROXY_CORES", "1")
            .env("LINKERD2_PROXY_LOG", "warn");
        for (k, v) in env.iter().chain(&cmd.env) {
            c.env(k, v);
        }
        let mut p = vec![Proc::spawn(name, &mut c, &dirs.logs)?];
        procs::wait_until(&format!("the {name} proxy"), &mut p, START_TIMEOUT, || {
            ns.run(|| procs::admin_ready(ADMIN))
        })?;
        Ok(p.remove(0))
    }

    /// `linnet control` (the binary `linnet`) in each pod, serving
    /// `yaml`; returns the trust anchors. The mesh file and the tokens go
    /// in a directory the proxy's uid can read.
    fn control(&mut self, linnet: &Path, yaml: &str) -> Result<String> {
        use std::os::unix::fs::PermissionsExt;
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("linnet-bench-pods-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        cleanup::add_dir(&dir);
        self.dir = Some(dir.clone());
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        for (who, token) in [("client", "client-token"), ("server", "server-token")] {
            std::fs::write(dir.join(format!("token-{who}")), token)?;
        }
        std::fs::write(dir.join("mesh.yaml"), yaml)?;
        for (ns, name) in [(&self.server, "server"), (&self.client, "client")] {
            let p = fixture("linnet control in a pod", || {
                pod_control(ns, linnet, &dir, &format!("bench-control-{name}"), &[])
            })?;
            cleanup::add_pid(p.pid());
            self.controls.push(p);
        }
        std::fs::read_to_string(dir.join("issuer.crt"))
            .context("linnet control wrote no issuer certificate")
    }

    /// The environment of a sidecar with the identity `id`, certified
    /// with `who`'s token, by its pod's control plane.
    fn identity(&self, who: &str, id: &str, anchors: &str) -> Vec<(String, String)> {
        let token = self
            .dir
            .as_ref()
            .map(|d| d.join(format!("token-{who}")).display().to_string())
            .unwrap_or_default();
        vec![
            (
                "LINKERD2_PROXY_IDENTITY_SVC_ADDR".into(),
                CONTROL.to_string(),
            ),
            ("LINKERD2_PROXY_IDENTITY_LOCAL_NAME".into(), id.into()),
            ("LINKERD2_PROXY_IDENTITY_TOKEN_FILE".into(), token),
            (
                "LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS".into(),
                anchors.into(),
            ),
        ]
    }

    /// The server pod's address for `port`.
    fn server_at(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.server_ip, port))
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        for p in self.controls.drain(..) {
            cleanup::remove_pid(p.pid());
        }
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(&dir);
            cleanup::remove_dir(&dir);
        }
        // The namespaces are deleted when the fields drop, right after.
        for ns in [&self.client, &self.server] {
            cleanup::remove_namespace(&ns.name);
        }
    }
}

impl Topology {
    /// The floor between pods: the load generator straight to the
    /// backend in the other pod.
    pub(crate) fn direct_pods(dirs: &Dirs) -> Result<Self> {
        let pods = Pods::new(None)?;
        let backend = pods.backend(dirs)?;
        let entry = pods.server_at(APP_PORT);
        Ok(Self {
            _others: vec![backend],
            pods: Some(pods),
            ..Self::empty(entry)
        })
    }

    /// Two HAProxy hops between pods, addressed explicitly: `haproxy-out`
    /// in the client pod on 127.0.0.1:4140, `haproxy-in` in the server pod
    /// on its port 4143, in front of the backend; TLS 1.3 with client
    /// certificates between them when `mtls`.
    pub(crate) fn haproxy_pods(mtls: bool, dirs: &Dirs) -> Result<Self> {
        let pods = Pods::new(None)?;
        let backend = pods.backend(dirs)?;
        let certs = dirs.work.join("haproxy-certs");
        if mtls {
            haproxy_certs(&certs)?;
        }
        let tls = |t: HaTls| if mtls { t } else { HaTls::None };
        let app = SocketAddr::from(([127, 0, 0, 1], APP_PORT));
        let hops = [
            (
                "haproxy-in",
                &pods.server,
                INBOUND,
                app,
                tls(HaTls::Server(certs.clone())),
            ),
            (
                "haproxy-out",
                &pods.client,
                OUTBOUND,
                pods.server_at(INBOUND.port()),
                tls(HaTls::Client(certs.clone())),
            ),
        ];
        let mut proxies = Vec::new();
        for (name, ns, listen, target, tls) in hops {
            let cfg = dirs.work.join(format!("{name}-pod.cfg"));
            std::fs::write(&cfg, haproxy_config(HaMode::Http, listen, target, &tls))?;
            let mut cmd = ns.command("haproxy");
            cmd.arg("-db").arg("-f").arg(&cfg);
            let mut p = vec![Proc::spawn(name, &mut cmd, &dirs.logs)?];
            procs::wait_until(name, &mut p, START_TIMEOUT, || {
                ns.run(|| procs::port_taken(listen.port()))
            })?;
            proxies.insert(0, p.remove(0));
        }
        Ok(Self {
            proxies,
            _others: vec![backend],
            pods: Some(pods),
            ..Self::empty(OUTBOUND)
        })
    }

    /// `mesh` (`h2`) or `mesh-http1` between pods with `linnet init`'s
    /// interception (the binary `linnet`, also `linnet control`): the
    /// load generator dials the service's virtual address.
    pub(crate) fn linnet_mesh_pods(
        cmd: &ProxyCmd,
        linnet: &Path,
        h2: bool,
        mtls: bool,
        dirs: &Dirs,
    ) -> Result<Self> {
        let linnet = fixture("cannot copy linnet for the proxy's uid", || {
            world_executable_copy(linnet)
        })?;
        let mut pods = Pods::new(Some(&linnet))?;
        let backend = pods.backend(dirs)?;
        let file = MeshFile {
            endpoint: pods.server_at(APP_PORT),
            app_port: APP_PORT,
            h2,
            mtls,
        };
        let anchors = pods.control(&linnet, &file.yaml())?;
        let env = |who: &str, id: &str, server: bool| {
            let mut env = if mtls {
                pods.identity(who, id, &anchors)
            } else {
                Vec::new()
            };
            env.extend(MeshFile::policy_env(CONTROL, server));
            env
        };
        let server = pods.proxy(
            &pods.server,
            cmd,
            "inbound",
            &env("server", SERVER_ID, true),
            dirs,
        )?;
        let client = pods.proxy(
            &pods.client,
            cmd,
            "outbound",
            &env("client", CLIENT_ID, false),
            dirs,
        )?;
        Ok(Self {
            proxies: vec![client, server],
            sidecars: Some(Sidecars {
                client_admin: ADMIN,
                server_admin: ADMIN,
            }),
            _others: vec![backend],
            pods: Some(pods),
            ..Self::empty(MESH_VIP.parse()?)
        })
    }
}

/// Whether `ip netns` can be used here: root, and the `ip` tool.
pub(crate) fn available() -> Result<()> {
    if !linnet_test_support::is_root() {
        anyhow::bail!("network namespaces need root");
    }
    let ok = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        anyhow::bail!("`ip netns list` failed: is iproute2 installed?");
    }
    Ok(())
}
