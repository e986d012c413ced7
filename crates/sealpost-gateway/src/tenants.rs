//! Tenants from config: API keys (stored only as SHA-256 hashes) and each gateway's own token
//! bucket for uploads, presigns and cancels (sends draw from the cluster-wide bucket in `limits`,
//! where the daily quotas are too; the NATS accounts generated from the same list are in
//! `accounts`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use sealpost_domain::{Secret, TenantId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ErrorCode};

/// One `[[tenants]]` entry of the config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub id: String,
    /// SHA-256 (hex) of each valid API key; more than one allows rotation. The keys themselves
    /// are never stored: `sealpost tenants hash-key` prints the hash of a key.
    #[serde(default)]
    pub api_key_sha256: Vec<String>,
    /// The public nkey (`U...`) of the tenant's NATS user, for `sealpost tenants nats-config`.
    #[serde(default)]
    pub nats_nkey: Option<String>,
    /// Sustained sends per second across all gateways: one token bucket of this rate and
    /// `burst`, shared through JetStream KV. Uploads, presigns and cancels draw from a bucket of
    /// the same rate and size that each gateway keeps on its own. 0 = no rate limit (for load
    /// generators).
    #[serde(default = "default_rate")]
    pub rate_per_sec: f64,
    /// Bucket size: how many sends may arrive back to back.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Accepted sends per UTC day across all gateways (kept in JetStream KV, so a restart keeps
    /// the count); none = unlimited.
    #[serde(default)]
    pub daily_quota: Option<u64>,
    /// The tenant's key directory (`[tenants.keys]`); none = no directory.
    #[serde(default)]
    pub keys: Option<TenantKeysConfig>,
    /// Share of this tenant's messages traced when OTLP traces are on (`[log]
    /// otlp_traces_endpoint`); none = `[log] trace_sample_ratio`. Lower it for high-volume
    /// tenants.
    #[serde(default)]
    pub trace_sample_ratio: Option<f64>,
}

/// `[tenants.keys]`: the tenant's key directory. Its secrets belong in a config file readable
/// only by Sealpost (mode 0600), or in a secret store that writes one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantKeysConfig {
    /// The directory's VRF private key: 64 hex digits (32 random bytes). A secret: whoever holds
    /// it can tell which labels the directory holds.
    pub vrf_seed: Secret,
    /// The checkpoint signer, `PRIVATE+KEY+<origin>+<key id>+<base64>` (`sealpost keys
    /// gen-signer --tenant <id>` prints one and its verifier key). A secret.
    pub checkpoint_key: Secret,
    /// The tenant's MDM enrollment key (Ed25519 public key, 64 hex digits). When set, every
    /// device key needs an enrollment statement signed by it.
    #[serde(default)]
    pub enrollment_key: Option<String>,
    /// How long a rotated-out key still opens what was sealed to it, in seconds.
    #[serde(default = "default_retire_after_secs")]
    pub retire_after_secs: u64,
    /// The tenant's label key (64 hex digits; the tenant's SDK holds the same): recipients'
    /// labels are HMAC-SHA256 of their numbers under it. With it, the gateway refuses sends
    /// sealed to a revoked or unknown key (`key_stale`). A secret.
    #[serde(default)]
    pub label_key: Option<Secret>,
    /// Where key-change alerts are also POSTed (https, or http on loopback), signed with
    /// `webhook_secret` in the `Sealpost-Signature` header (docs/keys.md).
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// The webhook's HMAC key. A secret.
    #[serde(default)]
    pub webhook_secret: Option<Secret>,
}

fn default_retire_after_secs() -> u64 {
    30 * 86_400
}

fn default_rate() -> f64 {
    1000.0
}

fn default_burst() -> u32 {
    2000
}

/// SHA-256 hex of an API key, as stored in `api_key_sha256`.
pub fn hash_api_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A configured tenant with its live limits.
#[derive(Debug)]
pub struct Tenant {
    pub id: TenantId,
    pub config: TenantConfig,
    /// `[tenants.keys] label_key`, parsed.
    pub label_key: Option<sealpost_keyformat::LabelKey>,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Tenant {
    /// Takes one token of this gateway's own bucket (for an upload, a presign or a cancel), or
    /// says how long until one is available.
    pub fn take_token(&self, now: Instant) -> Result<(), ApiError> {
        if self.config.rate_per_sec == 0.0 {
            return Ok(());
        }
        let rate = self.config.rate_per_sec;
        let burst = f64::from(self.config.burst.max(1));
        let mut b = self
            .bucket
            .lock()
            .map_err(|_| ApiError::unavailable("rate limiter unavailable; retry"))?;
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait_ms = (((1.0 - b.tokens) / rate) * 1000.0).ceil().max(1.0) as u64;
            Err(ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "tenant '{}' is over its rate limit of {} sends/s; retry after {wait_ms} ms",
                    self.id.as_str(),
                    self.config.rate_per_sec
                ),
            )
            .with_retry_after_ms(wait_ms))
        }
    }
}

/// All configured tenants, looked up by id or by API-key hash.
#[derive(Debug, Default)]
pub struct Tenants {
    by_id: HashMap<String, Tenant>,
    by_key_hash: HashMap<String, String>,
}

/// A config problem, named with the tenant it concerns.
#[derive(Debug, thiserror::Error)]
#[error("tenant config: {0}")]
pub struct TenantConfigError(String);

impl Tenants {
    pub fn new(configs: &[TenantConfig]) -> Result<Self, TenantConfigError> {
        let mut t = Tenants::default();
        let now = Instant::now();
        for c in configs {
            let id = TenantId::new(c.id.clone())
                .map_err(|e| TenantConfigError(format!("tenant id '{}': {e}", c.id)))?;
            if !c.rate_per_sec.is_finite() || c.rate_per_sec < 0.0 || c.burst == 0 {
                return Err(TenantConfigError(format!(
                    "tenant '{}': rate_per_sec must be 0 (no limit) or positive, and burst positive",
                    c.id
                )));
            }
            for h in &c.api_key_sha256 {
                if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(TenantConfigError(format!(
                        "tenant '{}': api_key_sha256 entries must be 64 hex characters (the SHA-256 of the key, from `sealpost tenants hash-key`)",
                        c.id
                    )));
                }
                if let Some(other) = t.by_key_hash.insert(h.to_ascii_lowercase(), c.id.clone()) {
                    return Err(TenantConfigError(format!(
                        "tenants '{other}' and '{}' share an API key",
                        c.id
                    )));
                }
            }
            if let Some(k) = &c.nats_nkey {
                if !(k.starts_with('U') && k.len() == 56) {
                    return Err(TenantConfigError(format!(
                        "tenant '{}': nats_nkey must be a public user nkey (56 characters starting with 'U')",
                        c.id
                    )));
                }
            }
            let label_key = match c.keys.as_ref().and_then(|k| k.label_key.as_ref()) {
                None => None,
                Some(k) => Some(
                    sealpost_keyformat::LabelKey::from_hex(k.expose().trim()).map_err(|_| {
                        TenantConfigError(format!(
                            "tenant '{}': keys.label_key must be 64 hex digits (32 random bytes)",
                            c.id
                        ))
                    })?,
                ),
            };
            let tenant = Tenant {
                id,
                config: c.clone(),
                label_key,
                bucket: Mutex::new(Bucket {
                    tokens: f64::from(c.burst),
                    last: now,
                }),
            };
            if t.by_id.insert(c.id.clone(), tenant).is_some() {
                return Err(TenantConfigError(format!(
                    "tenant '{}' is listed twice",
                    c.id
                )));
            }
        }
        Ok(t)
    }

    /// Every tenant with a label key, for the send path's key check.
    pub fn label_keys(&self) -> HashMap<TenantId, sealpost_keyformat::LabelKey> {
        self.by_id
            .values()
            .filter_map(|t| Some((t.id.clone(), t.label_key.clone()?)))
            .collect()
    }

    pub fn get(&self, id: &str) -> Result<&Tenant, ApiError> {
        self.by_id.get(id).ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthorized,
                "unknown tenant; use a tenant configured in [[tenants]]",
            )
        })
    }

    /// The tenant of a bearer API key.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<&Tenant, ApiError> {
        let key = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::Unauthorized,
                    "missing credentials: send 'Authorization: Bearer <tenant API key>'",
                )
            })?;
        let id = self.by_key_hash.get(&hash_api_key(key)).ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthorized,
                "invalid API key: check the key or ask the operator for a new one",
            )
        })?;
        self.get(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Tenant> {
        self.by_id.values()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg(id: &str) -> TenantConfig {
        TenantConfig {
            id: id.into(),
            api_key_sha256: vec![hash_api_key(&format!("key-{id}"))],
            nats_nkey: None,
            rate_per_sec: 10.0,
            burst: 2,
            daily_quota: Some(3),
            keys: None,
            trace_sample_ratio: None,
        }
    }

    #[test]
    fn a_bearer_key_finds_its_tenant_and_a_wrong_key_is_unauthorized() {
        let t = Tenants::new(&[cfg("acme"), cfg("beta")]).unwrap();
        assert_eq!(
            t.authenticate(Some("Bearer key-acme")).unwrap().id.as_str(),
            "acme"
        );
        for bad in [
            None,
            Some("Bearer "),
            Some("Basic x"),
            Some("Bearer key-nope"),
        ] {
            let e = t.authenticate(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::Unauthorized);
            assert!(!e.message.contains("key-nope"), "the key is not echoed");
        }
        assert_eq!(t.get("gamma").unwrap_err().code, ErrorCode::Unauthorized);
    }

    #[test]
    fn the_token_bucket_allows_the_burst_then_says_when_to_retry() {
        let t = Tenants::new(&[cfg("acme")]).unwrap();
        let acme = t.get("acme").unwrap();
        let now = Instant::now();
        acme.take_token(now).unwrap();
        acme.take_token(now).unwrap();
        let e = acme.take_token(now).unwrap_err();
        assert_eq!(e.code, ErrorCode::RateLimited);
        assert_eq!(e.retry_after_ms, Some(100));
        acme.take_token(now + Duration::from_millis(100)).unwrap();
    }

    #[test]
    fn bad_configs_are_refused_with_the_tenant_named() {
        let mut dup = cfg("beta");
        dup.api_key_sha256 = cfg("acme").api_key_sha256;
        let e = Tenants::new(&[cfg("acme"), dup]).unwrap_err();
        assert!(e.to_string().contains("share an API key"), "{e}");
        let mut bad = cfg("acme");
        bad.api_key_sha256 = vec!["plain-key".into()];
        assert!(Tenants::new(&[bad]).is_err());
        assert!(Tenants::new(&[cfg("a b")]).is_err());
        assert!(Tenants::new(&[cfg("acme"), cfg("acme")]).is_err());
    }
}
