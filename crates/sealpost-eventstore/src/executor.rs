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
use crate::store::JetStreamEventStore;

/// The result of a command that was accepted by the aggregate.
#[derive(Debug)]
pub struct Executed<A: Aggregate> {
    /// The events written; empty when the command changed nothing.
    pub events: Vec<A::Event>,
    /// The aggregate sequence of the first written event (or the current version if none).
    pub first_sequence: usize,
    /// The aggregate after the command.
    pub aggregate: A,
    /// Stream sequence of the aggregate's last event.
    pub last_stream_seq: u64,
    /// How many times the command was reloaded after a conflict.
    pub retries: u32,
}

/// Executes commands with bounded reload-and-retry on optimistic-concurrency conflicts.
#[derive(Debug)]
pub struct CommandExecutor<A: Aggregate> {
    store: JetStreamEventStore<A>,
    services: A::Services,
    max_attempts: u32,
}

impl<A> CommandExecutor<A>
where
    A: Aggregate,
    A::Event: StoredEvent,
    A::Command: Clone,
{
    pub fn new(store: JetStreamEventStore<A>, services: A::Services) -> Self {
        Self {
            store,
            services,
            max_attempts: 8,
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
        for attempt in 0..self.max_attempts {
            let mut loaded = self.store.load(aggregate_id).await?;
            let sink = EventSink::<A>::default();
            loaded
                .aggregate
                .handle(command.clone(), &self.services, &sink)
                .await
                .map_err(ExecuteError::Rejected)?;
            let events = sink.collect().await;
            match self.store.append(&loaded, &events, metadata).await {
                Ok(last_stream_seq) => {
                    return Ok(Executed {
                        events,
                        first_sequence: loaded.version + 1,
                        aggregate: loaded.aggregate,
                        last_stream_seq,
                        retries: attempt,
                    })
                }
                Err(e) if e.kind() == StoreErrorKind::Conflict => {
                    tracing::debug!(aggregate_id, attempt, "append conflict; reloading");
                    tokio::time::sleep(conflict_pause(attempt)).await;
                }
                Err(e) => return Err(e.into()),
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
