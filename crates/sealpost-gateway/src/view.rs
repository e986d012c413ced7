//! Status answers. With a [`StatusSource`] (the `messages` view in Postgres, wired by the
//! application) the row comes from the view; a message the view has not caught up with yet, or
//! any message while the view is unreachable, is answered by folding its events with the same
//! [`StatusRow::apply`] the view uses, so both answers agree field for field. The recipient is
//! always masked.

use sealpost_domain::{Message, MessageId, RowSource, StatusRow, TenantId};
use sealpost_eventstore::{JetStreamEventStore, StoreError};

/// Why a status source could not answer; the gateway then answers from the events.
pub type StatusSourceError = Box<dyn std::error::Error + Send + Sync>;

/// Where status rows come from when not from the events: the `messages` view.
#[async_trait::async_trait]
pub trait StatusSource: Send + Sync + std::fmt::Debug {
    /// The message's row; `Ok(None)` when the view has not seen the message (yet).
    async fn status(
        &self,
        tenant: &TenantId,
        message_id: &MessageId,
    ) -> Result<Option<StatusRow>, StatusSourceError>;
}

/// The row folded from the message's stored events; `None` when it has none.
pub async fn row_from_events(
    store: &JetStreamEventStore<Message>,
    tenant: &TenantId,
    message_id: &MessageId,
) -> Result<Option<StatusRow>, StoreError> {
    let id = sealpost_domain::aggregate_id(tenant, message_id);
    let mut raw = store.load_raw(&id).await?;
    if raw.is_empty() {
        // A lagging follower must not answer "no such message" for one just acknowledged.
        let last = store.leader_last_seq(&id).await?;
        if last == 0 {
            return Ok(None);
        }
        raw = store.load_raw_at_least(&id, last).await?;
    }
    let mut row = StatusRow::new(tenant.as_str(), message_id.as_str());
    row.source = RowSource::Events;
    for (i, r) in raw.iter().enumerate() {
        let event = store.decode_event(r, i + 1)?;
        let correlation = r.header(sealpost_eventstore::store::HDR_CORRELATION_ID);
        row.apply(&event, r.stream_seq, correlation);
    }
    Ok(Some(row))
}
