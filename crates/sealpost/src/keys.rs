//! The `keys` role's wiring: each tenant's directory from `[tenants.keys]`, the key API and one
//! epoch publisher per directory (each takes its directory's lease when no other process holds
//! it).

use std::time::Duration;

use anyhow::Context as _;
use sealpost_domain::TenantId;
use sealpost_keys::publisher::{DirectoryKeys, Publisher};
use sealpost_keys::service::{KeysService, TenantDirectory};
use sealpost_keys::VrfSecret;
use sealpost_keys_domain::KeysPolicy;
use sealpost_tlog::LogSigner;

use crate::Config;

/// The directories of every tenant with `[tenants.keys]`. Refuses a malformed secret or key by
/// name (never printing it).
pub fn directories(cfg: &Config) -> anyhow::Result<Vec<TenantDirectory>> {
    let mut out = Vec::new();
    for t in &cfg.tenants {
        let Some(k) = &t.keys else { continue };
        let tenant = TenantId::new(&t.id).with_context(|| format!("tenant id '{}'", t.id))?;
        let vrf: [u8; 32] = hex::decode(k.vrf_seed.expose().trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .with_context(|| {
                format!(
                    "tenants.keys.vrf_seed of '{}' must be 64 hex digits (32 random bytes)",
                    t.id
                )
            })?;
        let signer = LogSigner::from_secret(k.checkpoint_key.expose()).with_context(|| {
            format!(
                "tenants.keys.checkpoint_key of '{}': make one with `sealpost keys gen-signer --tenant {}`",
                t.id, t.id
            )
        })?;
        let enrollment_key = match &k.enrollment_key {
            None => None,
            Some(hex_key) => {
                let bytes: [u8; 32] = hex::decode(hex_key.trim())
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .with_context(|| {
                        format!(
                            "tenants.keys.enrollment_key of '{}' must be 64 hex digits",
                            t.id
                        )
                    })?;
                Some(
                    ed25519_dalek::VerifyingKey::from_bytes(&bytes).with_context(|| {
                        format!(
                            "tenants.keys.enrollment_key of '{}' is not an Ed25519 public key",
                            t.id
                        )
                    })?,
                )
            }
        };
        out.push(TenantDirectory {
            keys: DirectoryKeys {
                tenant,
                vrf: VrfSecret::new(vrf),
                signer,
            },
            policy: KeysPolicy {
                enrollment_key,
                retire_after: Duration::from_secs(k.retire_after_secs),
            },
        });
    }
    Ok(out)
}

/// The running role: the key API and the publishers (stopped when dropped).
#[derive(Debug)]
pub struct RunningKeys {
    pub(crate) tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for RunningKeys {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The archive of published epochs in the object store, locked where the bucket has Object Lock.
#[derive(Debug)]
struct S3Archive {
    store: sealpost_blobstore::BlobStore,
    /// Set when the bucket has Object Lock enabled.
    retain: Option<std::time::Duration>,
}

#[async_trait::async_trait]
impl sealpost_keys::publisher::EpochArchive for S3Archive {
    async fn put(&self, name: &str, body: Vec<u8>, content_type: &str) -> Result<(), String> {
        let until = self.retain.map(|d| time::OffsetDateTime::now_utc() + d);
        self.store
            .put_record(name, body, content_type, until)
            .await
            .map_err(|e| e.to_string())
    }
}

/// Key-change alerts POSTed to each tenant's webhook, signed, retried with exponential backoff
/// (at least once while the process lives: a process that dies with deliveries pending loses
/// them; the NATS subject has every alert).
#[derive(Debug)]
struct Webhooks {
    http: reqwest::Client,
    by_tenant: std::collections::HashMap<TenantId, (String, sealpost_domain::Secret)>,
}

impl sealpost_keys::publisher::AlertHook for Webhooks {
    fn deliver(&self, tenant: &TenantId, alert: &[u8]) {
        let Some((url, secret)) = self.by_tenant.get(tenant).cloned() else {
            return;
        };
        let (http, body, tenant) = (self.http.clone(), alert.to_vec(), tenant.clone());
        tokio::spawn(async move {
            use backon::Retryable as _;
            let send = || async {
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                let signature = sealpost_keys::publisher::webhook_signature(
                    secret.expose().as_bytes(),
                    now,
                    &body,
                );
                let res = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("Sealpost-Signature", signature)
                    .body(body.clone())
                    .send()
                    .await
                    .map_err(|e| e.without_url().to_string())?;
                if res.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("HTTP {}", res.status().as_u16()))
                }
            };
            let delivered = send
                .retry(
                    backon::ExponentialBuilder::default()
                        .with_min_delay(Duration::from_millis(200))
                        .with_max_delay(Duration::from_secs(30))
                        .with_max_times(8)
                        .with_jitter(),
                )
                .await;
            if let Err(e) = delivered {
                tracing::warn!(tenant = %tenant, error = %e, "a key-change webhook was not delivered after 8 retries");
            }
        });
    }
}

fn webhooks(cfg: &Config) -> anyhow::Result<Webhooks> {
    let mut by_tenant = std::collections::HashMap::new();
    for t in &cfg.tenants {
        let Some(k) = &t.keys else { continue };
        match (&k.webhook_url, &k.webhook_secret) {
            (None, None) => {}
            (Some(url), Some(secret)) if !secret.is_empty() => {
                let parsed = reqwest::Url::parse(url).with_context(|| {
                    format!("tenants.keys.webhook_url of '{}' is not a URL", t.id)
                })?;
                let loopback =
                    matches!(parsed.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
                anyhow::ensure!(
                    parsed.scheme() == "https" || (parsed.scheme() == "http" && loopback),
                    "tenants.keys.webhook_url of '{}' must be https (http only on loopback)",
                    t.id
                );
                by_tenant.insert(
                    TenantId::new(&t.id).with_context(|| format!("tenant id '{}'", t.id))?,
                    (url.clone(), secret.clone()),
                );
            }
            _ => anyhow::bail!(
                "tenants.keys of '{}': set both webhook_url and webhook_secret, or neither",
                t.id
            ),
        }
    }
    Ok(Webhooks {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .context("building the webhook HTTP client")?,
        by_tenant,
    })
}

/// Starts the key API (answering once this returns) and a publisher per directory, archiving
/// epochs in `store`.
pub async fn start(
    cfg: &Config,
    client: async_nats::Client,
    store: sealpost_blobstore::BlobStore,
) -> anyhow::Result<RunningKeys> {
    let dirs = directories(cfg)?;
    let hooks: std::sync::Arc<dyn sealpost_keys::publisher::AlertHook> =
        std::sync::Arc::new(webhooks(cfg)?);
    let pool = crate::views::pool_when_reachable(cfg).await?;
    sealpost_projections::migrate(&pool)
        .await
        .context("applying the migrations (the key directory's tables)")?;
    let service = KeysService::new(
        client.clone(),
        pool.clone(),
        dirs.clone(),
        cfg.keys.cache_mb << 20,
    );
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut tasks = vec![tokio::spawn(async move {
        if let Err(e) = service
            .serve(Some(ready_tx), std::future::pending::<()>())
            .await
        {
            tracing::error!(error = %e, "the key API stopped");
        }
    })];
    ready_rx
        .await
        .context("the key API did not start; see the log above")?;
    let locked = store.object_lock_enabled().await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read the bucket's Object Lock configuration; archiving unlocked");
        false
    });
    let archive: std::sync::Arc<dyn sealpost_keys::publisher::EpochArchive> =
        std::sync::Arc::new(S3Archive {
            store,
            retain: locked
                .then(|| Duration::from_secs(cfg.keys.archive_retention_days.max(1) * 86_400)),
        });
    for d in dirs {
        let publisher = Publisher::new(client.clone(), pool.clone(), cfg.keys.publisher())
            .with_archive(archive.clone())
            .with_alert_hook(hooks.clone());
        tasks.push(tokio::spawn(publisher.run(d.keys)));
    }
    Ok(RunningKeys { tasks })
}
