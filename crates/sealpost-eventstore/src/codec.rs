//! How events of an aggregate become stored messages and back.

use sealpost_domain::events::DecodeError;
use sealpost_domain::MessageEvent;
use sealpost_keys_domain::{KeysDecodeError, KeysEvent};

/// An event type the store can persist: its subject token, schema version and JSON body.
pub trait StoredEvent: cqrs_es::DomainEvent {
    type DecodeError: std::error::Error + Send + Sync + 'static;
    fn type_token(&self) -> &'static str;
    fn schema_version(&self) -> u32;
    fn encode(&self) -> serde_json::Result<Vec<u8>>;
    fn decode(event_type: &str, version: &str, body: &[u8]) -> Result<Self, Self::DecodeError>;

    /// What the `Nats-Msg-Id` of an event of `aggregate_id` (`<tenant>.<id>`) is built on: by
    /// default the id without its tenant (a message id already names its tenant; it is derived
    /// from it). It must be unique across tenants.
    fn msg_id_base(aggregate_id: &str) -> &str {
        aggregate_id
            .split_once('.')
            .map_or(aggregate_id, |(_, m)| m)
    }
}

/// The key directory's events (`RecipientKeys`), all at version 1.
impl StoredEvent for KeysEvent {
    type DecodeError = KeysDecodeError;

    fn type_token(&self) -> &'static str {
        self.event_type().as_str()
    }

    fn schema_version(&self) -> u32 {
        1
    }

    fn encode(&self) -> serde_json::Result<Vec<u8>> {
        self.to_body()
    }

    fn decode(event_type: &str, version: &str, body: &[u8]) -> Result<Self, KeysDecodeError> {
        KeysEvent::decode(event_type, version, body)
    }

    /// The whole `<tenant>.<label>`: two tenants may well hold the same label (a label is a
    /// keyed hash, and nothing stops two tenants from sharing a label key).
    fn msg_id_base(aggregate_id: &str) -> &str {
        aggregate_id
    }
}

impl StoredEvent for MessageEvent {
    type DecodeError = DecodeError;

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
