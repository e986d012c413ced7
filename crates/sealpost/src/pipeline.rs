//! The whole delivery path in one process, for `sealpost demo` and `sealpost bench delivery`:
//! embedded S3, the carrier simulator, the gateway (NATS service, HTTP, receipt webhooks) and
//! every delivery role, on the real streams and durable consumers, plus an observer that follows
//! the run's events on `SEALPOST_EVENTS` with an ordered consumer.
//!
//! Every run gets its own tenant (`<prefix>-<run id>`), so the observer's filter
//! `sealpost.evt.<tenant>.>` sees this run's messages and nothing else, from the first event.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use futures::StreamExt;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use sealpost_carrier_sim::{CarrierSim, RunningSim, SimConfig, SimStats};
use sealpost_delivery::{Delivery, RunningConsumers};
use sealpost_eventstore::provision::{embedded_definitions, provision, StreamOverrides};
use sealpost_gateway::RunningGateway;

use crate::config::Config;

/// Event types after which a message is done, as far as the demo and bench are concerned.
pub const TERMINAL: [&str; 5] = [
    "displayed",
    "failed",
    "fallback_triggered",
    "expired",
    "cancelled",
];

/// What the pipeline runs with, beyond the config.
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
    /// Start the delivery roles only once every message is accepted ([`Pipeline::drive`]), to
    /// measure how fast they drain a backlog.
    pub hold_delivery: bool,
}

/// A running in-process pipeline. Dropping it stops everything it started.
pub struct Pipeline {
    cfg: Config,
    run: String,
    tenant: String,
    reference: String,
    sha256: String,
    fallback_every: usize,
    clients: Vec<async_nats::Client>,
    observed: Arc<Mutex<Observed>>,
    // Drop order: consumers first, then the observer, the gateway, the simulator, the blobs.
    consumers: Option<RunningConsumers>,
    delivery: Delivery,
    observer: tokio::task::JoinHandle<()>,
    _gateway: RunningGateway,
    pub sim: RunningSim,
    _blobs: crate::serve::Blobs,
    blob_dir: Option<PathBuf>,
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.consumers.take();
        self.observer.abort();
        if let Some(dir) = &self.blob_dir {
            std::fs::remove_dir_all(dir).ok();
        }
    }
}

fn lock(m: &Mutex<Observed>) -> MutexGuard<'_, Observed> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pipeline {
    /// Provisions the streams and consumers (idempotent), then starts everything.
    pub async fn start(base: &Config, opts: Options) -> anyhow::Result<Pipeline> {
        let run = nuid::next().to_string().to_lowercase();
        let short = &run[run.len().saturating_sub(10)..];
        let tenant = format!("{}-{short}", opts.tenant_prefix);
        let api_key = format!("pipeline-key-{run}");
        let mut cfg = base.clone();

        let client = crate::connect(&cfg).await?;
        let js = jetstream::new(client.clone());
        provision(
            &js,
            &embedded_definitions(),
            &StreamOverrides {
                replicas: Some(cfg.nats.replicas),
                duplicate_window: Some(Duration::from_secs(cfg.nats.duplicate_window_secs)),
            },
        )
        .await
        .context("provisioning the streams and consumers")?;

        // The simulator, with tokens the config's carriers and receipt check will share.
        let mut sim_cfg = opts.sim.clone();
        sim_cfg.agent_id.clone_from(&cfg.carriers.rbm.agent_id);
        sim_cfg.bearer_token = format!("pipeline-rbm-{run}");
        sim_cfg.client_token = format!("pipeline-client-{run}");
        sim_cfg.sms_api_key = format!("pipeline-sms-{run}");
        sim_cfg.webhook_url = None;
        let sim = CarrierSim::start("127.0.0.1:0".parse()?, sim_cfg.clone())
            .await
            .context("starting the carrier simulator")?;

        let rbm = &mut cfg.carriers.rbm;
        rbm.base_url = sim.base_url();
        rbm.bearer_token = sim_cfg.bearer_token.clone();
        rbm.client_token = sim_cfg.client_token.clone();
        if opts.sms_fallback {
            cfg.carriers.sms.base_url = sim.base_url();
            cfg.carriers.sms.api_key = sim_cfg.sms_api_key.clone();
        } else {
            cfg.carriers.sms.base_url = String::new();
        }
        cfg.gateway.http_listen = "127.0.0.1:0".into();
        cfg.tenants.push(sealpost_gateway::TenantConfig {
            id: tenant.clone(),
            api_key_sha256: vec![sealpost_gateway::hash_api_key(&api_key)],
            nats_nkey: None,
            rate_per_sec: 1e9,
            burst: u32::MAX,
            daily_quota: None,
        });
        // The embedded S3 endpoint keeps its objects in a directory of this run only.
        let blob_dir = if cfg.s3.endpoint.is_empty() {
            let dir = std::env::temp_dir().join(format!("sealpost-pipeline-{run}"));
            cfg.s3.embedded_dir = dir.to_string_lossy().into_owned();
            cfg.s3.embedded_listen = "127.0.0.1:0".into();
            Some(dir)
        } else {
            None
        };
        cfg.validate()?;

        let blobs = crate::serve::blobs(&cfg).await?;
        let gateway =
            crate::serve::gateway(&cfg, crate::connect(&cfg).await?, blobs.store.clone()).await?;
        sim.set_webhook_url(Some(format!(
            "http://{}/v1/receipts/rbm",
            gateway.http_addr
        )));

        // The ciphertext every message references, uploaded as a tenant would.
        let http = reqwest::Client::new();
        let res = http
            .post(format!("http://{}/v1/blobs", gateway.http_addr))
            .bearer_auth(&api_key)
            .body(vec![0x5au8; 2048])
            .send()
            .await
            .context("uploading the demo ciphertext")?;
        let status = res.status();
        let text = res.bytes().await?;
        anyhow::ensure!(
            status.is_success(),
            "uploading the demo ciphertext: HTTP {status}: {}",
            String::from_utf8_lossy(&text)
        );
        let stored: serde_json::Value = serde_json::from_slice(&text)?;
        let reference = stored["reference"]
            .as_str()
            .context("upload reply without a reference")?
            .to_owned();
        let sha256 = stored["sha256"]
            .as_str()
            .context("upload reply without a sha256")?
            .to_owned();

        // The observer: an ordered consumer on this run's events, from the first one.
        let observed = Arc::new(Mutex::new(Observed::default()));
        let consumer = js
            .get_stream("SEALPOST_EVENTS")
            .await?
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: format!("sealpost.evt.{tenant}.>"),
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

        let delivery =
            crate::serve::delivery(&cfg, crate::connect(&cfg).await?, blobs.store.clone()).await?;
        let consumers = (!opts.hold_delivery).then(|| delivery.start(&Delivery::ROLES));

        let mut clients = vec![];
        for _ in 0..4 {
            clients.push(crate::connect(&cfg).await?);
        }
        Ok(Pipeline {
            cfg,
            run,
            tenant,
            reference,
            sha256,
            fallback_every: opts.fallback_every,
            clients,
            observed,
            consumers,
            delivery,
            observer,
            _gateway: gateway,
            sim,
            _blobs: blobs,
            blob_dir,
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn tenant(&self) -> &str {
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
            "metadata": {"tenant_id": self.tenant, "message_type": "transactional", "correlation_id": format!("corr-{key}")},
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
        let subject = format!("sealpost.cmd.{}.send", self.tenant);
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
        let released = if self.consumers.is_none() {
            self.consumers = Some(self.delivery.start(&Delivery::ROLES));
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

/// Queue depths at one instant of a run, for finding the stage that lags.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub at: Duration,
    /// Delivery jobs not yet delivered to a worker, and delivered but unacked.
    pub delivery_pending: u64,
    pub delivery_unacked: usize,
    /// Receipts stored by the gateway; receipts not yet applied (pending) and in flight.
    pub receipts_stored: u64,
    pub receipts_pending: u64,
    pub receipts_unacked: usize,
    /// Receipts delivered more than once (NAKed, e.g. because they came before the carrier ack).
    pub receipts_redelivered: usize,
    /// The simulator: sends accepted, webhooks answered 2xx.
    pub sim_accepted: u64,
    pub sim_webhooks: u64,
}

/// Samples the queues into `out` every second until aborted.
async fn sample_queues(
    js: jetstream::Context,
    sim_stats_url: String,
    started: Instant,
    out: Arc<Mutex<Vec<Sample>>>,
) {
    let http = reqwest::Client::new();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut s = Sample {
            at: started.elapsed(),
            ..Sample::default()
        };
        if let Ok(st) = js.get_stream("SEALPOST_EVENTS").await {
            if let Ok(mut c) = st
                .get_consumer::<jetstream::consumer::pull::Config>("delivery")
                .await
            {
                if let Ok(i) = c.info().await {
                    s.delivery_pending = i.num_pending;
                    s.delivery_unacked = i.num_ack_pending;
                }
            }
        }
        if let Ok(mut st) = js.get_stream("SEALPOST_RECEIPTS").await {
            if let Ok(i) = st.info().await {
                s.receipts_stored = i.state.messages;
            }
            if let Ok(mut c) = st
                .get_consumer::<jetstream::consumer::pull::Config>("receipts")
                .await
            {
                if let Ok(i) = c.info().await {
                    s.receipts_pending = i.num_pending;
                    s.receipts_unacked = i.num_ack_pending;
                    s.receipts_redelivered = i.num_redelivered;
                }
            }
        }
        if let Ok(r) = http.get(&sim_stats_url).send().await {
            if let Ok(v) = r.json::<serde_json::Value>().await {
                s.sim_accepted = v["accepted"].as_u64().unwrap_or(0);
                s.sim_webhooks = v["webhooks_sent"].as_u64().unwrap_or(0);
            }
        }
        out.lock().unwrap_or_else(|e| e.into_inner()).push(s);
    }
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// A progress bar on stderr: terminal messages out of n, with their rate.
pub fn progress_bar(what: &str) -> ProgressBar {
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:40}] {pos}/{len} terminal, {per_sec}, elapsed {elapsed}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(what.to_owned());
    pb
}

#[derive(Debug, Default)]
struct Track {
    /// Set by the driver for messages it sent (the observer may see events first).
    ours: bool,
    sent: Option<Instant>,
    accepted: Option<Instant>,
    /// The latest event type seen.
    status: String,
    /// The first terminal event and when the observer saw it.
    terminal: Option<(String, Instant)>,
    displayed: Option<Instant>,
    acked: bool,
}

#[derive(Debug, Default)]
struct Observed {
    tracks: HashMap<String, Track>,
    events: BTreeMap<String, u64>,
    failed_by: BTreeMap<(String, String), u64>,
    after_terminal: BTreeMap<String, u64>,
    /// Messages sent by the driver that are terminal.
    terminal_ours: usize,
    /// Per event type: when the observer saw the first and the last one.
    seen: BTreeMap<String, (Instant, Instant)>,
    progress: Option<ProgressBar>,
}

impl Observed {
    fn apply(&mut self, subject: &str, payload: &[u8], now: Instant) {
        // sealpost.evt.<tenant>.<message_id>.<event_type>
        let tokens: Vec<&str> = subject.split('.').collect();
        if tokens.len() < 5 {
            return;
        }
        let ty = tokens[tokens.len() - 1];
        let id = tokens[3..tokens.len() - 1].join(".");
        *self.events.entry(ty.to_owned()).or_default() += 1;
        self.seen
            .entry(ty.to_owned())
            .and_modify(|(_, last)| *last = now)
            .or_insert((now, now));
        if ty == "attempt_failed" {
            let v: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
            let class = v["class"].as_str().unwrap_or("?").to_owned();
            let code = v["code"].as_str().unwrap_or("?").to_owned();
            *self.failed_by.entry((class, code)).or_default() += 1;
        }
        let t = self.tracks.entry(id).or_default();
        if let Some((_, _)) = &t.terminal {
            *self.after_terminal.entry(ty.to_owned()).or_default() += 1;
        }
        t.status = ty.to_owned();
        match ty {
            "carrier_acked" => t.acked = true,
            "displayed" => t.displayed = Some(now),
            _ => {}
        }
        if t.terminal.is_none() && TERMINAL.contains(&ty) {
            t.terminal = Some((ty.to_owned(), now));
            if t.ours {
                self.terminal_ours += 1;
            }
            if let Some(pb) = &self.progress {
                pb.inc(1);
            }
        }
    }

    fn terminal_ours(&self) -> usize {
        self.terminal_ours
    }

    /// The driver learnt that `id` is one of its messages.
    fn mark_ours(&mut self, id: String, sent: Instant, replied: Instant) {
        let t = self.tracks.entry(id).or_default();
        t.sent = Some(sent);
        t.accepted = Some(replied);
        if !t.ours {
            t.ours = true;
            if t.terminal.is_some() {
                self.terminal_ours += 1;
            }
        }
    }

    fn summary(
        &self,
        n: usize,
        accepted: usize,
        started: Instant,
        sends_done: Duration,
        send_us: Histogram<u64>,
        timed_out: bool,
    ) -> Summary {
        let mut s = Summary {
            messages: n,
            accepted,
            timed_out,
            sends_elapsed: sends_done,
            send_latency_us: send_us,
            to_terminal_us: histogram(),
            to_displayed_us: histogram(),
            events: self.events.clone(),
            failed_by: self.failed_by.clone(),
            after_terminal: self.after_terminal.clone(),
            stages: self
                .seen
                .iter()
                .map(|(ty, (first, last))| {
                    (
                        ty.clone(),
                        (
                            first.saturating_duration_since(started),
                            last.saturating_duration_since(started),
                        ),
                    )
                })
                .collect(),
            ..Summary::default()
        };
        let mut last = started;
        for t in self.tracks.values().filter(|t| t.ours) {
            let from = t.accepted.or(t.sent).unwrap_or(started);
            match &t.terminal {
                Some((ty, at)) => {
                    s.terminal += 1;
                    *s.by_state.entry(ty.clone()).or_default() += 1;
                    last = last.max(*at);
                    let us = at.saturating_duration_since(from).as_micros().max(1) as u64;
                    s.to_terminal_us.saturating_record(us);
                }
                None => {
                    let st = if t.status.is_empty() {
                        "unseen".to_owned()
                    } else {
                        t.status.clone()
                    };
                    *s.by_state
                        .entry(format!("{st} (not terminal)"))
                        .or_default() += 1;
                }
            }
            if let Some(at) = t.displayed {
                let us = at.saturating_duration_since(from).as_micros().max(1) as u64;
                s.to_displayed_us.saturating_record(us);
            }
        }
        s.elapsed = last.saturating_duration_since(started);
        s
    }
}

/// What one `drive` saw.
#[derive(Debug)]
pub struct Summary {
    pub messages: usize,
    /// Sends the gateway accepted (or answered as duplicates of this run's own retries).
    pub accepted: usize,
    pub terminal: usize,
    pub timed_out: bool,
    /// Final state per message (terminal event, or "<latest event> (not terminal)").
    pub by_state: BTreeMap<String, u64>,
    /// attempt_failed events per (class, code).
    pub failed_by: BTreeMap<(String, String), u64>,
    /// Events per type for this run's tenant.
    pub events: BTreeMap<String, u64>,
    /// Events per type seen after a message was already terminal.
    pub after_terminal: BTreeMap<String, u64>,
    /// Per event type: first and last seen, since the first send.
    pub stages: BTreeMap<String, (Duration, Duration)>,
    /// First send to the last terminal event.
    pub elapsed: Duration,
    /// First send to the last accepted reply.
    pub sends_elapsed: Duration,
    pub send_latency_us: Histogram<u64>,
    pub to_terminal_us: Histogram<u64>,
    pub to_displayed_us: Histogram<u64>,
    /// Queue depths, once a second.
    pub samples: Vec<Sample>,
    /// When the held delivery roles were started, since the first send.
    pub released: Option<Duration>,
}

impl Default for Summary {
    fn default() -> Self {
        Summary {
            messages: 0,
            accepted: 0,
            terminal: 0,
            timed_out: false,
            by_state: BTreeMap::new(),
            failed_by: BTreeMap::new(),
            events: BTreeMap::new(),
            after_terminal: BTreeMap::new(),
            stages: BTreeMap::new(),
            elapsed: Duration::ZERO,
            sends_elapsed: Duration::ZERO,
            send_latency_us: histogram(),
            to_terminal_us: histogram(),
            to_displayed_us: histogram(),
            samples: Vec::new(),
            released: None,
        }
    }
}

impl Summary {
    /// Messages per second, first send to last terminal event.
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Messages per second from the start of the held delivery roles to the last terminal
    /// event (a backlog drain), if they were held.
    pub fn drain_rate(&self) -> Option<f64> {
        let r = self.released?;
        Some(self.messages as f64 / (self.elapsed.saturating_sub(r)).as_secs_f64().max(1e-9))
    }

    pub fn all_terminal(&self) -> bool {
        !self.timed_out && self.terminal == self.messages
    }

    /// attempt_failed events per class.
    pub fn failed_by_class(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for ((class, _), n) in &self.failed_by {
            *m.entry(class.clone()).or_default() += n;
        }
        m
    }

    /// One line per event type: count, first and last seen (s since the first send), and the
    /// rate between them; shows which stage lags behind the others.
    pub fn stage_lines(&self) -> Vec<String> {
        self.stages
            .iter()
            .map(|(ty, (first, last))| {
                let n = self.events.get(ty).copied().unwrap_or(0);
                let span = (*last - *first).as_secs_f64().max(1e-3);
                format!(
                    "{ty:<20} {n:>8} events, first at {:>7.2} s, last at {:>7.2} s, {:>8.0} /s",
                    first.as_secs_f64(),
                    last.as_secs_f64(),
                    n as f64 / span
                )
            })
            .collect()
    }

    pub fn events_total(&self) -> u64 {
        self.events.values().sum()
    }
}

/// `p50 x ms, p90 y ms, p99 z ms (max m ms)` of a microsecond histogram.
pub fn percentiles(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "no samples".into();
    }
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    format!(
        "p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples)",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        h.max() as f64 / 1000.0,
        h.len()
    )
}

/// The simulator's counters as `name value` rows.
pub fn sim_rows(s: &SimStats) -> Vec<(&'static str, u64)> {
    vec![
        ("sends", s.sends),
        ("accepted", s.accepted),
        ("duplicates_409", s.duplicates_409),
        ("throttled", s.throttled),
        ("server_errors", s.server_errors),
        ("timeouts", s.timeouts),
        ("not_capable", s.not_capable),
        ("permanent", s.permanent),
        ("webhooks_sent", s.webhooks_sent),
        ("webhook_failures", s.webhook_failures),
        ("revokes", s.revokes),
        ("sms_accepted", s.sms_accepted),
        ("sms_duplicates", s.sms_duplicates),
        ("throttle_violations", s.throttle_violations),
    ]
}
