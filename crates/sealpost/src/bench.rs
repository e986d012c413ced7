//! `sealpost bench eventstore`: the event store's throughput and latency next to a raw JetStream
//! publish baseline measured in the same run, on the same server, with the same payload size.
//!
//! Each run provisions a private stream (same flags as `SEALPOST_EVENTS`, its own subjects) and
//! deletes it afterwards, so a bench never touches real data.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use futures::StreamExt;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use sealpost_domain::{Message, MessageEvent, RetryPolicy};
use sealpost_eventstore::provision::{check_server, embedded_definitions};
use sealpost_eventstore::{CommandExecutor, JetStreamEventStore, Loaded, StoreConfig};

use crate::config::Config;
use crate::lifecycle;

#[derive(Debug, Clone, Copy)]
pub struct EventstoreBench {
    pub messages: usize,
    pub concurrency: usize,
}

/// One measured phase.
#[derive(Debug)]
pub struct Phase {
    pub name: &'static str,
    pub ops: u64,
    pub events: u64,
    pub elapsed: Duration,
    pub latency_us: Histogram<u64>,
}

impl Phase {
    fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
    fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
    fn pct_ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:<24} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_owned());
    pb
}

/// Runs `per_item(i)` for `0..n` with `concurrency` in flight; each returns (latency, events).
async fn measure<F, Fut>(
    name: &'static str,
    n: usize,
    concurrency: usize,
    per_item: F,
) -> anyhow::Result<Phase>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Vec<(Duration, u64)>>>,
{
    let pb = bar(n as u64, name);
    let started = Instant::now();
    let mut latency_us = histogram();
    let mut ops = 0u64;
    let mut events = 0u64;
    let mut results = futures::stream::iter(0..n)
        .map(&per_item)
        .buffer_unordered(concurrency);
    while let Some(r) = results.next().await {
        for (lat, ev) in r? {
            latency_us.record(lat.as_micros().max(1) as u64)?;
            ops += 1;
            events += ev;
        }
        pb.inc(1);
    }
    let elapsed = started.elapsed();
    pb.finish_and_clear();
    Ok(Phase {
        name,
        ops,
        events,
        elapsed,
        latency_us,
    })
}

/// A private stream with the event stream's flags and its own subjects `bench<run>.evt.>`, so a
/// bench never touches real data. Returns (its config, the subject prefix, the run id); the
/// caller deletes it.
async fn private_stream(
    js: &jetstream::Context,
    cfg: &Config,
) -> anyhow::Result<(jetstream::stream::Config, String, String)> {
    let run = nuid::next().to_string().to_lowercase();
    let prefix = format!("bench{run}.evt");
    let defs = embedded_definitions();
    let mut stream_cfg: jetstream::stream::Config =
        serde_json::from_str(&defs.streams[0].1).context("event stream definition")?;
    stream_cfg.name = format!("SEALPOST_BENCH_{run}");
    stream_cfg.subjects = vec![format!("{prefix}.>")];
    stream_cfg.num_replicas = cfg.nats.replicas;
    js.create_stream(stream_cfg.clone())
        .await
        .context("creating the bench stream")?;
    Ok((stream_cfg, prefix, run))
}

pub async fn run_eventstore(cfg: &Config, b: EventstoreBench) -> anyhow::Result<Vec<Phase>> {
    let client = crate::connect(cfg).await?;
    let version = check_server(&client).await?;
    let js = jetstream::new(client.clone());
    let (stream_cfg, prefix, _) = private_stream(&js, cfg).await?;
    let result = phases(&client, &stream_cfg.name, &prefix, cfg, b).await;
    js.delete_stream(&stream_cfg.name).await.ok();
    let phases = result?;
    print_report(&version, cfg, b, &phases);
    Ok(phases)
}

async fn phases(
    client: &async_nats::Client,
    stream: &str,
    prefix: &str,
    cfg: &Config,
    b: EventstoreBench,
) -> anyhow::Result<Vec<Phase>> {
    let store: JetStreamEventStore<Message> = JetStreamEventStore::new(
        client.clone(),
        StoreConfig {
            stream: stream.to_owned(),
            subject_prefix: prefix.to_owned(),
            timeout: cfg.request_timeout().max(Duration::from_secs(10)),
            ..StoreConfig::default()
        },
    );
    let executor = Arc::new(CommandExecutor::new(store.clone(), cfg.retry_policy()));
    let cached = Arc::new(
        CommandExecutor::new(store.clone(), cfg.retry_policy()).with_cache(b.messages.max(1024)),
    );

    // The payload size of the baseline: the mean body of one full lifecycle's events.
    let sample = lifecycle::happy_path_events("bench-sample", &RetryPolicy::default())?;
    let mean_body = sample
        .iter()
        .map(|e| e.to_body().map(|b| b.len()))
        .sum::<Result<usize, _>>()?
        / sample.len();
    let events_per_lifecycle = sample.len();
    let raw_publishes = b.messages * events_per_lifecycle;

    // 1. Baseline: raw JetStream publishes with Nats-Msg-Id, each awaited, same concurrency.
    let js = jetstream::new(client.clone());
    let payload = bytes::Bytes::from(vec![b'x'; mean_body]);
    let per_task = raw_publishes.div_ceil(b.concurrency);
    let raw = measure("raw publish", b.concurrency, b.concurrency, |task| {
        let js = js.clone();
        let payload = payload.clone();
        let subject = format!("{prefix}.raw.{task}.x");
        async move {
            let mut out = Vec::with_capacity(per_task);
            for i in 0..per_task {
                let mut h = async_nats::HeaderMap::new();
                h.insert("Nats-Msg-Id", format!("raw-{task}-{i}").as_str());
                let t = Instant::now();
                js.publish_with_headers(subject.clone(), h, payload.clone())
                    .await?
                    .await?;
                out.push((t.elapsed(), 1));
            }
            Ok(out)
        }
    })
    .await?;

    // 2. Full lifecycles: five commands per message. The accept presumes a new message (no load,
    // as the gateway does); every later command is a load plus an OCC append.
    let lifecycle = run_lifecycles("lifecycle, load each", "life", executor, b).await?;
    // 2b. The same with the executor's state cache: loads only on a miss, appends still carry
    // the optimistic-concurrency expectation.
    let lifecycle_cached = run_lifecycles("lifecycle, cached state", "cached", cached, b).await?;

    // 3. Single appends: one event with its OCC expectation, no load.
    let single = measure("single OCC appends", b.messages, b.concurrency, |i| {
        let store = store.clone();
        async move {
            let (id, _) = lifecycle::accept(&format!("single-{i}"));
            let t = Instant::now();
            store
                .append(&fresh(id), &[held("bench")], &HashMap::new())
                .await?;
            Ok(vec![(t.elapsed(), 1)])
        }
    })
    .await?;

    // 4. Two-event atomic batches (what a failed attempt writes), no load.
    let batches = measure("2-event atomic batches", b.messages, b.concurrency, |i| {
        let store = store.clone();
        async move {
            let (id, _) = lifecycle::accept(&format!("batch-{i}"));
            let t = Instant::now();
            store
                .append(&fresh(id), &[held("a"), held("b")], &HashMap::new())
                .await?;
            Ok(vec![(t.elapsed(), 2)])
        }
    })
    .await?;

    // 5. Loads alone, of the lifecycles written above.
    let loads = measure("loads (5-event history)", b.messages, b.concurrency, |i| {
        let store = store.clone();
        async move {
            let (id, _) = lifecycle::accept(&format!("life-{i}"));
            let t = Instant::now();
            let n = store.load_raw(&id).await?.len();
            anyhow::ensure!(
                n == events_per_lifecycle,
                "expected {events_per_lifecycle} events, loaded {n}"
            );
            Ok(vec![(t.elapsed(), 0)])
        }
    })
    .await?;

    let mut raw = raw;
    raw.name = "raw JetStream publish";
    Ok(vec![
        raw,
        lifecycle,
        lifecycle_cached,
        single,
        batches,
        loads,
    ])
}

/// A not-yet-written aggregate: appends to it expect last sequence 0.
fn fresh(aggregate_id: String) -> Loaded<Message> {
    Loaded {
        aggregate_id,
        aggregate: Message::default(),
        version: 0,
        last_stream_seq: 0,
    }
}

fn held(hold_id: &str) -> MessageEvent {
    MessageEvent::Held(sealpost_domain::events::Held {
        hold_id: hold_id.into(),
        reason: "bench".into(),
        at: time::OffsetDateTime::now_utc(),
    })
}

async fn run_lifecycles(
    name: &'static str,
    key_prefix: &'static str,
    executor: Arc<CommandExecutor<Message>>,
    b: EventstoreBench,
) -> anyhow::Result<Phase> {
    measure(name, b.messages, b.concurrency, |i| {
        let executor = executor.clone();
        async move {
            let key = format!("{key_prefix}-{i}");
            let mut out = Vec::with_capacity(5);
            for (step, (id, cmd)) in lifecycle::happy_path_commands(&key).into_iter().enumerate() {
                let t = Instant::now();
                let done = if step == 0 {
                    executor
                        .execute_presuming_new(&id, cmd, &HashMap::new())
                        .await?
                } else {
                    executor.execute(&id, cmd, &HashMap::new()).await?
                };
                out.push((t.elapsed(), done.events.len() as u64));
            }
            Ok(out)
        }
    })
    .await
}

fn print_report(version: &str, cfg: &Config, b: EventstoreBench, phases: &[Phase]) {
    println!(
        "sealpost bench eventstore: {} messages, concurrency {}, nats-server {version}, {} replica(s)",
        b.messages, b.concurrency, cfg.nats.replicas
    );
    println!(
        "{:<24} {:>9} {:>11} {:>11} {:>9} {:>9}",
        "phase", "ops", "ops/s", "events/s", "p50 ms", "p99 ms"
    );
    for p in phases {
        println!(
            "{:<24} {:>9} {:>11.0} {:>11.0} {:>9.2} {:>9.2}",
            p.name,
            p.ops,
            p.ops_per_sec(),
            p.events_per_sec(),
            p.pct_ms(0.50),
            p.pct_ms(0.99)
        );
    }
    if let [raw, lifecycles @ ..] = phases {
        for life in lifecycles
            .iter()
            .filter(|p| p.name.starts_with("lifecycle"))
        {
            let ratio = life.events_per_sec() / raw.events_per_sec();
            println!(
                "{}: events/s / raw publish/s = {ratio:.2} (target >= 0.25){}",
                life.name,
                if ratio >= 0.25 { "" } else { "  BELOW TARGET" }
            );
        }
    }
}

// ------------------------------------------------------------------------------------- ingress

const BENCH_TENANT: &str = "bench-tenant";
const BENCH_KEY: &str = "bench-api-key";

fn ingress_body(key: &str, reference: &str, sha256: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "idempotency_key": key,
        "recipient": "+15550100100",
        "encrypted_payload_reference": reference,
        "payload_sha256": sha256,
        "encryption_metadata": {"mls_version": "1", "cipher": "XChaCha20-Poly1305", "key_id": "user-public-key-v2"},
        "metadata": {"tenant_id": BENCH_TENANT, "message_type": "transactional", "correlation_id": format!("corr-{key}")},
        "ttl_seconds": 3600,
        "fallback": {"channel": "sms", "notice_template": "secure_message_waiting"}
    }))
    .expect("a JSON literal serializes")
}

/// `sealpost bench ingress`: accepted sends/s over NATS and over HTTP through an in-process
/// gateway (its own NATS connection, its own HTTP port), the payload already stored, next to raw
/// JetStream publishes of an `accepted` event's size. Events go to a private stream that is
/// deleted afterwards.
pub async fn run_ingress(cfg: &Config, messages: usize, concurrency: usize) -> anyhow::Result<()> {
    use sealpost_gateway::{Gateway, RunningGateway, TenantConfig, Tenants};

    let client = crate::connect(cfg).await?;
    let version = check_server(&client).await?;
    let js = jetstream::new(client.clone());
    let (stream_cfg, prefix, run) = private_stream(&js, cfg).await?;

    let result = async {
        let blobs = crate::serve::blobs(cfg).await?;
        let store = JetStreamEventStore::<Message>::new(
            crate::connect(cfg).await?,
            StoreConfig {
                stream: stream_cfg.name.clone(),
                subject_prefix: prefix.clone(),
                timeout: cfg.request_timeout(),
                ..StoreConfig::default()
            },
        );
        let tenants = Tenants::new(&[TenantConfig {
            id: BENCH_TENANT.into(),
            api_key_sha256: vec![sealpost_gateway::hash_api_key(BENCH_KEY)],
            nats_nkey: None,
            rate_per_sec: 1e9,
            burst: u32::MAX,
            daily_quota: None,
        }])?;
        let gateway = Gateway::new(
            CommandExecutor::new(store, cfg.retry_policy()),
            blobs.store.clone(),
            tenants,
            cfg.gateway.max_blob_bytes,
        );
        // The payload is stored once, through the gateway, as a client would upload it.
        let tenant = gateway.tenant(BENCH_TENANT)?;
        let ciphertext = bytes::Bytes::from(vec![0x5a; 2048]);
        let stored = gateway
            .upload(
                tenant,
                futures::stream::iter([Ok::<_, std::io::Error>(ciphertext)]),
            )
            .await?;
        let running =
            RunningGateway::start(crate::connect(cfg).await?, gateway, "127.0.0.1:0".parse()?)
                .await?;
        let sha = stored.sha256.as_str().to_owned();
        let sample = ingress_body("sample", &stored.reference, &sha);

        // 1. Baseline: raw JetStream publishes with Msg-Id, the size of an accepted event.
        let accepted_size = 900usize.max(sample.len());
        let payload = bytes::Bytes::from(vec![b'x'; accepted_size]);
        let raw = measure("raw JetStream publish", messages, concurrency, |i| {
            let js = js.clone();
            let payload = payload.clone();
            let subject = format!("{prefix}.raw.{}.x", i % 1024);
            async move {
                let mut h = async_nats::HeaderMap::new();
                h.insert("Nats-Msg-Id", format!("raw-{i}").as_str());
                let t = Instant::now();
                js.publish_with_headers(subject, h, payload).await?.await?;
                Ok(vec![(t.elapsed(), 1)])
            }
        })
        .await?;

        // 2. Sends over NATS: request/reply to the service, from several client connections.
        let mut clients = vec![];
        for _ in 0..4 {
            clients.push(crate::connect(cfg).await?);
        }
        let subject = format!("sealpost.cmd.{BENCH_TENANT}.send");
        let nats = measure("sends over NATS", messages, concurrency, |i| {
            let client = clients[i % clients.len()].clone();
            let body = ingress_body(&format!("nats-{run}-{i}"), &stored.reference, &sha);
            let subject = subject.clone();
            async move {
                let t = Instant::now();
                let reply = client.request(subject, body.into()).await?;
                let lat = t.elapsed();
                let v: serde_json::Value = serde_json::from_slice(&reply.payload)?;
                anyhow::ensure!(
                    v["status"] == "accepted",
                    "send not accepted: {}",
                    String::from_utf8_lossy(&reply.payload)
                );
                Ok(vec![(lat, 1)])
            }
        })
        .await?;

        // 3. Sends over HTTP.
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(concurrency)
            .build()?;
        let url = format!("http://{}/v1/messages", running.http_addr);
        let over_http = measure("sends over HTTP", messages, concurrency, |i| {
            let http = http.clone();
            let url = url.clone();
            let body = ingress_body(&format!("http-{run}-{i}"), &stored.reference, &sha);
            async move {
                let t = Instant::now();
                let res = http
                    .post(url)
                    .bearer_auth(BENCH_KEY)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await?;
                let status = res.status();
                let text = res.bytes().await?;
                let lat = t.elapsed();
                anyhow::ensure!(
                    status.as_u16() == 202,
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&text)
                );
                Ok(vec![(lat, 1)])
            }
        })
        .await?;

        // Every send wrote exactly one event.
        let mut s = js.get_stream(&stream_cfg.name).await?;
        let stored_events = s.info().await?.state.messages;
        anyhow::ensure!(
            stored_events == 3 * messages as u64,
            "expected {} messages in the bench stream (raw + NATS + HTTP), found {stored_events}",
            3 * messages
        );
        drop(running);
        drop(blobs);
        anyhow::Ok(vec![raw, nats, over_http])
    }
    .await;
    js.delete_stream(&stream_cfg.name).await.ok();
    let phases = result?;

    println!(
        "sealpost bench ingress: {messages} sends per transport, concurrency {concurrency}, nats-server {version}, payload already stored"
    );
    println!(
        "{:<24} {:>9} {:>11} {:>9} {:>9}",
        "phase", "ops", "ops/s", "p50 ms", "p99 ms"
    );
    for p in &phases {
        println!(
            "{:<24} {:>9} {:>11.0} {:>9.2} {:>9.2}",
            p.name,
            p.ops,
            p.ops_per_sec(),
            p.pct_ms(0.50),
            p.pct_ms(0.99)
        );
    }
    let raw = phases[0].ops_per_sec();
    for p in &phases[1..] {
        let rate = p.ops_per_sec();
        let target = if p.name.contains("NATS") {
            format!(
                " (target >= 10,000 accepted sends/s: {})",
                if rate >= 10_000.0 {
                    "met"
                } else {
                    "BELOW TARGET"
                }
            )
        } else {
            String::new()
        };
        println!(
            "{}: {rate:.0} accepted/s = {:.2} x raw publish{target}",
            p.name,
            rate / raw
        );
    }
    Ok(())
}

// ------------------------------------------------------------------------------------ delivery

/// `sealpost bench delivery`: messages/s end to end (send over NATS → worker → carrier
/// simulator → signed DELIVERED and READ webhooks → receipts applied → `displayed`), with the
/// simulator at zero latency and no faults, next to raw JetStream publishes measured first in
/// the same run on the same server.
pub async fn run_delivery(cfg: &Config, messages: usize, concurrency: usize) -> anyhow::Result<()> {
    use crate::pipeline::{self, Options, Pipeline};

    let client = crate::connect(cfg).await?;
    let version = check_server(&client).await?;
    let js = jetstream::new(client.clone());

    // 1. Baseline: raw JetStream publishes with Msg-Id, the size of an accepted event.
    let (stream_cfg, prefix, _) = private_stream(&js, cfg).await?;
    let payload = bytes::Bytes::from(vec![b'x'; 900]);
    let raw = measure("raw JetStream publish", messages, concurrency, |i| {
        let js = js.clone();
        let payload = payload.clone();
        let subject = format!("{prefix}.raw.{}.x", i % 1024);
        async move {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Nats-Msg-Id", format!("raw-{i}").as_str());
            let t = Instant::now();
            js.publish_with_headers(subject, h, payload).await?.await?;
            Ok(vec![(t.elapsed(), 1)])
        }
    })
    .await;
    js.delete_stream(&stream_cfg.name).await.ok();
    let raw = raw?;

    // 2. The pipeline.
    // SEALPOST_BENCH_RECEIPT_DELAY_MS: the simulator's receipt delay (default 0), for profiling.
    let receipt_delay = std::env::var("SEALPOST_BENCH_RECEIPT_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::ZERO, Duration::from_millis);
    let sim = sealpost_carrier_sim::SimConfig {
        latency: Duration::ZERO,
        receipt_delay,
        faults: sealpost_carrier_sim::FaultMix::default(),
        webhook_concurrency: concurrency.max(64),
        ..Default::default()
    };
    let run = |hold_delivery: bool, label: &'static str| {
        let sim = sim.clone();
        async move {
            let mut p = Pipeline::start(
                cfg,
                Options {
                    sim,
                    sms_fallback: false,
                    fallback_every: 0,
                    tenant_prefix: "bench",
                    hold_delivery,
                },
            )
            .await?;
            let s = p
                .drive(messages, concurrency, Some(pipeline::progress_bar(label)))
                .await?;
            anyhow::Ok((s, p.sim_stats()))
        }
    };
    let (s, stats) = run(false, "end to end").await?;
    // 3. The same pipeline draining a backlog: every message is accepted first, then the
    //    delivery roles start (a new tenant, so nothing of the first run is counted).
    let (drain, _) = run(true, "backlog drain").await?;

    let displayed = s.by_state.get("displayed").copied().unwrap_or(0);
    println!(
        "sealpost bench delivery: {messages} messages, concurrency {concurrency}, nats-server {version}, \
         simulator at zero latency, no faults, receipt delay {} ms; delivery.concurrency {}, rbm.concurrency {}",
        receipt_delay.as_millis(),
        cfg.delivery.concurrency,
        cfg.carriers.rbm.concurrency
    );
    println!(
        "{:<34} {:>9} {:>11} {:>9} {:>9} {:>9}",
        "phase", "ops", "ops/s", "p50 ms", "p90 ms", "p99 ms"
    );
    println!(
        "{:<34} {:>9} {:>11.0} {:>9.2} {:>9.2} {:>9.2}",
        raw.name,
        raw.ops,
        raw.ops_per_sec(),
        raw.pct_ms(0.50),
        raw.pct_ms(0.90),
        raw.pct_ms(0.99)
    );
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{:<34} {:>9} {:>11.0} {:>9.2} {:>9.2} {:>9.2}",
        "sends over NATS (accepted)",
        s.accepted,
        s.accepted as f64 / s.sends_elapsed.as_secs_f64().max(1e-9),
        ms(&s.send_latency_us, 0.5),
        ms(&s.send_latency_us, 0.9),
        ms(&s.send_latency_us, 0.99)
    );
    println!(
        "{:<34} {:>9} {:>11.0} {:>9.2} {:>9.2} {:>9.2}",
        "end to end, accepted -> displayed",
        displayed,
        s.rate(),
        ms(&s.to_displayed_us, 0.5),
        ms(&s.to_displayed_us, 0.9),
        ms(&s.to_displayed_us, 0.99)
    );
    let drain_displayed = drain.by_state.get("displayed").copied().unwrap_or(0);
    let drain_rate = drain.drain_rate().unwrap_or(0.0);
    println!(
        "{:<34} {:>9} {:>11.0}   (delivery roles started after all {} sends were accepted)",
        "backlog drain, accepted->displayed", drain_displayed, drain_rate, drain.accepted
    );
    println!(
        "{} of {messages} displayed in {:.2} s (first send to last terminal event; sends done after {:.2} s)",
        displayed,
        s.elapsed.as_secs_f64(),
        s.sends_elapsed.as_secs_f64()
    );
    if displayed as usize != messages {
        println!("final states: {:?}", s.by_state);
    }
    println!(
        "events: {} ({:.1} per message): {:?}",
        s.events_total(),
        s.events_total() as f64 / messages as f64,
        s.events
    );
    println!("stages as the observer saw them (since the first send):");
    for line in s.stage_lines() {
        println!("  {line}");
    }
    println!(
        "queues once a second: t s | delivery pending/unacked | sim accepted, webhooks 2xx | receipts stored, pending/unacked/redelivered"
    );
    for q in &s.samples {
        println!(
            "  {:>5.1} | {:>6} / {:>5} | {:>6}, {:>6} | {:>6}, {:>6} / {:>5} / {:>5}",
            q.at.as_secs_f64(),
            q.delivery_pending,
            q.delivery_unacked,
            q.sim_accepted,
            q.sim_webhooks,
            q.receipts_stored,
            q.receipts_pending,
            q.receipts_unacked,
            q.receipts_redelivered
        );
    }
    println!(
        "simulator: {} sends, {} accepted, {} webhooks sent, {} webhook failures",
        stats.sends, stats.accepted, stats.webhooks_sent, stats.webhook_failures
    );
    let rate = s.rate();
    println!(
        "end to end: {rate:.0} msg/s = {:.3} x raw publish/s ({:.0} events/s stored by the pipeline)",
        rate / raw.ops_per_sec(),
        s.events_total() as f64 / s.elapsed.as_secs_f64().max(1e-9)
    );
    println!(
        "backlog drain: {drain_rate:.0} msg/s = {:.3} x raw publish/s",
        drain_rate / raw.ops_per_sec()
    );
    println!(
        "target >= 5,000 msg/s end to end: {}",
        if rate >= 5000.0 && displayed as usize == messages {
            "met"
        } else {
            "BELOW TARGET"
        }
    );
    for (what, s) in [("end to end", &s), ("backlog drain", &drain)] {
        anyhow::ensure!(
            s.all_terminal(),
            "{what}: {} of {messages} messages did not reach a terminal state in time",
            messages - s.terminal
        );
    }
    Ok(())
}
