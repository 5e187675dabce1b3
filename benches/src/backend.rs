//! The backends every scenario ends at, each a separate process on one
//! thread so that its CPU is never counted as the proxy's: an HTTP/1.1 and
//! HTTP/2 keep-alive server answering every request with 1 KiB, and a gRPC
//! server answering every unary call with a 1 KiB message.

use anyhow::Result;
use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use linnet_test_support::grpc::{Msg, Raw};
use std::{convert::Infallible, future::Future, net::SocketAddr, pin::Pin};

/// The size of every response body.
pub(crate) const RESPONSE_BYTES: usize = 1024;

/// The gRPC method the backend serves.
pub(crate) const GRPC_PATH: &str = "/linnet.bench.Bench/Unary";

/// Which backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Kind {
    /// HTTP/1.1 and HTTP/2 (prior knowledge).
    Http,
    /// gRPC over HTTP/2.
    Grpc,
}

/// Serves until killed; prints the bound address on stdout first.
pub(crate) fn serve(kind: Kind, addr: SocketAddr) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        println!("{}", listener.local_addr()?);
        let body = Bytes::from(vec![b'x'; RESPONSE_BYTES]);
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let io = TokioIo::new(stream);
            let body = body.clone();
            match kind {
                Kind::Http => {
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |_req| {
                            let body = body.clone();
                            async move {
                                Ok::<_, Infallible>(hyper::Response::new(
                                    http_body_util::Full::new(body),
                                ))
                            }
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await;
                    });
                }
                Kind::Grpc => {
                    tokio::spawn(async move {
                        let svc =
                            hyper::service::service_fn(move |req| grpc_dispatch(req, body.clone()));
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await;
                    });
                }
            }
        }
    })
}

async fn grpc_dispatch(
    req: http::Request<hyper::body::Incoming>,
    body: Bytes,
) -> Result<http::Response<tonic::body::Body>, Infallible> {
    let mut grpc = tonic::server::Grpc::new(Raw);
    Ok(if req.uri().path() == GRPC_PATH {
        grpc.unary(Reply(body), req).await
    } else {
        tonic::Status::unimplemented("no such method").into_http()
    })
}

/// Answers any request with the same message.
struct Reply(Bytes);

impl tonic::server::UnaryService<Msg> for Reply {
    type Response = Msg;
    type Future = Pin<Box<dyn Future<Output = Result<tonic::Response<Msg>, tonic::Status>> + Send>>;
    fn call(&mut self, _req: tonic::Request<Msg>) -> Self::Future {
        let msg = self.0.to_vec();
        Box::pin(async move { Ok(tonic::Response::new(msg)) })
    }
}
