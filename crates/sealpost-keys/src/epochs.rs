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
//! <stream sequence, in decimal, of the epoch's last key event on SEALPOST_KEYS>
//! ```
//!
//! The last line ties the epoch to the key events it holds: epoch `e` publishes the directory
//! entries of every recipient with a key event in the sequence range (`through` of epoch `e - 1`,
//! `through` of epoch `e`], so a rebuild from the stream alone gives the same roots.

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
    /// The directory is at an epoch its log does not have yet (it is being logged right now).
    #[error("epoch {epoch} is not logged yet (the log has {logged}); retry in a moment")]
    Pending { epoch: u64, logged: u64 },
    #[error("the epoch ranges: {0}")]
    Db(#[from] sqlx::Error),
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

    pub fn decode(bytes: &[u8]) -> Result<Self, EpochError> {
        let bad = |why: &str| EpochError::BadEntry(why.to_owned());
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
pub type VerifiableHistory = Proven<akd::HistoryProof>;

/// Where each epoch's range of key events is fixed before the epoch is committed (the
/// `key_epochs` table): the first publisher to propose epoch `e` decides its last event, and
/// whoever commits `e` publishes exactly that range.
#[derive(Debug, Clone)]
pub struct EpochIntents {
    pool: sqlx::PgPool,
    directory: String,
}

impl EpochIntents {
    pub fn new(pool: sqlx::PgPool, directory: impl Into<String>) -> Self {
        Self {
            pool,
            directory: directory.into(),
        }
    }

    /// The last event of epoch `epoch`, if it was proposed.
    pub async fn through(&self, epoch: u64) -> Result<Option<u64>, EpochError> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT through_seq FROM key_epochs WHERE directory = $1 AND epoch = $2",
        )
        .bind(&self.directory)
        .bind(i64_of(epoch)?)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.map(|t| t.unsigned_abs()))
    }

    /// Proposes `through` as epoch `epoch`'s last event; returns the range that holds (an
    /// earlier proposal wins).
    pub async fn propose(&self, epoch: u64, through: u64) -> Result<u64, EpochError> {
        sqlx::query(
            "INSERT INTO key_epochs (directory, epoch, through_seq) VALUES ($1, $2, $3) \
             ON CONFLICT (directory, epoch) DO NOTHING",
        )
        .bind(&self.directory)
        .bind(i64_of(epoch)?)
        .bind(i64_of(through)?)
        .execute(&self.pool)
        .await?;
        self.through(epoch)
            .await?
            .ok_or_else(|| EpochError::BadEntry(format!("epoch {epoch}'s range vanished")))
    }
}

fn i64_of(n: u64) -> Result<i64, EpochError> {
    i64::try_from(n).map_err(|_| EpochError::BadEntry(format!("{n} does not fit a bigint")))
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
    /// Opens the directory with its epoch log (`log` opened with its entries). If the last
    /// publish stopped between the directory's commit and the log append (a crash), the missing
    /// epoch is logged now, with the range `intents` fixed for it.
    pub async fn open(
        directory: Directory,
        name: impl Into<String>,
        mut log: JetStreamLog,
        signer: LogSigner,
        intents: &EpochIntents,
    ) -> Result<Self, EpochError> {
        let name = name.into();
        let EpochHash(epoch, root) = directory.epoch().await?;
        let logged = log.size();
        if epoch == logged + 1 {
            let through = intents.through(epoch).await?.ok_or(EpochError::OutOfStep {
                directory: epoch,
                logged,
            })?;
            log.append(
                &EpochRecord {
                    directory: name.clone(),
                    epoch,
                    root,
                    through,
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
        let opened = Self {
            directory,
            name,
            log,
            signer,
        };
        // Every entry must decode: a log opened without its entries is a caller's mistake.
        if epoch > 0 {
            opened.record(epoch)?;
        }
        Ok(opened)
    }

    /// Opens a directory to answer queries only (a reader, not its publisher): nothing is
    /// written; an epoch committed but not logged yet is answered as [`EpochError::Pending`].
    pub fn follow(
        directory: Directory,
        name: impl Into<String>,
        log: JetStreamLog,
        signer: LogSigner,
    ) -> Self {
        Self {
            directory,
            name: name.into(),
            log,
            signer,
        }
    }

    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The latest logged epoch (0: none yet).
    pub fn epoch(&self) -> u64 {
        self.log.size()
    }

    /// The log entry of `epoch` (1-based).
    pub fn record(&self, epoch: u64) -> Result<EpochRecord, EpochError> {
        let entry = epoch
            .checked_sub(1)
            .and_then(|i| self.log.entry(i))
            .ok_or_else(|| EpochError::BadEntry(format!("epoch {epoch} is not in the log")))?;
        EpochRecord::decode(entry)
    }

    /// The last key event published so far (0: none).
    pub fn through(&self) -> Result<u64, EpochError> {
        match self.epoch() {
            0 => Ok(0),
            e => Ok(self.record(e)?.through),
        }
    }

    /// Reads epochs another publisher logged since; returns how many.
    pub async fn refresh(&mut self) -> Result<u64, EpochError> {
        Ok(self.log.refresh().await?)
    }

    /// Publishes `updates` as the next epoch, holding the key events up to stream sequence
    /// `through`, and logs it; returns the new signed checkpoint.
    pub async fn publish(
        &mut self,
        updates: Vec<(AkdLabel, akd::AkdValue)>,
        through: u64,
    ) -> Result<(EpochRecord, SignedCheckpoint), EpochError> {
        let published = self.directory.publish(updates).await?;
        let record = EpochRecord {
            directory: self.name.clone(),
            epoch: published.epoch(),
            root: published.hash(),
            through,
        };
        let index = self.log.append(&record.encode()).await?;
        if index + 1 != published.epoch() {
            return Err(EpochError::OutOfStep {
                directory: published.epoch(),
                logged: index + 1,
            });
        }
        Ok((record, self.log.checkpoint(&self.signer)?))
    }

    /// Wraps akd's proof at `epoch` with what a client needs to check it against the signed log.
    fn proven<P>(&self, proof: P, epoch: u64) -> Result<Proven<P>, EpochError> {
        let size = self.log.size();
        if epoch == 0 || epoch > size {
            return Err(EpochError::Pending {
                epoch,
                logged: size,
            });
        }
        Ok(Proven {
            proof,
            record: self.record(epoch)?,
            inclusion: self.log.tree().inclusion_proof(epoch - 1, size)?,
            checkpoint: self.log.checkpoint(&self.signer)?,
        })
    }

    /// A lookup with everything a client needs to verify it against the signed log.
    pub async fn lookup(&self, label: AkdLabel) -> Result<VerifiableLookup, EpochError> {
        let (proof, EpochHash(epoch, _)) = self.directory.lookup(label).await?;
        self.proven(proof, epoch)
    }

    /// A key history with everything a client needs to verify it against the signed log.
    pub async fn history(&self, label: &AkdLabel) -> Result<VerifiableHistory, EpochError> {
        let (proof, EpochHash(epoch, _)) = self.directory.history(label).await?;
        self.proven(proof, epoch)
    }

    /// The signed checkpoint of the log's first `size` epochs (the latest: `None`).
    pub fn checkpoint(&self, size: Option<u64>) -> Result<SignedCheckpoint, EpochError> {
        let latest = self.log.size();
        let size = size.unwrap_or(latest);
        if size > latest {
            return Err(EpochError::Pending {
                epoch: size,
                logged: latest,
            });
        }
        Ok(self.signer.sign(size, self.log.tree().root(size)?)?)
    }

    /// The inclusion proof of epoch `epoch`'s entry in the log's first `size` entries.
    pub fn inclusion(&self, epoch: u64, size: u64) -> Result<Vec<Hash>, EpochError> {
        if epoch == 0 || epoch > size {
            return Err(EpochError::Pending {
                epoch,
                logged: size,
            });
        }
        Ok(self.log.tree().inclusion_proof(epoch - 1, size)?)
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

/// Checks what anchors an answer: the checkpoint's signature, that it extends the client's last
/// checkpoint (`consistency` proves it; empty when the client has none or the sizes are equal),
/// and that the answer's epoch entry is in it. Returns the new checkpoint.
fn verify_anchor<P>(
    log_key: &CheckpointVerifier,
    directory: &str,
    answer: &Proven<P>,
    consistency: &[Hash],
    state: &ClientState,
) -> Result<Checkpoint, EpochError> {
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
) -> Result<VerifyResult, EpochError> {
    let cp = verify_anchor(log_key, directory, answer, consistency, state)?;
    let result = akd::client::lookup_verify::<Config>(
        vrf_public_key,
        answer.record.root,
        answer.record.epoch,
        label,
        answer.proof.clone(),
    )
    .map_err(|e| EpochError::Refused(format!("the lookup proof: {e:?}")))?;
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
) -> Result<Vec<VerifyResult>, EpochError> {
    let cp = verify_anchor(log_key, directory, answer, consistency, state)?;
    let results = akd::client::key_history_verify::<Config>(
        vrf_public_key,
        answer.record.root,
        answer.record.epoch,
        label,
        answer.proof.clone(),
        akd::HistoryVerificationParams::Default {
            history_params: akd::HistoryParams::Complete,
        },
    )
    .map_err(|e| EpochError::Refused(format!("the history proof: {e:?}")))?;
    state.last = Some(cp);
    Ok(results)
}
