//! The request handler: from the server's request to the upstream's
//! response.

use crate::{
    BoxBody, Upstream, Version,
    body::{Idle, IdleBody, MeteredBody, Recorder},
    client::{ConnectConfig, UpstreamIo},
    conn::{Connection, Serving},
    continue_gate, endpoint, headers, rescue,
};
use bytes::Bytes;
use http::{Request, Response, StatusCode, uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use linnet_core::drain;
use linnet_metrics::{
    Direction,
    http::{GrpcStatus, HttpMetrics, LabeledMetrics, ResponseOutcome},
    limits::{LimitMetrics, TunnelEnd},
    prometheus_client::metrics::counter::Counter,
    tcp::Peer,
};
use linnet_transport::duplex::{Side, duplex};
use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};
use tower::ServiceExt;

use linnet_metrics::resolve::ResolveMetrics;
use linnet_transport::resolve::Addrs;

/// Forwards one connection's requests to its target.
#[derive(Clone, Debug)]
pub struct Proxy {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The label set and request counter of the connection's last request.
    last_labels: std::sync::Mutex<Option<LabeledMetrics>>,
    route: Route,
    in_flight: InFlight,
    /// The largest request body passed on.
    max_body: Option<u64>,
    version: Version,
    metrics: HttpMetrics,
    direction: Direction,
    tls: &'static str,
    /// The client's verified mesh identity, for `l5d-client-id`.
    client_id: Option<http::HeaderValue>,
    /// The same, for metric labels.
    client_id_label: Option<Arc<str>>,
    /// The client connection, for tunnels and resets.
    conn: Option<Connection>,
    /// What the server adds while it serves the connection.
    serving: Option<Serving>,
    /// Requests started on this connection (for its idle timeout).
    requests: AtomicU64,
}

/// A client's demand that the peer prove this identity (outbound).
pub const L5D_REQUIRE_ID: &str = "l5d-require-id";

/// The HTTP version an HTTP/1 request had before it was carried as HTTP/2
/// between proxies.
pub const L5D_ORIG_PROTO: &str = "l5d-orig-proto";

/// The header naming the client's verified mesh identity, set by the
/// inbound proxy (and only by it: a client's own is always removed).
pub const L5D_CLIENT_ID: &str = "l5d-client-id";

/// The bound on requests a listener handles at once, shared by all its
/// connections. A request holds a permit until its response ends; when
/// none is left the request is shed at once (503), not queued.
#[derive(Clone, Debug)]
pub struct InFlight(Arc<tokio::sync::Semaphore>);

impl InFlight {
    /// At most `max` requests at once.
    pub fn new(max: usize) -> Self {
        Self(Arc::new(tokio::sync::Semaphore::new(max)))
    }
}

/// Where a connection's requests go.
#[derive(Clone, Debug)]
pub enum Route {
    /// All of them to the connection's original destination.
    Target(Arc<Upstream>),
    /// Explicit proxy mode (a connection that was not redirected): each
    /// request to the host its URI or `Host` names.
    Explicit(Arc<dyn Explicit>),
    /// Each request through a stack (routes, retries, balancing...) for
    /// a logical target.
    Stack {
        /// The stack.
        stack: HttpStack,
        /// The logical target's address, for metric labels.
        target: SocketAddr,
    },
}

/// A request stack: what an HTTP request is handed to below the edge.
pub type HttpStack =
    tower::util::BoxCloneSyncService<Request<BoxBody>, Response<BoxBody>, linnet_core::Error>;

/// What a request is handed to.
enum Call {
    Upstream(Arc<Upstream>),
    Stack(HttpStack),
}

/// Hands `req` to `stack`. (A named function: inside an `async` block,
/// `stack.oneshot(req)` trips the compiler's higher-ranked lifetime
/// inference over the body's boxed error type.)
pub fn call_stack(
    stack: HttpStack,
    req: Request<BoxBody>,
) -> BoxFuture<'static, Result<Response<BoxBody>, linnet_core::Error>> {
    Box::pin(stack.oneshot(req))
}

/// A boxed future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What explicit proxy mode needs from the stack.
pub trait Explicit: Send + Sync + std::fmt::Debug + 'static {
    /// The shared clients for `addrs` (one address, or a name's, tried
    /// with happy eyeballs).
    fn upstream(&self, addrs: &Addrs, identity: Option<&str>) -> Arc<Upstream>;
    /// Whether `addr` is this proxy itself: forwarding there would loop.
    fn is_self(&self, addr: SocketAddr) -> bool;
    /// How targets are connected to (its timeout bounds resolving, too).
    fn connect_config(&self) -> ConnectConfig;
    /// Where `authority`'s requests go: the outbound stack of the service
    /// it names (not for `CONNECT`, which needs an endpoint), or its
    /// addresses and the mesh identity they must prove if meshed: its IP,
    /// or every address its name resolves to ([`resolve`]).
    fn resolve<'a>(
        &'a self,
        authority: &'a uri::Authority,
        default_port: u16,
        connect: bool,
    ) -> BoxFuture<'a, Result<Resolved, String>>;
}

/// Where an explicit-mode request goes.
#[derive(Debug)]
pub enum Resolved {
    /// Through a service's stack (routes, retries, balancer).
    Stack {
        /// The stack.
        stack: HttpStack,
        /// The address its metrics name.
        target: SocketAddr,
    },
    /// To one address, or the first of a name's addresses to accept.
    Endpoint {
        /// Where.
        addrs: Addrs,
        /// The identity it must prove, when meshed.
        identity: Option<String>,
    },
}

impl Proxy {
    /// A handler for a connection speaking `version`, forwarding by
    /// `route` with the same version.
    pub fn new(
        route: Route,
        in_flight: InFlight,
        max_body: Option<u64>,
        version: Version,
        metrics: HttpMetrics,
        direction: Direction,
        tls: &'static str,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                last_labels: Default::default(),
                route,
                in_flight,
                max_body,
                version,
                metrics,
                direction,
                tls,
                client_id: None,
                client_id_label: None,
                conn: None,
                serving: None,
                requests: AtomicU64::new(0),
            }),
        }
    }

    /// Tells the application (inbound) who the client is: `id`, verified
    /// by mTLS. Without it, no `l5d-client-id` reaches the application.
    pub fn with_client_id(self, id: Option<&str>) -> Self {
        self.modify(|inner| {
            inner.client_id = id.and_then(|id| http::HeaderValue::from_str(id).ok());
            inner.client_id_label = id.map(Arc::from);
        })
    }

    /// The client connection's reset flag and tunnel settings. Without
    /// them, a failed response or tunnel closes the connection with a FIN
    /// (for in-memory connections, which have no socket to reset).
    pub fn with_connection(self, conn: Connection) -> Self {
        self.modify(|inner| inner.conn = Some(conn))
    }

    pub(crate) fn serving(self, serving: Serving) -> Self {
        self.modify(|inner| inner.serving = Some(serving))
    }

    /// Where the connection's limits are counted, when it has them.
    pub(crate) fn limit_metrics(&self) -> Option<LimitMetrics> {
        self.inner.conn.as_ref().map(|c| c.limits.clone())
    }

    /// Which listener's connection this is.
    pub(crate) fn direction(&self) -> Direction {
        self.inner.direction
    }

    /// Requests started on this connection so far.
    pub(crate) fn requests_started(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }

    /// Changes the handler, which is only shared before it serves.
    fn modify(self, f: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = Arc::try_unwrap(self.inner).unwrap_or_else(|shared| Inner {
            last_labels: Default::default(),
            route: shared.route.clone(),
            in_flight: shared.in_flight.clone(),
            max_body: shared.max_body,
            version: shared.version,
            metrics: shared.metrics.clone(),
            direction: shared.direction,
            tls: shared.tls,
            client_id: shared.client_id.clone(),
            client_id_label: shared.client_id_label.clone(),
            conn: shared.conn.clone(),
            serving: shared.serving.clone(),
            requests: AtomicU64::new(0),
        });
        f(&mut inner);
        Self {
            inner: Arc::new(inner),
        }
    }
}

impl hyper::service::Service<Request<Incoming>> for Proxy {
    type Response = Response<BoxBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<BoxBody>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move { Ok(inner.handle(req).await) })
    }
}

impl Inner {
    async fn handle(&self, mut req: Request<Incoming>) -> Response<BoxBody> {
        let start = Instant::now();
        self.requests.fetch_add(1, Ordering::Relaxed);
        let in_request = self
            .serving
            .as_ref()
            .and_then(|s| s.head_clock.as_ref())
            .map(|c| c.request());
        let grpc = headers::is_grpc(&req);
        let upgrade = headers::is_upgrade(&req);
        let connect = headers::is_connect(&req);
        let authority = headers::authority(&req);
        let absolute_form = req.version() <= http::Version::HTTP_11 && req.uri().scheme().is_some();
        let Ok(permit) = self.in_flight.0.clone().try_acquire_owned() else {
            let labels = self.count_request(authority.as_ref(), UNKNOWN_TARGET);
            let rescued = rescue::respond(
                StatusCode::SERVICE_UNAVAILABLE,
                rescue::GRPC_UNAVAILABLE,
                "load_shed",
                "too many requests in flight: load shed",
                grpc,
            );
            tracing::debug!(direction = %self.direction, "request shed: too many in flight");
            return self.count_rescued(&labels, rescued, start);
        };
        let (call, target) = match &self.route {
            Route::Target(upstream) => (Call::Upstream(upstream.clone()), upstream.target()),
            Route::Stack { stack, target } => (Call::Stack(stack.clone()), *target),
            Route::Explicit(explicit) => {
                let https = req.uri().scheme() == Some(&uri::Scheme::HTTPS);
                let resolved = match &authority {
                    // The proxy would have to speak TLS to the target for
                    // the client; clients use CONNECT for https.
                    Some(_) if https && !connect => Err((
                        StatusCode::BAD_REQUEST,
                        "https_without_connect",
                        "https:// requests go through the proxy with CONNECT".to_string(),
                    )),
                    Some(a) => explicit
                        .resolve(a, 80, connect)
                        .await
                        .map_err(|e| (StatusCode::BAD_GATEWAY, "resolve", e)),
                    None => Err((
                        StatusCode::BAD_REQUEST,
                        "no_authority",
                        "a request to the proxy itself needs an absolute URI or a Host header"
                            .to_string(),
                    )),
                };
                let resolved = resolved.and_then(|r| match r {
                    // Any address of a name that is this proxy would loop.
                    Resolved::Endpoint { addrs, .. }
                        if addrs.as_slice().iter().any(|a| explicit.is_self(*a)) =>
                    {
                        Err((
                            StatusCode::LOOP_DETECTED,
                            "loop",
                            format!("{addrs} is this proxy"),
                        ))
                    }
                    r => Ok(r),
                });
                match resolved {
                    Ok(Resolved::Stack { stack, target }) => (Call::Stack(stack), target),
                    Ok(Resolved::Endpoint { addrs, identity }) => {
                        // A name's requests are labelled with the address
                        // tried first.
                        let addr = addrs.first();
                        if connect {
                            let labels = self.count_request(authority.as_ref(), addr);
                            let upstream = explicit.upstream(&addrs, identity.as_deref());
                            return self.connect_tunnel(req, &upstream, labels, start).await;
                        }
                        (
                            Call::Upstream(explicit.upstream(&addrs, identity.as_deref())),
                            addr,
                        )
                    }
                    Err((status, label, message)) => {
                        let labels = self.count_request(authority.as_ref(), UNKNOWN_TARGET);
                        let grpc_code = if status == StatusCode::BAD_REQUEST {
                            rescue::GRPC_INVALID_ARGUMENT
                        } else {
                            rescue::GRPC_UNAVAILABLE
                        };
                        let rescued = rescue::respond(status, grpc_code, label, &message, grpc);
                        return self.count_rescued(&labels, rescued, start);
                    }
                }
            }
        };
        let labels = self.count_request(authority.as_ref(), target);
        if self.direction == Direction::Inbound {
            // A client's demand for a peer identity means nothing here.
            req.headers_mut().remove(L5D_REQUIRE_ID);
        }

        headers::strip_hop_by_hop(req.headers_mut(), upgrade);
        if self.direction == Direction::Outbound {
            // How a request travels between proxies is the endpoint
            // client's to say (it sets this when it carries HTTP/1 as
            // HTTP/2), never the application's: a client's own would make
            // the peer's proxy downgrade an HTTP/2 request.
            req.headers_mut().remove(L5D_ORIG_PROTO);
        }
        // HTTP/1 between meshed proxies travels as HTTP/2; the outbound
        // side's endpoint client upgrades it, and it is restored here
        // (inbound).
        if self.direction == Direction::Inbound && self.version == Version::Http2 {
            if let Some(orig) = req.headers_mut().remove(L5D_ORIG_PROTO) {
                *req.version_mut() = if orig.as_bytes() == b"HTTP/1.0" {
                    http::Version::HTTP_10
                } else {
                    http::Version::HTTP_11
                };
                if !req.headers().contains_key(http::header::HOST) {
                    if let Some(a) = &authority {
                        if let Ok(host) = http::HeaderValue::from_str(a.as_str()) {
                            req.headers_mut().insert(http::header::HOST, host);
                        }
                    }
                }
            }
        }
        if self.direction == Direction::Inbound {
            // Only this proxy may say who the client is, or how the
            // request travelled between proxies.
            headers::strip_proxy_owned(req.headers_mut());
            if let Some(id) = &self.client_id {
                req.headers_mut().insert(L5D_CLIENT_ID, id.clone());
            }
        }
        if matches!(self.route, Route::Explicit(_)) {
            // Credentials for this proxy are not the target's business.
            req.headers_mut().remove(http::header::PROXY_AUTHORIZATION);
        }
        // In transparent mode an absolute-form request goes on as it came;
        // in explicit mode we are the proxy it was addressed to, and the
        // target gets the usual origin form.
        if absolute_form && !matches!(self.route, Route::Explicit(_)) {
            req.extensions_mut().insert(endpoint::AbsoluteForm);
        }
        let server_upgrade = (upgrade || connect).then(|| hyper::upgrade::on(&mut req));

        if let Some(limit) = self.max_body {
            let declared = req
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if declared.is_some_and(|n| n > limit) {
                let message =
                    format!("the request body is larger than the proxy's limit of {limit} bytes");
                let rescued = rescue::respond(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    rescue::GRPC_RESOURCE_EXHAUSTED,
                    "body_too_large",
                    &message,
                    grpc,
                );
                return self.count_rescued(&labels, rescued, start);
            }
        }
        let gate = (self.version == Version::Http1 && continue_gate::expects_continue(&req))
            .then(|| continue_gate::gate(&mut req));
        let idle = self.body_idle();
        let req = req.map(|body| {
            // A failure reading the client's body is the client's (400),
            // not the target's: the error says so.
            let body = IdleBody::new(body.map_err(rescue::RequestBodyError), idle.clone());
            // One box per request: an open gate passes frames straight on.
            let body =
                continue_gate::Gated::new(body, gate.unwrap_or_else(continue_gate::Gate::open));
            match self.max_body {
                Some(limit) => {
                    http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX))
                        .boxed_unsync()
                }
                None => body.boxed_unsync(),
            }
        });
        // If the client goes away while the target is thinking (an HTTP/2
        // stream reset drops this future), the request still gets an
        // outcome in `response_total`.
        let waiting = Unanswered::new(&labels, start);
        let result = match call {
            Call::Upstream(upstream) => endpoint::send(upstream, req).await,
            Call::Stack(stack) => call_stack(stack, req).await,
        };
        waiting.answered();
        match result {
            Ok(mut rsp) => {
                let status = rsp.status();
                let switching = status == StatusCode::SWITCHING_PROTOCOLS;
                if let Some(server_upgrade) = server_upgrade {
                    if switching || (connect && status.is_success()) {
                        let client_upgrade = hyper::upgrade::on(&mut rsp);
                        tokio::spawn(tunnel(server_upgrade, client_upgrade, self.tunnel(target)));
                    }
                }
                headers::strip_hop_by_hop(rsp.headers_mut(), switching);
                let exact = hyper::body::Body::size_hint(rsp.body()).exact();
                if self.version == Version::Http1 && !switching {
                    headers::drop_untrusted_length(rsp.headers_mut(), exact);
                }
                // Connection management is our server's business with its
                // client: an HTTP/1.0 answer from the target must not make it
                // close a connection the client asked to keep alive.
                if self.version == Version::Http1 {
                    *rsp.version_mut() = http::Version::HTTP_11;
                }
                rsp.headers_mut().remove(L5D_ORIG_PROTO);
                let grpc_status = rsp
                    .headers()
                    .get("grpc-status")
                    .map(|v| GrpcStatus::parse(v.to_str().unwrap_or_default()));
                let recorder = Recorder {
                    _permit: permit,
                    _in_request: in_request,
                    metrics: labels,
                    start,
                    status: status.as_u16(),
                    grpc_status,
                    reset: match (&self.conn, self.version) {
                        (Some(c), Version::Http1) => Some(c.reset.clone()),
                        _ => None,
                    },
                };
                rsp.map(|body| MeteredBody::new(body, recorder, idle).boxed_unsync())
            }
            Err(error) => {
                tracing::info!(
                    direction = %self.direction, %target,
                    error = %linnet_core::display_chain(&*error),
                    "request failed"
                );
                self.count_rescued(&labels, rescue::rescue(&*error, grpc), start)
            }
        }
    }

    /// The body idle timeout, when the server set one.
    fn body_idle(&self) -> Option<Idle> {
        let (serving, conn) = (self.serving.as_ref()?, self.conn.as_ref()?);
        Some(Idle {
            timeout: serving.body_idle_timeout,
            metrics: conn.limits.clone(),
            direction: self.direction,
        })
    }

    /// What a tunnel from this connection to `target` needs.
    fn tunnel(&self, target: SocketAddr) -> Tunnel {
        Tunnel {
            target,
            direction: self.direction,
            conn: self.conn.clone(),
            watch: self.serving.as_ref().map(|s| s.watch.clone()),
        }
    }

    /// Counts a request, and returns its label set. The connection keeps
    /// the last label set and counter it used: requests on one connection
    /// nearly always share an authority and target, so the label set is
    /// built once per connection rather than per request.
    fn count_request(
        &self,
        authority: Option<&uri::Authority>,
        target: SocketAddr,
    ) -> LabeledMetrics {
        let authority = authority.map_or("", |a| a.as_str());
        let mut last = self.last_labels.lock().unwrap_or_else(|e| e.into_inner());
        let labeled = match last.as_ref() {
            Some(m) if m.is_for(authority, target) => m.clone(),
            _ => {
                // Let go of the previous label set first: its series may
                // then be evicted once idle.
                *last = None;
                let m = self.metrics.labeled(
                    self.direction,
                    authority,
                    target,
                    self.tls,
                    self.client_id_label.as_deref(),
                );
                *last = Some(m.clone());
                m
            }
        };
        labeled.request();
        labeled
    }

    /// Counts a response the proxy made up, and returns it.
    fn count_rescued(
        &self,
        labels: &LabeledMetrics,
        rescued: rescue::Rescued,
        start: Instant,
    ) -> Response<BoxBody> {
        let outcome = ResponseOutcome {
            status: Some(rescued.response.status().as_u16()),
            grpc_status: rescued.grpc_status.map(GrpcStatus::from_code),
            error: rescued.error,
        };
        labels.response(outcome, start.elapsed());
        rescued.response
    }

    /// Explicit proxy mode's `CONNECT host:port`: the proxy itself opens
    /// the tunnel.
    /// A meshed target is tunnelled to over mTLS that proves its
    /// identity, like any other request to it, or refused.
    async fn connect_tunnel(
        &self,
        mut req: Request<Incoming>,
        upstream: &Upstream,
        labels: LabeledMetrics,
        start: Instant,
    ) -> Response<BoxBody> {
        let addr = upstream.target();
        let stream = match upstream.connect().await {
            Ok(s) => s,
            Err(error) => {
                tracing::info!(direction = %self.direction, target = %addr, error = %linnet_core::display_chain(&*error), "CONNECT failed");
                return self.count_rescued(&labels, rescue::rescue(&*error, false), start);
            }
        };
        let upgrade = hyper::upgrade::on(&mut req);
        let tunnel = self.tunnel(addr);
        tokio::spawn(async move {
            match upgrade.await {
                Ok(upgraded) => relay(upgraded, stream, Bytes::new(), tunnel).await,
                Err(_) => stream.reset_on_close(),
            }
        });
        let outcome = ResponseOutcome {
            status: Some(200),
            grpc_status: None,
            error: "",
        };
        labels.response(outcome, start.elapsed());
        Response::new(
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
    }
}

/// Records a request as `cancelled` if dropped before [`Unanswered::answered`].
struct Unanswered<'a> {
    labels: Option<&'a LabeledMetrics>,
    start: Instant,
}

impl<'a> Unanswered<'a> {
    fn new(labels: &'a LabeledMetrics, start: Instant) -> Self {
        Self {
            labels: Some(labels),
            start,
        }
    }

    fn answered(mut self) {
        self.labels = None;
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if let Some(labels) = self.labels.take() {
            let outcome = ResponseOutcome {
                status: None,
                grpc_status: None,
                error: "cancelled",
            };
            labels.response(outcome, self.start.elapsed());
        }
    }
}

/// The `target_addr` of requests that never got one.
const UNKNOWN_TARGET: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

/// `authority`'s addresses: its IP, or every address its host resolves
/// to as the system resolves it (`localhost` always both loopbacks; see
/// [`linnet_transport::resolve::system`]), within `timeout`; counted in
/// `metrics`.
pub async fn resolve(
    authority: &uri::Authority,
    default_port: u16,
    timeout: std::time::Duration,
    metrics: &ResolveMetrics,
) -> Result<Addrs, linnet_transport::resolve::ResolveError> {
    let port = authority.port_u16().unwrap_or(default_port);
    linnet_transport::resolve::system(authority.host(), port, timeout, metrics).await
}

/// What a tunnel needs from the connection it came from.
struct Tunnel {
    target: SocketAddr,
    direction: Direction,
    conn: Option<Connection>,
    /// Holds the shutdown open until the tunnel ends.
    watch: Option<drain::Watch>,
}

/// Carries an upgraded connection (WebSocket, HTTP/1 upgrades) as bytes,
/// once both the client's and the target's connections have upgraded.
async fn tunnel(server: hyper::upgrade::OnUpgrade, client: hyper::upgrade::OnUpgrade, t: Tunnel) {
    let (server, client) = tokio::join!(server, client);
    match (server, client) {
        (Ok(server), Ok(client)) => {
            // The target's connection is ours: take it back whole, with
            // what hyper read past the response, so it can be reset.
            match client.downcast::<TokioIo<UpstreamIo>>() {
                Ok(parts) => relay(server, parts.io.into_inner(), parts.read_buf, t).await,
                Err(client) => {
                    tracing::debug!(target = %t.target, "upgraded connection of an unknown kind: it cannot be reset");
                    relay(server, TokioIo::new(client), Bytes::new(), t).await
                }
            }
        }
        (server, client) => {
            tracing::debug!(target = %t.target, "upgrade did not complete");
            if let Some(c) = &t.conn {
                c.reset.set();
            }
            drop((server, client));
        }
    }
}

/// A tunnel's target side.
trait TargetIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin {
    /// Resets the connection when it closes, where that can be done.
    fn reset_on_close(&self) {}
}

impl TargetIo for UpstreamIo {
    fn reset_on_close(&self) {
        UpstreamIo::reset_on_close(self);
    }
}

impl TargetIo for TokioIo<hyper::upgrade::Upgraded> {}

/// Copies both ways between a tunnel's two ends until both close; a side
/// that fails, an idle tunnel, and the end of the shutdown grace period
/// reset both. `prefix` was read from the target already. The
/// connections' own metrics count these bytes, so the copy's counters
/// are unused.
async fn relay<T: TargetIo>(
    server: hyper::upgrade::Upgraded,
    mut target: T,
    prefix: Bytes,
    t: Tunnel,
) {
    use tokio::io::AsyncWriteExt;
    let mut client = TokioIo::new(server);
    let unused: [Counter; 4] = Default::default();
    let idle = t.conn.as_ref().map(|c| c.tunnel_idle_timeout);
    let copy = async {
        if !prefix.is_empty() {
            client
                .write_all(&prefix)
                .await
                .map_err(|source| linnet_transport::CopyError {
                    side: Peer::Src,
                    op: linnet_transport::duplex::Op::Write,
                    source,
                })?;
        }
        duplex(
            Side {
                io: &mut client,
                read_bytes: &unused[0],
                write_bytes: &unused[1],
            },
            Side {
                io: &mut target,
                read_bytes: &unused[2],
                write_bytes: &unused[3],
            },
            idle,
        )
        .await
    };
    let mut watch = t.watch;
    let closing = async {
        match &mut watch {
            Some(w) => w.closing().await,
            None => std::future::pending().await,
        }
    };
    let end = tokio::select! {
        r = copy => match r {
            Ok(_) => TunnelEnd::Clean,
            Err(e) if e.is_idle() => TunnelEnd::Idle,
            Err(e) => {
                tracing::debug!(target = %t.target, error = %e, "tunnel failed");
                match e.side {
                    Peer::Src => TunnelEnd::ClientFailed,
                    Peer::Dst => TunnelEnd::TargetFailed,
                }
            }
        },
        _ = closing => TunnelEnd::Shutdown,
    };
    if end != TunnelEnd::Clean {
        if end == TunnelEnd::Shutdown {
            tracing::info!(direction = %t.direction, target = %t.target, "closing tunnel: shutdown grace period ended");
        }
        target.reset_on_close();
        if let Some(c) = &t.conn {
            c.reset.set();
        }
    }
    if let Some(c) = &t.conn {
        c.limits.tunnel_closed(t.direction, end);
        if end == TunnelEnd::Idle {
            c.limits
                .idle(t.direction, linnet_metrics::limits::Idle::Tunnel);
        }
    }
    // Both ends close here: with a reset when the flag is set.
    drop(client);
    drop(target);
    drop(watch);
}
