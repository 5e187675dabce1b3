//! `linnet`: the sidecar proxy and its tools, one binary.
//!
//! - `linnet proxy`: the sidecar (the container's entrypoint), configured
//!   from `LINNET_*` / `LINKERD2_PROXY_*` environment variables;
//! - `linnet init`: programs the pod's iptables to send its TCP through the
//!   proxy;
//! - `linnet control`: the embedded control plane, serving Linkerd's proxy
//!   API from a mesh file;
//! - `linnet demo`: a mesh on loopback in one command;
//! - `linnet inject`: adds the sidecar to Kubernetes workloads (YAML in,
//!   YAML out), and `linnet wait-ready`, the hook it gives the proxy when
//!   it is not a native sidecar.
//!
//! This file only parses the command line, sets up logging and the
//! runtime, and maps failures to exit codes; the proxy itself is
//! `linnet_app::run`.

#[cfg(target_os = "linux")]
mod alloc;
mod control;
mod demo;
mod inject;
mod trace;
mod wait_ready;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use linnet_config::{Config, ProcessEnv};
use std::process::ExitCode;

/// Exit code for a bad configuration value (`EX_USAGE`).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "linnet",
    version,
    about = "A small, fast service-mesh sidecar proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar proxy (configured from LINNET_* environment variables).
    Proxy,
    /// Program the pod's iptables so its TCP traffic goes through the proxy.
    Init(linnet_init::InitArgs),
    /// Serve Linkerd's proxy API (destinations, identity, policies) from a mesh file.
    Control(control::ControlArgs),
    /// Run a small mesh on loopback: a control plane, two services with sidecars, a client sidecar.
    Demo(demo::DemoArgs),
    /// Add the Linnet sidecar to the workloads of Kubernetes YAML (stdin or -f FILE) and print it.
    Inject(Box<inject::InjectArgs>),
    /// Wait until the local proxy reports ready (the injected postStart hook).
    WaitReady(wait_ready::WaitReadyArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Proxy => proxy(),
        Command::Control(args) => control::main(args),
        Command::Demo(args) => demo::main(args),
        Command::Inject(args) => inject::main(*args),
        Command::WaitReady(args) => wait_ready::main(args),
        Command::Init(args) => match linnet_init::run(&args) {
            Ok(outcome) => {
                eprintln!("linnet init: {outcome}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("linnet init: {}", linnet_core::display_chain(&error));
                ExitCode::FAILURE
            }
        },
    }
}

fn proxy() -> ExitCode {
    let config = match Config::from_env(&ProcessEnv) {
        Ok(c) => c,
        Err(error) => {
            eprintln!("linnet proxy: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match run_proxy(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.downcast_ref::<linnet_app::StartError>().is_some() => {
            // The settings name something that cannot be set up.
            eprintln!("linnet proxy: {error:#}");
            tracing::error!(error = format!("{error:#}"), "proxy cannot start");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(error) => {
            eprintln!("linnet proxy: {error:#}");
            tracing::error!(error = format!("{error:#}"), "proxy failed");
            ExitCode::FAILURE
        }
    }
}

fn run_proxy(config: Config) -> anyhow::Result<()> {
    let log = trace::init(&config.log).context("cannot set up logging")?;
    tracing::info!(version = env!("CARGO_PKG_VERSION"), config = %config.to_json(), "starting linnet proxy");
    for name in Config::unknown_variables(&ProcessEnv) {
        tracing::warn!(variable = %name, "ignoring unknown setting (misspelt?)");
    }
    #[cfg(target_os = "linux")]
    alloc::return_freed_memory();
    let runtime = if config.cores == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.cores)
            .thread_name("linnet")
            .enable_all()
            .build()
    }
    .context("cannot start the runtime")?;
    runtime.block_on(async move {
        // Handlers first: from the moment the listeners are bound and the
        // proxy reports ready, a SIGTERM must mean a graceful shutdown.
        let shutdown = signals().context("cannot install signal handlers")?;
        let listeners = linnet_app::Listeners::bind(&config)?;
        let options = linnet_app::Options {
            log_level: Some(log),
        };
        linnet_app::run(
            config,
            listeners,
            linnet_app::OrigDst::Socket,
            options,
            shutdown,
        )
        .await?;
        Ok(())
    })
}

/// Installs the SIGTERM and SIGINT handlers; the future resolves on the
/// first of them.
pub(crate) fn signals() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "received signal");
    })
}
