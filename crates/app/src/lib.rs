//! The Linnet proxy, assembled.
//!
//! [`run`] takes a validated [`Config`], listeners that are already bound,
//! the original-destination lookup and a shutdown future, and runs the
//! inbound and outbound stacks and the admin server until shutdown has
//! drained. Taking the listeners and the lookup as arguments is what lets
//! tests run the whole proxy in-process on `127.0.0.1:0` without iptables.
//!
//! Shutdown: when `shutdown` resolves, or on `POST /shutdown`, readiness
//! turns false, the listeners close (new connections are refused), open
//! connections run on for up to the grace period and are then reset, and
//! [`run`] returns.

mod inbound;
mod mesh;
mod open_files;
mod outbound;
mod stacks;
mod tcp;
mod upstreams;

use bytes::Bytes;
use linnet_admin::{Admin, Readiness};
use linnet_config::Config;
use linnet_core::drain;
use linnet_metrics::{Direction, http::HttpMetrics, tcp::TcpMetrics};

use std::{future::Future, io, net::SocketAddr, sync::Arc};
use tokio::{net::TcpListener, sync::Notify};

pub use linnet_admin::LogLevel;
pub use linnet_core::drain::Drained;
pub use linnet_transport::OrigDst;

/// The proxy's bound listeners.
#[derive(Debug)]
pub struct Listeners {
    /// Connections into the pod.
    pub inbound: TcpListener,
    /// Connections out of the pod.
    pub outbound: TcpListener,
    /// The admin server.
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds the three listeners at the configured addresses.
    pub fn bind(config: &Config) -> Result<Self, BindError> {
        let bind = |name: &'static str, addr: SocketAddr| {
            linnet_transport::bind(addr).map_err(|source| BindError { name, addr, source })
        };
        Ok(Self {
            inbound: bind("inbound", config.inbound.listen_addr)?,
            outbound: bind("outbound", config.outbound.listen_addr)?,
            admin: bind("admin", config.admin.listen_addr)?,
        })
    }
}

/// A listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for {name} connections on {addr}")]
pub struct BindError {
    name: &'static str,
    addr: SocketAddr,
    #[source]
    source: io::Error,
}

/// Optional parts of [`run`].
#[derive(Default)]
pub struct Options {
    /// Log-level control for the admin server.
    pub log_level: Option<Arc<dyn LogLevel>>,
}

/// The control-plane clients, when a destination or policy service is
/// configured. Their failure to start is logged, and the proxy runs
/// without them (as it does with none configured).
fn discovery(
    config: &Config,
    metrics: linnet_discovery::Metrics,
    tls: Option<linnet_discovery::control::ControlTls>,
) -> Option<linnet_discovery::Discovery> {
    let c = &config.control;
    if c.destination.is_none() && c.policy.is_none() {
        return None;
    }
    let addr = |a: &Option<linnet_config::ControlAddr>| a.as_ref().map(control_addr);
    let d = linnet_discovery::Config {
        destination: addr(&c.destination),
        policy: addr(&c.policy),
        workload: c.workload.clone(),
        context_token: c.destination_context.clone(),
        idle_timeout: c.discovery_idle_timeout,
        initial_wait: c.discovery_initial_wait,
        dns_servers: c.dns_servers.clone(),
        dns_min_ttl: c.dns_min_ttl,
        dns_max_ttl: c.dns_max_ttl,
        tls,
    };
    match linnet_discovery::Discovery::new(d, metrics) {
        Ok(d) => {
            tracing::info!(
                destination = ?c.destination.as_ref().map(|a| &a.addr),
                policy = ?c.policy.as_ref().map(|a| &a.addr),
                "discovering endpoints and policies from the control plane"
            );
            Some(d)
        }
        Err(error) => {
            tracing::error!(%error, "cannot start the control-plane clients; forwarding to original destinations");
            None
        }
    }
}

/// The proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The workload identity could not be set up from its settings.
    #[error("cannot set up the workload identity {name}: {reason}")]
    Identity {
        /// `IDENTITY_LOCAL_NAME`.
        name: String,
        /// Why.
        reason: String,
    },
    /// Mesh TLS could not be configured from the identity.
    #[error("cannot set up mesh TLS: {0}")]
    MeshTls(String),
}

fn control_addr(a: &linnet_config::ControlAddr) -> linnet_discovery::ControlAddr {
    linnet_discovery::ControlAddr {
        addr: a.addr.clone(),
        name: a.name.clone(),
    }
}

/// The control-plane clients' metrics, and the TLS that reaches a
/// control plane off loopback: verified against the identity's trust
/// anchors (without them such a control plane is not reached at all).
fn control_plane(
    config: &Config,
    registry: &mut linnet_metrics::prometheus_client::registry::Registry,
) -> (
    linnet_discovery::Metrics,
    Option<linnet_discovery::control::ControlTls>,
) {
    let c = &config.control;
    if c.destination.is_none() && c.policy.is_none() && c.identity.is_none() {
        return (Default::default(), None);
    }
    let metrics = linnet_discovery::Metrics::register(registry);
    let anchors = config.identity.as_ref().and_then(|id| {
        linnet_tls::TrustAnchors::from_pem(&id.trust_anchors_pem)
            .inspect_err(|error| tracing::error!(%error, "IDENTITY_TRUST_ANCHORS: unusable; a control plane off loopback cannot be reached"))
            .ok()
    });
    let tls = anchors.map(|a| linnet_discovery::control::ControlTls::new(a, metrics.clone()));
    (metrics, tls)
}

/// The workload identity, certifying in the background, when configured.
/// A configured identity that cannot be set up stops the proxy: running
/// on without it would leave meshed traffic without mTLS.
fn identity(
    config: &Config,
    registry: &mut linnet_metrics::prometheus_client::registry::Registry,
    control_tls: Option<&linnet_discovery::control::ControlTls>,
) -> Result<Option<Arc<linnet_identity::Identity>>, StartError> {
    if config.identity_disabled {
        tracing::warn!(
            "IDENTITY_DISABLED is set: this proxy has no identity; meshed peers are refused (never reached in plaintext) and its own connections are neither encrypted nor authenticated"
        );
        return Ok(None);
    }
    let (Some(c), Some(svc)) = (config.identity.as_ref(), config.control.identity.as_ref()) else {
        return Ok(None);
    };
    let failed = |reason: String| StartError::Identity {
        name: c.local_name.clone(),
        reason,
    };
    let local = linnet_tls::Id::parse(&c.local_name).map_err(|e| failed(e.to_string()))?;
    let metrics = linnet_identity::Metrics::register(registry);
    let id = linnet_identity::Identity::new(
        linnet_identity::Config {
            local,
            trust_anchors_pem: c.trust_anchors_pem.clone(),
            token_file: c.token_file.clone(),
            dir: c.dir.clone(),
            min_refresh: c.min_refresh,
            max_refresh: c.max_refresh,
        },
        metrics,
    )
    .map_err(|e| failed(e.to_string()))?;
    let channel = linnet_discovery::control::channel("identity", &control_addr(svc), control_tls)
        .map_err(|e| failed(e.to_string()))?;
    let id = Arc::new(id);
    tracing::info!(identity = %id.local(), service = %svc.addr, "certifying this workload's identity");
    let client = linkerd2_proxy_api::identity::identity_client::IdentityClient::new(channel);
    tokio::spawn(id.clone().run(client));
    Ok(Some(id))
}

/// Keeps `/ready` true only while this workload holds a certificate that
/// has not expired: false before the first, false again if renewal fails
/// until the current one expires, true once a new one arrives.
async fn follow_certificate(id: Arc<linnet_identity::Identity>, readiness: Readiness) {
    let mut ready = id.ready();
    if ready.wait_for(|r| *r).await.is_err() {
        return;
    }
    tracing::info!(identity = %id.local(), "ready: certified");
    let store = id.store();
    let mut was_usable = true;
    readiness.set(true);
    loop {
        // Look again at expiry, and at least every few seconds (a renewal
        // may have replaced an expired certificate).
        let until_expiry = store
            .not_after()
            .and_then(|t| t.duration_since(std::time::SystemTime::now()).ok())
            .unwrap_or_default();
        let wait = until_expiry
            .min(std::time::Duration::from_secs(5))
            .max(std::time::Duration::from_millis(50));
        tokio::time::sleep(wait).await;
        let usable = store.usable().is_ok();
        if usable != was_usable {
            if usable {
                tracing::info!(identity = %id.local(), "ready: certified again");
            } else {
                tracing::error!(identity = %id.local(), "not ready: this workload's certificate has expired and has not been renewed");
            }
            readiness.set(usable);
            was_usable = usable;
        }
    }
}

/// The inbound default policy and its per-port overrides, from the
/// configuration.
fn inbound_defaults(config: &Config) -> linnet_policy::inbound::Defaults {
    use linnet_config::DefaultPolicy as C;
    use linnet_policy::inbound::DefaultPolicy as P;
    let c = &config.control;
    let networks = |nets: &[linnet_config::parse::Network]| {
        nets.iter()
            .filter_map(|n| n.to_string().parse().ok())
            .collect()
    };
    let ports =
        |p: &linnet_config::parse::PortSet| linnet_policy::inbound::Ports(p.ranges().to_vec());
    linnet_policy::inbound::Defaults {
        policy: match c.inbound_default_policy {
            C::AllUnauthenticated => P::AllUnauthenticated,
            C::AllAuthenticated => P::AllAuthenticated,
            C::ClusterUnauthenticated => P::ClusterUnauthenticated,
            C::ClusterAuthenticated => P::ClusterAuthenticated,
            C::Deny => P::Deny,
            C::Audit => P::Audit,
        },
        cluster_networks: networks(&c.cluster_networks),
        detect_timeout: config.inbound.detect_timeout,
        opaque_ports: ports(&config.inbound.ports_disable_protocol_detection),
        require_identity_ports: ports(&c.inbound_ports_require_identity),
        require_tls_ports: ports(&c.inbound_ports_require_tls),
    }
}

/// A configured fixed destination replaces the given lookup.
fn fixed_or(direction: Direction, addr: Option<SocketAddr>, lookup: &OrigDst) -> OrigDst {
    match addr {
        Some(addr) => {
            tracing::info!(%direction, %addr, "every connection goes to a fixed destination (ORIG_DST_ADDR)");
            OrigDst::Fixed(addr)
        }
        None => lookup.clone(),
    }
}

/// Runs the proxy until `shutdown` (or the admin server's `/shutdown`)
/// has drained; see the crate docs. Fails at once, before serving, when a
/// configured identity cannot be set up.
pub async fn run(
    mut config: Config,
    listeners: Listeners,
    orig_dst: OrigDst,
    options: Options,
    shutdown: impl Future<Output = ()>,
) -> Result<Drained, StartError> {
    open_files::fit(&mut config);
    let mut registry = linnet_metrics::registry();
    let bounds = linnet_metrics::bounded::Bounds::register(
        &mut registry,
        linnet_metrics::bounded::Limits {
            max_values: config.metrics.max_label_values,
            idle_timeout: config.metrics.idle_timeout,
        },
    );
    let tcp_metrics = TcpMetrics::register(&mut registry, &bounds);
    let http_metrics = HttpMetrics::register(&mut registry, &bounds);
    let mesh_metrics = linnet_metrics::mesh::MeshMetrics::register(&mut registry);
    let limit_metrics = linnet_metrics::limits::LimitMetrics::register(&mut registry);
    let route_metrics = linnet_metrics::route::RouteMetrics::register(&mut registry);
    let resolve_metrics = linnet_metrics::resolve::ResolveMetrics::register(&mut registry);
    // The identity first: discovery's TLS presents its certificate.
    let (control_metrics, control_tls) = control_plane(&config, &mut registry);
    let identity = identity(&config, &mut registry, control_tls.as_ref())?;
    let discovery = discovery(
        &config,
        control_metrics.with_resolutions(resolve_metrics.clone()),
        control_tls.map(|t| match &identity {
            Some(id) => t.with_client_certificate(id.store()),
            None => t,
        }),
    );
    let mesh = match &identity {
        Some(id) => Some(Arc::new(
            mesh::MeshTls::new(
                id.clone(),
                config.identity.as_ref().and_then(|c| c.server_name.clone()),
            )
            .map_err(|e| StartError::MeshTls(e.to_string()))?,
        )),
        None => None,
    };
    let (signal, watch) = drain::channel();

    let upstreams = |direction, proxy: &linnet_config::ProxyConfig| {
        Arc::new(upstreams::Upstreams {
            direction,
            config: proxy.clone(),
            http: config.http.clone(),
            metrics: tcp_metrics.clone(),
            mesh_metrics: mesh_metrics.clone(),
            mesh: mesh.clone(),
            cache: Default::default(),
        })
    };
    let outbound_upstreams = upstreams(Direction::Outbound, &config.outbound);
    let inbound_upstreams = upstreams(Direction::Inbound, &config.inbound);
    let new_endpoint: linnet_outbound::http::NewEndpoint = {
        let upstreams = outbound_upstreams.clone();
        Arc::new(move |e: &Arc<linnet_discovery::Endpoint>| {
            linnet_http::EndpointClient::new(upstreams.get(
                e.addr,
                e.identity.as_deref(),
                e.server_name.as_deref(),
                e.hint == linnet_discovery::Hint::H2,
            ))
        })
    };
    let stacks = stacks::LogicalStacks::new(
        linnet_outbound::http::Stacks::new(discovery.clone(), new_endpoint, route_metrics.clone()),
        route_metrics,
        config.control.discovery_idle_timeout,
    );
    let outbound = Arc::new(tcp::Forward {
        direction: Direction::Outbound,
        config: config.outbound.clone(),
        orig_dst: fixed_or(
            Direction::Outbound,
            config.outbound.orig_dst_addr,
            &orig_dst,
        ),
        metrics: tcp_metrics.clone(),
        http_metrics: http_metrics.clone(),
        resolve_metrics: resolve_metrics.clone(),
        mesh_metrics: mesh_metrics.clone(),
        limit_metrics: limit_metrics.clone(),
        profile_networks: config.control.profile_networks.clone(),
        upstreams: outbound_upstreams,
        stacks: Some(stacks),
        in_flight: linnet_http::InFlight::new(config.outbound.max_in_flight),
        http: config.http.clone(),
        discovery: discovery.clone(),
        mesh: mesh.clone(),
        inbound: None,
    });
    let inbound = inbound::InboundPolicy {
        policies: linnet_inbound::Policies::new(
            inbound_defaults(&config),
            discovery.clone(),
            config.control.discovery_initial_wait,
            &mut registry,
        ),
        metrics: linnet_metrics::authz::AuthzMetrics::register(&mut registry, &bounds),
    };
    let inbound = Arc::new(tcp::Forward {
        direction: Direction::Inbound,
        config: config.inbound.clone(),
        orig_dst: fixed_or(Direction::Inbound, config.inbound.orig_dst_addr, &orig_dst),
        metrics: tcp_metrics,
        http_metrics,
        resolve_metrics,
        mesh_metrics,
        limit_metrics,
        profile_networks: config.control.profile_networks.clone(),
        upstreams: inbound_upstreams,
        stacks: None,
        in_flight: linnet_http::InFlight::new(config.inbound.max_in_flight),
        http: config.http.clone(),
        discovery,
        mesh,
        inbound: Some(Arc::new(inbound)),
    });
    log_listening(&listeners);
    tokio::spawn(tcp::serve(listeners.outbound, outbound, watch.clone()));
    tokio::spawn(tcp::serve(listeners.inbound, inbound, watch));

    let readiness = Readiness::default();
    let admin_shutdown = Arc::new(Notify::new());
    let admin = Arc::new(Admin {
        registry: Arc::new(registry),
        config_json: Bytes::from(config.to_json()),
        readiness: readiness.clone(),
        log_level: options.log_level,
        shutdown: {
            let notify = admin_shutdown.clone();
            Arc::new(move || notify.notify_one())
        },
    });
    let stop_admin = Arc::new(Notify::new());
    let admin_task = tokio::spawn({
        let stop = stop_admin.clone();
        async move { linnet_admin::serve(listeners.admin, admin, stop.notified()).await }
    });
    // Ready once the listeners are served and, with an identity, while
    // it holds a certificate that has not expired.
    let certificate = match identity {
        None => {
            readiness.set(true);
            None
        }
        Some(id) => Some(tokio::spawn(follow_certificate(id, readiness.clone()))),
    };

    tokio::select! {
        _ = shutdown => {}
        _ = admin_shutdown.notified() => {}
    }
    if let Some(task) = certificate {
        task.abort();
    }
    readiness.set(false);
    tracing::info!(
        grace_period = %linnet_config::parse::format_duration(config.shutdown_grace_period),
        "shutting down: no longer accepting connections, waiting for open ones to finish"
    );
    let drained = signal.drain(config.shutdown_grace_period).await;
    match drained {
        Drained::Clean => tracing::info!("all connections finished; shutdown complete"),
        Drained::Forced { remaining } => tracing::warn!(
            remaining,
            "grace period ended; closed the connections still open"
        ),
    }
    stop_admin.notify_one();
    let _ = admin_task.await;
    Ok(drained)
}

fn log_listening(l: &Listeners) {
    let addr = |l: &TcpListener| {
        l.local_addr()
            .map_or_else(|e| e.to_string(), |a| a.to_string())
    };
    tracing::info!(
        outbound = %addr(&l.outbound),
        inbound = %addr(&l.inbound),
        admin = %addr(&l.admin),
        "listening"
    );
}
