//! SIGTERM with long-lived streams open, `linnet proxy` as its own
//! process (the signal handling is the binary's).
//!
//! Two groups of transfers, one of each kind per group, are in flight
//! with their responses held part-way by the application's relay: one
//! group through the outbound listener, one through the inbound. Then
//! SIGTERM: `/ready` turns 503, new connections are refused, the outbound
//! group is let go and completes within the grace period, and the inbound
//! group, still held when the grace period ends, is reset (tunnels: a TCP
//! reset on both sides, never a FIN; HTTP: an error). The process exits
//! 0.

use crate::{
    SMALL_BUFFER,
    traffic::{self, App, Got, Kind, Transfer},
};
use linnet_test_support::{
    eventually,
    fault::{Dir, End, FaultProxy},
    metrics::try_http,
    sidecar::Sidecar,
};
use std::time::Duration;

const KIB: usize = 1024;
/// Long enough that the released group finishes well within it on a
/// loaded CI machine (a debug build, every test at once): only the held
/// group waits for its end.
const GRACE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_resets() {
    // The HTTP application serves every kind but opaque TCP; each has a
    // proxy of its own (a listener goes to one fixed destination), and
    // each proxy's two listeners go through relays of their own.
    let apps = [App::start(Kind::Http1).await, App::start(Kind::Tcp).await];
    let side = |kind: Kind| usize::from(kind == Kind::Tcp);
    let grace = format!("{}s", GRACE.as_secs());
    let mut sides = Vec::new();
    for (i, app) in apps.iter().enumerate() {
        // (outbound, inbound) relays to the application.
        let to_app = (
            FaultProxy::start_with(app.addr, Some(SMALL_BUFFER)).await,
            FaultProxy::start_with(app.addr, Some(SMALL_BUFFER)).await,
        );
        to_app.0.stall_after(Dir::Down, 128 * KIB as u64);
        to_app.1.stall_after(Dir::Down, 128 * KIB as u64);
        let (out, inb) = (to_app.0.addr.to_string(), to_app.1.addr.to_string());
        let proxy = Sidecar::start(
            &format!("sigterm-{i}"),
            &[
                ("LINNET_OUTBOUND_ORIG_DST_ADDR", &out),
                ("LINNET_INBOUND_ORIG_DST_ADDR", &inb),
                ("LINNET_SHUTDOWN_GRACE_PERIOD", &grace),
                ("LINNET_CORES", "1"),
            ],
        )
        .await;
        // (outbound, inbound) relays from the clients.
        let from_client = (
            FaultProxy::start(proxy.outbound).await,
            FaultProxy::start(proxy.inbound).await,
        );
        sides.push((proxy, to_app, from_client));
    }
    let t = Transfer {
        up: 64 * KIB,
        down: 1024 * KIB,
    };
    let mut finishing = Vec::new();
    let mut remaining = Vec::new();
    for kind in Kind::ALL {
        let (_, _, from_client) = &sides[side(kind)];
        finishing.push((
            kind,
            tokio::spawn(traffic::run(kind, from_client.0.addr, t)),
        ));
        remaining.push((
            kind,
            tokio::spawn(traffic::run(kind, from_client.1.addr, t)),
        ));
    }
    // Every request reached its application (4 HTTP kinds twice, TCP twice).
    apps[0].wait_uploads(8).await;
    apps[1].wait_uploads(2).await;
    assert!(
        apps.iter()
            .flat_map(|a| a.uploads())
            .all(|u| u == Got::Complete)
    );

    for (proxy, _, _) in &sides {
        proxy.sigterm();
    }
    for (proxy, _, _) in &sides {
        let admin = proxy.admin;
        eventually("/ready turns 503", Duration::from_secs(5), || async {
            let (status, _) = try_http(admin, "GET", "/ready", "").await.ok()?;
            (status == 503).then_some(())
        })
        .await;
        for listener in [proxy.outbound, proxy.inbound] {
            eventually(
                "new connections refused",
                Duration::from_secs(5),
                || async {
                    match tokio::net::TcpStream::connect(listener).await {
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(()),
                        _ => None,
                    }
                },
            )
            .await;
        }
    }

    // The outbound group is let go: it completes within the grace period.
    for (_, to_app, _) in &sides {
        to_app.0.unstall(Dir::Down);
    }
    for (kind, t) in finishing {
        assert_eq!(
            t.await.unwrap().got,
            Got::Complete,
            "{kind:?} let go after SIGTERM"
        );
    }

    // The inbound group is still held when the grace period ends.
    let mut failed = Vec::new();
    for (kind, t) in remaining {
        let end = t.await.unwrap();
        if !end.got.is_error() || (kind.is_tunnel() && !end.reset) {
            failed.push(format!(
                "{kind:?}: the client saw {:?} (reset: {})",
                end.got, end.reset
            ));
        }
    }
    // Opaque TCP: how the proxy ended the client's connection and its
    // connection to the application.
    let (_, to_app, from_client) = &sides[side(Kind::Tcp)];
    for e in from_client.1.ended() {
        if e.target != Some(End::Reset) {
            failed.push(format!(
                "opaque TCP: the client's connection ended with {e:?}"
            ));
        }
    }
    // (It passed on the client's FIN after the complete upload first.)
    for e in to_app.1.ended() {
        if !e.client_reset {
            failed.push(format!(
                "opaque TCP: the connection to the application ended with {e:?}"
            ));
        }
    }
    for (proxy, _, _) in &mut sides {
        let status = proxy
            .wait_exit(GRACE + Duration::from_secs(5))
            .await
            .expect("the proxy exits after the grace period");
        if !status.success() {
            failed.push(format!("exit status {status}"));
        }
    }
    assert!(failed.is_empty(), "at the grace period's end: {failed:#?}");
}
