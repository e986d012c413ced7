//! The commands a `Message` accepts. Each carries the instant it happened (`at`): the domain
//! reads no clock, so tests and replays are deterministic.

use std::time::Duration;

use time::OffsetDateTime;

use crate::events::{DecryptFailure, EncryptionMetadata, Fallback, MessageType, RevokeOutcome};
use crate::ids::{Recipient, Sha256Hex, TenantId};

/// A validated send request. Parsing and checking the public JSON happens in the gateway; the
/// domain receives typed values.
#[derive(Debug, Clone, PartialEq)]
pub struct AcceptMessage {
    pub tenant_id: TenantId,
    pub idempotency_key: String,
    pub recipient: Recipient,
    pub payload_ref: String,
    pub payload_sha256: Sha256Hex,
    pub payload_size: Option<u64>,
    pub encryption: EncryptionMetadata,
    pub message_type: MessageType,
    pub correlation_id: Option<String>,
    pub ttl: Option<Duration>,
    pub fallback: Option<Fallback>,
    pub at: OffsetDateTime,
}

/// The first bytes [`AcceptMessage::request_digest`] hashes. Another layout gets another tag.
pub const REQUEST_DIGEST_TAG: &[u8] = b"sealpost.send-request.v1";

impl AcceptMessage {
    /// SHA-256 over every field of the send request, so that a resend under the same
    /// idempotency key is a duplicate only when it asks for exactly the same thing (as Stripe's
    /// and Svix's idempotency layers compare whole requests).
    ///
    /// Byte layout (`docs/formats.md`): [`REQUEST_DIGEST_TAG`], then each field in this order as
    /// a 4-byte big-endian length and its UTF-8 bytes, or the length `0xFFFFFFFF` and no bytes
    /// when the field is absent: tenant id, idempotency key, recipient (E.164), payload
    /// reference, payload SHA-256 (lowercase hex, of the stored object), `mls_version`,
    /// `cipher`, `key_id`, message type, TTL in seconds (decimal), fallback channel, fallback
    /// notice template, correlation id. `payload_size` and `at` are not part of the request.
    pub fn request_digest(&self) -> Sha256Hex {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(REQUEST_DIGEST_TAG);
        let mut field = |v: Option<&str>| match v {
            Some(v) => {
                let len = u32::try_from(v.len()).unwrap_or(u32::MAX - 1);
                h.update(len.to_be_bytes());
                h.update(v.as_bytes());
            }
            None => h.update(u32::MAX.to_be_bytes()),
        };
        let ttl = self.ttl.map(|t| t.as_secs().to_string());
        field(Some(self.tenant_id.as_str()));
        field(Some(&self.idempotency_key));
        field(Some(self.recipient.expose()));
        field(Some(&self.payload_ref));
        field(Some(self.payload_sha256.as_str()));
        field(Some(&self.encryption.mls_version));
        field(Some(&self.encryption.cipher));
        field(Some(&self.encryption.key_id));
        field(Some(self.message_type.as_str()));
        field(ttl.as_deref());
        field(self.fallback.as_ref().map(|f| f.channel.as_str()));
        field(self.fallback.as_ref().map(|f| f.notice_template.as_str()));
        field(self.correlation_id.as_deref());
        Sha256Hex::from_digest(&h.finalize())
    }
}

/// What a carrier answered to one submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CarrierOutcome {
    /// Accepted, or already accepted earlier under the same carrier message id (409 / reused id).
    Acked { carrier_message_id: String },
    /// 5xx, timeout or connection error; a 503 may carry Retry-After.
    Transient {
        code: String,
        retry_after: Option<Duration>,
    },
    /// 429.
    Throttled {
        code: String,
        retry_after: Option<Duration>,
    },
    /// Any other 4xx.
    Permanent { code: String },
    /// The recipient has no RCS (RBM answers 404).
    NotRcsCapable,
    /// The carrier refused *us*, not the message: our credentials are wrong, expired or revoked
    /// (401, 403), or no access token could be obtained. It says nothing about the message, so
    /// it is never recorded on one: delivery pauses the carrier for every message and tries again
    /// later, within each message's retry window and TTL.
    AuthFailed { code: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptKind {
    Delivered,
    Displayed,
}

#[derive(Debug, Clone, PartialEq)]
pub enum MessageCommand {
    Accept(Box<AcceptMessage>),
    /// Redrive: queue a fresh delivery job for a message still waiting for submission, e.g. after
    /// its job was lost with a deleted consumer. The attempt check makes a duplicate job harmless.
    Enqueue {
        not_before: OffsetDateTime,
        at: OffsetDateTime,
    },
    RecordCarrierResult {
        attempt: u32,
        carrier: String,
        outcome: CarrierOutcome,
        at: OffsetDateTime,
    },
    RecordReceipt {
        receipt_id: String,
        kind: ReceiptKind,
        at: OffsetDateTime,
    },
    Expire {
        revoke: RevokeOutcome,
        at: OffsetDateTime,
    },
    Cancel {
        at: OffsetDateTime,
    },
    Hold {
        hold_id: String,
        reason: String,
        at: OffsetDateTime,
    },
    Release {
        hold_id: String,
        at: OffsetDateTime,
    },
    TriggerFallback {
        at: OffsetDateTime,
    },
    Purge {
        at: OffsetDateTime,
    },
    /// A recipient's device could not open the payload (its capability link authenticated it).
    RecordDecryptionFailure {
        reason: DecryptFailure,
        key_id: Option<String>,
        at: OffsetDateTime,
    },
}
