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
    let gateway = Gateway::new(executor, blobs, tenants, cfg.gateway.max_blob_bytes)
        .with_receipts(receipt_config(cfg));
    let gateway = match crate::status::source(cfg) {
        Some(source) => gateway.with_status_source(source),
        None => gateway,
    };
    let addr: SocketAddr = cfg.gateway.http_listen.parse()?;
    // The dashboard at `/` reads the Postgres views; without a database it answers 503.
    let dashboard = crate::dashboard::Dashboard::lazy(
        cfg.postgres.resolved_url().ok().as_deref(),
        Some(async_nats::jetstream::new(client.clone())),
    );
    let running = RunningGateway::start_with(client, gateway, addr, dashboard.router())
        .await
        .with_context(|| format!("listening on {addr}"))?;
    Ok(running)
}

/// The event store and command executor every role uses.
pub fn executor(
    cfg: &Config,
    client: async_nats::Client,
    cache: usize,
) -> CommandExecutor<Message> {
    let store = JetStreamEventStore::<Message>::new(
        client,
        StoreConfig {
            timeout: cfg.request_timeout(),
            ..StoreConfig::default()
        },
    );
    CommandExecutor::new(store, cfg.retry_policy()).with_cache(cache)
}

/// Receipt webhooks the gateway accepts, from `[carriers.rbm] client_token`.
pub fn receipt_config(cfg: &Config) -> sealpost_gateway::ReceiptConfig {
    sealpost_gateway::ReceiptConfig {
        rbm_client_token: Some(cfg.carriers.rbm.client_token.clone()).filter(|t| !t.is_empty()),
    }
}

/// The configured carriers with their throttles.
pub fn carriers(cfg: &Config) -> anyhow::Result<sealpost_delivery::Carriers> {
    use sealpost_carriers::{RbmCarrier, RbmConfig, SmsCarrier, SmsConfig};
    use sealpost_delivery::{CarrierSlot, GateConfig};
    use std::sync::Arc;
    use std::time::Duration;

    let rbm = &cfg.carriers.rbm;
    anyhow::ensure!(
        !rbm.base_url.is_empty(),
        "the delivery roles need an RBM endpoint: set [carriers.rbm] base_url (or SEALPOST_CARRIERS_RBM_BASE_URL); `sealpost carrier-sim` serves one for development"
    );
    let opaque = CarrierSlot::new(
        Arc::new(RbmCarrier::new(RbmConfig {
            base_url: rbm.base_url.clone(),
            agent_id: rbm.agent_id.clone(),
            bearer_token: rbm.bearer_token.clone(),
            timeout: Duration::from_millis(rbm.timeout_ms),
        })?),
        GateConfig {
            concurrency: rbm.concurrency,
            rate_per_sec: rbm.rate_per_sec,
            burst: rbm.burst,
        },
    );
    let sms = &cfg.carriers.sms;
    let notice = if sms.base_url.is_empty() {
        None
    } else {
        Some(CarrierSlot::new(
            Arc::new(SmsCarrier::new(SmsConfig {
                base_url: sms.base_url.clone(),
                api_key: sms.api_key.clone(),
                sender: sms.sender.clone(),
                timeout: Duration::from_millis(sms.timeout_ms),
            })?),
            GateConfig {
                concurrency: sms.concurrency,
                rate_per_sec: sms.rate_per_sec,
                burst: sms.burst,
            },
        ))
    };
    Ok(sealpost_delivery::Carriers { opaque, notice })
}

/// The delivery roles' shared context.
pub async fn delivery(
    cfg: &Config,
    client: async_nats::Client,
    blobs: BlobStore,
) -> anyhow::Result<sealpost_delivery::Delivery> {
    sealpost_eventstore::provision::check_ready(
        &async_nats::jetstream::new(client.clone()),
        &sealpost_eventstore::provision::embedded_definitions(),
    )
    .await
    .context("the streams are not ready; run `sealpost provision` first")?;
    let carriers = carriers(cfg)?;
    let d = &cfg.delivery;
    Ok(sealpost_delivery::Delivery::new(
        client.clone(),
        executor(cfg, client, 100_000),
        blobs,
        carriers,
        sealpost_delivery::DeliveryConfig {
            concurrency: d.concurrency,
            max_pause_wait: std::time::Duration::from_millis(d.max_pause_wait_ms),
            payload_url_ttl: std::time::Duration::from_secs(d.payload_url_ttl_secs),
            ..Default::default()
        },
    ))
}

/// The consumers whose depth `sealpost_queue_depth` reports.
pub const QUEUES: [(&str, &str); 4] = [
    ("SEALPOST_EVENTS", "delivery"),
    ("SEALPOST_EVENTS", "fallback"),
    ("SEALPOST_RECEIPTS", "receipts"),
    ("SEALPOST_SCHEDULES", "expiry"),
];

/// `/metrics` and `/healthz` on `[gateway] http_listen`, for processes without the gateway role.
pub async fn metrics_only(cfg: &Config) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let addr: SocketAddr = cfg.gateway.http_listen.parse()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening for /metrics on {addr}"))?;
    println!("metrics on http://{}/metrics", listener.local_addr()?);
    let router = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(sealpost_gateway::http::metrics),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }));
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "metrics listener stopped");
        }
    }))
}
