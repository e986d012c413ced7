//! Enterprise escrow: for a tenant that chooses it, every envelope also carries the content key
//! sealed to the tenant's escrow key, so the tenant (not Sealpost) can open what it sent.
//!
//! The interface is [`KeyWrapper`] (the sender's side: it needs only the public half) and
//! [`KeyUnwrapper`] (the escrow's side). Here both are backed by a key pair in a file, HPKE
//! like a device; an HSM-backed escrow implements the same two traits with its own scheme id,
//! and envelopes need no change.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::envelope::{HpkeUnwrapper, HpkeWrapper, KeyUnwrapper, KeyWrapper};
use crate::hpke::{generate_key_pair, PublicKey, SecretKey};
use crate::keyring::write_private;
use crate::SdkError;

/// The escrow key's public half: what a sender is configured with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscrowPublicKey {
    pub v: u8,
    pub key_id: String,
    /// X25519, hex.
    pub public_key: String,
}

/// The escrow key pair (file mode 0600).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscrowKeyPair {
    pub v: u8,
    pub key_id: String,
    pub public_key: String,
    secret_key: String,
}

impl std::fmt::Debug for EscrowKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EscrowKeyPair")
            .field("key_id", &self.key_id)
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path, what: &str) -> Result<T, SdkError> {
    let text = std::fs::read(path)
        .map_err(|e| SdkError::KeyFile(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_slice(&text)
        .map_err(|e| SdkError::KeyFile(format!("{} is not {what}: {e}", path.display())))
}

impl EscrowPublicKey {
    pub fn load(path: &Path) -> Result<Self, SdkError> {
        read_json(path, "an escrow public key file")
    }

    /// The slot this key takes in every envelope.
    pub fn wrapper(&self) -> Result<Box<dyn KeyWrapper>, SdkError> {
        Ok(Box::new(HpkeWrapper {
            key_id: self.key_id.clone(),
            public_key: PublicKey::from_hex(&self.public_key).map_err(|_| {
                SdkError::KeyFile("the escrow public key is not 32 bytes of hex".into())
            })?,
        }))
    }
}

impl EscrowKeyPair {
    pub fn generate(key_id: &str) -> Self {
        let (secret, public) = generate_key_pair();
        Self {
            v: 1,
            key_id: key_id.to_owned(),
            public_key: public.to_hex(),
            secret_key: hex::encode(secret.expose()),
        }
    }

    pub fn load(path: &Path) -> Result<Self, SdkError> {
        read_json(path, "an escrow key pair file")
    }

    pub fn save(&self, path: &Path) -> Result<(), SdkError> {
        let text = serde_json::to_vec_pretty(self).map_err(|e| SdkError::KeyFile(e.to_string()))?;
        write_private(path, &text)
    }

    pub fn public(&self) -> EscrowPublicKey {
        EscrowPublicKey {
            v: 1,
            key_id: self.key_id.clone(),
            public_key: self.public_key.clone(),
        }
    }

    /// Opens escrow slots.
    pub fn unwrapper(&self) -> Result<Box<dyn KeyUnwrapper>, SdkError> {
        let secret = hex::decode(&self.secret_key)
            .ok()
            .and_then(|b| SecretKey::from_bytes(&b).ok())
            .ok_or_else(|| {
                SdkError::KeyFile("the escrow secret key is not 32 bytes of hex".into())
            })?;
        Ok(Box::new(HpkeUnwrapper {
            key_id: self.key_id.clone(),
            secret,
        }))
    }
}
