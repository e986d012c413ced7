//! [`BlobStore`]: the S3 client and every operation Sealpost performs on payload objects.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{
    BehaviorVersion, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketLocationConstraint, ChecksumAlgorithm, ChecksumMode, CompletedMultipartUpload,
    CompletedPart, CreateBucketConfiguration, MetadataDirective, ObjectLockLegalHold,
    ObjectLockLegalHoldStatus,
};
use aws_smithy_http_client::tls;
use aws_smithy_types::timeout::TimeoutConfig;
use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use sealpost_domain::{Sha256Hex, TenantId};
use serde::{Deserialize, Serialize};

use crate::error::{BlobError, BlobErrorKind};
use crate::hashing::{self, PartSplitter, StreamingDigest};
use crate::reference::{self, BlobRef};

/// Bodies up to this size are stored with one `PutObject`; larger ones as a multipart upload of
/// parts of this size (the last part shorter).
pub const MULTIPART_THRESHOLD: usize = 8 * 1024 * 1024;

/// The size of a multipart part.
const PART_SIZE: usize = MULTIPART_THRESHOLD;

/// S3 allows at most 10,000 parts per upload (about 78 GiB at 8 MiB each).
const MAX_PARTS: i32 = 10_000;

/// `CopyObject` copies at most 5 GiB; larger multipart objects keep no `sha256` metadata.
const MAX_COPY_SIZE: u64 = 5 * 1024 * 1024 * 1024;

/// Presigned URLs may live at most 7 days (a SigV4 limit).
const MAX_PRESIGN: Duration = Duration::from_secs(7 * 24 * 3600);

/// The user metadata key holding the hex SHA-256 of the object (`x-amz-meta-sha256`).
const META_SHA256: &str = "sha256";

/// Where the payload objects live and how to reach them.
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BlobStoreConfig {
    /// The S3 endpoint URL (`http://127.0.0.1:9000`); `None` for AWS S3 in `region`.
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Path-style addressing (`<endpoint>/<bucket>/<key>`), as most non-AWS endpoints need.
    pub force_path_style: bool,
}

/// Prints everything but the secret key.
impl fmt::Debug for BlobStoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobStoreConfig")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("force_path_style", &self.force_path_style)
            .finish()
    }
}

/// What an upload stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredBlob {
    /// `s3://<bucket>/tenants/<tenant>/<uuid>.enc`
    pub reference: String,
    pub sha256: Sha256Hex,
    pub size: u64,
}

/// A presigned PUT for a new object: send `method` to `url` with exactly `headers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PresignedPut {
    /// The reference the object will have once uploaded.
    pub reference: String,
    pub url: String,
    pub method: &'static str,
    /// Headers the upload must carry (they are part of the signature).
    pub headers: BTreeMap<String, String>,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: time::OffsetDateTime,
}

/// What a HEAD tells about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub size: u64,
    /// The object's SHA-256, when S3 stored it as the object's checksum or it is in the `sha256`
    /// metadata this crate writes; `None` when unknown (e.g. a presigned upload without digest).
    pub sha256: Option<Sha256Hex>,
}

/// The S3 client for payload objects. Cheap to clone.
#[derive(Clone)]
pub struct BlobStore {
    client: aws_sdk_s3::Client,
    bucket: String,
    /// Presigns GETs of `bucket` without the SDK's operation pipeline (see `presign.rs`).
    get_signer: Option<crate::presign::GetSigner>,
    /// For messages: the endpoint, or `AWS S3 (<region>)`.
    target: String,
}

impl fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobStore")
            .field("bucket", &self.bucket)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

fn config_error(message: String) -> BlobError {
    BlobError::other(format!("invalid blob store configuration: {message}"))
}

/// Bucket names as S3 accepts them: 3 to 63 of `a-z0-9.-`, starting and ending with a letter or
/// digit.
fn bucket_name_ok(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && b.starts_with(|c: char| c.is_ascii_alphanumeric())
        && b.ends_with(|c: char| c.is_ascii_alphanumeric())
}

impl BlobStore {
    /// Builds the client. Checks the configuration but does not connect: see
    /// [`BlobStore::ensure_bucket`].
    pub fn new(cfg: &BlobStoreConfig) -> Result<Self, BlobError> {
        if !bucket_name_ok(&cfg.bucket) {
            return Err(config_error(format!(
                "bucket '{}' is not a valid S3 bucket name (3 to 63 characters of a-z, 0-9, '.' \
                 and '-', starting and ending with a letter or digit)",
                cfg.bucket
            )));
        }
        if cfg.region.trim().is_empty() {
            return Err(config_error(
                "region is empty; set it to the bucket's region (any value, e.g. us-east-1, for \
                 a non-AWS endpoint)"
                    .into(),
            ));
        }
        if cfg.access_key_id.is_empty() || cfg.secret_access_key.is_empty() {
            return Err(config_error(
                "access_key_id and secret_access_key must both be set".into(),
            ));
        }
        if let Some(ep) = &cfg.endpoint {
            if !(ep.starts_with("http://") || ep.starts_with("https://")) {
                return Err(config_error(format!(
                    "endpoint '{ep}' must be an http:// or https:// URL"
                )));
            }
        }

        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let credentials = aws_credential_types::Credentials::new(
            cfg.access_key_id.clone(),
            cfg.secret_access_key.clone(),
            None,
            None,
            "sealpost-config",
        );
        let get_signer = crate::presign::GetSigner::new(
            credentials.clone(),
            &cfg.region,
            &cfg.bucket,
            cfg.endpoint.as_deref(),
            cfg.force_path_style,
        );
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(cfg.region.clone()))
            .credentials_provider(credentials)
            .force_path_style(cfg.force_path_style)
            .http_client(http_client)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .build(),
            )
            // Checksums are chosen explicitly below (SHA-256), not CRC32 added by default;
            // responses are hashed by this crate where it matters.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(ep) = &cfg.endpoint {
            builder = builder.endpoint_url(ep.trim_end_matches('/'));
        }
        let target = match &cfg.endpoint {
            Some(ep) => format!("S3 at {ep}"),
            None => format!("AWS S3 ({})", cfg.region),
        };
        Ok(Self {
            client: aws_sdk_s3::Client::from_conf(builder.build()),
            bucket: cfg.bucket.clone(),
            get_signer,
            target,
        })
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The underlying client, for setup that this crate does not cover (tests create Object Lock
    /// buckets with it).
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    /// Creates the bucket if it does not exist. Idempotent, and safe when several processes race.
    pub async fn ensure_bucket(&self) -> Result<(), BlobError> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => return Ok(()),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(self.sdk_error("checking bucket", &self.bucket, e)),
        }
        let mut create = self.client.create_bucket().bucket(&self.bucket);
        let region = self.client.config().region().map(|r| r.as_ref().to_owned());
        if let Some(region) = region.filter(|r| r != "us-east-1") {
            create = create.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(region.as_str()))
                    .build(),
            );
        }
        match create.send().await {
            Ok(_) => {
                tracing::info!(bucket = %self.bucket, "created the payload bucket");
                Ok(())
            }
            Err(e) if e.code() == Some("BucketAlreadyOwnedByYou") => Ok(()),
            Err(e) if e.code() == Some("BucketAlreadyExists") => Err(BlobError::other(format!(
                "bucket '{}' already exists and belongs to another account; choose another \
                 bucket name",
                self.bucket
            ))),
            Err(e) => Err(self.sdk_error("creating bucket", &self.bucket, e)),
        }
    }

    /// `tenants/<tenant>/`: the only prefix a tenant's references may point into.
    pub fn tenant_prefix(tenant: &TenantId) -> String {
        reference::tenant_prefix(tenant)
    }

    /// Parses `s3://<bucket>/tenants/<tenant>/<name>`, refusing another bucket or another
    /// tenant's prefix ([`BlobErrorKind::OutsidePrefix`]) and malformed references, `.`/`..`
    /// segments and empty names ([`BlobErrorKind::InvalidReference`]).
    pub fn parse_ref(&self, tenant: &TenantId, reference: &str) -> Result<BlobRef, BlobError> {
        reference::parse_ref(&self.bucket, tenant, reference)
    }

    fn new_ref(&self, tenant: &TenantId) -> BlobRef {
        BlobRef {
            bucket: self.bucket.clone(),
            key: format!(
                "{}{}.enc",
                reference::tenant_prefix(tenant),
                uuid::Uuid::new_v4()
            ),
        }
    }

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
                    )));
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

    /// A presigned PUT for a new object in the tenant's prefix. With `sha256`, the upload must
    /// carry the matching `x-amz-checksum-sha256` header (listed in `headers`), so S3 refuses a
    /// body with another digest.
    pub async fn presign_put(
        &self,
        tenant: &TenantId,
        sha256: Option<&Sha256Hex>,
        expires_in: Duration,
    ) -> Result<PresignedPut, BlobError> {
        if expires_in.is_zero() || expires_in > MAX_PRESIGN {
            return Err(BlobError::other(format!(
                "a presigned URL must expire after 1 s to 7 days, not {expires_in:?}; ask for a \
                 shorter lifetime"
            )));
        }
        let r = self.new_ref(tenant);
        // Taken before signing, so it is never later than the URL's real expiry.
        let now = time::OffsetDateTime::now_utc();
        let presign = PresigningConfig::expires_in(expires_in)
            .map_err(|e| BlobError::other(format!("cannot presign for {expires_in:?}: {e}")))?;
        let mut req = self.client.put_object().bucket(&r.bucket).key(&r.key);
        if let Some(d) = sha256 {
            req = req.checksum_sha256(hashing::to_base64(&hashing::from_hex(d)));
        }
        let presigned = req
            .presigned(presign)
            .await
            .map_err(|e| self.sdk_error("presigning an upload to", &r.uri(), e))?;
        let headers = presigned
            .headers()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
            .collect();
        let now = now.replace_nanosecond(0).unwrap_or(now);
        let expires_at = now + time::Duration::try_from(expires_in).unwrap_or(time::Duration::ZERO);
        Ok(PresignedPut {
            reference: r.uri(),
            url: presigned.uri().to_owned(),
            method: "PUT",
            headers,
            expires_at,
        })
    }

    /// A presigned GET of an existing object, for a carrier that fetches the ciphertext itself
    /// (RBM's `fileUrl`). The URL is a bearer secret: never log it.
    pub async fn presign_get(
        &self,
        r: &BlobRef,
        expires_in: Duration,
    ) -> Result<String, BlobError> {
        if expires_in.is_zero() || expires_in > MAX_PRESIGN {
            return Err(BlobError::other(format!(
                "a presigned URL must expire after 1 s to 7 days, not {expires_in:?}; ask for a \
                 shorter lifetime"
            )));
        }
        match &self.get_signer {
            Some(signer) if signer.bucket() == r.bucket => {
                signer.presign(&r.key, expires_in, std::time::SystemTime::now())
            }
            _ => {
                self.presign_get_through_sdk(r, expires_in, std::time::SystemTime::now())
                    .await
            }
        }
    }

    /// [`BlobStore::presign_get`] through the SDK's operation pipeline, valid from `start`.
    async fn presign_get_through_sdk(
        &self,
        r: &BlobRef,
        expires_in: Duration,
        start: std::time::SystemTime,
    ) -> Result<String, BlobError> {
        let presign = PresigningConfig::builder()
            .expires_in(expires_in)
            .start_time(start)
            .build()
            .map_err(|e| BlobError::other(format!("cannot presign for {expires_in:?}: {e}")))?;
        let presigned = self
            .client
            .get_object()
            .bucket(&r.bucket)
            .key(&r.key)
            .presigned(presign)
            .await
            .map_err(|e| self.sdk_error("presigning a download of", &r.uri(), e))?;
        Ok(presigned.uri().to_owned())
    }

    /// The SDK's presigned GET of `key` in this store's bucket, for comparing with ours.
    #[cfg(test)]
    pub(crate) async fn presign_get_with_sdk(
        &self,
        key: &str,
        expires_in: Duration,
        start: std::time::SystemTime,
    ) -> Result<String, BlobError> {
        let r = BlobRef {
            bucket: self.bucket.clone(),
            key: key.to_owned(),
        };
        self.presign_get_through_sdk(&r, expires_in, start).await
    }

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

    async fn delete_version(&self, r: &BlobRef, version: Option<String>) -> Result<(), BlobError> {
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

    /// Maps an SDK error to a [`BlobError`] whose message names the operation, the object and
    /// what to do. `what` is a reference or bucket name, never content.
    fn sdk_error<E>(&self, op: &str, what: &str, e: SdkError<E, HttpResponse>) -> BlobError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let target = &self.target;
        match &e {
            SdkError::TimeoutError(_) => {
                return BlobError::new(
                    BlobErrorKind::Unavailable,
                    format!("{op} {what}: {target} timed out; check that it is up, then retry"),
                );
            }
            SdkError::DispatchFailure(_) => {
                return BlobError::new(
                    BlobErrorKind::Unavailable,
                    format!(
                        "{op} {what}: cannot reach {target} ({}); check that it is up and \
                         reachable, then retry",
                        detail(&e)
                    ),
                );
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
        BlobError::new(kind, format!("{op} {what} failed: {hint} ({})", detail(&e)))
    }
}

/// What S3 answered, without the response body: status, error code and message; or the
/// connection error chain when there was no answer.
fn detail<E>(e: &SdkError<E, HttpResponse>) -> String
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
fn error_chain(e: &dyn std::error::Error) -> String {
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

fn is_not_found<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> bool {
    matches!(e.code(), Some("NoSuchKey" | "NotFound"))
        || (matches!(e, SdkError::ServiceError(_))
            && e.raw_response().map(|r| r.status().as_u16()) == Some(404)
            && e.code() != Some("NoSuchBucket"))
}

fn not_found(r: &BlobRef) -> BlobError {
    BlobError::new(
        BlobErrorKind::NotFound,
        format!(
            "payload {r} does not exist; upload the ciphertext first (POST /v1/blobs or a \
             presigned PUT) and use the reference it returned"
        ),
    )
}

fn too_large(max_size: u64) -> BlobError {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BlobStoreConfig {
        BlobStoreConfig {
            endpoint: Some("http://127.0.0.1:9".into()),
            region: "us-east-1".into(),
            bucket: "payloads".into(),
            access_key_id: "AKID".into(),
            secret_access_key: "top-secret".into(),
            force_path_style: true,
        }
    }

    /// The gateway runs these futures in spawned tasks (axum handlers), so they must be `Send`.
    #[allow(dead_code)]
    fn futures_are_send(store: &BlobStore, t: &TenantId, r: &BlobRef) {
        fn send<T: Send>(_: &T) {}
        let body = futures::stream::iter(Vec::<Result<Bytes, std::io::Error>>::new());
        send(&store.put_stream(t, body, 1));
        send(&store.verify(r, None));
        send(&store.delete(r));
        send(&store.presign_put(t, None, Duration::from_secs(1)));
        send(&store.set_legal_hold(r, true));
        send(&store.ensure_bucket());
    }

    #[test]
    fn config_is_checked_and_debug_hides_the_secret() {
        assert!(BlobStore::new(&cfg()).is_ok());
        assert!(!format!("{:?}", cfg()).contains("top-secret"));
        let store = BlobStore::new(&cfg()).unwrap();
        assert!(!format!("{store:?}").contains("top-secret"));
        for bad in [
            BlobStoreConfig {
                bucket: "Bad_Bucket".into(),
                ..cfg()
            },
            BlobStoreConfig {
                bucket: "ab".into(),
                ..cfg()
            },
            BlobStoreConfig {
                region: " ".into(),
                ..cfg()
            },
            BlobStoreConfig {
                secret_access_key: String::new(),
                ..cfg()
            },
            BlobStoreConfig {
                endpoint: Some("127.0.0.1:9000".into()),
                ..cfg()
            },
        ] {
            let e = BlobStore::new(&bad).unwrap_err();
            assert_eq!(e.kind(), BlobErrorKind::Other);
            assert!(
                e.to_string()
                    .starts_with("invalid blob store configuration"),
                "{e}"
            );
        }
    }

    #[test]
    fn config_deserializes_strictly() {
        let json = r#"{"endpoint":null,"region":"eu-west-1","bucket":"payloads",
            "access_key_id":"a","secret_access_key":"b","force_path_style":false}"#;
        let c: BlobStoreConfig = serde_json::from_str(json).unwrap();
        assert_eq!(c.region, "eu-west-1");
        let extra = json.replace("\"force_path_style\"", "\"typo\":1,\"force_path_style\"");
        assert!(serde_json::from_str::<BlobStoreConfig>(&extra).is_err());
    }
}
