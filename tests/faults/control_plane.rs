//! The control plane killed, restarted, and answering garbage: traffic
//! keeps flowing on what the proxy last knew, and once the real control
//! plane is back, its answers are followed again.
//!
//! A proxy follows `linnet control` (Destination and OutboundPolicies)
//! for a service whose one endpoint serves HTTP/1.1, HTTP/2 and gRPC.
//! Then the control plane is killed, and in its place, on its address:
//! nothing; a listener that writes junk; an HTTP/2 server whose frames
//! are malformed; a gRPC server answering every call with a transient
//! error status; a gRPC server whose messages do not decode. Transfers of
//! each HTTP kind run throughout and must all complete at the endpoint
//! the proxy last knew. Finally the real control plane comes back naming
//! another endpoint, and traffic moves there.

use crate::traffic::{self, App, Got, Kind, Transfer};
use bytes::Bytes;
use futures_util::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use linnet_test_support::{control::ControlPlane, eventually, proxy::Proxy};
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

const VIP: &str = "10.96.13.1:80";
const KINDS: [Kind; 3] = [Kind::Http1, Kind::Http2, Kind::Grpc];
const T: Transfer = Transfer {
    up: 32 * 1024,
    down: 64 * 1024,
};

fn mesh(endpoint: SocketAddr) -> String {
    format!(
        "services:\n  web.test.svc.cluster.local:80:\n    addresses: [\"{VIP}\"]\n    endpoints:\n      - addr: \"{endpoint}\"\n"
    )
}

/// What stands in for the control plane while it is gone.
#[derive(Clone, Copy, Debug)]
enum Stand {
    Nothing,
    Junk,
    MalformedHttp2,
    GrpcErrors,
    UndecodableMessages,
}

/// Runs one transfer of each kind; all must complete.
async fn round(proxy: &Proxy) {
    for kind in KINDS {
        let end = traffic::run(kind, proxy.outbound, T).await;
        assert_eq!(end.got, Got::Complete, "{kind:?}");
    }
}

async fn control_plane_fails(stand: Stand) {
    let (first, second) = (App::start(Kind::Http1).await, App::start(Kind::Http1).await);
    let mut plane = ControlPlane::start(&mesh(first.addr)).await;
    let proxy = plane.policy_proxy(VIP.parse().unwrap()).await;
    eventually("traffic flows", Duration::from_secs(10), || async {
        let end = traffic::run(Kind::Http1, proxy.outbound, T).await;
        (end.got == Got::Complete).then_some(())
    })
    .await;
    round(&proxy).await;

    plane.kill();
    // From here on, the file names the second endpoint: nothing the proxy
    // hears until the real control plane is back may move traffic there.
    plane.write(&mesh(second.addr));
    let contacts = Arc::new(AtomicUsize::new(0));
    let stand_in = match stand {
        Stand::Nothing => None,
        _ => Some(tokio::spawn(serve(
            bind(plane.addr).await,
            stand,
            contacts.clone(),
        ))),
    };
    // Traffic flows while the proxy tries the control plane again and
    // again (its backoff starts at 100ms).
    let mut rounds = 0;
    while rounds < 5 || (stand_in.is_some() && contacts.load(Ordering::SeqCst) < 3) {
        round(&proxy).await;
        rounds += 1;
        assert!(
            rounds < 1000,
            "the proxy never came back to the control plane"
        );
        // Pacing, not a wait: the rounds spread over the proxy's retries.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        second.uploads().is_empty(),
        "traffic moved without the control plane"
    );
    let served = first.uploads().len();
    assert!(
        served > 3 * (rounds + 1),
        "{served} transfers at the endpoint"
    );
    if let Some(s) = stand_in {
        s.abort();
        let _ = s.await;
    }

    // The real control plane is back, naming the second endpoint.
    plane.restart().await;
    eventually(
        "traffic moves to the second endpoint",
        Duration::from_secs(20),
        || async {
            let end = traffic::run(Kind::Http1, proxy.outbound, T).await;
            assert_eq!(end.got, Got::Complete);
            (!second.uploads().is_empty()).then_some(())
        },
    )
    .await;
    let before = first.uploads().len();
    round(&proxy).await;
    assert_eq!(
        first.uploads().len(),
        before,
        "traffic still went to the old endpoint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_and_restarted() {
    control_plane_fails(Stand::Nothing).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answering_junk() {
    control_plane_fails(Stand::Junk).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answering_malformed_http2() {
    control_plane_fails(Stand::MalformedHttp2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answering_grpc_errors() {
    control_plane_fails(Stand::GrpcErrors).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answering_undecodable_messages() {
    control_plane_fails(Stand::UndecodableMessages).await;
}

/// Binds `addr` once the killed control plane has let it go.
async fn bind(addr: SocketAddr) -> TcpListener {
    eventually(
        "the control plane's port",
        Duration::from_secs(5),
        || async { TcpListener::bind(addr).await.ok() },
    )
    .await
}

/// Serves as `stand` until aborted; its connections go with it, as a
/// killed server's would.
async fn serve(listener: TcpListener, stand: Stand, contacts: Arc<AtomicUsize>) {
    let mut conns = tokio::task::JoinSet::new();
    while let Ok((mut s, _)) = listener.accept().await {
        let contacts = contacts.clone();
        conns.spawn(async move {
            match stand {
                Stand::Nothing => {}
                Stand::Junk => {
                    contacts.fetch_add(1, Ordering::SeqCst);
                    let _ = s
                        .write_all(&linnet_test_support::tcp::random_payload(4096))
                        .await;
                    let mut sink = [0u8; 4096];
                    let _ = s.read(&mut sink).await;
                }
                Stand::MalformedHttp2 => {
                    contacts.fetch_add(1, Ordering::SeqCst);
                    // Take the client's preface, then answer with a valid
                    // (empty) SETTINGS frame followed by a DATA frame on
                    // stream 0, a HEADERS frame whose header block is not
                    // HPACK, and a frame longer than any allowed.
                    let mut preface = [0u8; 24];
                    let _ = s.read_exact(&mut preface).await;
                    let mut frames = Vec::new();
                    frames.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
                    frames.extend_from_slice(&[0, 0, 4, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]);
                    frames.extend_from_slice(&[0, 0, 4, 1, 4, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]);
                    frames.extend_from_slice(&[0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 3]);
                    let _ = s.write_all(&frames).await;
                    let mut sink = [0u8; 4096];
                    while let Ok(1..) = s.read(&mut sink).await {}
                }
                Stand::GrpcErrors | Stand::UndecodableMessages => {
                    let service = hyper::service::service_fn(move |_req| {
                        let n = contacts.fetch_add(1, Ordering::SeqCst);
                        async move { Ok::<_, std::convert::Infallible>(grpc_answer(stand, n)) }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), service)
                        .await;
                }
            }
        });
    }
}

/// A gRPC answer that is no answer: a transient error status (trailers
/// only), or a message whose bytes are not protobuf (field 1 with wire
/// type 7, which does not exist) on a stream that stays open.
fn grpc_answer(stand: Stand, n: usize) -> http::Response<tonic::body::Body> {
    let mut rsp = http::Response::builder()
        .status(200)
        .header("content-type", "application/grpc");
    let body = match stand {
        Stand::GrpcErrors => {
            // UNAVAILABLE, INTERNAL, UNKNOWN, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED.
            let code = [14, 13, 2, 4, 8][n % 5];
            rsp = rsp
                .header("grpc-status", code.to_string())
                .header("grpc-message", "standing in");
            tonic::body::Body::empty()
        }
        _ => {
            const MESSAGE: [u8; 7] = [0, 0, 0, 0, 2, 0x0f, 0x00];
            let frames = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(
                hyper::body::Frame::data(Bytes::from_static(&MESSAGE)),
            )])
            .chain(futures_util::stream::pending());
            tonic::body::Body::new(http_body_util::StreamBody::new(frames))
        }
    };
    rsp.body(body).unwrap()
}
