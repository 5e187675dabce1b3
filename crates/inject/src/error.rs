//! The errors of reading, injecting and writing manifests.

/// What went wrong with a manifest. Each variant names where: the
/// document, or the workload and its annotation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A document is not YAML, or not a valid object of the kind it says.
    #[error("document {document}: {reason}")]
    Parse {
        /// 1-based index of the document in the input (`---` separated).
        document: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A per-workload annotation has a value that cannot be used.
    #[error("{workload}: annotation {annotation}: {value:?} {reason}")]
    Annotation {
        /// The workload, as `Kind namespace/name`.
        workload: String,
        /// The annotation's key.
        annotation: String,
        /// Its value.
        value: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// An object could not be written back as YAML.
    #[error("writing YAML: {0}")]
    Write(String),
}
