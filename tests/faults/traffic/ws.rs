//! WebSocket with tokio-tungstenite: `ws://app.test/transfer?down=N`.
//! Each end sends its bytes as binary messages and then `end <sha256>`,
//! both at once, then the client closes. Only an I/O reset counts as a
//! reset; the end of the stream without a closing handshake is an error
//! too, but a tunnel must not end that way.

use super::{AppLog, CHUNK, ClientEnd, Digesting, Got, Transfer, hex, payload};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::{Error, Message};

/// What went wrong, and whether it says the connection was reset (the
/// kernel reports a reset once: a later write sees `EPIPE`).
fn describe(e: &Error) -> (String, bool) {
    match e {
        Error::Io(io) => (
            format!("io {:?}: {io}", io.kind()),
            matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
        ),
        other => (other.to_string(), false),
    }
}

/// Sends `data` as binary messages, then its digest.
async fn send<S>(sink: &mut S, data: Bytes, digest: [u8; 32]) -> Result<(), Error>
where
    S: futures_util::Sink<Message, Error = Error> + Unpin,
{
    for chunk in data.chunks(CHUNK) {
        sink.send(Message::binary(Bytes::copy_from_slice(chunk)))
            .await?;
    }
    sink.send(Message::text(format!("end {}", hex(&digest))))
        .await
}

/// Receives binary messages up to `end <digest>`, and checks them.
async fn receive<S>(stream: &mut S, len: Option<usize>) -> (Got, bool)
where
    S: futures_util::Stream<Item = Result<Message, Error>> + Unpin,
{
    let mut d = Digesting::default();
    loop {
        match stream.next().await {
            None => {
                return (
                    Got::Error("ended without a closing handshake".into()),
                    false,
                );
            }
            Some(Err(e)) => {
                let (what, reset) = describe(&e);
                return (Got::Error(what), reset);
            }
            Some(Ok(Message::Binary(b))) => d.update(&b),
            Some(Ok(Message::Text(t))) => {
                let expected = t.as_str().strip_prefix("end ").unwrap_or("").to_string();
                let n = d.len;
                return (
                    Got::check(n, hex(&d.finish()).as_bytes(), expected.as_bytes(), len),
                    false,
                );
            }
            Some(Ok(Message::Close(c))) => {
                return (
                    Got::Corrupt(format!("closed early after {} bytes: {c:?}", d.len)),
                    false,
                );
            }
            Some(Ok(_)) => {}
        }
    }
}

// The handshake callback's error type is tungstenite's, and large.
#[allow(clippy::result_large_err)]
pub(super) async fn serve(listener: TcpListener, log: Arc<AppLog>) {
    while let Ok((stream, _)) = listener.accept().await {
        let log = log.clone();
        tokio::spawn(async move {
            let mut down = 0usize;
            let cb = |req: &tokio_tungstenite::tungstenite::handshake::server::Request, rsp| {
                down = req
                    .uri()
                    .query()
                    .and_then(|q| q.strip_prefix("down="))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                Ok(rsp)
            };
            match tokio_tungstenite::accept_hdr_async(stream, cb).await {
                Ok(ws) => session(ws, down, log).await,
                Err(e) => log.upload(Got::Error(format!("handshake: {e}"))),
            }
        });
    }
}

/// The application's side of a transfer on an open WebSocket.
pub(super) async fn session<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    down: usize,
    log: Arc<AppLog>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    log.started();
    let (data, digest) = payload(down);
    let (mut sink, mut stream) = ws.split();
    let (sent, (got, _)) = tokio::join!(send(&mut sink, data, digest), receive(&mut stream, None));
    log.upload(got);
    log.download(match sent {
        Ok(()) => Got::Complete,
        Err(e) => Got::Error(describe(&e).0),
    });
    // The client closes; answer it.
    while let Some(Ok(m)) = stream.next().await {
        if m.is_close() {
            break;
        }
    }
    let _ = sink.close().await;
}

pub(super) async fn run(addr: SocketAddr, t: Transfer) -> ClientEnd {
    let stream = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => return ClientEnd::error(e, false),
    };
    let url = format!("ws://app.test/transfer?down={}", t.down);
    let ws = match tokio_tungstenite::client_async(url, stream).await {
        Ok((ws, _)) => ws,
        Err(e) => {
            let (what, reset) = describe(&e);
            return ClientEnd::error(format!("handshake: {what}"), reset);
        }
    };
    let (up, digest) = payload(t.up);
    let (mut sink, mut stream) = ws.split();
    let (sent, (got, reset)) = tokio::join!(
        send(&mut sink, up, digest),
        receive(&mut stream, Some(t.down))
    );
    match (got, sent) {
        (Got::Complete, Ok(())) => {
            // Close politely; how that ends does not change the outcome.
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                let _ = sink.close().await;
                while let Some(Ok(_)) = stream.next().await {}
            })
            .await;
            ClientEnd::complete()
        }
        (Got::Complete, Err(e)) => {
            let (what, reset) = describe(&e);
            ClientEnd::error(format!("sending: {what}"), reset)
        }
        // The kernel reports a reset to one call: the sending half may have
        // taken it, leaving the receiving half a plain end of stream.
        (got, sent) => ClientEnd {
            got,
            reset: reset || sent.as_ref().err().is_some_and(|e| describe(e).1),
        },
    }
}
