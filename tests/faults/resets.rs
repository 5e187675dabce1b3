//! A peer resets mid-request or mid-response, on either side of the
//! proxy: the client (its relay resets after so many bytes) or the
//! application (likewise). The party that did not fail must see an error
//! (a tunnel, or an HTTP/1.0 body that ends with the connection: a TCP
//! reset), never a clean end; the transfer's bytes that did complete are
//! checked; and the proxy serves the next transfer.

use crate::{
    Path, per_kind,
    traffic::{self, ClientEnd, Got, Kind, Transfer},
};
use linnet_app::OrigDst;
use linnet_test_support::{
    fault::{Dir, End, FaultProxy},
    http::pattern,
    proxy::Proxy,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// The next transfer through the same proxy completes.
async fn recovers(path: &Path, kind: Kind) {
    let t = Transfer {
        up: 100 * KIB,
        down: 100 * KIB,
    };
    let end = traffic::run(kind, path.entry(), t).await;
    assert_eq!(end.got, Got::Complete, "{kind:?}: the next transfer failed");
}

/// What the client saw of a transfer the fault broke: an error; through
/// a tunnel, a reset.
fn client_saw_an_error(kind: Kind, end: &traffic::ClientEnd) {
    assert!(end.got.is_error(), "{kind:?}: the client saw {:?}", end.got);
    if kind.is_tunnel() {
        assert!(
            end.reset,
            "{kind:?}: the client saw {:?}, not a reset",
            end.got
        );
    }
}

async fn app_resets_mid_response(kind: Kind) {
    let path = Path::start(kind).await;
    path.app_tap.reset_after(Dir::Down, 256 * KIB as u64);
    // A tunnel's upload is still being written when the reset comes: a
    // write to the application may be what learns of it, and the read
    // beside it then sees a plain end of stream, which must not reach the
    // client as a FIN.
    let t = Transfer {
        up: 4 * MIB,
        down: 4 * MIB,
    };
    let end = traffic::run(kind, path.entry(), t).await;
    assert!(path.app_tap.fired(), "the fault never fired");
    client_saw_an_error(kind, &end);
    // HTTP: the request had completed before the response began. A
    // tunnel carries both at once: the reset may cut the upload too, but
    // never so that it looks complete.
    let uploads = path.app.wait_uploads(1).await;
    if kind.is_tunnel() {
        assert!(!matches!(uploads[0], Got::Corrupt(_)), "{uploads:?}");
    } else {
        assert_eq!(uploads, vec![Got::Complete]);
    }
    if kind.is_tunnel() || kind == Kind::Http1 {
        // The proxy reset the client's connection: a tunnel's, and an
        // HTTP/1 connection whose response body failed (the client's
        // parser might otherwise take what came for the whole).
        let ended = path.client_tap.wait_ended(1).await;
        assert_eq!(ended[0].target, Some(End::Reset), "{ended:?}");
    }
    recovers(&path, kind).await;
}
per_kind!(app_resets_mid_response);

/// Starts `t`, lets it get 128 KiB up through `tap` and reach the
/// application, then resets it 16 KiB later: mid-request.
async fn reset_mid_request(path: &Path, tap: &FaultProxy, kind: Kind, t: Transfer) -> ClientEnd {
    tap.pause_after(Dir::Up, 128 * KIB as u64);
    let transfer = tokio::spawn(traffic::run(kind, path.entry(), t));
    path.app.wait_started(1).await;
    linnet_test_support::eventually(
        "128 KiB of the request through",
        std::time::Duration::from_secs(10),
        || async { tap.fired().then_some(()) },
    )
    .await;
    tap.reset_after(Dir::Up, 16 * KIB as u64);
    tap.resume(Dir::Up);
    transfer.await.unwrap()
}

async fn app_resets_mid_request(kind: Kind) {
    let path = Path::start(kind).await;
    let t = Transfer {
        up: 4 * MIB,
        down: 64 * KIB,
    };
    if kind.is_tunnel() {
        // A tunnel carries both directions at once: the application's
        // reply is held after its first KiB (past a WebSocket's
        // handshake), so that the client is still reading when the reset
        // comes, and has something left to fail.
        path.app_tap.stall_after(Dir::Down, KIB as u64);
    }
    let end = reset_mid_request(&path, &path.app_tap, kind, t).await;
    assert!(path.app_tap.fired(), "the fault never fired");
    client_saw_an_error(kind, &end);
    let uploads = path.app.wait_uploads(1).await;
    assert!(uploads[0].is_error(), "the application saw {uploads:?}");
    if kind.is_tunnel() {
        // The proxy reset the client's connection, with no FIN first.
        let ended = path.client_tap.wait_ended(1).await;
        assert_eq!(ended[0].target, Some(End::Reset), "{ended:?}");
        path.app_tap.unstall(Dir::Down);
    }
    recovers(&path, kind).await;
}
per_kind!(app_resets_mid_request);

async fn client_resets_mid_request(kind: Kind) {
    let path = Path::start(kind).await;
    // A tunnel's download is still being written when the reset comes
    // (see `app_resets_mid_response`).
    let t = Transfer {
        up: 4 * MIB,
        down: 4 * MIB,
    };
    let end = reset_mid_request(&path, &path.client_tap, kind, t).await;
    assert!(path.client_tap.fired(), "the fault never fired");
    assert!(end.got.is_error(), "the client saw {:?}", end.got);
    // The application saw its request fail, not end.
    let uploads = path.app.wait_uploads(1).await;
    assert!(uploads[0].is_error(), "the application saw {uploads:?}");
    if kind.is_tunnel() {
        // The proxy reset its connection to the application.
        let ended = path.app_tap.wait_ended(1).await;
        assert_eq!(ended[0].client, Some(End::Reset), "{ended:?}");
    }
    recovers(&path, kind).await;
}
per_kind!(client_resets_mid_request);

async fn client_resets_mid_response(kind: Kind) {
    let path = Path::start(kind).await;
    path.client_tap.reset_after(Dir::Down, 256 * KIB as u64);
    let t = Transfer {
        up: 64 * KIB,
        down: 32 * MIB,
    };
    let end = traffic::run(kind, path.entry(), t).await;
    assert!(path.client_tap.fired(), "the fault never fired");
    assert!(end.got.is_error(), "the client saw {:?}", end.got);
    let uploads = path.app.wait_uploads(1).await;
    if kind.is_tunnel() {
        // Both directions run at once: the reset may cut the upload too.
        assert!(!matches!(uploads[0], Got::Corrupt(_)), "{uploads:?}");
    } else {
        assert_eq!(uploads, vec![Got::Complete]);
    }
    // The application's response was cut off, not taken whole.
    let downloads = path.app.wait_downloads(1).await;
    assert!(downloads[0].is_error(), "the application saw {downloads:?}");
    if kind.is_tunnel() {
        // The proxy passed on the client's FIN after its complete upload,
        // then reset the connection whose download failed.
        let ended = path.app_tap.wait_ended(1).await;
        assert!(ended[0].client_reset, "{ended:?}");
    }
    recovers(&path, kind).await;
}
per_kind!(client_resets_mid_response);

/// An application answering in HTTP/1.0 style: no length, the body ends
/// when it closes (`n` bytes of [`pattern`]).
async fn close_delimited_app(n: usize) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => head.extend_from_slice(&b[..k]),
                    }
                }
                let _ = s.write_all(b"HTTP/1.0 200 OK\r\nx-app: yes\r\n\r\n").await;
                let _ = s.write_all(&pattern(n)).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// An HTTP/1.0 request; the response up to the end of the connection, or
/// the error that ended it.
async fn http10_get(addr: std::net::SocketAddr) -> std::io::Result<Vec<u8>> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /close HTTP/1.0\r\nhost: app.test\r\n\r\n")
        .await?;
    let mut all = Vec::new();
    s.read_to_end(&mut all).await?;
    Ok(all)
}

/// A close-delimited response body: the client can only tell a complete
/// one from a cut one by how the connection ends, so the proxy passes on
/// a complete one with a FIN and a failed one with a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_resets_mid_close_delimited_response() {
    let n = 1024 * 1024;
    let app = close_delimited_app(n).await;
    let app_tap = FaultProxy::start_with(app, Some(crate::SMALL_BUFFER)).await;
    let proxy = Proxy::start(OrigDst::Fixed(app_tap.addr), &[]).await;

    let whole = http10_get(proxy.outbound)
        .await
        .expect("a complete response");
    let body = whole
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| &whole[i + 4..])
        .expect("a response head");
    assert!(whole.starts_with(b"HTTP/1."), "{:?}", &whole[..20]);
    assert!(body == &pattern(n)[..], "{} body bytes of {n}", body.len());

    app_tap.reset_after(Dir::Down, 256 * KIB as u64);
    match http10_get(proxy.outbound).await {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Ok(cut) => panic!("a cut body of {} bytes ended cleanly", cut.len()),
    }
    assert!(app_tap.fired());
}
