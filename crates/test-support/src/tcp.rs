//! TCP endpoints that check every byte.
//!
//! The exchange: each side sends an 8-byte big-endian length, that many
//! random bytes, and their SHA-256, then half-closes; each side reads the
//! other's message to EOF and checks length and digest. Both directions run
//! at once, so the proxy carries full-duplex traffic and half-closes.

use rand::RngCore;
use sha2::{Digest, Sha256};
use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

/// Random bytes.
pub fn random_payload(len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    rand::rng().fill_bytes(&mut v);
    v
}

/// Writes a framed, digested message and half-closes.
pub async fn send_message<W: AsyncWrite + Unpin>(w: &mut W, payload: &[u8]) -> io::Result<()> {
    w.write_all(&(payload.len() as u64).to_be_bytes()).await?;
    w.write_all(payload).await?;
    w.write_all(&Sha256::digest(payload)).await?;
    w.shutdown().await
}

/// Reads a framed message to EOF; an error if it is short, long or corrupt.
pub async fn recv_message<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Vec<u8>> {
    let mut all = Vec::new();
    r.read_to_end(&mut all).await?;
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    if all.len() < 8 + 32 {
        return Err(bad(format!("message too short: {} bytes", all.len())));
    }
    let len = u64::from_be_bytes(all[..8].try_into().unwrap()) as usize;
    if all.len() != 8 + len + 32 {
        return Err(bad(format!(
            "expected {} bytes, got {}",
            8 + len + 32,
            all.len()
        )));
    }
    let payload = &all[8..8 + len];
    if Sha256::digest(payload).as_slice() != &all[8 + len..] {
        return Err(bad("digest mismatch".into()));
    }
    Ok(payload.to_vec())
}

/// Runs the exchange on `stream`, sending `payload`; returns what the peer sent.
pub async fn exchange(stream: TcpStream, payload: &[u8]) -> io::Result<Vec<u8>> {
    let (mut r, mut w) = stream.into_split();
    let (sent, received) = tokio::join!(send_message(&mut w, payload), recv_message(&mut r));
    sent?;
    received
}

/// A server that runs the exchange on every connection, answering with a
/// random payload of up to `max_reply` bytes, and counts how the
/// exchanges ended: what the clients sent is checked here too.
#[derive(Debug)]
pub struct ExchangeServer {
    /// Where it listens.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
    stats: Stats,
}

/// How an [`ExchangeServer`]'s exchanges ended; a cloneable handle.
#[derive(Clone, Debug, Default)]
pub struct Stats(Arc<Results>);

#[derive(Debug, Default)]
struct Results {
    ok: AtomicUsize,
    failed: std::sync::Mutex<Vec<String>>,
}

impl ExchangeServer {
    /// Starts the server on `127.0.0.1:0`.
    pub async fn start(max_reply: usize) -> Self {
        Self::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), max_reply)
    }

    /// Starts the server on `listener`.
    pub fn start_on(listener: TcpListener, max_reply: usize) -> Self {
        let addr = listener.local_addr().unwrap();
        let stats = Stats::default();
        let task = tokio::spawn({
            let results = stats.0.clone();
            async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let results = results.clone();
                    tokio::spawn(async move {
                        let len = (rand::random::<u64>() as usize) % (max_reply + 1);
                        let reply = random_payload(len);
                        match exchange(stream, &reply).await {
                            Ok(_) => {
                                results.ok.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(e) => results.failed.lock().unwrap().push(e.to_string()),
                        }
                    });
                }
            }
        });
        Self { addr, task, stats }
    }

    /// How its exchanges ended.
    pub fn stats(&self) -> Stats {
        self.stats.clone()
    }
}

impl Stats {
    /// Exchanges that completed with every byte checked.
    pub fn completed(&self) -> usize {
        self.0.ok.load(Ordering::SeqCst)
    }

    /// Why exchanges failed at the server's end.
    pub fn failures(&self) -> Vec<String> {
        self.0.failed.lock().unwrap().clone()
    }

    /// Waits until `n` exchanges completed and asserts that none failed.
    pub async fn assert_completed(&self, n: usize) {
        crate::eventually(
            &format!("{n} exchanges completed at the server"),
            std::time::Duration::from_secs(10),
            || async { (self.completed() + self.failures().len() >= n).then_some(()) },
        )
        .await;
        assert_eq!(
            self.failures(),
            Vec::<String>::new(),
            "exchanges failed at the server"
        );
        assert_eq!(self.completed(), n);
    }
}

impl Drop for ExchangeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An address where connections are refused: a socket bound but not
/// listening. The port stays reserved (no other test can take it) for as
/// long as the returned socket lives.
pub fn refused_addr() -> (socket2::Socket, SocketAddr) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    (sock, addr)
}

/// A listener whose accept queue is full, so that new connections to it
/// hang in SYN-SENT: the kernel drops their SYNs.
pub fn black_hole() -> (socket2::Socket, Vec<std::net::TcpStream>) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    // Connect until one does not complete: the queue is then full.
    for _ in 0..16 {
        match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200)) {
            Ok(s) => fillers.push(s),
            Err(_) => return (sock, fillers),
        }
    }
    panic!("could not fill the accept queue of {addr}");
}
