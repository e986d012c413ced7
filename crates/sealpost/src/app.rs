//! The production wiring: [`App::start`] turns a [`Config`] and a list of [`Role`]s into a
//! [`Running`] process. `sealpost serve`, the demo, every bench and the integration tests start
//! Sealpost through here, so the tests cover the wiring that ships.
//!
//! What each role gets:
//! - **gateway:** the event store and command executor, the blob store (embedded S3 unless
//!   `[s3] endpoint` is set), the tenants, receipt webhooks (`[carriers.rbm] client_token`), the
//!   status source (the `messages` view when `[postgres] url` is set) and the dashboard, on the
//!   NATS service `sealpost` and the HTTP API at `[gateway] http_listen`;
//! - **delivery, receipts, expiry, fallback:** one `sealpost_delivery::Delivery` with the
//!   configured carriers and throttles, and a state-cached executor;
//! - **projector:** every projection on the configured Postgres, plus the gauges it reports;
//! - a process without the gateway serves `/metrics` and `/healthz` on `[gateway] http_listen`.
//!
//! Every process checks the server version and the streams' flags first and refuses to run on a
//! server that dropped one.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context as _;
use sealpost_blobstore::{BlobStore, EmbeddedS3};
use sealpost_delivery::{CarrierSlot, Carriers, Delivery, GateConfig, RunningConsumers};
use sealpost_domain::Message;
use sealpost_eventstore::names::Role;
use sealpost_eventstore::provision::{
    check_ready, embedded_definitions, Definitions, StreamOverrides,
};
use sealpost_eventstore::{CommandExecutor, JetStreamEventStore, StoreConfig};
use sealpost_gateway::{Gateway, RunningGateway, Tenants};
use sealpost_projections::{ProjectionName, RunningProjector};

use crate::config::Config;

/// How many message states a delivery process keeps in memory (a miss costs one load).
const DELIVERY_STATE_CACHE: usize = 100_000;

/// How long a starting process waits for JetStream to answer (a cluster electing a leader, a node
/// restarting) before it gives up.
pub(crate) const READY_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// How a starting process waits for a dependency (JetStream, Postgres) that does not answer yet:
/// 250 ms doubling to 5 s, jittered, for up to [`READY_WAIT`] in all.
pub(crate) fn startup_backoff() -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(250))
        .with_max_delay(std::time::Duration::from_secs(5))
        .with_total_delay(Some(READY_WAIT))
        .without_max_times()
        .with_jitter()
}

/// Checks the server and the streams. A stream that is missing or wrongly configured, or a server
/// that cannot serve, fails at once; JetStream not answering is waited out (with a warning every
/// attempt) for up to [`READY_WAIT`], so that a process started during a leader election starts
/// instead of exiting.
async fn wait_until_ready(js: &async_nats::jetstream::Context) -> anyhow::Result<()> {
    use backon::Retryable as _;
    let defs = embedded_definitions();
    let check = || check_ready(js, &defs);
    let waited = std::time::Instant::now();
    check
        .retry(startup_backoff())
        .when(|e| e.kind() == sealpost_eventstore::StoreErrorKind::Unavailable)
        .notify(|e, next| {
            tracing::warn!(error = %e, retry_in_ms = next.as_millis() as u64, "JetStream is not ready yet; waiting");
        })
        .await
        .with_context(|| {
            format!(
                "the streams are not ready after {} s; check that NATS answers and run `sealpost provision`",
                waited.elapsed().as_secs()
            )
        })
}

/// Starts Sealpost's roles.
#[derive(Debug)]
pub struct App;

/// A running process. Dropping it stops every role it started (unacked work is redelivered).
pub struct Running {
    roles: Vec<Role>,
    http_addr: Option<SocketAddr>,
    // Drop order: the consumers stop taking work first, then the gateway, then the rest.
    delivery: Option<(Delivery, RunningConsumers)>,
    projector: Option<RunningProjector>,
    gateway: Option<RunningGateway>,
    background: Vec<AbortOnDrop>,
    keys: Option<crate::keys::RunningKeys>,
    blobs: Option<Blobs>,
    /// Taken by [`Running::wait`]; in a mutex only so that `Running` is `Sync`.
    shutdown: std::sync::Mutex<Option<Pin<Box<dyn Future<Output = ()> + Send>>>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("roles", &self.roles)
            .field("http_addr", &self.http_addr)
            .finish_non_exhaustive()
    }
}

/// The object store of this process: the configured endpoint, or an embedded one.
struct Blobs {
    store: BlobStore,
    /// Kept alive while the process serves; `None` when an external endpoint is configured.
    embedded: Option<EmbeddedS3>,
}

/// A background task stopped with the process.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl App {
    /// Starts `roles` with `cfg`; the returned [`Running`] serves until `shutdown` resolves
    /// ([`Running::wait`]) or it is dropped. Fails, before anything serves, when NATS or a
    /// stream is not ready, a role lacks its configuration, or a listener cannot bind.
    pub async fn start(
        cfg: Config,
        roles: &[Role],
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<Running> {
        let mut roles = roles.to_vec();
        roles.sort();
        roles.dedup();
        let has = |r: Role| roles.contains(&r);
        let delivery_roles: Vec<Role> = Role::DELIVERY.into_iter().filter(|r| has(*r)).collect();

        let client = connect(&cfg).await?;
        let js = async_nats::jetstream::new(client.clone());
        wait_until_ready(&js).await?;

        let mut running = Running {
            roles: roles.clone(),
            http_addr: None,
            delivery: None,
            projector: None,
            gateway: None,
            background: Vec::new(),
            keys: None,
            blobs: None,
            shutdown: std::sync::Mutex::new(Some(Box::pin(shutdown))),
        };
        if has(Role::Projector) {
            let (projector, gauges) = crate::views::start_projector(&cfg, js.clone()).await?;
            running.projector = Some(projector);
            running.background.push(AbortOnDrop(gauges));
        }
        // The object store only for the roles that read or write ciphertext, and the key
        // directory's archive.
        if has(Role::Gateway) || has(Role::Keys) || !delivery_roles.is_empty() {
            running.blobs = Some(blobs(&cfg).await?);
        }
        let store = running.blobs.as_ref().map(|b| b.store.clone());
        if let (true, Some(store)) = (has(Role::Keys), store.clone()) {
            running.keys = Some(crate::keys::start(&cfg, connect(&cfg).await?, store).await?);
        }
        let delivery = match (delivery_roles.is_empty(), store.clone()) {
            (false, Some(store)) => Some(delivery(&cfg, connect(&cfg).await?, store)?),
            _ => None,
        };
        if let (true, Some(store)) = (has(Role::Gateway), store) {
            // With the delivery roles in this process, the gateway applies receipts at once on
            // their state cache, after the worker's record of the carrier's answer. A gateway on
            // its own stores every receipt for the receipts role, as before.
            let receipts: Option<Arc<dyn sealpost_carriers::webhook::ApplyReceipt>> = delivery
                .as_ref()
                .map(|d| d.receipts() as Arc<dyn sealpost_carriers::webhook::ApplyReceipt>);
            let gateway = gateway(&cfg, connect(&cfg).await?, store, receipts).await?;
            running.http_addr = Some(gateway.http_addr);
            running.gateway = Some(gateway);
        }
        if let Some(d) = delivery {
            let consumers = d.start(&delivery_roles);
            running.delivery = Some((d, consumers));
        }
        running
            .background
            .push(AbortOnDrop(sealpost_telemetry::spawn_queue_depth_poller(
                js,
                Role::DELIVERY
                    .iter()
                    .flat_map(|r| r.durables())
                    .map(|d| (d.stream().as_str().to_owned(), d.as_str().to_owned()))
                    .collect(),
            )));
        if running.gateway.is_none() {
            // /metrics and /healthz still need a port. A port conflict here must not stop the
            // workers: they matter more than their metrics.
            match metrics_only(cfg.gateway.http_listen).await {
                Ok((addr, task)) => {
                    running.http_addr = Some(addr);
                    running.background.push(AbortOnDrop(task));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no /metrics listener; set [gateway] http_listen to a free address")
                }
            }
        }
        tracing::info!(roles = ?running.roles, http = ?running.http_addr, "running");
        Ok(running)
    }
}

impl Running {
    /// The roles this process runs.
    pub fn roles(&self) -> &[Role] {
        &self.roles
    }

    /// The HTTP API (gateway) or the `/metrics` listener (other roles), once bound.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The object store the gateway and delivery roles use.
    pub fn blob_store(&self) -> Option<&BlobStore> {
        self.blobs.as_ref().map(|b| &b.store)
    }

    /// The embedded S3 endpoint's URL, when this process runs one.
    pub fn embedded_s3(&self) -> Option<String> {
        self.blobs
            .as_ref()
            .and_then(|b| b.embedded.as_ref())
            .map(|e| e.endpoint())
    }

    /// The projections this process maintains.
    pub fn projections(&self) -> &[ProjectionName] {
        self.projector
            .as_ref()
            .map_or(&[], |p| p.projections.as_slice())
    }

    /// Serves until the shutdown future resolves; fails when the gateway stops on its own.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let shutdown = self
            .shutdown
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let shutdown = async move {
            match shutdown {
                Some(s) => s.await,
                None => std::future::pending().await,
            }
        };
        match self.gateway.as_mut() {
            Some(g) => tokio::select! {
                () = g.wait() => anyhow::bail!("the gateway stopped; see the log above"),
                () = shutdown => Ok(()),
            },
            None => {
                shutdown.await;
                Ok(())
            }
        }
    }
}

/// Creates or updates the streams and consumers of `defs` with the configured replicas and
/// duplicate window, verifies each stream's flags on the server, and creates the source consumer
/// of every tenant with a NATS account (`sealpost provision`).
pub async fn provision(
    cfg: &Config,
    defs: &Definitions,
) -> anyhow::Result<sealpost_eventstore::provision::ProvisionReport> {
    let js = async_nats::jetstream::new(connect(cfg).await?);
    let overrides = StreamOverrides {
        replicas: Some(cfg.nats.replicas),
        duplicate_window: Some(cfg.nats.duplicate_window),
    };
    let mut report = sealpost_eventstore::provision::provision(&js, defs, &overrides)
        .await
        .context("provisioning the streams and consumers")?;
    let tenants: Vec<_> = sealpost_gateway::tenant_accounts(&cfg.tenants)
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    sealpost_eventstore::provision::provision_tenant_sources(&js, &tenants, &mut report)
        .await
        .context("provisioning the tenants' source consumers")?;
    Ok(report)
}

/// `sealpost dr mirror`: on the standby `[nats] url` points at, mirrors the sources of truth
/// from the primary's JetStream domain (see `sealpost_eventstore::mirror`).
pub async fn dr_mirror(
    cfg: &Config,
    primary_domain: &str,
) -> anyhow::Result<Vec<sealpost_eventstore::mirror::MirrorState>> {
    let js = async_nats::jetstream::new(connect(cfg).await?);
    Ok(sealpost_eventstore::mirror::create_mirrors(
        &js,
        &sealpost_eventstore::provision::embedded_definitions(),
        primary_domain,
    )
    .await?)
}

/// `sealpost dr status`: the standby's mirrors, their last sequence and lag.
pub async fn dr_status(
    cfg: &Config,
) -> anyhow::Result<Vec<sealpost_eventstore::mirror::MirrorState>> {
    let js = async_nats::jetstream::new(connect(cfg).await?);
    Ok(sealpost_eventstore::mirror::status(&js).await?)
}

/// `sealpost dr promote`: the standby's mirrors become the streams (then `provision` the rest).
pub async fn dr_promote(
    cfg: &Config,
) -> anyhow::Result<Vec<sealpost_eventstore::mirror::MirrorState>> {
    let js = async_nats::jetstream::new(connect(cfg).await?);
    Ok(sealpost_eventstore::mirror::promote(
        &js,
        &sealpost_eventstore::provision::embedded_definitions(),
    )
    .await?)
}

/// Connects to the configured NATS server with the configured timeouts and credentials.
pub async fn connect(cfg: &Config) -> anyhow::Result<async_nats::Client> {
    connect_with(cfg, async_nats::ConnectOptions::new()).await
}

/// [`connect`] with extra options (a custom inbox prefix, an event callback).
pub async fn connect_with(
    cfg: &Config,
    options: async_nats::ConnectOptions,
) -> anyhow::Result<async_nats::Client> {
    let options = if cfg.nats.nkey_seed.is_empty() {
        options
    } else {
        options.nkey(cfg.nats.nkey_seed.expose().to_owned())
    };
    let servers = cfg
        .nats
        .servers()
        .map_err(|e| anyhow::anyhow!("[nats] url: {e}"))?;
    options
        .name("sealpost")
        .request_timeout(Some(cfg.nats.request_timeout))
        .connection_timeout(std::time::Duration::from_secs(5))
        .connect(servers)
        .await
        .with_context(|| {
            format!(
                "cannot connect to NATS at {}; set SEALPOST_NATS_URL (scripts/demo starts a private server)",
                cfg.nats.url
            )
        })
}

/// The event store and command executor of the `Message` aggregate.
pub fn executor(cfg: &Config, client: async_nats::Client) -> CommandExecutor<Message> {
    let store = JetStreamEventStore::<Message>::new(
        client,
        StoreConfig {
            timeout: cfg.nats.request_timeout,
            ..StoreConfig::default()
        },
    );
    CommandExecutor::new(store, cfg.retry_policy())
}

async fn blobs(cfg: &Config) -> anyhow::Result<Blobs> {
    let (blob_cfg, embedded) = if cfg.s3.endpoint.is_empty() {
        let dir = &cfg.s3.embedded_dir;
        let e = EmbeddedS3::start(
            dir,
            cfg.s3.embedded_listen,
            &cfg.s3.access_key_id,
            cfg.s3.secret_access_key.expose(),
        )
        .await
        .with_context(|| format!("starting the embedded S3 endpoint over {}", dir.display()))?;
        tracing::info!(endpoint = %e.endpoint(), dir = %dir.display(), "embedded S3 endpoint");
        (e.config(&cfg.s3.bucket), Some(e))
    } else {
        (cfg.s3.blob_config(Some(cfg.s3.endpoint.clone())), None)
    };
    let store = BlobStore::new(&blob_cfg)?;
    match store.ensure_bucket().await {
        Ok(()) => {}
        // An S3 outage must not keep a restarted gateway or worker down: what needs S3 is
        // refused `unavailable` (sends of unknown blobs) or retried (presigning needs no
        // request) until it is back. The bucket is checked again in the background.
        Err(e) if e.kind() == sealpost_blobstore::BlobErrorKind::Unavailable => {
            tracing::warn!(error = %e, bucket = %cfg.s3.bucket, "S3 is unreachable at start; starting anyway, and checking the bucket again every 5 s");
            let store = store.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                    match store.ensure_bucket().await {
                        Ok(()) => {
                            tracing::info!("S3 is reachable again; the bucket is there");
                            return;
                        }
                        Err(e) if e.kind() == sealpost_blobstore::BlobErrorKind::Unavailable => {}
                        Err(e) => {
                            tracing::error!(error = %e, "the payload bucket cannot be used; check [s3] in the config");
                            return;
                        }
                    }
                }
            });
        }
        Err(e) => return Err(e).with_context(|| format!("bucket '{}'", cfg.s3.bucket)),
    }
    Ok(Blobs { store, embedded })
}

async fn gateway(
    cfg: &Config,
    client: async_nats::Client,
    blobs: BlobStore,
    receipts: Option<Arc<dyn sealpost_carriers::webhook::ApplyReceipt>>,
) -> anyhow::Result<RunningGateway> {
    let tenants = Tenants::new(&cfg.tenants)?;
    if tenants.is_empty() {
        tracing::warn!("no [[tenants]] configured: every request will be refused as unauthorized");
    }
    // The event store gets a connection of its own: the service's requests and replies and the
    // store's appends and loads then do not queue behind each other on one socket (measured in
    // `sealpost bench ingress`).
    let gateway = Gateway::new(
        executor(cfg, connect(cfg).await?),
        blobs,
        tenants,
        cfg.gateway.max_blob_bytes,
    )
    .with_receipts(sealpost_gateway::ReceiptConfig {
        rbm_key: Some(cfg.carriers.rbm.client_token.clone())
            .filter(|t| !t.is_empty())
            .map(sealpost_carriers::webhook::WebhookKey::new),
        apply: receipts,
    });
    let gateway = match crate::status::source(cfg) {
        Some(source) => gateway.with_status_source(source),
        None => gateway,
    };
    let gateway = match cfg.delivery.device_link_key() {
        Some(key) => gateway.with_device_links(key),
        None => gateway,
    };
    // The dashboard at `/` reads the Postgres views; without a database it answers 503.
    let dashboard = crate::dashboard::Dashboard::lazy(
        cfg.postgres.url(),
        Some(async_nats::jetstream::new(client.clone())),
    );
    let addr = cfg.gateway.http_listen;
    RunningGateway::start_with(client, gateway, addr, dashboard.router())
        .await
        .with_context(|| format!("listening on {addr}"))
}

/// The configured carriers with their throttles.
fn carriers(cfg: &Config) -> anyhow::Result<Carriers> {
    use sealpost_carriers::{
        RbmCarrier, RbmConfig, RbmCredentials, ServiceAccountKey, SmsCarrier, SmsConfig,
    };

    let rbm = &cfg.carriers.rbm;
    anyhow::ensure!(
        !rbm.base_url.is_empty(),
        "the delivery roles need an RBM endpoint: set [carriers.rbm] base_url (or SEALPOST_CARRIERS_RBM_BASE_URL); `sealpost carrier-sim` serves one for development"
    );
    let credentials = if rbm.service_account_key_file.is_empty() {
        anyhow::ensure!(
            !rbm.bearer_token.is_empty(),
            "the delivery roles need RBM credentials: set [carriers.rbm] service_account_key_file (Google) or bearer_token (SEALPOST_CARRIERS_RBM_BEARER_TOKEN, for aggregators)"
        );
        RbmCredentials::Bearer(rbm.bearer_token.clone())
    } else {
        RbmCredentials::ServiceAccount {
            key: ServiceAccountKey::from_file(std::path::Path::new(&rbm.service_account_key_file))?,
            token_uri: Some(rbm.token_uri.clone()).filter(|u| !u.is_empty()),
        }
    };
    let opaque = CarrierSlot::new(
        Arc::new(RbmCarrier::new(RbmConfig {
            base_url: rbm.base_url.clone(),
            agent_id: rbm.agent_id.clone(),
            credentials,
            timeout: rbm.timeout,
        })?),
        GateConfig {
            concurrency: rbm.concurrency,
            rate_per_sec: rbm.rate_per_sec,
            burst: rbm.burst,
            throttled_concurrency: rbm.throttled_concurrency,
            throttle_cooldown: rbm.throttle_cooldown,
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
                timeout: sms.timeout,
            })?),
            GateConfig {
                concurrency: sms.concurrency,
                rate_per_sec: sms.rate_per_sec,
                burst: sms.burst,
                throttled_concurrency: sms.throttled_concurrency,
                throttle_cooldown: sms.throttle_cooldown,
            },
        ))
    };
    Ok(Carriers { opaque, notice })
}

/// The delivery roles' shared context (not yet started).
fn delivery(
    cfg: &Config,
    client: async_nats::Client,
    blobs: BlobStore,
) -> anyhow::Result<Delivery> {
    let d = &cfg.delivery;
    Ok(Delivery::new(
        client.clone(),
        executor(cfg, client).with_cache(DELIVERY_STATE_CACHE),
        blobs,
        carriers(cfg)?,
        sealpost_delivery::DeliveryConfig {
            concurrency: d.concurrency,
            max_pause_wait: d.max_pause_wait,
            carrier_auth_pause: d.carrier_auth_pause,
            payload_url_ttl: d.payload_url_ttl,
            receipt_retry: d.receipt_retry,
            carrier_ttl_grace: d.carrier_ttl_grace,
            device_links: d.device_links(),
            ..Default::default()
        },
    ))
}

/// `/metrics` and `/healthz` on `addr`, for processes without the gateway role.
async fn metrics_only(
    addr: SocketAddr,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening for /metrics on {addr}"))?;
    let bound = listener.local_addr()?;
    let router = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(sealpost_gateway::http::metrics),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }));
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "metrics listener stopped");
        }
    });
    Ok((bound, task))
}
