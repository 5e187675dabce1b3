//! Opaque and TLS routes from the control plane's messages.

use super::{
    Cx,
    backends::{opaque_distribution, tls_distribution},
    exact_host, meta, suffix_host,
};
use crate::outbound::{
    HostMatch, OpaqueFilter, OpaqueRoute, OpaqueRoutes, OpaqueRule, TlsRoute, TlsRoutes,
};
use linkerd2_proxy_api::{outbound, tls_route::sni_match};

pub(super) fn opaque_routes(routes: Vec<outbound::OpaqueRoute>, cx: &mut Cx<'_>) -> OpaqueRoutes {
    routes
        .into_iter()
        .filter_map(|r| {
            let rules: Vec<OpaqueRule> = r
                .rules
                .into_iter()
                .map(|rule| OpaqueRule {
                    backends: opaque_distribution(rule.backends, cx),
                    filters: rule
                        .filters
                        .into_iter()
                        .filter_map(|f| opaque_filter(f, cx))
                        .collect(),
                })
                .collect();
            if rules.is_empty() {
                cx.skip("no_rules");
                return None;
            }
            Some(OpaqueRoute {
                meta: meta(r.metadata),
                rules,
            })
        })
        .collect()
}

pub(super) fn tls_routes(routes: Vec<outbound::TlsRoute>, cx: &mut Cx<'_>) -> TlsRoutes {
    routes
        .into_iter()
        .filter_map(|r| {
            let had_snis = !r.snis.is_empty();
            let snis: Vec<HostMatch> = r
                .snis
                .into_iter()
                .filter_map(|s| {
                    let m = match s.r#match {
                        Some(sni_match::Match::Exact(e)) => exact_host(&e),
                        Some(sni_match::Match::Suffix(s)) => suffix_host(&s.reverse_labels),
                        None => None,
                    };
                    if m.is_none() {
                        cx.skip("bad_host");
                    }
                    m
                })
                .collect();
            if had_snis && snis.is_empty() {
                // Every SNI was bad: the route must not widen to any SNI.
                return None;
            }
            let rules: Vec<OpaqueRule> = r
                .rules
                .into_iter()
                .map(|rule| OpaqueRule {
                    backends: tls_distribution(rule.backends, cx),
                    filters: rule
                        .filters
                        .into_iter()
                        .filter_map(|f| tls_filter(f, cx))
                        .collect(),
                })
                .collect();
            if rules.is_empty() {
                cx.skip("no_rules");
                return None;
            }
            Some(TlsRoute {
                meta: meta(r.metadata),
                snis,
                rules,
            })
        })
        .collect()
}

pub(super) fn opaque_filter(
    f: outbound::opaque_route::Filter,
    cx: &mut Cx<'_>,
) -> Option<OpaqueFilter> {
    use outbound::opaque_route::filter::Kind as F;
    match f.kind {
        Some(F::Invalid(i)) => Some(OpaqueFilter::Invalid(i.message.into())),
        Some(F::Forbidden(_)) => Some(OpaqueFilter::Forbidden),
        None => {
            cx.skip("no_filter");
            None
        }
    }
}

pub(super) fn tls_filter(f: outbound::tls_route::Filter, cx: &mut Cx<'_>) -> Option<OpaqueFilter> {
    use outbound::tls_route::filter::Kind as F;
    match f.kind {
        Some(F::Invalid(i)) => Some(OpaqueFilter::Invalid(i.message.into())),
        Some(F::Forbidden(_)) => Some(OpaqueFilter::Forbidden),
        None => {
            cx.skip("no_filter");
            None
        }
    }
}
