//! # sealpost-keys
//!
//! The key directory: one auditable key directory (WhatsApp's `akd`) per tenant, whose storage
//! is Postgres through akd's [`akd::storage::Database`] trait, published epoch by epoch into a
//! signed, append-only log, and served by the `keys` role.
//!
//! **Owns:** [`PgAkdStorage`] (the `Database` implementation, with the epoch fence); the
//! directory entry format ([`DirectoryEntry`]); [`Directory`] (akd with Sealpost's configuration
//! and VRF key); [`PublishedDirectory`] (each epoch's root in a `sealpost-tlog` log, with the
//! client's checks [`verify_lookup`] and [`verify_history`]); the epoch publisher
//! ([`publisher`]: lease, fixed epoch ranges, archive, alerts, webhook signatures, rebuild); the
//! key API ([`service`]); the bad-key list ([`badkeys`]); KeyPackage validation
//! ([`keypackages`], OpenMLS).
//!
//! **Must not:** see a phone number (labels are keyed hashes computed before they reach the
//! directory), implement any cryptography itself (the tree, VRF and proofs are akd's, the log's
//! hashing is RFC 9162's, KeyPackages are OpenMLS's), or hold a directory's state outside its
//! storage and the key stream (a restart reads it back; a rebuild from the stream gives the same
//! roots). It knows no HTTP or S3: the application wires in the archive and the webhook.

/// The akd this crate is built on, for callers that verify proofs or run akd's own storage.
pub use akd;

pub mod badkeys;
mod directory;
pub mod entry;
mod epochs;
pub mod keypackages;
pub mod publisher;
pub mod service;
mod storage;

pub use directory::{Config, Directory, SealpostDomain, VrfSecret, DOMAIN_LABEL};
pub use epochs::{
    verify_history, verify_lookup, ClientState, EpochError, EpochIntents, EpochRecord, Proven,
    PublishedDirectory, VerifiableHistory, VerifiableLookup,
};
pub use sealpost_keys_client::{api, DeviceKey, DirectoryEntry, KeyStatus, ENTRY_VERSION};
pub use storage::PgAkdStorage;
