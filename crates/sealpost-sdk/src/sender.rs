//! The sender's flow (an enterprise backend): look the recipient up in the key directory and
//! verify the answer, seal to its active keys (and the tenant's escrow, if it has one), store
//! the envelope, and send the reference with `encryption_metadata` filled in.

use sealpost_domain::{MessageId, TenantId};
use sealpost_keyformat::{LabelKey, RecipientLabel};
use serde_json::json;
use time::OffsetDateTime;

use crate::directory::{KeyDirectory, VerifiedKeys};
use crate::envelope::{self, Binding, HpkeWrapper, KeyWrapper, CIPHER_NAME, HPKE_ENVELOPE_NAME};
use crate::hpke::{Hpke, PublicKey};
use crate::platform::StoredBlob;
use crate::SdkError;

/// A sealed payload, ready to upload.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub binding: Binding,
    /// The envelope's bytes (ciphertext only).
    pub envelope: Vec<u8>,
    /// The device key ids it is sealed to, in slot order (MLS: the devices' directory keys).
    pub key_ids: Vec<String>,
    /// `encryption_metadata.mls_version` and `.cipher` of the send.
    pub mls_version: &'static str,
    pub cipher: &'static str,
}

impl Sealed {
    /// An MLS payload ([`crate::mls`]) to send to the devices of `keys`.
    pub fn mls(
        binding: Binding,
        payload: Vec<u8>,
        keys: &VerifiedKeys,
        now: OffsetDateTime,
    ) -> Self {
        Sealed {
            binding,
            envelope: payload,
            key_ids: keys
                .sealable(now)
                .into_iter()
                .map(|k| k.key_id.clone())
                .collect(),
            mls_version: crate::mls::MLS_VERSION,
            cipher: crate::mls::MLS_CIPHER,
        }
    }
}

/// What to send besides the payload.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The recipient's phone number, E.164.
    pub recipient: String,
    pub idempotency_key: String,
    /// `transactional` or `promotional`.
    pub message_type: String,
    pub ttl_seconds: Option<u32>,
    pub correlation_id: Option<String>,
    /// Where a neutral notice goes if RCS cannot deliver: `(channel, notice template)`, e.g.
    /// `("sms", "secure_message_waiting")`. With device links enabled the notice carries the
    /// message's link, through which the app fetches and opens the payload.
    pub fallback: Option<(String, String)>,
}

/// What a send did.
#[derive(Debug, Clone)]
pub struct Sent {
    pub message_id: String,
    pub blob: StoredBlob,
    pub key_ids: Vec<String>,
    /// The platform's send reply.
    pub reply: serde_json::Value,
}

/// A tenant's sending side.
pub struct Sender {
    directory: KeyDirectory,
    label_key: LabelKey,
    escrow: Option<Box<dyn KeyWrapper>>,
    hpke: Hpke,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("directory", &self.directory)
            .field(
                "escrow",
                &self.escrow.as_ref().map(|e| e.key_id().to_owned()),
            )
            .finish_non_exhaustive()
    }
}

impl Sender {
    /// `label_key` is the tenant's recipient-label key (`[tenants.keys] label_key`); `escrow`,
    /// when the tenant escrows, takes a slot in every envelope.
    pub fn new(
        directory: KeyDirectory,
        label_key: LabelKey,
        escrow: Option<Box<dyn KeyWrapper>>,
    ) -> Self {
        Self {
            directory,
            label_key,
            escrow,
            hpke: Hpke::default(),
        }
    }

    pub fn directory(&self) -> &KeyDirectory {
        &self.directory
    }

    fn tenant(&self) -> &str {
        self.directory.platform().tenant()
    }

    /// The recipient's label under this tenant's label key.
    pub fn label_of(&self, recipient: &str) -> Result<String, SdkError> {
        RecipientLabel::of(&self.label_key, self.tenant(), recipient)
            .map(|l| l.to_hex())
            .map_err(|e| SdkError::Invalid(format!("the recipient: {e}")))
    }

    /// The message id the platform will give `idempotency_key` (what the envelope binds).
    pub fn message_id(&self, idempotency_key: &str) -> Result<String, SdkError> {
        let tenant = TenantId::new(self.tenant()).map_err(|e| SdkError::Invalid(e.to_string()))?;
        Ok(MessageId::derive(&tenant, idempotency_key)
            .as_str()
            .to_owned())
    }

    /// Looks the recipient up (verified) and seals to its active keys.
    pub async fn seal(
        &self,
        recipient: &str,
        idempotency_key: &str,
        plaintext: &[u8],
    ) -> Result<Sealed, SdkError> {
        let keys = self.directory.lookup(&self.label_of(recipient)?).await?;
        self.seal_to(&keys, idempotency_key, plaintext, OffsetDateTime::now_utc())
    }

    /// Seals to verified keys: every active, unexpired device key of the recipient.
    pub fn seal_to(
        &self,
        keys: &VerifiedKeys,
        idempotency_key: &str,
        plaintext: &[u8],
        now: OffsetDateTime,
    ) -> Result<Sealed, SdkError> {
        let devices: Vec<HpkeWrapper> = keys
            .sealable(now)
            .into_iter()
            .map(|k| {
                Ok(HpkeWrapper {
                    key_id: k.key_id.clone(),
                    public_key: PublicKey::from_hex(&k.public_key).map_err(|_| {
                        SdkError::Refused(format!("key {} is not an X25519 public key", k.key_id))
                    })?,
                })
            })
            .collect::<Result<_, SdkError>>()?;
        if devices.is_empty() {
            return Err(SdkError::Refused(
                "the recipient has no active, unexpired key in the directory: it must publish one before anything can be sealed to it".into(),
            ));
        }
        let binding = Binding {
            tenant: self.tenant().to_owned(),
            message_id: self.message_id(idempotency_key)?,
            recipient_label: keys.recipient_label().to_owned(),
        };
        let wrappers: Vec<&dyn KeyWrapper> = devices.iter().map(|d| d as &dyn KeyWrapper).collect();
        let envelope = envelope::seal(
            &self.hpke,
            &binding,
            &wrappers,
            self.escrow.as_deref(),
            plaintext,
        )?;
        Ok(Sealed {
            binding,
            envelope,
            key_ids: devices.into_iter().map(|d| d.key_id).collect(),
            mls_version: HPKE_ENVELOPE_NAME,
            cipher: CIPHER_NAME,
        })
    }

    /// The binding of a message to a recipient (what an envelope or MLS payload is bound to).
    pub fn binding(
        &self,
        recipient_label: &str,
        idempotency_key: &str,
    ) -> Result<Binding, SdkError> {
        Ok(Binding {
            tenant: self.tenant().to_owned(),
            message_id: self.message_id(idempotency_key)?,
            recipient_label: recipient_label.to_owned(),
        })
    }

    /// Claims one MLS KeyPackage of each device with a sealable key in `keys` (mode `mls`):
    /// base64 packages for [`crate::mls::Member::create_group`] or `add`.
    pub async fn claim_key_packages(
        &self,
        keys: &VerifiedKeys,
        claimant: &str,
    ) -> Result<Vec<String>, SdkError> {
        let mut devices: Vec<&str> = keys
            .sealable(OffsetDateTime::now_utc())
            .into_iter()
            .map(|k| k.device_id.as_str())
            .collect();
        devices.dedup();
        let mut out = Vec::with_capacity(devices.len());
        for device_id in devices {
            let claim = self
                .directory
                .claim(&sealpost_keys_client::api::ClaimRequest {
                    recipient_label: keys.recipient_label().to_owned(),
                    device_id: device_id.to_owned(),
                    claimant: claimant.to_owned(),
                })
                .await?;
            out.push(claim.key_package.ok_or_else(|| {
                SdkError::Refused(format!("device {device_id} has no KeyPackage to claim"))
            })?);
        }
        Ok(out)
    }

    /// Seals, stores and sends: the whole flow.
    pub async fn send(&self, outgoing: &Outgoing, plaintext: &[u8]) -> Result<Sent, SdkError> {
        let sealed = self
            .seal(&outgoing.recipient, &outgoing.idempotency_key, plaintext)
            .await?;
        self.send_sealed(outgoing, sealed).await
    }

    /// Stores a sealed payload and sends it.
    pub async fn send_sealed(&self, outgoing: &Outgoing, sealed: Sealed) -> Result<Sent, SdkError> {
        let platform = self.directory.platform();
        let blob = platform.upload(sealed.envelope).await?;
        let key_id = sealed
            .key_ids
            .first()
            .cloned()
            .ok_or_else(|| SdkError::Invalid("a sealed payload without a device key".into()))?;
        let mut metadata = json!({
            "tenant_id": self.tenant(),
            "message_type": outgoing.message_type,
        });
        if let Some(c) = &outgoing.correlation_id {
            metadata["correlation_id"] = json!(c);
        }
        let mut command = json!({
            "idempotency_key": outgoing.idempotency_key,
            "recipient": outgoing.recipient,
            "encrypted_payload_reference": blob.reference,
            "payload_sha256": blob.sha256,
            "encryption_metadata": {
                "mls_version": sealed.mls_version,
                "cipher": sealed.cipher,
                "key_id": key_id,
            },
            "metadata": metadata,
        });
        if let Some(ttl) = outgoing.ttl_seconds {
            command["ttl_seconds"] = json!(ttl);
        }
        if let Some((channel, notice_template)) = &outgoing.fallback {
            command["fallback"] = json!({
                "channel": channel,
                "notice_template": notice_template,
            });
        }
        let reply = platform.send(&command).await?;
        Ok(Sent {
            message_id: sealed.binding.message_id,
            blob,
            key_ids: sealed.key_ids,
            reply,
        })
    }
}
