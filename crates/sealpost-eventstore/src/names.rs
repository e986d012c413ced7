//! Every name Sealpost's processes share on NATS, written once: the streams, the durable
//! consumers, the roles that run them, and the subject layouts with a typed build and parse for
//! each. A malformed subject is one [`SubjectError`], whoever parses it.
//!
//! | subject | meaning | type |
//! |---|---|---|
//! | `sealpost.evt.<tenant>.<message_id>.<event_type>` | one stored event | [`EventSubject`] |
//! | `sealpost.cmd.<tenant>.send`, `sealpost.cmd.<tenant>.cancel` | commands (request/reply) | [`ServiceSubject`] |
//! | `sealpost.qry.<tenant>.status` | queries (request/reply) | [`ServiceSubject`] |
//! | `sealpost.rcpt.<carrier>` | a raw, verified carrier webhook | [`receipt_subject`] |
//! | `sealpost.sched.<tenant>.<message_id>.expire` | an expiry timer (`Nats-Schedule`) | [`TimerSubject`] |
//! | `sealpost.due.<tenant>.<message_id>.expire` | the timer, fired by the server | [`TimerSubject`] |
//! | `sealpost.notice.<tenant>.<message_id>` | an in-app fallback notice (core NATS) | [`notice_subject`] |
//! | `sealpost.keys.<tenant>.changed` | a key-change alert (core NATS) | [`key_change_subject`] |
//! | `sealpost.kevt.<tenant>.<label>.<event_type>` | one stored key event | [`KEY_EVENTS_PREFIX`] |
//! | `sealpost.klog.<tenant>.epochs` | a directory's epoch log (one entry per epoch) | [`epoch_log_subject`] |
//! | `sealpost.klog.<tenant>.bad` | a directory's bad-key list (one entry per marked fingerprint) | [`bad_keys_subject`] |
//! | `sealpost.cmd.<tenant>.keys.<op>`, `sealpost.qry.<tenant>.keys.<op>` | the key API (request/reply) | [`KeysSubject`] |
//! | `sealpost.deliver.<tenant>.events` | the tenant's events, to its own account | [`TenantAccount`] |
//!
//! Tenant and message ids are token-safe (`[A-Za-z0-9_-]{1,64}`), so every token is unambiguous.
//! The stream and consumer definitions themselves are the JSON files under `nats/`
//! ([`crate::provision::embedded_definitions`]); a test checks that every [`Durable`] has its file
//! and every file its [`Durable`].

use std::fmt;

use sealpost_domain::ids::IdError;
use sealpost_domain::{wire_enum, EventType, MessageId, TenantId, UnknownName};

wire_enum! {
    /// The JetStream streams (`nats/streams/<name>.json`).
    pub enum Stream: "stream" {
        /// Every message event: the source of truth.
        Events => "SEALPOST_EVENTS",
        /// Raw carrier webhooks, stored before they are answered.
        Receipts => "SEALPOST_RECEIPTS",
        /// Expiry timers and their firings.
        Schedules => "SEALPOST_SCHEDULES",
        /// The key directories: key events and each directory's signed epoch log.
        Keys => "SEALPOST_KEYS",
        /// Daily quotas shared by the gateways (the KV bucket `SEALPOST_QUOTAS`).
        Quotas => "KV_SEALPOST_QUOTAS",
        /// Rate limits shared by the gateways (the KV bucket `SEALPOST_RATES`).
        Rates => "KV_SEALPOST_RATES",
    }
}

wire_enum! {
    /// The durable pull consumers (`nats/consumers/<stream>/<name>.json`).
    pub enum Durable: "durable consumer" {
        /// Delivery jobs: `accepted` and `queued` events.
        Delivery => "delivery",
        /// `fallback_triggered` events: revoke, then send the neutral notice.
        Fallback => "fallback",
        /// Raw receipts to apply.
        Receipts => "receipts",
        /// Fired expiry timers.
        Expiry => "expiry",
        /// The `messages` view.
        ProjMessages => "proj_messages",
        /// The `compliance` view.
        ProjCompliance => "proj_compliance",
        /// The `metrics` view.
        ProjMetrics => "proj_metrics",
    }
}

impl Durable {
    /// The stream the consumer reads.
    pub const fn stream(self) -> Stream {
        match self {
            Durable::Delivery
            | Durable::Fallback
            | Durable::ProjMessages
            | Durable::ProjCompliance
            | Durable::ProjMetrics => Stream::Events,
            Durable::Receipts => Stream::Receipts,
            Durable::Expiry => Stream::Schedules,
        }
    }
}

wire_enum! {
    /// What a `sealpost serve` process runs. Each role is stateless; run any mix of them in as
    /// many processes as you like.
    pub enum Role: "role" {
        /// The NATS service `sealpost`, the HTTP API, receipt webhooks, `/metrics` and the dashboard.
        Gateway => "gateway",
        /// Carrier workers: submit, record the answer, retry by NAK delay.
        Delivery => "delivery",
        /// Applies stored carrier receipts.
        Receipts => "receipts",
        /// Fired expiry timers: revoke at the carrier, record `expired`.
        Expiry => "expiry",
        /// Revoke plus the neutral fallback notice.
        Fallback => "fallback",
        /// The Postgres views.
        Projector => "projector",
        /// The key directories: the key API and each directory's epoch publisher.
        Keys => "keys",
    }
}

impl Role {
    /// The durable consumers the role pulls from (none for the gateway).
    pub const fn durables(self) -> &'static [Durable] {
        match self {
            Role::Gateway | Role::Keys => &[],
            Role::Delivery => &[Durable::Delivery],
            Role::Receipts => &[Durable::Receipts],
            Role::Expiry => &[Durable::Expiry],
            Role::Fallback => &[Durable::Fallback],
            Role::Projector => &[
                Durable::ProjMessages,
                Durable::ProjCompliance,
                Durable::ProjMetrics,
            ],
        }
    }

    /// One line for `--help` and the docs.
    pub const fn description(self) -> &'static str {
        match self {
            Role::Gateway => {
                "NATS service `sealpost`, HTTP API, receipt webhooks, /metrics, dashboard"
            }
            Role::Delivery => "carrier workers: submit, record the answer, retry by NAK delay",
            Role::Receipts => "apply stored carrier receipts (delivered, displayed, TTL)",
            Role::Expiry => "fired expiry timers: revoke at the carrier, record expired",
            Role::Fallback => "revoke, then send the neutral SMS or in-app notice",
            Role::Projector => "the Postgres views (messages, compliance, metrics)",
            Role::Keys => "key directories: key API, epoch publisher, key-change alerts",
        }
    }

    /// The roles that carry a message to the carrier and back (`sealpost-delivery`).
    pub const DELIVERY: [Role; 4] = [Role::Delivery, Role::Receipts, Role::Expiry, Role::Fallback];
}

/// The first two tokens of every event subject.
pub const EVENTS_PREFIX: &str = "sealpost.evt";
/// Every subject of [`Stream::Events`].
pub const EVENTS_ALL: &str = "sealpost.evt.>";
/// Every subject of [`Stream::Receipts`].
pub const RECEIPTS_ALL: &str = "sealpost.rcpt.>";

/// A subject that is not what its reader expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    #[error("subject '{subject}' is not {expected}")]
    Shape {
        subject: String,
        expected: &'static str,
    },
    #[error("subject '{subject}' has an invalid id")]
    Id {
        subject: String,
        #[source]
        source: IdError,
    },
    #[error("subject '{subject}' names an unknown event type")]
    EventType {
        subject: String,
        #[source]
        source: UnknownName,
    },
}

/// A subject, shortened for an error message.
fn quoted(subject: &str) -> String {
    subject.chars().take(160).collect()
}

fn tokens<'a, const N: usize>(
    subject: &'a str,
    prefix: &[&str],
    expected: &'static str,
) -> Result<[&'a str; N], SubjectError> {
    let shape = || SubjectError::Shape {
        subject: quoted(subject),
        expected,
    };
    let mut it = subject.split('.');
    for p in prefix {
        if it.next() != Some(*p) {
            return Err(shape());
        }
    }
    let mut out = [""; N];
    for slot in &mut out {
        *slot = it.next().filter(|t| !t.is_empty()).ok_or_else(shape)?;
    }
    if it.next().is_some() {
        return Err(shape());
    }
    Ok(out)
}

fn ids(subject: &str, tenant: &str, message: &str) -> Result<(TenantId, MessageId), SubjectError> {
    let id = |source| SubjectError::Id {
        subject: quoted(subject),
        source,
    };
    Ok((
        TenantId::new(tenant).map_err(id)?,
        MessageId::new(message).map_err(id)?,
    ))
}

/// `sealpost.evt.<tenant>.<message_id>.<event_type>`: one stored event.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventSubject {
    pub tenant: TenantId,
    pub message_id: MessageId,
    pub event_type: EventType,
}

impl EventSubject {
    const EXPECTED: &'static str = "sealpost.evt.<tenant>.<message_id>.<event_type>";

    pub fn new(tenant: TenantId, message_id: MessageId, event_type: EventType) -> Self {
        Self {
            tenant,
            message_id,
            event_type,
        }
    }

    pub fn parse(subject: &str) -> Result<Self, SubjectError> {
        let [tenant, message, ty] = tokens::<3>(subject, &["sealpost", "evt"], Self::EXPECTED)?;
        let (tenant, message_id) = ids(subject, tenant, message)?;
        let event_type = ty.parse().map_err(|source| SubjectError::EventType {
            subject: quoted(subject),
            source,
        })?;
        Ok(Self::new(tenant, message_id, event_type))
    }

    /// `sealpost.evt.<tenant or *>.<message or *>.>`: a tenant's, a message's or all events.
    pub fn filter(tenant: Option<&TenantId>, message: Option<&MessageId>) -> String {
        format!(
            "{EVENTS_PREFIX}.{}.{}.>",
            tenant.map_or("*", TenantId::as_str),
            message.map_or("*", MessageId::as_str)
        )
    }

    /// `sealpost.evt.*.*.<event_type>`: every event of one type (a consumer's filter).
    pub fn of_type(event_type: EventType) -> String {
        format!("{EVENTS_PREFIX}.*.*.{event_type}")
    }

    /// `sealpost.evt.*.<message_id>.<event_type>`: one message's events of one type, whatever
    /// its tenant (a carrier names a message by id only).
    pub fn of_message_any_tenant(message_id: &MessageId, event_type: EventType) -> String {
        format!("{EVENTS_PREFIX}.*.{message_id}.{event_type}")
    }
}

impl fmt::Display for EventSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{EVENTS_PREFIX}.{}.{}.{}",
            self.tenant, self.message_id, self.event_type
        )
    }
}

wire_enum! {
    /// The operations of the `sealpost` NATS service.
    pub enum ServiceOp: "service operation" {
        Send => "send",
        Cancel => "cancel",
        Status => "status",
    }
}

impl ServiceOp {
    /// `cmd` for commands, `qry` for queries: the second token of the subject.
    pub const fn kind(self) -> &'static str {
        match self {
            ServiceOp::Send | ServiceOp::Cancel => "cmd",
            ServiceOp::Status => "qry",
        }
    }

    /// The endpoint's subscription: `sealpost.cmd.*.send`, ...
    pub fn endpoint(self) -> String {
        format!("sealpost.{}.*.{self}", self.kind())
    }
}

/// `sealpost.cmd.<tenant>.<send|cancel>` or `sealpost.qry.<tenant>.status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSubject {
    pub tenant: TenantId,
    pub op: ServiceOp,
}

impl ServiceSubject {
    const EXPECTED: &'static str =
        "sealpost.cmd.<tenant>.<send|cancel> or sealpost.qry.<tenant>.status";

    pub fn new(tenant: TenantId, op: ServiceOp) -> Self {
        Self { tenant, op }
    }

    pub fn parse(subject: &str) -> Result<Self, SubjectError> {
        let shape = || SubjectError::Shape {
            subject: quoted(subject),
            expected: Self::EXPECTED,
        };
        let [kind, tenant, op] = tokens::<3>(subject, &["sealpost"], Self::EXPECTED)?;
        let op: ServiceOp = op.parse().map_err(|_| shape())?;
        if op.kind() != kind {
            return Err(shape());
        }
        let tenant = TenantId::new(tenant).map_err(|source| SubjectError::Id {
            subject: quoted(subject),
            source,
        })?;
        Ok(Self { tenant, op })
    }

    /// `sealpost.cmd.<tenant>.>` and `sealpost.qry.<tenant>.>`: what a tenant may publish to.
    pub fn tenant_filters(tenant: &TenantId) -> [String; 2] {
        [
            format!("sealpost.cmd.{tenant}.>"),
            format!("sealpost.qry.{tenant}.>"),
        ]
    }
}

impl fmt::Display for ServiceSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sealpost.{}.{}.{}", self.op.kind(), self.tenant, self.op)
    }
}

/// `sealpost.rcpt.<carrier>`: where the gateway stores a carrier's verified webhook.
pub fn receipt_subject(carrier: &str) -> String {
    format!("sealpost.rcpt.{carrier}")
}

/// The expiry timer of one message: stored on `sealpost.sched.<tenant>.<message_id>.expire`
/// with a `Nats-Schedule` header, published by the server onto `sealpost.due.…` when it fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimerSubject {
    pub tenant: TenantId,
    pub message_id: MessageId,
}

impl TimerSubject {
    const EXPECTED: &'static str = "sealpost.due.<tenant>.<message_id>.expire";

    pub fn new(tenant: TenantId, message_id: MessageId) -> Self {
        Self { tenant, message_id }
    }

    /// Where the timer is stored.
    pub fn schedule(&self) -> String {
        format!("sealpost.sched.{}.{}.expire", self.tenant, self.message_id)
    }

    /// Where the server publishes it when it fires.
    pub fn due(&self) -> String {
        format!("sealpost.due.{}.{}.expire", self.tenant, self.message_id)
    }

    /// Parses a fired timer's subject.
    pub fn parse_due(subject: &str) -> Result<Self, SubjectError> {
        let [tenant, message, what] = tokens::<3>(subject, &["sealpost", "due"], Self::EXPECTED)?;
        if what != "expire" {
            return Err(SubjectError::Shape {
                subject: quoted(subject),
                expected: Self::EXPECTED,
            });
        }
        let (tenant, message_id) = ids(subject, tenant, message)?;
        Ok(Self { tenant, message_id })
    }
}

/// `sealpost.notice.<tenant>.<message_id>`: where an in-app fallback notice is published (core
/// NATS, best effort) for the tenant's app backend.
pub fn notice_subject(tenant: &TenantId, message_id: &MessageId) -> String {
    format!("sealpost.notice.{tenant}.{message_id}")
}

/// The first two tokens of every key event subject: `sealpost.kevt.<tenant>.<label>.<type>`
/// (the aggregate id is `<tenant>.<label>`, the label a keyed hash, never a phone number).
pub const KEY_EVENTS_PREFIX: &str = "sealpost.kevt";

/// `sealpost.kevt.<tenant>.*.<event_type>`: one tenant's key events of one type.
pub fn key_events_of_type(tenant: &TenantId, event_type: &str) -> String {
    format!("{KEY_EVENTS_PREFIX}.{tenant}.*.{event_type}")
}

/// `sealpost.klog.<tenant>.epochs`: the tenant's directory's epoch log (`sealpost-tlog`).
pub fn epoch_log_subject(tenant: &TenantId) -> String {
    format!("sealpost.klog.{tenant}.epochs")
}

/// `sealpost.klog.<tenant>.bad`: the tenant's bad-key list (`sealpost-tlog`), platform marks
/// included.
pub fn bad_keys_subject(tenant: &TenantId) -> String {
    format!("sealpost.klog.{tenant}.bad")
}

/// `sealpost.keys.<tenant>.changed`: key-change alerts, which only the tenant's account reads.
pub fn key_change_subject(tenant: &TenantId) -> String {
    format!("sealpost.keys.{tenant}.changed")
}

wire_enum! {
    /// The operations of the key directory's NATS service `sealpost-keys`.
    pub enum KeysOp: "key operation" {
        /// Publish a device key: the device's first, or a rotation.
        Publish => "publish",
        Revoke => "revoke",
        /// Mark a key bad by fingerprint: it is revoked wherever it is published.
        MarkBad => "mark_bad",
        /// Upload MLS KeyPackages (and a last-resort one).
        Upload => "upload",
        /// Claim one KeyPackage of a device (atomic, each once).
        Claim => "claim",
        /// A recipient's current device keys with the lookup proof and the signed checkpoint.
        Lookup => "lookup",
        /// A recipient's key history with its proof.
        History => "history",
        /// The latest signed checkpoint, or the one of a given size.
        Checkpoint => "checkpoint",
        /// The consistency proof between two sizes of the epoch log.
        Consistency => "consistency",
        /// akd's append-only proof between two epochs.
        Audit => "audit",
        /// The directory's public keys (VRF, checkpoint signer) and settings.
        Info => "info",
        /// The bad-key list: every entry, its signed checkpoint, and a fingerprint's inclusion.
        BadKeys => "bad_keys",
    }
}

impl KeysOp {
    pub const fn kind(self) -> &'static str {
        match self {
            KeysOp::Publish | KeysOp::Revoke | KeysOp::MarkBad | KeysOp::Upload | KeysOp::Claim => {
                "cmd"
            }
            _ => "qry",
        }
    }

    /// The endpoint's subscription: `sealpost.cmd.*.keys.publish`, ...
    pub fn endpoint(self) -> String {
        format!("sealpost.{}.*.keys.{self}", self.kind())
    }
}

/// `sealpost.<cmd|qry>.<tenant>.keys.<op>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeysSubject {
    pub tenant: TenantId,
    pub op: KeysOp,
}

impl KeysSubject {
    const EXPECTED: &'static str = "sealpost.<cmd|qry>.<tenant>.keys.<op>";

    pub fn new(tenant: TenantId, op: KeysOp) -> Self {
        Self { tenant, op }
    }

    pub fn parse(subject: &str) -> Result<Self, SubjectError> {
        let shape = || SubjectError::Shape {
            subject: quoted(subject),
            expected: Self::EXPECTED,
        };
        let [kind, tenant, keys, op] = tokens::<4>(subject, &["sealpost"], Self::EXPECTED)?;
        let op: KeysOp = op.parse().map_err(|_| shape())?;
        if op.kind() != kind || keys != "keys" {
            return Err(shape());
        }
        let tenant = TenantId::new(tenant).map_err(|source| SubjectError::Id {
            subject: quoted(subject),
            source,
        })?;
        Ok(Self { tenant, op })
    }
}

impl fmt::Display for KeysSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sealpost.{}.{}.keys.{}",
            self.op.kind(),
            self.tenant,
            self.op
        )
    }
}

/// The NATS account of Sealpost's own processes: it holds every stream and serves every tenant.
pub const SERVICE_ACCOUNT: &str = "SEALPOST";

/// How a tenant's account reaches its own events in the service account: a durable push
/// consumer on [`Stream::Events`] filtered on the tenant's subjects, which a stream in the
/// tenant's account sources from (cross-account, the only crossing besides the tenant's own
/// commands, queries and notices).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantAccount {
    pub tenant: TenantId,
}

impl TenantAccount {
    /// Local subject prefix, in the tenant's account, of the service's JetStream API (only the
    /// reset of the tenant's own source consumer is imported under it).
    pub const SERVICE_API: &'static str = "sealpost.service.api";

    pub fn new(tenant: TenantId) -> Self {
        Self { tenant }
    }

    /// The tenant's NATS account: `TENANT_<tenant>`.
    pub fn account(&self) -> String {
        format!("TENANT_{}", self.tenant)
    }

    /// The durable consumer on `SEALPOST_EVENTS` that feeds the tenant's stream: `tenant_<id>`.
    pub fn source_durable(&self) -> String {
        format!("tenant_{}", self.tenant)
    }

    /// Where that consumer delivers (exported to the tenant's account only).
    pub fn deliver_subject(&self) -> String {
        format!("sealpost.deliver.{}.events", self.tenant)
    }

    /// The tenant's events: `sealpost.evt.<tenant>.>`.
    pub fn events(&self) -> String {
        EventSubject::filter(Some(&self.tenant), None)
    }

    /// Per-tenant subjects the service publishes and the tenant's account receives (stream
    /// exports): in-app notices and key-change alerts. A new per-tenant subject family is added
    /// here, and `sealpost tenants nats-config` exports it to that tenant alone.
    pub fn published_to_tenant(&self) -> Vec<String> {
        vec![
            format!("sealpost.notice.{}.>", self.tenant),
            format!("sealpost.keys.{}.>", self.tenant),
        ]
    }

    /// Per-tenant request subjects the service answers (service exports): commands and queries.
    pub fn served_to_tenant(&self) -> Vec<String> {
        ServiceSubject::tenant_filters(&self.tenant).to_vec()
    }

    /// The service's JetStream API subjects the tenant's stream uses to source its events: the
    /// reset of its own consumer, and that consumer's flow-control replies, which acknowledge
    /// what the tenant's stream stored (`tests/it/tenancy.rs` fails without them).
    pub fn source_api(&self) -> [String; 2] {
        let (stream, durable) = (Stream::Events, self.source_durable());
        [
            format!("$JS.API.CONSUMER.RESET.{stream}.{durable}"),
            format!("$JS.FC.{stream}.{durable}.*"),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acme() -> TenantId {
        TenantId::new("acme").unwrap()
    }

    #[test]
    fn event_subjects_round_trip_and_refuse_every_other_shape() {
        let s = EventSubject::new(
            acme(),
            MessageId::new("m-1").unwrap(),
            EventType::CarrierAcked,
        );
        assert_eq!(s.to_string(), "sealpost.evt.acme.m-1.carrier_acked");
        assert_eq!(EventSubject::parse(&s.to_string()), Ok(s));
        for bad in [
            "sealpost.evt.acme.m-1",
            "sealpost.evt.acme.m-1.accepted.x",
            "sealpost.cmd.acme.m-1.accepted",
            "bench.evt.acme.m-1.accepted",
            "sealpost.evt..m-1.accepted",
        ] {
            assert!(
                matches!(EventSubject::parse(bad), Err(SubjectError::Shape { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            EventSubject::parse("sealpost.evt.acme.m-1.teleported"),
            Err(SubjectError::EventType { .. })
        ));
        assert!(matches!(
            EventSubject::parse("sealpost.evt.a*.m-1.accepted"),
            Err(SubjectError::Id { .. })
        ));
    }

    #[test]
    fn event_filters_name_a_tenant_a_message_or_a_type() {
        let m = MessageId::new("m-1").unwrap();
        assert_eq!(EventSubject::filter(None, None), "sealpost.evt.*.*.>");
        assert_eq!(
            EventSubject::filter(Some(&acme()), Some(&m)),
            "sealpost.evt.acme.m-1.>"
        );
        assert_eq!(
            EventSubject::of_type(EventType::Accepted),
            "sealpost.evt.*.*.accepted"
        );
        assert_eq!(
            EventSubject::of_message_any_tenant(&m, EventType::Accepted),
            "sealpost.evt.*.m-1.accepted"
        );
    }

    #[test]
    fn service_subjects_pair_each_operation_with_its_kind() {
        for &op in ServiceOp::ALL {
            let s = ServiceSubject::new(acme(), op);
            assert_eq!(ServiceSubject::parse(&s.to_string()), Ok(s));
        }
        assert_eq!(ServiceOp::Send.endpoint(), "sealpost.cmd.*.send");
        assert_eq!(ServiceOp::Status.endpoint(), "sealpost.qry.*.status");
        for bad in [
            "sealpost.qry.acme.send",
            "sealpost.cmd.acme.status",
            "sealpost.cmd.acme",
        ] {
            assert!(ServiceSubject::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn key_subjects_pair_each_operation_with_its_kind_and_refuse_every_other_shape() {
        for &op in KeysOp::ALL {
            let s = KeysSubject::new(acme(), op);
            assert_eq!(KeysSubject::parse(&s.to_string()), Ok(s));
            // The tenant's exports (`sealpost.<cmd|qry>.<tenant>.>`) cover every key operation.
            assert!(ServiceSubject::tenant_filters(&acme())
                .iter()
                .any(|f| KeysSubject::new(acme(), op)
                    .to_string()
                    .starts_with(f.trim_end_matches('>'))));
        }
        assert_eq!(KeysOp::Publish.endpoint(), "sealpost.cmd.*.keys.publish");
        assert_eq!(KeysOp::Lookup.endpoint(), "sealpost.qry.*.keys.lookup");
        for bad in [
            "sealpost.qry.acme.keys.publish",
            "sealpost.cmd.acme.keys.lookup",
            "sealpost.cmd.acme.key.publish",
            "sealpost.cmd.acme.keys",
            "sealpost.cmd.acme.keys.publish.x",
            "sealpost.cmd.acme.keys.teleport",
        ] {
            assert!(
                matches!(KeysSubject::parse(bad), Err(SubjectError::Shape { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            KeysSubject::parse("sealpost.cmd.a*b.keys.publish"),
            Err(SubjectError::Id { .. })
        ));
        assert_eq!(epoch_log_subject(&acme()), "sealpost.klog.acme.epochs");
        assert_eq!(key_change_subject(&acme()), "sealpost.keys.acme.changed");
        assert_eq!(
            key_events_of_type(&acme(), "key_published"),
            "sealpost.kevt.acme.*.key_published"
        );
    }

    #[test]
    fn timer_subjects_are_stored_on_sched_and_fire_on_due() {
        let t = TimerSubject::new(acme(), MessageId::new("m-1").unwrap());
        assert_eq!(t.schedule(), "sealpost.sched.acme.m-1.expire");
        assert_eq!(TimerSubject::parse_due(&t.due()), Ok(t));
        assert!(TimerSubject::parse_due("sealpost.due.acme.m-1.other").is_err());
    }

    #[test]
    fn every_role_names_its_consumers_and_every_consumer_has_one_role() {
        let mut seen = vec![];
        for &r in Role::ALL {
            seen.extend_from_slice(r.durables());
        }
        seen.sort();
        assert_eq!(seen, Durable::ALL.to_vec());
    }
}
