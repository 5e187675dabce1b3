//! Route selection on the inbound side: which route and rule a request
//! takes, right after the HTTP server and before the route's
//! authorization, rate limit and filters.
//!
//! The precedence is the outbound one (the Gateway API's: best host,
//! then most specific match, ties to the earlier route and rule), run by
//! the same code over the inbound routes ([`crate::outbound::select`]).
//! No route: the caller answers 404 (gRPC: UNIMPLEMENTED).

use super::{
    Authorization, GrpcFilter, GrpcMatch, GrpcRoute, GrpcRule, HostMatch, HttpFilter, HttpMatch,
    HttpPolicy, HttpRoute, HttpRule, Meta,
};
use crate::outbound::select::{Route, Rule, select_grpc, select_http};
use std::sync::Arc;

/// The filters of the rule a request took.
#[derive(Clone, Copy, Debug)]
pub enum Filters<'p> {
    /// An HTTP rule's.
    Http(&'p Arc<[HttpFilter]>),
    /// A gRPC rule's.
    Grpc(&'p Arc<[GrpcFilter]>),
}

/// What a request's route decides: who may send it, and how it changes.
#[derive(Clone, Copy, Debug)]
pub struct Selected<'p> {
    /// The route, for the `route_*` metric labels.
    pub meta: &'p Meta,
    /// The route's authorizations, which the request is checked against.
    pub authorizations: &'p Arc<[Authorization]>,
    /// The rule's filters.
    pub filters: Filters<'p>,
    /// The path prefix the rule matched by, for a redirect that replaces
    /// it (a rule with no match counts as the prefix `/`); `None` for a
    /// match by exact path or regex, and for gRPC.
    pub prefix: Option<&'p str>,
}

// === impl HttpPolicy ===

impl HttpPolicy {
    /// The route and rule `req` takes by the Gateway API precedence (the
    /// same as outbound's): gRPC routes when `grpc` (the port's protocol
    /// is gRPC), HTTP routes otherwise. `None`: no route (the caller
    /// answers 404 / gRPC UNIMPLEMENTED).
    pub fn select<'p, B>(&'p self, req: &http::Request<B>, grpc: bool) -> Option<Selected<'p>> {
        if grpc {
            let (route, rule) = select_grpc(&self.grpc_routes, req)?;
            return Some(Selected {
                meta: &route.meta,
                authorizations: &route.authorizations,
                filters: Filters::Grpc(&rule.filters),
                prefix: None,
            });
        }
        let (route, rule, matched) = select_http(&self.http_routes, req)?;
        Some(Selected {
            meta: &route.meta,
            authorizations: &route.authorizations,
            filters: Filters::Http(&rule.filters),
            prefix: matched.map_or(Some("/"), HttpMatch::prefix),
        })
    }
}

// === impl Route for the inbound routes ===

impl Route for HttpRoute {
    type Rule = HttpRule;

    fn hosts(&self) -> &[HostMatch] {
        &self.hosts
    }

    fn rules(&self) -> &[HttpRule] {
        &self.rules
    }
}

impl Rule<HttpMatch> for HttpRule {
    fn matches(&self) -> &[HttpMatch] {
        &self.matches
    }
}

impl Route for GrpcRoute {
    type Rule = GrpcRule;

    fn hosts(&self) -> &[HostMatch] {
        &self.hosts
    }

    fn rules(&self) -> &[GrpcRule] {
        &self.rules
    }
}

impl Rule<GrpcMatch> for GrpcRule {
    fn matches(&self) -> &[GrpcMatch] {
        &self.matches
    }
}

#[cfg(test)]
mod tests;
