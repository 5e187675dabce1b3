//! The limits that keep the proxy bounded, each hit and counted, and the
//! rule that a stream failing on one side is reset on the other: tunnels
//! and close-delimited bodies included, and tunnels at shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use linnet_app::OrigDst;
use linnet_test_support::{eventually, metrics::Scrape, proxy::Proxy};
use std::{io, net::SocketAddr, time::Duration};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

const WAIT: Duration = Duration::from_secs(20);

/// A backend that runs `script` on every connection it accepts.
async fn backend<F, Fut>(script: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(script(stream));
        }
    });
    addr
}

/// Reads until the peer ends the stream: `Ok` with everything read for a
/// clean end (FIN), the error for a reset.
async fn read_to_end(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
            Err(_) => panic!("the proxy neither ended nor reset the stream"),
            Ok(Ok(0)) => return Ok(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return Err(e),
        }
    }
}

fn reset(stream: TcpStream) {
    linnet_transport::reset_on_close(&stream);
    drop(stream);
}

/// Reads a request head (up to the blank line).
async fn read_head(stream: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut b).await.unwrap() == 0 {
            break;
        }
        head.push(b[0]);
    }
    head
}

async fn counter(proxy: &Proxy, name: &str, labels: &[(&str, &str)]) -> f64 {
    let m: Scrape = proxy.metrics().await;
    m.sum(name, labels)
}

#[tokio::test]
async fn connections_beyond_the_listener_limit_are_reset_and_counted() {
    // An echo server.
    let app = backend(|mut s| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    })
    .await;
    let proxy = Proxy::start(
        OrigDst::Fixed(app),
        &[
            ("LINNET_OUTBOUND_MAX_CONNECTIONS", "2"),
            (
                "LINNET_OUTBOUND_PORTS_DISABLE_PROTOCOL_DETECTION",
                "1-65535",
            ),
        ],
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(proxy.outbound).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        c.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"ping");
        held.push(c);
    }
    // The third is reset at once, without reaching the application.
    let mut third = TcpStream::connect(proxy.outbound).await.unwrap();
    let err = read_to_end(&mut third).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    assert_eq!(
        counter(
            &proxy,
            "tcp_connection_limit_total",
            &[("direction", "outbound")]
        )
        .await,
        1.0
    );
    // The admin server is not behind the limit, and the inbound listener
    // has its own.
    let inbound = TcpStream::connect(proxy.inbound).await.unwrap();
    drop(inbound);
    // Once one closes, a new connection is served again.
    drop(held.pop());
    eventually("a connection is served after one closed", WAIT, || async {
        let mut c = TcpStream::connect(proxy.outbound).await.ok()?;
        c.write_all(b"pong").await.ok()?;
        let mut b = [0u8; 4];
        c.read_exact(&mut b).await.ok()?;
        (&b == b"pong").then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_idle_opaque_connection_is_reset_and_counted() {
    let app = backend(|mut s| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    })
    .await;
    let proxy = Proxy::start(
        OrigDst::Fixed(app),
        &[
            ("LINNET_TCP_IDLE_TIMEOUT", "300ms"),
            (
                "LINNET_OUTBOUND_PORTS_DISABLE_PROTOCOL_DETECTION",
                "1-65535",
            ),
        ],
    )
    .await;
    let mut c = TcpStream::connect(proxy.outbound).await.unwrap();
    c.write_all(b"hello").await.unwrap();
    let mut b = [0u8; 5];
    c.read_exact(&mut b).await.unwrap();
    // Then silence: the proxy resets it (a FIN would look like the
    // application's own close).
    let err = read_to_end(&mut c).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    assert_eq!(
        counter(
            &proxy,
            "idle_timeout_total",
            &[("direction", "outbound"), ("kind", "tcp")]
        )
        .await,
        1.0
    );
}

/// An application that accepts an HTTP/1 upgrade, echoes `hello`, then
/// does `after` with the connection.
async fn upgrading_app<F>(after: F) -> SocketAddr
where
    F: Fn(TcpStream) + Copy + Send + Sync + 'static,
{
    backend(move |mut s| async move {
        read_head(&mut s).await;
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: linnet-test\r\n\r\n")
            .await
            .unwrap();
        let mut b = [0u8; 5];
        s.read_exact(&mut b).await.unwrap();
        s.write_all(&b).await.unwrap();
        after(s);
    })
    .await
}

/// Opens a tunnel through `proxy` and checks it carries bytes.
async fn open_tunnel(proxy: SocketAddr) -> TcpStream {
    let mut c = TcpStream::connect(proxy).await.unwrap();
    c.write_all(
        b"GET /chat HTTP/1.1\r\nhost: app\r\nconnection: upgrade\r\nupgrade: linnet-test\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_head(&mut c).await;
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    c.write_all(b"hello").await.unwrap();
    let mut b = [0u8; 5];
    c.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"hello");
    c
}

#[tokio::test]
async fn a_tunnel_whose_target_fails_is_reset_not_closed() {
    let app = upgrading_app(reset).await;
    let proxy = Proxy::start(OrigDst::Fixed(app), &[]).await;
    let mut c = open_tunnel(proxy.outbound).await;
    let err = read_to_end(&mut c).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    assert_eq!(
        counter(
            &proxy,
            "tunnel_close_total",
            &[("direction", "outbound"), ("reason", "target_failed")]
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn a_tunnel_whose_target_closes_is_closed_cleanly() {
    let app = upgrading_app(drop).await;
    let proxy = Proxy::start(OrigDst::Fixed(app), &[]).await;
    let mut c = open_tunnel(proxy.outbound).await;
    // The application's FIN reaches the client as a FIN...
    assert_eq!(read_to_end(&mut c).await.unwrap(), b"");
    // ...and the client's own end completes the tunnel.
    c.shutdown().await.unwrap();
    eventually("the tunnel is counted as clean", WAIT, || async {
        let n = counter(
            &proxy,
            "tunnel_close_total",
            &[("direction", "outbound"), ("reason", "clean")],
        )
        .await;
        (n == 1.0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_tunnel_whose_client_fails_resets_the_target() {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<io::ErrorKind>();
    let app = backend(move |mut s| {
        let tx = tx.clone();
        async move {
            read_head(&mut s).await;
            s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: linnet-test\r\n\r\n")
                .await
                .unwrap();
            let mut b = [0u8; 5];
            s.read_exact(&mut b).await.unwrap();
            s.write_all(&b).await.unwrap();
            let end = match read_to_end(&mut s).await {
                Ok(_) => io::ErrorKind::UnexpectedEof,
                Err(e) => e.kind(),
            };
            let _ = tx.send(end);
        }
    })
    .await;
    let proxy = Proxy::start(OrigDst::Fixed(app), &[]).await;
    let c = open_tunnel(proxy.outbound).await;
    reset(c);
    let mut rx = rx;
    let end = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(end, io::ErrorKind::ConnectionReset);
    assert_eq!(
        counter(
            &proxy,
            "tunnel_close_total",
            &[("direction", "outbound"), ("reason", "client_failed")]
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn an_idle_tunnel_is_reset_and_counted() {
    let app = upgrading_app(|s| {
        // Held open, silent.
        tokio::spawn(async move {
            let mut s = s;
            let _ = read_to_end(&mut s).await;
        });
    })
    .await;
    let proxy = Proxy::start(OrigDst::Fixed(app), &[("LINNET_TCP_IDLE_TIMEOUT", "300ms")]).await;
    let mut c = open_tunnel(proxy.outbound).await;
    let err = read_to_end(&mut c).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum(
            "tunnel_close_total",
            &[("direction", "outbound"), ("reason", "idle")]
        ),
        1.0
    );
    assert_eq!(
        m.sum(
            "idle_timeout_total",
            &[("direction", "outbound"), ("kind", "tunnel")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_tunnel_open_at_the_end_of_the_grace_period_is_reset() {
    let app = upgrading_app(|s| {
        tokio::spawn(async move {
            let mut s = s;
            let _ = read_to_end(&mut s).await;
        });
    })
    .await;
    let mut proxy = Proxy::start(
        OrigDst::Fixed(app),
        &[("LINNET_SHUTDOWN_GRACE_PERIOD", "500ms")],
    )
    .await;
    let mut c = open_tunnel(proxy.outbound).await;
    proxy.shutdown();
    // The tunnel holds the shutdown open until the grace period ends...
    let drained = proxy.join().await;
    assert!(
        matches!(drained, linnet_app::Drained::Forced { .. }),
        "{drained:?}"
    );
    // ...then it is reset, not closed as if it had ended.
    let err = read_to_end(&mut c).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn a_close_delimited_response_whose_target_fails_is_reset() {
    // HTTP/1.0: the body ends when the connection closes; the target
    // fails midway.
    let app = backend(|mut s| async move {
        read_head(&mut s).await;
        s.write_all(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nthe first half")
            .await
            .unwrap();
        s.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        reset(s);
    })
    .await;
    let proxy = Proxy::start(OrigDst::Fixed(app), &[]).await;
    let mut c = TcpStream::connect(proxy.outbound).await.unwrap();
    // An HTTP/1.0 client: the proxy's answer is close-delimited too.
    c.write_all(b"GET / HTTP/1.0\r\nhost: app\r\n\r\n")
        .await
        .unwrap();
    let err = read_to_end(&mut c).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn a_body_that_stalls_fails_and_is_counted() {
    // The target sends half a body with a length, then nothing.
    let app = backend(|mut s| async move {
        read_head(&mut s).await;
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly some")
            .await
            .unwrap();
        let _ = read_to_end(&mut s).await;
    })
    .await;
    let proxy = Proxy::start(
        OrigDst::Fixed(app),
        &[("LINNET_HTTP_BODY_IDLE_TIMEOUT", "300ms")],
    )
    .await;
    let mut c = TcpStream::connect(proxy.outbound).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nhost: app\r\n\r\n")
        .await
        .unwrap();
    let err = read_to_end(&mut c).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum(
            "idle_timeout_total",
            &[("direction", "outbound"), ("kind", "http_body")]
        ),
        1.0,
        "{}",
        m.0
    );
    assert_eq!(
        m.sum("response_total", &[("error", "response_body_idle")]),
        1.0
    );
}

#[tokio::test]
async fn a_request_body_that_stalls_is_answered_408() {
    // The target waits for the whole body before answering.
    let app = backend(|mut s| async move {
        let _ = read_to_end(&mut s).await;
    })
    .await;
    let proxy = Proxy::start(
        OrigDst::Fixed(app),
        &[("LINNET_HTTP_BODY_IDLE_TIMEOUT", "300ms")],
    )
    .await;
    let mut c = TcpStream::connect(proxy.outbound).await.unwrap();
    c.write_all(b"POST / HTTP/1.1\r\nhost: app\r\ncontent-length: 100\r\n\r\nten bytes.")
        .await
        .unwrap();
    let head = read_head(&mut c).await;
    assert!(head.starts_with(b"HTTP/1.1 408"), "{head:?}");
}

#[tokio::test]
async fn an_idle_http_connection_is_closed_gracefully_and_counted() {
    let app = backend(|mut s| async move {
        loop {
            let head = read_head(&mut s).await;
            if head.is_empty() {
                return;
            }
            if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .is_err()
            {
                return;
            }
        }
    })
    .await;
    let proxy = Proxy::start(
        OrigDst::Fixed(app),
        &[("LINNET_HTTP_IDLE_TIMEOUT", "300ms")],
    )
    .await;
    let mut c = TcpStream::connect(proxy.outbound).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nhost: app\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut c).await;
    assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
    let mut ok = [0u8; 2];
    c.read_exact(&mut ok).await.unwrap();
    // Then nothing: the proxy closes the connection, cleanly (nothing was
    // in flight).
    assert_eq!(read_to_end(&mut c).await.unwrap(), b"");
    assert_eq!(
        counter(
            &proxy,
            "idle_timeout_total",
            &[("direction", "outbound"), ("kind", "http_connection")]
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn http2_clients_are_told_the_stream_limit_and_held_to_it() {
    // The application (HTTP/2, as the proxy forwards HTTP/2) holds every
    // request until told to answer.
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let started = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let app = {
        let started = started.clone();
        backend(move |s| {
            let release = release_rx.clone();
            let started = started.clone();
            async move {
                let service = hyper::service::service_fn(move |_req| {
                    let mut release = release.clone();
                    let started = started.clone();
                    async move {
                        started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let _ = release.wait_for(|r| *r).await;
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                        ))
                    }
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(s), service)
                        .await;
            }
        })
        .await
    };
    let proxy = Proxy::start(
        OrigDst::Fixed(app),
        &[("LINNET_HTTP2_MAX_CONCURRENT_STREAMS", "2")],
    )
    .await;
    let tcp = TcpStream::connect(proxy.outbound).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let request = || {
        http::Request::builder()
            .uri("http://app/")
            .body(())
            .unwrap()
    };
    // The first stream carries the server's settings back.
    let (first, _) = client.send_request(request(), true).unwrap();
    eventually("the proxy's settings arrive", WAIT, || async {
        (client.current_max_send_streams() == 2).then_some(())
    })
    .await;
    // A client that ignores the limit: a third stream at once is refused
    // by the proxy, and only two reach the application.
    let mut client = client.ready().await.unwrap();
    let (second, _) = client.send_request(request(), true).unwrap();
    eventually("two requests reach the application", WAIT, || async {
        (started.load(std::sync::atomic::Ordering::SeqCst) == 2).then_some(())
    })
    .await;
    // A third waits for a free stream: it never reaches the application
    // while two are open...
    let third = tokio::spawn({
        let client = client.clone();
        async move {
            let mut c = client.ready().await.unwrap();
            let (rsp, _) = c.send_request(request(), true).unwrap();
            rsp.await.unwrap().status()
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(started.load(std::sync::atomic::Ordering::SeqCst), 2);
    // ...and goes once they end.
    release_tx.send(true).unwrap();
    for rsp in [first, second] {
        assert_eq!(rsp.await.unwrap().status(), 200);
    }
    assert_eq!(third.await.unwrap(), 200);
    assert_eq!(started.load(std::sync::atomic::Ordering::SeqCst), 3);
}
