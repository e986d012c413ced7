//! Configuration: the embedded commented defaults (`config.default.toml`), then a file, then
//! `SEALPOST_<SECTION>_<KEY>` environment variables, then validation.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _};
use sealpost_domain::policy::{RetryPolicy, RetryWindows};
use serde::{Deserialize, Serialize};

/// The embedded defaults, with a comment on every key.
pub const DEFAULT_TOML: &str = include_str!("../config.default.toml");

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub nats: NatsConfig,
    pub gateway: GatewayConfig,
    pub s3: S3Config,
    pub retry: RetryConfig,
    pub delivery: DeliverySection,
    pub carriers: CarriersSection,
    pub log: LogConfig,
    pub postgres: PostgresSection,
    #[serde(default)]
    pub tenants: Vec<sealpost_gateway::TenantConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    pub http_listen: String,
    pub max_blob_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub force_path_style: bool,
    pub embedded_listen: String,
    pub embedded_dir: String,
}

impl S3Config {
    /// The blob store config for a given endpoint.
    pub fn blob_config(&self, endpoint: Option<String>) -> sealpost_blobstore::BlobStoreConfig {
        sealpost_blobstore::BlobStoreConfig {
            endpoint,
            region: self.region.clone(),
            bucket: self.bucket.clone(),
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            force_path_style: self.force_path_style,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    pub url: String,
    pub replicas: usize,
    pub duplicate_window_secs: u64,
    pub request_timeout_ms: u64,
    pub nkey_seed: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    pub base_ms: u64,
    pub max_ms: u64,
    pub max_attempts: u32,
    pub transactional_window_secs: u64,
    pub promotional_window_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySection {
    pub concurrency: usize,
    pub max_pause_wait_ms: u64,
    pub payload_url_ttl_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CarriersSection {
    pub rbm: RbmSection,
    pub sms: SmsSection,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RbmSection {
    pub base_url: String,
    pub agent_id: String,
    pub bearer_token: String,
    pub client_token: String,
    pub timeout_ms: u64,
    pub concurrency: usize,
    pub rate_per_sec: u32,
    pub burst: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsSection {
    pub base_url: String,
    pub api_key: String,
    pub sender: String,
    pub timeout_ms: u64,
    pub concurrency: usize,
    pub rate_per_sec: u32,
    pub burst: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSection {
    pub url: String,
    pub max_connections: u32,
    pub batch_size: usize,
    pub batch_wait_ms: u64,
    pub retention_days: u64,
}

impl PostgresSection {
    /// `url`, else `DATABASE_URL`.
    pub fn resolved_url(&self) -> anyhow::Result<String> {
        if !self.url.is_empty() {
            return Ok(self.url.clone());
        }
        match std::env::var("DATABASE_URL") {
            Ok(u) if !u.is_empty() => Ok(u),
            _ => bail!(
                "no PostgreSQL configured: set DATABASE_URL or [postgres] url \
                 (SEALPOST_POSTGRES_URL); scripts/demo and scripts/test find or start one"
            ),
        }
    }

    /// The projector's settings.
    pub fn projector(&self) -> sealpost_projections::ProjectorConfig {
        sealpost_projections::ProjectorConfig {
            batch_size: self.batch_size,
            batch_wait: Duration::from_millis(self.batch_wait_ms),
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: String,
    pub filter: String,
}

impl Config {
    /// Defaults, then `file`, then the environment; validated.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let file_text = match file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("reading config file {}", p.display()))?,
            ),
            None => None,
        };
        Self::from_layers(file_text.as_deref(), &env)
    }

    /// The layering without touching the process: for tests.
    pub fn from_layers(file: Option<&str>, env: &[(String, String)]) -> anyhow::Result<Config> {
        let mut value: toml::Table = toml::from_str(DEFAULT_TOML).context("embedded defaults")?;
        if let Some(text) = file {
            let overlay: toml::Table =
                toml::from_str(text).context("config file is not valid TOML")?;
            merge(&mut value, overlay);
        }
        apply_env(&mut value, env)?;
        let cfg: Config = toml::Value::Table(value)
            .try_into()
            .context("invalid configuration")?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let n = &self.nats;
        if !["nats://", "tls://", "ws://", "wss://"]
            .iter()
            .any(|p| n.url.starts_with(p))
        {
            bail!(
                "nats.url must start with nats://, tls://, ws:// or wss:// (got '{}')",
                n.url
            );
        }
        if !(1..=5).contains(&n.replicas) {
            bail!(
                "nats.replicas must be 1 to 5 (3 on a cluster), got {}",
                n.replicas
            );
        }
        if n.duplicate_window_secs == 0 {
            bail!("nats.duplicate_window_secs must be at least 1");
        }
        if n.request_timeout_ms == 0 {
            bail!("nats.request_timeout_ms must be at least 1");
        }
        let r = &self.retry;
        if r.base_ms == 0 || r.base_ms > r.max_ms {
            bail!("retry.base_ms must be at least 1 and at most retry.max_ms");
        }
        if r.max_attempts == 0 {
            bail!("retry.max_attempts must be at least 1");
        }
        if r.transactional_window_secs < 60 || r.promotional_window_secs < 60 {
            bail!("retry windows must be at least 60 seconds");
        }
        if !n.nkey_seed.is_empty() && !n.nkey_seed.starts_with("SU") {
            bail!("nats.nkey_seed must be a user seed starting with 'SU' (set SEALPOST_NATS_NKEY_SEED)");
        }
        if self
            .gateway
            .http_listen
            .parse::<std::net::SocketAddr>()
            .is_err()
        {
            bail!(
                "gateway.http_listen must be an address like 127.0.0.1:8080 (got '{}')",
                self.gateway.http_listen
            );
        }
        if self
            .s3
            .embedded_listen
            .parse::<std::net::SocketAddr>()
            .is_err()
        {
            bail!(
                "s3.embedded_listen must be an address like 127.0.0.1:0 (got '{}')",
                self.s3.embedded_listen
            );
        }
        if self.s3.bucket.is_empty() {
            bail!("s3.bucket must not be empty");
        }
        sealpost_gateway::Tenants::new(&self.tenants)?;
        if self.delivery.concurrency == 0 {
            bail!("delivery.concurrency must be at least 1");
        }
        if self.delivery.payload_url_ttl_secs == 0
            || self.delivery.payload_url_ttl_secs > 7 * 24 * 3600
        {
            bail!("delivery.payload_url_ttl_secs must be 1 to 604800 (S3 presigns up to 7 days)");
        }
        for (name, url, timeout, conc) in [
            (
                "rbm",
                &self.carriers.rbm.base_url,
                self.carriers.rbm.timeout_ms,
                self.carriers.rbm.concurrency,
            ),
            (
                "sms",
                &self.carriers.sms.base_url,
                self.carriers.sms.timeout_ms,
                self.carriers.sms.concurrency,
            ),
        ] {
            if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
                bail!("carriers.{name}.base_url must start with http:// or https://");
            }
            if timeout == 0 || conc == 0 {
                bail!(
                    "carriers.{name}.timeout_ms and carriers.{name}.concurrency must be at least 1"
                );
            }
        }
        let pg = &self.postgres;
        let pg_url_ok = pg.url.is_empty()
            || pg.url.starts_with("postgres://")
            || pg.url.starts_with("postgresql://");
        if !pg_url_ok {
            bail!("postgres.url must start with postgres:// or postgresql:// (or be empty to use DATABASE_URL)");
        }
        if pg.max_connections == 0 || pg.batch_size == 0 || pg.batch_size > 50_000 {
            bail!("postgres.max_connections must be at least 1 and postgres.batch_size 1 to 50000");
        }
        if !["text", "json"].contains(&self.log.format.as_str()) {
            bail!(
                "log.format must be \"text\" or \"json\" (got '{}')",
                self.log.format
            );
        }
        Ok(())
    }

    /// A copy safe to print: secrets replaced by `<set>`.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        let mask = |s: &mut String| {
            if !s.is_empty() {
                *s = "<set>".into();
            }
        };
        mask(&mut c.nats.nkey_seed);
        mask(&mut c.s3.secret_access_key);
        mask(&mut c.carriers.rbm.bearer_token);
        mask(&mut c.carriers.rbm.client_token);
        mask(&mut c.carriers.sms.api_key);
        // A password inside the URL: postgres://user:<set>@host/db
        if let Some((head, rest)) = c.postgres.url.split_once("://") {
            if let Some((auth, host)) = rest.split_once('@') {
                if let Some((user, _)) = auth.split_once(':') {
                    c.postgres.url = format!("{head}://{user}:<set>@{host}");
                }
            }
        }
        c
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        let r = &self.retry;
        RetryPolicy {
            base: Duration::from_millis(r.base_ms),
            max: Duration::from_millis(r.max_ms),
            max_attempts: r.max_attempts,
            windows: RetryWindows {
                transactional: Duration::from_secs(r.transactional_window_secs),
                promotional: Duration::from_secs(r.promotional_window_secs),
            },
            tenant_windows: Default::default(),
        }
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.nats.request_timeout_ms)
    }
}

fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (k, v) in overlay {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Every `SEALPOST_<SECTION>_<KEY>` that names a known key overrides it, parsed as that key's
/// type. Other `SEALPOST_*` variables (the scripts' own) are left alone.
fn apply_env(value: &mut toml::Table, env: &[(String, String)]) -> anyhow::Result<()> {
    apply_env_at("SEALPOST", value, env)
}

/// Sets every key of `table` (recursively: `[carriers.rbm] bearer_token` is
/// `SEALPOST_CARRIERS_RBM_BEARER_TOKEN`) from the environment.
fn apply_env_at(
    prefix: &str,
    table: &mut toml::Table,
    env: &[(String, String)],
) -> anyhow::Result<()> {
    for (key, current) in table.iter_mut() {
        let name = format!("{prefix}_{key}").to_uppercase();
        if let Some(sub) = current.as_table_mut() {
            apply_env_at(&name, sub, env)?;
            continue;
        }
        if prefix == "SEALPOST" {
            continue;
        }
        let Some((_, raw)) = env.iter().find(|(k, _)| *k == name) else {
            continue;
        };
        *current = match current {
            toml::Value::Integer(_) => toml::Value::Integer(
                raw.trim()
                    .parse()
                    .with_context(|| format!("{name} must be a whole number (got '{raw}')"))?,
            ),
            toml::Value::Boolean(_) => toml::Value::Boolean(
                raw.trim()
                    .parse()
                    .with_context(|| format!("{name} must be true or false (got '{raw}')"))?,
            ),
            _ => toml::Value::String(raw.clone()),
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid_and_match_the_domain_defaults() {
        let cfg = Config::from_layers(None, &[]).expect("defaults");
        assert_eq!(cfg.nats.replicas, 1);
        assert_eq!(cfg.retry_policy(), RetryPolicy::default());
    }

    #[test]
    fn file_then_env_override_defaults() {
        let file = "[nats]\nurl = \"nats://10.0.0.1:4222\"\nreplicas = 3\n";
        let cfg = Config::from_layers(
            Some(file),
            &env(&[
                ("SEALPOST_NATS_URL", "nats://127.0.0.1:14222"),
                ("SEALPOST_RETRY_MAX_ATTEMPTS", "7"),
                ("SEALPOST_NATS_SERVER", "/ignored/by/config"),
            ]),
        )
        .expect("layers");
        assert_eq!(cfg.nats.url, "nats://127.0.0.1:14222");
        assert_eq!(cfg.nats.replicas, 3);
        assert_eq!(cfg.retry.max_attempts, 7);
    }

    #[test]
    fn typos_bad_values_and_bad_env_are_refused_with_the_key_named() {
        let e = Config::from_layers(Some("[nats]\nurll = \"x\"\n"), &[]).unwrap_err();
        assert!(format!("{e:#}").contains("urll"), "{e:#}");
        let e = Config::from_layers(Some("[nats]\nreplicas = 9\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("nats.replicas"), "{e}");
        let e =
            Config::from_layers(None, &env(&[("SEALPOST_NATS_REPLICAS", "three")])).unwrap_err();
        assert!(e.to_string().contains("SEALPOST_NATS_REPLICAS"), "{e}");
        let e = Config::from_layers(None, &env(&[("SEALPOST_LOG_FORMAT", "xml")])).unwrap_err();
        assert!(e.to_string().contains("log.format"), "{e}");
        let e = Config::from_layers(None, &env(&[("SEALPOST_NATS_URL", "http://x")])).unwrap_err();
        assert!(e.to_string().contains("nats.url"), "{e}");
        let e = Config::from_layers(Some("not toml ["), &[]).unwrap_err();
        assert!(e.to_string().contains("TOML"), "{e}");
    }
}
