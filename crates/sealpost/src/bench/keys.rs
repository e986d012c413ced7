//! `sealpost bench keys`: the key directory's AKD on Postgres next to akd's own in-memory storage
//! doing the same work in the same run (the baseline).
//!
//! 1. Publishes `labels` labels in epochs of `epoch_size` changes each, to both directories:
//!    changes/s and the time per epoch.
//! 2. Lookups with proof of random published labels, `concurrency` in flight: lookups/s, p50, p99.
//! 3. Proof sizes in akd's published (protobuf) encoding: a lookup proof, a history proof and an
//!    append-only proof of one epoch.
//!
//! Each figure of the Postgres directory is printed as a ratio to the baseline's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use protobuf::Message as _;
use sealpost_keys::akd::storage::memory::AsyncInMemoryDatabase;
use sealpost_keys::akd::storage::StorageManager;
use sealpost_keys::akd::{self, AkdLabel, AkdValue};
use sealpost_keys::{Config as AkdConfig, Directory, PgAkdStorage, VrfSecret};

use super::{measure, Phase};
use crate::config::Config;

/// Target: lookups with proof at this fraction of the in-memory baseline's rate or more.
const TARGET_LOOKUP_RATIO: f64 = 0.5;

type InMemory = akd::directory::Directory<AkdConfig, AsyncInMemoryDatabase, VrfSecret>;

fn label(run: &str, i: usize) -> AkdLabel {
    AkdLabel(format!("{run}-label-{i:08}").into_bytes())
}

fn value(i: usize) -> AkdValue {
    // The size of a device-key entry: a key id, an X25519 public key, dates and a status.
    AkdValue(format!("{i:08}:{}", "k".repeat(120)).into_bytes())
}

/// Publishes the labels in epochs; returns (total time, per-epoch times).
async fn publish_all<F, Fut>(
    labels: usize,
    epoch_size: usize,
    run: &str,
    what: &str,
    publish: F,
) -> anyhow::Result<(Duration, Vec<Duration>)>
where
    F: Fn(Vec<(AkdLabel, AkdValue)>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let pb = super::bar(labels as u64, what);
    let started = Instant::now();
    let mut epochs = vec![];
    let mut next = 0;
    while next < labels {
        let end = (next + epoch_size).min(labels);
        let updates = (next..end).map(|i| (label(run, i), value(i))).collect();
        let t = Instant::now();
        publish(updates).await?;
        epochs.push(t.elapsed());
        pb.set_position(end as u64);
        next = end;
    }
    pb.finish_and_clear();
    Ok((started.elapsed(), epochs))
}

fn mean(d: &[Duration]) -> f64 {
    d.iter().map(Duration::as_secs_f64).sum::<f64>() / d.len().max(1) as f64
}

async fn lookups<F, Fut>(
    name: &'static str,
    n: usize,
    labels: usize,
    concurrency: usize,
    lookup: F,
) -> anyhow::Result<Phase>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let lookup = &lookup;
    measure(name, n, concurrency, |i| async move {
        // A spread of labels (a multiplicative hash of i), the same for both directories.
        let which = i.wrapping_mul(2_654_435_761) % labels;
        let t = Instant::now();
        lookup(which).await?;
        Ok(vec![(t.elapsed(), 0)])
    })
    .await
}

/// [`publish_all`] into one of the Postgres directories.
async fn publish_directory(
    d: &Directory,
    labels: usize,
    epoch_size: usize,
    run: &str,
    what: &str,
) -> anyhow::Result<(Duration, Vec<Duration>)> {
    publish_all(labels, epoch_size, run, what, |u| {
        let d = d.clone();
        async move {
            d.publish(u).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
            Ok(())
        }
    })
    .await
}

/// [`lookups`] against one of the Postgres directories.
async fn lookup_directory(
    d: &Directory,
    name: &'static str,
    n: usize,
    labels: usize,
    concurrency: usize,
    run: &str,
) -> anyhow::Result<Phase> {
    lookups(name, n, labels, concurrency, |i| {
        let d = d.clone();
        async move {
            d.lookup(label(run, i))
                .await
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            Ok(())
        }
    })
    .await
}

/// `sealpost bench keys`: see the module docs.
pub async fn run(
    cfg: &Config,
    labels: usize,
    epoch_size: usize,
    lookup_count: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let pool = crate::views::pool(cfg).await?;
    sealpost_projections::migrate(&pool).await?;
    let run = nuid::next().to_string().to_lowercase();
    let vrf = VrfSecret::new(rand_seed());
    let on_pg = Directory::open(
        PgAkdStorage::new(pool.clone(), format!("bench-{run}")),
        vrf.clone(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("opening the directory: {e:?}"))?;
    let cached = Directory::open_cached(
        PgAkdStorage::new(pool.clone(), format!("bench-{run}-cached")),
        vrf.clone(),
        512 << 20,
        Duration::from_secs(600),
    )
    .await
    .map_err(|e| anyhow::anyhow!("opening the cached directory: {e:?}"))?;
    let in_memory: Arc<InMemory> = Arc::new(
        akd::directory::Directory::new(
            StorageManager::new_no_cache(AsyncInMemoryDatabase::new()),
            vrf,
            akd::append_only_zks::AzksParallelismConfig::default(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("opening the in-memory directory: {e:?}"))?,
    );

    let (mem_total, mem_epochs) =
        publish_all(labels, epoch_size, &run, "publish (in memory)", |u| {
            let d = in_memory.clone();
            async move {
                d.publish(u).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
                Ok(())
            }
        })
        .await?;
    let (pg_total, pg_epochs) =
        publish_directory(&on_pg, labels, epoch_size, &run, "publish (Postgres)").await?;
    let (cached_total, cached_epochs) = publish_directory(
        &cached,
        labels,
        epoch_size,
        &run,
        "publish (Postgres, cached)",
    )
    .await?;
    let (roots_pg, roots_mem) = (
        on_pg.epoch().await.map_err(|e| anyhow::anyhow!("{e:?}"))?,
        in_memory
            .get_epoch_hash()
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?,
    );
    anyhow::ensure!(
        roots_pg.hash() == roots_mem.hash(),
        "the Postgres directory's root differs from akd's in-memory one: the storage is wrong"
    );

    anyhow::ensure!(
        cached
            .epoch()
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?
            .hash()
            == roots_mem.hash(),
        "the cached Postgres directory's root differs from akd's in-memory one"
    );
    let run_ref = &run;
    let mem_lookups = lookups(
        "lookup (in memory)",
        lookup_count,
        labels,
        concurrency,
        |i| {
            let d = in_memory.clone();
            async move {
                d.lookup(label(run_ref, i))
                    .await
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
                Ok(())
            }
        },
    )
    .await?;
    let pg_lookups = lookup_directory(
        &on_pg,
        "lookup (Postgres)",
        lookup_count,
        labels,
        concurrency,
        run_ref,
    )
    .await?;
    let cached_lookups = lookup_directory(
        &cached,
        "lookup (Postgres, cached)",
        lookup_count,
        labels,
        concurrency,
        run_ref,
    )
    .await?;

    // Proof sizes (protobuf, as akd publishes them).
    let (lookup_proof, _) = on_pg
        .lookup(label(&run, labels / 2))
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let lookup_bytes = akd::proto::specs::types::LookupProof::from(&lookup_proof)
        .write_to_bytes()?
        .len();
    let (history, _) = on_pg
        .history(&label(&run, labels / 2))
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let history_bytes = akd::proto::specs::types::HistoryProof::from(&history)
        .write_to_bytes()?
        .len();
    let last = roots_pg.epoch();
    let audit = on_pg
        .audit(last - 1, last)
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let audit_bytes = akd::proto::specs::types::AppendOnlyProof::from(&audit)
        .write_to_bytes()?
        .len();

    let epochs = pg_epochs.len();
    println!();
    println!(
        "sealpost bench keys: {labels} labels in {epochs} epochs of up to {epoch_size} changes; \
         {lookup_count} lookups with proof, {concurrency} in flight"
    );
    println!("  baseline: akd with its own in-memory storage, the same work in the same run");
    let ratio = |ours: f64, base: f64| ours / base.max(f64::MIN_POSITIVE);
    let (pg_rate, mem_rate) = (
        labels as f64 / pg_total.as_secs_f64(),
        labels as f64 / mem_total.as_secs_f64(),
    );
    println!(
        "  publish   Postgres {pg_rate:>9.0} changes/s, {:>7.2} s per epoch | in memory {mem_rate:>9.0} changes/s, {:>7.2} s per epoch | ratio {:.2}",
        mean(&pg_epochs),
        mean(&mem_epochs),
        ratio(pg_rate, mem_rate)
    );
    let cached_rate = labels as f64 / cached_total.as_secs_f64();
    println!(
        "  publish   Postgres + cache {cached_rate:>9.0} changes/s, {:>7.2} s per epoch | ratio {:.2}",
        mean(&cached_epochs),
        ratio(cached_rate, mem_rate)
    );
    println!(
        "  lookups   in memory {:>9.0}/s p50 {:>6.2} ms p99 {:>6.2} ms (baseline)",
        mem_lookups.ops_per_sec(),
        mem_lookups.pct_ms(0.5),
        mem_lookups.pct_ms(0.99),
    );
    let mut lookup_ratio: f64 = 0.0;
    for (what, p) in [
        ("Postgres", &pg_lookups),
        ("Postgres + cache", &cached_lookups),
    ] {
        let r = ratio(p.ops_per_sec(), mem_lookups.ops_per_sec());
        lookup_ratio = lookup_ratio.max(r);
        println!(
            "  lookups   {what:<16} {:>9.0}/s p50 {:>6.2} ms p99 {:>6.2} ms | ratio {r:.2} (target >= {TARGET_LOOKUP_RATIO})",
            p.ops_per_sec(),
            p.pct_ms(0.5),
            p.pct_ms(0.99),
        );
    }
    println!(
        "  proof sizes (protobuf): lookup {lookup_bytes} B, history of one label {history_bytes} B, append-only proof of one epoch ({epoch_size} changes) {audit_bytes} B"
    );
    println!(
        "  lookup target {}",
        if lookup_ratio >= TARGET_LOOKUP_RATIO {
            "met"
        } else {
            "NOT met"
        }
    );
    for table in ["akd_records", "akd_values"] {
        sqlx::query(&format!("DELETE FROM {table} WHERE directory LIKE $1"))
            .bind(format!("bench-{run}%"))
            .execute(&pool)
            .await?;
    }
    Ok(())
}

/// A fresh VRF key for the run (the bench's directories are thrown away).
fn rand_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    for (i, b) in uuid::Uuid::new_v4()
        .as_bytes()
        .iter()
        .chain(uuid::Uuid::new_v4().as_bytes())
        .enumerate()
    {
        seed[i] = *b;
    }
    seed
}
