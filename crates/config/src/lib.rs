//! Typed configuration of the Linnet proxy, read from the environment.
//!
//! Every setting is `LINNET_<NAME>`; where Linkerd has the same setting it
//! is also read from `LINKERD2_PROXY_<NAME>`, so Linnet can be dropped into
//! a pod that Linkerd injected. `LINNET_` wins when both are set. A bad
//! value is a [`ConfigError`] naming the variable and the value (the binary
//! exits with code 64). The result is validated once, here, at start;
//! everything downstream takes the typed [`Config`], which serialises to
//! the JSON logged at start and served at the admin server's
//! `/config.json`.

mod env;
pub mod parse;

pub use self::env::{Env, ProcessEnv};
use serde::Serialize;
use std::{net::SocketAddr, str::FromStr, time::Duration};

/// Our own prefix: every setting can be given with it.
pub const PREFIX: &str = "LINNET_";
/// Linkerd's prefix, read for the settings Linkerd also has.
pub const LINKERD_PREFIX: &str = "LINKERD2_PROXY_";

/// The whole configuration of `linnet proxy`.
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    /// The listener for the pod's outgoing connections.
    pub outbound: ProxyConfig,
    /// The listener for connections coming into the pod.
    pub inbound: ProxyConfig,
    /// The admin server (metrics, health, log level, shutdown).
    pub admin: AdminConfig,
    /// How long open connections may run after shutdown starts before they
    /// are closed. Kubernetes' own grace period should be longer.
    #[serde(serialize_with = "parse::ser_duration")]
    pub shutdown_grace_period: Duration,
    /// HTTP servers and clients, both directions.
    pub http: HttpConfig,
    /// Logging.
    pub log: LogConfig,
    /// Runtime worker threads. A sidecar usually gets one or two cores.
    pub cores: usize,
    /// The control plane: where to discover endpoints and policies.
    pub control: ControlConfig,
    /// This workload's identity, when the identity service is configured
    /// and identity is not disabled.
    pub identity: Option<IdentityConfig>,
    /// `IDENTITY_DISABLED`: the mesh is plaintext on purpose.
    pub identity_disabled: bool,
    /// Bounds on metric labels whose values peers choose.
    pub metrics: MetricsConfig,
}

/// Bounds on the metric series that peers can make the proxy keep
/// (`METRICS_*`): label values such as `authority`, `sni`, `target_addr`
/// and identities come from the other end of a connection.
#[derive(Clone, Debug, Serialize)]
pub struct MetricsConfig {
    /// `METRICS_MAX_LABEL_VALUES`: distinct values each such label may
    /// have at once in each group of families; further values are counted
    /// under `"<overflow>"` (and in `metrics_label_overflow_total`), so the
    /// memory and the size of a scrape stay bounded.
    pub max_label_values: usize,
    /// `METRICS_IDLE_TIMEOUT`: a series no open connection uses is removed
    /// after this long; if it comes back, it counts from zero again.
    #[serde(serialize_with = "parse::ser_duration")]
    pub idle_timeout: Duration,
}

/// The workload identity (`IDENTITY_*`).
#[derive(Clone, Debug, Serialize)]
pub struct IdentityConfig {
    /// `IDENTITY_LOCAL_NAME`: this workload's identity.
    pub local_name: String,
    /// `IDENTITY_TOKEN_FILE`: the token presented to the identity service,
    /// re-read on every call.
    pub token_file: std::path::PathBuf,
    /// `IDENTITY_TRUST_ANCHORS`: the roots, PEM (the certificates
    /// themselves, not a path).
    #[serde(skip)]
    pub trust_anchors_pem: String,
    /// `IDENTITY_DIR`: where the key and CSR are kept (in memory when
    /// unset).
    pub dir: Option<std::path::PathBuf>,
    /// `IDENTITY_SERVER_NAME`: the name peers send as SNI to reach this
    /// workload; needed for a SPIFFE identity, which SNI cannot carry (a
    /// DNS-like identity is its own server name).
    pub server_name: Option<String>,
    /// `IDENTITY_MIN_REFRESH`.
    #[serde(serialize_with = "parse::ser_duration")]
    pub min_refresh: Duration,
    /// `IDENTITY_MAX_REFRESH`.
    #[serde(serialize_with = "parse::ser_duration")]
    pub max_refresh: Duration,
}

/// A control-plane service: its address and the identity it presents.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ControlAddr {
    /// `host:port` (a name or an IP).
    pub addr: String,
    /// Its TLS identity (`*_SVC_NAME`, lower-cased), which its server
    /// certificate must carry as a DNS SAN. Required unless `addr` is
    /// loopback (where the service is spoken to in plaintext).
    pub name: Option<String>,
}

/// What to allow on inbound ports before their policy arrives (Linkerd's
/// names).
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultPolicy {
    /// Anyone.
    AllUnauthenticated,
    /// Meshed clients only.
    AllAuthenticated,
    /// Clients from the cluster's networks.
    ClusterUnauthenticated,
    /// Meshed clients from the cluster's networks.
    ClusterAuthenticated,
    /// Nobody.
    Deny,
    /// Anyone, but log and count what a policy would refuse.
    Audit,
}

/// The control plane, from `*_SVC_ADDR` and friends. Without a
/// destination address nothing is discovered: connections go to their
/// original destinations.
#[derive(Clone, Debug, Serialize)]
pub struct ControlConfig {
    /// `DESTINATION_SVC_ADDR` / `_NAME`.
    pub destination: Option<ControlAddr>,
    /// `DESTINATION_CONTEXT`, sent with every lookup.
    pub destination_context: String,
    /// `POLICY_SVC_ADDR` / `_NAME`.
    pub policy: Option<ControlAddr>,
    /// `POLICY_WORKLOAD`: this workload, as the policy service names it.
    pub workload: Option<String>,
    /// `IDENTITY_SVC_ADDR` / `_NAME`.
    pub identity: Option<ControlAddr>,
    /// Watches unused for this long are closed.
    #[serde(serialize_with = "parse::ser_duration")]
    pub discovery_idle_timeout: Duration,
    /// How long a new connection waits for the control plane's first
    /// answer before going on without it.
    #[serde(serialize_with = "parse::ser_duration")]
    pub discovery_initial_wait: Duration,
    /// `DESTINATION_PROFILE_NETWORKS`: where meshed workloads may be
    /// (Linkerd's name and meaning). An address inside is looked up, and
    /// while the control plane has not answered whether it is meshed it is
    /// not reached at all (after `DISCOVERY_INITIAL_WAIT`, the connection
    /// fails); an address outside is never meshed and goes to its original
    /// destination without a lookup. Every address, when unset.
    pub profile_networks: Vec<parse::Network>,
    /// Inbound policy until the control plane's arrives, and without a
    /// policy service (`INBOUND_DEFAULT_POLICY`).
    pub inbound_default_policy: DefaultPolicy,
    /// `POLICY_CLUSTER_NETWORKS`: the cluster's networks, which the
    /// `cluster-*` default policies admit (Linkerd's default: the private
    /// ranges).
    pub cluster_networks: Vec<parse::Network>,
    /// `INBOUND_PORTS_REQUIRE_IDENTITY`: ports whose default policy admits
    /// only meshed clients with an identity.
    pub inbound_ports_require_identity: parse::PortSet,
    /// `INBOUND_PORTS_REQUIRE_TLS`: ports whose default policy admits only
    /// clients whose TLS this proxy terminates (with an identity or not).
    pub inbound_ports_require_tls: parse::PortSet,
    /// DNS servers for names the control plane does not know (the
    /// system's when empty).
    pub dns_servers: Vec<SocketAddr>,
    /// Shortest time a DNS answer is kept.
    #[serde(serialize_with = "parse::ser_duration")]
    pub dns_min_ttl: Duration,
    /// Longest time a DNS answer is kept.
    #[serde(serialize_with = "parse::ser_duration")]
    pub dns_max_ttl: Duration,
}

/// One direction's listener and the connections it makes.
#[derive(Clone, Debug, Serialize)]
pub struct ProxyConfig {
    /// Where the proxy listens for redirected connections.
    pub listen_addr: SocketAddr,
    /// How long to wait for the target to accept a connection. Inbound
    /// targets are on the same host, so their timeout is short.
    #[serde(serialize_with = "parse::ser_duration")]
    pub connect_timeout: Duration,
    /// TCP keepalive on accepted connections, so that dead clients are
    /// noticed; `None` leaves it off.
    #[serde(serialize_with = "parse::ser_opt_duration")]
    pub accept_keepalive: Option<Duration>,
    /// TCP keepalive on connections to targets.
    #[serde(serialize_with = "parse::ser_opt_duration")]
    pub connect_keepalive: Option<Duration>,
    /// How long protocol detection waits for a client's first bytes; a
    /// client silent that long is treated as opaque TCP (it may be waiting
    /// for the server to speak first).
    #[serde(serialize_with = "parse::ser_duration")]
    pub detect_timeout: Duration,
    /// Target ports whose connections skip protocol detection: protocols
    /// where the server speaks first (SMTP, MySQL) would otherwise wait out
    /// the detection timeout.
    pub ports_disable_protocol_detection: parse::PortSet,
    /// Requests this listener handles at once; beyond it requests are shed
    /// with 503, so that overload fails fast instead of queueing.
    pub max_in_flight: usize,
    /// Connections this listener keeps open at once
    /// (`INBOUND_MAX_CONNECTIONS`, `OUTBOUND_MAX_CONNECTIONS`); beyond it
    /// a new connection is reset as soon as it is accepted, so that one
    /// direction's flood cannot take the file descriptors the other
    /// direction, the admin server and identity renewal need. Lowered at
    /// start when the process's open-file limit cannot hold both
    /// listeners' connections (see `linnet_app`).
    pub max_connections: usize,
    /// How long an opaque TCP connection or a tunnel (an upgraded HTTP
    /// connection, `CONNECT`) may move no bytes before both its sides are
    /// reset (`TCP_IDLE_TIMEOUT`).
    #[serde(serialize_with = "parse::ser_duration")]
    pub tcp_idle_timeout: Duration,
    /// Where every connection accepted by this listener goes, instead of
    /// its original destination as recovered from iptables. For running
    /// without interception (benchmarks, tests, a fixed upstream); the
    /// name is Linkerd's.
    pub orig_dst_addr: Option<SocketAddr>,
}

/// HTTP settings.
#[derive(Clone, Debug, Serialize)]
pub struct HttpConfig {
    /// How long a client may take to send a request's headers; a slower
    /// client (slowloris) is disconnected.
    #[serde(serialize_with = "parse::ser_duration")]
    pub header_read_timeout: Duration,
    /// The largest request body passed on, in bytes; `None` for no limit.
    /// A larger body is refused with 413 (when its length is declared) or
    /// cut off (when chunked; the target never sees it complete).
    pub max_request_body_size: Option<u64>,
    /// How long an HTTP connection may go without starting a request
    /// before it is closed gracefully (`HTTP_IDLE_TIMEOUT`): HTTP/1 closes
    /// once no request is in flight, HTTP/2 sends GOAWAY and lets open
    /// streams finish.
    #[serde(serialize_with = "parse::ser_duration")]
    pub idle_timeout: Duration,
    /// How long a request or response body may move no data before the
    /// request fails and its stream is reset (`HTTP_BODY_IDLE_TIMEOUT`).
    /// Silence is noticed after between one and two of these.
    #[serde(serialize_with = "parse::ser_duration")]
    pub body_idle_timeout: Duration,
    /// Streams a client may open at once on one HTTP/2 connection
    /// (`HTTP2_MAX_CONCURRENT_STREAMS`).
    pub http2_max_concurrent_streams: u32,
    /// HTTP/2 initial stream flow-control window, in bytes, at most
    /// 16 MiB; `None` for hyper's default (1 MiB served, 2 MiB as a
    /// client).
    pub http2_initial_stream_window_size: Option<u32>,
    /// HTTP/2 initial connection flow-control window, in bytes, at most
    /// 16 MiB; `None` for hyper's default (1 MiB served, 5 MiB as a
    /// client).
    pub http2_initial_connection_window_size: Option<u32>,
    /// Whether HTTP/2 windows follow each connection's measured
    /// bandwidth-delay product instead (`HTTP2_ADAPTIVE_WINDOW`), up to
    /// 16 MiB per connection. Off unless set, so that what one connection
    /// may buffer stays what the windows say.
    pub http2_adaptive_window: bool,
    /// How often an idle HTTP/2 connection is pinged to check its peer.
    #[serde(serialize_with = "parse::ser_duration")]
    pub http2_keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    #[serde(serialize_with = "parse::ser_duration")]
    pub http2_keepalive_timeout: Duration,
}

/// The admin server.
#[derive(Clone, Debug, Serialize)]
pub struct AdminConfig {
    /// Where the admin server listens (Prometheus scrapes it here).
    pub listen_addr: SocketAddr,
}

/// Logging.
#[derive(Clone, Debug, Serialize)]
pub struct LogConfig {
    /// An `EnvFilter` directive string, such as `warn,linnet=info`.
    pub filter: String,
    /// Line format.
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object a line, for log pipelines.
    Json,
}

/// A setting with a bad value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {var}={value:?}: {reason}")]
pub struct ConfigError {
    /// The variable that held the bad value, as it was spelt.
    pub var: String,
    /// The value as given.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The settings this version knows, for reporting unknown `LINNET_` names.
const KNOWN: &[&str] = &[
    "OUTBOUND_LISTEN_ADDR",
    "INBOUND_LISTEN_ADDR",
    "ADMIN_LISTEN_ADDR",
    "OUTBOUND_CONNECT_TIMEOUT",
    "INBOUND_CONNECT_TIMEOUT",
    "OUTBOUND_ACCEPT_KEEPALIVE",
    "INBOUND_ACCEPT_KEEPALIVE",
    "OUTBOUND_CONNECT_KEEPALIVE",
    "INBOUND_CONNECT_KEEPALIVE",
    "SHUTDOWN_GRACE_PERIOD",
    "LOG",
    "LOG_FORMAT",
    "CORES",
    "OUTBOUND_DETECT_TIMEOUT",
    "INBOUND_DETECT_TIMEOUT",
    "OUTBOUND_PORTS_DISABLE_PROTOCOL_DETECTION",
    "INBOUND_PORTS_DISABLE_PROTOCOL_DETECTION",
    "OUTBOUND_MAX_IN_FLIGHT",
    "INBOUND_MAX_IN_FLIGHT",
    "OUTBOUND_ORIG_DST_ADDR",
    "INBOUND_ORIG_DST_ADDR",
    "INBOUND_MAX_CONNECTIONS",
    "OUTBOUND_MAX_CONNECTIONS",
    "TCP_IDLE_TIMEOUT",
    "DESTINATION_SVC_ADDR",
    "DESTINATION_SVC_NAME",
    "DESTINATION_CONTEXT",
    "DESTINATION_PROFILE_NETWORKS",
    "POLICY_SVC_ADDR",
    "POLICY_SVC_NAME",
    "POLICY_WORKLOAD",
    "IDENTITY_SVC_ADDR",
    "IDENTITY_SVC_NAME",
    "OUTBOUND_DISCOVERY_IDLE_TIMEOUT",
    "DISCOVERY_INITIAL_WAIT",
    "INBOUND_DEFAULT_POLICY",
    "POLICY_CLUSTER_NETWORKS",
    "INBOUND_PORTS_REQUIRE_IDENTITY",
    "INBOUND_PORTS_REQUIRE_TLS",
    "DNS_SERVERS",
    "DNS_MIN_TTL",
    "DNS_MAX_TTL",
    "IDENTITY_DISABLED",
    "IDENTITY_LOCAL_NAME",
    "IDENTITY_TOKEN_FILE",
    "IDENTITY_TRUST_ANCHORS",
    "IDENTITY_DIR",
    "IDENTITY_MIN_REFRESH",
    "IDENTITY_MAX_REFRESH",
    "IDENTITY_SERVER_NAME",
    "HTTP_HEADER_READ_TIMEOUT",
    "HTTP_MAX_REQUEST_BODY_SIZE",
    "HTTP_IDLE_TIMEOUT",
    "HTTP_BODY_IDLE_TIMEOUT",
    "HTTP2_MAX_CONCURRENT_STREAMS",
    "HTTP2_INITIAL_STREAM_WINDOW_SIZE",
    "HTTP2_INITIAL_CONNECTION_WINDOW_SIZE",
    "HTTP2_ADAPTIVE_WINDOW",
    "HTTP2_KEEPALIVE_INTERVAL",
    "HTTP2_KEEPALIVE_TIMEOUT",
    "METRICS_MAX_LABEL_VALUES",
    "METRICS_IDLE_TIMEOUT",
];

/// Connections a listener keeps open at once, unless configured.
pub const DEFAULT_MAX_CONNECTIONS: usize = 20_000;

/// How long a connection, tunnel or body may be idle, unless configured
/// (Envoy's default for TCP and HTTP connections).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// The largest HTTP/2 flow-control window accepted (16 MiB, as much as an
/// adaptive window grows to).
pub const MAX_HTTP2_WINDOW: u32 = 16 * 1024 * 1024;

/// Linkerd's default cluster networks: the private and shared address
/// ranges.
pub const DEFAULT_CLUSTER_NETWORKS: &str =
    "10.0.0.0/8,100.64.0.0/10,172.16.0.0/12,192.168.0.0/16,fd00::/8";

/// Linkerd's default list of ports whose protocols are server-speaks-first
/// (SMTP, submission, MySQL, Galera, PostgreSQL, Redis, Elasticsearch,
/// memcached).
pub const DEFAULT_PORTS_DISABLE_PROTOCOL_DETECTION: &str = "25,587,3306,4444,5432,6379,9300,11211";

// === impl Config ===

impl Config {
    /// Reads and validates the configuration.
    pub fn from_env(env: &(impl Env + ?Sized)) -> Result<Self, ConfigError> {
        let r = Reader { env };
        let keepalive = Some(Duration::from_secs(10));
        let tcp_idle_timeout = r.timeout("TCP_IDLE_TIMEOUT", DEFAULT_IDLE_TIMEOUT)?;
        let outbound = ProxyConfig {
            listen_addr: r.addr("OUTBOUND_LISTEN_ADDR", ([127, 0, 0, 1], 4140))?,
            connect_timeout: r.timeout("OUTBOUND_CONNECT_TIMEOUT", Duration::from_secs(1))?,
            accept_keepalive: r.keepalive("OUTBOUND_ACCEPT_KEEPALIVE", keepalive)?,
            connect_keepalive: r.keepalive("OUTBOUND_CONNECT_KEEPALIVE", keepalive)?,
            detect_timeout: r.timeout("OUTBOUND_DETECT_TIMEOUT", Duration::from_secs(10))?,
            ports_disable_protocol_detection: r
                .ports("OUTBOUND_PORTS_DISABLE_PROTOCOL_DETECTION")?,
            max_in_flight: r.count("OUTBOUND_MAX_IN_FLIGHT", 100_000)?,
            max_connections: r.count("OUTBOUND_MAX_CONNECTIONS", DEFAULT_MAX_CONNECTIONS)?,
            tcp_idle_timeout,
            orig_dst_addr: r.opt_addr("OUTBOUND_ORIG_DST_ADDR")?,
        };
        let inbound = ProxyConfig {
            listen_addr: r.addr("INBOUND_LISTEN_ADDR", ([0, 0, 0, 0], 4143))?,
            connect_timeout: r.timeout("INBOUND_CONNECT_TIMEOUT", Duration::from_millis(300))?,
            accept_keepalive: r.keepalive("INBOUND_ACCEPT_KEEPALIVE", keepalive)?,
            connect_keepalive: r.keepalive("INBOUND_CONNECT_KEEPALIVE", keepalive)?,
            detect_timeout: r.timeout("INBOUND_DETECT_TIMEOUT", Duration::from_secs(10))?,
            ports_disable_protocol_detection: r
                .ports("INBOUND_PORTS_DISABLE_PROTOCOL_DETECTION")?,
            max_in_flight: r.count("INBOUND_MAX_IN_FLIGHT", 100_000)?,
            max_connections: r.count("INBOUND_MAX_CONNECTIONS", DEFAULT_MAX_CONNECTIONS)?,
            tcp_idle_timeout,
            orig_dst_addr: r.opt_addr("INBOUND_ORIG_DST_ADDR")?,
        };
        let window = |name: &str| {
            r.get(name, |s| match s.trim().parse::<u32>() {
                // From HTTP/2's default, 64 KiB - 1, to what one stream or
                // connection may buffer here.
                Ok(n) if (65_535..=MAX_HTTP2_WINDOW).contains(&n) => Ok(n),
                _ => Err(format!(
                    "expected a window size in bytes, from 65535 to {MAX_HTTP2_WINDOW}"
                )),
            })
        };
        let http = HttpConfig {
            header_read_timeout: r.timeout("HTTP_HEADER_READ_TIMEOUT", Duration::from_secs(10))?,
            max_request_body_size: r.get("HTTP_MAX_REQUEST_BODY_SIZE", |s| {
                match s.trim().parse::<u64>() {
                    Ok(n) if n > 0 => Ok(n),
                    _ => Err("expected a size in bytes, at least 1".to_string()),
                }
            })?,
            idle_timeout: r.timeout("HTTP_IDLE_TIMEOUT", DEFAULT_IDLE_TIMEOUT)?,
            body_idle_timeout: r.timeout("HTTP_BODY_IDLE_TIMEOUT", DEFAULT_IDLE_TIMEOUT)?,
            http2_max_concurrent_streams: r
                .get("HTTP2_MAX_CONCURRENT_STREAMS", |s| {
                    match s.trim().parse::<u32>() {
                        Ok(n) if n > 0 => Ok(n),
                        _ => Err("expected a whole number of streams, at least 1".to_string()),
                    }
                })?
                .unwrap_or(1000),
            http2_initial_stream_window_size: window("HTTP2_INITIAL_STREAM_WINDOW_SIZE")?,
            http2_initial_connection_window_size: window("HTTP2_INITIAL_CONNECTION_WINDOW_SIZE")?,
            http2_adaptive_window: r.flag("HTTP2_ADAPTIVE_WINDOW")?,
            http2_keepalive_interval: r
                .timeout("HTTP2_KEEPALIVE_INTERVAL", Duration::from_secs(10))?,
            http2_keepalive_timeout: r
                .timeout("HTTP2_KEEPALIVE_TIMEOUT", Duration::from_secs(3))?,
        };
        let admin = AdminConfig {
            listen_addr: r.addr("ADMIN_LISTEN_ADDR", ([127, 0, 0, 1], 4191))?,
        };
        let shutdown_grace_period = r
            .get("SHUTDOWN_GRACE_PERIOD", parse::duration)?
            .unwrap_or(Duration::from_secs(120));
        let log = LogConfig {
            filter: r
                .get("LOG", |s| {
                    let filter = linkerd_targets_to_ours(s);
                    tracing_subscriber::EnvFilter::builder()
                        .parse(&filter)
                        .map(|_| filter)
                        .map_err(|e| format!("not a log filter: {e}"))
                })?
                .unwrap_or_else(|| "warn,linnet=info".to_string()),
            format: r
                .get("LOG_FORMAT", |s| match s.to_ascii_lowercase().as_str() {
                    "plain" => Ok(LogFormat::Plain),
                    "json" => Ok(LogFormat::Json),
                    _ => Err("expected plain or json".to_string()),
                })?
                .unwrap_or(LogFormat::Plain),
        };
        let cores = match r.get("CORES", |s| match s.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err("expected a whole number of cores, at least 1".to_string()),
        })? {
            Some(n) => n,
            None => default_cores(),
        };
        let metrics = MetricsConfig {
            max_label_values: r.count("METRICS_MAX_LABEL_VALUES", 1000)?,
            idle_timeout: r.timeout("METRICS_IDLE_TIMEOUT", Duration::from_secs(60))?,
        };
        let control = r.control()?;
        let identity_disabled = r.flag("IDENTITY_DISABLED")?;
        if control.identity.is_none() && !identity_disabled {
            // Identity settings without the service that certifies them
            // would leave the proxy without mTLS, silently.
            for name in [
                "IDENTITY_LOCAL_NAME",
                "IDENTITY_TOKEN_FILE",
                "IDENTITY_TRUST_ANCHORS",
                "IDENTITY_DIR",
                "IDENTITY_SERVER_NAME",
            ] {
                if let Some(var) = r.which(name) {
                    return Err(ConfigError {
                        var,
                        value: String::new(),
                        reason: "set without IDENTITY_SVC_ADDR: the identity service that certifies this workload is required (or set IDENTITY_DISABLED=true to run without mTLS)".to_string(),
                    });
                }
            }
        }
        let identity = if identity_disabled || control.identity.is_none() {
            None
        } else {
            Some(r.identity()?)
        };
        r.control_tls(&control, identity.is_some(), identity_disabled)?;
        Ok(Config {
            outbound,
            inbound,
            admin,
            shutdown_grace_period,
            http,
            log,
            cores,
            control,
            identity,
            identity_disabled,
            metrics,
        })
    }

    /// `LINNET_` variables that this version does not know: most likely
    /// misspellings, worth a warning at start.
    pub fn unknown_variables(env: &(impl Env + ?Sized)) -> Vec<String> {
        let mut unknown: Vec<String> = env
            .names()
            .into_iter()
            .filter(|n| {
                n.strip_prefix(PREFIX)
                    .is_some_and(|rest| !KNOWN.contains(&rest))
            })
            .collect();
        unknown.sort();
        unknown
    }

    /// The configuration as JSON, for the start-up log and `/config.json`.
    pub fn to_json(&self) -> String {
        // Serialising plain structs of strings and numbers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Rewrites directives for Linkerd's crate-wide targets (`linkerd=info`,
/// `linkerd2_proxy=debug`) as directives for ours (`linnet`), so
/// that the filter a Linkerd injection sets (`LINKERD2_PROXY_LOG`) keeps
/// meaning what it says. Other directives are kept as they are.
fn linkerd_targets_to_ours(filter: &str) -> String {
    filter
        .split(',')
        .map(|d| {
            let d = d.trim();
            let (target, level) = d.split_once('=').map_or((d, None), |(t, l)| (t, Some(l)));
            // Only the crate-wide targets translate: a Linkerd module path
            // names nothing here, and is left to match nothing.
            match (target, level) {
                ("linkerd" | "linkerd2_proxy", Some(l)) => format!("linnet={l}"),
                ("linkerd" | "linkerd2_proxy", None) => "linnet".to_string(),
                _ => d.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A DNS-like name: dot-separated labels of letters, digits and `-`.
fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The number of cores this process may use: the cgroup CPU quota rounded
/// up when one is set, else the CPUs it can run on.
pub fn default_cores() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    match cgroup_quota() {
        Some(q) => q.clamp(1, cpus),
        None => cpus,
    }
}

/// The cgroup v2 CPU quota (`cpu.max`, "quota period"), in whole cores
/// rounded up; `None` when unlimited or unreadable.
fn cgroup_quota() -> Option<usize> {
    let text = std::fs::read_to_string("/sys/fs/cgroup/cpu.max").ok()?;
    let mut parts = text.split_whitespace();
    let quota: u64 = parts.next()?.parse().ok()?;
    let period: u64 = parts.next()?.parse().ok()?;
    if period == 0 {
        return None;
    }
    usize::try_from(quota.div_ceil(period)).ok()
}

// === impl Reader ===

struct Reader<'a, E: ?Sized> {
    env: &'a E,
}

impl<E: Env + ?Sized> Reader<'_, E> {
    /// Reads `LINNET_<name>`, else `LINKERD2_PROXY_<name>`, and parses it.
    fn get<T>(
        &self,
        name: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        let found = [PREFIX, LINKERD_PREFIX].into_iter().find_map(|prefix| {
            let var = format!("{prefix}{name}");
            self.env.get(&var).map(|value| (var, value))
        });
        let Some((var, value)) = found else {
            return Ok(None);
        };
        parse(&value)
            .map(Some)
            .map_err(|reason| ConfigError { var, value, reason })
    }

    /// The variable that sets `name`, if one does.
    fn which(&self, name: &str) -> Option<String> {
        [PREFIX, LINKERD_PREFIX]
            .into_iter()
            .map(|prefix| format!("{prefix}{name}"))
            .find(|var| self.env.get(var).is_some())
    }

    fn addr(&self, name: &str, default: impl Into<SocketAddr>) -> Result<SocketAddr, ConfigError> {
        Ok(self.opt_addr(name)?.unwrap_or_else(|| default.into()))
    }

    fn string(&self, name: &str) -> Result<Option<String>, ConfigError> {
        self.get(name, |s| {
            let s = s.trim();
            if s.is_empty() {
                Err("empty".to_string())
            } else {
                Ok(s.to_string())
            }
        })
    }

    /// `host:port`, where host is a DNS name or an IP.
    fn service(&self, svc: &str) -> Result<Option<ControlAddr>, ConfigError> {
        let addr = self.get(&format!("{svc}_SVC_ADDR"), |s| {
            let s = s.trim();
            let ok = s.parse::<SocketAddr>().is_ok()
                || s.rsplit_once(':').is_some_and(|(host, port)| {
                    !host.is_empty()
                        && !host.contains(['/', ' '])
                        && port.parse::<u16>().is_ok_and(|p| p != 0)
                });
            if ok {
                Ok(s.to_string())
            } else {
                Err(
                    "expected host:port, like linkerd-dst-headless.linkerd.svc.cluster.local:8086"
                        .to_string(),
                )
            }
        })?;
        let name = self.get(&format!("{svc}_SVC_NAME"), |s| {
            let s = s.trim().trim_end_matches('.').to_ascii_lowercase();
            if is_dns_name(&s) {
                Ok(s)
            } else {
                Err("expected the control plane's identity, a DNS-like name such as linkerd-destination.linkerd.serviceaccount.identity.linkerd.cluster.local".to_string())
            }
        })?;
        let Some(addr) = addr else {
            return Ok(None);
        };
        // Off loopback the service is spoken to only over TLS, verified
        // against its identity: without one there is nothing to verify.
        if name.is_none() && !linnet_core::addr::is_loopback_authority(&addr) {
            return Err(ConfigError {
                var: self.spelt(&format!("{svc}_SVC_NAME")),
                value: String::new(),
                reason: format!(
                    "required with a non-loopback {svc}_SVC_ADDR ({addr}): the control plane is spoken to over TLS that verifies this identity"
                ),
            });
        }
        Ok(Some(ControlAddr { addr, name }))
    }

    /// The variable as the environment spells it: ours when set (or when
    /// neither is), else Linkerd's.
    fn spelt(&self, name: &str) -> String {
        let ours = format!("{PREFIX}{name}");
        let theirs = format!("{LINKERD_PREFIX}{name}");
        if self.env.get(&ours).is_none() && self.env.get(&theirs).is_some() {
            theirs
        } else {
            ours
        }
    }

    /// A control plane off loopback needs the trust anchors to verify it:
    /// with identity disabled, or not configured, it cannot be reached
    /// safely, and the proxy refuses to start rather than speak plaintext.
    fn control_tls(
        &self,
        control: &ControlConfig,
        has_anchors: bool,
        identity_disabled: bool,
    ) -> Result<(), ConfigError> {
        if has_anchors {
            return Ok(());
        }
        let services = [
            ("DESTINATION", &control.destination),
            ("POLICY", &control.policy),
            ("IDENTITY", &control.identity),
        ];
        for (svc, addr) in services {
            let Some(addr) = addr else { continue };
            if linnet_core::addr::is_loopback_authority(&addr.addr) {
                continue;
            }
            let why = if identity_disabled {
                "IDENTITY_DISABLED is set"
            } else {
                "no identity is configured (IDENTITY_SVC_ADDR and IDENTITY_TRUST_ANCHORS)"
            };
            return Err(ConfigError {
                var: self.spelt(&format!("{svc}_SVC_ADDR")),
                value: addr.addr.clone(),
                reason: format!(
                    "not a loopback address, so the control plane is spoken to only over TLS verified against IDENTITY_TRUST_ANCHORS, but {why}; configure the identity or use a loopback address"
                ),
            });
        }
        Ok(())
    }

    fn control(&self) -> Result<ControlConfig, ConfigError> {
        let policy = self.service("POLICY")?;
        let workload = self.string("POLICY_WORKLOAD")?;
        if policy.is_some() && workload.is_none() {
            return Err(ConfigError {
                var: format!("{PREFIX}POLICY_WORKLOAD"),
                value: String::new(),
                reason: "required with POLICY_SVC_ADDR: the workload the policy service knows this proxy as"
                    .to_string(),
            });
        }
        let dns_min_ttl = self.timeout("DNS_MIN_TTL", Duration::from_secs(5))?;
        let dns_max_ttl = self.timeout("DNS_MAX_TTL", Duration::from_secs(300))?;
        if dns_min_ttl > dns_max_ttl {
            return Err(ConfigError {
                var: format!("{PREFIX}DNS_MIN_TTL"),
                value: parse::format_duration(dns_min_ttl),
                reason: "longer than DNS_MAX_TTL".to_string(),
            });
        }
        Ok(ControlConfig {
            destination: self.service("DESTINATION")?,
            destination_context: self.string("DESTINATION_CONTEXT")?.unwrap_or_default(),
            policy,
            workload,
            identity: self.service("IDENTITY")?,
            discovery_idle_timeout: self
                .timeout("OUTBOUND_DISCOVERY_IDLE_TIMEOUT", Duration::from_secs(5))?,
            discovery_initial_wait: self.timeout("DISCOVERY_INITIAL_WAIT", Duration::from_secs(3))?,
            profile_networks: self
                .get("DESTINATION_PROFILE_NETWORKS", parse::Network::parse_list)?
                .unwrap_or_else(|| {
                    ["0.0.0.0/0", "::/0"]
                        .iter()
                        .filter_map(|n| parse::Network::parse(n).ok())
                        .collect()
                }),
            inbound_default_policy: self
                .get("INBOUND_DEFAULT_POLICY", |s| {
                    Ok(match s.trim() {
                        "all-unauthenticated" => DefaultPolicy::AllUnauthenticated,
                        "all-authenticated" => DefaultPolicy::AllAuthenticated,
                        "cluster-unauthenticated" => DefaultPolicy::ClusterUnauthenticated,
                        "cluster-authenticated" => DefaultPolicy::ClusterAuthenticated,
                        "deny" => DefaultPolicy::Deny,
                        "audit" => DefaultPolicy::Audit,
                        _ => return Err("expected all-unauthenticated, all-authenticated, cluster-unauthenticated, cluster-authenticated, deny or audit".to_string()),
                    })
                })?
                .unwrap_or(DefaultPolicy::AllUnauthenticated),
            cluster_networks: self
                .get("POLICY_CLUSTER_NETWORKS", parse::Network::parse_list)?
                .unwrap_or_else(|| {
                    DEFAULT_CLUSTER_NETWORKS
                        .split(',')
                        .filter_map(|n| parse::Network::parse(n).ok())
                        .collect()
                }),
            inbound_ports_require_identity: self.ports("INBOUND_PORTS_REQUIRE_IDENTITY")?,
            inbound_ports_require_tls: self.ports("INBOUND_PORTS_REQUIRE_TLS")?,
            dns_servers: self
                .get("DNS_SERVERS", |s| {
                    s.split(',')
                        .map(str::trim)
                        .filter(|x| !x.is_empty())
                        .map(|x| {
                            x.parse::<SocketAddr>()
                                .or_else(|_| x.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                                .map_err(|_| format!("{x:?} is not an IP or IP:port"))
                        })
                        .collect::<Result<Vec<_>, _>>()
                })?
                .unwrap_or_default(),
            dns_min_ttl,
            dns_max_ttl,
        })
    }

    /// The identity settings, all required once the identity service is
    /// configured.
    fn identity(&self) -> Result<IdentityConfig, ConfigError> {
        let required = |name: &str, what: &str| ConfigError {
            var: format!("{PREFIX}{name}"),
            value: String::new(),
            reason: format!(
                "required with IDENTITY_SVC_ADDR: {what} (or set IDENTITY_DISABLED=true)"
            ),
        };
        let local_name = self
            .get("IDENTITY_LOCAL_NAME", |s| {
                let s = s.trim();
                let ok = s.starts_with("spiffe://")
                    || (!s.is_empty()
                        && s.split('.').all(|l| {
                            !l.is_empty()
                                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        }));
                if ok {
                    Ok(s.to_string())
                } else {
                    Err("expected a DNS-like identity name or a spiffe:// URI".to_string())
                }
            })?
            .ok_or_else(|| required("IDENTITY_LOCAL_NAME", "this workload's identity"))?;
        let token_file = self
            .string("IDENTITY_TOKEN_FILE")?
            .map(std::path::PathBuf::from)
            .ok_or_else(|| required("IDENTITY_TOKEN_FILE", "the token file"))?;
        let trust_anchors_pem = self
            .get("IDENTITY_TRUST_ANCHORS", |s| {
                if s.contains("-----BEGIN CERTIFICATE-----") {
                    Ok(s.to_string())
                } else {
                    Err("expected PEM certificates (the text, not a path)".to_string())
                }
            })?
            .ok_or_else(|| required("IDENTITY_TRUST_ANCHORS", "the trust anchors (PEM)"))?;
        let min_refresh = self.timeout("IDENTITY_MIN_REFRESH", Duration::from_secs(10))?;
        let max_refresh = self.timeout("IDENTITY_MAX_REFRESH", Duration::from_secs(24 * 3600))?;
        if min_refresh > max_refresh {
            return Err(ConfigError {
                var: format!("{PREFIX}IDENTITY_MIN_REFRESH"),
                value: parse::format_duration(min_refresh),
                reason: "longer than IDENTITY_MAX_REFRESH".to_string(),
            });
        }
        Ok(IdentityConfig {
            local_name,
            token_file,
            trust_anchors_pem,
            dir: self.string("IDENTITY_DIR")?.map(std::path::PathBuf::from),
            server_name: self.get("IDENTITY_SERVER_NAME", |s| {
                let s = s.trim().trim_end_matches('.').to_ascii_lowercase();
                let ok = !s.is_empty()
                    && s.split('.').all(|l| {
                        !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    });
                if ok {
                    Ok(s)
                } else {
                    Err("expected a DNS name".to_string())
                }
            })?,
            min_refresh,
            max_refresh,
        })
    }

    fn opt_addr(&self, name: &str) -> Result<Option<SocketAddr>, ConfigError> {
        self.get(name, |s| {
            SocketAddr::from_str(s.trim())
                .map_err(|_| "expected an IP address and port, like 127.0.0.1:4140".to_string())
        })
    }

    fn timeout(&self, name: &str, default: Duration) -> Result<Duration, ConfigError> {
        let d = self.get(name, |s| {
            let d = parse::duration(s)?;
            if d.is_zero() {
                return Err("a timeout must be longer than zero".to_string());
            }
            Ok(d)
        })?;
        Ok(d.unwrap_or(default))
    }

    /// A yes/no setting, off unless set.
    fn flag(&self, name: &str) -> Result<bool, ConfigError> {
        let b = self.get(name, |s| match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" | "" => Ok(false),
            _ => Err("expected true or false".to_string()),
        })?;
        Ok(b.unwrap_or(false))
    }

    fn count(&self, name: &str, default: usize) -> Result<usize, ConfigError> {
        let n = self.get(name, |s| match s.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err("expected a whole number, at least 1".to_string()),
        })?;
        Ok(n.unwrap_or(default))
    }

    fn ports(&self, name: &str) -> Result<parse::PortSet, ConfigError> {
        let ports = self.get(name, parse::PortSet::parse)?;
        // The default list is a literal that parses.
        Ok(ports.unwrap_or_else(|| {
            parse::PortSet::parse(DEFAULT_PORTS_DISABLE_PROTOCOL_DETECTION).unwrap_or_default()
        }))
    }

    fn keepalive(
        &self,
        name: &str,
        default: Option<Duration>,
    ) -> Result<Option<Duration>, ConfigError> {
        // `0s` turns keepalive off, as it does in Linkerd.
        let d = self.get(name, |s| {
            parse::duration(s).map(|d| (!d.is_zero()).then_some(d))
        })?;
        Ok(d.unwrap_or(default))
    }
}

#[cfg(test)]
mod tests;
