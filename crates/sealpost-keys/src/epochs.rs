//! Closing akd's split-view gap: every epoch's root goes into a signed, append-only log.
//!
//! akd proves a lookup against *a* root, and leaves "every client sees the same root" out of
//! scope: a directory that shows different roots to different clients could hide a key swap.
//! Here each published epoch is an entry of a [`sealpost_tlog`] log (entry `e - 1` is epoch `e`),
//! and every answer carries a checkpoint of that log signed by the directory's log key plus the
//! inclusion proof of the epoch's entry. A client keeps the largest checkpoint it has seen and
//! checks that each new one extends it (a consistency proof); two checkpoints that do not prove
//! consistent are a split view, and the client refuses the answer.
//!
//! The epoch entry (all ASCII, each line ending in `\n`):
//!
//! ```text
//! sealpost-keys/epoch/v1
//! <directory>
//! <epoch in decimal>
//! <base64 of the 32-byte akd root>
//! ```

use akd::{AkdLabel, EpochHash, LookupProof, VerifyResult};
use base64::Engine as _;
use sealpost_tlog::{
    leaf_hash, verify_consistency, verify_inclusion, Checkpoint, CheckpointVerifier, Hash,
    JetStreamLog, LogSigner, SignedCheckpoint,
};

use crate::directory::Config;
use crate::Directory;

const EPOCH_TAG: &str = "sealpost-keys/epoch/v1";

/// What went wrong publishing or verifying.
#[derive(Debug, thiserror::Error)]
pub enum EpochError {
    #[error("key directory: {0}")]
    Akd(#[from] akd::errors::AkdError),
    #[error("epoch log: {0}")]
    Log(#[from] sealpost_tlog::LogError),
    /// The directory and its epoch log disagree in a way a crash cannot explain.
    #[error("the directory is at epoch {directory} but its epoch log has {logged} epochs; restore both from the key events")]
    OutOfStep { directory: u64, logged: u64 },
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
}

impl EpochRecord {
    pub fn encode(&self) -> Vec<u8> {
        format!(
            "{EPOCH_TAG}\n{}\n{}\n{}\n",
            self.directory,
            self.epoch,
            base64::engine::general_purpose::STANDARD.encode(self.root)
        )
        .into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, EpochError> {
        let bad = |why: &str| EpochError::BadEntry(why.to_owned());
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8"))?;
        let body = text
            .strip_suffix('\n')
            .ok_or_else(|| bad("no final newline"))?;
        let lines: Vec<&str> = body.split('\n').collect();
        let [tag, directory, epoch, root] = lines[..] else {
            return Err(bad("not four lines"));
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
        let record = EpochRecord {
            directory: directory.to_owned(),
            epoch,
            root,
        };
        if record.encode() != bytes {
            return Err(bad("not in canonical form"));
        }
        Ok(record)
    }
}

/// A lookup answer a client can check on its own.
#[derive(Debug, Clone)]
pub struct VerifiableLookup {
    pub proof: LookupProof,
    /// The epoch entry the proof is against.
    pub record: EpochRecord,
    /// The inclusion proof of that entry (index `epoch - 1`) in the checkpoint's tree.
    pub inclusion: Vec<Hash>,
    /// The epoch log's signed checkpoint.
    pub checkpoint: SignedCheckpoint,
}

/// A directory whose every epoch is logged and signed.
#[derive(Debug)]
pub struct PublishedDirectory {
    directory: Directory,
    name: String,
    log: JetStreamLog,
    signer: LogSigner,
}

impl PublishedDirectory {
    /// Opens the directory with its epoch log. If the last publish stopped between the
    /// directory's commit and the log append (a crash), the missing epoch is logged now.
    pub async fn open(
        directory: Directory,
        name: impl Into<String>,
        mut log: JetStreamLog,
        signer: LogSigner,
    ) -> Result<Self, EpochError> {
        let name = name.into();
        let EpochHash(epoch, root) = directory.epoch().await?;
        let logged = log.size();
        if epoch == logged + 1 {
            log.append(
                &EpochRecord {
                    directory: name.clone(),
                    epoch,
                    root,
                }
                .encode(),
            )
            .await?;
        } else if epoch != logged {
            return Err(EpochError::OutOfStep {
                directory: epoch,
                logged,
            });
        }
        Ok(Self {
            directory,
            name,
            log,
            signer,
        })
    }

    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// Publishes `updates` as the next epoch and logs it; returns the new signed checkpoint.
    pub async fn publish(
        &mut self,
        updates: Vec<(AkdLabel, akd::AkdValue)>,
    ) -> Result<(EpochHash, SignedCheckpoint), EpochError> {
        let published = self.directory.publish(updates).await?;
        let record = EpochRecord {
            directory: self.name.clone(),
            epoch: published.epoch(),
            root: published.hash(),
        };
        let index = self.log.append(&record.encode()).await?;
        if index + 1 != published.epoch() {
            return Err(EpochError::OutOfStep {
                directory: published.epoch(),
                logged: index + 1,
            });
        }
        Ok((published, self.log.checkpoint(&self.signer)?))
    }

    /// A lookup with everything a client needs to verify it against the signed log.
    pub async fn lookup(&self, label: AkdLabel) -> Result<VerifiableLookup, EpochError> {
        let (proof, EpochHash(epoch, root)) = self.directory.lookup(label).await?;
        let size = self.log.size();
        Ok(VerifiableLookup {
            proof,
            record: EpochRecord {
                directory: self.name.clone(),
                epoch,
                root,
            },
            inclusion: self
                .log
                .tree()
                .inclusion_proof(epoch.saturating_sub(1), size)?,
            checkpoint: self.log.checkpoint(&self.signer)?,
        })
    }

    /// The consistency proof between two sizes of the epoch log.
    pub fn consistency(&self, old: u64, new: u64) -> Result<Vec<Hash>, EpochError> {
        Ok(self.log.tree().consistency_proof(old, new)?)
    }
}

/// What a client remembers between answers: the largest checkpoint it has verified.
#[derive(Debug, Clone, Default)]
pub struct ClientState {
    pub last: Option<Checkpoint>,
}

/// Verifies a lookup answer: the checkpoint's signature, that it extends the client's last
/// checkpoint (`consistency` proves it; empty when the client has none or the sizes are equal),
/// that the epoch entry is in it, and akd's lookup proof against that epoch's root. On success
/// the client's state moves to the new checkpoint.
pub fn verify_lookup(
    vrf_public_key: &[u8],
    log_key: &CheckpointVerifier,
    directory: &str,
    label: AkdLabel,
    answer: &VerifiableLookup,
    consistency: &[Hash],
    state: &mut ClientState,
) -> Result<VerifyResult, EpochError> {
    let refused = |what: String| EpochError::Refused(what);
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
    let result = akd::client::lookup_verify::<Config>(
        vrf_public_key,
        record.root,
        record.epoch,
        label,
        answer.proof.clone(),
    )
    .map_err(|e| refused(format!("the lookup proof: {e:?}")))?;
    state.last = Some(cp);
    Ok(result)
}
