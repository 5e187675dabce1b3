//! `linnet control` in-process, on a mesh file in a temporary directory
//! that tests rewrite; it can be killed and restarted on the same port.

use linnet_control::{Ca, Control, Mesh, Metrics, Store};
use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};
use tokio::task::JoinHandle;

/// A running (or killed) control plane.
#[derive(Debug)]
pub struct ControlPlane {
    /// Where it serves.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    /// The trust anchors of the issuer it serves with (PEM).
    anchors: String,
    tasks: Vec<JoinHandle<()>>,
}

impl ControlPlane {
    /// Starts on `127.0.0.1:0` serving `yaml` (in plaintext: loopback).
    pub async fn start(yaml: &str) -> Self {
        Self::start_at("127.0.0.1:0".parse().unwrap(), yaml).await
    }

    /// Starts on `addr` serving `yaml`: off loopback its clients must
    /// speak TLS (see [`crate::addr::ExtraAddr`] for such an address).
    pub async fn start_at(addr: SocketAddr, yaml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mesh.yaml"), yaml).unwrap();
        let mut plane = Self {
            addr,
            dir,
            anchors: String::new(),
            tasks: Vec::new(),
        };
        plane.serve().await;
        plane
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("mesh.yaml")
    }

    async fn serve(&mut self) {
        let mesh = Mesh::load(&self.path()).unwrap();
        let ca = Arc::new(Ca::load_or_generate(&mesh.identity).unwrap());
        self.anchors = ca.trust_anchors_pem().to_string();
        let mut registry = prometheus_client_registry();
        let metrics = Metrics::register(&mut registry);
        let store = Store::new(mesh);
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.addr = listener.local_addr().unwrap();
        self.tasks.push(tokio::spawn(store.clone().follow(
            self.path(),
            Duration::from_millis(20),
            metrics.clone(),
        )));
        let control = Control { store, metrics, ca };
        self.tasks.push(tokio::spawn(linnet_control::serve(
            listener,
            control,
            std::future::pending(),
        )));
    }

    /// The trust anchors proxies need, PEM: the generated issuer, or the
    /// anchors the mesh file names.
    pub fn trust_anchors(&self) -> String {
        self.anchors.clone()
    }

    /// The directory holding the mesh file (for token files and such).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Replaces the mesh file.
    pub fn write(&self, yaml: &str) {
        std::fs::write(self.path(), yaml).unwrap();
    }

    /// Stops serving at once: open streams and connections are cut.
    pub fn kill(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }

    /// Serves again on the same address, from the file as it is now.
    pub async fn restart(&mut self) {
        // An aborted task drops its listener only once the runtime gets to
        // it: wait for each to end, so that the address is free again.
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
        self.serve().await;
    }
}

// === meshed proxies ===

impl ControlPlane {
    /// Starts an in-process proxy (no identity) whose outbound
    /// connections all go to `orig_dst`, following this control plane's
    /// Destination and OutboundPolicies answers.
    pub async fn policy_proxy(&self, orig_dst: std::net::SocketAddr) -> crate::proxy::Proxy {
        let addr = self.addr.to_string();
        crate::proxy::Proxy::start(
            linnet_app::OrigDst::Fixed(orig_dst),
            &[
                ("LINNET_DESTINATION_SVC_ADDR", addr.as_str()),
                ("LINNET_POLICY_SVC_ADDR", addr.as_str()),
                ("LINNET_POLICY_WORKLOAD", "client"),
            ],
        )
        .await
    }

    /// Starts an in-process proxy whose identity `id` this control plane
    /// certifies (with `token`), discovering through it, plus `extra`
    /// settings; returns once it is ready (certified).
    pub async fn meshed_proxy(
        &self,
        id: &str,
        token: &str,
        orig_dst: linnet_app::OrigDst,
        extra: &[(&str, &str)],
    ) -> crate::proxy::Proxy {
        let p = self.meshed_proxy_unready(id, token, orig_dst, extra).await;
        crate::eventually("certified", Duration::from_secs(10), || async {
            (crate::metrics::try_http(p.admin, "GET", "/ready", "")
                .await
                .ok()?
                .0
                == 200)
                .then_some(())
        })
        .await;
        p
    }

    /// [`Self::meshed_proxy`], without waiting for the certificate (which
    /// may never come: a wrong token).
    pub async fn meshed_proxy_unready(
        &self,
        id: &str,
        token: &str,
        orig_dst: linnet_app::OrigDst,
        extra: &[(&str, &str)],
    ) -> crate::proxy::Proxy {
        let file_safe: String = id
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let token_file = self.dir().join(format!("token-{file_safe}-{token}"));
        std::fs::write(&token_file, token).unwrap();
        let (addr, anchors, token_file) = (
            self.addr.to_string(),
            self.trust_anchors(),
            token_file.display().to_string(),
        );
        let mut env = extra.to_vec();
        env.extend_from_slice(&[
            ("LINNET_DESTINATION_SVC_ADDR", &addr),
            ("LINNET_IDENTITY_SVC_ADDR", &addr),
            ("LINNET_IDENTITY_LOCAL_NAME", id),
            ("LINNET_IDENTITY_TOKEN_FILE", &token_file),
            ("LINNET_IDENTITY_TRUST_ANCHORS", &anchors),
            ("LINNET_INBOUND_DETECT_TIMEOUT", "1s"),
        ]);
        crate::proxy::Proxy::start(orig_dst, &env).await
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.kill();
    }
}

fn prometheus_client_registry() -> linnet_metrics::prometheus_client::registry::Registry {
    linnet_metrics::registry()
}
