//! Histories generated from the real aggregate, for property tests here and in other crates
//! (feature `testing`, off by default: production builds carry no proptest).
//!
//! A small discrete-event simulation plays what reaches the aggregate in production, each
//! command stamped with the instant it is processed (as the roles stamp them), and records what
//! [`Message::decide`] wrote for each command:
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
//! - legal holds and releases at any time;
//! - an operator's commands ([`Operator`]): a redrive (`enqueue`, a second delivery job that
//!   keeps the aggregate's `not_before`), purges (refused until the message is settled and no
//!   hold is active), a hold and release after everything else, and, in [`case_with_operator`]
//!   only because they change how a message ends, a cancel and a requested fallback.
//!
//! Each run checks that every event it writes is one `sealpost replay --verify`'s order rules
//! ([`crate::order`]) accept after the status before it, and that every command that wrote
//! events writes nothing when applied again; a run that breaks either is an `Err`.
//!
//! [`expected`] is the end a [`case`] must reach whatever the timing (the property in
//! `props.rs`); [`reachable`] tells whether the aggregate can write a given event list at all,
//! an oracle for damaged histories.

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

/// The instant every generated message is accepted at.
pub const T0: OffsetDateTime = datetime!(2026-01-01 00:00 UTC);
/// How long a crashed worker's job waits before it is redelivered.
pub const ACK_WAIT_MS: i64 = 30_000;

/// Which receipts a carrier sends after its ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipts {
    None,
    Delivered,
    Displayed,
    Both,
}

/// How the carrier answers the submissions of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
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
    pub fn answer(self, n: u32) -> CarrierOutcome {
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

    /// The receipts sent after an ack.
    pub fn receipts(self) -> Receipts {
        match self {
            Behaviour::Accepts(r)
            | Behaviour::TransientThenAccepts { receipts: r, .. }
            | Behaviour::ThrottledThenAccepts { receipts: r, .. } => r,
            _ => Receipts::None,
        }
    }

    /// Never acks: the retries run until the policy or the expiry ends them.
    pub fn never_accepts(self) -> bool {
        matches!(
            self,
            Behaviour::AlwaysTransient | Behaviour::AlwaysThrottled { .. }
        )
    }
}

/// What an operator (or the retention job) sends, each at an instant in milliseconds after
/// [`T0`]; refused commands are dropped, as the roles drop them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Operator {
    /// A redrive (`enqueue`): a fresh delivery job that keeps the aggregate's `not_before`.
    pub redrive_at_ms: Option<i64>,
    /// A purge, refused unless the message is settled and not held.
    pub purge_at_ms: Option<i64>,
    /// Once everything else has happened: a hold and its release.
    pub late_hold: bool,
    /// Once everything else has happened (after the late hold): a purge.
    pub final_purge: bool,
    /// A cancel (changes the end: only in [`case_with_operator`]).
    pub cancel_at_ms: Option<i64>,
    /// A requested fallback (changes the end: only in [`case_with_operator`]).
    pub fallback_at_ms: Option<i64>,
}

/// A message configuration, the carrier, the policy, the operator, and the dice of the timing.
#[derive(Debug, Clone)]
pub struct Case {
    pub tenant: TenantId,
    pub idempotency_key: String,
    pub ttl_s: u64,
    pub window_s: u64,
    pub fallback: bool,
    pub message_type: MessageType,
    pub max_attempts: u32,
    pub behaviour: Behaviour,
    pub operator: Operator,
    /// Every timing choice of the run, consumed in order (proptest shrinks them).
    pub dice: Vec<u32>,
}

impl Case {
    /// The same case for another message: the message id (and so the retry jitter, which
    /// hashes it) follows from the tenant and the idempotency key.
    pub fn for_message(mut self, tenant: TenantId, idempotency_key: impl Into<String>) -> Self {
        self.tenant = tenant;
        self.idempotency_key = idempotency_key.into();
        self
    }

    /// The retry policy of the run.
    pub fn policy(&self) -> RetryPolicy {
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

    /// The send request, accepted at [`T0`].
    pub fn accept(&self) -> AcceptMessage {
        AcceptMessage {
            tenant_id: self.tenant.clone(),
            idempotency_key: self.idempotency_key.clone(),
            recipient: Recipient::new("+15551234567").expect("a valid E.164 number"),
            payload_ref: format!("s3://sealpost/tenants/{}/p.enc", self.tenant),
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
pub struct End {
    pub status: Status,
    pub reason: Option<EndReason>,
}

impl End {
    pub fn notice_owed(&self) -> bool {
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

/// The end a case without a cancel or a requested fallback must reach, whatever the timing;
/// `None` when reaching `max_attempts` and the deadline are too close to call.
pub fn expected(case: &Case) -> Option<End> {
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
    /// A command reaches the aggregate; a receipt refused as `not_yet_acked` is retried.
    Command(MessageCommand),
    /// The expiry timer fires: the expiry role revokes where needed and sends `expire`.
    Timer,
    /// An early expiry command, which must be refused.
    EarlyExpire,
    /// An operator's redrive: `enqueue` with the aggregate's own `not_before`, then its job.
    Redrive,
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

/// One command that wrote events, and the events in the order written (one atomic append).
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    pub command: MessageCommand,
    pub events: Vec<MessageEvent>,
}

/// A generated history: the case, how it ended, and every write in order.
#[derive(Debug, Clone)]
pub struct History {
    pub case: Case,
    pub end: End,
    pub writes: Vec<Write>,
}

impl History {
    /// Runs `case` through the real aggregate. `Err` names what broke the order rules or
    /// idempotence (a bug in the aggregate or in [`crate::order`]).
    pub fn generate(case: &Case) -> Result<History, String> {
        Sim::new(case).run()
    }

    /// Every event, in the order written.
    pub fn events(&self) -> Vec<MessageEvent> {
        self.writes
            .iter()
            .flat_map(|w| w.events.iter().cloned())
            .collect()
    }
}

/// The instant `ms` after [`T0`].
pub fn at(ms: i64) -> OffsetDateTime {
    T0 + time::Duration::milliseconds(ms)
}

/// One simulated run.
#[derive(Debug)]
struct Sim<'a> {
    case: &'a Case,
    policy: RetryPolicy,
    state: Message,
    queue: BinaryHeap<Scheduled>,
    seq: u64,
    dice: std::iter::Cycle<std::slice::Iter<'a, u32>>,
    crashes: u32,
    receipts_scheduled: bool,
    writes: Vec<Write>,
    failures: Vec<String>,
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
            writes: Vec::new(),
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
        }
        // A redrive is the one command meant to write again: each is a fresh delivery job
        // (`queued`), which the attempt check makes harmless.
        let idempotent = !matches!(cmd, MessageCommand::Enqueue { .. });
        if !events.is_empty() {
            if let Ok(again) = self.state.decide(cmd.clone(), &self.policy) {
                if !again.is_empty() && idempotent {
                    self.failures.push(format!(
                        "{cmd:?} applied twice wrote {again:?} the second time"
                    ));
                }
            }
            self.writes.push(Write {
                command: cmd,
                events: events.clone(),
            });
        }
        Ok(events)
    }

    fn run(mut self) -> Result<History, String> {
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
        // Holds and releases anywhere, some held briefly, some for minutes.
        for i in 0..self.roll(3) {
            let id = format!("hold-{i}");
            let scale = [2_000, 60_000, 600_000][self.roll(3) as usize];
            let h = self.roll(scale) as i64;
            let r = h + self.roll(scale) as i64;
            self.schedule(h, hold(&id, h));
            self.schedule(
                r,
                Action::Command(MessageCommand::Release {
                    hold_id: id,
                    at: at(r),
                }),
            );
        }
        let op = self.case.operator.clone();
        if let Some(t) = op.redrive_at_ms {
            self.schedule(t, Action::Redrive);
        }
        if let Some(t) = op.purge_at_ms {
            self.schedule(t, Action::Command(MessageCommand::Purge { at: at(t) }));
        }
        if let Some(t) = op.cancel_at_ms {
            self.schedule(t, Action::Command(MessageCommand::Cancel { at: at(t) }));
        }
        if let Some(t) = op.fallback_at_ms {
            let cmd = MessageCommand::TriggerFallback { at: at(t) };
            self.schedule(t, Action::Command(cmd));
        }
        let last = self.drain()?;
        // After everything else: the operator's late hold and release, then a purge.
        if op.late_hold {
            self.schedule(last + 1, hold("late", last + 1));
            let cmd = MessageCommand::Release {
                hold_id: "late".into(),
                at: at(last + 2),
            };
            self.schedule(last + 2, Action::Command(cmd));
        }
        if op.final_purge {
            let cmd = MessageCommand::Purge { at: at(last + 3) };
            self.schedule(last + 3, Action::Command(cmd));
        }
        self.drain()?;
        if !self.failures.is_empty() {
            return Err(self.failures.join("; "));
        }
        let reason = self
            .writes
            .iter()
            .flat_map(|w| &w.events)
            .rev()
            .find_map(|e| match e {
                MessageEvent::Failed(f) => Some(f.reason),
                MessageEvent::FallbackTriggered(f) => Some(f.reason),
                MessageEvent::Expired(_) => Some(EndReason::Expired),
                _ => None,
            });
        Ok(History {
            case: self.case.clone(),
            end: End {
                status: self.state.status,
                reason,
            },
            writes: self.writes,
        })
    }

    /// Runs everything scheduled; returns the instant of the last action.
    fn drain(&mut self) -> Result<i64, String> {
        let mut last = 0;
        let mut steps = 0;
        while let Some(Scheduled { at_ms, action, .. }) = self.queue.pop() {
            steps += 1;
            if steps > 10_000 {
                return Err("the run did not settle in 10,000 steps".into());
            }
            last = last.max(at_ms);
            self.step(at_ms, action);
        }
        Ok(last)
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
            Action::Redrive => {
                let not_before = self
                    .state
                    .not_before
                    .map_or(now, |t| now.max((t - T0).whole_milliseconds() as i64));
                let cmd = MessageCommand::Enqueue {
                    not_before: at(not_before),
                    at: at(now),
                };
                // Refused once the message was submitted or ended; else a second job.
                if self.apply(cmd).is_ok() {
                    self.schedule(not_before, Action::Job);
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
        // A device that cannot open the payload reports it, sometimes twice (a retried
        // request), up to a minute after the ack.
        if self.roll(3) == 0 {
            let t = now + self.roll(60_000) as i64;
            let reason = DecryptFailure::ALL[self.roll(DecryptFailure::ALL.len() as u32) as usize];
            for c in 0..1 + self.roll(2) {
                let ti = t + c as i64 * 1_000;
                self.schedule(
                    ti,
                    Action::Command(MessageCommand::RecordDecryptionFailure {
                        reason,
                        key_id: Some("device-1".into()),
                        at: at(ti),
                    }),
                );
            }
        }
    }
}

fn hold(id: &str, at_ms: i64) -> Action {
    Action::Command(MessageCommand::Hold {
        hold_id: id.to_owned(),
        reason: "case".into(),
        at: at(at_ms),
    })
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

/// The status before each event and the event's type, as the aggregate's own `apply` folds
/// `events`: the transitions a history makes.
pub fn steps(events: &[MessageEvent]) -> Vec<(Status, EventType)> {
    let mut m = Message::default();
    events
        .iter()
        .map(|e| {
            let before = m.status;
            m.apply(e.clone());
            (before, e.event_type())
        })
        .collect()
}

/// The commands that could have written `first` as the first event of their write: the inverse
/// of [`Message::decide`], read off the event's own fields.
fn commands_writing(first: &MessageEvent) -> Vec<MessageCommand> {
    use MessageCommand as C;
    use MessageEvent as E;
    let ms = |v: Option<u64>| v.map(Duration::from_millis);
    match first {
        E::Accepted(a) => vec![C::Accept(Box::new(AcceptMessage {
            tenant_id: a.tenant_id.clone(),
            idempotency_key: a.idempotency_key.clone(),
            recipient: a.recipient.clone(),
            payload_ref: a.payload_ref.clone(),
            payload_sha256: a.payload_sha256.clone(),
            payload_size: a.payload_size,
            encryption: a.encryption.clone(),
            message_type: a.message_type,
            correlation_id: a.correlation_id.clone(),
            ttl: u64::try_from((a.expires_at - a.accepted_at).whole_seconds())
                .ok()
                .map(Duration::from_secs),
            fallback: a.fallback.clone(),
            at: a.accepted_at,
        }))],
        E::Queued(q) => vec![C::Enqueue {
            not_before: q.not_before,
            at: q.at,
        }],
        E::CarrierAcked(c) => vec![C::RecordCarrierResult {
            attempt: c.attempt,
            carrier: c.carrier.clone(),
            outcome: CarrierOutcome::Acked {
                carrier_message_id: c.carrier_message_id.clone(),
            },
            at: c.at,
        }],
        E::AttemptFailed(f) => {
            let code = f.code.clone();
            let outcome = match f.class {
                ErrorClass::Transient => CarrierOutcome::Transient {
                    code,
                    retry_after: ms(f.retry_after_ms),
                },
                ErrorClass::Throttled => CarrierOutcome::Throttled {
                    code,
                    retry_after: ms(f.retry_after_ms),
                },
                ErrorClass::Permanent => CarrierOutcome::Permanent { code },
                ErrorClass::NotCapable => CarrierOutcome::NotRcsCapable,
            };
            vec![C::RecordCarrierResult {
                attempt: f.attempt,
                carrier: f.carrier.clone(),
                outcome,
                at: f.at,
            }]
        }
        // Written only after `attempt_failed`, in the same write.
        E::RetryScheduled(_) => vec![],
        // First in its write only when the expiry ends the message.
        E::Failed(f) => vec![C::Expire {
            revoke: RevokeOutcome::NotSubmitted,
            at: f.at,
        }],
        E::FallbackTriggered(f) => {
            let mut v = vec![C::TriggerFallback { at: f.at }];
            if let Some(revoke) = f.revoke {
                v.push(C::Expire { revoke, at: f.at });
            }
            v
        }
        E::Expired(e) => vec![C::Expire {
            revoke: e.revoke,
            at: e.at,
        }],
        E::Delivered(d) => vec![C::RecordReceipt {
            receipt_id: d.receipt_id.clone(),
            kind: if d.implied {
                ReceiptKind::Displayed
            } else {
                ReceiptKind::Delivered
            },
            at: d.at,
        }],
        E::Displayed(d) => vec![C::RecordReceipt {
            receipt_id: d.receipt_id.clone(),
            kind: ReceiptKind::Displayed,
            at: d.at,
        }],
        E::Cancelled(c) => vec![C::Cancel { at: c.at }],
        E::Held(h) => vec![C::Hold {
            hold_id: h.hold_id.clone(),
            reason: h.reason.clone(),
            at: h.at,
        }],
        E::Released(r) => vec![C::Release {
            hold_id: r.hold_id.clone(),
            at: r.at,
        }],
        E::Purged(p) => vec![C::Purge { at: p.at }],
        E::DecryptionFailed(d) => vec![C::RecordDecryptionFailure {
            reason: d.reason,
            key_id: d.key_id.clone(),
            at: d.at,
        }],
    }
}

/// Whether the real aggregate can write exactly `events` (bodies included), under `policy`:
/// the list must split into consecutive writes, each exactly what [`Message::decide`] returns
/// for some command in the state the writes before it left. The commands tried are those that
/// can write each write's first event ([`commands_writing`]); a command's instant is the
/// event's, since every event records the instant of the command that wrote it.
pub fn reachable(events: &[MessageEvent], policy: &RetryPolicy) -> bool {
    let mut state = Message::default();
    let mut i = 0;
    while let Some(first) = events.get(i) {
        let write = commands_writing(first).into_iter().find_map(|c| {
            state
                .decide(c, policy)
                .ok()
                .filter(|w| !w.is_empty() && events[i..].starts_with(w))
        });
        let Some(write) = write else {
            return false;
        };
        i += write.len();
        for e in write {
            state.apply(e);
        }
    }
    true
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

/// Operator commands that never change how a message ends: a redrive, purges, a late hold.
pub fn neutral_operator() -> impl Strategy<Value = Operator> {
    (
        prop::option::weighted(0.2, 0i64..120_000),
        prop::option::weighted(0.2, 0i64..180_000),
        prop::bool::weighted(0.3),
        prop::bool::weighted(0.5),
    )
        .prop_map(
            |(redrive_at_ms, purge_at_ms, late_hold, final_purge)| Operator {
                redrive_at_ms,
                purge_at_ms,
                late_hold,
                final_purge,
                cancel_at_ms: None,
                fallback_at_ms: None,
            },
        )
}

/// [`neutral_operator`] plus a cancel and a requested fallback, each sometimes.
pub fn operator() -> impl Strategy<Value = Operator> {
    (
        neutral_operator(),
        prop::option::weighted(0.15, 0i64..120_000),
        prop::option::weighted(0.15, 0i64..600_000),
    )
        .prop_map(|(op, cancel_at_ms, fallback_at_ms)| Operator {
            cancel_at_ms,
            fallback_at_ms,
            ..op
        })
}

prop_compose! {
    /// A case whose end [`expected`] predicts: any carrier, TTL, window, fallback and policy,
    /// with [`neutral_operator`] commands.
    pub fn case()(
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
        operator in neutral_operator(),
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
            tenant: TenantId::new("acme-corp").expect("a valid tenant id"),
            idempotency_key: "prop".into(),
            ttl_s,
            window_s,
            fallback,
            message_type: if promotional { MessageType::Promotional } else { MessageType::Transactional },
            max_attempts,
            behaviour,
            operator,
            dice,
        }
    }
}

/// [`case`] with the whole [`operator`]: also cancels and requested fallbacks. [`expected`]
/// does not apply.
pub fn case_with_operator() -> impl Strategy<Value = Case> {
    (case(), operator()).prop_map(|(c, operator)| Case { operator, ..c })
}

/// One generated history of `acme-corp`'s message `prop`, from [`case_with_operator`].
pub fn history() -> impl Strategy<Value = Result<History, String>> {
    case_with_operator().prop_map(|c| History::generate(&c))
}
