//! # sealpost-keys-client
//!
//! The client's half of the key directory, for the SDK, the CLI and auditors: everything needed
//! to talk to the key API and to check its answers offline, and nothing of the server.
//!
//! **Owns:**
//! - [`api`]: the key API's request and answer bodies and its NATS subjects;
//! - [`DirectoryEntry`]: what a recipient's label maps to (its device keys), the value akd
//!   commits to;
//! - [`verify_lookup`] and [`verify_history`]: akd's proof against an epoch's root, that epoch's
//!   inclusion in the signed epoch log, and the log's consistency with the last checkpoint the
//!   client saw ([`ClientState`]), so a split view is refused.
//!
//! **Must not:** depend on a server crate (storage, NATS, the event store), hold a secret, or
//! implement a primitive: the proofs are akd's (`akd_core`, the same version the server runs),
//! the log's hashing and checkpoints are `sealpost-tlog`'s.

pub mod api;
mod config;
mod entry;
mod verify;

/// The akd half this crate verifies with, for callers that name its types.
pub use akd_core;
pub use config::{Config, SealpostDomain, DOMAIN_LABEL};
pub use entry::{DeviceKey, DirectoryEntry, KeyStatus, ENTRY_VERSION};
pub use verify::{
    verify_history, verify_lookup, ClientState, EpochRecord, Proven, VerifiableHistory,
    VerifiableLookup, VerifyError,
};
