//! Protocol detection in front of the TCP stack: whatever is detected, the
//! bytes arrive exactly; server-speaks-first protocols work; TLS is passed
//! through and labelled with its SNI.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use linnet_app::OrigDst;
use linnet_test_support::{eventually, proxy::Proxy};
use std::time::Duration;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// A server that records everything it receives until EOF, after sending
/// `banner` first; returns the received bytes.
async fn recording_server(
    banner: &'static [u8],
) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(banner).await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        s.shutdown().await.unwrap();
        got
    });
    (addr, task)
}

#[tokio::test]
async fn server_speaks_first_after_the_detect_timeout() {
    let (addr, server) = recording_server(b"220 mail.example ESMTP\r\n").await;
    let proxy = Proxy::start(
        OrigDst::Fixed(addr),
        &[("LINNET_OUTBOUND_DETECT_TIMEOUT", "200ms")],
    )
    .await;
    let mut c = TcpStream::connect(proxy.outbound).await.unwrap();
    // The client waits for the banner before saying anything.
    let mut banner = [0u8; 24];
    c.read_exact(&mut banner).await.unwrap();
    assert_eq!(&banner, b"220 mail.example ESMTP\r\n");
    c.write_all(b"EHLO client\r\n").await.unwrap();
    c.shutdown().await.unwrap();
    assert_eq!(server.await.unwrap(), b"EHLO client\r\n");
    let m = proxy.metrics().await;
    let labels = [("protocol", "opaque"), ("reason", "timeout")];
    assert_eq!(m.sum("protocol_detect_total", &labels), 1.0, "{}", m.0);
}

#[tokio::test]
async fn listed_ports_skip_detection() {
    let (addr, server) = recording_server(b"+OK ready\r\n").await;
    let port = addr.port().to_string();
    // Detection would wait a minute; the port skips it.
    let proxy = Proxy::start(
        OrigDst::Fixed(addr),
        &[
            ("LINNET_OUTBOUND_DETECT_TIMEOUT", "60s"),
            ("LINNET_OUTBOUND_PORTS_DISABLE_PROTOCOL_DETECTION", &port),
        ],
    )
    .await;
    let mut c = TcpStream::connect(proxy.outbound).await.unwrap();
    let mut banner = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(20), c.read_exact(&mut banner))
        .await
        .expect("the banner arrives without waiting for detection")
        .unwrap();
    assert_eq!(&banner, b"+OK ready\r\n");
    drop(c);
    server.await.unwrap();
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum("protocol_detect_total", &[("reason", "skipped")]),
        1.0,
        "{}",
        m.0
    );
}

#[tokio::test]
async fn tls_passes_through_labelled_with_its_sni() {
    let (addr, server) = recording_server(b"").await;
    let proxy = Proxy::start(OrigDst::Fixed(addr), &[]).await;
    let hello = linnet_detect::test_util::client_hello(Some("api.example.com"), 600);
    let mut c = TcpStream::connect(proxy.inbound).await.unwrap();
    // Sent in two pieces, the second after a pause, as a slow client might.
    c.write_all(&hello[..100]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.write_all(&hello[100..]).await.unwrap();
    c.write_all(b"more bytes after the hello").await.unwrap();
    c.shutdown().await.unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).await.unwrap();
    let mut expected = hello.clone();
    expected.extend_from_slice(b"more bytes after the hello");
    assert!(
        server.await.unwrap() == expected,
        "bytes changed in passing"
    );

    let m = eventually("closed", Duration::from_secs(5), || async {
        let m = proxy.metrics().await;
        (m.sum("tcp_open_connections", &[]) == 0.0).then_some(m)
    })
    .await;
    let labels = [
        ("direction", "inbound"),
        ("peer", "src"),
        ("tls", "opaque"),
        ("sni", "api.example.com"),
    ];
    assert_eq!(m.sum("tcp_open_total", &labels), 1.0, "{}", m.0);
    assert_eq!(m.sum("protocol_detect_total", &[("protocol", "tls")]), 1.0);
}

#[tokio::test]
async fn a_client_that_resets_during_detection_is_counted() {
    let (addr, _server) = recording_server(b"").await;
    let proxy = Proxy::start(OrigDst::Fixed(addr), &[]).await;
    let mut c = TcpStream::connect(proxy.outbound).await.unwrap();
    c.write_all(b"GET /par").await.unwrap();
    socket2::SockRef::from(&c)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(c);
    let admin = proxy.admin;
    eventually("close counted", Duration::from_secs(5), || async {
        let m = linnet_test_support::metrics::scrape(admin).await;
        (m.sum(
            "tcp_close_total",
            &[("peer", "src"), ("error", "io"), ("errno", "ECONNRESET")],
        ) == 1.0)
            .then_some(())
    })
    .await;
}
