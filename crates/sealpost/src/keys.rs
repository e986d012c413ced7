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

/// Starts the key API (answering once this returns) and a publisher per directory.
pub async fn start(cfg: &Config, client: async_nats::Client) -> anyhow::Result<RunningKeys> {
    let dirs = directories(cfg)?;
    let pool = crate::views::pool(cfg).await?;
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
    for d in dirs {
        let publisher = Publisher::new(client.clone(), pool.clone(), cfg.keys.publisher());
        tasks.push(tokio::spawn(publisher.run(d.keys)));
    }
    Ok(RunningKeys { tasks })
}
