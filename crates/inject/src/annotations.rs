//! Per-workload annotations: whether to inject, and the proxy settings
//! users override most. Each is read as `config.linnet.io/<name>` and,
//! failing that, as Linkerd's `config.linkerd.io/<name>`; the pod
//! template's annotations win over the workload's.

use crate::Error;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The settings a workload overrides, validated.
#[derive(Debug, Default)]
pub(crate) struct Overrides {
    /// Extra inbound ports `linnet init` leaves alone.
    pub(crate) skip_inbound_ports: Option<String>,
    /// Extra outbound ports `linnet init` leaves alone.
    pub(crate) skip_outbound_ports: Option<String>,
    /// Inbound ports served without protocol detection.
    pub(crate) opaque_ports: Option<String>,
    pub(crate) cpu_request: Option<String>,
    pub(crate) cpu_limit: Option<String>,
    pub(crate) memory_request: Option<String>,
    pub(crate) memory_limit: Option<String>,
    pub(crate) log_level: Option<String>,
}

/// The annotations to look at: the template's first, then the workload's.
pub(crate) struct Annotations<'a> {
    pub(crate) metas: [Option<&'a ObjectMeta>; 2],
    /// `Kind namespace/name`, for errors.
    pub(crate) workload: &'a str,
}

impl Annotations<'_> {
    /// The first of `keys` set, with its key.
    fn first<'k>(&self, keys: &[&'k str]) -> Option<(&'k str, &str)> {
        // The template wins over the workload whatever the spelling, so
        // look through each object in turn.
        self.metas.iter().flatten().find_map(|m| {
            let a = m.annotations.as_ref()?;
            keys.iter()
                .find_map(|k| a.get(*k).map(|v| (*k, v.as_str())))
        })
    }

    /// `linnet.io/inject: disabled` or Linkerd's `linkerd.io/inject:
    /// disabled`; a template's `enabled` wins over its workload's
    /// `disabled`.
    pub(crate) fn disabled(&self) -> bool {
        self.first(&["linnet.io/inject", "linkerd.io/inject"])
            .is_some_and(|(_, v)| v.trim() == "disabled")
    }

    /// Reads and checks the overrides.
    pub(crate) fn overrides(&self) -> Result<Overrides, Error> {
        Ok(Overrides {
            skip_inbound_ports: self.setting("skip-inbound-ports", ports)?,
            skip_outbound_ports: self.setting("skip-outbound-ports", ports)?,
            opaque_ports: self.setting("opaque-ports", ports)?,
            cpu_request: self.setting("proxy-cpu-request", quantity)?,
            cpu_limit: self.setting("proxy-cpu-limit", quantity)?,
            memory_request: self.setting("proxy-memory-request", quantity)?,
            memory_limit: self.setting("proxy-memory-limit", quantity)?,
            log_level: self.setting("proxy-log-level", log_level)?,
        })
    }

    fn setting(
        &self,
        name: &str,
        check: fn(&str) -> Result<String, String>,
    ) -> Result<Option<String>, Error> {
        let ours = format!("config.linnet.io/{name}");
        let linkerd = format!("config.linkerd.io/{name}");
        let Some((key, value)) = self.first(&[&ours, &linkerd]) else {
            return Ok(None);
        };
        check(value).map(Some).map_err(|reason| Error::Annotation {
            workload: self.workload.to_string(),
            annotation: key.to_string(),
            value: value.to_string(),
            reason,
        })
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

#[cfg(test)]
mod tests;
