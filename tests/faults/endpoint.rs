//! The application (the endpoint) killed and restarted under load.
//!
//! Transfers are in flight, their responses part-way (the endpoint's
//! relay stalls each connection a quarter of the way into its replies),
//! when the endpoint dies: it stops listening and its connections close
//! as the kernel closes a killed process's sockets, with a FIN (opaque
//! TCP, where a FIN would be a clean end, dies with resets). Every
//! transfer in flight fails with an error, never a clean end with bytes
//! missing (a truncated `200`); transfers while it is down fail too;
//! once it is back, transfers complete again.

use crate::{
    Path, per_kind,
    traffic::{self, Got, Kind, Transfer},
};
use linnet_test_support::{eventually, fault::Dir};
use std::time::Duration;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
/// Transfers in flight when the endpoint dies.
const IN_FLIGHT: usize = 8;

async fn endpoint_killed_and_restarted(kind: Kind) {
    let mut path = Path::start(kind).await;
    let t = Transfer {
        up: 64 * KIB,
        down: MIB,
    };
    assert_eq!(traffic::run(kind, path.entry(), t).await.got, Got::Complete);

    path.app_tap.stall_after(Dir::Down, 256 * KIB as u64);
    let entry = path.entry();
    let in_flight: Vec<_> = (0..IN_FLIGHT)
        .map(|_| tokio::spawn(traffic::run(kind, entry, t)))
        .collect();
    // Every request has reached the endpoint, whose answers are now held.
    let uploads = path.app.wait_uploads(1 + IN_FLIGHT).await;
    assert!(uploads.iter().all(|u| *u == Got::Complete), "{uploads:?}");
    if kind == Kind::Tcp {
        path.app_tap.crash().await;
    } else {
        path.app_tap.kill().await;
    }
    for (i, t) in in_flight.into_iter().enumerate() {
        let end = t.await.unwrap();
        assert!(
            end.got.is_error(),
            "{kind:?}: transfer {i} in flight when the endpoint died: {:?}",
            end.got
        );
    }

    // While it is down.
    for _ in 0..3 {
        let end = traffic::run(kind, entry, t).await;
        assert!(end.got.is_error(), "{kind:?} while down: {:?}", end.got);
    }

    // Back: transfers complete again, every one of them once one has.
    path.app_tap.unstall(Dir::Down);
    path.app_tap.restart().await;
    eventually(
        "a transfer completes after the restart",
        Duration::from_secs(10),
        || async {
            let end = traffic::run(kind, entry, t).await;
            assert!(!matches!(end.got, Got::Corrupt(_)), "{:?}", end.got);
            (end.got == Got::Complete).then_some(())
        },
    )
    .await;
    for i in 0..5 {
        let end = traffic::run(kind, entry, t).await;
        assert_eq!(
            end.got,
            Got::Complete,
            "{kind:?}: transfer {i} after the restart"
        );
    }
}
per_kind!(endpoint_killed_and_restarted);
