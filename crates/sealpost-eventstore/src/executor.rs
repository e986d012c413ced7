//! Running a command against the store: load, decide, append; on a conflict, reload and retry.
//!
//! cqrs-es's `CqrsFramework` gives up on the first conflict and does not say whether a command
//! wrote anything. The gateway needs both: a resent send must answer `duplicate`, and two
//! workers racing on one message must both end with the right result. [`CommandExecutor`] reports
//! the committed events (none for a duplicate or late command) and the aggregate after them.

use std::collections::HashMap;
use std::time::Duration;

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;

use crate::codec::StoredEvent;
use crate::error::{ExecuteError, StoreErrorKind};
use crate::store::{JetStreamEventStore, Loaded};

/// The result of a command that was accepted by the aggregate.
#[derive(Debug)]
pub struct Executed<A: Aggregate> {
    /// The events written; empty when the command changed nothing.
    pub events: Vec<A::Event>,
    /// The aggregate sequence of the first written event (version + 1 when none was written).
    pub first_sequence: usize,
    /// The aggregate after the command.
    pub aggregate: A,
    /// Stream sequence of the aggregate's last event.
    pub last_stream_seq: u64,
    /// How many times the command was reloaded after a conflict.
    pub retries: u32,
}

/// Executes commands with bounded reload-and-retry on optimistic-concurrency conflicts.
///
/// With [`CommandExecutor::with_cache`], the state an earlier command left is kept in memory and
/// the next command on the same aggregate decides on it without a load. The cache is only
/// trusted when it is proven right: an append from cached state carries the cached expected
/// sequence, so a stale entry conflicts and is reloaded; a rejection or a no-op decided on cached
/// state is checked against the aggregate's last sequence at the stream leader before anyone is
/// told, and decided again when the leader holds more. A `kill -9` loses nothing but warm
/// entries.
///
/// The same check covers a load itself: any replica of a replicated stream answers a direct get,
/// and a follower can lag. A decision to append needs no check (a stale append conflicts, and the
/// conflict names the sequence to reload from); a refusal or a no-op does.
#[derive(Debug)]
pub struct CommandExecutor<A: Aggregate> {
    store: JetStreamEventStore<A>,
    services: A::Services,
    max_attempts: u32,
    cache: Option<Cache<A>>,
}

/// Aggregate id → (state, version, last stream sequence). Bounded; evicts one entry at a time
/// (S3-FIFO), never everything at once.
type Cache<A> = quick_cache::sync::Cache<String, (A, usize, u64)>;

impl<A> CommandExecutor<A>
where
    A: Aggregate + Clone,
    A::Event: StoredEvent,
    A::Command: Clone,
{
    pub fn new(store: JetStreamEventStore<A>, services: A::Services) -> Self {
        Self {
            store,
            services,
            max_attempts: 8,
            cache: None,
        }
    }

    /// Keeps up to `capacity` aggregates' latest state in memory (see the type's docs).
    pub fn with_cache(mut self, capacity: usize) -> Self {
        self.cache = (capacity > 0).then(|| Cache::new(capacity));
        self
    }

    fn cached(&self, aggregate_id: &str) -> Option<Loaded<A>> {
        let (aggregate, version, last_stream_seq) = self.cache.as_ref()?.get(aggregate_id)?;
        Some(Loaded {
            aggregate_id: aggregate_id.to_owned(),
            aggregate,
            version,
            last_stream_seq,
        })
    }

    fn forget(&self, aggregate_id: &str) {
        if let Some(cache) = &self.cache {
            cache.remove(aggregate_id);
        }
    }

    /// Seeds the cache with state the caller rebuilt itself, e.g. a worker that holds the
    /// aggregate's only event as its job. The entry is trusted like any other: the next append
    /// carries `last_stream_seq` as its expectation, so wrong state conflicts and is reloaded.
    /// Without a cache this does nothing.
    pub fn prime(&self, aggregate_id: &str, aggregate: A, version: usize, last_stream_seq: u64) {
        if let Some(cache) = &self.cache {
            // A full cache evicts a cold entry; a miss later only costs a load.
            cache.insert(
                aggregate_id.to_owned(),
                (aggregate, version, last_stream_seq),
            );
        }
    }

    /// How many times a command is tried in all before [`ExecuteError::Contended`].
    pub fn with_max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    pub fn store(&self) -> &JetStreamEventStore<A> {
        &self.store
    }

    pub async fn execute(
        &self,
        aggregate_id: &str,
        command: A::Command,
        metadata: &HashMap<String, String>,
    ) -> Result<Executed<A>, ExecuteError<A::Error>> {
        self.run(aggregate_id, command, metadata, false).await
    }

    /// For a command that usually creates its aggregate (a send): decides on the empty aggregate
    /// without loading, and appends expecting no earlier event. When the aggregate exists after
    /// all, the append conflicts (or the decision is refused or empty) and the command is decided
    /// again on a fresh load, exactly as for a stale cache entry. A new aggregate costs one round
    /// trip instead of two; a resend costs one more.
    pub async fn execute_presuming_new(
        &self,
        aggregate_id: &str,
        command: A::Command,
        metadata: &HashMap<String, String>,
    ) -> Result<Executed<A>, ExecuteError<A::Error>> {
        self.run(aggregate_id, command, metadata, true).await
    }

    async fn run(
        &self,
        aggregate_id: &str,
        command: A::Command,
        metadata: &HashMap<String, String>,
        presume_new: bool,
    ) -> Result<Executed<A>, ExecuteError<A::Error>> {
        let mut conflicts = 0;
        let mut from_cache = true;
        // Once known, the stream sequence the next load must reach: the aggregate's last event
        // as the leader reported it. A state loaded that far is proven; any other (cached,
        // presumed new, or read from a replica that may lag) is only trusted to append, since a
        // stale append conflicts.
        let mut at_least: Option<u64> = None;
        while conflicts < self.max_attempts {
            let unproven = match (from_cache, presume_new) {
                (false, _) => None,
                (true, false) => self.cached(aggregate_id),
                (true, true) => Some(Loaded {
                    aggregate_id: aggregate_id.to_owned(),
                    aggregate: A::default(),
                    version: 0,
                    last_stream_seq: 0,
                }),
            };
            let from_memory = unproven.is_some();
            let (mut loaded, proven) = match (unproven, at_least) {
                (Some(state), _) => (state, false),
                (None, Some(seq)) => (self.store.load_at_least(aggregate_id, seq).await?, true),
                (None, None) => (self.store.load(aggregate_id).await?, false),
            };
            let sink = EventSink::<A>::default();
            let decided = loaded
                .aggregate
                .handle(command.clone(), &self.services, &sink)
                .await;
            let events = sink.collect().await;
            let refused_or_idle = decided.is_err() || events.is_empty();
            if refused_or_idle && !proven {
                // Nobody is told "no" or "nothing to do" on state that may be behind: ask the
                // leader how far the aggregate goes. Unchanged, the decision stands; otherwise
                // decide again on a load that far.
                let last = self.store.leader_last_seq(aggregate_id).await?;
                if last > loaded.last_stream_seq {
                    self.forget(aggregate_id);
                    from_cache = false;
                    at_least = Some(last);
                    continue;
                }
            }
            if let Err(e) = decided {
                return Err(ExecuteError::Rejected(e));
            }
            match self.store.append(&loaded, &events, metadata).await {
                Ok(last_stream_seq) => {
                    let first_sequence = loaded.version + 1;
                    loaded.version += events.len();
                    loaded.last_stream_seq = last_stream_seq;
                    if self.cache.is_some() {
                        self.prime(
                            aggregate_id,
                            loaded.aggregate.clone(),
                            loaded.version,
                            last_stream_seq,
                        );
                    }
                    return Ok(Executed {
                        events,
                        first_sequence,
                        aggregate: loaded.aggregate,
                        last_stream_seq,
                        retries: conflicts,
                    });
                }
                Err(e) if e.kind() == StoreErrorKind::Conflict => {
                    tracing::debug!(aggregate_id, conflicts, "append conflict; reloading");
                    self.forget(aggregate_id);
                    from_cache = false;
                    at_least = e.last_seq();
                    conflicts += 1;
                    if !from_memory {
                        tokio::time::sleep(conflict_pause(conflicts)).await;
                    }
                }
                Err(e) => {
                    self.forget(aggregate_id);
                    return Err(e.into());
                }
            }
        }
        Err(ExecuteError::Contended {
            attempts: self.max_attempts,
        })
    }
}

/// A short, growing, jittered pause so racing writers do not collide in lockstep.
fn conflict_pause(attempt: u32) -> Duration {
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() % 1000)
        .unwrap_or(0);
    Duration::from_micros(u64::from(attempt) * 500 + u64::from(jitter))
}
