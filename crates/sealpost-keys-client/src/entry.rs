//! What a recipient's label maps to in the directory: its servable device keys at an epoch.
//!
//! The value is the JSON of [`DirectoryEntry`], in the field order written here, with the devices
//! sorted by (device id, key id): the same keys always give the same bytes, so a rebuild gives
//! the same roots. A revoked key is left out; a rotated-out key stays listed as `retiring` until
//! its `retires_at`, so a recipient can still be found for what was sealed to it.
//!
//! ```json
//! {"v":1,"keys":[{"device_id":"phone","key_id":"k2","kem_id":32,
//!   "public_key":"<64 hex>","fingerprint":"<64 hex>","enrolled":false,
//!   "created_at":"2026-12-02T13:00:00Z","expires_at":"2027-12-02T13:00:00Z",
//!   "status":"active"}]}
//! ```

use akd_core::AkdValue;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Version of the entry's JSON.
pub const ENTRY_VERSION: u8 = 1;

/// A recipient's device keys as the directory publishes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryEntry {
    pub v: u8,
    pub keys: Vec<DeviceKey>,
}

/// One device key in an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceKey {
    pub device_id: String,
    pub key_id: String,
    /// RFC 9180 KEM id (32 = 0x0020, DHKEM(X25519, HKDF-SHA256)).
    pub kem_id: u16,
    /// Lowercase hex.
    pub public_key: String,
    /// `sealpost_keyformat::fingerprint`, lowercase hex.
    pub fingerprint: String,
    pub enrolled: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// `active` (seal to it) or `retiring` (rotated out: only opens what was sealed before).
    pub status: KeyStatus,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub retires_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    Active,
    Retiring,
}

impl DirectoryEntry {
    pub fn to_value(&self) -> AkdValue {
        // A struct of strings, numbers and booleans always serializes.
        AkdValue(serde_json::to_vec(self).unwrap_or_default())
    }

    pub fn from_value(value: &AkdValue) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(&value.0)
    }

    /// The keys a sender may seal to now: active and not expired.
    pub fn sealable(&self, now: OffsetDateTime) -> impl Iterator<Item = &DeviceKey> {
        self.keys
            .iter()
            .filter(move |k| k.status == KeyStatus::Active && k.expires_at > now)
    }
}
