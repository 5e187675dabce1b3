//! `linnet control`'s answers to what proxies send it: a request message
//! decoded with prost, as the gRPC server would, and handed to the
//! service (`linnet_control::fuzzing`), serving `examples/mesh.yaml`.
//!
//! Input: one byte choosing the RPC (`Destination.Get`, `GetProfile`,
//! `InboundServerPolicies.GetPort`, `OutboundPolicies.Get`,
//! `Identity.Certify`, by its value modulo 5), then the request.
//!
//! Checks: no panic; `Certify` issues a certificate only for an identity
//! whose configured token was presented, and the certificate names that
//! identity and nothing else, whatever the signing request asked for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use linkerd2_proxy_api::{destination, identity, inbound, outbound};
use linnet_control::{Ca, Control, Mesh, Metrics, Store, fuzzing};
use linnet_fuzz::{EXAMPLE_MESH, block_on, mesh_dir};
use linnet_tls::{Id, identities, pki_types::CertificateDer};
use prost::Message;
use std::sync::{Arc, OnceLock};

fuzz_target!(|input: &[u8]| {
    let Some((&rpc, msg)) = input.split_first() else {
        return;
    };
    let c = control();
    block_on(async {
        match rpc % 5 {
            0 => {
                if let Ok(req) = destination::GetDestination::decode(msg) {
                    let _ = fuzzing::get(c, req).await;
                }
            }
            1 => {
                if let Ok(req) = destination::GetDestination::decode(msg) {
                    let _ = fuzzing::get_profile(c, req).await;
                }
            }
            2 => {
                if let Ok(req) = inbound::PortSpec::decode(msg) {
                    let _ = fuzzing::get_port(c, req).await;
                }
            }
            3 => {
                if let Ok(req) = outbound::TrafficSpec::decode(msg) {
                    let _ = fuzzing::outbound_get(c, req).await;
                }
            }
            _ => {
                if let Ok(req) = identity::CertifyRequest::decode(msg) {
                    check_certify(c, req.clone(), fuzzing::certify(c, req).await);
                }
            }
        }
    });
});

fn check_certify(
    c: &Control,
    req: identity::CertifyRequest,
    rsp: Result<identity::CertifyResponse, tonic::Status>,
) {
    if linnet_fuzz::debug() {
        eprintln!("Certify {req:?}: {rsp:?}");
    }
    let Ok(rsp) = rsp else {
        return;
    };
    let mesh = c.store.current();
    let token = mesh.identity.tokens.get(&req.identity);
    let presented = String::from_utf8_lossy(&req.token);
    assert_eq!(
        token.map(String::as_str),
        Some(presented.trim_end()),
        "certified {:?} with token {presented:?}",
        req.identity
    );
    let leaf = CertificateDer::from(rsp.leaf_certificate);
    let named = identities(&leaf).unwrap_or_else(|e| panic!("the leaf does not read: {e}"));
    let wanted = Id::parse(&req.identity)
        .map(|id| vec![id])
        .unwrap_or_default();
    assert_eq!(named, wanted, "asked for {:?}", req.identity);
    assert!(rsp.valid_until.is_some());
}

/// `linnet control` serving `examples/mesh.yaml`, with a fresh CA.
fn control() -> &'static Control {
    static CONTROL: OnceLock<Control> = OnceLock::new();
    CONTROL.get_or_init(|| {
        let mesh = Mesh::parse(EXAMPLE_MESH, mesh_dir()).unwrap_or_else(|e| panic!("{e}"));
        let mut registry = linnet_metrics::prometheus_client::registry::Registry::default();
        Control {
            store: Store::new(mesh),
            metrics: Metrics::register(&mut registry),
            ca: Arc::new(Ca::generate().unwrap_or_else(|e| panic!("{e}"))),
        }
    })
}
