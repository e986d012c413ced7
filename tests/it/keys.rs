//! The key directory's AKD on a real Postgres: akd's own conformance tests pass on our storage,
//! and a directory on Postgres publishes the same epochs as akd's in-memory one, its proofs
//! verify, and it reopens from the database.

// Test fixtures: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use akd::storage::memory::AsyncInMemoryDatabase;
use akd::storage::StorageManager;
use akd::{AkdLabel, AkdValue, HistoryParams, HistoryVerificationParams};
use sealpost_keys::{Config, Directory, PgAkdStorage, VrfSecret};
use sealpost_testkit::PgDatabase;

async fn pool() -> (PgDatabase, sqlx::PgPool) {
    let db = PgDatabase::create().await.expect("a test database");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&db.url)
        .await
        .unwrap();
    (db, pool)
}

fn vrf() -> VrfSecret {
    VrfSecret::new([7u8; 32])
}

fn label(i: usize) -> AkdLabel {
    AkdLabel(format!("label-{i:04}").into_bytes())
}

fn value(i: usize, epoch: u64) -> AkdValue {
    AkdValue(format!("device keys of {i} at epoch {epoch}").into_bytes())
}

#[tokio::test]
async fn akds_own_storage_conformance_tests_pass_on_postgres() {
    let (_db, pool) = pool().await;
    // akd's contract lets any record be overwritten, so its tests run without the epoch fence
    // (the next test covers the fence).
    akd::storage::tests::run_test_cases_for_storage_impl(PgAkdStorage::unfenced(
        pool,
        "conformance",
    ))
    .await;
}

#[tokio::test]
async fn two_writers_that_built_the_same_epoch_commit_it_once() {
    let (_db, pool) = pool().await;
    let storage = || PgAkdStorage::new(pool.clone(), "acme-corp");
    // Two publishers opened the directory at epoch 0 with akd's node cache (as a leader does);
    // each builds epoch 1 with other values on the tree it cached: b is a leader that lost its
    // lease without noticing.
    let cached = || Directory::open_cached(storage(), vrf(), 64 << 20, Duration::from_secs(3600));
    let a = cached().await.unwrap();
    let b = cached().await.unwrap();
    let first = a.publish(vec![(label(1), value(1, 1))]).await.unwrap();
    let second = b.publish(vec![(label(2), value(2, 1))]).await;
    let e = second.unwrap_err();
    assert!(
        format!("{e:?}").contains("epoch 1 is already committed"),
        "{e:?}"
    );
    // What is stored is the first writer's epoch, whole: its root, and its value only.
    let reopened = Directory::open(storage(), vrf()).await.unwrap();
    let stored = reopened.epoch().await.unwrap();
    assert_eq!((stored.epoch(), stored.hash()), (1, first.hash()));
    assert!(reopened.lookup(label(1)).await.is_ok());
    assert!(
        reopened.lookup(label(2)).await.is_err(),
        "no part of the refused epoch"
    );
    // Without the fence (akd's bare contract) the second commit would have overwritten it.
    let c = Directory::open(storage(), vrf()).await.unwrap();
    assert_eq!(
        c.publish(vec![(label(3), value(3, 2))])
            .await
            .unwrap()
            .epoch(),
        2,
        "a writer on the current tree goes on"
    );
}

#[tokio::test]
async fn a_directory_on_postgres_publishes_the_epochs_of_akds_in_memory_one_and_its_proofs_verify()
{
    let (_db, pool) = pool().await;
    let on_pg = Directory::open(PgAkdStorage::new(pool.clone(), "acme-corp"), vrf())
        .await
        .unwrap();
    let in_memory = akd::directory::Directory::<Config, _, _>::new(
        StorageManager::new_no_cache(AsyncInMemoryDatabase::new()),
        vrf(),
        akd::append_only_zks::AzksParallelismConfig::default(),
    )
    .await
    .unwrap();
    let mut roots = vec![];
    for epoch in 1..=3u64 {
        // Epoch 1: 40 labels; then every third label changes.
        let updates: Vec<(AkdLabel, AkdValue)> = (0..40)
            .filter(|i| epoch == 1 || i % 3 == 0)
            .map(|i| (label(i), value(i, epoch)))
            .collect();
        let pg = on_pg.publish(updates.clone()).await.unwrap();
        let mem = in_memory.publish(updates).await.unwrap();
        assert_eq!(pg.epoch(), epoch);
        assert_eq!(
            pg.hash(),
            mem.hash(),
            "epoch {epoch}: the same root as akd's own storage"
        );
        roots.push(pg.hash());
    }

    let vrf_pk = on_pg.vrf_public_key().await.unwrap();
    // Lookup: the latest value, proven against the epoch's root.
    let (proof, epoch) = on_pg.lookup(label(3)).await.unwrap();
    let verified = akd::client::lookup_verify::<Config>(
        vrf_pk.as_bytes(),
        epoch.hash(),
        epoch.epoch(),
        label(3),
        proof.clone(),
    )
    .unwrap();
    assert_eq!((verified.epoch, verified.version), (3, 3));
    assert_eq!(verified.value, value(3, 3));
    // A proof is bound to its label and root.
    assert!(akd::client::lookup_verify::<Config>(
        vrf_pk.as_bytes(),
        epoch.hash(),
        epoch.epoch(),
        label(4),
        proof.clone(),
    )
    .is_err());
    assert!(akd::client::lookup_verify::<Config>(
        vrf_pk.as_bytes(),
        roots[1],
        epoch.epoch(),
        label(3),
        proof,
    )
    .is_err());

    // History: all three values of a label that changed every epoch, newest first.
    let (history, epoch) = on_pg.history(&label(6)).await.unwrap();
    let results = akd::client::key_history_verify::<Config>(
        vrf_pk.as_bytes(),
        epoch.hash(),
        epoch.epoch(),
        label(6),
        history,
        HistoryVerificationParams::Default {
            history_params: HistoryParams::Complete,
        },
    )
    .unwrap();
    let values: Vec<AkdValue> = results.iter().map(|r| r.value.clone()).collect();
    assert_eq!(values, [value(6, 3), value(6, 2), value(6, 1)]);

    // Audit: the append-only proof of epochs 1 to 3 verifies against their roots.
    let audit = on_pg.audit(1, 3).await.unwrap();
    akd::auditor::audit_verify::<Config>(roots.clone(), audit.clone())
        .await
        .unwrap();
    // Against a history with a root swapped, it does not.
    let mut forked = roots.clone();
    forked[1] = roots[0];
    assert!(akd::auditor::audit_verify::<Config>(forked, audit)
        .await
        .is_err());

    // Reopened from Postgres alone, the directory is where it was; another tenant's is empty.
    let reopened = Directory::open(PgAkdStorage::new(pool.clone(), "acme-corp"), vrf())
        .await
        .unwrap();
    assert_eq!(reopened.epoch().await.unwrap().hash(), roots[2]);
    assert_eq!(reopened.epoch().await.unwrap().epoch(), 3);
    let other = Directory::open(PgAkdStorage::new(pool, "globex"), vrf())
        .await
        .unwrap();
    assert_eq!(other.epoch().await.unwrap().epoch(), 0);
    assert!(other.lookup(label(3)).await.is_err());
}

// ---------------------------------------------------------------------------------------------
// Signed epochs: the split-view gap closed

use sealpost_keys::{
    verify_lookup, ClientState, EpochError, EpochIntents, PublishedDirectory, VerifiableLookup,
};
use sealpost_testkit::NatsServer;
use sealpost_tlog::{JetStreamLog, LogLocation, LogSigner};

const LOG_STREAM: &str = "SEALPOST_KEYS_LOG_TEST";

async fn epoch_log(js: &async_nats::jetstream::Context, subject: &str) -> JetStreamLog {
    JetStreamLog::open_with_entries(
        js.clone(),
        LogLocation {
            stream: LOG_STREAM.into(),
            subject: subject.into(),
        },
        &mut |_, _| {},
    )
    .await
    .unwrap()
}

struct Published {
    _db: PgDatabase,
    _server: NatsServer,
    js: async_nats::jetstream::Context,
    pool: sqlx::PgPool,
    dir: PublishedDirectory,
    signer: LogSigner,
}

async fn published(signer: LogSigner) -> Published {
    let (db, pool) = pool().await;
    let server = NatsServer::start().await.unwrap();
    let js = async_nats::jetstream::new(server.connect().await.unwrap());
    js.create_stream(sealpost_tlog::stream_config(
        LOG_STREAM,
        vec!["sealpost.keylog.>".into()],
    ))
    .await
    .unwrap();
    let directory = Directory::open(PgAkdStorage::new(pool.clone(), "acme-corp"), vrf())
        .await
        .unwrap();
    let log = epoch_log(&js, "sealpost.keylog.acme-corp").await;
    let dir = PublishedDirectory::open(
        directory,
        "acme-corp",
        log,
        LogSigner::from_secret(&signer.secret()).unwrap(),
        &EpochIntents::new(pool.clone(), "acme-corp"),
    )
    .await
    .unwrap();
    Published {
        _db: db,
        _server: server,
        js,
        pool,
        dir,
        signer,
    }
}

fn check(
    p: &Published,
    vrf_pk: &[u8],
    answer: &VerifiableLookup,
    consistency: &[sealpost_tlog::Hash],
    state: &mut ClientState,
) -> Result<akd::VerifyResult, EpochError> {
    verify_lookup(
        vrf_pk,
        &p.signer.verifier(),
        "acme-corp",
        label(3),
        answer,
        consistency,
        state,
    )
    .map_err(EpochError::from)
}

#[tokio::test]
async fn a_lookup_verifies_against_the_signed_epoch_log_and_each_forgery_is_refused() {
    let (signer, _) = LogSigner::generate("sealpost.test/keys/acme-corp").unwrap();
    let mut p = published(signer).await;
    let vrf_pk = p.dir.directory().vrf_public_key().await.unwrap();
    let mut state = ClientState::default();
    for epoch in 1..=3u64 {
        let updates = (0..10).map(|i| (label(i), value(i, epoch))).collect();
        let (published, _checkpoint) = p.dir.publish(updates, epoch).await.unwrap();
        assert_eq!(published.epoch, epoch);
        // A client that follows every epoch: each answer extends the last checkpoint it saw.
        let answer = p.dir.lookup(label(3)).await.unwrap();
        let old = state.last.as_ref().map_or(0, |c| c.size);
        let consistency = p.dir.consistency(old, epoch).unwrap();
        let verified = check(&p, vrf_pk.as_bytes(), &answer, &consistency, &mut state).unwrap();
        assert_eq!(verified.value, value(3, epoch));
        assert_eq!(state.last.as_ref().unwrap().size, epoch);
    }
    let answer = p.dir.lookup(label(3)).await.unwrap();
    let fresh = || ClientState::default();

    // A forged lookup proof: another value for the label.
    let mut forged = answer.clone();
    forged.proof.value = akd::AkdValue(b"an attacker's key".to_vec());
    let e = check(&p, vrf_pk.as_bytes(), &forged, &[], &mut fresh()).unwrap_err();
    assert!(e.to_string().contains("the lookup proof"), "{e}");

    // A tampered checkpoint signature.
    let mut tampered = answer.clone();
    let text = String::from_utf8(tampered.checkpoint.0.clone()).unwrap();
    let (body, sig) = text.rsplit_once(' ').unwrap();
    let mut sig = sig.as_bytes().to_vec();
    sig[10] = if sig[10] == b'A' { b'B' } else { b'A' };
    tampered.checkpoint.0 = [body.as_bytes(), b" ", &sig].concat();
    let e = check(&p, vrf_pk.as_bytes(), &tampered, &[], &mut fresh()).unwrap_err();
    assert!(e.to_string().contains("the checkpoint"), "{e}");

    // An epoch entry the log does not hold (another root).
    let mut swapped = answer.clone();
    swapped.record.root[0] ^= 1;
    let e = check(&p, vrf_pk.as_bytes(), &swapped, &[], &mut fresh()).unwrap_err();
    assert!(e.to_string().contains("not in the signed log"), "{e}");

    // Nothing refused moved the client; the genuine answer still verifies for it.
    assert_eq!(state.last.as_ref().unwrap().size, 3);
    check(&p, vrf_pk.as_bytes(), &answer, &[], &mut state).unwrap();
}

#[tokio::test]
async fn a_split_view_is_refused_by_a_client_that_saw_the_other_history() {
    let (signer, _) = LogSigner::generate("sealpost.test/keys/acme-corp").unwrap();
    let mut honest = published(signer).await;
    let vrf_pk = honest.dir.directory().vrf_public_key().await.unwrap();
    // A directory that shows some clients another history, under the same signing key and VRF.
    let mut evil = published(LogSigner::from_secret(&honest.signer.secret()).unwrap()).await;
    for epoch in 1..=2u64 {
        let updates: Vec<_> = (0..10).map(|i| (label(i), value(i, epoch))).collect();
        honest.dir.publish(updates.clone(), epoch).await.unwrap();
        evil.dir.publish(updates, epoch).await.unwrap();
    }
    // Epoch 3 differs: the evil view swaps label 3's key.
    honest
        .dir
        .publish(vec![(label(3), value(3, 3))], 10)
        .await
        .unwrap();
    evil.dir
        .publish(
            vec![(label(3), akd::AkdValue(b"an attacker's key".to_vec()))],
            10,
        )
        .await
        .unwrap();
    honest
        .dir
        .publish(vec![(label(4), value(4, 4))], 10)
        .await
        .unwrap();

    // The client saw the honest checkpoint of size 4.
    let mut state = ClientState::default();
    let answer = honest.dir.lookup(label(3)).await.unwrap();
    check(&honest, vrf_pk.as_bytes(), &answer, &[], &mut state).unwrap();
    // Each view verifies for a fresh client: only remembering the last checkpoint exposes it.
    let evil_answer = evil.dir.lookup(label(3)).await.unwrap();
    let mut fresh = ClientState::default();
    let v = check(&evil, vrf_pk.as_bytes(), &evil_answer, &[], &mut fresh).unwrap();
    assert_eq!(v.value, akd::AkdValue(b"an attacker's key".to_vec()));
    // The evil view is smaller (size 3): an older checkpoint than one already seen.
    let e = check(
        &evil,
        vrf_pk.as_bytes(),
        &evil_answer,
        &[],
        &mut state.clone(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("older than one already seen"), "{e}");
    // Grown past it (size 5), no consistency proof from the honest size 4 can exist.
    evil.dir
        .publish(vec![(label(5), value(5, 4))], 10)
        .await
        .unwrap();
    evil.dir
        .publish(vec![(label(6), value(6, 5))], 10)
        .await
        .unwrap();
    let evil_answer = evil.dir.lookup(label(3)).await.unwrap();
    let proof = evil.dir.consistency(4, 5).unwrap();
    let e = check(&evil, vrf_pk.as_bytes(), &evil_answer, &proof, &mut state).unwrap_err();
    assert!(e.to_string().contains("split view"), "{e}");
    assert_eq!(
        state.last.as_ref().unwrap().size,
        4,
        "the client kept the honest view"
    );
}

#[tokio::test]
async fn an_epoch_committed_before_a_crash_is_logged_when_the_directory_reopens() {
    let (signer, _) = LogSigner::generate("sealpost.test/keys/acme-corp").unwrap();
    let mut p = published(signer).await;
    p.dir
        .publish(vec![(label(1), value(1, 1))], 5)
        .await
        .unwrap();
    // The process fixes epoch 2's range, commits it to the directory, and dies before the log
    // append.
    EpochIntents::new(p.pool.clone(), "acme-corp")
        .propose(2, 7)
        .await
        .unwrap();
    p.dir
        .directory()
        .publish(vec![(label(1), value(1, 2))])
        .await
        .unwrap();
    let directory = Directory::open(PgAkdStorage::new(p.pool.clone(), "acme-corp"), vrf())
        .await
        .unwrap();
    let log = epoch_log(&p.js, "sealpost.keylog.acme-corp").await;
    assert_eq!(log.size(), 1);
    let reopened = PublishedDirectory::open(
        directory,
        "acme-corp",
        log,
        LogSigner::from_secret(&p.signer.secret()).unwrap(),
        &EpochIntents::new(p.pool.clone(), "acme-corp"),
    )
    .await
    .unwrap();
    let answer = reopened.lookup(label(1)).await.unwrap();
    let vrf_pk = reopened.directory().vrf_public_key().await.unwrap();
    let v = check_label(&p, vrf_pk.as_bytes(), &answer, label(1)).unwrap();
    assert_eq!((v.epoch, v.value.clone()), (2, value(1, 2)));
    assert_eq!(
        reopened.record(2).unwrap().through,
        7,
        "the range fixed before the crash"
    );
    assert_eq!(
        epoch_log(&p.js, "sealpost.keylog.acme-corp").await.size(),
        2
    );
}

fn check_label(
    p: &Published,
    vrf_pk: &[u8],
    answer: &VerifiableLookup,
    l: AkdLabel,
) -> Result<akd::VerifyResult, EpochError> {
    verify_lookup(
        vrf_pk,
        &p.signer.verifier(),
        "acme-corp",
        l,
        answer,
        &[],
        &mut ClientState::default(),
    )
    .map_err(EpochError::from)
}

// ---------------------------------------------------------------------------------------------
// Key events on JetStream: the message events' store, optimistic concurrency and dedupe

use sealpost_eventstore::provision::embedded_definitions;
use sealpost_eventstore::{CommandExecutor, JetStreamEventStore, StoreConfig};
use sealpost_keys_domain::{KeysCommand, KeysEvent, KeysPolicy, PublishKey, RecipientKeys};

use crate::support::meta;

/// A stream with the event stream's flags (atomic batches, no delete or purge) for key events.
async fn keys_executor(server: &NatsServer) -> CommandExecutor<RecipientKeys> {
    let client = server.connect().await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let mut cfg = embedded_definitions()
        .stream(sealpost_eventstore::names::Stream::Events)
        .unwrap();
    cfg.name = "SEALPOST_KEYS_TEST".into();
    cfg.subjects = vec!["sealpost.kevt.>".into()];
    js.create_stream(cfg).await.unwrap();
    let store = JetStreamEventStore::new(
        client,
        StoreConfig {
            stream: "SEALPOST_KEYS_TEST".into(),
            subject_prefix: "sealpost.kevt".into(),
            ..StoreConfig::default()
        },
    );
    CommandExecutor::new(
        store,
        KeysPolicy {
            enrollment_key: None,
            retire_after: std::time::Duration::from_secs(86_400),
        },
    )
}

fn publish_cmd(key_id: &str, n: u8) -> KeysCommand {
    let now = time::OffsetDateTime::now_utc();
    KeysCommand::Publish(Box::new(PublishKey {
        tenant: "acme-corp".into(),
        device_id: "phone".into(),
        key_id: key_id.into(),
        kem_id: 0x0020,
        public_key: vec![n; 32],
        expires_at: now + time::Duration::days(365),
        enrollment: None,
        marked_bad: false,
        at: now,
    }))
}

fn recipient() -> String {
    let key = sealpost_keyformat::LabelKey::new([9; 32]);
    let label = sealpost_keyformat::RecipientLabel::of(&key, "acme-corp", "+447700900123").unwrap();
    format!("acme-corp.{}", label.to_hex())
}

#[tokio::test]
async fn racing_publishers_on_jetstream_write_one_publish_and_one_rotation_gaplessly() {
    let server = NatsServer::start().await.unwrap();
    let ex = std::sync::Arc::new(keys_executor(&server).await);
    let id = recipient();
    let (ma, mb) = (meta("a"), meta("b"));
    let (a, b) = tokio::join!(
        ex.execute(&id, publish_cmd("k1", 1), &ma),
        ex.execute(&id, publish_cmd("k2", 2), &mb),
    );
    a.unwrap();
    b.unwrap();
    let loaded = ex.store().load(&id).await.unwrap();
    let raw = ex.store().load_raw(&id).await.unwrap();
    let types: Vec<&str> = raw.iter().map(|r| r.event_type()).collect();
    assert_eq!(
        types,
        ["key_published", "key_rotated"],
        "one publish, then a rotation"
    );
    assert_eq!(loaded.version, 2);
    let active = &loaded.aggregate.active_key("phone").unwrap().key.key_id;
    let retiring: Vec<_> = loaded
        .aggregate
        .keys
        .values()
        .filter(|k| k.retires_at.is_some())
        .collect();
    assert_eq!(retiring.len(), 1);
    assert_ne!(&retiring[0].key.key_id, active);
    // The label in the subject is the keyed hash: no phone number on the wire.
    assert!(raw.iter().all(|r| !r.subject.contains("447700900123")));
}

#[tokio::test]
async fn a_hundred_concurrent_claims_hand_out_each_key_package_to_one_claimant_only() {
    let server = NatsServer::start().await.unwrap();
    let ex = std::sync::Arc::new(keys_executor(&server).await);
    let id = recipient();
    ex.execute(&id, publish_cmd("k1", 1), &meta("p"))
        .await
        .unwrap();
    let refs: Vec<String> = (0..50).map(|i| format!("{i:04x}")).collect();
    ex.execute(
        &id,
        KeysCommand::UploadKeyPackages {
            device_id: "phone".into(),
            hash_refs: refs.clone(),
            last_resort: Some("ffff".into()),
            key_packages: Default::default(),
            at: time::OffsetDateTime::now_utc(),
        },
        &meta("u"),
    )
    .await
    .unwrap();
    let claims = futures::future::join_all((0..100).map(|i| {
        let ex = ex.clone();
        let id = id.clone();
        async move {
            // 100 writers on one aggregate: a claim that loses the race 8 times in a row is
            // answered "contended", and the claimant tries again, as an API client would.
            let mut retries = 0u32;
            loop {
                let r = ex
                    .execute(
                        &id,
                        KeysCommand::ClaimKeyPackage {
                            device_id: "phone".into(),
                            claimant: format!("sender-{i}"),
                            at: time::OffsetDateTime::now_utc(),
                        },
                        &meta("c"),
                    )
                    .await;
                match r {
                    Ok(done) => return (done.events, retries),
                    Err(sealpost_eventstore::ExecuteError::Contended { .. }) => {
                        retries += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(
                            5 + u64::from(retries) * (i as u64 % 7),
                        ))
                        .await;
                    }
                    Err(e) => panic!("claim {i}: {e:?}"),
                }
            }
        }
    }))
    .await;
    let contended: u32 = claims.iter().map(|(_, r)| r).sum();
    eprintln!("100 concurrent claims; {contended} answered contended and retried");
    let claims: Vec<Vec<KeysEvent>> = claims.into_iter().map(|(e, _)| e).collect();
    let mut handed: Vec<String> = vec![];
    let mut last_resort = 0;
    for events in claims {
        let [KeysEvent::KeyPackageClaimed(c)] = &events[..] else {
            panic!("a claim wrote {events:?}");
        };
        if c.last_resort {
            assert_eq!(c.hash_ref, "ffff");
            last_resort += 1;
        } else {
            handed.push(c.hash_ref.clone());
        }
    }
    handed.sort();
    assert_eq!(
        handed, refs,
        "each of the 50 packages went to exactly one claimant"
    );
    assert_eq!(last_resort, 50, "the other 50 got the last-resort package");
    let loaded = ex.store().load(&id).await.unwrap();
    assert_eq!(loaded.version, 2 + 100, "every claim is one gapless event");
}
