//! A recipient's [`DirectoryEntry`] (the format is `sealpost-keys-client`'s, shared with clients)
//! built from its `RecipientKeys` aggregate: a revoked key is left out, a rotated-out key stays
//! listed as `retiring` until its `retires_at`, and the devices are sorted by (device id, key
//! id), so the same keys always give the same bytes and a rebuild gives the same roots.

use sealpost_keys_client::{DeviceKey, DirectoryEntry, KeyStatus, ENTRY_VERSION};
use sealpost_keys_domain::{KeyState, RecipientKeys};

/// The entry of a recipient's keys.
pub fn directory_entry(keys: &RecipientKeys) -> DirectoryEntry {
    let mut out: Vec<DeviceKey> = keys
        .keys
        .values()
        .filter(|k| k.revoked.is_none())
        .map(device_key)
        .collect();
    out.sort_by(|a, b| (&a.device_id, &a.key_id).cmp(&(&b.device_id, &b.key_id)));
    DirectoryEntry {
        v: ENTRY_VERSION,
        keys: out,
    }
}

fn device_key(k: &KeyState) -> DeviceKey {
    DeviceKey {
        device_id: k.key.device_id.clone(),
        key_id: k.key.key_id.clone(),
        kem_id: k.key.kem_id,
        public_key: k.key.public_key.clone(),
        fingerprint: k.key.fingerprint.clone(),
        enrolled: k.key.enrolled,
        created_at: k.key.created_at,
        expires_at: k.key.expires_at,
        status: if k.retires_at.is_some() {
            KeyStatus::Retiring
        } else {
            KeyStatus::Active
        },
        retires_at: k.retires_at,
    }
}
