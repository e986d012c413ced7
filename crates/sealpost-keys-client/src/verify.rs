//! Verifying the directory's answers offline, as a client does.
//!
//! akd proves a lookup against *a* root and leaves "every client sees the same root" out of
//! scope: a directory that shows different roots to different clients could hide a key swap.
//! So each published epoch is an entry of a `sealpost-tlog` log (entry `e - 1` is epoch `e`),
//! and every answer carries a checkpoint of that log signed by the directory's log key plus the
//! inclusion proof of the epoch's entry. A client keeps the largest checkpoint it has seen
//! ([`ClientState`]) and checks that each new one extends it (a consistency proof); two
//! checkpoints that do not prove consistent are a split view, and the client refuses the answer.
//!
//! The epoch entry (all ASCII, each line ending in `\n`):
//!
//! ```text
//! sealpost-keys/epoch/v1
//! <directory>
//! <epoch in decimal>
//! <base64 of the 32-byte akd root>
//! <stream sequence, in decimal, of the epoch's last key event on SEALPOST_KEYS>
//! ```

use akd_core::{AkdLabel, HistoryProof, LookupProof, VerifyResult};
use base64::Engine as _;
use sealpost_tlog::{
    leaf_hash, verify_consistency, verify_inclusion, Checkpoint, CheckpointVerifier, Hash,
    SignedCheckpoint,
};

use crate::Config;

const EPOCH_TAG: &str = "sealpost-keys/epoch/v1";

/// Why an answer was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A malformed epoch entry.
    #[error("bad epoch entry: {0}")]
    BadEntry(String),
    /// An answer that does not verify; the text says which check failed.
    #[error("refused: {0}")]
    Refused(String),
}

/// One published epoch: the log entry's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochRecord {
    pub directory: String,
    pub epoch: u64,
    pub root: [u8; 32],
    /// The stream sequence of the epoch's last key event.
    pub through: u64,
}

impl EpochRecord {
    pub fn encode(&self) -> Vec<u8> {
        format!(
            "{EPOCH_TAG}\n{}\n{}\n{}\n{}\n",
            self.directory,
            self.epoch,
            base64::engine::general_purpose::STANDARD.encode(self.root),
            self.through
        )
        .into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, VerifyError> {
        let bad = |why: &str| VerifyError::BadEntry(why.to_owned());
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8"))?;
        let body = text
            .strip_suffix('\n')
            .ok_or_else(|| bad("no final newline"))?;
        let lines: Vec<&str> = body.split('\n').collect();
        let [tag, directory, epoch, root, through] = lines[..] else {
            return Err(bad("not five lines"));
        };
        if tag != EPOCH_TAG {
            return Err(bad("not a sealpost-keys/epoch/v1 entry"));
        }
        let epoch: u64 = epoch
            .parse()
            .map_err(|_| bad("the epoch is not a number"))?;
        let root: [u8; 32] = base64::engine::general_purpose::STANDARD
            .decode(root)
            .ok()
            .and_then(|r| r.try_into().ok())
            .ok_or_else(|| bad("the root is not 32 bytes of base64"))?;
        let through: u64 = through
            .parse()
            .map_err(|_| bad("the last event's sequence is not a number"))?;
        let record = EpochRecord {
            directory: directory.to_owned(),
            epoch,
            root,
            through,
        };
        if record.encode() != bytes {
            return Err(bad("not in canonical form"));
        }
        Ok(record)
    }
}

/// An answer a client can check on its own: akd's proof (`P`: a lookup or a history proof) at
/// an epoch, that epoch's log entry, its inclusion proof and the signed checkpoint.
#[derive(Debug, Clone)]
pub struct Proven<P> {
    pub proof: P,
    /// The epoch entry the proof is against.
    pub record: EpochRecord,
    /// The inclusion proof of that entry (index `epoch - 1`) in the checkpoint's tree.
    pub inclusion: Vec<Hash>,
    /// The epoch log's signed checkpoint.
    pub checkpoint: SignedCheckpoint,
}

/// A lookup answer.
pub type VerifiableLookup = Proven<LookupProof>;
/// A key-history answer.
pub type VerifiableHistory = Proven<HistoryProof>;

/// What a client remembers between answers: the largest checkpoint it has verified.
#[derive(Debug, Clone, Default)]
pub struct ClientState {
    pub last: Option<Checkpoint>,
}

/// Checks what anchors an answer: the checkpoint's signature, that it extends the client's last
/// checkpoint (`consistency` proves it; empty when the client has none or the sizes are equal),
/// and that the answer's epoch entry is in it. Returns the new checkpoint.
fn verify_anchor<P>(
    log_key: &CheckpointVerifier,
    directory: &str,
    answer: &Proven<P>,
    consistency: &[Hash],
    state: &ClientState,
) -> Result<Checkpoint, VerifyError> {
    let refused = |what: String| VerifyError::Refused(what);
    let cp = log_key
        .open(answer.checkpoint.as_bytes())
        .map_err(|e| refused(format!("the checkpoint: {e}")))?;
    if let Some(last) = &state.last {
        if cp.size < last.size {
            return Err(refused(format!(
                "the checkpoint (size {}) is older than one already seen (size {})",
                cp.size, last.size
            )));
        }
        verify_consistency(consistency, last.size, last.root, cp.size, cp.root).map_err(|e| {
            refused(format!(
                "a split view: this checkpoint does not extend the last one seen ({e})"
            ))
        })?;
    }
    let record = &answer.record;
    if record.directory != directory {
        return Err(refused(format!(
            "an answer of directory '{}', not '{directory}'",
            record.directory
        )));
    }
    if record.epoch == 0 || record.epoch > cp.size {
        return Err(refused(format!(
            "epoch {} is not in the checkpoint (size {})",
            record.epoch, cp.size
        )));
    }
    verify_inclusion(
        &answer.inclusion,
        cp.size,
        cp.root,
        record.epoch - 1,
        leaf_hash(&record.encode()),
    )
    .map_err(|e| {
        refused(format!(
            "epoch {} is not in the signed log ({e})",
            record.epoch
        ))
    })?;
    Ok(cp)
}

/// Verifies a lookup answer: its anchor in the signed log (signature, consistency with the
/// client's last checkpoint, inclusion of the epoch) and akd's lookup proof against that epoch's
/// root. On success the client's state moves to the new checkpoint.
pub fn verify_lookup(
    vrf_public_key: &[u8],
    log_key: &CheckpointVerifier,
    directory: &str,
    label: AkdLabel,
    answer: &VerifiableLookup,
    consistency: &[Hash],
    state: &mut ClientState,
) -> Result<VerifyResult, VerifyError> {
    let cp = verify_anchor(log_key, directory, answer, consistency, state)?;
    let result = akd_core::verify::lookup_verify::<Config>(
        vrf_public_key,
        answer.record.root,
        answer.record.epoch,
        label,
        answer.proof.clone(),
    )
    .map_err(|e| VerifyError::Refused(format!("the lookup proof: {e:?}")))?;
    state.last = Some(cp);
    Ok(result)
}

/// Verifies a key-history answer like [`verify_lookup`], with akd's complete-history check:
/// every version of the label's value, newest first.
pub fn verify_history(
    vrf_public_key: &[u8],
    log_key: &CheckpointVerifier,
    directory: &str,
    label: AkdLabel,
    answer: &VerifiableHistory,
    consistency: &[Hash],
    state: &mut ClientState,
) -> Result<Vec<VerifyResult>, VerifyError> {
    let cp = verify_anchor(log_key, directory, answer, consistency, state)?;
    let results = akd_core::verify::key_history_verify::<Config>(
        vrf_public_key,
        answer.record.root,
        answer.record.epoch,
        label,
        answer.proof.clone(),
        akd_core::verify::history::HistoryVerificationParams::Default {
            history_params: akd_core::verify::history::HistoryParams::Complete,
        },
    )
    .map_err(|e| VerifyError::Refused(format!("the history proof: {e:?}")))?;
    state.last = Some(cp);
    Ok(results)
}
