use super::*;
use crate::inbound::authz::Authentication;
use std::num::NonZeroU32;

fn anyone(name: &str) -> Authorization {
    Authorization {
        meta: Meta::Default { name: name.into() },
        networks: Network::all().into(),
        authentication: Authentication::Unauthenticated,
    }
}

fn mesh_only(name: &str) -> Authorization {
    Authorization {
        meta: Meta::Default { name: name.into() },
        networks: Network::all().into(),
        authentication: Authentication::any_identity(),
    }
}

fn policy(server: Vec<Authorization>, route: Vec<Authorization>) -> ServerPolicy {
    let mut http = HttpPolicy::default_routes(route.into());
    http.grpc_routes.clear();
    ServerPolicy {
        meta: Meta::Default {
            name: "test".into(),
        },
        protocol: Protocol::Detect {
            timeout: DEFAULT_DETECT_TIMEOUT,
            http: Arc::new(http),
        },
        authorizations: server.into(),
    }
}

fn plain() -> Client<'static> {
    Client {
        addr: "10.0.0.1".parse().unwrap(),
        tls: ClientTls::None,
    }
}

fn limit(total: u32) -> Arc<LocalRateLimit> {
    Arc::new(LocalRateLimit::new(
        Meta::Default { name: "rl".into() },
        NonZeroU32::new(total),
        None,
        vec![],
    ))
}

fn with_limit(mut p: ServerPolicy, l: Option<Arc<LocalRateLimit>>) -> ServerPolicy {
    if let Protocol::Detect { http, .. } = &mut p.protocol {
        Arc::make_mut(http).rate_limit = l;
    }
    p
}

fn rate_limit(p: &ServerPolicy) -> &Arc<LocalRateLimit> {
    p.http().unwrap().rate_limit.as_ref().unwrap()
}

#[test]
fn http_part() {
    let mut p = policy(vec![], vec![]);
    assert!(p.http().is_some());
    p.protocol = Protocol::Opaque;
    assert!(p.http().is_none());
    p.protocol = Protocol::Tls;
    assert!(p.http().is_none());
}

#[test]
fn denies_all_only_without_any_authorization() {
    assert!(policy(vec![], vec![]).denies_all());
    assert!(!policy(vec![anyone("a")], vec![]).denies_all());
    assert!(!policy(vec![], vec![anyone("a")]).denies_all());
    let mut opaque = policy(vec![], vec![anyone("a")]);
    opaque.protocol = Protocol::Opaque;
    assert!(opaque.denies_all(), "an opaque port has no routes");
}

#[test]
fn admits_somewhere_looks_at_routes_too() {
    assert!(!policy(vec![], vec![]).admits_somewhere(&plain()));
    assert!(policy(vec![anyone("a")], vec![]).admits_somewhere(&plain()));
    assert!(policy(vec![mesh_only("m")], vec![anyone("a")]).admits_somewhere(&plain()));
    assert!(!policy(vec![mesh_only("m")], vec![mesh_only("r")]).admits_somewhere(&plain()));
}

#[tokio::test(start_paused = true)]
async fn carry_state_keeps_buckets_when_unchanged() {
    let prev = with_limit(policy(vec![], vec![]), Some(limit(1)));
    rate_limit(&prev).check(None).unwrap();
    assert!(rate_limit(&prev).check(None).is_err(), "spent");

    let mut same = with_limit(policy(vec![], vec![]), Some(limit(1)));
    same.carry_state_from(&prev);
    assert!(Arc::ptr_eq(rate_limit(&same), rate_limit(&prev)));
    assert!(rate_limit(&same).check(None).is_err(), "still spent");

    let mut changed = with_limit(policy(vec![], vec![]), Some(limit(2)));
    changed.carry_state_from(&prev);
    assert!(!Arc::ptr_eq(rate_limit(&changed), rate_limit(&prev)));
    assert!(rate_limit(&changed).check(None).is_ok(), "fresh buckets");

    let mut none = with_limit(policy(vec![], vec![]), None);
    none.carry_state_from(&prev);
    assert!(none.http().unwrap().rate_limit.is_none());
}
