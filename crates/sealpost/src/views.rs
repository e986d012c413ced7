//! The Postgres views from the application's side: the `projector` role with the gauges it
//! reports, `sealpost migrate`, and `sealpost replay --projection <name> --from-start`.

use anyhow::Context as _;
use sealpost_domain::Status;
use sealpost_projections::{ProjectionName, Projector, RunningProjector};
use sqlx::PgPool;

use crate::config::Config;

/// The configured pool.
pub async fn pool(cfg: &Config) -> anyhow::Result<PgPool> {
    let url = cfg.postgres.required_url()?;
    sealpost_projections::connect(url, cfg.postgres.max_connections)
        .await
        .context("cannot connect to PostgreSQL (DATABASE_URL / [postgres] url)")
}

/// [`pool`] for a role starting up: Postgres unreachable (connection refused or cut, no
/// connection within the pool's timeout, a server starting or shutting down) is waited out, with a warning per attempt, for up to
/// [`crate::app::READY_WAIT`], as JetStream is; anything else (a bad URL, refused credentials,
/// a missing database) fails at once.
pub async fn pool_when_reachable(cfg: &Config) -> anyhow::Result<PgPool> {
    use backon::Retryable as _;
    let url = cfg.postgres.required_url()?;
    let connect = || sealpost_projections::connect(url, cfg.postgres.max_connections);
    connect
        .retry(crate::app::startup_backoff())
        .when(|e| match e {
            sealpost_projections::Error::Db(e) => postgres_unreachable(e),
            _ => false,
        })
        .notify(|e, next| {
            tracing::warn!(error = %e, retry_in_ms = next.as_millis() as u64, "PostgreSQL is not reachable yet; waiting");
        })
        .await
        .context("cannot connect to PostgreSQL (DATABASE_URL / [postgres] url)")
}

/// Whether a failed connection says Postgres cannot be reached now (waiting may help), rather
/// than that the configuration is wrong (a bad password, a missing database).
fn postgres_unreachable(e: &sqlx::Error) -> bool {
    match e {
        // Refused, reset, or closed before the handshake (a connection cut by a restart reads as
        // a protocol error: sqlx sees no answer to its SSLRequest).
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Protocol(_) => true,
        // 57P03: the server is starting up or shutting down; 53300: too many connections.
        sqlx::Error::Database(d) => matches!(d.code().as_deref(), Some("57P03" | "53300")),
        _ => false,
    }
}

/// `sealpost migrate`.
pub async fn migrate(cfg: &Config) -> anyhow::Result<()> {
    let pool = pool(cfg).await?;
    sealpost_projections::migrate(&pool).await?;
    let applied: Vec<(i64, String)> =
        sqlx::query_as("SELECT version, description FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&pool)
            .await?;
    for (v, d) in applied {
        println!("migration {v:04} {d}: applied");
    }
    Ok(())
}

/// The `projector` role: every projection, and the task that reports their gauges. Both run
/// until dropped (the task: aborted).
pub async fn start_projector(
    cfg: &Config,
    js: async_nats::jetstream::Context,
) -> anyhow::Result<(RunningProjector, tokio::task::JoinHandle<()>)> {
    let pool = pool_when_reachable(cfg).await?;
    let running = Projector::start(
        js.clone(),
        pool.clone(),
        cfg.postgres.projector(),
        ProjectionName::ALL,
    )
    .await?;
    Ok((running, tokio::spawn(view_gauges(js, pool))))
}

/// Every 10 s: `sealpost_projection_lag{projection}` from each projection's consumer, and
/// `sealpost_tenant_queue_depth{tenant}` (messages waiting for submission) from the view.
async fn view_gauges(js: async_nats::jetstream::Context, pool: PgPool) {
    use sealpost_telemetry::{metrics, ProjectionLabels, TenantLabels};
    let mut seen: std::collections::HashSet<String> = Default::default();
    loop {
        for &name in ProjectionName::ALL {
            if let Ok(lag) = sealpost_projections::lag(&js, name).await {
                metrics()
                    .projection_lag
                    .get_or_create(&ProjectionLabels {
                        projection: name.as_str().to_owned(),
                    })
                    .set(i64::try_from(lag).unwrap_or(i64::MAX));
            }
        }
        let waiting: Result<Vec<(String, i64)>, _> = sqlx::query_as(
            "SELECT tenant, count(*) FROM messages WHERE status = ANY($1::text[]) GROUP BY tenant",
        )
        .bind(
            Status::ALL
                .iter()
                .filter(|s| s.awaiting_submission())
                .map(|s| s.as_str())
                .collect::<Vec<_>>(),
        )
        .fetch_all(&pool)
        .await;
        match waiting {
            Ok(rows) => {
                let now: std::collections::HashSet<String> =
                    rows.iter().map(|(t, _)| t.clone()).collect();
                // A tenant whose queue emptied reports 0, not its last value.
                for gone in seen.difference(&now) {
                    metrics()
                        .tenant_queue_depth
                        .get_or_create(&TenantLabels {
                            tenant: gone.clone(),
                        })
                        .set(0);
                }
                for (tenant, n) in rows {
                    metrics()
                        .tenant_queue_depth
                        .get_or_create(&TenantLabels { tenant })
                        .set(n);
                }
                seen = now;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read queue depth per tenant from the view")
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    }
}

/// `sealpost replay --projection <name> --from-start`: a rebuild with a progress bar on stderr.
/// `None` rebuilds every projection.
pub async fn rebuild(cfg: &Config, only: Option<ProjectionName>) -> anyhow::Result<()> {
    let names = only.map_or_else(|| ProjectionName::ALL.to_vec(), |n| vec![n]);
    let client = crate::app::connect(cfg).await?;
    let js = async_nats::jetstream::new(client);
    let pool = pool(cfg).await?;
    for name in names {
        let report = rebuild_one(&js, &pool, cfg, name).await?;
        println!(
            "projection {}: rebuilt from sequence 1 to {}: {} events in {:.1} s ({:.0} events/s)",
            report.projection,
            report.last_seq,
            report.events,
            report.elapsed.as_secs_f64(),
            report.events_per_sec()
        );
    }
    Ok(())
}

/// One rebuild with an indicatif bar over stream sequences.
pub async fn rebuild_one(
    js: &async_nats::jetstream::Context,
    pool: &PgPool,
    cfg: &Config,
    name: ProjectionName,
) -> anyhow::Result<sealpost_projections::RebuildReport> {
    let bar =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} seq ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_prefix(name.as_str());
    let mut on_progress = |p: &sealpost_projections::Progress| {
        if let Some(t) = p.target_seq {
            bar.set_length(t);
        }
        bar.set_position(p.applied_seq);
    };
    let report =
        sealpost_projections::rebuild(js, pool, &cfg.postgres.projector(), name, &mut on_progress)
            .await
            .with_context(|| format!("rebuilding projection {name}"))?;
    bar.finish_and_clear();
    Ok(report)
}
