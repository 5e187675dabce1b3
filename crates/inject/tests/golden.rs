//! Golden files: each input under `tests/golden/input` injected in both
//! sidecar modes must give the file of the same name under
//! `tests/golden/native` and `tests/golden/non-native`.
//!
//! `LINNET_BLESS=1 cargo test -p linnet-inject --test golden` rewrites
//! them; review the diff before committing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{INPUTS, golden_dir, objects, options};

fn check(native: bool) {
    let dir = golden_dir().join(if native { "native" } else { "non-native" });
    let bless = std::env::var_os("LINNET_BLESS").is_some_and(|v| v == "1");
    let mut stale = Vec::new();
    for name in INPUTS {
        let injected = linnet_inject::inject(objects(name), &options(native)).unwrap();
        let text = linnet_inject::to_yaml(&injected).unwrap();
        let path = dir.join(format!("{name}.yaml"));
        if bless {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &text).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            stale.push(format!("{}:\n{text}", path.display()));
        }
    }
    assert!(
        stale.is_empty(),
        "golden files differ (LINNET_BLESS=1 rewrites them):\n{}",
        stale.join("\n")
    );
}

#[test]
fn native_sidecar() {
    check(true);
}

#[test]
fn non_native_sidecar() {
    check(false);
}

/// The golden outputs themselves read back as the objects they were
/// written from.
#[test]
fn goldens_parse_as_typed_objects() {
    for native in [true, false] {
        let dir = golden_dir().join(if native { "native" } else { "non-native" });
        for name in INPUTS {
            let text = std::fs::read_to_string(dir.join(format!("{name}.yaml"))).unwrap();
            let read = linnet_inject::parse(&text).unwrap();
            let expected = linnet_inject::inject(objects(name), &options(native)).unwrap();
            assert_eq!(read, expected, "{name}");
        }
    }
}
