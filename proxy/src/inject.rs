//! `linnet inject`: reads Kubernetes YAML, adds the Linnet sidecar to its
//! workloads (`linnet_inject`), and writes it to stdout; with `--serve`,
//! the same injection as a mutating admission webhook over HTTPS
//! (`linnet_inject::webhook`).

use crate::EXIT_CONFIG;
use anyhow::Context as _;
use clap::ArgAction;
use linnet_inject::{Options, TrustAnchors};
use std::{
    io::Read as _, net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc, time::Duration,
};

/// `linnet inject` arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct InjectArgs {
    /// The manifest to read (multi-document YAML); `-` reads stdin.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE",
        default_value = "-"
    )]
    file: PathBuf,
    /// Image of the proxy container.
    #[arg(long, default_value_t = Options::default_image())]
    image: String,
    /// Image of the init container (it needs iptables: the Dockerfile's
    /// `init` target).
    #[arg(long, default_value_t = Options::default_init_image())]
    init_image: String,
    /// Run the proxy as a native sidecar (Kubernetes ≥ 1.28);
    /// `--native-sidecar=false` makes it the first container instead, with
    /// a postStart hook that waits for it to be ready.
    #[arg(
        long,
        value_name = "BOOL",
        action = ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_value_t = true,
        default_missing_value = "true"
    )]
    native_sidecar: bool,
    /// Namespace of the control plane, part of identity names.
    #[arg(long, default_value = "linkerd")]
    control_plane_namespace: String,
    /// Trust domain of identities.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Destination service address [default: linkerd-dst-headless.NS.svc.cluster.local.:8086].
    #[arg(long, value_name = "HOST:PORT")]
    destination_addr: Option<String>,
    /// Destination service identity [default: linkerd-destination.NS.serviceaccount.identity.NS.TRUST_DOMAIN].
    #[arg(long, value_name = "NAME")]
    destination_name: Option<String>,
    /// Policy service address [default: linkerd-policy.NS.svc.cluster.local.:8090].
    #[arg(long, value_name = "HOST:PORT")]
    policy_addr: Option<String>,
    /// Policy service identity [default: that of the destination service].
    #[arg(long, value_name = "NAME")]
    policy_name: Option<String>,
    /// Identity service address [default: linkerd-identity-headless.NS.svc.cluster.local.:8080].
    #[arg(long, value_name = "HOST:PORT")]
    identity_addr: Option<String>,
    /// Identity service identity [default: linkerd-identity.NS.serviceaccount.identity.NS.TRUST_DOMAIN].
    #[arg(long, value_name = "NAME")]
    identity_name: Option<String>,
    /// ConfigMap (in the workload's namespace) holding the trust anchors.
    #[arg(long, default_value = "linkerd-identity-trust-roots")]
    trust_anchors_configmap: String,
    /// Key of that ConfigMap holding the PEM bundle.
    #[arg(long, default_value = "ca-bundle.crt")]
    trust_anchors_key: String,
    /// Write the trust anchors (PEM) from this file into the pod specs
    /// instead of referring to a ConfigMap.
    #[arg(long, value_name = "FILE")]
    trust_anchors_file: Option<PathBuf>,
    /// Default log filter of the proxy.
    #[arg(long, default_value = "warn,linnet=info")]
    proxy_log_level: String,
    /// Default CPU request of the proxy (empty: none).
    #[arg(long, default_value = "100m")]
    proxy_cpu_request: String,
    /// Default CPU limit of the proxy (empty: none).
    #[arg(long, default_value = "1")]
    proxy_cpu_limit: String,
    /// Default memory request of the proxy (empty: none).
    #[arg(long, default_value = "20Mi")]
    proxy_memory_request: String,
    /// Default memory limit of the proxy (empty: none).
    #[arg(long, default_value = "250Mi")]
    proxy_memory_limit: String,
    /// Serve a mutating admission webhook over HTTPS (POST /inject)
    /// instead of reading a manifest.
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    serve: bool,
    /// Address the webhook listens on.
    #[arg(long, default_value = "0.0.0.0:8443", requires = "serve")]
    listen: SocketAddr,
    /// The webhook's certificate chain (PEM).
    #[arg(long, value_name = "FILE", requires = "serve")]
    tls_cert: Option<PathBuf>,
    /// The webhook's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "serve")]
    tls_key: Option<PathBuf>,
    /// Deny a pod the webhook cannot inject instead of allowing it with a
    /// warning.
    #[arg(long, requires = "serve")]
    fail_closed: bool,
    /// Inject every pod the API server sends, not only those annotated
    /// linnet.io/inject: enabled (the webhook configuration's
    /// namespaceSelector then chooses the namespaces).
    #[arg(long, requires = "serve")]
    inject_all: bool,
    /// Connections the webhook serves at once; new ones beyond it are
    /// closed at once.
    #[arg(long, default_value_t = 1000, requires = "serve")]
    max_connections: usize,
    /// Where the webhook serves /metrics, /ready and /live (plain HTTP).
    #[arg(long, default_value = "0.0.0.0:9995", requires = "serve")]
    admin_listen: SocketAddr,
    /// Read each pod's namespace from the Kubernetes API server for the
    /// annotations it lends its pods (linkerd.io/inject, config.*): `auto`
    /// does when running in a pod (KUBERNETES_SERVICE_HOST is set).
    #[arg(long, value_enum, default_value_t = NamespaceAnnotations::Auto, requires = "serve")]
    namespace_annotations: NamespaceAnnotations,
    /// How long reading a namespace may take before the pod is decided on
    /// its own annotations.
    #[arg(long, default_value = "2s", value_parser = linnet_config::parse::duration, requires = "serve")]
    api_server_timeout: Duration,
    /// How long a namespace's annotations are used before it is read again.
    #[arg(long, default_value = "30s", value_parser = linnet_config::parse::duration, requires = "serve")]
    namespace_cache_ttl: Duration,
}

/// Whether the webhook reads pods' namespaces.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum NamespaceAnnotations {
    /// When running in a pod.
    Auto,
    /// Always (failing at start outside a pod).
    On,
    /// Never: pods are decided on their own annotations.
    Off,
}

pub(crate) fn main(args: InjectArgs) -> ExitCode {
    let options = match options(&args) {
        Ok(o) => o,
        Err(error) => {
            eprintln!("linnet inject: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    if args.serve {
        return match serve(&args, options) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("linnet inject: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    let input = match read(&args.file) {
        Ok(text) => text,
        Err(error) => {
            eprintln!("linnet inject: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let output = linnet_inject::parse(&input)
        .and_then(|objects| linnet_inject::inject_with_report(objects, &options))
        .and_then(|(objects, report)| Ok((linnet_inject::to_yaml(&objects)?, report)));
    match output {
        Ok((text, report)) => {
            print!("{text}");
            // Like `linkerd inject`: what happened to each, on stderr, so
            // stdout stays a manifest.
            for outcome in report {
                eprintln!("{}: {}", outcome.workload, outcome.verdict);
            }
            ExitCode::SUCCESS
        }
        Err(error @ linnet_inject::Error::Write(_)) => {
            eprintln!("linnet inject: {error}");
            ExitCode::FAILURE
        }
        Err(error) => {
            // The input is at fault (EX_USAGE, like a bad setting).
            eprintln!("linnet inject: {}: {error}", args.file.display());
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// Runs the webhook until SIGTERM or SIGINT (or `POST /shutdown` on its
/// admin port, from loopback).
fn serve(args: &InjectArgs, options: Options) -> anyhow::Result<()> {
    use crate::trace;
    use linnet_config::{LogConfig, LogFormat};
    use linnet_inject::webhook;
    let log = trace::init(&LogConfig {
        filter: "info".to_string(),
        format: LogFormat::Plain,
    })
    .context("cannot set up logging")?;
    // clap requires both with --serve.
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        anyhow::bail!("--serve needs --tls-cert and --tls-key");
    };
    let read = |path: &PathBuf| {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let tls = webhook::tls_config(&read(cert)?, &read(key)?)?;
    let mut options = webhook::WebhookOptions::new(options);
    options.fail_closed = args.fail_closed;
    options.inject_all = args.inject_all;
    options.max_connections = args.max_connections.max(1);
    let env = |name: &str| std::env::var(name).ok();
    options.namespaces = match args.namespace_annotations {
        NamespaceAnnotations::Off => None,
        NamespaceAnnotations::Auto if env("KUBERNETES_SERVICE_HOST").is_none() => None,
        NamespaceAnnotations::Auto | NamespaceAnnotations::On => {
            let api = webhook::ApiServer::in_cluster(env)
                .map_err(anyhow::Error::msg)
                .context("--namespace-annotations")?;
            let lookup = webhook::LookupOptions {
                timeout: args.api_server_timeout,
                cache_ttl: args.namespace_cache_ttl,
                ..Default::default()
            };
            Some(webhook::NamespaceLookup::new(api, lookup))
        }
    };
    let mut registry = linnet_metrics::registry();
    options.metrics = webhook::Metrics::register(&mut registry);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async move {
        let shutdown = crate::signals().context("cannot install signal handlers")?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let admin_listener = tokio::net::TcpListener::bind(args.admin_listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.admin_listen))?;
        let listen = listener.local_addr().unwrap_or(args.listen);
        let admin_addr = admin_listener.local_addr().unwrap_or(args.admin_listen);
        // Set once to stop both servers (a `watch`, so that neither misses it).
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let stop = Arc::new(stop);
        let readiness = linnet_admin::Readiness::default();
        let admin = Arc::new(linnet_admin::Admin {
            registry: Arc::new(registry),
            config_json: serde_json::json!({
                "listen": listen.to_string(),
                "fail_closed": options.fail_closed,
                "inject_all": options.inject_all,
                "max_connections": options.max_connections,
                "namespace_annotations": options.namespaces.is_some(),
            })
            .to_string()
            .into(),
            readiness: readiness.clone(),
            log_level: Some(log),
            shutdown: {
                let stop = stop.clone();
                Arc::new(move || {
                    stop.send_replace(true);
                })
            },
        });
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            // An error: the sender is gone, so nothing will stop it but this.
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let admin_task = tokio::spawn(linnet_admin::serve(
            admin_listener,
            admin,
            stopped(stopping.clone()),
        ));
        readiness.set(true);
        tracing::info!(
            %listen, admin = %admin_addr, fail_closed = options.fail_closed,
            inject_all = options.inject_all, max_connections = options.max_connections,
            namespace_annotations = options.namespaces.is_some(),
            "serving the injection webhook (POST /inject)"
        );
        let requested = stopped(stopping);
        webhook::serve(listener, tls, options, async move {
            tokio::select! {
                _ = shutdown => {}
                _ = requested => {}
            }
        })
        .await;
        stop.send_replace(true);
        let _ = admin_task.await;
        Ok(())
    })
}

fn read(file: &PathBuf) -> anyhow::Result<String> {
    if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read stdin")?;
        Ok(text)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))
    }
}

fn options(args: &InjectArgs) -> anyhow::Result<Options> {
    let mut o = Options::new(
        args.image.clone(),
        args.init_image.clone(),
        &args.control_plane_namespace,
        &args.trust_domain,
    );
    o.native_sidecar = args.native_sidecar;
    let set = |field: &mut String, value: &Option<String>| {
        if let Some(v) = value {
            field.clone_from(v);
        }
    };
    set(&mut o.destination.addr, &args.destination_addr);
    set(&mut o.destination.name, &args.destination_name);
    set(&mut o.policy.addr, &args.policy_addr);
    set(&mut o.policy.name, &args.policy_name);
    set(&mut o.identity.addr, &args.identity_addr);
    set(&mut o.identity.name, &args.identity_name);
    o.trust_anchors = match &args.trust_anchors_file {
        Some(path) => TrustAnchors::Pem(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
        ),
        None => TrustAnchors::ConfigMap {
            name: args.trust_anchors_configmap.clone(),
            key: args.trust_anchors_key.clone(),
        },
    };
    o.log_level.clone_from(&args.proxy_log_level);
    let some = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_string());
    o.resources.cpu_request = some(&args.proxy_cpu_request);
    o.resources.cpu_limit = some(&args.proxy_cpu_limit);
    o.resources.memory_request = some(&args.proxy_memory_request);
    o.resources.memory_limit = some(&args.proxy_memory_limit);
    Ok(o)
}
