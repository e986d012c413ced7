//! Configuration, loaded one way: the embedded commented defaults (`config.default.toml`), then a
//! file, then `SEALPOST_<SECTION>_<KEY>` environment variables (and `DATABASE_URL` when
//! `[postgres] url` is empty), then validation. The result is typed: addresses are
//! `SocketAddr`s, durations `Duration`s (their keys keep the unit in the name, e.g.
//! `request_timeout_ms`), secrets [`Secret`]s that never print, and every refusal names the key
//! and the fix.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sealpost_domain::policy::{RetryPolicy, RetryWindows};
use sealpost_domain::Secret;
use serde::{Deserialize, Serialize};

/// The embedded defaults, with a comment on every key.
pub const DEFAULT_TOML: &str = include_str!("../config.default.toml");

/// Why a configuration was refused. Each names the key (or file, or variable) and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} is not valid TOML")]
    Toml {
        what: &'static str,
        #[source]
        source: toml::de::Error,
    },
    #[error("{var} must be {expected} (got '{got}')")]
    Env {
        var: String,
        expected: &'static str,
        got: String,
    },
    #[error("invalid configuration")]
    Shape {
        #[source]
        source: toml::de::Error,
    },
    #[error("{key}: {fix}")]
    Invalid { key: &'static str, fix: String },
}

fn invalid(key: &'static str, fix: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        fix: fix.into(),
    }
}

/// `Duration` fields stored as whole milliseconds or seconds under unit-suffixed keys.
mod ms {
    use super::*;
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

mod secs {
    use super::*;
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

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
    pub keys: KeysSection,
    #[serde(default)]
    pub tenants: Vec<sealpost_gateway::TenantConfig>,
}

/// `[keys]`: the `keys` role's epoch publisher (each tenant's directory is `[tenants.keys]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysSection {
    #[serde(rename = "epoch_interval_ms", with = "ms")]
    pub epoch_interval: Duration,
    pub epoch_max_changes: usize,
    #[serde(rename = "lease_ttl_ms", with = "ms")]
    pub lease_ttl: Duration,
    pub cache_mb: usize,
    /// How long archived checkpoints and proofs stay locked, where the bucket has Object Lock.
    pub archive_retention_days: u64,
}

impl KeysSection {
    pub fn publisher(&self) -> sealpost_keys::publisher::PublisherSettings {
        sealpost_keys::publisher::PublisherSettings {
            interval: self.epoch_interval,
            max_changes: self.epoch_max_changes,
            lease_ttl: self.lease_ttl,
            cache_bytes: self.cache_mb << 20,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    pub url: String,
    pub replicas: usize,
    #[serde(rename = "duplicate_window_secs", with = "secs")]
    pub duplicate_window: Duration,
    #[serde(rename = "request_timeout_ms", with = "ms")]
    pub request_timeout: Duration,
    pub nkey_seed: Secret,
}

impl NatsConfig {
    /// The servers of `url`: one URL, or several separated by commas (the nodes of a cluster;
    /// the client fails over between them). Each must be `nats://`, `tls://`, `ws://` or
    /// `wss://` with a host and port.
    pub fn servers(&self) -> Result<Vec<async_nats::ServerAddr>, String> {
        let mut out = Vec::new();
        for url in self.url.split(',').map(str::trim) {
            if !["nats://", "tls://", "ws://", "wss://"]
                .iter()
                .any(|p| url.starts_with(p))
            {
                return Err(format!(
                    "each server must start with nats://, tls://, ws:// or wss:// (got '{url}'); separate a cluster's nodes with commas"
                ));
            }
            out.push(
                url.parse::<async_nats::ServerAddr>()
                    .map_err(|e| format!("'{url}' is not a server URL: {e}"))?,
            );
        }
        Ok(out)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    pub http_listen: SocketAddr,
    pub max_blob_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Empty: the embedded endpoint.
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub force_path_style: bool,
    pub embedded_listen: SocketAddr,
    pub embedded_dir: PathBuf,
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
pub struct RetryConfig {
    #[serde(rename = "base_ms", with = "ms")]
    pub base: Duration,
    #[serde(rename = "max_ms", with = "ms")]
    pub max: Duration,
    pub max_attempts: u32,
    #[serde(rename = "transactional_window_secs", with = "secs")]
    pub transactional_window: Duration,
    #[serde(rename = "promotional_window_secs", with = "secs")]
    pub promotional_window: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySection {
    pub concurrency: usize,
    #[serde(rename = "max_pause_wait_ms", with = "ms")]
    pub max_pause_wait: Duration,
    #[serde(rename = "carrier_auth_pause_ms", with = "ms")]
    pub carrier_auth_pause: Duration,
    #[serde(rename = "payload_url_ttl_secs", with = "secs")]
    pub payload_url_ttl: Duration,
    #[serde(rename = "receipt_retry_ms", with = "ms")]
    pub receipt_retry: Duration,
    #[serde(rename = "carrier_ttl_grace_ms", with = "ms")]
    pub carrier_ttl_grace: Duration,
    /// The platform's device link key (64 hex digits; empty: no device links). A secret: the
    /// delivery roles mint links with it and the gateway checks them.
    pub device_link_key: Secret,
    /// The gateway's public URL the links point at, e.g. `https://sealpost.example.com`.
    pub device_link_base: String,
}

impl DeliverySection {
    /// The link key, when device links are enabled (checked by [`Config::validate`]).
    pub fn device_link_key(&self) -> Option<sealpost_keyformat::device_link::DeviceLinkKey> {
        if self.device_link_key.is_empty() {
            return None;
        }
        sealpost_keyformat::device_link::DeviceLinkKey::from_hex(self.device_link_key.expose()).ok()
    }

    /// How delivery mints links, when they are enabled.
    pub fn device_links(&self) -> Option<sealpost_delivery::DeviceLinks> {
        self.device_link_key()
            .map(|key| sealpost_delivery::DeviceLinks {
                key,
                base: self.device_link_base.trim_end_matches('/').to_owned(),
            })
    }
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
    /// A static bearer token (aggregators). Empty when the service account key is used.
    pub bearer_token: Secret,
    /// Path of the agent's Google service-account key (JSON; a secret: keep it mode 0600).
    /// When set, access tokens are fetched with it and `bearer_token` must be empty.
    pub service_account_key_file: String,
    /// The OAuth token endpoint; empty: the key file's `token_uri` (Google's).
    pub token_uri: String,
    pub client_token: Secret,
    #[serde(rename = "timeout_ms", with = "ms")]
    pub timeout: Duration,
    pub concurrency: usize,
    pub rate_per_sec: u32,
    pub burst: u32,
    /// Submissions in flight at once while the carrier throttled us within the cool-down.
    pub throttled_concurrency: usize,
    /// How long after its last 429 the carrier is held to `throttled_concurrency`.
    #[serde(rename = "throttle_cooldown_ms", with = "ms")]
    pub throttle_cooldown: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsSection {
    pub base_url: String,
    pub api_key: Secret,
    pub sender: String,
    #[serde(rename = "timeout_ms", with = "ms")]
    pub timeout: Duration,
    pub concurrency: usize,
    pub rate_per_sec: u32,
    pub burst: u32,
    /// Submissions in flight at once while the carrier throttled us within the cool-down.
    pub throttled_concurrency: usize,
    /// How long after its last 429 the carrier is held to `throttled_concurrency`.
    #[serde(rename = "throttle_cooldown_ms", with = "ms")]
    pub throttle_cooldown: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSection {
    /// Empty: no database (the projector and `migrate` refuse to run, status answers from
    /// events, the dashboard answers 503). `DATABASE_URL` fills it when set.
    pub url: Secret,
    pub max_connections: u32,
    pub batch_size: usize,
    #[serde(rename = "batch_wait_ms", with = "ms")]
    pub batch_wait: Duration,
    pub retention_days: u64,
}

impl PostgresSection {
    /// The URL, or what to configure.
    pub fn required_url(&self) -> Result<&str, ConfigError> {
        if self.url.is_empty() {
            return Err(invalid(
                "postgres.url",
                "no PostgreSQL configured: set DATABASE_URL or [postgres] url \
                 (SEALPOST_POSTGRES_URL); scripts/demo and scripts/test find or start one",
            ));
        }
        Ok(self.url.expose())
    }

    /// The URL if one is configured.
    pub fn url(&self) -> Option<&str> {
        (!self.url.is_empty()).then(|| self.url.expose())
    }

    /// The projector's settings.
    pub fn projector(&self) -> sealpost_projections::ProjectorConfig {
        sealpost_projections::ProjectorConfig {
            batch_size: self.batch_size,
            batch_wait: self.batch_wait,
            ..Default::default()
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people.
    Text,
    /// JSON lines, for log pipelines.
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    pub filter: String,
    /// OTLP/HTTP traces URL (e.g. `http://127.0.0.1:4318/v1/traces`); empty: no traces.
    pub otlp_traces_endpoint: String,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Share of messages traced for tenants without `trace_sample_ratio` (0.0 to 1.0).
    pub trace_sample_ratio: f64,
}

impl Config {
    /// The traces settings, when `[log] otlp_traces_endpoint` is set.
    pub fn traces(&self) -> Option<sealpost_telemetry::traces::TracesConfig> {
        if self.log.otlp_traces_endpoint.is_empty() {
            return None;
        }
        Some(sealpost_telemetry::traces::TracesConfig {
            endpoint: self.log.otlp_traces_endpoint.clone(),
            service_name: self.log.service_name.clone(),
            sample_ratio: self.log.trace_sample_ratio,
            tenant_ratios: self
                .tenants
                .iter()
                .filter_map(|t| Some((t.id.clone(), t.trace_sample_ratio?)))
                .collect(),
        })
    }
}

impl Config {
    /// Defaults, then `file`, then the process environment; validated.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let file_text = match file {
            Some(p) => Some(
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_owned(),
                    source,
                })?,
            ),
            None => None,
        };
        Self::from_layers(file_text.as_deref(), &env)
    }

    /// The embedded defaults alone, untouched by the environment: where tests and harnesses
    /// start before setting what they need.
    pub fn defaults() -> Config {
        Self::from_layers(None, &[]).expect("the embedded defaults are valid (a unit test checks)")
    }

    /// The layering without touching the process: for tests.
    pub fn from_layers(
        file: Option<&str>,
        env: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let toml_error = |what| move |source| ConfigError::Toml { what, source };
        let mut value: toml::Table =
            toml::from_str(DEFAULT_TOML).map_err(toml_error("the embedded defaults"))?;
        if let Some(text) = file {
            let overlay: toml::Table =
                toml::from_str(text).map_err(toml_error("the config file"))?;
            merge(&mut value, overlay);
        }
        apply_env(&mut value, env)?;
        let mut cfg: Config = toml::Value::Table(value)
            .try_into()
            .map_err(|source| ConfigError::Shape { source })?;
        if cfg.postgres.url.is_empty() {
            if let Some((_, url)) = env
                .iter()
                .find(|(k, v)| k == "DATABASE_URL" && !v.is_empty())
            {
                cfg.postgres.url = Secret::new(url.clone());
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let n = &self.nats;
        if let Err(e) = n.servers() {
            return Err(invalid("nats.url", e));
        }
        if !(1..=5).contains(&n.replicas) {
            return Err(invalid(
                "nats.replicas",
                format!("must be 1 to 5 (3 on a cluster), got {}", n.replicas),
            ));
        }
        if n.duplicate_window.is_zero() {
            return Err(invalid("nats.duplicate_window_secs", "must be at least 1"));
        }
        if n.request_timeout.is_zero() {
            return Err(invalid("nats.request_timeout_ms", "must be at least 1"));
        }
        if !n.nkey_seed.is_empty() && !n.nkey_seed.expose().starts_with("SU") {
            return Err(invalid(
                "nats.nkey_seed",
                "must be a user seed starting with 'SU' (set SEALPOST_NATS_NKEY_SEED)",
            ));
        }
        let k = &self.keys;
        if k.epoch_interval.is_zero() || k.epoch_max_changes == 0 {
            return Err(invalid(
                "keys.epoch_interval_ms",
                "keys.epoch_interval_ms and keys.epoch_max_changes must be at least 1",
            ));
        }
        if k.lease_ttl < 3 * k.epoch_interval.min(Duration::from_secs(1)) {
            return Err(invalid(
                "keys.lease_ttl_ms",
                "must be at least 3 renewals long (3 x min(epoch_interval_ms, 1000))",
            ));
        }
        let r = &self.retry;
        if r.base.is_zero() || r.base > r.max {
            return Err(invalid(
                "retry.base_ms",
                "must be at least 1 and at most retry.max_ms",
            ));
        }
        if r.max_attempts == 0 {
            return Err(invalid("retry.max_attempts", "must be at least 1"));
        }
        if r.transactional_window < Duration::from_secs(60)
            || r.promotional_window < Duration::from_secs(60)
        {
            return Err(invalid(
                "retry.transactional_window_secs",
                "retry windows must be at least 60 seconds",
            ));
        }
        if self.s3.bucket.is_empty() {
            return Err(invalid("s3.bucket", "must not be empty"));
        }
        if let Err(e) = sealpost_gateway::Tenants::new(&self.tenants) {
            return Err(invalid("tenants", e.to_string()));
        }
        let l = &self.log;
        if !(0.0..=1.0).contains(&l.trace_sample_ratio) {
            return Err(invalid(
                "log.trace_sample_ratio",
                "must be between 0.0 and 1.0",
            ));
        }
        if !(l.otlp_traces_endpoint.is_empty()
            || l.otlp_traces_endpoint.starts_with("http://")
            || l.otlp_traces_endpoint.starts_with("https://"))
        {
            return Err(invalid(
                "log.otlp_traces_endpoint",
                "must be an OTLP/HTTP URL such as http://127.0.0.1:4318/v1/traces",
            ));
        }
        if let Some(t) = self.tenants.iter().find(|t| {
            t.trace_sample_ratio
                .is_some_and(|r| !(0.0..=1.0).contains(&r))
        }) {
            return Err(invalid(
                "tenants.trace_sample_ratio",
                format!("tenant '{}': must be between 0.0 and 1.0", t.id),
            ));
        }
        let d = &self.delivery;
        if d.concurrency == 0 {
            return Err(invalid("delivery.concurrency", "must be at least 1"));
        }
        if d.payload_url_ttl.is_zero() || d.payload_url_ttl > Duration::from_secs(7 * 24 * 3600) {
            return Err(invalid(
                "delivery.payload_url_ttl_secs",
                "must be 1 to 604800 (S3 presigns up to 7 days)",
            ));
        }
        if d.receipt_retry.is_zero() {
            return Err(invalid("delivery.receipt_retry_ms", "must be at least 1"));
        }
        if d.carrier_auth_pause.is_zero() {
            return Err(invalid(
                "delivery.carrier_auth_pause_ms",
                "must be at least 1",
            ));
        }
        if !d.device_link_key.is_empty() {
            if d.device_link_key().is_none() {
                return Err(invalid(
                    "delivery.device_link_key",
                    "must be 64 hex digits (32 random bytes, e.g. `openssl rand -hex 32`); set SEALPOST_DELIVERY_DEVICE_LINK_KEY",
                ));
            }
            if !(d.device_link_base.starts_with("https://")
                || d.device_link_base.starts_with("http://"))
            {
                return Err(invalid(
                    "delivery.device_link_base",
                    "must be the gateway's public http(s) URL when delivery.device_link_key is set",
                ));
            }
        }
        let c = &self.carriers;
        if !c.rbm.service_account_key_file.is_empty() && !c.rbm.bearer_token.is_empty() {
            return Err(invalid(
                "carriers.rbm.service_account_key_file",
                "set either a service account key file (Google) or a bearer_token (aggregators), not both",
            ));
        }
        if !(c.rbm.token_uri.is_empty()
            || c.rbm.token_uri.starts_with("http://")
            || c.rbm.token_uri.starts_with("https://"))
        {
            return Err(invalid(
                "carriers.rbm.token_uri",
                "must start with http:// or https://",
            ));
        }
        for (key, url) in [
            ("carriers.rbm.base_url", &c.rbm.base_url),
            ("carriers.sms.base_url", &c.sms.base_url),
        ] {
            if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(key, "must start with http:// or https://"));
            }
        }
        for (key, timeout, concurrency, throttled) in [
            (
                "carriers.rbm",
                c.rbm.timeout,
                c.rbm.concurrency,
                c.rbm.throttled_concurrency,
            ),
            (
                "carriers.sms",
                c.sms.timeout,
                c.sms.concurrency,
                c.sms.throttled_concurrency,
            ),
        ] {
            if timeout.is_zero() || concurrency == 0 || throttled == 0 {
                return Err(invalid(
                    key,
                    "timeout_ms, concurrency and throttled_concurrency must be at least 1",
                ));
            }
        }
        let pg = &self.postgres;
        let pg_url = pg.url.expose();
        if !(pg_url.is_empty()
            || pg_url.starts_with("postgres://")
            || pg_url.starts_with("postgresql://"))
        {
            return Err(invalid(
                "postgres.url",
                "must start with postgres:// or postgresql:// (or be empty to use DATABASE_URL)",
            ));
        }
        if pg.max_connections == 0 {
            return Err(invalid("postgres.max_connections", "must be at least 1"));
        }
        if pg.batch_size == 0 || pg.batch_size > 50_000 {
            return Err(invalid("postgres.batch_size", "must be 1 to 50000"));
        }
        Ok(())
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        let r = &self.retry;
        RetryPolicy {
            base: r.base,
            max: r.max,
            max_attempts: r.max_attempts,
            windows: RetryWindows {
                transactional: r.transactional_window,
                promotional: r.promotional_window,
            },
            tenant_windows: Default::default(),
        }
    }

    /// The effective config as TOML, secrets shown as `<redacted>`.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
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
/// type (`[carriers.rbm] bearer_token` is `SEALPOST_CARRIERS_RBM_BEARER_TOKEN`). Other
/// `SEALPOST_*` variables (the scripts' own) are left alone.
fn apply_env(value: &mut toml::Table, env: &[(String, String)]) -> Result<(), ConfigError> {
    apply_env_at("SEALPOST", value, env)
}

fn apply_env_at(
    prefix: &str,
    table: &mut toml::Table,
    env: &[(String, String)],
) -> Result<(), ConfigError> {
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
        let bad = |expected| ConfigError::Env {
            var: name.clone(),
            expected,
            got: raw.chars().take(64).collect(),
        };
        *current = match current {
            toml::Value::Integer(_) => {
                toml::Value::Integer(raw.trim().parse().map_err(|_| bad("a whole number"))?)
            }
            toml::Value::Boolean(_) => {
                toml::Value::Boolean(raw.trim().parse().map_err(|_| bad("true or false"))?)
            }
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
        assert_eq!(cfg.log.format, LogFormat::Text);
        assert!(cfg.postgres.url().is_none());
    }

    #[test]
    fn file_then_env_override_defaults() {
        let file = "[nats]\nurl = \"nats://10.0.0.1:4222\"\nreplicas = 3\n";
        let cfg = Config::from_layers(
            Some(file),
            &env(&[
                ("SEALPOST_NATS_URL", "nats://127.0.0.1:14222"),
                ("SEALPOST_RETRY_MAX_ATTEMPTS", "7"),
                ("SEALPOST_DELIVERY_MAX_PAUSE_WAIT_MS", "1500"),
                ("SEALPOST_NATS_SERVER", "/ignored/by/config"),
                ("DATABASE_URL", "postgres://u:pw@db/x"),
            ]),
        )
        .expect("layers");
        assert_eq!(cfg.nats.url, "nats://127.0.0.1:14222");
        assert_eq!(cfg.nats.replicas, 3);
        assert_eq!(cfg.retry.max_attempts, 7);
        assert_eq!(cfg.delivery.max_pause_wait, Duration::from_millis(1500));
        assert_eq!(cfg.postgres.url(), Some("postgres://u:pw@db/x"));
    }

    #[test]
    fn typos_bad_values_and_bad_env_are_refused_with_the_key_named() {
        let e = Config::from_layers(Some("[nats]\nurll = \"x\"\n"), &[]).unwrap_err();
        assert!(
            format!("{:?}", anyhow::Error::from(e)).contains("urll"),
            "an unknown key is named"
        );
        let e = Config::from_layers(Some("[nats]\nreplicas = 9\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("nats.replicas"), "{e}");
        let e =
            Config::from_layers(None, &env(&[("SEALPOST_NATS_REPLICAS", "three")])).unwrap_err();
        assert!(e.to_string().contains("SEALPOST_NATS_REPLICAS"), "{e}");
        let e = Config::from_layers(None, &env(&[("SEALPOST_LOG_FORMAT", "xml")])).unwrap_err();
        assert!(
            format!("{:?}", anyhow::Error::from(e)).contains("xml"),
            "the bad log format is named"
        );
        let e = Config::from_layers(None, &env(&[("SEALPOST_NATS_URL", "http://x")])).unwrap_err();
        assert!(e.to_string().contains("nats.url"), "{e}");
        let e = Config::from_layers(None, &env(&[("SEALPOST_GATEWAY_HTTP_LISTEN", "localhost")]))
            .unwrap_err();
        assert!(
            format!("{:?}", anyhow::Error::from(e)).contains("http_listen"),
            "a bad address names its key"
        );
        let e = Config::from_layers(Some("not toml ["), &[]).unwrap_err();
        assert!(e.to_string().contains("TOML"), "{e}");
    }

    #[test]
    fn the_printed_config_never_shows_a_secret() {
        let cfg = Config::from_layers(
            None,
            &env(&[
                ("SEALPOST_CARRIERS_RBM_BEARER_TOKEN", "bearer-canary"),
                ("SEALPOST_CARRIERS_RBM_CLIENT_TOKEN", "client-canary"),
                ("SEALPOST_CARRIERS_SMS_API_KEY", "sms-canary"),
                ("SEALPOST_S3_SECRET_ACCESS_KEY", "s3-canary"),
                ("SEALPOST_NATS_NKEY_SEED", "SUcanary"),
                ("SEALPOST_POSTGRES_URL", "postgres://u:pg-canary@db/x"),
            ]),
        )
        .unwrap();
        let printed = format!("{}\n{cfg:?}", cfg.to_toml().unwrap());
        for canary in [
            "bearer-canary",
            "client-canary",
            "sms-canary",
            "s3-canary",
            "SUcanary",
            "pg-canary",
        ] {
            assert!(!printed.contains(canary), "{canary} leaked: {printed}");
        }
        assert!(printed.contains(sealpost_domain::secret::REDACTED));
    }
}
