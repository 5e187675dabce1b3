//! `linnet wait-ready`: waits until the local proxy reports ready. It is
//! the `postStart` hook `linnet inject --native-sidecar=false` gives the
//! proxy container, so that the kubelet starts the application's
//! containers only once the proxy serves. Blocking std I/O: one request a
//! few times a second needs no runtime.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::ExitCode,
    time::{Duration, Instant},
};

/// `linnet wait-ready` arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct WaitReadyArgs {
    /// The proxy's admin address.
    #[arg(long, default_value = "127.0.0.1:4191")]
    admin_addr: SocketAddr,
    /// Give up (exit 1) after this long.
    #[arg(long, default_value = "2m", value_parser = linnet_config::parse::duration)]
    timeout: Duration,
}

pub(crate) fn main(args: WaitReadyArgs) -> ExitCode {
    let deadline = Instant::now() + args.timeout;
    loop {
        if ready(args.admin_addr) {
            return ExitCode::SUCCESS;
        }
        if Instant::now() >= deadline {
            eprintln!(
                "linnet wait-ready: {} not ready after {:?}",
                args.admin_addr, args.timeout
            );
            return ExitCode::FAILURE;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether `GET /ready` answers 200.
fn ready(addr: SocketAddr) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        conn.set_read_timeout(Some(Duration::from_secs(1)))?;
        conn.write_all(b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut head = [0u8; 12];
        conn.read_exact(&mut head)?;
        // "HTTP/1.1 200"
        Ok(head.starts_with(b"HTTP/1.") && &head[8..] == b" 200")
    };
    attempt().unwrap_or(false)
}
