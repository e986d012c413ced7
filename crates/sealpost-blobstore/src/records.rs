//! Records that are not ciphertext: files Sealpost keeps for auditors (the key directory's signed
//! checkpoints and append-only proofs), under `records/`, outside every tenant's blob prefix, and
//! under Object Lock retention where the bucket has Object Lock enabled.

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::types::{ChecksumAlgorithm, ObjectLockMode};
use time::OffsetDateTime;

use crate::error::BlobError;
use crate::store::BlobStore;

/// The prefix of every record.
pub const RECORDS_PREFIX: &str = "records/";

impl BlobStore {
    /// Whether the bucket has Object Lock enabled. An endpoint that does not implement Object
    /// Lock (the embedded one) answers no.
    pub async fn object_lock_enabled(&self) -> Result<bool, BlobError> {
        match self
            .client()
            .get_object_lock_configuration()
            .bucket(self.bucket())
            .send()
            .await
        {
            Ok(out) => Ok(out
                .object_lock_configuration()
                .and_then(|c| c.object_lock_enabled())
                .is_some_and(|e| e.as_str() == "Enabled")),
            Err(e)
                if matches!(
                    e.code(),
                    Some(
                        "ObjectLockConfigurationNotFoundError"
                            | "NotImplemented"
                            | "InvalidRequest"
                            | "MethodNotAllowed"
                    )
                ) || e.raw_response().map(|r| r.status().as_u16()) == Some(501) =>
            {
                Ok(false)
            }
            Err(e) => {
                Err(self.sdk_error("reading the Object Lock configuration of", self.bucket(), e))
            }
        }
    }

    /// Stores a record at `records/<name>`. With `retain_until`, the object is locked in
    /// compliance mode until then (only on a bucket with Object Lock enabled: check
    /// [`BlobStore::object_lock_enabled`] first).
    pub async fn put_record(
        &self,
        name: &str,
        body: Vec<u8>,
        content_type: &str,
        retain_until: Option<OffsetDateTime>,
    ) -> Result<(), BlobError> {
        let key = format!("{RECORDS_PREFIX}{name}");
        let mut put = self
            .client()
            .put_object()
            .bucket(self.bucket())
            .key(&key)
            .content_type(content_type)
            .body(ByteStream::from(body));
        if let Some(until) = retain_until {
            // S3 takes a locked object only with a checksum of its body.
            put = put
                .checksum_algorithm(ChecksumAlgorithm::Sha256)
                .object_lock_mode(ObjectLockMode::Compliance)
                .object_lock_retain_until_date(DateTime::from_secs(until.unix_timestamp()));
        }
        put.send()
            .await
            .map_err(|e| self.sdk_error("storing the record", &key, e))?;
        Ok(())
    }

    /// A record's bytes.
    pub async fn get_record(&self, name: &str) -> Result<Vec<u8>, BlobError> {
        let key = format!("{RECORDS_PREFIX}{name}");
        let out = self
            .client()
            .get_object()
            .bucket(self.bucket())
            .key(&key)
            .send()
            .await
            .map_err(|e| self.sdk_error("reading the record", &key, e))?;
        let bytes = out.body.collect().await.map_err(|e| {
            BlobError::new(
                crate::error::BlobErrorKind::Unavailable,
                format!("reading the record {key}: {e}"),
            )
        })?;
        Ok(bytes.into_bytes().to_vec())
    }
}
