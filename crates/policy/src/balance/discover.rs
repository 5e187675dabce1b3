//! The balancer's endpoint changes: discovery's snapshots as tower's
//! [`Discover`](tower::discover::Discover).
//!
//! Discovery (a Destination watch, DNS, or a fixed set) publishes the whole
//! endpoint set each time it changes. The balancer wants changes instead:
//! this stream diffs each snapshot against the one before it and yields an
//! [`Change::Insert`] for every new or changed endpoint (with its service
//! made by the caller's `make`) and a [`Change::Remove`] for every endpoint
//! that is gone. It sits at the bottom of the balancer, beneath PeakEWMA.
//!
//! Removing an endpoint drops its service in the balancer, never a request:
//! a response future already handed out owns what it needs, so requests in
//! flight to a removed endpoint complete.

use linnet_core::endpoint::Endpoint;
use std::{
    collections::{BTreeMap, VecDeque},
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};
use tower::discover::Change;

/// One snapshot of a backend's endpoints, keyed by address.
pub type Endpoints = Arc<BTreeMap<SocketAddr, Arc<Endpoint>>>;

pin_project_lite::pin_project! {
    /// A stream of [`Change`]s made from a stream of [`Endpoints`]
    /// snapshots; a [`Discover`](tower::discover::Discover).
    ///
    /// When the snapshot stream ends, so does this one, and the balancer
    /// keeps the last endpoints it was given.
    pub struct EndpointChanges<T, F, S> {
        #[pin]
        snapshots: T,
        // Builds the service for an inserted endpoint.
        make: F,
        // The snapshot the changes so far describe; the next is diffed
        // against it.
        current: Endpoints,
        // Changes of the last snapshot not yet handed to the balancer (a
        // snapshot usually yields several).
        queued: VecDeque<Change<SocketAddr, S>>,
        // The snapshot stream ended: it is not polled again.
        done: bool,
    }
}

// === impl EndpointChanges ===

impl<T, F, S> EndpointChanges<T, F, S>
where
    T: futures_util::Stream<Item = Endpoints>,
    F: Fn(&Arc<Endpoint>) -> S,
{
    /// Diffs `snapshots`, starting from no endpoints; `make` builds the
    /// service of each new or changed endpoint.
    pub fn new(snapshots: T, make: F) -> Self {
        Self {
            snapshots,
            make,
            current: Endpoints::default(),
            queued: VecDeque::new(),
            done: false,
        }
    }
}

/// The changes that turn `old` into `new`: removals first, then inserts
/// (new endpoints, and changed ones, which replace the old service).
fn diff<S>(
    old: &BTreeMap<SocketAddr, Arc<Endpoint>>,
    new: &BTreeMap<SocketAddr, Arc<Endpoint>>,
    make: impl Fn(&Arc<Endpoint>) -> S,
    out: &mut VecDeque<Change<SocketAddr, S>>,
) {
    for addr in old.keys() {
        if !new.contains_key(addr) {
            out.push_back(Change::Remove(*addr));
        }
    }
    for (addr, ep) in new {
        let unchanged = old
            .get(addr)
            .is_some_and(|prior| Arc::ptr_eq(prior, ep) || **prior == **ep);
        if !unchanged {
            out.push_back(Change::Insert(*addr, make(ep)));
        }
    }
}

impl<T, F, S> futures_util::Stream for EndpointChanges<T, F, S>
where
    T: futures_util::Stream<Item = Endpoints>,
    F: Fn(&Arc<Endpoint>) -> S,
{
    type Item = Result<Change<SocketAddr, S>, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        loop {
            if let Some(change) = this.queued.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            if *this.done {
                return Poll::Ready(None);
            }
            match ready!(this.snapshots.as_mut().poll_next(cx)) {
                None => {
                    tracing::debug!("endpoint stream ended; keeping the last endpoints");
                    *this.done = true;
                }
                Some(next) => {
                    if !Arc::ptr_eq(this.current, &next) {
                        diff(this.current, &next, &*this.make, this.queued);
                        tracing::debug!(
                            endpoints = next.len(),
                            changes = this.queued.len(),
                            "endpoints updated"
                        );
                        *this.current = next;
                    }
                }
            }
        }
    }
}
