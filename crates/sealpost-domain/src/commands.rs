//! The commands a `Message` accepts. Each carries the instant it happened (`at`): the domain
//! reads no clock, so tests and replays are deterministic.

use std::time::Duration;

use time::OffsetDateTime;

use crate::events::{EncryptionMetadata, Fallback, MessageType, RevokeOutcome};
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
}
