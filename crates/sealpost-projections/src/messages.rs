//! Projection `messages`: one row per message with its status, per-state instants, attempts,
//! carrier, digest, blob reference, correlation id, hold and purge state.
//!
//! A batch loads the stored rows of the messages it touches (one `SELECT`, skipped for messages
//! whose history starts in the batch), folds the events into them in memory, and writes them back
//! with one multi-row `INSERT ... SELECT FROM UNNEST(...) ON CONFLICT DO UPDATE`.

use std::collections::HashMap;

use sealpost_domain::{MessageEvent, Recipient};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use time::OffsetDateTime;

use crate::decode::{keys_to_load, snake, ProjectedEvent};

/// A row of the `messages` view. Serialized with these field names (a stable public contract:
/// `GET /v1/messages/{id}` and `sealpost.qry.<tenant>.status` answer it); instants as RFC 3339.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct MessageRow {
    pub tenant: String,
    pub message_id: String,
    /// `queued`, `retry_scheduled`, `carrier_acked`, `delivered`, `displayed`, `failed`,
    /// `fallback_triggered`, `expired` or `cancelled`.
    pub status: String,
    /// `transactional` or `promotional`.
    pub message_type: Option<String>,
    /// The recipient with all but the last two digits masked, e.g. `+*********67`.
    pub recipient_masked: Option<String>,
    /// SHA-256 (hex) of the E.164 recipient, to find a recipient's messages without storing it.
    pub recipient_sha256: Option<String>,
    pub correlation_id: Option<String>,
    /// Where the ciphertext is (a reference, never the content).
    pub payload_ref: Option<String>,
    pub payload_sha256: Option<String>,
    pub payload_size: Option<i64>,
    /// The fallback channel configured at accept (`sms`, `in_app`), if any.
    pub fallback_channel: Option<String>,
    pub carrier: Option<String>,
    pub carrier_message_id: Option<String>,
    /// Submissions made so far (the highest attempt number recorded).
    pub attempts: i32,
    /// Of the last failed attempt: `transient`, `throttled`, `permanent`, `not_capable`.
    pub last_error_class: Option<String>,
    /// Of the last failed attempt: the carrier's status or error code, e.g. `503`.
    pub last_error_code: Option<String>,
    /// Why delivery ended without an ack (`failed` / `fallback_triggered`).
    pub end_reason: Option<String>,
    /// For `expired`: `not_submitted`, `revoked` or `revoke_failed`.
    pub revoke_outcome: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub accepted_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub carrier_acked_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub delivered_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub displayed_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub failed_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub fallback_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expired_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub cancelled_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub purged_at: Option<OffsetDateTime>,
    /// The TTL deadline fixed at accept.
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// When the next submission may start, while one is awaited.
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_attempt_at: Option<OffsetDateTime>,
    /// Under at least one legal hold.
    pub held: bool,
    pub active_holds: i32,
    pub purged: bool,
    /// Events applied to this row.
    pub event_count: i32,
    pub last_event_type: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_event_at: Option<OffsetDateTime>,
    /// Stream sequence of the last event applied.
    pub last_seq: i64,
}

impl MessageRow {
    fn new(tenant: &str, message_id: &str) -> Self {
        MessageRow {
            tenant: tenant.to_owned(),
            message_id: message_id.to_owned(),
            status: "new".into(),
            message_type: None,
            recipient_masked: None,
            recipient_sha256: None,
            correlation_id: None,
            payload_ref: None,
            payload_sha256: None,
            payload_size: None,
            fallback_channel: None,
            carrier: None,
            carrier_message_id: None,
            attempts: 0,
            last_error_class: None,
            last_error_code: None,
            end_reason: None,
            revoke_outcome: None,
            accepted_at: None,
            carrier_acked_at: None,
            delivered_at: None,
            displayed_at: None,
            failed_at: None,
            fallback_at: None,
            expired_at: None,
            cancelled_at: None,
            purged_at: None,
            expires_at: None,
            next_attempt_at: None,
            held: false,
            active_holds: 0,
            purged: false,
            event_count: 0,
            last_event_type: String::new(),
            last_event_at: None,
            last_seq: 0,
        }
    }

    /// Folds one event into the row. The aggregate already decided the transition; this only
    /// records it.
    pub fn apply(&mut self, e: &ProjectedEvent) {
        use MessageEvent as E;
        let attempts = |a: u32| i32::try_from(a).unwrap_or(i32::MAX);
        match &e.event {
            E::Accepted(a) => {
                self.status = "queued".into();
                self.message_type = Some(snake(&a.message_type));
                self.recipient_masked = Some(a.recipient.masked());
                self.recipient_sha256 = Some(recipient_digest(&a.recipient));
                self.correlation_id = a.correlation_id.clone().or(e.correlation_id.clone());
                self.payload_ref = Some(a.payload_ref.clone());
                self.payload_sha256 = Some(a.payload_sha256.as_str().to_owned());
                self.payload_size = a.payload_size.map(|s| i64::try_from(s).unwrap_or(i64::MAX));
                self.fallback_channel = a.fallback.as_ref().map(|f| snake(&f.channel));
                self.accepted_at = Some(a.accepted_at);
                self.expires_at = Some(a.expires_at);
                self.next_attempt_at = Some(a.accepted_at);
            }
            E::Queued(q) => {
                self.status = "queued".into();
                self.next_attempt_at = Some(q.not_before);
            }
            E::CarrierAcked(c) => {
                self.status = "carrier_acked".into();
                self.carrier = Some(c.carrier.clone());
                self.carrier_message_id = Some(c.carrier_message_id.clone());
                self.carrier_acked_at = Some(c.at);
                self.attempts = self.attempts.max(attempts(c.attempt));
                self.next_attempt_at = None;
            }
            E::AttemptFailed(f) => {
                self.carrier = Some(f.carrier.clone());
                self.attempts = self.attempts.max(attempts(f.attempt));
                self.last_error_class = Some(snake(&f.class));
                self.last_error_code = Some(f.code.clone());
            }
            E::RetryScheduled(r) => {
                self.status = "retry_scheduled".into();
                self.next_attempt_at = Some(r.not_before);
            }
            E::Failed(f) => {
                self.status = "failed".into();
                self.failed_at = Some(f.at);
                self.end_reason = Some(snake(&f.reason));
                self.next_attempt_at = None;
            }
            E::FallbackTriggered(f) => {
                self.status = "fallback_triggered".into();
                self.fallback_at = Some(f.at);
                self.end_reason = Some(snake(&f.reason));
                self.fallback_channel = Some(snake(&f.channel));
                self.next_attempt_at = None;
            }
            E::Delivered(d) => {
                if self.status != "displayed" {
                    self.status = "delivered".into();
                }
                self.delivered_at = Some(d.at);
            }
            E::Displayed(d) => {
                self.status = "displayed".into();
                self.displayed_at = Some(d.at);
            }
            E::Expired(x) => {
                self.status = "expired".into();
                self.expired_at = Some(x.at);
                self.revoke_outcome = Some(snake(&x.revoke));
                self.next_attempt_at = None;
            }
            E::Cancelled(c) => {
                self.status = "cancelled".into();
                self.cancelled_at = Some(c.at);
                self.next_attempt_at = None;
            }
            E::Held(_) => {
                self.active_holds += 1;
                self.held = true;
            }
            E::Released(_) => {
                self.active_holds = (self.active_holds - 1).max(0);
                self.held = self.active_holds > 0;
            }
            E::Purged(p) => {
                self.purged = true;
                self.purged_at = Some(p.at);
            }
        }
        self.event_count += 1;
        self.last_event_type = e.event_type().to_owned();
        self.last_event_at = Some(e.at());
        self.last_seq = i64::try_from(e.seq).unwrap_or(i64::MAX);
    }
}

/// SHA-256 of the full E.164 number: lets an operator find a recipient's messages (erasure
/// requests) without the view holding the number.
fn recipient_digest(r: &Recipient) -> String {
    hex::encode(Sha256::digest(r.expose().as_bytes()))
}

pub(crate) const COLUMNS: &str = "tenant, message_id, status, message_type, recipient_masked, \
    recipient_sha256, correlation_id, payload_ref, payload_sha256, payload_size, fallback_channel, \
    carrier, carrier_message_id, attempts, last_error_class, last_error_code, end_reason, \
    revoke_outcome, accepted_at, carrier_acked_at, delivered_at, displayed_at, failed_at, \
    fallback_at, expired_at, cancelled_at, purged_at, expires_at, next_attempt_at, held, \
    active_holds, purged, event_count, last_event_type, last_event_at, last_seq";

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
    let mut rows: HashMap<(String, String), MessageRow> = HashMap::new();
    if !tenants.is_empty() {
        let sql = format!(
            "SELECT {COLUMNS} FROM messages WHERE (tenant, message_id) IN \
             (SELECT * FROM UNNEST($1::text[], $2::text[]))"
        );
        let stored: Vec<MessageRow> = sqlx::query_as(&sql)
            .bind(&tenants)
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?;
        for r in stored {
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
            .or_insert_with(|| MessageRow::new(&e.tenant, &e.message_id))
            .apply(e);
    }
    upsert(tx, order.iter().filter_map(|k| rows.get(k))).await
}

async fn upsert<'a>(
    tx: &mut PgConnection,
    rows: impl Iterator<Item = &'a MessageRow>,
) -> crate::Result<()> {
    let rows: Vec<&MessageRow> = rows.collect();
    macro_rules! col {
        ($f:ident) => {
            rows.iter().map(|r| r.$f.clone()).collect::<Vec<_>>()
        };
    }
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
         $33::int4[], $34::text[], $35::timestamptz[], $36::int8[]) \
         ON CONFLICT (tenant, message_id) DO UPDATE SET {}",
        update.join(", ")
    );
    sqlx::query(&sql)
        .bind(col!(tenant))
        .bind(col!(message_id))
        .bind(col!(status))
        .bind(col!(message_type))
        .bind(col!(recipient_masked))
        .bind(col!(recipient_sha256))
        .bind(col!(correlation_id))
        .bind(col!(payload_ref))
        .bind(col!(payload_sha256))
        .bind(col!(payload_size))
        .bind(col!(fallback_channel))
        .bind(col!(carrier))
        .bind(col!(carrier_message_id))
        .bind(col!(attempts))
        .bind(col!(last_error_class))
        .bind(col!(last_error_code))
        .bind(col!(end_reason))
        .bind(col!(revoke_outcome))
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
        .bind(col!(active_holds))
        .bind(col!(purged))
        .bind(col!(event_count))
        .bind(col!(last_event_type))
        .bind(col!(last_event_at))
        .bind(col!(last_seq))
        .execute(tx)
        .await?;
    Ok(())
}
