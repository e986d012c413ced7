//! Presigned GET URLs signed in place with the SDK's own SigV4 signer (`aws-sigv4`).
//!
//! Every delivery attempt hands the carrier a fresh presigned URL. Through the SDK's operation
//! pipeline (`get_object().presigned(..)`) each one rebuilt runtime components, ran the
//! interceptors and evaluated the S3 endpoint rules; in `sealpost bench delivery` that was about
//! a tenth of the whole process's CPU. Here the bucket's base URL is resolved once, with the
//! SDK's endpoint resolver, and each URL is one SigV4 query signature. The URL is the same string
//! the SDK produces for the same instant; a test checks that for path-style and virtual-hosted
//! buckets.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sdk_s3::config::endpoint::{DefaultResolver, Params, ResolveEndpoint};
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest,
    SignatureLocation, SigningSettings, UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use futures::FutureExt as _;

use aws_sdk_s3::presigning::PresigningConfig;
use sealpost_domain::{Sha256Hex, TenantId};

use crate::error::BlobError;
use crate::hashing;
use crate::reference::BlobRef;
use crate::store::{BlobStore, PresignedPut, MAX_PRESIGN};

/// Signs GET URLs for the objects of one bucket.
#[derive(Clone)]
pub(crate) struct GetSigner {
    credentials: Credentials,
    region: String,
    bucket: String,
    /// The bucket's URL as the SDK's endpoint rules resolve it (`http://host:port/bucket` for
    /// path style, `https://bucket.s3.region.amazonaws.com` otherwise), without a trailing `/`.
    base: String,
}

impl GetSigner {
    /// `None` when the SDK's endpoint rules do not resolve the bucket at once to a plain URL;
    /// then presigning goes through the SDK.
    pub(crate) fn new(
        credentials: Credentials,
        region: &str,
        bucket: &str,
        endpoint: Option<&str>,
        force_path_style: bool,
    ) -> Option<GetSigner> {
        let params = Params::builder()
            .bucket(bucket)
            .region(region)
            .force_path_style(force_path_style)
            .use_fips(false)
            .use_dual_stack(false)
            .accelerate(false)
            .set_endpoint(endpoint.map(|e| e.trim_end_matches('/').to_owned()))
            .build()
            .ok()?;
        let resolved = DefaultResolver::new()
            .resolve_endpoint(&params)
            .now_or_never()?
            .ok()?;
        // Endpoints that ask for another signing name or region (S3 Express, access points)
        // are left to the SDK.
        let plain = resolved
            .properties()
            .get("authSchemes")
            .is_none_or(|schemes| {
                let text = format!("{schemes:?}");
                !text.contains("s3express") && !text.contains("sigv4a")
            });
        if !plain {
            return None;
        }
        Some(GetSigner {
            credentials,
            region: region.to_owned(),
            bucket: bucket.to_owned(),
            base: resolved.url().trim_end_matches('/').to_owned(),
        })
    }

    pub(crate) fn bucket(&self) -> &str {
        &self.bucket
    }

    /// A GET URL for `key`, valid from `now` for `expires_in`.
    pub(crate) fn presign(
        &self,
        key: &str,
        expires_in: Duration,
        now: SystemTime,
    ) -> Result<String, BlobError> {
        let fail = |e: &dyn std::fmt::Display| {
            BlobError::other(format!(
                "cannot presign a download of s3://{}/{key}: {e}",
                self.bucket
            ))
        };
        let url = format!("{}/{}?x-id=GetObject", self.base, encode_key(key));
        let identity = self.credentials.clone().into();
        let mut settings = SigningSettings::default();
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.payload_checksum_kind = PayloadChecksumKind::NoHeader;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        settings.signature_location = SignatureLocation::QueryParams;
        settings.expires_in = Some(expires_in);
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("s3")
            .time(now)
            .settings(settings)
            .build()
            .map_err(|e| fail(&e))?
            .into();
        let signable = SignableRequest::new(
            "GET",
            &url,
            std::iter::empty(),
            SignableBody::UnsignedPayload,
        )
        .map_err(|e| fail(&e))?;
        let (instructions, _signature) =
            sign(signable, &params).map_err(|e| fail(&e))?.into_parts();
        let mut request = http::Request::get(&url).body(()).map_err(|e| fail(&e))?;
        instructions.apply_to_request_http1x(&mut request);
        Ok(request.uri().to_string())
    }
}

/// An object key as a URL path: every byte but the unreserved ones and `/` percent-encoded.
fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Presigned PUTs (a client uploads directly) and GETs (a carrier fetches the ciphertext).
impl BlobStore {
    /// A presigned PUT for a new object in the tenant's prefix. With `sha256`, the upload must
    /// carry the matching `x-amz-checksum-sha256` header (listed in `headers`), so S3 refuses a
    /// body with another digest.
    pub async fn presign_put(
        &self,
        tenant: &TenantId,
        sha256: Option<&Sha256Hex>,
        expires_in: Duration,
    ) -> Result<PresignedPut, BlobError> {
        check_lifetime(expires_in)?;
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
        check_lifetime(expires_in)?;
        match &self.get_signer {
            Some(signer) if signer.bucket() == r.bucket => {
                signer.presign(&r.key, expires_in, std::time::SystemTime::now())
            }
            // Boxed: the SDK's future is kilobytes, and would otherwise be part of every caller's
            // future (a delivery job's), copied whenever that moves, for a path rarely taken.
            _ => {
                Box::pin(self.presign_get_through_sdk(r, expires_in, std::time::SystemTime::now()))
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
}

/// A presigned URL lives 1 s to 7 days ([`MAX_PRESIGN`]).
fn check_lifetime(expires_in: Duration) -> Result<(), BlobError> {
    if expires_in.is_zero() || expires_in > MAX_PRESIGN {
        return Err(BlobError::other(format!(
            "a presigned URL must expire after 1 s to 7 days, not {expires_in:?}; ask for a \
             shorter lifetime"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{BlobStore, BlobStoreConfig};

    pub(crate) fn config(
        endpoint: Option<&str>,
        region: &str,
        path_style: bool,
    ) -> BlobStoreConfig {
        BlobStoreConfig {
            endpoint: endpoint.map(str::to_owned),
            region: region.into(),
            bucket: "sealpost-payloads".into(),
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            force_path_style: path_style,
        }
    }

    /// The SDK's presigned URL and ours, for the same key, instant and lifetime.
    pub(crate) async fn both(cfg: &BlobStoreConfig, key: &str) -> (String, String) {
        let store = BlobStore::new(cfg).unwrap();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
        let ttl = Duration::from_secs(900);
        let sdk = store.presign_get_with_sdk(key, ttl, at).await.unwrap();
        let signer = GetSigner::new(
            Credentials::new(
                cfg.access_key_id.clone(),
                cfg.secret_access_key.expose().to_owned(),
                None,
                None,
                "test",
            ),
            &cfg.region,
            &cfg.bucket,
            cfg.endpoint.as_deref(),
            cfg.force_path_style,
        )
        .expect("the endpoint resolves to a plain URL");
        (sdk, signer.presign(key, ttl, at).unwrap())
    }

    #[tokio::test]
    pub(crate) async fn given_a_path_style_endpoint_when_presigning_then_the_url_is_the_sdks() {
        let cfg = config(Some("http://127.0.0.1:9000"), "us-east-1", true);
        let (sdk, ours) = both(
            &cfg,
            "tenants/acme/0b9e0c2e-3f4d-4c8e-9a51-1c2d3e4f5a6b.enc",
        )
        .await;
        assert!(ours.starts_with("http://127.0.0.1:9000/sealpost-payloads/tenants/acme/"));
        assert_eq!(ours, sdk);
    }

    #[tokio::test]
    pub(crate) async fn given_aws_virtual_hosted_style_when_presigning_then_the_url_is_the_sdks() {
        let cfg = config(None, "eu-west-1", false);
        let (sdk, ours) = both(&cfg, "tenants/acme/x.enc").await;
        assert!(ours.starts_with("https://sealpost-payloads.s3.eu-west-1.amazonaws.com/"));
        assert_eq!(ours, sdk);
    }

    #[tokio::test]
    pub(crate) async fn given_a_key_with_reserved_characters_when_presigning_then_it_is_encoded_as_the_sdk_does(
    ) {
        let cfg = config(Some("http://127.0.0.1:9000/"), "us-east-1", true);
        let (sdk, ours) = both(&cfg, "tenants/acme/a b+c=d&e%f~g.enc").await;
        assert!(ours.contains("/a%20b%2Bc%3Dd%26e%25f~g.enc?"), "{ours}");
        assert_eq!(ours, sdk);
    }

    #[test]
    pub(crate) fn given_unreserved_bytes_and_slashes_when_encoding_a_key_then_they_stay() {
        assert_eq!(encode_key("tenants/acme/A-z_0.9~"), "tenants/acme/A-z_0.9~");
        assert_eq!(encode_key("é"), "%C3%A9");
    }
}
