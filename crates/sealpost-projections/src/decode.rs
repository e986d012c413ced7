//! Stream messages to typed events: subject, headers, body.

use sealpost_domain::{EventType, MessageEvent};
use sealpost_eventstore::names::EventSubject;
use sealpost_eventstore::store::{HDR_CORRELATION_ID, HDR_EVENT_VERSION, HDR_SEQUENCE};
use time::OffsetDateTime;

/// One event as a projection sees it.
#[derive(Debug, Clone)]
pub struct ProjectedEvent {
    /// Stream sequence in `SEALPOST_EVENTS`.
    pub seq: u64,
    /// 1-based sequence within the message's history (`Sealpost-Sequence`).
    pub aggregate_seq: u64,
    pub tenant: String,
    pub message_id: String,
    pub correlation_id: Option<String>,
    pub event: MessageEvent,
}

impl ProjectedEvent {
    /// Decodes a stored event; `None` (with an error log naming only the sequence and the
    /// problem) when the subject or body is not one of ours.
    pub fn decode(
        seq: u64,
        subject: &str,
        headers: Option<&async_nats::HeaderMap>,
        body: &[u8],
    ) -> Option<ProjectedEvent> {
        let subject = match EventSubject::parse(subject) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(seq, error = %e, "skipping a stream message that is not an event");
                return None;
            }
        };
        let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
        let version = header(HDR_EVENT_VERSION).unwrap_or("1");
        let aggregate_seq = header(HDR_SEQUENCE)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        match MessageEvent::from_body(subject.event_type, version, body) {
            Ok(event) => Some(ProjectedEvent {
                seq,
                aggregate_seq,
                tenant: subject.tenant.into(),
                message_id: subject.message_id.into(),
                correlation_id: header(HDR_CORRELATION_ID).map(str::to_owned),
                event,
            }),
            Err(e) => {
                // The error names the type and the serde error, never the body.
                tracing::error!(seq, event_type = %subject.event_type, error = %e, "skipping an event that does not decode");
                None
            }
        }
    }

    pub fn key(&self) -> (&str, &str) {
        (&self.tenant, &self.message_id)
    }

    pub fn event_type(&self) -> EventType {
        self.event.event_type()
    }

    /// The instant the event records.
    pub fn at(&self) -> OffsetDateTime {
        self.event.at()
    }
}

/// The keys whose first event in `events` is not the first of their history, i.e. whose stored
/// state must be loaded before applying. Keys starting with `accepted` (aggregate sequence 1) are
/// new: nothing to load.
pub(crate) fn keys_to_load(events: &[ProjectedEvent]) -> (Vec<String>, Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    let (mut tenants, mut ids) = (Vec::new(), Vec::new());
    for e in events {
        if seen.insert(e.key()) && e.aggregate_seq != 1 {
            tenants.push(e.tenant.clone());
            ids.push(e.message_id.clone());
        }
    }
    (tenants, ids)
}
