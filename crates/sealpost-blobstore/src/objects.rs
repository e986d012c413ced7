//! Operations on stored objects: existence and digest checks, deletion of every version, and
//! legal holds.

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::types::{ChecksumMode, ObjectLockLegalHold, ObjectLockLegalHoldStatus};
use sealpost_domain::Sha256Hex;

use crate::error::{BlobError, BlobErrorKind};
use crate::hashing::{self, StreamingDigest};
use crate::reference::BlobRef;
use crate::s3_error::error_chain;
use crate::store::*;

impl BlobStore {
    /// HEAD: `Ok(None)` when the object does not exist.
    pub async fn head(&self, r: &BlobRef) -> Result<Option<ObjectInfo>, BlobError> {
        let out = match self
            .client
            .head_object()
            .bucket(&r.bucket)
            .key(&r.key)
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(self.sdk_error("looking up", &r.uri(), e)),
        };
        let size = u64::try_from(out.content_length.unwrap_or(0)).unwrap_or(0);
        let from_checksum = out
            .checksum_sha256
            .as_deref()
            .and_then(hashing::checksum_to_hex);
        let from_metadata = out
            .metadata
            .as_ref()
            .and_then(|m| m.get(META_SHA256))
            .and_then(|v| Sha256Hex::new(v.as_str()).ok());
        Ok(Some(ObjectInfo {
            size,
            sha256: from_checksum.or(from_metadata),
        }))
    }

    /// Checks that the object exists ([`BlobErrorKind::NotFound`] if not) and, when `expected` is
    /// given, that its SHA-256 matches ([`BlobErrorKind::DigestMismatch`] if not). When HEAD does
    /// not tell the digest, the object is streamed and hashed (never buffered or logged).
    pub async fn verify(
        &self,
        r: &BlobRef,
        expected: Option<&Sha256Hex>,
    ) -> Result<ObjectInfo, BlobError> {
        let info = self.head(r).await?.ok_or_else(|| not_found(r))?;
        let Some(expected) = expected else {
            return Ok(info);
        };
        let (actual, size) = match info.sha256 {
            Some(known) => (known, info.size),
            None => self.hash_object(r).await?,
        };
        if &actual != expected {
            return Err(BlobError::new(
                BlobErrorKind::DigestMismatch,
                format!(
                    "payload {r} has SHA-256 {}, not the expected {}; send the digest of the \
                     uploaded ciphertext, or upload the ciphertext again",
                    actual.as_str(),
                    expected.as_str()
                ),
            ));
        }
        Ok(ObjectInfo {
            size,
            sha256: Some(actual),
        })
    }

    /// Streams the object through SHA-256.
    async fn hash_object(&self, r: &BlobRef) -> Result<(Sha256Hex, u64), BlobError> {
        let out = match self
            .client
            .get_object()
            .bucket(&r.bucket)
            .key(&r.key)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if is_not_found(&e) => return Err(not_found(r)),
            Err(e) => return Err(self.sdk_error("reading", &r.uri(), e)),
        };
        let mut body = out.body;
        let mut digest = StreamingDigest::default();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                BlobError::new(
                    BlobErrorKind::Unavailable,
                    format!(
                        "reading {r} from {} failed after {} bytes: {}; retry later",
                        self.target,
                        digest.len(),
                        error_chain(&e)
                    ),
                )
            })?;
            digest.update(&chunk);
        }
        let (raw, size) = digest.finish();
        Ok((hashing::to_hex(&raw), size))
    }

    /// Deletes the object; a missing object is not an error.
    ///
    /// In a versioned (Object Lock) bucket a plain delete would only add a delete marker and
    /// bypass legal holds, so every version of the key is deleted by its version id, the current
    /// one first: S3 then enforces holds, and a held version fails the delete with
    /// [`BlobErrorKind::LegalHold`].
    pub async fn delete(&self, r: &BlobRef) -> Result<(), BlobError> {
        let current = match self
            .client
            .head_object()
            .bucket(&r.bucket)
            .key(&r.key)
            .send()
            .await
        {
            Ok(out) => out.version_id.filter(|v| !v.is_empty()),
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => return Err(self.sdk_error("looking up", &r.uri(), e)),
        };
        let Some(current) = current else {
            return self.delete_version(r, None).await;
        };
        // Listed before anything is deleted, so that a failure here leaves a retry to do it all.
        let older = self.other_versions(r, &current).await?;
        self.delete_version(r, Some(current)).await?;
        for v in older {
            self.delete_version(r, Some(v)).await?;
        }
        tracing::debug!(reference = %r, "deleted payload");
        Ok(())
    }

    pub(crate) async fn delete_version(
        &self,
        r: &BlobRef,
        version: Option<String>,
    ) -> Result<(), BlobError> {
        let result = self
            .client
            .delete_object()
            .bucket(&r.bucket)
            .key(&r.key)
            .set_version_id(version)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) if e.code() == Some("AccessDenied") => Err(BlobError::new(
                BlobErrorKind::LegalHold,
                format!(
                    "{} refused to delete {r} (AccessDenied): the object is under a legal hold \
                     or an Object Lock retention period; release the hold first (or, if there \
                     is none, give the credentials s3:DeleteObjectVersion)",
                    self.target
                ),
            )),
            Err(e) => Err(self.sdk_error("deleting", &r.uri(), e)),
        }
    }

    /// The version ids (and delete markers) of exactly `r.key` other than `skip`.
    async fn other_versions(&self, r: &BlobRef, skip: &str) -> Result<Vec<String>, BlobError> {
        let mut out = Vec::new();
        let (mut key_marker, mut version_marker) = (None, None);
        loop {
            let page = self
                .client
                .list_object_versions()
                .bucket(&r.bucket)
                .prefix(&r.key)
                .set_key_marker(key_marker)
                .set_version_id_marker(version_marker)
                .send()
                .await
                .map_err(|e| self.sdk_error("listing the versions of", &r.uri(), e))?;
            let ids = page
                .versions()
                .iter()
                .map(|v| (v.key(), v.version_id()))
                .chain(
                    page.delete_markers()
                        .iter()
                        .map(|m| (m.key(), m.version_id())),
                );
            for (key, id) in ids {
                if let (Some(key), Some(id)) = (key, id) {
                    if key == r.key && id != skip && !out.iter().any(|o| o == id) {
                        out.push(id.to_owned());
                    }
                }
            }
            if page.is_truncated() != Some(true)
                || (page.next_key_marker.is_none() && page.next_version_id_marker.is_none())
            {
                return Ok(out);
            }
            key_marker = page.next_key_marker;
            version_marker = page.next_version_id_marker;
        }
    }

    /// Places (`on`) or releases a legal hold on the object. Needs a bucket with Object Lock
    /// enabled; the embedded endpoint accepts and ignores it.
    pub async fn set_legal_hold(&self, r: &BlobRef, on: bool) -> Result<(), BlobError> {
        let status = if on {
            ObjectLockLegalHoldStatus::On
        } else {
            ObjectLockLegalHoldStatus::Off
        };
        self.client
            .put_object_legal_hold()
            .bucket(&r.bucket)
            .key(&r.key)
            .legal_hold(ObjectLockLegalHold::builder().status(status).build())
            .send()
            .await
            .map_err(|e| {
                if is_not_found(&e) {
                    not_found(r)
                } else {
                    self.sdk_error(
                        if on {
                            "placing a legal hold on"
                        } else {
                            "releasing the legal hold on"
                        },
                        &r.uri(),
                        e,
                    )
                }
            })?;
        tracing::info!(reference = %r, on, "legal hold changed");
        Ok(())
    }
}

pub(crate) fn is_not_found<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> bool {
    matches!(e.code(), Some("NoSuchKey" | "NotFound"))
        || (matches!(e, SdkError::ServiceError(_))
            && e.raw_response().map(|r| r.status().as_u16()) == Some(404)
            && e.code() != Some("NoSuchBucket"))
}

pub(crate) fn not_found(r: &BlobRef) -> BlobError {
    BlobError::new(
        BlobErrorKind::NotFound,
        format!(
            "payload {r} does not exist; upload the ciphertext first (POST /v1/blobs or a \
             presigned PUT) and use the reference it returned"
        ),
    )
}
