//! Wiring for `sealpost serve`: connect, check the server and streams, start the roles.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use sealpost_blobstore::{BlobStore, EmbeddedS3};
use sealpost_domain::Message;
use sealpost_eventstore::{CommandExecutor, JetStreamEventStore, StoreConfig};
use sealpost_gateway::{Gateway, RunningGateway, Tenants};

use crate::config::Config;

/// The object store of this process: the configured endpoint, or an embedded one.
pub struct Blobs {
    pub store: BlobStore,
    /// Kept alive while the process serves; `None` when an external endpoint is configured.
    pub _embedded: Option<EmbeddedS3>,
}

pub async fn blobs(cfg: &Config) -> anyhow::Result<Blobs> {
    let (blob_cfg, embedded) = if cfg.s3.endpoint.is_empty() {
        let dir = PathBuf::from(&cfg.s3.embedded_dir);
        let addr: SocketAddr = cfg.s3.embedded_listen.parse()?;
        let e = EmbeddedS3::start(&dir, addr, &cfg.s3.access_key_id, &cfg.s3.secret_access_key)
            .await
            .with_context(|| format!("starting the embedded S3 endpoint over {}", dir.display()))?;
        tracing::info!(endpoint = %e.endpoint(), dir = %dir.display(), "embedded S3 endpoint");
        (e.config(&cfg.s3.bucket), Some(e))
    } else {
        (cfg.s3.blob_config(Some(cfg.s3.endpoint.clone())), None)
    };
    let store = BlobStore::new(&blob_cfg)?;
    store
        .ensure_bucket()
        .await
        .with_context(|| format!("bucket '{}'", cfg.s3.bucket))?;
    Ok(Blobs {
        store,
        _embedded: embedded,
    })
}

/// Starts the gateway role and returns it running.
pub async fn gateway(
    cfg: &Config,
    client: async_nats::Client,
    blobs: BlobStore,
) -> anyhow::Result<RunningGateway> {
    sealpost_eventstore::provision::check_ready(
        &async_nats::jetstream::new(client.clone()),
        &sealpost_eventstore::provision::embedded_definitions(),
    )
    .await
    .context("the event stream is not ready; run `sealpost provision` first")?;
    let store = JetStreamEventStore::<Message>::new(
        client.clone(),
        StoreConfig {
            timeout: cfg.request_timeout(),
            ..StoreConfig::default()
        },
    );
    let executor = CommandExecutor::new(store, cfg.retry_policy());
    let tenants = Tenants::new(&cfg.tenants)?;
    if tenants.is_empty() {
        tracing::warn!("no [[tenants]] configured: every request will be refused as unauthorized");
    }
    let gateway = Gateway::new(executor, blobs, tenants, cfg.gateway.max_blob_bytes);
    let addr: SocketAddr = cfg.gateway.http_listen.parse()?;
    let running = RunningGateway::start(client, gateway, addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    Ok(running)
}
