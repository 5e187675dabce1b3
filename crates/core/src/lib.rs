//! Shared vocabulary of the Linnet proxy.
//!
//! Every other crate builds on these few pieces: the boxed [`Error`] that
//! travels along the data path (with [`is_caused_by`] to look into its chain
//! at the server edge), and the [`drain`] signal that turns a shutdown
//! request into "stop accepting, let connections finish, then force-close".

pub mod addr;
pub mod drain;
pub mod endpoint;

/// The error type of the data path: any error, boxed.
///
/// Middleware wraps causes rather than flattening them, so that the one
/// place that turns errors into responses or metric labels can ask what
/// happened with [`is_caused_by`].
pub type Error = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Whether `error`, or any error in its `source()` chain, is an `E`.
pub fn is_caused_by<E: std::error::Error + 'static>(
    error: &(dyn std::error::Error + 'static),
) -> bool {
    find_cause::<E>(error).is_some()
}

/// The first error of type `E` in `error`'s `source()` chain, itself included.
pub fn find_cause<'a, E: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// Writes `error` and its whole `source()` chain on one line, `: `-separated.
///
/// `Display` of each error prints only its own level; this is the one place
/// the chain is printed, where the error is logged.
pub fn display_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut current = error.source();
    while let Some(e) = current {
        out.push_str(": ");
        out.push_str(&e.to_string());
        current = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("outer failed")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn finds_causes_in_the_chain() {
        let err: Error = Box::new(Outer(std::io::Error::other("inner broke")));
        assert!(is_caused_by::<std::io::Error>(err.as_ref()));
        assert!(is_caused_by::<Outer>(err.as_ref()));
        assert!(!is_caused_by::<std::fmt::Error>(err.as_ref()));
        assert_eq!(display_chain(err.as_ref()), "outer failed: inner broke");
    }
}
