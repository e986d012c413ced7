//! # sealpost-gateway
//!
//! The stateless ingress of Sealpost: the NATS micro service `sealpost` ([`nats`]) and the HTTP
//! API ([`http`]), both thin transports over one [`Gateway`].
//!
//! **Owns:** the public send/cancel/status contract and its error codes ([`error`]), the
//! OpenAPI description generated from the HTTP routes ([`openapi`]), validation
//! of every rule of the send command ([`send`]), tenants with their API-key hashes ([`tenants`]),
//! rate limits and daily quotas shared by every gateway through JetStream KV ([`limits`]), the
//! send path's `key_stale` check against the key directory
//! (`keys`), the NATS accounts that isolate tenants ([`accounts`]), the check that a payload reference
//! lies in the tenant's prefix and the object exists with its digest, idempotent acceptance
//! through the event store, and devices' capability links ([`device`]: fetch one message's
//! payload, report that it could not be opened).
//!
//! **Must not:** keep state a `kill -9` can lose (every answer comes from JetStream or S3; the
//! blob index and rate buckets are caches and limits, not records; the shared counters live in
//! JetStream KV); read, log or return
//! ciphertext, keys, API keys or full phone numbers (errors never echo input values); decide
//! lifecycle rules (that is `sealpost-domain`); submit to carriers (it only receives their
//! signed receipts, [`receipts`], and hands each verified one to the applier it was given, or
//! stores it raw: how a receipt changes a message is the delivery crate's).

pub mod accounts;
pub mod device;
pub mod error;
pub mod gateway;
pub mod http;
mod keys;
pub mod limits;
pub mod nats;
pub mod openapi;
pub mod receipts;
pub mod send;
pub mod server;
pub mod tenants;
pub mod view;

pub use accounts::{nats_config, tenant_accounts};
pub use error::{ApiError, ErrorCode};
pub use gateway::{CancelReply, Gateway, SendReply, SendStatus};
pub use receipts::ReceiptConfig;
pub use server::RunningGateway;
pub use tenants::{hash_api_key, TenantConfig, TenantKeysConfig, Tenants};
pub use view::StatusSource;
