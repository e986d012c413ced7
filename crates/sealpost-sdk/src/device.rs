//! The recipient's flow (a device app): keep the device's keys ([`Keyring`]), publish and
//! rotate them, and open what arrives: fetch the sealed payload from the link the message
//! carried, check its digest, and open it bound to this device's tenant, label and the message
//! id the carrier delivered it under.
//!
//! A message's *device link* (`<gateway>/v1/d/<tenant>/<message_id>/<token>`, in RBM's
//! `sealpostPayload.link` and in fallback notices) needs no API key: [`fetch_by_link`] gets a
//! fresh presigned URL of the payload through it, and [`report_decryption_failed`] tells the
//! platform, through the same link, that the payload could not be opened. [`Device::receive`]
//! does all three.

use sha2::{Digest as _, Sha256};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use crate::envelope::{self, Binding, KeyUnwrapper, OpenError};
use crate::hpke::Hpke;
use crate::keyring::Keyring;
use crate::platform::{answer, https_client};
use crate::SdkError;
use sealpost_keys_client::api::PublishRequest;

/// A device: its keys and an HPKE context.
#[derive(Debug)]
pub struct Device {
    pub keyring: Keyring,
    hpke: Hpke,
}

impl Device {
    pub fn new(keyring: Keyring) -> Self {
        Self {
            keyring,
            hpke: Hpke::default(),
        }
    }

    /// The `publish` request for the device's current key (without an enrollment statement;
    /// add one where the tenant requires it).
    pub fn publish_request(&self) -> Result<PublishRequest, SdkError> {
        let key = self.keyring.current().ok_or_else(|| {
            SdkError::KeyFile("the device has no current key; rotate first".into())
        })?;
        Ok(PublishRequest {
            recipient_label: self.keyring.recipient_label.clone(),
            device_id: self.keyring.device_id.clone(),
            key_id: key.key_id.clone(),
            kem_id: sealpost_keyformat::KEM_X25519_HKDF_SHA256,
            public_key: key.public_key.clone(),
            expires_at: key.expires_at,
            enrollment: None,
        })
    }

    /// Rotates the device key (see [`Keyring::rotate`]) and returns the `publish` request of
    /// the new one.
    pub fn rotate(
        &mut self,
        key_id: &str,
        valid_for: Duration,
        retire_after: Duration,
        now: OffsetDateTime,
    ) -> Result<PublishRequest, SdkError> {
        self.keyring.rotate(key_id, valid_for, retire_after, now)?;
        self.publish_request()
    }

    /// What a message delivered as `message_id` to this device must be bound to.
    pub fn binding(&self, message_id: &str) -> Binding {
        Binding {
            tenant: self.keyring.tenant.clone(),
            message_id: message_id.to_owned(),
            recipient_label: self.keyring.recipient_label.clone(),
        }
    }

    /// Opens an envelope delivered as message `message_id`.
    pub fn open(
        &self,
        sealed: &[u8],
        message_id: &str,
        now: OffsetDateTime,
    ) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        let binding = self.binding(message_id);
        let keys = self
            .keyring
            .unwrappers(now)
            .map_err(|_| OpenError::NotForThisDevice)?;
        let keys: Vec<&dyn KeyUnwrapper> = keys.iter().map(|k| k as &dyn KeyUnwrapper).collect();
        envelope::open(&self.hpke, sealed, &binding, &keys)
    }

    /// Opens a rendered [`crate::template::Content`] and merges its sealed placeholders: the
    /// text the recipient reads.
    pub fn open_content(
        &self,
        sealed: &[u8],
        message_id: &str,
        now: OffsetDateTime,
    ) -> Result<String, OpenError> {
        let content = crate::template::Content::from_bytes(&self.open(sealed, message_id, now)?)?;
        let keys = self
            .keyring
            .unwrappers(now)
            .map_err(|_| OpenError::NotForThisDevice)?;
        let keys: Vec<&dyn KeyUnwrapper> = keys.iter().map(|k| k as &dyn KeyUnwrapper).collect();
        content.merge(&self.hpke, &self.binding(message_id), &keys)
    }

    /// Opens after checking the payload's SHA-256 against the one the message carried.
    pub fn open_checked(
        &self,
        sealed: &[u8],
        sha256_hex: &str,
        message_id: &str,
        now: OffsetDateTime,
    ) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        if hex::encode(Sha256::digest(sealed)) != sha256_hex {
            return Err(OpenError::DigestMismatch);
        }
        self.open(sealed, message_id, now)
    }
}

/// A payload fetched through its device link, not opened yet.
#[derive(Debug, Clone)]
pub struct LinkedPayload {
    pub message_id: String,
    pub sealed: Vec<u8>,
    /// The SHA-256 (hex) the platform recorded at send; check it with [`Device::open_checked`].
    pub sha256: String,
    /// When the message, and the link with it, expires.
    pub expires_at: OffsetDateTime,
}

/// The gateway's answer to a device link (`schemas/commands/device_payload.v1.json`).
#[derive(serde::Deserialize)]
struct DevicePayload {
    message_id: String,
    payload_url: String,
    sha256: String,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
}

/// The answer to a decryption report (`schemas/commands/decryption_report_reply.v1.json`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ReportReply {
    pub message_id: String,
    /// False when the same report was recorded before.
    pub recorded: bool,
    pub decryption_failures: u32,
}

fn parse_link(link: &str) -> Result<sealpost_keyformat::device_link::DeviceLink, SdkError> {
    sealpost_keyformat::device_link::DeviceLink::parse(link)
        .map_err(|e| SdkError::Invalid(e.to_string()))
}

/// Fetches a message's sealed payload through its device link: the link answers with a fresh
/// presigned URL (a few minutes long, never past the message's expiry), which is then fetched.
/// An expired link answers `expired` (410), another message's token `unauthorized` (401).
pub async fn fetch_by_link(link: &str) -> Result<LinkedPayload, SdkError> {
    let url = parse_link(link)?.url();
    let client = https_client(std::time::Duration::from_secs(60))?;
    let body = answer(client.get(&url), "asking the device link").await?;
    let answer: DevicePayload = serde_json::from_slice(&body)
        .map_err(|_| SdkError::Transport("the device link's answer is not a payload".into()))?;
    let sealed = fetch(&answer.payload_url).await?;
    Ok(LinkedPayload {
        message_id: answer.message_id,
        sealed,
        sha256: answer.sha256,
        expires_at: answer.expires_at,
    })
}

/// Reports through a message's device link that this device could not open its payload. The
/// platform records a `decryption_failed` event with the error's reason code and `key_id` (the
/// device key that failed, never key material); the same report twice records it once.
pub async fn report_decryption_failed(
    link: &str,
    error: &OpenError,
    key_id: Option<&str>,
) -> Result<ReportReply, SdkError> {
    let url = format!("{}/decryption-failed", parse_link(link)?.url());
    let mut body = serde_json::json!({ "reason": error.code() });
    if let Some(k) = key_id {
        body["key_id"] = serde_json::Value::String(k.to_owned());
    }
    let client = https_client(std::time::Duration::from_secs(30))?;
    let request = client
        .post(&url)
        .header("content-type", "application/json")
        .body(body.to_string());
    let body = answer(request, "reporting a decryption failure").await?;
    serde_json::from_slice(&body)
        .map_err(|_| SdkError::Transport("the report's answer is not a report reply".into()))
}

impl Device {
    /// Fetches the payload through its device link and opens it. When it cannot be opened, the
    /// failure is reported through the link (naming the device's current key) and returned as
    /// [`SdkError::Unopened`], which says whether the report reached the platform.
    pub async fn receive(
        &self,
        link: &str,
        now: OffsetDateTime,
    ) -> Result<Zeroizing<Vec<u8>>, SdkError> {
        let payload = fetch_by_link(link).await?;
        match self.open_checked(&payload.sealed, &payload.sha256, &payload.message_id, now) {
            Ok(plain) => Ok(plain),
            Err(error) => {
                let key_id = self.keyring.current().map(|k| k.key_id.clone());
                let reported = report_decryption_failed(link, &error, key_id.as_deref())
                    .await
                    .is_ok();
                Err(SdkError::Unopened { error, reported })
            }
        }
    }
}

/// Fetches a sealed payload from a link (a presigned GET or a capability link): no API key.
pub async fn fetch(url: &str) -> Result<Vec<u8>, SdkError> {
    let client = https_client(std::time::Duration::from_secs(60))?;
    let response =
        client.get(url).send().await.map_err(|e| {
            SdkError::Transport(format!("fetching the payload: {}", e.without_url()))
        })?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(SdkError::Fetch { status });
    }
    Ok(response
        .bytes()
        .await
        .map_err(|e| SdkError::Transport(format!("fetching the payload: {}", e.without_url())))?
        .to_vec())
}
