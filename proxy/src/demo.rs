//! `linnet demo`: a mesh on loopback in one command. It starts `linnet
//! control`, two sample HTTP services (`web` and `api`) each behind a
//! sidecar, and a client sidecar; checks that a request crosses the mesh
//! over mTLS; and prints what to curl and where the metrics are.

use crate::signals;
use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use linnet_app::{Listeners, OrigDst};
use linnet_control::{Ca, Control, Mesh, Metrics, Store};
use std::{
    collections::BTreeMap, convert::Infallible, net::SocketAddr, path::Path, process::ExitCode,
    sync::Arc, time::Duration,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// `linnet demo` arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct DemoArgs {
    /// Check that the mesh works, print the result, and exit (instead of
    /// running until interrupted).
    #[arg(long)]
    check: bool,
}

const DOMAIN: &str = "demo.serviceaccount.identity.linkerd.cluster.local";

fn id(who: &str) -> String {
    format!("{who}.{DOMAIN}")
}

pub(crate) fn main(args: DemoArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(error) => {
            eprintln!("linnet demo: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("linnet demo: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// A sample service: says who it is and who the mesh says is asking.
async fn sample_service(name: &'static str) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: http::Request<hyper::body::Incoming>| async move {
                        let client = req
                            .headers()
                            .get("l5d-client-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("unknown (no l5d-client-id: not over the mesh's mTLS)");
                        let body = format!("hello from {name}; the mesh says you are {client}\n");
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body))))
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn bind() -> anyhow::Result<Listeners> {
    Ok(Listeners {
        inbound: TcpListener::bind("127.0.0.1:0").await?,
        outbound: TcpListener::bind("127.0.0.1:0").await?,
        admin: TcpListener::bind("127.0.0.1:0").await?,
    })
}

/// Starts a sidecar on `listeners` as `who`, with the control plane at
/// `control`; its inbound side forwards to `app`, when it fronts one.
fn sidecar(
    dir: &Path,
    who: &str,
    control: SocketAddr,
    anchors: &str,
    listeners: Listeners,
    app: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let token = dir.join(format!("token-{who}"));
    let mut env: BTreeMap<String, String> = [
        (
            "LINNET_OUTBOUND_LISTEN_ADDR",
            listeners.outbound.local_addr()?.to_string(),
        ),
        (
            "LINNET_INBOUND_LISTEN_ADDR",
            listeners.inbound.local_addr()?.to_string(),
        ),
        (
            "LINNET_ADMIN_LISTEN_ADDR",
            listeners.admin.local_addr()?.to_string(),
        ),
        ("LINNET_DESTINATION_SVC_ADDR", control.to_string()),
        ("LINNET_IDENTITY_SVC_ADDR", control.to_string()),
        ("LINNET_IDENTITY_LOCAL_NAME", id(who)),
        ("LINNET_IDENTITY_TOKEN_FILE", token.display().to_string()),
        ("LINNET_IDENTITY_TRUST_ANCHORS", anchors.to_string()),
        ("LINNET_SHUTDOWN_GRACE_PERIOD", "1s".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if let Some(app) = app {
        env.insert("LINNET_INBOUND_ORIG_DST_ADDR".into(), app.to_string());
    }
    let config = linnet_config::Config::from_env(&env).context("sidecar configuration")?;
    // The client sidecar is used as an explicit proxy: its connections are
    // not redirected.
    let orig_dst = OrigDst::from_fn(|s| s.local_addr());
    tokio::spawn(async move {
        let run = linnet_app::run(
            config,
            listeners,
            orig_dst,
            Default::default(),
            std::future::pending(),
        );
        if let Err(error) = run.await {
            tracing::error!(%error, "a demo sidecar could not start");
        }
    });
    Ok(())
}

/// GET `url` through the explicit proxy at `proxy`; the response body.
async fn get_via(proxy: SocketAddr, host: &str) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(proxy).await?;
    s.write_all(
        format!("GET http://{host}/ HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut rsp = String::new();
    s.read_to_string(&mut rsp).await?;
    let (head, body) = rsp.split_once("\r\n\r\n").unwrap_or((&rsp, ""));
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{}", head.lines().next().unwrap_or("no response"));
    }
    Ok(body.to_string())
}

async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("linnet-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (web_app, api_app) = (sample_service("web").await?, sample_service("api").await?);
    let (web, api, client) = (bind().await?, bind().await?, bind().await?);
    let (web_in, api_in) = (web.inbound.local_addr()?, api.inbound.local_addr()?);
    let (client_out, client_admin) = (client.outbound.local_addr()?, client.admin.local_addr()?);
    let web_admin = web.admin.local_addr()?;

    // The mesh file: identities with their tokens, and the two services,
    // each served by its sidecar's inbound side.
    let mut yaml = String::from("identity:\n  certificate_lifetime: 1h\n  tokens:\n");
    for who in ["web", "api", "client"] {
        std::fs::write(dir.join(format!("token-{who}")), format!("{who}-token"))?;
        yaml.push_str(&format!("    {}: {who}-token\n", id(who)));
    }
    yaml.push_str("services:\n");
    for (name, inbound) in [("web", web_in), ("api", api_in)] {
        yaml.push_str(&format!(
            "  {name}.demo.svc.cluster.local:80:\n    labels: {{service: {name}}}\n    endpoints:\n      - addr: \"{inbound}\"\n        identity: {}\n",
            id(name)
        ));
    }
    let mesh_file = dir.join("mesh.yaml");
    std::fs::write(&mesh_file, &yaml)?;
    let mesh = Mesh::load(&mesh_file)?;
    let ca = Ca::load_or_generate(&mesh.identity)?;
    let anchors = ca.trust_anchors_pem().to_string();
    let control_listener = TcpListener::bind("127.0.0.1:0").await?;
    let control = control_listener.local_addr()?;
    let mut registry = linnet_metrics::registry();
    let metrics = Metrics::register(&mut registry);
    let store = Store::new(mesh);
    tokio::spawn(
        store
            .clone()
            .follow(mesh_file.clone(), Duration::from_secs(1), metrics.clone()),
    );
    tokio::spawn(linnet_control::serve(
        control_listener,
        Control {
            store,
            metrics,
            ca: Arc::new(ca),
        },
        std::future::pending(),
    ));

    sidecar(&dir, "web", control, &anchors, web, Some(web_app))?;
    sidecar(&dir, "api", control, &anchors, api, Some(api_app))?;
    sidecar(&dir, "client", control, &anchors, client, None)?;

    // The first request waits for identities and discovery.
    let mut answer = Err(anyhow::anyhow!("no answer"));
    for _ in 0..100 {
        answer = get_via(client_out, "web.demo.svc.cluster.local").await;
        if answer.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answer = answer.context("the demo mesh did not answer")?;
    let meshed = answer.contains(&id("client"));
    println!(
        "Linnet demo: a control plane, two services with a sidecar each, and a client sidecar, on loopback."
    );
    println!();
    println!(
        "  control plane (mesh file {}):  {control}",
        mesh_file.display()
    );
    println!("  web: app {web_app}, its sidecar's inbound {web_in}");
    println!("  api: app {api_app}, its sidecar's inbound {api_in}");
    println!("  client sidecar: outbound {client_out} (use it as an HTTP proxy)");
    println!();
    println!("A request from the client sidecar to web, over mTLS:");
    println!("  $ curl -x http://{client_out} http://web.demo.svc.cluster.local/");
    println!("  {}", answer.trim_end());
    println!();
    println!("Try:");
    println!("  curl -x http://{client_out} http://api.demo.svc.cluster.local/");
    println!("  curl -s http://{client_admin}/metrics | grep 'server_id='");
    println!("  curl -s http://{web_admin}/metrics | grep 'client_id='");
    println!();
    if !meshed {
        bail!("the answer does not carry the client's identity: mTLS is not in effect");
    }
    if args.check {
        let api = get_via(client_out, "api.demo.svc.cluster.local").await?;
        println!("check: {}", api.trim_end());
        let _ = std::fs::remove_dir_all(&dir);
        return Ok(());
    }
    println!("Running until Ctrl-C.");
    signals().context("cannot install signal handlers")?.await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
