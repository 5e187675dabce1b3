//! The matched rule's filters: request header changes, redirects and
//! failure injection before the request goes on (after it was authorized
//! and admitted by the rate limit: a refused client learns nothing from
//! them), and response header changes on the way back.

use crate::route::{Matched, RuleFilters};
use futures_util::{
    FutureExt,
    future::{BoxFuture, Either},
};
use http::{Request, Response};
use linnet_http::BoxBody;
use linnet_policy::{
    errors::InjectedFailure,
    outbound::{HttpFilter, filters},
};
use std::task::{Context, Poll};
use tower::Service;

/// Applies the matched rule's filters.
#[derive(Clone, Debug)]
pub struct Filter<S> {
    inner: S,
}

/// The rule filters.
pub fn layer<S>() -> impl tower::Layer<S, Service = Filter<S>> + Clone {
    tower::layer::layer_fn(|inner| Filter { inner })
}

impl<S> Service<Request<BoxBody>> for Filter<S>
where
    S: Service<Request<BoxBody>, Response = Response<BoxBody>, Error = linnet_core::Error>,
    S::Future: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = linnet_core::Error;
    /// The inner call's future as it is when the rule has no filters (the
    /// common case: nothing allocated here); boxed when a filter answers
    /// or changes the response.
    type Future =
        Either<S::Future, BoxFuture<'static, Result<Response<BoxBody>, linnet_core::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<BoxBody>) -> Self::Future {
        let Some(m) = req.extensions_mut().remove::<Matched>() else {
            return Either::Left(self.inner.call(req));
        };
        let (outcome, response_filters) = match &m.filters {
            RuleFilters::None => return Either::Left(self.inner.call(req)),
            RuleFilters::Http(f, prefix) => {
                let outcome = filters::apply_request(f, prefix.as_deref(), &mut req);
                let rsp = f
                    .iter()
                    .any(|f| matches!(f, HttpFilter::ResponseHeaders(_)))
                    .then(|| f.clone());
                (outcome, rsp)
            }
            RuleFilters::Grpc(f) => (filters::apply_grpc_request(f, &mut req), None),
        };
        match outcome {
            filters::Outcome::Continue => {}
            filters::Outcome::Respond(head) => {
                let rsp = Ok(head.map(|()| BoxBody::default()));
                return Either::Right(futures_util::future::ready(rsp).boxed());
            }
            filters::Outcome::Fail {
                status,
                grpc_code,
                message,
            } => {
                let e = InjectedFailure {
                    status,
                    grpc_code,
                    message,
                };
                return Either::Right(futures_util::future::ready(Err(e.into())).boxed());
            }
        }
        let fut = self.inner.call(req);
        match response_filters {
            None => Either::Left(fut),
            Some(f) => Either::Right(
                fut.map(move |rsp| {
                    let (mut parts, body) = rsp?.into_parts();
                    filters::apply_response(&f, &mut parts);
                    Ok(Response::from_parts(parts, body))
                })
                .boxed(),
            ),
        }
    }
}
