//! Applies carrier receipts to their messages, from two places:
//! - a gateway in the same process as the delivery roles hands the applier
//!   (`ApplyReceipt::apply_now`) each webhook whose signature it verified, and answers 200 once
//!   the receipt is an event (or changes nothing). A receipt that cannot be
//!   applied yet (its carrier ack is not recorded, its message is unknown here, the store is
//!   unavailable) is stored raw in `SEALPOST_RECEIPTS` instead, and only then answered 200;
//! - the `receipts` consumer applies those stored receipts, and retries them (NAK with a growing
//!   delay) until they apply: never dropped.
//!
//! - DELIVERED / READ → `record_receipt` (the aggregate dedupes by the carrier's event id, so a
//!   duplicate makes no event; READ before DELIVERED implies the delivery);
//! - TTL_EXPIRATION_REVOKED / TTL_EXPIRATION_REVOKE_FAILED → `expire` with that revoke outcome;
//! - a receipt for a message a worker of this process is submitting waits for the worker to
//!   record the answer (the carrier can send DELIVERED before it answers the submission); one
//!   whose carrier ack is still not recorded waits for it a little (20, 50, 100 ms) before it is
//!   stored (gateway) or put back (consumer);
//! - a message's receipts are applied one at a time per process, in the order they arrived (a
//!   turn taken when the webhook or the stored receipt is handed over), so DELIVERED and READ
//!   each write one event. Across processes, optimistic concurrency orders them.
//!
//! The carrier names messages by message id only; the tenant is found from the message's
//! `accepted` event (`sealpost.evt.*.<message_id>.accepted`) and cached. A worker in the same
//! process fills that cache as it submits.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sealpost_carriers::webhook::{self, AppliedNow, RbmEvent, RbmEventKind, Webhook};
use sealpost_domain::events::RevokeOutcome;
use sealpost_domain::{
    aggregate_id, EventType, Message, MessageCommand, MessageError, MessageId, ReceiptKind,
    TenantId,
};
use sealpost_eventstore::names::{Durable, EventSubject};
use sealpost_eventstore::{CommandExecutor, ExecuteError, StoreError};
use time::OffsetDateTime;
use tokio::sync::Notify;

use crate::jobs::{growing_delay, spawn_consumer, Job, JobEnd};
use crate::turns::{Turn, Turns};
use crate::Delivery;

/// How many message → tenant lookups are remembered.
pub(crate) const TENANT_CACHE: usize = 200_000;

/// How long a receipt that arrived before its carrier ack waits, in its message's turn, before
/// trying again; after the last wait it is stored (gateway) or NAKed with the growing
/// `receipt_retry` delay (consumer).
const IN_TURN_WAITS: [Duration; 3] = [
    Duration::from_millis(20),
    Duration::from_millis(50),
    Duration::from_millis(100),
];

/// Applies receipts to messages; shared by a process's gateway and its `receipts` consumer.
#[derive(Debug)]
pub struct ReceiptApplier {
    executor: Arc<CommandExecutor<Message>>,
    /// message id → tenant (carriers name messages by id only). Bounded.
    tenants: quick_cache::sync::Cache<String, TenantId>,
    /// Per-message FIFO turns.
    turns: Arc<Turns>,
    /// Messages a worker of this process has submitted and not yet recorded the answer of, by
    /// message id ([`ReceiptApplier::awaiting_answer`]): a receipt for one waits for that record
    /// instead of deciding on state that cannot take it yet. Only a wake-up: a receipt that is
    /// not woken tries anyway after [`ANSWER_WAIT`].
    answers: std::sync::Mutex<HashMap<String, Arc<Notify>>>,
}

/// How long a receipt waits for the answer a worker of this process is recording.
const ANSWER_WAIT: Duration = Duration::from_millis(200);

/// Held by a worker from its submission until the carrier's answer is recorded (or the job
/// ends otherwise); dropping it wakes the receipts of that message waiting in this process.
#[derive(Debug)]
pub(crate) struct AwaitingAnswer<'a> {
    applier: &'a ReceiptApplier,
    message_id: &'a str,
    signal: Arc<Notify>,
}

impl Drop for AwaitingAnswer<'_> {
    fn drop(&mut self) {
        let mut answers = self.applier.answers();
        if answers
            .get(self.message_id)
            .is_some_and(|n| Arc::ptr_eq(n, &self.signal))
        {
            answers.remove(self.message_id);
        }
        drop(answers);
        self.signal.notify_waiters();
    }
}

/// What became of one receipt.
#[derive(Debug)]
enum Applied {
    /// Written as events (none for a duplicate).
    Done,
    /// The message is in a state the receipt changes nothing in (it ended otherwise).
    ChangesNothing,
    /// Its carrier ack (or, for a TTL receipt, its expiry instant) is not recorded yet.
    NotYet,
    /// No message with this id is known to this deployment (yet).
    Unknown,
    /// The store could not be read or written.
    Unavailable,
}

impl ReceiptApplier {
    /// `executor` should have a state cache: share the delivery roles' one when they run in the
    /// same process ([`Delivery::receipts`]), so a receipt decides on the state the worker left.
    pub fn new(executor: Arc<CommandExecutor<Message>>) -> Self {
        Self {
            executor,
            tenants: quick_cache::sync::Cache::new(TENANT_CACHE),
            turns: Default::default(),
            answers: Default::default(),
        }
    }

    fn answers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        self.answers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called by a worker right before it submits `message_id`: until the returned guard is
    /// dropped (once the answer is recorded), a receipt of that message in this process waits
    /// for it. The carrier can send DELIVERED before its answer to the submission arrives.
    pub(crate) fn awaiting_answer<'a>(&'a self, message_id: &'a MessageId) -> AwaitingAnswer<'a> {
        let signal = Arc::new(Notify::new());
        self.answers()
            .insert(message_id.as_str().to_owned(), signal.clone());
        AwaitingAnswer {
            applier: self,
            message_id: message_id.as_str(),
            signal,
        }
    }

    /// Waits (up to [`ANSWER_WAIT`]) while a worker of this process records the carrier's
    /// answer for `message_id`; returns at once when none is.
    async fn answer_recorded(&self, message_id: &MessageId) {
        let Some(signal) = self.answers().get(message_id.as_str()).cloned() else {
            return;
        };
        let woken = signal.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        // The worker may have recorded it between the lookup and `enable`: then it is gone.
        if self.answers().contains_key(message_id.as_str()) {
            let _ = tokio::time::timeout(ANSWER_WAIT, woken).await;
        }
    }

    /// The command a receipt asks for; none for an event that is not a receipt.
    fn command(event: &RbmEvent) -> Option<MessageCommand> {
        let now = OffsetDateTime::now_utc();
        Some(match &event.kind {
            RbmEventKind::Delivered | RbmEventKind::Read => MessageCommand::RecordReceipt {
                receipt_id: event.event_id.clone(),
                kind: if event.kind == RbmEventKind::Read {
                    ReceiptKind::Displayed
                } else {
                    ReceiptKind::Delivered
                },
                at: event.send_time.unwrap_or(now),
            },
            RbmEventKind::TtlExpirationRevoked => MessageCommand::Expire {
                revoke: RevokeOutcome::Revoked,
                at: now,
            },
            RbmEventKind::TtlExpirationRevokeFailed => MessageCommand::Expire {
                revoke: RevokeOutcome::RevokeFailed,
                at: now,
            },
            RbmEventKind::Other(_) => return None,
        })
    }

    /// Applies `cmd` to `message_id`'s message in `turn`: waits for the earlier receipts of the
    /// message, then executes, waiting briefly (holding the turn, so a READ behind it does not
    /// get in first) when the carrier ack is not recorded yet.
    async fn apply(
        &self,
        message_id: &MessageId,
        cmd: MessageCommand,
        turn: Option<Turn>,
    ) -> Applied {
        let tenant = match self.tenant_of(message_id).await {
            Ok(Some(t)) => t,
            Ok(None) => return Applied::Unknown,
            Err(e) => {
                tracing::warn!(%message_id, error = %e, "cannot look up a receipt's message");
                return Applied::Unavailable;
            }
        };
        // One receipt per message at a time: DELIVERED then READ each write one event. Decided
        // concurrently, READ would see the message still acked and write the implied
        // `delivered` with `displayed` as an atomic batch (which the server commits one at a
        // time, at a far higher cost than two single writes), and one of the two would conflict
        // and reload.
        let mut turn = turn;
        if let Some(t) = turn.as_mut() {
            t.wait().await;
        }
        let agg = aggregate_id(&tenant, message_id);
        let span = crate::message_span("receipt", &tenant, message_id);
        let executed = tracing::Instrument::instrument(
            async {
                let mut waits = IN_TURN_WAITS.iter();
                loop {
                    self.answer_recorded(message_id).await;
                    let r = self
                        .executor
                        .execute(&agg, cmd.clone(), &Default::default())
                        .await;
                    match (&r, waits.next()) {
                        (Err(ExecuteError::Rejected(MessageError::NotYetAcked)), Some(w)) => {
                            tokio::time::sleep(*w).await;
                        }
                        _ => break r,
                    }
                }
            },
            span.clone(),
        )
        .await;
        drop(turn);
        span.record(
            "outcome",
            match &executed {
                Ok(done) if done.events.is_empty() => "duplicate",
                Ok(_) => "recorded",
                Err(_) => "not_recorded",
            },
        );
        match executed {
            Ok(done) => {
                crate::report(&done.aggregate, &done.events);
                Applied::Done
            }
            Err(ExecuteError::Rejected(
                MessageError::NotYetAcked | MessageError::NotYetExpired { .. },
            )) => Applied::NotYet,
            Err(ExecuteError::Rejected(e)) => {
                tracing::info!(%message_id, error = %e, "receipt changes nothing");
                Applied::ChangesNothing
            }
            Err(e) => {
                tracing::warn!(%message_id, error = %e, "cannot record a receipt");
                Applied::Unavailable
            }
        }
    }

    /// Applies a receipt a gateway verified, if it can be now.
    pub async fn apply_verified(&self, event: &RbmEvent) -> AppliedNow {
        let Some(cmd) = Self::command(event) else {
            return AppliedNow::Applied;
        };
        let Ok(message_id) = MessageId::new(event.message_id.clone()) else {
            // Stored, so the consumer drops it with a warning, as for any other.
            return AppliedNow::Later;
        };
        let turn = self.turns.take(message_id.as_str());
        match self.apply(&message_id, cmd, Some(turn)).await {
            Applied::Done | Applied::ChangesNothing => AppliedNow::Applied,
            Applied::NotYet => {
                tracing::debug!(%message_id, "receipt before the carrier ack; storing it to apply later");
                AppliedNow::Later
            }
            Applied::Unknown | Applied::Unavailable => AppliedNow::Later,
        }
    }

    /// The tenant that owns `message_id`, from its `accepted` event.
    async fn tenant_of(&self, message_id: &MessageId) -> Result<Option<TenantId>, StoreError> {
        if let Some(t) = self.tenants.get(message_id.as_str()) {
            return Ok(Some(t));
        }
        // Boxed: a miss is rare (the worker of this process fills the cache), and its reads'
        // futures would otherwise be part of every receipt's.
        let filter = EventSubject::of_message_any_tenant(message_id, EventType::Accepted);
        let store = self.executor.store();
        let mut found = Box::pin(store.direct_get_all(&filter)).await?;
        if found.is_empty() {
            // Not on the replica that answered; a lagging follower must not make it unknown.
            let last = Box::pin(store.leader_last_seq_matching(&filter)).await?;
            if last > 0 {
                found = Box::pin(store.direct_get_all_at_least(&filter, last)).await?;
            }
        }
        let tenant = found
            .first()
            .and_then(|r| EventSubject::parse(&r.subject).ok())
            .map(|s| s.tenant);
        if let Some(t) = &tenant {
            self.remember_tenant(message_id, t);
        }
        Ok(tenant)
    }

    pub(crate) fn remember_tenant(&self, message_id: &MessageId, tenant: &TenantId) {
        self.tenants
            .insert(message_id.as_str().to_owned(), tenant.clone());
    }
}

pub(crate) fn spawn(d: Delivery) -> tokio::task::JoinHandle<()> {
    let js = d.inner.js.clone();
    let concurrency = d.inner.cfg.concurrency;
    spawn_consumer(js, Durable::Receipts, concurrency, move |job| {
        // Called in stream order: the receipt takes its place in its message's queue before
        // anything else happens, so DELIVERED is applied before the READ stored after it.
        let d = d.clone();
        let parsed = webhook::parse(&job.payload);
        let turn = match &parsed {
            Ok(Webhook::Event(e)) => Some(d.inner.receipts.turns.take(&e.message_id)),
            _ => None,
        };
        async move { d.apply_stored_receipt(job, parsed, turn).await }
    })
}

impl Delivery {
    async fn apply_stored_receipt(
        &self,
        job: Job,
        parsed: Result<Webhook, sealpost_carriers::WebhookError>,
        turn: Option<Turn>,
    ) -> JobEnd {
        let event = match parsed {
            Ok(Webhook::Event(e)) => e,
            Ok(Webhook::Verification { .. }) => return JobEnd::Ack,
            Err(e) => {
                tracing::warn!(stream_seq = job.stream_seq, error = %e, "stored receipt cannot be parsed; dropping it");
                return JobEnd::Term;
            }
        };
        let Ok(message_id) = MessageId::new(event.message_id.clone()) else {
            tracing::warn!(
                stream_seq = job.stream_seq,
                "receipt for a message id Sealpost never issues; dropping it"
            );
            return JobEnd::Term;
        };
        let Some(cmd) = ReceiptApplier::command(&event) else {
            return JobEnd::Ack;
        };
        let retry = growing_delay(
            self.inner.cfg.receipt_retry,
            job.delivered,
            Duration::from_secs(30),
        );
        match self.inner.receipts.apply(&message_id, cmd, turn).await {
            Applied::Done | Applied::ChangesNothing => JobEnd::Ack,
            Applied::NotYet => {
                tracing::debug!(%message_id, "receipt before the carrier ack; retrying it later");
                JobEnd::Nak(retry)
            }
            Applied::Unknown if job.delivered < 10 => JobEnd::Nak(retry),
            Applied::Unknown => {
                tracing::warn!(%message_id, "receipt for a message this deployment never accepted; dropping it");
                JobEnd::Term
            }
            Applied::Unavailable => JobEnd::Nak(retry),
        }
    }
}

#[async_trait::async_trait]
impl webhook::ApplyReceipt for ReceiptApplier {
    async fn apply_now(&self, event: &RbmEvent) -> AppliedNow {
        self.apply_verified(event).await
    }
}
