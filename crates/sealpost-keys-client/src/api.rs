//! The key API's bodies (`docs/keys.md`): what a client sends on
//! `sealpost.<cmd|qry>.<tenant>.keys.<op>` (or `POST /v1/keys/{op}`) and what it gets back. The
//! server parses the same types, so the two cannot drift apart.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{Proven, VerifyError};

/// akd's label of a recipient label (64 hex digits: the 32 bytes of `sealpost_keyformat`'s
/// label), or `None` when it is not one.
pub fn akd_label(label_hex: &str) -> Option<akd_core::AkdLabel> {
    let bytes = hex::decode(label_hex).ok()?;
    (bytes.len() == 32).then_some(akd_core::AkdLabel(bytes))
}

/// The key operations and whether each is a command (`cmd`) or a query (`qry`), in the order of
/// `docs/keys.md`.
pub const OPS: &[(&str, &str)] = &[
    ("publish", "cmd"),
    ("revoke", "cmd"),
    ("mark_bad", "cmd"),
    ("upload", "cmd"),
    ("claim", "cmd"),
    ("lookup", "qry"),
    ("history", "qry"),
    ("checkpoint", "qry"),
    ("consistency", "qry"),
    ("audit", "qry"),
    ("bad_keys", "qry"),
    ("info", "qry"),
];

/// The NATS subject of key operation `op` for `tenant`: `sealpost.<cmd|qry>.<tenant>.keys.<op>`,
/// or `None` for an operation the API does not have.
pub fn subject(tenant: &str, op: &str) -> Option<String> {
    OPS.iter()
        .find(|(name, _)| *name == op)
        .map(|(name, kind)| format!("sealpost.{kind}.{tenant}.keys.{name}"))
}

/// `publish`: a device's key (its first, or a rotation).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    pub recipient_label: String,
    pub device_id: String,
    pub key_id: String,
    #[serde(default = "default_kem")]
    pub kem_id: u16,
    /// Lowercase hex.
    pub public_key: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    #[serde(default)]
    pub enrollment: Option<EnrollmentRequest>,
}

fn default_kem() -> u16 {
    sealpost_keyformat::KEM_X25519_HKDF_SHA256
}

/// The MDM's statement for a key: the rest of it (tenant, device id, key fingerprint) is the
/// request's own.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentRequest {
    /// SHA-256 of the device's attestation document, hex.
    pub attestation_sha256: String,
    /// The MDM enrollment key's Ed25519 signature over the statement, base64.
    pub signature: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    pub recipient_label: String,
    pub key_id: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipientRequest {
    pub recipient_label: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointRequest {
    #[serde(default)]
    pub size: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeRequest {
    pub from: u64,
    pub to: u64,
}

/// What a command answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandAnswer {
    /// The events written (none: the same command was already done).
    pub events: Vec<String>,
    /// The key's fingerprint and safety number (publish).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety_number: Option<String>,
}

/// A proven answer on the wire (`lookup`, `history`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProvenAnswer<P> {
    /// The epoch the proof is against.
    pub epoch: u64,
    /// That epoch's log entry, as logged (`sealpost-keys/epoch/v1`).
    pub epoch_entry: String,
    /// The entry's RFC 9162 inclusion proof in the checkpoint's tree, base64 hashes.
    pub inclusion: Vec<String>,
    /// The signed checkpoint (a C2SP signed note).
    pub checkpoint: String,
    /// akd's proof (its serde form).
    pub proof: P,
}

impl<P> ProvenAnswer<P> {
    pub fn of(p: Proven<P>) -> Self {
        let b64 = base64::engine::general_purpose::STANDARD;
        Self {
            epoch: p.record.epoch,
            epoch_entry: String::from_utf8_lossy(&p.record.encode()).into_owned(),
            inclusion: p.inclusion.iter().map(|h| b64.encode(h.0)).collect(),
            checkpoint: String::from_utf8_lossy(p.checkpoint.as_bytes()).into_owned(),
            proof: p.proof,
        }
    }

    /// Back to a [`Proven`] a client verifies.
    pub fn into_proven(self) -> Result<Proven<P>, VerifyError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let inclusion = self
            .inclusion
            .iter()
            .map(|h| {
                b64.decode(h)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .map(sealpost_tlog::Hash)
                    .ok_or_else(|| {
                        VerifyError::BadEntry("an inclusion hash is not 32 bytes".into())
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Proven {
            proof: self.proof,
            record: crate::EpochRecord::decode(self.epoch_entry.as_bytes())?,
            inclusion,
            checkpoint: sealpost_tlog::SignedCheckpoint(self.checkpoint.into_bytes()),
        })
    }
}

/// The most KeyPackages one upload takes.
pub const MAX_KEY_PACKAGES: usize = 200;

/// `upload`: a device's MLS KeyPackages (TLS encoding, base64), and a last-resort one.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadRequest {
    pub recipient_label: String,
    pub device_id: String,
    #[serde(default)]
    pub key_packages: Vec<String>,
    #[serde(default)]
    pub last_resort: Option<String>,
}

/// `claim`: one KeyPackage of a recipient's device.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    pub recipient_label: String,
    pub device_id: String,
    /// Who claims it (the sender's id, for the audit trail): 1 to 128 of `[A-Za-z0-9._:-]`.
    pub claimant: String,
}

/// What a claim hands out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClaimAnswer {
    pub hash_ref: String,
    /// The last-resort package (handed out to anyone once the others are gone).
    pub last_resort: bool,
    /// The package (TLS encoding, base64).
    pub key_package: Option<String>,
}

/// `info`: what a client needs to verify this directory's answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InfoAnswer {
    pub directory: String,
    /// akd's VRF public key, hex.
    pub vrf_public_key: String,
    /// The checkpoint signer's verifier key (`<origin>+<key id>+<base64>`).
    pub checkpoint_key: String,
    /// The bad-key list's verifier key (the same key, origin `<origin>/bad`).
    pub bad_keys_checkpoint_key: String,
    pub epoch: u64,
}
