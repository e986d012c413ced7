//! The HTTP API (axum): `POST /v1/messages`, `GET /v1/messages/{id}`,
//! `POST /v1/messages/{id}/cancel`, `POST /v1/blobs` (streaming), `POST /v1/blobs/presign`,
//! `/healthz` and `/readyz`. Every call needs `Authorization: Bearer <tenant API key>`, except
//! `POST /v1/receipts/{carrier}`, which carriers call with a signed body instead.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;

use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::send::{parse_message_id, MAX_COMMAND_BYTES};

#[derive(Debug, Clone)]
struct AppState {
    gateway: Gateway,
    nats: async_nats::Client,
    /// For storing receipts; made once, not per webhook.
    js: async_nats::jetstream::Context,
}

/// The router; serve it with `axum::serve`.
pub fn router(gateway: Gateway, nats: async_nats::Client) -> Router {
    Router::new()
        .route("/v1/messages", post(send))
        .route("/v1/messages/{id}", get(status))
        .route("/v1/messages/{id}/cancel", post(cancel))
        .route("/v1/blobs", post(upload))
        .route("/v1/blobs/presign", post(presign))
        .route("/v1/receipts/{carrier}", post(receipt))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/readyz", get(ready))
        .with_state(AppState {
            gateway,
            js: async_nats::jetstream::new(nats.clone()),
            nats,
        })
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

/// `GET /metrics`: the process's Prometheus metrics. No tenant data beyond tenant ids.
pub async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, sealpost_telemetry::CONTENT_TYPE)],
        sealpost_telemetry::encode(),
    )
        .into_response()
}

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
