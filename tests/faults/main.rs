//! The fault-injection matrix: faults × traffic kinds (opaque TCP,
//! HTTP/1.1, HTTP/2, gRPC streaming, WebSocket).
//!
//! Every case checks the same two things: what the parties completed
//! arrived byte-exact (SHA-256), and what they did not complete ended in
//! an error they can see (a TCP reset, an HTTP/2 stream error, an error
//! status), never in a clean end that looks complete. Faults come from
//! `linnet_test_support::fault::FaultProxy` relays put on either side of
//! the proxy, which also record how the proxy ended each connection.
//!
//! One module per fault family:
//! - [`resets`]: a peer resets mid-request or mid-response, on either side;
//! - [`slow`]: stalled readers and writers (flow control, flat memory);
//! - [`endpoint`]: the application killed and restarted under load;
//! - [`control_plane`]: the control plane killed, restarted, and
//!   answering garbage;
//! - [`rotation`]: certificates and the issuer rotating under load, mTLS
//!   between meshed proxies;
//! - [`sigterm`]: SIGTERM with long-lived streams open;
//! - [`idle`]: 10,000 idle connections;
//! - [`fds`]: file-descriptor exhaustion.
//!
//! Cases that measure a process (memory, descriptors, signals, limits)
//! run `linnet proxy` as its own process
//! (`linnet_test_support::sidecar::Sidecar`); the others run the proxy
//! in-process.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod control_plane;
mod endpoint;
mod fds;
mod idle;
mod resets;
mod rotation;
mod sigterm;
mod slow;
mod traffic;

use linnet_app::OrigDst;
use linnet_test_support::{fault::FaultProxy, proxy::Proxy};
use std::net::SocketAddr;
use traffic::{App, Kind};

/// Socket buffers of the relays where bytes in flight matter: small, so
/// that what a relay lets through is what the proxy took.
pub const SMALL_BUFFER: u32 = 64 * 1024;

/// client → `client_tap` → in-process proxy (outbound) → `app_tap` → app.
pub struct Path {
    /// The application.
    pub app: App,
    /// The relay between the proxy and the application.
    pub app_tap: FaultProxy,
    /// The proxy.
    pub proxy: Proxy,
    /// The relay between the client and the proxy.
    pub client_tap: FaultProxy,
}

impl Path {
    /// Starts the application, the relays and the proxy.
    pub async fn start(kind: Kind) -> Self {
        let app = App::start(kind).await;
        let app_tap = FaultProxy::start_with(app.addr, Some(SMALL_BUFFER)).await;
        let proxy = Proxy::start(OrigDst::Fixed(app_tap.addr), &[]).await;
        let client_tap = FaultProxy::start_with(proxy.outbound, Some(SMALL_BUFFER)).await;
        Self {
            app,
            app_tap,
            proxy,
            client_tap,
        }
    }

    /// Where clients connect.
    pub fn entry(&self) -> SocketAddr {
        self.client_tap.addr
    }
}

/// One test per traffic kind for an `async fn case(kind: Kind)`, in a
/// module named after the case.
#[macro_export]
macro_rules! per_kind {
    ($case:ident) => {
        mod $case {
            use $crate::traffic::Kind;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tcp() {
                super::$case(Kind::Tcp).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn http1() {
                super::$case(Kind::Http1).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn http2() {
                super::$case(Kind::Http2).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn grpc() {
                super::$case(Kind::Grpc).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn websocket() {
                super::$case(Kind::WebSocket).await
            }
        }
    };
}
