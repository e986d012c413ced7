//! `sealpost bench delivery`: messages/s end to end (send over NATS → worker → carrier simulator
//! → signed DELIVERED and READ webhooks → receipts applied → `displayed`), with the simulator at
//! zero latency and no faults, next to raw JetStream publishes measured first in the same run on
//! the same server. Sealpost runs in the [`harness`](crate::harness), started with
//! [`App::start`](crate::App::start). A second phase holds the delivery roles back until every
//! send is accepted, then measures how fast they drain the backlog.

use std::time::Duration;

use async_nats::jetstream;
use hdrhistogram::Histogram;
use sealpost_carrier_sim::SimStats;
use sealpost_eventstore::provision::check_server;

use super::{private_stream, raw_publishes_phase, Phase};
use crate::app::connect;
use crate::config::Config;
use crate::harness::{self, Harness, Options, Summary};

/// `sealpost bench delivery`: see the module docs.
pub async fn run(cfg: &Config, messages: usize, concurrency: usize) -> anyhow::Result<()> {
    let client = connect(cfg).await?;
    let version = check_server(&client).await?;
    let js = jetstream::new(client.clone());

    // 1. Baseline: raw JetStream publishes with Msg-Id, the size of an accepted event.
    let (stream_cfg, prefix, _) = private_stream(&js, cfg).await?;
    let raw = raw_publishes_phase(&js, &prefix, messages, concurrency, 900).await;
    js.delete_stream(&stream_cfg.name).await.ok();
    let raw = raw?;

    // 2. The harness: the gateway and every delivery role through App::start.
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
            let mut p = Harness::start(
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
                .drive(messages, concurrency, Some(harness::progress_bar(label)))
                .await?;
            anyhow::Ok((s, p.sim_stats()))
        }
    };
    let cpu_before = CpuSnapshot::now();
    let (s, stats) = run(false, "end to end").await?;
    let cpu = CpuSnapshot::now().since(&cpu_before);
    // 3. The same path draining a backlog: every message is accepted first, then the
    //    delivery roles start (a new tenant, so nothing of the first run is counted).
    let (drain, _) = run(true, "backlog drain").await?;

    let rig = Rig {
        version: &version,
        messages,
        concurrency,
        receipt_delay,
        cfg,
    };
    rig.report(&raw, &s, &stats, &drain);
    cpu.report(messages);
    for (what, s) in [("end to end", &s), ("backlog drain", &drain)] {
        anyhow::ensure!(
            s.all_terminal(),
            "{what}: {} of {messages} messages did not reach a terminal state in time",
            messages - s.terminal
        );
    }
    Ok(())
}

/// What a run was set up with, for the report's header.
struct Rig<'a> {
    version: &'a str,
    messages: usize,
    concurrency: usize,
    receipt_delay: Duration,
    cfg: &'a Config,
}

impl Rig<'_> {
    fn report(&self, raw: &Phase, s: &Summary, stats: &SimStats, drain: &Summary) {
        let (messages, concurrency, version, cfg) =
            (self.messages, self.concurrency, self.version, self.cfg);
        let receipt_delay = self.receipt_delay;
        let displayed = s.displayed();
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
        let drain_displayed = drain.displayed();
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
    }
}

/// CPU time (user + system) of this process and of the nats-servers named by
/// `SEALPOST_BENCH_SERVER_PIDS` (comma-separated; `scripts/bench` sets it), from `/proc`.
#[derive(Debug, Clone, Default)]
struct CpuSnapshot {
    sealpost: Option<Duration>,
    servers: Vec<(String, Option<Duration>)>,
}

impl CpuSnapshot {
    fn now() -> Self {
        let servers = std::env::var("SEALPOST_BENCH_SERVER_PIDS")
            .unwrap_or_default()
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| (p.trim().to_owned(), cpu_of(p.trim())))
            .collect();
        Self {
            sealpost: cpu_of("self"),
            servers,
        }
    }

    fn since(&self, before: &Self) -> Self {
        let diff = |a: Option<Duration>, b: Option<Duration>| Some(a?.saturating_sub(b?));
        Self {
            sealpost: diff(self.sealpost, before.sealpost),
            servers: self
                .servers
                .iter()
                .zip(&before.servers)
                .map(|((pid, a), (_, b))| (pid.clone(), diff(*a, *b)))
                .collect(),
        }
    }

    fn report(&self, messages: usize) {
        let per = |d: Duration| d.as_secs_f64() * 1e6 / messages.max(1) as f64;
        let Some(own) = self.sealpost else {
            println!("CPU per message: /proc is not readable here");
            return;
        };
        let servers: Option<Duration> = self.servers.iter().map(|(_, d)| *d).sum();
        match servers {
            Some(n) if !self.servers.is_empty() => println!(
                "CPU per message, end to end: {:.0} µs = nats-server {:.0} µs ({} process{}) + sealpost {:.0} µs (gateway, delivery roles, simulator, load generator, observer)",
                per(n + own),
                per(n),
                self.servers.len(),
                if self.servers.len() == 1 { "" } else { "es" },
                per(own)
            ),
            _ => println!(
                "CPU per message, end to end: sealpost {:.0} µs (gateway, delivery roles, simulator, load generator, observer); set SEALPOST_BENCH_SERVER_PIDS for nats-server's share",
                per(own)
            ),
        }
    }
}

/// User + system CPU time of `pid` (or `self`) from `/proc/<pid>/stat`, in Linux's USER_HZ
/// ticks of 10 ms.
fn cpu_of(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime and stime are fields 14 and 15.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}
