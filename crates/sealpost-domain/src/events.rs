//! The events of the `Message` aggregate.
//!
//! Each variant's payload struct is exactly the JSON body stored in JetStream and described by
//! `schemas/events/<event_type>.v<N>.json`, where N is [`EventType::version`]. The event type is
//! the last token of the event's subject. Payloads carry references, sizes and digests only:
//! never ciphertext or key material.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ids::{MessageId, Recipient, Sha256Hex, TenantId};

wire_enum! {
    /// The type of an event: the last token of its subject and the name of its schema.
    pub enum EventType: "event type" {
        Accepted => "accepted",
        Queued => "queued",
        CarrierAcked => "carrier_acked",
        AttemptFailed => "attempt_failed",
        RetryScheduled => "retry_scheduled",
        Failed => "failed",
        FallbackTriggered => "fallback_triggered",
        Delivered => "delivered",
        Displayed => "displayed",
        Expired => "expired",
        Cancelled => "cancelled",
        Held => "held",
        Released => "released",
        Purged => "purged",
        DecryptionFailed => "decryption_failed",
    }
}

impl EventType {
    /// The schema version this code writes (the `Sealpost-Event-Version` header). Older versions
    /// are brought up to it by [`crate::upcast`] on load.
    pub const fn version(self) -> u32 {
        match self {
            // v2 adds `request_sha256`, the digest of the whole send request (idempotency).
            EventType::Accepted => 2,
            // v2 adds the reason `expired` and the expiry's `revoke` outcome.
            EventType::FallbackTriggered => 2,
            _ => 1,
        }
    }

    /// Every schema version a stored event of this type may carry, oldest first.
    pub fn versions(self) -> std::ops::RangeInclusive<u32> {
        let oldest = match self {
            // v0 is the pre-release shape with `ttl_seconds` instead of fixed deadlines.
            EventType::Accepted => 0,
            _ => 1,
        };
        oldest..=self.version()
    }
}

wire_enum! {
    /// Message types with their own retry windows.
    pub enum MessageType: "message type" {
        Transactional => "transactional",
        Promotional => "promotional",
    }
}

/// How the tenant sealed the payload. Descriptors only: `key_id` names a key, it is not one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionMetadata {
    pub mls_version: String,
    pub cipher: String,
    pub key_id: String,
}

wire_enum! {
    /// Why a recipient's device could not open a payload (the SDK's `OpenError` codes,
    /// `docs/envelope.md`).
    pub enum DecryptFailure: "decryption failure" {
        /// Not an envelope or MLS payload this format describes.
        Malformed => "malformed",
        /// A format version the device does not know.
        UnknownVersion => "unknown_version",
        /// Sealed under another tenant, message or recipient.
        WrongBinding => "wrong_binding",
        /// Sealed to no key the device holds.
        WrongKey => "wrong_key",
        /// The authentication tag did not verify.
        Tampered => "tampered",
        /// The fetched bytes do not have the message's SHA-256.
        DigestMismatch => "digest_mismatch",
    }
}

/// The longest `key_id` a `decryption_failed` report may name.
pub const MAX_REPORTED_KEY_ID: usize = 128;

wire_enum! {
    /// Where a fallback notice goes.
    pub enum FallbackChannel: "fallback channel" {
        Sms => "sms",
        InApp => "in_app",
    }
}

/// Where to send a neutral notice if RCS cannot deliver. Never content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fallback {
    pub channel: FallbackChannel,
    pub notice_template: String,
}

wire_enum! {
    /// How a carrier answered a submission, as far as retrying is concerned.
    pub enum ErrorClass: "error class" {
        /// 5xx, timeouts, connection errors: retry with backoff.
        Transient => "transient",
        /// 429: retry no earlier than Retry-After.
        Throttled => "throttled",
        /// Any other 4xx: retrying cannot help.
        Permanent => "permanent",
        /// The recipient cannot receive RCS (RBM answers 404): fall back or fail.
        NotCapable => "not_capable",
    }
}

wire_enum! {
    /// Why the delivery attempts ended without a carrier ack.
    pub enum EndReason: "end reason" {
        PermanentError => "permanent_error",
        NotCapable => "not_capable",
        RetryWindowExhausted => "retry_window_exhausted",
        MaxAttempts => "max_attempts",
        /// Fallback asked for explicitly (operator or tenant policy).
        Requested => "requested",
        /// The TTL (`expires_at`) passed, or no retry fit before it, without a delivery.
        Expired => "expired",
    }
}

wire_enum! {
    /// What happened when expiry tried to take the message back from the carrier.
    pub enum RevokeOutcome: "revoke outcome" {
        /// Never reached a carrier: nothing to revoke.
        NotSubmitted => "not_submitted",
        Revoked => "revoked",
        RevokeFailed => "revoke_failed",
    }
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
    /// SHA-256 of the whole send request ([`crate::AcceptMessage::request_digest`]): a resend
    /// under the same idempotency key is a duplicate only if this matches. Written since v2;
    /// `None` for events upcast from v1, which are compared by payload digest only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_sha256: Option<Sha256Hex>,
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
    /// When the expiry timer ended the message: what it did at the carrier first (since v2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke: Option<RevokeOutcome>,
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

/// A recipient's device reported that it could not open the payload. Leaves the status as it
/// is: the carrier did deliver; the tenant learns its recipient could not read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecryptionFailed {
    pub reason: DecryptFailure,
    /// The device key the report names (a key id, never a key), when the device gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
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
    DecryptionFailed(DecryptionFailed),
}

/// Why an event body could not be turned back into a [`MessageEvent`].
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    UnknownType(#[from] crate::wire::UnknownName),
    #[error("event '{event_type}' version '{version}' is unknown; this build reads versions {:?}", event_type.versions())]
    UnknownVersion {
        event_type: EventType,
        version: String,
    },
    #[error("event '{event_type}' body does not match its schema")]
    Body {
        event_type: EventType,
        #[source]
        source: serde_json::Error,
    },
}

impl MessageEvent {
    pub fn event_type(&self) -> EventType {
        match self {
            Self::Accepted(_) => EventType::Accepted,
            Self::Queued(_) => EventType::Queued,
            Self::CarrierAcked(_) => EventType::CarrierAcked,
            Self::AttemptFailed(_) => EventType::AttemptFailed,
            Self::RetryScheduled(_) => EventType::RetryScheduled,
            Self::Failed(_) => EventType::Failed,
            Self::FallbackTriggered(_) => EventType::FallbackTriggered,
            Self::Delivered(_) => EventType::Delivered,
            Self::Displayed(_) => EventType::Displayed,
            Self::Expired(_) => EventType::Expired,
            Self::Cancelled(_) => EventType::Cancelled,
            Self::Held(_) => EventType::Held,
            Self::Released(_) => EventType::Released,
            Self::Purged(_) => EventType::Purged,
            Self::DecryptionFailed(_) => EventType::DecryptionFailed,
        }
    }

    /// The instant the event records (`accepted_at` for `accepted`, `at` otherwise).
    pub fn at(&self) -> OffsetDateTime {
        match self {
            Self::Accepted(e) => e.accepted_at,
            Self::Queued(e) => e.at,
            Self::CarrierAcked(e) => e.at,
            Self::AttemptFailed(e) => e.at,
            Self::RetryScheduled(e) => e.at,
            Self::Failed(e) => e.at,
            Self::FallbackTriggered(e) => e.at,
            Self::Delivered(e) => e.at,
            Self::Displayed(e) => e.at,
            Self::Expired(e) => e.at,
            Self::Cancelled(e) => e.at,
            Self::Held(e) => e.at,
            Self::Released(e) => e.at,
            Self::Purged(e) => e.at,
            Self::DecryptionFailed(e) => e.at,
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
            Self::DecryptionFailed(e) => serde_json::to_vec(e),
        }
    }

    /// Rebuilds an event from its type, schema version and stored body, upcasting old versions.
    pub fn from_body(
        event_type: EventType,
        version: &str,
        body: &[u8],
    ) -> Result<Self, DecodeError> {
        let bad = |source| DecodeError::Body { event_type, source };
        if version.parse::<u32>() == Ok(event_type.version()) {
            // The current version needs no upcast: straight from the bytes, without building
            // a JSON tree first (the same result; `from_body_agrees_with_the_tree_path`).
            return Self::from_current_body(event_type, body).map_err(bad);
        }
        let value: serde_json::Value = serde_json::from_slice(body).map_err(bad)?;
        let value = crate::upcast::to_current(event_type, version, value)?;
        let tagged = serde_json::Value::Object(serde_json::Map::from_iter([(
            event_type.as_str().to_owned(),
            value,
        )]));
        serde_json::from_value(tagged).map_err(bad)
    }

    /// A body of `event_type`'s current version.
    fn from_current_body(event_type: EventType, body: &[u8]) -> serde_json::Result<Self> {
        use serde_json::from_slice as de;
        Ok(match event_type {
            EventType::Accepted => Self::Accepted(de(body)?),
            EventType::Queued => Self::Queued(de(body)?),
            EventType::CarrierAcked => Self::CarrierAcked(de(body)?),
            EventType::AttemptFailed => Self::AttemptFailed(de(body)?),
            EventType::RetryScheduled => Self::RetryScheduled(de(body)?),
            EventType::Failed => Self::Failed(de(body)?),
            EventType::FallbackTriggered => Self::FallbackTriggered(de(body)?),
            EventType::Delivered => Self::Delivered(de(body)?),
            EventType::Displayed => Self::Displayed(de(body)?),
            EventType::Expired => Self::Expired(de(body)?),
            EventType::Cancelled => Self::Cancelled(de(body)?),
            EventType::Held => Self::Held(de(body)?),
            EventType::Released => Self::Released(de(body)?),
            EventType::Purged => Self::Purged(de(body)?),
            EventType::DecryptionFailed => Self::DecryptionFailed(de(body)?),
        })
    }
}

impl cqrs_es::DomainEvent for MessageEvent {
    fn event_type(&self) -> String {
        MessageEvent::event_type(self).as_str().to_owned()
    }

    fn event_version(&self) -> String {
        MessageEvent::event_type(self).version().to_string()
    }
}
