//! A log persisted on one JetStream subject: entry `i` is the `i`-th message on the subject.
//!
//! - **Append** publishes with `Nats-Expected-Last-Subject-Sequence` set to the stream sequence of
//!   the log's last entry as this writer knows it, so a second writer (or a stale one after a
//!   failover) is refused instead of forking the log ([`LogError::Conflict`]), and with
//!   `Nats-Msg-Id: <subject>:<index>`, so a resend after a lost ack is stored once.
//! - **Open** reads the subject from its first message to its last and rebuilds the [`Tree`]:
//!   the stream is the log, the tree is derived and never stored.
//!
//! The stream must keep every message (no limits, `deny_delete`, `deny_purge`); the caller owns
//! its definition.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::HeaderMap;
use futures::StreamExt;

use crate::checkpoint::{LogSigner, SignedCheckpoint};
use crate::tree::Tree;
use crate::{LogError, Result};

/// Where a log lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLocation {
    pub stream: String,
    /// One subject, no wildcards.
    pub subject: String,
}

/// A log on JetStream, with its tree in memory.
#[derive(Debug)]
pub struct JetStreamLog {
    js: async_nats::jetstream::Context,
    at: LogLocation,
    tree: Tree,
    /// The stream sequence of the last entry (0: none).
    last_seq: u64,
    /// The entries themselves, when opened with [`JetStreamLog::open_with_entries`].
    entries: Option<Vec<bytes::Bytes>>,
}

fn nats<E: Into<async_nats::Error>>(what: &'static str) -> impl FnOnce(E) -> LogError {
    move |e| LogError::Nats {
        what,
        source: e.into(),
    }
}

/// How long to wait for the next entry while reading a log back.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

impl JetStreamLog {
    /// Reads the log back from its subject. `progress` is called with (entries read, total).
    pub async fn open(
        js: async_nats::jetstream::Context,
        at: LogLocation,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<Self> {
        Self::read(js, at, progress, None).await
    }

    /// Like [`JetStreamLog::open`], and keeps every entry in memory for [`JetStreamLog::entry`]
    /// (for logs of small entries, such as a key directory's epochs).
    pub async fn open_with_entries(
        js: async_nats::jetstream::Context,
        at: LogLocation,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<Self> {
        Self::read(js, at, progress, Some(Vec::new())).await
    }

    async fn read(
        js: async_nats::jetstream::Context,
        at: LogLocation,
        progress: &mut (dyn FnMut(u64, u64) + Send),
        entries: Option<Vec<bytes::Bytes>>,
    ) -> Result<Self> {
        let mut log = JetStreamLog {
            js,
            at,
            tree: Tree::new(),
            last_seq: 0,
            entries,
        };
        for (seq, entry) in log.read_from(0, progress).await? {
            log.push(seq, entry);
        }
        Ok(log)
    }

    fn push(&mut self, seq: u64, entry: bytes::Bytes) {
        self.tree.append(&entry);
        self.last_seq = seq;
        if let Some(entries) = &mut self.entries {
            entries.push(entry);
        }
    }

    /// The entry at `index`, when the log was opened with its entries.
    pub fn entry(&self, index: u64) -> Option<&[u8]> {
        let i = usize::try_from(index).ok()?;
        self.entries.as_ref()?.get(i).map(|e| e.as_ref())
    }

    /// The entries after stream sequence `after`, as (stream sequence, bytes).
    async fn read_from(
        &self,
        after: u64,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<Vec<(u64, bytes::Bytes)>> {
        let stream = self
            .js
            .get_stream(&self.at.stream)
            .await
            .map_err(nats("opening the log's stream"))?;
        let last = match stream
            .get_last_raw_message_by_subject(&self.at.subject)
            .await
        {
            Ok(m) => m.sequence,
            Err(e)
                if e.kind()
                    == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
            {
                return Ok(vec![]);
            }
            Err(e) => return Err(nats("reading the log's last entry")(e)),
        };
        if last <= after {
            return Ok(vec![]);
        }
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject: self.at.subject.clone(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: after + 1,
                },
                ..Default::default()
            })
            .await
            .map_err(nats("creating a reader of the log"))?;
        let total = consumer.cached_info().num_pending;
        let mut messages = consumer.messages().await.map_err(nats("reading the log"))?;
        let mut out = Vec::new();
        loop {
            let msg = tokio_timeout(READ_TIMEOUT, messages.next())
                .await
                .ok_or_else(|| LogError::Invalid("timed out reading the log".into()))?;
            let msg = match msg {
                Some(Ok(m)) => m,
                Some(Err(e)) => return Err(nats("reading the log")(e)),
                None => return Err(LogError::Invalid("the log reader ended early".into())),
            };
            let seq = msg
                .info()
                .map_err(nats("a log entry's metadata"))?
                .stream_sequence;
            if seq > last {
                break;
            }
            out.push((seq, msg.payload.clone()));
            progress(out.len() as u64, total);
            if seq == last {
                break;
            }
        }
        Ok(out)
    }

    /// Reads entries appended by another writer since this one last read.
    pub async fn refresh(&mut self) -> Result<u64> {
        let new = self.read_from(self.last_seq, &mut |_, _| {}).await?;
        let n = new.len() as u64;
        for (seq, entry) in new {
            self.push(seq, entry);
        }
        Ok(n)
    }

    pub fn location(&self) -> &LogLocation {
        &self.at
    }

    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    pub fn size(&self) -> u64 {
        self.tree.size()
    }

    /// Appends one entry; returns its index. If the entry at that index is already stored (a
    /// resend after a lost ack), that counts as appended. On [`LogError::Conflict`] nothing was
    /// appended by this call: another writer got there first with another entry; this log has
    /// read what it missed, so the caller can decide again against the new state.
    pub async fn append(&mut self, entry: &[u8]) -> Result<u64> {
        let index = self.tree.size();
        let mut headers = HeaderMap::new();
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            self.last_seq.to_string().as_str(),
        );
        headers.insert(
            "Nats-Msg-Id",
            format!("{}:{index}", self.at.subject).as_str(),
        );
        let sent = self
            .js
            .publish_with_headers(self.at.subject.clone(), headers, entry.to_vec().into())
            .await
            .map_err(nats("appending to the log"))?
            .await;
        match sent {
            Ok(ack) if !ack.duplicate => {
                self.push(ack.sequence, bytes::Bytes::copy_from_slice(entry));
                Ok(index)
            }
            // Stored before under this index's Msg-Id: ours (a resend) only if it is our entry.
            Ok(ack) => {
                let stored = self
                    .js
                    .get_stream(&self.at.stream)
                    .await
                    .map_err(nats("opening the log's stream"))?
                    .get_raw_message(ack.sequence)
                    .await
                    .map_err(nats("reading back a duplicate append"))?;
                if stored.payload.as_ref() == entry && stored.subject.as_str() == self.at.subject {
                    self.push(ack.sequence, bytes::Bytes::copy_from_slice(entry));
                    Ok(index)
                } else {
                    Err(self.conflict())
                }
            }
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                // Someone appended since we last read: perhaps this very entry, by an earlier
                // attempt whose ack was lost. Read what we missed and judge by the entry stored
                // at our index.
                let expected = self.last_seq;
                let missed = self.read_from(self.last_seq, &mut |_, _| {}).await?;
                let ours = missed.first().is_some_and(|(_, e)| e.as_ref() == entry);
                for (seq, e) in missed {
                    self.push(seq, e);
                }
                if ours {
                    Ok(index)
                } else {
                    Err(LogError::Conflict {
                        subject: self.at.subject.clone(),
                        expected,
                    })
                }
            }
            Err(e) => Err(nats("appending to the log")(e)),
        }
    }

    fn conflict(&self) -> LogError {
        LogError::Conflict {
            subject: self.at.subject.clone(),
            expected: self.last_seq,
        }
    }

    /// The signed checkpoint of the whole log as this writer knows it.
    pub fn checkpoint(&self, signer: &LogSigner) -> Result<SignedCheckpoint> {
        signer.sign(self.tree.size(), self.tree.root(self.tree.size())?)
    }
}

async fn tokio_timeout<F: std::future::Future>(d: Duration, f: F) -> Option<F::Output> {
    tokio::time::timeout(d, f).await.ok()
}

/// The stream settings a log needs: every message kept (no limits, no discard), nothing deleted
/// or purged, and a duplicate window for the append's `Nats-Msg-Id`.
pub fn stream_config(name: &str, subjects: Vec<String>) -> async_nats::jetstream::stream::Config {
    async_nats::jetstream::stream::Config {
        name: name.to_owned(),
        subjects,
        storage: async_nats::jetstream::stream::StorageType::File,
        retention: async_nats::jetstream::stream::RetentionPolicy::Limits,
        deny_delete: true,
        deny_purge: true,
        allow_direct: true,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}
