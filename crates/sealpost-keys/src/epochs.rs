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
//! The epoch entry's format, [`EpochRecord`], and the client's checks are
//! `sealpost-keys-client`'s.
//!
//! The last line ties the epoch to the key events it holds: epoch `e` publishes the directory
//! entries of every recipient with a key event in the sequence range (`through` of epoch `e - 1`,
//! `through` of epoch `e`], so a rebuild from the stream alone gives the same roots.

use akd::{AkdLabel, EpochHash};
pub use sealpost_keys_client::{
    verify_history, verify_lookup, ClientState, EpochRecord, Proven, VerifiableHistory,
    VerifiableLookup, VerifyError,
};
use sealpost_tlog::{Hash, JetStreamLog, LogSigner, SignedCheckpoint};

use crate::Directory;

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

impl From<VerifyError> for EpochError {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::BadEntry(why) => EpochError::BadEntry(why),
            VerifyError::Refused(why) => EpochError::Refused(why),
        }
    }
}

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
        Ok(EpochRecord::decode(entry)?)
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
