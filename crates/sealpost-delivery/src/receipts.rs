//! Applies carrier receipts. The gateway verified each webhook's signature and stored its raw
//! body in `SEALPOST_RECEIPTS` before answering 200; this consumer turns them into commands.
//!
//! - DELIVERED / READ → `record_receipt` (the aggregate dedupes by the carrier's event id, so a
//!   duplicate makes no event; READ before DELIVERED implies the delivery);
//! - TTL_EXPIRATION_REVOKED / TTL_EXPIRATION_REVOKE_FAILED → `expire` with that revoke outcome;
//! - a receipt for a message whose carrier ack is not recorded yet is NAKed with a growing delay
//!   and retried, never dropped.
//!
//! The carrier names messages by message id only; the tenant is found from the message's
//! `accepted` event (`sealpost.evt.*.<message_id>.accepted`) and cached.

use std::sync::Arc;
use std::time::Duration;

use sealpost_carriers::webhook::{self, RbmEventKind, Webhook};
use sealpost_domain::events::RevokeOutcome;
use sealpost_domain::{
    aggregate_id, MessageCommand, MessageError, MessageId, ReceiptKind, TenantId,
};
use sealpost_eventstore::{ExecuteError, StoreError};
use time::OffsetDateTime;

use crate::jobs::{growing_delay, spawn_consumer, subject_tokens, Job, JobEnd};
use crate::Delivery;

/// How many message → tenant lookups are remembered.
const TENANT_CACHE: usize = 200_000;

pub(crate) fn spawn(d: Delivery) -> tokio::task::JoinHandle<()> {
    let js = d.inner.js.clone();
    let durable = d.inner.cfg.receipts_consumer.clone();
    let concurrency = d.inner.cfg.concurrency;
    spawn_consumer(js, "SEALPOST_RECEIPTS", durable, concurrency, move |job| {
        let d = d.clone();
        async move { d.apply_receipt(job).await }
    })
}

impl Delivery {
    async fn apply_receipt(&self, job: Job) -> JobEnd {
        let event = match webhook::parse(&job.payload) {
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
        // One receipt per message at a time, in arrival order: DELIVERED then READ each write
        // one event. Decided concurrently, READ would see the message still acked and write the
        // implied `delivered` with `displayed` as an atomic batch (which the server commits one
        // at a time), and one of the two would conflict and reload.
        let _turn = self.message_turn(&message_id).await;
        let agg = aggregate_id(&tenant, &message_id);
        match self
            .inner
            .executor
            .execute(&agg, cmd, &Default::default())
            .await
        {
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
        if let Some(t) = self
            .inner
            .tenants
            .lock()
            .ok()
            .and_then(|c| c.get(message_id.as_str()).cloned())
        {
            return Ok(Some(t));
        }
        let filter = format!(
            "{}.*.{message_id}.accepted",
            self.inner.executor.store().config().subject_prefix
        );
        let found = self.inner.executor.store().direct_get_all(&filter).await?;
        let tenant = found
            .first()
            .and_then(|r| subject_tokens(&r.subject))
            .and_then(|(t, _, _)| TenantId::new(t).ok());
        if let Some(t) = &tenant {
            self.remember_tenant(message_id, t);
        }
        Ok(tenant)
    }

    /// Waits for this message's turn (FIFO per message); the turn ends when the guard drops.
    async fn message_turn(&self, message_id: &MessageId) -> MessageTurn {
        let lock = {
            let mut turns = match self.inner.turns.lock() {
                Ok(t) => t,
                Err(p) => p.into_inner(),
            };
            turns
                .entry(message_id.as_str().to_owned())
                .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
                .clone()
        };
        let guard = lock.clone().lock_owned().await;
        MessageTurn {
            d: self.clone(),
            key: message_id.as_str().to_owned(),
            lock,
            _guard: Some(guard),
        }
    }

    pub(crate) fn remember_tenant(&self, message_id: &MessageId, tenant: &TenantId) {
        if let Ok(mut c) = self.inner.tenants.lock() {
            if c.len() >= TENANT_CACHE {
                c.clear();
            }
            c.insert(message_id.as_str().to_owned(), tenant.clone());
        }
    }
}

/// A message's turn at the receipts consumer; dropping it lets the next receipt in.
struct MessageTurn {
    d: Delivery,
    key: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    _guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for MessageTurn {
    fn drop(&mut self) {
        self._guard.take();
        if let Ok(mut turns) = self.d.inner.turns.lock() {
            // Only this turn and the map hold the lock: nobody waits; forget it.
            if Arc::strong_count(&self.lock) == 2 {
                turns.remove(&self.key);
            }
        }
    }
}
