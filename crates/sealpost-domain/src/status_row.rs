//! [`StatusRow`]: what a tenant sees of one message, and the one fold from events to it.
//!
//! The `messages` view in Postgres stores these rows (`sealpost-projections`); the gateway answers
//! `GET /v1/messages/{id}` and `sealpost.qry.<tenant>.status` with one, from the view, or, while
//! the view has not caught up or is unreachable, by folding the message's events itself with
//! the same [`StatusRow::apply`]. Both answers therefore agree field for field.
//!
//! The recipient appears only masked and as a SHA-256 digest; the payload only as a reference,
//! size and digest.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::aggregate::Status;
use crate::events::{
    DecryptFailure, EndReason, ErrorClass, EventType, FallbackChannel, MessageEvent, MessageType,
    RevokeOutcome,
};
use crate::ids::Recipient;

wire_enum! {
    /// Where a status answer came from.
    #[derive(Default)]
    pub enum RowSource: "row source" {
        /// The `messages` view (the projector had applied the message's events).
        #[default]
        View => "view",
        /// The message's events, folded by the gateway: the view had not seen the message yet,
        /// or could not be read.
        Events => "events",
    }
}

/// One message's status row. Serialized with these field names, instants as RFC 3339: a public
/// contract (`docs/openapi.json`, schema `StatusRow`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRow {
    pub tenant: String,
    pub message_id: String,
    pub status: Status,
    pub message_type: Option<MessageType>,
    /// The recipient with all but the last two digits masked, e.g. `+*********67`.
    pub recipient_masked: Option<String>,
    /// SHA-256 (hex) of the E.164 recipient, to find a recipient's messages without storing it.
    pub recipient_sha256: Option<String>,
    pub correlation_id: Option<String>,
    /// Where the ciphertext is (a reference, never the content).
    pub payload_ref: Option<String>,
    pub payload_sha256: Option<String>,
    pub payload_size: Option<u64>,
    /// The fallback channel asked for at accept, if any.
    pub fallback_channel: Option<FallbackChannel>,
    pub carrier: Option<String>,
    pub carrier_message_id: Option<String>,
    /// Submissions made so far (the highest attempt number recorded).
    pub attempts: u32,
    /// Of the last failed attempt.
    pub last_error_class: Option<ErrorClass>,
    /// Of the last failed attempt: the carrier's status or error code, e.g. `503`.
    pub last_error_code: Option<String>,
    /// Why delivery ended undelivered (`failed`, `fallback_triggered`, `expired`).
    pub end_reason: Option<EndReason>,
    /// When the expiry ended the message (`expired`, or a fallback with the reason `expired`):
    /// what the revoke at the carrier achieved.
    pub revoke_outcome: Option<RevokeOutcome>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub accepted_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub carrier_acked_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub delivered_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub displayed_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub failed_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub fallback_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expired_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub cancelled_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub purged_at: Option<OffsetDateTime>,
    /// The TTL deadline fixed at accept.
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// When the next submission may start, while one is awaited.
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_attempt_at: Option<OffsetDateTime>,
    /// Under at least one legal hold.
    pub held: bool,
    pub active_holds: u32,
    pub purged: bool,
    /// `decryption_failed` reports recorded: a recipient's device could not open the payload.
    #[serde(default)]
    pub decryption_failures: u32,
    /// The reason of the latest one.
    #[serde(default)]
    pub last_decryption_failure: Option<DecryptFailure>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub last_decryption_failure_at: Option<OffsetDateTime>,
    /// Events applied to this row.
    pub event_count: u32,
    pub last_event_type: Option<EventType>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_event_at: Option<OffsetDateTime>,
    /// Stream sequence of the last event applied.
    pub last_seq: u64,
    /// Where this answer came from. Not stored: the reader sets it.
    #[serde(default)]
    pub source: RowSource,
}

impl StatusRow {
    /// The row of a message before its first event.
    pub fn new(tenant: &str, message_id: &str) -> Self {
        StatusRow {
            tenant: tenant.to_owned(),
            message_id: message_id.to_owned(),
            status: Status::New,
            message_type: None,
            recipient_masked: None,
            recipient_sha256: None,
            correlation_id: None,
            payload_ref: None,
            payload_sha256: None,
            payload_size: None,
            fallback_channel: None,
            carrier: None,
            carrier_message_id: None,
            attempts: 0,
            last_error_class: None,
            last_error_code: None,
            end_reason: None,
            revoke_outcome: None,
            accepted_at: None,
            carrier_acked_at: None,
            delivered_at: None,
            displayed_at: None,
            failed_at: None,
            fallback_at: None,
            expired_at: None,
            cancelled_at: None,
            purged_at: None,
            expires_at: None,
            next_attempt_at: None,
            held: false,
            active_holds: 0,
            purged: false,
            decryption_failures: 0,
            last_decryption_failure: None,
            last_decryption_failure_at: None,
            event_count: 0,
            last_event_type: None,
            last_event_at: None,
            last_seq: 0,
            source: RowSource::View,
        }
    }

    /// Folds one event into the row. The aggregate already decided the transition; this only
    /// records it. `stream_seq` is the event's stream sequence; `correlation_id` the one its
    /// headers carried (used when the `accepted` body has none). Instants are kept to the
    /// microsecond, the resolution the `messages` view stores, so a row folded from events equals
    /// the view's row.
    pub fn apply(&mut self, event: &MessageEvent, stream_seq: u64, correlation_id: Option<&str>) {
        self.fold(event, stream_seq, correlation_id);
        for t in [
            &mut self.accepted_at,
            &mut self.carrier_acked_at,
            &mut self.delivered_at,
            &mut self.displayed_at,
            &mut self.failed_at,
            &mut self.fallback_at,
            &mut self.expired_at,
            &mut self.cancelled_at,
            &mut self.purged_at,
            &mut self.expires_at,
            &mut self.next_attempt_at,
            &mut self.last_decryption_failure_at,
            &mut self.last_event_at,
        ] {
            *t = t.map(to_micros);
        }
    }

    fn fold(&mut self, event: &MessageEvent, stream_seq: u64, correlation_id: Option<&str>) {
        use MessageEvent as E;
        if let Some(status) = Status::after(event.event_type()) {
            // A DELIVERED receipt can only follow the ack; a late one never moves `displayed` back.
            if !(status == Status::Delivered && self.status == Status::Displayed) {
                self.status = status;
            }
        }
        match event {
            E::Accepted(a) => {
                self.message_type = Some(a.message_type);
                self.recipient_masked = Some(a.recipient.masked());
                self.recipient_sha256 = Some(recipient_digest(&a.recipient));
                self.correlation_id = a
                    .correlation_id
                    .clone()
                    .or(correlation_id.map(str::to_owned));
                self.payload_ref = Some(a.payload_ref.clone());
                self.payload_sha256 = Some(a.payload_sha256.as_str().to_owned());
                self.payload_size = a.payload_size;
                self.fallback_channel = a.fallback.as_ref().map(|f| f.channel);
                self.accepted_at = Some(a.accepted_at);
                self.expires_at = Some(a.expires_at);
                self.next_attempt_at = Some(a.accepted_at);
            }
            E::Queued(q) => self.next_attempt_at = Some(q.not_before),
            E::CarrierAcked(c) => {
                self.carrier = Some(c.carrier.clone());
                self.carrier_message_id = Some(c.carrier_message_id.clone());
                self.carrier_acked_at = Some(c.at);
                self.attempts = self.attempts.max(c.attempt);
                self.next_attempt_at = None;
            }
            E::AttemptFailed(f) => {
                self.carrier = Some(f.carrier.clone());
                self.attempts = self.attempts.max(f.attempt);
                self.last_error_class = Some(f.class);
                self.last_error_code = Some(f.code.clone());
            }
            E::RetryScheduled(r) => self.next_attempt_at = Some(r.not_before),
            E::Failed(f) => {
                self.failed_at = Some(f.at);
                self.end_reason = Some(f.reason);
                self.next_attempt_at = None;
            }
            E::FallbackTriggered(f) => {
                self.fallback_at = Some(f.at);
                self.end_reason = Some(f.reason);
                self.revoke_outcome = f.revoke;
                self.fallback_channel = Some(f.channel);
                self.next_attempt_at = None;
            }
            E::Delivered(d) => self.delivered_at = Some(d.at),
            E::Displayed(d) => self.displayed_at = Some(d.at),
            E::Expired(x) => {
                self.expired_at = Some(x.at);
                self.end_reason = Some(EndReason::Expired);
                self.revoke_outcome = Some(x.revoke);
                self.next_attempt_at = None;
            }
            E::Cancelled(c) => {
                self.cancelled_at = Some(c.at);
                self.next_attempt_at = None;
            }
            E::Held(_) => {
                self.active_holds += 1;
                self.held = true;
            }
            E::Released(_) => {
                self.active_holds = self.active_holds.saturating_sub(1);
                self.held = self.active_holds > 0;
            }
            E::Purged(p) => {
                self.purged = true;
                self.purged_at = Some(p.at);
            }
            E::DecryptionFailed(d) => {
                self.decryption_failures += 1;
                self.last_decryption_failure = Some(d.reason);
                self.last_decryption_failure_at = Some(d.at);
            }
        }
        self.event_count += 1;
        self.last_event_type = Some(event.event_type());
        self.last_event_at = Some(event.at());
        self.last_seq = stream_seq;
    }
}

/// `t` without its sub-microsecond part.
fn to_micros(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(t.nanosecond() / 1_000 * 1_000)
        .unwrap_or(t)
}

/// SHA-256 (hex) of the full E.164 number: lets an operator find a recipient's messages (erasure
/// requests) without the row holding the number.
pub fn recipient_digest(r: &Recipient) -> String {
    hex::encode(Sha256::digest(r.expose().as_bytes()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use time::macros::datetime;

    use super::*;
    use crate::events::*;
    use crate::ids::*;

    const T0: OffsetDateTime = datetime!(2026-01-01 00:00 UTC);

    fn accepted() -> MessageEvent {
        MessageEvent::Accepted(Accepted {
            tenant_id: TenantId::new("acme").unwrap(),
            message_id: MessageId::new("m1").unwrap(),
            idempotency_key: "k".into(),
            recipient: Recipient::new("+15551234567").unwrap(),
            payload_ref: "s3://b/tenants/acme/x".into(),
            payload_sha256: Sha256Hex::of(b"x"),
            payload_size: Some(1),
            encryption: EncryptionMetadata {
                mls_version: "1".into(),
                cipher: "XChaCha20-Poly1305".into(),
                key_id: "k1".into(),
            },
            message_type: MessageType::Transactional,
            correlation_id: None,
            fallback: None,
            accepted_at: T0,
            expires_at: T0 + Duration::from_secs(60),
            retry_until: T0 + Duration::from_secs(60),
            request_sha256: None,
        })
    }

    #[test]
    fn given_an_accepted_event_then_the_row_is_queued_masked_and_carries_the_header_correlation() {
        let mut row = StatusRow::new("acme", "m1");
        row.apply(&accepted(), 7, Some("corr-1"));
        assert_eq!(row.status, Status::Queued);
        assert_eq!(row.recipient_masked.as_deref(), Some("+*********67"));
        assert_eq!(row.correlation_id.as_deref(), Some("corr-1"));
        assert_eq!(row.next_attempt_at, Some(T0));
        assert_eq!((row.event_count, row.last_seq), (1, 7));
        let json = serde_json::to_string(&row).unwrap();
        assert!(!json.contains("5551234567"), "{json}");
    }

    #[test]
    fn given_a_displayed_row_when_a_late_delivered_arrives_then_it_stays_displayed() {
        let mut row = StatusRow::new("acme", "m1");
        row.apply(&accepted(), 1, None);
        let at = T0;
        row.apply(
            &MessageEvent::CarrierAcked(CarrierAcked {
                attempt: 1,
                carrier: "rbm".into(),
                carrier_message_id: "m1".into(),
                at,
            }),
            2,
            None,
        );
        row.apply(
            &MessageEvent::Displayed(Displayed {
                receipt_id: "r2".into(),
                at,
            }),
            3,
            None,
        );
        row.apply(
            &MessageEvent::Delivered(Delivered {
                receipt_id: "r1".into(),
                implied: false,
                at,
            }),
            4,
            None,
        );
        assert_eq!(row.status, Status::Displayed);
        assert_eq!(row.delivered_at, Some(at));
        assert_eq!(row.attempts, 1);
    }

    #[test]
    fn given_an_instant_with_nanoseconds_then_the_row_keeps_microseconds() {
        let mut row = StatusRow::new("acme", "m1");
        let MessageEvent::Accepted(mut a) = accepted() else {
            unreachable!()
        };
        a.accepted_at = T0 + Duration::from_nanos(1_234_567);
        row.apply(&MessageEvent::Accepted(a), 1, None);
        assert_eq!(row.accepted_at, Some(T0 + Duration::from_micros(1_234)));
        assert_eq!(row.last_event_at, row.accepted_at);
    }

    #[test]
    fn given_holds_when_released_then_held_follows_the_count() {
        let mut row = StatusRow::new("acme", "m1");
        row.apply(&accepted(), 1, None);
        for (i, id) in ["h1", "h2"].into_iter().enumerate() {
            row.apply(
                &MessageEvent::Held(Held {
                    hold_id: id.into(),
                    reason: "case".into(),
                    at: T0,
                }),
                2 + i as u64,
                None,
            );
        }
        row.apply(
            &MessageEvent::Released(Released {
                hold_id: "h1".into(),
                at: T0,
            }),
            4,
            None,
        );
        assert!(row.held);
        assert_eq!(row.active_holds, 1);
        assert_eq!(row.status, Status::Queued, "holds leave the status alone");
    }

    #[test]
    fn given_decryption_failures_then_the_row_counts_them_keeps_the_latest_and_the_status() {
        let mut row = StatusRow::new("acme", "m1");
        row.apply(&accepted(), 1, None);
        row.apply(
            &MessageEvent::CarrierAcked(CarrierAcked {
                attempt: 1,
                carrier: "rbm".into(),
                carrier_message_id: "m1".into(),
                at: T0,
            }),
            2,
            None,
        );
        for (i, reason) in [DecryptFailure::WrongKey, DecryptFailure::Tampered]
            .into_iter()
            .enumerate()
        {
            row.apply(
                &MessageEvent::DecryptionFailed(DecryptionFailed {
                    reason,
                    key_id: Some("k1".into()),
                    at: T0 + Duration::from_secs(i as u64 + 1),
                }),
                3 + i as u64,
                None,
            );
        }
        assert_eq!(row.status, Status::CarrierAcked);
        assert_eq!(row.decryption_failures, 2);
        assert_eq!(row.last_decryption_failure, Some(DecryptFailure::Tampered));
        assert_eq!(
            row.last_decryption_failure_at,
            Some(T0 + Duration::from_secs(2))
        );
        assert_eq!(row.last_event_type, Some(EventType::DecryptionFailed));
    }
}
