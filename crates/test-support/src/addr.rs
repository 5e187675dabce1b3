//! A non-loopback address of this host, for tests of what changes off
//! loopback (the control plane's TLS): a `10.254.x.y/32` added to `lo`
//! (root only). It is routed locally like 127.0.0.1, yet is not a
//! loopback address, so both ends treat it as "another host". Removed
//! when dropped.

use std::{net::IpAddr, process::Command};

/// An address added to `lo` for one test.
#[derive(Debug)]
pub struct ExtraAddr {
    /// The address.
    pub ip: IpAddr,
}

impl ExtraAddr {
    /// Adds a fresh address; `None` without root (the caller says it
    /// skips). Concurrent tests get distinct addresses: the kernel refuses
    /// one that exists, and the next is tried.
    pub fn add() -> Option<Self> {
        if !crate::is_root() {
            return None;
        }
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let start = std::process::id().wrapping_mul(64);
        for _ in 0..256 {
            let n = start.wrapping_add(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
            // 10.254.0.0/16, skipping .0 and .255 in the last octet.
            let (x, y) = (((n / 254) % 256) as u8, (n % 254 + 1) as u8);
            let ip = format!("10.254.{x}.{y}");
            let out = Command::new("ip")
                .args(["addr", "add", &format!("{ip}/32"), "dev", "lo"])
                .output()
                .expect("run ip");
            if out.status.success() {
                return Some(Self {
                    ip: ip.parse().expect("an IP"),
                });
            }
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("exists"), "ip addr add {ip}/32 dev lo: {err}");
        }
        panic!("no free address in 10.254.0.0/16");
    }
}

impl Drop for ExtraAddr {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["addr", "del", &format!("{}/32", self.ip), "dev", "lo"])
            .output();
    }
}
