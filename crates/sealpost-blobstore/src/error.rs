//! The one error type of the crate: a kind to branch on and a message for people.

use std::fmt;

/// What kind of failure a [`BlobError`] is; callers map it to their own error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobErrorKind {
    /// The object (or the bucket) does not exist.
    NotFound,
    /// The object's SHA-256 differs from the expected one, or S3 refused a body whose checksum did
    /// not match.
    DigestMismatch,
    /// The reference points outside the tenant's own prefix (another bucket or tenant).
    OutsidePrefix,
    /// The reference is not of the form `s3://<bucket>/tenants/<tenant>/<name>`.
    InvalidReference,
    /// The body is larger than the allowed maximum.
    TooLarge,
    /// S3 refused to delete the object: it is under a legal hold (or retention).
    LegalHold,
    /// S3 could not be reached, timed out, or answered that it is overloaded: retry later.
    Unavailable,
    /// Anything else (configuration, permissions, an unexpected answer).
    Other,
}

impl BlobErrorKind {
    /// A stable snake_case name, for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            BlobErrorKind::NotFound => "not_found",
            BlobErrorKind::DigestMismatch => "digest_mismatch",
            BlobErrorKind::OutsidePrefix => "outside_prefix",
            BlobErrorKind::InvalidReference => "invalid_reference",
            BlobErrorKind::TooLarge => "too_large",
            BlobErrorKind::LegalHold => "legal_hold",
            BlobErrorKind::Unavailable => "unavailable",
            BlobErrorKind::Other => "other",
        }
    }
}

impl fmt::Display for BlobErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A blob store failure. The message says what went wrong and what to do about it; it never
/// contains object contents or credentials. The cause (an SDK or IO error) is kept as the source.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct BlobError {
    kind: BlobErrorKind,
    message: String,
    #[source]
    source: Option<std::sync::Arc<dyn std::error::Error + Send + Sync>>,
}

impl BlobError {
    pub fn new(kind: BlobErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// The same error, caused by `source`.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(std::sync::Arc::new(source));
        self
    }

    pub fn kind(&self) -> BlobErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn other(message: impl Into<String>) -> Self {
        Self::new(BlobErrorKind::Other, message)
    }
}
