//! What a harness run reports: the [`Summary`] of one drive, queue samples taken once a second,
//! latency percentiles and the simulator's counters, for the demo's and benches' printouts.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use sealpost_carrier_sim::SimStats;
use sealpost_domain::events::ErrorClass;
use sealpost_domain::{EventType, Status};
use sealpost_eventstore::names::{Durable, Stream};

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
pub(crate) async fn sample_queues(
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
        if let Ok(st) = js.get_stream(Stream::Events.as_str()).await {
            if let Ok(mut c) = st
                .get_consumer::<jetstream::consumer::pull::Config>(Durable::Delivery.as_str())
                .await
            {
                if let Ok(i) = c.info().await {
                    s.delivery_pending = i.num_pending;
                    s.delivery_unacked = i.num_ack_pending;
                }
            }
        }
        if let Ok(mut st) = js.get_stream(Stream::Receipts.as_str()).await {
            if let Ok(i) = st.info().await {
                s.receipts_stored = i.state.messages;
            }
            if let Ok(mut c) = st
                .get_consumer::<jetstream::consumer::pull::Config>(Durable::Receipts.as_str())
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
    pub failed_by: BTreeMap<(ErrorClass, String), u64>,
    /// Events per type for this run's tenant.
    pub events: BTreeMap<EventType, u64>,
    /// Events per type seen after a message was already terminal.
    pub after_terminal: BTreeMap<EventType, u64>,
    /// Per event type: first and last seen, since the first send.
    pub stages: BTreeMap<EventType, (Duration, Duration)>,
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
    pub fn failed_by_class(&self) -> BTreeMap<ErrorClass, u64> {
        let mut m = BTreeMap::new();
        for ((class, _), n) in &self.failed_by {
            *m.entry(*class).or_default() += n;
        }
        m
    }

    /// Messages that ended `displayed`.
    pub fn displayed(&self) -> u64 {
        self.by_state
            .get(Status::Displayed.as_str())
            .copied()
            .unwrap_or(0)
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
                    "{:<20} {n:>8} events, first at {:>7.2} s, last at {:>7.2} s, {:>8.0} /s",
                    ty.as_str(),
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
        (
            "throttle_violations_after_10ms",
            s.throttle_violations_after_10ms,
        ),
        ("throttle_violation_max_ms", s.throttle_violation_max_ms),
        ("oauth_tokens_issued", s.tokens_issued),
        ("auth_rejections", s.auth_rejections),
    ]
}
