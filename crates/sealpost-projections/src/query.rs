//! Reads for the status endpoint and dashboards. Simple queries over the views.

use std::collections::BTreeMap;

use cqrs_es::persist::ViewRepository;
use postgres_es::PostgresViewRepository;
use sealpost_domain::{EventType, Message, Status, StatusRow};
use serde::Serialize;
use sqlx::{PgPool, Row as _};
use time::OffsetDateTime;

use crate::compliance::{self, ComplianceView};
use crate::messages::{from_row, COLUMNS};
use crate::metrics::OVERFLOW_LE_MS;
use crate::Result;

/// The `messages` row of one message, if the projection has seen it.
pub async fn message_row(
    pool: &PgPool,
    tenant: &str,
    message_id: &str,
) -> Result<Option<StatusRow>> {
    let sql = format!("SELECT {COLUMNS} FROM messages WHERE tenant = $1 AND message_id = $2");
    let row = sqlx::query(&sql)
        .bind(tenant)
        .bind(message_id)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// The compliance document of one message, read through postgres-es's `PostgresViewRepository`.
pub async fn compliance_view(
    pool: &PgPool,
    tenant: &str,
    message_id: &str,
) -> Result<Option<ComplianceView>> {
    let repo =
        PostgresViewRepository::<ComplianceView, Message>::new(compliance::TABLE, pool.clone());
    repo.load(&compliance::view_id(tenant, message_id))
        .await
        .map_err(|e| crate::Error::View {
            what: "loading a compliance view",
            source: Box::new(e),
        })
}

/// Latency percentiles from the histogram buckets: the upper bound (ms) of the bucket holding the
/// percentile; `None` when nothing was measured, `u64::MAX`-free (the overflow bucket is reported
/// as `None` in `p*_ms` and counted in `over_max`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: i64,
    pub p50_ms: Option<i64>,
    pub p90_ms: Option<i64>,
    pub p99_ms: Option<i64>,
    /// Measurements above the largest bucket bound.
    pub over_max: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TenantSummary {
    pub tenant: String,
    pub total: i64,
    pub by_status: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CarrierSummary {
    pub carrier: String,
    /// Events per type attributed to this carrier.
    pub events: BTreeMap<String, i64>,
    /// Failed attempts per `error_class:code`.
    pub failures: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailureRow {
    pub tenant: String,
    pub message_id: String,
    pub status: String,
    pub carrier: Option<String>,
    pub last_error_class: Option<String>,
    pub last_error_code: Option<String>,
    pub end_reason: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub at: Option<OffsetDateTime>,
}

/// An overview for a dashboard.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    pub total: i64,
    pub by_status: BTreeMap<String, i64>,
    /// delivered + displayed over settled (delivered, displayed, failed, fallback, expired;
    /// cancelled excluded); `None` before anything settled.
    pub success_rate: Option<f64>,
    pub latency_delivered: Percentiles,
    pub latency_displayed: Percentiles,
    pub tenants: Vec<TenantSummary>,
    pub carriers: Vec<CarrierSummary>,
    /// The 20 most recent failed, fallen-back or expired messages.
    pub recent_failures: Vec<FailureRow>,
    /// Checkpoint (stream sequence) of each projection.
    pub checkpoints: BTreeMap<String, i64>,
}

/// Whether a message in `status` counts in the success rate's denominator: settled, except
/// `cancelled` (the tenant withdrew it; no delivery was attempted to its end).
fn counts_for_success_rate(status: Status) -> bool {
    status.is_settled() && status != Status::Cancelled
}

/// Per-state counts, success rate, latency percentiles, per-tenant and per-carrier tables and
/// recent failures.
pub async fn summary(pool: &PgPool) -> Result<Summary> {
    let mut s = Summary::default();
    let rows = sqlx::query(
        "SELECT tenant, status, count(*) AS n FROM messages GROUP BY tenant, status \
         ORDER BY tenant, status",
    )
    .fetch_all(pool)
    .await?;
    let mut tenants: BTreeMap<String, TenantSummary> = BTreeMap::new();
    for r in rows {
        let (tenant, status, n): (String, String, i64) =
            (r.try_get("tenant")?, r.try_get("status")?, r.try_get("n")?);
        s.total += n;
        *s.by_status.entry(status.clone()).or_default() += n;
        let t = tenants
            .entry(tenant.clone())
            .or_insert_with(|| TenantSummary {
                tenant,
                ..Default::default()
            });
        t.total += n;
        *t.by_status.entry(status).or_default() += n;
    }
    s.tenants = tenants.into_values().collect();
    let (mut ok, mut settled) = (0, 0);
    for (status, n) in &s.by_status {
        let Ok(status) = status.parse::<Status>() else {
            continue;
        };
        if status.is_success() {
            ok += n;
        }
        if counts_for_success_rate(status) {
            settled += n;
        }
    }
    s.success_rate = (settled > 0).then(|| ok as f64 / settled as f64);

    for (kind, slot) in [
        (EventType::Delivered, &mut s.latency_delivered),
        (EventType::Displayed, &mut s.latency_displayed),
    ] {
        let rows = sqlx::query(
            "SELECT le_ms, sum(count)::int8 AS n FROM metrics_latency WHERE kind = $1 \
             GROUP BY le_ms ORDER BY le_ms",
        )
        .bind(kind.as_str())
        .fetch_all(pool)
        .await?;
        let buckets: Vec<(i64, i64)> = rows
            .iter()
            .map(|r| Ok((r.try_get("le_ms")?, r.try_get("n")?)))
            .collect::<Result<_, sqlx::Error>>()?;
        *slot = percentiles(&buckets);
    }

    let rows = sqlx::query(
        "SELECT carrier, event_type, sum(count)::int8 AS n FROM metrics_events \
         GROUP BY carrier, event_type ORDER BY carrier, event_type",
    )
    .fetch_all(pool)
    .await?;
    let mut carriers: BTreeMap<String, CarrierSummary> = BTreeMap::new();
    for r in rows {
        let carrier: String = r.try_get("carrier")?;
        let c = carriers
            .entry(carrier.clone())
            .or_insert_with(|| CarrierSummary {
                carrier,
                ..Default::default()
            });
        c.events.insert(r.try_get("event_type")?, r.try_get("n")?);
    }
    let rows = sqlx::query(
        "SELECT carrier, error_class, code, sum(count)::int8 AS n FROM metrics_retries \
         GROUP BY carrier, error_class, code ORDER BY carrier, error_class, code",
    )
    .fetch_all(pool)
    .await?;
    for r in rows {
        let carrier: String = r.try_get("carrier")?;
        let class: String = r.try_get("error_class")?;
        let code: String = r.try_get("code")?;
        let c = carriers
            .entry(carrier.clone())
            .or_insert_with(|| CarrierSummary {
                carrier,
                ..Default::default()
            });
        c.failures
            .insert(format!("{class}:{code}"), r.try_get("n")?);
    }
    s.carriers = carriers.into_values().collect();

    let rows = sqlx::query(
        "SELECT tenant, message_id, status, carrier, last_error_class, last_error_code, \
         end_reason, last_event_at FROM messages \
         WHERE status = ANY($1::text[]) \
         ORDER BY last_event_at DESC NULLS LAST LIMIT 20",
    )
    .bind(
        Status::ALL
            .iter()
            .filter(|s| s.is_terminal_failure() && counts_for_success_rate(**s))
            .map(|s| s.as_str())
            .collect::<Vec<_>>(),
    )
    .fetch_all(pool)
    .await?;
    for r in rows {
        s.recent_failures.push(FailureRow {
            tenant: r.try_get("tenant")?,
            message_id: r.try_get("message_id")?,
            status: r.try_get("status")?,
            carrier: r.try_get("carrier")?,
            last_error_class: r.try_get("last_error_class")?,
            last_error_code: r.try_get("last_error_code")?,
            end_reason: r.try_get("end_reason")?,
            at: r.try_get("last_event_at")?,
        });
    }
    for r in sqlx::query("SELECT projection, last_seq FROM projection_checkpoints")
        .fetch_all(pool)
        .await?
    {
        s.checkpoints
            .insert(r.try_get("projection")?, r.try_get("last_seq")?);
    }
    Ok(s)
}

/// The metrics view as time series: one point per minute of the last `minutes` minutes up to
/// the current one (the database's clock), oldest first, summed over tenants and carriers. A
/// minute without events counts 0; its rate and percentiles are `None`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PerMinute {
    /// The start of each minute (UTC).
    pub minutes: Vec<String>,
    pub accepted: Vec<i64>,
    pub delivered: Vec<i64>,
    pub displayed: Vec<i64>,
    pub failed: Vec<i64>,
    /// Messages that settled in the minute: delivered, failed, fallback_triggered, expired.
    pub settled: Vec<i64>,
    /// delivered / settled, in the minute.
    pub success_rate: Vec<Option<f64>>,
    /// Percentiles of acceptance → delivered receipt, of the receipts of the minute (bucket
    /// upper bounds, as [`Percentiles`]).
    pub latency_p50_ms: Vec<Option<i64>>,
    pub latency_p99_ms: Vec<Option<i64>>,
}

/// [`PerMinute`] over the last `minutes` minutes (1 to 1440).
pub async fn per_minute(pool: &PgPool, minutes: i32) -> Result<PerMinute> {
    let minutes = minutes.clamp(1, 1440);
    let window: Vec<OffsetDateTime> = sqlx::query_scalar(
        "SELECT generate_series(date_trunc('minute', now()) - make_interval(mins => $1 - 1),          date_trunc('minute', now()), interval '1 minute')",
    )
    .bind(minutes)
    .fetch_all(pool)
    .await?;
    let (Some(first), Some(last)) = (window.first().copied(), window.last().copied()) else {
        return Ok(PerMinute::default());
    };
    let index: BTreeMap<OffsetDateTime, usize> =
        window.iter().enumerate().map(|(i, m)| (*m, i)).collect();
    let n = window.len();
    let mut out = PerMinute {
        minutes: window
            .iter()
            .map(|m| {
                m.format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default()
            })
            .collect(),
        accepted: vec![0; n],
        delivered: vec![0; n],
        displayed: vec![0; n],
        failed: vec![0; n],
        settled: vec![0; n],
        success_rate: vec![None; n],
        latency_p50_ms: vec![None; n],
        latency_p99_ms: vec![None; n],
    };
    let rows = sqlx::query(
        "SELECT minute, event_type, sum(count)::int8 AS n FROM metrics_events          WHERE minute BETWEEN $1 AND $2 GROUP BY minute, event_type",
    )
    .bind(first)
    .bind(last)
    .fetch_all(pool)
    .await?;
    for r in rows {
        let minute: OffsetDateTime = r.try_get("minute")?;
        let kind: String = r.try_get("event_type")?;
        let count: i64 = r.try_get("n")?;
        let Some(&i) = index.get(&minute) else {
            continue;
        };
        match kind.parse::<EventType>() {
            Ok(EventType::Accepted) => out.accepted[i] += count,
            Ok(EventType::Delivered) => {
                out.delivered[i] += count;
                out.settled[i] += count;
            }
            Ok(EventType::Displayed) => out.displayed[i] += count,
            Ok(EventType::Failed) => {
                out.failed[i] += count;
                out.settled[i] += count;
            }
            Ok(EventType::FallbackTriggered | EventType::Expired) => out.settled[i] += count,
            _ => {}
        }
    }
    for i in 0..n {
        if out.settled[i] > 0 {
            out.success_rate[i] = Some(out.delivered[i] as f64 / out.settled[i] as f64);
        }
    }
    let rows = sqlx::query(
        "SELECT minute, le_ms, sum(count)::int8 AS n FROM metrics_latency          WHERE kind = $1 AND minute BETWEEN $2 AND $3 GROUP BY minute, le_ms ORDER BY minute, le_ms",
    )
    .bind(EventType::Delivered.as_str())
    .bind(first)
    .bind(last)
    .fetch_all(pool)
    .await?;
    let mut buckets: BTreeMap<usize, Vec<(i64, i64)>> = BTreeMap::new();
    for r in rows {
        let minute: OffsetDateTime = r.try_get("minute")?;
        if let Some(&i) = index.get(&minute) {
            buckets
                .entry(i)
                .or_default()
                .push((r.try_get("le_ms")?, r.try_get("n")?));
        }
    }
    for (i, b) in buckets {
        let p = percentiles(&b);
        out.latency_p50_ms[i] = p.p50_ms;
        out.latency_p99_ms[i] = p.p99_ms;
    }
    Ok(out)
}

/// Percentiles over `(le_ms, count)` buckets sorted by bound.
pub fn percentiles(buckets: &[(i64, i64)]) -> Percentiles {
    let total: i64 = buckets.iter().map(|(_, n)| n).sum();
    let at = |p: f64| -> Option<i64> {
        if total == 0 {
            return None;
        }
        let rank = (p * total as f64).ceil().max(1.0) as i64;
        let mut cum = 0;
        for (le, n) in buckets {
            cum += n;
            if cum >= rank {
                return (*le != OVERFLOW_LE_MS).then_some(*le);
            }
        }
        None
    };
    Percentiles {
        count: total,
        p50_ms: at(0.50),
        p90_ms: at(0.90),
        p99_ms: at(0.99),
        over_max: buckets
            .iter()
            .filter(|(le, _)| *le == OVERFLOW_LE_MS)
            .map(|(_, n)| n)
            .sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_bucket_bound() {
        let p = percentiles(&[(100, 50), (250, 40), (1000, 9), (OVERFLOW_LE_MS, 1)]);
        assert_eq!(p.count, 100);
        assert_eq!(p.p50_ms, Some(100));
        assert_eq!(p.p90_ms, Some(250));
        assert_eq!(p.p99_ms, Some(1000));
        assert_eq!(p.over_max, 1);
        assert_eq!(percentiles(&[]).p50_ms, None);
    }
}
