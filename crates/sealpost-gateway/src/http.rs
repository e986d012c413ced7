//! The HTTP API (axum): `POST /v1/messages`, `GET /v1/messages/{id}`,
//! `POST /v1/messages/{id}/cancel`, `POST /v1/blobs` (streaming), `POST /v1/blobs/presign`,
//! `POST /v1/keys/{op}` (the key directory's API, forwarded to the `keys` role), `/healthz`,
//! `/readyz`, `/metrics` and `/openapi.json`. Every `/v1` call needs
//! `Authorization: Bearer <tenant API key>`, except `POST /v1/receipts/{carrier}`, which carriers
//! call with a signed body instead, and the device links under `/v1/d/` ([`crate::device`]),
//! whose token is the credential.
//!
//! Each handler carries its `#[utoipa::path]` and is registered through `utoipa-axum`, so the
//! OpenAPI document ([`crate::openapi`]) is generated from these routes.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use sealpost_eventstore::names::{KeysOp, KeysSubject};

use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::openapi::schemas;
use crate::send::{parse_message_id, MAX_COMMAND_BYTES};

/// What every handler reads. axum clones the state for each request, and a NATS client or
/// JetStream context costs several atomic operations to clone and drop (two per receipt
/// webhook otherwise); behind an `Arc` each request clones one pointer.
#[derive(Debug, Clone)]
struct AppState(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    gateway: Gateway,
    nats: async_nats::Client,
    /// For storing receipts; made once, not per webhook.
    js: async_nats::jetstream::Context,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// Every documented route, with its OpenAPI operation.
fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(send))
        .routes(routes!(status))
        .routes(routes!(cancel))
        .routes(routes!(upload))
        .routes(routes!(presign))
        .routes(routes!(receipt))
        .routes(routes!(device_payload))
        .routes(routes!(device_report))
        .routes(routes!(keys))
        .routes(routes!(healthz))
        .routes(routes!(ready))
        .routes(routes!(metrics))
}

/// The OpenAPI document of the HTTP API (what `GET /openapi.json` serves).
pub fn openapi_document() -> Result<serde_json::Value, crate::openapi::OpenApiError> {
    crate::openapi::document(api().into_openapi())
}

/// The router; serve it with `axum::serve`.
pub fn router(gateway: Gateway, nats: async_nats::Client) -> Router {
    let (router, generated) = api()
        .with_state(AppState(Arc::new(Shared {
            gateway,
            js: async_nats::jetstream::new(nats.clone()),
            nats,
        })))
        .split_for_parts();
    let doc = match crate::openapi::document(generated) {
        Ok(doc) => Arc::new(doc),
        Err(e) => {
            tracing::error!(error = %e, "the OpenAPI document cannot be built; /openapi.json answers 503");
            Arc::new(serde_json::Value::Null)
        }
    };
    router.route(
        "/openapi.json",
        get(move || {
            let doc = doc.clone();
            async move {
                if doc.is_null() {
                    return ApiError::unavailable("the API description is unavailable")
                        .into_response();
                }
                json(StatusCode::OK, &*doc)
            }
        }),
    )
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut res = (status, self.to_json()).into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(ms) = self.retry_after_ms {
            // Retry-After is in whole seconds; round up so a client never retries early.
            let secs = ms.div_ceil(1000).max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                res.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        res
    }
}

fn json<T: Serialize>(status: StatusCode, v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(body) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        Err(_) => ApiError::unavailable("could not encode the reply; retry").into_response(),
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::invalid(format!("the {name} header must be ASCII")))
        })
        .transpose()
}

async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::too_large("the request body", limit))
}

/// Send a message: the ciphertext is stored already (`POST /v1/blobs`); this accepts the
/// send command for it.
#[utoipa::path(
    post,
    path = "/v1/messages",
    tag = "messages",
    request_body(content = schemas::SendCommand, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Replaces the body's `idempotency_key` (they must be equal when both are sent)")),
    responses(
        (status = 202, description = "Accepted, or a duplicate of an earlier identical send", body = schemas::SendReply),
        (status = 400, description = "`invalid_request`: the body breaks a rule; the message names it", body = schemas::Error),
        (status = 401, description = "`unauthorized`: no or an unknown API key", body = schemas::Error),
        (status = 403, description = "`tenant_mismatch`: the body or reference names another tenant", body = schemas::Error),
        (status = 409, description = "`idempotency_conflict`: the key was used for another request; `key_stale`: sealed to a key the key directory holds as revoked or does not hold for the recipient", body = schemas::Error),
        (status = 413, description = "`invalid_request`: the command is larger than 16 KiB", body = schemas::Error),
        (status = 422, description = "`payload_not_found` or `digest_mismatch`", body = schemas::Error),
        (status = 429, description = "`rate_limited` (with `Retry-After`) or `quota_exceeded`", body = schemas::Error),
        (status = 503, description = "`unavailable`: retry the same request (it is idempotent)", body = schemas::Error),
    ),
    security(("bearer" = [])),
)]
async fn send(State(s): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let result = async {
        let tenant = s
            .gateway
            .authenticate(header_str(&headers, "authorization")?)?;
        let key = header_str(&headers, "idempotency-key")?;
        let body = read_body(body, MAX_COMMAND_BYTES).await?;
        let r = s.gateway.send(tenant, &body, key).await;
        crate::gateway::count_send(tenant, "http", &r);
        r
    }
    .await;
    match result {
        Ok(reply) => json(StatusCode::ACCEPTED, &reply),
        Err(e) => e.into_response(),
    }
}

/// A message's status row.
#[utoipa::path(
    get,
    path = "/v1/messages/{id}",
    tag = "messages",
    params(("id" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$",
        description = "The message id returned by send")),
    responses(
        (status = 200, description = "The status row", body = schemas::StatusRow),
        (status = 400, description = "`invalid_request`: not a message id", body = schemas::Error),
        (status = 401, description = "`unauthorized`", body = schemas::Error),
        (status = 404, description = "`not_found`: no such message for this tenant", body = schemas::Error),
        (status = 503, description = "`unavailable`: retry", body = schemas::Error),
    ),
    security(("bearer" = [])),
)]
async fn status(State(s): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let result = async {
        let tenant = s
            .gateway
            .authenticate(header_str(&headers, "authorization")?)?;
        let id = parse_message_id(&id)?;
        s.gateway.status(tenant, &id).await
    }
    .await;
    match result {
        Ok(view) => json(StatusCode::OK, &view),
        Err(e) => e.into_response(),
    }
}

/// Cancel a message that was not submitted to a carrier yet.
#[utoipa::path(
    post,
    path = "/v1/messages/{id}/cancel",
    tag = "messages",
    params(("id" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$",
        description = "The message id returned by send")),
    responses(
        (status = 200, description = "Cancelled (or already cancelled)", body = schemas::CancelReply),
        (status = 400, description = "`invalid_request`: not a message id", body = schemas::Error),
        (status = 401, description = "`unauthorized`", body = schemas::Error),
        (status = 404, description = "`not_found`: no such message for this tenant", body = schemas::Error),
        (status = 409, description = "`invalid_state`: already submitted or final", body = schemas::Error),
        (status = 429, description = "`rate_limited` or `quota_exceeded`", body = schemas::Error),
        (status = 503, description = "`unavailable`: retry", body = schemas::Error),
    ),
    security(("bearer" = [])),
)]
async fn cancel(State(s): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let result = async {
        let tenant = s
            .gateway
            .authenticate(header_str(&headers, "authorization")?)?;
        let id = parse_message_id(&id)?;
        let body = serde_json::to_vec(&serde_json::json!({"message_id": id.as_str()}))
            .map_err(|_| ApiError::invalid("bad message id"))?;
        s.gateway.cancel(tenant, &body).await
    }
    .await;
    match result {
        Ok(reply) => json(StatusCode::OK, &reply),
        Err(e) => e.into_response(),
    }
}

/// The key directory's API: the operations and JSON bodies of the NATS subjects
/// `sealpost.<cmd|qry>.<tenant>.keys.<op>` (`docs/keys.md`), for the tenant of the API key.
/// Answered by the `keys` role; the gateway forwards the request and its answer unchanged.
#[utoipa::path(
    post,
    path = "/v1/keys/{op}",
    tag = "keys",
    params(("op" = String, Path,
        description = "publish, revoke, mark_bad, upload, claim, lookup, history, checkpoint, consistency, audit, bad_keys or info")),
    request_body(content = Object, content_type = "application/json",
        description = "The operation's request (docs/keys.md); `{}` for info and the latest checkpoint"),
    responses(
        (status = 200, description = "The operation's answer (docs/keys.md)", body = Object),
        (status = 400, description = "`invalid_request`, `bad_public_key`, `unsupported_kem`, `already_expired`, `invalid_key_package`", body = schemas::Error),
        (status = 401, description = "`unauthorized`", body = schemas::Error),
        (status = 403, description = "`enrollment_required`, `enrollment_invalid`", body = schemas::Error),
        (status = 404, description = "`not_found` (no such operation, recipient or directory), `unknown_key`, `unknown_device`, `no_key_package`", body = schemas::Error),
        (status = 409, description = "`key_id_reused`, `key_marked_bad`", body = schemas::Error),
        (status = 413, description = "`invalid_request` (body) or `too_large` (answer): ask for a smaller range", body = schemas::Error),
        (status = 503, description = "`unavailable`: the key directory is busy or not running; retry", body = schemas::Error),
    ),
    security(("bearer" = [])),
)]
async fn keys(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(op): Path<String>,
    body: bytes::Bytes,
) -> Response {
    let result = async {
        let tenant = s
            .gateway
            .authenticate(header_str(&headers, "authorization")?)?;
        let op: KeysOp = op.parse().map_err(|_| {
            ApiError::new(
                crate::error::ErrorCode::NotFound,
                "no such key operation; see docs/keys.md",
            )
        })?;
        if body.len() > MAX_COMMAND_BYTES {
            return Err(ApiError::too_large("the key request", MAX_COMMAND_BYTES));
        }
        let body = if body.is_empty() {
            bytes::Bytes::from_static(b"{}")
        } else {
            body
        };
        let subject = KeysSubject::new(tenant.id.clone(), op).to_string();
        let reply = s.nats.request(subject, body).await.map_err(|e| {
            tracing::warn!(error = %e, "the key directory did not answer");
            ApiError::unavailable("the key directory (the `keys` role) did not answer; retry")
        })?;
        let status = reply
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::service::NATS_SERVICE_ERROR_CODE))
            .and_then(|c| c.as_str().parse::<u16>().ok())
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::OK);
        Ok((status, reply.payload))
    }
    .await;
    match result {
        Ok((status, payload)) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            payload,
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

/// Upload ciphertext: the body is streamed to object storage and hashed while it streams.
#[utoipa::path(
    post,
    path = "/v1/blobs",
    tag = "blobs",
    request_body(content = Option<String>, content_type = "application/octet-stream",
        description = "The sealed payload's bytes (an empty body stores an empty payload)"),
    responses(
        (status = 201, description = "Stored; send its reference and digest", body = schemas::BlobReply),
        (status = 401, description = "`unauthorized`", body = schemas::Error),
        (status = 413, description = "`invalid_request`: larger than `[gateway] max_blob_bytes`", body = schemas::Error),
        (status = 429, description = "`rate_limited`", body = schemas::Error),
        (status = 503, description = "`unavailable`: object storage is down; retry", body = schemas::Error),
    ),
    security(("bearer" = [])),
)]
async fn upload(State(s): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let result = async {
        let tenant = s
            .gateway
            .authenticate(header_str(&headers, "authorization")?)?;
        s.gateway.upload(tenant, body.into_data_stream()).await
    }
    .await;
    match result {
        Ok(stored) => json(StatusCode::CREATED, &stored),
        Err(e) => e.into_response(),
    }
}

/// A presigned PUT for uploading ciphertext directly to object storage.
#[utoipa::path(
    post,
    path = "/v1/blobs/presign",
    tag = "blobs",
    request_body(content = Option<schemas::PresignRequest>, content_type = "application/json",
        description = "`{}` or `{\"sha256\"}`; an empty body is `{}`"),
    responses(
        (status = 200, description = "The URL and the headers the upload must carry", body = schemas::PresignReply),
        (status = 400, description = "`invalid_request`", body = schemas::Error),
        (status = 401, description = "`unauthorized`", body = schemas::Error),
        (status = 413, description = "`invalid_request`: the body is larger than 1 KiB", body = schemas::Error),
        (status = 429, description = "`rate_limited`", body = schemas::Error),
        (status = 503, description = "`unavailable`: retry", body = schemas::Error),
    ),
    security(("bearer" = [])),
)]
async fn presign(State(s): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let result = async {
        let tenant = s
            .gateway
            .authenticate(header_str(&headers, "authorization")?)?;
        let body = read_body(body, 1024).await?;
        s.gateway.presign(tenant, &body).await
    }
    .await;
    match result {
        Ok(p) => json(StatusCode::OK, &p),
        Err(e) => e.into_response(),
    }
}

/// A carrier's receipt webhook (RBM: a Pub/Sub push signed with `X-Goog-Signature`). It is
/// verified, stored, and only then answered 200.
#[utoipa::path(
    post,
    path = "/v1/receipts/{carrier}",
    tag = "receipts",
    params(
        ("carrier" = String, Path, description = "`rbm`"),
        ("X-Goog-Signature" = Option<String>, Header,
            description = "base64 HMAC-SHA512 of the body with the client token"),
    ),
    request_body(content = Object, content_type = "application/json",
        description = "The carrier's webhook body, stored raw"),
    responses(
        (status = 200, description = "Stored (`{}`), or RBM's verification answered (`{\"secret\"}`)", body = Object),
        (status = 400, description = "`invalid_request`: not a webhook body", body = schemas::Error),
        (status = 401, description = "`unauthorized`: unsigned or forged; stored nowhere", body = schemas::Error),
        (status = 404, description = "`not_found`: no receipts endpoint for this carrier", body = schemas::Error),
        (status = 413, description = "`invalid_request`: larger than 64 KiB", body = schemas::Error),
        (status = 503, description = "`unavailable`: not stored; the carrier retries", body = schemas::Error),
    ),
)]
async fn receipt(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(carrier): Path<String>,
    body: Body,
) -> Response {
    let result = async {
        let signature = header_str(&headers, "x-goog-signature")?;
        let body = read_body(body, crate::receipts::MAX_RECEIPT_BYTES).await?;
        crate::receipts::ingest(&s.js, s.gateway.receipts(), &carrier, signature, body).await
    }
    .await;
    match result {
        Ok(crate::receipts::ReceiptReply::Stored) => json(StatusCode::OK, &serde_json::json!({})),
        Ok(crate::receipts::ReceiptReply::Verification { secret }) => {
            json(StatusCode::OK, &serde_json::json!({ "secret": secret }))
        }
        Err(e) => e.into_response(),
    }
}

/// A device link: where one message's sealed payload is, for a few minutes.
#[utoipa::path(
    get,
    path = "/v1/d/{tenant}/{message_id}/{token}",
    tag = "devices",
    params(
        ("tenant" = String, Path, description = "The tenant the link names"),
        ("message_id" = String, Path, description = "The message the link names"),
        ("token" = String, Path, description = "The link's token (43 characters); a bearer secret"),
    ),
    responses(
        (status = 200, description = "A presigned GET of the payload, with its digest", body = schemas::DevicePayload),
        (status = 401, description = "`unauthorized`: the token does not match tenant and message", body = schemas::Error),
        (status = 404, description = "`not_found`: no such message, or device links are not enabled", body = schemas::Error),
        (status = 410, description = "`expired`: the message expired, ended undelivered or was purged", body = schemas::Error),
        (status = 503, description = "`unavailable`: retry", body = schemas::Error),
    ),
)]
async fn device_payload(
    State(s): State<AppState>,
    Path((tenant, message_id, token)): Path<(String, String, String)>,
) -> Response {
    match s.gateway.device_payload(&tenant, &message_id, &token).await {
        Ok(reply) => json(StatusCode::OK, &reply),
        Err(e) => e.into_response(),
    }
}

/// A device could not open the message's payload: recorded as a `decryption_failed` event.
#[utoipa::path(
    post,
    path = "/v1/d/{tenant}/{message_id}/{token}/decryption-failed",
    tag = "devices",
    params(
        ("tenant" = String, Path, description = "The tenant the link names"),
        ("message_id" = String, Path, description = "The message the link names"),
        ("token" = String, Path, description = "The link's token; a bearer secret"),
    ),
    request_body(content = schemas::DecryptionReport, content_type = "application/json"),
    responses(
        (status = 202, description = "Recorded, or the same report was recorded before", body = schemas::DecryptionReportReply),
        (status = 400, description = "`invalid_request`: an unknown reason or a bad key id", body = schemas::Error),
        (status = 401, description = "`unauthorized`: the token does not match tenant and message", body = schemas::Error),
        (status = 404, description = "`not_found`: no such message, or device links are not enabled", body = schemas::Error),
        (status = 409, description = "`invalid_state`: the message never reached a carrier", body = schemas::Error),
        (status = 410, description = "`expired`: the message was purged", body = schemas::Error),
        (status = 413, description = "`invalid_request`: larger than 1 KiB", body = schemas::Error),
        (status = 503, description = "`unavailable`: send the report again", body = schemas::Error),
    ),
)]
async fn device_report(
    State(s): State<AppState>,
    Path((tenant, message_id, token)): Path<(String, String, String)>,
    body: Body,
) -> Response {
    let result = async {
        let body = read_body(body, crate::device::MAX_REPORT_BYTES).await?;
        s.gateway
            .report_decryption_failure(&tenant, &message_id, &token, &body)
            .await
    }
    .await;
    match result {
        Ok(reply) => json(StatusCode::ACCEPTED, &reply),
        Err(e) => e.into_response(),
    }
}

/// Liveness: the process serves HTTP.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "`ok`", body = String, content_type = "text/plain")),
)]
async fn healthz() -> &'static str {
    "ok"
}

/// `GET /metrics`: the process's Prometheus metrics. No tenant data beyond tenant ids.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus metrics (OpenMetrics text)", body = String,
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8")),
)]
pub async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, sealpost_telemetry::CONTENT_TYPE)],
        sealpost_telemetry::encode(),
    )
        .into_response()
}

/// Readiness: NATS is connected.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "`ready`", body = String, content_type = "text/plain"),
        (status = 503, description = "Not connected to NATS; the text says in which state", body = String, content_type = "text/plain"),
    ),
)]
async fn ready(State(s): State<AppState>) -> Response {
    use async_nats::connection::State as Conn;
    match s.nats.connection_state() {
        Conn::Connected => (StatusCode::OK, "ready").into_response(),
        other => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: NATS is {other:?}"),
        )
            .into_response(),
    }
}
