//! The demo and bench harness: the whole delivery path in one process, for `sealpost demo` and
//! `sealpost bench delivery`. It starts the carrier simulator and Sealpost itself through
//! [`App::start`] (the gateway with its embedded S3 endpoint, and every delivery role, on the real
//! streams and durable consumers), sends messages over NATS as a tenant would, and follows the
//! run's events on `SEALPOST_EVENTS` with an ordered consumer (`observer`) until each is final.
//!
//! Every run gets its own tenant (`<prefix>-<run id>`), so the observer's filter
//! `sealpost.evt.<tenant>.>` sees this run's messages and nothing else, from the first event.

mod observer;
mod report;

pub use report::{histogram, percentiles, progress_bar, sim_rows, Sample, Summary};

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use futures::StreamExt;
use indicatif::ProgressBar;
use sealpost_carrier_sim::{CarrierSim, RunningSim, SimConfig, SimStats};
use sealpost_domain::{Secret, TenantId};
use sealpost_eventstore::names::{EventSubject, Role, ServiceOp, ServiceSubject, Stream};
use sealpost_eventstore::provision::embedded_definitions;

use crate::app::{connect, App, Running};
use crate::config::Config;
use observer::Observed;
use report::sample_queues;

/// What the harness runs with, beyond the config.
#[derive(Debug, Clone)]
pub struct Options {
    /// The simulator's latency, receipt delay, faults and seed (its tokens are overwritten so that
    /// they match the config the gateway and carriers get).
    pub sim: SimConfig,
    /// Configure the SMS notice carrier (pointing at the simulator) for fallback notices.
    pub sms_fallback: bool,
    /// Every `fallback_every`-th message asks for an SMS fallback; 0: none does.
    pub fallback_every: usize,
    /// The run's tenant id is `<tenant_prefix>-<run id>`.
    pub tenant_prefix: &'static str,
    /// Start the delivery roles only once every message is accepted ([`Harness::drive`]), to
    /// measure how fast they drain a backlog.
    pub hold_delivery: bool,
}

/// A running harness. Dropping it stops everything it started.
pub struct Harness {
    cfg: Config,
    run: String,
    tenant: TenantId,
    reference: String,
    sha256: String,
    fallback_every: usize,
    clients: Vec<async_nats::Client>,
    observed: Arc<Mutex<Observed>>,
    // Drop order: the delivery roles first, then the observer, the gateway, the simulator.
    /// The held delivery roles, once released (without `hold_delivery` they run in `gateway`).
    delivery: Option<Running>,
    held: bool,
    observer: tokio::task::JoinHandle<()>,
    gateway: Running,
    pub sim: RunningSim,
    blob_dir: Option<PathBuf>,
    /// Holds the RBM service account key file of this run.
    key_dir: PathBuf,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("tenant", &self.tenant)
            .field("gateway", &self.gateway)
            .finish_non_exhaustive()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.delivery.take();
        self.observer.abort();
        if let Some(dir) = &self.blob_dir {
            std::fs::remove_dir_all(dir).ok();
        }
        std::fs::remove_dir_all(&self.key_dir).ok();
    }
}

/// Writes `contents` to `path` (creating its directory) readable by this user only.
fn write_private(path: &std::path::Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

fn lock(m: &Mutex<Observed>) -> MutexGuard<'_, Observed> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Harness {
    /// Provisions the streams and consumers (idempotent), then starts everything.
    pub async fn start(base: &Config, opts: Options) -> anyhow::Result<Harness> {
        let run = nuid::next().to_string().to_lowercase();
        let short = &run[run.len().saturating_sub(10)..];
        let tenant = TenantId::new(format!("{}-{short}", opts.tenant_prefix))
            .context("the tenant prefix must be token-safe")?;
        let api_key = format!("harness-key-{run}");
        let mut cfg = base.clone();

        crate::app::provision(&cfg, &embedded_definitions()).await?;
        let js = jetstream::new(connect(&cfg).await?);

        // The simulator, with tokens the config's carriers and receipt check will share. RBM
        // calls are authorized the Google way: OAuth access tokens for the simulator's test
        // service account, whose key file this run writes (mode 0600) for the config.
        let mut sim_cfg = opts.sim.clone();
        sim_cfg.agent_id.clone_from(&cfg.carriers.rbm.agent_id);
        sim_cfg.bearer_token = Secret::new(String::new());
        sim_cfg.service_account = Some(sealpost_carriers::ServiceAccountKey::from_json(
            sealpost_carrier_sim::TEST_SERVICE_ACCOUNT_JSON,
        )?);
        let key_dir = std::env::temp_dir().join(format!("sealpost-harness-{run}-rbm"));
        write_private(
            &key_dir.join("service-account.json"),
            sealpost_carrier_sim::TEST_SERVICE_ACCOUNT_JSON,
        )?;
        sim_cfg.client_token = Secret::new(format!("harness-client-{run}"));
        sim_cfg.sms_api_key = Secret::new(format!("harness-sms-{run}"));
        sim_cfg.webhook_url = None;
        let sim = CarrierSim::start("127.0.0.1:0".parse()?, sim_cfg.clone())
            .await
            .context("starting the carrier simulator")?;

        cfg.carriers.rbm.service_account_key_file =
            key_dir.join("service-account.json").display().to_string();
        let blob_dir = configure(&mut cfg, &opts, &sim, &sim_cfg, &tenant, &api_key, &run)?;

        // One process: the gateway and, unless held, every delivery role.
        let roles: Vec<Role> = std::iter::once(Role::Gateway)
            .chain(Role::DELIVERY.into_iter().filter(|_| !opts.hold_delivery))
            .collect();
        let gateway = App::start(cfg.clone(), &roles, std::future::pending()).await?;
        let http = gateway
            .http_addr()
            .context("the gateway role has an HTTP address")?;
        sim.set_webhook_url(Some(format!("http://{http}/v1/receipts/rbm")));

        // The ciphertext every message references, uploaded as a tenant would.
        let stored = crate::client::upload_blob(http, &api_key, vec![0x5au8; 2048]).await?;
        let (reference, sha256) = (stored.reference, stored.sha256);

        let (observed, observer) = observe(&js, &tenant).await?;

        let mut clients = vec![];
        for _ in 0..4 {
            clients.push(connect(&cfg).await?);
        }
        Ok(Harness {
            cfg,
            run,
            tenant,
            reference,
            sha256,
            fallback_every: opts.fallback_every,
            clients,
            observed,
            delivery: None,
            observer,
            gateway,
            sim,
            held: opts.hold_delivery,
            blob_dir,
            key_dir,
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    fn body(&self, i: usize) -> Vec<u8> {
        let key = format!("{}-{i}", self.run);
        let mut v = serde_json::json!({
            "idempotency_key": key,
            "recipient": format!("+1555{:07}", i % 10_000_000),
            "encrypted_payload_reference": self.reference,
            "payload_sha256": self.sha256,
            "encryption_metadata": {"mls_version": "1", "cipher": "XChaCha20-Poly1305", "key_id": "user-public-key-v2"},
            "metadata": {"tenant_id": self.tenant.as_str(), "message_type": "transactional", "correlation_id": format!("corr-{key}")},
            "ttl_seconds": 3600,
        });
        if self.fallback_every > 0 && i.is_multiple_of(self.fallback_every) {
            v["fallback"] =
                serde_json::json!({"channel": "sms", "notice_template": "secure_message_waiting"});
        }
        serde_json::to_vec(&v).unwrap_or_default()
    }

    /// Sends `n` messages (request/reply on `sealpost.cmd.<tenant>.send`, `concurrency` in
    /// flight over several connections) and waits until every accepted one is terminal, or
    /// 120 s + n/100 s passed. With [`Options::hold_delivery`], the delivery roles start once
    /// every send is answered.
    pub async fn drive(
        &mut self,
        n: usize,
        concurrency: usize,
        progress: Option<ProgressBar>,
    ) -> anyhow::Result<Summary> {
        lock(&self.observed).progress = progress.clone();
        if let Some(pb) = &progress {
            pb.set_length(n as u64);
        }
        let subject = ServiceSubject::new(self.tenant.clone(), ServiceOp::Send).to_string();
        let started = Instant::now();
        let samples = Arc::new(Mutex::new(Vec::new()));
        let sampler = tokio::spawn(sample_queues(
            jetstream::new(self.clients[0].clone()),
            format!("{}/sim/stats", self.sim.base_url()),
            started,
            samples.clone(),
        ));
        let mut send_us = histogram();
        let mut sends = futures::stream::iter(0..n)
            .map(|i| {
                let client = self.clients[i % self.clients.len()].clone();
                let subject = subject.clone();
                let body = bytes::Bytes::from(self.body(i));
                async move { send_one(&client, subject, body).await }
            })
            .buffer_unordered(concurrency.max(1));
        let mut accepted = 0usize;
        while let Some(r) = sends.next().await {
            let (id, sent, replied) = r?;
            send_us.record(replied.duration_since(sent).as_micros().max(1) as u64)?;
            lock(&self.observed).mark_ours(id, sent, replied);
            accepted += 1;
        }
        let sends_done = started.elapsed();
        drop(sends);
        let released = if self.held && self.delivery.is_none() {
            self.delivery = Some(self.start_delivery().await?);
            Some(started.elapsed())
        } else {
            None
        };

        let limit = Duration::from_secs(120) + Duration::from_millis(10 * n as u64);
        let timed_out = loop {
            let done = lock(&self.observed).terminal_ours();
            if done >= accepted {
                break false;
            }
            if started.elapsed() > limit {
                break true;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        // Let late duplicates (events after terminal) show up in the counts.
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Some(pb) = &progress {
            pb.finish_and_clear();
        }
        sampler.abort();
        let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|e| e.into_inner()));
        let o = lock(&self.observed);
        let mut summary = o.summary(n, accepted, started, sends_done, send_us, timed_out);
        summary.samples = samples;
        summary.released = released;
        Ok(summary)
    }

    /// Starts the delivery roles in an App of their own, on the gateway's object store.
    async fn start_delivery(&self) -> anyhow::Result<Running> {
        let mut cfg = self.cfg.clone();
        if let Some(endpoint) = self.gateway.embedded_s3() {
            cfg.s3.endpoint = endpoint;
        }
        App::start(cfg, &Role::DELIVERY, std::future::pending()).await
    }

    /// Ids of this run's messages that reached `carrier_acked`.
    pub fn acked_ids(&self) -> Vec<String> {
        lock(&self.observed)
            .tracks
            .iter()
            .filter(|(_, t)| t.ours && t.acked)
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub fn sim_stats(&self) -> SimStats {
        self.sim.stats()
    }
}

/// A tenant with `api_key` and no rate limit or quota: load generators must not be throttled.
pub(crate) fn unlimited_tenant(tenant: &TenantId, api_key: &str) -> sealpost_gateway::TenantConfig {
    sealpost_gateway::TenantConfig {
        id: tenant.as_str().to_owned(),
        api_key_sha256: vec![sealpost_gateway::hash_api_key(api_key)],
        nats_nkey: None,
        rate_per_sec: 0.0,
        burst: u32::MAX,
        daily_quota: None,
        keys: None,
        trace_sample_ratio: None,
    }
}

/// Points `cfg` at the simulator, adds the run's tenant, and gives the embedded S3 endpoint a
/// folder of this run (returned, to be removed afterwards).
fn configure(
    cfg: &mut Config,
    opts: &Options,
    sim: &RunningSim,
    sim_cfg: &SimConfig,
    tenant: &TenantId,
    api_key: &str,
    run: &str,
) -> anyhow::Result<Option<PathBuf>> {
    let rbm = &mut cfg.carriers.rbm;
    rbm.base_url = sim.base_url();
    rbm.bearer_token = sim_cfg.bearer_token.clone();
    rbm.token_uri = sim.token_uri();
    rbm.client_token = sim_cfg.client_token.clone();
    if opts.sms_fallback {
        cfg.carriers.sms.base_url = sim.base_url();
        cfg.carriers.sms.api_key = sim_cfg.sms_api_key.clone();
    } else {
        cfg.carriers.sms.base_url = String::new();
    }
    cfg.gateway.http_listen = "127.0.0.1:0".parse()?;
    cfg.tenants.push(unlimited_tenant(tenant, api_key));
    // The embedded S3 endpoint keeps its objects in a directory of this run only.
    let blob_dir = if cfg.s3.endpoint.is_empty() {
        let dir = std::env::temp_dir().join(format!("sealpost-harness-{run}"));
        cfg.s3.embedded_dir = dir.clone();
        cfg.s3.embedded_listen = "127.0.0.1:0".parse()?;
        Some(dir)
    } else {
        None
    };
    cfg.validate()?;
    Ok(blob_dir)
}

/// The observer: an ordered consumer on the run's events, from the first one.
async fn observe(
    js: &jetstream::Context,
    tenant: &TenantId,
) -> anyhow::Result<(Arc<Mutex<Observed>>, tokio::task::JoinHandle<()>)> {
    let observed = Arc::new(Mutex::new(Observed::default()));
    let consumer = js
        .get_stream(Stream::Events.as_str())
        .await?
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: EventSubject::filter(Some(tenant), None),
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .context("creating the observer's ordered consumer")?;
    let mut events = consumer.messages().await?;
    let obs = observed.clone();
    let observer = tokio::spawn(async move {
        while let Some(m) = events.next().await {
            match m {
                Ok(m) => lock(&obs).apply(&m.subject, &m.payload, Instant::now()),
                Err(e) => tracing::warn!(error = %e, "observer: consumer error"),
            }
        }
    });

    Ok((observed, observer))
}

async fn send_one(
    client: &async_nats::Client,
    subject: String,
    body: bytes::Bytes,
) -> anyhow::Result<(String, Instant, Instant)> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let sent = Instant::now();
        match client.request(subject.clone(), body.clone()).await {
            Ok(reply) => {
                let replied = Instant::now();
                let v: serde_json::Value = serde_json::from_slice(&reply.payload)
                    .with_context(|| format!("reply is not JSON: {:?}", reply.payload))?;
                let status = v["status"].as_str().unwrap_or_default();
                if status == "accepted" || status == "duplicate" {
                    let id = v["message_id"]
                        .as_str()
                        .context("send reply without message_id")?
                        .to_owned();
                    return Ok((id, sent, replied));
                }
                let code = v["error"]["code"].as_str().unwrap_or_default();
                if attempt < 5 && ["unavailable", "rate_limited"].contains(&code) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                anyhow::bail!("send refused: {}", String::from_utf8_lossy(&reply.payload));
            }
            Err(e) if attempt < 5 => {
                tracing::debug!(error = %e, "send request failed; retrying with the same key");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e).context("send request failed 5 times"),
        }
    }
}
