//! S3 answers as [`BlobError`]s: each names the operation, the object and what to do, keeps the
//! SDK error as its source, and never carries a body or a credential.

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use crate::error::{BlobError, BlobErrorKind};
use crate::store::*;

impl BlobStore {
    /// Maps an SDK error to a [`BlobError`] whose message names the operation, the object and
    /// what to do. `what` is a reference or bucket name, never content.
    pub(crate) fn sdk_error<E>(
        &self,
        op: &str,
        what: &str,
        e: SdkError<E, HttpResponse>,
    ) -> BlobError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let target = &self.target;
        match &e {
            SdkError::TimeoutError(_) => {
                return BlobError::new(
                    BlobErrorKind::Unavailable,
                    format!("{op} {what}: {target} timed out; check that it is up, then retry"),
                )
                .with_source(e);
            }
            SdkError::DispatchFailure(_) => {
                return BlobError::new(
                    BlobErrorKind::Unavailable,
                    format!(
                        "{op} {what}: cannot reach {target} ({}); check that it is up and \
                         reachable, then retry",
                        detail(&e)
                    ),
                )
                .with_source(e);
            }
            _ => {}
        }
        let status = e.raw_response().map(|r| r.status().as_u16());
        let code = e.code().unwrap_or("");
        let (kind, hint) = match (code, status) {
            ("NoSuchBucket", _) => (
                BlobErrorKind::NotFound,
                format!(
                    "bucket '{}' does not exist; create it (sealpost creates it at start) or fix \
                     the configured bucket",
                    self.bucket
                ),
            ),
            ("NoSuchKey" | "NotFound", _) | (_, Some(404)) => (
                BlobErrorKind::NotFound,
                "the object does not exist; upload it first".to_owned(),
            ),
            ("BadDigest" | "InvalidDigest" | "XAmzContentSHA256Mismatch", _) => (
                BlobErrorKind::DigestMismatch,
                "the body does not match its SHA-256 checksum; upload the exact bytes that were \
                 hashed"
                    .to_owned(),
            ),
            ("EntityTooLarge", _) => (
                BlobErrorKind::TooLarge,
                "the body is larger than the endpoint allows".to_owned(),
            ),
            ("AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch", _) => (
                BlobErrorKind::Other,
                format!(
                    "{target} refused the credentials; check access_key_id, secret_access_key \
                     and the bucket policy"
                ),
            ),
            ("SlowDown" | "ServiceUnavailable" | "InternalError" | "RequestTimeout", _)
            | (_, Some(500..=599)) => (
                BlobErrorKind::Unavailable,
                format!("{target} is failing or overloaded; retry later"),
            ),
            _ => (
                BlobErrorKind::Other,
                format!("unexpected answer from {target}"),
            ),
        };
        let message = format!("{op} {what} failed: {hint} ({})", detail(&e));
        BlobError::new(kind, message).with_source(e)
    }
}

/// What S3 answered, without the response body: status, error code and message; or the
/// connection error chain when there was no answer.
pub(crate) fn detail<E>(e: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match e {
        SdkError::ServiceError(_) | SdkError::ResponseError(_) => {
            let mut out = match e.raw_response() {
                Some(r) => format!("HTTP {}", r.status().as_u16()),
                None => "no HTTP status".to_owned(),
            };
            match (e.code(), e.message()) {
                (Some(code), Some(msg)) => out.push_str(&format!(" {code}: {msg}")),
                (Some(code), None) => out.push_str(&format!(" {code}")),
                (None, _) => out.push_str(", no S3 error code"),
            }
            out
        }
        other => error_chain(other),
    }
}

/// An error and its sources, `: `-separated (without Debug dumps).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        source = s.source();
    }
    out
}
