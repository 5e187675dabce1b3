//! Metric labels from the policy's descriptions (`meta.Metadata`).

use linnet_metrics::authz::{AuthzLabels, RateLimitLabels, RouteLabels, ServerLabels};
use linnet_policy::outbound::Meta;
use std::sync::Arc;

/// `(group, kind, name)` of a description; a default the control plane
/// (or this proxy) made up is kind `default`.
fn parts(meta: &Meta) -> (Arc<str>, Arc<str>, Arc<str>) {
    match meta {
        Meta::Default { name } => (Arc::from(""), Arc::from("default"), name.clone()),
        Meta::Resource {
            group, kind, name, ..
        } => (group.clone(), kind.clone(), name.clone()),
    }
}

pub(crate) fn server(meta: &Meta, port: u16) -> ServerLabels {
    let (srv_group, srv_kind, srv_name) = parts(meta);
    ServerLabels {
        srv_group,
        srv_kind,
        srv_name,
        srv_port: port,
    }
}

pub(crate) fn route(meta: &Meta) -> RouteLabels {
    let (route_group, route_kind, route_name) = parts(meta);
    RouteLabels {
        route_group,
        route_kind,
        route_name,
    }
}

pub(crate) fn authz(meta: &Meta) -> AuthzLabels {
    let (authz_group, authz_kind, authz_name) = parts(meta);
    AuthzLabels {
        authz_group,
        authz_kind,
        authz_name,
    }
}

pub(crate) fn rate_limit(meta: &Meta) -> RateLimitLabels {
    let (rl_group, rl_kind, rl_name) = parts(meta);
    RateLimitLabels {
        rl_group,
        rl_kind,
        rl_name,
    }
}

/// A description's name, for messages.
pub(crate) fn name(meta: &Meta) -> Arc<str> {
    parts(meta).2
}
