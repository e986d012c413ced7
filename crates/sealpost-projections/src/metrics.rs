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

use sealpost_domain::events::ErrorClass;
use sealpost_domain::{EventType, MessageEvent};
use sqlx::{PgConnection, Row as _};
use time::OffsetDateTime;

use crate::decode::{keys_to_load, ProjectedEvent};

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

/// What one batch adds to the tables. BTreeMaps: deterministic statement order.
#[derive(Default)]
struct Tally {
    /// Events per (bucket, event type).
    counts: BTreeMap<(Bucket, EventType), i64>,
    /// Failed attempts per (bucket, error class, code).
    retries: BTreeMap<(Bucket, ErrorClass, String), i64>,
    /// Latencies per (bucket, `delivered` or `displayed`, bucket bound).
    latency: BTreeMap<(Bucket, EventType, i64), i64>,
}

pub(crate) async fn apply(tx: &mut PgConnection, events: &[ProjectedEvent]) -> crate::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut state = load_state(tx, events).await?;
    let tally = tally(events, &mut state);
    write_counts(tx, tally.counts).await?;
    write_retries(tx, tally.retries).await?;
    write_latency(tx, tally.latency).await?;
    write_state(tx, state).await
}

/// The per-message state (accept instant, last carrier) of messages whose history started
/// before this batch.
async fn load_state(
    tx: &mut PgConnection,
    events: &[ProjectedEvent],
) -> crate::Result<HashMap<(String, String), State>> {
    let (tenants, ids) = keys_to_load(events);
    let mut state = HashMap::new();
    if tenants.is_empty() {
        return Ok(state);
    }
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
    Ok(state)
}

/// Counts the batch's events into buckets, updating the per-message state as it goes. Pure.
fn tally(events: &[ProjectedEvent], state: &mut HashMap<(String, String), State>) -> Tally {
    let mut t = Tally::default();
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
        *t.counts
            .entry((bucket.clone(), e.event_type()))
            .or_default() += 1;
        match &e.event {
            MessageEvent::AttemptFailed(f) => {
                *t.retries
                    .entry((bucket, f.class, f.code.clone()))
                    .or_default() += 1;
            }
            MessageEvent::Delivered(_) | MessageEvent::Displayed(_) => {
                if let Some(acc) = st.accepted_at {
                    let ms = i64::try_from((e.at() - acc).whole_milliseconds()).unwrap_or(i64::MAX);
                    *t.latency
                        .entry((bucket, e.event_type(), bucket_for(ms)))
                        .or_default() += 1;
                }
            }
            _ => {}
        }
    }
    t
}

async fn write_counts(
    tx: &mut PgConnection,
    counts: BTreeMap<(Bucket, EventType), i64>,
) -> crate::Result<()> {
    if counts.is_empty() {
        return Ok(());
    }
    let (mut t, mut c, mut m, mut k, mut n) = (vec![], vec![], vec![], vec![], vec![]);
    for (((tenant, carrier, minute), kind), count) in counts {
        t.push(tenant);
        c.push(carrier);
        m.push(minute);
        k.push(kind.as_str());
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
    .execute(tx)
    .await?;
    Ok(())
}

async fn write_retries(
    tx: &mut PgConnection,
    retries: BTreeMap<(Bucket, ErrorClass, String), i64>,
) -> crate::Result<()> {
    if retries.is_empty() {
        return Ok(());
    }
    let (mut t, mut c, mut m, mut cl, mut co, mut n) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for (((tenant, carrier, minute), class, code), count) in retries {
        t.push(tenant);
        c.push(carrier);
        m.push(minute);
        cl.push(class.as_str());
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
    .execute(tx)
    .await?;
    Ok(())
}

async fn write_latency(
    tx: &mut PgConnection,
    latency: BTreeMap<(Bucket, EventType, i64), i64>,
) -> crate::Result<()> {
    if latency.is_empty() {
        return Ok(());
    }
    let (mut t, mut c, mut m, mut k, mut le, mut n) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for (((tenant, carrier, minute), kind, bound), count) in latency {
        t.push(tenant);
        c.push(carrier);
        m.push(minute);
        k.push(kind.as_str());
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
    .execute(tx)
    .await?;
    Ok(())
}

async fn write_state(
    tx: &mut PgConnection,
    state: HashMap<(String, String), State>,
) -> crate::Result<()> {
    let dirty: Vec<_> = state.into_iter().filter(|(_, s)| s.dirty).collect();
    if dirty.is_empty() {
        return Ok(());
    }
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
    .execute(tx)
    .await?;
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
