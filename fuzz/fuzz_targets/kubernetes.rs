//! What `linnet control`'s Kubernetes endpoint discovery reads from the
//! API server: list pages and watch streams of Services, EndpointSlices
//! and Pods (`linnet_control::fuzzing::kubernetes`). The first byte picks
//! the resource and how the stream is cut into reads, the second the
//! largest watch event; a line may name its resource with a leading `S`,
//! `E` or `P`.
//!
//! Checks: no panic, whatever the bytes; no line over the event bound is
//! decoded; the tables stay within their bounds and count their weight
//! right; every service made of them is found by its name, its addresses
//! and its endpoints.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    linnet_control::fuzzing::kubernetes(data);
});
