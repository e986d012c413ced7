//! Upcasters: old stored event versions to the current one, as pure JSON transforms.
//!
//! The store keeps events as written forever (the stream denies delete and purge), so every
//! version ever written must stay loadable. Each schema change adds a function here and a test
//! that loads the old shape.
//!
//! Version `0` is the pre-release `accepted` shape, which stored `ttl_seconds` and left the
//! deadlines to be derived. Version 1 fixes `expires_at` and `retry_until` at accept time, so a
//! replay never depends on policy that may since have changed. The v0 upcaster derives them with
//! the v0 rule (TTL or the 72 h transactional default; the retry window was the TTL).

use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::events::{DecodeError, EVENT_VERSION};

/// Brings `body` of (`event_type`, `version`) to [`EVENT_VERSION`].
pub fn to_current(event_type: &str, version: &str, body: Value) -> Result<Value, DecodeError> {
    match (event_type, version) {
        (_, EVENT_VERSION) => Ok(body),
        ("accepted", "0") => accepted_v0_to_v1(body).ok_or_else(|| DecodeError::Body {
            event_type: event_type.to_owned(),
            source: serde::de::Error::custom("accepted v0 needs accepted_at (RFC 3339)"),
        }),
        _ => Err(DecodeError::UnknownVersion {
            event_type: event_type.to_owned(),
            version: version.to_owned(),
        }),
    }
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
