//! `sealpost demo`: drives a few thousand messages through their lifecycles on the event store,
//! with a progress bar, then reloads every message from JetStream and prints what it finds.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use async_nats::jetstream;
use futures::StreamExt;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use sealpost_domain::events::ErrorClass;
use sealpost_domain::{Message, MessageEvent, Status};
use sealpost_eventstore::provision::{check_ready, embedded_definitions};
use sealpost_eventstore::{CommandExecutor, JetStreamEventStore, StoreConfig};

use crate::config::Config;
use crate::lifecycle::{self, Scenario};

#[derive(Debug, Default)]
struct Tally {
    commands: u64,
    events: u64,
    conflicts_retried: u64,
    retries_by_class: BTreeMap<String, u64>,
}

pub async fn run(cfg: &Config, messages: usize, concurrency: usize) -> anyhow::Result<()> {
    let client = crate::connect(cfg).await?;
    let js = jetstream::new(client.clone());
    check_ready(&js, &embedded_definitions()).await?;
    let store: JetStreamEventStore<Message> = JetStreamEventStore::new(
        client.clone(),
        StoreConfig {
            timeout: cfg.request_timeout(),
            ..StoreConfig::default()
        },
    );
    let executor = Arc::new(
        CommandExecutor::new(store.clone(), cfg.retry_policy()).with_cache(messages.max(1024)),
    );
    let run = nuid::next().to_string().to_lowercase();

    let pb = ProgressBar::new(messages as u64);
    pb.set_style(
        ProgressStyle::with_template("messages [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let started = Instant::now();
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut tally = Tally::default();
    let mut ids = Vec::with_capacity(messages);
    let mut results = futures::stream::iter(0..messages)
        .map(|i| {
            let executor = executor.clone();
            let key = format!("demo-{run}-{i}");
            async move {
                let (id, accept) = lifecycle::accept(&key);
                let meta = HashMap::from([("correlation_id".to_owned(), format!("corr-{key}"))]);
                let mut out = vec![];
                for cmd in std::iter::once(accept).chain(Scenario::for_index(i).commands(&key)) {
                    let t = Instant::now();
                    let done = executor.execute(&id, cmd, &meta).await?;
                    out.push((t.elapsed(), done.events, done.retries));
                }
                anyhow::Ok((id, out))
            }
        })
        .buffer_unordered(concurrency);
    while let Some(r) = results.next().await {
        let (id, steps) = r?;
        for (lat, events, retries) in steps {
            latency_us.record(lat.as_micros().max(1) as u64)?;
            tally.commands += 1;
            tally.events += events.len() as u64;
            tally.conflicts_retried += u64::from(retries);
            for e in &events {
                if let MessageEvent::AttemptFailed(f) = e {
                    let class = match f.class {
                        ErrorClass::Transient => "transient",
                        ErrorClass::Throttled => "throttled",
                        ErrorClass::Permanent => "permanent",
                        ErrorClass::NotCapable => "not_capable",
                    };
                    *tally.retries_by_class.entry(class.to_owned()).or_default() += 1;
                }
            }
        }
        ids.push(id);
        pb.inc(1);
    }
    let elapsed = started.elapsed();
    pb.finish_and_clear();

    // Read every message back from JetStream: the summary is what the store holds.
    let pb = ProgressBar::new(ids.len() as u64);
    pb.set_message("reloading");
    let mut by_status: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut reloads = futures::stream::iter(ids)
        .map(|id| {
            let store = store.clone();
            async move { store.load(&id).await }
        })
        .buffer_unordered(concurrency);
    while let Some(loaded) = reloads.next().await {
        let status: Status = loaded?.aggregate.status;
        *by_status.entry(status.as_str()).or_default() += 1;
        pb.inc(1);
    }
    pb.finish_and_clear();

    println!(
        "sealpost demo: {messages} messages, {} commands, {} events in {:.2} s ({:.0} commands/s)",
        tally.commands,
        tally.events,
        elapsed.as_secs_f64(),
        tally.commands as f64 / elapsed.as_secs_f64()
    );
    println!("\n{:<20} {:>8}", "status (reloaded)", "messages");
    for (status, n) in &by_status {
        println!("{status:<20} {n:>8}");
    }
    println!("\n{:<20} {:>8}", "failed attempts by class", "count");
    for (class, n) in &tally.retries_by_class {
        println!("{class:<20} {n:>8}");
    }
    println!(
        "\ncommand latency (load + decide + append): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms; \
         conflicts retried: {}",
        latency_us.value_at_quantile(0.5) as f64 / 1000.0,
        latency_us.value_at_quantile(0.9) as f64 / 1000.0,
        latency_us.value_at_quantile(0.99) as f64 / 1000.0,
        tally.conflicts_retried
    );
    println!(
        "carrier answers are scripted in this demo; real workers, carriers and receipts come next"
    );
    Ok(())
}
