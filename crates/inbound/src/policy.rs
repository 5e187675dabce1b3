//! Each inbound port's server policy: the policy service's (`WatchPort`),
//! or the default until it arrives and without a policy service.
//!
//! A port's policy is looked up when its first connection arrives, and
//! connections wait for the control plane's first answer until
//! `DISCOVERY_INITIAL_WAIT` after that; from then on the default applies
//! until the answer comes (Linkerd's meaning of `INBOUND_DEFAULT_POLICY`),
//! without delaying anyone. Once an
//! answer has come, a later failure of the watch keeps the last answer.
//!
//! Ports are chosen by clients (any port of the pod can be dialled), so
//! the ports kept watched are bounded ([`MAX_PORTS`]); beyond that a
//! port's policy is still looked up for each connection, uncached, and
//! `inbound_policy_ports_full_total` counts it.

use linnet_discovery::{Discovery, ServerPolicy};
use linnet_metrics::prometheus_client::{metrics::counter::Counter, registry::Registry};
use linnet_policy::inbound::{Defaults, ServerPolicy as Policy};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::watch;

/// Inbound ports whose policies are kept watched.
pub const MAX_PORTS: usize = 256;

/// The server policies of this workload's ports; cheap to clone.
#[derive(Clone, Debug)]
pub struct Policies {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    defaults: Defaults,
    discovery: Option<Discovery>,
    initial_wait: Duration,
    ports: Mutex<HashMap<u16, PortPolicy>>,
    full: Counter,
}

/// One port's policy, as it is now and as it changes.
#[derive(Clone, Debug)]
pub struct PortPolicy {
    port: u16,
    /// The policy service's answers; `None` without a policy service.
    rx: Option<watch::Receiver<Option<ServerPolicy>>>,
    /// What applies until the first answer.
    default: Arc<Policy>,
    /// Until when connections wait for the first answer: the first
    /// connection's arrival and the initial wait. After that, one that
    /// has not come (a policy service that is down) delays nobody.
    deadline: tokio::time::Instant,
}

// === impl Policies ===

impl Policies {
    /// The policies of this workload's ports, from `discovery` (when it has
    /// a policy service) or `defaults`.
    pub fn new(
        defaults: Defaults,
        discovery: Option<Discovery>,
        initial_wait: Duration,
        registry: &mut Registry,
    ) -> Self {
        let full = Counter::default();
        registry.register(
            "inbound_policy_ports_full",
            "Total count of connections to a port whose policy was looked up uncached, because the most ports were already watched",
            full.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                defaults,
                discovery,
                initial_wait,
                ports: Mutex::new(HashMap::new()),
                full,
            }),
        }
    }

    /// `port`'s policy. The first connection to a port watched by the
    /// policy service waits up to the initial wait for its first answer.
    pub async fn get(&self, port: u16) -> PortPolicy {
        let mut policy = self.lookup(port);
        let deadline = policy.deadline;
        if let Some(rx) = policy.rx.as_mut() {
            if rx.borrow().is_none() && tokio::time::Instant::now() < deadline {
                let wait = rx.wait_for(|p| p.is_some());
                if tokio::time::timeout_at(deadline, wait).await.is_err() {
                    tracing::info!(
                        port,
                        default = %policy.default_name(),
                        "the policy service has not answered for this port yet: its default policy applies"
                    );
                }
            }
        }
        policy
    }

    fn lookup(&self, port: u16) -> PortPolicy {
        let mut ports = self.inner.ports.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = ports.get(&port) {
            return p.clone();
        }
        let policy = PortPolicy {
            port,
            rx: self
                .inner
                .discovery
                .as_ref()
                .and_then(|d| d.server_policy(port)),
            default: Arc::new(self.inner.defaults.for_port(port)),
            deadline: tokio::time::Instant::now() + self.inner.initial_wait,
        };
        if ports.len() < MAX_PORTS {
            ports.insert(port, policy.clone());
        } else {
            self.inner.full.inc();
        }
        policy
    }
}

// === impl PortPolicy ===

impl PortPolicy {
    /// A port whose policy is `policy`, for good (tests, and ports without
    /// a policy service).
    pub fn fixed(port: u16, policy: Policy) -> Self {
        Self {
            port,
            rx: None,
            default: Arc::new(policy),
            deadline: tokio::time::Instant::now(),
        }
    }

    /// A port whose policy follows `rx`, with `default` until it has one.
    pub fn watched(port: u16, rx: watch::Receiver<Option<ServerPolicy>>, default: Policy) -> Self {
        Self {
            port,
            rx: Some(rx),
            default: Arc::new(default),
            deadline: tokio::time::Instant::now(),
        }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The policy in force now.
    pub fn current(&self) -> Arc<Policy> {
        match &self.rx {
            Some(rx) => match &*rx.borrow() {
                Some(p) => p.clone(),
                None => self.default.clone(),
            },
            None => self.default.clone(),
        }
    }

    /// Resolves when the policy may have changed; never, when it cannot.
    pub async fn changed(&mut self) {
        if let Some(rx) = &mut self.rx {
            if rx.changed().await.is_ok() {
                return;
            }
        }
        std::future::pending().await
    }

    fn default_name(&self) -> Arc<str> {
        crate::labels::name(&self.default.meta)
    }
}
