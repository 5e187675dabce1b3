//! The request handler: from the server's request to the upstream's
//! response.

use crate::{
    BoxBody, Upstream, Version,
    body::{MeteredBody, Recorder},
    headers, rescue,
};
use http::{Request, Response, StatusCode, Uri, uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use linnet_metrics::{
    Direction,
    http::{HttpMetrics, ResponseOutcome},
    prometheus_client::metrics::counter::Counter,
};
use linnet_transport::duplex::{Side, duplex};
use std::{
    convert::Infallible, future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Instant,
};

/// Forwards one connection's requests to its target.
#[derive(Clone, Debug)]
pub struct Proxy {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    upstream: Arc<Upstream>,
    version: Version,
    metrics: HttpMetrics,
    direction: Direction,
    tls: &'static str,
}

impl Proxy {
    /// A handler for a connection speaking `version`, forwarding to
    /// `upstream` with the same version.
    pub fn new(
        upstream: Arc<Upstream>,
        version: Version,
        metrics: HttpMetrics,
        direction: Direction,
        tls: &'static str,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                upstream,
                version,
                metrics,
                direction,
                tls,
            }),
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
        let target = self.upstream.target();
        let grpc = headers::is_grpc(&req);
        let upgrade = headers::is_upgrade(&req);
        let connect = headers::is_connect(&req);
        let authority = headers::authority(&req);
        let labels = HttpMetrics::labels(
            self.direction,
            authority
                .as_ref()
                .map_or_else(|| Arc::from(""), |a| Arc::from(a.as_str())),
            target,
            self.tls,
        );
        self.metrics.request(&labels);

        headers::strip_hop_by_hop(req.headers_mut(), upgrade);
        if !connect {
            *req.uri_mut() = client_uri(req.uri(), authority, target);
        }
        let server_upgrade = (upgrade || connect).then(|| hyper::upgrade::on(&mut req));

        match self.upstream.client(self.version).request(req).await {
            Ok(mut rsp) => {
                let status = rsp.status();
                let switching = status == StatusCode::SWITCHING_PROTOCOLS;
                if let Some(server_upgrade) = server_upgrade {
                    if switching || (connect && status.is_success()) {
                        let client_upgrade = hyper::upgrade::on(&mut rsp);
                        tokio::spawn(tunnel(server_upgrade, client_upgrade, target));
                    }
                }
                headers::strip_hop_by_hop(rsp.headers_mut(), switching);
                // Connection management is our server's business with its
                // client: an HTTP/1.0 answer from the target must not make it
                // close a connection the client asked to keep alive.
                if rsp.version() < http::Version::HTTP_11 {
                    *rsp.version_mut() = http::Version::HTTP_11;
                }
                let grpc_status = rsp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok()?.parse().ok());
                let recorder = Recorder {
                    metrics: self.metrics.clone(),
                    labels,
                    start,
                    status: status.as_u16(),
                    grpc_status,
                };
                rsp.map(|body| {
                    MeteredBody::new(body, recorder)
                        .map_err(linnet_core::Error::from)
                        .boxed_unsync()
                })
            }
            Err(error) => {
                let rescued = rescue::rescue(&error, grpc);
                tracing::info!(
                    direction = %self.direction, %target,
                    error = %linnet_core::display_chain(&error),
                    "request failed"
                );
                let outcome = ResponseOutcome {
                    status: Some(rescued.response.status().as_u16()),
                    grpc_status: rescued.grpc_status,
                    error: rescued.error,
                };
                self.metrics.response(&labels, outcome, start.elapsed());
                rescued.response
            }
        }
    }
}

/// The URI the upstream client is given: absolute, so that its pool has a
/// key and HTTP/2 gets `:scheme` and `:authority`; the authority is the
/// request's own (the connector dials the target whatever it says), or the
/// target's address when the request named none.
fn client_uri(original: &Uri, authority: Option<uri::Authority>, target: SocketAddr) -> Uri {
    let mut parts = original.clone().into_parts();
    if parts.scheme.is_none() {
        parts.scheme = Some(uri::Scheme::HTTP);
    }
    let authority = authority.or_else(|| target.to_string().parse().ok());
    parts.authority = authority;
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(uri::PathAndQuery::from_static("/"));
    }
    Uri::from_parts(parts).unwrap_or_else(|_| original.clone())
}

/// Carries an upgraded connection (WebSocket, `CONNECT`) as bytes.
async fn tunnel(
    server: hyper::upgrade::OnUpgrade,
    client: hyper::upgrade::OnUpgrade,
    target: SocketAddr,
) {
    let (server, client) = tokio::join!(server, client);
    let (Ok(server), Ok(client)) = (server, client) else {
        tracing::debug!(%target, "upgrade did not complete");
        return;
    };
    let (mut down, mut up) = (TokioIo::new(server), TokioIo::new(client));
    // The connections' own metrics count these bytes already.
    let unused: [Counter; 4] = Default::default();
    let result = duplex(
        Side {
            io: &mut down,
            read_bytes: &unused[0],
            write_bytes: &unused[1],
        },
        Side {
            io: &mut up,
            read_bytes: &unused[2],
            write_bytes: &unused[3],
        },
    )
    .await;
    if let Err(error) = result {
        tracing::debug!(%target, %error, "upgraded connection failed");
    }
}
