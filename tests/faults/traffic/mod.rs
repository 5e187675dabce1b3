//! The traffic kinds of the matrix, each as an application that records
//! how every transfer ended at its end, and a client that says how it
//! ended at the other.
//!
//! A transfer sends [`Transfer::up`] random bytes from the client to the
//! application and [`Transfer::down`] back, each checked against its
//! SHA-256 (sent beside it: a header, metadata, a closing message or a
//! trailing digest). Either end classifies what it saw as a [`Got`]:
//! complete and byte-exact, an error (a reset, an error status, a failed
//! body, a stream error), or a clean end with the wrong bytes, which is
//! never acceptable: it is what a truncated stream that looks complete
//! would be.
//!
//! Every transfer uses a connection of its own, so a fault hits the
//! transfer the test aims at.

pub mod grpc;
pub mod http;
pub mod tcp;
pub mod ws;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

/// The size of each write (a body chunk, a gRPC message, a WebSocket
/// message).
pub const CHUNK: usize = 16 * 1024;

/// A kind of traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Opaque TCP: a framed, digested message each way at once.
    Tcp,
    /// HTTP/1.1: a POST whose body goes up and whose response comes down.
    Http1,
    /// HTTP/2 (prior knowledge): the same.
    Http2,
    /// gRPC (tonic): a bidirectional stream of messages.
    Grpc,
    /// WebSocket (tokio-tungstenite): binary messages each way.
    WebSocket,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 5] = [
        Kind::Tcp,
        Kind::Http1,
        Kind::Http2,
        Kind::Grpc,
        Kind::WebSocket,
    ];

    /// A byte tunnel through the proxy: a failure on one side must reach
    /// the other as a TCP reset.
    pub fn is_tunnel(self) -> bool {
        matches!(self, Kind::Tcp | Kind::WebSocket)
    }
}

/// What one transfer carries.
#[derive(Clone, Copy, Debug)]
pub struct Transfer {
    /// Bytes from the client to the application.
    pub up: usize,
    /// Bytes from the application to the client.
    pub down: usize,
}

/// How one direction of a transfer ended, as one end saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Got {
    /// Every byte, checked.
    Complete,
    /// An error: the stream did not end cleanly.
    Error(String),
    /// A clean end with the wrong bytes: a truncated stream that looks
    /// complete. Never acceptable.
    Corrupt(String),
}

impl Got {
    /// Whether it is an error (not complete, not corrupt).
    pub fn is_error(&self) -> bool {
        matches!(self, Got::Error(_))
    }

    /// Checks `data` against `digest` (and `len`, when known).
    pub fn check(data_len: usize, digest: &[u8], expected: &[u8], len: Option<usize>) -> Got {
        if len.is_some_and(|l| l != data_len) {
            return Got::Corrupt(format!(
                "{data_len} bytes, expected {}",
                len.unwrap_or_default()
            ));
        }
        if digest != expected {
            return Got::Corrupt(format!("digest mismatch after {data_len} bytes"));
        }
        Got::Complete
    }
}

/// How a client saw a transfer end: its download, or the error that
/// ended the whole transfer. `reset` says whether the error was a TCP
/// reset of the client's connection (what a tunnel must see; see
/// [`is_reset`]).
#[derive(Clone, Debug)]
pub struct ClientEnd {
    /// The download (or the error).
    pub got: Got,
    /// The error was `ECONNRESET`.
    pub reset: bool,
}

impl ClientEnd {
    fn complete() -> Self {
        Self {
            got: Got::Complete,
            reset: false,
        }
    }

    fn error(e: impl std::fmt::Display, reset: bool) -> Self {
        Self {
            got: Got::Error(e.to_string()),
            reset,
        }
    }

    fn corrupt(e: impl std::fmt::Display) -> Self {
        Self {
            got: Got::Corrupt(e.to_string()),
            reset: false,
        }
    }
}

/// What an application saw of its transfers.
#[derive(Debug, Default)]
pub struct AppLog {
    /// Transfers that reached it (a connection, a request, a call, a
    /// WebSocket handshake).
    started: std::sync::atomic::AtomicUsize,
    /// How each upload ended.
    uploads: Mutex<Vec<Got>>,
    /// How each download ended at the application's end: `Complete`
    /// when it handed over every byte, `Error` when it could not.
    downloads: Mutex<Vec<Got>>,
}

impl AppLog {
    fn started(&self) {
        self.started
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn upload(&self, g: Got) {
        self.uploads.lock().unwrap().push(g);
    }

    fn download(&self, g: Got) {
        self.downloads.lock().unwrap().push(g);
    }
}

/// An application of one kind.
#[derive(Debug)]
pub struct App {
    /// Where it listens.
    pub addr: SocketAddr,
    log: Arc<AppLog>,
    task: tokio::task::JoinHandle<()>,
}

impl App {
    /// Starts an application of `kind` on `127.0.0.1:0`. The HTTP
    /// application (any HTTP kind) serves every kind but opaque TCP.
    pub async fn start(kind: Kind) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(AppLog::default());
        let task = match kind {
            Kind::Tcp => tokio::spawn(tcp::serve(listener, log.clone())),
            Kind::Http1 | Kind::Http2 | Kind::Grpc => {
                tokio::spawn(http::serve(listener, log.clone()))
            }
            Kind::WebSocket => tokio::spawn(ws::serve(listener, log.clone())),
        };
        Self { addr, log, task }
    }

    /// Waits until `n` transfers have reached it.
    pub async fn wait_started(&self, n: usize) {
        linnet_test_support::eventually(
            &format!("{n} transfers reached the application"),
            std::time::Duration::from_secs(10),
            || async {
                (self.log.started.load(std::sync::atomic::Ordering::SeqCst) >= n).then_some(())
            },
        )
        .await
    }

    /// How its uploads ended so far.
    pub fn uploads(&self) -> Vec<Got> {
        self.log.uploads.lock().unwrap().clone()
    }

    /// How its downloads ended so far.
    pub fn downloads(&self) -> Vec<Got> {
        self.log.downloads.lock().unwrap().clone()
    }

    /// Waits until `n` uploads have ended; returns them.
    pub async fn wait_uploads(&self, n: usize) -> Vec<Got> {
        linnet_test_support::eventually(
            &format!("{n} uploads ended at the application"),
            std::time::Duration::from_secs(10),
            || async {
                let u = self.uploads();
                (u.len() >= n).then_some(u)
            },
        )
        .await
    }

    /// Waits until `n` downloads have ended; returns them.
    pub async fn wait_downloads(&self, n: usize) -> Vec<Got> {
        linnet_test_support::eventually(
            &format!("{n} downloads ended at the application"),
            std::time::Duration::from_secs(10),
            || async {
                let d = self.downloads();
                (d.len() >= n).then_some(d)
            },
        )
        .await
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs one transfer of `kind` through `addr` (a new connection).
pub async fn run(kind: Kind, addr: SocketAddr, t: Transfer) -> ClientEnd {
    match kind {
        Kind::Tcp => tcp::run(addr, t).await,
        Kind::Http1 => http::run(addr, t, false).await,
        Kind::Http2 => http::run(addr, t, true).await,
        Kind::Grpc => grpc::run(addr, t).await,
        Kind::WebSocket => ws::run(addr, t).await,
    }
}

/// `n` random bytes and their digest.
pub fn payload(n: usize) -> (Bytes, [u8; 32]) {
    let p = Bytes::from(linnet_test_support::tcp::random_payload(n));
    let d = Sha256::digest(&p).into();
    (p, d)
}

/// A running digest.
#[derive(Default)]
pub struct Digesting {
    hasher: Sha256,
    /// Bytes seen.
    pub len: usize,
}

impl Digesting {
    /// Adds bytes.
    pub fn update(&mut self, b: &[u8]) {
        self.hasher.update(b);
        self.len += b.len();
    }

    /// The digest so far.
    pub fn finish(self) -> [u8; 32] {
        self.hasher.finalize().into()
    }
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether an error, or any error in its chain, says the connection was
/// reset: `ECONNRESET`, or `EPIPE` (the kernel reports a reset once; a
/// later write sees `EPIPE`).
pub fn is_reset(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}
