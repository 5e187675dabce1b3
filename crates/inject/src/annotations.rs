//! Per-workload annotations: whether to inject, and the proxy settings
//! users override most. Each is read as `config.linnet.io/<name>` and,
//! failing that, in Linkerd's spelling (`config.linkerd.io/<name>`, or
//! `config.alpha.linkerd.io/` for the one Linkerd still calls alpha).
//! The pod template's annotations win over the workload's, and the
//! workload's over its namespace's (Linkerd's injector reads a pod's
//! namespace the same way).

use crate::Error;
use std::collections::BTreeMap;

/// The settings a workload overrides, validated.
#[derive(Debug, Default)]
pub(crate) struct Overrides {
    /// Extra inbound ports `linnet init` leaves alone.
    pub(crate) skip_inbound_ports: Option<String>,
    /// Extra outbound ports `linnet init` leaves alone.
    pub(crate) skip_outbound_ports: Option<String>,
    /// Source subnets whose inbound connections `linnet init` leaves alone
    /// (its `--subnets-to-ignore`, as Linkerd's proxy-init takes them).
    pub(crate) skip_subnets: Option<String>,
    /// Inbound ports served without protocol detection.
    pub(crate) opaque_ports: Option<String>,
    pub(crate) cpu_request: Option<String>,
    pub(crate) cpu_limit: Option<String>,
    pub(crate) memory_request: Option<String>,
    pub(crate) memory_limit: Option<String>,
    pub(crate) log_level: Option<String>,
    /// `plain` or `json`.
    pub(crate) log_format: Option<String>,
    /// The proxy's image, with or without a tag.
    pub(crate) proxy_image: Option<String>,
    /// The tag of the proxy's image.
    pub(crate) proxy_version: Option<String>,
    /// The init container's image, with or without a tag.
    pub(crate) init_image: Option<String>,
    /// The tag of the init container's image.
    pub(crate) init_image_version: Option<String>,
    /// The uid the proxy runs as, which `linnet init` exempts.
    pub(crate) proxy_uid: Option<i64>,
    /// The proxy's drain deadline on shutdown, as the proxy reads it
    /// (`<n>ms`).
    pub(crate) shutdown_grace_period: Option<String>,
    /// Seconds the proxy's `preStop` hook holds back its SIGTERM; 0 adds
    /// no hook.
    pub(crate) wait_before_exit_seconds: Option<i64>,
}

/// The annotations to look at for one pod template, most specific first.
pub(crate) struct Annotations<'a> {
    /// The pod template's (or the Pod's own).
    pub(crate) template: Option<&'a BTreeMap<String, String>>,
    /// The workload's, when the template belongs to one.
    pub(crate) workload: Option<&'a BTreeMap<String, String>>,
    /// The namespace's name and annotations, when known.
    pub(crate) namespace: Option<(&'a str, &'a BTreeMap<String, String>)>,
    /// `Kind namespace/name`, for errors.
    pub(crate) name: &'a str,
}

/// An annotation found: its key, its value, and the namespace it was
/// inherited from (`None`: the workload's own).
struct Found<'a, 'k> {
    key: &'k str,
    value: &'a str,
    namespace: Option<&'a str>,
}

/// Whether a namespace's annotation `key` is one a workload inherits:
/// the inject switch and the `config.*` settings, in either spelling.
/// Only these are kept from a namespace.
pub(crate) fn inherited(key: &str) -> bool {
    matches!(key, "linnet.io/inject" | "linkerd.io/inject")
        || [
            "config.linnet.io/",
            "config.linkerd.io/",
            "config.alpha.linkerd.io/",
        ]
        .iter()
        .any(|prefix| key.starts_with(prefix))
}

impl Annotations<'_> {
    /// The first of `keys` set, looking through each source in turn: the
    /// template wins over the workload, and the workload over its
    /// namespace, whatever the spelling.
    fn first<'k>(&self, keys: &[&'k str]) -> Option<Found<'_, 'k>> {
        let sources = [
            self.template.map(|a| (a, None)),
            self.workload.map(|a| (a, None)),
            self.namespace.map(|(ns, a)| (a, Some(ns))),
        ];
        sources.into_iter().flatten().find_map(|(a, namespace)| {
            keys.iter().find_map(|k| {
                a.get(*k).map(|v| Found {
                    key: k,
                    value: v.as_str(),
                    namespace,
                })
            })
        })
    }

    /// The value of `linnet.io/inject` (or Linkerd's `linkerd.io/inject`),
    /// from the most specific source that sets it.
    pub(crate) fn inject(&self) -> Option<&str> {
        self.first(&["linnet.io/inject", "linkerd.io/inject"])
            .map(|f| f.value.trim())
    }

    /// `linnet.io/inject: disabled` or Linkerd's `linkerd.io/inject:
    /// disabled`; a template's `enabled` wins over its workload's
    /// `disabled`, and a workload's over its namespace's.
    pub(crate) fn disabled(&self) -> bool {
        self.inject() == Some("disabled")
    }

    /// Reads and checks the overrides.
    pub(crate) fn overrides(&self) -> Result<Overrides, Error> {
        Ok(Overrides {
            skip_inbound_ports: self.setting("skip-inbound-ports", ports)?,
            skip_outbound_ports: self.setting("skip-outbound-ports", ports)?,
            skip_subnets: self.setting("skip-subnets", subnets)?,
            opaque_ports: self.setting("opaque-ports", ports)?,
            cpu_request: self.setting("proxy-cpu-request", quantity)?,
            cpu_limit: self.setting("proxy-cpu-limit", quantity)?,
            memory_request: self.setting("proxy-memory-request", quantity)?,
            memory_limit: self.setting("proxy-memory-limit", quantity)?,
            log_level: self.setting("proxy-log-level", log_level)?,
            log_format: self.setting("proxy-log-format", log_format)?,
            proxy_image: self.setting("proxy-image", image)?,
            proxy_version: self.setting("proxy-version", tag)?,
            init_image: self.setting("init-image", image)?,
            init_image_version: self.setting("init-image-version", tag)?,
            proxy_uid: self.setting("proxy-uid", uid)?,
            shutdown_grace_period: self.setting("shutdown-grace-period", grace_period)?,
            wait_before_exit_seconds: self.check(
                &[
                    "config.linnet.io/proxy-wait-before-exit-seconds",
                    "config.alpha.linkerd.io/proxy-wait-before-exit-seconds",
                ],
                seconds,
            )?,
        })
    }

    /// `config.linnet.io/<name>`, else `config.linkerd.io/<name>`, checked.
    fn setting<T>(
        &self,
        name: &str,
        check: fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, Error> {
        let ours = format!("config.linnet.io/{name}");
        let linkerd = format!("config.linkerd.io/{name}");
        self.check(&[&ours, &linkerd], check)
    }

    /// The first of `keys` set, checked.
    fn check<T>(
        &self,
        keys: &[&str],
        check: fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, Error> {
        let Some(found) = self.first(keys) else {
            return Ok(None);
        };
        check(found.value)
            .map(Some)
            .map_err(|reason| self.error(&found, reason))
    }

    fn error(&self, found: &Found<'_, '_>, reason: String) -> Error {
        let annotation = match found.namespace {
            Some(ns) => format!("{} (of Namespace {ns})", found.key),
            None => found.key.to_string(),
        };
        Error::Annotation {
            workload: self.name.to_string(),
            annotation,
            value: found.value.to_string(),
            reason,
        }
    }

    /// The error for the annotation that set the wait before exit, when
    /// it is longer than the pod's `terminationGracePeriodSeconds` (which
    /// the API server would refuse the pod for).
    pub(crate) fn wait_too_long(&self, grace_seconds: i64) -> Option<Error> {
        let found = self.first(&[
            "config.linnet.io/proxy-wait-before-exit-seconds",
            "config.alpha.linkerd.io/proxy-wait-before-exit-seconds",
        ])?;
        let reason = format!(
            "is longer than the pod's terminationGracePeriodSeconds ({grace_seconds}), which the API server refuses"
        );
        Some(self.error(&found, reason))
    }
}

/// A list of ports and ranges (`25,8000-8100`), normalised without spaces.
fn ports(value: &str) -> Result<String, String> {
    let mut out = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let port = |s: &str| {
            s.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| {
                    format!("is not a list of ports and ranges: {s:?} is not a port (1-65535)")
                })
        };
        match item.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (port(lo)?, port(hi)?);
                if lo > hi {
                    return Err(format!(
                        "is not a list of ports and ranges: {item:?} is empty"
                    ));
                }
                out.push(format!("{lo}-{hi}"));
            }
            None => out.push(port(item)?.to_string()),
        }
    }
    Ok(out.join(","))
}

/// A list of IPv4 and IPv6 subnets (`10.0.0.0/8,fd00::/8`), read by
/// `linnet init`'s own parser and written as it writes them.
fn subnets(value: &str) -> Result<String, String> {
    value
        .parse::<linnet_init::SubnetList>()
        .map(|list| list.to_string())
        .map_err(|e| format!("is not a list of subnets (CIDRs): {e}"))
}

/// A Kubernetes resource quantity (`100m`, `0.5`, `64Mi`, `1e3`).
fn quantity(value: &str) -> Result<String, String> {
    let v = value.trim();
    let err = || "is not a resource quantity (like 100m, 0.5, 64Mi)".to_string();
    let digits = v.trim_start_matches(['+', '-']);
    let number_end = digits
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(digits.len());
    let (number, suffix) = digits.split_at(number_end);
    let valid_number = !number.is_empty() && number != "." && number.matches('.').count() <= 1;
    let valid_suffix = matches!(
        suffix,
        "" | "n"
            | "u"
            | "m"
            | "k"
            | "M"
            | "G"
            | "T"
            | "P"
            | "E"
            | "Ki"
            | "Mi"
            | "Gi"
            | "Ti"
            | "Pi"
            | "Ei"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .map(|e| e.trim_start_matches(['+', '-']))
        .is_some_and(|e| !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()));
    if valid_number && valid_suffix {
        Ok(v.to_string())
    } else {
        Err(err())
    }
}

/// A log filter: anything non-empty; the proxy checks its syntax at start.
fn log_level(value: &str) -> Result<String, String> {
    let v = value.trim();
    if v.is_empty() {
        Err("is empty".to_string())
    } else {
        Ok(v.to_string())
    }
}

/// `plain` or `json`, the formats the proxy writes.
fn log_format(value: &str) -> Result<String, String> {
    let v = value.trim().to_ascii_lowercase();
    match v.as_str() {
        "plain" | "json" => Ok(v),
        _ => Err("is not a log format (plain or json)".to_string()),
    }
}

/// A container image reference: `[host[:port]/]path[:tag][@digest]`,
/// as the container runtime reads it.
pub(crate) fn image(value: &str) -> Result<String, String> {
    let v = value.trim();
    let err = |why: String| Err(format!("is not an image reference: {why}"));
    if v.is_empty() {
        return err("it is empty".to_string());
    }
    let (rest, digest) = match v.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (v, None),
    };
    if let Some(d) = digest {
        let valid = d.split_once(':').is_some_and(|(algorithm, hex)| {
            !algorithm.is_empty()
                && algorithm
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b))
                && hex.len() >= 32
                && hex.bytes().all(|b| b.is_ascii_hexdigit())
        });
        if !valid {
            return err(format!(
                "{d:?} is not a digest (like sha256:<64 hex digits>)"
            ));
        }
    }
    let (name, tag) = split_tag(rest);
    if let Some(t) = tag {
        if let Err(why) = self::tag(t) {
            return err(format!("its tag {t:?} {why}"));
        }
    }
    let mut components = name.split('/').peekable();
    let mut first = true;
    while let Some(c) = components.next() {
        let host = first
            && components.peek().is_some()
            && (c.contains(['.', ':'])
                || c == "localhost"
                || c.bytes().any(|b| b.is_ascii_uppercase()));
        first = false;
        let valid = if host {
            let (h, port) = c.split_once(':').unwrap_or((c, "1"));
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
                && !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
        } else {
            let edge_ok =
                |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
            edge_ok(c.bytes().next())
                && edge_ok(c.bytes().last())
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        };
        if !valid {
            return err(format!("{c:?} is not a valid part of an image name"));
        }
    }
    Ok(v.to_string())
}

/// An image tag: up to 128 letters, digits, `_`, `.` and `-`, not
/// starting with `.` or `-`.
fn tag(value: &str) -> Result<String, String> {
    let v = value.trim();
    let valid = (1..=128).contains(&v.len())
        && v.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if valid {
        Ok(v.to_string())
    } else {
        Err("is not an image tag (letters, digits, _ . -)".to_string())
    }
}

/// `reference` split into its name and tag: the tag follows the last `:`
/// that comes after the last `/` (a `:` before it is a registry's port).
/// A digest is to be split off first.
pub(crate) fn split_tag(reference: &str) -> (&str, Option<&str>) {
    match reference.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, Some(tag)),
        _ => (reference, None),
    }
}

/// A uid to run the proxy as: not root (the pod runs it with
/// `runAsNonRoot`), and within what Kubernetes accepts for `runAsUser`.
fn uid(value: &str) -> Result<i64, String> {
    match value.trim().parse::<i64>() {
        Ok(0) => Err("is root: the proxy runs as a non-root user".to_string()),
        Ok(uid) if (1..=i64::from(i32::MAX)).contains(&uid) => Ok(uid),
        _ => Err("is not a user id (1-2147483647)".to_string()),
    }
}

/// A duration as Linkerd's annotations write it (Go's syntax: `30s`,
/// `1m30s`, `1.5m`, `500ms`), as whole milliseconds in the proxy's
/// syntax (`30000ms`), rounded down as Linkerd's injector does.
fn grace_period(value: &str) -> Result<String, String> {
    let err = || "is not a duration (like 30s, 2m or 1m30s)".to_string();
    let v = value.trim();
    if v == "0" {
        return Ok("0ms".to_string());
    }
    if v.is_empty() {
        return Err(err());
    }
    let mut rest = v;
    let mut total_ns: u128 = 0;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        let (number, tail) = rest.split_at(number_end);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty()) || whole.len() + fraction.len() > 20 {
            return Err(err());
        }
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let ns_per_unit: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(err()),
        };
        let digits = |s: &str| -> Result<u128, String> {
            if s.is_empty() {
                Ok(0)
            } else {
                s.parse::<u128>().map_err(|_| err())
            }
        };
        let scale = 10u128.pow(u32::try_from(fraction.len()).map_err(|_| err())?);
        total_ns += digits(whole)? * ns_per_unit + digits(fraction)? * ns_per_unit / scale;
        rest = tail;
    }
    // A day is longer than any pod's termination grace period.
    if total_ns > 86_400 * 1_000_000_000 {
        return Err("is longer than a day".to_string());
    }
    Ok(format!("{}ms", total_ns / 1_000_000))
}

/// A whole number of seconds (0 or more).
fn seconds(value: &str) -> Result<i64, String> {
    value
        .trim()
        .parse::<u32>()
        .map(i64::from)
        .map_err(|_| "is not a whole number of seconds".to_string())
}

#[cfg(test)]
mod tests;
