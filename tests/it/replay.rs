//! The `sealpost replay` command line as the real binary (build it with `cargo build -p
//! sealpost`): `--verify`'s exit codes on histories the real aggregate writes (the shared
//! generator, `sealpost_domain::testing`, through the real executor) and once the stream is
//! damaged; `--since` with messages accepted before the window; and `--projection NAME
//! --from-start` rebuilding a Postgres view. (NDJSON fields and each kind of problem:
//! `audit.rs`; a tenant's replay in its own account: `tenancy.rs`.)

use std::time::Duration;

use async_nats::header::HeaderMap;
use proptest::strategy::{Strategy as _, ValueTree as _};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use sealpost_domain::events::Cancelled;
use sealpost_domain::testing::{case_with_operator, History};
use sealpost_domain::{
    aggregate_id, CarrierOutcome, Message, MessageCommand, MessageEvent, MessageId, ReceiptKind,
    TenantId,
};
use sealpost_eventstore::names::EventSubject;
use sealpost_eventstore::store::event_headers;
use sealpost_eventstore::CommandExecutor;
use sealpost_projections::{ProjectionName, Projector, ProjectorConfig};
use sealpost_testkit::{eventually, PgDatabase};
use serde_json::Value;
use sqlx::PgPool;
use time::format_description::well_known::Rfc3339;

use crate::projections::{checkpoints, dump};
use crate::support::{accept, meta, now, result, sealpost_binary, Env};

const TENANTS: [&str; 3] = ["acme-corp", "beta-co", "gamma"];

/// What a `sealpost` run left: its exit code, stdout and stderr.
pub(crate) struct Out {
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Out {
    fn ndjson(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).expect("every stdout line is a JSON object"))
            .collect()
    }
}

/// Runs `sealpost <args>` against `nats_url` (and `database_url`, if any), no config file.
pub(crate) async fn sealpost(nats_url: &str, database_url: Option<&str>, args: &[&str]) -> Out {
    let mut cmd = tokio::process::Command::new(sealpost_binary());
    cmd.args(args)
        .env_remove("SEALPOST_CONFIG")
        .env_remove("SEALPOST_NATS_NKEY_SEED")
        .env("SEALPOST_NATS_URL", nats_url)
        .env("SEALPOST_NATS_REQUEST_TIMEOUT_MS", "5000")
        .env("SEALPOST_LOG_FILTER", "error")
        .env("SEALPOST_POSTGRES_URL", "")
        .kill_on_drop(true);
    match database_url {
        Some(url) => cmd.env("DATABASE_URL", url),
        None => cmd.env_remove("DATABASE_URL"),
    };
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("sealpost finishes")
        .expect("sealpost runs");
    Out {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `n` histories from the shared generator (fixed seed, so every run writes the same ones),
/// for messages `gen-<i>` of three tenants, written through the real executor (the case's
/// retry policy, one correlation id per message), interleaved by the instants they record.
/// Checks that the executor writes exactly the events the generator's aggregate wrote.
async fn write_generated(env: &Env, n: usize) -> Vec<History> {
    let rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    let strategy = case_with_operator();
    let histories: Vec<History> = (0..n)
        .map(|i| {
            let tenant = TenantId::new(TENANTS[i % TENANTS.len()]).expect("tenant id");
            let case = strategy
                .new_tree(&mut runner)
                .expect("a case")
                .current()
                .for_message(tenant, format!("gen-{i}"));
            History::generate(&case).expect("the generator's own checks pass")
        })
        .collect();
    let executors: Vec<CommandExecutor<Message>> = histories
        .iter()
        .map(|h| CommandExecutor::new(env.store(), h.case.policy()))
        .collect();
    let mut next = vec![0usize; n];
    while let Some(i) = (0..n)
        .filter(|&i| next[i] < histories[i].writes.len())
        .min_by_key(|&i| (histories[i].writes[next[i]].events[0].at(), i))
    {
        let h = &histories[i];
        let write = &h.writes[next[i]];
        let done = executors[i]
            .execute(
                &agg_id(h),
                write.command.clone(),
                &meta(&format!("gen-{i}")),
            )
            .await
            .expect("the executor runs the generated command");
        assert_eq!(done.events, write.events, "message {i}, write {}", next[i]);
        next[i] += 1;
    }
    histories
}

fn mid(h: &History) -> MessageId {
    MessageId::derive(&h.case.tenant, &h.case.idempotency_key)
}

fn agg_id(h: &History) -> String {
    aggregate_id(&h.case.tenant, &mid(h))
}

async fn stream_info(client: &async_nats::Client) -> async_nats::jetstream::stream::State {
    let js = async_nats::jetstream::new(client.clone());
    let mut s = js.get_stream("SEALPOST_EVENTS").await.expect("stream");
    s.info().await.expect("info").state.clone()
}

/// Publishes straight to the stream, as a buggy or hostile writer would: `event` on its real
/// subject, with the store's `Sealpost-*` headers for `aggregate_seq`.
async fn publish_bare(
    client: &async_nats::Client,
    tenant: &TenantId,
    message: &MessageId,
    aggregate_seq: usize,
    event: &MessageEvent,
) {
    let stored = event_headers(
        &aggregate_id(tenant, message),
        aggregate_seq,
        event,
        Some("damage"),
    );
    publish_copy(
        client,
        &EventSubject::new(tenant.clone(), message.clone(), event.event_type()).to_string(),
        &stored,
        event.to_body().expect("body"),
    )
    .await;
}

/// Stores `body` on `subject` with the `Sealpost-*` headers of `headers`: not the `Nats-*` ones
/// the server acts on (the duplicate window's `Nats-Msg-Id` would drop a copy, the expected last
/// sequence would refuse it).
async fn publish_copy(
    client: &async_nats::Client,
    subject: &str,
    headers: &HeaderMap,
    body: Vec<u8>,
) {
    let mut h = HeaderMap::new();
    for (name, values) in headers.iter() {
        let name: &str = name.as_ref();
        if name.starts_with("Nats-") {
            continue;
        }
        for v in values {
            h.append(name, v.as_str());
        }
    }
    async_nats::jetstream::new(client.clone())
        .publish_with_headers(subject.to_owned(), h, body.into())
        .await
        .expect("publish")
        .await
        .expect("stored");
}

/// `replay --verify` over 24 generated histories (three tenants, interleaved) written by the
/// real executor: exit code 0, the one OK line, every event with its sequence, body and
/// correlation id. Then one stored `held` event is stored again with its own headers: exit code
/// 1, the report names the repeated sequence, and every event is still printed; without
/// `--verify` the same stream exits 0.
#[tokio::test]
async fn replay_verify_exits_0_on_generated_histories_and_1_once_a_stored_event_is_copied() {
    let env = Env::start().await;
    let histories = write_generated(&env, 24).await;
    let total: usize = histories.iter().map(|h| h.events().len()).sum();
    let state = stream_info(&env.client).await;
    assert_eq!(state.messages, total as u64);
    let url = env.server.url();

    let clean = sealpost(&url, None, &["replay", "--verify"]).await;
    assert_eq!(clean.code, Some(0), "{}", clean.stderr);
    // One OK line on stderr (the progress bar is not drawn without a terminal).
    let want = format!(
        "replay verified OK: {total} events of 24 messages on sealpost.evt.*.*.>: sequences \
         gapless, bodies valid, lifecycle order legal"
    );
    assert_eq!(clean.stderr.trim_end(), want);
    // Every event, each message's in the order written, with its sequence and body.
    let lines = clean.ndjson();
    assert_eq!(lines.len(), total);
    for (i, h) in histories.iter().enumerate() {
        let mid = mid(h).to_string();
        let got: Vec<(&str, u64, &Value, &str)> = lines
            .iter()
            .filter(|l| l["message_id"] == mid.as_str())
            .map(|l| {
                (
                    l["event_type"].as_str().expect("event_type"),
                    l["aggregate_seq"].as_u64().expect("aggregate_seq"),
                    &l["event"],
                    l["correlation_id"].as_str().expect("correlation_id"),
                )
            })
            .collect();
        let bodies: Vec<Value> = h
            .events()
            .iter()
            .map(|e| serde_json::from_slice(&e.to_body().expect("body")).expect("json"))
            .collect();
        let corr = format!("gen-{i}");
        let want: Vec<(&str, u64, &Value, &str)> = h
            .events()
            .iter()
            .zip(&bodies)
            .enumerate()
            .map(|(k, (e, b))| (e.event_type().as_str(), k as u64 + 1, b, corr.as_str()))
            .collect();
        assert_eq!(got, want, "message {i}");
    }

    // Damage: a copy of a stored `held` event (legal after any status, so only its sequence
    // is wrong), stored again with its own headers, as a doubled write would look.
    let (h, k) = histories
        .iter()
        .find_map(|h| {
            let k = h
                .events()
                .iter()
                .position(|e| matches!(e, MessageEvent::Held(_)))?;
            Some((h, k))
        })
        .expect("a generated history with a hold");
    let mid = mid(h).to_string();
    let held = lines
        .iter()
        .filter(|l| l["message_id"] == mid.as_str())
        .nth(k)
        .expect("the held event");
    assert_eq!(held["event_type"], "held");
    let seq = held["stream_seq"].as_u64().expect("stream_seq");
    let js = async_nats::jetstream::new(env.client.clone());
    let stream = js.get_stream("SEALPOST_EVENTS").await.expect("stream");
    let stored = stream.get_raw_message(seq).await.expect("the stored event");
    publish_copy(
        &env.client,
        &stored.subject,
        &stored.headers,
        stored.payload.to_vec(),
    )
    .await;

    let bad = sealpost(&url, None, &["replay", "--verify"]).await;
    assert_eq!(bad.code, Some(1), "{}", bad.stderr);
    assert_eq!(
        bad.ndjson().len(),
        total + 1,
        "every event is still printed"
    );
    let report = &bad.stderr;
    assert!(
        report.contains(&format!(
            "replay verification FAILED: 1 problems in {} events of 24 messages (sequence: 1)",
            total + 1
        )),
        "{report}"
    );
    let line = report
        .lines()
        .find(|l| l.contains(&mid))
        .unwrap_or_else(|| panic!("the report names the message: {report}"));
    assert!(
        line.contains(&format!(
            "[sequence] Sealpost-Sequence {} repeats or goes back (expected {})",
            k + 1,
            h.events().len() + 1
        )),
        "{line}"
    );
    assert!(
        line.contains(&format!("stream seq {:>8}", total + 1)),
        "{line}"
    );
    assert!(
        report
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("error: replay verification failed: 1 problems")),
        "{report}"
    );
    // Without --verify the same damaged stream replays and exits 0.
    let plain = sealpost(&url, None, &["replay"]).await;
    assert_eq!(plain.code, Some(0), "{}", plain.stderr);
    assert_eq!(plain.ndjson().len(), total + 1);
}

/// A step of a lifecycle, executed now.
async fn run(ex: &CommandExecutor<Message>, tenant: &TenantId, key: &str, cmd: MessageCommand) {
    let id = aggregate_id(tenant, &MessageId::derive(tenant, key));
    ex.execute(&id, cmd, &meta(key))
        .await
        .expect("command runs");
}

fn accept_for(tenant: &TenantId, key: &str) -> MessageCommand {
    let mut a = accept(key);
    a.tenant_id = tenant.clone();
    MessageCommand::Accept(Box::new(a))
}

fn acked(attempt: u32) -> MessageCommand {
    result(
        attempt,
        CarrierOutcome::Acked {
            carrier_message_id: format!("cm-{attempt}"),
        },
    )
}

fn receipt(id: &str, kind: ReceiptKind) -> MessageCommand {
    MessageCommand::RecordReceipt {
        receipt_id: id.into(),
        kind,
        at: now(),
    }
}

/// (message id, event type, aggregate sequence) of every NDJSON line.
fn events_of(out: &Out) -> Vec<(String, String, u64)> {
    out.ndjson()
        .iter()
        .map(|l| {
            (
                l["message_id"].as_str().expect("message_id").to_owned(),
                l["event_type"].as_str().expect("event_type").to_owned(),
                l["aggregate_seq"].as_u64().expect("aggregate_seq"),
            )
        })
        .collect()
}

/// `replay --since T --verify` with four messages accepted before T (one of them finished
/// before T) and one after: exactly the events stored from T on, the later events of the old
/// messages included, and exit 0. Then, per the README ("only continuity is checked for messages
/// accepted before the window"): an illegal order on an old message passes with `--since` but
/// fails from the start; on a message accepted inside the window it fails; a sequence gap on an
/// old message fails.
#[tokio::test]
async fn replay_since_shows_later_events_of_messages_accepted_before_it_and_checks_only_their_continuity(
) {
    let env = Env::start().await;
    let ex = env.executor();
    let acme = TenantId::new("acme-corp").expect("tenant");
    let beta = TenantId::new("beta-co").expect("tenant");
    let id = |t: &TenantId, k: &str| MessageId::derive(t, k).to_string();
    let transient = CarrierOutcome::Transient {
        code: "503".into(),
        retry_after: None,
    };
    // Before the window: `shown` acked, `retried` failed once, `late` only accepted, `done`
    // cancelled (nothing of it after the window).
    run(&ex, &acme, "shown", accept_for(&acme, "shown")).await;
    run(&ex, &acme, "shown", acked(1)).await;
    run(&ex, &beta, "retried", accept_for(&beta, "retried")).await;
    run(&ex, &beta, "retried", result(1, transient)).await;
    run(&ex, &acme, "late", accept_for(&acme, "late")).await;
    run(&ex, &acme, "done", accept_for(&acme, "done")).await;
    run(&ex, &acme, "done", MessageCommand::Cancel { at: now() }).await;
    let before = stream_info(&env.client).await.messages;
    assert_eq!(before, 8);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let since = now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Inside the window: the old messages go on, and `fresh` starts.
    run(&ex, &acme, "shown", receipt("d-1", ReceiptKind::Delivered)).await;
    run(&ex, &acme, "shown", receipt("r-1", ReceiptKind::Displayed)).await;
    run(&ex, &beta, "retried", acked(2)).await;
    let hold = MessageCommand::Hold {
        hold_id: "h-1".into(),
        reason: "audit".into(),
        at: now(),
    };
    run(&ex, &acme, "late", hold).await;
    run(&ex, &acme, "late", acked(1)).await;
    run(&ex, &beta, "fresh", accept_for(&beta, "fresh")).await;
    run(&ex, &beta, "fresh", acked(1)).await;

    let url = env.server.url();
    let since_arg = since.format(&Rfc3339).expect("rfc3339");
    let args = ["replay", "--since", &since_arg, "--verify"];
    let window = sealpost(&url, None, &args).await;
    assert_eq!(window.code, Some(0), "{}", window.stderr);
    let s = |v: &str| v.to_owned();
    assert_eq!(
        events_of(&window),
        vec![
            (id(&acme, "shown"), s("delivered"), 3),
            (id(&acme, "shown"), s("displayed"), 4),
            (id(&beta, "retried"), s("carrier_acked"), 4),
            (id(&acme, "late"), s("held"), 2),
            (id(&acme, "late"), s("carrier_acked"), 3),
            (id(&beta, "fresh"), s("accepted"), 1),
            (id(&beta, "fresh"), s("carrier_acked"), 2),
        ],
        "the later events of messages accepted before --since, nothing before it"
    );
    assert!(
        window.ndjson().iter().all(|l| l["time"]
            .as_str()
            .and_then(|t| time::OffsetDateTime::parse(t, &Rfc3339).ok())
            .is_some_and(|t| t >= since)),
        "every event was stored at or after --since"
    );
    assert!(
        window
            .stderr
            .contains("replay verified OK: 7 events of 4 messages"),
        "{}",
        window.stderr
    );

    // Order is not checked for a message accepted before the window: `cancelled` after
    // `carrier_acked` with the right next sequence passes with --since, and fails from the start.
    let cancelled = MessageEvent::Cancelled(Cancelled { at: now() });
    let late = MessageId::derive(&acme, "late");
    publish_bare(&env.client, &acme, &late, 4, &cancelled).await;
    let window = sealpost(&url, None, &args).await;
    assert_eq!(window.code, Some(0), "{}", window.stderr);
    let full = sealpost(&url, None, &["replay", "--verify"]).await;
    assert_eq!(full.code, Some(1), "{}", full.stderr);
    assert!(
        full.stderr.contains(&format!(
            "message acme-corp/{late}  [order] illegal lifecycle order: cancelled after \
             carrier_acked"
        )),
        "{}",
        full.stderr
    );

    // A message accepted inside the window is checked in full.
    let fresh = MessageId::derive(&beta, "fresh");
    publish_bare(&env.client, &beta, &fresh, 3, &cancelled).await;
    let window = sealpost(&url, None, &args).await;
    assert_eq!(window.code, Some(1), "{}", window.stderr);
    assert!(
        window
            .stderr
            .contains("1 problems in 9 events of 4 messages (order: 1)"),
        "{}",
        window.stderr
    );
    assert!(
        window.stderr.contains(&format!(
            "message beta-co/{fresh}  [order] illegal lifecycle order: cancelled after \
             carrier_acked"
        )),
        "{}",
        window.stderr
    );

    // Continuity is checked for every message in the window, old ones included.
    let shown = MessageId::derive(&acme, "shown");
    publish_bare(&env.client, &acme, &shown, 6, &cancelled).await;
    let window = sealpost(&url, None, &args).await;
    assert_eq!(window.code, Some(1), "{}", window.stderr);
    assert!(
        window.stderr.contains(&format!(
            "message acme-corp/{shown}  [sequence] Sealpost-Sequence 6 leaves a gap (expected 5)"
        )),
        "{}",
        window.stderr
    );
    assert!(
        window
            .stderr
            .contains("2 problems in 10 events of 4 messages"),
        "{}",
        window.stderr
    );
}

async fn count(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(pool)
        .await
        .expect("count")
}

/// `replay --projection NAME --from-start` as the real binary on a view damaged after the live
/// projector wrote it (40 generated histories): without `--from-start` it exits 1 and changes
/// nothing; `messages` rebuilds that view alone to the live rows and moves only its checkpoint;
/// `all` rebuilds every view to the live one. Each prints its one summary line.
#[tokio::test]
async fn replay_projection_from_start_cli_rebuilds_the_named_view_to_what_the_live_projector_wrote()
{
    let env = Env::start().await;
    let db = PgDatabase::create().await.expect("a test database");
    let pool = sealpost_projections::connect(&db.url, 4)
        .await
        .expect("pool");
    let histories = write_generated(&env, 40).await;
    let last = stream_info(&env.client).await.last_sequence as i64;
    let total: usize = histories.iter().map(|h| h.events().len()).sum();
    assert_eq!(last, total as i64);
    // The live view, as the projector role builds it.
    let js = async_nats::jetstream::new(env.client.clone());
    let projector = Projector::start(
        js,
        pool.clone(),
        ProjectorConfig::default(),
        ProjectionName::ALL,
    )
    .await
    .expect("projector starts");
    eventually(
        Duration::from_secs(60),
        "every projection caught up",
        || {
            let pool = pool.clone();
            async move {
                let cps = checkpoints(&pool).await;
                (cps.len() == 3 && cps.values().all(|v| *v == last)).then_some(())
            }
        },
    )
    .await
    .expect("caught up");
    drop(projector);
    let live = dump(&pool).await;
    assert_eq!(count(&pool, "messages").await, 40);

    // Damage every view: rows lost, a row changed, counts lost, checkpoints rewound.
    sqlx::raw_sql(
        "DELETE FROM messages WHERE message_id IN (SELECT message_id FROM messages LIMIT 5);
         UPDATE messages SET status = 'failed';
         DELETE FROM metrics_events;
         DELETE FROM compliance_views WHERE view_id IN (SELECT view_id FROM compliance_views LIMIT 3);
         UPDATE projection_checkpoints SET last_seq = 7;",
    )
    .execute(&pool)
    .await
    .expect("damage the views");
    let damaged = dump(&pool).await;
    for t in ["messages", "metrics_events", "compliance_views"] {
        assert_ne!(damaged[t], live[t], "{t} was damaged");
    }
    let url = env.server.url();

    // Without --from-start nothing is rebuilt.
    let refused = sealpost(&url, Some(&db.url), &["replay", "--projection", "messages"]).await;
    assert_eq!(refused.code, Some(1), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("add --from-start"),
        "{}",
        refused.stderr
    );
    assert_eq!(dump(&pool).await, damaged);

    // One view: only it is rebuilt.
    let one = sealpost(
        &url,
        Some(&db.url),
        &["replay", "--projection", "messages", "--from-start"],
    )
    .await;
    assert_eq!(one.code, Some(0), "{}", one.stderr);
    assert!(
        one.stdout.starts_with(&format!(
            "projection messages: rebuilt from sequence 1 to {last}: {last} events in "
        )),
        "{}",
        one.stdout
    );
    assert_eq!(one.stdout.lines().count(), 1, "{}", one.stdout);
    let after = dump(&pool).await;
    assert_eq!(
        after["messages"], live["messages"],
        "messages equals the live view"
    );
    assert_eq!(
        after["metrics_events"], damaged["metrics_events"],
        "metrics untouched"
    );
    assert_eq!(after["compliance_views"], damaged["compliance_views"]);
    assert_eq!(checkpoints(&pool).await["messages"], last);
    assert_eq!(checkpoints(&pool).await["metrics"], 7);

    // All of them.
    let all = sealpost(
        &url,
        Some(&db.url),
        &["replay", "--projection", "all", "--from-start"],
    )
    .await;
    assert_eq!(all.code, Some(0), "{}", all.stderr);
    for name in ProjectionName::ALL {
        assert!(
            all.stdout.contains(&format!(
                "projection {name}: rebuilt from sequence 1 to {last}: {last} events in "
            )),
            "{}",
            all.stdout
        );
    }
    assert_eq!(dump(&pool).await, live, "every view equals the live one");
    assert!(checkpoints(&pool).await.values().all(|v| *v == last));
}
