//! `linnet control`: the embedded control plane, serving Linkerd's proxy
//! API from a YAML mesh file (see `linnet_control` and
//! `examples/mesh.yaml`), and in a cluster from Kubernetes' Services and
//! EndpointSlices too when the file turns discovery on: plaintext to
//! clients on loopback, TLS with its own certificate to any other.

use crate::{EXIT_CONFIG, signals, trace};
use anyhow::Context as _;
use linnet_config::{LogConfig, LogFormat};
use linnet_control::{Ca, Control, Mesh, Metrics, Store};
use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

/// `linnet control` arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct ControlArgs {
    /// The mesh file (YAML).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Where to serve the gRPC API.
    #[arg(long, default_value = "127.0.0.1:8086")]
    listen: SocketAddr,
    /// Where to serve /metrics, /ready and /live.
    #[arg(long, default_value = "127.0.0.1:9990")]
    admin_listen: SocketAddr,
    /// How often to look for changes to the mesh file.
    #[arg(long, default_value = "1s", value_parser = linnet_config::parse::duration)]
    reload_interval: Duration,
    /// Log filter.
    #[arg(long, default_value = "warn,linnet=info,linnet_control=info")]
    log: String,
    /// Client connections served at once; new ones beyond it are closed.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// How long a client off loopback may take over its TLS handshake.
    #[arg(long, default_value = "10s", value_parser = linnet_config::parse::duration)]
    handshake_timeout: Duration,
    /// How long a connection with no open stream is kept.
    #[arg(long, default_value = "5m", value_parser = linnet_config::parse::duration)]
    idle_timeout: Duration,
}

pub(crate) fn main(args: ControlArgs) -> ExitCode {
    let mesh = match Mesh::load(&args.config) {
        Ok(m) => m,
        Err(error) => {
            eprintln!("linnet control: {}: {error}", args.config.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match run(args, mesh) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("linnet control: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: ControlArgs, mesh: Mesh) -> anyhow::Result<()> {
    let log = trace::init(&LogConfig {
        filter: args.log.clone(),
        format: LogFormat::Plain,
    })
    .context("cannot set up logging")?;
    let ca = Ca::load_or_generate(&mesh.identity)?;
    println!(
        "trust anchors (give every proxy this PEM as LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS), from {}:\n{}",
        mesh.identity
            .trust_anchors
            .as_ref()
            .unwrap_or(&mesh.identity.issuer_certificate)
            .display(),
        ca.trust_anchors_pem().trim_end()
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async move {
        let shutdown = signals().context("cannot install signal handlers")?;
        let mut registry = linnet_metrics::registry();
        let metrics = Metrics::register(&mut registry);
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let admin_listener = tokio::net::TcpListener::bind(args.admin_listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.admin_listen))?;
        let store = Store::new(mesh);
        tokio::spawn(store.clone().follow(args.config.clone(), args.reload_interval, metrics.clone()));
        // Kubernetes endpoint discovery, while the mesh file turns it on.
        tokio::spawn(linnet_control::discover(store.clone(), metrics.clone()));
        let readiness = linnet_admin::Readiness::default();
        let stop_admin = Arc::new(tokio::sync::Notify::new());
        let admin = Arc::new(linnet_admin::Admin {
            registry: Arc::new(registry),
            config_json: format!(
                "{{\"config\":{:?},\"listen\":\"{}\"}}",
                args.config.display().to_string(),
                args.listen
            )
            .into(),
            readiness: readiness.clone(),
            log_level: Some(log),
            shutdown: {
                let stop = stop_admin.clone();
                Arc::new(move || stop.notify_one())
            },
        });
        let admin_task = tokio::spawn({
            let stop = stop_admin.clone();
            async move { linnet_admin::serve(admin_listener, admin, stop.notified()).await }
        });
        readiness.set(true);
        tracing::info!(
            listen = %args.listen, admin = %args.admin_listen, config = %args.config.display(),
            "linnet control serving Destination, Identity, InboundServerPolicies and OutboundPolicies"
        );
        let control = Control {
            store,
            metrics,
            ca: Arc::new(ca),
        };
        let stopped = stop_admin.clone();
        let options = linnet_control::ServeOptions {
            max_connections: args.max_connections.max(1),
            handshake_timeout: args.handshake_timeout,
            idle_timeout: args.idle_timeout,
            ..Default::default()
        };
        linnet_control::serve_with(listener, control, options, async move {
            tokio::select! {
                _ = shutdown => {}
                _ = stopped.notified() => {}
            }
        })
        .await;
        stop_admin.notify_one();
        let _ = admin_task.await;
        tracing::info!("linnet control stopped");
        Ok(())
    })
}
