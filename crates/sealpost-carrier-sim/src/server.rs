//! The HTTP side: routes, the shared state, and how one send is decided.
//!
//! Every handler takes the one state lock briefly (decide, count, record) and never holds it
//! across an await; latency, hangs and webhooks happen outside it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State as AxState};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use sealpost_carriers::wire::{AgentMessage, Capabilities, ErrorBody, SmsAccepted, SmsRequest};
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::{watch, Semaphore};

use crate::config::{FaultMix, Scripted, SimConfig};
use crate::rng::{keyed_unit, unit};
use crate::{webhooks, NoticeRecord, RequestRecord, RunningSim, SimStats};

const SALT_NOT_CAPABLE: u64 = 1;
const SALT_OFFLINE: u64 = 2;

/// Entry point: see [`CarrierSim::start`].
#[derive(Debug)]
pub struct CarrierSim;

impl CarrierSim {
    /// Binds `listen` (port 0 picks a free port: see [`RunningSim::addr`]) and serves until the
    /// returned handle is shut down or dropped.
    pub async fn start(listen: SocketAddr, cfg: SimConfig) -> std::io::Result<RunningSim> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let http = sealpost_carriers::http_client(Duration::from_secs(10))
            .map_err(std::io::Error::other)?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            service_account: cfg.service_account.clone(),
            token_uri: format!("http://{addr}/token"),
            webhook_slots: Semaphore::new(cfg.webhook_concurrency.max(1)),
            http,
            shutdown: shutdown_rx,
            state: Mutex::new(SimState {
                faults: cfg.faults.clone(),
                webhook_url: cfg.webhook_url.clone().map(Arc::from),
                rng: cfg.seed,
                messages: HashMap::new(),
                requests: HashMap::new(),
                scripts: HashMap::new(),
                throttle_until: None,
                throttle_opened: None,
                stats: SimStats::default(),
                sms_refs: HashSet::new(),
                notices: Vec::new(),
                sms_seq: 0,
                tokens: HashMap::new(),
                issued: Vec::new(),
                credentials_revoked: false,
            }),
            cfg,
        });
        let router = Router::new()
            .route("/v1/phones/{phone}/agentMessages", post(send))
            .route(
                "/v1/phones/{phone}/agentMessages/{message_id}",
                axum::routing::delete(revoke),
            )
            .route("/v1/phones/{phone}/capabilities", get(capabilities))
            .route("/token", post(crate::oauth::token))
            .route("/sms/v1/messages", post(sms))
            .route("/sim/stats", get(stats))
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!(error = %e, "carrier simulator stopped");
            }
        });
        tracing::info!(%addr, "carrier simulator listening");
        Ok(RunningSim {
            addr,
            shared,
            shutdown,
            server,
        })
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) cfg: SimConfig,
    pub(crate) service_account: Option<sealpost_carriers::ServiceAccountKey>,
    /// `http://<addr>/token`: the audience assertions must name.
    pub(crate) token_uri: String,
    pub(crate) state: Mutex<SimState>,
    pub(crate) http: reqwest::Client,
    pub(crate) webhook_slots: Semaphore,
    pub(crate) shutdown: watch::Receiver<bool>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, SimState> {
        // A panic while holding the lock leaves counters, not invariants, half-updated.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn not_capable(&self, faults: &FaultMix, phone: &str) -> bool {
        keyed_unit(self.cfg.seed, SALT_NOT_CAPABLE, phone) < faults.not_capable
    }

    fn offline(&self, faults: &FaultMix, phone: &str) -> bool {
        keyed_unit(self.cfg.seed, SALT_OFFLINE, phone) < faults.offline
    }
}

#[derive(Debug)]
pub(crate) struct SimState {
    pub(crate) faults: FaultMix,
    pub(crate) webhook_url: Option<Arc<str>>,
    pub(crate) rng: u64,
    pub(crate) messages: HashMap<String, Msg>,
    pub(crate) requests: HashMap<String, Vec<RequestRecord>>,
    pub(crate) scripts: HashMap<String, VecDeque<Scripted>>,
    pub(crate) throttle_until: Option<Instant>,
    /// When the open throttle window began (the 429 that opened it was decided).
    pub(crate) throttle_opened: Option<Instant>,
    pub(crate) stats: SimStats,
    pub(crate) sms_refs: HashSet<String>,
    pub(crate) notices: Vec<NoticeRecord>,
    pub(crate) sms_seq: u64,
    /// Issued access tokens and when each expires.
    pub(crate) tokens: HashMap<String, Instant>,
    /// Every access token ever issued, for leak scans.
    pub(crate) issued: Vec<String>,
    pub(crate) credentials_revoked: bool,
}

impl SimState {
    pub(crate) fn draw(&mut self) -> f64 {
        unit(&mut self.rng)
    }
}

#[derive(Debug)]
pub(crate) struct Msg {
    pub(crate) recipient: Arc<str>,
    pub(crate) phase: Phase,
    /// What the handset receives: the payload link and digest (kept in memory, never logged).
    pub(crate) content: Option<crate::HandsetMessage>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Pending,
    Delivered,
    Revoked,
}

/// What the simulator does with one send.
enum Decision {
    Accept {
        offline: bool,
        hang: Option<Duration>,
    },
    Duplicate,
    Error {
        code: u16,
        retry_after: Option<u64>,
    },
}

fn error(code: u16, message: &str, retry_after: Option<u64>) -> Response {
    let body = Json(ErrorBody::for_status(code, message));
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match retry_after {
        Some(secs) => (status, [(header::RETRY_AFTER, secs.to_string())], body).into_response(),
        None => (status, body).into_response(),
    }
}

fn bearer_is(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t.trim() == expected)
}

fn unauthenticated() -> Response {
    error(401, "Request had invalid authentication credentials.", None)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SendQuery {
    message_id: Option<String>,
    agent_id: Option<String>,
}

async fn send(
    AxState(sh): AxState<Arc<Shared>>,
    Path(phone): Path<String>,
    Query(q): Query<SendQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrived = Instant::now();
    {
        let mut st = sh.lock();
        st.stats.sends += 1;
        if st.throttle_until.is_some_and(|until| arrived < until) {
            st.stats.throttle_violations += 1;
            if let Some(opened) = st.throttle_opened {
                let late = arrived.saturating_duration_since(opened);
                if late > Duration::from_millis(10) {
                    st.stats.throttle_violations_after_10ms += 1;
                }
                st.stats.throttle_violation_max_ms = st
                    .stats
                    .throttle_violation_max_ms
                    .max(late.as_millis() as u64);
            }
        }
    }
    let record = |status: u16| {
        if let Some(id) = &q.message_id {
            sh.lock()
                .requests
                .entry(id.clone())
                .or_default()
                .push(RequestRecord {
                    at: arrived,
                    status,
                });
        }
    };
    if !crate::oauth::authorized(&sh, &headers) {
        record(401);
        return unauthenticated();
    }
    let Some(message_id) = q.message_id.as_deref().filter(|s| !s.is_empty()) else {
        return error(400, "messageId is required.", None);
    };
    if q.agent_id.as_deref() != Some(sh.cfg.agent_id.as_str()) {
        record(403);
        return error(
            403,
            "The caller does not have permission for this agent.",
            None,
        );
    }
    let (expire_time, content) = match parse_send_body(&body) {
        Ok(t) => t,
        Err(msg) => {
            record(400);
            return error(400, msg, None);
        }
    };
    if !sh.cfg.latency.is_zero() {
        tokio::time::sleep(sh.cfg.latency).await;
    }

    let (decision, recipient) = {
        let mut st = sh.lock();
        let decision = decide(&sh, &mut st, &phone, message_id);
        let status = match &decision {
            Decision::Accept { hang, .. } => {
                st.stats.accepted += 1;
                if hang.is_some() {
                    st.stats.timeouts += 1;
                }
                200
            }
            Decision::Duplicate => {
                st.stats.duplicates_409 += 1;
                409
            }
            Decision::Error { code, retry_after } => {
                match code {
                    429 => {
                        st.stats.throttled += 1;
                        if let Some(secs) = retry_after {
                            let now = Instant::now();
                            let until = now + Duration::from_secs(*secs);
                            if st.throttle_until.is_none_or(|t| t <= now) {
                                st.throttle_opened = Some(now);
                            }
                            st.throttle_until =
                                Some(st.throttle_until.map_or(until, |t| t.max(until)));
                        }
                    }
                    404 => st.stats.not_capable += 1,
                    500..=599 => st.stats.server_errors += 1,
                    _ => st.stats.permanent += 1,
                }
                *code
            }
        };
        st.requests
            .entry(message_id.to_owned())
            .or_default()
            .push(RequestRecord {
                at: arrived,
                status,
            });
        let recipient: Arc<str> = Arc::from(phone.as_str());
        if matches!(decision, Decision::Accept { .. }) {
            st.messages.insert(
                message_id.to_owned(),
                Msg {
                    recipient: recipient.clone(),
                    phase: Phase::Pending,
                    content,
                },
            );
        }
        (decision, recipient)
    };

    match decision {
        Decision::Accept { offline, hang } => {
            webhooks::schedule(&sh, message_id, recipient, offline, expire_time);
            if let Some(hang) = hang {
                let mut shutdown = sh.shutdown.clone();
                tokio::select! {
                    _ = tokio::time::sleep(hang) => {}
                    _ = shutdown.changed() => {}
                }
            }
            let now = OffsetDateTime::now_utc()
                .format(&Rfc3339)
                .unwrap_or_default();
            Json(serde_json::json!({
                "name": format!("phones/{phone}/agentMessages/{message_id}"),
                "sendTime": now,
            }))
            .into_response()
        }
        Decision::Duplicate => error(
            409,
            "Requested entity already exists (messageId reused).",
            None,
        ),
        Decision::Error { code, retry_after } => error(code, "Simulated error.", retry_after),
    }
}

/// Validates an `agentMessages.create` body; returns its `expireTime` and, for a payload link,
/// what the handset receives.
#[allow(clippy::type_complexity)]
fn parse_send_body(
    body: &[u8],
) -> Result<(Option<OffsetDateTime>, Option<crate::HandsetMessage>), &'static str> {
    let msg: AgentMessage =
        serde_json::from_slice(body).map_err(|_| "Invalid JSON payload received.")?;
    let c = &msg.content_message;
    let has_text = c.text.as_deref().is_some_and(|t| !t.is_empty());
    let has_file = c
        .content_info
        .as_ref()
        .is_some_and(|i| !i.file_url.is_empty());
    if !has_text && !has_file {
        return Err("contentMessage needs text or contentInfo.fileUrl.");
    }
    let mut content = None;
    if has_file {
        let digest = msg
            .sealpost_payload
            .as_ref()
            .map(|p| p.sha256.clone())
            .filter(|d| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or("sealpostPayload.sha256 (64 hex digits) is required with a fileUrl.")?;
        content = c.content_info.as_ref().map(|i| crate::HandsetMessage {
            file_url: i.file_url.clone(),
            sha256: digest,
            link: msg.sealpost_payload.as_ref().and_then(|p| p.link.clone()),
        });
    }
    let expire_time = match msg.expire_time {
        None => None,
        Some(t) => {
            Some(OffsetDateTime::parse(&t, &Rfc3339).map_err(|_| "expireTime is not RFC 3339.")?)
        }
    };
    Ok((expire_time, content))
}

fn decide(sh: &Shared, st: &mut SimState, phone: &str, message_id: &str) -> Decision {
    if st.messages.contains_key(message_id) {
        return Decision::Duplicate;
    }
    let hang = Duration::from_millis(st.faults.hang_ms);
    if let Some(scripted) = st.scripts.get_mut(phone).and_then(VecDeque::pop_front) {
        return match scripted {
            Scripted::Status {
                code,
                retry_after_secs,
            } if (200..300).contains(&code) => {
                let _ = retry_after_secs;
                Decision::Accept {
                    offline: false,
                    hang: None,
                }
            }
            Scripted::Status {
                code,
                retry_after_secs,
            } => Decision::Error {
                code,
                retry_after: retry_after_secs,
            },
            Scripted::Timeout => Decision::Accept {
                offline: false,
                hang: Some(hang),
            },
            Scripted::NotCapable => Decision::Error {
                code: 404,
                retry_after: None,
            },
            Scripted::AcceptOffline => Decision::Accept {
                offline: true,
                hang: None,
            },
        };
    }
    if sh.not_capable(&st.faults, phone) {
        return Decision::Error {
            code: 404,
            retry_after: None,
        };
    }
    let f = st.faults.clone();
    let mut x = st.draw();
    let mut hit = |p: f64| {
        if x < p {
            true
        } else {
            x -= p;
            false
        }
    };
    if hit(f.throttle) {
        Decision::Error {
            code: 429,
            retry_after: Some(f.retry_after_secs),
        }
    } else if hit(f.server_error) {
        Decision::Error {
            code: 503,
            retry_after: None,
        }
    } else if hit(f.timeout) {
        Decision::Accept {
            offline: sh.offline(&f, phone),
            hang: Some(hang),
        }
    } else if hit(f.permanent) {
        Decision::Error {
            code: 400,
            retry_after: None,
        }
    } else {
        Decision::Accept {
            offline: sh.offline(&f, phone),
            hang: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AgentQuery {
    agent_id: Option<String>,
}

async fn capabilities(
    AxState(sh): AxState<Arc<Shared>>,
    Path(phone): Path<String>,
    Query(q): Query<AgentQuery>,
    headers: HeaderMap,
) -> Response {
    if !crate::oauth::authorized(&sh, &headers) {
        return unauthenticated();
    }
    if q.agent_id.as_deref() != Some(sh.cfg.agent_id.as_str()) {
        return error(
            403,
            "The caller does not have permission for this agent.",
            None,
        );
    }
    if !sh.cfg.latency.is_zero() {
        tokio::time::sleep(sh.cfg.latency).await;
    }
    let faults = sh.lock().faults.clone();
    if sh.not_capable(&faults, &phone) {
        return error(404, "Requested entity was not found.", None);
    }
    Json(Capabilities {
        features: vec![
            "RICHCARD_STANDALONE".into(),
            "RICHCARD_CAROUSEL".into(),
            "ACTION_CREATE_CALENDAR_EVENT".into(),
            "ACTION_DIAL".into(),
            "ACTION_OPEN_URL".into(),
            "ACTION_SHARE_LOCATION".into(),
            "ACTION_VIEW_LOCATION".into(),
        ],
    })
    .into_response()
}

async fn revoke(
    AxState(sh): AxState<Arc<Shared>>,
    Path((phone, message_id)): Path<(String, String)>,
    Query(q): Query<AgentQuery>,
    headers: HeaderMap,
) -> Response {
    if !crate::oauth::authorized(&sh, &headers) {
        return unauthenticated();
    }
    if q.agent_id.as_deref() != Some(sh.cfg.agent_id.as_str()) {
        return error(
            403,
            "The caller does not have permission for this agent.",
            None,
        );
    }
    let mut st = sh.lock();
    let revoked = match st.messages.get_mut(&message_id) {
        Some(m) if m.phase == Phase::Pending && *m.recipient == *phone => {
            m.phase = Phase::Revoked;
            true
        }
        _ => false,
    };
    if revoked {
        st.stats.revokes += 1;
        drop(st);
        Json(serde_json::json!({})).into_response()
    } else {
        drop(st);
        error(404, "Requested entity was not found.", None)
    }
}

async fn sms(AxState(sh): AxState<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    if !bearer_is(&headers, sh.cfg.sms_api_key.expose()) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({"error": "invalid api key"})),
        )
            .into_response();
    }
    let req: SmsRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(_) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(serde_json::json!({"error": "body must be {to, from, text, client_ref}"})),
            )
                .into_response()
        }
    };
    if req.client_ref.is_empty() || req.text.is_empty() || !req.to.starts_with('+') {
        return (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({"error": "to (E.164), text and client_ref are required"})),
        )
            .into_response();
    }
    if !sh.cfg.latency.is_zero() {
        tokio::time::sleep(sh.cfg.latency).await;
    }
    let mut st = sh.lock();
    if !st.sms_refs.insert(req.client_ref.clone()) {
        st.stats.sms_duplicates += 1;
        drop(st);
        return (
            StatusCode::CONFLICT,
            Json(serde_json::json!({"error": "client_ref already accepted"})),
        )
            .into_response();
    }
    st.stats.sms_accepted += 1;
    st.sms_seq += 1;
    let id = format!("sms-{}", st.sms_seq);
    st.notices.push(NoticeRecord {
        message_id: req.client_ref.clone(),
        text: req.text,
    });
    drop(st);
    (
        StatusCode::CREATED,
        Json(SmsAccepted {
            id,
            client_ref: req.client_ref,
        }),
    )
        .into_response()
}

async fn stats(AxState(sh): AxState<Arc<Shared>>) -> Json<SimStats> {
    Json(sh.lock().stats.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_bodies_are_validated() {
        let digest = "ab".repeat(32);
        assert_eq!(
            parse_send_body(br#"{"contentMessage":{"text":"hi"}}"#),
            Ok((None, None))
        );
        let with_file = format!(
            r#"{{"contentMessage":{{"contentInfo":{{"fileUrl":"https://x"}}}},"sealpostPayload":{{"sha256":"{digest}"}},"expireTime":"2030-01-01T00:00:00Z"}}"#
        );
        let (expires, content) = parse_send_body(with_file.as_bytes()).unwrap();
        assert!(expires.is_some());
        assert_eq!(content.unwrap().file_url, "https://x");
        assert!(parse_send_body(b"nope").is_err());
        assert!(parse_send_body(br#"{"contentMessage":{}}"#).is_err());
        assert!(
            parse_send_body(br#"{"contentMessage":{"contentInfo":{"fileUrl":"https://x"}}}"#)
                .is_err()
        );
        assert!(
            parse_send_body(br#"{"contentMessage":{"text":"hi"},"expireTime":"tomorrow"}"#)
                .is_err()
        );
    }
}
