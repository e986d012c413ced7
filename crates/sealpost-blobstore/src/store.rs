//! [`BlobStore`]: the S3 client, its configuration and the types its operations answer with. The
//! operations live beside it by job: [`crate::upload`], [`crate::objects`], [`crate::presign`];
//! S3 errors are mapped in [`crate::s3_error`].

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use aws_sdk_s3::config::{
    BehaviorVersion, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
use aws_smithy_http_client::tls;
use aws_smithy_types::timeout::TimeoutConfig;
use sealpost_domain::{Secret, Sha256Hex, TenantId};
use serde::{Deserialize, Serialize};

use crate::error::BlobError;
use crate::objects::is_not_found;
use crate::reference::{self, BlobRef};

/// Bodies up to this size are stored with one `PutObject`; larger ones as a multipart upload of
/// parts of this size (the last part shorter).
pub const MULTIPART_THRESHOLD: usize = 8 * 1024 * 1024;

/// The size of a multipart part.
pub(crate) const PART_SIZE: usize = MULTIPART_THRESHOLD;

/// S3 allows at most 10,000 parts per upload (about 78 GiB at 8 MiB each).
pub(crate) const MAX_PARTS: i32 = 10_000;

/// `CopyObject` copies at most 5 GiB; larger multipart objects keep no `sha256` metadata.
pub(crate) const MAX_COPY_SIZE: u64 = 5 * 1024 * 1024 * 1024;

/// Presigned URLs may live at most 7 days (a SigV4 limit).
pub(crate) const MAX_PRESIGN: Duration = Duration::from_secs(7 * 24 * 3600);

/// The user metadata key holding the hex SHA-256 of the object (`x-amz-meta-sha256`).
pub(crate) const META_SHA256: &str = "sha256";

/// Where the payload objects live and how to reach them.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BlobStoreConfig {
    /// The S3 endpoint URL (`http://127.0.0.1:9000`); `None` for AWS S3 in `region`.
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: Secret,
    /// Path-style addressing (`<endpoint>/<bucket>/<key>`), as most non-AWS endpoints need.
    pub force_path_style: bool,
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
    pub(crate) client: aws_sdk_s3::Client,
    pub(crate) bucket: String,
    /// Presigns GETs of `bucket` without the SDK's operation pipeline (see `presign.rs`).
    pub(crate) get_signer: Option<crate::presign::GetSigner>,
    /// For messages: the endpoint, or `AWS S3 (<region>)`.
    pub(crate) target: String,
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
            cfg.secret_access_key.expose().to_owned(),
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
            // Another process of ours may have created it since the check (some S3 servers
            // answer that with BucketAlreadyExists too): ours if we can read it.
            Err(e) if e.code() == Some("BucketAlreadyExists") => {
                match self.client.head_bucket().bucket(&self.bucket).send().await {
                    Ok(_) => Ok(()),
                    Err(_) => Err(BlobError::other(format!(
                        "bucket '{}' already exists and belongs to another account; choose \
                         another bucket name",
                        self.bucket
                    ))),
                }
            }
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

    pub(crate) fn new_ref(&self, tenant: &TenantId) -> BlobRef {
        BlobRef {
            bucket: self.bucket.clone(),
            key: format!(
                "{}{}.enc",
                reference::tenant_prefix(tenant),
                uuid::Uuid::new_v4()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::error::BlobErrorKind;

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
                secret_access_key: Secret::default(),
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
