//! # sealpost-keys-domain
//!
//! The `RecipientKeys` aggregate: what may happen to one recipient's device keys in a tenant's
//! key directory. One aggregate per (tenant, [`RecipientLabel`]); the label is a keyed hash, so
//! nothing here knows a phone number.
//!
//! **Owns:** the commands ([`KeysCommand`]), the events ([`KeysEvent`], one wire name each in
//! [`KeyEventType`], schemas in `schemas/keys/`), the rules ([`RecipientKeys::decide`]) and the
//! errors ([`KeysError`]), each with a code for the API.
//!
//! **Must not:** do IO, read a clock or draw randomness (commands carry their instant), parse MLS
//! (KeyPackages arrive validated by the caller, as their `hash_ref`s), or hold private keys:
//! only public keys and their fingerprints.
//!
//! ## Rules
//!
//! | command | state | result |
//! |---|---|---|
//! | publish | key id known, same public key | — (a resend) |
//! | publish | key id known, other public key | `key_id_reused` |
//! | publish | KEM other than X25519 (0x0020) / key not 32 bytes | `unsupported_kem` / `bad_public_key` |
//! | publish | `expires_at` not after the command's instant | `already_expired` |
//! | publish | the key's fingerprint is on the bad-key list | `key_marked_bad` |
//! | publish | the tenant requires enrollment, no statement / one that does not verify | `enrollment_required` / `enrollment_invalid` |
//! | publish | the device has no active key | `key_published` |
//! | publish | the device has an active key | `key_rotated` (the old key retires at `at + retire_after`: messages sealed to it still open until then) |
//! | revoke | unknown key / revoked key | `unknown_key` / — |
//! | revoke | active or retiring key | `key_revoked` |
//! | upload KeyPackages | device without an active key | `unknown_device` |
//! | upload KeyPackages | nothing new (every hash_ref known, same last resort) | — |
//! | upload KeyPackages | otherwise | `key_packages_uploaded` (the new ones only) |
//! | claim KeyPackage | unknown device | `unknown_device` |
//! | claim KeyPackage | an unclaimed package | `key_package_claimed` (the oldest; never handed out again) |
//! | claim KeyPackage | none unclaimed, a last-resort package | `key_package_claimed` with `last_resort: true` (kept) |
//! | claim KeyPackage | none at all | `no_key_package` |

use std::collections::BTreeMap;
use std::time::Duration;

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use sealpost_domain::wire_enum;
use sealpost_keyformat::{fingerprint, EnrollmentStatement, KEM_X25519_HKDF_SHA256};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub use sealpost_keyformat::RecipientLabel;

wire_enum! {
    /// Every key event type, as stored (`schemas/keys/<name>.v1.json`).
    pub enum KeyEventType: "key event type" {
        KeyPublished => "key_published",
        KeyRotated => "key_rotated",
        KeyRevoked => "key_revoked",
        KeyPackagesUploaded => "key_packages_uploaded",
        KeyPackageClaimed => "key_package_claimed",
    }
}

wire_enum! {
    /// Why a key was revoked.
    pub enum RevokeReason: "revoke reason" {
        /// The device was lost or stolen.
        Compromised => "compromised",
        /// The device left the enterprise or was wiped.
        Decommissioned => "decommissioned",
        /// The key was marked bad (on a known-bad list).
        MarkedBad => "marked_bad",
        /// An administrator's decision.
        Administrative => "administrative",
    }
}

/// A device's key as published: its public half only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedKey {
    pub device_id: String,
    pub key_id: String,
    /// RFC 9180 KEM id (0x0020: DHKEM(X25519, HKDF-SHA256)).
    pub kem_id: u16,
    /// The public key, lowercase hex.
    pub public_key: String,
    /// [`fingerprint`] of the key, lowercase hex.
    pub fingerprint: String,
    /// Whether an enrollment statement of the tenant's MDM key vouched for it.
    pub enrolled: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// `key_rotated`: a device's new key, and when its previous one retires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRotated {
    pub key: PublishedKey,
    pub previous_key_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub previous_retires_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRevoked {
    pub key_id: String,
    pub reason: RevokeReason,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPackagesUploaded {
    pub device_id: String,
    /// The new packages' OpenMLS `hash_ref`s (hex), in the order they are handed out.
    pub hash_refs: Vec<String>,
    /// A new last-resort package, if this upload brought one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_resort: Option<String>,
    /// The new packages' bytes (TLS encoding, base64) by hash_ref, the last-resort one included.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub key_packages: BTreeMap<String, String>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPackageClaimed {
    pub device_id: String,
    pub hash_ref: String,
    /// The last-resort package: handed out, and kept.
    pub last_resort: bool,
    /// The package's bytes (TLS encoding, base64), as the claimant received them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_package: Option<String>,
    /// Who claimed it (the sender's tenant-scoped id), for the audit trail.
    pub claimant: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// What happened to a recipient's keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeysEvent {
    KeyPublished(PublishedKey),
    KeyRotated(KeyRotated),
    KeyRevoked(KeyRevoked),
    KeyPackagesUploaded(KeyPackagesUploaded),
    KeyPackageClaimed(KeyPackageClaimed),
}

impl KeysEvent {
    pub fn event_type(&self) -> KeyEventType {
        match self {
            Self::KeyPublished(_) => KeyEventType::KeyPublished,
            Self::KeyRotated(_) => KeyEventType::KeyRotated,
            Self::KeyRevoked(_) => KeyEventType::KeyRevoked,
            Self::KeyPackagesUploaded(_) => KeyEventType::KeyPackagesUploaded,
            Self::KeyPackageClaimed(_) => KeyEventType::KeyPackageClaimed,
        }
    }

    /// The stored body: the payload's JSON, without the variant tag (the type travels in the
    /// subject, as for message events).
    pub fn to_body(&self) -> serde_json::Result<Vec<u8>> {
        match self {
            Self::KeyPublished(e) => serde_json::to_vec(e),
            Self::KeyRotated(e) => serde_json::to_vec(e),
            Self::KeyRevoked(e) => serde_json::to_vec(e),
            Self::KeyPackagesUploaded(e) => serde_json::to_vec(e),
            Self::KeyPackageClaimed(e) => serde_json::to_vec(e),
        }
    }

    pub fn from_body(t: KeyEventType, body: &[u8]) -> serde_json::Result<Self> {
        Ok(match t {
            KeyEventType::KeyPublished => Self::KeyPublished(serde_json::from_slice(body)?),
            KeyEventType::KeyRotated => Self::KeyRotated(serde_json::from_slice(body)?),
            KeyEventType::KeyRevoked => Self::KeyRevoked(serde_json::from_slice(body)?),
            KeyEventType::KeyPackagesUploaded => {
                Self::KeyPackagesUploaded(serde_json::from_slice(body)?)
            }
            KeyEventType::KeyPackageClaimed => {
                Self::KeyPackageClaimed(serde_json::from_slice(body)?)
            }
        })
    }
}

/// Why a stored body could not be turned back into a [`KeysEvent`].
#[derive(Debug, thiserror::Error)]
pub enum KeysDecodeError {
    #[error(transparent)]
    UnknownType(#[from] sealpost_domain::UnknownName),
    #[error("key event '{event_type}' version '{version}' is unknown; this build reads version 1")]
    UnknownVersion {
        event_type: KeyEventType,
        version: String,
    },
    #[error("key event '{event_type}' body does not match its schema")]
    Body {
        event_type: KeyEventType,
        #[source]
        source: serde_json::Error,
    },
}

impl KeysEvent {
    /// Decodes a stored event from its type, its `Sealpost-Event-Version` and its body.
    pub fn decode(event_type: &str, version: &str, body: &[u8]) -> Result<Self, KeysDecodeError> {
        let event_type: KeyEventType = event_type.parse()?;
        if version != "1" {
            return Err(KeysDecodeError::UnknownVersion {
                event_type,
                version: version.chars().take(16).collect(),
            });
        }
        Self::from_body(event_type, body)
            .map_err(|source| KeysDecodeError::Body { event_type, source })
    }
}

impl DomainEvent for KeysEvent {
    fn event_type(&self) -> String {
        KeysEvent::event_type(self).as_str().to_owned()
    }
    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// An enrollment statement with the MDM key's signature over it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedEnrollment {
    pub statement: EnrollmentStatement,
    pub signature: [u8; 64],
}

/// Publish a device key (a first key, or a rotation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishKey {
    pub tenant: String,
    pub device_id: String,
    pub key_id: String,
    pub kem_id: u16,
    pub public_key: Vec<u8>,
    pub expires_at: OffsetDateTime,
    pub enrollment: Option<SignedEnrollment>,
    /// Whether the key's fingerprint is on the tenant's bad-key list (the caller looks it up).
    pub marked_bad: bool,
    pub at: OffsetDateTime,
}

/// What may be asked of a recipient's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeysCommand {
    Publish(Box<PublishKey>),
    Revoke {
        key_id: String,
        reason: RevokeReason,
        at: OffsetDateTime,
    },
    UploadKeyPackages {
        device_id: String,
        hash_refs: Vec<String>,
        last_resort: Option<String>,
        /// The packages' bytes by hash_ref (validated by the caller), if it has them.
        key_packages: BTreeMap<String, String>,
        at: OffsetDateTime,
    },
    ClaimKeyPackage {
        device_id: String,
        claimant: String,
        at: OffsetDateTime,
    },
}

/// The tenant's settings the rules need.
#[derive(Debug, Clone, Default)]
pub struct KeysPolicy {
    /// When set, every device key needs an enrollment statement signed by this key.
    pub enrollment_key: Option<ed25519_dalek::VerifyingKey>,
    /// How long a rotated-out key stays usable for opening what was sealed to it.
    pub retire_after: Duration,
}

/// A command refused; nothing is written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeysError {
    #[error("key id {0} is already published with another public key; use a new key id")]
    KeyIdReused(String),
    #[error("KEM 0x{0:04x} is not supported; publish an X25519 key (KEM 0x0020)")]
    UnsupportedKem(u16),
    #[error("an X25519 public key is 32 bytes; got {0}")]
    BadPublicKey(usize),
    #[error("the key expires before it is published; set expires_at in the future")]
    AlreadyExpired,
    #[error("this tenant requires an enrollment statement signed by its MDM enrollment key")]
    EnrollmentRequired,
    #[error("the enrollment statement is refused: {0}")]
    EnrollmentInvalid(String),
    #[error("no key {0} for this recipient")]
    UnknownKey(String),
    #[error("device {0} has no active key; publish one first")]
    UnknownDevice(String),
    #[error("no KeyPackage is left for device {0}, and it has no last-resort package")]
    NoKeyPackage(String),
    #[error("this key's fingerprint is on the bad-key list; generate a new key")]
    KeyMarkedBad,
}

impl KeysError {
    /// The API error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::KeyIdReused(_) => "key_id_reused",
            Self::UnsupportedKem(_) => "unsupported_kem",
            Self::BadPublicKey(_) => "bad_public_key",
            Self::AlreadyExpired => "already_expired",
            Self::EnrollmentRequired => "enrollment_required",
            Self::EnrollmentInvalid(_) => "enrollment_invalid",
            Self::UnknownKey(_) => "unknown_key",
            Self::UnknownDevice(_) => "unknown_device",
            Self::NoKeyPackage(_) => "no_key_package",
            Self::KeyMarkedBad => "key_marked_bad",
        }
    }
}

/// A key's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyState {
    pub key: PublishedKey,
    /// Set when rotated out: usable for opening until then.
    pub retires_at: Option<OffsetDateTime>,
    pub revoked: Option<RevokeReason>,
}

/// A device's KeyPackages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Packages {
    /// Not yet claimed, in upload order.
    pub unclaimed: Vec<String>,
    /// Claimed once; never handed out again.
    pub claimed: Vec<String>,
    pub last_resort: Option<String>,
    /// The bytes of the packages still to hand out (and of the last-resort one), by hash_ref.
    #[serde(default)]
    pub bytes: BTreeMap<String, String>,
}

/// One recipient's device keys and KeyPackages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientKeys {
    /// By key id.
    pub keys: BTreeMap<String, KeyState>,
    /// By device id.
    pub packages: BTreeMap<String, Packages>,
}

impl RecipientKeys {
    /// The device's active key: published, not rotated out, not revoked.
    pub fn active_key(&self, device_id: &str) -> Option<&KeyState> {
        self.keys
            .values()
            .find(|k| k.key.device_id == device_id && k.retires_at.is_none() && k.revoked.is_none())
    }

    /// What `command` writes, or why it is refused. Pure.
    pub fn decide(
        &self,
        command: KeysCommand,
        policy: &KeysPolicy,
    ) -> Result<Vec<KeysEvent>, KeysError> {
        match command {
            KeysCommand::Publish(p) => self.publish(*p, policy),
            KeysCommand::Revoke { key_id, reason, at } => match self.keys.get(&key_id) {
                None => Err(KeysError::UnknownKey(key_id)),
                Some(k) if k.revoked.is_some() => Ok(vec![]),
                Some(_) => Ok(vec![KeysEvent::KeyRevoked(KeyRevoked {
                    key_id,
                    reason,
                    at,
                })]),
            },
            KeysCommand::UploadKeyPackages {
                device_id,
                hash_refs,
                last_resort,
                key_packages,
                at,
            } => {
                if self.active_key(&device_id).is_none() {
                    return Err(KeysError::UnknownDevice(device_id));
                }
                let known = self.packages.get(&device_id).cloned().unwrap_or_default();
                let mut new: Vec<String> = Vec::new();
                for h in hash_refs {
                    let seen = known.unclaimed.contains(&h)
                        || known.claimed.contains(&h)
                        || known.last_resort.as_ref() == Some(&h)
                        || new.contains(&h);
                    if !seen {
                        new.push(h);
                    }
                }
                let last_resort = last_resort.filter(|l| known.last_resort.as_ref() != Some(l));
                if new.is_empty() && last_resort.is_none() {
                    return Ok(vec![]);
                }
                let key_packages = key_packages
                    .into_iter()
                    .filter(|(h, _)| new.contains(h) || last_resort.as_ref() == Some(h))
                    .collect();
                Ok(vec![KeysEvent::KeyPackagesUploaded(KeyPackagesUploaded {
                    device_id,
                    hash_refs: new,
                    last_resort,
                    key_packages,
                    at,
                })])
            }
            KeysCommand::ClaimKeyPackage {
                device_id,
                claimant,
                at,
            } => {
                let Some(p) = self
                    .packages
                    .get(&device_id)
                    .filter(|_| self.active_key(&device_id).is_some())
                else {
                    return Err(KeysError::UnknownDevice(device_id));
                };
                let (hash_ref, last_resort) = match (p.unclaimed.first(), &p.last_resort) {
                    (Some(h), _) => (h.clone(), false),
                    (None, Some(l)) => (l.clone(), true),
                    (None, None) => return Err(KeysError::NoKeyPackage(device_id)),
                };
                let key_package = p.bytes.get(&hash_ref).cloned();
                Ok(vec![KeysEvent::KeyPackageClaimed(KeyPackageClaimed {
                    device_id,
                    hash_ref,
                    last_resort,
                    key_package,
                    claimant,
                    at,
                })])
            }
        }
    }

    fn publish(&self, p: PublishKey, policy: &KeysPolicy) -> Result<Vec<KeysEvent>, KeysError> {
        let public_hex = hex::encode(&p.public_key);
        if let Some(existing) = self.keys.get(&p.key_id) {
            return if existing.key.public_key == public_hex && existing.key.kem_id == p.kem_id {
                Ok(vec![])
            } else {
                Err(KeysError::KeyIdReused(p.key_id))
            };
        }
        if p.kem_id != KEM_X25519_HKDF_SHA256 {
            return Err(KeysError::UnsupportedKem(p.kem_id));
        }
        if p.public_key.len() != 32 {
            return Err(KeysError::BadPublicKey(p.public_key.len()));
        }
        if p.expires_at <= p.at {
            return Err(KeysError::AlreadyExpired);
        }
        if p.marked_bad {
            return Err(KeysError::KeyMarkedBad);
        }
        let fp = fingerprint(p.kem_id, &p.public_key);
        let enrolled = match (&policy.enrollment_key, &p.enrollment) {
            (Some(_), None) => return Err(KeysError::EnrollmentRequired),
            (Some(mdm), Some(e)) => {
                if e.statement.device_id != p.device_id {
                    return Err(KeysError::EnrollmentInvalid(
                        "it names another device".into(),
                    ));
                }
                e.statement
                    .verify(&e.signature, mdm, &p.tenant, &fp)
                    .map_err(|err| KeysError::EnrollmentInvalid(err.to_string()))?;
                true
            }
            (None, _) => false,
        };
        let key = PublishedKey {
            device_id: p.device_id.clone(),
            key_id: p.key_id,
            kem_id: p.kem_id,
            public_key: public_hex,
            fingerprint: hex::encode(fp),
            enrolled,
            created_at: p.at,
            expires_at: p.expires_at,
        };
        Ok(vec![match self.active_key(&p.device_id) {
            None => KeysEvent::KeyPublished(key),
            Some(previous) => KeysEvent::KeyRotated(KeyRotated {
                key,
                previous_key_id: previous.key.key_id.clone(),
                previous_retires_at: p.at + policy.retire_after,
            }),
        }])
    }

    /// Applies an event (never fails: events are facts).
    pub fn apply_event(&mut self, event: KeysEvent) {
        match event {
            KeysEvent::KeyPublished(key) => {
                self.keys.insert(
                    key.key_id.clone(),
                    KeyState {
                        key,
                        retires_at: None,
                        revoked: None,
                    },
                );
            }
            KeysEvent::KeyRotated(r) => {
                if let Some(old) = self.keys.get_mut(&r.previous_key_id) {
                    old.retires_at = Some(r.previous_retires_at);
                }
                self.keys.insert(
                    r.key.key_id.clone(),
                    KeyState {
                        key: r.key,
                        retires_at: None,
                        revoked: None,
                    },
                );
            }
            KeysEvent::KeyRevoked(r) => {
                if let Some(k) = self.keys.get_mut(&r.key_id) {
                    k.revoked = Some(r.reason);
                }
            }
            KeysEvent::KeyPackagesUploaded(u) => {
                let p = self.packages.entry(u.device_id).or_default();
                p.unclaimed.extend(u.hash_refs);
                p.bytes.extend(u.key_packages);
                if u.last_resort.is_some() {
                    p.last_resort = u.last_resort;
                }
            }
            KeysEvent::KeyPackageClaimed(c) => {
                if !c.last_resort {
                    let p = self.packages.entry(c.device_id).or_default();
                    p.unclaimed.retain(|h| h != &c.hash_ref);
                    p.bytes.remove(&c.hash_ref);
                    p.claimed.push(c.hash_ref);
                }
            }
        }
    }
}

impl Aggregate for RecipientKeys {
    const TYPE: &'static str = "recipient_keys";
    type Command = KeysCommand;
    type Event = KeysEvent;
    type Error = KeysError;
    type Services = KeysPolicy;

    async fn handle(
        &mut self,
        command: Self::Command,
        policy: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command, policy)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.apply_event(event);
    }
}

#[cfg(test)]
mod tests;
