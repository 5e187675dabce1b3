//! gRPC through the proxy with a real tonic client and server: unary,
//! server streaming, client streaming, bidirectional streaming, and an
//! error status with details in trailers. Messages are raw bytes (a codec
//! of our own), which is all the proxy sees of them anyway.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use futures_util::{Stream, StreamExt, stream};
use hyper_util::rt::{TokioExecutor, TokioIo};
use linnet_app::OrigDst;
use linnet_test_support::{
    grpc::{Msg, Raw},
    proxy::Proxy,
};
use std::{convert::Infallible, future::Future, pin::Pin};
use tonic::{
    Code, Request, Response, Status,
    codec::Streaming,
    server::{ClientStreamingService, ServerStreamingService, StreamingService, UnaryService},
};

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Status>> + Send>>;
type BoxStream = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send>>;

struct Unary;
impl UnaryService<Msg> for Unary {
    type Response = Msg;
    type Future = BoxFuture<Response<Msg>>;
    fn call(&mut self, req: Request<Msg>) -> Self::Future {
        let m = req.into_inner();
        Box::pin(async move {
            if m == b"fail" {
                return Err(Status::with_details(
                    Code::InvalidArgument,
                    "bad input",
                    Bytes::from_static(b"detail-bytes"),
                ));
            }
            Ok(Response::new([b"pong:".as_slice(), &m].concat()))
        })
    }
}

struct ServerStream;
impl ServerStreamingService<Msg> for ServerStream {
    type Response = Msg;
    type ResponseStream = BoxStream;
    type Future = BoxFuture<Response<BoxStream>>;
    fn call(&mut self, req: Request<Msg>) -> Self::Future {
        let n: usize = String::from_utf8_lossy(req.get_ref()).parse().unwrap_or(0);
        let items = stream::iter((0..n).map(|i| Ok(format!("item {i}").into_bytes())));
        Box::pin(async move { Ok(Response::new(Box::pin(items) as BoxStream)) })
    }
}

struct ClientStream;
impl ClientStreamingService<Msg> for ClientStream {
    type Response = Msg;
    type Future = BoxFuture<Response<Msg>>;
    fn call(&mut self, req: Request<Streaming<Msg>>) -> Self::Future {
        Box::pin(async move {
            let mut all = Vec::new();
            let mut s = req.into_inner();
            while let Some(m) = s.message().await? {
                all.extend_from_slice(&m);
            }
            Ok(Response::new(all))
        })
    }
}

struct Bidi;
impl StreamingService<Msg> for Bidi {
    type Response = Msg;
    type ResponseStream = BoxStream;
    type Future = BoxFuture<Response<BoxStream>>;
    fn call(&mut self, req: Request<Streaming<Msg>>) -> Self::Future {
        let echo = req
            .into_inner()
            .map(|m| m.map(|m| [b"echo:".as_slice(), &m].concat()));
        Box::pin(async move { Ok(Response::new(Box::pin(echo) as BoxStream)) })
    }
}

async fn dispatch(
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<tonic::body::Body>, Infallible> {
    let mut grpc = tonic::server::Grpc::new(Raw);
    Ok(match req.uri().path() {
        "/t.T/Unary" => grpc.unary(Unary, req).await,
        "/t.T/ServerStream" => grpc.server_streaming(ServerStream, req).await,
        "/t.T/ClientStream" => grpc.client_streaming(ClientStream, req).await,
        "/t.T/Bidi" => grpc.streaming(Bidi, req).await,
        _ => Status::unimplemented("no such method").into_http(),
    })
}

async fn start_server() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), hyper::service::service_fn(dispatch))
                    .await;
            });
        }
    });
    addr
}

async fn client(addr: std::net::SocketAddr) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic::client::Grpc::new(channel)
}

fn path(p: &'static str) -> http::uri::PathAndQuery {
    http::uri::PathAndQuery::from_static(p)
}

#[tokio::test]
async fn grpc_through_the_proxy() {
    let server = start_server().await;
    let proxy = Proxy::start(OrigDst::Fixed(server), &[]).await;
    for addr in [server, proxy.outbound] {
        let mut c = client(addr).await;

        c.ready().await.unwrap();
        let rsp = c
            .unary(Request::new(b"ping".to_vec()), path("/t.T/Unary"), Raw)
            .await
            .unwrap();
        assert_eq!(rsp.into_inner(), b"pong:ping");

        c.ready().await.unwrap();
        let rsp = c
            .server_streaming(Request::new(b"25".to_vec()), path("/t.T/ServerStream"), Raw)
            .await
            .unwrap();
        let items: Vec<Msg> = rsp.into_inner().map(|m| m.unwrap()).collect().await;
        assert_eq!(items.len(), 25);
        assert_eq!(items[24], b"item 24");

        c.ready().await.unwrap();
        let parts = stream::iter((0..10).map(|i| vec![b'a' + i; 1000]));
        let rsp = c
            .client_streaming(Request::new(parts), path("/t.T/ClientStream"), Raw)
            .await
            .unwrap();
        assert_eq!(rsp.into_inner().len(), 10_000);

        c.ready().await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(1);
        let outgoing = tokio_stream_from(rx);
        let rsp = c
            .streaming(Request::new(outgoing), path("/t.T/Bidi"), Raw)
            .await
            .unwrap();
        let mut incoming = rsp.into_inner();
        for i in 0..20u8 {
            // One message out, its echo back, before the next: interleaved.
            tx.send(vec![i; 10]).await.unwrap();
            let echo = incoming.message().await.unwrap().unwrap();
            assert_eq!(echo, [b"echo:".as_slice(), &[i; 10]].concat());
        }
        drop(tx);
        assert!(incoming.message().await.unwrap().is_none());

        c.ready().await.unwrap();
        let err = c
            .unary(Request::new(b"fail".to_vec()), path("/t.T/Unary"), Raw)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(err.message(), "bad input");
        assert_eq!(err.details(), b"detail-bytes");
    }
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum("response_total", &[("grpc_status", "0")]),
        4.0,
        "{}",
        m.0
    );
    assert_eq!(
        m.sum(
            "response_total",
            &[("grpc_status", "3"), ("classification", "failure")]
        ),
        1.0,
        "{}",
        m.0
    );
}

/// A stream of the messages sent on `rx`, ending when it closes.
fn tokio_stream_from(
    rx: tokio::sync::mpsc::Receiver<Msg>,
) -> impl Stream<Item = Msg> + Send + 'static {
    stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) })
}
