//! Upcasters: old stored event versions to the current one, as pure JSON transforms.
//!
//! The store keeps events as written forever (the stream denies delete and purge), so every
//! version ever written must stay loadable. Each schema change adds a function here and a test
//! that loads the old shape.
//!
//! `accepted` has three versions:
//! - v0, the pre-release shape, stored `ttl_seconds` and left the deadlines to be derived;
//! - v1 fixes `expires_at` and `retry_until` at accept time, so a replay never depends on policy
//!   that may since have changed. The v0 upcaster derives them with the v0 rule (TTL or the 72 h
//!   transactional default; the retry window was the TTL);
//! - v2 adds `request_sha256`, the digest of the whole send request. A v1 event has none, and the
//!   aggregate then compares a resend by payload digest only, as v1 did; so v1 → v2 changes
//!   nothing in the body.
//!
//! `fallback_triggered` has two: v2 adds the reason `expired` (the message expired undelivered
//! and a fallback was requested) and the optional `revoke` (what the expiry did at the carrier);
//! a v1 body is a valid v2 body.
//!
//! Every other type is at v1.

use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::events::{DecodeError, EventType};

/// Brings `body` of (`event_type`, `version`) to [`EventType::version`].
pub fn to_current(event_type: EventType, version: &str, body: Value) -> Result<Value, DecodeError> {
    let unknown = || DecodeError::UnknownVersion {
        event_type,
        version: version.chars().take(16).collect(),
    };
    let mut v: u32 = version.parse().map_err(|_| unknown())?;
    if !event_type.versions().contains(&v) {
        return Err(unknown());
    }
    let mut body = body;
    while v < event_type.version() {
        body = match (event_type, v) {
            (EventType::Accepted, 0) => {
                accepted_v0_to_v1(body).ok_or_else(|| DecodeError::Body {
                    event_type,
                    source: serde::de::Error::custom("accepted v0 needs accepted_at (RFC 3339)"),
                })?
            }
            // v2 only adds a field that v1 events do not have.
            (EventType::Accepted, 1) => body,
            // v2 only adds a reason and an optional field: every v1 body is a v2 body.
            (EventType::FallbackTriggered, 1) => body,
            _ => return Err(unknown()),
        };
        v += 1;
    }
    Ok(body)
}

/// The v0 default TTL: 72 hours.
const V0_DEFAULT_TTL_SECONDS: i64 = 72 * 3600;

fn accepted_v0_to_v1(mut body: Value) -> Option<Value> {
    let obj = body.as_object_mut()?;
    let accepted_at = OffsetDateTime::parse(obj.get("accepted_at")?.as_str()?, &Rfc3339).ok()?;
    let ttl = match obj.remove("ttl_seconds") {
        Some(v) => i64::try_from(v.as_u64()?).ok()?,
        None => V0_DEFAULT_TTL_SECONDS,
    };
    let expires_at = (accepted_at + time::Duration::seconds(ttl))
        .format(&Rfc3339)
        .ok()?;
    obj.insert("expires_at".into(), Value::String(expires_at.clone()));
    obj.insert("retry_until".into(), Value::String(expires_at));
    Some(body)
}
