//! How events of an aggregate become stored messages and back.

use sealpost_domain::events::DecodeError;
use sealpost_domain::MessageEvent;

/// An event type the store can persist: its subject token, schema version and JSON body.
pub trait StoredEvent: cqrs_es::DomainEvent {
    fn type_token(&self) -> &'static str;
    fn schema_version(&self) -> u32;
    fn encode(&self) -> serde_json::Result<Vec<u8>>;
    fn decode(event_type: &str, version: &str, body: &[u8]) -> Result<Self, DecodeError>;
}

impl StoredEvent for MessageEvent {
    fn type_token(&self) -> &'static str {
        self.event_type().as_str()
    }

    fn schema_version(&self) -> u32 {
        self.event_type().version()
    }

    fn encode(&self) -> serde_json::Result<Vec<u8>> {
        self.to_body()
    }

    fn decode(event_type: &str, version: &str, body: &[u8]) -> Result<Self, DecodeError> {
        MessageEvent::from_body(event_type.parse()?, version, body)
    }
}
