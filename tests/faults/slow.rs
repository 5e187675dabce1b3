//! Slow readers and slow writers, through `linnet proxy` as its own
//! process (one core, as a sidecar runs), so that its memory is the
//! process's `VmRSS`.
//!
//! - A reader that stops reading once a transfer is under way (its relay
//!   pauses after 64 KiB): the proxy stops
//!   reading from the writer, which feels the back-pressure; what the
//!   proxy holds meanwhile (bytes the writer's relay got rid of, less
//!   those the reader's relay took) and its memory growth stay bounded,
//!   far below the transfer; once the reader reads again, every byte
//!   arrives. Both directions: a client slow to read its download, an
//!   application slow to read its upload.
//! - Writers that stop mid-stream and hold it open (each connection's
//!   relay stalls after so many bytes), many at once: clients stalling
//!   their uploads, or the application its downloads (one test each, so
//!   that each measures from a process that has not seen the other): the
//!   proxy's memory per stalled stream stays bounded, and every transfer
//!   completes once they write again. Before the uploads, a transfer
//!   whose every write is cut into 3-byte pieces on both sides arrives
//!   byte-exact.
//!
//! The bounds are generous (kernel socket buffers on loopback grow to
//! megabytes); what they catch is a proxy that buffers what it cannot
//! pass on.

use crate::{
    SMALL_BUFFER, per_kind,
    traffic::{self, App, Got, Kind, Transfer},
};
use linnet_test_support::{
    eventually,
    fault::{Dir, FaultProxy},
    sidecar::Sidecar,
};
use std::{cell::Cell, time::Duration};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// The stalled transfer.
const BIG: u64 = 64 * MIB;
/// The most the proxy may hold (kernel buffers included) of a stalled
/// transfer.
const MAX_HELD: u64 = 24 * MIB;
/// The most the proxy's memory may grow while a transfer is stalled.
const MAX_GROWTH: u64 = 16 * MIB;
/// How far a stalled reader lets a transfer go before it stops reading.
const READ_BEFORE_STALL: u64 = 64 * KIB;
/// How far a transfer must have got before a stalled reader's stall
/// counts (more than the reader took: the writer wrote on).
const STARTED: u64 = 512 * KIB;
/// How far each stalled writer writes before it stops.
const WRITE_BEFORE_STALL: u64 = 256 * KIB;
/// Streams stalled by their writers at once.
const STALLED: usize = 32;
/// The most the proxy's memory may grow per stalled stream.
const MAX_PER_STREAM: u64 = 512 * KIB;

/// client → relay → `linnet proxy` → relay → application.
struct Rig {
    kind: Kind,
    app: App,
    app_tap: FaultProxy,
    proxy: Sidecar,
    client_tap: FaultProxy,
}

impl Rig {
    async fn start(kind: Kind, name: &str) -> Self {
        let app = App::start(kind).await;
        let app_tap = FaultProxy::start_with(app.addr, Some(SMALL_BUFFER)).await;
        let target = app_tap.addr.to_string();
        let proxy = Sidecar::start(
            &format!("slow-{name}-{kind:?}"),
            &[
                ("LINNET_OUTBOUND_ORIG_DST_ADDR", &target),
                ("LINNET_CORES", "1"),
            ],
        )
        .await;
        let client_tap = FaultProxy::start_with(proxy.outbound, Some(SMALL_BUFFER)).await;
        let rig = Self {
            kind,
            app,
            app_tap,
            proxy,
            client_tap,
        };
        // A first round in both directions: the allocator keeps what it
        // took for reuse, and that is not growth.
        rig.transfer(8 * MIB, 8 * MIB).await;
        rig
    }

    /// Runs one transfer; it must complete.
    async fn transfer(&self, up: u64, down: u64) {
        let t = Transfer {
            up: up as usize,
            down: down as usize,
        };
        let end = traffic::run(self.kind, self.client_tap.addr, t).await;
        assert_eq!(end.got, Got::Complete, "{:?}", self.kind);
    }

    fn spawn(&self, up: u64, down: u64) -> tokio::task::JoinHandle<traffic::ClientEnd> {
        let t = Transfer {
            up: up as usize,
            down: down as usize,
        };
        tokio::spawn(traffic::run(self.kind, self.client_tap.addr, t))
    }
}

/// Waits until `count` has moved at least `started` past `from` and
/// then stopped moving (unchanged for 300ms: the writer is held back, or
/// done); returns it.
async fn settled(what: &str, from: u64, started: u64, count: impl Fn() -> u64) -> u64 {
    let last = Cell::new(u64::MAX);
    let same = Cell::new(0);
    eventually(what, Duration::from_secs(30), || {
        let (last, same) = (&last, &same);
        let now = count();
        async move {
            if now < from + started {
                return None;
            }
            if now == last.get() {
                same.set(same.get() + 1);
            } else {
                last.set(now);
                same.set(0);
            }
            (same.get() >= 15).then_some(now)
        }
    })
    .await
}

async fn slow_reader(kind: Kind) {
    let rig = Rig::start(kind, "reader").await;
    let base_down = rig.proxy.rss();

    // A client that stops reading its download.
    let (from_app, to_client) = (
        rig.app_tap.bytes(Dir::Down),
        rig.client_tap.bytes(Dir::Down),
    );
    rig.client_tap.pause_after(Dir::Down, READ_BEFORE_STALL);
    let t = rig.spawn(KIB, BIG);
    let sent = settled(
        "the application's download held back",
        from_app,
        STARTED,
        || rig.app_tap.bytes(Dir::Down),
    )
    .await
        - from_app;
    let held_down = sent - (rig.client_tap.bytes(Dir::Down) - to_client);
    let growth_down = rig.proxy.rss().saturating_sub(base_down);
    rig.client_tap.resume(Dir::Down);
    assert_eq!(t.await.unwrap().got, Got::Complete, "{kind:?} download");

    // An application that stops reading its upload. (Measured from here:
    // the allocator keeps what the download's end freed for reuse.)
    let base_up = rig.proxy.rss();
    let (from_client, to_app) = (rig.client_tap.bytes(Dir::Up), rig.app_tap.bytes(Dir::Up));
    rig.app_tap.pause_after(Dir::Up, READ_BEFORE_STALL);
    let t = rig.spawn(BIG, KIB);
    let sent = settled(
        "the client's upload held back",
        from_client,
        STARTED,
        || rig.client_tap.bytes(Dir::Up),
    )
    .await
        - from_client;
    let held_up = sent - (rig.app_tap.bytes(Dir::Up) - to_app);
    let growth_up = rig.proxy.rss().saturating_sub(base_up);
    rig.app_tap.resume(Dir::Up);
    assert_eq!(t.await.unwrap().got, Got::Complete, "{kind:?} upload");
    assert!(rig.app.uploads().iter().all(|u| *u == Got::Complete));

    println!(
        "{kind:?}: a stalled {} MiB download: the proxy held {} KiB, its RSS grew {} KiB; a stalled upload: held {} KiB, RSS grew {} KiB (from {} KiB)",
        BIG / MIB,
        held_down / KIB,
        growth_down / KIB,
        held_up / KIB,
        growth_up / KIB,
        base_down / KIB,
    );
    for (what, held, growth) in [
        ("download", held_down, growth_down),
        ("upload", held_up, growth_up),
    ] {
        assert!(
            held <= MAX_HELD,
            "{kind:?} {what}: the proxy took {} KiB its reader did not read",
            held / KIB
        );
        assert!(
            growth <= MAX_GROWTH,
            "{kind:?} {what}: the proxy's RSS grew {} KiB while its reader stalled",
            growth / KIB
        );
    }
}
per_kind!(slow_reader);

/// Stalls [`STALLED`] transfers mid-stream by their writers (the
/// clients' uploads, or the application's downloads), measures the
/// proxy's memory, lets them go, and checks they all complete.
async fn stalled_writers(rig: &Rig, dir: Dir) -> u64 {
    let base = rig.proxy.rss();
    let (writer, reader) = match dir {
        Dir::Up => (&rig.client_tap, &rig.app_tap),
        Dir::Down => (&rig.app_tap, &rig.client_tap),
    };
    writer.stall_after(dir, WRITE_BEFORE_STALL);
    let from = reader.bytes(dir);
    let transfers: Vec<_> = (0..STALLED)
        .map(|_| match dir {
            Dir::Up => rig.spawn(MIB, KIB),
            Dir::Down => rig.spawn(KIB, MIB),
        })
        .collect();
    settled("the writers stalled", from, WRITE_BEFORE_STALL / 2, || {
        reader.bytes(dir)
    })
    .await;
    let growth = rig.proxy.rss().saturating_sub(base);
    writer.unstall(dir);
    for t in transfers {
        assert_eq!(
            t.await.unwrap().got,
            Got::Complete,
            "{:?} {dir:?}",
            rig.kind
        );
    }
    assert!(rig.app.uploads().iter().all(|u| *u == Got::Complete));
    println!(
        "{:?}: {STALLED} transfers stalled mid-{} by their writers: RSS grew {} KiB (from {} KiB)",
        rig.kind,
        if dir == Dir::Up { "upload" } else { "download" },
        growth / KIB,
        base / KIB
    );
    assert!(
        growth <= MAX_PER_STREAM * STALLED as u64,
        "{:?}: {STALLED} stalled {dir:?} transfers grew the proxy's RSS by {} KiB",
        rig.kind,
        growth / KIB
    );
    growth
}

async fn slow_writer_upload(kind: Kind) {
    let rig = Rig::start(kind, "writer-up").await;
    // Every write cut into 3-byte pieces, both sides.
    rig.client_tap.trickle(Some(3));
    rig.app_tap.trickle(Some(3));
    rig.transfer(16 * KIB, 16 * KIB).await;
    rig.client_tap.trickle(None);
    rig.app_tap.trickle(None);
    // Clients that stop writing their uploads a quarter of the way in.
    stalled_writers(&rig, Dir::Up).await;
}
per_kind!(slow_writer_upload);

async fn slow_writer_download(kind: Kind) {
    let rig = Rig::start(kind, "writer-down").await;
    // An application that stops writing its downloads.
    stalled_writers(&rig, Dir::Down).await;
}
per_kind!(slow_writer_download);
