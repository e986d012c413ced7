//! Applies carrier receipts. The gateway verified each webhook's signature and stored its raw
//! body in `SEALPOST_RECEIPTS` before answering 200; this consumer turns them into commands.
//!
//! - DELIVERED / READ → `record_receipt` (the aggregate dedupes by the carrier's event id, so a
//!   duplicate makes no event; READ before DELIVERED implies the delivery);
//! - TTL_EXPIRATION_REVOKED / TTL_EXPIRATION_REVOKE_FAILED → `expire` with that revoke outcome;
//! - a receipt for a message whose carrier ack is not recorded yet waits for it a little (20, 50,
//!   100 ms), then is NAKed with a growing delay and retried, never dropped;
//! - a message's receipts are applied one at a time in stream order (a turn taken when the
//!   consumer hands the receipt over), so DELIVERED and READ each write one event.
//!
//! The carrier names messages by message id only; the tenant is found from the message's
//! `accepted` event (`sealpost.evt.*.<message_id>.accepted`) and cached.

use std::time::Duration;

use sealpost_carriers::webhook::{self, RbmEventKind, Webhook};
use sealpost_domain::events::RevokeOutcome;
use sealpost_domain::{
    aggregate_id, EventType, MessageCommand, MessageError, MessageId, ReceiptKind, TenantId,
};
use sealpost_eventstore::names::{Durable, EventSubject};
use sealpost_eventstore::{ExecuteError, StoreError};
use time::OffsetDateTime;

use crate::jobs::{growing_delay, spawn_consumer, Job, JobEnd};
use crate::turns::Turn;
use crate::Delivery;

/// How many message → tenant lookups are remembered.
pub(crate) const TENANT_CACHE: usize = 200_000;

/// How long a receipt that arrived before its carrier ack waits, in its message's turn, before
/// trying again; after the last wait it is NAKed with the growing `receipt_retry` delay.
const IN_TURN_WAITS: [Duration; 3] = [
    Duration::from_millis(20),
    Duration::from_millis(50),
    Duration::from_millis(100),
];

pub(crate) fn spawn(d: Delivery) -> tokio::task::JoinHandle<()> {
    let js = d.inner.js.clone();
    let concurrency = d.inner.cfg.concurrency;
    spawn_consumer(js, Durable::Receipts, concurrency, move |job| {
        // Called in stream order: the receipt takes its place in its message's queue before
        // anything else happens, so DELIVERED is applied before the READ stored after it.
        let d = d.clone();
        let parsed = webhook::parse(&job.payload);
        let turn = match &parsed {
            Ok(Webhook::Event(e)) => Some(d.inner.turns.take(&e.message_id)),
            _ => None,
        };
        async move { d.apply_receipt(job, parsed, turn).await }
    })
}

impl Delivery {
    async fn apply_receipt(
        &self,
        job: Job,
        parsed: Result<Webhook, sealpost_carriers::WebhookError>,
        mut turn: Option<Turn>,
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
        let retry = growing_delay(
            self.inner.cfg.receipt_retry,
            job.delivered,
            Duration::from_secs(30),
        );
        let now = OffsetDateTime::now_utc();
        let cmd = match &event.kind {
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
            RbmEventKind::Other(_) => return JobEnd::Ack,
        };
        let tenant = match self.tenant_of(&message_id).await {
            Ok(Some(t)) => t,
            Ok(None) if job.delivered < 10 => return JobEnd::Nak(retry),
            Ok(None) => {
                tracing::warn!(%message_id, "receipt for a message this deployment never accepted; dropping it");
                return JobEnd::Term;
            }
            Err(e) => {
                tracing::warn!(%message_id, error = %e, "cannot look up a receipt's message; retrying");
                return JobEnd::Nak(retry);
            }
        };
        // One receipt per message at a time, in stream order: DELIVERED then READ each write
        // one event. Decided concurrently, READ would see the message still acked and write the
        // implied `delivered` with `displayed` as an atomic batch (which the server commits one
        // at a time, at a far higher cost than two single writes), and one of the two would
        // conflict and reload.
        if let Some(t) = turn.as_mut() {
            t.wait().await;
        }
        let agg = aggregate_id(&tenant, &message_id);
        // A receipt can overtake the worker's record of the carrier's ack (the carrier answers
        // the submission and sends DELIVERED at once). It waits for the ack here a few times,
        // holding the turn, so that the READ behind it does not get in first; only then is it
        // NAKed to come back later.
        let span = crate::message_span("receipt", &tenant, &message_id);
        let executed = tracing::Instrument::instrument(
            async {
                let mut waits = IN_TURN_WAITS.iter();
                loop {
                    let r = self
                        .inner
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
                JobEnd::Ack
            }
            Err(ExecuteError::Rejected(MessageError::NotYetAcked)) => {
                tracing::debug!(%message_id, "receipt before the carrier ack; retrying it later");
                JobEnd::Nak(retry)
            }
            Err(ExecuteError::Rejected(MessageError::NotYetExpired { .. })) => JobEnd::Nak(retry),
            Err(ExecuteError::Rejected(e)) => {
                tracing::info!(%message_id, error = %e, "receipt changes nothing");
                JobEnd::Ack
            }
            Err(e) => {
                tracing::warn!(%message_id, error = %e, "cannot record a receipt; retrying");
                JobEnd::Nak(retry)
            }
        }
    }

    /// The tenant that owns `message_id`, from its `accepted` event.
    async fn tenant_of(&self, message_id: &MessageId) -> Result<Option<TenantId>, StoreError> {
        if let Some(t) = self.inner.tenants.get(message_id.as_str()) {
            return Ok(Some(t));
        }
        let filter = EventSubject::of_message_any_tenant(message_id, EventType::Accepted);
        let store = self.inner.executor.store();
        let mut found = store.direct_get_all(&filter).await?;
        if found.is_empty() {
            // Not on the replica that answered; a lagging follower must not make it unknown.
            let last = store.leader_last_seq_matching(&filter).await?;
            if last > 0 {
                found = store.direct_get_all_at_least(&filter, last).await?;
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
        self.inner
            .tenants
            .insert(message_id.as_str().to_owned(), tenant.clone());
    }
}
