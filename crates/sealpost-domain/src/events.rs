//! The events of the `Message` aggregate, version 1.
//!
//! Each variant's payload struct is exactly the JSON body stored in JetStream and described by
//! `schemas/events/<event_type>.v1.json`. The event type is the snake_case variant name and is
//! also the last token of the event's subject. Payloads carry references, sizes and digests only:
//! never ciphertext or key material.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ids::{MessageId, Recipient, Sha256Hex, TenantId};

/// Current schema version of every event type. A change ships an upcaster (see [`crate::upcast`]).
pub const EVENT_VERSION: &str = "1";

/// Message types with their own retry windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageType {
    Transactional,
    Promotional,
}

/// How the tenant sealed the payload. Descriptors only: `key_id` names a key, it is not one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionMetadata {
    pub mls_version: String,
    pub cipher: String,
    pub key_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FallbackChannel {
    Sms,
    InApp,
}

/// Where to send a neutral notice if RCS cannot deliver. Never content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fallback {
    pub channel: FallbackChannel,
    pub notice_template: String,
}

/// How a carrier answered a submission, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// 5xx, timeouts, connection errors: retry with backoff.
    Transient,
    /// 429: retry no earlier than Retry-After.
    Throttled,
    /// Any other 4xx: retrying cannot help.
    Permanent,
    /// The recipient cannot receive RCS (RBM answers 404): fall back or fail.
    NotCapable,
}

/// Why the delivery attempts ended without a carrier ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    PermanentError,
    NotCapable,
    RetryWindowExhausted,
    MaxAttempts,
    /// Fallback asked for explicitly (operator or tenant policy).
    Requested,
}

/// What happened when expiry tried to take the message back from the carrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeOutcome {
    /// Never reached a carrier: nothing to revoke.
    NotSubmitted,
    Revoked,
    RevokeFailed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    pub tenant_id: TenantId,
    pub message_id: MessageId,
    pub idempotency_key: String,
    pub recipient: Recipient,
    pub payload_ref: String,
    pub payload_sha256: Sha256Hex,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_size: Option<u64>,
    pub encryption: EncryptionMetadata,
    pub message_type: MessageType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
    #[serde(with = "time::serde::rfc3339")]
    pub accepted_at: OffsetDateTime,
    /// The TTL deadline: after it the message is expired (and revoked at the carrier).
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// No retry is scheduled after this instant: min(accepted_at + window, expires_at).
    #[serde(with = "time::serde::rfc3339")]
    pub retry_until: OffsetDateTime,
}

/// A delivery job: the delivery consumer filters on this event type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    pub attempt: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarrierAcked {
    pub attempt: u32,
    pub carrier: String,
    pub carrier_message_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptFailed {
    pub attempt: u32,
    pub carrier: String,
    pub class: ErrorClass,
    /// The carrier's status or error code, e.g. `"503"` or `"timeout"`.
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryScheduled {
    /// The attempt that will run next.
    pub attempt: u32,
    pub delay_ms: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failed {
    pub reason: EndReason,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FallbackTriggered {
    pub channel: FallbackChannel,
    pub notice_template: String,
    pub reason: EndReason,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivered {
    pub receipt_id: String,
    /// True when no DELIVERED receipt came and a READ receipt implied delivery.
    #[serde(default)]
    pub implied: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Displayed {
    pub receipt_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expired {
    pub revoke: RevokeOutcome,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancelled {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub hold_id: String,
    pub reason: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    pub hold_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purged {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// Every lifecycle transition of a message. Externally tagged with the snake_case event type,
/// e.g. `{"accepted": {...}}`; the event store stores only the inner object.
// `accepted` is the large one and every message has exactly one; boxing it would cost an
// allocation per accept to save stack space in short-lived values.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageEvent {
    Accepted(Accepted),
    Queued(Queued),
    CarrierAcked(CarrierAcked),
    AttemptFailed(AttemptFailed),
    RetryScheduled(RetryScheduled),
    Failed(Failed),
    FallbackTriggered(FallbackTriggered),
    Delivered(Delivered),
    Displayed(Displayed),
    Expired(Expired),
    Cancelled(Cancelled),
    Held(Held),
    Released(Released),
    Purged(Purged),
}

/// Every event type, in lifecycle order. Subjects, schemas and the replay verifier use this list.
pub const EVENT_TYPES: [&str; 14] = [
    "accepted",
    "queued",
    "carrier_acked",
    "attempt_failed",
    "retry_scheduled",
    "failed",
    "fallback_triggered",
    "delivered",
    "displayed",
    "expired",
    "cancelled",
    "held",
    "released",
    "purged",
];

/// Why an event body could not be turned back into a [`MessageEvent`].
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown event type '{0}'")]
    UnknownType(String),
    #[error("event '{event_type}' version {version} has no upcaster to version {EVENT_VERSION}")]
    UnknownVersion { event_type: String, version: String },
    #[error("event '{event_type}' body does not match its schema: {source}")]
    Body {
        event_type: String,
        #[source]
        source: serde_json::Error,
    },
}

impl MessageEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::Accepted(_) => "accepted",
            Self::Queued(_) => "queued",
            Self::CarrierAcked(_) => "carrier_acked",
            Self::AttemptFailed(_) => "attempt_failed",
            Self::RetryScheduled(_) => "retry_scheduled",
            Self::Failed(_) => "failed",
            Self::FallbackTriggered(_) => "fallback_triggered",
            Self::Delivered(_) => "delivered",
            Self::Displayed(_) => "displayed",
            Self::Expired(_) => "expired",
            Self::Cancelled(_) => "cancelled",
            Self::Held(_) => "held",
            Self::Released(_) => "released",
            Self::Purged(_) => "purged",
        }
    }

    /// The stored body: the payload object without the enum tag.
    pub fn to_body(&self) -> serde_json::Result<Vec<u8>> {
        match self {
            Self::Accepted(e) => serde_json::to_vec(e),
            Self::Queued(e) => serde_json::to_vec(e),
            Self::CarrierAcked(e) => serde_json::to_vec(e),
            Self::AttemptFailed(e) => serde_json::to_vec(e),
            Self::RetryScheduled(e) => serde_json::to_vec(e),
            Self::Failed(e) => serde_json::to_vec(e),
            Self::FallbackTriggered(e) => serde_json::to_vec(e),
            Self::Delivered(e) => serde_json::to_vec(e),
            Self::Displayed(e) => serde_json::to_vec(e),
            Self::Expired(e) => serde_json::to_vec(e),
            Self::Cancelled(e) => serde_json::to_vec(e),
            Self::Held(e) => serde_json::to_vec(e),
            Self::Released(e) => serde_json::to_vec(e),
            Self::Purged(e) => serde_json::to_vec(e),
        }
    }

    /// Rebuilds an event from its type, schema version and stored body, upcasting old versions.
    pub fn from_body(event_type: &str, version: &str, body: &[u8]) -> Result<Self, DecodeError> {
        let bad = |source| DecodeError::Body {
            event_type: event_type.to_owned(),
            source,
        };
        let value: serde_json::Value = serde_json::from_slice(body).map_err(bad)?;
        let value = crate::upcast::to_current(event_type, version, value)?;
        let tagged =
            serde_json::Value::Object(serde_json::Map::from_iter([(event_type.to_owned(), value)]));
        serde_json::from_value(tagged).map_err(|e| {
            if EVENT_TYPES.contains(&event_type) {
                bad(e)
            } else {
                DecodeError::UnknownType(event_type.to_owned())
            }
        })
    }
}

impl cqrs_es::DomainEvent for MessageEvent {
    fn event_type(&self) -> String {
        MessageEvent::event_type(self).to_owned()
    }

    fn event_version(&self) -> String {
        EVENT_VERSION.to_owned()
    }
}
