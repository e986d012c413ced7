//! Disaster recovery: read-only mirrors of the streams that are sources of truth
//! (`SEALPOST_EVENTS`, `SEALPOST_KEYS`) on an independent JetStream server, and their promotion
//! when the primary is gone.
//!
//! The standby is a server (or cluster) of its own, with its own store and JetStream domain,
//! connected to the primary by a leaf node. Each mirror is the stream's shipped definition
//! without subjects, with `mirror: { name, external: { api: "$JS.<primary domain>.API" } }`;
//! JetStream copies every message with its stream sequence, headers and timestamp, so the
//! auditor's replay and the projections read a mirror exactly as they read the primary.
//! Receipts and schedules are not mirrored: they are work queues whose effects are events.
//!
//! A mirror takes no writes. [`promote`] turns it into the primary's stream: it drops the mirror
//! and puts the shipped subjects back (JetStream 2.12+ allows removing a mirror), after which
//! `sealpost provision` creates the rest.

use async_nats::jetstream::{self, stream};

use crate::error::{StoreError, StoreErrorKind};
use crate::names::Stream;
use crate::provision::{verify_stream, Definitions};

/// The streams a standby mirrors: the sources of truth.
pub const MIRRORED: [Stream; 2] = [Stream::Events, Stream::Keys];

/// One mirror as its server reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorState {
    pub stream: String,
    /// The last stream sequence the mirror holds.
    pub last_seq: u64,
    pub messages: u64,
    /// Messages the mirror knows it has not copied yet; `None` once promoted (no mirror).
    pub lag: Option<u64>,
    /// How long ago the mirror last heard from its origin.
    pub active: Option<std::time::Duration>,
}

fn api_error(what: String) -> impl FnOnce(jetstream::context::CreateStreamError) -> StoreError {
    move |e| StoreError::with_source(StoreErrorKind::Unavailable, what, e)
}

/// The mirror definition of one shipped stream.
pub fn mirror_config(
    defs: &Definitions,
    stream: Stream,
    primary_domain: &str,
) -> Result<stream::Config, StoreError> {
    let mut cfg = defs.stream(stream)?;
    cfg.subjects = Vec::new();
    cfg.description = Some(format!(
        "mirror of {stream} in JetStream domain {primary_domain} (sealpost dr)"
    ));
    cfg.mirror = Some(stream::Source {
        name: stream.as_str().to_owned(),
        external: Some(stream::External {
            api_prefix: format!("$JS.{primary_domain}.API"),
            delivery_prefix: None,
        }),
        ..Default::default()
    });
    // The mirror copies messages as they are; these only govern the primary's writes.
    cfg.allow_atomic_publish = false;
    cfg.duplicate_window = std::time::Duration::ZERO;
    Ok(cfg)
}

/// Creates the mirrors of [`MIRRORED`] that the standby `js` does not have yet, copying from the
/// primary's JetStream domain `primary_domain`; an existing mirror is left as it is (run again,
/// it only reports). A stream here that is not a mirror is refused.
pub async fn create_mirrors(
    js: &jetstream::Context,
    defs: &Definitions,
    primary_domain: &str,
) -> Result<Vec<MirrorState>, StoreError> {
    if primary_domain.is_empty() || primary_domain.contains(['.', ' ', '*', '>']) {
        return Err(StoreError::new(
            StoreErrorKind::Other,
            format!(
                "`{primary_domain}` is not a JetStream domain name: give the primary's \
                 `jetstream {{ domain: ... }}`"
            ),
        ));
    }
    for stream in MIRRORED {
        let cfg = mirror_config(defs, stream, primary_domain)?;
        match js.get_stream(stream.as_str()).await {
            Ok(mut existing) => {
                let info = existing.info().await.map_err(|e| {
                    StoreError::with_source(
                        StoreErrorKind::Unavailable,
                        format!("reading stream {stream} on the standby"),
                        e,
                    )
                })?;
                if info.config.mirror.is_none() {
                    return Err(StoreError::new(
                        StoreErrorKind::Other,
                        format!(
                            "stream {stream} on this server is not a mirror (a primary, or a \
                             promoted standby); point [nats] url at the standby"
                        ),
                    ));
                }
            }
            Err(_) => {
                js.create_stream(cfg)
                    .await
                    .map_err(api_error(format!("creating the mirror of {stream}")))?;
            }
        }
    }
    status(js).await
}

/// The state of every mirror of [`MIRRORED`] on `js` (a promoted stream shows `lag: None`).
pub async fn status(js: &jetstream::Context) -> Result<Vec<MirrorState>, StoreError> {
    let mut out = Vec::new();
    for stream in MIRRORED {
        let info = stream_info(js, stream, "run `sealpost dr mirror` on the standby").await?;
        out.push(MirrorState {
            stream: stream.as_str().to_owned(),
            last_seq: info.state.last_sequence,
            messages: info.state.messages,
            lag: info.mirror.as_ref().map(|m| m.lag),
            active: info.mirror.as_ref().and_then(|m| m.active),
        });
    }
    Ok(out)
}

/// Promotes the standby: each mirror of [`MIRRORED`] stops copying and takes its shipped
/// subjects and flags, and is read back like any provisioned stream. Idempotent. Run it only once
/// the primary is gone for good (or fenced off): afterwards both would take writes.
pub async fn promote(
    js: &jetstream::Context,
    defs: &Definitions,
) -> Result<Vec<MirrorState>, StoreError> {
    for stream in MIRRORED {
        let info = stream_info(js, stream, "nothing to promote on this server").await?;
        let mut cfg = defs.stream(stream)?;
        // Keep what the standby was created with (its replicas), as `provision` would.
        cfg.num_replicas = info.config.num_replicas;
        if info.config.mirror.is_some() {
            js.update_stream(cfg.clone()).await.map_err(|e| {
                StoreError::with_source(
                    StoreErrorKind::Unsupported,
                    format!(
                        "promoting the mirror {stream}: the server refused to drop the mirror \
                         (removing a mirror needs nats-server 2.12 or later)"
                    ),
                    e,
                )
            })?;
        }
        verify_stream(js, &cfg).await?;
    }
    status(js).await
}

/// The info of `stream` on `js`; `missing` says what to do when it is not there.
async fn stream_info(
    js: &jetstream::Context,
    stream: Stream,
    missing: &str,
) -> Result<stream::Info, StoreError> {
    let mut s = js.get_stream(stream.as_str()).await.map_err(|e| {
        StoreError::with_source(
            StoreErrorKind::Other,
            format!("no stream {stream} here; {missing}"),
            e,
        )
    })?;
    s.info().await.cloned().map_err(|e| {
        StoreError::with_source(
            StoreErrorKind::Unavailable,
            format!("reading stream {stream}"),
            e,
        )
    })
}
