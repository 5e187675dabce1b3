//! The mesh file of `linnet control` (`linnet_control::Mesh::parse`, what
//! `Mesh::load` runs at start and at every reload) on arbitrary text.
//!
//! Checks: no panic, whatever the YAML says; in a file that validates,
//! every service is found by its authority and its addresses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use linnet_control::Mesh;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // Token files are read relative to the mesh file's directory or at
    // an absolute path: keep the fuzzer away from devices and the
    // kernel's files, which may never end or block (the mesh file is the
    // operator's, not a peer's). Strings are looked at as YAML reads
    // them, escapes and all.
    if let Ok(doc) = yaml_serde::from_str::<yaml_serde::Value>(&text)
        && names_special_files(&doc)
    {
        return;
    }
    let dir = linnet_fuzz::mesh_dir();
    if let Ok(mesh) = Mesh::parse(&text, dir) {
        // Every service is the one found by the authority it is listed
        // under, and by each of its addresses.
        for (authority, svc) in &mesh.services {
            let found = mesh.service(authority);
            assert!(
                found.is_some_and(|f| std::ptr::eq(f, svc)),
                "{authority}: {found:?}"
            );
            for addr in &svc.addresses {
                let found = mesh.service_by_addr(*addr);
                assert!(
                    found.is_some_and(|f| std::ptr::eq(f, svc)),
                    "{addr} of {authority} finds {:?}",
                    found.map(|f| &f.name)
                );
            }
        }
    }
});

/// Whether any key or string in `v` names a path under `/dev`, `/proc`
/// or `/sys`.
fn names_special_files(v: &yaml_serde::Value) -> bool {
    use yaml_serde::Value;
    match v {
        Value::String(s) => ["/dev", "/proc", "/sys"].iter().any(|p| s.contains(p)),
        Value::Sequence(items) => items.iter().any(names_special_files),
        Value::Mapping(m) => m
            .iter()
            .any(|(k, v)| names_special_files(k) || names_special_files(v)),
        Value::Tagged(t) => names_special_files(&t.value),
        _ => false,
    }
}
