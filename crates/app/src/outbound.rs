//! The outbound side of a connection's path, beside the shared one in
//! [`crate::tcp`]: explicit proxy mode (a connection to the outbound
//! listener itself, routed by each request's authority, through the
//! service's stack when the control plane knows it), the protocol an
//! outbound policy declares (no detection), and its opaque and TLS routes
//! (by SNI) for connections that are not HTTP.

use crate::tcp::{Dest, Forward};
use linnet_core::drain;
use linnet_detect::{PrefixedIo, Protocol};
use linnet_discovery::{Balancer, Endpoint, Logical, PickError, Picked};
use linnet_http::{BoxFuture, Explicit, Resolved, Route, Upstream, client::ConnectConfig};
use linnet_metrics::tcp::CloseReason;
use linnet_tls::{FailClosed, FailReason};
use linnet_transport::resolve::Addrs;
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio::net::TcpStream;

impl Forward {
    /// A connection made to the outbound listener itself (not
    /// redirected): HTTP is routed by each request's authority, as an
    /// explicit proxy; anything else would loop, and is refused.
    pub(crate) async fn explicit(
        self: Arc<Self>,
        mut client: TcpStream,
        client_addr: SocketAddr,
        mut watch: drain::Watch,
    ) {
        let local = client.local_addr().unwrap_or(client_addr);
        let Some(detected) = self
            .detect(&mut client, client_addr, local, None, &mut watch)
            .await
        else {
            return;
        };
        let version = match detected.protocol {
            Protocol::Http1 => linnet_http::Version::Http1,
            Protocol::Http2 => linnet_http::Version::Http2,
            Protocol::Tls { .. } | Protocol::Opaque => {
                tracing::warn!(
                    direction = %self.direction, client = %client_addr,
                    "refusing connection: not redirected and not HTTP (a loop, or a client dialling the proxy port)"
                );
                return self.refuse(&client, client_addr, CloseReason::error("loop", None));
            }
        };
        let client = PrefixedIo::new(detected.buffered.freeze(), client);
        let route = Route::Explicit(Arc::new(ExplicitRoutes {
            fwd: self.clone(),
            local,
        }));
        self.serve_http(client, client_addr, version, local, route, watch)
            .await;
    }
}

/// What an outbound policy's opaque or TLS routes say of a connection.
pub(crate) enum OpaqueRoute {
    /// No routes apply: the policy's default backends.
    Default,
    /// A route forbids it (or it matched no TLS route): reset.
    Refuse(String),
    /// The matched rule's backends.
    Backends(Arc<Vec<(linnet_discovery::BackendSpec, u32)>>),
}

/// The route of a non-HTTP connection: by its SNI (`sni` is `Some` for
/// TLS, with the name if it sent one) for a TLS policy, else the policy's
/// opaque route.
pub(crate) fn opaque_route(logical: &Logical, sni: &Option<Option<String>>) -> OpaqueRoute {
    use linnet_policy::outbound::{
        BackendKind, Distribution, OpaqueRule, Protocol as P, filters, select,
    };
    let Logical::Policy(rx) = logical else {
        return OpaqueRoute::Default;
    };
    let answer = rx.borrow();
    let linnet_discovery::PolicyAnswer::Found(p) = &*answer else {
        return OpaqueRoute::Default;
    };
    let rule: &OpaqueRule = match &p.model.protocol {
        P::Tls(routes) => {
            let name = sni.as_ref().and_then(|s| s.as_deref());
            match select::tls(routes, name) {
                Some((_, rule)) => rule,
                None => {
                    return OpaqueRoute::Refuse(format!(
                        "no TLS route of the policy matches SNI {}",
                        name.unwrap_or("(none)")
                    ));
                }
            }
        }
        P::Opaque(routes) | P::Detect { opaque: routes, .. } => match select::opaque(routes) {
            Some((_, rule)) => rule,
            None => return OpaqueRoute::Default,
        },
        _ => return OpaqueRoute::Default,
    };
    if let Some(why) = filters::opaque_refusal(&rule.filters) {
        return OpaqueRoute::Refuse(why);
    }
    let spec = |b: &linnet_policy::outbound::Backend| match &b.kind {
        BackendKind::Forward(e) => linnet_discovery::BackendSpec::Forward(e.clone()),
        BackendKind::Balancer { path, .. } => linnet_discovery::BackendSpec::Service(path.clone()),
    };
    let backends = match &rule.backends {
        Distribution::Empty => Vec::new(),
        Distribution::FirstAvailable(b) => {
            b.iter().take(1).map(|rb| (spec(&rb.backend), 1)).collect()
        }
        Distribution::RandomAvailable(b) => {
            b.iter().map(|(rb, w)| (spec(&rb.backend), *w)).collect()
        }
    };
    OpaqueRoute::Backends(Arc::new(backends))
}

/// The protocol an outbound policy declares, when it declares one.
pub(crate) fn declared(logical: &Logical) -> Option<linnet_policy::outbound::Declared> {
    let Logical::Policy(rx) = logical else {
        return None;
    };
    match &*rx.borrow() {
        linnet_discovery::PolicyAnswer::Found(p) => p.model.protocol.declared(),
        _ => None,
    }
}

/// Where a request's client is not at hand (logs only).
const UNKNOWN_CLIENT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

/// The refusal for a target the control plane did not decide on in time.
pub(crate) fn undecided(target: SocketAddr, waited: Duration) -> FailClosed {
    FailClosed::new(
        FailReason::DiscoveryTimeout,
        format!(
            "the control plane did not say within {waited:?} whether {target} is meshed; it is not reached in plaintext"
        ),
        None,
    )
}

/// Explicit proxy mode's view of the stack.
#[derive(Debug)]
struct ExplicitRoutes {
    fwd: Arc<Forward>,
    /// The listener the client dialled.
    local: SocketAddr,
}

impl ExplicitRoutes {
    /// What the control plane says of an address, as if a connection had
    /// been redirected to it: the pod it is (and its identity), or a
    /// service's endpoint; a control plane that does not answer in time
    /// fails it.
    pub(crate) async fn by_address(&self, addr: SocketAddr) -> Result<Arc<Endpoint>, String> {
        match self.fwd.destination(addr).await.0 {
            Dest::Addr(e) => Ok(e),
            Dest::Balanced(balancer, _, _) => self.pick(&balancer).await,
            Dest::Undecided(waited) => {
                let e = undecided(addr, waited);
                self.fwd.count_fail_closed(UNKNOWN_CLIENT, addr, &e);
                Err(e.to_string())
            }
        }
    }

    /// An endpoint of `balancer`; a control plane that does not answer in
    /// time is counted as a refusal (the target may be meshed).
    pub(crate) async fn pick(&self, balancer: &Balancer) -> Result<Arc<Endpoint>, String> {
        balancer
            .pick()
            .await
            .map_err(|error| self.pick_failed(error))
    }

    /// Where a name goes when the control plane does not know it: every
    /// address DNS gives it that the control plane does not name as a
    /// meshed pod or service, or, when it does, the addresses that prove
    /// the same identity as the first (each reached only over mTLS proving
    /// it). An address the control plane did not answer about in time is
    /// left out (it may be meshed).
    async fn by_addresses(&self, name: &str, addrs: Vec<SocketAddr>) -> Result<Resolved, String> {
        let addrs = &addrs[..addrs.len().min(linnet_transport::resolve::MAX_ADDRS)];
        let answers = match addrs {
            [one] => vec![self.by_address(*one).await],
            // Asked at once: each may wait for the control plane.
            _ => {
                let mut asking = tokio::task::JoinSet::new();
                for (i, addr) in addrs.iter().copied().enumerate() {
                    let routes = ExplicitRoutes {
                        fwd: self.fwd.clone(),
                        local: self.local,
                    };
                    asking.spawn(async move { (i, routes.by_address(addr).await) });
                }
                let mut answers = asking.join_all().await;
                answers.sort_by_key(|(i, _)| *i);
                answers.into_iter().map(|(_, a)| a).collect()
            }
        };
        let mut found = Vec::with_capacity(answers.len());
        let mut first_error = None;
        for answer in answers {
            match answer {
                Ok(e) => found.push(e),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let Some(identity) = found.first().map(|e| e.identity.clone()) else {
            return Err(first_error.unwrap_or_else(|| format!("{name} has no address")));
        };
        let addrs = found
            .iter()
            .filter(|e| e.identity == identity)
            .map(|e| e.addr);
        let addrs = Addrs::named(name, addrs).ok_or_else(|| format!("{name} has no address"))?;
        Ok(Resolved::Endpoint { addrs, identity })
    }

    /// A pick's failure, said; a control plane that did not answer in
    /// time is counted as a refusal.
    fn pick_failed(&self, error: PickError) -> String {
        if let PickError::Timeout(authority) = &error {
            let e = FailClosed::new(
                FailReason::DiscoveryTimeout,
                format!("the control plane did not answer in time about {authority}"),
                None,
            );
            self.fwd
                .count_fail_closed(UNKNOWN_CLIENT, UNKNOWN_CLIENT, &e);
        }
        error.to_string()
    }
}

impl Explicit for ExplicitRoutes {
    fn upstream(&self, addrs: &Addrs, identity: Option<&str>) -> Arc<Upstream> {
        self.fwd.upstreams.get(addrs.clone(), identity, None, false)
    }

    fn is_self(&self, addr: SocketAddr) -> bool {
        // Any address that reaches this listener: its own, loopback, or
        // the unspecified address (which connects to this host), in any of
        // their IPv4, IPv6 or mapped spellings.
        let ip = addr.ip().to_canonical();
        addr.port() == self.local.port()
            && (ip == self.local.ip().to_canonical() || ip.is_loopback() || ip.is_unspecified())
    }

    fn connect_config(&self) -> ConnectConfig {
        ConnectConfig {
            timeout: self.fwd.config.connect_timeout,
            keepalive: self.fwd.config.connect_keepalive,
        }
    }

    fn resolve<'a>(
        &'a self,
        authority: &'a http::uri::Authority,
        default_port: u16,
        connect: bool,
    ) -> BoxFuture<'a, Result<Resolved, String>> {
        let endpoint = |e: Arc<Endpoint>| Resolved::Endpoint {
            addrs: Addrs::One(e.addr),
            identity: e.identity.clone(),
        };
        let Some(discovery) = self.fwd.discovery.as_ref().filter(|d| d.has_destination()) else {
            return Box::pin(async move {
                linnet_http::proxy::resolve(
                    authority,
                    default_port,
                    self.connect_config().timeout,
                    &self.fwd.resolve_metrics,
                )
                .await
                .map(|addrs| Resolved::Endpoint {
                    addrs,
                    identity: None,
                })
                .map_err(|e| e.to_string())
            });
        };
        let port = authority.port_u16().unwrap_or(default_port);
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            let addr = SocketAddr::new(ip, port);
            return Box::pin(async move {
                // As if a connection had been redirected to it: a service's
                // address goes through its stack.
                if !connect {
                    if let (Dest::Balanced(_, logical, profile), _) =
                        self.fwd.destination(addr).await
                    {
                        if let Some(stacks) = &self.fwd.stacks {
                            return Ok(Resolved::Stack {
                                stack: stacks.get(addr, logical, profile),
                                target: addr,
                            });
                        }
                    }
                }
                self.by_address(addr).await.map(endpoint)
            });
        }
        let name = format!("{}:{port}", host.trim_end_matches('.').to_ascii_lowercase());
        let balancer = discovery.authority(host, port);
        Box::pin(async move {
            // A service the control plane knows: through its stack.
            if let (false, Some(stacks), Some(mut rx)) =
                (connect, &self.fwd.stacks, discovery.endpoints(&name))
            {
                let known = matches!(
                    tokio::time::timeout(
                        discovery.initial_wait(),
                        rx.wait_for(|r| *r != linnet_discovery::Resolution::Pending)
                    )
                    .await
                    .map(|r| r.map(|r| matches!(*r, linnet_discovery::Resolution::Endpoints(_)))),
                    Ok(Ok(true))
                );
                if known {
                    // Its routes (timeouts, retries) apply from the first
                    // request: wait for them as for the endpoints.
                    let profile = discovery.profile_named(&name);
                    if let Some(mut p) = profile.clone() {
                        let _ = tokio::time::timeout(
                            discovery.initial_wait(),
                            p.wait_for(Option::is_some),
                        )
                        .await;
                    }
                    return Ok(Resolved::Stack {
                        stack: stacks.get_named(&name, port, profile),
                        target: SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), port),
                    });
                }
            }
            let e = match balancer.pick_or_resolve().await {
                Ok(Picked::Endpoint(e)) => e,
                // Addresses from DNS: the control plane may still name
                // the pods they are.
                Ok(Picked::Resolved(addrs)) => return self.by_addresses(&name, addrs).await,
                Err(error) => return Err(self.pick_failed(error)),
            };
            if e.identity.is_some() {
                return Ok(endpoint(e));
            }
            // An endpoint named without an identity: the control plane
            // may still name the pod it is.
            self.by_address(e.addr).await.map(endpoint)
        })
    }
}
