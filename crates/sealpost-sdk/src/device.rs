//! The recipient's flow (a device app): keep the device's keys ([`Keyring`]), publish and
//! rotate them, and open what arrives: fetch the sealed payload from the link the message
//! carried, check its digest, and open it bound to this device's tenant, label and the message
//! id the carrier delivered it under.

use sha2::{Digest as _, Sha256};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use crate::envelope::{self, Binding, KeyUnwrapper, OpenError};
use crate::hpke::Hpke;
use crate::keyring::Keyring;
use crate::platform::https_client;
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
