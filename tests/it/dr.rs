//! Disaster recovery (issue 14, item 8): a standby nats-server of its own (own store, JetStream
//! domain `standby`) joined to the primary (domain `primary`) by a leaf node, with
//! `sealpost dr mirror` mirroring the event and key streams. After the primary is `kill -9`ed,
//! the projections rebuilt from the standby equal the primary's, `replay --verify` passes on the
//! standby, and `sealpost dr promote` makes it take writes.

// Test fixtures: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sealpost_domain::{MessageCommand, RetryPolicy};
use sealpost_eventstore::provision::{embedded_definitions, provision, StreamOverrides};
use sealpost_eventstore::CommandExecutor;
use sealpost_testkit::{eventually, free_port, NatsServer};

use crate::projections::{db, dump, run_lifecycle, stream_last_seq};
use crate::replay::sealpost;
use crate::support::{meta, now, store_on};

/// The primary (domain `primary`, accepting leaf nodes) and the standby (domain `standby`, a
/// leaf node of the primary), each with its own store.
async fn primary_and_standby(dir: &std::path::Path) -> (NatsServer, NatsServer) {
    let leaf = free_port().unwrap();
    let primary_conf = dir.join("primary.conf");
    std::fs::write(
        &primary_conf,
        format!("jetstream {{ domain: primary }}\nleafnodes {{ listen: \"127.0.0.1:{leaf}\" }}\n"),
    )
    .unwrap();
    let standby_conf = dir.join("standby.conf");
    std::fs::write(
        &standby_conf,
        format!(
            "jetstream {{ domain: standby }}\n\
             leafnodes {{ remotes: [ {{ url: \"nats-leaf://127.0.0.1:{leaf}\" }} ] }}\n"
        ),
    )
    .unwrap();
    let primary = NatsServer::start_with(&["-c", primary_conf.to_str().unwrap()])
        .await
        .unwrap();
    let standby = NatsServer::start_with(&["-c", standby_conf.to_str().unwrap()])
        .await
        .unwrap();
    (primary, standby)
}

#[tokio::test]
async fn after_the_primary_is_gone_the_standby_rebuilds_equal_projections_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let (mut primary, standby) = primary_and_standby(dir.path()).await;
    let client = primary.connect().await.unwrap();
    provision(
        &async_nats::jetstream::new(client.clone()),
        &embedded_definitions(),
        &StreamOverrides::default(),
    )
    .await
    .unwrap();

    // The standby mirrors before and while the primary takes writes.
    let mirrored = sealpost(
        &standby.url(),
        None,
        &["dr", "mirror", "--primary-domain", "primary"],
    )
    .await;
    assert_eq!(mirrored.code, Some(0), "{}", mirrored.stderr);
    assert!(
        mirrored.stdout.contains("SEALPOST_EVENTS: last sequence")
            && mirrored.stdout.contains("SEALPOST_KEYS: last sequence"),
        "{}",
        mirrored.stdout
    );
    let ex = CommandExecutor::new(store_on(&client), RetryPolicy::default());
    let mut written = vec![];
    for chunk in 0..4 {
        let prefix = format!("dr{chunk}");
        let batch =
            futures::future::join_all((0..50).map(|i| run_lifecycle(&ex, &prefix, i))).await;
        written.extend(batch);
    }
    let last = stream_last_seq(&client).await;
    assert!(last > 500, "{last} events");

    // The primary's projections, built by the operator's command.
    let (primary_db, primary_pool) = db().await;
    let built = sealpost(
        &primary.url(),
        Some(&primary_db.url),
        &["replay", "--projection", "all", "--from-start"],
    )
    .await;
    assert_eq!(built.code, Some(0), "{}", built.stderr);

    // The mirror has everything; then the primary dies.
    let standby_client = standby.connect().await.unwrap();
    eventually(
        Duration::from_secs(30),
        "the mirror to catch up",
        || async { (stream_last_seq(&standby_client).await == last).then_some(()) },
    )
    .await
    .unwrap();
    let status = sealpost(&standby.url(), None, &["dr", "status"]).await;
    assert!(
        status.stdout.contains(&format!(
            "SEALPOST_EVENTS: last sequence {last}, {last} messages, lag 0"
        )),
        "{}",
        status.stdout
    );
    primary.kill();

    // Projections rebuilt from the standby alone equal the primary's.
    let (standby_db, standby_pool) = db().await;
    let rebuilt = sealpost(
        &standby.url(),
        Some(&standby_db.url),
        &["replay", "--projection", "all", "--from-start"],
    )
    .await;
    assert_eq!(rebuilt.code, Some(0), "{}", rebuilt.stderr);
    let (want, got) = (dump(&primary_pool).await, dump(&standby_pool).await);
    assert_eq!(want.len(), got.len());
    for (table, rows) in &want {
        assert!(rows.len() > 2, "table {table} is empty");
        assert_eq!(rows, &got[table], "table {table} differs on the standby");
    }

    // The auditor's check passes on the standby.
    let verified = sealpost(&standby.url(), None, &["replay", "--verify"]).await;
    assert_eq!(verified.code, Some(0), "{}", verified.stderr);
    assert!(
        verified.stderr.contains(&format!(
            "replay verified OK: {last} events of 200 messages"
        )),
        "{}",
        verified.stderr
    );

    // A mirror takes no writes; promotion makes it the stream, refused without confirmation.
    let refused = sealpost(&standby.url(), None, &["dr", "promote"]).await;
    assert_ne!(refused.code, Some(0));
    assert!(
        refused.stderr.contains("--primary-is-gone"),
        "{}",
        refused.stderr
    );
    let promoted = sealpost(
        &standby.url(),
        None,
        &["dr", "promote", "--primary-is-gone"],
    )
    .await;
    assert_eq!(promoted.code, Some(0), "{}", promoted.stderr);
    assert!(
        promoted.stdout.contains("promoted (not a mirror)"),
        "{}",
        promoted.stdout
    );
    let provisioned = sealpost(&standby.url(), None, &["provision"]).await;
    assert_eq!(provisioned.code, Some(0), "{}", provisioned.stderr);
    // A history carried over from the primary goes on where it stopped.
    let standby_ex = CommandExecutor::new(store_on(&standby_client), RetryPolicy::default());
    let (agg, types) = &written[0];
    let done = standby_ex
        .execute(
            agg,
            MessageCommand::Hold {
                hold_id: "after-failover".into(),
                reason: "audit".into(),
                at: now(),
            },
            &meta("dr"),
        )
        .await
        .unwrap();
    assert_eq!(done.first_sequence, types.len() + 1);
    assert_eq!(done.last_stream_seq, last + 1);
}
