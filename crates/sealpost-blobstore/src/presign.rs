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

use crate::error::BlobError;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{BlobStore, BlobStoreConfig};

    fn config(endpoint: Option<&str>, region: &str, path_style: bool) -> BlobStoreConfig {
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
    async fn both(cfg: &BlobStoreConfig, key: &str) -> (String, String) {
        let store = BlobStore::new(cfg).unwrap();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
        let ttl = Duration::from_secs(900);
        let sdk = store.presign_get_with_sdk(key, ttl, at).await.unwrap();
        let signer = GetSigner::new(
            Credentials::new(
                cfg.access_key_id.clone(),
                cfg.secret_access_key.clone(),
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
    async fn given_a_path_style_endpoint_when_presigning_then_the_url_is_the_sdks() {
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
    async fn given_aws_virtual_hosted_style_when_presigning_then_the_url_is_the_sdks() {
        let cfg = config(None, "eu-west-1", false);
        let (sdk, ours) = both(&cfg, "tenants/acme/x.enc").await;
        assert!(ours.starts_with("https://sealpost-payloads.s3.eu-west-1.amazonaws.com/"));
        assert_eq!(ours, sdk);
    }

    #[tokio::test]
    async fn given_a_key_with_reserved_characters_when_presigning_then_it_is_encoded_as_the_sdk_does(
    ) {
        let cfg = config(Some("http://127.0.0.1:9000/"), "us-east-1", true);
        let (sdk, ours) = both(&cfg, "tenants/acme/a b+c=d&e%f~g.enc").await;
        assert!(ours.contains("/a%20b%2Bc%3Dd%26e%25f~g.enc?"), "{ours}");
        assert_eq!(ours, sdk);
    }

    #[test]
    fn given_unreserved_bytes_and_slashes_when_encoding_a_key_then_they_stay() {
        assert_eq!(encode_key("tenants/acme/A-z_0.9~"), "tenants/acme/A-z_0.9~");
        assert_eq!(encode_key("é"), "%C3%A9");
    }
}
