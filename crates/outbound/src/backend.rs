//! A backend's endpoints: discovery's answers as the balancer's change
//! stream, and the rule for a backend the control plane has not decided.
//!
//! Sits between the weighted split and the backend's queue. Discovery
//! keeps the latest endpoint set of a service (`Destination.Get`); the
//! balancer below needs additions and removals, so each new set is handed
//! on as a snapshot that the balancer's discover adapter diffs. A service
//! the control plane says it does not know falls back to the logical
//! target itself, in plaintext (the control plane has said it is not
//! meshed). One it has not answered about within the initial wait is
//! refused: its endpoints may be meshed, so nothing goes in plaintext.

use futures_util::{Stream, StreamExt};
use http::{Request, Response};
use linnet_core::endpoint::{Endpoint, plain};
use linnet_discovery::Resolution;
use linnet_http::{BoxBody, BoxFuture, HttpStack};
use linnet_tls::{FailClosed, FailReason};
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};
use tokio::{sync::watch, time::Instant};
use tower::{Service, ServiceExt};

/// An endpoint set, as the balancer is handed it.
pub type Endpoints = Arc<BTreeMap<SocketAddr, Arc<Endpoint>>>;

/// A stream of endpoint sets.
pub type EndpointStream = Pin<Box<dyn Stream<Item = Endpoints> + Send>>;

/// The endpoint sets of a discovered service: each answer as it comes.
/// `NotFound` means `fallback` alone (the logical target, in plaintext).
/// The stream never ends (a balancer whose stream ended would fail).
pub fn stream(rx: watch::Receiver<Resolution>, fallback: Option<SocketAddr>) -> EndpointStream {
    let fallback: Endpoints = Arc::new(
        fallback
            .map(|addr| (addr, plain(addr)))
            .into_iter()
            .collect(),
    );
    let answers = futures_util::stream::unfold((rx, true), |(mut rx, first)| async move {
        if !first {
            // The sender is gone only when discovery is: wait forever then.
            if rx.changed().await.is_err() {
                futures_util::future::pending::<()>().await;
            }
        }
        let r = rx.borrow_and_update().clone();
        Some((r, (rx, false)))
    });
    Box::pin(answers.filter_map(move |r| {
        let fallback = fallback.clone();
        async move {
            match r {
                Resolution::Pending => None,
                Resolution::NotFound => Some(fallback),
                Resolution::Endpoints(set) => Some(set),
            }
        }
    }))
}

/// A set of one endpoint, that never changes (a `Forward` backend).
pub fn fixed(endpoint: Arc<Endpoint>) -> EndpointStream {
    let set: Endpoints = Arc::new([(endpoint.addr, endpoint)].into_iter().collect());
    Box::pin(futures_util::stream::once(async move { set }).chain(futures_util::stream::pending()))
}

/// Refuses a backend's requests while the control plane has not said
/// what its endpoints are (and the initial wait is over).
#[derive(Clone)]
pub struct Decided {
    name: Arc<str>,
    rx: watch::Receiver<Resolution>,
    /// Until when a first answer is waited for.
    deadline: Instant,
    inner: HttpStack,
}

// === impl Decided ===

impl Decided {
    /// `inner` (the backend's queue and balancer), behind the wait for a
    /// first answer about `name`.
    pub fn new(
        name: Arc<str>,
        rx: watch::Receiver<Resolution>,
        initial_wait: std::time::Duration,
        inner: HttpStack,
    ) -> Self {
        Self {
            name,
            rx,
            deadline: Instant::now() + initial_wait,
            inner,
        }
    }
}

impl std::fmt::Debug for Decided {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decided").field("name", &self.name).finish()
    }
}

impl Service<Request<BoxBody>> for Decided {
    type Response = Response<BoxBody>;
    type Error = linnet_core::Error;
    type Future = BoxFuture<'static, Result<Response<BoxBody>, linnet_core::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<BoxBody>) -> Self::Future {
        let inner = self.inner.clone();
        if *self.rx.borrow() != Resolution::Pending {
            return Box::pin(inner.oneshot(req));
        }
        let (mut rx, deadline, name) = (self.rx.clone(), self.deadline, self.name.clone());
        Box::pin(async move {
            let answered = matches!(
                tokio::time::timeout_at(deadline, rx.wait_for(|r| *r != Resolution::Pending)).await,
                Ok(Ok(_))
            );
            if !answered {
                tracing::info!(backend = %name, "no answer from the control plane in time");
                return Err(FailClosed::new(
                    FailReason::DiscoveryTimeout,
                    format!(
                        "the control plane did not answer in time about {name}, whose endpoints may be meshed"
                    ),
                    None,
                )
                .into());
            }
            linnet_http::call_stack(inner, req).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(addrs: &[&str]) -> Resolution {
        Resolution::Endpoints(Arc::new(
            addrs
                .iter()
                .map(|a| {
                    let a: SocketAddr = a.parse().unwrap();
                    (a, plain(a))
                })
                .collect(),
        ))
    }

    #[tokio::test]
    async fn answers_become_sets_and_not_found_the_fallback() {
        let (tx, rx) = watch::channel(Resolution::Pending);
        let fallback: SocketAddr = "10.0.0.9:80".parse().unwrap();
        let mut s = stream(rx, Some(fallback));
        tx.send_replace(set(&["10.0.0.1:80", "10.0.0.2:80"]));
        let first = s.next().await.unwrap();
        assert_eq!(first.len(), 2);
        tx.send_replace(Resolution::NotFound);
        let second = s.next().await.unwrap();
        assert_eq!(second.keys().copied().collect::<Vec<_>>(), vec![fallback]);
        tx.send_replace(set(&[]));
        assert!(s.next().await.unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_undecided_backend_fails_closed_after_the_wait() {
        let (tx, rx) = watch::channel(Resolution::Pending);
        let ok = HttpStack::new(tower::service_fn(|_req: Request<BoxBody>| {
            std::future::ready(Ok::<_, linnet_core::Error>(Response::new(
                BoxBody::default(),
            )))
        }));
        let svc = Decided::new("web:80".into(), rx, std::time::Duration::from_secs(3), ok);
        let start = Instant::now();
        let err = svc
            .clone()
            .oneshot(Request::new(BoxBody::default()))
            .await
            .unwrap_err();
        assert_eq!(start.elapsed(), std::time::Duration::from_secs(3));
        let closed = linnet_core::find_cause::<FailClosed>(&*err).unwrap();
        assert_eq!(closed.reason, FailReason::DiscoveryTimeout);
        // Once answered, requests pass.
        tx.send_replace(set(&["10.0.0.1:80"]));
        svc.oneshot(Request::new(BoxBody::default())).await.unwrap();
    }
}
