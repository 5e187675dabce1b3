//! End-to-end tests of the Linnet proxy live in this crate's `tests/` folder; see `README.md`.
