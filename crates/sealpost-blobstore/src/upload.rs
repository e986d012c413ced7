//! Uploads: a body streamed to a new object, hashed while it streams, as one `PutObject` or a
//! multipart upload that is aborted if it does not finish.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, MetadataDirective,
};
use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use sealpost_domain::{Sha256Hex, TenantId};

use crate::error::{BlobError, BlobErrorKind};
use crate::hashing::{self, PartSplitter};
use crate::reference::BlobRef;
use crate::s3_error::detail;
use crate::store::*;

impl BlobStore {
    /// Streams `body` to a new object `tenants/<tenant>/<uuid>.enc`, hashing it on the way.
    ///
    /// Up to [`MULTIPART_THRESHOLD`] bytes go in one `PutObject`, larger bodies in a multipart
    /// upload of 8 MiB parts; every request carries its SHA-256 checksum, which S3 verifies. The
    /// hex digest is also stored as the `sha256` user metadata (for a multipart object by copying
    /// it onto itself once the digest is known, up to 5 GiB). At most one part is buffered.
    ///
    /// A body larger than `max_size` is refused with [`BlobErrorKind::TooLarge`] as soon as it
    /// passes the limit, and nothing is left behind: an unfinished multipart upload is aborted,
    /// also when this future is dropped.
    pub async fn put_stream<S, E>(
        &self,
        tenant: &TenantId,
        mut body: S,
        max_size: u64,
    ) -> Result<StoredBlob, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin + Send,
        E: std::error::Error + Send + Sync + 'static,
    {
        let r = self.new_ref(tenant);
        let mut splitter = PartSplitter::new(PART_SIZE);
        let mut upload: Option<MultipartUpload> = None;

        loop {
            let chunk = match body.next().await {
                None => break,
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => {
                    abort(upload).await;
                    return Err(BlobError::other(format!(
                        "reading the upload body failed after {} bytes: {e}; nothing was stored, \
                         send the body again",
                        splitter.total()
                    ))
                    .with_source(e));
                }
            };
            if splitter.total() + chunk.len() as u64 > max_size {
                abort(upload).await;
                return Err(too_large(max_size));
            }
            splitter.push(&chunk);
            drop(chunk);
            while let Some(part) = splitter.take_full_part() {
                if upload.is_none() {
                    upload = Some(self.create_multipart(&r).await?);
                }
                if let Some(u) = upload.as_mut() {
                    if let Err(e) = u.upload_part(part).await {
                        abort(upload).await;
                        return Err(e);
                    }
                }
            }
        }

        let (rest, digest, size) = splitter.finish();
        let sha256 = hashing::to_hex(&digest);
        match upload {
            None => {
                self.client
                    .put_object()
                    .bucket(&r.bucket)
                    .key(&r.key)
                    .content_type("application/octet-stream")
                    .checksum_algorithm(ChecksumAlgorithm::Sha256)
                    .checksum_sha256(hashing::to_base64(&digest))
                    .metadata(META_SHA256, sha256.as_str())
                    .body(ByteStream::from(rest))
                    .send()
                    .await
                    .map_err(|e| self.sdk_error("uploading", &r.uri(), e))?;
            }
            Some(mut u) => {
                let done = async {
                    u.upload_part(rest).await?;
                    u.complete().await
                }
                .await;
                if let Err(e) = done {
                    abort(Some(u)).await;
                    return Err(e);
                }
                u.disarm();
                self.record_digest(&r, &sha256, size, u.version_id.take())
                    .await;
            }
        }
        tracing::debug!(reference = %r, size, sha256 = %sha256.as_str(), "stored payload");
        Ok(StoredBlob {
            reference: r.uri(),
            sha256,
            size,
        })
    }

    async fn create_multipart(&self, r: &BlobRef) -> Result<MultipartUpload, BlobError> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&r.bucket)
            .key(&r.key)
            .content_type("application/octet-stream")
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .send()
            .await
            .map_err(|e| self.sdk_error("starting a multipart upload", &r.uri(), e))?;
        let upload_id = out.upload_id.ok_or_else(|| {
            BlobError::other(format!(
                "{} started a multipart upload for {r} without an upload id; check the endpoint",
                self.target
            ))
        })?;
        Ok(MultipartUpload {
            store: self.clone(),
            r: r.clone(),
            upload_id,
            parts: Vec::new(),
            version_id: None,
            armed: true,
        })
    }

    /// Stores the digest of a completed multipart object as its `sha256` metadata: S3 metadata is
    /// fixed at creation, and the digest was not known then, so the object is copied onto itself
    /// with the metadata replaced (S3 also computes a full-object SHA-256 checksum for the copy).
    /// Best effort: without the metadata, [`BlobStore::verify`] hashes the object instead.
    ///
    /// In a versioned bucket the copy is a new version; the uploaded one is then deleted, so the
    /// ciphertext is not kept twice.
    async fn record_digest(
        &self,
        r: &BlobRef,
        sha256: &Sha256Hex,
        size: u64,
        uploaded_version: Option<String>,
    ) {
        if size > MAX_COPY_SIZE {
            return;
        }
        let copied = self
            .client
            .copy_object()
            .bucket(&r.bucket)
            .key(&r.key)
            .copy_source(format!("{}/{}", r.bucket, r.key))
            .metadata_directive(MetadataDirective::Replace)
            .metadata(META_SHA256, sha256.as_str())
            .content_type("application/octet-stream")
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .send()
            .await;
        let copy_version = match copied {
            Ok(out) => out.version_id,
            Err(e) => {
                let e = self.sdk_error("recording the digest of", &r.uri(), e);
                tracing::warn!(reference = %r, error = %e, "could not store the sha256 metadata of a multipart object; digest checks will hash it");
                return;
            }
        };
        if let (Some(old), Some(new)) = (uploaded_version, copy_version) {
            if old != new {
                if let Err(e) = self.delete_version(r, Some(old)).await {
                    tracing::warn!(reference = %r, error = %e, "could not delete the superseded version of a multipart object; it is deleted with the object");
                }
            }
        }
    }
}

pub(crate) fn too_large(max_size: u64) -> BlobError {
    BlobError::new(
        BlobErrorKind::TooLarge,
        format!(
            "the payload is larger than the limit of {max_size} bytes; nothing was stored. \
             Send a smaller payload"
        ),
    )
}

/// An unfinished multipart upload. Aborted when dropped while armed (e.g. when the request that
/// streams the body is cancelled), so no parts are left behind.
struct MultipartUpload {
    store: BlobStore,
    r: BlobRef,
    upload_id: String,
    parts: Vec<CompletedPart>,
    /// The version id S3 gave the completed object (versioned buckets only).
    version_id: Option<String>,
    armed: bool,
}

impl MultipartUpload {
    async fn upload_part(&mut self, part: Bytes) -> Result<(), BlobError> {
        let number = i32::try_from(self.parts.len() + 1).unwrap_or(i32::MAX);
        if number > MAX_PARTS {
            return Err(BlobError::new(
                BlobErrorKind::TooLarge,
                format!(
                    "the payload needs more than {MAX_PARTS} parts of {PART_SIZE} bytes; send a \
                     smaller payload"
                ),
            ));
        }
        let checksum = hashing::to_base64(&hashing::sha256(&part));
        let out = self
            .store
            .client
            .upload_part()
            .bucket(&self.r.bucket)
            .key(&self.r.key)
            .upload_id(&self.upload_id)
            .part_number(number)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .checksum_sha256(&checksum)
            .body(ByteStream::from(part))
            .send()
            .await
            .map_err(|e| {
                self.store
                    .sdk_error(&format!("uploading part {number} of"), &self.r.uri(), e)
            })?;
        self.parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag)
                .checksum_sha256(out.checksum_sha256.unwrap_or(checksum))
                .build(),
        );
        Ok(())
    }

    async fn complete(&mut self) -> Result<(), BlobError> {
        let out = self
            .store
            .client
            .complete_multipart_upload()
            .bucket(&self.r.bucket)
            .key(&self.r.key)
            .upload_id(&self.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(std::mem::take(&mut self.parts)))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| {
                self.store
                    .sdk_error("completing the multipart upload of", &self.r.uri(), e)
            })?;
        self.version_id = out.version_id;
        Ok(())
    }

    fn disarm(&mut self) {
        self.armed = false;
    }

    fn abort_request(
        &self,
    ) -> aws_sdk_s3::operation::abort_multipart_upload::builders::AbortMultipartUploadFluentBuilder
    {
        self.store
            .client
            .abort_multipart_upload()
            .bucket(&self.r.bucket)
            .key(&self.r.key)
            .upload_id(&self.upload_id)
    }
}

/// Aborts an unfinished upload now (best effort: a failure is logged, and the bucket's lifecycle
/// rule for incomplete uploads is the backstop).
async fn abort(upload: Option<MultipartUpload>) {
    let Some(mut u) = upload else { return };
    u.disarm();
    if let Err(e) = u.abort_request().send().await {
        let e = u
            .store
            .sdk_error("aborting the multipart upload of", &u.r.uri(), e);
        tracing::warn!(reference = %u.r, error = %e, "could not abort a multipart upload");
    }
}

impl Drop for MultipartUpload {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(reference = %self.r, "multipart upload dropped outside a runtime; not aborted");
            return;
        };
        let req = self.abort_request();
        let r = self.r.clone();
        rt.spawn(async move {
            if let Err(e) = req.send().await {
                tracing::warn!(reference = %r, error = %detail(&e), "could not abort a cancelled multipart upload");
            }
        });
    }
}
