//! Fallback notices. A `fallback_triggered` event is the job: the consumer first revokes the RCS
//! message where a copy may have reached the carrier, then sends the tenant's neutral notice (no
//! message content) over the notice carrier (SMS), or publishes it for the tenant's app. The SMS
//! submission carries the message id as its client reference, so a redelivered job is answered
//! "already accepted" instead of texting the recipient twice. With device links enabled, both
//! notices carry the message's link, through which the app fetches and opens the payload.

use std::time::Duration;

use sealpost_carriers::{Content, Submission};
use sealpost_domain::events::{EndReason, FallbackChannel, FallbackTriggered, RevokeOutcome};
use sealpost_domain::{CarrierOutcome, EventType, MessageEvent};
use sealpost_eventstore::names::{Durable, EventSubject};
use sealpost_eventstore::store::HDR_EVENT_VERSION;
use time::OffsetDateTime;

use crate::jobs::{growing_delay, spawn_consumer, Job, JobEnd};
use crate::worker::outcome_label;
use crate::Delivery;

pub(crate) fn spawn(d: Delivery) -> tokio::task::JoinHandle<()> {
    let js = d.inner.js.clone();
    spawn_consumer(js, Durable::Fallback, 64, move |job| {
        let d = d.clone();
        async move {
            match EventSubject::parse(&job.subject) {
                Ok(s) => {
                    let span = crate::message_span("fallback", &s.tenant, &s.message_id);
                    tracing::Instrument::instrument(d.fallback(job), span).await
                }
                Err(_) => d.fallback(job).await,
            }
        }
    })
}

impl Delivery {
    async fn fallback(&self, job: Job) -> JobEnd {
        let (tenant, message_id) = match EventSubject::parse(&job.subject) {
            Ok(s) if s.event_type == EventType::FallbackTriggered => (s.tenant, s.message_id),
            Ok(_) => {
                tracing::warn!(subject = %job.subject, "fallback job is not a fallback_triggered event; dropping it");
                return JobEnd::Term;
            }
            Err(e) => {
                tracing::warn!(error = %e, "fallback job on an unexpected subject; dropping it");
                return JobEnd::Term;
            }
        };
        let version = job.header(HDR_EVENT_VERSION).unwrap_or("1");
        let fb: FallbackTriggered = match MessageEvent::from_body(
            EventType::FallbackTriggered,
            version,
            &job.payload,
        ) {
            Ok(MessageEvent::FallbackTriggered(f)) => f,
            _ => {
                tracing::warn!(%message_id, "fallback job is not a fallback_triggered event; dropping it");
                return JobEnd::Term;
            }
        };
        let retry = growing_delay(
            Duration::from_secs(1),
            job.delivered,
            Duration::from_secs(300),
        );
        let state = match self.load(&tenant, &message_id, Some(job.stream_seq)).await {
            Ok(l) => l.aggregate,
            Err(e) => {
                tracing::warn!(%message_id, error = %e, "cannot load the message for its fallback; retrying");
                return JobEnd::Nak(retry);
            }
        };
        let Some(accepted) = state.accepted.as_ref() else {
            return JobEnd::Term;
        };
        let recipient = accepted.recipient.expose();
        // Revoke first: the notice must never race a late RCS delivery. Not needed when the
        // single attempt was refused outright (nothing reached the carrier), or when the expiry
        // that triggered the fallback has revoked it already.
        let refused_outright =
            matches!(fb.reason, EndReason::NotCapable | EndReason::PermanentError)
                && state.next_attempt <= 2;
        let revoked_by_expiry = fb.revoke == Some(RevokeOutcome::Revoked);
        if !refused_outright && !revoked_by_expiry {
            let r = self
                .inner
                .carriers
                .opaque
                .carrier
                .revoke(message_id.as_str(), recipient)
                .await;
            tracing::info!(%message_id, revoke = ?r, "revoked before fallback");
        }
        // The device opens the payload through its link; the notice itself carries no content.
        let link = self
            .inner
            .cfg
            .device_links
            .as_ref()
            .and_then(|d| d.link(&tenant, &message_id));
        match fb.channel {
            FallbackChannel::InApp => {
                let mut body = serde_json::json!({
                    "message_id": message_id.as_str(),
                    "notice_template": fb.notice_template,
                    "at": OffsetDateTime::now_utc().unix_timestamp(),
                });
                if let Some(link) = &link {
                    body["link"] = serde_json::Value::String(link.clone());
                }
                let client = self.inner.js.client();
                match client
                    .publish(
                        sealpost_eventstore::names::notice_subject(&tenant, &message_id),
                        body.to_string().into(),
                    )
                    .await
                {
                    Ok(()) => JobEnd::Ack,
                    Err(_) => JobEnd::Nak(retry),
                }
            }
            FallbackChannel::Sms => {
                let Some(slot) = &self.inner.carriers.notice else {
                    tracing::error!(%message_id, "fallback asks for an SMS notice but no SMS carrier is configured ([carriers.sms]); retrying in a minute");
                    return JobEnd::Nak(Duration::from_secs(60));
                };
                let pass = match slot.gate.enter(self.inner.cfg.max_pause_wait).await {
                    Ok(p) => p,
                    Err(p) => return JobEnd::Nak(p.remaining),
                };
                let outcome = slot
                    .carrier
                    .submit(&Submission {
                        message_id: message_id.as_str().to_owned(),
                        recipient: recipient.to_owned(),
                        content: Content::Notice {
                            text: notice_text(
                                self.inner
                                    .cfg
                                    .notice_texts
                                    .get(&fb.notice_template)
                                    .map_or(crate::DEFAULT_NOTICE, String::as_str),
                                link.as_deref(),
                            ),
                        },
                        expire_time: None,
                    })
                    .await;
                if let CarrierOutcome::AuthFailed { code } = &outcome {
                    // The pause is set before the pass (maybe the probe) is let go.
                    return crate::carrier_auth_failed(
                        slot,
                        code,
                        self.inner.cfg.carrier_auth_pause,
                    );
                }
                pass.answered(&outcome);
                match outcome {
                    CarrierOutcome::Acked { .. } => {
                        tracing::info!(%message_id, "fallback notice sent");
                        JobEnd::Ack
                    }
                    // `answered` paused the carrier for it.
                    CarrierOutcome::Throttled { retry_after, .. } => JobEnd::Nak(
                        retry_after
                            .unwrap_or(crate::gate::DEFAULT_THROTTLE_PAUSE)
                            .max(retry),
                    ),
                    CarrierOutcome::Transient { retry_after, .. } => {
                        JobEnd::Nak(retry_after.unwrap_or(retry).max(retry))
                    }
                    other => {
                        tracing::error!(%message_id, outcome = outcome_label(&other), "the notice carrier refused the fallback notice");
                        JobEnd::Term
                    }
                }
            }
        }
    }
}

/// The SMS text: the tenant's neutral notice, then the device link on its own line when there
/// is one (the app registered for the link's host opens it; nothing of the message is in it).
fn notice_text(notice: &str, link: Option<&str>) -> String {
    match link {
        Some(link) => format!("{notice}\n{link}"),
        None => notice.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::notice_text;

    #[test]
    fn the_notice_carries_the_link_on_its_own_line_or_nothing_more() {
        assert_eq!(
            notice_text("You have a secure message.", Some("https://sp/v1/d/a/m/t")),
            "You have a secure message.\nhttps://sp/v1/d/a/m/t"
        );
        assert_eq!(notice_text("Hi", None), "Hi");
    }
}
