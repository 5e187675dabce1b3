//! Opaque TCP through the proxy: byte-exact, half-close, failures, loops,
//! shutdown. The whole proxy runs in-process with an injected original
//! destination, so no iptables is needed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use linnet_app::{Drained, OrigDst};
use linnet_test_support::{
    eventually,
    proxy::Proxy,
    tcp::{ExchangeServer, black_hole, exchange, random_payload, refused_addr},
};
use std::{
    io,
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::Duration,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const MIB: usize = 1024 * 1024;

/// First bytes that match no protocol, so detection decides at once.
const OPAQUE_HELLO: &[u8] = b"\x00opaque";

/// Reads until EOF or error; `Err` carries the error kind.
async fn read_all(s: &mut TcpStream) -> Result<Vec<u8>, io::ErrorKind> {
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.map_err(|e| e.kind())?;
    Ok(buf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_64_connections_byte_exact_both_directions() {
    let server = ExchangeServer::start(4 * MIB).await;
    let proxy = Proxy::start(OrigDst::Fixed(server.addr), &[]).await;
    let mut tasks = Vec::new();
    for i in 0..64 {
        // Half through each listener.
        let via = if i % 2 == 0 {
            proxy.outbound
        } else {
            proxy.inbound
        };
        tasks.push(tokio::spawn(async move {
            let len = (rand::random::<u64>() as usize) % (4 * MIB + 1);
            let payload = random_payload(len);
            let stream = TcpStream::connect(via).await.unwrap();
            exchange(stream, &payload).await
        }));
    }
    let mut failures = Vec::new();
    for t in tasks {
        if let Err(e) = t.await.unwrap() {
            failures.push(e.to_string());
        }
    }
    assert!(failures.is_empty(), "mismatches: {failures:?}");
    // And every client's bytes arrived intact at the server.
    server.stats().assert_completed(64).await;

    let target = server.addr.to_string();
    let m = eventually("all connections closed", Duration::from_secs(5), || async {
        let m = proxy.metrics().await;
        let open = m.sum("tcp_open_connections", &[]);
        (open == 0.0).then_some(m)
    })
    .await;
    for dir in ["inbound", "outbound"] {
        let l = [("direction", dir), ("target_addr", target.as_str())];
        assert_eq!(
            m.sum("tcp_open_total", &[l[0], l[1], ("peer", "src")]),
            32.0
        );
        assert_eq!(
            m.sum("tcp_open_total", &[l[0], l[1], ("peer", "dst")]),
            32.0
        );
        assert_eq!(m.sum("tcp_close_total", &[l[0], l[1], ("error", "")]), 64.0);
        // Every byte read from one side was written to the other.
        let src_read = m.sum("tcp_read_bytes_total", &[l[0], ("peer", "src")]);
        let dst_write = m.sum("tcp_write_bytes_total", &[l[0], ("peer", "dst")]);
        assert_eq!(src_read, dst_write);
        assert!(src_read > 0.0);
    }
}

#[tokio::test]
async fn half_close_keeps_the_reply_flowing() {
    // A server that reads the whole request to EOF, then answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let request = read_all(&mut s).await.unwrap();
        // The reply starts only after the client's FIN arrived.
        let reply: Vec<u8> = request
            .iter()
            .rev()
            .copied()
            .cycle()
            .take(3 * MIB)
            .collect();
        s.write_all(&reply).await.unwrap();
        s.shutdown().await.unwrap();
        // Then both close: the client's side reaches EOF.
        assert_eq!(read_all(&mut s).await.unwrap(), Vec::<u8>::new());
        reply
    });
    let proxy = Proxy::start(OrigDst::Fixed(addr), &[]).await;
    let mut client = TcpStream::connect(proxy.outbound).await.unwrap();
    let request = random_payload(100_000);
    client.write_all(&request).await.unwrap();
    client.shutdown().await.unwrap();
    let reply = read_all(&mut client).await.unwrap();
    let expected = server.await.unwrap();
    assert_eq!(reply.len(), expected.len());
    assert!(reply == expected, "reply corrupted");
    // Both sides closed, cleanly.
    let m = eventually("both sides closed", Duration::from_secs(5), || async {
        let m = proxy.metrics().await;
        (m.sum("tcp_open_connections", &[]) == 0.0).then_some(m)
    })
    .await;
    assert_eq!(m.sum("tcp_close_total", &[("error", "")]), 2.0, "{}", m.0);
    assert_eq!(m.sum("tcp_close_total", &[]), 2.0, "{}", m.0);
}

/// A lookup that sends the outbound listener's connections to `outbound`
/// and the inbound listener's to `inbound`; the outbound listener's
/// address is filled in once the proxy has started.
fn by_listener(outbound: SocketAddr, inbound: SocketAddr) -> (OrigDst, Arc<OnceLock<SocketAddr>>) {
    let cell = Arc::new(OnceLock::new());
    let lookup = OrigDst::from_fn({
        let cell = cell.clone();
        move |s| {
            let local = s.local_addr()?;
            Ok(if cell.get() == Some(&local) {
                outbound
            } else {
                inbound
            })
        }
    });
    (lookup, cell)
}

#[tokio::test]
async fn connect_refused_closes_the_client_and_is_counted() {
    // A port with nothing listening.
    let (_reserved, dead) = refused_addr();
    let server = ExchangeServer::start(1000).await;
    let (lookup, outbound) = by_listener(dead, server.addr);
    let proxy = Proxy::start(lookup, &[]).await;
    outbound.set(proxy.outbound).unwrap();
    let mut client = TcpStream::connect(proxy.outbound).await.unwrap();
    // Client bytes that are no known protocol end detection at once.
    client.write_all(OPAQUE_HELLO).await.unwrap();
    let result = tokio::time::timeout(Duration::from_secs(5), read_all(&mut client))
        .await
        .expect("the client's connection is closed promptly");
    // Reset, not a clean end: the client can tell the connection failed.
    assert_eq!(result, Err(io::ErrorKind::ConnectionReset));

    let m = proxy.metrics().await;
    let labels = [
        ("direction", "outbound"),
        ("peer", "src"),
        ("error", "connect_refused"),
        ("errno", "ECONNREFUSED"),
    ];
    assert_eq!(m.sum("tcp_close_total", &labels), 1.0, "{}", m.0);

    // The same proxy still serves others.
    let ok = exchange(TcpStream::connect(proxy.inbound).await.unwrap(), b"hello").await;
    assert!(ok.is_ok(), "{ok:?}");
    server.stats().assert_completed(1).await;
    let mut again = TcpStream::connect(proxy.outbound).await.unwrap();
    again.write_all(OPAQUE_HELLO).await.unwrap();
    assert_eq!(
        read_all(&mut again).await,
        Err(io::ErrorKind::ConnectionReset)
    );
}

#[tokio::test]
async fn connect_timeout_closes_the_client_and_is_counted() {
    let (hole, _fillers) = black_hole();
    let target = hole.local_addr().unwrap().as_socket().unwrap();
    let server = ExchangeServer::start(1000).await;
    let (lookup, outbound) = by_listener(target, server.addr);
    let proxy = Proxy::start(lookup, &[("LINNET_OUTBOUND_CONNECT_TIMEOUT", "300ms")]).await;
    outbound.set(proxy.outbound).unwrap();
    let mut client = TcpStream::connect(proxy.outbound).await.unwrap();
    client.write_all(OPAQUE_HELLO).await.unwrap();
    let result = tokio::time::timeout(Duration::from_secs(5), read_all(&mut client))
        .await
        .expect("the client's connection is closed after the connect timeout");
    assert_eq!(result, Err(io::ErrorKind::ConnectionReset));
    let m = proxy.metrics().await;
    let labels = [
        ("direction", "outbound"),
        ("peer", "src"),
        ("error", "connect_timeout"),
    ];
    assert_eq!(m.sum("tcp_close_total", &labels), 1.0, "{}", m.0);
    // The same proxy still serves others.
    let ok = exchange(TcpStream::connect(proxy.inbound).await.unwrap(), b"hello").await;
    assert!(ok.is_ok(), "{ok:?}");
    server.stats().assert_completed(1).await;
}

#[tokio::test]
async fn refuses_connections_to_itself() {
    // The lookup reports the listener's own address: a loop.
    let proxy = Proxy::start(OrigDst::from_fn(|s| s.local_addr()), &[]).await;
    for addr in [proxy.outbound, proxy.inbound] {
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(OPAQUE_HELLO).await.unwrap();
        assert_eq!(
            read_all(&mut client).await,
            Err(io::ErrorKind::ConnectionReset)
        );
    }
    let m = proxy.metrics().await;
    for dir in ["inbound", "outbound"] {
        let labels = [("direction", dir), ("peer", "src"), ("error", "loop")];
        assert_eq!(m.sum("tcp_close_total", &labels), 1.0, "{}", m.0);
    }
    // No connection to a target was attempted.
    assert_eq!(m.sum("tcp_open_total", &[("peer", "dst")]), 0.0);
}

#[tokio::test]
async fn target_reset_midstream_resets_the_client() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        // Wait for the client's first bytes: the proxy is then copying.
        let mut go = [0u8; 3];
        s.read_exact(&mut go).await.unwrap();
        s.write_all(b"partial").await.unwrap();
        // Abort with a RST.
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
    });
    let proxy = Proxy::start(OrigDst::Fixed(addr), &[]).await;
    let mut client = TcpStream::connect(proxy.outbound).await.unwrap();
    client.write_all(b"\x00go").await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    let end = loop {
        match client.read(&mut buf).await {
            Ok(0) => break Ok(()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break Err(e.kind()),
        }
    };
    // Never a clean EOF after a truncated stream.
    assert_eq!(end, Err(io::ErrorKind::ConnectionReset), "got {got:?}");
    let m = eventually("close counted", Duration::from_secs(5), || async {
        let m = proxy.metrics().await;
        (m.sum("tcp_open_connections", &[]) == 0.0).then_some(m)
    })
    .await;
    assert_eq!(
        m.sum("tcp_close_total", &[("peer", "dst"), ("error", "io")]),
        1.0,
        "{}",
        m.0
    );
    assert_eq!(
        m.sum(
            "tcp_close_total",
            &[("peer", "dst"), ("errno", "ECONNRESET")]
        ),
        1.0,
        "{}",
        m.0
    );
}

#[tokio::test]
async fn shutdown_lets_open_connections_finish_and_refuses_new_ones() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // An echo server.
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    let mut proxy = Proxy::start(
        OrigDst::Fixed(addr),
        &[("LINNET_SHUTDOWN_GRACE_PERIOD", "30s")],
    )
    .await;
    let mut client = TcpStream::connect(proxy.outbound).await.unwrap();
    client.write_all(b"\x00before").await.unwrap();
    let mut buf = [0u8; 7];
    client.read_exact(&mut buf).await.unwrap();

    proxy.shutdown();
    let admin = proxy.admin;
    eventually("readiness turns 503", Duration::from_secs(5), || async {
        let (status, _) = linnet_test_support::metrics::http(admin, "GET", "/ready", "").await;
        (status == 503).then_some(())
    })
    .await;
    // New connections are refused.
    let outbound = proxy.outbound;
    eventually("listener closed", Duration::from_secs(5), || async {
        TcpStream::connect(outbound).await.is_err().then_some(())
    })
    .await;
    // The open one still works, and completes.
    let payload = random_payload(MIB);
    client.write_all(&payload).await.unwrap();
    client.shutdown().await.unwrap();
    let echoed = read_all(&mut client).await.unwrap();
    assert!(echoed == payload, "echo corrupted during drain");
    assert_eq!(proxy.join().await, Drained::Clean);
}

#[tokio::test]
async fn grace_period_ends_with_a_reset() {
    // A target that never answers nor closes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let mut proxy = Proxy::start(
        OrigDst::Fixed(addr),
        &[("LINNET_SHUTDOWN_GRACE_PERIOD", "200ms")],
    )
    .await;
    let mut client = TcpStream::connect(proxy.outbound).await.unwrap();
    client.write_all(OPAQUE_HELLO).await.unwrap();
    let admin = proxy.admin;
    eventually("connection open", Duration::from_secs(5), || async {
        let m = linnet_test_support::metrics::scrape(admin).await;
        (m.sum("tcp_open_connections", &[("peer", "dst")]) == 1.0).then_some(())
    })
    .await;
    proxy.shutdown();
    assert_eq!(
        read_all(&mut client).await,
        Err(io::ErrorKind::ConnectionReset)
    );
    assert_eq!(proxy.join().await, Drained::Forced { remaining: 1 });
}

#[tokio::test]
async fn relays_over_ipv6() {
    let listener = tokio::net::TcpListener::bind("[::1]:0").await.unwrap();
    let server = ExchangeServer::start_on(listener, 200_000);
    let proxy = Proxy::start(
        OrigDst::Fixed(server.addr),
        &[("LINNET_OUTBOUND_LISTEN_ADDR", "[::1]:0")],
    )
    .await;
    assert!(proxy.outbound.is_ipv6());
    let payload = random_payload(300_000);
    let reply = exchange(TcpStream::connect(proxy.outbound).await.unwrap(), &payload).await;
    assert!(reply.is_ok(), "{reply:?}");
    server.stats().assert_completed(1).await;
    let m = proxy.metrics().await;
    let target = server.addr.to_string();
    assert_eq!(
        m.sum(
            "tcp_open_total",
            &[("peer", "dst"), ("target_addr", &target)]
        ),
        1.0,
        "{}",
        m.0
    );
}
