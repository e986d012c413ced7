//! # sealpost-keys
//!
//! The key directory (in progress, issue 13): one auditable key directory (WhatsApp's `akd`)
//! per tenant, whose storage is Postgres through akd's [`akd::storage::Database`] trait.
//!
//! **Owns:** [`PgAkdStorage`] (the `Database` implementation on the `akd_records` and
//! `akd_values` tables of `migrations/`); [`Directory`], a tenant's directory with Sealpost's
//! configuration: akd's experimental configuration with the domain label [`DOMAIN_LABEL`], and
//! its VRF key; and [`PublishedDirectory`], which logs every epoch's root in a signed,
//! append-only log (`sealpost-tlog`), with [`verify_lookup`], the client's check of an answer
//! against that log (signature, consistency with the last checkpoint seen, inclusion of the
//! epoch, akd's lookup proof).
//!
//! **Must not:** see a phone number (labels are keyed hashes computed before they reach the
//! directory), implement any cryptography itself (the tree, VRF and proofs are akd's), or hold a
//! directory's state outside its storage (a restart reads it back).

/// The akd this crate is built on, for callers that verify proofs or run akd's own storage.
pub use akd;

pub mod badkeys;
mod directory;
mod entry;
mod epochs;
pub mod keypackages;
pub mod publisher;
pub mod service;
mod storage;

pub use directory::{Config, Directory, SealpostDomain, VrfSecret, DOMAIN_LABEL};
pub use entry::{DeviceKey, DirectoryEntry, KeyStatus, ENTRY_VERSION};
pub use epochs::{
    verify_history, verify_lookup, ClientState, EpochError, EpochIntents, EpochRecord, Proven,
    PublishedDirectory, VerifiableHistory, VerifiableLookup,
};
pub use storage::PgAkdStorage;
