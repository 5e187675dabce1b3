//! Connection authorization: who the client is ([`Client`]), whether the
//! port's policy admits its connection at all, and, for a connection that
//! is not HTTP (opaque TCP, TLS passed through, the transport port's
//! opaque streams), whether the server's authorizations admit it — before
//! any byte reaches the application — and for as long as it lasts.
//!
//! HTTP connections are admitted here unless the policy admits no one at
//! all; their requests are authorized one by one, per route
//! ([`crate::authorize`]).

use crate::{labels, policy::PortPolicy, route::Matched};
use linnet_metrics::{
    authz::{AuthzConn, AuthzMetrics},
    bounded::Series,
    prometheus_client::metrics::counter::Counter,
};
use linnet_policy::inbound::{self as model, ServerPolicy, Verdict};
use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
};

/// A client, as authorizations see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    /// Its address.
    pub addr: IpAddr,
    /// What its TLS proved.
    pub tls: ClientTls,
}

/// What a client's TLS proved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientTls {
    /// No TLS that this proxy terminated (plaintext, or TLS passed
    /// through to the application).
    None,
    /// Mesh TLS terminated here, without a client certificate.
    NoIdentity,
    /// Mesh mTLS with this verified client identity.
    Mesh(Arc<str>),
}

/// One inbound connection, as the policy sees it: the port's policy, the
/// client, and the connection's share of the metric labels.
#[derive(Debug)]
pub struct Conn {
    /// The port's policy, watched.
    pub port: PortPolicy,
    /// Who is connecting.
    pub client: Client,
    /// The connection's original destination.
    pub target: SocketAddr,
    /// Counts what the policy decides for it.
    pub metrics: AuthzConn,
    /// The allow counter of the route and authorization that admitted the
    /// connection's last request: most requests of a connection take the
    /// same route, so the labels are resolved once, not per request.
    last_allow: Mutex<Option<LastAllow>>,
}

/// A cached allow counter, and what it counts for.
#[derive(Debug)]
struct LastAllow {
    /// The policy the route and authorization belong to, held so that
    /// their addresses stay theirs.
    policy: Arc<ServerPolicy>,
    route: usize,
    authz: usize,
    counter: Series<Counter>,
}

/// The policy refused a connection.
#[derive(Debug, thiserror::Error)]
#[error("the policy of port {port} ({server}) does not admit {client}")]
pub struct Denied {
    /// The port.
    pub port: u16,
    /// The server (policy) that refused it.
    pub server: Arc<str>,
    /// Who, in words.
    pub client: String,
}

// === impl Client ===

impl Client {
    /// The client as the policy model reads it.
    pub fn as_model(&self) -> model::Client<'_> {
        model::Client {
            addr: self.addr,
            tls: match &self.tls {
                ClientTls::None => model::ClientTls::None,
                ClientTls::NoIdentity => model::ClientTls::Tls,
                ClientTls::Mesh(id) => model::ClientTls::Mesh(id),
            },
        }
    }

    /// The verified mesh identity, if any.
    pub fn identity(&self) -> Option<&str> {
        match &self.tls {
            ClientTls::Mesh(id) => Some(id),
            _ => None,
        }
    }

    /// The `tls` label of its connection.
    pub fn tls_label(&self) -> &'static str {
        match self.tls {
            ClientTls::None => "disabled",
            ClientTls::NoIdentity | ClientTls::Mesh(_) => "true",
        }
    }
}

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.tls {
            ClientTls::None => write!(f, "{} (no mTLS)", self.addr),
            ClientTls::NoIdentity => write!(f, "{} (TLS without a client identity)", self.addr),
            ClientTls::Mesh(id) => write!(f, "{} (mTLS as {id})", self.addr),
        }
    }
}

// === impl Conn ===

impl Conn {
    /// A connection from `client` to `target`, under `port`'s policy.
    pub fn new(
        port: PortPolicy,
        client: Client,
        target: SocketAddr,
        metrics: &AuthzMetrics,
    ) -> Self {
        let metrics = metrics.conn(target, client.tls_label(), client.identity());
        Self {
            port,
            client,
            target,
            metrics,
            last_allow: Mutex::new(None),
        }
    }

    /// Counts a request that `authz` admitted on the route `m` matched.
    pub(crate) fn count_allowed(&self, m: &Matched, authz: &model::Authorization) {
        let authz_key = std::ptr::from_ref(authz) as usize;
        let mut last = self.last_allow.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = last.as_ref() {
            if Arc::ptr_eq(&l.policy, &m.policy) && l.route == m.route_key && l.authz == authz_key {
                l.counter.inc();
                return;
            }
        }
        let counter = self.metrics.http_allow_series(
            &m.server(),
            &labels::route(&m.route),
            &labels::authz(&authz.meta),
        );
        counter.inc();
        *last = Some(LastAllow {
            policy: m.policy.clone(),
            route: m.route_key,
            authz: authz_key,
            counter,
        });
    }

    fn denied(&self, policy: &ServerPolicy) -> Denied {
        Denied {
            port: self.port.port(),
            server: labels::name(&policy.meta),
            client: self.client.to_string(),
        }
    }
}

/// Refuses, before detection, a connection under a policy that admits no
/// one at all (`deny`): nothing the client could send would be allowed.
/// Counted in `inbound_tcp_authz_deny_total`.
pub fn refuse_before_detect(conn: &Conn) -> Result<Arc<ServerPolicy>, Denied> {
    let policy = conn.port.current();
    if policy.denies_all() {
        conn.metrics
            .tcp_deny(&labels::server(&policy.meta, conn.port.port()));
        return Err(conn.denied(&policy));
    }
    Ok(policy)
}

/// Authorizes a connection that is not HTTP against the server's
/// authorizations: counted as allowed or denied; an audit authorization
/// lets it through, logged and counted as denied.
pub fn authorize_tcp(conn: &Conn) -> Result<Arc<ServerPolicy>, Denied> {
    let policy = conn.port.current();
    let srv = labels::server(&policy.meta, conn.port.port());
    match tcp_verdict(&policy, &conn.client.as_model()) {
        Verdict::Allow(authz) => {
            conn.metrics.tcp_allow(&srv, &labels::authz(&authz.meta));
            Ok(policy)
        }
        Verdict::Audit(_) => {
            tracing::info!(
                port = conn.port.port(), server = %srv.srv_name, client = %conn.client,
                "audit: admitting a connection that the policy would refuse"
            );
            conn.metrics.tcp_deny(&srv);
            Ok(policy)
        }
        Verdict::Deny => {
            conn.metrics.tcp_deny(&srv);
            Err(conn.denied(&policy))
        }
    }
}

/// The verdict on bytes that are not (or were not recognised as) HTTP:
/// the server's authorizations decide; on a port that detects HTTP, every
/// one of its HTTP routes must admit the client too, since bytes that
/// were not recognised as a request (a request line split past the
/// detect timeout, one a lenient server accepts but the detector does
/// not) could still be one, for any route. (On a port that serves only
/// HTTP such bytes are refused before this.)
fn tcp_verdict<'p>(policy: &'p ServerPolicy, client: &model::Client<'_>) -> Verdict<'p> {
    let verdict = model::authorize(&policy.authorizations, client);
    if let (model::Protocol::Detect { http, .. }, false) =
        (&policy.protocol, matches!(verdict, Verdict::Deny))
    {
        let every_route = http
            .http_routes
            .iter()
            .all(|r| !matches!(model::authorize(&r.authorizations, client), Verdict::Deny));
        if !every_route {
            return Verdict::Deny;
        }
    }
    verdict
}

/// Resolves when the port's policy changes so that it no longer admits
/// the connection (counted in `inbound_tcp_authz_terminate_total`); the
/// caller then resets it. Never resolves while it stays admitted.
pub async fn revoked(conn: &mut Conn) -> Denied {
    loop {
        conn.port.changed().await;
        let policy = conn.port.current();
        if matches!(tcp_verdict(&policy, &conn.client.as_model()), Verdict::Deny) {
            conn.metrics
                .tcp_terminate(&labels::server(&policy.meta, conn.port.port()));
            return conn.denied(&policy);
        }
    }
}
