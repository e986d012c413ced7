//! The key API: the NATS micro service `sealpost-keys` on `sealpost.<cmd|qry>.<tenant>.keys.<op>`
//! (request/reply, one queue group, so any number of `keys` processes share the load). The
//! subject names the tenant; each tenant's NATS account can reach only its own subjects, the
//! same authentication as sends. Bodies are JSON (`docs/keys.md`); errors answer
//! `{"error":{"code","message"}}` plus the micro-service error headers, like the send API.
//!
//! Commands are decided by the `RecipientKeys` aggregate and stored as key events (optimistic
//! concurrency, Msg-Id dedupe), then published into the directory by the epoch publisher.
//! Queries are answered from the directory's storage and its epoch log, with proofs.

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::service::{ServiceExt, NATS_SERVICE_ERROR, NATS_SERVICE_ERROR_CODE};
use async_nats::HeaderMap;
use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt;
use sealpost_domain::TenantId;
use sealpost_eventstore::names::{KeysOp, KeysSubject};
use sealpost_eventstore::{CommandExecutor, ExecuteError};
use sealpost_keyformat::{fingerprint, EnrollmentStatement};
use sealpost_keys_domain::{
    KeysCommand, KeysError, KeysPolicy, PublishKey, RecipientKeys, RevokeReason, SignedEnrollment,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::RwLock;

use crate::badkeys::{BadKey, BadKeyList, BadScope};
use crate::publisher::{aggregate_id, akd_label, epoch_log_location, key_store, DirectoryKeys};
pub use sealpost_keys_client::api::{
    CheckpointRequest, ClaimAnswer, ClaimRequest, CommandAnswer, EnrollmentRequest, InfoAnswer,
    ProvenAnswer, PublishRequest, RangeRequest, RecipientRequest, RevokeRequest, UploadRequest,
    MAX_KEY_PACKAGES,
};

use crate::{Directory, DirectoryEntry, EpochError, PgAkdStorage, Proven, PublishedDirectory};

/// Requests handled at once per process.
pub const CONCURRENCY: usize = 128;

/// The largest answer sent over NATS (the server's default `max_payload` is 1 MiB).
const MAX_ANSWER: usize = 900 * 1024;

/// A tenant's directory as the API serves it.
#[derive(Debug, Clone)]
pub struct TenantDirectory {
    pub keys: DirectoryKeys,
    pub policy: KeysPolicy,
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct KeysApiError {
    pub code: &'static str,
    pub status: u16,
    pub message: String,
}

impl KeysApiError {
    fn new(code: &'static str, status: u16, message: impl Into<String>) -> Self {
        Self {
            code,
            status,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new("invalid_request", 400, message)
    }

    fn unavailable(message: impl Into<String>) -> Self {
        Self::new("unavailable", 503, message)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::json!({"error": {"code": self.code, "message": self.message}})
            .to_string()
            .into_bytes()
    }
}

impl From<KeysError> for KeysApiError {
    fn from(e: KeysError) -> Self {
        let status = match &e {
            KeysError::KeyIdReused(_) | KeysError::KeyMarkedBad => 409,
            KeysError::UnsupportedKem(_)
            | KeysError::BadPublicKey(_)
            | KeysError::AlreadyExpired => 400,
            KeysError::EnrollmentRequired | KeysError::EnrollmentInvalid(_) => 403,
            KeysError::UnknownKey(_) | KeysError::UnknownDevice(_) | KeysError::NoKeyPackage(_) => {
                404
            }
        };
        Self::new(e.code(), status, e.to_string())
    }
}

impl From<EpochError> for KeysApiError {
    fn from(e: EpochError) -> Self {
        match e {
            EpochError::Pending { .. } => Self::unavailable(e.to_string()),
            other => {
                tracing::warn!(error = %other, "key directory query failed");
                Self::unavailable("the key directory could not answer; retry")
            }
        }
    }
}

fn executed<T>(r: Result<T, ExecuteError<KeysError>>) -> Result<T, KeysApiError> {
    r.map_err(execute_error)
}

fn execute_error(e: ExecuteError<KeysError>) -> KeysApiError {
    match e {
        ExecuteError::Rejected(k) => k.into(),
        ExecuteError::Contended { .. } => {
            KeysApiError::unavailable("too many concurrent changes to this recipient; retry")
        }
        other => {
            tracing::warn!(error = %other, "storing a key event failed");
            KeysApiError::unavailable("the key events could not be stored; retry")
        }
    }
}

/// `audit`: epochs `from` to `to`, proven in the checkpoint of `size` epochs (default: the
/// latest), so that every step of one audit is checked against one checkpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRequest {
    pub from: u64,
    pub to: u64,
    #[serde(default)]
    pub size: Option<u64>,
}

/// `audit`: akd's append-only proof from epoch `from` to `to`, with the epochs' log entries
/// (their roots) and each entry's inclusion proof in the signed checkpoint.
#[derive(Debug, Serialize, Deserialize)]
pub struct AuditAnswer {
    pub from: u64,
    pub to: u64,
    /// The log entries of epochs `from..=to`.
    pub entries: Vec<String>,
    /// Each entry's RFC 9162 inclusion proof in the checkpoint's tree, base64 hashes.
    pub inclusion: Vec<Vec<String>>,
    pub checkpoint: String,
    pub proof: akd::AppendOnlyProof,
}

/// akd's append-only proof from epoch `from` to `to` with the epochs' entries and their
/// inclusion in the checkpoint of `size` epochs (`1 <= from < to <= size <= d.epoch()`).
pub async fn audit_answer(
    d: &PublishedDirectory,
    from: u64,
    to: u64,
    size: u64,
) -> Result<AuditAnswer, EpochError> {
    let proof = d.directory().audit(from, to).await?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut entries = Vec::new();
    let mut inclusion = Vec::new();
    for e in from..=to {
        entries.push(String::from_utf8_lossy(&d.record(e)?.encode()).into_owned());
        inclusion.push(
            d.inclusion(e, size)?
                .iter()
                .map(|h| b64.encode(h.0))
                .collect(),
        );
    }
    Ok(AuditAnswer {
        from,
        to,
        entries,
        inclusion,
        checkpoint: String::from_utf8_lossy(d.checkpoint(Some(size))?.as_bytes()).into_owned(),
        proof,
    })
}

impl AuditAnswer {
    /// Verifies the answer on its own: the checkpoint's signature, each epoch entry's inclusion
    /// in it (so the roots are the logged ones), and akd's append-only proof between those
    /// roots. Returns the checkpoint.
    pub async fn verify(
        &self,
        checkpoint_key: &sealpost_tlog::CheckpointVerifier,
        directory: &str,
    ) -> Result<sealpost_tlog::Checkpoint, EpochError> {
        let refused = |what: String| EpochError::Refused(what);
        let cp = checkpoint_key
            .open(self.checkpoint.as_bytes())
            .map_err(|e| refused(format!("the checkpoint: {e}")))?;
        let expected = usize::try_from(self.to.saturating_sub(self.from) + 1).unwrap_or(0);
        if self.from == 0 || self.to <= self.from || self.entries.len() != expected {
            return Err(refused(format!(
                "an audit of epochs {}..{} must carry {} entries",
                self.from, self.to, expected
            )));
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut roots = Vec::with_capacity(expected);
        for ((epoch, entry), proof) in (self.from..=self.to)
            .zip(&self.entries)
            .zip(&self.inclusion)
        {
            let record = crate::EpochRecord::decode(entry.as_bytes())?;
            if record.epoch != epoch || record.directory != directory {
                return Err(refused(format!(
                    "entry {epoch} is epoch {} of '{}'",
                    record.epoch, record.directory
                )));
            }
            let proof: Vec<sealpost_tlog::Hash> = proof
                .iter()
                .map(|h| {
                    b64.decode(h)
                        .ok()
                        .and_then(|b| <[u8; 32]>::try_from(b).ok())
                        .map(sealpost_tlog::Hash)
                        .ok_or_else(|| refused("an inclusion hash is not 32 bytes".into()))
                })
                .collect::<Result<_, _>>()?;
            sealpost_tlog::verify_inclusion(
                &proof,
                cp.size,
                cp.root,
                epoch - 1,
                sealpost_tlog::leaf_hash(entry.as_bytes()),
            )
            .map_err(|e| refused(format!("epoch {epoch} is not in the signed log ({e})")))?;
            roots.push(record.root);
        }
        akd::auditor::audit_verify::<crate::Config>(roots, self.proof.clone())
            .await
            .map_err(|e| {
                refused(format!(
                    "the append-only proof from epoch {} to {}: {e:?}",
                    self.from, self.to
                ))
            })?;
        Ok(cp)
    }
}

/// `mark_bad`: a fingerprint to list, and why.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarkBadRequest {
    /// 64 lowercase hex digits.
    pub fingerprint: String,
    /// 1 to 64 of `[a-z0-9_]`, e.g. `compromised`.
    pub reason: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BadKeysRequest {
    #[serde(default)]
    pub fingerprint: Option<String>,
}

/// A key a mark revoked.
#[derive(Debug, Serialize, Deserialize)]
pub struct RevokedKey {
    pub recipient_label: String,
    pub key_id: String,
}

/// What `mark_bad` did.
#[derive(Debug, Serialize, Deserialize)]
pub struct MarkBadAnswer {
    /// The fingerprint's index in the list.
    pub index: u64,
    /// The keys this mark revoked (none when it was marked before).
    pub revoked: Vec<RevokedKey>,
}

/// `bad_keys`: the whole list and its signed checkpoint; with a fingerprint, whether it is
/// listed and its inclusion proof.
#[derive(Debug, Serialize, Deserialize)]
pub struct BadKeysAnswer {
    /// Every entry, in order (`sealpost-keys/bad/v1`).
    pub entries: Vec<String>,
    pub checkpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listed: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inclusion: Option<Vec<String>>,
}

impl TenantState {
    /// Runs a command on a recipient's keys (`aggregate`: `<tenant>.<label>`).
    async fn execute(
        &self,
        aggregate: &str,
        command: KeysCommand,
    ) -> Result<sealpost_eventstore::Executed<RecipientKeys>, KeysApiError> {
        executed(
            self.executor
                .execute(aggregate, command, &HashMap::new())
                .await,
        )
    }
}

struct TenantState {
    dir: TenantDirectory,
    executor: CommandExecutor<RecipientKeys>,
    /// Opened on first use; refreshed when the directory is ahead of what it has read.
    reader: RwLock<Option<PublishedDirectory>>,
    /// The bad-key list, opened on first use and refreshed before each use.
    bad: tokio::sync::Mutex<Option<BadKeyList>>,
    /// Claims of one recipient are taken one at a time in a process (striped by aggregate id).
    claims: Vec<tokio::sync::Mutex<()>>,
}

/// The key API of every configured tenant.
#[derive(Clone)]
pub struct KeysService {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    pool: sqlx::PgPool,
    tenants: HashMap<TenantId, TenantState>,
    /// akd's node cache of each reader, in bytes.
    cache_bytes: usize,
    /// The readers' cache flushers ([`Directory::follow_changes`]), stopped with the service.
    followers: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for f in self
            .followers
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            f.abort();
        }
    }
}

impl std::fmt::Debug for KeysService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeysService")
            .field("tenants", &self.inner.tenants.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KeysService {
    /// The API of `tenants`; each reader keeps `cache_bytes` of akd's tree nodes in memory.
    pub fn new(
        client: async_nats::Client,
        pool: sqlx::PgPool,
        tenants: impl IntoIterator<Item = TenantDirectory>,
        cache_bytes: usize,
    ) -> Self {
        let tenants = tenants
            .into_iter()
            .map(|dir| {
                let executor = CommandExecutor::new(key_store(client.clone()), dir.policy.clone())
                    .with_cache(10_000);
                (
                    dir.keys.tenant.clone(),
                    TenantState {
                        dir,
                        executor,
                        reader: RwLock::new(None),
                        bad: tokio::sync::Mutex::new(None),
                        claims: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
                    },
                )
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                client,
                pool,
                tenants,
                cache_bytes,
                followers: std::sync::Mutex::new(Vec::new()),
            }),
        }
    }

    /// Serves until `shutdown` resolves. `ready` fires once the endpoints are subscribed.
    pub async fn serve(
        self,
        ready: Option<tokio::sync::oneshot::Sender<()>>,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), async_nats::Error> {
        let client = self.inner.client.clone();
        let service = client
            .service_builder()
            .description("Sealpost key directory: device keys, KeyPackages, proofs")
            .start("sealpost-keys", env!("CARGO_PKG_VERSION"))
            .await?;
        let mut endpoints = Vec::with_capacity(KeysOp::ALL.len());
        for &op in KeysOp::ALL {
            let endpoint = service
                .endpoint_builder()
                .name(op.as_str())
                .add(op.endpoint())
                .await?;
            endpoints.push(endpoint.boxed());
        }
        sealpost_eventstore::server_round_trip(&client).await?;
        if let Some(tx) = ready {
            let _ = tx.send(());
        }
        let work =
            futures::stream::select_all(endpoints).for_each_concurrent(CONCURRENCY, |request| {
                let this = self.clone();
                async move {
                    let (body, headers) = match this.handle(&request.message).await {
                        Ok(body) if body.len() <= MAX_ANSWER => (body, HeaderMap::new()),
                        Ok(_) => error_reply(&KeysApiError::new(
                            "too_large",
                            413,
                            "the answer is larger than a NATS message; ask for a smaller range",
                        )),
                        Err(e) => error_reply(&e),
                    };
                    if let Err(e) = request.respond_with_headers(Ok(body), headers).await {
                        tracing::warn!(error = %e, "could not answer a key request");
                    }
                }
            });
        tokio::select! {
            () = work => {}
            () = shutdown => {}
        }
        service.stop().await?;
        Ok(())
    }

    /// Answers one request (the subject names the tenant and operation).
    pub async fn handle(&self, message: &async_nats::Message) -> Result<Bytes, KeysApiError> {
        let subject = KeysSubject::parse(&message.subject)
            .map_err(|_| KeysApiError::new("unauthorized", 401, "unknown tenant or operation"))?;
        let tenant = self.inner.tenants.get(&subject.tenant).ok_or_else(|| {
            KeysApiError::new(
                "not_found",
                404,
                "this tenant has no key directory; configure [tenants.keys] first",
            )
        })?;
        let body: &[u8] = if message.payload.is_empty() {
            b"{}"
        } else {
            &message.payload
        };
        match subject.op {
            KeysOp::Publish => json(&self.publish(tenant, parse(body)?).await?),
            KeysOp::Revoke => json(&self.revoke(tenant, parse(body)?).await?),
            KeysOp::MarkBad => {
                let r: MarkBadRequest = parse(body)?;
                let fp = fingerprint_of(&r.fingerprint)?;
                let entry = BadKey::new(BadScope::Tenant, fp, &r.reason)
                    .ok_or_else(|| KeysApiError::invalid("reason must be 1 to 64 of [a-z0-9_]"))?;
                json(&self.mark_bad(tenant, &entry).await?)
            }
            KeysOp::BadKeys => {
                let r: BadKeysRequest = parse(body)?;
                let wanted = r.fingerprint.as_deref().map(fingerprint_of).transpose()?;
                let mut guard = self.bad_list(tenant).await?;
                let list = guard.as_mut().ok_or_else(not_open)?;
                let b64 = base64::engine::general_purpose::STANDARD;
                let entries = list.entries()?;
                let index = match wanted {
                    Some(fp) => list.find(&fp)?,
                    None => None,
                };
                let inclusion = match index {
                    Some(i) => Some(
                        list.tree()
                            .inclusion_proof(i, list.size())
                            .map_err(EpochError::from)?
                            .iter()
                            .map(|h| b64.encode(h.0))
                            .collect::<Vec<_>>(),
                    ),
                    None => None,
                };
                json(&BadKeysAnswer {
                    entries: entries
                        .iter()
                        .map(|e| String::from_utf8_lossy(&e.encode()).into_owned())
                        .collect(),
                    checkpoint: String::from_utf8_lossy(list.checkpoint()?.as_bytes()).into_owned(),
                    listed: wanted.map(|_| index.is_some()),
                    index,
                    inclusion,
                })
            }
            KeysOp::Upload => json(&self.upload(tenant, parse(body)?).await?),
            KeysOp::Claim => json(&self.claim(tenant, parse(body)?).await?),
            KeysOp::Lookup => {
                let r: RecipientRequest = parse(body)?;
                let label = label_of(&r.recipient_label)?;
                let answer = self
                    .read(tenant, |d| Box::pin(d.lookup(label.clone())))
                    .await?;
                json(&ProvenAnswer::of(answer))
            }
            KeysOp::History => {
                let r: RecipientRequest = parse(body)?;
                let label = label_of(&r.recipient_label)?;
                let answer = self
                    .read(tenant, |d| {
                        let label = label.clone();
                        Box::pin(async move { d.history(&label).await })
                    })
                    .await?;
                json(&ProvenAnswer::of(answer))
            }
            KeysOp::Checkpoint => {
                let r: CheckpointRequest = parse(body)?;
                let reader = self.reader(tenant, true).await?;
                let d = reader.as_ref().ok_or_else(not_open)?;
                let cp = d.checkpoint(r.size)?;
                json(&serde_json::json!({
                    "checkpoint": String::from_utf8_lossy(cp.as_bytes()),
                }))
            }
            KeysOp::Consistency => {
                let r: RangeRequest = parse(body)?;
                let reader = self.reader(tenant, true).await?;
                let d = reader.as_ref().ok_or_else(not_open)?;
                if r.from > r.to || r.to > d.epoch() {
                    return Err(KeysApiError::invalid(format!(
                        "from ({}) must be at most to ({}), and to at most the log's size ({})",
                        r.from,
                        r.to,
                        d.epoch()
                    )));
                }
                let b64 = base64::engine::general_purpose::STANDARD;
                let proof: Vec<String> = d
                    .consistency(r.from, r.to)?
                    .iter()
                    .map(|h| b64.encode(h.0))
                    .collect();
                json(&serde_json::json!({ "from": r.from, "to": r.to, "proof": proof }))
            }
            KeysOp::Audit => {
                let r: AuditRequest = parse(body)?;
                let reader = self.reader(tenant, true).await?;
                let d = reader.as_ref().ok_or_else(not_open)?;
                let size = r.size.unwrap_or(d.epoch());
                if r.from == 0 || r.from >= r.to || r.to > size || size > d.epoch() {
                    return Err(KeysApiError::invalid(format!(
                        "audit needs 1 <= from < to <= size <= {} (the latest epoch)",
                        d.epoch()
                    )));
                }
                json(&audit_answer(d, r.from, r.to, size).await?)
            }
            KeysOp::Info => {
                let reader = self.reader(tenant, true).await?;
                let d = reader.as_ref().ok_or_else(not_open)?;
                let vrf = d
                    .directory()
                    .vrf_public_key()
                    .await
                    .map_err(EpochError::from)?;
                json(&InfoAnswer {
                    directory: tenant.dir.keys.tenant.to_string(),
                    vrf_public_key: hex::encode(vrf.as_bytes()),
                    checkpoint_key: tenant.dir.keys.signer.verifier_key().to_owned(),
                    bad_keys_checkpoint_key: tenant
                        .dir
                        .keys
                        .signer
                        .for_log(&crate::badkeys::bad_keys_origin(
                            tenant.dir.keys.signer.origin(),
                        ))
                        .map_err(EpochError::from)?
                        .verifier_key()
                        .to_owned(),
                    epoch: d.epoch(),
                })
            }
        }
    }

    async fn publish(
        &self,
        tenant: &TenantState,
        r: PublishRequest,
    ) -> Result<CommandAnswer, KeysApiError> {
        let label = label_hex(&r.recipient_label)?;
        let public_key = hex::decode(&r.public_key)
            .map_err(|_| KeysApiError::invalid("public_key must be hex"))?;
        let enrollment = match r.enrollment {
            None => None,
            Some(e) => {
                let attestation: [u8; 32] = hex::decode(&e.attestation_sha256)
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| {
                        KeysApiError::invalid("enrollment.attestation_sha256 must be 64 hex digits")
                    })?;
                let signature: [u8; 64] = base64::engine::general_purpose::STANDARD
                    .decode(&e.signature)
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| {
                        KeysApiError::invalid(
                            "enrollment.signature must be 64 bytes of base64 (Ed25519)",
                        )
                    })?;
                Some(SignedEnrollment {
                    statement: EnrollmentStatement {
                        tenant: tenant.dir.keys.tenant.to_string(),
                        device_id: r.device_id.clone(),
                        attestation_sha256: attestation,
                        key_fingerprint: fingerprint(r.kem_id, &public_key),
                    },
                    signature,
                })
            }
        };
        check_id("device_id", &r.device_id)?;
        check_id("key_id", &r.key_id)?;
        let fp = fingerprint(r.kem_id, &public_key);
        let marked_bad = {
            let guard = self.bad_list(tenant).await?;
            guard.as_ref().ok_or_else(not_open)?.find(&fp)?.is_some()
        };
        // The index first: a key stored without its row could escape a later mark.
        sqlx::query(
            "INSERT INTO key_fingerprints (directory, fingerprint, label, key_id) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(tenant.dir.keys.tenant.as_str())
        .bind(hex::encode(fp))
        .bind(&label)
        .bind(&r.key_id)
        .execute(&self.inner.pool)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "indexing a key fingerprint failed");
            KeysApiError::unavailable("the key directory's database is unavailable; retry")
        })?;
        let command = KeysCommand::Publish(Box::new(PublishKey {
            tenant: tenant.dir.keys.tenant.to_string(),
            device_id: r.device_id,
            key_id: r.key_id,
            kem_id: r.kem_id,
            public_key,
            expires_at: r.expires_at,
            enrollment,
            marked_bad,
            at: OffsetDateTime::now_utc(),
        }));
        let done = tenant
            .execute(&aggregate_id(&tenant.dir.keys.tenant, &label), command)
            .await?;
        Ok(CommandAnswer {
            events: event_types(&done.events),
            fingerprint: Some(hex::encode(fp)),
            safety_number: Some(sealpost_keyformat::safety_number(&fp)),
        })
    }

    async fn revoke(
        &self,
        tenant: &TenantState,
        r: RevokeRequest,
    ) -> Result<CommandAnswer, KeysApiError> {
        let label = label_hex(&r.recipient_label)?;
        let reason: RevokeReason = r.reason.parse().map_err(|_| {
            KeysApiError::invalid(
                "reason must be compromised, decommissioned, marked_bad or administrative",
            )
        })?;
        let done = tenant
            .execute(
                &aggregate_id(&tenant.dir.keys.tenant, &label),
                KeysCommand::Revoke {
                    key_id: r.key_id,
                    reason,
                    at: OffsetDateTime::now_utc(),
                },
            )
            .await?;
        Ok(CommandAnswer {
            events: event_types(&done.events),
            fingerprint: None,
            safety_number: None,
        })
    }

    async fn upload(
        &self,
        tenant: &TenantState,
        r: UploadRequest,
    ) -> Result<CommandAnswer, KeysApiError> {
        let label = label_hex(&r.recipient_label)?;
        check_id("device_id", &r.device_id)?;
        if r.key_packages.len() > MAX_KEY_PACKAGES {
            return Err(KeysApiError::invalid(format!(
                "at most {MAX_KEY_PACKAGES} KeyPackages per upload"
            )));
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let check = |i: String, text: &str, want_last_resort: bool| {
            let invalid =
                |why: String| KeysApiError::new("invalid_key_package", 400, format!("{i}: {why}"));
            let bytes = b64.decode(text).map_err(|_| invalid("not base64".into()))?;
            let valid = crate::keypackages::validate(&bytes).map_err(|e| invalid(e.to_string()))?;
            if valid.last_resort != want_last_resort {
                return Err(invalid(if want_last_resort {
                    "the last-resort package lacks the last_resort extension".into()
                } else {
                    "a last-resort package belongs in last_resort, not key_packages".into()
                }));
            }
            Ok((valid.hash_ref, b64.encode(&bytes)))
        };
        let mut hash_refs = Vec::with_capacity(r.key_packages.len());
        let mut bytes = std::collections::BTreeMap::new();
        for (i, text) in r.key_packages.iter().enumerate() {
            let (h, b) = check(format!("key_packages[{i}]"), text, false)?;
            hash_refs.push(h.clone());
            bytes.insert(h, b);
        }
        let last_resort = match &r.last_resort {
            None => None,
            Some(text) => {
                let (h, b) = check("last_resort".into(), text, true)?;
                bytes.insert(h.clone(), b);
                Some(h)
            }
        };
        let done = tenant
            .execute(
                &aggregate_id(&tenant.dir.keys.tenant, &label),
                KeysCommand::UploadKeyPackages {
                    device_id: r.device_id,
                    hash_refs,
                    last_resort,
                    key_packages: bytes,
                    at: OffsetDateTime::now_utc(),
                },
            )
            .await?;
        Ok(CommandAnswer {
            events: event_types(&done.events),
            fingerprint: None,
            safety_number: None,
        })
    }

    async fn claim(
        &self,
        tenant: &TenantState,
        r: ClaimRequest,
    ) -> Result<ClaimAnswer, KeysApiError> {
        let label = label_hex(&r.recipient_label)?;
        check_id("device_id", &r.device_id)?;
        check_id("claimant", &r.claimant)?;
        let id = aggregate_id(&tenant.dir.keys.tenant, &label);
        // One claim per recipient at a time in this process; other processes race by OCC.
        let stripe = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            id.hash(&mut h);
            (h.finish() % tenant.claims.len() as u64) as usize
        };
        let _turn = tenant.claims[stripe].lock().await;
        let done = tenant
            .execute(
                &id,
                KeysCommand::ClaimKeyPackage {
                    device_id: r.device_id,
                    claimant: r.claimant,
                    at: OffsetDateTime::now_utc(),
                },
            )
            .await?;
        match done.events.as_slice() {
            [sealpost_keys_domain::KeysEvent::KeyPackageClaimed(c)] => Ok(ClaimAnswer {
                hash_ref: c.hash_ref.clone(),
                last_resort: c.last_resort,
                key_package: c.key_package.clone(),
            }),
            _ => Err(KeysApiError::unavailable("the claim wrote nothing; retry")),
        }
    }

    /// The tenant's bad-key list, opened or brought up to date.
    async fn bad_list<'t>(
        &self,
        tenant: &'t TenantState,
    ) -> Result<tokio::sync::MutexGuard<'t, Option<BadKeyList>>, KeysApiError> {
        let mut guard = tenant.bad.lock().await;
        match guard.as_mut() {
            Some(list) => list.refresh().await?,
            None => {
                let log = sealpost_tlog::JetStreamLog::open_with_entries(
                    async_nats::jetstream::new(self.inner.client.clone()),
                    sealpost_tlog::LogLocation {
                        stream: sealpost_eventstore::names::Stream::Keys.as_str().into(),
                        subject: sealpost_eventstore::names::bad_keys_subject(
                            &tenant.dir.keys.tenant,
                        ),
                    },
                    &mut |_, _| {},
                )
                .await
                .map_err(EpochError::from)?;
                *guard = Some(BadKeyList::new(log, &tenant.dir.keys.signer)?);
            }
        }
        Ok(guard)
    }

    /// Lists `entry` in the tenant's bad-key list (once), then revokes the key wherever the
    /// tenant's recipients published it. Repeating a mark finishes what a crash left undone.
    async fn mark_bad(
        &self,
        tenant: &TenantState,
        entry: &BadKey,
    ) -> Result<MarkBadAnswer, KeysApiError> {
        let index = {
            let mut guard = self.bad_list(tenant).await?;
            let list = guard.as_mut().ok_or_else(not_open)?;
            list.mark(entry).await?
        };
        let holders: Vec<(String, String)> = sqlx::query_as(
            "SELECT label, key_id FROM key_fingerprints WHERE directory = $1 AND fingerprint = $2 \
             ORDER BY label, key_id",
        )
        .bind(tenant.dir.keys.tenant.as_str())
        .bind(hex::encode(entry.fingerprint))
        .fetch_all(&self.inner.pool)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "reading the fingerprint index failed");
            KeysApiError::unavailable("the key directory's database is unavailable; retry")
        })?;
        let mut revoked = Vec::new();
        for (label, key_id) in holders {
            let r = tenant
                .executor
                .execute(
                    &aggregate_id(&tenant.dir.keys.tenant, &label),
                    KeysCommand::Revoke {
                        key_id: key_id.clone(),
                        reason: RevokeReason::MarkedBad,
                        at: OffsetDateTime::now_utc(),
                    },
                    &HashMap::new(),
                )
                .await;
            match r {
                Ok(done) if !done.events.is_empty() => revoked.push(RevokedKey {
                    recipient_label: label,
                    key_id,
                }),
                // Already revoked, or indexed but never stored (a refused publish).
                Ok(_) | Err(ExecuteError::Rejected(KeysError::UnknownKey(_))) => {}
                Err(e) => return Err(execute_error(e)),
            }
        }
        Ok(MarkBadAnswer { index, revoked })
    }

    /// The platform's mark: `fingerprint` is listed (scope `platform`) and revoked in every
    /// tenant's directory this service has. Returns each tenant's answer.
    pub async fn mark_bad_platform(
        &self,
        fingerprint: [u8; 32],
        reason: &str,
    ) -> Result<Vec<(TenantId, MarkBadAnswer)>, KeysApiError> {
        let entry = BadKey::new(BadScope::Platform, fingerprint, reason)
            .ok_or_else(|| KeysApiError::invalid("reason must be 1 to 64 of [a-z0-9_]"))?;
        let mut out = Vec::new();
        for (id, tenant) in &self.inner.tenants {
            out.push((id.clone(), self.mark_bad(tenant, &entry).await?));
        }
        Ok(out)
    }

    /// The tenant's reader, opened (and, with `refresh`, brought up to the log's end) first.
    async fn reader<'t>(
        &self,
        tenant: &'t TenantState,
        refresh: bool,
    ) -> Result<tokio::sync::RwLockReadGuard<'t, Option<PublishedDirectory>>, KeysApiError> {
        {
            let r = tenant.reader.read().await;
            if r.is_some() && !refresh {
                return Ok(r);
            }
        }
        let mut w = tenant.reader.write().await;
        match w.as_mut() {
            Some(d) => {
                d.refresh().await?;
            }
            None => *w = Some(self.open_reader(tenant).await?),
        }
        Ok(w.downgrade())
    }

    async fn open_reader(&self, tenant: &TenantState) -> Result<PublishedDirectory, EpochError> {
        let name = tenant.dir.keys.tenant.to_string();
        let directory = Directory::open_cached(
            PgAkdStorage::new(self.inner.pool.clone(), name.clone()),
            tenant.dir.keys.vrf.clone(),
            self.inner.cache_bytes,
            std::time::Duration::from_secs(3600),
        )
        .await?;
        let follower = directory.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Err(e) = follower
                    .follow_changes(std::time::Duration::from_millis(100))
                    .await
                {
                    tracing::warn!(error = ?e, "following the directory's epochs failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        });
        self.inner
            .followers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
        let log = sealpost_tlog::JetStreamLog::open_with_entries(
            async_nats::jetstream::new(self.inner.client.clone()),
            epoch_log_location(&tenant.dir.keys.tenant),
            &mut |_, _| {},
        )
        .await?;
        Ok(PublishedDirectory::follow(
            directory,
            name,
            log,
            tenant.dir.keys.signer.clone(),
        ))
    }

    /// Runs a proven query; when the directory is one epoch ahead of the log this reader has
    /// read, reads the log on and asks again.
    async fn read<P, F>(&self, tenant: &TenantState, query: F) -> Result<Proven<P>, KeysApiError>
    where
        F: for<'a> Fn(
            &'a PublishedDirectory,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Proven<P>, EpochError>> + Send + 'a>,
        >,
    {
        for attempt in 0..3 {
            let reader = self.reader(tenant, attempt > 0).await?;
            let d = reader.as_ref().ok_or_else(not_open)?;
            match query(d).await {
                Err(EpochError::Pending { .. }) if attempt < 2 => {
                    drop(reader);
                    tokio::time::sleep(std::time::Duration::from_millis(50 * (attempt + 1))).await;
                }
                Err(EpochError::Akd(akd::errors::AkdError::Storage(
                    akd::errors::StorageError::NotFound(_),
                ))) => {
                    return Err(KeysApiError::new(
                        "not_found",
                        404,
                        "no keys are published for this recipient (or not yet in an epoch)",
                    ))
                }
                Err(EpochError::Akd(akd::errors::AkdError::Directory(_))) if attempt == 0 => {
                    // akd answers an unknown label this way too: ask once more on a fresh log.
                    continue;
                }
                other => return Ok(other?),
            }
        }
        Err(KeysApiError::unavailable(
            "the directory is publishing an epoch; retry in a moment",
        ))
    }
}

/// The wire names of the events a command wrote.
fn event_types(events: &[sealpost_keys_domain::KeysEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| e.event_type().as_str().to_owned())
        .collect()
}

fn not_open() -> KeysApiError {
    KeysApiError::unavailable("the key directory is not open; retry")
}

fn error_reply(e: &KeysApiError) -> (Bytes, HeaderMap) {
    let mut h = HeaderMap::new();
    h.insert(NATS_SERVICE_ERROR, e.code);
    h.insert(NATS_SERVICE_ERROR_CODE, e.status.to_string().as_str());
    (Bytes::from(e.to_json()), h)
}

fn json<T: Serialize>(v: &T) -> Result<Bytes, KeysApiError> {
    serde_json::to_vec(v)
        .map(Bytes::from)
        .map_err(|_| KeysApiError::unavailable("could not encode the answer; retry"))
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, KeysApiError> {
    serde_json::from_slice(body).map_err(|e| {
        // serde's message names the field and position, never a value.
        KeysApiError::invalid(format!("the request body: {e}"))
    })
}

fn label_hex(s: &str) -> Result<String, KeysApiError> {
    if s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(s.to_owned())
    } else {
        Err(KeysApiError::invalid(
            "recipient_label must be 64 lowercase hex digits (the keyed hash of the number; see docs/keys.md), never a phone number",
        ))
    }
}

fn label_of(s: &str) -> Result<akd::AkdLabel, KeysApiError> {
    akd_label(&label_hex(s)?).ok_or_else(|| KeysApiError::invalid("recipient_label"))
}

fn fingerprint_of(s: &str) -> Result<[u8; 32], KeysApiError> {
    hex::decode(s)
        .ok()
        .and_then(|b| b.try_into().ok())
        .filter(|_| s.bytes().all(|b| !b.is_ascii_uppercase()))
        .ok_or_else(|| KeysApiError::invalid("fingerprint must be 64 lowercase hex digits"))
}

fn check_id(field: &str, v: &str) -> Result<(), KeysApiError> {
    let ok = !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(KeysApiError::invalid(format!(
            "{field} must be 1 to 128 of [A-Za-z0-9._:-]"
        )))
    }
}

/// Decodes the entry a verified lookup proves.
pub fn entry_of(value: &akd::AkdValue) -> Result<DirectoryEntry, KeysApiError> {
    DirectoryEntry::from_value(value).map_err(|_| {
        KeysApiError::unavailable("the directory holds an entry this build cannot read")
    })
}
