//! Sealpost on a 3-node JetStream cluster (issue 14, item 1): the test kit's `NatsCluster` on
//! loopback, `provision` with `replicas = 3`, ingress idempotency while the events stream's
//! leader node is `kill -9`ed and restarted, and no command refused on a lagging follower's read.
//! The delivery and projector crash tests run on the cluster too (`on_the_cluster_…` in
//! `delivery.rs` and `projections.rs`).

// Test fixtures: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use sealpost::{App, Role};
use sealpost_eventstore::provision::embedded_definitions;
use sealpost_testkit::NatsCluster;
use serde_json::Value;

use crate::gateway::{bytes, send_body, tenant_config, ACME};
use crate::support::{app_config, store_on};

/// `sealpost provision` with `replicas = 3` creates every stream with three replicas, all
/// current, and is idempotent on the cluster.
#[tokio::test]
async fn provision_with_three_replicas_runs_on_a_three_node_cluster() {
    let cluster = NatsCluster::start().await.expect("a 3-node cluster");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = app_config(&cluster.url(), dir.path(), vec![tenant_config(ACME)]);
    cfg.nats.replicas = 3;
    let defs = embedded_definitions();
    sealpost::app::provision(&cfg, &defs).await.unwrap();
    sealpost::app::provision(&cfg, &defs).await.unwrap();
    let client = cluster.connect().await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    assert!(!defs.streams.is_empty());
    for (file, json) in &defs.streams {
        let v: Value = serde_json::from_str(json).unwrap();
        let name = v["name"]
            .as_str()
            .unwrap_or_else(|| panic!("{file} names its stream"));
        let mut stream = js.get_stream(name).await.unwrap();
        let info = stream.info().await.unwrap();
        assert_eq!(info.config.num_replicas, 3, "{name}");
        let cl = info.cluster.as_ref().unwrap();
        assert!(cl.leader.is_some(), "{name} has a leader");
        assert_eq!(cl.replicas.len(), 2, "{name}: two followers");
    }
}

/// Ingress idempotency on the cluster: 300 sends over NATS, each resent until it is answered,
/// while the node leading `SEALPOST_EVENTS` is killed (`kill -9`) after the 100th and restarted
/// after the 200th. Every idempotency key ends with exactly one `accepted` event, every answer
/// names the same message id for its key, and the stream keeps three replicas.
#[tokio::test]
async fn ingress_is_idempotent_while_the_events_leader_is_killed() {
    let mut cluster = NatsCluster::start().await.expect("a 3-node cluster");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = app_config(&cluster.url(), dir.path(), vec![tenant_config(ACME)]);
    cfg.nats.replicas = 3;
    cfg.nats.request_timeout = Duration::from_secs(3);
    sealpost::app::provision(&cfg, &embedded_definitions())
        .await
        .unwrap();
    let gateway = App::start(cfg.clone(), &[Role::Gateway], std::future::pending())
        .await
        .expect("the gateway starts on the cluster");
    let blob = crate::support::upload(gateway.blob_store().unwrap(), ACME, b"sealed bytes").await;
    let client = cluster.connect().await.unwrap();
    let events = sealpost_eventstore::names::Stream::Events.as_str();

    let mut ids: BTreeMap<String, String> = BTreeMap::new();
    let (mut resends, mut killed) = (0u32, None);
    let started = Instant::now();
    for i in 0..300 {
        if i == 100 {
            let leader = cluster.leader_of(&client, events).await.unwrap();
            cluster.kill(leader);
            killed = Some(leader);
        }
        if i == 200 {
            cluster.restart(killed.unwrap()).await.unwrap();
        }
        let key = format!("cluster-{i}");
        let body = bytes(&send_body(ACME, &key, &blob));
        let deadline = Instant::now() + Duration::from_secs(60);
        let id = loop {
            let answer = tokio::time::timeout(
                Duration::from_secs(5),
                client.request(format!("sealpost.cmd.{ACME}.send"), body.clone().into()),
            )
            .await;
            if let Ok(Ok(reply)) = answer {
                let v: Value = serde_json::from_slice(&reply.payload).unwrap_or_default();
                if matches!(v["status"].as_str(), Some("accepted" | "duplicate")) {
                    break v["message_id"].as_str().unwrap().to_owned();
                }
            }
            assert!(Instant::now() < deadline, "{key} was never answered");
            resends += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if let Some(before) = ids.insert(key.clone(), id.clone()) {
            assert_eq!(before, id);
        }
    }
    let elapsed = started.elapsed();

    let store = store_on(&client);
    let mut distinct = BTreeSet::new();
    for (key, id) in &ids {
        let raw = store.load_raw(&format!("{ACME}.{id}")).await.unwrap();
        let accepted = raw.iter().filter(|r| r.event_type() == "accepted").count();
        assert_eq!(accepted, 1, "{key}: {accepted} accepted events");
        distinct.insert(id.clone());
    }
    assert_eq!(distinct.len(), 300);
    let js = async_nats::jetstream::new(client.clone());
    let mut stream = js.get_stream(events).await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.config.num_replicas, 3);
    eprintln!(
        "cluster: 300 sends in {elapsed:.1?}, node n{} (the events leader) killed after 100 and \
         restarted after 200, {resends} resends, {} events in the stream",
        killed.unwrap(),
        info.state.messages
    );
}

/// Any replica of a 3-replica stream answers a direct get, and a follower can lag the leader.
/// A command refused (or found to change nothing) on such a read is decided again once the
/// leader's last sequence for the aggregate is read. 400 messages are accepted and acked through
/// a connection to the events leader; right after, through a connection to a follower, even ones
/// are read plainly (counting how often the follower lags) and odd ones get their `delivered`
/// receipt recorded. No receipt is refused as `not_yet_acked`.
#[tokio::test]
async fn no_command_is_refused_on_a_lagging_follower() {
    use sealpost_domain::{MessageCommand, ReceiptKind, RetryPolicy, Status};
    use sealpost_eventstore::provision::{provision, StreamOverrides};
    use sealpost_eventstore::CommandExecutor;

    use crate::support::{accept_cmd, meta, now, result};

    let cluster = NatsCluster::start().await.expect("a 3-node cluster");
    let admin = cluster.connect().await.unwrap();
    provision(
        &async_nats::jetstream::new(admin.clone()),
        &embedded_definitions(),
        &StreamOverrides {
            replicas: Some(3),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let events = sealpost_eventstore::names::Stream::Events.as_str();
    let leader = cluster.leader_of(&admin, events).await.unwrap();
    let follower = (leader + 1) % cluster.len();
    let writer = cluster.node(leader).connect().await.unwrap();
    let reader = cluster.node(follower).connect().await.unwrap();
    let write = CommandExecutor::new(store_on(&writer), RetryPolicy::default());
    let read = CommandExecutor::new(store_on(&reader), RetryPolicy::default());
    let plain = store_on(&reader);

    let (mut lagging_reads, mut receipts) = (0u32, 0u32);
    for i in 0..400 {
        let (id, accept) = accept_cmd(&format!("lag-{i}"));
        write.execute(&id, accept, &meta("lag")).await.unwrap();
        write
            .execute(
                &id,
                result(
                    1,
                    sealpost_domain::CarrierOutcome::Acked {
                        carrier_message_id: format!("c-{i}"),
                    },
                ),
                &meta("lag"),
            )
            .await
            .unwrap();
        if i % 2 == 0 {
            let seen = plain.load(&id).await.unwrap();
            if seen.aggregate.status != Status::CarrierAcked {
                lagging_reads += 1;
            }
            continue;
        }
        let done = read
            .execute(
                &id,
                MessageCommand::RecordReceipt {
                    receipt_id: format!("r-{i}"),
                    kind: ReceiptKind::Delivered,
                    at: now(),
                },
                &meta("lag"),
            )
            .await
            .unwrap_or_else(|e| panic!("message {i}: the receipt was refused: {e}"));
        assert_eq!(done.events.len(), 1, "message {i}");
        assert_eq!(done.aggregate.status, Status::Delivered, "message {i}");
        receipts += 1;
    }
    assert_eq!(receipts, 200);
    eprintln!(
        "cluster: the follower n{follower} lagged the leader n{leader} on {lagging_reads} of 200 \
         plain reads right after a write; 200 of 200 receipts recorded through it"
    );
}

/// A process whose streams are missing fails at once, naming `sealpost provision`: only
/// JetStream not answering is waited out at start (`sealpost::app`; the classification is
/// unit-tested in `sealpost-eventstore`, and the fault suite asserts that no process restarted
/// during its faults exits).
#[tokio::test]
async fn a_process_without_its_streams_fails_at_once_naming_provision() {
    let cluster = NatsCluster::start().await.expect("a 3-node cluster");
    let dir = tempfile::tempdir().unwrap();
    let cfg = app_config(&cluster.url(), dir.path(), vec![tenant_config(ACME)]);
    let t = Instant::now();
    let Err(err) = App::start(cfg, &[Role::Gateway], std::future::pending()).await else {
        panic!("no streams: it does not start");
    };
    let text = format!("{err:#}");
    assert!(
        text.contains("is missing; run `sealpost provision`"),
        "{text}"
    );
    // Not waited out, which would take 120 s.
    assert!(t.elapsed() < Duration::from_secs(60), "{:?}", t.elapsed());
}
