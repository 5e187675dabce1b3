//! The weighted backend split: a route's requests shared among its
//! backends by weight (a traffic split, a canary).
//!
//! Sits below a route's retry layer and above each backend's queue and
//! balancer, so that every attempt of a request (a retry too) is split
//! afresh. A weight change in the policy builds a new split; requests in
//! flight finish where they went.

use http::{Request, Response};
use linnet_http::{BoxBody, HttpStack};
use linnet_policy::errors::NoBackends;
use std::{
    sync::Arc,
    task::{Context, Poll},
};
use tower::{Service, ServiceExt};

/// Shares requests among backends by weight.
#[derive(Clone)]
pub struct Split {
    backends: Arc<[(HttpStack, u32)]>,
    total: u64,
}

// === impl Split ===

impl Split {
    /// A split over `backends` by their weights (0-weight backends never
    /// get a request).
    pub fn new(backends: Vec<(HttpStack, u32)>) -> Self {
        let backends: Arc<[(HttpStack, u32)]> =
            backends.into_iter().filter(|(_, w)| *w > 0).collect();
        let total = backends.iter().map(|(_, w)| u64::from(*w)).sum();
        Self { backends, total }
    }

    fn pick(&self) -> Option<&HttpStack> {
        match &*self.backends {
            [] => None,
            [(one, _)] => Some(one),
            many => {
                let mut n = rand::random_range(0..self.total.max(1));
                for (b, w) in many {
                    let w = u64::from(*w);
                    if n < w {
                        return Some(b);
                    }
                    n -= w;
                }
                many.last().map(|(b, _)| b)
            }
        }
    }
}

impl std::fmt::Debug for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Split")
            .field("backends", &self.backends.len())
            .finish()
    }
}

impl Service<Request<BoxBody>> for Split {
    type Response = Response<BoxBody>;
    type Error = linnet_core::Error;
    type Future = linnet_http::BoxFuture<'static, Result<Response<BoxBody>, linnet_core::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each backend's own queue decides whether it takes the request
        // (or sheds it); the split itself never waits.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<BoxBody>) -> Self::Future {
        match self.pick() {
            Some(b) => Box::pin(b.clone().oneshot(req)),
            None => Box::pin(std::future::ready(Err(NoBackends.into()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn counting(n: Arc<AtomicUsize>) -> HttpStack {
        HttpStack::new(tower::service_fn(move |_req: Request<BoxBody>| {
            n.fetch_add(1, Ordering::Relaxed);
            std::future::ready(Ok::<_, linnet_core::Error>(Response::new(
                http_body_util::Empty::new()
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )))
        }))
    }

    fn req() -> Request<BoxBody> {
        Request::new(
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
    }

    #[tokio::test]
    async fn requests_follow_the_weights() {
        let (a, b, c) = Default::default();
        let (a, b, c): (Arc<AtomicUsize>, Arc<AtomicUsize>, Arc<AtomicUsize>) = (a, b, c);
        let split = Split::new(vec![
            (counting(a.clone()), 80),
            (counting(b.clone()), 20),
            (counting(c.clone()), 0),
        ]);
        for _ in 0..4000 {
            split.clone().oneshot(req()).await.unwrap();
        }
        let a = a.load(Ordering::Relaxed);
        assert!(
            (3040..=3360).contains(&a),
            "80% of 4000 within 4 points: {a}"
        );
        assert_eq!(a + b.load(Ordering::Relaxed), 4000);
        assert_eq!(c.load(Ordering::Relaxed), 0, "weight 0 gets nothing");
    }

    #[tokio::test]
    async fn no_backend_is_an_error() {
        let err = Split::new(vec![]).oneshot(req()).await.unwrap_err();
        assert!(linnet_core::is_caused_by::<NoBackends>(&*err));
    }
}
