use super::*;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn authz(name: &str, networks: Vec<Network>, authentication: Authentication) -> Authorization {
    Authorization {
        meta: Meta::Default { name: name.into() },
        networks,
        authentication,
    }
}

fn anyone(name: &str) -> Authorization {
    authz(name, Network::all().into(), Authentication::Unauthenticated)
}

fn client<'a>(addr: &str, tls: ClientTls<'a>) -> Client<'a> {
    Client {
        addr: addr.parse().unwrap(),
        tls,
    }
}

fn plain(addr: &str) -> Client<'static> {
    client(addr, ClientTls::None)
}

const ID: &str = "web.emojivoto.serviceaccount.identity.linkerd.cluster.local";

fn suffix(parts: &[&str]) -> Suffix {
    Suffix::new(parts).unwrap()
}

fn ids(names: &[&str], suffixes: Vec<Suffix>) -> Authentication {
    Authentication::TlsAuthenticated {
        identities: names.iter().map(|n| Arc::from(*n)).collect(),
        suffixes,
    }
}

#[test]
fn networks_with_excepts() {
    let a = authz(
        "a",
        vec![Network {
            net: net("10.0.0.0/8"),
            except: vec![net("10.1.0.0/16"), net("10.2.3.4/32")],
        }],
        Authentication::Unauthenticated,
    );
    assert!(a.permits(&plain("10.0.0.1")));
    assert!(a.permits(&plain("10.2.3.5")));
    assert!(!a.permits(&plain("10.1.2.3")));
    assert!(!a.permits(&plain("10.2.3.4")));
    assert!(!a.permits(&plain("11.0.0.1")));
    assert!(!a.permits(&plain("::1")));
}

#[test]
fn ipv4_mapped_clients_are_ipv4() {
    let a = authz(
        "a",
        vec![Network::from(net("10.0.0.0/8"))],
        Authentication::Unauthenticated,
    );
    assert!(a.permits(&plain("::ffff:10.0.0.1")));
    assert!(!a.permits(&plain("::ffff:11.0.0.1")));
    let v6 = authz(
        "v6",
        vec![Network::from(net("::/0"))],
        Authentication::Unauthenticated,
    );
    assert!(!v6.permits(&plain("::ffff:10.0.0.1")), "taken as IPv4");
    assert!(v6.permits(&plain("fd00::1")));
}

#[test]
fn no_networks_admit_no_one() {
    let a = authz("a", vec![], Authentication::Unauthenticated);
    assert!(!a.permits(&plain("10.0.0.1")));
}

#[test]
fn each_authentication() {
    let (none, tls, mesh) = (ClientTls::None, ClientTls::Tls, ClientTls::Mesh(ID));
    let check = |authn: Authentication| {
        let a = authz("a", Network::all().into(), authn);
        [none, tls, mesh].map(|t| a.permits(&client("10.0.0.1", t)))
    };
    assert_eq!(check(Authentication::Unauthenticated), [true, true, true]);
    assert_eq!(
        check(Authentication::TlsUnauthenticated),
        [false, true, true]
    );
    assert_eq!(check(Authentication::any_identity()), [false, false, true]);
    assert_eq!(check(ids(&[ID], vec![])), [false, false, true]);
    assert_eq!(check(ids(&["other"], vec![])), [false, false, false]);
    assert_eq!(check(ids(&["*"], vec![])), [false, false, true]);
    assert_eq!(check(ids(&[], vec![])), [false, false, false]);
}

#[test]
fn suffixes_match_whole_labels() {
    let s = suffix(&[
        "emojivoto",
        "serviceaccount",
        "identity",
        "linkerd",
        "cluster",
        "local",
    ]);
    assert!(s.matches(ID));
    assert!(s.matches("WEB.Emojivoto.serviceaccount.identity.linkerd.cluster.local"));
    assert!(!s.matches("web.xemojivoto.serviceaccount.identity.linkerd.cluster.local"));
    assert!(!s.matches("emojivoto.serviceaccount.identity.linkerd.cluster.local"));
    assert!(!s.matches("web.emojivoto.serviceaccount.identity.linkerd.cluster"));
    assert!(Suffix::any().matches(ID));
    assert_eq!(Suffix::new::<&str>(&[]), Some(Suffix::any()));
    assert_eq!(Suffix::new(&["a", ""]), None);
    assert_eq!(Suffix::new(&["a.b"]), None);
    assert_eq!(Suffix::new(&["*"]), None);

    let a = authz("a", Network::all().into(), ids(&[], vec![s]));
    assert!(a.permits(&client("10.0.0.1", ClientTls::Mesh(ID))));
    assert!(!a.permits(&client(
        "10.0.0.1",
        ClientTls::Mesh("web.other.serviceaccount")
    )));
}

#[test]
fn verdict_prefers_enforcing_authorizations() {
    let audit = anyone("audit");
    assert!(audit.is_audit());
    assert!(!anyone("all-unauthenticated").is_audit());
    let mesh_only = authz(
        "mesh",
        Network::all().into(),
        Authentication::any_identity(),
    );
    let authzs = vec![audit.clone(), mesh_only.clone()];

    let meshed = client("10.0.0.1", ClientTls::Mesh(ID));
    assert_eq!(authorize(&authzs, &meshed), Verdict::Allow(&authzs[1]));
    assert_eq!(
        authorize(&authzs, &plain("10.0.0.1")),
        Verdict::Audit(&authzs[0])
    );
    assert_eq!(authorize(&authzs[1..], &plain("10.0.0.1")), Verdict::Deny);
    assert_eq!(authorize(&[], &meshed), Verdict::Deny);

    // The first enforcing one wins among several.
    let authzs = vec![anyone("one"), anyone("two")];
    assert_eq!(authorize(&authzs, &meshed), Verdict::Allow(&authzs[0]));
}
