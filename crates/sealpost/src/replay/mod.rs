//! `sealpost replay` without `--projection`: stream the stored events as NDJSON, and with
//! `--verify` audit them ([`verify`]: per-aggregate sequence continuity, schema validity,
//! lifecycle order).
//!
//! Reads `SEALPOST_EVENTS` in the account it connects to, through an ordered pull consumer:
//!
//! - with the service's credentials, the service's stream (every tenant, or `--tenant`'s);
//! - with a tenant's credentials, the tenant's own `SEALPOST_EVENTS` in its own account, which
//!   sources the tenant's events from the service's stream through the tenant's source consumer
//!   (see `sealpost_gateway::accounts`). The first replay creates that stream (after rewinding
//!   the source consumer so it starts from the tenant's first event); every replay first waits
//!   until it has caught up. Events keep their subjects, headers and bodies; `stream_seq` is the
//!   sequence in the service's stream (from the `Nats-Stream-Source` header) and `time` the
//!   instant the tenant's stream stored the event.

#[cfg(test)]
mod props;
mod tenant;
mod verify;

use std::io::Write as _;
use std::sync::{Arc, Mutex};

use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
use futures::StreamExt;
use sealpost_domain::{MessageId, TenantId};
use sealpost_eventstore::names::{EventSubject, Stream, SubjectError};
use sealpost_eventstore::store::{HDR_CORRELATION_ID, HDR_EVENT_VERSION, HDR_SEQUENCE};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::config::Config;

const STREAM: Stream = Stream::Events;

/// What to replay and whether to audit it.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub tenant: Option<TenantId>,
    pub message: Option<MessageId>,
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
    pub verify: bool,
}

/// An instant on the command line that is not RFC 3339.
#[derive(Debug, thiserror::Error)]
#[error("'{value}' is not an RFC 3339 instant (2026-01-31T12:00:00Z)")]
pub struct BadInstant {
    value: String,
    #[source]
    source: time::error::Parse,
}

/// Parses an RFC 3339 instant (clap value parser).
pub fn parse_instant(s: &str) -> Result<OffsetDateTime, BadInstant> {
    OffsetDateTime::parse(s, &Rfc3339).map_err(|source| BadInstant {
        value: s.chars().take(64).collect(),
        source,
    })
}

/// Connects like [`crate::app::connect`], and collects the server's errors (permission
/// violations) for the failure message.
async fn connect(cfg: &Config) -> anyhow::Result<(async_nats::Client, Arc<Mutex<Vec<String>>>)> {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let sink = errors.clone();
    let options = async_nats::ConnectOptions::new().event_callback(move |event| {
        let sink = sink.clone();
        async move {
            if let async_nats::Event::ServerError(e) = event {
                if let Ok(mut v) = sink.lock() {
                    v.push(e.to_string());
                }
            }
        }
    });
    let client = crate::app::connect_with(cfg, options).await?;
    Ok((client, errors))
}

/// Runs the replay: NDJSON on stdout, progress and the verification report on stderr.
pub async fn run(cfg: &Config, opts: &Options) -> anyhow::Result<()> {
    let (client, server_errors) = connect(cfg).await?;
    let mut js = async_nats::jetstream::new(client.clone());
    js.set_timeout(cfg.nats.request_timeout);
    let (stream, sourced) = tenant::open_stream(&js, opts.tenant.as_ref()).await?;
    let filter = EventSubject::filter(opts.tenant.as_ref(), opts.message.as_ref());
    let deliver_policy = match opts.since {
        Some(start_time) => DeliverPolicy::ByStartTime { start_time },
        None => DeliverPolicy::All,
    };
    let consumer = stream
        .create_consumer(OrderedConfig {
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

    let mut audit = opts
        .verify
        .then(|| verify::Audit::new(opts.since.is_some()));
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
            let event = Event::from_message(&msg, stream_seq, published, sourced);
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
pub(crate) struct Event {
    stream_seq: u64,
    raw_subject: String,
    subject: Result<EventSubject, SubjectError>,
    version: Option<String>,
    aggregate_seq: Option<String>,
    correlation_id: Option<String>,
    time: OffsetDateTime,
    body: Result<Value, serde_json::Error>,
}

impl Event {
    fn from_message(
        msg: &async_nats::jetstream::Message,
        stream_seq: u64,
        time: OffsetDateTime,
        sourced: bool,
    ) -> Self {
        Self::from_parts(
            &msg.subject,
            msg.headers.as_ref(),
            &msg.payload,
            stream_seq,
            time,
            sourced,
        )
    }

    /// A stored message's subject, headers and body, with where and when the stream stored it.
    fn from_parts(
        subject: &str,
        headers: Option<&async_nats::HeaderMap>,
        payload: &[u8],
        stream_seq: u64,
        time: OffsetDateTime,
        sourced: bool,
    ) -> Self {
        let header = |name: &str| {
            headers
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
        };
        // A tenant's stream sources its events: the header names the service stream's sequence.
        let stream_seq = header(tenant::SOURCE_HEADER)
            .filter(|_| sourced)
            .and_then(|h| tenant::source_sequence(&h))
            .unwrap_or(stream_seq);
        Event {
            stream_seq,
            raw_subject: subject.to_owned(),
            subject: EventSubject::parse(subject),
            version: header(HDR_EVENT_VERSION),
            aggregate_seq: header(HDR_SEQUENCE),
            correlation_id: header(HDR_CORRELATION_ID),
            time,
            body: serde_json::from_slice(payload),
        }
    }

    fn to_json(&self) -> Value {
        let parsed = self.subject.as_ref().ok();
        let mut v = json!({
            "stream_seq": self.stream_seq,
            "subject": self.raw_subject,
            "tenant": parsed.map(|s| s.tenant.as_str()),
            "message_id": parsed.map(|s| s.message_id.as_str()),
            "event_type": parsed.map(|s| s.event_type.as_str()),
            "version": self.version,
            "aggregate_seq": self.aggregate_seq.as_deref().map(|s| s.parse::<u64>().map(Value::from).unwrap_or_else(|_| Value::from(s))),
            "correlation_id": self.correlation_id,
            "time": self.time.format(&Rfc3339).ok(),
            "event": self.body.as_ref().ok(),
        });
        if let (Err(e), Some(obj)) = (&self.body, v.as_object_mut()) {
            obj.insert("body_error".into(), Value::from(e.to_string()));
        }
        v
    }
}
