//! The status row a tenant sees for one message. With a [`StatusSource`] (the `messages` view in
//! Postgres, wired by the binary) the row comes from the view; a message the view has not caught
//! up with yet, or any message while the view is unreachable, is answered from its events in the
//! same field names ([`MessageView`]). The recipient is always masked.

use sealpost_domain::Message;
use serde::Serialize;
use time::OffsetDateTime;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MessageView {
    pub message_id: String,
    pub tenant: String,
    pub status: &'static str,
    pub message_type: sealpost_domain::events::MessageType,
    pub recipient_masked: String,
    pub payload_ref: String,
    pub payload_sha256: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub accepted_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Submissions made so far.
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub carrier: Option<String>,
    pub holds: Vec<String>,
    pub purged: bool,
}

impl MessageView {
    pub fn from_aggregate(m: &Message) -> Option<Self> {
        let a = m.accepted.as_ref()?;
        Some(Self {
            message_id: a.message_id.as_str().to_owned(),
            tenant: a.tenant_id.as_str().to_owned(),
            status: m.status.as_str(),
            message_type: a.message_type,
            recipient_masked: a.recipient.masked(),
            payload_ref: a.payload_ref.clone(),
            payload_sha256: a.payload_sha256.as_str().to_owned(),
            payload_size: a.payload_size,
            correlation_id: a.correlation_id.clone(),
            accepted_at: a.accepted_at,
            expires_at: a.expires_at,
            attempts: m.next_attempt.saturating_sub(1),
            carrier: m.carrier.clone(),
            holds: m.holds.iter().cloned().collect(),
            purged: m.purged,
        })
    }
}

/// Where status rows come from when not from the events: the `messages` view.
#[async_trait::async_trait]
pub trait StatusSource: Send + Sync + std::fmt::Debug {
    /// The message's row as JSON; `Ok(None)` when the view has not seen the message (yet).
    async fn status(
        &self,
        tenant: &str,
        message_id: &str,
    ) -> Result<Option<serde_json::Value>, String>;
}
