//! Validation of `workloads:`, `default_inbound_policy` and
//! `cluster_networks`: every error names the place in the file
//! (`workloads.<name>.ports.<port>.routes.<route>.authorizations[<i>]`)
//! and says what is wrong, so that a reload that fails can be fixed from
//! the log line.

use super::*;
use crate::config::{
    Error, check_identity_name, invalid,
    outbound::{
        file::{FileFilters, FileMatch},
        filters::filters,
        parse::{grpc_match, http_match},
    },
    parse_authority,
};
use std::{collections::BTreeSet, net::IpAddr};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct FileWorkload {
    default_inbound_policy: Option<DefaultPolicy>,
    #[serde(default)]
    ports: BTreeMap<u16, FileServer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileServer {
    name: Option<String>,
    #[serde(default)]
    protocol: Protocol,
    #[serde(default)]
    authorizations: Vec<FileAuthz>,
    #[serde(default)]
    routes: Vec<FileRoute>,
    rate_limit: Option<FileRateLimit>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAuthz {
    name: Option<String>,
    #[serde(default)]
    unauthenticated: bool,
    #[serde(default)]
    tls: bool,
    #[serde(default)]
    identities: Vec<String>,
    #[serde(default)]
    suffixes: Vec<String>,
    #[serde(default)]
    networks: Vec<String>,
    #[serde(default)]
    except: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRoute {
    name: String,
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    matches: Vec<FileMatch>,
    #[serde(default)]
    filters: FileFilters,
    /// Unset: the server's; `[]`: nobody.
    authorizations: Option<Vec<FileAuthz>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRateLimit {
    name: Option<String>,
    total: Option<u32>,
    identity: Option<u32>,
    #[serde(default)]
    overrides: Vec<FileOverride>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOverride {
    requests_per_second: u32,
    #[serde(default)]
    identities: Vec<String>,
}

/// The file's `cluster_networks`, or Linkerd's default ones.
pub(in crate::config) fn cluster_networks(list: Option<Vec<String>>) -> Result<Vec<IpNet>, Error> {
    let Some(list) = list else {
        return Ok(default_cluster_networks());
    };
    if list.is_empty() {
        return Err(invalid(
            "cluster_networks",
            "empty: the cluster-* policies would admit nobody (leave it out for Linkerd's)",
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, n)| network(n, &format!("cluster_networks[{i}]")))
        .collect()
}

/// Validates one workload; `at` is `workloads.<name>`.
pub(in crate::config) fn workload(
    name: &str,
    w: FileWorkload,
    at: &str,
) -> Result<Workload, Error> {
    let mut ports = BTreeMap::new();
    for (port, s) in w.ports {
        let at = format!("{at}.ports.{port}");
        if port == 0 {
            return Err(invalid(at, "port 0"));
        }
        ports.insert(port, server(&format!("{name}:{port}"), s, &at)?);
    }
    Ok(Workload {
        default_inbound_policy: w.default_inbound_policy,
        ports,
    })
}

/// `id` is `<workload>:<port>`, the stem of default names.
fn server(id: &str, s: FileServer, at: &str) -> Result<Server, Error> {
    let name = match s.name {
        Some(n) => nonempty(n, &format!("{at}.name"))?,
        None => id.to_string(),
    };
    let http = matches!(
        s.protocol,
        Protocol::Detect | Protocol::Http1 | Protocol::Http2
    );
    let grpc = s.protocol == Protocol::Grpc;
    let routed = http || grpc;
    if !routed && !s.routes.is_empty() {
        return Err(invalid(
            format!("{at}.routes"),
            "routes are HTTP or gRPC routes: an opaque or TLS server has none",
        ));
    }
    let rate_limit = match s.rate_limit {
        None => None,
        Some(_) if grpc => {
            return Err(invalid(
                format!("{at}.rate_limit"),
                "the proxy API has no rate limit for gRPC servers: use protocol http2 for one",
            ));
        }
        Some(_) if !http => {
            return Err(invalid(
                format!("{at}.rate_limit"),
                "a rate limit counts HTTP requests: an opaque or TLS server has none",
            ));
        }
        Some(r) => Some(rate_limit(r, &name, &format!("{at}.rate_limit"))?),
    };
    let authorizations = authorizations(s.authorizations, id, &format!("{at}.authorizations"))?;
    let mut seen = BTreeSet::new();
    let mut routes = Vec::with_capacity(s.routes.len());
    for r in s.routes {
        let at = format!("{at}.routes.{}", r.name);
        if r.name.is_empty() {
            return Err(invalid(at, "a route needs a name"));
        }
        if !seen.insert(r.name.clone()) {
            return Err(invalid(at, "two routes have this name"));
        }
        routes.push(route(id, r, grpc, &at)?);
    }
    Ok(Server {
        name,
        protocol: s.protocol,
        authorizations,
        routes,
        rate_limit,
    })
}

fn route(id: &str, r: FileRoute, grpc: bool, at: &str) -> Result<InboundRoute, Error> {
    if r.filters.edits_responses() {
        return Err(invalid(
            at,
            "filters.response_headers: inbound routes edit request headers only",
        ));
    }
    let (matches, grpc_matches) = if grpc {
        let m = r.matches.into_iter().map(|m| grpc_match(m, at));
        (Vec::new(), m.collect::<Result<_, _>>()?)
    } else {
        let m = r.matches.into_iter().map(|m| http_match(m, at));
        (m.collect::<Result<_, _>>()?, Vec::new())
    };
    let filters = filters(r.filters, grpc, &matches, at)?;
    let hosts = r
        .hosts
        .iter()
        .map(|h| host(h).map_err(|e| invalid(format!("{at}.hosts"), e)))
        .collect::<Result<_, _>>()?;
    let authorizations = r
        .authorizations
        .map(|list| {
            authorizations(
                list,
                &format!("{id}:{}", r.name),
                &format!("{at}.authorizations"),
            )
        })
        .transpose()?;
    Ok(InboundRoute {
        name: r.name,
        hosts,
        matches,
        grpc_matches,
        filters,
        authorizations,
    })
}

/// A host name, or `*.` and a name.
fn host(h: &str) -> Result<HostMatch, String> {
    let (suffix, name) = match h.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, h),
    };
    let (name, _) = parse_authority(&format!("{name}:1"))
        .map_err(|e| format!("{h:?}: {e} (a host name, or *. and a name)"))?;
    Ok(if suffix {
        HostMatch::Suffix(name)
    } else {
        HostMatch::Exact(name)
    })
}

/// A list of authorizations; unnamed ones are `<stem>:<index>`.
fn authorizations(list: Vec<FileAuthz>, stem: &str, at: &str) -> Result<Vec<Authorization>, Error> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(list.len());
    for (i, a) in list.into_iter().enumerate() {
        let at = format!("{at}[{i}]");
        let a = authz(a, &format!("{stem}:{i}"), &at)?;
        if !seen.insert(a.name.clone()) {
            return Err(invalid(
                at,
                format!("two authorizations are named {}", a.name),
            ));
        }
        out.push(a);
    }
    Ok(out)
}

fn authz(a: FileAuthz, default_name: &str, at: &str) -> Result<Authorization, Error> {
    let name = match a.name {
        Some(n) => nonempty(n, &format!("{at}.name"))?,
        None => default_name.to_string(),
    };
    let networks = a
        .networks
        .iter()
        .map(|n| network(n, at))
        .collect::<Result<Vec<_>, _>>()?;
    let except = a
        .except
        .iter()
        .map(|n| network(n, at))
        .collect::<Result<Vec<_>, _>>()?;
    for x in &except {
        // No networks: all of them, of which any except is a part.
        let inside = networks.is_empty() || networks.iter().any(|n| n.contains(x));
        if !inside {
            return Err(invalid(
                at,
                format!("except {x} is not inside any of the networks"),
            ));
        }
    }
    let meshed = !a.identities.is_empty() || !a.suffixes.is_empty();
    let clients = match (a.unauthenticated, a.tls, meshed) {
        (true, false, false) => Clients::Unauthenticated,
        (false, true, false) => Clients::Tls,
        (false, false, true) => meshed_clients(a.identities, a.suffixes, at)?,
        (false, false, false) => {
            return Err(invalid(
                at,
                "says nobody: give unauthenticated: true, tls: true, identities or suffixes",
            ));
        }
        _ => {
            return Err(invalid(
                at,
                "one of unauthenticated: true (anyone), tls: true (any TLS client) or \
                 identities/suffixes (those meshed clients), not several",
            ));
        }
    };
    Ok(Authorization {
        name,
        networks,
        except,
        clients,
    })
}

/// Identities and suffixes; `"*"` in either is any identity (the empty
/// suffix).
fn meshed_clients(
    identities: Vec<String>,
    suffixes: Vec<String>,
    at: &str,
) -> Result<Clients, Error> {
    let mut ids = Vec::new();
    let mut sfx = Vec::new();
    for id in identities {
        if id == "*" {
            sfx.push(String::new());
        } else {
            check_identity_name(&id).map_err(|r| invalid(at, r))?;
            ids.push(id);
        }
    }
    for s in suffixes {
        if s == "*" {
            sfx.push(String::new());
            continue;
        }
        let s = s.trim_start_matches('.');
        let (s, _) =
            parse_authority(&format!("{s}:1")).map_err(|r| invalid(at, format!("suffix: {r}")))?;
        sfx.push(s);
    }
    Ok(Clients::Meshed {
        identities: ids,
        suffixes: sfx,
    })
}

/// A network (CIDR), or one address.
fn network(n: &str, at: &str) -> Result<IpNet, Error> {
    n.parse::<IpNet>()
        .map(|n| n.trunc())
        .or_else(|_| n.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| invalid(at, format!("{n:?} is not a network (CIDR) or address")))
}

fn rate_limit(r: FileRateLimit, server: &str, at: &str) -> Result<RateLimit, Error> {
    let name = match r.name {
        Some(n) => nonempty(n, &format!("{at}.name"))?,
        None => server.to_string(),
    };
    for (field, v) in [("total", r.total), ("identity", r.identity)] {
        if v == Some(0) {
            return Err(invalid(
                format!("{at}.{field}"),
                "0 requests per second: leave it out for no limit, or deny instead",
            ));
        }
    }
    if r.total.is_none() && r.identity.is_none() && r.overrides.is_empty() {
        return Err(invalid(at, "no limit: give total, identity or overrides"));
    }
    let mut overrides = Vec::with_capacity(r.overrides.len());
    for (i, o) in r.overrides.into_iter().enumerate() {
        let at = format!("{at}.overrides[{i}]");
        if o.requests_per_second == 0 {
            return Err(invalid(at, "requests_per_second must be more than 0"));
        }
        if o.identities.is_empty() {
            return Err(invalid(
                at,
                "identities: an override is for some identities",
            ));
        }
        for id in &o.identities {
            check_identity_name(id).map_err(|e| invalid(&at, e))?;
        }
        overrides.push(RateLimitOverride {
            requests_per_second: o.requests_per_second,
            identities: o.identities,
        });
    }
    Ok(RateLimit {
        name,
        total: r.total,
        identity: r.identity,
        overrides,
    })
}

fn nonempty(s: String, at: &str) -> Result<String, Error> {
    if s.trim().is_empty() {
        return Err(invalid(at, "empty"));
    }
    Ok(s)
}
