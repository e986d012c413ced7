//! `sealpost demo`: the whole delivery path in one process against a faulty carrier simulator.
//! Messages are sent over NATS to the gateway, delivered by the real workers (retries, throttle
//! pauses, timeouts and their 409 resubmissions), receipts come back as signed webhooks, and
//! not-capable recipients with a fallback get a neutral SMS notice. The summary is what the event
//! stream and the simulator saw.

use std::time::Duration;

use sealpost_carrier_sim::{FaultMix, SimConfig};

use crate::config::Config;
use crate::harness::{self, Harness, Options};

/// The demo's fault mix, which the fault suite (`tests/it/chaos.rs`) uses too: 1% 429s, 5% 5xx,
/// 1% accept-then-hang (300 ms, above the demo's 200 ms client timeout), 2% numbers without RCS,
/// 1% permanent refusals, 5% duplicate and 5% out-of-order receipts.
pub fn fault_mix() -> FaultMix {
    FaultMix {
        throttle: 0.01,
        retry_after_secs: 1,
        server_error: 0.05,
        timeout: 0.01,
        hang_ms: 300,
        not_capable: 0.02,
        permanent: 0.01,
        duplicate_receipt: 0.05,
        out_of_order_receipt: 0.05,
        offline: 0.0,
    }
}

pub async fn run(cfg: &Config, messages: usize, concurrency: usize) -> anyhow::Result<()> {
    let messages = messages.max(1);
    let mut cfg = cfg.clone();
    // Short backoffs and a client timeout below the simulator's hang, so that every fault shows
    // up within seconds.
    cfg.retry.base = Duration::from_millis(200);
    cfg.retry.max = Duration::from_millis(2000);
    cfg.carriers.rbm.timeout = Duration::from_millis(200);
    let faults = fault_mix();
    let sim = SimConfig {
        latency: Duration::from_millis(5),
        receipt_delay: Duration::from_millis(50),
        faults: faults.clone(),
        seed: 7,
        webhook_concurrency: 128,
        // RBM access tokens live 4 s, so even a short demo crosses several refreshes.
        token_ttl: Duration::from_secs(4),
        ..SimConfig::default()
    };
    let mut p = Harness::start(
        &cfg,
        Options {
            sim,
            sms_fallback: true,
            fallback_every: 2,
            hold_delivery: false,
            tenant_prefix: "demo",
        },
    )
    .await?;

    let pb = harness::progress_bar("delivering");
    let s = p.drive(messages, concurrency, Some(pb)).await?;
    let acked = p.acked_ids();
    // Submissions the carrier accepted as new, per message (its dedup answers a resubmission
    // 409, which is counted in the report, not here).
    let not_once: Vec<(&String, u32)> = acked
        .iter()
        .map(|id| {
            let accepted = p
                .sim
                .requests_for(id)
                .iter()
                .filter(|r| r.status == 200)
                .count();
            (id, u32::try_from(accepted).unwrap_or(u32::MAX))
        })
        .filter(|(_, c)| *c != 1)
        .collect();

    report(&p, &faults, &s, messages, concurrency, &acked, &not_once);
    anyhow::ensure!(
        s.all_terminal(),
        "{} of {} messages did not reach a terminal state within the time limit",
        s.messages - s.terminal,
        s.messages
    );
    anyhow::ensure!(
        not_once.is_empty(),
        "{} acked messages were not accepted exactly once at the carrier",
        not_once.len()
    );
    Ok(())
}

/// Prints what the event stream and the simulator saw.
fn report(
    p: &Harness,
    faults: &FaultMix,
    s: &harness::Summary,
    messages: usize,
    concurrency: usize,
    acked: &[String],
    not_once: &[(&String, u32)],
) {
    let stats = p.sim_stats();
    println!(
        "sealpost demo: {messages} messages (tenant {}), concurrency {concurrency}, every 2nd with an SMS fallback",
        p.tenant()
    );
    println!(
        "carrier faults: throttle {} (Retry-After {} s), 5xx {}, accept-then-hang {} ({} ms vs client timeout {} ms), \
         not capable {}, permanent {}, duplicate receipts {}, out-of-order receipts {}",
        faults.throttle,
        faults.retry_after_secs,
        faults.server_error,
        faults.timeout,
        faults.hang_ms,
        p.config().carriers.rbm.timeout.as_millis(),
        faults.not_capable,
        faults.permanent,
        faults.duplicate_receipt,
        faults.out_of_order_receipt
    );
    println!(
        "{} of {} accepted messages terminal in {:.2} s ({:.0} msgs/s, first send to last terminal event); sends took {:.2} s; {} events",
        s.terminal,
        s.accepted,
        s.elapsed.as_secs_f64(),
        s.rate(),
        s.sends_elapsed.as_secs_f64(),
        s.events_total()
    );

    println!("\n{:<34} {:>8}", "final state", "messages");
    for (state, n) in &s.by_state {
        println!("{state:<34} {n:>8}");
    }
    println!("\n{:<34} {:>8}", "failed attempts by class", "count");
    for (class, n) in s.failed_by_class() {
        println!("{:<34} {n:>8}", class.as_str());
    }
    println!("\n{:<34} {:>8}", "failed attempts by class / code", "count");
    for ((class, code), n) in &s.failed_by {
        println!("{:<34} {n:>8}", format!("{class} / {code}"));
    }
    println!("\n{:<34} {:>8}", "events by type", "count");
    for (ty, n) in &s.events {
        println!("{:<34} {n:>8}", ty.as_str());
    }
    if !s.after_terminal.is_empty() {
        println!("events after a terminal state: {:?}", s.after_terminal);
    }
    println!(
        "\nlatency accepted -> terminal:  {}",
        harness::percentiles(&s.to_terminal_us)
    );
    println!(
        "latency accepted -> displayed: {}",
        harness::percentiles(&s.to_displayed_us)
    );
    println!(
        "send request/reply:            {}",
        harness::percentiles(&s.send_latency_us)
    );

    println!("\n{:<34} {:>8}", "carrier simulator", "count");
    for (name, n) in harness::sim_rows(&stats) {
        println!("{name:<34} {n:>8}");
    }
    println!(
        "\nexactly one accepted submission at the carrier per message that reached carrier_acked: \
         {} acked, {} with a count other than 1{}",
        acked.len(),
        not_once.len(),
        if not_once.is_empty() {
            " (ok)"
        } else {
            "  VIOLATED"
        }
    );
    for (id, c) in not_once.iter().take(10) {
        println!("  {id}: accepted {c} times");
    }
    println!(
        "Retry-After windows honoured: {} of {} sends arrived inside one of the windows the \
         carrier's {} 429s opened ({} of them more than 10 ms after the 429)",
        stats.throttle_violations,
        stats.sends,
        stats.throttled,
        stats.throttle_violations_after_10ms,
    );
}
