//! Projection `metrics`: per tenant, carrier and minute (of the event's own instant, so a rebuild
//! reproduces every row), the number of events of each type, failed attempts per error class and
//! code, and latency histograms accepted → delivered and accepted → displayed.
//!
//! Events that carry no carrier (`accepted`, receipts, expiry, ...) are counted under the carrier
//! last seen for the message, or `-` before one is known; the projection keeps that and the
//! accept instant per message in `metrics_message_state`, its own table, so it rebuilds without
//! the `messages` view. Counts are added with `count = count + EXCLUDED.count`, which is safe
//! because a batch is applied exactly once (checkpoint in the same transaction).

use std::collections::{BTreeMap, HashMap};

use sealpost_domain::MessageEvent;
use sqlx::{PgConnection, Row as _};
use time::OffsetDateTime;

use crate::decode::{keys_to_load, snake, ProjectedEvent};

/// Upper bounds (inclusive, milliseconds) of the latency buckets; a last bucket
/// [`OVERFLOW_LE_MS`] catches the rest.
pub const LATENCY_BUCKETS_MS: [i64; 14] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000, 900_000, 3_600_000,
    21_600_000, 86_400_000,
];
/// The `le_ms` of the overflow bucket (+Inf).
pub const OVERFLOW_LE_MS: i64 = i64::MAX;
/// The carrier of events seen before any carrier is known for their message.
pub const NO_CARRIER: &str = "-";

/// The bucket bound for a latency in milliseconds.
pub fn bucket_for(ms: i64) -> i64 {
    LATENCY_BUCKETS_MS
        .iter()
        .copied()
        .find(|b| ms <= *b)
        .unwrap_or(OVERFLOW_LE_MS)
}

fn minute(at: OffsetDateTime) -> OffsetDateTime {
    let at = at.to_offset(time::UtcOffset::UTC);
    at.replace_second(0)
        .and_then(|t| t.replace_nanosecond(0))
        .unwrap_or(at)
}

#[derive(Clone, Default)]
struct State {
    accepted_at: Option<OffsetDateTime>,
    carrier: Option<String>,
    dirty: bool,
}

pub(crate) async fn truncate(tx: &mut PgConnection) -> crate::Result<()> {
    sqlx::query("TRUNCATE metrics_events, metrics_retries, metrics_latency, metrics_message_state")
        .execute(tx)
        .await?;
    Ok(())
}

type Bucket = (String, String, OffsetDateTime);

pub(crate) async fn apply(tx: &mut PgConnection, events: &[ProjectedEvent]) -> crate::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let (tenants, ids) = keys_to_load(events);
    let mut state: HashMap<(String, String), State> = HashMap::new();
    if !tenants.is_empty() {
        let rows = sqlx::query(
            "SELECT tenant, message_id, accepted_at, carrier FROM metrics_message_state \
             WHERE (tenant, message_id) IN (SELECT * FROM UNNEST($1::text[], $2::text[]))",
        )
        .bind(&tenants)
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        for r in rows {
            state.insert(
                (r.try_get("tenant")?, r.try_get("message_id")?),
                State {
                    accepted_at: r.try_get("accepted_at")?,
                    carrier: r.try_get("carrier")?,
                    dirty: false,
                },
            );
        }
    }
    // BTreeMaps: deterministic statement order.
    let mut counts: BTreeMap<(Bucket, &'static str), i64> = BTreeMap::new();
    let mut retries: BTreeMap<(Bucket, String, String), i64> = BTreeMap::new();
    let mut latency: BTreeMap<(Bucket, &'static str, i64), i64> = BTreeMap::new();
    for e in events {
        let st = state
            .entry((e.tenant.clone(), e.message_id.clone()))
            .or_default();
        match &e.event {
            MessageEvent::Accepted(a) => {
                st.accepted_at = Some(a.accepted_at);
                st.dirty = true;
            }
            MessageEvent::CarrierAcked(c) if st.carrier.as_deref() != Some(&c.carrier) => {
                st.carrier = Some(c.carrier.clone());
                st.dirty = true;
            }
            MessageEvent::AttemptFailed(f) if st.carrier.as_deref() != Some(&f.carrier) => {
                st.carrier = Some(f.carrier.clone());
                st.dirty = true;
            }
            _ => {}
        }
        let carrier = st.carrier.clone().unwrap_or_else(|| NO_CARRIER.to_owned());
        let bucket: Bucket = (e.tenant.clone(), carrier, minute(e.at()));
        *counts.entry((bucket.clone(), e.event_type())).or_default() += 1;
        match &e.event {
            MessageEvent::AttemptFailed(f) => {
                *retries
                    .entry((bucket, snake(&f.class), f.code.clone()))
                    .or_default() += 1;
            }
            MessageEvent::Delivered(d) => {
                if let Some(acc) = st.accepted_at {
                    let ms = i64::try_from((d.at - acc).whole_milliseconds()).unwrap_or(i64::MAX);
                    *latency
                        .entry((bucket, "delivered", bucket_for(ms)))
                        .or_default() += 1;
                }
            }
            MessageEvent::Displayed(d) => {
                if let Some(acc) = st.accepted_at {
                    let ms = i64::try_from((d.at - acc).whole_milliseconds()).unwrap_or(i64::MAX);
                    *latency
                        .entry((bucket, "displayed", bucket_for(ms)))
                        .or_default() += 1;
                }
            }
            _ => {}
        }
    }

    if !counts.is_empty() {
        let (mut t, mut c, mut m, mut k, mut n) = (vec![], vec![], vec![], vec![], vec![]);
        for (((tenant, carrier, minute), kind), count) in counts {
            t.push(tenant);
            c.push(carrier);
            m.push(minute);
            k.push(kind.to_owned());
            n.push(count);
        }
        sqlx::query(
            "INSERT INTO metrics_events (tenant, carrier, minute, event_type, count) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::int8[]) \
             ON CONFLICT (tenant, carrier, minute, event_type) \
             DO UPDATE SET count = metrics_events.count + EXCLUDED.count",
        )
        .bind(t)
        .bind(c)
        .bind(m)
        .bind(k)
        .bind(n)
        .execute(&mut *tx)
        .await?;
    }
    if !retries.is_empty() {
        let (mut t, mut c, mut m, mut cl, mut co, mut n) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for (((tenant, carrier, minute), class, code), count) in retries {
            t.push(tenant);
            c.push(carrier);
            m.push(minute);
            cl.push(class);
            co.push(code);
            n.push(count);
        }
        sqlx::query(
            "INSERT INTO metrics_retries (tenant, carrier, minute, error_class, code, count) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::text[], \
             $5::text[], $6::int8[]) \
             ON CONFLICT (tenant, carrier, minute, error_class, code) \
             DO UPDATE SET count = metrics_retries.count + EXCLUDED.count",
        )
        .bind(t)
        .bind(c)
        .bind(m)
        .bind(cl)
        .bind(co)
        .bind(n)
        .execute(&mut *tx)
        .await?;
    }
    if !latency.is_empty() {
        let (mut t, mut c, mut m, mut k, mut le, mut n) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for (((tenant, carrier, minute), kind, bound), count) in latency {
            t.push(tenant);
            c.push(carrier);
            m.push(minute);
            k.push(kind.to_owned());
            le.push(bound);
            n.push(count);
        }
        sqlx::query(
            "INSERT INTO metrics_latency (tenant, carrier, minute, kind, le_ms, count) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::text[], \
             $5::int8[], $6::int8[]) \
             ON CONFLICT (tenant, carrier, minute, kind, le_ms) \
             DO UPDATE SET count = metrics_latency.count + EXCLUDED.count",
        )
        .bind(t)
        .bind(c)
        .bind(m)
        .bind(k)
        .bind(le)
        .bind(n)
        .execute(&mut *tx)
        .await?;
    }
    let dirty: Vec<_> = state.into_iter().filter(|(_, s)| s.dirty).collect();
    if !dirty.is_empty() {
        let (mut t, mut m, mut a, mut c) = (vec![], vec![], vec![], vec![]);
        for ((tenant, message_id), s) in dirty {
            t.push(tenant);
            m.push(message_id);
            a.push(s.accepted_at);
            c.push(s.carrier);
        }
        sqlx::query(
            "INSERT INTO metrics_message_state (tenant, message_id, accepted_at, carrier) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::text[]) \
             ON CONFLICT (tenant, message_id) DO UPDATE SET \
             accepted_at = EXCLUDED.accepted_at, carrier = EXCLUDED.carrier",
        )
        .bind(t)
        .bind(m)
        .bind(a)
        .bind(c)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_inclusive_upper_bounds() {
        assert_eq!(bucket_for(0), 100);
        assert_eq!(bucket_for(100), 100);
        assert_eq!(bucket_for(101), 250);
        assert_eq!(bucket_for(86_400_001), OVERFLOW_LE_MS);
    }
}
