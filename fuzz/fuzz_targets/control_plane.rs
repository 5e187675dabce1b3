//! Control-plane answers into the proxy's model: arbitrary bytes decoded
//! with prost as `Destination.Get` updates, `GetProfile` profiles,
//! `InboundServerPolicies` servers and `OutboundPolicies` policies, then
//! applied by the code the proxy's watches run (`linnet_discovery`'s
//! appliers, which call `linnet_policy`'s `from_proto` and
//! `from_profile`), in sequence, with stream failures between them.
//!
//! Input: one byte choosing the API (low two bits), then steps framed as
//! [`linnet_fuzz::messages`]: a step whose first byte is 0xff is a stream
//! failure with the status code that follows; otherwise its first byte's
//! low bit says whether the message opens a stream, and the rest is the
//! message.
//!
//! Checks: malformed answers are skipped, never a panic; what the watch
//! holds afterwards is usable (endpoints connectable, policies whole).
#![no_main]

use libfuzzer_sys::fuzz_target;
use linkerd2_proxy_api::{destination, inbound, outbound};
use linnet_discovery::{
    BackendSpec, Endpoint, Metrics, PolicyAnswer, Resolution,
    fuzzing::{self, Step},
};
use prost::Message;
use std::sync::OnceLock;

fuzz_target!(|input: &[u8]| {
    let Some((&api, rest)) = input.split_first() else {
        return;
    };
    let raw = linnet_fuzz::messages(rest);
    let metrics = metrics();
    match api & 3 {
        0 => match fuzzing::endpoints(metrics, steps::<destination::Update>(&raw)) {
            Resolution::Endpoints(set) => {
                for (addr, e) in set.iter() {
                    assert_eq!(*addr, e.addr);
                    check_endpoint(e);
                }
            }
            Resolution::Pending | Resolution::NotFound => {}
        },
        1 => {
            let profile = fuzzing::profile(metrics, steps::<destination::DestinationProfile>(&raw));
            if let Some(p) = profile {
                if let Some(name) = &p.name {
                    assert!(!name.ends_with('.') && !name.bytes().any(|b| b.is_ascii_uppercase()));
                }
                if let Some(e) = &p.endpoint {
                    check_endpoint(e);
                }
            }
        }
        2 => {
            let _ = fuzzing::inbound_server(metrics, steps::<inbound::Server>(&raw));
        }
        _ => match fuzzing::outbound_policy(metrics, steps::<outbound::OutboundPolicy>(&raw)) {
            PolicyAnswer::Found(p) => {
                for (backend, weight) in p.backends.iter() {
                    assert!(*weight > 0);
                    if let BackendSpec::Forward(e) = backend {
                        check_endpoint(e);
                    }
                }
            }
            PolicyAnswer::Pending | PolicyAnswer::NotFound => {}
        },
    }
});

/// The steps in `raw`; a message that does not decode ends them (a
/// gRPC stream fails at a message it cannot decode).
fn steps<M: Message + Default>(raw: &[&[u8]]) -> Vec<Step<M>> {
    let mut out = Vec::new();
    for r in raw {
        match r {
            [0xff, code @ ..] => {
                let code = code.first().copied().unwrap_or(0);
                out.push(Step::Error(i32::from(code)));
            }
            [first, msg @ ..] => match M::decode(msg) {
                Ok(msg) => out.push(Step::Message {
                    msg,
                    first: first & 1 == 1,
                }),
                Err(_) => {
                    out.push(Step::Error(13)); // INTERNAL, as tonic reports it
                    break;
                }
            },
            [] => {}
        }
    }
    out
}

/// An endpoint the proxy may connect to: an address, a weight, and an
/// identity that is a name when there is one.
fn check_endpoint(e: &Endpoint) {
    assert!(e.addr.port() != 0 && !e.addr.ip().is_unspecified(), "{e:?}");
    assert!(e.weight > 0, "{e:?}");
    assert_ne!(e.identity.as_deref(), Some(""), "{e:?}");
}

fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let mut registry = linnet_metrics::prometheus_client::registry::Registry::default();
        Metrics::register(&mut registry)
    })
}
