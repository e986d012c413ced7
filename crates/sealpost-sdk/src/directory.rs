//! The key directory as a sender or a device uses it: every lookup is verified before its keys
//! are used (akd's proof, the epoch's inclusion in the signed log, and the log's consistency
//! with the last checkpoint this client saw), and that checkpoint is persisted, so a split view
//! is caught across restarts too.

use std::path::PathBuf;

use akd_core::LookupProof;
use base64::Engine as _;
use sealpost_keys_client::api::{
    akd_label, ClaimAnswer, ClaimRequest, CommandAnswer, InfoAnswer, ProvenAnswer, PublishRequest,
    RangeRequest, RecipientRequest, UploadRequest,
};
use sealpost_keys_client::{akd_core, verify_lookup, ClientState, DeviceKey, DirectoryEntry};
use sealpost_tlog::{CheckpointVerifier, Hash};
use serde::Deserialize;
use time::OffsetDateTime;
use tokio::sync::Mutex;

use crate::keyring::write_private;
use crate::platform::Platform;
use crate::SdkError;

/// What a client trusts a directory by: its name, VRF public key and checkpoint key, pinned
/// out of band (or on first use from `info`, then pinned).
#[derive(Debug, Clone)]
pub struct Trust {
    pub directory: String,
    pub vrf_public_key: Vec<u8>,
    pub checkpoint_key: CheckpointVerifier,
}

impl Trust {
    pub fn new(
        directory: &str,
        vrf_public_key_hex: &str,
        checkpoint_key: &str,
    ) -> Result<Self, SdkError> {
        Ok(Self {
            directory: directory.to_owned(),
            vrf_public_key: hex::decode(vrf_public_key_hex)
                .map_err(|_| SdkError::Refused("the VRF public key is not hex".into()))?,
            checkpoint_key: CheckpointVerifier::new(checkpoint_key)
                .map_err(|e| SdkError::Refused(format!("the checkpoint key: {e}")))?,
        })
    }

    pub fn of(info: &InfoAnswer) -> Result<Self, SdkError> {
        Self::new(&info.directory, &info.vrf_public_key, &info.checkpoint_key)
    }
}

/// A recipient's keys from a verified lookup. Only [`KeyDirectory`] makes one, so a sender
/// cannot seal to keys that were not verified.
#[derive(Debug, Clone)]
pub struct VerifiedKeys {
    recipient_label: String,
    epoch: u64,
    entry: DirectoryEntry,
}

impl VerifiedKeys {
    pub fn recipient_label(&self) -> &str {
        &self.recipient_label
    }

    /// The epoch the lookup was proven at.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Every listed key (active and retiring).
    pub fn entry(&self) -> &DirectoryEntry {
        &self.entry
    }

    /// The keys to seal to now: active, not expired, and of the suite this SDK seals with.
    pub fn sealable(&self, now: OffsetDateTime) -> Vec<&DeviceKey> {
        self.entry
            .sealable(now)
            .filter(|k| k.kem_id == sealpost_keyformat::KEM_X25519_HKDF_SHA256)
            .collect()
    }
}

struct Seen {
    state: ClientState,
}

/// One tenant's key directory, with the client's memory of it.
pub struct KeyDirectory {
    platform: Platform,
    trust: Trust,
    seen: Mutex<Seen>,
    /// Where the last verified checkpoint (a signed note) is kept.
    state_path: Option<PathBuf>,
}

impl std::fmt::Debug for KeyDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyDirectory")
            .field("directory", &self.trust.directory)
            .field("state_path", &self.state_path)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct ConsistencyAnswer {
    proof: Vec<String>,
}

impl KeyDirectory {
    /// Opens the client's view of a directory. With `state_path`, the last checkpoint seen is
    /// read from it (and written back after each lookup that moves it).
    pub fn open(
        platform: Platform,
        trust: Trust,
        state_path: Option<PathBuf>,
    ) -> Result<Self, SdkError> {
        let mut state = ClientState::default();
        if let Some(path) = &state_path {
            match std::fs::read(path) {
                Ok(text) => {
                    state.last = Some(trust.checkpoint_key.open(&text).map_err(|e| {
                        SdkError::Refused(format!(
                            "{} does not hold a checkpoint of this directory: {e}",
                            path.display()
                        ))
                    })?);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(SdkError::KeyFile(format!(
                        "cannot read {}: {e}",
                        path.display()
                    )))
                }
            }
        }
        Ok(Self {
            platform,
            trust,
            seen: Mutex::new(Seen { state }),
            state_path,
        })
    }

    /// Fetches the directory's `info` (to pin its keys on first use).
    pub async fn info(platform: &Platform) -> Result<InfoAnswer, SdkError> {
        let bytes = platform.keys("info", &serde_json::json!({})).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| SdkError::Transport(format!("the info answer: {e}")))
    }

    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    /// The size of the last checkpoint this client verified.
    pub async fn last_seen_size(&self) -> Option<u64> {
        self.seen.lock().await.state.last.as_ref().map(|c| c.size)
    }

    /// Looks a recipient up and verifies the answer.
    pub async fn lookup(&self, recipient_label: &str) -> Result<VerifiedKeys, SdkError> {
        let answer = self
            .platform
            .keys(
                "lookup",
                &RecipientRequest {
                    recipient_label: recipient_label.to_owned(),
                },
            )
            .await
            .map_err(|e| match e {
                SdkError::Api { code, .. } if code == "not_found" => SdkError::Refused(
                    "the recipient has no keys in the directory: it must publish one before anything can be sealed to it".into(),
                ),
                other => other,
            })?;
        self.verify_lookup_answer(recipient_label, &answer).await
    }

    /// Verifies a lookup answer (the bytes the key API returned) for `recipient_label`.
    pub async fn verify_lookup_answer(
        &self,
        recipient_label: &str,
        answer: &[u8],
    ) -> Result<VerifiedKeys, SdkError> {
        let refused = |what: String| SdkError::Refused(what);
        let label = akd_label(recipient_label)
            .ok_or_else(|| refused("the recipient label is not 64 hex digits".into()))?;
        let answer: ProvenAnswer<LookupProof> = serde_json::from_slice(answer)
            .map_err(|e| refused(format!("not a lookup answer: {e}")))?;
        let proven = answer.into_proven().map_err(|e| refused(e.to_string()))?;
        let size = self
            .trust
            .checkpoint_key
            .open(proven.checkpoint.as_bytes())
            .map_err(|e| refused(format!("the checkpoint: {e}")))?
            .size;
        let mut seen = self.seen.lock().await;
        let consistency = match &seen.state.last {
            Some(last) if last.size < size => self.consistency(last.size, size).await?,
            _ => Vec::new(),
        };
        let before = seen.state.last.as_ref().map(|c| c.size);
        let result = verify_lookup(
            &self.trust.vrf_public_key,
            &self.trust.checkpoint_key,
            &self.trust.directory,
            label,
            &proven,
            &consistency,
            &mut seen.state,
        )
        .map_err(|e| refused(e.to_string()))?;
        if before != Some(size) {
            if let Some(path) = &self.state_path {
                write_private(path, proven.checkpoint.as_bytes())?;
            }
        }
        let entry = DirectoryEntry::from_value(&result.value)
            .map_err(|e| refused(format!("the proven value is not a directory entry: {e}")))?;
        Ok(VerifiedKeys {
            recipient_label: recipient_label.to_owned(),
            epoch: result.epoch,
            entry,
        })
    }

    async fn consistency(&self, from: u64, to: u64) -> Result<Vec<Hash>, SdkError> {
        let bytes = self
            .platform
            .keys("consistency", &RangeRequest { from, to })
            .await?;
        let answer: ConsistencyAnswer = serde_json::from_slice(&bytes)
            .map_err(|e| SdkError::Refused(format!("not a consistency answer: {e}")))?;
        let b64 = base64::engine::general_purpose::STANDARD;
        answer
            .proof
            .iter()
            .map(|h| {
                b64.decode(h)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .map(Hash)
                    .ok_or_else(|| SdkError::Refused("a consistency hash is not 32 bytes".into()))
            })
            .collect()
    }

    /// Publishes (or rotates) a device key.
    pub async fn publish(&self, request: &PublishRequest) -> Result<CommandAnswer, SdkError> {
        let bytes = self.platform.keys("publish", request).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| SdkError::Transport(format!("the publish answer: {e}")))
    }

    /// Uploads a device's MLS KeyPackages.
    pub async fn upload(&self, request: &UploadRequest) -> Result<CommandAnswer, SdkError> {
        let bytes = self.platform.keys("upload", request).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| SdkError::Transport(format!("the upload answer: {e}")))
    }

    /// Claims one KeyPackage of a device.
    pub async fn claim(&self, request: &ClaimRequest) -> Result<ClaimAnswer, SdkError> {
        let bytes = self.platform.keys("claim", request).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| SdkError::Transport(format!("the claim answer: {e}")))
    }
}
