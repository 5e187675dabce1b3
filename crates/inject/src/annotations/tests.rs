#![allow(clippy::unwrap_used)]

use super::{ports, quantity};

#[test]
fn port_lists() {
    assert_eq!(ports("25, 8000-8100 ,443").unwrap(), "25,8000-8100,443");
    assert_eq!(ports("").unwrap(), "");
    for bad in ["0", "70000", "http", "10-5", "1-"] {
        assert!(ports(bad).is_err(), "{bad}");
    }
}

#[test]
fn quantities() {
    for good in ["100m", "0.5", "1", "64Mi", "1Gi", "1e3", "2.5G"] {
        assert_eq!(quantity(good).unwrap(), good);
    }
    for bad in ["", "m", "1 cpu", "1.2.3", "5Xi", "1e"] {
        assert!(quantity(bad).is_err(), "{bad}");
    }
}
