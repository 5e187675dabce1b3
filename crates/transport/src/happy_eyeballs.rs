//! Connecting to a name that resolved to several addresses: happy
//! eyeballs (RFC 8305, section 5).
//!
//! The addresses are tried in the order given (IPv6 and IPv4 interleaved
//! by [`crate::resolve::Addrs`]); the next attempt starts when the
//! previous one fails, or [`ATTEMPT_DELAY`] after it started if it is
//! still waiting; attempts overlap, the first to connect wins and the
//! others are dropped (their sockets closed). The connect timeout bounds
//! the whole race, not each attempt. When every address fails, the error
//! names the name and each address tried with what became of it.
//!
//! This sits under the HTTP clients of explicit proxy mode, where a target
//! can be a name (`curl -x` to `http://localhost:8080/`), so that a server
//! listening on only one of `127.0.0.1` and `::1` is reached as `curl`
//! itself would reach it.

use crate::connect::ConnectError;
use futures_util::{StreamExt, stream::FuturesUnordered};
use std::{fmt, future::Future, io, net::SocketAddr, time::Duration};
use tokio::time::Instant;

/// How long an attempt has before the next one starts beside it (RFC
/// 8305's recommended "Connection Attempt Delay").
pub const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// What became of one address.
#[derive(Debug)]
pub struct Attempt {
    /// The address.
    pub addr: SocketAddr,
    /// Why it failed; `None` if it was still connecting when time ran out.
    pub error: Option<io::Error>,
}

/// No address of a name accepted a connection.
#[derive(Debug)]
pub struct ConnectAllError {
    name: Box<str>,
    /// The addresses tried, in the order they were started.
    attempts: Vec<Attempt>,
    /// Addresses never tried: time ran out first.
    not_tried: usize,
    /// The last failure, as a [`ConnectError`] (a timeout when time ran
    /// out), so that what maps connect failures to answers finds it.
    last: ConnectError,
}

impl ConnectAllError {
    /// The name whose addresses were tried.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What became of each address tried.
    pub fn attempts(&self) -> &[Attempt] {
        &self.attempts
    }

    /// Whether the connect timeout ended the race.
    pub fn timed_out(&self) -> bool {
        matches!(self.last, ConnectError::Timeout { .. })
    }

    /// The reason class, for metrics (see [`ConnectError::reason`]).
    pub fn reason(&self) -> &'static str {
        self.last.reason()
    }
}

impl fmt::Display for ConnectAllError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "connect to {} failed at every address tried: ",
            self.name
        )?;
        for (i, a) in self.attempts.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            match &a.error {
                Some(e) => write!(f, "{} ({e})", a.addr)?,
                None => write!(f, "{} (no answer in time)", a.addr)?,
            }
        }
        if self.not_tried > 0 {
            write!(f, "; {} more not tried in time", self.not_tried)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConnectAllError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.last)
    }
}

/// Connects to the first of `addrs` (a name's addresses, in the order to
/// try them) that accepts, racing them as RFC 8305 says; `timeout` bounds
/// the whole. Returns the connection and the address it reached.
pub async fn connect(
    name: &str,
    addrs: &[SocketAddr],
    timeout: Duration,
    keepalive: Option<Duration>,
) -> Result<(tokio::net::TcpStream, SocketAddr), ConnectAllError> {
    race(name, addrs, timeout, ATTEMPT_DELAY, |addr| {
        crate::connect::dial(addr, keepalive)
    })
    .await
}

/// [`connect`] with the dialling and the delay given: what the tests
/// drive with paused time and made-up connections.
pub(crate) async fn race<T, F, Fut>(
    name: &str,
    addrs: &[SocketAddr],
    timeout: Duration,
    delay: Duration,
    mut dial: F,
) -> Result<(T, SocketAddr), ConnectAllError>
where
    F: FnMut(SocketAddr) -> Fut,
    Fut: Future<Output = io::Result<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut racing = FuturesUnordered::new();
    // Every address started, in order; an error is filled in when it fails.
    let mut attempts: Vec<Attempt> = Vec::with_capacity(addrs.len());
    let mut last_error: Option<(SocketAddr, io::Error)> = None;
    let mut start = |attempts: &mut Vec<Attempt>, racing: &mut FuturesUnordered<_>| {
        let addr = addrs[attempts.len()];
        attempts.push(Attempt { addr, error: None });
        let attempt = dial(addr);
        racing.push(async move { (addr, attempt.await) });
    };
    if !addrs.is_empty() {
        start(&mut attempts, &mut racing);
    }
    let next_due = tokio::time::sleep_until(Instant::now() + delay);
    let time_out = tokio::time::sleep_until(deadline);
    tokio::pin!(next_due, time_out);
    loop {
        let more = attempts.len() < addrs.len();
        if racing.is_empty() && !more {
            break;
        }
        tokio::select! {
            biased;
            Some((addr, result)) = racing.next(), if !racing.is_empty() => match result {
                Ok(io) => return Ok((io, addr)),
                Err(e) => {
                    if let Some(a) = attempts.iter_mut().find(|a| a.addr == addr) {
                        a.error = Some(io::Error::new(e.kind(), e.to_string()));
                    }
                    last_error = Some((addr, e));
                    // A failure starts the next attempt at once.
                    if attempts.len() < addrs.len() {
                        start(&mut attempts, &mut racing);
                        next_due.as_mut().reset(Instant::now() + delay);
                    }
                }
            },
            () = &mut next_due, if more => {
                start(&mut attempts, &mut racing);
                next_due.as_mut().reset(Instant::now() + delay);
            }
            () = &mut time_out => {
                let last_addr = attempts.last().map_or(addrs.first().copied(), |a| Some(a.addr));
                return Err(ConnectAllError {
                    name: name.into(),
                    not_tried: addrs.len() - attempts.len(),
                    attempts,
                    last: ConnectError::Timeout {
                        addr: last_addr.unwrap_or(UNSPECIFIED),
                        timeout,
                    },
                });
            }
        }
    }
    let last = match last_error {
        Some((addr, source)) => ConnectError::Io { addr, source },
        // No address at all.
        None => ConnectError::Io {
            addr: UNSPECIFIED,
            source: io::Error::new(io::ErrorKind::NotFound, "no address to connect to"),
        },
    };
    Err(ConnectAllError {
        name: name.into(),
        attempts,
        not_tried: 0,
        last,
    })
}

const UNSPECIFIED: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        collections::HashMap,
        sync::{Arc, Mutex},
    };

    const V6: &str = "[2001:db8::1]:80";
    const V4: &str = "192.0.2.1:80";
    const V6B: &str = "[2001:db8::2]:80";

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// How a made-up address answers a connection attempt.
    #[derive(Clone, Copy)]
    enum Behaviour {
        /// Never (a black hole).
        Silent,
        /// Accepts after this long.
        AcceptsAfter(Duration),
        /// Refuses after this long.
        RefusesAfter(Duration),
    }

    /// A dialler over made-up addresses, recording when each was dialled
    /// (relative to the start) and which attempts were dropped unfinished.
    #[derive(Clone)]
    struct Net {
        behaviour: HashMap<SocketAddr, Behaviour>,
        started: Arc<Mutex<Vec<(SocketAddr, Duration)>>>,
        dropped: Arc<Mutex<Vec<SocketAddr>>>,
        t0: Instant,
    }

    /// Records its address as dropped unless defused.
    struct DropGuard(Option<(SocketAddr, Arc<Mutex<Vec<SocketAddr>>>)>);

    impl DropGuard {
        fn defuse(&mut self) {
            self.0 = None;
        }
    }

    impl Drop for DropGuard {
        fn drop(&mut self) {
            if let Some((addr, dropped)) = self.0.take() {
                dropped.lock().unwrap().push(addr);
            }
        }
    }

    impl Net {
        fn new(behaviour: &[(&str, Behaviour)]) -> Self {
            Self {
                behaviour: behaviour.iter().map(|(s, b)| (a(s), *b)).collect(),
                started: Default::default(),
                dropped: Default::default(),
                t0: Instant::now(),
            }
        }

        fn dial(&self, addr: SocketAddr) -> impl Future<Output = io::Result<SocketAddr>> + use<> {
            self.started.lock().unwrap().push((addr, self.t0.elapsed()));
            let behaviour = self.behaviour[&addr];
            let mut guard = DropGuard(Some((addr, self.dropped.clone())));
            async move {
                let result = match behaviour {
                    Behaviour::Silent => std::future::pending().await,
                    Behaviour::AcceptsAfter(d) => {
                        tokio::time::sleep(d).await;
                        Ok(addr)
                    }
                    Behaviour::RefusesAfter(d) => {
                        tokio::time::sleep(d).await;
                        Err(io::Error::from(io::ErrorKind::ConnectionRefused))
                    }
                };
                guard.defuse();
                result
            }
        }

        fn started(&self) -> Vec<(SocketAddr, Duration)> {
            self.started.lock().unwrap().clone()
        }
    }

    async fn run(
        net: &Net,
        addrs: &[&str],
        timeout: Duration,
    ) -> Result<(SocketAddr, SocketAddr), ConnectAllError> {
        let addrs: Vec<SocketAddr> = addrs.iter().map(|s| a(s)).collect();
        race("web.example:80", &addrs, timeout, ATTEMPT_DELAY, |addr| {
            net.dial(addr)
        })
        .await
    }

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[tokio::test(start_paused = true)]
    async fn a_silent_first_address_gives_way_after_the_delay() {
        use Behaviour::*;
        let net = Net::new(&[(V6, Silent), (V4, AcceptsAfter(MS(10)))]);
        let (conn, at) = run(&net, &[V6, V4], Duration::from_secs(10)).await.unwrap();
        assert_eq!((conn, at), (a(V4), a(V4)));
        // The second started 250 ms after the first, and won 10 ms later;
        // the first, still silent, was dropped.
        assert_eq!(net.started(), vec![(a(V6), MS(0)), (a(V4), MS(250))]);
        assert_eq!(net.t0.elapsed(), MS(260));
        assert_eq!(*net.dropped.lock().unwrap(), vec![a(V6)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_starts_the_next_attempt_at_once() {
        use Behaviour::*;
        let net = Net::new(&[(V6, RefusesAfter(MS(5))), (V4, AcceptsAfter(MS(1)))]);
        let (_, at) = run(&net, &[V6, V4], Duration::from_secs(10)).await.unwrap();
        assert_eq!(at, a(V4));
        assert_eq!(net.started(), vec![(a(V6), MS(0)), (a(V4), MS(5))]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_first_address_can_still_win() {
        use Behaviour::*;
        // The first answers at 300 ms, before the second (started at 250
        // ms) does at 450 ms: the first wins, the second is dropped.
        let net = Net::new(&[(V6, AcceptsAfter(MS(300))), (V4, AcceptsAfter(MS(200)))]);
        let (_, at) = run(&net, &[V6, V4], Duration::from_secs(10)).await.unwrap();
        assert_eq!(at, a(V6));
        assert_eq!(*net.dropped.lock().unwrap(), vec![a(V4)]);
    }

    #[tokio::test(start_paused = true)]
    async fn when_all_fail_the_error_names_the_name_and_every_address() {
        use Behaviour::*;
        let net = Net::new(&[
            (V6, RefusesAfter(MS(1))),
            (V4, RefusesAfter(MS(1))),
            (V6B, RefusesAfter(MS(1))),
        ]);
        let e = run(&net, &[V6, V4, V6B], Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(!e.timed_out());
        assert_eq!(e.reason(), "connect_refused");
        let text = e.to_string();
        assert!(
            text.starts_with("connect to web.example:80 failed"),
            "{text}"
        );
        for addr in [V6, V4, V6B] {
            assert!(text.contains(addr), "{text}");
        }
        let tried: Vec<SocketAddr> = e.attempts().iter().map(|a| a.addr).collect();
        assert_eq!(tried, vec![a(V6), a(V4), a(V6B)]);
        // What maps connect failures to answers finds one in the chain.
        let source = std::error::Error::source(&e).unwrap();
        assert!(source.downcast_ref::<ConnectError>().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn the_timeout_bounds_the_whole_race() {
        use Behaviour::*;
        let net = Net::new(&[(V6, Silent), (V4, Silent), (V6B, Silent)]);
        let e = run(&net, &[V6, V4, V6B], MS(400)).await.unwrap_err();
        // 0 and 250 ms started; the third was due at 500 ms, after the
        // 400 ms timeout.
        assert_eq!(net.t0.elapsed(), MS(400));
        assert!(e.timed_out());
        assert_eq!(e.reason(), "connect_timeout");
        assert_eq!(e.attempts().len(), 2);
        assert!(e.attempts().iter().all(|a| a.error.is_none()));
        let text = e.to_string();
        assert!(text.contains("no answer in time"), "{text}");
        assert!(text.contains("1 more not tried"), "{text}");
        assert!(text.contains(V6) && text.contains(V4), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn no_address_is_an_error() {
        let net = Net::new(&[]);
        let e = run(&net, &[], MS(400)).await.unwrap_err();
        assert!(e.attempts().is_empty());
    }

    #[tokio::test]
    async fn connects_to_the_address_that_listens() {
        // A real refusal on one loopback port, a listener on another.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap();
        let (stream, at) = connect("both", &[closed, open], Duration::from_secs(5), None)
            .await
            .unwrap();
        assert_eq!(at, open);
        assert_eq!(stream.peer_addr().unwrap(), open);
        assert!(stream.nodelay().unwrap());
    }
}
