//! Given/when/then tests: every command in every status, including every refused transition.
//!
//! `given(status)` builds the event history that leads to a status; each test walks all statuses
//! and states the expected events or error for each one.

use std::time::Duration;

use cqrs_es::test::TestFramework;
use time::macros::datetime;
use time::OffsetDateTime;

use crate::commands::*;
use crate::events::*;
use crate::ids::*;
use crate::policy::RetryPolicy;
use crate::{Message, MessageError, Status};

const T0: OffsetDateTime = datetime!(2026-01-01 00:00 UTC);
const T1: OffsetDateTime = datetime!(2026-01-01 00:01 UTC);
const LATER: OffsetDateTime = datetime!(2026-01-01 01:00 UTC);
const TTL: Duration = Duration::from_secs(3600);
const AFTER_EXPIRY: OffsetDateTime = datetime!(2026-01-01 01:00 UTC);

const ALL: [Status; 10] = [
    Status::New,
    Status::Queued,
    Status::RetryScheduled,
    Status::CarrierAcked,
    Status::Delivered,
    Status::Displayed,
    Status::Failed,
    Status::FallbackTriggered,
    Status::Expired,
    Status::Cancelled,
];

fn tenant() -> TenantId {
    TenantId::new("acme-corp").unwrap()
}

fn accept_cmd() -> AcceptMessage {
    AcceptMessage {
        tenant_id: tenant(),
        idempotency_key: "key-1".into(),
        recipient: Recipient::new("+15551234567").unwrap(),
        payload_ref: "s3://sealpost/tenants/acme-corp/abc.enc".into(),
        payload_sha256: Sha256Hex::of(b"ciphertext"),
        payload_size: Some(10),
        encryption: EncryptionMetadata {
            mls_version: "1".into(),
            cipher: "XChaCha20-Poly1305".into(),
            key_id: "user-public-key-v2".into(),
        },
        message_type: MessageType::Transactional,
        correlation_id: Some("txn-0001".into()),
        ttl: Some(TTL),
        fallback: Some(fallback()),
        at: T0,
    }
}

fn fallback() -> Fallback {
    Fallback {
        channel: FallbackChannel::Sms,
        notice_template: "secure_message_waiting".into(),
    }
}

fn accepted(with_fallback: bool) -> MessageEvent {
    let mut c = accept_cmd();
    if !with_fallback {
        c.fallback = None;
    }
    let request_sha256 = Some(c.request_digest());
    MessageEvent::Accepted(Accepted {
        message_id: MessageId::derive(&c.tenant_id, &c.idempotency_key),
        tenant_id: c.tenant_id,
        idempotency_key: c.idempotency_key,
        recipient: c.recipient,
        payload_ref: c.payload_ref,
        payload_sha256: c.payload_sha256,
        payload_size: c.payload_size,
        encryption: c.encryption,
        message_type: c.message_type,
        correlation_id: c.correlation_id,
        fallback: with_fallback.then(fallback),
        accepted_at: T0,
        expires_at: T0 + TTL,
        retry_until: T0 + TTL,
        request_sha256,
    })
}

fn queued(attempt: u32, not_before: OffsetDateTime) -> MessageEvent {
    MessageEvent::Queued(Queued {
        attempt,
        not_before,
        at: not_before,
    })
}

fn acked(attempt: u32) -> MessageEvent {
    MessageEvent::CarrierAcked(CarrierAcked {
        attempt,
        carrier: "rbm".into(),
        carrier_message_id: "mid".into(),
        at: T1,
    })
}

fn attempt_failed(attempt: u32, class: ErrorClass, code: &str) -> MessageEvent {
    MessageEvent::AttemptFailed(AttemptFailed {
        attempt,
        carrier: "rbm".into(),
        class,
        code: code.into(),
        retry_after_ms: None,
        at: T1,
    })
}

fn delivered(id: &str, implied: bool) -> MessageEvent {
    MessageEvent::Delivered(Delivered {
        receipt_id: id.into(),
        implied,
        at: LATER,
    })
}

fn displayed(id: &str) -> MessageEvent {
    MessageEvent::Displayed(Displayed {
        receipt_id: id.into(),
        at: LATER,
    })
}

fn fallback_triggered(reason: EndReason, at: OffsetDateTime) -> MessageEvent {
    fallback_after(reason, None, at)
}

fn fallback_after(
    reason: EndReason,
    revoke: Option<RevokeOutcome>,
    at: OffsetDateTime,
) -> MessageEvent {
    MessageEvent::FallbackTriggered(FallbackTriggered {
        channel: FallbackChannel::Sms,
        notice_template: "secure_message_waiting".into(),
        reason,
        revoke,
        at,
    })
}

/// When the retry window closes (`retry_until`) in the examples whose window is shorter than
/// the TTL.
const WINDOW_END: OffsetDateTime = datetime!(2026-01-01 00:30 UTC);

/// `history` for a message whose retry window closes at [`WINDOW_END`], before its TTL.
fn window_bound(mut history: Vec<MessageEvent>) -> Vec<MessageEvent> {
    if let Some(MessageEvent::Accepted(a)) = history.first_mut() {
        a.retry_until = WINDOW_END;
    }
    history
}

fn retry_scheduled(attempt: u32) -> MessageEvent {
    let id = MessageId::derive(&tenant(), "key-1");
    let delay = RetryPolicy::default().backoff(&id, attempt - 1);
    MessageEvent::RetryScheduled(RetryScheduled {
        attempt,
        delay_ms: delay.as_millis() as u64,
        not_before: T1 + delay,
        at: T1,
    })
}

/// The history that leads to `status`, for a message with or without a fallback.
fn history(status: Status, with_fallback: bool) -> Vec<MessageEvent> {
    let mut h = vec![accepted(with_fallback)];
    match status {
        Status::New => h.clear(),
        Status::Queued => {}
        Status::RetryScheduled => {
            h.push(attempt_failed(1, ErrorClass::Transient, "503"));
            h.push(retry_scheduled(2));
        }
        Status::CarrierAcked => h.push(acked(1)),
        Status::Delivered => h.extend([acked(1), delivered("r-dlv", false)]),
        Status::Displayed => h.extend([acked(1), delivered("r-dlv", false), displayed("r-dsp")]),
        Status::Failed => h.extend([
            attempt_failed(1, ErrorClass::Permanent, "400"),
            MessageEvent::Failed(Failed {
                reason: EndReason::PermanentError,
                at: T1,
            }),
        ]),
        Status::FallbackTriggered => h.extend([
            attempt_failed(1, ErrorClass::NotCapable, "404"),
            fallback_triggered(EndReason::NotCapable, T1),
        ]),
        Status::Expired => h.push(MessageEvent::Expired(Expired {
            revoke: RevokeOutcome::NotSubmitted,
            at: AFTER_EXPIRY,
        })),
        Status::Cancelled => h.push(MessageEvent::Cancelled(Cancelled { at: T1 })),
    }
    h
}

fn given(status: Status) -> Vec<MessageEvent> {
    history(status, true)
}

type Outcome = Result<Vec<MessageEvent>, MessageError>;

fn when(history: Vec<MessageEvent>, cmd: MessageCommand) -> Outcome {
    TestFramework::<Message>::with(RetryPolicy::default())
        .given(history)
        .when(cmd)
        .inspect_result()
}

/// Runs `cmd` in every status and compares with `expect(status)`.
fn for_every_status(cmd: impl Fn(Status) -> MessageCommand, expect: impl Fn(Status) -> Outcome) {
    for s in ALL {
        // The histories really do lead to the statuses they are named after.
        let mut m = Message::default();
        for e in given(s) {
            cqrs_es::Aggregate::apply(&mut m, e);
        }
        assert_eq!(m.status, s);
        assert_eq!(when(given(s), cmd(s)), expect(s), "given status {s}");
    }
}

const NONE: Outcome = Ok(vec![]);

fn attempt_of(s: Status) -> u32 {
    if s == Status::RetryScheduled {
        2
    } else {
        1
    }
}

// ---------------------------------------------------------------- accept

#[test]
fn accept_in_every_status() {
    for_every_status(
        |_| MessageCommand::Accept(Box::new(accept_cmd())),
        |s| match s {
            Status::New => Ok(vec![accepted(true)]),
            _ => NONE,
        },
    );
}

/// The send request with one field changed, for each field of the request.
fn requests_differing_in_one_field() -> Vec<(&'static str, AcceptMessage)> {
    let base = accept_cmd;
    let with = |f: fn(&mut AcceptMessage)| {
        let mut c = base();
        f(&mut c);
        c
    };
    vec![
        (
            "recipient",
            with(|c| c.recipient = Recipient::new("+15559999999").unwrap()),
        ),
        ("payload_ref", with(|c| c.payload_ref.push_str(".other"))),
        (
            "payload_sha256",
            with(|c| c.payload_sha256 = Sha256Hex::of(b"other ciphertext")),
        ),
        (
            "mls_version",
            with(|c| c.encryption.mls_version = "2".into()),
        ),
        (
            "cipher",
            with(|c| c.encryption.cipher = "AES-256-GCM".into()),
        ),
        (
            "key_id",
            with(|c| c.encryption.key_id = "user-public-key-v3".into()),
        ),
        (
            "message_type",
            with(|c| c.message_type = MessageType::Promotional),
        ),
        ("ttl", with(|c| c.ttl = Some(Duration::from_secs(60)))),
        ("no ttl", with(|c| c.ttl = None)),
        (
            "fallback channel",
            with(|c| c.fallback.as_mut().unwrap().channel = FallbackChannel::InApp),
        ),
        (
            "fallback template",
            with(|c| c.fallback.as_mut().unwrap().notice_template = "other".into()),
        ),
        ("no fallback", with(|c| c.fallback = None)),
        (
            "correlation_id",
            with(|c| c.correlation_id = Some("txn-0002".into())),
        ),
        ("no correlation_id", with(|c| c.correlation_id = None)),
    ]
}

#[test]
fn accept_with_the_same_key_and_any_other_field_conflicts_in_every_status() {
    for (field, other) in requests_differing_in_one_field() {
        assert_ne!(
            other.request_digest(),
            accept_cmd().request_digest(),
            "{field}"
        );
        for_every_status(
            |_| MessageCommand::Accept(Box::new(other.clone())),
            |s| match s {
                Status::New => {
                    match when(vec![], MessageCommand::Accept(Box::new(other.clone()))) {
                        Ok(events) => Ok(events),
                        Err(e) => panic!("{field}: a new message is accepted, got {e}"),
                    }
                }
                _ => Err(MessageError::IdempotencyConflict),
            },
        );
    }
}

#[test]
fn accept_records_the_digest_of_the_whole_request() {
    let Ok(events) = when(vec![], MessageCommand::Accept(Box::new(accept_cmd()))) else {
        panic!("accept failed")
    };
    let MessageEvent::Accepted(a) = &events[0] else {
        panic!("first event is not accepted")
    };
    assert_eq!(a.request_sha256, Some(accept_cmd().request_digest()));
    // Neither the instant nor the object's size is part of the request.
    let mut later = accept_cmd();
    later.at = LATER;
    later.payload_size = Some(99);
    assert_eq!(later.request_digest(), accept_cmd().request_digest());
}

#[test]
fn the_request_digest_matches_its_documented_test_vector() {
    // docs/formats.md, "Send request digest": this command and this digest.
    assert_eq!(
        accept_cmd().request_digest().as_str(),
        REQUEST_DIGEST_VECTOR,
    );
}

const REQUEST_DIGEST_VECTOR: &str =
    "ea60cd91267e178a676070de2f26193cc84684c3db111faeef00d99a026d98d6";

#[test]
fn given_a_v1_accepted_without_request_digest_then_only_the_payload_digest_is_compared() {
    let MessageEvent::Accepted(mut v1) = accepted(true) else {
        unreachable!()
    };
    v1.request_sha256 = None;
    let history = vec![MessageEvent::Accepted(v1)];
    // Today's rule for old events: same key and payload digest is a duplicate ...
    let mut other_recipient = accept_cmd();
    other_recipient.recipient = Recipient::new("+15559999999").unwrap();
    assert_eq!(
        when(
            history.clone(),
            MessageCommand::Accept(Box::new(other_recipient))
        ),
        NONE
    );
    // ... and another payload digest conflicts.
    let mut other_payload = accept_cmd();
    other_payload.payload_sha256 = Sha256Hex::of(b"other ciphertext");
    assert_eq!(
        when(history, MessageCommand::Accept(Box::new(other_payload))),
        Err(MessageError::IdempotencyConflict)
    );
}

#[test]
fn accept_fixes_deadlines_from_ttl_or_the_type_window() {
    let mut c = accept_cmd();
    c.ttl = None;
    c.message_type = MessageType::Promotional;
    let Ok(events) = when(vec![], MessageCommand::Accept(Box::new(c))) else {
        panic!("accept failed")
    };
    let MessageEvent::Accepted(a) = &events[0] else {
        panic!("first event is not accepted")
    };
    assert_eq!(a.expires_at, T0 + Duration::from_secs(7 * 24 * 3600));
    assert_eq!(a.retry_until, a.expires_at);

    // A TTL longer than the window expires later than retries stop.
    let mut c = accept_cmd();
    c.ttl = Some(Duration::from_secs(80 * 3600));
    let Ok(events) = when(vec![], MessageCommand::Accept(Box::new(c))) else {
        panic!("accept failed")
    };
    let MessageEvent::Accepted(a) = &events[0] else {
        panic!("first event is not accepted")
    };
    assert_eq!(a.expires_at, T0 + Duration::from_secs(80 * 3600));
    assert_eq!(a.retry_until, T0 + Duration::from_secs(72 * 3600));
}

#[test]
fn accept_refuses_a_zero_or_too_long_ttl() {
    for ttl in [
        Duration::ZERO,
        crate::policy::MAX_TTL + Duration::from_secs(1),
    ] {
        let mut c = accept_cmd();
        c.ttl = Some(ttl);
        assert_eq!(
            when(vec![], MessageCommand::Accept(Box::new(c))),
            Err(MessageError::InvalidTtl {
                max: crate::policy::MAX_TTL.as_secs()
            })
        );
    }
}

// ---------------------------------------------------------------- enqueue

#[test]
fn enqueue_in_every_status() {
    for_every_status(
        |_| MessageCommand::Enqueue {
            not_before: LATER,
            at: T1,
        },
        |s| match s {
            Status::New => Err(MessageError::NotAccepted),
            Status::Queued | Status::RetryScheduled => Ok(vec![MessageEvent::Queued(Queued {
                attempt: attempt_of(s),
                not_before: LATER,
                at: T1,
            })]),
            Status::CarrierAcked | Status::Delivered | Status::Displayed => {
                Err(MessageError::AlreadySubmitted(s))
            }
            _ => Err(MessageError::AlreadyFinal(s)),
        },
    );
}

// ---------------------------------------------------------------- carrier results

fn result(attempt: u32, outcome: CarrierOutcome) -> MessageCommand {
    MessageCommand::RecordCarrierResult {
        attempt,
        carrier: "rbm".into(),
        outcome,
        at: T1,
    }
}

fn ack() -> CarrierOutcome {
    CarrierOutcome::Acked {
        carrier_message_id: "mid".into(),
    }
}

/// The refusal for a current-attempt result in a status that no longer awaits submission.
fn not_awaiting(s: Status) -> Outcome {
    match s {
        Status::New => Err(MessageError::NotAccepted),
        Status::CarrierAcked | Status::Delivered | Status::Displayed => {
            Err(MessageError::AlreadySubmitted(s))
        }
        _ => Err(MessageError::AlreadyFinal(s)),
    }
}

/// The attempt number that is "next" in each status of [`given`].
fn next_attempt(s: Status) -> u32 {
    match s {
        Status::New | Status::Queued => 1,
        _ => 2,
    }
}

#[test]
fn carrier_ack_for_the_next_attempt_in_every_status() {
    for_every_status(
        |s| result(next_attempt(s), ack()),
        |s| match s {
            Status::Queued | Status::RetryScheduled => Ok(vec![acked(attempt_of(s))]),
            _ => not_awaiting(s),
        },
    );
}

#[test]
fn a_result_for_an_already_recorded_attempt_is_a_no_op_in_every_status() {
    for_every_status(
        |_| result(0, ack()),
        |s| match s {
            Status::New => Err(MessageError::NotAccepted),
            _ => NONE,
        },
    );
    // The realistic case: a worker redelivered after a crash records attempt 1 again.
    assert_eq!(when(given(Status::CarrierAcked), result(1, ack())), NONE);
    assert_eq!(
        when(
            given(Status::RetryScheduled),
            result(
                1,
                CarrierOutcome::Transient {
                    code: "503".into(),
                    retry_after: None
                }
            )
        ),
        NONE
    );
}

#[test]
fn a_result_for_a_future_attempt_is_refused_in_every_status() {
    for_every_status(
        |s| result(next_attempt(s) + 1, ack()),
        |s| match s {
            Status::Queued | Status::RetryScheduled => Err(MessageError::AttemptOutOfOrder {
                expected: attempt_of(s),
                got: attempt_of(s) + 1,
            }),
            _ => not_awaiting(s),
        },
    );
}

#[test]
fn transient_error_schedules_a_retry_in_every_awaiting_status() {
    for_every_status(
        |s| {
            result(
                next_attempt(s),
                CarrierOutcome::Transient {
                    code: "503".into(),
                    retry_after: None,
                },
            )
        },
        |s| match s {
            Status::Queued | Status::RetryScheduled => {
                let a = attempt_of(s);
                Ok(vec![
                    attempt_failed(a, ErrorClass::Transient, "503"),
                    retry_scheduled(a + 1),
                ])
            }
            _ => not_awaiting(s),
        },
    );
}

#[test]
fn throttled_error_waits_at_least_retry_after() {
    let events = when(
        given(Status::Queued),
        result(
            1,
            CarrierOutcome::Throttled {
                code: "429".into(),
                retry_after: Some(Duration::from_secs(300)),
            },
        ),
    );
    assert_eq!(
        events,
        Ok(vec![
            MessageEvent::AttemptFailed(AttemptFailed {
                attempt: 1,
                carrier: "rbm".into(),
                class: ErrorClass::Throttled,
                code: "429".into(),
                retry_after_ms: Some(300_000),
                at: T1,
            }),
            MessageEvent::RetryScheduled(RetryScheduled {
                attempt: 2,
                delay_ms: 300_000,
                not_before: T1 + Duration::from_secs(300),
                at: T1,
            }),
        ])
    );
}

#[test]
fn permanent_error_fails_even_with_a_fallback() {
    for fb in [true, false] {
        assert_eq!(
            when(
                history(Status::Queued, fb),
                result(1, CarrierOutcome::Permanent { code: "400".into() })
            ),
            Ok(vec![
                attempt_failed(1, ErrorClass::Permanent, "400"),
                MessageEvent::Failed(Failed {
                    reason: EndReason::PermanentError,
                    at: T1
                }),
            ])
        );
    }
}

#[test]
fn a_carrier_auth_failure_is_refused_in_every_status_and_records_nothing() {
    for_every_status(
        |s| {
            result(
                next_attempt(s),
                CarrierOutcome::AuthFailed {
                    code: "http_401".into(),
                },
            )
        },
        |_| Err(MessageError::NotAMessageOutcome),
    );
    assert_eq!(
        MessageError::NotAMessageOutcome.code(),
        "not_a_message_outcome"
    );
    assert!(!MessageError::NotAMessageOutcome.is_retryable());
}

#[test]
fn not_capable_falls_back_when_a_fallback_is_set_and_fails_otherwise() {
    let cmd = || result(1, CarrierOutcome::NotRcsCapable);
    assert_eq!(
        when(history(Status::Queued, true), cmd()),
        Ok(vec![
            attempt_failed(1, ErrorClass::NotCapable, "404"),
            fallback_triggered(EndReason::NotCapable, T1),
        ])
    );
    assert_eq!(
        when(history(Status::Queued, false), cmd()),
        Ok(vec![
            attempt_failed(1, ErrorClass::NotCapable, "404"),
            MessageEvent::Failed(Failed {
                reason: EndReason::NotCapable,
                at: T1
            }),
        ])
    );
}

/// Attempt 1 answered 429 with a two-hour Retry-After, and the `attempt_failed` it records.
fn throttled_for_two_hours() -> (MessageCommand, MessageEvent) {
    let cmd = result(
        1,
        CarrierOutcome::Throttled {
            code: "429".into(),
            retry_after: Some(Duration::from_secs(2 * 3600)),
        },
    );
    let mut failed = attempt_failed(1, ErrorClass::Throttled, "429");
    if let MessageEvent::AttemptFailed(f) = &mut failed {
        f.retry_after_ms = Some(7_200_000);
    }
    (cmd, failed)
}

#[test]
fn retry_window_exhausted_falls_back_or_fails() {
    // A 429 asking to wait past retry_until (T0 + 30 min, before the TTL) ends the retries.
    let (cmd, failed) = throttled_for_two_hours();
    assert_eq!(
        when(window_bound(history(Status::Queued, true)), cmd.clone()),
        Ok(vec![
            failed.clone(),
            fallback_triggered(EndReason::RetryWindowExhausted, T1)
        ])
    );
    assert_eq!(
        when(window_bound(history(Status::Queued, false)), cmd.clone()),
        Ok(vec![
            failed,
            MessageEvent::Failed(Failed {
                reason: EndReason::RetryWindowExhausted,
                at: T1
            }),
        ])
    );
}

#[test]
fn a_retry_that_would_pass_the_ttl_waits_for_the_expiry_instead_of_ending_the_message() {
    // retry_until is the TTL (T0 + 1 h): the 429's two hours do not fit, and the expiry at
    // T0 + 1 h ends the message the same way whether or not it comes first.
    let (cmd, failed) = throttled_for_two_hours();
    let wait = MessageEvent::RetryScheduled(RetryScheduled {
        attempt: 2,
        delay_ms: (T0 + TTL - T1).whole_milliseconds() as u64,
        not_before: T0 + TTL,
        at: T1,
    });
    for with_fallback in [true, false] {
        assert_eq!(
            when(history(Status::Queued, with_fallback), cmd.clone()),
            Ok(vec![failed.clone(), wait.clone()])
        );
    }
}

#[test]
fn max_attempts_ends_retries() {
    let policy = RetryPolicy {
        max_attempts: 2,
        ..RetryPolicy::default()
    };
    let events = TestFramework::<Message>::with(policy)
        .given(history(Status::RetryScheduled, false))
        .when(result(
            2,
            CarrierOutcome::Transient {
                code: "timeout".into(),
                retry_after: None,
            },
        ))
        .inspect_result();
    assert_eq!(
        events,
        Ok(vec![
            attempt_failed(2, ErrorClass::Transient, "timeout"),
            MessageEvent::Failed(Failed {
                reason: EndReason::MaxAttempts,
                at: T1
            }),
        ])
    );
}

// ---------------------------------------------------------------- receipts

fn receipt(id: &str, kind: ReceiptKind) -> MessageCommand {
    MessageCommand::RecordReceipt {
        receipt_id: id.into(),
        kind,
        at: LATER,
    }
}

#[test]
fn delivered_receipt_in_every_status() {
    for_every_status(
        |_| receipt("r-new", ReceiptKind::Delivered),
        |s| match s {
            Status::New => Err(MessageError::NotAccepted),
            Status::Queued | Status::RetryScheduled => Err(MessageError::NotYetAcked),
            Status::CarrierAcked => Ok(vec![delivered("r-new", false)]),
            // Forward only: late or duplicate receipts make no event.
            _ => NONE,
        },
    );
}

#[test]
fn displayed_receipt_in_every_status() {
    for_every_status(
        |_| receipt("r-new", ReceiptKind::Displayed),
        |s| match s {
            Status::New => Err(MessageError::NotAccepted),
            Status::Queued | Status::RetryScheduled => Err(MessageError::NotYetAcked),
            // Displayed implies delivered.
            Status::CarrierAcked => Ok(vec![delivered("r-new", true), displayed("r-new")]),
            Status::Delivered => Ok(vec![displayed("r-new")]),
            _ => NONE,
        },
    );
}

#[test]
fn a_receipt_id_seen_before_makes_no_event_in_every_status() {
    for_every_status(
        |_| receipt("r-dlv", ReceiptKind::Displayed),
        |s| match s {
            Status::New => Err(MessageError::NotAccepted),
            Status::Queued | Status::RetryScheduled => Err(MessageError::NotYetAcked),
            Status::CarrierAcked => Ok(vec![delivered("r-dlv", true), displayed("r-dlv")]),
            // In Delivered and Displayed, "r-dlv" was the DELIVERED receipt already applied.
            _ => NONE,
        },
    );
}

#[test]
fn not_yet_acked_is_the_only_retryable_error() {
    assert!(MessageError::NotYetAcked.is_retryable());
    assert!(!MessageError::NotAccepted.is_retryable());
    assert!(!MessageError::IdempotencyConflict.is_retryable());
}

// ---------------------------------------------------------------- expiry

#[test]
fn expire_before_the_deadline_is_refused_in_every_accepted_status() {
    for_every_status(
        |_| MessageCommand::Expire {
            revoke: RevokeOutcome::NotSubmitted,
            at: T1,
        },
        |s| match s {
            Status::New => Err(MessageError::NotAccepted),
            _ => Err(MessageError::NotYetExpired {
                expires_at: (T0 + TTL).to_string(),
            }),
        },
    );
}

fn expire() -> MessageCommand {
    MessageCommand::Expire {
        revoke: RevokeOutcome::Revoked,
        at: AFTER_EXPIRY,
    }
}

#[test]
fn expire_after_the_deadline_in_every_status_falls_back_when_a_fallback_was_requested() {
    for_every_status(
        |_| expire(),
        |s| match s {
            Status::New => Err(MessageError::NotAccepted),
            Status::Queued | Status::RetryScheduled | Status::CarrierAcked => {
                Ok(vec![fallback_after(
                    EndReason::Expired,
                    Some(RevokeOutcome::Revoked),
                    AFTER_EXPIRY,
                )])
            }
            // Delivered in time, or already ended: the scheduled check is moot.
            _ => NONE,
        },
    );
}

#[test]
fn expire_after_the_deadline_without_a_fallback_is_expired_with_the_revoke() {
    for s in ALL {
        let expected = match s {
            Status::New => Err(MessageError::NotAccepted),
            Status::Queued | Status::RetryScheduled | Status::CarrierAcked => {
                Ok(vec![MessageEvent::Expired(Expired {
                    revoke: RevokeOutcome::Revoked,
                    at: AFTER_EXPIRY,
                })])
            }
            _ => NONE,
        };
        assert_eq!(when(history(s, false), expire()), expected, "given {s}");
    }
}

/// What [`expire`] writes for `reason`: the fallback with the revoke, or `expired` / `failed`.
fn ended_by_expiry(with_fallback: bool, reason: EndReason) -> MessageEvent {
    match (with_fallback, reason) {
        (true, _) => fallback_after(reason, Some(RevokeOutcome::Revoked), AFTER_EXPIRY),
        (false, EndReason::Expired) => MessageEvent::Expired(Expired {
            revoke: RevokeOutcome::Revoked,
            at: AFTER_EXPIRY,
        }),
        (false, _) => MessageEvent::Failed(Failed {
            reason,
            at: AFTER_EXPIRY,
        }),
    }
}

#[test]
fn expire_of_a_message_whose_retry_window_closed_first_ends_as_the_policy_would_have() {
    // A late job never made the attempt that would have given up at the window's end; the
    // expiry names the deadline that passed first, so the outcome does not depend on which ran.
    for with_fallback in [true, false] {
        for s in [Status::Queued, Status::RetryScheduled] {
            assert_eq!(
                when(window_bound(history(s, with_fallback)), expire()),
                Ok(vec![ended_by_expiry(
                    with_fallback,
                    EndReason::RetryWindowExhausted
                )]),
                "given {s}, fallback {with_fallback}"
            );
        }
        // Acked without a receipt by the TTL: the window no longer matters.
        let expected = ended_by_expiry(with_fallback, EndReason::Expired);
        assert_eq!(
            when(
                window_bound(history(Status::CarrierAcked, with_fallback)),
                expire()
            ),
            Ok(vec![expected])
        );
    }
}

#[test]
fn expire_records_a_failed_revoke() {
    let cmd = MessageCommand::Expire {
        revoke: RevokeOutcome::RevokeFailed,
        at: AFTER_EXPIRY,
    };
    assert_eq!(
        when(history(Status::CarrierAcked, false), cmd.clone()),
        Ok(vec![MessageEvent::Expired(Expired {
            revoke: RevokeOutcome::RevokeFailed,
            at: AFTER_EXPIRY
        })])
    );
    assert_eq!(
        when(given(Status::CarrierAcked), cmd),
        Ok(vec![fallback_after(
            EndReason::Expired,
            Some(RevokeOutcome::RevokeFailed),
            AFTER_EXPIRY
        )])
    );
}

// ---------------------------------------------------------------- cancel

#[test]
fn cancel_in_every_status() {
    for_every_status(
        |_| MessageCommand::Cancel { at: LATER },
        |s| match s {
            Status::New => Err(MessageError::NotAccepted),
            Status::Queued | Status::RetryScheduled => {
                Ok(vec![MessageEvent::Cancelled(Cancelled { at: LATER })])
            }
            Status::Cancelled => NONE,
            Status::CarrierAcked | Status::Delivered | Status::Displayed => {
                Err(MessageError::AlreadySubmitted(s))
            }
            _ => Err(MessageError::AlreadyFinal(s)),
        },
    );
}

// ---------------------------------------------------------------- fallback

#[test]
fn trigger_fallback_in_every_status() {
    for_every_status(
        |_| MessageCommand::TriggerFallback { at: LATER },
        |s| match s {
            Status::New => Err(MessageError::NotAccepted),
            Status::Queued | Status::RetryScheduled | Status::CarrierAcked => {
                Ok(vec![fallback_triggered(EndReason::Requested, LATER)])
            }
            Status::FallbackTriggered => NONE,
            _ => Err(MessageError::AlreadyFinal(s)),
        },
    );
}

#[test]
fn trigger_fallback_without_a_fallback_is_refused_in_every_accepted_status() {
    for s in ALL.into_iter().filter(|s| *s != Status::New) {
        // FallbackTriggered cannot be reached without a fallback; the others can.
        if s == Status::FallbackTriggered {
            continue;
        }
        assert_eq!(
            when(
                history(s, false),
                MessageCommand::TriggerFallback { at: LATER }
            ),
            Err(MessageError::NoFallbackConfigured),
            "given status {s}"
        );
    }
}

// ---------------------------------------------------------------- holds and purge

fn hold(id: &str) -> MessageCommand {
    MessageCommand::Hold {
        hold_id: id.into(),
        reason: "litigation 42".into(),
        at: LATER,
    }
}

fn held(id: &str) -> MessageEvent {
    MessageEvent::Held(Held {
        hold_id: id.into(),
        reason: "litigation 42".into(),
        at: LATER,
    })
}

#[test]
fn hold_in_every_status() {
    for_every_status(
        |_| hold("h1"),
        |s| match s {
            Status::New => Err(MessageError::NotAccepted),
            _ => Ok(vec![held("h1")]),
        },
    );
}

#[test]
fn holding_again_under_the_same_id_is_a_no_op_and_a_second_id_adds_a_hold() {
    let mut h = given(Status::Displayed);
    h.push(held("h1"));
    assert_eq!(when(h.clone(), hold("h1")), NONE);
    assert_eq!(when(h, hold("h2")), Ok(vec![held("h2")]));
}

#[test]
fn hold_after_purge_is_refused() {
    let mut h = given(Status::Displayed);
    h.push(MessageEvent::Purged(Purged { at: LATER }));
    assert_eq!(when(h, hold("h1")), Err(MessageError::Purged));
}

#[test]
fn release_in_every_status() {
    let release = |id: &str| MessageCommand::Release {
        hold_id: id.into(),
        at: LATER,
    };
    for s in ALL {
        let mut h = given(s);
        if s != Status::New {
            h.push(held("h1"));
        }
        let expect = match s {
            Status::New => Err(MessageError::NotAccepted),
            _ => Ok(vec![MessageEvent::Released(Released {
                hold_id: "h1".into(),
                at: LATER,
            })]),
        };
        assert_eq!(when(h.clone(), release("h1")), expect, "given status {s}");
        if s != Status::New {
            assert_eq!(
                when(h, release("other")),
                Err(MessageError::NotHeld("other".into())),
                "given status {s}"
            );
        }
    }
}

#[test]
fn purge_in_every_status() {
    for_every_status(
        |_| MessageCommand::Purge { at: LATER },
        |s| match s {
            Status::New => Err(MessageError::NotAccepted),
            Status::Queued | Status::RetryScheduled | Status::CarrierAcked => {
                Err(MessageError::NotSettled(s))
            }
            _ => Ok(vec![MessageEvent::Purged(Purged { at: LATER })]),
        },
    );
}

#[test]
fn purge_under_hold_is_refused_until_released_and_purging_twice_is_a_no_op() {
    let mut h = given(Status::Displayed);
    h.push(held("h1"));
    assert_eq!(
        when(h.clone(), MessageCommand::Purge { at: LATER }),
        Err(MessageError::UnderLegalHold)
    );
    h.push(MessageEvent::Released(Released {
        hold_id: "h1".into(),
        at: LATER,
    }));
    assert_eq!(
        when(h.clone(), MessageCommand::Purge { at: LATER }),
        Ok(vec![MessageEvent::Purged(Purged { at: LATER })])
    );
    h.push(MessageEvent::Purged(Purged { at: LATER }));
    assert_eq!(when(h, MessageCommand::Purge { at: LATER }), NONE);
}

// ---------------------------------------------------------------- decryption failures

fn report(reason: DecryptFailure, key_id: Option<&str>) -> MessageCommand {
    MessageCommand::RecordDecryptionFailure {
        reason,
        key_id: key_id.map(str::to_owned),
        at: LATER,
    }
}

fn decryption_failed(reason: DecryptFailure, key_id: Option<&str>) -> MessageEvent {
    MessageEvent::DecryptionFailed(DecryptionFailed {
        reason,
        key_id: key_id.map(str::to_owned),
        at: LATER,
    })
}

#[test]
fn decryption_failure_in_every_status_is_recorded_once_a_device_could_have_the_payload() {
    for_every_status(
        |_| report(DecryptFailure::WrongKey, Some("k1")),
        |s| match s {
            Status::New => Err(MessageError::NotAccepted),
            Status::CarrierAcked
            | Status::Delivered
            | Status::Displayed
            | Status::FallbackTriggered => Ok(vec![decryption_failed(
                DecryptFailure::WrongKey,
                Some("k1"),
            )]),
            s => Err(MessageError::NotHandedOver(s)),
        },
    );
}

#[test]
fn given_a_recorded_decryption_failure_when_the_same_report_comes_again_then_nothing_is_recorded() {
    let mut h = given(Status::Delivered);
    h.push(decryption_failed(DecryptFailure::Tampered, Some("k1")));
    assert_eq!(
        when(h.clone(), report(DecryptFailure::Tampered, Some("k1"))),
        NONE
    );
    // Another key or another reason is another report.
    assert_eq!(
        when(h.clone(), report(DecryptFailure::Tampered, Some("k2"))),
        Ok(vec![decryption_failed(
            DecryptFailure::Tampered,
            Some("k2")
        )])
    );
    assert_eq!(
        when(h, report(DecryptFailure::WrongKey, None)),
        Ok(vec![decryption_failed(DecryptFailure::WrongKey, None)])
    );
}

#[test]
fn given_the_most_reports_a_message_keeps_when_another_comes_then_nothing_is_recorded() {
    let mut h = given(Status::Displayed);
    for i in 0..crate::aggregate::MAX_DECRYPTION_REPORTS {
        h.push(decryption_failed(
            DecryptFailure::WrongKey,
            Some(&format!("k{i}")),
        ));
    }
    assert_eq!(when(h, report(DecryptFailure::WrongKey, Some("new"))), NONE);
}

#[test]
fn given_a_purged_message_when_a_decryption_failure_is_reported_then_it_is_refused() {
    let mut h = given(Status::Displayed);
    h.push(MessageEvent::Purged(Purged { at: LATER }));
    assert_eq!(
        when(h, report(DecryptFailure::Malformed, None)),
        Err(MessageError::Purged)
    );
}

#[test]
fn a_decryption_failure_leaves_the_status_and_is_legal_exactly_where_decide_records_it() {
    use crate::order::check_type;
    for s in ALL {
        let mut m = Message::default();
        for e in given(s) {
            cqrs_es::Aggregate::apply(&mut m, e);
        }
        let decided = m.decide(
            report(DecryptFailure::Tampered, None),
            &RetryPolicy::default(),
        );
        let legal = check_type(s, EventType::DecryptionFailed);
        assert_eq!(decided.is_ok(), legal.is_ok(), "given status {s}");
        if let Ok(events) = decided {
            assert_eq!(legal, Ok(s));
            for e in events {
                cqrs_es::Aggregate::apply(&mut m, e);
            }
            assert_eq!(m.status, s);
        }
    }
}

// ---------------------------------------------------------------- state helpers and codec

#[test]
fn a_message_is_due_only_while_awaiting_submission_and_after_not_before() {
    let mut m = Message::default();
    for e in given(Status::RetryScheduled) {
        cqrs_es::Aggregate::apply(&mut m, e);
    }
    let not_before = m.not_before.unwrap();
    assert!(!m.is_due(not_before - Duration::from_millis(1)));
    assert!(m.is_due(not_before));
    let mut acked_msg = Message::default();
    for e in given(Status::CarrierAcked) {
        cqrs_es::Aggregate::apply(&mut acked_msg, e);
    }
    assert!(!acked_msg.is_due(LATER));
}

#[test]
fn status_classes() {
    for s in ALL {
        let terminal = matches!(
            s,
            Status::Failed | Status::FallbackTriggered | Status::Expired | Status::Cancelled
        );
        assert_eq!(s.is_terminal_failure(), terminal, "{s}");
        assert_eq!(
            s.is_settled(),
            terminal || matches!(s, Status::Delivered | Status::Displayed),
            "{s}"
        );
        assert_eq!(
            s.awaiting_submission(),
            matches!(s, Status::Queued | Status::RetryScheduled),
            "{s}"
        );
        assert_eq!(
            serde_json::to_value(s).unwrap(),
            serde_json::Value::String(s.as_str().into())
        );
    }
}

#[test]
fn every_event_round_trips_through_its_stored_body() {
    let mut all = vec![];
    for s in ALL {
        all.extend(given(s));
    }
    all.push(queued(2, LATER));
    all.push(held("h1"));
    all.push(MessageEvent::Released(Released {
        hold_id: "h1".into(),
        at: LATER,
    }));
    all.push(MessageEvent::Purged(Purged { at: LATER }));
    all.push(decryption_failed(DecryptFailure::WrongKey, Some("k1")));
    all.push(decryption_failed(DecryptFailure::Tampered, None));
    let mut types: Vec<EventType> = all.iter().map(|e| e.event_type()).collect();
    types.sort_unstable();
    types.dedup();
    let mut expected = EventType::ALL.to_vec();
    expected.sort_unstable();
    assert_eq!(types, expected, "the fixtures cover every event type");
    for e in all {
        let body = e.to_body().unwrap();
        let version = e.event_type().version().to_string();
        let back = MessageEvent::from_body(e.event_type(), &version, &body).unwrap();
        assert_eq!(back, e);
    }
}

/// A current-version body is decoded straight from its bytes; older ones through a JSON tree
/// (for the upcasts). Both must read every body the same way, good or bad.
#[test]
fn from_body_agrees_with_the_tree_path() {
    let tree = |t: EventType, body: &[u8]| -> Option<MessageEvent> {
        let value: serde_json::Value = serde_json::from_slice(body).ok()?;
        serde_json::from_value(serde_json::json!({ t.as_str(): value })).ok()
    };
    let mut all = vec![];
    for s in ALL {
        all.extend(given(s));
    }
    all.push(decryption_failed(DecryptFailure::WrongKey, Some("k1")));
    for e in all {
        let t = e.event_type();
        let version = t.version().to_string();
        let body = e.to_body().unwrap();
        let direct = MessageEvent::from_body(t, &version, &body).ok();
        assert_eq!(direct, tree(t, &body), "{t}");
        assert_eq!(direct, Some(e.clone()), "{t}");
        // Damaged bodies: both refuse them, or both read the same event.
        let mut extra: serde_json::Value = serde_json::from_slice(&body).unwrap();
        if let Some(obj) = extra.as_object_mut() {
            obj.insert("unexpected".into(), serde_json::json!(1));
        }
        let extra = serde_json::to_vec(&extra).unwrap();
        for damaged in [
            &body[..body.len() - 1],
            b"[]".as_slice(),
            b"{}",
            b"null",
            &extra,
        ] {
            assert_eq!(
                MessageEvent::from_body(t, &version, damaged).ok(),
                tree(t, damaged),
                "{t}: {}",
                String::from_utf8_lossy(damaged)
            );
        }
    }
}

#[test]
fn decoding_refuses_unknown_types_versions_and_bodies() {
    assert!("teleported".parse::<EventType>().is_err());
    for version in ["9", "0", "", "x"] {
        assert!(
            matches!(
                MessageEvent::from_body(EventType::Queued, version, b"{}"),
                Err(DecodeError::UnknownVersion { .. })
            ),
            "{version:?}"
        );
    }
    assert!(matches!(
        MessageEvent::from_body(EventType::Accepted, "3", b"{}"),
        Err(DecodeError::UnknownVersion { .. })
    ));
    assert!(matches!(
        MessageEvent::from_body(EventType::Queued, "1", b"{\"attempt\":\"x\"}"),
        Err(DecodeError::Body { .. })
    ));
}

#[test]
fn every_event_type_parses_from_its_name_and_has_a_version() {
    for &t in EventType::ALL {
        assert_eq!(t.as_str().parse::<EventType>(), Ok(t));
        assert!(t.versions().contains(&t.version()));
    }
    assert_eq!(EventType::Accepted.version(), 2);
}

#[test]
fn accepted_v1_is_upcast_to_v2_without_a_request_digest() {
    let MessageEvent::Accepted(mut current) = accepted(true) else {
        unreachable!()
    };
    current.request_sha256 = None;
    let body = serde_json::to_vec(&current).unwrap();
    let back = MessageEvent::from_body(EventType::Accepted, "1", &body).unwrap();
    assert_eq!(back, MessageEvent::Accepted(current));
}

#[test]
fn accepted_v0_is_upcast_to_the_current_version() {
    let MessageEvent::Accepted(mut current) = accepted(true) else {
        unreachable!()
    };
    // v0 had no request digest; the upcast event has none either.
    current.request_sha256 = None;
    let mut v0 = serde_json::to_value(&current).unwrap();
    let obj = v0.as_object_mut().unwrap();
    obj.remove("expires_at");
    obj.remove("retry_until");
    obj.remove("request_sha256");
    obj.insert("ttl_seconds".into(), 3600.into());
    let body = serde_json::to_vec(&v0).unwrap();
    let back = MessageEvent::from_body(EventType::Accepted, "0", &body).unwrap();
    assert_eq!(back, MessageEvent::Accepted(current.clone()));

    // Without ttl_seconds, v0 used the 72 h default for both deadlines.
    v0.as_object_mut().unwrap().remove("ttl_seconds");
    let body = serde_json::to_vec(&v0).unwrap();
    let MessageEvent::Accepted(a) =
        MessageEvent::from_body(EventType::Accepted, "0", &body).unwrap()
    else {
        unreachable!()
    };
    assert_eq!(a.expires_at, T0 + Duration::from_secs(72 * 3600));
    assert_eq!(a.retry_until, a.expires_at);

    // A v0 body without accepted_at cannot be upcast.
    assert!(MessageEvent::from_body(EventType::Accepted, "0", b"{}").is_err());
}

#[test]
fn errors_have_stable_codes_and_messages_without_secrets() {
    let all = [
        MessageError::IdempotencyConflict,
        MessageError::InvalidTtl { max: 1 },
        MessageError::NotAccepted,
        MessageError::AlreadyFinal(Status::Failed),
        MessageError::AlreadySubmitted(Status::CarrierAcked),
        MessageError::AttemptOutOfOrder {
            expected: 1,
            got: 2,
        },
        MessageError::NotYetAcked,
        MessageError::NotYetExpired {
            expires_at: "x".into(),
        },
        MessageError::NoFallbackConfigured,
        MessageError::NotHeld("h".into()),
        MessageError::UnderLegalHold,
        MessageError::NotSettled(Status::Queued),
        MessageError::Purged,
        MessageError::NotHandedOver(Status::Queued),
    ];
    let mut codes: Vec<&str> = all.iter().map(MessageError::code).collect();
    assert_eq!(codes[0], "idempotency_conflict");
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(codes.len(), all.len(), "codes are distinct");
    for e in all {
        assert!(!e.to_string().is_empty());
    }
}
