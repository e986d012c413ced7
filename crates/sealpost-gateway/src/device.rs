//! Device links: what a recipient's device may do without the tenant's API key.
//!
//! - `GET /v1/d/{tenant}/{message_id}/{token}`: the message's payload, as a fresh presigned GET
//!   that expires no later than the message, with its digest and size;
//! - `POST /v1/d/{tenant}/{message_id}/{token}/decryption-failed`: the device could not open it.
//!   The report becomes a `decryption_failed` event (status unchanged) and counts in
//!   `sealpost_decryption_failures_total{tenant, reason}`.
//!
//! The token is the HMAC of tenant and message id under the platform's device link key
//! (`sealpost_keyformat::device_link`); delivery puts the link where the device gets it. A link
//! opens its own message and nothing else, and stops working when the message expires, ends
//! undelivered or is purged. Tokens and presigned URLs are bearer secrets: never logged.

use std::collections::HashMap;
use std::time::Duration;

use sealpost_domain::events::{DecryptFailure, MAX_REPORTED_KEY_ID};
use sealpost_domain::{aggregate_id, MessageCommand, MessageError, MessageId, Status, UnknownName};
use sealpost_eventstore::ExecuteError;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{ApiError, ErrorCode};
use crate::gateway::{not_found, store_error, Gateway};
use crate::tenants::Tenant;

/// The longest a presigned GET handed to a device lives (it is shorter when the message expires
/// sooner).
pub const DEVICE_URL_TTL: Duration = Duration::from_secs(300);

/// Largest report body accepted.
pub const MAX_REPORT_BYTES: usize = 1024;

/// `GET /v1/d/...`: where the sealed payload is, for a few minutes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicePayload {
    pub message_id: String,
    /// A presigned GET of the ciphertext. A bearer secret.
    pub payload_url: String,
    /// SHA-256 (hex) the fetched bytes must have.
    pub sha256: String,
    pub size: Option<u64>,
    /// When `payload_url` stops working.
    #[serde(with = "time::serde::rfc3339")]
    pub url_expires_at: OffsetDateTime,
    /// When the message (and its link) expires.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// `POST /v1/d/.../decryption-failed` body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Report {
    reason: String,
    #[serde(default)]
    key_id: Option<String>,
}

/// Its answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportReply {
    pub message_id: String,
    /// False when the same report (reason and key id) was recorded before, or the message holds
    /// the most reports it keeps.
    pub recorded: bool,
    pub decryption_failures: u32,
}

fn gone(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::Expired, message)
}

impl Gateway {
    /// The tenant and message a link names, when its token is right.
    fn check_link(
        &self,
        tenant: &str,
        message_id: &str,
        token: &str,
    ) -> Result<(&Tenant, MessageId), ApiError> {
        let Some(key) = self.device_link_key() else {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                "device links are not enabled on this gateway; set [delivery] device_link_key",
            ));
        };
        if !key.verify(tenant, message_id, token) {
            tracing::warn!("refused a device link whose token does not match");
            return Err(ApiError::new(
                ErrorCode::Unauthorized,
                "this link's token does not match its tenant and message; use the link exactly as it was delivered",
            ));
        }
        let tenant = self.tenant(tenant)?;
        let id = MessageId::new(message_id).map_err(|e| ApiError::invalid(e.to_string()))?;
        Ok((tenant, id))
    }

    /// `GET /v1/d/{tenant}/{message_id}/{token}`.
    pub async fn device_payload(
        &self,
        tenant: &str,
        message_id: &str,
        token: &str,
    ) -> Result<DevicePayload, ApiError> {
        let (tenant, id) = self.check_link(tenant, message_id, token)?;
        let row = self.status(tenant, &id).await?;
        let now = OffsetDateTime::now_utc();
        let (Some(reference), Some(sha256), Some(expires_at)) = (
            row.payload_ref.as_deref(),
            row.payload_sha256.as_deref(),
            row.expires_at,
        ) else {
            return Err(not_found());
        };
        if row.purged {
            return Err(gone("the message's payload was purged"));
        }
        if now >= expires_at {
            return Err(gone(format!(
                "this link expired with its message at {expires_at}"
            )));
        }
        if matches!(
            row.status,
            Status::Failed | Status::Expired | Status::Cancelled
        ) {
            return Err(gone(format!(
                "the message ended undelivered ({}); its payload is no longer served",
                row.status
            )));
        }
        let left = Duration::try_from(expires_at - now).unwrap_or(Duration::ZERO);
        let ttl = DEVICE_URL_TTL.min(left).max(Duration::from_secs(1));
        let blobs = self.blobs();
        let r = blobs.parse_ref(&tenant.id, reference).map_err(|e| {
            tracing::error!(error = %e, "a stored payload reference is invalid");
            ApiError::unavailable("the payload reference cannot be read; retry later")
        })?;
        let payload_url = blobs.presign_get(&r, ttl).await.map_err(|e| {
            tracing::warn!(error = %e, "cannot presign a payload for a device");
            ApiError::unavailable("object storage is unavailable; retry")
        })?;
        Ok(DevicePayload {
            message_id: id.as_str().to_owned(),
            payload_url,
            sha256: sha256.to_owned(),
            size: row.payload_size,
            url_expires_at: now + ttl,
            expires_at,
        })
    }

    /// `POST /v1/d/{tenant}/{message_id}/{token}/decryption-failed`.
    pub async fn report_decryption_failure(
        &self,
        tenant: &str,
        message_id: &str,
        token: &str,
        body: &[u8],
    ) -> Result<ReportReply, ApiError> {
        let (tenant, id) = self.check_link(tenant, message_id, token)?;
        const SHAPE: &str =
            "send {\"reason\": \"<reason>\", \"key_id\": \"<key id>\"} (key_id optional)";
        crate::send::require_object(SHAPE, body)?;
        let report: Report = serde_json::from_slice(body).map_err(|_| ApiError::invalid(SHAPE))?;
        // The refused value is not echoed back.
        let reason: DecryptFailure = report.reason.parse().map_err(|e: UnknownName| {
            ApiError::invalid(format!("reason must be one of: {}", e.expected.join(", ")))
        })?;
        if let Some(k) = &report.key_id {
            let ok = !k.is_empty()
                && k.len() <= MAX_REPORTED_KEY_ID
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
            if !ok {
                return Err(ApiError::invalid(format!(
                    "key_id must be 1 to {MAX_REPORTED_KEY_ID} of [A-Za-z0-9._:-]"
                )));
            }
        }
        let done = self
            .executor()
            .execute(
                &aggregate_id(&tenant.id, &id),
                MessageCommand::RecordDecryptionFailure {
                    reason,
                    key_id: report.key_id,
                    at: OffsetDateTime::now_utc(),
                },
                &HashMap::new(),
            )
            .await
            .map_err(|e| match e {
                ExecuteError::Rejected(MessageError::NotAccepted) => not_found(),
                ExecuteError::Rejected(MessageError::Purged) => {
                    gone("the message's payload was purged")
                }
                ExecuteError::Rejected(e) => ApiError::new(ErrorCode::InvalidState, e.to_string()),
                other => store_error(other),
            })?;
        let recorded = !done.events.is_empty();
        if recorded {
            tracing::info!(message_id = %id, reason = reason.as_str(), "a device could not open its payload");
            sealpost_telemetry::metrics()
                .decryption_failures
                .get_or_create(&sealpost_telemetry::DecryptionFailureLabels {
                    tenant: tenant.id.as_str().to_owned(),
                    reason: reason.as_str(),
                })
                .inc();
        }
        Ok(ReportReply {
            message_id: id.as_str().to_owned(),
            recorded,
            decryption_failures: u32::try_from(done.aggregate.decryption_failures.len())
                .unwrap_or(u32::MAX),
        })
    }
}
