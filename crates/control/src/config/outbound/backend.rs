//! Validation of backends (a service, or an address described like an
//! endpoint, with its balancer's load and its queue), of SNIs and of
//! failure accrual.

use super::{
    file::*,
    parse::{positive, positive_or},
    *,
};
use crate::config::{Error, dur, endpoint, invalid, parse_authority};

pub(super) fn backends(list: Vec<FileBackend>, at: &str) -> Result<Vec<Backend>, Error> {
    list.into_iter()
        .enumerate()
        .map(|(i, b)| backend(b, &format!("{at}.backends[{i}]")))
        .collect()
}

fn backend(b: FileBackend, at: &str) -> Result<Backend, Error> {
    let weight = b.weight.unwrap_or(1);
    if weight == 0 {
        return Err(invalid(at, "backend weight 0: remove the backend instead"));
    }
    let target = match (b.service, b.address) {
        (Some(s), None) => {
            let endpoint_only = [
                ("identity", b.identity.is_some()),
                ("server_name", b.server_name.is_some()),
                ("protocol", b.protocol.is_some()),
                ("opaque_transport_port", b.opaque_transport_port.is_some()),
                ("labels", !b.labels.is_empty()),
            ];
            if let Some((field, _)) = endpoint_only.iter().find(|(_, set)| *set) {
                return Err(invalid(
                    at,
                    format!("{field} describes an address backend: the service's endpoints say it"),
                ));
            }
            let (name, port) = parse_authority(&s).map_err(|e| invalid(at, e))?;
            BackendTarget::Service(format!("{name}:{port}"))
        }
        (None, Some(addr)) => {
            if b.load.is_some() {
                return Err(invalid(
                    at,
                    "load is for balancing a service's endpoints: an address is not balanced",
                ));
            }
            BackendTarget::Address(endpoint(
                crate::config::FileEndpoint {
                    addr,
                    weight: Some(weight),
                    identity: b.identity,
                    server_name: b.server_name,
                    protocol: b.protocol,
                    opaque_transport_port: b.opaque_transport_port,
                    labels: b.labels,
                },
                at,
            )?)
        }
        _ => return Err(invalid(at, "a backend is a service or an address")),
    };
    let load = match b.load {
        None => Load::default(),
        Some(l) => {
            let d = Load::default();
            Load {
                default_rtt: positive_or(&l.default_rtt, at, "load.default_rtt", d.default_rtt)?,
                decay: positive_or(&l.decay, at, "load.decay", d.decay)?,
                penalty: l
                    .penalty
                    .map(|p| {
                        Ok::<_, Error>(Penalty {
                            penalty: positive(&p.penalty, at, "load.penalty.penalty")?,
                            max_retry_after: positive_or(
                                &p.max_retry_after,
                                at,
                                "load.penalty.max_retry_after",
                                Duration::from_secs(10),
                            )?,
                            decay: positive_or(
                                &p.decay,
                                at,
                                "load.penalty.decay",
                                Duration::from_secs(10),
                            )?,
                        })
                    })
                    .transpose()?,
            }
        }
    };
    let queue = match b.queue {
        None => Queue::default(),
        Some(q) => {
            let d = Queue::default();
            let capacity = q.capacity.unwrap_or(d.capacity);
            if capacity == 0 {
                return Err(invalid(at, "queue.capacity 0 would refuse every request"));
            }
            Queue {
                capacity,
                failfast_timeout: positive_or(
                    &q.failfast_timeout,
                    at,
                    "queue.failfast_timeout",
                    d.failfast_timeout,
                )?,
            }
        }
    };
    Ok(Backend {
        target,
        weight,
        load,
        queue,
    })
}

/// `name` or `*.name` → an SNI match.
pub(super) fn sni(s: &str) -> Result<Sni, String> {
    let (suffix, name) = match s.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (name, _) = parse_authority(&format!("{name}:1"))
        .map_err(|e| format!("sni {s:?}: {e} (a name, or *. and a name)"))?;
    Ok(if suffix {
        Sni::Suffix(name)
    } else {
        Sni::Exact(name)
    })
}

pub(super) fn failure_accrual(f: FileFailureAccrual, at: &str) -> Result<FailureAccrual, Error> {
    let kind = match (f.consecutive_failures, f.success_rate) {
        (Some(0), _) => return Err(invalid(at, "consecutive_failures must be at least 1")),
        (Some(n), None) => AccrualKind::Consecutive(n),
        (None, Some(s)) => {
            if !(0.0..=1.0).contains(&s.threshold) {
                return Err(invalid(at, "success_rate.threshold must be from 0 to 1"));
            }
            if s.threshold == 0.0 && s.max_consecutive_failures == 0 {
                return Err(invalid(
                    at,
                    "success_rate: threshold 0 and max_consecutive_failures 0 never trip",
                ));
            }
            AccrualKind::SuccessRate(SuccessRate {
                threshold: s.threshold,
                decay: positive_or(&s.decay, at, "success_rate.decay", Duration::from_secs(10))?,
                min_requests: s.min_requests.unwrap_or(10),
                max_consecutive_failures: s.max_consecutive_failures,
            })
        }
        (Some(_), Some(_)) => {
            return Err(invalid(
                at,
                "consecutive_failures or success_rate, not both",
            ));
        }
        (None, None) => {
            return Err(invalid(
                at,
                "consecutive_failures or success_rate is missing",
            ));
        }
    };
    let jitter_ratio = f.jitter_ratio.unwrap_or(0.5);
    if !(0.0..=100.0).contains(&jitter_ratio) {
        return Err(invalid(at, "jitter_ratio must be from 0 to 100"));
    }
    let min_backoff = dur(&f.min_backoff, at, Duration::from_secs(1))?;
    let max_backoff = dur(&f.max_backoff, at, Duration::from_secs(60))?;
    if min_backoff > max_backoff {
        return Err(invalid(at, "min_backoff is above max_backoff"));
    }
    Ok(FailureAccrual {
        kind,
        min_backoff,
        max_backoff,
        jitter_ratio,
        min_ready_endpoints: f.min_ready_endpoints,
    })
}
