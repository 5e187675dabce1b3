use super::*;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, duplex};

use crate::test_util::client_hello;

fn done(buf: &[u8]) -> Protocol {
    match classify(buf) {
        Verdict::Done(p) => p,
        v => panic!("undecided for {:?}: {v:?}", String::from_utf8_lossy(buf)),
    }
}

#[test]
fn http1_request_lines() {
    for line in [
        "GET / HTTP/1.1\r\n",
        "POST /api?x=1 HTTP/1.0\r\n",
        "GET http://example.com:8080/x HTTP/1.1\r\n",
        "CONNECT example.com:443 HTTP/1.1\r\n",
        "OPTIONS * HTTP/1.1\n",
        "M-SEARCH * HTTP/1.1\r\n",
    ] {
        assert_eq!(done(line.as_bytes()), Protocol::Http1, "{line}");
    }
}

#[test]
fn partial_http_waits_for_more() {
    for partial in [
        "G",
        "GET",
        "GET ",
        "GET /index",
        "GET / HTTP/1",
        "GET / HTTP/1.1",
        "GET / HTTP/1.1\r",
        "PRI * HTTP/2",
    ] {
        assert_eq!(
            classify(partial.as_bytes()),
            Verdict::NeedMore {
                limit: MAX_HTTP_PEEK
            },
            "{partial}"
        );
    }
}

#[test]
fn not_http() {
    for bytes in [
        &b"SSH-2.0-OpenSSH_9.2\r\n"[..],
        b"GET / HTTP/2.0\r\n",
        b"GET  / HTTP/1.1\r\n",
        b"GET / HTTP/1.1x\r\n",
        b"GET /\x01 HTTP/1.1\r\n",
        b"get / FTP/1.0\r\n",
        b"\x00\x00\x00\x01",
        b"*3\r\n$3\r\nSET\r\n",
        b"HELO mail.example.com\r\n",
        &[b'A'; 40],
    ] {
        assert_eq!(
            done(bytes),
            Protocol::Opaque,
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn http2_preface() {
    assert_eq!(
        done(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04"),
        Protocol::Http2
    );
}

#[test]
fn tls_client_hello_with_and_without_sni() {
    let hello = client_hello(Some("Web.Example.com"), 100);
    assert_eq!(
        done(&hello),
        Protocol::Tls {
            sni: Some("web.example.com".into())
        }
    );
    assert_eq!(done(&client_hello(None, 100)), Protocol::Tls { sni: None });
    // Partial records wait for the rest.
    assert_eq!(
        classify(&hello[..3]),
        Verdict::NeedMore {
            limit: MAX_TLS_PEEK
        }
    );
    assert_eq!(
        classify(&hello[..40]),
        Verdict::NeedMore { limit: hello.len() }
    );
    // A hello bigger than the peek buffer: SNI comes first, so still found.
    let big = client_hello(Some("big.example"), 12_000);
    assert_eq!(
        classify(&big[..100]),
        Verdict::NeedMore {
            limit: MAX_TLS_PEEK
        }
    );
    assert_eq!(
        done(&big[..MAX_TLS_PEEK]),
        Protocol::Tls {
            sni: Some("big.example".into())
        }
    );
}

#[test]
fn sni_is_the_name_a_tls_server_sees() {
    // Found by fuzzing against rustls: a trailing dot is dropped, as TLS
    // servers drop it, so routes match the name the server sees.
    let sni = |name| match done(&client_hello(Some(name), 0)) {
        Protocol::Tls { sni } => sni,
        other => panic!("{other:?}"),
    };
    assert_eq!(sni("Web.Example.com.").as_deref(), Some("web.example.com"));
    // Names with empty labels are no names.
    for bad in ["a..b", ".a", "..", ".", "a.b.."] {
        assert_eq!(sni(bad), None, "{bad:?}");
    }
}

#[test]
fn malformed_tls_never_panics() {
    let hello = client_hello(Some("a.example"), 50);
    // Every truncation and every single-byte corruption of a real hello.
    for n in 0..hello.len() {
        let _ = classify(&hello[..n]);
        for v in [0u8, 0xff, 0x7f] {
            let mut bad = hello.clone();
            bad[n] = v;
            let _ = classify(&bad);
        }
    }
    assert_eq!(done(b"\x16\x02\x00"), Protocol::Opaque); // not version 3.x
    assert_eq!(done(b"\x16\x03\x01\x00\x00"), Protocol::Opaque); // empty record
    assert_eq!(done(b"\x16\x03\x01\x00\x10\x02"), Protocol::Opaque); // ServerHello
    assert_eq!(done(b"\x16\x03\x01\xff\xff"), Protocol::Opaque); // record too large
}

#[tokio::test]
async fn detect_replays_everything_it_read() {
    let (mut client, mut server) = duplex(64 * 1024);
    client
        .write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let d = detect(&mut server, Duration::from_secs(1)).await.unwrap();
    assert_eq!(d.protocol, Protocol::Http1);
    assert_eq!(d.reason, Reason::Matched);
    let mut io = PrefixedIo::new(d.buffered.freeze(), server);
    client.write_all(b"more").await.unwrap();
    drop(client);
    let mut all = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut io, &mut all)
        .await
        .unwrap();
    assert_eq!(all, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\nmore");
}

#[tokio::test(start_paused = true)]
async fn silent_client_is_opaque_after_the_timeout() {
    let (_client, mut server) = duplex(1024);
    let d = detect(&mut server, Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        (d.protocol, d.reason, d.buffered.len()),
        (Protocol::Opaque, Reason::Timeout, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn partial_line_then_silence_is_opaque_with_its_bytes() {
    let (mut client, mut server) = duplex(1024);
    client.write_all(b"GET /slow").await.unwrap();
    let d = detect(&mut server, Duration::from_secs(10)).await.unwrap();
    assert_eq!((d.protocol, d.reason), (Protocol::Opaque, Reason::Timeout));
    assert_eq!(&d.buffered[..], b"GET /slow");
}

#[tokio::test]
async fn eof_and_buffer_limits() {
    let (mut client, mut server) = duplex(64 * 1024);
    client.write_all(b"GET /").await.unwrap();
    drop(client);
    let d = detect(&mut server, Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        (d.protocol, d.reason, &d.buffered[..]),
        (Protocol::Opaque, Reason::Eof, &b"GET /"[..])
    );

    // A request line longer than the HTTP peek: HTTP, for the server to
    // parse (a long URL); never more read than the peek.
    let (mut client, mut server) = duplex(64 * 1024);
    let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(4000));
    client.write_all(long.as_bytes()).await.unwrap();
    let d = detect(&mut server, Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        (d.protocol, d.reason, d.buffered.len()),
        (Protocol::Http1, Reason::BufferFull, MAX_HTTP_PEEK)
    );

    // Bytes that only ever look like a method: opaque.
    let (mut client, mut server) = duplex(64 * 1024);
    client.write_all(&[b'A'; 2000]).await.unwrap();
    let d = detect(&mut server, Duration::from_secs(10)).await.unwrap();
    assert_eq!(d.protocol, Protocol::Opaque);
}

#[tokio::test]
async fn detects_a_client_hello_arriving_in_pieces() {
    let (mut client, mut server) = duplex(64 * 1024);
    let hello = client_hello(Some("svc.ns.svc.cluster.local"), 1500);
    let task = tokio::spawn(async move {
        for chunk in hello.chunks(100) {
            client.write_all(chunk).await.unwrap();
            tokio::task::yield_now().await;
        }
        client
    });
    let d = detect(&mut server, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        d.protocol,
        Protocol::Tls {
            sni: Some("svc.ns.svc.cluster.local".into())
        }
    );
    drop(task.await.unwrap());
}

#[test]
fn empty_lines_before_a_request_line_are_http() {
    for line in [
        "\r\nGET / HTTP/1.1\r\n",
        "\r\n\r\n\r\nPOST /x HTTP/1.0\r\n",
        "\nGET / HTTP/1.1\n",
    ] {
        assert_eq!(done(line.as_bytes()), Protocol::Http1, "{line:?}");
    }
    for partial in ["\r\n", "\r\n\r", "\r\nGET", "\r\nGET / HTTP/1.1\r"] {
        assert_eq!(
            classify(partial.as_bytes()),
            Verdict::NeedMore {
                limit: MAX_HTTP_PEEK
            },
            "{partial:?}"
        );
    }
    assert_eq!(done(b"\r\nSSH-2.0-x\r\n"), Protocol::Opaque);
}

#[tokio::test]
async fn a_peek_full_of_empty_lines_is_http() {
    // What an HTTP server skips must not smuggle a request past the
    // proxy's HTTP handling as opaque bytes.
    let (mut client, mut server) = duplex(64 * 1024);
    let mut bytes = b"\r\n".repeat(MAX_HTTP_PEEK);
    bytes.extend_from_slice(b"GET / HTTP/1.1\r\nl5d-client-id: forged\r\n\r\n");
    client.write_all(&bytes).await.unwrap();
    let d = detect(&mut server, Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        (d.protocol, d.reason),
        (Protocol::Http1, Reason::BufferFull)
    );
}
