//! `sealpost bench …`: benchmarks that print figures next to a baseline measured in the same
//! run. Each bench has its own module; this one holds what they share: timed phases with latency
//! histograms, a private stream for raw-publish baselines, and a tenant of the run.
//!
//! - [`eventstore`]: lifecycles, appends and loads against raw JetStream publishes;
//! - [`ingress`]: accepted sends over NATS and HTTP through [`crate::App`];
//! - [`delivery`]: end to end through the [`harness`](crate::harness), and a backlog drain;
//! - [`projections`]: a rebuild against a raw Postgres insert baseline;
//! - [`keys`]: the key directory's AKD on Postgres against akd's in-memory storage;
//! - [`sdk`]: the client SDK's seal, open and lookup verification against raw AEAD.

pub mod delivery;
pub mod eventstore;
pub mod fixtures;
pub mod ingress;
pub mod keys;
pub mod projections;
pub mod sdk;

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use futures::StreamExt;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use sealpost_domain::TenantId;
use sealpost_eventstore::names::Stream;
use sealpost_eventstore::provision::embedded_definitions;

use crate::config::Config;

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
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
    pub fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
    pub fn pct_ms(&self, q: f64) -> f64 {
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
pub(crate) async fn measure<F, Fut>(
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
pub(crate) async fn private_stream(
    js: &jetstream::Context,
    cfg: &Config,
) -> anyhow::Result<(jetstream::stream::Config, String, String)> {
    let run = nuid::next().to_string().to_lowercase();
    let prefix = format!("bench{run}.evt");
    let mut stream_cfg = embedded_definitions()
        .stream(Stream::Events)
        .context("event stream definition")?;
    stream_cfg.name = format!("SEALPOST_BENCH_{run}");
    stream_cfg.subjects = vec![format!("{prefix}.>")];
    stream_cfg.num_replicas = cfg.nats.replicas;
    js.create_stream(stream_cfg.clone())
        .await
        .context("creating the bench stream")?;
    Ok((stream_cfg, prefix, run))
}

/// Raw JetStream publishes with `Nats-Msg-Id`, `n` of `size` bytes with `concurrency` in
/// flight, each awaited: the baseline of the ingress and delivery benches.
pub(crate) async fn raw_publishes_phase(
    js: &jetstream::Context,
    prefix: &str,
    n: usize,
    concurrency: usize,
    size: usize,
) -> anyhow::Result<Phase> {
    let payload = bytes::Bytes::from(vec![b'x'; size]);
    measure("raw JetStream publish", n, concurrency, |i| {
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
    .await
}

/// `cfg` with a tenant of this run (`bench-<what>-<run>`, no rate limit), its id and API key.
pub(crate) fn bench_tenant(
    cfg: &Config,
    what: &str,
    run: &str,
) -> anyhow::Result<(Config, TenantId, String)> {
    let short = &run[run.len().saturating_sub(10)..];
    let tenant = TenantId::new(format!("bench-{what}-{short}"))?;
    let api_key = format!("bench-key-{run}");
    let mut cfg = cfg.clone();
    cfg.tenants
        .push(crate::harness::unlimited_tenant(&tenant, &api_key));
    cfg.gateway.http_listen = "127.0.0.1:0".parse()?;
    cfg.s3.embedded_listen = "127.0.0.1:0".parse()?;
    cfg.validate()?;
    Ok((cfg, tenant, api_key))
}
