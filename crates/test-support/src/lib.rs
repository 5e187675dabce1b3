//! Test fixtures for Linnet.
//!
//! - [`proxy`]: the whole proxy in-process on `127.0.0.1:0`, with an
//!   injected original-destination lookup;
//! - [`tcp`]: servers and clients that check every byte with SHA-256;
//! - [`control`]: `linnet control` in-process, killable;
//! - [`fault`]: a TCP relay that injects faults (pauses, resets, cuts,
//!   trickles, a crash and a restart) and records how connections ended;
//! - [`sidecar`]: `linnet proxy` as its own process (memory, descriptors,
//!   resource limits, signals);
//! - [`grpc`]: a raw-bytes gRPC codec;
//! - [`metrics`]: scraping `/metrics` and reading samples;
//! - [`netns`]: network namespaces for interception tests (root only);
//! - [`eventually`]: waiting for a condition without fixed sleeps.
//!
//! Fixtures panic on failure: they are for tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod addr;
pub mod backend;
pub mod control;
pub mod fault;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod netns;
pub mod process;
pub mod proxy;
pub mod sidecar;
pub mod tcp;

use std::{future::Future, time::Duration};

/// Polls `check` every 20ms until it returns `Some`, for up to `timeout`;
/// panics with `what` if it never does.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether this process runs as root (network namespaces need it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next().map(|u| u == "0"))
        })
        .unwrap_or(false)
}
