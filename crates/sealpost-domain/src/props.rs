//! Property tests: how a message ends depends on its configuration, the carrier's behaviour and
//! the retry policy, never on the order in which the aggregate hears about things.
//!
//! A small discrete-event simulation plays what reaches the aggregate in production, each
//! command stamped with the instant it is processed (as the roles stamp them):
//!
//! - the delivery worker's attempts, at the `not_before` the aggregate chose, never at or after
//!   `expires_at` (the worker's own rule); a crash loses an answer before it is recorded and the
//!   job comes back after `ack_wait` (30 s), resubmitting the same attempt; an answer may be
//!   recorded up to 2 s after the submission, so a timer can come in between; a second worker
//!   racing on the same attempt records it twice;
//! - the carrier's receipts after an ack, duplicated, out of order, and possibly before the ack
//!   is recorded (refused as `not_yet_acked` and retried, as the receipts role does);
//! - the expiry timer: once or twice at or after `expires_at` (up to two minutes late), and an
//!   early one that must be refused;
//! - legal holds and releases at any time.
//!
//! The expected end is computed from the case alone ([`expected`]). The model's assumptions,
//! which are the scope of the claim: a carrier that accepts, refuses or reports "not capable"
//! answers well within the TTL and retry window (those cases get a TTL of an hour or more, while
//! all delays together stay under ten minutes); a carrier that never accepts (always transient,
//! always throttled) may be outrun by any delay, including past the TTL, which is the race the
//! expiry rule closes; and a case where reaching `max_attempts` and reaching the deadline are
//! close enough for the delays to reorder them is discarded (`prop_assume!`), because then the
//! number of attempts made really differs. Cancel races are a property of their own below.
//!
//! Each run also checks that the events emitted form a history `sealpost replay --verify`'s order
//! rules accept, and that every command that wrote events writes nothing when applied again.

use std::collections::BinaryHeap;
use std::time::Duration;

use cqrs_es::Aggregate as _;
use proptest::prelude::*;
use time::macros::datetime;
use time::OffsetDateTime;

use crate::commands::*;
use crate::events::*;
use crate::ids::*;
use crate::order;
use crate::policy::{RetryPolicy, RetryWindows};
use crate::{Message, MessageError, Status};

const T0: OffsetDateTime = datetime!(2026-01-01 00:00 UTC);
/// How long a crashed worker's job waits before it is redelivered.
const ACK_WAIT_MS: i64 = 30_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Receipts {
    None,
    Delivered,
    Displayed,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// Acks the first attempt.
    Accepts(Receipts),
    /// 503 for the first `failures` attempts, then acks.
    TransientThenAccepts { failures: u32, receipts: Receipts },
    /// 429 with Retry-After for the first `failures` attempts, then acks.
    ThrottledThenAccepts {
        failures: u32,
        retry_after_s: u64,
        receipts: Receipts,
    },
    /// 503 on every attempt.
    AlwaysTransient,
    /// 429 with Retry-After on every attempt.
    AlwaysThrottled { retry_after_s: u64 },
    /// RBM's 404.
    NotCapable,
    /// A 400.
    Permanent,
}

impl Behaviour {
    /// The carrier's answer to attempt `n` (1-based); a resubmission of an attempt it accepted is
    /// answered "already accepted", which is the same ack.
    fn answer(self, n: u32) -> CarrierOutcome {
        let ack = || CarrierOutcome::Acked {
            carrier_message_id: "carrier-mid".into(),
        };
        let transient = || CarrierOutcome::Transient {
            code: "503".into(),
            retry_after: None,
        };
        let throttled = |s| CarrierOutcome::Throttled {
            code: "429".into(),
            retry_after: Some(Duration::from_secs(s)),
        };
        match self {
            Behaviour::Accepts(_) => ack(),
            Behaviour::TransientThenAccepts { failures, .. } if n <= failures => transient(),
            Behaviour::TransientThenAccepts { .. } => ack(),
            Behaviour::ThrottledThenAccepts {
                failures,
                retry_after_s,
                ..
            } if n <= failures => throttled(retry_after_s),
            Behaviour::ThrottledThenAccepts { .. } => ack(),
            Behaviour::AlwaysTransient => transient(),
            Behaviour::AlwaysThrottled { retry_after_s } => throttled(retry_after_s),
            Behaviour::NotCapable => CarrierOutcome::NotRcsCapable,
            Behaviour::Permanent => CarrierOutcome::Permanent { code: "400".into() },
        }
    }

    fn receipts(self) -> Receipts {
        match self {
            Behaviour::Accepts(r)
            | Behaviour::TransientThenAccepts { receipts: r, .. }
            | Behaviour::ThrottledThenAccepts { receipts: r, .. } => r,
            _ => Receipts::None,
        }
    }

    fn never_accepts(self) -> bool {
        matches!(
            self,
            Behaviour::AlwaysTransient | Behaviour::AlwaysThrottled { .. }
        )
    }
}

/// A message configuration, the carrier, the policy, and the dice of the timing.
#[derive(Debug, Clone)]
struct Case {
    ttl_s: u64,
    window_s: u64,
    fallback: bool,
    message_type: MessageType,
    max_attempts: u32,
    behaviour: Behaviour,
    /// Every timing choice of the run, consumed in order (proptest shrinks them).
    dice: Vec<u32>,
}

impl Case {
    fn policy(&self) -> RetryPolicy {
        let w = Duration::from_secs(self.window_s);
        RetryPolicy {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
            max_attempts: self.max_attempts,
            windows: RetryWindows {
                transactional: w,
                promotional: w,
            },
            ..RetryPolicy::default()
        }
    }

    fn accept(&self) -> AcceptMessage {
        AcceptMessage {
            tenant_id: TenantId::new("acme-corp").unwrap(),
            idempotency_key: "prop".into(),
            recipient: Recipient::new("+15551234567").unwrap(),
            payload_ref: "s3://sealpost/tenants/acme-corp/p.enc".into(),
            payload_sha256: Sha256Hex::of(b"ciphertext"),
            payload_size: Some(10),
            encryption: EncryptionMetadata {
                mls_version: "1".into(),
                cipher: "XChaCha20-Poly1305".into(),
                key_id: "k1".into(),
            },
            message_type: self.message_type,
            correlation_id: None,
            ttl: Some(Duration::from_secs(self.ttl_s)),
            fallback: self.fallback.then(|| Fallback {
                channel: FallbackChannel::Sms,
                notice_template: "secure_message_waiting".into(),
            }),
            at: T0,
        }
    }
}

/// How a run ended: the status, the reason it records, and whether a fallback notice is owed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct End {
    status: Status,
    reason: Option<EndReason>,
}

impl End {
    fn notice_owed(&self) -> bool {
        self.status == Status::FallbackTriggered
    }
}

/// Ending undelivered for `reason`: the crate docs' table.
fn undelivered(case: &Case, reason: EndReason) -> End {
    let status = match (case.fallback, reason) {
        (_, EndReason::PermanentError) => Status::Failed,
        (true, _) => Status::FallbackTriggered,
        (false, EndReason::Expired) => Status::Expired,
        (false, _) => Status::Failed,
    };
    End {
        status,
        reason: Some(reason),
    }
}

/// Bounds on when attempt `max_attempts` fails, from the backoff's jitter range (0.5 to 1.5
/// times nominal, at least Retry-After) plus every delay the run may add.
fn time_to_max_attempts_ms(case: &Case, p: &RetryPolicy) -> (i64, i64) {
    let floor = match case.behaviour {
        Behaviour::AlwaysThrottled { retry_after_s } => retry_after_s as i64 * 1000,
        _ => 0,
    };
    let (mut lo, mut hi) = (0i64, 0i64);
    for n in 1..case.max_attempts {
        let nominal = p
            .base
            .saturating_mul(1u32 << (n - 1).min(20))
            .min(p.max)
            .as_millis() as i64;
        lo += (nominal / 2).max(floor);
        hi += (nominal * 3 / 2).max(floor);
    }
    (lo, hi + MAX_DELAYS_MS)
}

/// The most all delays of one run add up to: crashes, recording latency, a late timer.
const MAX_DELAYS_MS: i64 = MAX_CRASHES as i64 * ACK_WAIT_MS + 64 * 2_000 + 240_000;
const MAX_CRASHES: u32 = 4;

/// The end a case must reach, whatever the timing; `None` when reaching `max_attempts` and the
/// deadline are too close to call (the case is discarded).
fn expected(case: &Case) -> Option<End> {
    let p = case.policy();
    let ttl = case.ttl_s as i64 * 1000;
    let retry_until = ttl.min(case.window_s as i64 * 1000);
    let settled = |r: Receipts| {
        Some(match r {
            Receipts::Displayed | Receipts::Both => End {
                status: Status::Displayed,
                reason: None,
            },
            Receipts::Delivered => End {
                status: Status::Delivered,
                reason: None,
            },
            // Acked, never delivered: the TTL ends it (revoked at the carrier).
            Receipts::None => undelivered(case, EndReason::Expired),
        })
    };
    match case.behaviour {
        Behaviour::NotCapable => Some(undelivered(case, EndReason::NotCapable)),
        Behaviour::Permanent => Some(undelivered(case, EndReason::PermanentError)),
        Behaviour::Accepts(r) => settled(r),
        Behaviour::TransientThenAccepts { failures, receipts }
        | Behaviour::ThrottledThenAccepts {
            failures, receipts, ..
        } => {
            if failures >= case.max_attempts {
                Some(undelivered(case, EndReason::MaxAttempts))
            } else {
                settled(receipts)
            }
        }
        Behaviour::AlwaysTransient | Behaviour::AlwaysThrottled { .. } => {
            let (lo, hi) = time_to_max_attempts_ms(case, &p);
            if hi < retry_until {
                Some(undelivered(case, EndReason::MaxAttempts))
            } else if lo <= retry_until {
                None
            } else if retry_until < ttl {
                Some(undelivered(case, EndReason::RetryWindowExhausted))
            } else {
                Some(undelivered(case, EndReason::Expired))
            }
        }
    }
}

/// Something that reaches the aggregate (or the worker) at an instant.
#[derive(Debug, Clone)]
enum Action {
    /// The delivery job is handed to a worker.
    Job,
    /// A command reaches the aggregate; `retry` re-schedules it when refused as retryable.
    Command(MessageCommand),
    /// The expiry timer fires: the expiry role revokes where needed and sends `expire`.
    Timer,
    /// An early expiry command, which must be refused.
    EarlyExpire,
}

#[derive(Debug)]
struct Scheduled {
    at_ms: i64,
    seq: u64,
    action: Action,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at_ms, self.seq) == (o.at_ms, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    // A min-heap on (instant, order of scheduling).
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at_ms, o.seq).cmp(&(self.at_ms, self.seq))
    }
}

/// One simulated run.
struct Sim<'a> {
    case: &'a Case,
    policy: RetryPolicy,
    state: Message,
    queue: BinaryHeap<Scheduled>,
    seq: u64,
    dice: std::iter::Cycle<std::slice::Iter<'a, u32>>,
    crashes: u32,
    receipts_scheduled: bool,
    history: Vec<MessageEvent>,
    failures: Vec<String>,
}

fn at(ms: i64) -> OffsetDateTime {
    T0 + time::Duration::milliseconds(ms)
}

impl<'a> Sim<'a> {
    fn new(case: &'a Case) -> Self {
        Sim {
            case,
            policy: case.policy(),
            state: Message::default(),
            queue: BinaryHeap::new(),
            seq: 0,
            dice: case.dice.iter().cycle(),
            crashes: 0,
            receipts_scheduled: false,
            history: Vec::new(),
            failures: Vec::new(),
        }
    }

    /// A timing choice in `0..n`.
    fn roll(&mut self, n: u32) -> u32 {
        self.dice.next().copied().unwrap_or(0) % n.max(1)
    }

    fn schedule(&mut self, at_ms: i64, action: Action) {
        self.seq += 1;
        self.queue.push(Scheduled {
            at_ms,
            seq: self.seq,
            action,
        });
    }

    fn expires_ms(&self) -> i64 {
        self.case.ttl_s as i64 * 1000
    }

    /// Applies `cmd`, checks the order rules and that a second application writes nothing.
    fn apply(&mut self, cmd: MessageCommand) -> Result<Vec<MessageEvent>, MessageError> {
        let events = self.state.decide(cmd.clone(), &self.policy)?;
        for e in &events {
            match order::check(self.state.status, e) {
                Ok(_) => {}
                Err(err) => self
                    .failures
                    .push(format!("{err} (order rules refuse {:?})", e.event_type())),
            }
            self.state.apply(e.clone());
            self.history.push(e.clone());
        }
        if !events.is_empty() {
            if let Ok(again) = self.state.decide(cmd.clone(), &self.policy) {
                if !again.is_empty() {
                    self.failures.push(format!(
                        "{cmd:?} applied twice wrote {again:?} the second time"
                    ));
                }
            }
        }
        Ok(events)
    }

    fn run(mut self) -> Result<(End, Vec<MessageEvent>), String> {
        let accept = self.case.accept();
        self.apply(MessageCommand::Accept(Box::new(accept)))
            .map_err(|e| format!("accept refused: {e}"))?;
        let expires = self.expires_ms();
        self.schedule(0, Action::Job);
        // The timer: on time or up to two minutes late, sometimes twice; an early one sometimes.
        let late = self.roll(120_000) as i64;
        self.schedule(expires + late, Action::Timer);
        if self.roll(2) == 0 {
            let again = self.roll(60_000) as i64;
            self.schedule(expires + late + again, Action::Timer);
        }
        if self.roll(3) == 0 && expires > 1 {
            let early = self.roll(expires.min(i64::from(u32::MAX)) as u32) as i64;
            self.schedule(early, Action::EarlyExpire);
        }
        // Holds and releases anywhere.
        for i in 0..self.roll(3) {
            let id = format!("hold-{i}");
            let h = self.roll(600_000) as i64;
            let r = h + self.roll(600_000) as i64;
            self.schedule(
                h,
                Action::Command(MessageCommand::Hold {
                    hold_id: id.clone(),
                    reason: "case".into(),
                    at: at(h),
                }),
            );
            self.schedule(
                r,
                Action::Command(MessageCommand::Release {
                    hold_id: id,
                    at: at(r),
                }),
            );
        }
        let mut steps = 0;
        while let Some(Scheduled { at_ms, action, .. }) = self.queue.pop() {
            steps += 1;
            if steps > 10_000 {
                return Err("the run did not settle in 10,000 steps".into());
            }
            self.step(at_ms, action);
        }
        if !self.failures.is_empty() {
            return Err(self.failures.join("; "));
        }
        let reason = self.history.iter().rev().find_map(|e| match e {
            MessageEvent::Failed(f) => Some(f.reason),
            MessageEvent::FallbackTriggered(f) => Some(f.reason),
            MessageEvent::Expired(_) => Some(EndReason::Expired),
            _ => None,
        });
        Ok((
            End {
                status: self.state.status,
                reason,
            },
            self.history,
        ))
    }

    fn step(&mut self, now: i64, action: Action) {
        match action {
            Action::Job => self.job(now),
            Action::Command(cmd) => self.command(now, cmd),
            Action::Timer => {
                // The expiry role's revoke: an acked copy is taken back; a failed attempt left
                // nothing at the carrier in this model.
                let revoke = if self.state.status == Status::CarrierAcked {
                    RevokeOutcome::Revoked
                } else {
                    RevokeOutcome::NotSubmitted
                };
                self.command(
                    now,
                    MessageCommand::Expire {
                        revoke,
                        at: at(now),
                    },
                );
            }
            Action::EarlyExpire => {
                let cmd = MessageCommand::Expire {
                    revoke: RevokeOutcome::NotSubmitted,
                    at: at(now),
                };
                match self.apply(cmd) {
                    Err(MessageError::NotYetExpired { .. }) => {}
                    other => self
                        .failures
                        .push(format!("an early expiry was not refused: {other:?}")),
                }
            }
        }
    }

    fn command(&mut self, now: i64, cmd: MessageCommand) {
        let receipt = matches!(cmd, MessageCommand::RecordReceipt { .. });
        match self.apply(cmd.clone()) {
            Ok(_) => {
                if self.state.status == Status::CarrierAcked && !self.receipts_scheduled {
                    self.receipts_scheduled = true;
                    self.schedule_receipts(now);
                }
            }
            // The receipts role retries a receipt that came before the ack was recorded.
            Err(MessageError::NotYetAcked) if receipt => {
                let later = now + 100 + self.roll(2_000) as i64;
                let cmd = restamp(cmd, later);
                self.schedule(later, Action::Command(cmd));
            }
            // Refusals the roles log and drop (already final, not held, ...).
            Err(_) => {}
        }
    }

    /// The delivery worker's handling of its job.
    fn job(&mut self, now: i64) {
        if !self.state.status.awaiting_submission() || now >= self.expires_ms() {
            return; // acked: nothing to do, or the expiry ends it
        }
        let nb = self
            .state
            .not_before
            .map_or(now, |t| (t - T0).whole_milliseconds() as i64);
        if nb > now {
            self.schedule(nb, Action::Job); // NAK until not_before
            return;
        }
        let attempt = self.state.next_attempt;
        let outcome = self.case.behaviour.answer(attempt);
        // A crash before the answer is recorded: the job comes back after ack_wait and
        // resubmits the same attempt.
        if self.crashes < MAX_CRASHES && self.roll(4) == 0 {
            self.crashes += 1;
            self.schedule(now + ACK_WAIT_MS, Action::Job);
            return;
        }
        let recorded = now + self.roll(2_000) as i64;
        let cmd = MessageCommand::RecordCarrierResult {
            attempt,
            carrier: "rbm".into(),
            outcome,
            at: at(recorded),
        };
        // A second worker racing on the same attempt records it again, later.
        if self.roll(5) == 0 {
            let dup = recorded + self.roll(5_000) as i64;
            self.schedule(dup, Action::Command(restamp(cmd.clone(), dup)));
        }
        self.schedule(recorded, Action::Command(cmd));
        // The worker NAKs its job until the next attempt is due; after a crash at that point
        // the job comes back after ack_wait instead.
        let back = if self.crashes < MAX_CRASHES && self.roll(6) == 0 {
            self.crashes += 1;
            ACK_WAIT_MS
        } else {
            0
        };
        self.schedule(recorded + 1 + back, Action::Job);
    }

    /// The carrier's receipts after its ack: duplicated, in either order, some of them early.
    fn schedule_receipts(&mut self, now: i64) {
        let mut receipts = Vec::new();
        match self.case.behaviour.receipts() {
            Receipts::None => {}
            Receipts::Delivered => receipts.push(("dlv", ReceiptKind::Delivered)),
            Receipts::Displayed => receipts.push(("dsp", ReceiptKind::Displayed)),
            Receipts::Both => {
                receipts.push(("dlv", ReceiptKind::Delivered));
                receipts.push(("dsp", ReceiptKind::Displayed));
            }
        }
        for (id, kind) in receipts {
            // Up to a minute after the ack, and sometimes 2 s before it is recorded.
            let t = (now - 2_000 + self.roll(62_000) as i64).max(0);
            let copies = 1 + self.roll(3);
            for c in 0..copies {
                let ti = t + c as i64 * self.roll(10_000) as i64;
                self.schedule(
                    ti,
                    Action::Command(MessageCommand::RecordReceipt {
                        receipt_id: id.into(),
                        kind,
                        at: at(ti),
                    }),
                );
            }
        }
    }
}

/// The same command, stamped with the instant it is processed at.
fn restamp(cmd: MessageCommand, at_ms: i64) -> MessageCommand {
    match cmd {
        MessageCommand::RecordReceipt {
            receipt_id, kind, ..
        } => MessageCommand::RecordReceipt {
            receipt_id,
            kind,
            at: at(at_ms),
        },
        MessageCommand::RecordCarrierResult {
            attempt,
            carrier,
            outcome,
            ..
        } => MessageCommand::RecordCarrierResult {
            attempt,
            carrier,
            outcome,
            at: at(at_ms),
        },
        other => other,
    }
}

fn receipts() -> impl Strategy<Value = Receipts> {
    prop_oneof![
        Just(Receipts::None),
        Just(Receipts::Delivered),
        Just(Receipts::Displayed),
        Just(Receipts::Both),
    ]
}

fn behaviour() -> impl Strategy<Value = Behaviour> {
    prop_oneof![
        receipts().prop_map(Behaviour::Accepts),
        (1u32..4, receipts()).prop_map(|(failures, receipts)| {
            Behaviour::TransientThenAccepts { failures, receipts }
        }),
        (1u32..3, 1u64..30, receipts()).prop_map(|(failures, retry_after_s, receipts)| {
            Behaviour::ThrottledThenAccepts {
                failures,
                retry_after_s,
                receipts,
            }
        }),
        Just(Behaviour::AlwaysTransient),
        (1u64..7200).prop_map(|retry_after_s| Behaviour::AlwaysThrottled { retry_after_s }),
        Just(Behaviour::NotCapable),
        Just(Behaviour::Permanent),
    ]
}

prop_compose! {
    fn case()(
        behaviour in behaviour(),
        short_ttl_s in 2u64..7_200,
        long_ttl_s in 3_600u64..36_000,
        short_window_s in 2u64..14_400,
        window_gap_s in 1u64..90,
        window_shape in 0u8..3,
        long_window_s in 3_600u64..72_000,
        fallback in any::<bool>(),
        promotional in any::<bool>(),
        max_attempts in prop_oneof![2u32..8, Just(1_000u32)],
        dice in proptest::collection::vec(any::<u32>(), 64),
    ) -> Case {
        // A carrier that answers decisively does so well within a TTL of an hour or more; one
        // that never accepts meets any TTL and window, down to the two seconds of the report.
        // The window is sometimes the TTL's, sometimes closes just before it (where a late job
        // meets the expiry first), sometimes unrelated.
        let (ttl_s, window_s) = if behaviour.never_accepts() {
            let window_s = match window_shape {
                0 => short_ttl_s,
                1 => short_ttl_s.saturating_sub(window_gap_s).max(1),
                _ => short_window_s,
            };
            (short_ttl_s, window_s)
        } else {
            (long_ttl_s, long_window_s)
        };
        Case {
            ttl_s,
            window_s,
            fallback,
            message_type: if promotional { MessageType::Promotional } else { MessageType::Transactional },
            max_attempts,
            behaviour,
            dice,
        }
    }
}

fn check(case: &Case) -> Result<(), TestCaseError> {
    let Some(want) = expected(case) else {
        return Err(TestCaseError::reject(
            "max_attempts and the deadline too close to call",
        ));
    };
    let (got, history) = Sim::new(case).run().map_err(TestCaseError::fail)?;
    prop_assert_eq!(
        &got,
        &want,
        "history: {:?}",
        history
            .iter()
            .map(|e| e.event_type().as_str())
            .collect::<Vec<_>>()
    );
    prop_assert_eq!(got.notice_owed(), want.notice_owed());
    Ok(())
}

proptest! {
    // 2,000 cases per run (PROPTEST_CASES raises it for a longer search).
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000),
        max_global_rejects: 20_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_end_depends_on_the_case_not_on_the_interleaving(case in case()) {
        check(&case)?;
    }

    /// A cancel either wins (the message was still waiting for a submission: nothing acked and
    /// nothing ended before it, and nothing happens to it after) or is refused and changes
    /// nothing; it never leaves a third outcome.
    #[test]
    fn a_cancel_wins_while_the_message_waits_for_a_submission_or_changes_nothing(
        case in case(),
        cancel_at_ms in 0i64..120_000,
    ) {
        let Some(want) = expected(&case) else {
            return Err(TestCaseError::reject("too close to call"));
        };
        let mut sim = Sim::new(&case);
        sim.schedule(cancel_at_ms, Action::Command(MessageCommand::Cancel { at: at(cancel_at_ms) }));
        let (got, history) = sim.run().map_err(TestCaseError::fail)?;
        let cancelled = history.iter().position(|e| matches!(e, MessageEvent::Cancelled(_)));
        match cancelled {
            Some(c) => {
                let before = &history[..c];
                prop_assert!(
                    !before.iter().any(|e| matches!(e, MessageEvent::CarrierAcked(_))
                        || Status::after(e.event_type()).is_some_and(Status::is_terminal_failure)),
                    "cancelled after an ack or an end"
                );
                prop_assert_eq!(got.status, Status::Cancelled);
                prop_assert!(history[c + 1..].iter().all(|e| Status::after(e.event_type()).is_none()),
                    "something moved the message after its cancel");
            }
            None => prop_assert_eq!(got, want),
        }
    }
}

/// The report's scenario, fixed: a 4 s TTL, a carrier that always answers 503, an SMS fallback,
/// and the job redelivered after `ack_wait` so the expiry timer comes before the attempt that
/// would have ended the retries. Before the rule it ended `expired` with no notice.
#[test]
fn regression_a_job_redelivered_after_the_ttl_still_falls_back() {
    for dice in [vec![0u32; 64], vec![3u32; 64], vec![1u32; 64]] {
        let case = Case {
            ttl_s: 4,
            window_s: 72 * 3600,
            fallback: true,
            message_type: MessageType::Transactional,
            max_attempts: 30,
            behaviour: Behaviour::AlwaysTransient,
            dice,
        };
        let (end, history) = Sim::new(&case).run().unwrap();
        assert_eq!(
            end,
            End {
                status: Status::FallbackTriggered,
                reason: Some(EndReason::Expired)
            },
            "{history:?}"
        );
        assert_eq!(
            history
                .iter()
                .filter(|e| matches!(e, MessageEvent::FallbackTriggered(_)))
                .count(),
            1
        );
    }
}

/// Found by the property while the expiry rule was being written: a window that closes a second
/// before the TTL, and a crash that keeps the job away past both. The expiry must end it as the
/// policy would have (`retry_window_exhausted`), not as `expired`.
#[test]
fn regression_a_window_closing_before_the_ttl_names_the_window_even_when_the_timer_ends_it() {
    let case = Case {
        ttl_s: 2,
        window_s: 1,
        fallback: false,
        message_type: MessageType::Transactional,
        max_attempts: 3,
        behaviour: Behaviour::AlwaysTransient,
        dice: vec![0; 64],
    };
    let (end, history) = Sim::new(&case).run().unwrap();
    assert_eq!(
        history.iter().map(|e| e.event_type()).collect::<Vec<_>>(),
        [EventType::Accepted, EventType::Failed],
        "the crash kept every attempt away; the timer ended it"
    );
    assert_eq!(
        end,
        End {
            status: Status::Failed,
            reason: Some(EndReason::RetryWindowExhausted)
        }
    );
}
