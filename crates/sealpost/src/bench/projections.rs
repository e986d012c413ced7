//! `sealpost bench projections`: events/s a projection rebuild applies to Postgres, next to a raw
//! Postgres baseline measured in the same run.
//!
//! 1. Writes `events` events (5 per message, domain-decided lifecycles: a happy path with
//!    receipts and purge, and a transient failure with retry) to `SEALPOST_EVENTS` with raw
//!    pipelined JetStream publishes carrying the store's headers. Run it against a private server
//!    (`scripts/bench projections` starts one): the events land in the real event stream.
//! 2. Baseline: the same number of rows (one per event) into a plain table with the same
//!    statement shape (multi-row `INSERT ... SELECT FROM UNNEST`, one transaction per batch of
//!    `[postgres] batch_size`).
//! 3. Rebuilds `messages`, then `metrics`, from sequence 1 and reports events/s of each.

use std::time::Instant;

use anyhow::Context as _;
use async_nats::jetstream;
use futures::StreamExt;
use sealpost_domain::{parse_aggregate_id, MessageEvent, RetryPolicy};
use sealpost_eventstore::names::{EventSubject, Stream};
use sealpost_eventstore::store::{HDR_CORRELATION_ID, HDR_EVENT_VERSION, HDR_SEQUENCE};
use sealpost_projections::ProjectionName;

use super::fixtures;
use crate::app::connect;
use crate::config::Config;

const TARGET_EVENTS_PER_SEC: f64 = 50_000.0;

/// One message's events: a fourth of the messages go through a retry, the rest the happy path.
fn events_of(key: &str, i: usize, policy: &RetryPolicy) -> anyhow::Result<Vec<MessageEvent>> {
    let commands = if i.is_multiple_of(4) {
        fixtures::retried_commands(key)
    } else {
        fixtures::happy_path_commands(key)
    };
    fixtures::decide_all(commands, policy)
}

fn bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::with_draw_target(
        Some(len),
        indicatif::ProgressDrawTarget::stderr(),
    );
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:<24} [{bar:30}] {pos}/{len} {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(what.to_owned());
    pb
}

/// Publishes `events` events; returns how many were written.
async fn write_events(js: &jetstream::Context, events: usize) -> anyhow::Result<u64> {
    let policy = RetryPolicy::default();
    let run = nuid::next().to_string();
    let messages = events.div_ceil(5);
    let pb = bar(events as u64, "writing events");
    let mut acks = futures::stream::FuturesUnordered::new();
    let mut written = 0u64;
    // Below async-nats's default of 5,000 acks in flight per context.
    let window = 4096;
    for i in 0..messages {
        let key = format!("{run}-{i}");
        let (aggregate, _) = fixtures::accept(&key);
        let (tenant, message_id) = parse_aggregate_id(&aggregate)?;
        for (n, e) in events_of(&key, i, &policy)?.into_iter().enumerate() {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Nats-Msg-Id", format!("{message_id}:{}", n + 1).as_str());
            h.insert(
                HDR_EVENT_VERSION,
                e.event_type().version().to_string().as_str(),
            );
            h.insert(HDR_SEQUENCE, (n + 1).to_string().as_str());
            h.insert(HDR_CORRELATION_ID, format!("corr-{key}").as_str());
            let subject =
                EventSubject::new(tenant.clone(), message_id.clone(), e.event_type()).to_string();
            let ack = js
                .publish_with_headers(subject, h, e.to_body()?.into())
                .await
                .context("publishing an event")?;
            acks.push(std::future::IntoFuture::into_future(ack));
            while acks.len() >= window {
                if let Some(r) = acks.next().await {
                    r.context("an event publish was not acknowledged")?;
                    written += 1;
                    pb.inc(1);
                }
            }
        }
    }
    while let Some(r) = acks.next().await {
        r.context("an event publish was not acknowledged")?;
        written += 1;
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(written)
}

/// Rows/s of plain multi-row inserts: `rows` rows in transactions of `batch` rows.
async fn baseline(pool: &sqlx::PgPool, rows: u64, batch: usize) -> anyhow::Result<f64> {
    sqlx::query("DROP TABLE IF EXISTS bench_baseline")
        .execute(pool)
        .await?;
    sqlx::query(
        "CREATE TABLE bench_baseline (tenant text NOT NULL, message_id text NOT NULL, \
         event_type text NOT NULL, seq bigint PRIMARY KEY, at timestamptz NOT NULL, \
         status text NOT NULL)",
    )
    .execute(pool)
    .await?;
    let pb = bar(rows, "postgres baseline");
    let started = Instant::now();
    let now = time::OffsetDateTime::now_utc();
    let mut seq = 0u64;
    while seq < rows {
        let n = (rows - seq).min(batch as u64);
        let (mut t, mut m, mut e, mut s, mut a, mut st) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for k in 0..n {
            let q = seq + k + 1;
            t.push("demo-tenant".to_owned());
            m.push(format!("00000000-0000-5000-8000-{:012}", q / 5));
            e.push("carrier_acked".to_owned());
            s.push(i64::try_from(q)?);
            a.push(now);
            st.push("carrier_acked".to_owned());
        }
        let mut tx = pool.begin().await?;
        sqlx::query(
            "INSERT INTO bench_baseline SELECT * FROM UNNEST($1::text[], $2::text[], \
             $3::text[], $4::int8[], $5::timestamptz[], $6::text[])",
        )
        .bind(t)
        .bind(m)
        .bind(e)
        .bind(s)
        .bind(a)
        .bind(st)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        seq += n;
        pb.set_position(seq);
    }
    let rate = rows as f64 / started.elapsed().as_secs_f64();
    pb.finish_and_clear();
    sqlx::query("DROP TABLE bench_baseline")
        .execute(pool)
        .await?;
    Ok(rate)
}

/// `sealpost bench projections`: see the module docs.
pub async fn run(cfg: &Config, events: usize, write: bool) -> anyhow::Result<()> {
    let client = connect(cfg).await?;
    let version = sealpost_eventstore::provision::check_server(&client).await?;
    let js = jetstream::new(client.clone());
    crate::app::provision(cfg, &sealpost_eventstore::provision::embedded_definitions()).await?;
    let pool = crate::views::pool(cfg).await?;
    sealpost_projections::migrate(&pool).await?;
    if write {
        let t = Instant::now();
        let n = write_events(&js, events).await?;
        eprintln!(
            "wrote {n} events in {:.1} s ({:.0} events/s)",
            t.elapsed().as_secs_f64(),
            n as f64 / t.elapsed().as_secs_f64()
        );
    }
    let stream_events = js
        .get_stream(Stream::Events.as_str())
        .await?
        .info()
        .await?
        .state
        .messages;
    let base = baseline(&pool, stream_events, cfg.postgres.batch_size).await?;
    let mut results = vec![];
    for name in [ProjectionName::Messages, ProjectionName::Metrics] {
        let r = crate::views::rebuild_one(&js, &pool, cfg, name).await?;
        results.push(r);
    }
    println!();
    println!(
        "sealpost bench projections (nats-server {version}, PostgreSQL; rebuild from sequence 1)"
    );
    println!(
        "  stream SEALPOST_EVENTS: {stream_events} events; batch_size {} per transaction",
        cfg.postgres.batch_size
    );
    println!(
        "  baseline  raw Postgres multi-row INSERT, {stream_events} rows   {base:>10.0} rows/s"
    );
    let mut met = true;
    for r in &results {
        let rate = r.events_per_sec();
        met &= rate >= TARGET_EVENTS_PER_SEC;
        println!(
            "  rebuild   {:<10} {:>8} events in {:>6.1} s   {rate:>10.0} events/s   ({:.2}x baseline)",
            r.projection.as_str(),
            r.events,
            r.elapsed.as_secs_f64(),
            rate / base.max(1.0)
        );
    }
    println!(
        "  target >= 50,000 events/s: {}",
        if met { "met" } else { "BELOW TARGET" }
    );
    Ok(())
}
