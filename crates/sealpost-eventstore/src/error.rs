//! Event-store errors, with a kind for each decision a caller makes.

use std::fmt;

/// What a caller does about a [`StoreError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// Another writer appended to the aggregate first: reload and retry the command.
    Conflict,
    /// NATS did not answer in time or the connection broke: retry later.
    Unavailable,
    /// A stored event cannot be decoded: an operator must look.
    Corrupt,
    /// The server or stream cannot give the guarantees Sealpost needs: refuse to run.
    Unsupported,
    /// The request was refused for another reason.
    Other,
}

/// An event-store failure. The message names what failed and what to do; it never contains an
/// event body.
#[derive(Debug)]
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
    /// For a conflict: the stream sequence of the aggregate's last event as the stream leader
    /// reported it, when it did. A reload must see at least that far.
    last_seq: Option<u64>,
}

impl StoreError {
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
            last_seq: None,
        }
    }

    pub fn with_source(
        kind: StoreErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            kind,
            message: message.into(),
            source: Some(Box::new(source)),
            last_seq: None,
        }
    }

    /// Records the aggregate's last stream sequence the leader reported with a conflict.
    pub fn with_last_seq(mut self, last_seq: Option<u64>) -> Self {
        self.last_seq = last_seq;
        self
    }

    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// For a conflict: how far a reload must read (see [`StoreError::with_last_seq`]).
    pub fn last_seq(&self) -> Option<u64> {
        self.last_seq
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(s) = &self.source {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|s| s.as_ref() as &(dyn std::error::Error + 'static))
    }
}

/// Why a command did not commit.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError<E: std::error::Error> {
    /// The aggregate refused the command.
    #[error(transparent)]
    Rejected(E),
    /// Conflicts persisted through every reload-and-retry.
    #[error("gave up after {attempts} conflicting concurrent writes to the same message; retry the request")]
    Contended { attempts: u32 },
    #[error(transparent)]
    Store(#[from] StoreError),
}
