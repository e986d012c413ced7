//! # sealpost-delivery
//!
//! Everything that happens to a message after the gateway accepted it, driven by durable
//! JetStream consumers so that a `kill -9` loses no work and repeats no carrier submission.
//!
//! **Owns:**
//! - [`worker`]: the delivery workers on the durable `delivery` consumer (jobs are the
//!   `accepted` and `queued` events). A worker submits attempt `next_attempt` with the carrier
//!   message id equal to the message id, records the carrier's answer through the aggregate, and
//!   NAKs the job with the retry delay the domain policy chose, never earlier than Retry-After.
//! - [`gate`]: per-carrier concurrency limit, token bucket and carrier-wide pause after a 429 or
//!   a refusal of our credentials (401/403): an auth failure is the carrier's outage, never the
//!   message's failure, so it is not recorded on the message; the job waits and tries again.
//! - [`expiry`]: before any attempt after the first a `Nats-Schedule: @at <expires_at>` message
//!   is stored in `SEALPOST_SCHEDULES` (a first attempt the carrier acks is bounded by the
//!   carrier's TTL, set to `expires_at`); when the server fires it, the `expiry` consumer revokes
//!   at the carrier where the message may be and records `expired` with the revoke's outcome.
//! - [`receipts`]: [`receipts::ReceiptApplier`] applies a receipt a gateway verified at once
//!   when it can; the `receipts` consumer applies the ones the gateway stored raw in
//!   `SEALPOST_RECEIPTS` because they could not be applied yet. A message's receipts go one at a
//!   time per process, in arrival order (`turns`); a receipt that arrives before the carrier ack
//!   was recorded waits briefly, then is stored or retried (NAK with delay), never dropped;
//!   duplicates make no events (the aggregate dedupes by id).
//! - [`fallback`]: the `fallback` consumer (jobs are `fallback_triggered` events) revokes the
//!   RCS message where it may have landed, then sends the neutral notice (SMS, idempotent by
//!   client reference) or publishes the in-app notice.
//!
//! **Must not:** decide anything the domain decides (retry timing, legal transitions, expiry),
//! read or log ciphertext, payload URLs or full phone numbers, or hold state a crash could lose:
//! every decision is re-derived from the event stream when a job is redelivered.
//!
//! **Why this is crash-safe.** A job is acked only after the carrier's answer is committed as an
//! event. A worker killed between the carrier's accept and that commit leaves the job unacked;
//! JetStream redelivers it after `ack_wait`, the resubmission carries the same carrier message id,
//! and the carrier answers "already exists" (RBM 409), which the domain records as the ack. A
//! worker that finds the message settled acks the job without calling the carrier.

pub mod error;
pub mod expiry;
pub mod fallback;
pub mod gate;
mod jobs;
pub mod receipts;
mod turns;
pub mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use sealpost_blobstore::BlobStore;
use sealpost_carriers::Carrier;
use sealpost_domain::{Message, MessageId, TenantId};
use sealpost_eventstore::names::Role;
use sealpost_eventstore::store::{HDR_CORRELATION_ID, META_CORRELATION_ID};
use sealpost_eventstore::{CommandExecutor, Loaded, StoreError};

pub use error::DeliveryError;
pub use gate::{CarrierGate, GateConfig, PauseReason};
pub use jobs::RunningConsumers;

/// A carrier with its throttle.
#[derive(Debug, Clone)]
pub struct CarrierSlot {
    pub carrier: Arc<dyn Carrier>,
    pub gate: Arc<CarrierGate>,
}

impl CarrierSlot {
    pub fn new(carrier: Arc<dyn Carrier>, gate: GateConfig) -> Self {
        let gate = Arc::new(CarrierGate::new(carrier.name(), gate));
        Self { carrier, gate }
    }
}

/// The carriers this process talks to: the one that carries sealed payloads (RBM) and the one
/// that sends neutral fallback notices (SMS), if configured.
#[derive(Debug, Clone)]
pub struct Carriers {
    pub opaque: CarrierSlot,
    pub notice: Option<CarrierSlot>,
}

/// The neutral notice sent when a template has no configured text.
pub const DEFAULT_NOTICE: &str = "You have a new secure message. Open the app to read it.";

/// Settings shared by the delivery roles.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Jobs a worker process handles at once (across carriers; each carrier has its own limit).
    pub concurrency: usize,
    /// How long a job waits for a paused carrier before it is NAKed until the pause ends.
    pub max_pause_wait: Duration,
    /// How long a carrier is paused after it refused our credentials (401/403 after a token
    /// refresh): the next probe comes after this.
    pub carrier_auth_pause: Duration,
    /// Lifetime of the presigned GET URL handed to the carrier (capped at 7 days by S3).
    pub payload_url_ttl: Duration,
    /// First redelivery delay of a receipt that arrived before its message's carrier ack.
    pub receipt_retry: Duration,
    /// How long after `expires_at` the carrier's own TTL (RBM `expireTime`) takes a message back
    /// from its second attempt on, as a backstop for a revoke by the expiry role that cannot get
    /// through. A first attempt stores no timer: its `expireTime` is `expires_at` itself.
    pub carrier_ttl_grace: Duration,
    /// Fallback notice texts by template id (the send command names a template, never text).
    /// A template not listed here is sent as [`DEFAULT_NOTICE`]. Texts must stay neutral: no
    /// message content, ever.
    pub notice_texts: HashMap<String, String>,
    /// Devices' capability links: when set, each RBM submission carries the message's link
    /// (`sealpostPayload.link`), and so do SMS and in-app fallback notices.
    pub device_links: Option<DeviceLinks>,
}

/// How delivery mints device links (`sealpost_keyformat::device_link`).
#[derive(Debug, Clone)]
pub struct DeviceLinks {
    /// The platform's link key; the gateway checks links with the same key.
    pub key: sealpost_keyformat::device_link::DeviceLinkKey,
    /// The gateway's public URL, e.g. `https://sealpost.example.com`.
    pub base: String,
}

impl DeviceLinks {
    /// The link of one message, or none when the ids cannot form one (they always can: tenant
    /// and message ids are validated to the same alphabet).
    pub fn link(&self, tenant: &TenantId, message_id: &MessageId) -> Option<String> {
        match self
            .key
            .link(&self.base, tenant.as_str(), message_id.as_str())
        {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::error!(error = %e, "cannot mint a device link");
                None
            }
        }
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            concurrency: 512,
            max_pause_wait: Duration::from_secs(2),
            carrier_auth_pause: Duration::from_secs(5),
            payload_url_ttl: Duration::from_secs(24 * 3600),
            receipt_retry: Duration::from_millis(250),
            carrier_ttl_grace: worker::CARRIER_TTL_GRACE,
            notice_texts: HashMap::from([(
                "secure_message_waiting".to_owned(),
                DEFAULT_NOTICE.to_owned(),
            )]),
            device_links: None,
        }
    }
}

/// The delivery roles of one process. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Delivery {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    js: jetstream::Context,
    executor: Arc<CommandExecutor<Message>>,
    blobs: BlobStore,
    carriers: Carriers,
    cfg: DeliveryConfig,
    /// Applies receipts, for the receipts consumer and for a gateway in this process; shares
    /// `executor` (and its state cache).
    receipts: Arc<receipts::ReceiptApplier>,
}

impl Delivery {
    /// `executor` should have a state cache ([`CommandExecutor::with_cache`]): a worker decides
    /// on the `accepted` event it received as its job and skips the load.
    pub fn new(
        client: async_nats::Client,
        executor: CommandExecutor<Message>,
        blobs: BlobStore,
        carriers: Carriers,
        cfg: DeliveryConfig,
    ) -> Self {
        let executor = Arc::new(executor);
        Self {
            inner: Arc::new(Inner {
                js: jetstream::new(client),
                receipts: Arc::new(receipts::ReceiptApplier::new(executor.clone())),
                executor,
                blobs,
                carriers,
                cfg,
            }),
        }
    }

    /// The receipt applier of these roles, for a gateway in the same process: it decides on the
    /// state the worker left in the shared cache, and knows the tenants of the messages the
    /// worker submitted.
    pub fn receipts(&self) -> Arc<receipts::ReceiptApplier> {
        self.inner.receipts.clone()
    }

    pub fn config(&self) -> &DeliveryConfig {
        &self.inner.cfg
    }

    /// Starts the delivery roles among `roles` ([`Role::DELIVERY`]); the others (gateway,
    /// projector) belong to other crates and are started there.
    pub fn start(&self, roles: &[Role]) -> RunningConsumers {
        let mut running = RunningConsumers::default();
        for role in roles {
            match role {
                Role::Delivery => running.push(worker::spawn(self.clone())),
                Role::Receipts => running.push(receipts::spawn(self.clone())),
                Role::Expiry => running.push(expiry::spawn(self.clone())),
                Role::Fallback => running.push(fallback::spawn(self.clone())),
                Role::Gateway | Role::Projector | Role::Keys => {}
            }
        }
        running
    }

    /// Loads a message and primes the executor's cache with it.
    ///
    /// `at_least` is a stream sequence the state must include, such as the job's own event; with
    /// `None` the leader is asked for the message's last sequence first. Either way a lagging
    /// follower of a replicated stream cannot hand a job an older state than the job itself.
    async fn load(
        &self,
        tenant: &TenantId,
        message: &MessageId,
        at_least: Option<u64>,
    ) -> Result<Loaded<Message>, StoreError> {
        let id = sealpost_domain::aggregate_id(tenant, message);
        let store = self.inner.executor.store();
        let at_least = match at_least {
            Some(seq) => seq,
            None => store.leader_last_seq(&id).await?,
        };
        let loaded = store.load_at_least(&id, at_least).await?;
        self.inner.executor.prime(
            &id,
            loaded.aggregate.clone(),
            loaded.version,
            loaded.last_stream_seq,
        );
        Ok(loaded)
    }
}

/// Event metadata carrying the job's correlation id into the events it causes.
fn correlation(headers: Option<&async_nats::HeaderMap>) -> HashMap<String, String> {
    headers
        .and_then(|h| h.get(HDR_CORRELATION_ID))
        .map(|v| HashMap::from([(META_CORRELATION_ID.to_owned(), v.as_str().to_owned())]))
        .unwrap_or_default()
}

/// `a - b` as a std duration, zero when `b` is later.
fn until(a: time::OffsetDateTime, b: time::OffsetDateTime) -> Duration {
    Duration::try_from(a - b).unwrap_or(Duration::ZERO)
}

/// The span of one role's work on one message, in the message's trace when OTLP traces are on
/// (`sealpost_telemetry::traces`). Its OTel name is `role`; fields the handler fills later
/// (`correlation_id`, `attempt`, `outcome`) start empty.
pub(crate) fn message_span(
    role: &'static str,
    tenant: &TenantId,
    message_id: &MessageId,
) -> tracing::Span {
    let span = tracing::info_span!(
        "message",
        otel.name = role,
        role,
        tenant = tenant.as_str(),
        message_id = message_id.as_str(),
        correlation_id = tracing::field::Empty,
        attempt = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    sealpost_telemetry::traces::bind(&span, tenant.as_str(), message_id.as_str());
    span
}

/// Pauses `slot`'s carrier after it refused our credentials and counts the refusal; the job is
/// put back until the pause ends. Nothing is recorded on the message.
pub(crate) fn carrier_auth_failed(slot: &CarrierSlot, code: &str, pause: Duration) -> jobs::JobEnd {
    sealpost_telemetry::metrics()
        .carrier_auth_failures
        .get_or_create(&sealpost_telemetry::CarrierAuthLabels {
            carrier: slot.carrier.name().to_owned(),
            code: code.to_owned(),
        })
        .inc();
    slot.gate.pause(pause, PauseReason::AuthFailed);
    let wait = slot
        .gate
        .paused_for(std::time::Instant::now())
        .unwrap_or(pause);
    jobs::JobEnd::Nak(wait)
}

/// Reports committed events to the process metrics: outcomes per tenant, message type and
/// carrier; retried attempts per class and code; acceptance-to-delivery latency.
pub(crate) fn report(message: &Message, events: &[sealpost_domain::MessageEvent]) {
    use sealpost_domain::events::{ErrorClass, MessageType};
    use sealpost_domain::MessageEvent as E;
    let Some(accepted) = message.accepted.as_ref() else {
        return;
    };
    let m = sealpost_telemetry::metrics();
    let tenant = accepted.tenant_id.as_str();
    let message_type = match accepted.message_type {
        MessageType::Transactional => "transactional",
        MessageType::Promotional => "promotional",
    };
    let carrier = message.carrier.as_deref().unwrap_or("rbm");
    let retried = events.iter().any(|e| matches!(e, E::RetryScheduled(_)));
    for e in events {
        let outcome = match e {
            E::CarrierAcked(_) => "acked",
            E::Delivered(d) => {
                let secs = (d.at - accepted.accepted_at).as_seconds_f64().max(0.0);
                m.latency
                    .get_or_create(&sealpost_telemetry::LatencyLabels {
                        tenant: tenant.to_owned(),
                        message_type,
                    })
                    .observe(secs);
                "delivered"
            }
            E::Displayed(_) => "displayed",
            E::Failed(_) => "failed",
            E::FallbackTriggered(_) => "fallback",
            E::Expired(_) => "expired",
            E::AttemptFailed(f) if retried => {
                let class = match f.class {
                    ErrorClass::Throttled => "throttled",
                    _ => "transient",
                };
                m.retries
                    .get_or_create(&sealpost_telemetry::RetryLabels {
                        carrier: f.carrier.clone(),
                        class,
                        code: f.code.clone(),
                    })
                    .inc();
                continue;
            }
            _ => continue,
        };
        m.outcome(tenant, message_type, carrier, outcome);
    }
}
