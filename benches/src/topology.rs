//! The processes between the load generator and the backend: proxies
//! under test (any command line that takes Linkerd's environment
//! variables), HAProxy, and iperf3.

mod balanced;
mod mesh;
mod pods;
mod soak;

pub(crate) use balanced::{Shape, Snapshot, metric_sum, scrape};
pub(crate) use mesh::PathCheck;
pub(crate) use pods::{Pods, available as pods_available};
pub(crate) use soak::Churn;

use crate::procs::{self, Proc};
use anyhow::{Context, Result};
use std::{net::SocketAddr, path::PathBuf, process::Command, time::Duration};

const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The proxy under test: a command line and extra environment.
#[derive(Clone, Debug)]
pub(crate) struct ProxyCmd {
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
}

/// Where scratch files and logs go.
#[derive(Clone, Debug)]
pub(crate) struct Dirs {
    pub(crate) logs: PathBuf,
    pub(crate) work: PathBuf,
}

/// Started processes and the address the load generator dials.
#[derive(Debug)]
pub(crate) struct Topology {
    pub(crate) entry: SocketAddr,
    /// Proxies, client side first.
    pub(crate) proxies: Vec<Proc>,
    /// Proxies from this index on are reported as one, their CPU time and
    /// memory summed (the server sidecars behind a balancer).
    pub(crate) summed_from: Option<usize>,
    /// Where to look for how the client sidecar balanced its requests.
    pub(crate) probe: Option<balanced::Probe>,
    /// Where to read what a mesh's sidecars did (`mesh`, `mesh-http1`).
    pub(crate) sidecars: Option<mesh::Sidecars>,
    /// Processes that are not measured (a control plane, a backend of its
    /// own), kept running for as long as the topology.
    pub(crate) _others: Vec<Proc>,
    /// The pods it runs in, when it runs between two network namespaces;
    /// deleted last, once every process in them is gone.
    pub(crate) pods: Option<Pods>,
}

/// HAProxy's mode.
#[derive(Clone, Copy, Debug)]
pub(crate) enum HaMode {
    Http,
    Tcp,
}

impl Topology {
    /// Nothing started: the load generator dials `entry`.
    fn empty(entry: SocketAddr) -> Self {
        Self {
            entry,
            proxies: Vec::new(),
            summed_from: None,
            probe: None,
            sidecars: None,
            _others: Vec::new(),
            pods: None,
        }
    }

    /// No proxy at all.
    pub(crate) fn direct(target: SocketAddr) -> Self {
        Self::empty(target)
    }

    /// The network namespace the load generator runs in, when the
    /// topology is in pods.
    pub(crate) fn client_pod(&self) -> Option<&linnet_test_support::netns::Netns> {
        self.pods.as_ref().map(|p| &p.client)
    }

    /// What the requests crossed, for a mesh whose sidecars can be asked.
    pub(crate) fn path_check(&self) -> Result<Option<PathCheck>> {
        self.sidecars
            .as_ref()
            .map(|s| s.check(self.pods.as_ref()))
            .transpose()
    }

    /// One sidecar's outbound side in front of `target` (`hops == 1`), or
    /// a client sidecar's outbound side talking to a server sidecar's
    /// inbound side, as between two meshed pods (`hops == 2`). Without
    /// iptables, each listener's original destination is fixed by
    /// `*_ORIG_DST_ADDR`.
    pub(crate) fn linnet(
        cmd: &ProxyCmd,
        hops: usize,
        target: SocketAddr,
        dirs: &Dirs,
    ) -> Result<Self> {
        let mut proxies = Vec::new();
        let mut entry = target;
        if hops >= 2 {
            let (p, inbound) = start_proxy(cmd, "inbound", Side::Inbound, entry, dirs)?;
            proxies.push(p);
            entry = inbound;
        }
        let (p, outbound) = start_proxy(cmd, "outbound", Side::Outbound, entry, dirs)?;
        proxies.insert(0, p);
        Ok(Self {
            proxies,
            ..Self::empty(outbound)
        })
    }

    /// The same shapes with HAProxy, one thread per process.
    /// With `mtls` (two hops only), the hops speak TLS 1.3 with client
    /// certificates to each other, as in the baseline set-up.
    pub(crate) fn haproxy(
        mode: HaMode,
        hops: usize,
        target: SocketAddr,
        mtls: bool,
        dirs: &Dirs,
    ) -> Result<Self> {
        let mut proxies = Vec::new();
        let mut entry = target;
        let names: &[&str] = if hops >= 2 {
            &["haproxy-in", "haproxy-out"]
        } else {
            &["haproxy"]
        };
        let certs = dirs.work.join("haproxy-certs");
        if mtls && hops >= 2 {
            haproxy_certs(&certs)?;
        }
        for name in names {
            let listen = procs::free_addr()?;
            let cfg = dirs.work.join(format!("{name}.cfg"));
            let tls = match (mtls && hops >= 2, *name) {
                (true, "haproxy-in") => HaTls::Server(certs.clone()),
                (true, "haproxy-out") => HaTls::Client(certs.clone()),
                _ => HaTls::None,
            };
            std::fs::write(&cfg, haproxy_config(mode, listen, entry, &tls))?;
            let mut p = vec![Proc::spawn(
                name,
                Command::new("haproxy").arg("-db").arg("-f").arg(&cfg),
                &dirs.logs,
            )?];
            procs::wait_until(name, &mut p, START_TIMEOUT, || {
                procs::port_taken(listen.port())
            })?;
            proxies.insert(0, p.remove(0));
            entry = listen;
        }
        Ok(Self {
            proxies,
            ..Self::empty(entry)
        })
    }
}

#[derive(Clone, Copy, Debug)]
enum Side {
    Outbound,
    Inbound,
}

/// Starts one proxy whose `side` listener forwards to `target`; returns it
/// and that listener's address once its admin server reports ready.
fn start_proxy(
    cmd: &ProxyCmd,
    name: &str,
    side: Side,
    target: SocketAddr,
    dirs: &Dirs,
) -> Result<(Proc, SocketAddr)> {
    let (p, listen, _) = start_proxy_with(cmd, name, side, None, Some(target), &[], dirs)?;
    Ok((p, listen))
}

/// [`start_proxy`] with the `side` listener at `listen` (any free port
/// when `None`), an original destination only when `orig_dst` is given,
/// and `env` on top. Also returns its admin address.
fn start_proxy_with(
    cmd: &ProxyCmd,
    name: &str,
    side: Side,
    listen: Option<SocketAddr>,
    orig_dst: Option<SocketAddr>,
    env: &[(String, String)],
    dirs: &Dirs,
) -> Result<(Proc, SocketAddr, SocketAddr)> {
    let (mut outbound, mut inbound, admin) = (
        procs::free_addr()?,
        procs::free_addr()?,
        procs::free_addr()?,
    );
    match (side, listen) {
        (Side::Outbound, Some(l)) => outbound = l,
        (Side::Inbound, Some(l)) => inbound = l,
        _ => {}
    }
    let mut c = Command::new(&cmd.program);
    c.args(&cmd.args)
        // Linkerd's names, which Linnet reads too, so that other proxies
        // speaking them can be measured in the same topologies.
        .env("LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR", outbound.to_string())
        .env("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", inbound.to_string())
        .env("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", admin.to_string())
        .env("LINKERD2_PROXY_CORES", "1")
        .env("LINKERD2_PROXY_LOG", "warn");
    let (orig_dst_var, listen) = match side {
        Side::Outbound => ("LINKERD2_PROXY_OUTBOUND_ORIG_DST_ADDR", outbound),
        Side::Inbound => ("LINKERD2_PROXY_INBOUND_ORIG_DST_ADDR", inbound),
    };
    if let Some(target) = orig_dst {
        c.env(orig_dst_var, target.to_string());
    }
    for (k, v) in env.iter().chain(&cmd.env) {
        c.env(k, v);
    }
    let mut p = vec![Proc::spawn(name, &mut c, &dirs.logs)?];
    procs::wait_until(&format!("the {name} proxy"), &mut p, START_TIMEOUT, || {
        procs::admin_ready(admin)
    })?;
    Ok((p.remove(0), listen, admin))
}

/// What a meshed topology carries between its proxies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MeshKind {
    /// HTTP: the client side's outbound to the server side's inbound
    /// (which forwards to the application), mTLS between them.
    Http,
    /// Opaque TCP: to the server side's inbound port with a transport
    /// header, inside mTLS.
    Opaque,
    /// `Http`, with the server side following an inbound policy for the
    /// application's port: [`AUTHORIZATIONS`] authorizations, the
    /// client's identity named by the last, and a local rate limit (total
    /// and per identity) too high to refuse anything: what checking
    /// policy costs per request.
    Authorized,
}

/// The authorizations of [`MeshKind::Authorized`]'s server.
pub(crate) const AUTHORIZATIONS: usize = 100;

/// The inbound policy of [`MeshKind::Authorized`]: the server's port
/// admits [`CLIENT_ID`] by its last authorization.
fn authorized_policy(port: u16) -> String {
    let mut authz = String::new();
    for i in 0..AUTHORIZATIONS - 1 {
        authz.push_str(&format!(
            "          - identities: [other-{i}.bench.serviceaccount.identity.linkerd.cluster.local]\n"
        ));
    }
    authz.push_str(&format!("          - identities: [{CLIENT_ID}]\n"));
    format!(
        "workloads:\n  bench-server:\n    ports:\n      {port}:\n        protocol: detect\n\
         \x20       rate_limit: {{total: 10000000, identity: 10000000}}\n        authorizations:\n{authz}"
    )
}

const CLIENT_ID: &str = "client.bench.serviceaccount.identity.linkerd.cluster.local";
const SERVER_ID: &str = "server.bench.serviceaccount.identity.linkerd.cluster.local";

impl Topology {
    /// Two sidecars with identities from `linnet control` (started here,
    /// from `control`), talking mTLS: the real sidecar-to-sidecar path.
    pub(crate) fn linnet_mtls(
        cmd: &ProxyCmd,
        control: &std::path::Path,
        kind: MeshKind,
        target: SocketAddr,
        dirs: &Dirs,
    ) -> Result<Self> {
        let inbound = procs::free_addr()?;
        let vip: SocketAddr = MESH_VIP.parse()?;
        let endpoint = match kind {
            MeshKind::Http | MeshKind::Authorized => {
                format!("      - addr: \"{inbound}\"\n        identity: {SERVER_ID}\n")
            }
            MeshKind::Opaque => format!(
                "      - addr: \"{target}\"\n        identity: {SERVER_ID}\n        protocol: opaque\n        opaque_transport_port: {}\n",
                inbound.port()
            ),
        };
        let profile = if kind == MeshKind::Opaque {
            "    profile: {opaque: true}\n"
        } else {
            ""
        };
        let policy = match kind {
            MeshKind::Authorized => authorized_policy(target.port()),
            _ => String::new(),
        };
        let plane = Control::start(
            control,
            &format!(
                "identity:\n  tokens:\n    {CLIENT_ID}: client-token\n    {SERVER_ID}: server-token\n\
                 services:\n  {MESH_SERVICE}:\n    addresses: [\"{vip}\"]\n{profile}    endpoints:\n{endpoint}{policy}"
            ),
            dirs,
        )?;
        // The server side: HTTP arrives redirected (its original
        // destination is the application); opaque traffic arrives on the
        // inbound port itself, with a transport header.
        let inbound_orig = match kind {
            MeshKind::Http | MeshKind::Authorized => Some(target),
            MeshKind::Opaque => None,
        };
        let mut server_env = plane.identity("server", SERVER_ID);
        if kind == MeshKind::Authorized {
            server_env.extend([
                (
                    "LINKERD2_PROXY_POLICY_SVC_ADDR".into(),
                    plane.grpc.to_string(),
                ),
                (
                    "LINKERD2_PROXY_POLICY_WORKLOAD".into(),
                    "bench-server".into(),
                ),
            ]);
        }
        let (server, _, _) = start_proxy_with(
            cmd,
            &format!("inbound-{}", plane.n),
            Side::Inbound,
            Some(inbound),
            inbound_orig,
            &server_env,
            dirs,
        )?;
        let mut env = plane.identity("client", CLIENT_ID);
        env.push((
            "LINKERD2_PROXY_DESTINATION_SVC_ADDR".into(),
            plane.grpc.to_string(),
        ));
        let (client, entry, _) = start_proxy_with(
            cmd,
            &format!("outbound-{}", plane.n),
            Side::Outbound,
            None,
            Some(vip),
            &env,
            dirs,
        )?;
        let mut client = client;
        client.name = "outbound".into();
        let mut server = server;
        server.name = "inbound".into();
        Ok(Self {
            proxies: vec![client, server],
            _others: vec![plane.proc],
            ..Self::empty(entry)
        })
    }
}

/// The meshed service's name and virtual address (what the client
/// sidecar's original destination is).
const MESH_SERVICE: &str = "bench.bench.svc.cluster.local:80";
const MESH_VIP: &str = "10.96.0.1:80";

/// A `linnet control` serving one mesh file, from a directory of its own.
struct Control {
    /// Numbers this control plane's directory and its proxies' logs.
    n: usize,
    proc: Proc,
    /// Its gRPC address (identity, destination and policy).
    grpc: SocketAddr,
    /// Where the mesh file and the proxies' token files are.
    work: PathBuf,
    /// The issuer's certificate, which proxies trust.
    anchors: String,
}

// === impl Control ===

impl Control {
    /// Writes `mesh_yaml` and the tokens `client-token` and
    /// `server-token` into a fresh directory and starts `linnet control`
    /// (the binary `control`) on it; returns once it is ready.
    fn start(control: &std::path::Path, mesh_yaml: &str, dirs: &Dirs) -> Result<Self> {
        Self::start_reloading(control, mesh_yaml, dirs, "1h")
    }

    /// [`Control::start`], looking at the mesh file for changes every
    /// `reload` (`1s`).
    fn start_reloading(
        control: &std::path::Path,
        mesh_yaml: &str,
        dirs: &Dirs,
        reload: &str,
    ) -> Result<Self> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let work = dirs.work.join(format!("mesh-{n}"));
        std::fs::create_dir_all(&work)?;
        for (who, token) in [("client", "client-token"), ("server", "server-token")] {
            std::fs::write(work.join(format!("token-{who}")), token)?;
        }
        std::fs::write(work.join("mesh.yaml"), mesh_yaml)?;
        let (grpc, admin) = (procs::free_addr()?, procs::free_addr()?);
        let mut others = vec![Proc::spawn(
            &format!("control-{n}"),
            Command::new(control)
                .arg("control")
                .arg("--config")
                .arg(work.join("mesh.yaml"))
                .arg("--listen")
                .arg(grpc.to_string())
                .arg("--admin-listen")
                .arg(admin.to_string())
                .args(["--reload-interval", reload, "--log", "warn"]),
            &dirs.logs,
        )?];
        procs::wait_until("linnet control", &mut others, START_TIMEOUT, || {
            procs::admin_ready(admin)
        })?;
        let anchors = std::fs::read_to_string(work.join("issuer.crt"))
            .context("linnet control wrote no issuer certificate")?;
        Ok(Self {
            n,
            proc: others.remove(0),
            grpc,
            work,
            anchors,
        })
    }

    /// The environment of a proxy with the identity `id`, certified with
    /// `who`'s token (`client` or `server`).
    fn identity(&self, who: &str, id: &str) -> Vec<(String, String)> {
        vec![
            (
                "LINKERD2_PROXY_IDENTITY_SVC_ADDR".into(),
                self.grpc.to_string(),
            ),
            ("LINKERD2_PROXY_IDENTITY_LOCAL_NAME".into(), id.to_string()),
            (
                "LINKERD2_PROXY_IDENTITY_TOKEN_FILE".into(),
                self.work.join(format!("token-{who}")).display().to_string(),
            ),
            (
                "LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS".into(),
                self.anchors.clone(),
            ),
        ]
    }
}

/// Certificates for HAProxy's mTLS (a throwaway CA, a server certificate
/// for `server.mesh.local`, a client certificate), written under `dir`.
pub(crate) fn haproxy_certs(dir: &std::path::Path) -> Result<()> {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };
    if dir.join("ca.pem").exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "bench CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key)?;
    std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
    let issuer = Issuer::new(ca, ca_key);
    for (file, eku, names) in [
        (
            "server.pem",
            ExtendedKeyUsagePurpose::ServerAuth,
            vec!["server.mesh.local".to_string()],
        ),
        (
            "client.pem",
            ExtendedKeyUsagePurpose::ClientAuth,
            vec!["client.mesh.local".to_string()],
        ),
    ] {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(names)?;
        p.extended_key_usages = vec![eku];
        let cert = p.signed_by(&key, &issuer)?;
        std::fs::write(
            dir.join(file),
            format!("{}{}", cert.pem(), key.serialize_pem()),
        )?;
    }
    Ok(())
}

/// TLS on one side of an HAProxy hop, per the baseline set-up.
#[derive(Clone, Debug)]
enum HaTls {
    None,
    /// The client-side hop's connection to its peer.
    Client(std::path::PathBuf),
    /// The server-side hop's listener.
    Server(std::path::PathBuf),
}

fn haproxy_config(mode: HaMode, listen: SocketAddr, target: SocketAddr, tls: &HaTls) -> String {
    let (mode, reuse) = match mode {
        HaMode::Http => ("http", "  http-reuse always\n"),
        HaMode::Tcp => ("tcp", ""),
    };
    let bind_tls = match tls {
        HaTls::Server(d) => format!(
            " ssl crt {} ca-file {} verify required ssl-min-ver TLSv1.3",
            d.join("server.pem").display(),
            d.join("ca.pem").display()
        ),
        _ => String::new(),
    };
    let server_tls = match tls {
        HaTls::Client(d) => format!(
            " ssl ssl-min-ver TLSv1.3 crt {} ca-file {} verify required sni str(server.mesh.local) verifyhost server.mesh.local",
            d.join("client.pem").display(),
            d.join("ca.pem").display()
        ),
        _ => String::new(),
    };
    format!(
        "global\n  nbthread 1\n  maxconn 4096\n\
         defaults\n  mode {mode}\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  timeout http-keep-alive 60s\n\
         frontend front\n  bind {listen}{bind_tls}\n  default_backend back\n\
         backend back\n{reuse}  server s1 {target}{server_tls}\n"
    )
}

/// An iperf3 server for one test; it exits after serving it.
pub(crate) fn iperf3_server(dirs: &Dirs) -> Result<(Proc, SocketAddr)> {
    let addr = procs::free_addr()?;
    let mut p = vec![Proc::spawn(
        "iperf3-server",
        Command::new("iperf3")
            .args(["-s", "-1", "-B", "127.0.0.1", "-p"])
            .arg(addr.port().to_string()),
        &dirs.logs,
    )?];
    procs::wait_until("iperf3 server", &mut p, START_TIMEOUT, || {
        procs::port_taken(addr.port())
    })?;
    Ok((p.remove(0), addr))
}

/// Streams to `target` with one iperf3 connection for `duration`; returns
/// the received Gbit/s.
pub(crate) fn iperf3_client(target: SocketAddr, duration: Duration, dirs: &Dirs) -> Result<f64> {
    let out = Command::new("iperf3")
        .args(["-J", "-c"])
        .arg(target.ip().to_string())
        .arg("-p")
        .arg(target.port().to_string())
        .arg("-t")
        .arg(format!("{:.1}", duration.as_secs_f64()))
        .output()
        .context("cannot run iperf3")?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("iperf3 printed no JSON ({})", out.status))?;
    if let Some(e) = json["error"].as_str() {
        anyhow::bail!("iperf3 failed: {e} (see {})", dirs.logs.display());
    }
    let bps = json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3's report has no end.sum_received.bits_per_second")?;
    Ok(bps / 1e9)
}

/// Whether `program` is on the PATH.
pub(crate) fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Installs Debian packages when running as root; otherwise says what to
/// install.
pub(crate) fn ensure_packages(programs: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = programs
        .iter()
        .filter(|(program, _)| on_path(program).is_none())
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing {}", missing.join(" "));
    let status = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", "-q"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        _ => anyhow::bail!(
            "{} missing and could not be installed: run `apt-get install {}` as root",
            missing.join(", "),
            missing.join(" ")
        ),
    }
}
