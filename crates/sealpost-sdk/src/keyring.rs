//! A device's key material: its HPKE key pairs, current and retiring, kept in a file that only
//! its owner can read (mode 0600, written atomically).
//!
//! Rotation adds a new active key and keeps the old one as `retiring` until its retirement
//! date, so what was sealed to it before the rotation still opens; [`Keyring::prune`] forgets
//! keys past that date. The file is JSON (`docs/envelope.md`, "Key files"): secrets in hex.

use std::io::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::envelope::HpkeUnwrapper;
use crate::hpke::{generate_key_pair, PublicKey, SecretKey};
use crate::SdkError;

/// The key file's format version.
pub const KEYRING_VERSION: u8 = 1;

/// One key pair of the device.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceKeyPair {
    pub key_id: String,
    /// Hex. Never logged: `Debug` hides it.
    secret_key: String,
    pub public_key: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Set when rotated out: the key opens what was sealed before, until this date.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub retires_at: Option<OffsetDateTime>,
}

impl std::fmt::Debug for DeviceKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceKeyPair")
            .field("key_id", &self.key_id)
            .field("public_key", &self.public_key)
            .field("expires_at", &self.expires_at)
            .field("retires_at", &self.retires_at)
            .finish_non_exhaustive()
    }
}

impl DeviceKeyPair {
    fn generate(key_id: &str, now: OffsetDateTime, valid_for: Duration) -> Self {
        let (secret, public) = generate_key_pair();
        Self {
            key_id: key_id.to_owned(),
            secret_key: hex::encode(secret.expose()),
            public_key: public.to_hex(),
            created_at: now,
            expires_at: now + valid_for,
            retires_at: None,
        }
    }

    pub fn public(&self) -> Result<PublicKey, SdkError> {
        PublicKey::from_hex(&self.public_key)
            .map_err(|_| SdkError::KeyFile("a public key is not 32 bytes of hex".into()))
    }

    fn secret(&self) -> Result<SecretKey, SdkError> {
        hex::decode(&self.secret_key)
            .ok()
            .and_then(|b| SecretKey::from_bytes(&b).ok())
            .ok_or_else(|| SdkError::KeyFile(format!("key {} is not 32 bytes of hex", self.key_id)))
    }

    /// The key's `sealpost_keyformat` fingerprint, hex.
    pub fn fingerprint(&self) -> Result<String, SdkError> {
        Ok(hex::encode(sealpost_keyformat::fingerprint(
            sealpost_keyformat::KEM_X25519_HKDF_SHA256,
            &self.public()?.0,
        )))
    }
}

/// A device's keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keyring {
    pub v: u8,
    pub tenant: String,
    /// The recipient's label (64 hex digits), as the tenant computes it.
    pub recipient_label: String,
    pub device_id: String,
    /// Newest last.
    pub keys: Vec<DeviceKeyPair>,
}

impl Keyring {
    /// A new device with one key.
    pub fn generate(
        tenant: &str,
        recipient_label: &str,
        device_id: &str,
        key_id: &str,
        valid_for: Duration,
        now: OffsetDateTime,
    ) -> Self {
        Self {
            v: KEYRING_VERSION,
            tenant: tenant.to_owned(),
            recipient_label: recipient_label.to_owned(),
            device_id: device_id.to_owned(),
            keys: vec![DeviceKeyPair::generate(key_id, now, valid_for)],
        }
    }

    /// The key new messages are sealed to: the newest one not rotated out.
    pub fn current(&self) -> Option<&DeviceKeyPair> {
        self.keys.iter().rev().find(|k| k.retires_at.is_none())
    }

    /// Rotates: a new active key, and the current one retiring after `retire_after` (until
    /// then it still opens what was sealed to it). Returns the new key.
    pub fn rotate(
        &mut self,
        key_id: &str,
        valid_for: Duration,
        retire_after: Duration,
        now: OffsetDateTime,
    ) -> Result<&DeviceKeyPair, SdkError> {
        if self.keys.iter().any(|k| k.key_id == key_id) {
            return Err(SdkError::KeyFile(format!(
                "key id {key_id} is already used on this device"
            )));
        }
        for k in self.keys.iter_mut().filter(|k| k.retires_at.is_none()) {
            k.retires_at = Some(now + retire_after);
        }
        self.keys
            .push(DeviceKeyPair::generate(key_id, now, valid_for));
        self.keys
            .last()
            .ok_or_else(|| SdkError::KeyFile("no key after rotation".into()))
    }

    /// Whether the current key should be rotated: it expires within `margin`.
    pub fn rotation_due(&self, margin: Duration, now: OffsetDateTime) -> bool {
        self.current().is_none_or(|k| k.expires_at - margin <= now)
    }

    /// Forgets keys past their retirement date. Returns how many.
    pub fn prune(&mut self, now: OffsetDateTime) -> usize {
        let before = self.keys.len();
        self.keys.retain(|k| k.retires_at.is_none_or(|r| r > now));
        before - self.keys.len()
    }

    /// The keys that open envelopes now: every key not past its retirement date.
    pub fn unwrappers(&self, now: OffsetDateTime) -> Result<Vec<HpkeUnwrapper>, SdkError> {
        self.keys
            .iter()
            .filter(|k| k.retires_at.is_none_or(|r| r > now))
            .map(|k| {
                Ok(HpkeUnwrapper {
                    key_id: k.key_id.clone(),
                    secret: k.secret()?,
                })
            })
            .collect()
    }

    /// Reads a key file.
    pub fn load(path: &Path) -> Result<Self, SdkError> {
        let text = std::fs::read(path)
            .map_err(|e| SdkError::KeyFile(format!("cannot read {}: {e}", path.display())))?;
        let ring: Keyring = serde_json::from_slice(&text).map_err(|e| {
            SdkError::KeyFile(format!("{} is not a device key file: {e}", path.display()))
        })?;
        if ring.v != KEYRING_VERSION {
            return Err(SdkError::KeyFile(format!(
                "{} is key file version {}; this build reads version {KEYRING_VERSION}",
                path.display(),
                ring.v
            )));
        }
        Ok(ring)
    }

    /// Writes the key file: mode 0600, through a temporary file renamed over the old one.
    pub fn save(&self, path: &Path) -> Result<(), SdkError> {
        let text = serde_json::to_vec_pretty(self).map_err(|e| SdkError::KeyFile(e.to_string()))?;
        write_private(path, &text)
    }
}

/// Writes `bytes` to `path` readable by its owner only (0600), atomically.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), SdkError> {
    let fail =
        |e: std::io::Error| SdkError::KeyFile(format!("cannot write {}: {e}", path.display()));
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| SdkError::KeyFile(format!("{} is not a file path", path.display())))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(fail)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(fail)?;
    }
    file.write_all(bytes).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}
