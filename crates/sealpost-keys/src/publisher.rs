//! The epoch publisher: turns a directory's pending key events into epochs, one publisher per
//! directory at a time.
//!
//! - **Lease.** A publisher leads a directory while it holds the key `<tenant>` in the KV bucket
//!   [`LEASE_BUCKET`], whose entries expire after the lease TTL unless renewed. A killed leader
//!   stops renewing; another process creates the key once it has expired and takes over.
//! - **What an epoch holds.** Epoch `e` holds the key events that change a directory entry
//!   (`key_published`, `key_rotated`, `key_revoked`) with stream sequences in
//!   (`through(e - 1)`, `through(e)`]. The range is fixed in Postgres ([`EpochIntents`]) before
//!   the epoch is committed, so the publisher that commits it, whether the one that proposed it or
//!   the one that took over after a crash, publishes exactly those events.
//! - **Fences.** Even a leader that lost its lease without noticing (a long pause) cannot publish
//!   an epoch twice: the AKD storage commits epoch `e` only over epoch `e - 1`
//!   ([`crate::PgAkdStorage`]), and the epoch log appends entry `e - 1` only after entry `e - 2`
//!   (`Nats-Expected-Last-Subject-Sequence`).
//! - **Alerts.** Once an epoch is logged, each of its key changes is published on
//!   `sealpost.keys.<tenant>.changed` with the epoch that proves it (at least once: a takeover
//!   may repeat the alerts of the epoch it recovered; `event_seq` tells repeats apart).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use akd::{AkdLabel, AkdValue};
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::consumer::DeliverPolicy;
use futures::StreamExt;
use sealpost_domain::TenantId;
use sealpost_eventstore::names::{
    epoch_log_subject, key_change_subject, key_events_of_type, Stream, KEY_EVENTS_PREFIX,
};
use sealpost_eventstore::{JetStreamEventStore, StoreConfig};
use sealpost_keys_domain::{KeyEventType, KeysEvent, RecipientKeys};
use sealpost_tlog::{JetStreamLog, LogLocation, LogSigner};
use serde::Serialize;

use crate::{
    Directory, EpochError, EpochIntents, EpochRecord, PgAkdStorage, PublishedDirectory, VrfSecret,
};

/// Where each published epoch's signed checkpoint and append-only proof are kept for auditors
/// (the `sealpost` application wires in S3, with Object Lock where the bucket has it). Best
/// effort: both can be produced again from the directory (`sealpost keys audit --save`).
#[async_trait::async_trait]
pub trait EpochArchive: Send + Sync + std::fmt::Debug {
    /// Stores `body` under `name` (e.g. `keys/<tenant>/checkpoints/<epoch>.txt`).
    async fn put(&self, name: &str, body: Vec<u8>, content_type: &str) -> Result<(), String>;
}

/// The archive names of epoch `epoch` of `tenant`: its checkpoint, and the append-only proof
/// from the epoch before (none for epoch 1). Epochs are zero-padded to 20 digits, so names sort.
pub fn archive_names(tenant: &TenantId, epoch: u64) -> (String, Option<String>) {
    (
        format!("keys/{tenant}/checkpoints/{epoch:020}.txt"),
        (epoch >= 2).then(|| format!("keys/{tenant}/audit/{:020}-{epoch:020}.json", epoch - 1)),
    )
}

/// Where key-change alerts go besides NATS: the tenant's signed webhook (the `sealpost`
/// application wires it in). Called once per alert after its epoch is logged; it must not block
/// (deliver in the background).
pub trait AlertHook: Send + Sync + std::fmt::Debug {
    fn deliver(&self, tenant: &TenantId, alert: &[u8]);
}

/// The `Sealpost-Signature` header of a webhook body sent at `timestamp` (Unix seconds):
/// `t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<timestamp>." || body)>`.
pub fn webhook_signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    use hmac::Mac as _;
    // HMAC takes a key of any length.
    let mut mac = match hmac::Hmac::<sha2::Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// Checks a webhook's `Sealpost-Signature` header, as a receiver should: the HMAC (compared in
/// constant time) and a timestamp within `tolerance_secs` of `now`.
pub fn verify_webhook_signature(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> bool {
    use hmac::Mac as _;
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", x)) => t = x.parse::<i64>().ok(),
            Some(("v1", x)) => v1 = hex::decode(x).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    if (now - t).abs() > tolerance_secs {
        return false;
    }
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&v1).is_ok()
}

/// The KV bucket of publisher leases: key `<tenant>`, value the holder's id.
pub const LEASE_BUCKET: &str = "sealpost_keys_publishers";

/// The key event types that change a directory entry (and so go into epochs).
pub const ENTRY_CHANGES: [KeyEventType; 3] = [
    KeyEventType::KeyPublished,
    KeyEventType::KeyRotated,
    KeyEventType::KeyRevoked,
];

/// What a tenant's directory is made with: its name (the tenant id), VRF key and checkpoint
/// signing key.
#[derive(Debug, Clone)]
pub struct DirectoryKeys {
    pub tenant: TenantId,
    pub vrf: VrfSecret,
    pub signer: LogSigner,
}

/// How often and how large epochs are.
#[derive(Debug, Clone)]
pub struct PublisherSettings {
    /// Pending changes are published at least this often.
    pub interval: Duration,
    /// ... or as soon as this many are pending (and at most this many per epoch).
    pub max_changes: usize,
    /// A lease not renewed for this long expires (renewed every `interval`, at most every
    /// `lease_ttl / 3`).
    pub lease_ttl: Duration,
    /// akd's node cache of the leader's directory.
    pub cache_bytes: usize,
}

impl Default for PublisherSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(2),
            max_changes: 10_000,
            lease_ttl: Duration::from_secs(10),
            cache_bytes: 256 << 20,
        }
    }
}

/// What went wrong leading a directory.
#[derive(Debug, thiserror::Error)]
pub enum PublisherError {
    #[error(transparent)]
    Epoch(#[from] EpochError),
    #[error("NATS: {what}")]
    Nats {
        what: &'static str,
        #[source]
        source: async_nats::Error,
    },
    #[error("the key event store")]
    Store(#[from] sealpost_eventstore::StoreError),
    #[error("a key event on '{subject}' is not one of this directory's")]
    Foreign { subject: String },
    #[error("the rebuilt epoch {epoch} has another root than the logged one")]
    RootMismatch { epoch: u64 },
}

fn nats<E: Into<async_nats::Error>>(what: &'static str) -> impl FnOnce(E) -> PublisherError {
    move |e| PublisherError::Nats {
        what,
        source: e.into(),
    }
}

/// The key events' store (`SEALPOST_KEYS`, `sealpost.kevt`).
pub fn key_store(client: async_nats::Client) -> JetStreamEventStore<RecipientKeys> {
    JetStreamEventStore::new(
        client,
        StoreConfig {
            stream: Stream::Keys.as_str().into(),
            subject_prefix: KEY_EVENTS_PREFIX.into(),
            ..StoreConfig::default()
        },
    )
}

/// The aggregate id of a recipient in a tenant's directory: `<tenant>.<label hex>`.
pub fn aggregate_id(tenant: &TenantId, label_hex: &str) -> String {
    format!("{tenant}.{label_hex}")
}

pub use sealpost_keys_client::api::akd_label;

/// Where a tenant's epoch log lives.
pub fn epoch_log_location(tenant: &TenantId) -> LogLocation {
    LogLocation {
        stream: Stream::Keys.as_str().into(),
        subject: epoch_log_subject(tenant),
    }
}

/// A key-change alert (`sealpost.keys.<tenant>.changed`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct KeyChangeAlert {
    pub tenant: String,
    pub recipient_label: String,
    /// `key_published` (a new device), `key_rotated` or `key_revoked`.
    pub change: String,
    pub key_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The epoch whose lookup and history proofs show the change.
    pub epoch: u64,
    /// The key event's stream sequence: repeats of an alert carry the same one.
    pub event_seq: u64,
}

impl KeyChangeAlert {
    fn of(tenant: &TenantId, label: &str, event: &KeysEvent, epoch: u64, seq: u64) -> Self {
        let mut alert = KeyChangeAlert {
            tenant: tenant.to_string(),
            recipient_label: label.to_owned(),
            change: event.event_type().as_str().to_owned(),
            key_id: String::new(),
            device_id: None,
            fingerprint: None,
            previous_key_id: None,
            reason: None,
            epoch,
            event_seq: seq,
        };
        match event {
            KeysEvent::KeyPublished(k) => {
                alert.key_id.clone_from(&k.key_id);
                alert.device_id = Some(k.device_id.clone());
                alert.fingerprint = Some(k.fingerprint.clone());
            }
            KeysEvent::KeyRotated(r) => {
                alert.key_id.clone_from(&r.key.key_id);
                alert.device_id = Some(r.key.device_id.clone());
                alert.fingerprint = Some(r.key.fingerprint.clone());
                alert.previous_key_id = Some(r.previous_key_id.clone());
            }
            KeysEvent::KeyRevoked(r) => {
                alert.key_id.clone_from(&r.key_id);
                alert.reason = Some(r.reason.as_str().to_owned());
            }
            KeysEvent::KeyPackagesUploaded(_) | KeysEvent::KeyPackageClaimed(_) => {}
        }
        alert
    }
}

/// One entry-changing key event read from the stream.
#[derive(Debug, Clone)]
struct Change {
    seq: u64,
    label: String,
    event: KeysEvent,
}

/// Parses `sealpost.kevt.<tenant>.<label>.<type>` of `tenant`.
fn change_of(
    tenant: &TenantId,
    subject: &str,
    seq: u64,
    version: &str,
    body: &[u8],
) -> Result<Change, PublisherError> {
    let foreign = || PublisherError::Foreign {
        subject: subject.chars().take(160).collect(),
    };
    let rest = subject
        .strip_prefix(KEY_EVENTS_PREFIX)
        .and_then(|r| r.strip_prefix('.'))
        .and_then(|r| r.strip_prefix(tenant.as_str()))
        .and_then(|r| r.strip_prefix('.'))
        .ok_or_else(foreign)?;
    let (label, ty) = rest.split_once('.').ok_or_else(foreign)?;
    let event = KeysEvent::decode(ty, version, body).map_err(|_| foreign())?;
    Ok(Change {
        seq,
        label: label.to_owned(),
        event,
    })
}

/// A key event of `tenant` as a consumer delivered it.
fn change_from(
    tenant: &TenantId,
    msg: &async_nats::jetstream::Message,
) -> Result<Change, PublisherError> {
    let seq = msg
        .info()
        .map_err(nats("a key event's metadata"))?
        .stream_sequence;
    let version = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(sealpost_eventstore::store::HDR_EVENT_VERSION))
        .map_or("1", |v| v.as_str());
    change_of(tenant, &msg.subject, seq, version, &msg.payload)
}

/// Leads directories: holds their leases and publishes their epochs.
#[derive(Debug, Clone)]
pub struct Publisher {
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    pool: sqlx::PgPool,
    settings: PublisherSettings,
    /// This process's id in the lease.
    holder: String,
    archive: Option<std::sync::Arc<dyn EpochArchive>>,
    alerts: Option<std::sync::Arc<dyn AlertHook>>,
}

/// A held lease.
struct Lease {
    kv: async_nats::jetstream::kv::Store,
    key: String,
    holder: String,
    revision: u64,
}

impl Lease {
    async fn renew(&mut self) -> bool {
        match self
            .kv
            .update(&self.key, self.holder.clone().into(), self.revision)
            .await
        {
            Ok(revision) => {
                self.revision = revision;
                true
            }
            Err(e) => {
                tracing::warn!(directory = %self.key, error = %e, "lost the publisher lease");
                false
            }
        }
    }
}

impl Publisher {
    pub fn new(
        client: async_nats::Client,
        pool: sqlx::PgPool,
        settings: PublisherSettings,
    ) -> Self {
        let js = async_nats::jetstream::new(client.clone());
        Self {
            client,
            js,
            pool,
            settings,
            holder: format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()),
            archive: None,
            alerts: None,
        }
    }

    /// Also hands every alert to `hook` (the tenant's webhook).
    pub fn with_alert_hook(mut self, hook: std::sync::Arc<dyn AlertHook>) -> Self {
        self.alerts = Some(hook);
        self
    }

    /// Archives every epoch this publisher publishes.
    pub fn with_archive(mut self, archive: std::sync::Arc<dyn EpochArchive>) -> Self {
        self.archive = Some(archive);
        self
    }

    /// Stores epoch `epoch`'s checkpoint and append-only proof in the archive.
    async fn archive_epoch(&self, tenant: &TenantId, published: &PublishedDirectory, epoch: u64) {
        let Some(archive) = &self.archive else { return };
        let (checkpoint_name, audit_name) = archive_names(tenant, epoch);
        let result = async {
            let cp = published
                .checkpoint(Some(epoch))
                .map_err(|e| e.to_string())?;
            archive
                .put(
                    &checkpoint_name,
                    cp.as_bytes().to_vec(),
                    "text/plain; charset=utf-8",
                )
                .await?;
            if let Some(name) = audit_name {
                let answer = crate::service::audit_answer(published, epoch - 1, epoch, epoch)
                    .await
                    .map_err(|e| e.to_string())?;
                let body = serde_json::to_vec(&answer).map_err(|e| e.to_string())?;
                archive.put(&name, body, "application/json").await?;
            }
            Ok::<(), String>(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(directory = %tenant, epoch, error = %e, "archiving an epoch failed; `sealpost keys audit --save` can produce it again");
        }
    }

    async fn lease_bucket(&self) -> Result<async_nats::jetstream::kv::Store, PublisherError> {
        if let Ok(kv) = self.js.get_key_value(LEASE_BUCKET).await {
            return Ok(kv);
        }
        self.js
            .create_key_value(async_nats::jetstream::kv::Config {
                bucket: LEASE_BUCKET.into(),
                description:
                    "Sealpost key directories: which process publishes each directory's epochs"
                        .into(),
                history: 1,
                max_age: self.settings.lease_ttl,
                storage: async_nats::jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(nats("creating the publisher lease bucket"))
    }

    /// Leads `dir` whenever no other process does, forever (abort the task to stop).
    pub async fn run(self, dir: DirectoryKeys) {
        let renew_every = self.settings.interval.min(self.settings.lease_ttl / 3);
        loop {
            let kv = match self.lease_bucket().await {
                Ok(kv) => kv,
                Err(e) => {
                    tracing::warn!(error = %e, "no lease bucket; retrying");
                    tokio::time::sleep(renew_every).await;
                    continue;
                }
            };
            let key = dir.tenant.to_string();
            let Ok(revision) = kv.create(&key, self.holder.clone().into()).await else {
                // Someone else leads; look again when their lease could have expired.
                tokio::time::sleep(renew_every).await;
                continue;
            };
            tracing::info!(directory = %key, "leading the directory's epoch publisher");
            let mut lease = Lease {
                kv,
                key,
                holder: self.holder.clone(),
                revision,
            };
            loop {
                match self.lead(&dir, &mut lease).await {
                    Ok(()) => break, // the lease is lost
                    Err(e) => {
                        tracing::warn!(directory = %lease.key, error = %e, "epoch publisher failed; reopening");
                        tokio::time::sleep(renew_every).await;
                        if !lease.renew().await {
                            break;
                        }
                    }
                }
            }
        }
    }

    /// Opens the directory and publishes epochs while the lease holds. `Ok` when it is lost.
    async fn lead(&self, dir: &DirectoryKeys, lease: &mut Lease) -> Result<(), PublisherError> {
        let name = dir.tenant.to_string();
        let directory = Directory::open_cached(
            PgAkdStorage::new(self.pool.clone(), name.clone()),
            dir.vrf.clone(),
            self.settings.cache_bytes,
            Duration::from_secs(3600),
        )
        .await
        .map_err(EpochError::from)?;
        let log = JetStreamLog::open_with_entries(
            self.js.clone(),
            epoch_log_location(&dir.tenant),
            &mut |_, _| {},
        )
        .await
        .map_err(EpochError::from)?;
        let intents = EpochIntents::new(self.pool.clone(), name.clone());
        let mut published =
            PublishedDirectory::open(directory, name, log, dir.signer.clone(), &intents).await?;
        let store = key_store(self.client.clone());
        let after = published.through()?;
        let stream = self
            .js
            .get_stream(Stream::Keys.as_str())
            .await
            .map_err(nats("opening SEALPOST_KEYS"))?;
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subjects: ENTRY_CHANGES
                    .iter()
                    .map(|t| key_events_of_type(&dir.tenant, t.as_str()))
                    .collect(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: after + 1,
                },
                ..Default::default()
            })
            .await
            .map_err(nats("reading the key events"))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(nats("reading the key events"))?;
        let mut pending: Vec<Change> = Vec::new();
        let mut tick = tokio::time::interval(
            self.settings
                .interval
                .min(self.settings.lease_ttl / 3)
                .max(Duration::from_millis(10)),
        );
        let mut last_publish = tokio::time::Instant::now();
        loop {
            tokio::select! {
                msg = messages.next() => {
                    let msg = match msg {
                        Some(Ok(m)) => m,
                        Some(Err(e)) => return Err(nats("reading the key events")(e)),
                        None => return Err(PublisherError::Nats {
                            what: "the key event reader ended",
                            source: "ended".into(),
                        }),
                    };
                    pending.push(change_from(&dir.tenant, &msg)?);
                    if pending.len() >= self.settings.max_changes {
                        if !lease.renew().await {
                            return Ok(());
                        }
                        self.publish_epoch(dir, &mut published, &intents, &store, &mut pending).await?;
                        last_publish = tokio::time::Instant::now();
                    }
                }
                _ = tick.tick() => {
                    if !lease.renew().await {
                        return Ok(());
                    }
                    if !pending.is_empty() && last_publish.elapsed() >= self.settings.interval {
                        self.publish_epoch(dir, &mut published, &intents, &store, &mut pending).await?;
                        last_publish = tokio::time::Instant::now();
                    }
                }
            }
        }
    }

    /// Publishes the next epoch from `pending` (or the range already fixed for it).
    async fn publish_epoch(
        &self,
        dir: &DirectoryKeys,
        published: &mut PublishedDirectory,
        intents: &EpochIntents,
        store: &JetStreamEventStore<RecipientKeys>,
        pending: &mut Vec<Change>,
    ) -> Result<(), PublisherError> {
        let epoch = published.epoch() + 1;
        let take = pending.len().min(self.settings.max_changes);
        let Some(proposed) = take.checked_sub(1).map(|i| pending[i].seq) else {
            return Ok(());
        };
        let through = intents.propose(epoch, proposed).await?;
        if pending.last().is_none_or(|c| c.seq < through) {
            // Fixed by an earlier leader beyond what this one has read yet: read on first.
            return Ok(());
        }
        let cut = pending.partition_point(|c| c.seq <= through);
        let batch: Vec<Change> = pending.drain(..cut).collect();
        // Each label with the stream sequence of its latest change in the batch: the load must
        // reach it (a lagging follower would otherwise hand back an older entry).
        let mut labels: BTreeMap<&str, u64> = BTreeMap::new();
        for c in &batch {
            let seq = labels.entry(c.label.as_str()).or_default();
            *seq = (*seq).max(c.seq);
        }
        let mut updates = Vec::with_capacity(labels.len());
        for (label, latest) in labels {
            let Some(akd) = akd_label(label) else {
                return Err(PublisherError::Foreign {
                    subject: format!("{KEY_EVENTS_PREFIX}.{}.{label}", dir.tenant),
                });
            };
            let value = entry_at(store, &aggregate_id(&dir.tenant, label), latest, through).await?;
            updates.push((akd, value));
        }
        let started = std::time::Instant::now();
        let (record, _) = published.publish(updates, through).await?;
        self.archive_epoch(&dir.tenant, published, record.epoch)
            .await;
        tracing::info!(
            directory = %dir.tenant,
            epoch = record.epoch,
            changes = batch.len(),
            ms = started.elapsed().as_millis() as u64,
            "published an epoch"
        );
        for c in &batch {
            let alert = KeyChangeAlert::of(&dir.tenant, &c.label, &c.event, record.epoch, c.seq);
            if let Ok(body) = serde_json::to_vec(&alert) {
                if let Some(hook) = &self.alerts {
                    hook.deliver(&dir.tenant, &body);
                }
                if let Err(e) = self
                    .client
                    .publish(key_change_subject(&dir.tenant), body.into())
                    .await
                {
                    tracing::warn!(error = %e, "could not publish a key-change alert");
                }
            }
        }
        Ok(())
    }
}

/// The directory entry of a recipient as of stream sequence `through`; `latest` is the sequence
/// of one of its events at or before `through`, which the load must include.
async fn entry_at(
    store: &JetStreamEventStore<RecipientKeys>,
    aggregate_id: &str,
    latest: u64,
    through: u64,
) -> Result<AkdValue, PublisherError> {
    let mut keys = RecipientKeys::default();
    for (i, raw) in store
        .load_raw_at_least(aggregate_id, latest)
        .await?
        .iter()
        .enumerate()
    {
        if raw.stream_seq > through {
            break;
        }
        keys.apply_event(store.decode_event(raw, i + 1)?);
    }
    Ok(crate::entry::directory_entry(&keys).to_value())
}

/// What [`rebuild`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebuilt {
    /// Each logged epoch: (epoch, logged root, rebuilt root).
    pub epochs: Vec<(u64, [u8; 32], [u8; 32])>,
}

/// Rebuilds a tenant's directory from `SEALPOST_KEYS` alone into the (empty) AKD storage
/// `into`: the epoch log gives each epoch's range of key events, the key events give each
/// recipient's entry. Fails on the first epoch whose root differs from the logged one.
pub async fn rebuild(
    client: &async_nats::Client,
    tenant: &TenantId,
    vrf: VrfSecret,
    into: PgAkdStorage,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<Rebuilt, PublisherError> {
    let js = async_nats::jetstream::new(client.clone());
    let log =
        JetStreamLog::open_with_entries(js.clone(), epoch_log_location(tenant), &mut |_, _| {})
            .await
            .map_err(EpochError::from)?;
    let records: Vec<EpochRecord> = (0..log.size())
        .map(|i| {
            EpochRecord::decode(log.entry(i).unwrap_or_default())
                .map_err(|e| PublisherError::from(EpochError::from(e)))
        })
        .collect::<Result<_, _>>()?;
    let directory = Directory::open(into, vrf).await.map_err(EpochError::from)?;
    // Every key event of the tenant up to the last epoch, folded per recipient as it is read.
    let stream = js
        .get_stream(Stream::Keys.as_str())
        .await
        .map_err(nats("opening SEALPOST_KEYS"))?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: format!("{KEY_EVENTS_PREFIX}.{tenant}.>"),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(nats("reading the key events"))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(nats("reading the key events"))?;
    let mut state: BTreeMap<String, RecipientKeys> = BTreeMap::new();
    let mut changed: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::with_capacity(records.len());
    let mut seq = 0;
    let total = records.len() as u64;
    for record in &records {
        // Apply every event up to this epoch's last, then publish the epoch.
        while seq < record.through {
            let msg = match tokio::time::timeout(Duration::from_secs(10), messages.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => return Err(nats("reading the key events")(e)),
                Ok(None) | Err(_) => {
                    return Err(PublisherError::Nats {
                        what: "the key events ended before the last epoch's",
                        source: format!("read up to {seq}, epoch needs {}", record.through).into(),
                    })
                }
            };
            let c = change_from(tenant, &msg)?;
            seq = c.seq;
            if ENTRY_CHANGES.contains(&c.event.event_type()) {
                changed.insert(c.label.clone());
            }
            state.entry(c.label).or_default().apply_event(c.event);
        }
        let updates: Vec<(AkdLabel, AkdValue)> = std::mem::take(&mut changed)
            .into_iter()
            .map(|label| {
                let value = crate::entry::directory_entry(&state[&label]).to_value();
                akd_label(&label)
                    .map(|l| (l, value))
                    .ok_or_else(|| PublisherError::Foreign {
                        subject: format!("{KEY_EVENTS_PREFIX}.{tenant}.{label}"),
                    })
            })
            .collect::<Result<_, _>>()?;
        let published = directory.publish(updates).await.map_err(EpochError::from)?;
        out.push((record.epoch, record.root, published.hash()));
        progress(out.len() as u64, total);
        if published.epoch() != record.epoch || published.hash() != record.root {
            return Err(PublisherError::RootMismatch {
                epoch: record.epoch,
            });
        }
    }
    Ok(Rebuilt { epochs: out })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_webhook_signature_is_hmac_sha256_of_timestamp_dot_body_and_verifies_only_as_sent() {
        // The vector was computed with Python's hmac module, independently of this code.
        let header = webhook_signature(b"whsec_test", 1_700_000_000, br#"{"a":1}"#);
        assert_eq!(
            header,
            "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
        let ok = |h: &str, body: &[u8], now: i64| {
            verify_webhook_signature(b"whsec_test", h, body, now, 300)
        };
        assert!(ok(&header, br#"{"a":1}"#, 1_700_000_100));
        assert!(!ok(&header, br#"{"a":2}"#, 1_700_000_100), "another body");
        assert!(
            !ok(&header, br#"{"a":1}"#, 1_700_000_400),
            "too old: a replay"
        );
        assert!(!verify_webhook_signature(
            b"other",
            &header,
            br#"{"a":1}"#,
            1_700_000_000,
            300
        ));
        assert!(!ok("t=1700000000", br#"{"a":1}"#, 1_700_000_000), "no v1");
        assert!(!ok("garbage", br#"{"a":1}"#, 1_700_000_000));
    }
}
