//! The delivery worker: one job per `accepted` (first attempt) or `queued` (redrive) event.
//!
//! Per job: rebuild the message (from the job itself on first delivery of an `accepted` event,
//! otherwise by a load), skip it if it is settled, NAK it until `not_before` if it is not due,
//! end it if it expired, store the expiry timer before any attempt after the first (the
//! carrier's TTL bounds the first), pass the carrier's throttle, submit attempt
//! `next_attempt` with a presigned GET URL of the ciphertext, and record the answer; an answer
//! about our credentials (401/403) pauses the carrier instead and records nothing. The job is
//! acked only after the answer is an event; a retry NAKs it with the delay the domain chose.

use std::time::Duration;

use sealpost_carriers::{Content, Submission};
use sealpost_domain::{
    aggregate_id, CarrierOutcome, EventType, Message, MessageCommand, MessageError, MessageId,
    Status, TenantId,
};
use sealpost_eventstore::names::{Durable, EventSubject};
use sealpost_eventstore::{ExecuteError, RawEvent};
use time::OffsetDateTime;
use tracing::Instrument;

use crate::jobs::{growing_delay, spawn_consumer, Job, JobEnd};
use crate::{correlation, until, Delivery};

pub(crate) fn spawn(d: Delivery) -> tokio::task::JoinHandle<()> {
    let js = d.inner.js.clone();
    let concurrency = d.inner.cfg.concurrency;
    spawn_consumer(js, Durable::Delivery, concurrency, move |job| {
        let d = d.clone();
        async move {
            let subject = match EventSubject::parse(&job.subject) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "delivery job on an unexpected subject; dropping it");
                    return JobEnd::Term;
                }
            };
            let span = crate::message_span("deliver", &subject.tenant, &subject.message_id);
            d.deliver(job, subject).instrument(span).await
        }
    })
}

/// The default of [`crate::DeliveryConfig::carrier_ttl_grace`]: how long after `expires_at` the
/// carrier's own TTL (RBM `expireTime`) takes a message back.
pub const CARRIER_TTL_GRACE: Duration = Duration::from_secs(30);

/// Retry delay after a store hiccup.
const STORE_RETRY: Duration = Duration::from_millis(200);

impl Delivery {
    /// Runs one job, within its message's span (`message_span`, which carries the ids).
    pub(crate) async fn deliver(&self, job: Job, subject: EventSubject) -> JobEnd {
        let EventSubject {
            tenant,
            message_id,
            event_type: kind,
        } = subject;
        let span = tracing::Span::current();
        if let Some(c) = job.header(sealpost_eventstore::store::HDR_CORRELATION_ID) {
            span.record("correlation_id", c);
        }
        self.inner.receipts.remember_tenant(&message_id, &tenant);
        let agg = aggregate_id(&tenant, &message_id);
        let state = match self.job_state(&agg, &job, kind, &tenant, &message_id).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot load the message; retrying the job");
                return JobEnd::Nak(growing_delay(
                    STORE_RETRY,
                    job.delivered,
                    Duration::from_secs(5),
                ));
            }
        };
        let Some(accepted) = state.accepted.as_ref() else {
            tracing::warn!("delivery job for a message without an accepted event; dropping it");
            return JobEnd::Term;
        };
        if !state.status.awaiting_submission() {
            return JobEnd::Ack;
        }
        let now = OffsetDateTime::now_utc();
        if let Some(nb) = state.not_before.filter(|nb| *nb > now) {
            return JobEnd::Nak(until(nb, now));
        }
        let attempt = state.next_attempt;
        span.record("attempt", attempt);
        if now >= accepted.expires_at {
            // Submitting now would only have to be revoked. A message that never got past its
            // first attempt has no timer to end it (see below): end it here, as the timer would.
            return Box::pin(self.expire_now(&tenant, &message_id, job.delivered)).await;
        }
        // The first attempt stores no timer: a message the carrier acks is bounded by the
        // carrier's own TTL, set to `expires_at` (RBM revokes it then and says so in a
        // TTL_EXPIRATION_REVOKED receipt). Only a message still undelivered after it gets a
        // timer, before its second attempt (stored again on each later one: a timer's subject is
        // its identity, so that replaces it).
        let first = attempt == 1;
        if !first {
            // Boxed, as the other rare paths here: a job's future is moved whole into its
            // task, so what only some jobs need is allocated when they need it.
            if let Err(e) =
                Box::pin(self.schedule_expiry(&tenant, &message_id, accepted.expires_at)).await
            {
                tracing::warn!(error = %e, "cannot store the expiry timer; retrying the job");
                return JobEnd::Nak(growing_delay(
                    STORE_RETRY,
                    job.delivered,
                    Duration::from_secs(5),
                ));
            }
        }
        let slot = &self.inner.carriers.opaque;
        // Everything but the request itself happens before the gate, so that a job let through
        // submits at once and a 429's pause holds back as few in-flight jobs as possible.
        let content = match self.opaque_content(&tenant, accepted, now).await {
            Ok(c) => c,
            Err(end) => return end,
        };
        let submission = Submission {
            message_id: message_id.as_str().to_owned(),
            recipient: accepted.recipient.expose().to_owned(),
            content,
            // From the second attempt on, Sealpost's own timer ends the message and revokes it
            // at `expires_at`, and the carrier's TTL is a backstop a little later, for a revoke
            // that cannot get through. On the first, the carrier's TTL is the timer.
            expire_time: Some(if first {
                accepted.expires_at
            } else {
                accepted.expires_at + self.inner.cfg.carrier_ttl_grace
            }),
        };
        let pass = match slot.gate.enter(self.inner.cfg.max_pause_wait).await {
            Ok(p) => p,
            Err(paused) => return JobEnd::Nak(paused.remaining),
        };
        // Receipts of this message arriving meanwhile in this process wait for the record.
        let _answer = self.inner.receipts.awaiting_answer(&message_id);
        let outcome = slot.carrier.submit(&submission).await;
        match &outcome {
            // About our credentials, not the message: the same attempt is tried again later.
            // The pause is set before the pass (maybe the probe) is let go.
            CarrierOutcome::AuthFailed { code } => {
                return crate::carrier_auth_failed(slot, code, self.inner.cfg.carrier_auth_pause)
            }
            // A 429 pauses the carrier (`answered`) before the pass is let go.
            _ => pass.answered(&outcome),
        }
        let label = outcome_label(&outcome);
        span.record("outcome", label.as_str());
        tracing::debug!(outcome = %label, "carrier answered");
        let cmd = MessageCommand::RecordCarrierResult {
            attempt,
            carrier: slot.carrier.name().to_owned(),
            outcome: outcome.clone(),
            at: OffsetDateTime::now_utc(),
        };
        match self
            .inner
            .executor
            .execute(&agg, cmd, &correlation(job.headers.as_ref()))
            .await
        {
            Ok(done) => {
                crate::report(&done.aggregate, &done.events);
                match done.aggregate.status {
                    Status::RetryScheduled | Status::Queued => {
                        let nb = done.aggregate.not_before.unwrap_or(now);
                        JobEnd::Nak(until(nb, OffsetDateTime::now_utc()))
                    }
                    _ => JobEnd::Ack,
                }
            }
            Err(ExecuteError::Rejected(MessageError::AlreadyFinal(status))) => {
                if matches!(outcome, CarrierOutcome::Acked { .. }) {
                    // Expired or cancelled while this submission was in flight: take it back.
                    let r = Box::pin(
                        slot.carrier
                            .revoke(message_id.as_str(), accepted.recipient.expose()),
                    )
                    .await;
                    tracing::info!(%status, revoke = ?r, "message ended during its submission; revoked at the carrier");
                }
                JobEnd::Ack
            }
            // Already submitted or ended by someone else: this job has nothing left to do.
            Err(ExecuteError::Rejected(e)) => {
                tracing::debug!(error = %e, "carrier result not recorded");
                JobEnd::Ack
            }
            Err(e) => {
                // Not recorded: the redelivered job resubmits under the same carrier message id,
                // which the carrier answers as already accepted.
                tracing::warn!(error = %e, "cannot record the carrier's answer; retrying the job");
                JobEnd::Nak(growing_delay(
                    STORE_RETRY,
                    job.delivered,
                    Duration::from_secs(5),
                ))
            }
        }
    }

    /// The message as of this job. The first delivery of an `accepted` event is the message's
    /// whole history, so it is decoded from the job instead of loaded; the executor checks that
    /// assumption on the next append.
    async fn job_state(
        &self,
        agg: &str,
        job: &Job,
        kind: EventType,
        tenant: &TenantId,
        message_id: &MessageId,
    ) -> Result<Message, sealpost_eventstore::StoreError> {
        if kind == EventType::Accepted && job.delivered == 1 {
            let raw = RawEvent {
                subject: job.subject.clone(),
                stream_seq: job.stream_seq,
                headers: job.headers.clone().unwrap_or_default(),
                body: job.payload.clone(),
            };
            let event = self.inner.executor.store().decode_event(&raw, 1)?;
            let mut m = Message::default();
            cqrs_es_apply(&mut m, event);
            self.inner.executor.prime(agg, m.clone(), 1, job.stream_seq);
            return Ok(m);
        }
        Ok(
            Box::pin(self.load(tenant, message_id, Some(job.stream_seq)))
                .await?
                .aggregate,
        )
    }

    async fn opaque_content(
        &self,
        tenant: &TenantId,
        accepted: &sealpost_domain::events::Accepted,
        now: OffsetDateTime,
    ) -> Result<Content, JobEnd> {
        let r = match self.inner.blobs.parse_ref(tenant, &accepted.payload_ref) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "stored payload reference is invalid; the job waits for an operator");
                return Err(JobEnd::Nak(Duration::from_secs(60)));
            }
        };
        let ttl = self
            .inner
            .cfg
            .payload_url_ttl
            .min(until(accepted.expires_at, now))
            .max(Duration::from_secs(1));
        match self.inner.blobs.presign_get(&r, ttl).await {
            Ok(url) => Ok(Content::Opaque {
                url,
                sha256: accepted.payload_sha256.as_str().to_owned(),
                size: accepted.payload_size,
                link: self
                    .inner
                    .cfg
                    .device_links
                    .as_ref()
                    .and_then(|d| d.link(tenant, &accepted.message_id)),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot presign the payload URL; retrying the job");
                Err(JobEnd::Nak(Duration::from_secs(1)))
            }
        }
    }
}

fn cqrs_es_apply(m: &mut Message, e: sealpost_domain::MessageEvent) {
    use cqrs_es::Aggregate as _;
    m.apply(e);
}

/// A log-safe label of a carrier answer (codes never carry numbers or URLs).
pub(crate) fn outcome_label(o: &CarrierOutcome) -> String {
    match o {
        CarrierOutcome::Acked { .. } => "acked".into(),
        CarrierOutcome::Transient { code, .. } => format!("transient:{code}"),
        CarrierOutcome::Throttled { code, .. } => format!("throttled:{code}"),
        CarrierOutcome::Permanent { code } => format!("permanent:{code}"),
        CarrierOutcome::NotRcsCapable => "not_rcs_capable".into(),
        CarrierOutcome::AuthFailed { code } => format!("auth_failed:{code}"),
    }
}
