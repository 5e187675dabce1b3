//! HTTP/1.1 and HTTP/2: `POST /transfer?down=N` carries the upload as a
//! streamed body (its digest in `x-sha256`, its length in `x-len`); the
//! application reads it all, checks it, and answers `200` with `N` bytes
//! streamed in chunks (`content-length`, digest in `x-sha256`). The same
//! server answers the gRPC method of [`super::grpc`].

use super::{AppLog, CHUNK, ClientEnd, Digesting, Got, Transfer, hex, is_reset, payload};
use bytes::Bytes;
use futures_util::{Stream, StreamExt, stream};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};
use tokio::net::{TcpListener, TcpStream};

pub(super) async fn serve(listener: TcpListener, log: Arc<AppLog>) {
    while let Ok((stream, _)) = listener.accept().await {
        let log = log.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let log = log.clone();
                async move {
                    Ok::<_, Infallible>(if req.uri().path() == super::grpc::PATH {
                        super::grpc::serve(req, log).await
                    } else if req.headers().contains_key("sec-websocket-key") {
                        websocket(req, log)
                    } else {
                        transfer(req, log).await
                    })
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A WebSocket transfer, served on the same port as the others.
fn websocket(mut req: Request<Incoming>, log: Arc<AppLog>) -> Response<tonic::body::Body> {
    use tokio_tungstenite::tungstenite::{handshake::derive_accept_key, protocol::Role};
    let down: usize = req
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("down="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let accept = derive_accept_key(header(req.headers(), "sec-websocket-key").as_bytes());
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(up) => {
                let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(up),
                    Role::Server,
                    None,
                )
                .await;
                super::ws::session(ws, down, log).await;
            }
            Err(e) => log.upload(Got::Error(format!("upgrade: {e}"))),
        }
    });
    let mut rsp = Response::new(tonic::body::Body::empty());
    *rsp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = rsp.headers_mut();
    h.insert("connection", "upgrade".parse().unwrap());
    h.insert("upgrade", "websocket".parse().unwrap());
    h.insert("sec-websocket-accept", accept.parse().unwrap());
    rsp
}

fn header<'a>(req: &'a http::HeaderMap, name: &str) -> &'a str {
    req.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

async fn transfer(req: Request<Incoming>, log: Arc<AppLog>) -> Response<tonic::body::Body> {
    log.started();
    let down: usize = req
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("down="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let expected = header(req.headers(), "x-sha256").to_string();
    let len: Option<usize> = header(req.headers(), "x-len").parse().ok();
    let mut body = req.into_body();
    let mut d = Digesting::default();
    let got = loop {
        match body.frame().await {
            None => {
                let n = d.len;
                break Got::check(n, hex(&d.finish()).as_bytes(), expected.as_bytes(), len);
            }
            Some(Err(e)) => break Got::Error(format!("body: {e}")),
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    d.update(data);
                }
            }
        }
    };
    let complete = got == Got::Complete;
    log.upload(got);
    if !complete {
        let mut rsp = Response::new(tonic::body::Body::empty());
        *rsp.status_mut() = StatusCode::BAD_REQUEST;
        return rsp;
    }
    let (data, digest) = payload(down);
    let frames = Download::new(data, log).map(|b| Ok::<_, Infallible>(Frame::data(b)));
    let mut rsp = Response::new(tonic::body::Body::new(StreamBody::new(frames)));
    rsp.headers_mut()
        .insert("x-sha256", hex(&digest).parse().unwrap());
    rsp.headers_mut()
        .insert("content-length", down.to_string().parse().unwrap());
    rsp
}

/// A download handed out in chunks; records at the application whether
/// every chunk was taken (`Complete`) or the stream was dropped first.
pub(super) struct Download {
    data: Bytes,
    log: Arc<AppLog>,
    done: bool,
}

impl Download {
    pub(super) fn new(data: Bytes, log: Arc<AppLog>) -> Self {
        Self {
            data,
            log,
            done: false,
        }
    }
}

impl Stream for Download {
    type Item = Bytes;
    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if self.data.is_empty() {
            if !self.done {
                self.done = true;
                self.log.download(Got::Complete);
            }
            return Poll::Ready(None);
        }
        let n = self.data.len().min(CHUNK);
        Poll::Ready(Some(self.data.split_to(n)))
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        if !self.done {
            self.log.download(Got::Error(format!(
                "dropped with {} bytes unsent",
                self.data.len()
            )));
        }
    }
}

/// The upload as a stream of chunks.
pub(super) fn chunks(data: Bytes) -> impl Stream<Item = Bytes> + Send + 'static {
    stream::unfold(data, |mut data| async move {
        if data.is_empty() {
            return None;
        }
        let n = data.len().min(CHUNK);
        Some((data.split_to(n), data))
    })
}

type ReqBody = StreamBody<Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, Infallible>> + Send>>>;

pub(super) async fn run(addr: SocketAddr, t: Transfer, h2: bool) -> ClientEnd {
    let io = match TcpStream::connect(addr).await {
        Ok(s) => TokioIo::new(s),
        Err(e) => return ClientEnd::error(e, false),
    };
    let (up, up_digest) = payload(t.up);
    let body: ReqBody = StreamBody::new(Box::pin(chunks(up).map(|b| Ok(Frame::data(b)))));
    let req = Request::post(if h2 {
        format!("http://app.test/transfer?down={}", t.down)
    } else {
        format!("/transfer?down={}", t.down)
    })
    .header("host", "app.test")
    .header("x-sha256", hex(&up_digest))
    .header("x-len", t.up.to_string())
    .body(body)
    .unwrap();
    let sent = if h2 {
        let (mut send, conn) =
            match hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await {
                Ok(c) => c,
                Err(e) => return ClientEnd::error(format!("handshake: {e}"), is_reset(&e)),
            };
        tokio::spawn(conn);
        send.send_request(req).await
    } else {
        let (mut send, conn) = match hyper::client::conn::http1::handshake(io).await {
            Ok(c) => c,
            Err(e) => return ClientEnd::error(format!("handshake: {e}"), is_reset(&e)),
        };
        tokio::spawn(conn);
        send.send_request(req).await
    };
    let rsp = match sent {
        Ok(r) => r,
        Err(e) => return ClientEnd::error(format!("request: {e:?}"), is_reset(&e)),
    };
    if rsp.status() != StatusCode::OK {
        let proxy_error = header(rsp.headers(), "l5d-proxy-error").to_string();
        return ClientEnd::error(format!("status {} ({proxy_error})", rsp.status()), false);
    }
    let expected = header(rsp.headers(), "x-sha256").to_string();
    let mut body = rsp.into_body();
    let mut d = Digesting::default();
    loop {
        match body.frame().await {
            None => break,
            Some(Err(e)) => return ClientEnd::error(format!("body: {e:?}"), is_reset(&e)),
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    d.update(data);
                }
            }
        }
    }
    let n = d.len;
    match Got::check(
        n,
        hex(&d.finish()).as_bytes(),
        expected.as_bytes(),
        Some(t.down),
    ) {
        Got::Complete => ClientEnd::complete(),
        other => ClientEnd {
            got: other,
            reset: false,
        },
    }
}
