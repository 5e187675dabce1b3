//! The outbound HTTP stacks of logical targets, kept while they are used.
//!
//! Building a target's stack (its routes, balancers and their endpoint
//! watches) costs far more than a request, so each is built once and
//! shared by every connection to that target. A stack unused for the
//! discovery idle timeout is dropped (connections holding it keep their
//! clone until they end), so that its watches can close; at most
//! [`MAX_STACKS`] are kept.

use linnet_discovery::{Logical, Profile};
use linnet_http::HttpStack;
use linnet_metrics::route::RouteMetrics;
use linnet_outbound::http::Stacks;
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Mutex,
    time::{Duration, Instant},
};
use tokio::sync::watch;

/// Logical targets whose stacks are kept; the least recently used goes
/// when a new one needs room.
const MAX_STACKS: usize = 1024;

/// One listener's stacks.
pub(crate) struct LogicalStacks {
    stacks: Stacks,
    metrics: RouteMetrics,
    idle: Duration,
    max: usize,
    cache: Mutex<HashMap<Key, (HttpStack, Instant)>>,
}

/// A logical target: an address (redirected, or an IP in explicit mode),
/// or a service's name (explicit mode).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Addr(SocketAddr),
    Name(String),
}

impl std::fmt::Debug for LogicalStacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogicalStacks").finish_non_exhaustive()
    }
}

impl LogicalStacks {
    pub(crate) fn new(stacks: Stacks, metrics: RouteMetrics, idle: Duration) -> Self {
        Self {
            stacks,
            metrics,
            idle,
            max: MAX_STACKS,
            cache: Mutex::default(),
        }
    }

    /// The stack of the logical target `addr`.
    pub(crate) fn get(
        &self,
        addr: SocketAddr,
        logical: Logical,
        profile: Option<watch::Receiver<Option<Profile>>>,
    ) -> HttpStack {
        self.get_or_build(Key::Addr(addr), || match logical {
            Logical::Policy(rx) => self.stacks.policy(addr, rx),
            Logical::Service { authority } => self.stacks.profile(addr, authority, profile),
        })
    }

    /// The stack of the service `name` (`host:port`), named in explicit
    /// mode: its profile's routes, one balancer over its endpoints.
    pub(crate) fn get_named(
        &self,
        name: &str,
        port: u16,
        profile: Option<watch::Receiver<Option<Profile>>>,
    ) -> HttpStack {
        self.get_or_build(Key::Name(name.to_string()), || {
            self.stacks.named(name.to_string(), port, profile)
        })
    }

    fn get_or_build(&self, key: Key, build: impl FnOnce() -> HttpStack) -> HttpStack {
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((stack, used)) = cache.get_mut(&key) {
            *used = now;
            return stack.clone();
        }
        let idle = self.idle;
        cache.retain(|_, (_, used)| now.duration_since(*used) < idle);
        let mut evicted = false;
        if cache.len() >= self.max {
            if let Some(oldest) = cache
                .iter()
                .min_by_key(|(_, (_, u))| *u)
                .map(|(k, _)| k.clone())
            {
                cache.remove(&oldest);
                evicted = true;
            }
        }
        let stack = build();
        cache.insert(key, (stack.clone(), now));
        self.metrics.stacks(cache.len(), evicted);
        stack
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stacks(max: usize, metrics: RouteMetrics) -> LogicalStacks {
        let new_endpoint: linnet_outbound::http::NewEndpoint =
            std::sync::Arc::new(|_| unreachable!("no request is sent"));
        let mut s = LogicalStacks::new(
            Stacks::new(None, new_endpoint, metrics.clone()),
            metrics,
            Duration::from_secs(60),
        );
        s.max = max;
        s
    }

    #[tokio::test]
    async fn the_bound_holds_and_evictions_are_counted() {
        let mut registry = linnet_metrics::prometheus_client::registry::Registry::default();
        let metrics = RouteMetrics::register(&mut registry);
        let s = stacks(4, metrics);
        for i in 1..=10 {
            s.get_named(&format!("svc-{i}.test:80"), 80, None);
        }
        assert_eq!(s.cache.lock().unwrap().len(), 4);
        let text = linnet_metrics::encode(&registry);
        assert!(text.contains("outbound_http_logical_stacks 4"), "{text}");
        assert!(
            text.contains("outbound_http_logical_stacks_evicted_total 6"),
            "{text}"
        );
        // A kept one is shared, not rebuilt; the most recent ones stay.
        let before = s.cache.lock().unwrap().len();
        s.get_named("svc-10.test:80", 80, None);
        assert_eq!(s.cache.lock().unwrap().len(), before);
        assert!(
            s.cache
                .lock()
                .unwrap()
                .contains_key(&Key::Name("svc-10.test:80".into()))
        );
    }
}
