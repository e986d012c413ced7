//! Object references: `s3://<bucket>/tenants/<tenant>/<name>`, and the checks that keep a tenant
//! inside its own prefix.

use std::fmt;

use sealpost_domain::TenantId;

use crate::error::{BlobError, BlobErrorKind};

/// S3 limits keys to 1024 bytes.
const MAX_KEY_LEN: usize = 1024;

/// A parsed reference to one object. Make one with [`crate::BlobStore::parse_ref`] (which checks
/// the tenant's prefix) or get one from an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRef {
    pub bucket: String,
    pub key: String,
}

impl BlobRef {
    /// `s3://<bucket>/<key>`, the form that travels in commands and events.
    pub fn uri(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }
}

impl fmt::Display for BlobRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// `tenants/<tenant>/`.
pub(crate) fn tenant_prefix(tenant: &TenantId) -> String {
    format!("tenants/{}/", tenant.as_str())
}

const FORM: &str = "s3://<bucket>/tenants/<tenant>/<name>";

fn invalid(reference: &str, why: &str) -> BlobError {
    BlobError::new(
        BlobErrorKind::InvalidReference,
        format!(
            "invalid payload reference '{}': {why}; expected {FORM}, as returned by \
             POST /v1/blobs or /v1/blobs/presign",
            printable(reference)
        ),
    )
}

/// The reference as it may appear in a message: at most 200 characters, control characters
/// escaped (the reference is caller input, not payload, but it should not forge log lines).
fn printable(s: &str) -> String {
    let mut out: String = s.chars().take(200).flat_map(char::escape_default).collect();
    if s.chars().count() > 200 {
        out.push('…');
    }
    out
}

/// A name segment: `[A-Za-z0-9._-]+`, and not `.` or `..`.
fn segment_ok(seg: &str) -> bool {
    !seg.is_empty()
        && seg != "."
        && seg != ".."
        && seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Parses `reference` and checks that it names an object in `bucket` under the tenant's prefix.
///
/// The name after the prefix is one or more `/`-separated segments of `[A-Za-z0-9._-]`, none of
/// them empty, `.` or `..`, so a reference can neither escape the prefix on endpoints that
/// normalise paths nor smuggle a query, fragment or percent-escape into the key.
pub(crate) fn parse_ref(
    bucket: &str,
    tenant: &TenantId,
    reference: &str,
) -> Result<BlobRef, BlobError> {
    let rest = reference
        .strip_prefix("s3://")
        .ok_or_else(|| invalid(reference, "it must start with s3://"))?;
    let (ref_bucket, key) = rest
        .split_once('/')
        .ok_or_else(|| invalid(reference, "it has no object key after the bucket"))?;
    if ref_bucket.is_empty() {
        return Err(invalid(reference, "the bucket is empty"));
    }
    if ref_bucket != bucket {
        return Err(BlobError::new(
            BlobErrorKind::OutsidePrefix,
            format!(
                "payload reference '{}' points to bucket '{}', but payloads are stored in bucket \
                 '{bucket}'; upload the payload through POST /v1/blobs or /v1/blobs/presign and \
                 use the reference it returns",
                printable(reference),
                printable(ref_bucket),
            ),
        ));
    }
    let prefix = tenant_prefix(tenant);
    let Some(name) = key.strip_prefix(&prefix) else {
        return Err(BlobError::new(
            BlobErrorKind::OutsidePrefix,
            format!(
                "payload reference '{}' is outside the prefix of tenant '{tenant}' \
                 (s3://{bucket}/{prefix}); a tenant may only refer to its own objects",
                printable(reference),
            ),
        ));
    };
    if name.is_empty() {
        return Err(invalid(
            reference,
            "the object name after the prefix is empty",
        ));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(invalid(
            reference,
            "the object key is longer than 1024 bytes",
        ));
    }
    if !name.split('/').all(segment_ok) {
        return Err(invalid(
            reference,
            "the object name may only hold '/'-separated segments of A-Z, a-z, 0-9, '.', '_' \
             and '-', none of them empty, '.' or '..'",
        ));
    }
    Ok(BlobRef {
        bucket: bucket.to_owned(),
        key: key.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acme() -> TenantId {
        TenantId::new("acme-corp").unwrap()
    }

    fn kind(r: &str) -> BlobErrorKind {
        parse_ref("payloads", &acme(), r).unwrap_err().kind()
    }

    #[test]
    fn accepts_references_inside_the_prefix() {
        let r = parse_ref(
            "payloads",
            &acme(),
            "s3://payloads/tenants/acme-corp/abc123.enc",
        )
        .unwrap();
        assert_eq!(r.bucket, "payloads");
        assert_eq!(r.key, "tenants/acme-corp/abc123.enc");
        assert_eq!(r.uri(), "s3://payloads/tenants/acme-corp/abc123.enc");
        assert_eq!(r.to_string(), r.uri());
        let nested = parse_ref(
            "payloads",
            &acme(),
            "s3://payloads/tenants/acme-corp/2024/x_1.enc",
        );
        assert_eq!(nested.unwrap().key, "tenants/acme-corp/2024/x_1.enc");
        assert_eq!(tenant_prefix(&acme()), "tenants/acme-corp/");
    }

    #[test]
    fn refuses_other_tenants_and_buckets() {
        use BlobErrorKind::OutsidePrefix;
        assert_eq!(kind("s3://payloads/tenants/other/abc.enc"), OutsidePrefix);
        // A tenant whose id starts with ours is still another tenant.
        assert_eq!(
            kind("s3://payloads/tenants/acme-corp2/abc.enc"),
            OutsidePrefix
        );
        assert_eq!(
            kind("s3://payloads/tenants/acme-corpabc.enc"),
            OutsidePrefix
        );
        assert_eq!(kind("s3://payloads/abc.enc"), OutsidePrefix);
        assert_eq!(
            kind("s3://payloads/Tenants/acme-corp/abc.enc"),
            OutsidePrefix
        );
        assert_eq!(
            kind("s3://elsewhere/tenants/acme-corp/abc.enc"),
            OutsidePrefix
        );
    }

    #[test]
    fn refuses_traversal_empty_names_and_other_schemes() {
        use BlobErrorKind::InvalidReference;
        for bad in [
            "s3://payloads/tenants/acme-corp/../other/abc.enc",
            "s3://payloads/tenants/acme-corp/..",
            "s3://payloads/tenants/acme-corp/./abc.enc",
            "s3://payloads/tenants/acme-corp/",
            "s3://payloads/tenants/acme-corp//abc.enc",
            "s3://payloads/tenants/acme-corp/abc/",
            "s3://payloads/tenants/acme-corp/a%2F..%2Fb",
            "s3://payloads/tenants/acme-corp/abc.enc?versionId=1",
            "s3://payloads/tenants/acme-corp/abc.enc#x",
            "s3://payloads/tenants/acme-corp/a b",
            "s3://payloads/tenants/acme-corp/a\\b",
            "s3://payloads/tenants/acme-corp/a\nb",
            "s3:///tenants/acme-corp/abc.enc",
            "s3://payloads",
            "https://payloads/tenants/acme-corp/abc.enc",
            "S3://payloads/tenants/acme-corp/abc.enc",
            "payloads/tenants/acme-corp/abc.enc",
            "",
        ] {
            assert_eq!(kind(bad), InvalidReference, "{bad:?}");
        }
        let long = format!("s3://payloads/tenants/acme-corp/{}", "a".repeat(1100));
        assert_eq!(kind(&long), InvalidReference);
    }

    #[test]
    fn messages_explain_and_escape() {
        let e = parse_ref("payloads", &acme(), "s3://payloads/tenants/acme-corp/a\nb").unwrap_err();
        assert!(!e.to_string().contains('\n'), "{e}");
        assert!(
            e.to_string()
                .contains("expected s3://<bucket>/tenants/<tenant>/<name>"),
            "{e}"
        );
        let e = parse_ref("payloads", &acme(), "s3://payloads/tenants/other/x").unwrap_err();
        assert!(
            e.to_string().contains("prefix of tenant 'acme-corp'"),
            "{e}"
        );
    }
}
