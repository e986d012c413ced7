//! `sealpost replay` without `--projection`: stream the stored events as NDJSON, and with
//! `--verify` audit them (per-aggregate sequence continuity, schema validity, lifecycle order).
//!
//! Reads through a named ordered pull consumer created with the filtered-create API form, so a
//! tenant's NATS user (see `sealpost_gateway::nats_config`) can replay its own events and no
//! one else's.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
use futures::StreamExt;
use sealpost_domain::order::{check_type, IllegalTransition};
use sealpost_domain::Status;
use sealpost_eventstore::store::{HDR_CORRELATION_ID, HDR_EVENT_VERSION, HDR_SEQUENCE};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::config::Config;

const STREAM: &str = "SEALPOST_EVENTS";
const PREFIX: &str = "sealpost.evt";
/// Problems listed in the report; the counts cover all of them.
const REPORT_LIMIT: usize = 20;

/// The embedded event schemas, by (event type, version).
const SCHEMAS: [(&str, &str, &str); 15] = [
    (
        "accepted",
        "0",
        include_str!("../../../schemas/events/accepted.v0.json"),
    ),
    (
        "accepted",
        "1",
        include_str!("../../../schemas/events/accepted.v1.json"),
    ),
    (
        "attempt_failed",
        "1",
        include_str!("../../../schemas/events/attempt_failed.v1.json"),
    ),
    (
        "cancelled",
        "1",
        include_str!("../../../schemas/events/cancelled.v1.json"),
    ),
    (
        "carrier_acked",
        "1",
        include_str!("../../../schemas/events/carrier_acked.v1.json"),
    ),
    (
        "delivered",
        "1",
        include_str!("../../../schemas/events/delivered.v1.json"),
    ),
    (
        "displayed",
        "1",
        include_str!("../../../schemas/events/displayed.v1.json"),
    ),
    (
        "expired",
        "1",
        include_str!("../../../schemas/events/expired.v1.json"),
    ),
    (
        "failed",
        "1",
        include_str!("../../../schemas/events/failed.v1.json"),
    ),
    (
        "fallback_triggered",
        "1",
        include_str!("../../../schemas/events/fallback_triggered.v1.json"),
    ),
    (
        "held",
        "1",
        include_str!("../../../schemas/events/held.v1.json"),
    ),
    (
        "purged",
        "1",
        include_str!("../../../schemas/events/purged.v1.json"),
    ),
    (
        "queued",
        "1",
        include_str!("../../../schemas/events/queued.v1.json"),
    ),
    (
        "released",
        "1",
        include_str!("../../../schemas/events/released.v1.json"),
    ),
    (
        "retry_scheduled",
        "1",
        include_str!("../../../schemas/events/retry_scheduled.v1.json"),
    ),
];

/// What to replay and whether to audit it.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub tenant: Option<String>,
    pub message: Option<String>,
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
    pub verify: bool,
}

/// Parses an RFC 3339 instant (clap value parser).
pub fn parse_instant(s: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(s, &Rfc3339)
        .map_err(|e| format!("'{s}' is not an RFC 3339 instant (2026-01-31T12:00:00Z): {e}"))
}

/// The consumer filter: `sealpost.evt.<tenant or *>.<message or *>.>`.
pub fn filter(tenant: Option<&str>, message: Option<&str>) -> String {
    format!(
        "{PREFIX}.{}.{}.>",
        tenant.unwrap_or("*"),
        message.unwrap_or("*")
    )
}

/// Connects like `crate::connect`, but with the tenant's inbox prefix when `--tenant` is given
/// (a tenant's user may only receive on `_INBOX_<tenant>.>`), and collects the server's errors
/// (permission violations) for the failure message.
async fn connect(
    cfg: &Config,
    tenant: Option<&str>,
) -> anyhow::Result<(async_nats::Client, Arc<Mutex<Vec<String>>>)> {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let sink = errors.clone();
    let mut options = if cfg.nats.nkey_seed.is_empty() {
        async_nats::ConnectOptions::new()
    } else {
        async_nats::ConnectOptions::with_nkey(cfg.nats.nkey_seed.clone())
    };
    if let Some(t) = tenant {
        options = options.custom_inbox_prefix(sealpost_gateway::inbox_prefix(t));
    }
    let client = options
        .name("sealpost-replay")
        .request_timeout(Some(cfg.request_timeout()))
        .connection_timeout(std::time::Duration::from_secs(5))
        .event_callback(move |event| {
            let sink = sink.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    if let Ok(mut v) = sink.lock() {
                        v.push(e.to_string());
                    }
                }
            }
        })
        .connect(&cfg.nats.url)
        .await
        .with_context(|| format!("cannot connect to NATS at {}", cfg.nats.url))?;
    Ok((client, errors))
}

/// Runs the replay: NDJSON on stdout, progress and the verification report on stderr.
pub async fn run(cfg: &Config, opts: &Options) -> anyhow::Result<()> {
    if let Some(t) = &opts.tenant {
        sealpost_domain::TenantId::new(t.clone())
            .map_err(|e| anyhow::anyhow!("--tenant '{t}': {e}"))?;
    }
    if let Some(m) = &opts.message {
        anyhow::ensure!(
            !m.is_empty() && !m.contains(['.', '*', '>', ' ']),
            "--message '{m}' is not a message id"
        );
    }
    let (client, server_errors) = connect(cfg, opts.tenant.as_deref()).await?;
    let mut js = async_nats::jetstream::new(client.clone());
    js.set_timeout(cfg.request_timeout());
    // No STREAM.INFO: a tenant's user may not read the stream's info.
    let stream = js.get_stream_no_info(STREAM).await?;
    let filter = filter(opts.tenant.as_deref(), opts.message.as_deref());
    let deliver_policy = match opts.since {
        Some(start_time) => DeliverPolicy::ByStartTime { start_time },
        None => DeliverPolicy::All,
    };
    let consumer = stream
        .create_consumer(OrderedConfig {
            // A name makes the client use the filtered-create subject, which carries the filter
            // the tenant permissions match on.
            name: Some(format!("replay_{}", nuid::next())),
            filter_subject: filter.clone(),
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| {
            let errs = server_errors
                .lock()
                .map(|v| v.join("; "))
                .unwrap_or_default();
            anyhow::anyhow!(
                "cannot create a replay consumer on {STREAM} for {filter}: {e}{}",
                if errs.is_empty() {
                    String::new()
                } else {
                    format!(" (server: {errs})")
                }
            )
        })?;
    let total = consumer.cached_info().num_pending;
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} replay [{bar:40}] {pos}/{len} events ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );

    let mut audit = opts.verify.then(|| Audit::new(opts.since.is_some()));
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut count = 0u64;
    if total > 0 {
        let mut messages = consumer.messages().await?;
        while let Some(msg) = messages.next().await {
            let msg = msg.map_err(|e| anyhow::anyhow!("reading {STREAM}: {e}"))?;
            let info = msg.info().map_err(|e| anyhow::anyhow!("{e}"))?;
            let (stream_seq, pending, published) =
                (info.stream_sequence, info.pending, info.published);
            if opts.until.is_some_and(|u| published > u) {
                break;
            }
            let event = Event::from_message(&msg, stream_seq, published);
            writeln!(out, "{}", event.to_json())?;
            if let Some(a) = audit.as_mut() {
                a.check(&event);
            }
            count += 1;
            bar.inc(1);
            if pending == 0 {
                break;
            }
        }
    }
    out.flush()?;
    bar.finish_and_clear();
    if let Some(a) = audit {
        if a.problems.is_empty() {
            eprintln!(
                "replay verified OK: {count} events of {} messages on {filter}: sequences gapless, \
                 bodies valid, lifecycle order legal",
                a.aggregates.len()
            );
        } else {
            eprint!("{}", a.report(count));
            anyhow::bail!(
                "replay verification failed: {} problems in {count} events",
                a.problems.len()
            );
        }
    }
    Ok(())
}

/// One stored event as read by the replay.
struct Event {
    stream_seq: u64,
    subject: String,
    tenant: String,
    message_id: String,
    event_type: String,
    version: Option<String>,
    aggregate_seq: Option<String>,
    correlation_id: Option<String>,
    time: OffsetDateTime,
    body: Result<Value, String>,
}

impl Event {
    fn from_message(
        msg: &async_nats::jetstream::Message,
        stream_seq: u64,
        time: OffsetDateTime,
    ) -> Self {
        let subject = msg.subject.to_string();
        let tokens: Vec<&str> = subject.split('.').collect();
        let token = |i: usize| tokens.get(i).copied().unwrap_or_default().to_owned();
        let header = |name: &str| {
            msg.headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
        };
        Event {
            stream_seq,
            tenant: token(2),
            message_id: token(3),
            event_type: tokens.last().copied().unwrap_or_default().to_owned(),
            version: header(HDR_EVENT_VERSION),
            aggregate_seq: header(HDR_SEQUENCE),
            correlation_id: header(HDR_CORRELATION_ID),
            time,
            body: serde_json::from_slice(&msg.payload).map_err(|e| e.to_string()),
            subject,
        }
    }

    fn to_json(&self) -> Value {
        let mut v = json!({
            "stream_seq": self.stream_seq,
            "subject": self.subject,
            "tenant": self.tenant,
            "message_id": self.message_id,
            "event_type": self.event_type,
            "version": self.version,
            "aggregate_seq": self.aggregate_seq.as_deref().map(|s| s.parse::<u64>().map(Value::from).unwrap_or_else(|_| Value::from(s))),
            "correlation_id": self.correlation_id,
            "time": self.time.format(&Rfc3339).ok(),
            "event": self.body.as_ref().ok(),
        });
        if let (Err(e), Some(obj)) = (&self.body, v.as_object_mut()) {
            obj.insert("body_error".into(), Value::from(e.as_str()));
        }
        v
    }
}

/// One thing wrong with the history.
#[derive(Debug)]
struct Problem {
    stream_seq: u64,
    message_id: String,
    kind: &'static str,
    what: String,
}

#[derive(Debug, Default)]
struct AggregateState {
    last_seq: Option<u64>,
    /// None when the replay started after this aggregate's first event (`--since`).
    status: Option<Status>,
}

/// The `--verify` checks, fed one event at a time in stream order.
struct Audit {
    relative: bool,
    validators: HashMap<(&'static str, &'static str), jsonschema::Validator>,
    aggregates: HashMap<String, AggregateState>,
    problems: Vec<Problem>,
}

impl Audit {
    fn new(relative: bool) -> Self {
        let mut validators = HashMap::new();
        for (t, v, text) in SCHEMAS {
            // The schemas are tested in tests/it/schemas.rs; a broken one fails there first.
            let compiled = serde_json::from_str::<Value>(text).ok().and_then(|schema| {
                jsonschema::options()
                    .should_validate_formats(true)
                    .build(&schema)
                    .ok()
            });
            if let Some(c) = compiled {
                validators.insert((t, v), c);
            }
        }
        Audit {
            relative,
            validators,
            aggregates: HashMap::new(),
            problems: Vec::new(),
        }
    }

    fn problem(&mut self, e: &Event, kind: &'static str, what: String) {
        self.problems.push(Problem {
            stream_seq: e.stream_seq,
            message_id: format!("{}/{}", e.tenant, e.message_id),
            kind,
            what,
        });
    }

    fn check(&mut self, e: &Event) {
        self.check_sequence(e);
        self.check_schema(e);
        self.check_order(e);
    }

    fn check_sequence(&mut self, e: &Event) {
        let key = format!("{}.{}", e.tenant, e.message_id);
        let relative = self.relative;
        let seq = match e.aggregate_seq.as_deref().map(str::parse::<u64>) {
            Some(Ok(s)) if s >= 1 => s,
            Some(_) => {
                let got = e.aggregate_seq.clone().unwrap_or_default();
                return self.problem(
                    e,
                    "sequence",
                    format!("{HDR_SEQUENCE} '{got}' is not a positive integer"),
                );
            }
            None => return self.problem(e, "sequence", format!("no {HDR_SEQUENCE} header")),
        };
        let state = self.aggregates.entry(key).or_default();
        let expected = match state.last_seq {
            Some(last) => Some(last + 1),
            // From the start of the stream every aggregate starts at 1; with --since only the
            // continuity after the first event seen is checked.
            None if relative => None,
            None => Some(1),
        };
        state.last_seq = Some(state.last_seq.map_or(seq, |l| l.max(seq)));
        if let Some(expected) = expected.filter(|x| *x != seq) {
            let what = if seq < expected {
                format!("{HDR_SEQUENCE} {seq} repeats or goes back (expected {expected})")
            } else {
                format!("{HDR_SEQUENCE} {seq} leaves a gap (expected {expected})")
            };
            self.problem(e, "sequence", what);
        }
    }

    fn check_schema(&mut self, e: &Event) {
        let body = match &e.body {
            Ok(b) => b,
            Err(err) => {
                let what = format!("{} body is not JSON: {err}", e.event_type);
                return self.problem(e, "schema", what);
            }
        };
        let Some(version) = e.version.as_deref() else {
            return self.problem(e, "schema", format!("no {HDR_EVENT_VERSION} header"));
        };
        let key = SCHEMAS
            .iter()
            .find(|(t, v, _)| *t == e.event_type && *v == version)
            .map(|(t, v, _)| (*t, *v));
        let Some(validator) = key.and_then(|k| self.validators.get(&k)) else {
            let what = format!("no schema for {} v{version}", e.event_type);
            return self.problem(e, "schema", what);
        };
        let errors: Vec<String> = validator
            .iter_errors(body)
            .take(3)
            .map(|err| format!("at '{}': {err}", err.instance_path()))
            .collect();
        if !errors.is_empty() {
            let what = format!(
                "{} v{version} body breaks its schema: {}",
                e.event_type,
                errors.join("; ")
            );
            self.problem(e, "schema", what);
        }
    }

    fn check_order(&mut self, e: &Event) {
        let key = format!("{}.{}", e.tenant, e.message_id);
        let relative = self.relative;
        let state = self.aggregates.entry(key).or_default();
        let before = match state.status {
            Some(s) => s,
            // The first event seen of an aggregate replayed from its start.
            None if !relative || e.event_type == "accepted" => Status::New,
            None => return,
        };
        match check_type(before, &e.event_type) {
            Ok(after) => state.status = Some(after),
            Err(err) => {
                // Keep the status: a later event is judged against the legal history.
                if state.status.is_none() {
                    state.status = Some(before);
                }
                let what = match &err {
                    IllegalTransition::UnknownEvent(_) => err.to_string(),
                    _ => format!("illegal lifecycle order: {err}"),
                };
                self.problem(e, "order", what);
            }
        }
    }

    fn report(&self, events: u64) -> String {
        let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
        for p in &self.problems {
            *by_kind.entry(p.kind).or_default() += 1;
        }
        let counts: Vec<String> = by_kind.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        let mut out = format!(
            "replay verification FAILED: {} problems in {events} events of {} messages ({})\n",
            self.problems.len(),
            self.aggregates.len(),
            counts.join(", ")
        );
        for p in self.problems.iter().take(REPORT_LIMIT) {
            out.push_str(&format!(
                "  stream seq {:>8}  message {}  [{}] {}\n",
                p.stream_seq, p.message_id, p.kind, p.what
            ));
        }
        if self.problems.len() > REPORT_LIMIT {
            out.push_str(&format!(
                "  ... and {} more\n",
                self.problems.len() - REPORT_LIMIT
            ));
        }
        out
    }
}
