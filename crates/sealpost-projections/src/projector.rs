//! The projector: durable pull consumer → batch → one Postgres transaction (checkpoint `FOR
//! UPDATE`, rows, checkpoint) → acks.
//!
//! ## Why nothing is lost or counted twice
//!
//! - Rows and checkpoint commit together; an event at or below the checkpoint is never applied
//!   again, so a batch redelivered after a crash (committed but not acked) changes nothing.
//! - A killed process may hold an uncommitted batch while a new process already receives later
//!   messages (JetStream redelivers the old ones only after `ack_wait`). Skipping by checkpoint
//!   alone would then lose the held batch. So a batch is applied only as a contiguous run from
//!   `checkpoint + 1`: a gap below the batch is filled from the stream itself with batch direct
//!   gets, inside the same transaction. The stream (`deny_delete`, no limits, filter
//!   `sealpost.evt.>` = the whole stream) has no holes, and whatever the stream answers for the
//!   gap is by definition all there is.
//! - Messages above the new checkpoint (a batch cut short by the gap-fill cap) are NAKed, the rest
//!   acked, only after the commit.

use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use async_nats::jetstream::{self, AckKind};
use async_nats::{HeaderMap, StatusCode};
use futures::StreamExt;
use sealpost_domain::wire_enum;
use sealpost_eventstore::names::{Durable, Stream, EVENTS_ALL};
use sqlx::PgPool;

use crate::decode::ProjectedEvent;
use crate::{Error, Result};

wire_enum! {
    /// The projections this crate maintains.
    pub enum ProjectionName: "projection" {
        Messages => "messages",
        Compliance => "compliance",
        Metrics => "metrics",
    }
}

impl ProjectionName {
    /// The durable consumer (`proj_<name>`).
    pub const fn durable(self) -> Durable {
        match self {
            ProjectionName::Messages => Durable::ProjMessages,
            ProjectionName::Compliance => Durable::ProjCompliance,
            ProjectionName::Metrics => Durable::ProjMetrics,
        }
    }

    async fn truncate(self, tx: &mut sqlx::PgConnection) -> Result<()> {
        match self {
            ProjectionName::Messages => crate::messages::truncate(tx).await,
            ProjectionName::Compliance => crate::compliance::truncate(tx).await,
            ProjectionName::Metrics => crate::metrics::truncate(tx).await,
        }
    }

    async fn apply(self, tx: &mut sqlx::PgConnection, events: &[ProjectedEvent]) -> Result<()> {
        match self {
            ProjectionName::Messages => crate::messages::apply(tx, events).await,
            ProjectionName::Compliance => crate::compliance::apply(tx, events).await,
            ProjectionName::Metrics => crate::metrics::apply(tx, events).await,
        }
    }
}

/// How a projector pulls and writes.
#[derive(Debug, Clone)]
pub struct ProjectorConfig {
    pub stream: String,
    /// Every event subject; the consumers filter on it and gap fills read it.
    pub subject_filter: String,
    /// Most events applied in one transaction.
    pub batch_size: usize,
    /// After the first message of a batch, how long to wait for more before applying.
    pub batch_wait: Duration,
    /// Most events read by direct get to fill a gap below one batch.
    pub max_gap_fill: u64,
    /// How long to wait for a JetStream answer.
    pub timeout: Duration,
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        Self {
            stream: Stream::Events.as_str().into(),
            subject_filter: EVENTS_ALL.into(),
            batch_size: 2000,
            batch_wait: Duration::from_millis(20),
            max_gap_fill: 50_000,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Where a run (live or rebuild) is.
#[derive(Debug, Clone)]
pub struct Progress {
    pub projection: ProjectionName,
    /// The checkpoint after the last commit.
    pub applied_seq: u64,
    /// For a rebuild: the stream's last sequence when it started.
    pub target_seq: Option<u64>,
    /// Events applied by this run.
    pub events: u64,
    pub elapsed: Duration,
}

/// What a rebuild did.
#[derive(Debug, Clone)]
pub struct RebuildReport {
    pub projection: ProjectionName,
    pub events: u64,
    pub last_seq: u64,
    pub elapsed: Duration,
}

impl RebuildReport {
    pub fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The projector tasks of this process; dropping it aborts them (unacked work is redelivered and
/// applied by the next run exactly once).
#[derive(Debug, Default)]
pub struct RunningProjector {
    handles: Vec<tokio::task::JoinHandle<()>>,
    pub projections: Vec<ProjectionName>,
}

impl Drop for RunningProjector {
    fn drop(&mut self) {
        for h in &self.handles {
            h.abort();
        }
    }
}

/// Starts projectors.
#[derive(Debug)]
pub struct Projector;

impl Projector {
    /// Runs the migrations, makes sure each checkpoint and consumer exists, and starts one task
    /// per projection. They run until the returned value is dropped, retrying with backoff on
    /// errors (Postgres or NATS down).
    pub async fn start(
        js: jetstream::Context,
        pool: PgPool,
        cfg: ProjectorConfig,
        names: &[ProjectionName],
    ) -> Result<RunningProjector> {
        crate::migrate(&pool).await?;
        let mut running = RunningProjector::default();
        for &name in names {
            ensure_checkpoint(&pool, name).await?;
            ensure_consumer(&js, &cfg, name).await?;
            let (js, pool, cfg) = (js.clone(), pool.clone(), cfg.clone());
            running.handles.push(tokio::spawn(async move {
                let mut backoff = Duration::from_millis(100);
                loop {
                    let started = Instant::now();
                    match pump(&js, &pool, &cfg, name, None, &mut |_| {}).await {
                        Ok(_) => tracing::warn!(projection = %name, "consumer stream ended; restarting"),
                        Err(e) => tracing::warn!(projection = %name, error = %e, "projector failed; retrying"),
                    }
                    if started.elapsed() > Duration::from_secs(30) {
                        backoff = Duration::from_millis(100);
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }));
            running.projections.push(name);
        }
        Ok(running)
    }
}

async fn ensure_checkpoint(pool: &PgPool, name: ProjectionName) -> Result<()> {
    sqlx::query(
        "INSERT INTO projection_checkpoints (projection) VALUES ($1) ON CONFLICT DO NOTHING",
    )
    .bind(name.as_str())
    .execute(pool)
    .await?;
    Ok(())
}

/// The shipped definition of `proj_<name>` (nats/consumers/SEALPOST_EVENTS/proj_<name>.json).
fn definition(name: ProjectionName) -> Result<pull::Config> {
    let cfg = sealpost_eventstore::provision::embedded_definitions().consumer(name.durable())?;
    debug_assert_eq!(cfg.ack_policy, AckPolicy::Explicit);
    Ok(cfg)
}

fn nats<E>(what: &'static str) -> impl FnOnce(E) -> Error
where
    E: Into<async_nats::Error>,
{
    move |e| Error::Nats {
        what,
        source: e.into(),
    }
}

async fn ensure_consumer(
    js: &jetstream::Context,
    cfg: &ProjectorConfig,
    name: ProjectionName,
) -> Result<PullConsumer> {
    let stream = js
        .get_stream(&cfg.stream)
        .await
        .map_err(nats("stream SEALPOST_EVENTS (run `sealpost provision`)"))?;
    if let Ok(c) = stream
        .get_consumer::<pull::Config>(name.durable().as_str())
        .await
    {
        return Ok(c);
    }
    stream
        .create_consumer(definition(name)?)
        .await
        .map_err(nats("creating the projection consumer"))
}

/// The consumer backlog of a projection: messages not yet delivered plus delivered but not yet
/// acked (for a gauge; the exact applied position is the checkpoint).
pub async fn lag(js: &jetstream::Context, name: ProjectionName) -> Result<u64> {
    let stream = js
        .get_stream(Stream::Events.as_str())
        .await
        .map_err(nats("stream SEALPOST_EVENTS"))?;
    let mut c: PullConsumer = stream
        .get_consumer(name.durable().as_str())
        .await
        .map_err(nats("projection consumer"))?;
    let info = c.info().await.map_err(nats("consumer info"))?;
    Ok(info.num_pending + u64::try_from(info.num_ack_pending).unwrap_or(0))
}

/// Rebuilds a projection from sequence 1: truncates its tables and resets its checkpoint (one
/// transaction), recreates its durable consumer from the shipped definition, and applies the
/// stream up to its last sequence at the start through the same batch path as the live
/// projector. A live projector of this projection keeps running correctly afterwards (it resumes
/// from the checkpoint); while the rebuild runs it competes for the same rows, so stop it first
/// for speed. `progress` is called after every commit.
pub async fn rebuild(
    js: &jetstream::Context,
    pool: &PgPool,
    cfg: &ProjectorConfig,
    name: ProjectionName,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<RebuildReport> {
    crate::migrate(pool).await?;
    ensure_checkpoint(pool, name).await?;
    let mut stream = js
        .get_stream(&cfg.stream)
        .await
        .map_err(nats("stream SEALPOST_EVENTS (run `sealpost provision`)"))?;
    let target = stream
        .info()
        .await
        .map_err(nats("stream info"))?
        .state
        .last_sequence;
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT last_seq FROM projection_checkpoints WHERE projection = $1 FOR UPDATE")
        .bind(name.as_str())
        .execute(&mut *tx)
        .await?;
    name.truncate(&mut tx).await?;
    sqlx::query(
        "UPDATE projection_checkpoints SET last_seq = 0, updated_at = now() WHERE projection = $1",
    )
    .bind(name.as_str())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let _ = stream.delete_consumer(name.durable().as_str()).await;
    stream
        .create_consumer(definition(name)?)
        .await
        .map_err(nats("recreating the projection consumer"))?;
    let started = Instant::now();
    let events = if target == 0 {
        0
    } else {
        pump(js, pool, cfg, name, Some(target), progress).await?
    };
    Ok(RebuildReport {
        projection: name,
        events,
        last_seq: target,
        elapsed: started.elapsed(),
    })
}

/// Pulls and applies batches until `until` is applied (a rebuild) or forever (live). Returns the
/// number of events applied.
async fn pump(
    js: &jetstream::Context,
    pool: &PgPool,
    cfg: &ProjectorConfig,
    name: ProjectionName,
    until: Option<u64>,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<u64> {
    let consumer = ensure_consumer(js, cfg, name).await?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(cfg.batch_size.max(1))
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(nats("pulling from the projection consumer"))?;
    let client = js.client();
    let started = Instant::now();
    let mut applied = 0u64;
    loop {
        let first = match messages.next().await {
            None => return Ok(applied),
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                tracing::debug!(projection = %name, error = %e, "pull consumer hiccup");
                continue;
            }
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + cfg.batch_wait;
        while batch.len() < cfg.batch_size {
            match tokio::time::timeout_at(deadline, messages.next()).await {
                Ok(Some(Ok(m))) => batch.push(m),
                Ok(Some(Err(e))) => {
                    tracing::debug!(projection = %name, error = %e, "pull consumer hiccup")
                }
                Ok(None) | Err(_) => break,
            }
        }
        let incoming: Vec<Incoming<'_>> = batch
            .iter()
            .filter_map(|m| {
                let info = m.info().ok()?;
                Some(Incoming {
                    seq: info.stream_sequence,
                    subject: m.subject.as_str(),
                    headers: m.headers.as_ref(),
                    body: &m.payload,
                })
            })
            .collect();
        let outcome = apply_batch(&client, pool, cfg, name, incoming).await?;
        applied += outcome.events;
        for m in &batch {
            let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
            let sent = if seq <= outcome.checkpoint {
                m.ack().await
            } else {
                m.ack_with(AckKind::Nak(None)).await
            };
            if let Err(e) = sent {
                // Redelivered later and skipped by the checkpoint: nothing is lost.
                tracing::debug!(error = %e, "ack not sent");
            }
        }
        progress(&Progress {
            projection: name,
            applied_seq: outcome.checkpoint,
            target_seq: until,
            events: applied,
            elapsed: started.elapsed(),
        });
        if until.is_some_and(|u| outcome.checkpoint >= u) {
            return Ok(applied);
        }
    }
}

/// A consumer message, borrowed.
pub(crate) struct Incoming<'a> {
    pub seq: u64,
    pub subject: &'a str,
    pub headers: Option<&'a HeaderMap>,
    pub body: &'a [u8],
}

pub(crate) struct BatchOutcome {
    /// The checkpoint after the transaction.
    pub checkpoint: u64,
    /// Events applied (decoded events in the new range).
    pub events: u64,
}

/// One transaction: checkpoint `FOR UPDATE`, the contiguous run of events after it (gap filled
/// from the stream), rows, checkpoint.
pub(crate) async fn apply_batch(
    client: &async_nats::Client,
    pool: &PgPool,
    cfg: &ProjectorConfig,
    name: ProjectionName,
    mut incoming: Vec<Incoming<'_>>,
) -> Result<BatchOutcome> {
    incoming.sort_by_key(|m| m.seq);
    incoming.dedup_by_key(|m| m.seq);
    let mut tx = pool.begin().await?;
    let checkpoint: i64 = sqlx::query_scalar(
        "SELECT last_seq FROM projection_checkpoints WHERE projection = $1 FOR UPDATE",
    )
    .bind(name.as_str())
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(Error::NoCheckpoint(name))?;
    let checkpoint = u64::try_from(checkpoint).unwrap_or(0);
    let mut expected = checkpoint + 1;
    let mut filled = 0u64;
    let mut events = Vec::with_capacity(incoming.len());
    for m in &incoming {
        if m.seq < expected {
            continue;
        }
        if m.seq > expected {
            let gap = m.seq - expected;
            if filled + gap > cfg.max_gap_fill {
                break;
            }
            tracing::debug!(projection = %name, from = expected, to = m.seq - 1, "filling a gap from the stream");
            for r in fill_gap(client, cfg, expected, m.seq).await? {
                if let Some(e) =
                    ProjectedEvent::decode(r.seq, &r.subject, Some(&r.headers), &r.body)
                {
                    events.push(e);
                }
            }
            filled += gap;
        }
        if let Some(e) = ProjectedEvent::decode(m.seq, m.subject, m.headers, m.body) {
            events.push(e);
        }
        expected = m.seq + 1;
    }
    let new_checkpoint = expected - 1;
    if new_checkpoint == checkpoint {
        tx.rollback().await?;
        return Ok(BatchOutcome {
            checkpoint,
            events: 0,
        });
    }
    name.apply(&mut tx, &events).await?;
    sqlx::query(
        "UPDATE projection_checkpoints SET last_seq = $2, updated_at = now() WHERE projection = $1",
    )
    .bind(name.as_str())
    .bind(i64::try_from(new_checkpoint).unwrap_or(i64::MAX))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(BatchOutcome {
        checkpoint: new_checkpoint,
        events: events.len() as u64,
    })
}

/// A message read by direct get.
struct Fetched {
    seq: u64,
    subject: String,
    headers: HeaderMap,
    body: bytes::Bytes,
}

/// Every stored event with `from <= seq < until`: all `until - from` of them, since the events
/// stream takes no deletes or purges and the filter covers it. Any replica answers a direct get
/// and a follower may not hold the gap yet (the consumer that delivered `until` runs on the
/// leader), so a short answer is asked again every 20 ms until the timeout, then is an error:
/// the batch is retried, never applied with a hole.
async fn fill_gap(
    client: &async_nats::Client,
    cfg: &ProjectorConfig,
    from: u64,
    until: u64,
) -> Result<Vec<Fetched>> {
    let deadline = Instant::now() + cfg.timeout;
    loop {
        let got = direct_get_range(client, cfg, from, until).await?;
        if got.len() as u64 >= until - from {
            return Ok(got);
        }
        if Instant::now() >= deadline {
            return Err(Error::NatsAnswer(format!(
                "the replica that answered holds {} of the {} events {from}..{until} of {} \
                 after {:?}; a follower lags or an event was removed from the stream",
                got.len(),
                until - from,
                cfg.stream,
                cfg.timeout
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every stored event with `from <= seq < until` that one replica holds, by batch direct gets
/// of up to 1000.
async fn direct_get_range(
    client: &async_nats::Client,
    cfg: &ProjectorConfig,
    from: u64,
    until: u64,
) -> Result<Vec<Fetched>> {
    let mut out = Vec::new();
    let mut next = from;
    while next < until {
        let want = (until - next).min(1000);
        let inbox = client.new_inbox();
        let mut sub = client
            .subscribe(inbox.clone())
            .await
            .map_err(nats("subscribing for a direct get"))?;
        let request = serde_json::json!({
            "seq": next,
            "batch": want,
            "next_by_subj": cfg.subject_filter,
        });
        client
            .publish_with_reply(
                format!("$JS.API.DIRECT.GET.{}", cfg.stream),
                inbox,
                request.to_string().into(),
            )
            .await
            .map_err(nats("requesting a direct get"))?;
        let mut got = 0u64;
        let mut exhausted = false;
        loop {
            let msg = match tokio::time::timeout(cfg.timeout, sub.next()).await {
                Ok(Some(m)) => m,
                Ok(None) => {
                    return Err(Error::NatsAnswer(
                        "connection closed during a direct get".into(),
                    ))
                }
                Err(_) => {
                    return Err(Error::NatsAnswer(format!(
                        "no answer to a direct get on {} within {:?}",
                        cfg.stream, cfg.timeout
                    )))
                }
            };
            match msg.status {
                None | Some(StatusCode::OK) => {
                    let headers = msg.headers.unwrap_or_default();
                    let seq = headers
                        .get("Nats-Sequence")
                        .and_then(|v| v.as_str().parse::<u64>().ok())
                        .ok_or_else(|| {
                            Error::NatsAnswer("direct get answer without Nats-Sequence".into())
                        })?;
                    let subject = headers
                        .get("Nats-Subject")
                        .map(|v| v.as_str().to_owned())
                        .unwrap_or_default();
                    got += 1;
                    next = next.max(seq + 1);
                    if seq < until {
                        out.push(Fetched {
                            seq,
                            subject,
                            headers,
                            body: msg.payload,
                        });
                    }
                }
                Some(StatusCode::NOT_FOUND) => {
                    exhausted = true;
                    break;
                }
                Some(s) if s.as_u16() == 204 => break,
                Some(s) => {
                    return Err(Error::NatsAnswer(format!(
                        "direct get answered {s} {}",
                        msg.description.unwrap_or_default()
                    )))
                }
            }
        }
        let _ = sub.unsubscribe().await;
        if exhausted || got == 0 {
            break;
        }
    }
    Ok(out)
}
