//! A service's HTTP and gRPC routes as `OutboundPolicies` sends them:
//! matches, filters, timeouts and retries, and weighted backends. The
//! proxy picks the route for a request from these, then applies the
//! route's filters, timeouts and retries before splitting between its
//! backends.

use super::{
    pd,
    target::{backends, route_meta},
};
use crate::config::{
    self, Filters, HeaderEdits, Mesh, PathMatch, RedirectPath, Service, Value, ValueMatch,
};
use linkerd2_proxy_api::{
    grpc_route::{GrpcFailureInjector, GrpcRouteMatch, GrpcRpcMatch},
    http_route::{
        self, HttpFailureInjector, HttpRouteMatch, PathModifier, RequestHeaderModifier,
        RequestRedirect, ResponseHeaderModifier, Timeouts, header_match, path_match, path_modifier,
        query_param_match,
    },
    http_types::{Headers, Scheme, headers},
    meta::Metadata,
    outbound::{self, grpc_route as gr, http_route as hr},
};

/// A match of every path, for a route that names no match.
pub(super) fn prefix_match(p: &str) -> HttpRouteMatch {
    HttpRouteMatch {
        path: Some(http_route::PathMatch {
            kind: Some(path_match::Kind::Prefix(p.to_string())),
        }),
        ..Default::default()
    }
}

/// The routes of a service, or one default route that takes every
/// request to the service itself.
fn each_route<T>(svc: &Service, one: impl Fn(&config::Route, Option<Metadata>) -> T) -> Vec<T> {
    if svc.policy.routes.is_empty() {
        let default = config::Route {
            name: "default".into(),
            ..Default::default()
        };
        return vec![one(&default, super::named("default"))];
    }
    svc.policy.routes.iter().map(|r| one(r, None)).collect()
}

pub(super) fn http_routes(mesh: &Mesh, svc: &Service) -> Vec<outbound::HttpRoute> {
    each_route(svc, |r, meta| {
        let backends = backends(mesh, svc, &r.backends)
            .into_iter()
            .map(|(b, weight)| hr::WeightedRouteBackend {
                backend: Some(hr::RouteBackend {
                    backend: Some(b),
                    ..Default::default()
                }),
                weight,
            })
            .collect();
        #[allow(deprecated)]
        let rule = hr::Rule {
            matches: http_matches(&r.matches),
            filters: http_filters(&r.filters),
            backends: Some(hr::Distribution {
                kind: Some(hr::distribution::Kind::RandomAvailable(
                    hr::distribution::RandomAvailable { backends },
                )),
            }),
            request_timeout: None,
            timeouts: timeouts(r),
            retry: r.retry.as_ref().map(|x| hr::Retry {
                max_retries: x.limit,
                max_request_bytes: x.max_request_bytes,
                conditions: Some(hr::retry::Conditions {
                    status_ranges: x
                        .statuses
                        .iter()
                        .map(|(a, b)| hr::retry::conditions::StatusRange {
                            start: u32::from(*a),
                            end: u32::from(*b),
                        })
                        .collect(),
                }),
                timeout: x.timeout.and_then(pd),
                backoff: backoff(x),
            }),
            allow_l5d_request_headers: r.allow_l5d_request_headers,
        };
        outbound::HttpRoute {
            metadata: meta.or_else(|| route_meta(svc, "HTTPRoute", &r.name)),
            hosts: Vec::new(),
            rules: vec![rule],
        }
    })
}

pub(super) fn grpc_routes(mesh: &Mesh, svc: &Service) -> Vec<outbound::GrpcRoute> {
    each_route(svc, |r, meta| {
        let backends = backends(mesh, svc, &r.backends)
            .into_iter()
            .map(|(b, weight)| gr::WeightedRouteBackend {
                backend: Some(gr::RouteBackend {
                    backend: Some(b),
                    ..Default::default()
                }),
                weight,
            })
            .collect();
        #[allow(deprecated)]
        let rule = gr::Rule {
            matches: grpc_matches(&r.grpc_matches),
            filters: grpc_filters(&r.filters),
            backends: Some(gr::Distribution {
                kind: Some(gr::distribution::Kind::RandomAvailable(
                    gr::distribution::RandomAvailable { backends },
                )),
            }),
            request_timeout: None,
            timeouts: timeouts(r),
            retry: r.retry.as_ref().map(|x| gr::Retry {
                max_retries: x.limit,
                max_request_bytes: x.max_request_bytes,
                conditions: Some(gr::retry::Conditions {
                    cancelled: x.grpc.contains(&1),
                    deadine_exceeded: x.grpc.contains(&4),
                    resource_exhausted: x.grpc.contains(&8),
                    internal: x.grpc.contains(&13),
                    unavailable: x.grpc.contains(&14),
                }),
                timeout: x.timeout.and_then(pd),
                backoff: backoff(x),
            }),
            allow_l5d_request_headers: r.allow_l5d_request_headers,
        };
        outbound::GrpcRoute {
            metadata: meta.or_else(|| route_meta(svc, "GRPCRoute", &r.name)),
            hosts: Vec::new(),
            rules: vec![rule],
        }
    })
}

fn timeouts(r: &config::Route) -> Option<Timeouts> {
    let t = &r.timeouts;
    t.is_set().then(|| Timeouts {
        request: t.request.and_then(pd),
        response: t.response.and_then(pd),
        idle: t.idle.and_then(pd),
    })
}

fn backoff(x: &config::Retry) -> Option<outbound::ExponentialBackoff> {
    x.backoff.map(|b| outbound::ExponentialBackoff {
        min_backoff: pd(b.min),
        max_backoff: pd(b.max),
        jitter_ratio: b.jitter_ratio,
        respect_retry_after_hint: b.respect_retry_after,
    })
}

fn header_matches(list: &[ValueMatch]) -> Vec<http_route::HeaderMatch> {
    list.iter()
        .map(|m| http_route::HeaderMatch {
            name: m.name.clone(),
            value: Some(match &m.value {
                Value::Exact(v) => header_match::Value::Exact(v.clone().into_bytes()),
                Value::Regex(re) => header_match::Value::Regex(re.clone()),
            }),
        })
        .collect()
}

pub(super) fn http_matches(list: &[config::HttpMatch]) -> Vec<HttpRouteMatch> {
    if list.is_empty() {
        return vec![prefix_match("/")];
    }
    list.iter()
        .map(|m| HttpRouteMatch {
            path: m.path.as_ref().map(|p| http_route::PathMatch {
                kind: Some(match p {
                    PathMatch::Exact(p) => path_match::Kind::Exact(p.clone()),
                    PathMatch::Prefix(p) => path_match::Kind::Prefix(p.clone()),
                    PathMatch::Regex(re) => path_match::Kind::Regex(re.clone()),
                }),
            }),
            headers: header_matches(&m.headers),
            query_params: m
                .query_params
                .iter()
                .map(|q| http_route::QueryParamMatch {
                    name: q.name.clone(),
                    value: Some(match &q.value {
                        Value::Exact(v) => query_param_match::Value::Exact(v.clone()),
                        Value::Regex(re) => query_param_match::Value::Regex(re.clone()),
                    }),
                })
                .collect(),
            method: m
                .method
                .as_ref()
                .and_then(|m| http::Method::from_bytes(m.as_bytes()).ok())
                .map(Into::into),
        })
        .collect()
}

pub(super) fn grpc_matches(list: &[config::GrpcMatch]) -> Vec<GrpcRouteMatch> {
    if list.is_empty() {
        return vec![GrpcRouteMatch::default()];
    }
    list.iter()
        .map(|m| GrpcRouteMatch {
            rpc: (m.service.is_some() || m.method.is_some()).then(|| GrpcRpcMatch {
                service: m.service.clone().unwrap_or_default(),
                method: m.method.clone().unwrap_or_default(),
            }),
            headers: header_matches(&m.headers),
        })
        .collect()
}

fn headers(pairs: &[(String, String)]) -> Option<Headers> {
    (!pairs.is_empty()).then(|| Headers {
        headers: pairs
            .iter()
            .map(|(name, value)| headers::Header {
                name: name.clone(),
                value: value.clone().into_bytes(),
            })
            .collect(),
    })
}

pub(super) fn request_headers(e: &HeaderEdits) -> RequestHeaderModifier {
    RequestHeaderModifier {
        add: headers(&e.add),
        set: headers(&e.set),
        remove: e.remove.clone(),
    }
}

fn ratio(r: Option<config::Ratio>) -> Option<http_route::Ratio> {
    r.map(|r| http_route::Ratio {
        numerator: r.numerator,
        denominator: r.denominator,
    })
}

/// A redirect filter.
pub(super) fn redirect(r: &config::Redirect) -> RequestRedirect {
    RequestRedirect {
        scheme: r.scheme.as_deref().map(Scheme::from),
        host: r.host.clone().unwrap_or_default(),
        path: r.path.as_ref().map(|p| PathModifier {
            replace: Some(match p {
                RedirectPath::Full(p) => path_modifier::Replace::Full(p.clone()),
                RedirectPath::Prefix(p) => path_modifier::Replace::Prefix(p.clone()),
            }),
        }),
        port: r.port.map(u32::from).unwrap_or_default(),
        status: u32::from(r.status),
    }
}

/// An HTTP route's injected failure.
pub(super) fn http_failure(x: &config::Fail) -> HttpFailureInjector {
    HttpFailureInjector {
        status: x.code,
        message: x.message.clone(),
        ratio: ratio(x.ratio),
    }
}

/// A gRPC route's injected failure.
pub(super) fn grpc_failure(x: &config::Fail) -> GrpcFailureInjector {
    GrpcFailureInjector {
        code: x.code,
        message: x.message.clone(),
        ratio: ratio(x.ratio),
    }
}

/// An HTTP route's filters, in the order the file's model lists them.
fn http_filters(f: &Filters) -> Vec<hr::Filter> {
    use hr::filter::Kind;
    let mut out = Vec::new();
    if let Some(e) = &f.request_headers {
        out.push(Kind::RequestHeaderModifier(request_headers(e)));
    }
    if let Some(e) = &f.response_headers {
        out.push(Kind::ResponseHeaderModifier(ResponseHeaderModifier {
            add: headers(&e.add),
            set: headers(&e.set),
            remove: e.remove.clone(),
        }));
    }
    if let Some(r) = &f.redirect {
        out.push(Kind::Redirect(redirect(r)));
    }
    if let Some(x) = &f.fail {
        out.push(Kind::FailureInjector(http_failure(x)));
    }
    out.into_iter()
        .map(|k| hr::Filter { kind: Some(k) })
        .collect()
}

/// A gRPC route's filters: request headers and injected failures.
fn grpc_filters(f: &Filters) -> Vec<gr::Filter> {
    use gr::filter::Kind;
    let mut out = Vec::new();
    if let Some(e) = &f.request_headers {
        out.push(Kind::RequestHeaderModifier(request_headers(e)));
    }
    if let Some(x) = &f.fail {
        out.push(Kind::FailureInjector(grpc_failure(x)));
    }
    out.into_iter()
        .map(|k| gr::Filter { kind: Some(k) })
        .collect()
}
