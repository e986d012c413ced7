//! `sealpost bench eventstore`: the event store's throughput and latency next to a raw JetStream
//! publish baseline measured in the same run, on the same server, with the same payload size.
//! The events go to a private stream that is deleted afterwards.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use sealpost_domain::{Message, MessageEvent, RetryPolicy};
use sealpost_eventstore::provision::check_server;
use sealpost_eventstore::{CommandExecutor, JetStreamEventStore, Loaded, StoreConfig};

use super::{fixtures, measure, private_stream, Phase};
use crate::app::connect;
use crate::config::Config;

#[derive(Debug, Clone, Copy)]
pub struct EventstoreBench {
    pub messages: usize,
    pub concurrency: usize,
}

/// `sealpost bench eventstore`: see the module docs.
pub async fn run(cfg: &Config, b: EventstoreBench) -> anyhow::Result<Vec<Phase>> {
    let client = connect(cfg).await?;
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
            timeout: cfg.nats.request_timeout.max(Duration::from_secs(10)),
            ..StoreConfig::default()
        },
    );
    let executor = Arc::new(CommandExecutor::new(store.clone(), cfg.retry_policy()));
    let cached = Arc::new(
        CommandExecutor::new(store.clone(), cfg.retry_policy()).with_cache(b.messages.max(1024)),
    );

    // The payload size of the baseline: the mean body of one full lifecycle's events.
    let sample = fixtures::happy_path_events("bench-sample", &RetryPolicy::default())?;
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
    let raw = measure(
        "raw JetStream publish",
        b.concurrency,
        b.concurrency,
        |task| {
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
        },
    )
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
            let (id, _) = fixtures::accept(&format!("single-{i}"));
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
            let (id, _) = fixtures::accept(&format!("batch-{i}"));
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
            let (id, _) = fixtures::accept(&format!("life-{i}"));
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
            for (step, (id, cmd)) in fixtures::happy_path_commands(&key).into_iter().enumerate() {
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
