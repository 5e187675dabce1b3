//! gRPC with tonic: one bidirectional streaming method. The client
//! streams the upload as messages (digest in `x-sha256` metadata, size
//! wanted back in `x-down`); the application reads them all, checks
//! them, then streams the download (digest in its `x-sha256` response
//! metadata). A failed upload ends the call with `DATA_LOSS`.

use super::{AppLog, ClientEnd, Digesting, Got, Transfer, hex, http::Download, payload};
use futures_util::{Stream, StreamExt, stream};
use linnet_test_support::grpc::{Msg, Raw};
use std::{future::Future, net::SocketAddr, pin::Pin, sync::Arc};
use tonic::{Request, Response, Status, codec::Streaming, server::StreamingService};

/// The method's path.
pub(super) const PATH: &str = "/faults.Faults/Transfer";

type BoxStream = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send>>;

struct Transfers(Arc<AppLog>);

impl StreamingService<Msg> for Transfers {
    type Response = Msg;
    type ResponseStream = BoxStream;
    type Future = Pin<Box<dyn Future<Output = Result<Response<BoxStream>, Status>> + Send>>;

    fn call(&mut self, req: Request<Streaming<Msg>>) -> Self::Future {
        let log = self.0.clone();
        log.started();
        let meta = |name: &str| {
            req.metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let expected = meta("x-sha256");
        let down: usize = meta("x-down").parse().unwrap_or(0);
        let (data, digest) = payload(down);
        let mut incoming = req.into_inner();
        let upload = {
            let log = log.clone();
            // Dropped before the upload ended (the call was cancelled, even
            // before the response was first polled): that is how the
            // application sees it fail.
            let guard = Cancelled(Some(log.clone()));
            async move {
                let mut d = Digesting::default();
                let got = loop {
                    match incoming.message().await {
                        Ok(Some(m)) => d.update(&m),
                        Ok(None) => {
                            let n = d.len;
                            break Got::check(
                                n,
                                hex(&d.finish()).as_bytes(),
                                expected.as_bytes(),
                                None,
                            );
                        }
                        Err(s) => break Got::Error(format!("{:?}: {}", s.code(), s.message())),
                    }
                };
                let complete = got == Got::Complete;
                guard.disarm();
                log.upload(got);
                complete
            }
        };
        let out = stream::once(upload).flat_map(move |complete| -> BoxStream {
            if complete {
                Box::pin(Download::new(data.clone(), log.clone()).map(|b| Ok(b.to_vec())))
            } else {
                Box::pin(stream::once(async {
                    Err(Status::data_loss("the upload failed"))
                }))
            }
        });
        Box::pin(async move {
            let mut rsp = Response::new(Box::pin(out) as BoxStream);
            rsp.metadata_mut()
                .insert("x-sha256", hex(&digest).parse().unwrap());
            Ok(rsp)
        })
    }
}

/// Records a cancelled upload unless disarmed.
struct Cancelled(Option<Arc<AppLog>>);

impl Cancelled {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Cancelled {
    fn drop(&mut self) {
        if let Some(log) = self.0.take() {
            log.upload(Got::Error("the call was cancelled".into()));
        }
    }
}

pub(super) async fn serve(
    req: http::Request<hyper::body::Incoming>,
    log: Arc<AppLog>,
) -> http::Response<tonic::body::Body> {
    tonic::server::Grpc::new(Raw)
        .streaming(Transfers(log), req)
        .await
}

pub(super) async fn run(addr: SocketAddr, t: Transfer) -> ClientEnd {
    let channel = match tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
    {
        Ok(c) => c,
        Err(e) => return ClientEnd::error(format!("connect: {e:?}"), super::is_reset(&e)),
    };
    let mut client = tonic::client::Grpc::new(channel);
    if let Err(e) = client.ready().await {
        return ClientEnd::error(format!("ready: {e:?}"), super::is_reset(&e));
    }
    let (up, up_digest) = payload(t.up);
    let mut req = Request::new(super::http::chunks(up).map(|b| b.to_vec()));
    req.metadata_mut()
        .insert("x-sha256", hex(&up_digest).parse().unwrap());
    req.metadata_mut()
        .insert("x-down", t.down.to_string().parse().unwrap());
    let path = http::uri::PathAndQuery::from_static(PATH);
    let rsp = match client.streaming(req, path, Raw).await {
        Ok(r) => r,
        Err(s) => return ClientEnd::error(format!("{:?}: {}", s.code(), s.message()), false),
    };
    let expected = rsp
        .metadata()
        .get("x-sha256")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut incoming = rsp.into_inner();
    let mut d = Digesting::default();
    loop {
        match incoming.message().await {
            Ok(Some(m)) => d.update(&m),
            Ok(None) => break,
            Err(s) => {
                return ClientEnd::error(format!("{:?}: {}", s.code(), s.message()), false);
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
