//! # sealpost-tlog
//!
//! An append-only log that anyone can verify offline: the key directory publishes its epoch
//! roots through it, and the compliance audit log is meant to reuse it unchanged.
//!
//! **Owns:**
//! - [`Tree`]: the log's Merkle tree with RFC 9162 hashing (leaf `SHA-256(0x00 || entry)`, node
//!   `SHA-256(0x01 || left || right)`), roots at any size, inclusion and consistency proofs, and
//!   the stand-alone verifiers [`verify_inclusion`] and [`verify_consistency`] that need nothing
//!   but the proof, the sizes and the roots.
//! - [`LogSigner`] and [`CheckpointVerifier`]: checkpoints in the C2SP `tlog-checkpoint` format,
//!   signed as C2SP signed notes with Ed25519, and their verification.
//! - [`JetStreamLog`]: the log persisted as the messages of one JetStream subject, one entry per
//!   message in order, appended with optimistic concurrency (one writer at a time, a second one
//!   gets [`LogError::Conflict`]) and `Nats-Msg-Id` dedupe, and rebuilt from the subject on open.
//!
//! Every byte format is specified in `docs/tlog.md`, with the test vectors the tests check.
//!
//! **Must not:** decide what goes into a log (callers own their entry format), hold anything
//! secret besides the signing key it is given, or implement a hash or signature primitive: SHA-256
//! and the proof algorithms come from `tlog_tiles` (Cloudflare's port of Go's `sumdb/tlog`), the
//! note format from `signed_note` (the port of Go's `sumdb/note`), Ed25519 from `ed25519-dalek`.

mod checkpoint;
mod jetstream;
mod tree;

pub use checkpoint::{Checkpoint, CheckpointVerifier, LogSigner, SignedCheckpoint};
pub use jetstream::{stream_config, JetStreamLog, LogLocation};
pub use tlog_tiles::{Hash, HASH_SIZE};
pub use tree::{decode_proof, encode_proof, leaf_hash, verify_consistency, verify_inclusion, Tree};

/// What went wrong with a log, a proof or a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A size or index outside the tree, or a malformed argument.
    #[error("{0}")]
    Invalid(String),
    /// The proof does not prove what it was checked against.
    #[error("the proof does not verify: {0}")]
    ProofFailed(String),
    /// A checkpoint that does not parse or whose signature does not verify.
    #[error("bad checkpoint: {0}")]
    BadCheckpoint(String),
    /// A signing or verifier key that does not parse.
    #[error("bad key: {0}")]
    BadKey(String),
    /// Another writer appended to the log since this one last read it; reopen and retry.
    #[error("another writer appended to log {subject} (expected its last sequence {expected}); reopen the log and retry")]
    Conflict { subject: String, expected: u64 },
    /// The stream answered with an error or not at all.
    #[error("JetStream {what}: {source}")]
    Nats {
        what: &'static str,
        #[source]
        source: async_nats::Error,
    },
}

pub type Result<T, E = LogError> = std::result::Result<T, E>;
