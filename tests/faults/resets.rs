//! A peer resets mid-request or mid-response, on either side of the
//! proxy: the client (its relay resets after so many bytes) or the
//! application (likewise). The party that did not fail must see an error
//! (a tunnel: a TCP reset), never a clean end; the transfer's bytes that
//! did complete are checked; and the proxy serves the next transfer.

use crate::{
    Path, per_kind,
    traffic::{self, Got, Kind, Transfer},
};
use linnet_test_support::fault::{Dir, End};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// The next transfer through the same proxy completes.
async fn recovers(path: &Path, kind: Kind) {
    let t = Transfer {
        up: 100 * KIB,
        down: 100 * KIB,
    };
    let end = traffic::run(kind, path.entry(), t).await;
    assert_eq!(end.got, Got::Complete, "{kind:?}: the next transfer failed");
}

/// What the client saw of a transfer the fault broke: an error; through
/// a tunnel, a reset.
fn client_saw_an_error(kind: Kind, end: &traffic::ClientEnd) {
    assert!(end.got.is_error(), "{kind:?}: the client saw {:?}", end.got);
    if kind.is_tunnel() {
        assert!(
            end.reset,
            "{kind:?}: the client saw {:?}, not a reset",
            end.got
        );
    }
}

async fn app_resets_mid_response(kind: Kind) {
    let path = Path::start(kind).await;
    path.app_tap.reset_after(Dir::Down, 256 * KIB as u64);
    let t = Transfer {
        up: 64 * KIB,
        down: 4 * MIB,
    };
    let end = traffic::run(kind, path.entry(), t).await;
    assert!(path.app_tap.fired(), "the fault never fired");
    client_saw_an_error(kind, &end);
    // HTTP: the request had completed before the response began. A
    // tunnel carries both at once: the reset may cut the upload too, but
    // never so that it looks complete.
    let uploads = path.app.wait_uploads(1).await;
    if kind.is_tunnel() {
        assert!(!matches!(uploads[0], Got::Corrupt(_)), "{uploads:?}");
    } else {
        assert_eq!(uploads, vec![Got::Complete]);
    }
    if kind.is_tunnel() {
        // The proxy reset the client's connection.
        let ended = path.client_tap.wait_ended(1).await;
        assert_eq!(ended[0].target, Some(End::Reset), "{ended:?}");
    }
    recovers(&path, kind).await;
}
per_kind!(app_resets_mid_response);

async fn app_resets_mid_request(kind: Kind) {
    let path = Path::start(kind).await;
    path.app_tap.reset_after(Dir::Up, 128 * KIB as u64);
    let t = Transfer {
        up: 4 * MIB,
        down: 64 * KIB,
    };
    let end = traffic::run(kind, path.entry(), t).await;
    assert!(path.app_tap.fired(), "the fault never fired");
    client_saw_an_error(kind, &end);
    let uploads = path.app.wait_uploads(1).await;
    assert!(uploads[0].is_error(), "the application saw {uploads:?}");
    if kind.is_tunnel() {
        // The proxy reset the client's connection (after passing on the
        // FIN of the application's complete reply, if it came first).
        let ended = path.client_tap.wait_ended(1).await;
        assert!(ended[0].target_reset, "{ended:?}");
    }
    recovers(&path, kind).await;
}
per_kind!(app_resets_mid_request);

async fn client_resets_mid_request(kind: Kind) {
    let path = Path::start(kind).await;
    path.client_tap.reset_after(Dir::Up, 128 * KIB as u64);
    let t = Transfer {
        up: 4 * MIB,
        down: 64 * KIB,
    };
    let end = traffic::run(kind, path.entry(), t).await;
    assert!(path.client_tap.fired(), "the fault never fired");
    assert!(end.got.is_error(), "the client saw {:?}", end.got);
    // The application saw its request fail, not end.
    let uploads = path.app.wait_uploads(1).await;
    assert!(uploads[0].is_error(), "the application saw {uploads:?}");
    if kind.is_tunnel() {
        // The proxy reset its connection to the application.
        let ended = path.app_tap.wait_ended(1).await;
        assert_eq!(ended[0].client, Some(End::Reset), "{ended:?}");
    }
    recovers(&path, kind).await;
}
per_kind!(client_resets_mid_request);

async fn client_resets_mid_response(kind: Kind) {
    let path = Path::start(kind).await;
    path.client_tap.reset_after(Dir::Down, 256 * KIB as u64);
    let t = Transfer {
        up: 64 * KIB,
        down: 32 * MIB,
    };
    let end = traffic::run(kind, path.entry(), t).await;
    assert!(path.client_tap.fired(), "the fault never fired");
    assert!(end.got.is_error(), "the client saw {:?}", end.got);
    assert_eq!(path.app.wait_uploads(1).await, vec![Got::Complete]);
    // The application's response was cut off, not taken whole.
    let downloads = path.app.wait_downloads(1).await;
    assert!(downloads[0].is_error(), "the application saw {downloads:?}");
    if kind.is_tunnel() {
        // The proxy passed on the client's FIN after its complete upload,
        // then reset the connection whose download failed.
        let ended = path.app_tap.wait_ended(1).await;
        assert!(ended[0].client_reset, "{ended:?}");
    }
    recovers(&path, kind).await;
}
per_kind!(client_resets_mid_response);
