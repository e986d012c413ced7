//! Expiry without a sweeper. A message the carrier acked on its first attempt is bounded by the
//! carrier's TTL (RBM `expireTime` = `expires_at`), which revokes it and says so in a
//! TTL_EXPIRATION_REVOKED receipt. A message still undelivered after its first attempt gets a
//! JetStream scheduled message (`Nats-Schedule: @at <expires_at>`) on
//! `sealpost.sched.<tenant>.<message_id>.expire`, stored before each later attempt; the server
//! publishes it to `sealpost.due.<tenant>.<message_id>.expire` at that instant, and the
//! `expiry` consumer ends the message there. A schedule's subject is its identity, so storing it
//! again replaces it rather than adding a second timer. A job that finds its message expired
//! before any timer was stored (the carrier was paused past `expires_at`) ends it itself.

use std::time::Duration;

use async_nats::HeaderMap;
use sealpost_carriers::RevokeResult;
use sealpost_domain::events::RevokeOutcome;
use sealpost_domain::{aggregate_id, MessageCommand, MessageId, Status, TenantId};
use sealpost_eventstore::names::{Durable, TimerSubject};
use sealpost_eventstore::ExecuteError;
use time::OffsetDateTime;

use crate::error::DeliveryError;
use crate::jobs::{growing_delay, spawn_consumer, Job, JobEnd};
use crate::{until, Delivery};

pub(crate) fn spawn(d: Delivery) -> tokio::task::JoinHandle<()> {
    let js = d.inner.js.clone();
    spawn_consumer(js, Durable::Expiry, 64, move |job| {
        let d = d.clone();
        async move {
            match TimerSubject::parse_due(&job.subject) {
                Ok(t) => {
                    let span = crate::message_span("expire", &t.tenant, &t.message_id);
                    tracing::Instrument::instrument(d.expire(job), span).await
                }
                Err(_) => d.expire(job).await,
            }
        }
    })
}

/// `@at` with whole seconds, rounded up so the timer never fires before `at`.
pub fn at_spec(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    let whole = at.replace_nanosecond(0).unwrap_or(at);
    let at = if whole < at {
        whole + time::Duration::SECOND
    } else {
        whole
    };
    format!(
        "@at {:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

impl Delivery {
    /// Stores the message's expiry timer. Idempotent.
    pub(crate) async fn schedule_expiry(
        &self,
        tenant: &TenantId,
        message_id: &MessageId,
        expires_at: OffsetDateTime,
    ) -> Result<(), DeliveryError> {
        let timer = TimerSubject::new(tenant.clone(), message_id.clone());
        let mut h = HeaderMap::new();
        h.insert("Nats-Schedule", at_spec(expires_at).as_str());
        h.insert("Nats-Schedule-Target", timer.due().as_str());
        h.insert("Nats-Msg-Id", format!("{message_id}:expire").as_str());
        let ack = self
            .inner
            .js
            .publish_with_headers(timer.schedule(), h, bytes::Bytes::new())
            .await
            .map_err(DeliveryError::nats("storing the expiry timer"))?;
        ack.await
            .map_err(DeliveryError::nats("storing the expiry timer"))?;
        Ok(())
    }

    async fn expire(&self, job: Job) -> JobEnd {
        let TimerSubject { tenant, message_id } = match TimerSubject::parse_due(&job.subject) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "expiry timer on an unexpected subject; dropping it");
                return JobEnd::Term;
            }
        };
        self.expire_now(&tenant, &message_id, job.delivered).await
    }

    /// Ends a message whose `expires_at` has passed (the `delivered`-th try of the job asking):
    /// revokes it at the carrier where it may be and records `expired` with the revoke's
    /// outcome. A message not yet expired is put back until it is; a delivered or ended one is
    /// left alone. Used by the timer and by a worker that finds its job's message expired.
    pub(crate) async fn expire_now(
        &self,
        tenant: &TenantId,
        message_id: &MessageId,
        delivered: i64,
    ) -> JobEnd {
        let retry = growing_delay(
            Duration::from_millis(500),
            delivered,
            Duration::from_secs(30),
        );
        // The timer is not an event of the message: its state is read as the leader has it.
        let state = match self.load(tenant, message_id, None).await {
            Ok(l) => l.aggregate,
            Err(e) => {
                tracing::warn!(%message_id, error = %e, "cannot load an expiring message; retrying");
                return JobEnd::Nak(retry);
            }
        };
        let Some(accepted) = state.accepted.as_ref() else {
            tracing::warn!(%message_id, "expiry timer for an unknown message; dropping it");
            return JobEnd::Term;
        };
        let now = OffsetDateTime::now_utc();
        if now < accepted.expires_at {
            return JobEnd::Nak(until(accepted.expires_at, now));
        }
        let slot = &self.inner.carriers.opaque;
        let recipient = accepted.recipient.expose();
        let revoke = match state.status {
            Status::CarrierAcked => match slot.carrier.revoke(message_id.as_str(), recipient).await
            {
                RevokeResult::Revoked => RevokeOutcome::Revoked,
                // Delivered meanwhile (its receipt is on the way) or unknown to the carrier.
                RevokeResult::NotRevocable => RevokeOutcome::RevokeFailed,
                RevokeResult::Failed { code } if delivered < 5 => {
                    tracing::warn!(%message_id, code, "revoke failed; retrying");
                    return JobEnd::Nak(retry);
                }
                RevokeResult::Failed { .. } => RevokeOutcome::RevokeFailed,
            },
            // An earlier attempt may have reached the carrier although its answer was lost.
            Status::Queued | Status::RetryScheduled if state.next_attempt > 1 => {
                match slot.carrier.revoke(message_id.as_str(), recipient).await {
                    RevokeResult::Revoked => RevokeOutcome::Revoked,
                    RevokeResult::NotRevocable => RevokeOutcome::NotSubmitted,
                    RevokeResult::Failed { .. } => RevokeOutcome::RevokeFailed,
                }
            }
            Status::Queued | Status::RetryScheduled => RevokeOutcome::NotSubmitted,
            // Delivered, displayed or already ended: nothing to expire.
            _ => return JobEnd::Ack,
        };
        let cmd = MessageCommand::Expire { revoke, at: now };
        let agg = aggregate_id(tenant, message_id);
        match self
            .inner
            .executor
            .execute(&agg, cmd, &Default::default())
            .await
        {
            Ok(done) => {
                crate::report(&done.aggregate, &done.events);
                if !done.events.is_empty() {
                    tracing::info!(%message_id, revoke = ?revoke, "message expired");
                }
                JobEnd::Ack
            }
            Err(ExecuteError::Rejected(e)) => {
                tracing::debug!(%message_id, error = %e, "expiry not recorded");
                JobEnd::Ack
            }
            Err(e) => {
                tracing::warn!(%message_id, error = %e, "cannot record the expiry; retrying");
                JobEnd::Nak(retry)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn at_specs_round_up_to_whole_utc_seconds() {
        assert_eq!(
            at_spec(datetime!(2026-11-24 22:00:00.000 UTC)),
            "@at 2026-11-24T22:00:00Z"
        );
        assert_eq!(
            at_spec(datetime!(2026-11-24 22:00:00.001 UTC)),
            "@at 2026-11-24T22:00:01Z"
        );
        assert_eq!(
            at_spec(datetime!(2026-11-24 23:30:00 +01:00)),
            "@at 2026-11-24T22:30:00Z"
        );
    }
}
