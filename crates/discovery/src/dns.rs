//! The DNS fallback: names the control plane does not know are resolved
//! with DNS, re-resolved when their records expire (the TTL clamped to
//! configured bounds).

use crate::{Endpoint, Resolution, watch::Backoff};
use hickory_resolver::{
    TokioResolver,
    config::{NameServerConfig, ResolverConfig, ResolverOpts},
    net::runtime::TokioRuntimeProvider,
};
use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};
use tokio::sync::watch;

/// A DNS resolver with TTL bounds.
#[derive(Clone)]
pub struct Dns {
    resolver: TokioResolver,
    min_ttl: Duration,
    max_ttl: Duration,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dns")
            .field("min_ttl", &self.min_ttl)
            .field("max_ttl", &self.max_ttl)
            .finish_non_exhaustive()
    }
}

impl Dns {
    /// The system's resolvers (`/etc/resolv.conf`), or `servers` when
    /// given.
    pub fn new(
        servers: &[SocketAddr],
        min_ttl: Duration,
        max_ttl: Duration,
    ) -> std::io::Result<Self> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = if servers.is_empty() {
            TokioResolver::builder(provider).map_err(std::io::Error::other)?
        } else {
            let mut config = ResolverConfig::default();
            for s in servers {
                let mut ns = NameServerConfig::udp_and_tcp(s.ip());
                for c in &mut ns.connections {
                    c.port = s.port();
                }
                config.add_name_server(ns);
            }
            TokioResolver::builder_with_config(config, provider)
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        // We cache answers ourselves, for as long as our bounds say.
        opts.cache_size = 0;
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 2;
        let resolver = builder.build().map_err(std::io::Error::other)?;
        Ok(Self {
            resolver,
            min_ttl,
            max_ttl,
        })
    }

    /// Resolves `name` into `tx` until the task is dropped; returns when
    /// nobody reads `tx`.
    pub(crate) async fn follow(&self, name: String, port: u16, tx: watch::Sender<Resolution>) {
        let mut backoff = Backoff::new();
        loop {
            let wait = match self
                .resolver
                .lookup_ip(format!("{}.", name.trim_end_matches('.')))
                .await
            {
                Ok(ips) => {
                    backoff.reset();
                    let set: BTreeMap<SocketAddr, Arc<Endpoint>> = ips
                        .iter()
                        .map(|ip| {
                            let addr = SocketAddr::new(ip, port);
                            (addr, crate::plain(addr))
                        })
                        .collect();
                    tracing::debug!(%name, addrs = set.len(), "resolved with DNS");
                    tx.send_replace(Resolution::Endpoints(Arc::new(set)));
                    let ttl = ips
                        .valid_until()
                        .saturating_duration_since(std::time::Instant::now());
                    ttl.clamp(self.min_ttl, self.max_ttl)
                }
                Err(error) => {
                    tracing::info!(%name, %error, "DNS resolution failed");
                    if error.is_no_records_found() || error.is_nx_domain() {
                        tx.send_replace(Resolution::NotFound);
                        self.min_ttl.max(backoff.next())
                    } else {
                        // A transient failure keeps the last answer.
                        tx.send_if_modified(|r| {
                            if matches!(r, Resolution::Pending) {
                                *r = Resolution::NotFound;
                                true
                            } else {
                                false
                            }
                        });
                        backoff.next()
                    }
                }
            };
            tokio::time::sleep(wait).await;
            if tx.receiver_count() == 0 {
                return;
            }
        }
    }
}
