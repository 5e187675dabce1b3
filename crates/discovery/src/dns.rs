//! The DNS fallback: names the control plane does not know are resolved
//! with DNS, re-resolved when their records expire (the TTL clamped to
//! configured bounds).
//!
//! As the system's resolver would (and as explicit mode does without a
//! control plane, [`linnet_transport::resolve`]): `localhost` is the
//! loopback addresses, and a name in the hosts file is answered from it
//! alone, the file read again at each lookup (hickory's own hosts-file
//! support reads it once, at start, and mixes its entries with DNS
//! answers, so it is turned off). Each lookup is counted in
//! `name_resolutions_total`.

use crate::{Endpoint, Resolution, watch::Backoff};
use hickory_resolver::{
    TokioResolver,
    config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts},
    net::{NetError, runtime::TokioRuntimeProvider},
};
use linnet_metrics::resolve::{Outcome, ResolveMetrics, Source};
use linnet_transport::resolve::{LOOPBACK, hosts, is_localhost};
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};
use tokio::sync::watch;

/// A DNS resolver with TTL bounds.
#[derive(Clone)]
pub struct Dns {
    resolver: TokioResolver,
    min_ttl: Duration,
    max_ttl: Duration,
    /// The hosts file, read before DNS is asked (the system's; tests
    /// give their own).
    hosts: PathBuf,
    metrics: ResolveMetrics,
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
    /// given; lookups counted in `metrics`.
    pub fn new(
        servers: &[SocketAddr],
        min_ttl: Duration,
        max_ttl: Duration,
        metrics: ResolveMetrics,
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
        // Read by us at every lookup instead (see the module docs).
        opts.use_hosts_file = ResolveHosts::Never;
        let resolver = builder.build().map_err(std::io::Error::other)?;
        Ok(Self {
            resolver,
            min_ttl,
            max_ttl,
            hosts: PathBuf::from(hosts::PATH),
            metrics,
        })
    }

    /// Reads `path` as the hosts file instead of the system's.
    pub fn with_hosts_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.hosts = path.into();
        self
    }

    /// What `name` resolves to without DNS: the loopback addresses for
    /// `localhost`, or its entries in the hosts file; `None` when DNS is
    /// to be asked.
    async fn local(&self, name: &str) -> Option<(Source, Vec<IpAddr>)> {
        if is_localhost(name) {
            return Some((Source::Localhost, LOOPBACK.to_vec()));
        }
        match hosts::lookup(&self.hosts, name).await {
            Ok(ips) if !ips.is_empty() => Some((Source::Hosts, ips)),
            Ok(_) => None,
            Err(error) => {
                tracing::warn!(path = %self.hosts.display(), %error, "cannot read the hosts file; asking DNS");
                self.metrics.resolved(Source::Hosts, Outcome::Error);
                None
            }
        }
    }

    /// Resolves `name` into `tx` until the task is dropped; returns when
    /// nobody reads `tx`.
    pub(crate) async fn follow(&self, name: String, port: u16, tx: watch::Sender<Resolution>) {
        let mut backoff = Backoff::new();
        let endpoints = |ips: &mut dyn Iterator<Item = IpAddr>| {
            let set: BTreeMap<SocketAddr, Arc<Endpoint>> = ips
                .map(|ip| {
                    let addr = SocketAddr::new(ip, port);
                    (addr, crate::plain(addr))
                })
                .collect();
            Resolution::Endpoints(Arc::new(set))
        };
        loop {
            if let Some((source, ips)) = self.local(&name).await {
                self.metrics.resolved(source, Outcome::Resolved);
                backoff.reset();
                tracing::debug!(%name, addrs = ips.len(), source = source.as_str(), "resolved without DNS");
                tx.send_if_modified(|r| {
                    let new = endpoints(&mut ips.iter().copied());
                    let changed = *r != new;
                    *r = new;
                    changed
                });
                // Looked at again as often as DNS answers can be.
                tokio::time::sleep(self.min_ttl).await;
                if tx.receiver_count() == 0 {
                    return;
                }
                continue;
            }
            let wait = match self
                .resolver
                .lookup_ip(format!("{}.", name.trim_end_matches('.')))
                .await
            {
                Ok(ips) => {
                    self.metrics.resolved(Source::Dns, Outcome::Resolved);
                    backoff.reset();
                    tracing::debug!(%name, addrs = ips.iter().count(), "resolved with DNS");
                    tx.send_replace(endpoints(&mut ips.iter()));
                    let ttl = ips
                        .valid_until()
                        .saturating_duration_since(std::time::Instant::now());
                    ttl.clamp(self.min_ttl, self.max_ttl)
                }
                Err(error) => {
                    tracing::info!(%name, %error, "DNS resolution failed");
                    let not_found = error.is_no_records_found() || error.is_nx_domain();
                    self.metrics.resolved(
                        Source::Dns,
                        match error {
                            _ if not_found => Outcome::NotFound,
                            NetError::Timeout => Outcome::Timeout,
                            _ => Outcome::Error,
                        },
                    );
                    if not_found {
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

#[cfg(test)]
mod tests {
    use super::*;
    use linnet_metrics::prometheus_client::registry::Registry;

    /// A resolver whose DNS server never answers, reading `hosts`.
    fn dns(hosts: &std::path::Path, registry: &mut Registry) -> (Dns, std::net::UdpSocket) {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let metrics = ResolveMetrics::register(registry);
        let ms = Duration::from_millis;
        let dns = Dns::new(&[silent.local_addr().unwrap()], ms(20), ms(20), metrics)
            .unwrap()
            .with_hosts_file(hosts);
        (dns, silent)
    }

    fn addrs(r: &Resolution) -> Vec<SocketAddr> {
        match r {
            Resolution::Endpoints(set) => set.keys().copied().collect(),
            _ => Vec::new(),
        }
    }

    #[tokio::test]
    async fn the_hosts_file_answers_alone_and_is_read_again() {
        let dir = std::env::temp_dir().join(format!("linnet-dns-hosts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hosts");
        std::fs::write(&path, "10.0.0.1 svc.test\n").unwrap();
        let mut registry = Registry::default();
        let (dns, silent) = dns(&path, &mut registry);
        let (tx, mut rx) = watch::channel(Resolution::Pending);
        let task = tokio::spawn(async move { dns.follow("svc.test".into(), 80, tx).await });
        let first = rx
            .wait_for(|r| *r != Resolution::Pending)
            .await
            .unwrap()
            .clone();
        assert_eq!(addrs(&first), vec!["10.0.0.1:80".parse().unwrap()]);
        // An entry added while it runs counts.
        std::fs::write(&path, "10.0.0.1 svc.test\nfd00::2 SVC.test\n").unwrap();
        let both = rx.wait_for(|r| addrs(r).len() == 2).await.unwrap().clone();
        assert!(addrs(&both).contains(&"[fd00::2]:80".parse().unwrap()));
        task.abort();
        // DNS was never asked.
        silent.set_nonblocking(true).unwrap();
        assert!(silent.recv(&mut [0u8; 512]).is_err());
        let text = linnet_metrics::encode(&registry);
        assert!(
            text.contains("name_resolutions_total{source=\"hosts\",outcome=\"resolved\"}"),
            "{text}"
        );
        assert!(!text.contains("source=\"dns\""), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn localhost_is_both_loopback_addresses() {
        let mut registry = Registry::default();
        let (dns, _silent) = dns(std::path::Path::new("/nonexistent/hosts"), &mut registry);
        let (tx, mut rx) = watch::channel(Resolution::Pending);
        let task = tokio::spawn(async move { dns.follow("LocalHost".into(), 8080, tx).await });
        let r = rx
            .wait_for(|r| *r != Resolution::Pending)
            .await
            .unwrap()
            .clone();
        task.abort();
        let mut got = addrs(&r);
        got.sort();
        let want: Vec<SocketAddr> = vec![
            "127.0.0.1:8080".parse().unwrap(),
            "[::1]:8080".parse().unwrap(),
        ];
        assert_eq!(got, want);
        let text = linnet_metrics::encode(&registry);
        assert!(
            text.contains("source=\"localhost\",outcome=\"resolved\""),
            "{text}"
        );
    }
}
