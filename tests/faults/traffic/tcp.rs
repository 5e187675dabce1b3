//! Opaque TCP: the client sends the size it wants back (8 bytes), then
//! both ends send a framed, digested message at once
//! (`linnet_test_support::tcp::{send_message, recv_message}`) and
//! half-close. A message that ends early with a FIN is corrupt; only a
//! reset is an acceptable way for a failed stream to end.

use super::{AppLog, ClientEnd, Got, Transfer};
use linnet_test_support::tcp::{random_payload, recv_message, send_message};
use std::{io, net::SocketAddr, sync::Arc};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// Whether an error says the connection was reset. The kernel reports a
/// reset once, to whichever call comes first; a write that took it leaves
/// the read a plain end of stream, and later writes `EPIPE`.
fn was_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    )
}

/// How the receiving half ended, given how the sending half did.
fn classify(received: &io::Result<Vec<u8>>, sent: &io::Result<()>) -> Got {
    match (received, sent) {
        (Ok(_), _) => Got::Complete,
        (Err(e), Err(s)) if e.kind() == io::ErrorKind::InvalidData && was_reset(s) => {
            Got::Error(format!("reset (seen sending: {s}); the read saw {e}"))
        }
        (Err(e), _) if e.kind() == io::ErrorKind::InvalidData => Got::Corrupt(e.to_string()),
        (Err(e), _) => Got::Error(format!("{:?}: {e}", e.kind())),
    }
}

pub(super) async fn serve(listener: TcpListener, log: Arc<AppLog>) {
    while let Ok((stream, _)) = listener.accept().await {
        let log = log.clone();
        log.started();
        tokio::spawn(async move {
            let (mut r, mut w) = stream.into_split();
            let mut want = [0u8; 8];
            if let Err(e) = r.read_exact(&mut want).await {
                log.upload(Got::Error(format!("no prologue: {e}")));
                return;
            }
            let reply = random_payload(u64::from_be_bytes(want) as usize);
            let (sent, received) = tokio::join!(send_message(&mut w, &reply), recv_message(&mut r));
            log.upload(classify(&received, &sent));
            log.download(match sent {
                Ok(()) => Got::Complete,
                Err(e) => Got::Error(format!("{:?}: {e}", e.kind())),
            });
        });
    }
}

pub(super) async fn run(addr: SocketAddr, t: Transfer) -> ClientEnd {
    let stream = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => return ClientEnd::error(e, false),
    };
    let (mut r, mut w) = stream.into_split();
    let payload = random_payload(t.up);
    let send = async {
        w.write_all(&(t.down as u64).to_be_bytes()).await?;
        send_message(&mut w, &payload).await
    };
    let (sent, received) = tokio::join!(send, recv_message(&mut r));
    let reset = received.as_ref().err().is_some_and(was_reset)
        || sent.as_ref().err().is_some_and(was_reset);
    match (classify(&received, &sent), sent) {
        (Got::Complete, Ok(())) => match received {
            Ok(data) if data.len() == t.down => ClientEnd::complete(),
            Ok(data) => ClientEnd::corrupt(format!("{} bytes, expected {}", data.len(), t.down)),
            Err(e) => ClientEnd::corrupt(e),
        },
        (Got::Complete, Err(e)) => ClientEnd::error(format!("sending: {:?}: {e}", e.kind()), reset),
        (Got::Error(what), _) => ClientEnd::error(what, reset),
        (Got::Corrupt(what), _) => ClientEnd::corrupt(what),
    }
}
