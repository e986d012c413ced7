//! # sealpost-telemetry
//!
//! What operators see of a Sealpost process: the Prometheus metrics every role updates, the
//! poller that turns JetStream consumer state into queue-depth gauges, log setup (text or JSON
//! lines) and OTLP traces.
//!
//! **Owns:** metric names, label sets and help texts ([`Metrics`]), their text exposition
//! ([`encode`]), the queue-depth poller ([`spawn_queue_depth_poller`]), [`init_logging`] and
//! [`init_logging_and_traces`], and [`traces`]: the OTLP exporter, the message's trace ids and
//! per-tenant sampling. Span attributes follow the same rule as labels below (message ids are
//! allowed there: a span is per message anyway).
//!
//! **Must not:** take a label value that can carry a secret or personal data. Labels are tenant
//! ids, carriers, message types, outcomes and error codes: never a phone number, message id,
//! payload reference, URL, key or token (a message id would also explode cardinality). Nothing
//! here decides anything; callers report what happened.
//!
//! The metrics are process-wide (one registry per process, like Prometheus' default registry):
//! every role in a process reports into [`metrics()`], and `/metrics` serves [`encode`].

use std::sync::OnceLock;
use std::time::Duration;

pub mod traces;

use prometheus_client::encoding::EncodeLabelSet;
pub use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IngressLabels {
    pub tenant: String,
    /// `nats` or `http`.
    pub transport: &'static str,
    /// `accepted`, `duplicate` or the error code.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub tenant: String,
    pub message_type: &'static str,
    pub carrier: String,
    /// acked, delivered, displayed, failed, fallback, expired.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    pub carrier: String,
    /// `transient` or `throttled`.
    pub class: &'static str,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    pub tenant: String,
    pub message_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabels {
    pub consumer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    pub tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyLookupLabels {
    pub tenant: String,
    /// `ok`, `not_found` (a key id the recipient does not have), `stale` (revoked or marked
    /// bad) or `error`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecryptionFailureLabels {
    pub tenant: String,
    /// The device's reason: `malformed`, `unknown_version`, `wrong_binding`, `wrong_key`,
    /// `tampered`, `digest_mismatch`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProjectionLabels {
    pub projection: String,
}

/// Carrier calls refused because of our credentials (401, 403, no access token).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CarrierAuthLabels {
    pub carrier: String,
    /// `http_401`, `http_403` or a `token_*` code; never token material.
    pub code: String,
}

fn latency_histogram() -> Histogram {
    // 5 ms to ~20 min.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.005, 2.0, 18,
    ))
}

/// Every metric a Sealpost process exports. Names are the public contract of the alert rules in
/// `crates/sealpost/prometheus/alerts.yml`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Every registered family's name, as `# TYPE` names it (without `_total`).
    names: Vec<&'static str>,
    pub ingress: Family<IngressLabels, Counter>,
    pub outcomes: Family<OutcomeLabels, Counter>,
    pub retries: Family<RetryLabels, Counter>,
    pub latency: Family<LatencyLabels, Histogram, fn() -> Histogram>,
    pub queue_depth: Family<ConsumerLabels, Gauge>,
    pub jobs_done: Family<ConsumerLabels, Counter>,
    pub tenant_queue_depth: Family<TenantLabels, Gauge>,
    pub key_lookups: Family<KeyLookupLabels, Counter>,
    pub decryption_failures: Family<DecryptionFailureLabels, Counter>,
    pub projection_lag: Family<ProjectionLabels, Gauge>,
    pub carrier_auth_failures: Family<CarrierAuthLabels, Counter>,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let mut names = Vec::new();
        let ingress = Family::<IngressLabels, Counter>::default();
        let outcomes = Family::<OutcomeLabels, Counter>::default();
        let retries = Family::<RetryLabels, Counter>::default();
        let latency = Family::<LatencyLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let queue_depth = Family::<ConsumerLabels, Gauge>::default();
        let jobs_done = Family::<ConsumerLabels, Counter>::default();
        let tenant_queue_depth = Family::<TenantLabels, Gauge>::default();
        let key_lookups = Family::<KeyLookupLabels, Counter>::default();
        let decryption_failures = Family::<DecryptionFailureLabels, Counter>::default();
        let projection_lag = Family::<ProjectionLabels, Gauge>::default();
        let carrier_auth_failures = Family::<CarrierAuthLabels, Counter>::default();
        register(&mut registry, &mut names,
            "sealpost_ingress_requests",
            "Send requests answered by the gateway, by transport and outcome (accepted, duplicate or the error code)",
            ingress.clone(),
        );
        register(&mut registry, &mut names,
            "sealpost_delivery_outcomes",
            "Delivery outcomes per tenant, message type and carrier: acked, delivered, displayed, failed, fallback, expired",
            outcomes.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "sealpost_retries",
            "Failed carrier attempts that were retried, by carrier, error class and code",
            retries.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "sealpost_delivery_latency_seconds",
            "From acceptance to the carrier's delivered receipt",
            latency.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "sealpost_queue_depth",
            "Messages a JetStream consumer has not finished (pending + unacknowledged)",
            queue_depth.clone(),
        );
        register(&mut registry, &mut names,
            "sealpost_queue_jobs_done",
            "Jobs a JetStream consumer of this process finished (acknowledged or terminated, not put back): the queue's drain rate",
            jobs_done.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "sealpost_tenant_queue_depth",
            "Messages waiting for submission per tenant (from the messages view)",
            tenant_queue_depth.clone(),
        );
        register(&mut registry, &mut names,
            "sealpost_key_directory_lookups",
            "Key checks of sends against the key directory (key_stale), by result: ok, not_found (unknown key id), stale (revoked), error",
            key_lookups.clone(),
        );
        register(&mut registry, &mut names,
            "sealpost_decryption_failures",
            "decryption_failed reports recorded from recipients' devices (through their device links), by tenant and reason",
            decryption_failures.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "sealpost_projection_lag",
            "Events a projection has not applied yet",
            projection_lag.clone(),
        );
        register(&mut registry, &mut names,
            "sealpost_carrier_auth_failures",
            "Carrier calls refused because of our credentials (401/403 after a token refresh, or no access token), by carrier and code; each pauses the carrier and fails no message",
            carrier_auth_failures.clone(),
        );
        Self {
            registry,
            names,
            ingress,
            outcomes,
            retries,
            latency,
            queue_depth,
            jobs_done,
            tenant_queue_depth,
            key_lookups,
            decryption_failures,
            projection_lag,
            carrier_auth_failures,
        }
    }

    /// The name of every metric family, whether or not anything was reported into it yet (the
    /// exposition lists a family only once it has a sample).
    pub fn family_names(&self) -> &[&'static str] {
        &self.names
    }

    /// Counts a delivery outcome.
    pub fn outcome(
        &self,
        tenant: &str,
        message_type: &'static str,
        carrier: &str,
        outcome: &'static str,
    ) {
        self.outcomes
            .get_or_create(&OutcomeLabels {
                tenant: tenant.to_owned(),
                message_type,
                carrier: carrier.to_owned(),
                outcome,
            })
            .inc();
    }
}

fn register<M: prometheus_client::registry::Metric>(
    registry: &mut Registry,
    names: &mut Vec<&'static str>,
    name: &'static str,
    help: &str,
    metric: M,
) {
    names.push(name);
    registry.register(name, help, metric);
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// `sealpost_queue_jobs_done_total{consumer}`, created at 0: a consumer keeps it and counts each
/// finished job without a lookup per job.
pub fn jobs_done(consumer: &str) -> Counter {
    metrics()
        .jobs_done
        .get_or_create(&ConsumerLabels {
            consumer: consumer.to_owned(),
        })
        .clone()
}

/// The content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The text exposition of every metric (OpenMetrics, which Prometheus scrapes natively).
pub fn encode() -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &metrics().registry).is_err() {
        out.clear();
        out.push_str("# EOF\n");
    }
    out
}

/// Every 5 s, sets `sealpost_queue_depth{consumer}` from JetStream consumer info
/// (`stream/durable` pairs). A consumer that does not exist is skipped.
pub fn spawn_queue_depth_poller(
    js: async_nats::jetstream::Context,
    consumers: Vec<(String, String)>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            for (stream, durable) in &consumers {
                let info = async {
                    let s = js.get_stream(stream).await.ok()?;
                    let mut c: async_nats::jetstream::consumer::PullConsumer =
                        s.get_consumer(durable).await.ok()?;
                    c.info().await.ok().cloned()
                }
                .await;
                if let Some(i) = info {
                    let depth = i.num_pending as i64 + i.num_ack_pending as i64;
                    metrics()
                        .queue_depth
                        .get_or_create(&ConsumerLabels {
                            consumer: durable.clone(),
                        })
                        .set(depth);
                }
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    })
}

/// Logs to stderr as text or JSON lines, filtered by a tracing filter string.
pub fn init_logging(json: bool, filter: &str) {
    let _ = init_logging_and_traces(json, filter, None);
}

/// [`init_logging`], plus OTLP traces when `traces` is given (see [`traces`]). The traces see
/// Sealpost's own spans at `info` whatever the log filter says. Returns the exporter's guard:
/// keep it for the life of the process (dropping it flushes). Call within the tokio runtime.
pub fn init_logging_and_traces(
    json: bool,
    filter: &str,
    traces: Option<&traces::TracesConfig>,
) -> Result<Option<traces::Traces>, String> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if json {
        fmt.json()
            .with_current_span(true)
            .with_span_list(false)
            .with_filter(filter)
            .boxed()
    } else {
        fmt.with_filter(filter).boxed()
    };
    let (otel, guard) = match traces {
        None => (None, None),
        Some(cfg) => {
            let (layer, guard) = traces::layer(cfg)?;
            let spans = tracing_subscriber::EnvFilter::new(
                "off,sealpost=info,sealpost_gateway=info,sealpost_delivery=info",
            );
            (Some(layer.with_filter(spans)), Some(guard))
        }
    };
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init();
    Ok(guard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_family_and_counts_what_was_reported() {
        metrics().outcome("acme", "transactional", "rbm", "delivered");
        metrics()
            .retries
            .get_or_create(&RetryLabels {
                carrier: "rbm".into(),
                class: "transient",
                code: "http_503".into(),
            })
            .inc();
        let text = encode();
        // Families appear once something was reported into them.
        assert!(
            text.contains("# TYPE sealpost_delivery_outcomes counter"),
            "{text}"
        );
        assert!(
            text.contains(
                r#"sealpost_retries_total{carrier="rbm",class="transient",code="http_503"} 1"#
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
        assert!(text.contains(
            r#"sealpost_delivery_outcomes_total{tenant="acme",message_type="transactional",carrier="rbm",outcome="delivered"} 1"#
        ), "{text}");
    }
}
