//! The `Message` aggregate: decides on commands, applies events. See the crate docs for the
//! state-transition table.

use std::collections::BTreeSet;
use std::sync::Arc;

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::commands::{AcceptMessage, CarrierOutcome, MessageCommand, ReceiptKind};
use crate::error::MessageError;
use crate::events::*;
use crate::ids::MessageId;
use crate::policy::{FailedAttempt, RetryDecision, RetryPolicy, MAX_TTL};

wire_enum! {
    /// Where a message is in its lifecycle.
    #[derive(Default)]
    pub enum Status: "status" {
        /// No event yet.
        #[default]
        New => "new",
        /// Waiting for its first submission.
        Queued => "queued",
        /// A submission failed; waiting for the next one.
        RetryScheduled => "retry_scheduled",
        CarrierAcked => "carrier_acked",
        Delivered => "delivered",
        Displayed => "displayed",
        Failed => "failed",
        FallbackTriggered => "fallback_triggered",
        Expired => "expired",
        Cancelled => "cancelled",
    }
}

impl Status {
    /// Waiting for a (re)submission to the carrier.
    pub fn awaiting_submission(self) -> bool {
        matches!(self, Status::Queued | Status::RetryScheduled)
    }

    /// Ended without delivery: nothing moves a message out of these.
    pub fn is_terminal_failure(self) -> bool {
        matches!(
            self,
            Status::Failed | Status::FallbackTriggered | Status::Expired | Status::Cancelled
        )
    }

    /// No more delivery work: delivered, displayed or a terminal failure. Retention counts from
    /// here, and only a settled message may be purged.
    pub fn is_settled(self) -> bool {
        matches!(self, Status::Delivered | Status::Displayed) || self.is_terminal_failure()
    }

    /// The status can no longer change: displayed or a terminal failure. (A delivered message may
    /// still be displayed.) The demo and benches wait for this.
    pub fn is_final(self) -> bool {
        self == Status::Displayed || self.is_terminal_failure()
    }

    /// Delivery succeeded: delivered or displayed.
    pub fn is_success(self) -> bool {
        matches!(self, Status::Delivered | Status::Displayed)
    }

    /// The status an event type leads to, when it sets one (holds, releases, purges and failed
    /// attempts leave the status as it is). `accepted` leads to `queued`: it is the first job.
    pub fn after(event_type: EventType) -> Option<Status> {
        use EventType as E;
        Some(match event_type {
            E::Accepted | E::Queued => Status::Queued,
            E::CarrierAcked => Status::CarrierAcked,
            E::RetryScheduled => Status::RetryScheduled,
            E::Failed => Status::Failed,
            E::FallbackTriggered => Status::FallbackTriggered,
            E::Delivered => Status::Delivered,
            E::Displayed => Status::Displayed,
            E::Expired => Status::Expired,
            E::Cancelled => Status::Cancelled,
            E::AttemptFailed | E::Held | E::Released | E::Purged | E::DecryptionFailed => {
                return None
            }
        })
    }
}

/// How a `decryption_failed` report is told apart from the others of its message.
fn decryption_report_key(reason: DecryptFailure, key_id: Option<&str>) -> String {
    format!("{reason}:{}", key_id.unwrap_or(""))
}

/// State rebuilt from a message's events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// The acceptance, immutable once recorded; shared, so that copies of the state (the
    /// executor's cache) do not copy it.
    pub accepted: Option<Arc<Accepted>>,
    pub status: Status,
    /// The attempt number the next submission must carry (1-based).
    pub next_attempt: u32,
    /// The next submission must not start before this instant.
    pub not_before: Option<OffsetDateTime>,
    pub carrier: Option<String>,
    pub receipts_seen: BTreeSet<String>,
    pub holds: BTreeSet<String>,
    pub purged: bool,
    /// The distinct `decryption_failed` reports recorded, as `<reason>:<key id>`.
    #[serde(default)]
    pub decryption_failures: BTreeSet<String>,
}

/// At most this many distinct `decryption_failed` reports are recorded per message; later ones
/// change nothing. A capability link is a bearer secret: whoever holds one must not be able to
/// grow the message's stream without bound.
pub const MAX_DECRYPTION_REPORTS: usize = 8;

impl Message {
    pub fn message_id(&self) -> Option<&MessageId> {
        self.accepted.as_deref().map(|a| &a.message_id)
    }

    /// True when a worker may submit now.
    pub fn is_due(&self, now: OffsetDateTime) -> bool {
        self.status.awaiting_submission() && self.not_before.is_none_or(|t| now >= t)
    }

    fn accepted(&self) -> Result<&Accepted, MessageError> {
        self.accepted.as_deref().ok_or(MessageError::NotAccepted)
    }

    /// The pure decision: the events a command produces in the current state. An empty list
    /// means "nothing to do" (a duplicate or late command), which is not an error.
    pub fn decide(
        &self,
        command: MessageCommand,
        policy: &RetryPolicy,
    ) -> Result<Vec<MessageEvent>, MessageError> {
        use MessageCommand as C;
        match command {
            C::Accept(cmd) => self.decide_accept(*cmd, policy),
            C::Enqueue { not_before, at } => {
                self.accepted()?;
                self.require_awaiting_submission()?;
                Ok(vec![MessageEvent::Queued(Queued {
                    attempt: self.next_attempt,
                    not_before,
                    at,
                })])
            }
            C::RecordCarrierResult {
                attempt,
                carrier,
                outcome,
                at,
            } => self.decide_carrier_result(attempt, carrier, outcome, at, policy),
            C::RecordReceipt {
                receipt_id,
                kind,
                at,
            } => self.decide_receipt(receipt_id, kind, at),
            C::Expire { revoke, at } => {
                let accepted = self.accepted()?;
                if at < accepted.expires_at {
                    return Err(MessageError::NotYetExpired {
                        expires_at: accepted.expires_at.to_string(),
                    });
                }
                // Ends the message as the retry policy would have had it been first: the deadline
                // that passed first names the reason, and the fallback applies either way.
                let reason = match self.status {
                    // Still waiting for a submission: its retry window closed before the TTL,
                    // or the TTL itself ended it.
                    Status::Queued | Status::RetryScheduled
                        if accepted.retry_until < accepted.expires_at =>
                    {
                        EndReason::RetryWindowExhausted
                    }
                    Status::Queued | Status::RetryScheduled | Status::CarrierAcked => {
                        EndReason::Expired
                    }
                    // Delivered before the deadline, or already ended: the check is moot.
                    _ => return Ok(vec![]),
                };
                Ok(vec![end_undelivered(accepted, reason, Some(revoke), at)])
            }
            C::Cancel { at } => {
                self.accepted()?;
                match self.status {
                    Status::Queued | Status::RetryScheduled => {
                        Ok(vec![MessageEvent::Cancelled(Cancelled { at })])
                    }
                    Status::Cancelled => Ok(vec![]),
                    s @ (Status::CarrierAcked | Status::Delivered | Status::Displayed) => {
                        Err(MessageError::AlreadySubmitted(s))
                    }
                    s => Err(MessageError::AlreadyFinal(s)),
                }
            }
            C::Hold {
                hold_id,
                reason,
                at,
            } => {
                self.accepted()?;
                if self.purged {
                    return Err(MessageError::Purged);
                }
                if self.holds.contains(&hold_id) {
                    return Ok(vec![]);
                }
                Ok(vec![MessageEvent::Held(Held {
                    hold_id,
                    reason,
                    at,
                })])
            }
            C::Release { hold_id, at } => {
                self.accepted()?;
                if !self.holds.contains(&hold_id) {
                    return Err(MessageError::NotHeld(hold_id));
                }
                Ok(vec![MessageEvent::Released(Released { hold_id, at })])
            }
            C::TriggerFallback { at } => {
                let accepted = self.accepted()?;
                let fallback = accepted
                    .fallback
                    .as_ref()
                    .ok_or(MessageError::NoFallbackConfigured)?;
                match self.status {
                    Status::Queued | Status::RetryScheduled | Status::CarrierAcked => {
                        Ok(vec![fallback_event(
                            fallback,
                            EndReason::Requested,
                            None,
                            at,
                        )])
                    }
                    Status::FallbackTriggered => Ok(vec![]),
                    s => Err(MessageError::AlreadyFinal(s)),
                }
            }
            C::Purge { at } => {
                self.accepted()?;
                if self.purged {
                    return Ok(vec![]);
                }
                if !self.holds.is_empty() {
                    return Err(MessageError::UnderLegalHold);
                }
                if !self.status.is_settled() {
                    return Err(MessageError::NotSettled(self.status));
                }
                Ok(vec![MessageEvent::Purged(Purged { at })])
            }
            C::RecordDecryptionFailure { reason, key_id, at } => {
                self.accepted()?;
                if self.purged {
                    return Err(MessageError::Purged);
                }
                match self.status {
                    Status::CarrierAcked
                    | Status::Delivered
                    | Status::Displayed
                    | Status::FallbackTriggered => {}
                    s => return Err(MessageError::NotHandedOver(s)),
                }
                let seen = decryption_report_key(reason, key_id.as_deref());
                if self.decryption_failures.contains(&seen)
                    || self.decryption_failures.len() >= MAX_DECRYPTION_REPORTS
                {
                    return Ok(vec![]);
                }
                Ok(vec![MessageEvent::DecryptionFailed(DecryptionFailed {
                    reason,
                    key_id,
                    at,
                })])
            }
        }
    }

    fn require_awaiting_submission(&self) -> Result<(), MessageError> {
        match self.status {
            Status::Queued | Status::RetryScheduled => Ok(()),
            s @ (Status::CarrierAcked | Status::Delivered | Status::Displayed) => {
                Err(MessageError::AlreadySubmitted(s))
            }
            s => Err(MessageError::AlreadyFinal(s)),
        }
    }

    fn decide_accept(
        &self,
        cmd: AcceptMessage,
        policy: &RetryPolicy,
    ) -> Result<Vec<MessageEvent>, MessageError> {
        let request_sha256 = cmd.request_digest();
        if let Some(existing) = &self.accepted {
            // The id is derived from (tenant, key), so the same aggregate means the same key.
            let same = match &existing.request_sha256 {
                Some(d) => *d == request_sha256,
                // Accepted before v2: only the payload digest (and key) were recorded to compare.
                None => {
                    existing.payload_sha256 == cmd.payload_sha256
                        && existing.idempotency_key == cmd.idempotency_key
                }
            };
            return if same {
                Ok(vec![])
            } else {
                Err(MessageError::IdempotencyConflict)
            };
        }
        if let Some(ttl) = cmd.ttl {
            if ttl.is_zero() || ttl > MAX_TTL {
                return Err(MessageError::InvalidTtl {
                    max: MAX_TTL.as_secs(),
                });
            }
        }
        let window = policy.window(&cmd.tenant_id, cmd.message_type);
        let expires_at = cmd.at + cmd.ttl.unwrap_or(window);
        let retry_until = (cmd.at + window).min(expires_at);
        let message_id = MessageId::derive(&cmd.tenant_id, &cmd.idempotency_key);
        Ok(vec![MessageEvent::Accepted(Accepted {
            tenant_id: cmd.tenant_id,
            message_id,
            idempotency_key: cmd.idempotency_key,
            recipient: cmd.recipient,
            payload_ref: cmd.payload_ref,
            payload_sha256: cmd.payload_sha256,
            payload_size: cmd.payload_size,
            encryption: cmd.encryption,
            message_type: cmd.message_type,
            correlation_id: cmd.correlation_id,
            fallback: cmd.fallback,
            accepted_at: cmd.at,
            expires_at,
            retry_until,
            request_sha256: Some(request_sha256),
        })])
    }

    fn decide_carrier_result(
        &self,
        attempt: u32,
        carrier: String,
        outcome: CarrierOutcome,
        at: OffsetDateTime,
        policy: &RetryPolicy,
    ) -> Result<Vec<MessageEvent>, MessageError> {
        if let CarrierOutcome::AuthFailed { .. } = outcome {
            return Err(MessageError::NotAMessageOutcome);
        }
        let accepted = self.accepted()?;
        if attempt < self.next_attempt {
            // Already recorded: a worker redelivered after a crash records the same result again.
            return Ok(vec![]);
        }
        self.require_awaiting_submission()?;
        if attempt > self.next_attempt {
            return Err(MessageError::AttemptOutOfOrder {
                expected: self.next_attempt,
                got: attempt,
            });
        }
        let (class, code, retry_after) = match outcome {
            CarrierOutcome::Acked { carrier_message_id } => {
                return Ok(vec![MessageEvent::CarrierAcked(CarrierAcked {
                    attempt,
                    carrier,
                    carrier_message_id,
                    at,
                })]);
            }
            CarrierOutcome::Transient { code, retry_after } => {
                (ErrorClass::Transient, code, retry_after)
            }
            CarrierOutcome::Throttled { code, retry_after } => {
                (ErrorClass::Throttled, code, retry_after)
            }
            CarrierOutcome::Permanent { code } => (ErrorClass::Permanent, code, None),
            CarrierOutcome::NotRcsCapable => (ErrorClass::NotCapable, "404".to_owned(), None),
            CarrierOutcome::AuthFailed { .. } => return Err(MessageError::NotAMessageOutcome),
        };
        let failed = MessageEvent::AttemptFailed(AttemptFailed {
            attempt,
            carrier,
            class,
            code,
            retry_after_ms: retry_after.map(|d| d.as_millis().try_into().unwrap_or(u64::MAX)),
            at,
        });
        let decision = policy.decide(&FailedAttempt {
            message_id: &accepted.message_id,
            attempt,
            class,
            retry_after,
            retry_until: accepted.retry_until,
            expires_at: accepted.expires_at,
            now: at,
        });
        let next = match decision {
            RetryDecision::RetryAt { not_before, delay } => {
                MessageEvent::RetryScheduled(RetryScheduled {
                    attempt: attempt + 1,
                    delay_ms: delay.as_millis().try_into().unwrap_or(u64::MAX),
                    not_before,
                    at,
                })
            }
            RetryDecision::GiveUp(reason) => end_undelivered(accepted, reason, None, at),
            // The expiry ends it at `expires_at`; until then no attempt is due.
            RetryDecision::AwaitExpiry => MessageEvent::RetryScheduled(RetryScheduled {
                attempt: attempt + 1,
                delay_ms: until_ms(at, accepted.expires_at),
                not_before: accepted.expires_at.max(at),
                at,
            }),
        };
        Ok(vec![failed, next])
    }

    fn decide_receipt(
        &self,
        receipt_id: String,
        kind: ReceiptKind,
        at: OffsetDateTime,
    ) -> Result<Vec<MessageEvent>, MessageError> {
        self.accepted()?;
        if self.receipts_seen.contains(&receipt_id) {
            return Ok(vec![]);
        }
        let delivered = |implied| {
            MessageEvent::Delivered(Delivered {
                receipt_id: receipt_id.clone(),
                implied,
                at,
            })
        };
        let displayed = || {
            MessageEvent::Displayed(Displayed {
                receipt_id: receipt_id.clone(),
                at,
            })
        };
        match (self.status, kind) {
            (Status::Queued | Status::RetryScheduled, _) => Err(MessageError::NotYetAcked),
            (Status::CarrierAcked, ReceiptKind::Delivered) => Ok(vec![delivered(false)]),
            (Status::CarrierAcked, ReceiptKind::Displayed) => {
                Ok(vec![delivered(true), displayed()])
            }
            (Status::Delivered, ReceiptKind::Displayed) => Ok(vec![displayed()]),
            // Receipts move forward only: a late DELIVERED, a second READ, or a receipt for a
            // message that already ended makes no event.
            _ => Ok(vec![]),
        }
    }
}

fn fallback_event(
    fallback: &Fallback,
    reason: EndReason,
    revoke: Option<RevokeOutcome>,
    at: OffsetDateTime,
) -> MessageEvent {
    MessageEvent::FallbackTriggered(FallbackTriggered {
        channel: fallback.channel,
        notice_template: fallback.notice_template.clone(),
        reason,
        revoke,
        at,
    })
}

/// How a message ends undelivered for `reason`, the one rule for the retry policy and the expiry
/// timer alike: the requested fallback if there is one; otherwise `expired` when the TTL ended it
/// (with what the expiry did at the carrier), else `failed`.
fn end_undelivered(
    accepted: &Accepted,
    reason: EndReason,
    revoke: Option<RevokeOutcome>,
    at: OffsetDateTime,
) -> MessageEvent {
    match (&accepted.fallback, reason) {
        // A permanent error means the request itself is wrong; a notice would not help.
        (_, EndReason::PermanentError) => MessageEvent::Failed(Failed { reason, at }),
        (Some(fallback), _) => fallback_event(fallback, reason, revoke, at),
        (None, EndReason::Expired) => MessageEvent::Expired(Expired {
            revoke: revoke.unwrap_or(RevokeOutcome::NotSubmitted),
            at,
        }),
        (None, _) => MessageEvent::Failed(Failed { reason, at }),
    }
}

/// Milliseconds from `from` to `to`, 0 when `to` is not later.
fn until_ms(from: OffsetDateTime, to: OffsetDateTime) -> u64 {
    u64::try_from((to - from).whole_milliseconds()).unwrap_or(0)
}

impl Aggregate for Message {
    const TYPE: &'static str = "message";
    type Command = MessageCommand;
    type Event = MessageEvent;
    type Error = MessageError;
    type Services = RetryPolicy;

    async fn handle(
        &mut self,
        command: Self::Command,
        policy: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command, policy)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            MessageEvent::Accepted(e) => {
                // `accepted` is the first delivery job: the message waits for attempt 1 from now.
                self.status = Status::Queued;
                self.next_attempt = 1;
                self.not_before = Some(e.accepted_at);
                self.accepted = Some(Arc::new(e));
            }
            MessageEvent::Queued(e) => {
                self.status = Status::Queued;
                self.next_attempt = e.attempt;
                self.not_before = Some(e.not_before);
            }
            MessageEvent::CarrierAcked(e) => {
                self.status = Status::CarrierAcked;
                self.next_attempt = e.attempt + 1;
                self.not_before = None;
                self.carrier = Some(e.carrier);
            }
            MessageEvent::AttemptFailed(e) => {
                self.next_attempt = e.attempt + 1;
                self.carrier = Some(e.carrier);
            }
            MessageEvent::RetryScheduled(e) => {
                self.status = Status::RetryScheduled;
                self.next_attempt = e.attempt;
                self.not_before = Some(e.not_before);
            }
            MessageEvent::Failed(_) => {
                self.status = Status::Failed;
                self.not_before = None;
            }
            MessageEvent::FallbackTriggered(_) => {
                self.status = Status::FallbackTriggered;
                self.not_before = None;
            }
            MessageEvent::Delivered(e) => {
                self.status = Status::Delivered;
                self.receipts_seen.insert(e.receipt_id);
            }
            MessageEvent::Displayed(e) => {
                self.status = Status::Displayed;
                self.receipts_seen.insert(e.receipt_id);
            }
            MessageEvent::Expired(_) => {
                self.status = Status::Expired;
                self.not_before = None;
            }
            MessageEvent::Cancelled(_) => {
                self.status = Status::Cancelled;
                self.not_before = None;
            }
            MessageEvent::Held(e) => {
                self.holds.insert(e.hold_id);
            }
            MessageEvent::Released(e) => {
                self.holds.remove(&e.hold_id);
            }
            MessageEvent::Purged(_) => {
                self.purged = true;
            }
            MessageEvent::DecryptionFailed(e) => {
                self.decryption_failures
                    .insert(decryption_report_key(e.reason, e.key_id.as_deref()));
            }
        }
    }
}
