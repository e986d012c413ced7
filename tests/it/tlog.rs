//! The verifiable log on a real nats-server: what is appended survives a reopen and a `kill -9`
//! of the server with the same roots, two writers never fork it, and what it signs verifies
//! offline with nothing but the verifier key.

// Test fixtures: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use sealpost_testkit::NatsServer;
use sealpost_tlog::{
    leaf_hash, stream_config, verify_consistency, verify_inclusion, CheckpointVerifier,
    JetStreamLog, LogError, LogLocation, LogSigner,
};

const STREAM: &str = "SEALPOST_TLOG_TEST";

fn location(name: &str) -> LogLocation {
    LogLocation {
        stream: STREAM.into(),
        subject: format!("sealpost.tlog.{name}"),
    }
}

async fn setup(server: &NatsServer) -> async_nats::jetstream::Context {
    let js = async_nats::jetstream::new(server.connect().await.unwrap());
    js.create_stream(stream_config(STREAM, vec!["sealpost.tlog.>".into()]))
        .await
        .unwrap();
    js
}

async fn open(js: &async_nats::jetstream::Context, name: &str) -> JetStreamLog {
    JetStreamLog::open(js.clone(), location(name), &mut |_, _| {})
        .await
        .unwrap()
}

fn entry(i: u64) -> Vec<u8> {
    format!("epoch {i}: root {:064x}\n", i * 7919).into_bytes()
}

#[tokio::test]
async fn appended_entries_reopen_to_the_same_roots_and_everything_signed_verifies_offline() {
    let server = NatsServer::start().await.unwrap();
    let js = setup(&server).await;
    let (signer, _) = LogSigner::generate("sealpost.test/log-a").unwrap();
    let mut log = open(&js, "a").await;
    assert_eq!(log.size(), 0);
    let mut checkpoints = vec![];
    for i in 0..300 {
        assert_eq!(log.append(&entry(i)).await.unwrap(), i);
        if i % 100 == 99 {
            checkpoints.push(log.checkpoint(&signer).unwrap());
        }
    }
    // Another log on the same stream is separate.
    let mut other = open(&js, "b").await;
    other.append(b"b's first").await.unwrap();

    let mut reopened_progress = vec![];
    let reopened = JetStreamLog::open(js.clone(), location("a"), &mut |n, total| {
        reopened_progress.push((n, total))
    })
    .await
    .unwrap();
    assert_eq!(reopened.size(), 300);
    assert_eq!(reopened_progress.last(), Some(&(300, 300)));
    for size in [1, 100, 257, 300] {
        assert_eq!(
            reopened.tree().root(size).unwrap(),
            log.tree().root(size).unwrap()
        );
    }

    // An auditor with only the verifier key, the checkpoints and the proofs.
    let verifier = CheckpointVerifier::new(signer.verifier_key()).unwrap();
    let opened: Vec<_> = checkpoints
        .iter()
        .map(|c| verifier.open(c.as_bytes()).unwrap())
        .collect();
    assert_eq!(
        opened.iter().map(|c| c.size).collect::<Vec<_>>(),
        [100, 200, 300]
    );
    for pair in opened.windows(2) {
        let proof = reopened
            .tree()
            .consistency_proof(pair[0].size, pair[1].size)
            .unwrap();
        verify_consistency(
            &proof,
            pair[0].size,
            pair[0].root,
            pair[1].size,
            pair[1].root,
        )
        .unwrap();
    }
    let last = &opened[2];
    for index in [0, 150, 299] {
        let proof = reopened.tree().inclusion_proof(index, last.size).unwrap();
        verify_inclusion(
            &proof,
            last.size,
            last.root,
            index,
            leaf_hash(&entry(index)),
        )
        .unwrap();
        assert!(
            verify_inclusion(&proof, last.size, last.root, index, leaf_hash(b"forged")).is_err()
        );
    }
}

#[tokio::test]
async fn a_second_writer_cannot_fork_the_log_and_a_resend_is_stored_once() {
    let server = NatsServer::start().await.unwrap();
    let js = setup(&server).await;
    let mut a = open(&js, "w").await;
    for i in 0..5 {
        a.append(&entry(i)).await.unwrap();
    }
    // Two stale copies of the writer, both at size 5.
    let mut same = open(&js, "w").await;
    let mut other = open(&js, "w").await;
    a.append(&entry(5)).await.unwrap();

    // The same entry at the same index (a resend after a lost ack) is the one stored.
    assert_eq!(same.append(&entry(5)).await.unwrap(), 5);
    // A different entry at that index is refused, and nothing is stored.
    match other.append(b"a fork").await {
        Err(LogError::Conflict { subject, expected }) => {
            assert_eq!(subject, "sealpost.tlog.w");
            assert!(expected > 0);
        }
        r => panic!("expected a conflict, got {r:?}"),
    }
    // The conflict made it read what it missed: it appends after it.
    assert_eq!(other.size(), 6);
    assert_eq!(other.refresh().await.unwrap(), 0);
    assert_eq!(other.append(&entry(6)).await.unwrap(), 6);
    // The first writer is now the stale one: its entry 6 equals the stored one (a resend,
    // stored once), and having read what it missed it appends after it.
    assert_eq!(a.append(&entry(6)).await.unwrap(), 6);
    assert_eq!(a.size(), 7);
    assert_eq!(a.append(b"late").await.unwrap(), 7);
    // Now `other` is stale: a different entry 7 is refused.
    assert!(matches!(
        other.append(b"another fork").await,
        Err(LogError::Conflict { .. })
    ));

    let log = open(&js, "w").await;
    assert_eq!(log.size(), 8);
    let mut expected = sealpost_tlog::Tree::new();
    for i in 0..7 {
        expected.append(&entry(i));
    }
    expected.append(b"late");
    assert_eq!(log.tree().root(8).unwrap(), expected.root(8).unwrap());
}

#[tokio::test]
async fn killing_the_server_mid_appends_keeps_every_acknowledged_entry_once_in_order() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let mut server = NatsServer::start().await.unwrap();
    let js = setup(&server).await;
    let mut log = open(&js, "k").await;
    const N: u64 = 10_000;
    let acknowledged = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let writer = {
        let (acknowledged, failures) = (acknowledged.clone(), failures.clone());
        tokio::spawn(async move {
            let mut next = 0u64;
            while next < N {
                match log.append(&entry(next)).await {
                    Ok(index) => {
                        assert_eq!(index, next);
                        next += 1;
                        acknowledged.store(next, Ordering::SeqCst);
                    }
                    // Not acknowledged (the server is down, or the ack was lost): the same
                    // entry is appended again under the same index.
                    Err(LogError::Nats { .. }) => {
                        failures.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        })
    };
    // kill -9 the server twice while appends are in flight (more acknowledged since the last
    // kill, and not all of them yet).
    let mut last = 0;
    for _ in 0..2 {
        let seen = sealpost_testkit::eventually(
            std::time::Duration::from_secs(60),
            "appends progressing",
            || {
                let n = acknowledged.load(Ordering::SeqCst);
                async move { (n >= last + 500).then_some(n) }
            },
        )
        .await
        .unwrap();
        assert!(seen < N, "all appends were done before the kill");
        last = seen;
        server
            .restart()
            .await
            .expect("the server restarts on its store");
    }
    tokio::time::timeout(std::time::Duration::from_secs(120), writer)
        .await
        .expect("the writer finishes")
        .unwrap();
    assert!(
        failures.load(Ordering::SeqCst) > 0,
        "no append failed: the kills hit nothing in flight"
    );
    let js = async_nats::jetstream::new(server.connect().await.unwrap());
    let reopened = open(&js, "k").await;
    assert_eq!(reopened.size(), N, "each acknowledged entry once");
    let mut expected = sealpost_tlog::Tree::new();
    for i in 0..N {
        expected.append(&entry(i));
    }
    assert_eq!(reopened.tree().root(N).unwrap(), expected.root(N).unwrap());
}
