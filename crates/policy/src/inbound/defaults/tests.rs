use super::*;
use crate::inbound::{Client, ClientTls, Verdict, authorize};

const ID: &str = "web.ns.serviceaccount.identity.linkerd.cluster.local";

fn defaults(policy: DefaultPolicy) -> Defaults {
    Defaults {
        policy,
        cluster_networks: vec!["10.0.0.0/8".parse().unwrap()],
        detect_timeout: Duration::from_secs(3),
        opaque_ports: [3306].into(),
        require_identity_ports: [8443].into(),
        require_tls_ports: [8444].into(),
    }
}

/// Whether plaintext, TLS and mesh-TLS clients from inside and outside
/// the cluster are admitted (by an enforcing or an audit authorization).
fn admits(p: &ServerPolicy) -> [bool; 6] {
    let mut out = [false; 6];
    let addrs = ["10.1.2.3", "192.168.1.1"];
    let tls = [ClientTls::None, ClientTls::Tls, ClientTls::Mesh(ID)];
    for (i, (addr, tls)) in addrs
        .iter()
        .flat_map(|a| tls.iter().map(move |t| (a, *t)))
        .enumerate()
    {
        let client = Client {
            addr: addr.parse().unwrap(),
            tls,
        };
        out[i] = authorize(&p.authorizations, &client) != Verdict::Deny;
        assert_eq!(out[i], p.admits_somewhere(&client));
    }
    out
}

#[test]
fn names_round_trip() {
    for p in DefaultPolicy::ALL {
        assert_eq!(p.as_str().parse::<DefaultPolicy>(), Ok(p));
        assert_eq!(p.to_string(), p.as_str());
    }
    assert_eq!(
        "all-authenticated".parse::<DefaultPolicy>(),
        Ok(DefaultPolicy::AllAuthenticated)
    );
    assert!("allow".parse::<DefaultPolicy>().is_err());
}

#[test]
fn each_default() {
    use DefaultPolicy::*;
    let t = true;
    let f = false;
    let cases = [
        (AllUnauthenticated, [t, t, t, t, t, t]),
        (AllAuthenticated, [f, f, t, f, f, t]),
        (ClusterUnauthenticated, [t, t, t, f, f, f]),
        (ClusterAuthenticated, [f, f, t, f, f, f]),
        (Deny, [f, f, f, f, f, f]),
        (Audit, [t, t, t, t, t, t]),
    ];
    for (policy, want) in cases {
        let p = defaults(policy).for_port(80);
        assert_eq!(admits(&p), want, "{policy}");
        assert_eq!(p.denies_all(), policy == Deny, "{policy}");
        let name = Meta::Default {
            name: policy.as_str().into(),
        };
        assert_eq!(p.meta, name);
        assert!(p.authorizations.iter().all(|a| a.meta == name));
        assert_eq!(
            p.authorizations.iter().any(|a| a.is_audit()),
            policy == Audit
        );
        let Protocol::Detect { timeout, http } = &p.protocol else {
            panic!("{policy}: {:?}", p.protocol);
        };
        assert_eq!(*timeout, Duration::from_secs(3));
        assert_eq!(http.http_routes.len(), 1);
        assert_eq!(http.http_routes[0].authorizations, p.authorizations);
        assert_eq!(http.http_routes[0].meta.name(), "default");
    }
}

#[test]
fn per_port_overrides() {
    use DefaultPolicy::*;
    let t = true;
    let f = false;
    let cases = [
        (AllUnauthenticated, 8443, [f, f, t, f, f, t]),
        (AllUnauthenticated, 8444, [f, t, t, f, t, t]),
        (AllAuthenticated, 8444, [f, f, t, f, f, t]),
        (ClusterUnauthenticated, 8443, [f, f, t, f, f, f]),
        (ClusterUnauthenticated, 8444, [f, t, t, f, f, f]),
        (Audit, 8443, [f, f, t, f, f, t]),
        (Deny, 8443, [f, f, f, f, f, f]),
        (Deny, 8444, [f, f, f, f, f, f]),
    ];
    for (policy, port, want) in cases {
        let p = defaults(policy).for_port(port);
        assert_eq!(admits(&p), want, "{policy} on {port}");
    }

    let opaque = defaults(AllUnauthenticated).for_port(3306);
    assert_eq!(opaque.protocol, Protocol::Opaque);
    assert_eq!(admits(&opaque), [true; 6]);
    assert!(defaults(Deny).for_port(3306).denies_all());
}
