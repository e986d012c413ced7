//! Postgres projections against a real nats-server and a real PostgreSQL (a database of its own
//! per test, cloned from the migrated template): lifecycles become rows, a rebuild equals the
//! live view, and `kill -9` of the projector process never loses or double-counts an event.

// Test fixtures: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;

use sealpost_domain::{CarrierOutcome, EventType, MessageCommand, MessageEvent, ReceiptKind};
use sealpost_eventstore::CommandExecutor;
use sealpost_projections::{ProjectionName, Projector, ProjectorConfig};
use sealpost_testkit::{eventually, PgDatabase};
use sqlx::PgPool;

use crate::support::*;

fn acked(attempt: u32) -> MessageCommand {
    result(
        attempt,
        CarrierOutcome::Acked {
            carrier_message_id: format!("cm-{attempt}"),
        },
    )
}

fn transient() -> CarrierOutcome {
    CarrierOutcome::Transient {
        code: "503".into(),
        retry_after: None,
    }
}

fn receipt(id: &str, kind: ReceiptKind) -> MessageCommand {
    MessageCommand::RecordReceipt {
        receipt_id: id.into(),
        kind,
        at: now(),
    }
}

/// A varied lifecycle for message number `i`: happy path, retries, permanent failure, fallback,
/// expiry, cancel, holds and purge.
fn lifecycle(i: usize) -> Vec<MessageCommand> {
    let k = format!("r{i}");
    match i % 8 {
        0 => vec![
            acked(1),
            receipt(&format!("{k}-d"), ReceiptKind::Delivered),
            receipt(&format!("{k}-r"), ReceiptKind::Displayed),
        ],
        1 => vec![
            result(1, transient()),
            result(
                2,
                CarrierOutcome::Throttled {
                    code: "429".into(),
                    retry_after: Some(Duration::from_millis(500)),
                },
            ),
            acked(3),
            receipt(&format!("{k}-d"), ReceiptKind::Delivered),
        ],
        2 => vec![result(1, CarrierOutcome::Permanent { code: "400".into() })],
        3 => vec![result(1, CarrierOutcome::NotRcsCapable)],
        4 => vec![
            acked(1),
            MessageCommand::Expire {
                revoke: sealpost_domain::events::RevokeOutcome::Revoked,
                at: now() + Duration::from_secs(7200),
            },
        ],
        5 => vec![MessageCommand::Cancel { at: now() }],
        6 => vec![
            MessageCommand::Hold {
                hold_id: "h1".into(),
                reason: "litigation".into(),
                at: now(),
            },
            acked(1),
            receipt(&format!("{k}-r"), ReceiptKind::Displayed),
            MessageCommand::Hold {
                hold_id: "h2".into(),
                reason: "audit".into(),
                at: now(),
            },
            MessageCommand::Release {
                hold_id: "h1".into(),
                at: now(),
            },
        ],
        _ => vec![
            result(1, transient()),
            acked(2),
            receipt(&format!("{k}-d"), ReceiptKind::Delivered),
            MessageCommand::Purge { at: now() },
        ],
    }
}

/// Runs message `i`'s lifecycle; returns its aggregate id and the event types written.
pub(crate) async fn run_lifecycle(
    ex: &CommandExecutor<sealpost_domain::Message>,
    prefix: &str,
    i: usize,
) -> (String, Vec<EventType>) {
    let (id, accept) = accept_cmd(&format!("{prefix}-{i}"));
    let mut types = vec![];
    let done = ex.execute(&id, accept, &meta("corr")).await.unwrap();
    types.extend(done.events.iter().map(MessageEvent::event_type));
    for cmd in lifecycle(i) {
        let done = ex.execute(&id, cmd, &meta("corr")).await.unwrap();
        types.extend(done.events.iter().map(MessageEvent::event_type));
    }
    (id, types)
}

pub(crate) async fn stream_last_seq(client: &async_nats::Client) -> u64 {
    let js = async_nats::jetstream::new(client.clone());
    let mut s = js.get_stream("SEALPOST_EVENTS").await.unwrap();
    s.info().await.unwrap().state.last_sequence
}

pub(crate) async fn checkpoints(pool: &PgPool) -> BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>("SELECT projection, last_seq FROM projection_checkpoints")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// Waits until every projection's checkpoint reached the stream's last sequence.
async fn caught_up(pool: &PgPool, client: &async_nats::Client, within: Duration) {
    let last = stream_last_seq(client).await as i64;
    eventually(
        within,
        "every projection to reach the stream's end",
        || async {
            let cps = checkpoints(pool).await;
            (cps.len() == 3 && cps.values().all(|v| *v == last)).then_some(())
        },
    )
    .await
    .unwrap();
}

pub(crate) async fn db() -> (PgDatabase, PgPool) {
    let db = PgDatabase::create().await.expect("a test database");
    let pool = sealpost_projections::connect(&db.url, 4).await.unwrap();
    (db, pool)
}

fn small_batches() -> ProjectorConfig {
    ProjectorConfig {
        batch_size: 7,
        batch_wait: Duration::from_millis(5),
        ..ProjectorConfig::default()
    }
}

/// The full contents of the projection tables, as JSON text in key order.
/// Every projection table as JSON text in key order (shared with `replay.rs`).
pub(crate) async fn dump(pool: &PgPool) -> BTreeMap<&'static str, String> {
    let tables = [
        ("messages", "tenant, message_id"),
        ("compliance_views", "view_id"),
        ("metrics_events", "tenant, carrier, minute, event_type"),
        (
            "metrics_retries",
            "tenant, carrier, minute, error_class, code",
        ),
        ("metrics_latency", "tenant, carrier, minute, kind, le_ms"),
        ("metrics_message_state", "tenant, message_id"),
    ];
    let mut out = BTreeMap::new();
    for (t, order) in tables {
        // `version` of a compliance document counts the batches that touched it, which depends
        // on batching; everything else must be identical.
        let sql = if t == "compliance_views" {
            format!(
                "SELECT coalesce(json_agg(x ORDER BY {order})::text, '[]') FROM \
                 (SELECT view_id, payload::text AS payload, tenant, message_id, held, purged, \
                 settled_at, last_seq FROM {t}) x"
            )
        } else {
            format!("SELECT coalesce(json_agg(x ORDER BY {order})::text, '[]') FROM {t} x")
        };
        let s: String = sqlx::query_scalar(&sql).fetch_one(pool).await.unwrap();
        out.insert(t, s);
    }
    out
}

#[tokio::test]
async fn lifecycles_become_rows_holds_and_metrics() {
    let env = Env::start().await;
    let (_db, pool) = db().await;
    let ex = env.executor();
    let mut written: Vec<(String, Vec<EventType>)> = vec![];
    for i in 0..8 {
        written.push(run_lifecycle(&ex, "life", i).await);
    }
    let js = async_nats::jetstream::new(env.client.clone());
    let _p = Projector::start(js, pool.clone(), small_batches(), ProjectionName::ALL)
        .await
        .unwrap();
    caught_up(&pool, &env.client, Duration::from_secs(30)).await;

    let row = |i: usize| {
        let (agg, _) = &written[i];
        let (t, m) = agg.split_once('.').unwrap();
        let pool = pool.clone();
        let (t, m) = (t.to_owned(), m.to_owned());
        async move {
            sealpost_projections::message_row(&pool, &t, &m)
                .await
                .unwrap()
                .unwrap()
        }
    };
    // Happy path.
    let r = row(0).await;
    assert_eq!(r.status.as_str(), "displayed");
    assert_eq!(r.attempts, 1);
    assert_eq!(r.carrier.as_deref(), Some("rbm"));
    assert_eq!(r.carrier_message_id.as_deref(), Some("cm-1"));
    assert!(r.accepted_at.is_some() && r.carrier_acked_at.is_some());
    assert!(r.delivered_at.is_some() && r.displayed_at.is_some());
    assert_eq!(r.recipient_masked.as_deref(), Some("+*********67"));
    assert_eq!(r.correlation_id.as_deref(), Some("corr-life-0"));
    assert_eq!(r.message_type.map(|v| v.as_str()), Some("transactional"));
    assert_eq!(r.event_count, 4);
    let json = serde_json::to_string(&r).unwrap();
    assert!(
        !json.contains("15551234567"),
        "no full number in the row: {json}"
    );
    // Retries.
    let r = row(1).await;
    assert_eq!((r.status.as_str(), r.attempts), ("delivered", 3));
    assert_eq!(r.last_error_class.map(|v| v.as_str()), Some("throttled"));
    assert_eq!(r.last_error_code.as_deref(), Some("429"));
    // Permanent failure.
    let r = row(2).await;
    assert_eq!(r.status.as_str(), "failed");
    assert_eq!(r.end_reason.map(|v| v.as_str()), Some("permanent_error"));
    assert!(r.failed_at.is_some());
    // Not RCS-capable: fallback.
    let r = row(3).await;
    assert_eq!(r.status.as_str(), "fallback_triggered");
    assert_eq!(r.fallback_channel.map(|v| v.as_str()), Some("sms"));
    assert_eq!(r.last_error_class.map(|v| v.as_str()), Some("not_capable"));
    assert!(r.fallback_at.is_some());
    // Expiry after the carrier ack, with a fallback requested: the fallback, with why and what
    // the expiry did.
    let r = row(4).await;
    assert_eq!(r.status.as_str(), "fallback_triggered");
    assert_eq!(r.end_reason.map(|v| v.as_str()), Some("expired"));
    assert_eq!(r.revoke_outcome.map(|v| v.as_str()), Some("revoked"));
    assert!(r.fallback_at.is_some() && r.expired_at.is_none());
    // Cancel.
    let r = row(5).await;
    assert_eq!(r.status.as_str(), "cancelled");
    assert!(r.cancelled_at.is_some());
    // Holds: h1 released, h2 active.
    let r = row(6).await;
    assert!(r.held);
    assert_eq!(r.active_holds, 1);
    let (t, m) = written[6].0.split_once('.').unwrap();
    let c = sealpost_projections::compliance_view(&pool, t, m)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.holds.keys().collect::<Vec<_>>(), vec!["h2"]);
    assert_eq!(c.holds["h2"].reason, "audit");
    assert!(c.settled_at.is_some());
    assert_eq!(
        c.retention_until(Duration::from_secs(86400)),
        None,
        "held: retention suspended"
    );
    let holds: Vec<(String, String)> =
        sqlx::query_as("SELECT hold_id, reason FROM compliance_active_holds WHERE message_id = $1")
            .bind(m)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(holds, vec![("h2".to_owned(), "audit".to_owned())]);
    // Purge.
    let r = row(7).await;
    assert!(r.purged && r.purged_at.is_some());
    let (t, m) = written[7].0.split_once('.').unwrap();
    let c = sealpost_projections::compliance_view(&pool, t, m)
        .await
        .unwrap()
        .unwrap();
    assert!(c.purged_at.is_some());
    let (t, m) = written[0].0.split_once('.').unwrap();
    let c = sealpost_projections::compliance_view(&pool, t, m)
        .await
        .unwrap()
        .unwrap();
    let settled = c.settled_at.unwrap();
    assert_eq!(
        c.retention_until(Duration::from_secs(86400)),
        Some(settled + Duration::from_secs(86400))
    );

    // Metrics: every event counted once, under its type.
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for (_, types) in &written {
        for t in types {
            *expected.entry(t.as_str().to_owned()).or_default() += 1;
        }
    }
    assert_eq!(metric_counts(&pool).await, expected);
    let retries: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT error_class, code, sum(count)::int8 FROM metrics_retries \
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        retries,
        vec![
            ("not_capable".into(), "404".into(), 1),
            ("permanent".into(), "400".into(), 1),
            ("throttled".into(), "429".into(), 1),
            ("transient".into(), "503".into(), 2),
        ]
    );
    let latency: i64 =
        sqlx::query_scalar("SELECT sum(count)::int8 FROM metrics_latency WHERE kind = 'delivered'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(latency, expected["delivered"]);
    let s = sealpost_projections::summary(&pool).await.unwrap();
    assert_eq!(s.total, 8);
    assert_eq!(s.latency_delivered.count, expected["delivered"]);
    assert!(s.success_rate.is_some());
    assert!(!s.recent_failures.is_empty());
}

pub(crate) async fn metric_counts(pool: &PgPool) -> BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>(
        "SELECT event_type, sum(count)::int8 FROM metrics_events GROUP BY event_type",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

#[tokio::test]
async fn a_rebuild_equals_the_live_view_after_a_run_with_faults() {
    let env = Env::start().await;
    let (_db, pool) = db().await;
    let ex = env.executor();
    let js = async_nats::jetstream::new(env.client.clone());
    // Live projection while writing, stopped and restarted several times, wherever it is (in
    // a batch or between batches: which is left to timing here; the gap tests below construct
    // the mid-batch case deterministically).
    let mut p = Some(
        Projector::start(
            js.clone(),
            pool.clone(),
            small_batches(),
            ProjectionName::ALL,
        )
        .await
        .unwrap(),
    );
    for round in 0..4 {
        for i in 0..24 {
            run_lifecycle(&ex, &format!("fault{round}"), i).await;
        }
        // Fault: stop the projector wherever it is, and start a fresh one.
        drop(p.take());
        tokio::time::sleep(Duration::from_millis(20 * round)).await;
        p = Some(
            Projector::start(
                js.clone(),
                pool.clone(),
                small_batches(),
                ProjectionName::ALL,
            )
            .await
            .unwrap(),
        );
    }
    caught_up(&pool, &env.client, Duration::from_secs(60)).await;
    drop(p);
    let live = dump(&pool).await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 4 * 24, "one row per message written");

    let target = stream_last_seq(&env.client).await;
    for &name in ProjectionName::ALL {
        let mut calls = 0;
        let report = sealpost_projections::rebuild(
            &js,
            &pool,
            &ProjectorConfig {
                batch_size: 50,
                ..ProjectorConfig::default()
            },
            name,
            &mut |p: &sealpost_projections::Progress| {
                calls += 1;
                assert_eq!(p.target_seq, Some(target));
            },
        )
        .await
        .unwrap();
        assert_eq!(report.last_seq, target);
        assert_eq!(report.events, target, "{name}: every event applied once");
        assert!(calls > 1, "progress is reported per batch");
    }
    let rebuilt = dump(&pool).await;
    for (table, rows) in &live {
        assert_eq!(
            rows, &rebuilt[table],
            "table {table} differs after the rebuild"
        );
    }
}

#[tokio::test]
async fn kill_9_of_the_projector_process_loses_and_double_counts_nothing() {
    kill_the_projector_repeatedly(false).await;
}

/// The same on the 3-node cluster, the events stream with 3 replicas: the projector's consumer
/// and its gap fills may be served by any node.
#[tokio::test]
async fn on_the_cluster_kill_9_of_the_projector_loses_and_double_counts_nothing() {
    kill_the_projector_repeatedly(true).await;
}

/// Thousands of events written by 80 concurrent lifecycles while the projector process is
/// `kill -9`ed each time every checkpoint has moved: every event counted exactly once and every
/// message row equal to its aggregate.
async fn kill_the_projector_repeatedly(cluster: bool) {
    let nats = Nats::start(cluster).await;
    let client = nats.connect().await;
    sealpost_eventstore::provision::provision(
        &async_nats::jetstream::new(client.clone()),
        &sealpost_eventstore::provision::embedded_definitions(),
        &sealpost_eventstore::provision::StreamOverrides {
            replicas: nats.replicas(),
            ..Default::default()
        },
    )
    .await
    .expect("provision");
    let (db, pool) = db().await;
    // The migrations run at projector start; make sure the tables exist for the polling below.
    sealpost_projections::migrate(&pool).await.unwrap();
    let mut proc = crate::support::ServeProcess::without_config("projector", nats.url())
        .env("DATABASE_URL", &db.url)
        .env("SEALPOST_POSTGRES_URL", "")
        .env("SEALPOST_POSTGRES_BATCH_SIZE", "150")
        .env("SEALPOST_POSTGRES_BATCH_WAIT_MS", "5")
        .env("SEALPOST_GATEWAY_HTTP_LISTEN", "127.0.0.1:0");
    proc.spawn();
    let ex = std::sync::Arc::new(CommandExecutor::new(
        store_on(&client),
        sealpost_domain::RetryPolicy::default(),
    ));
    // Writers in the background: thousands of events, and more until the projector has been
    // killed enough times (a slower setup, like the cluster's, gets as many kills).
    let enough_kills = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let ex = ex.clone();
        let enough_kills = enough_kills.clone();
        tokio::spawn(async move {
            let mut all = vec![];
            for chunk in 0..40 {
                if chunk >= 10 && enough_kills.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let prefix = format!("k{chunk}");
                let batch =
                    futures::future::join_all((0..80).map(|i| run_lifecycle(&ex, &prefix, i)))
                        .await;
                all.extend(batch);
            }
            all
        })
    };
    // kill -9 the projector repeatedly while it works: each time only once every projection's
    // checkpoint has moved since the last kill (the new process committed batches) and while
    // the stream still holds events it has not applied (it dies with work in flight).
    let mut kills = 0;
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    loop {
        let moved = eventually(Duration::from_secs(30), "checkpoints moving", || async {
            let cps = checkpoints(&pool).await;
            let all_moved = cps.len() == 3
                && cps
                    .iter()
                    .all(|(k, v)| *v > last.get(k).copied().unwrap_or(0));
            all_moved.then_some(cps)
        })
        .await;
        let Ok(cps) = moved else { break };
        let end = stream_last_seq(&client).await as i64;
        if cps.values().all(|v| *v == end) && writer.is_finished() {
            break;
        }
        proc.kill9().await;
        kills += 1;
        if kills >= 6 {
            enough_kills.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        last = cps;
        proc.spawn();
    }
    let written = writer.await.unwrap();
    caught_up(&pool, &client, Duration::from_secs(90)).await;
    proc.kill9().await;
    assert!(
        kills >= 5,
        "the projector was killed only {kills} times with work in flight"
    );

    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    let mut total = 0i64;
    for (_, types) in &written {
        for t in types {
            *expected.entry(t.as_str().to_owned()).or_default() += 1;
            total += 1;
        }
    }
    assert!(total > 2000, "thousands of events: {total}");
    eprintln!("projector killed {kills} times during {total} events (cluster: {cluster})");
    assert_eq!(total as u64, stream_last_seq(&client).await);
    assert_eq!(
        metric_counts(&pool).await,
        expected,
        "each event counted exactly once"
    );
    // Every message row equals its aggregate.
    let store = store_on(&client);
    for (agg, types) in &written {
        let loaded = store.load(agg).await.unwrap();
        let (t, m) = agg.split_once('.').unwrap();
        let row = sealpost_projections::message_row(&pool, t, m)
            .await
            .unwrap()
            .unwrap();
        let a = &loaded.aggregate;
        assert_eq!(row.status, a.status, "{agg}");
        assert_eq!(row.event_count as usize, types.len(), "{agg}");
        assert_eq!(row.event_count as usize, loaded.version, "{agg}");
        assert_eq!(row.last_seq as u64, loaded.last_stream_seq, "{agg}");
        assert_eq!(row.active_holds as usize, a.holds.len(), "{agg}");
        assert_eq!(row.purged, a.purged, "{agg}");
        assert_eq!(row.carrier, a.carrier, "{agg}");
        assert_eq!(row.attempts as u32, a.next_attempt - 1, "{agg}");
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows as usize, written.len());
}

/// Takes the first `n` events of `name`'s durable consumer and holds them unacked, as a
/// projector process that died mid-batch does: JetStream hands the rest to the next process.
async fn hold_first(
    client: &async_nats::Client,
    name: ProjectionName,
    n: usize,
) -> Vec<async_nats::jetstream::Message> {
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream("SEALPOST_EVENTS").await.unwrap();
    let consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer(name.durable().as_str()).await.unwrap();
    let mut held = vec![];
    while held.len() < n {
        let mut batch = consumer
            .fetch()
            .max_messages(n - held.len())
            .messages()
            .await
            .unwrap();
        while let Some(m) = batch.next().await {
            held.push(m.unwrap());
        }
    }
    let seqs: Vec<u64> = held
        .iter()
        .map(|m| m.info().unwrap().stream_sequence)
        .collect();
    assert_eq!(
        seqs,
        (1..=n as u64).collect::<Vec<_>>(),
        "held the first {n} events"
    );
    held
}

/// Gives the held events back (the dead process's batch, redelivered).
async fn release(held: Vec<async_nats::jetstream::Message>) {
    for m in held {
        m.ack_with(async_nats::jetstream::AckKind::Nak(None))
            .await
            .unwrap();
    }
}

async fn consumer_info(
    client: &async_nats::Client,
    name: ProjectionName,
) -> async_nats::jetstream::consumer::Info {
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream("SEALPOST_EVENTS").await.unwrap();
    let mut consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer(name.durable().as_str()).await.unwrap();
    consumer.info().await.unwrap().clone()
}

/// Waits until the consumer has acked every event of the stream.
async fn all_acked(client: &async_nats::Client, name: ProjectionName, last: u64) {
    eventually(Duration::from_secs(30), "every event acked", || async {
        let info = consumer_info(client, name).await;
        (info.ack_floor.stream_sequence == last && info.num_ack_pending == 0).then_some(())
    })
    .await
    .unwrap();
}

/// Writes `n` varied lifecycles; returns the expected count per event type and the number of
/// events.
async fn write_lifecycles(env: &Env, prefix: &str, n: usize) -> (BTreeMap<String, i64>, u64) {
    let ex = env.executor();
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    let mut total = 0;
    for i in 0..n {
        for t in run_lifecycle(&ex, prefix, i).await.1 {
            *expected.entry(t.as_str().to_owned()).or_default() += 1;
            total += 1;
        }
    }
    assert_eq!(total, stream_last_seq(&env.client).await);
    (expected, total)
}

async fn checkpoint_of(pool: &PgPool, name: ProjectionName) -> i64 {
    checkpoints(pool)
        .await
        .get(name.as_str())
        .copied()
        .unwrap_or(0)
}

#[tokio::test]
async fn a_batch_held_by_a_dead_projector_is_filled_from_the_stream_and_never_applied_twice() {
    let env = Env::start().await;
    let (_db, pool) = db().await;
    let (expected, total) = write_lifecycles(&env, "gap", 16).await;
    const HELD: usize = 20;
    // A dead process holds events 1..=20: the live projector gets 21.. only.
    let held = hold_first(&env.client, ProjectionName::Metrics, HELD).await;
    let running = Projector::start(
        async_nats::jetstream::new(env.client.clone()),
        pool.clone(),
        small_batches(),
        &[ProjectionName::Metrics],
    )
    .await
    .unwrap();
    // The checkpoint reaches the end while events 1..=20 are still held: they were applied by
    // the gap fill, in order, in the transaction of the first batch after them.
    eventually(
        Duration::from_secs(30),
        "the checkpoint at the end",
        || async {
            (checkpoint_of(&pool, ProjectionName::Metrics).await == total as i64).then_some(())
        },
    )
    .await
    .unwrap();
    assert_eq!(
        metric_counts(&pool).await,
        expected,
        "every event counted once"
    );
    // The dead process's batch comes back; it is at or below the checkpoint and changes nothing.
    release(held).await;
    all_acked(&env.client, ProjectionName::Metrics, total).await;
    assert_eq!(
        metric_counts(&pool).await,
        expected,
        "the redelivered batch was not applied a second time"
    );
    drop(running);
}

#[tokio::test]
async fn a_gap_larger_than_max_gap_fill_waits_for_its_own_events_and_applies_nothing_past_it() {
    let env = Env::start().await;
    let (_db, pool) = db().await;
    let (expected, total) = write_lifecycles(&env, "cap", 16).await;
    const HELD: usize = 20;
    let held = hold_first(&env.client, ProjectionName::Metrics, HELD).await;
    let running = Projector::start(
        async_nats::jetstream::new(env.client.clone()),
        pool.clone(),
        ProjectorConfig {
            max_gap_fill: HELD as u64 - 1,
            ..small_batches()
        },
        &[ProjectionName::Metrics],
    )
    .await
    .unwrap();
    // The projector takes the events after the gap, cannot fill it, and puts them back: they
    // are redelivered, and meanwhile nothing is applied.
    eventually(
        Duration::from_secs(30),
        "the events after the gap put back",
        || async {
            let info = consumer_info(&env.client, ProjectionName::Metrics).await;
            (info.num_redelivered > 0).then_some(())
        },
    )
    .await
    .unwrap();
    assert_eq!(checkpoint_of(&pool, ProjectionName::Metrics).await, 0);
    assert!(
        metric_counts(&pool).await.is_empty(),
        "nothing applied past the gap"
    );
    // The gap's own events come back; everything is applied once.
    release(held).await;
    eventually(
        Duration::from_secs(30),
        "the checkpoint at the end",
        || async {
            (checkpoint_of(&pool, ProjectionName::Metrics).await == total as i64).then_some(())
        },
    )
    .await
    .unwrap();
    all_acked(&env.client, ProjectionName::Metrics, total).await;
    assert_eq!(
        metric_counts(&pool).await,
        expected,
        "every event counted once"
    );
    drop(running);
}

/// A projector that starts while Postgres cannot be reached (every connection refused, as in a
/// restart) waits for it instead of exiting, and projects once Postgres is back; a projector
/// whose database does not exist fails at once.
#[tokio::test]
async fn a_projector_started_while_postgres_is_away_waits_for_it_and_then_projects() {
    let nats = sealpost_testkit::NatsServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = app_config(&nats.url(), dir.path(), vec![]);
    sealpost::app::provision(
        &cfg,
        &sealpost_eventstore::provision::embedded_definitions(),
    )
    .await
    .unwrap();
    let (db, pool) = db().await;
    let (upstream, _) = through(&db.url, 0);
    let proxy = sealpost_testkit::TcpProxy::start(upstream).await.unwrap();

    // A database that does not exist is not waited for.
    let (_, missing) = through(&format!("{}_missing", db.url), proxy.port());
    cfg.postgres.url = sealpost_domain::Secret::new(missing);
    let Err(e) = sealpost::App::start(
        cfg.clone(),
        &[sealpost::Role::Projector],
        std::future::pending(),
    )
    .await
    else {
        panic!("a missing database: it does not start");
    };
    assert!(format!("{e:#}").contains("PostgreSQL"), "{e:#}");

    let (_, through_proxy) = through(&db.url, proxy.port());
    cfg.postgres.url = sealpost_domain::Secret::new(through_proxy);
    proxy.cut();
    let starting = tokio::spawn({
        let cfg = cfg.clone();
        async move {
            sealpost::App::start(cfg, &[sealpost::Role::Projector], std::future::pending()).await
        }
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    if starting.is_finished() {
        let ended = starting.await.unwrap().err().map(|e| format!("{e:#}"));
        panic!("it waits for Postgres instead of exiting: {ended:?}");
    }
    proxy.restore();
    let _projector = tokio::time::timeout(Duration::from_secs(60), starting)
        .await
        .expect("it starts once Postgres is back")
        .unwrap()
        .unwrap_or_else(|e| panic!("it starts once Postgres is back: {e:#}"));

    // And it projects: an accepted message becomes a row.
    let client = nats.connect().await.unwrap();
    let (agg, accept) = accept_cmd("while-postgres-was-away");
    sealpost::app::executor(&cfg, client)
        .execute(&agg, accept, &meta("c"))
        .await
        .unwrap();
    let (t, m) = agg.split_once('.').unwrap();
    eventually(Duration::from_secs(30), "the message's row", || async {
        sealpost_projections::message_row(&pool, t, m)
            .await
            .ok()
            .flatten()
    })
    .await
    .unwrap();
}
