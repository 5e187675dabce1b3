//! A fault-injecting TCP relay, put between two parties under test (a
//! client and the Linnet proxy, or the Linnet proxy and the application):
//! it forwards bytes both ways and, when told, pauses a direction, writes
//! in small pieces, resets or cuts a connection after so many more bytes,
//! resets every connection, or dies and comes back on the same port like
//! a crashed process.
//!
//! It is also a tap: for every connection it records how each side ended
//! its stream toward the relay (a FIN, a reset, still open), so a test can
//! tell a clean end from a reset whatever protocol the bytes carry. What
//! one side does is passed on to the other: a FIN becomes a FIN, a reset a
//! reset.
//!
//! "Up" is the direction from the side that connected to the relay (the
//! client) to the side the relay dials (the target); "down" the other.

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::watch,
    task::JoinHandle,
};

/// A direction of the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Client to target.
    Up,
    /// Target to client.
    Down,
}

/// How one side ended its stream toward the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// A FIN: it said it had nothing more to send.
    Fin,
    /// A reset (or a write to it failed: it was gone).
    Reset,
    /// Some other I/O error.
    Error(io::ErrorKind),
}

/// How a connection through the relay ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ended {
    /// How the client's side first ended its stream (`None`: the relay
    /// ended it first).
    pub client: Option<End>,
    /// How the target's side first ended its stream (`None`: the relay
    /// ended it first).
    pub target: Option<End>,
    /// Whether the client's side reset the connection at some point (after
    /// a FIN that ended a complete stream, say).
    pub client_reset: bool,
    /// Whether the target's side reset the connection at some point.
    pub target_reset: bool,
    /// The fault the relay injected on it, if any.
    pub fault: Option<Action>,
}

/// What the relay does to a connection when a trigger fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Reset both sides.
    Reset,
    /// Close both sides with a FIN, as if the stream were complete.
    Cut,
    /// Stop reading in the trigger's direction, on every connection, as
    /// [`FaultProxy::pause`] does.
    Pause,
}

/// The relay's standing settings, applied to every connection at once.
#[derive(Clone, Copy, Debug, Default)]
struct Settings {
    pause_up: bool,
    pause_down: bool,
    /// Writes of at most this many bytes, with a yield between them.
    max_write: Option<usize>,
    /// Each connection stops reading up after relaying this many more
    /// bytes up (counted from the last change of `stall_epoch`).
    stall_up_after: Option<u64>,
    /// The same, down.
    stall_down_after: Option<u64>,
    /// Counts the calls to [`FaultProxy::stall_after`].
    stall_epoch: u64,
}

impl Settings {
    fn paused(&self, dir: Dir) -> bool {
        match dir {
            Dir::Up => self.pause_up,
            Dir::Down => self.pause_down,
        }
    }

    fn stall_after(&self, dir: Dir) -> Option<u64> {
        match dir {
            Dir::Up => self.stall_up_after,
            Dir::Down => self.stall_down_after,
        }
    }

    /// How many bytes a connection that has relayed `sent` in `dir` may
    /// read now (0: it waits).
    fn allowance(&self, dir: Dir, sent: u64) -> u64 {
        if self.paused(dir) {
            return 0;
        }
        self.stall_after(dir)
            .map_or(u64::MAX, |n| n.saturating_sub(sent))
    }
}

/// A one-shot trigger: after `remaining` more bytes in `dir` (on whichever
/// connection carries them), `action` that connection.
#[derive(Clone, Copy, Debug)]
struct Trigger {
    dir: Dir,
    remaining: u64,
    action: Action,
}

/// Commands to every open connection; each counts up.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Epochs {
    reset: u64,
    kill: u64,
}

#[derive(Debug)]
struct Shared {
    target: SocketAddr,
    buffer: Option<u32>,
    settings: watch::Sender<Settings>,
    epochs: watch::Sender<Epochs>,
    trigger: Mutex<Option<Trigger>>,
    up: AtomicU64,
    down: AtomicU64,
    accepted: AtomicUsize,
    open: AtomicUsize,
    ended: Mutex<Vec<Ended>>,
}

/// A running relay; it stops (and drops its connections) when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    /// Where it listens (the same across [`FaultProxy::kill`] and
    /// [`FaultProxy::restart`]).
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Relays connections made to a fresh `127.0.0.1:0` listener to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        Self::start_with(target, None).await
    }

    /// Like [`FaultProxy::start`], with the relay's own socket buffers
    /// (send and receive, both sides) set to `buffer` bytes, so that the
    /// bytes it lets through measure what the parties beside it absorb.
    pub async fn start_with(target: SocketAddr, buffer: Option<u32>) -> Self {
        let shared = Arc::new(Shared {
            target,
            buffer,
            settings: watch::channel(Settings::default()).0,
            epochs: watch::channel(Epochs::default()).0,
            trigger: Mutex::new(None),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            accepted: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            ended: Mutex::new(Vec::new()),
        });
        let listener = listen("127.0.0.1:0".parse().unwrap(), buffer);
        let addr = listener.local_addr().unwrap();
        let accept = Some(tokio::spawn(accept_loop(listener, shared.clone())));
        Self {
            addr,
            shared,
            accept,
        }
    }

    /// Stops reading in `dir` (on every connection, open and new): the
    /// writer on that side sees back-pressure once the buffers fill.
    pub fn pause(&self, dir: Dir) {
        self.shared.settings.send_modify(|s| match dir {
            Dir::Up => s.pause_up = true,
            Dir::Down => s.pause_down = true,
        });
    }

    /// Reads in `dir` again.
    pub fn resume(&self, dir: Dir) {
        self.shared.settings.send_modify(|s| match dir {
            Dir::Up => s.pause_up = false,
            Dir::Down => s.pause_down = false,
        });
    }

    /// Stalls every connection (open and new) in `dir` once it has relayed
    /// `n` more bytes that way: a writer that stops mid-stream and holds
    /// its stream open. [`FaultProxy::unstall`] lets them go on.
    pub fn stall_after(&self, dir: Dir, n: u64) {
        self.shared.settings.send_modify(|s| {
            s.stall_epoch += 1;
            match dir {
                Dir::Up => s.stall_up_after = Some(n),
                Dir::Down => s.stall_down_after = Some(n),
            }
        });
    }

    /// Ends [`FaultProxy::stall_after`].
    pub fn unstall(&self, dir: Dir) {
        self.shared.settings.send_modify(|s| match dir {
            Dir::Up => s.stall_up_after = None,
            Dir::Down => s.stall_down_after = None,
        });
    }

    /// Writes at most `n` bytes at a time (a peer that trickles), or
    /// whatever was read (`None`).
    pub fn trickle(&self, n: Option<usize>) {
        self.shared
            .settings
            .send_modify(|s| s.max_write = n.map(|n| n.max(1)));
    }

    /// After `n` more bytes in `dir`, resets the connection that carried
    /// them, both sides. One-shot.
    pub fn reset_after(&self, dir: Dir, n: u64) {
        self.arm(dir, n, Action::Reset);
    }

    /// After `n` more bytes in `dir`, closes the connection that carried
    /// them with a FIN on both sides, as if it were complete. One-shot.
    pub fn cut_after(&self, dir: Dir, n: u64) {
        self.arm(dir, n, Action::Cut);
    }

    fn arm(&self, dir: Dir, n: u64, action: Action) {
        *self.shared.trigger.lock().unwrap() = Some(Trigger {
            dir,
            remaining: n,
            action,
        });
    }

    /// After `n` more bytes in `dir`, pauses `dir` (see
    /// [`FaultProxy::pause`]): a reader that stops once a stream is under
    /// way. One-shot.
    pub fn pause_after(&self, dir: Dir, n: u64) {
        self.arm(dir, n, Action::Pause);
    }

    /// Whether an armed trigger has fired.
    pub fn fired(&self) -> bool {
        self.shared.trigger.lock().unwrap().is_none()
    }

    /// Resets every open connection, both sides; new ones are relayed.
    pub fn reset_all(&self) {
        self.shared.epochs.send_modify(|e| e.reset += 1);
    }

    /// Dies like a killed process: stops listening (new connections are
    /// refused) and closes every open connection as the kernel would (a
    /// FIN, or a reset where unread bytes remain).
    pub async fn kill(&mut self) {
        if let Some(task) = self.accept.take() {
            task.abort();
            // Returns once the task, and its listener, are gone.
            let _ = task.await;
        }
        self.shared.epochs.send_modify(|e| e.kill += 1);
    }

    /// Dies like a process killed with unread bytes in every socket:
    /// every open connection is reset, and new ones are refused.
    pub async fn crash(&mut self) {
        self.reset_all();
        self.kill().await;
    }

    /// Listens again on the same address (after [`FaultProxy::kill`]).
    pub async fn restart(&mut self) {
        self.kill().await;
        let listener = listen(self.addr, self.shared.buffer);
        self.accept = Some(tokio::spawn(accept_loop(listener, self.shared.clone())));
    }

    /// Bytes relayed in `dir` so far (written to the other side).
    pub fn bytes(&self, dir: Dir) -> u64 {
        match dir {
            Dir::Up => self.shared.up.load(Ordering::SeqCst),
            Dir::Down => self.shared.down.load(Ordering::SeqCst),
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// How the connections that have finished ended, in the order they did.
    pub fn ended(&self) -> Vec<Ended> {
        self.shared.ended.lock().unwrap().clone()
    }

    /// Waits until `n` connections have finished; returns how they ended.
    pub async fn wait_ended(&self, n: usize) -> Vec<Ended> {
        crate::eventually(
            &format!("{n} connections through the relay ended"),
            Duration::from_secs(10),
            || async {
                let e = self.ended();
                (e.len() >= n).then_some(e)
            },
        )
        .await
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(task) = self.accept.take() {
            task.abort();
        }
        self.shared.epochs.send_modify(|e| e.kill += 1);
    }
}

fn listen(addr: SocketAddr, buffer: Option<u32>) -> TcpListener {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    if let Some(b) = buffer {
        // Inherited by the accepted connections.
        socket.set_recv_buffer_size(b).unwrap();
        socket.set_send_buffer_size(b).unwrap();
    }
    socket.bind(addr).unwrap();
    socket.listen(1024).unwrap()
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of descriptors, say: try again in a moment.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        shared.open.fetch_add(1, Ordering::SeqCst);
        let shared = shared.clone();
        // Commands issued from now on apply to this connection.
        let epochs = shared.epochs.subscribe();
        let start = *epochs.borrow();
        tokio::spawn(async move {
            let ended = relay(client, &shared, epochs, start).await;
            shared.ended.lock().unwrap().push(ended);
            shared.open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

async fn connect(target: SocketAddr, buffer: Option<u32>) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(b) = buffer {
        socket.set_recv_buffer_size(b)?;
        socket.set_send_buffer_size(b)?;
    }
    let s = socket.connect(target).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// How a pump (one direction) stopped. The numbers order the events of
/// both pumps in time (see [`tick`]).
enum Stop {
    /// The reading side sent a FIN; it was passed on.
    Eof(u64),
    /// The reading side failed.
    ReadFailed(End, u64),
    /// The writing side failed.
    WriteFailed(End, u64),
    /// A trigger fired.
    Fault(Action),
}

/// A number that orders events in time. The kernel reports a reset to
/// whichever call on the socket comes first: a write in one pump may take
/// it, after which a read in the other sees a plain end of stream. What a
/// side did first is what it did.
fn tick() -> u64 {
    static CLOCK: AtomicU64 = AtomicU64::new(0);
    CLOCK.fetch_add(1, Ordering::SeqCst)
}

/// Records `end` for a side: the first end, and whether it was ever reset.
fn note(side: &mut (Option<(End, u64)>, bool), end: End, at: u64) {
    if side.0.is_none_or(|(_, t)| at < t) {
        side.0 = Some((end, at));
    }
    side.1 |= end == End::Reset;
}

fn end_of(e: &io::Error) -> End {
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionAborted => End::Reset,
        k => End::Error(k),
    }
}

/// Closes `s` with a reset.
fn reset(s: TcpStream) {
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    drop(s);
}

async fn relay(
    client: TcpStream,
    shared: &Shared,
    mut epochs: watch::Receiver<Epochs>,
    start: Epochs,
) -> Ended {
    let _ = client.set_nodelay(true);
    let mut ended = Ended::default();
    let (mut client_end, mut target_end) = ((None, false), (None, false));
    let Ok(target) = connect(shared.target, shared.buffer).await else {
        // As a dead target would: the client is reset.
        ended.target = Some(End::Reset);
        reset(client);
        return ended;
    };
    let (mut client, mut target) = (client, target);
    // What the relay does once both pumps are dropped.
    enum Then {
        Close,
        Reset,
        Cut,
        Die,
    }
    let then = {
        let (mut cr, mut cw) = client.split();
        let (mut tr, mut tw) = target.split();
        let up = pump(Dir::Up, &mut cr, &mut tw, shared);
        let down = pump(Dir::Down, &mut tr, &mut cw, shared);
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            if up_done && down_done {
                break Then::Close;
            }
            tokio::select! {
                stop = &mut up, if !up_done => {
                    up_done = true;
                    match stop {
                        Stop::Eof(t) => note(&mut client_end, End::Fin, t),
                        Stop::ReadFailed(e, t) => { note(&mut client_end, e, t); break Then::Reset; }
                        Stop::WriteFailed(e, t) => { note(&mut target_end, e, t); break Then::Reset; }
                        Stop::Fault(a) => { ended.fault = Some(a); break if a == Action::Cut { Then::Cut } else { Then::Reset }; }
                    }
                }
                stop = &mut down, if !down_done => {
                    down_done = true;
                    match stop {
                        Stop::Eof(t) => note(&mut target_end, End::Fin, t),
                        Stop::ReadFailed(e, t) => { note(&mut target_end, e, t); break Then::Reset; }
                        Stop::WriteFailed(e, t) => { note(&mut client_end, e, t); break Then::Reset; }
                        Stop::Fault(a) => { ended.fault = Some(a); break if a == Action::Cut { Then::Cut } else { Then::Reset }; }
                    }
                }
                changed = epochs.changed() => {
                    if changed.is_err() {
                        break Then::Die;
                    }
                    let now = *epochs.borrow_and_update();
                    if now.reset != start.reset {
                        ended.fault = Some(Action::Reset);
                        break Then::Reset;
                    }
                    if now.kill != start.kill {
                        break Then::Die;
                    }
                }
            }
        }
    };
    ended.client = client_end.0.map(|(e, _)| e);
    ended.client_reset = client_end.1;
    ended.target = target_end.0.map(|(e, _)| e);
    ended.target_reset = target_end.1;
    match then {
        Then::Close | Then::Die => {}
        Then::Reset => {
            reset(client);
            reset(target);
        }
        Then::Cut => {
            let _ = client.shutdown().await;
            let _ = target.shutdown().await;
            // Read both sides to their end, so that closing sends no reset.
            let drain = |mut s: TcpStream| async move {
                let mut sink = vec![0u8; 16 * 1024];
                while let Ok(1..) = s.read(&mut sink).await {}
            };
            tokio::join!(drain(client), drain(target));
        }
    }
    ended
}

async fn pump<R, W>(dir: Dir, r: &mut R, w: &mut W, shared: &Shared) -> Stop
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut settings = shared.settings.subscribe();
    let mut buf = vec![0u8; 16 * 1024];
    let counter = match dir {
        Dir::Up => &shared.up,
        Dir::Down => &shared.down,
    };
    // Bytes relayed since the stall settings last changed.
    let mut sent = 0u64;
    let mut epoch = settings.borrow().stall_epoch;
    loop {
        // Paused or stalled: read nothing, so that the writer feels it.
        let allowance = match settings
            .wait_for(|s| {
                if s.stall_epoch != epoch {
                    epoch = s.stall_epoch;
                    sent = 0;
                }
                s.allowance(dir, sent) > 0
            })
            .await
        {
            Ok(s) => s.allowance(dir, sent),
            Err(_) => u64::MAX,
        };
        let room = buf
            .len()
            .min(usize::try_from(allowance).unwrap_or(usize::MAX));
        let n = match r.read(&mut buf[..room]).await {
            Ok(0) => {
                let at = tick();
                let _ = w.shutdown().await;
                return Stop::Eof(at);
            }
            Ok(n) => n,
            Err(e) => return Stop::ReadFailed(end_of(&e), tick()),
        };
        // A pause that came while reading holds what was read.
        let max_write = settings
            .wait_for(|s| !s.paused(dir))
            .await
            .ok()
            .and_then(|s| s.max_write);
        let (n, fault) = {
            let mut trigger = shared.trigger.lock().unwrap();
            match *trigger {
                Some(ref mut t) if t.dir == dir => {
                    if n as u64 >= t.remaining {
                        let left = t.remaining as usize;
                        let action = t.action;
                        *trigger = None;
                        if action == Action::Pause {
                            // Taken at once, so that no other connection
                            // reads on; what was read is relayed whole.
                            shared.settings.send_modify(|s| match dir {
                                Dir::Up => s.pause_up = true,
                                Dir::Down => s.pause_down = true,
                            });
                            (n, Some(action))
                        } else {
                            (left, Some(action))
                        }
                    } else {
                        t.remaining -= n as u64;
                        (n, None)
                    }
                }
                _ => (n, None),
            }
        };
        for piece in buf[..n].chunks(max_write.unwrap_or(n.max(1))) {
            if let Err(e) = w.write_all(piece).await {
                return Stop::WriteFailed(end_of(&e), tick());
            }
            counter.fetch_add(piece.len() as u64, Ordering::SeqCst);
            sent += piece.len() as u64;
            if max_write.is_some() {
                tokio::task::yield_now().await;
            }
        }
        match fault {
            Some(Action::Pause) | None => {}
            Some(action) => return Stop::Fault(action),
        }
    }
}
