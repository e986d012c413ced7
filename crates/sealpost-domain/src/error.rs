//! Why a command was refused. Each variant has a stable `code()` that adapters map to their
//! error bodies and status codes; none of the messages contains ciphertext or a full number.

use crate::aggregate::Status;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("the idempotency key was already used with a different payload; use a new key for a new message")]
    IdempotencyConflict,
    #[error("ttl_seconds must be between 1 and {max} seconds")]
    InvalidTtl { max: u64 },
    #[error("no message with this id has been accepted")]
    NotAccepted,
    #[error("the message is {0}; this command no longer applies")]
    AlreadyFinal(Status),
    #[error(
        "the message was already submitted to the carrier ({0}); it can no longer be cancelled"
    )]
    AlreadySubmitted(Status),
    #[error("attempt {got} is out of order: attempt {expected} is next")]
    AttemptOutOfOrder { expected: u32, got: u32 },
    #[error("receipt for a message the carrier has not acknowledged yet; retry after the ack is recorded")]
    NotYetAcked,
    #[error("the message does not expire before {expires_at}")]
    NotYetExpired { expires_at: String },
    #[error("the message was sent without a fallback; nothing to fall back to")]
    NoFallbackConfigured,
    #[error("the message is not on legal hold '{0}'")]
    NotHeld(String),
    #[error("the message is under legal hold; release the hold before purging")]
    UnderLegalHold,
    #[error("the message is still in flight ({0}); purge applies to settled messages only")]
    NotSettled(Status),
    #[error("the message payload was purged")]
    Purged,
    #[error("the message never reached a carrier ({0}); no device could have received it")]
    NotHandedOver(Status),
    #[error("the carrier refused our credentials, which says nothing about this message; pause the carrier and retry instead of recording it")]
    NotAMessageOutcome,
}

impl MessageError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::IdempotencyConflict => "idempotency_conflict",
            Self::InvalidTtl { .. } => "invalid_request",
            Self::NotAccepted => "not_found",
            Self::AlreadyFinal(_) => "already_final",
            Self::AlreadySubmitted(_) => "already_submitted",
            Self::AttemptOutOfOrder { .. } => "attempt_out_of_order",
            Self::NotYetAcked => "not_yet_acked",
            Self::NotYetExpired { .. } => "not_yet_expired",
            Self::NoFallbackConfigured => "no_fallback",
            Self::NotHeld(_) => "not_held",
            Self::UnderLegalHold => "legal_hold",
            Self::NotSettled(_) => "not_settled",
            Self::Purged => "purged",
            Self::NotHandedOver(_) => "not_handed_over",
            Self::NotAMessageOutcome => "not_a_message_outcome",
        }
    }

    /// True when the same command may succeed later without anyone changing it (a receipt
    /// racing ahead of its ack). Callers retry these instead of dropping the command.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::NotYetAcked)
    }
}
