//! The whole proxy, in-process.

use linnet_app::{Drained, Listeners, OrigDst, StartError};
use linnet_config::Config;
use std::net::SocketAddr;
use tokio::{sync::oneshot, task::JoinHandle};

/// A running in-process proxy.
#[derive(Debug)]
pub struct Proxy {
    /// The outbound listener.
    pub outbound: SocketAddr,
    /// The inbound listener.
    pub inbound: SocketAddr,
    /// The admin server.
    pub admin: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<Drained, StartError>>,
}

impl Proxy {
    /// Starts a proxy on `127.0.0.1:0` with default settings plus `env`
    /// (`LINNET_*` pairs), forwarding by `orig_dst`.
    pub async fn start(orig_dst: OrigDst, env: &[(&str, &str)]) -> Self {
        // The first setting of a name wins: the caller's come first.
        let mut vars: Vec<(&str, &str)> = env.to_vec();
        vars.extend_from_slice(&[
            ("LINNET_OUTBOUND_LISTEN_ADDR", "127.0.0.1:0"),
            ("LINNET_INBOUND_LISTEN_ADDR", "127.0.0.1:0"),
            ("LINNET_ADMIN_LISTEN_ADDR", "127.0.0.1:0"),
        ]);
        let config = Config::from_env(vars.as_slice()).expect("valid test configuration");
        let listeners = Listeners::bind(&config).expect("bind test listeners");
        let outbound = listeners.outbound.local_addr().unwrap();
        let inbound = listeners.inbound.local_addr().unwrap();
        let admin = listeners.admin.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(linnet_app::run(
            config,
            listeners,
            orig_dst,
            Default::default(),
            async move {
                let _ = rx.await;
            },
        ));
        Self {
            outbound,
            inbound,
            admin,
            shutdown: Some(tx),
            task,
        }
    }

    /// Starts shutting down (like SIGTERM).
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits for the proxy to finish; re-raises a panic of its task, and
    /// panics if it could not start.
    pub async fn join(self) -> Drained {
        self.try_join().await.expect("the proxy started")
    }

    /// Waits for the proxy to finish, or for its failure to start.
    pub async fn try_join(self) -> Result<Drained, StartError> {
        match self.task.await {
            Ok(d) => d,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// Scrapes the proxy's `/metrics`.
    pub async fn metrics(&self) -> crate::metrics::Scrape {
        crate::metrics::scrape(self.admin).await
    }
}
