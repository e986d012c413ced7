//! The key directory's AKD on a real Postgres: akd's own conformance tests pass on our storage,
//! and a directory on Postgres publishes the same epochs as akd's in-memory one, its proofs
//! verify, and it reopens from the database.

// Test fixtures: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

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
    akd::storage::tests::run_test_cases_for_storage_impl(PgAkdStorage::new(pool, "conformance"))
        .await;
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
