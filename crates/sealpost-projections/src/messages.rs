//! Projection `messages`: one row per message with its status, per-state instants, attempts,
//! carrier, digest, blob reference, correlation id, hold and purge state. The row type and the
//! fold from events to it are the domain's [`StatusRow`]: the gateway's answer from events uses
//! the same fold, so both agree field for field.
//!
//! A batch loads the stored rows of the messages it touches (one `SELECT`, skipped for messages
//! whose history starts in the batch), folds the events into them in memory, and writes them back
//! with one multi-row `INSERT ... SELECT FROM UNNEST(...) ON CONFLICT DO UPDATE`.

use std::collections::HashMap;

use sealpost_domain::events::{
    DecryptFailure, EndReason, ErrorClass, FallbackChannel, MessageType, RevokeOutcome,
};
use sealpost_domain::{EventType, Status, StatusRow, UnknownName};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row as _};

use crate::decode::{keys_to_load, ProjectedEvent};

/// Reads a `messages` row (selected with [`COLUMNS`]).
pub(crate) fn from_row(r: &PgRow) -> crate::Result<StatusRow> {
    fn wire<T: std::str::FromStr<Err = UnknownName>>(
        v: Option<String>,
    ) -> crate::Result<Option<T>> {
        Ok(v.map(|s| s.parse()).transpose()?)
    }
    let count = |v: i32| u32::try_from(v).unwrap_or(0);
    Ok(StatusRow {
        tenant: r.try_get("tenant")?,
        message_id: r.try_get("message_id")?,
        status: r.try_get::<String, _>("status")?.parse()?,
        message_type: wire(r.try_get("message_type")?)?,
        recipient_masked: r.try_get("recipient_masked")?,
        recipient_sha256: r.try_get("recipient_sha256")?,
        correlation_id: r.try_get("correlation_id")?,
        payload_ref: r.try_get("payload_ref")?,
        payload_sha256: r.try_get("payload_sha256")?,
        payload_size: r
            .try_get::<Option<i64>, _>("payload_size")?
            .map(|v| u64::try_from(v).unwrap_or(0)),
        fallback_channel: wire(r.try_get("fallback_channel")?)?,
        carrier: r.try_get("carrier")?,
        carrier_message_id: r.try_get("carrier_message_id")?,
        attempts: count(r.try_get("attempts")?),
        last_error_class: wire(r.try_get("last_error_class")?)?,
        last_error_code: r.try_get("last_error_code")?,
        end_reason: wire(r.try_get("end_reason")?)?,
        revoke_outcome: wire(r.try_get("revoke_outcome")?)?,
        accepted_at: r.try_get("accepted_at")?,
        carrier_acked_at: r.try_get("carrier_acked_at")?,
        delivered_at: r.try_get("delivered_at")?,
        displayed_at: r.try_get("displayed_at")?,
        failed_at: r.try_get("failed_at")?,
        fallback_at: r.try_get("fallback_at")?,
        expired_at: r.try_get("expired_at")?,
        cancelled_at: r.try_get("cancelled_at")?,
        purged_at: r.try_get("purged_at")?,
        expires_at: r.try_get("expires_at")?,
        next_attempt_at: r.try_get("next_attempt_at")?,
        held: r.try_get("held")?,
        active_holds: count(r.try_get("active_holds")?),
        purged: r.try_get("purged")?,
        decryption_failures: count(r.try_get("decryption_failures")?),
        last_decryption_failure: wire(r.try_get("last_decryption_failure")?)?,
        last_decryption_failure_at: r.try_get("last_decryption_failure_at")?,
        event_count: count(r.try_get("event_count")?),
        last_event_type: wire(
            Some(r.try_get::<String, _>("last_event_type")?).filter(|s| !s.is_empty()),
        )?,
        last_event_at: r.try_get("last_event_at")?,
        last_seq: u64::try_from(r.try_get::<i64, _>("last_seq")?).unwrap_or(0),
        source: Default::default(),
    })
}

pub(crate) const COLUMNS: &str = "tenant, message_id, status, message_type, recipient_masked, \
    recipient_sha256, correlation_id, payload_ref, payload_sha256, payload_size, fallback_channel, \
    carrier, carrier_message_id, attempts, last_error_class, last_error_code, end_reason, \
    revoke_outcome, accepted_at, carrier_acked_at, delivered_at, displayed_at, failed_at, \
    fallback_at, expired_at, cancelled_at, purged_at, expires_at, next_attempt_at, held, \
    active_holds, purged, decryption_failures, last_decryption_failure, \
    last_decryption_failure_at, event_count, last_event_type, last_event_at, last_seq";

pub(crate) async fn truncate(tx: &mut PgConnection) -> crate::Result<()> {
    sqlx::query("TRUNCATE messages").execute(tx).await?;
    Ok(())
}

/// Applies a batch (already filtered to events above the checkpoint, in stream order).
pub(crate) async fn apply(tx: &mut PgConnection, events: &[ProjectedEvent]) -> crate::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let (tenants, ids) = keys_to_load(events);
    let mut rows: HashMap<(String, String), StatusRow> = HashMap::new();
    if !tenants.is_empty() {
        let sql = format!(
            "SELECT {COLUMNS} FROM messages WHERE (tenant, message_id) IN \
             (SELECT * FROM UNNEST($1::text[], $2::text[]))"
        );
        let stored = sqlx::query(&sql)
            .bind(&tenants)
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?;
        for r in &stored {
            let r = from_row(r)?;
            rows.insert((r.tenant.clone(), r.message_id.clone()), r);
        }
    }
    // Keys in first-touched order, so the statement is deterministic.
    let mut order: Vec<(String, String)> = Vec::new();
    let mut touched = std::collections::HashSet::new();
    for e in events {
        let key = (e.tenant.clone(), e.message_id.clone());
        if touched.insert(key.clone()) {
            order.push(key.clone());
        }
        rows.entry(key)
            .or_insert_with(|| StatusRow::new(&e.tenant, &e.message_id))
            .apply(&e.event, e.seq, e.correlation_id.as_deref());
    }
    upsert(tx, order.iter().filter_map(|k| rows.get(k))).await
}

async fn upsert<'a>(
    tx: &mut PgConnection,
    rows: impl Iterator<Item = &'a StatusRow>,
) -> crate::Result<()> {
    let rows: Vec<&StatusRow> = rows.collect();
    // One column as a Postgres array; `$map` turns a field into its column value.
    macro_rules! col {
        ($f:ident) => {
            rows.iter().map(|r| r.$f.clone()).collect::<Vec<_>>()
        };
        ($f:ident, $map:expr) => {
            rows.iter().map(|r| $map(&r.$f)).collect::<Vec<_>>()
        };
    }
    let int = |v: &u32| i32::try_from(*v).unwrap_or(i32::MAX);
    let big = |v: &u64| i64::try_from(*v).unwrap_or(i64::MAX);
    let update: Vec<String> = COLUMNS
        .split(',')
        .map(str::trim)
        .filter(|c| *c != "tenant" && *c != "message_id")
        .map(|c| format!("{c} = EXCLUDED.{c}"))
        .collect();
    let sql = format!(
        "INSERT INTO messages ({COLUMNS}) SELECT * FROM UNNEST(\
         $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
         $8::text[], $9::text[], $10::int8[], $11::text[], $12::text[], $13::text[], $14::int4[], \
         $15::text[], $16::text[], $17::text[], $18::text[], $19::timestamptz[], \
         $20::timestamptz[], $21::timestamptz[], $22::timestamptz[], $23::timestamptz[], \
         $24::timestamptz[], $25::timestamptz[], $26::timestamptz[], $27::timestamptz[], \
         $28::timestamptz[], $29::timestamptz[], $30::bool[], $31::int4[], $32::bool[], \
         $33::int4[], $34::text[], $35::timestamptz[], $36::int4[], $37::text[], \
         $38::timestamptz[], $39::int8[]) \
         ON CONFLICT (tenant, message_id) DO UPDATE SET {}",
        update.join(", ")
    );
    sqlx::query(&sql)
        .bind(col!(tenant))
        .bind(col!(message_id))
        .bind(col!(status, |v: &Status| v.as_str()))
        .bind(col!(message_type, |v: &Option<MessageType>| v
            .map(MessageType::as_str)))
        .bind(col!(recipient_masked))
        .bind(col!(recipient_sha256))
        .bind(col!(correlation_id))
        .bind(col!(payload_ref))
        .bind(col!(payload_sha256))
        .bind(col!(payload_size, |v: &Option<u64>| v.as_ref().map(big)))
        .bind(col!(fallback_channel, |v: &Option<FallbackChannel>| v
            .map(FallbackChannel::as_str)))
        .bind(col!(carrier))
        .bind(col!(carrier_message_id))
        .bind(col!(attempts, int))
        .bind(col!(last_error_class, |v: &Option<ErrorClass>| v
            .map(ErrorClass::as_str)))
        .bind(col!(last_error_code))
        .bind(col!(end_reason, |v: &Option<EndReason>| v.map(EndReason::as_str)))
        .bind(col!(revoke_outcome, |v: &Option<RevokeOutcome>| v
            .map(RevokeOutcome::as_str)))
        .bind(col!(accepted_at))
        .bind(col!(carrier_acked_at))
        .bind(col!(delivered_at))
        .bind(col!(displayed_at))
        .bind(col!(failed_at))
        .bind(col!(fallback_at))
        .bind(col!(expired_at))
        .bind(col!(cancelled_at))
        .bind(col!(purged_at))
        .bind(col!(expires_at))
        .bind(col!(next_attempt_at))
        .bind(col!(held))
        .bind(col!(active_holds, int))
        .bind(col!(purged))
        .bind(col!(decryption_failures, int))
        .bind(col!(last_decryption_failure, |v: &Option<
            DecryptFailure,
        >| v
            .map(DecryptFailure::as_str)))
        .bind(col!(last_decryption_failure_at))
        .bind(col!(event_count, int))
        .bind(col!(last_event_type, |v: &Option<EventType>| v
            .map_or("", EventType::as_str)))
        .bind(col!(last_event_at))
        .bind(col!(last_seq, big))
        .execute(tx)
        .await?;
    Ok(())
}
