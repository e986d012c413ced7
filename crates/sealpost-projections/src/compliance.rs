//! Projection `compliance`: per message, the active legal holds (reason and since), when the
//! message settled, whether and when it was purged, and an audit trail of those events. The
//! retention deadline is `settled_at + retention` while no hold is active (see
//! [`ComplianceView::retention_until`]); it is computed at read time so that changing the
//! retention period needs no rebuild.
//!
//! Each document is a cqrs-es [`View`] of the `Message` aggregate, stored in postgres-es's
//! `PostgresViewRepository` table layout (`view_id`, `version`, `payload`); see the crate docs for
//! why the projector writes it itself.

use std::collections::{BTreeMap, HashMap, HashSet};

use cqrs_es::{EventEnvelope, View};
use sealpost_domain::{parse_aggregate_id, EventType, Message, MessageEvent, Status};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, Row as _};
use time::OffsetDateTime;

use crate::decode::{keys_to_load, ProjectedEvent};

/// Table of the documents.
pub const TABLE: &str = "compliance_views";

/// A legal hold in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveHold {
    pub reason: String,
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
}

/// One compliance-relevant event, for the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComplianceEntry {
    /// `held`, `released`, `purged`, or the settling event's type.
    pub event: EventType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_id: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Aggregate sequence of the event.
    pub sequence: usize,
}

/// The compliance document of one message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComplianceView {
    pub tenant: String,
    pub message_id: String,
    /// Where the ciphertext is, so retention can delete it (a reference only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_ref: Option<String>,
    /// Active holds by hold id.
    pub holds: BTreeMap<String, ActiveHold>,
    /// When delivery work ended (delivered, failed, fallback, expired or cancelled).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub settled_at: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub purged_at: Option<OffsetDateTime>,
    pub trail: Vec<ComplianceEntry>,
}

impl ComplianceView {
    pub fn held(&self) -> bool {
        !self.holds.is_empty()
    }

    /// When the message may be purged: `settled_at + retention`. `None` while it is not settled,
    /// is under a hold (retention is suspended) or is already purged.
    pub fn retention_until(&self, retention: std::time::Duration) -> Option<OffsetDateTime> {
        if self.held() || self.purged_at.is_some() {
            return None;
        }
        self.settled_at.map(|s| s + retention)
    }
}

impl View<Message> for ComplianceView {
    fn update(&mut self, event: &EventEnvelope<Message>) {
        use MessageEvent as E;
        if self.tenant.is_empty() {
            if let Ok((t, m)) = parse_aggregate_id(&event.aggregate_id) {
                self.tenant = t.as_str().to_owned();
                self.message_id = m.as_str().to_owned();
            }
        }
        let ty = event.payload.event_type();
        let at = event.payload.at();
        let entry = |hold_id: Option<&str>| ComplianceEntry {
            event: ty,
            hold_id: hold_id.map(str::to_owned),
            at,
            sequence: event.sequence,
        };
        // The first event that settles the message starts its retention.
        if Status::after(ty).is_some_and(Status::is_settled) && self.settled_at.is_none() {
            self.settled_at = Some(at);
            self.trail.push(entry(None));
        }
        match &event.payload {
            E::Accepted(a) => self.payload_ref = Some(a.payload_ref.clone()),
            E::Held(h) => {
                self.holds.insert(
                    h.hold_id.clone(),
                    ActiveHold {
                        reason: h.reason.clone(),
                        since: h.at,
                    },
                );
                self.trail.push(entry(Some(&h.hold_id)));
            }
            E::Released(r) => {
                self.holds.remove(&r.hold_id);
                self.trail.push(entry(Some(&r.hold_id)));
            }
            E::Purged(p) => {
                self.purged_at = Some(p.at);
                self.trail.push(entry(None));
            }
            _ => {}
        }
    }
}

/// The view id of a message: its aggregate id `<tenant>.<message_id>`.
pub fn view_id(tenant: &str, message_id: &str) -> String {
    format!("{tenant}.{message_id}")
}

pub(crate) async fn truncate(tx: &mut PgConnection) -> crate::Result<()> {
    sqlx::query("TRUNCATE compliance_views").execute(tx).await?;
    Ok(())
}

struct Doc {
    version: i64,
    view: ComplianceView,
    last_seq: i64,
}

pub(crate) async fn apply(tx: &mut PgConnection, events: &[ProjectedEvent]) -> crate::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let (tenants, ids) = keys_to_load(events);
    let mut docs: HashMap<String, Doc> = HashMap::new();
    if !tenants.is_empty() {
        let view_ids: Vec<String> = tenants
            .iter()
            .zip(&ids)
            .map(|(t, m)| view_id(t, m))
            .collect();
        let stored = sqlx::query(
            "SELECT view_id, version, payload, last_seq FROM compliance_views \
             WHERE view_id = ANY($1::text[])",
        )
        .bind(&view_ids)
        .fetch_all(&mut *tx)
        .await?;
        for row in stored {
            let payload: serde_json::Value = row.try_get("payload")?;
            let view: ComplianceView =
                serde_json::from_value(payload).map_err(|e| crate::Error::View {
                    what: "a stored compliance view",
                    source: Box::new(e),
                })?;
            docs.insert(
                row.try_get("view_id")?,
                Doc {
                    version: row.try_get("version")?,
                    view,
                    last_seq: row.try_get("last_seq")?,
                },
            );
        }
    }
    let mut order = Vec::new();
    let mut touched = HashSet::new();
    for e in events {
        let id = view_id(&e.tenant, &e.message_id);
        if touched.insert(id.clone()) {
            order.push(id.clone());
        }
        let doc = docs.entry(id.clone()).or_insert_with(|| Doc {
            version: 0,
            view: ComplianceView::default(),
            last_seq: 0,
        });
        let envelope = EventEnvelope::<Message> {
            aggregate_id: id,
            sequence: usize::try_from(e.aggregate_seq).unwrap_or(0),
            payload: e.event.clone(),
            metadata: HashMap::new(),
        };
        doc.view.update(&envelope);
        doc.last_seq = i64::try_from(e.seq).unwrap_or(i64::MAX);
    }
    let mut cols = Cols::default();
    for id in &order {
        let Some(doc) = docs.get(id) else { continue };
        cols.view_id.push(id.clone());
        // postgres-es counts updates in `version`; one batch is one update.
        cols.version.push(doc.version + 1);
        cols.payload.push(
            serde_json::to_string(&doc.view).map_err(|e| crate::Error::View {
                what: "encoding a compliance view",
                source: Box::new(e),
            })?,
        );
        cols.tenant.push(doc.view.tenant.clone());
        cols.message_id.push(doc.view.message_id.clone());
        cols.held.push(doc.view.held());
        cols.purged.push(doc.view.purged_at.is_some());
        cols.settled_at.push(doc.view.settled_at);
        cols.last_seq.push(doc.last_seq);
    }
    sqlx::query(
        "INSERT INTO compliance_views \
         (view_id, version, payload, tenant, message_id, held, purged, settled_at, last_seq) \
         SELECT v, ver, p::json, t, m, h, pu, s, ls FROM UNNEST($1::text[], $2::int8[], \
         $3::text[], $4::text[], $5::text[], $6::bool[], $7::bool[], $8::timestamptz[], \
         $9::int8[]) AS x(v, ver, p, t, m, h, pu, s, ls) \
         ON CONFLICT (view_id) DO UPDATE SET version = EXCLUDED.version, \
         payload = EXCLUDED.payload, held = EXCLUDED.held, purged = EXCLUDED.purged, \
         settled_at = EXCLUDED.settled_at, last_seq = EXCLUDED.last_seq",
    )
    .bind(cols.view_id)
    .bind(cols.version)
    .bind(cols.payload)
    .bind(cols.tenant)
    .bind(cols.message_id)
    .bind(cols.held)
    .bind(cols.purged)
    .bind(cols.settled_at)
    .bind(cols.last_seq)
    .execute(tx)
    .await?;
    Ok(())
}

#[derive(Default)]
struct Cols {
    view_id: Vec<String>,
    version: Vec<i64>,
    payload: Vec<String>,
    tenant: Vec<String>,
    message_id: Vec<String>,
    held: Vec<bool>,
    purged: Vec<bool>,
    settled_at: Vec<Option<OffsetDateTime>>,
    last_seq: Vec<i64>,
}
