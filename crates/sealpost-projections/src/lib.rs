//! # sealpost-projections
//!
//! The Postgres views of Sealpost, built from the `SEALPOST_EVENTS` stream, which stays the source
//! of truth: any view here can be truncated and rebuilt by replay with identical results.
//!
//! **Owns:**
//! - the schema (`migrations/`, embedded with `sqlx::migrate!`, run by [`migrate`]);
//! - three projections, each its own durable pull consumer `proj_<name>` on `SEALPOST_EVENTS`
//!   (`nats/consumers/SEALPOST_EVENTS/proj_<name>.json`) and its own checkpoint row in
//!   `projection_checkpoints`:
//!   - [`messages`](crate::messages): one row per message (the domain's
//!     [`StatusRow`](sealpost_domain::StatusRow));
//!   - [`compliance`](crate::compliance): one cqrs-es `View` document per message
//!     ([`ComplianceView`]: active legal holds with reason and since, settled and purge
//!     instants, from which the retention deadline follows);
//!   - [`metrics`](crate::metrics): per tenant, carrier and minute, counts per event type,
//!     failed attempts per error class and code, and latency histograms (accepted → delivered,
//!     accepted → displayed);
//! - the [`Projector`]: pulls a batch, and in ONE transaction reads its checkpoint `FOR UPDATE`,
//!   applies only events with a stream sequence above it (filling any gap below the batch from the
//!   stream itself by direct get, so a batch held by a killed process can never be skipped), writes
//!   the rows with multi-row `UNNEST` statements, moves the checkpoint and commits; only then are
//!   the messages acked. A crash anywhere loses nothing and counts nothing twice;
//! - [`rebuild`]: truncate a view, reset its checkpoint and its consumer, and replay from sequence
//!   1 through the same code path, with a progress callback;
//! - read helpers for the status endpoint and dashboards: [`message_row`], [`compliance_view`],
//!   [`summary`], and [`lag`] (consumer backlog).
//!
//! **Must not:** make business decisions (the aggregate in `sealpost-domain` decided everything;
//! a view only records it), hold state outside Postgres and JetStream, or store or log ciphertext
//! or full phone numbers: the recipient is kept masked (`+*********67`) and as a SHA-256 digest,
//! payloads only as a reference, size and digest.
//!
//! ## postgres-es
//!
//! The compliance view is a cqrs-es [`cqrs_es::View`] stored in exactly the table layout of
//! postgres-es's `PostgresViewRepository` (`view_id`, `version`, `payload`), and
//! [`compliance_view`] reads it through that repository. The projector does not write through
//! `PostgresViewRepository::update_view`, though: it writes each view with its own statement on
//! the pool, outside any transaction the caller holds, one round trip per view. That would break
//! the rule that rows and checkpoint commit together (exactly-once), and would cap a rebuild at a
//! few thousand views per second. So the projector writes the same rows (version + 1, JSON
//! payload) with one `UNNEST` upsert per batch inside its checkpoint transaction. postgres-es is
//! used with default features off; it shares our sqlx 0.8 with rustls+ring (no native-tls, no
//! aws-lc-rs).

pub mod compliance;
mod decode;
pub mod messages;
pub mod metrics;
mod projector;
pub mod query;

pub use compliance::ComplianceView;
pub use decode::ProjectedEvent;
pub use projector::{
    lag, rebuild, Progress, ProjectionName, Projector, ProjectorConfig, RebuildReport,
    RunningProjector,
};
pub use query::{compliance_view, message_row, per_minute, summary, PerMinute, Summary};

use sqlx::PgPool;

/// Everything that can go wrong in a projection. Each variant keeps its cause as the source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// PostgreSQL refused or is unreachable: the batch is not acked and is retried.
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error("running migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A JetStream call failed: retried; a missing stream needs `sealpost provision`.
    #[error("jetstream: {what}: {source}")]
    Nats {
        what: &'static str,
        #[source]
        source: async_nats::Error,
    },
    /// JetStream answered something this code cannot use.
    #[error("jetstream: {0}")]
    NatsAnswer(String),
    /// A shipped stream or consumer definition is missing or invalid.
    #[error(transparent)]
    Definition(#[from] sealpost_eventstore::StoreError),
    #[error(transparent)]
    UnknownProjection(#[from] sealpost_domain::UnknownName),
    #[error("no checkpoint row for projection {0}; run `sealpost migrate`")]
    NoCheckpoint(ProjectionName),
    /// A compliance document could not be read or written through postgres-es.
    #[error("{what}: {source}")]
    View {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The migrations of `migrations/`, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// Applies every pending migration. Idempotent; safe to run from several processes at once
/// (sqlx takes an advisory lock).
pub async fn migrate(pool: &PgPool) -> Result<()> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// A pool for `url` with at most `max_connections`.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool> {
    Ok(sqlx::postgres::PgPoolOptions::new()
        .max_connections(max_connections.max(1))
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect(url)
        .await?)
}
