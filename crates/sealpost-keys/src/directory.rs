//! A tenant's directory: akd with Sealpost's configuration, on [`PgAkdStorage`].

use std::sync::Arc;

use akd::append_only_zks::AzksParallelismConfig;
use akd::ecvrf::{VRFKeyStorage, VRFPublicKey, VrfError};
use akd::errors::AkdError;
use akd::storage::StorageManager;
use akd::{
    AkdLabel, AkdValue, AppendOnlyProof, EpochHash, HistoryParams, HistoryProof, LookupProof,
};

use crate::PgAkdStorage;

pub use sealpost_keys_client::{Config, SealpostDomain, DOMAIN_LABEL};

/// The directory's VRF private key (32 bytes, an Ed25519 seed as akd takes it). Secret: its
/// `Debug` shows nothing of it.
#[derive(Clone)]
pub struct VrfSecret(Arc<[u8; 32]>);

impl std::fmt::Debug for VrfSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VrfSecret(..)")
    }
}

impl VrfSecret {
    pub fn new(seed: [u8; 32]) -> Self {
        Self(Arc::new(seed))
    }
}

#[async_trait::async_trait]
impl VRFKeyStorage for VrfSecret {
    async fn retrieve(&self) -> Result<Vec<u8>, VrfError> {
        Ok(self.0.to_vec())
    }
}

/// One tenant's auditable key directory.
#[derive(Clone)]
pub struct Directory {
    akd: akd::directory::Directory<Config, PgAkdStorage, VrfSecret>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory").finish_non_exhaustive()
    }
}

impl Directory {
    /// Opens the directory in `storage`, creating its empty tree (epoch 0) the first time.
    pub async fn open(storage: PgAkdStorage, vrf: VrfSecret) -> Result<Self, AkdError> {
        let akd = akd::directory::Directory::new(
            StorageManager::new_no_cache(storage),
            vrf,
            AzksParallelismConfig::default(),
        )
        .await?;
        Ok(Self { akd })
    }

    /// Opens the directory with akd's node cache in front of Postgres (`limit_bytes` of tree
    /// nodes, each kept up to `item_lifetime`). For the directory's one writer, whose own
    /// commits keep the cache current, and for readers that run
    /// [`Directory::follow_changes`].
    pub async fn open_cached(
        storage: PgAkdStorage,
        vrf: VrfSecret,
        limit_bytes: usize,
        item_lifetime: std::time::Duration,
    ) -> Result<Self, AkdError> {
        let akd = akd::directory::Directory::new(
            StorageManager::new(storage, Some(item_lifetime), Some(limit_bytes), None),
            vrf,
            AzksParallelismConfig::default(),
        )
        .await?;
        Ok(Self { akd })
    }

    /// For a reader with a node cache ([`Directory::open_cached`]) while another process
    /// publishes: polls the stored epoch every `period` and flushes the cache when it moved
    /// (akd's `poll_for_azks_changes`; between a commit and the next poll, akd answers at the
    /// epoch before, which its nodes keep). Runs until the task is dropped or storage fails.
    pub async fn follow_changes(&self, period: std::time::Duration) -> Result<(), AkdError> {
        self.akd.poll_for_azks_changes(period, None).await
    }

    /// Publishes `updates` (label, new value) as the next epoch; returns it and its root.
    pub async fn publish(&self, updates: Vec<(AkdLabel, AkdValue)>) -> Result<EpochHash, AkdError> {
        self.akd.publish(updates).await
    }

    /// The label's current value with its lookup proof, at the latest epoch.
    pub async fn lookup(&self, label: AkdLabel) -> Result<(LookupProof, EpochHash), AkdError> {
        self.akd.lookup(label).await
    }

    /// Every value the label had, with the proof of that history, at the latest epoch.
    pub async fn history(&self, label: &AkdLabel) -> Result<(HistoryProof, EpochHash), AkdError> {
        self.akd.key_history(label, HistoryParams::Complete).await
    }

    /// The append-only proof from epoch `from` to epoch `to`.
    pub async fn audit(&self, from: u64, to: u64) -> Result<AppendOnlyProof, AkdError> {
        self.akd.audit(from, to).await
    }

    /// The latest epoch and its root.
    pub async fn epoch(&self) -> Result<EpochHash, AkdError> {
        self.akd.get_epoch_hash().await
    }

    /// The VRF public key clients verify lookups with.
    pub async fn vrf_public_key(&self) -> Result<VRFPublicKey, AkdError> {
        self.akd.get_public_key().await
    }
}
