//! The transport-independent gateway: every NATS request and HTTP call ends here. It validates,
//! checks the payload object, applies limits and runs the command through the event store. It
//! keeps no state a `kill -9` could lose: the blob index is a cache of uploads this process
//! handled, and a miss costs one S3 HEAD.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use sealpost_blobstore::{BlobErrorKind, BlobStore, PresignedPut, StoredBlob};
use sealpost_domain::{
    aggregate_id, AcceptMessage, Message, MessageCommand, MessageError, MessageId, Sha256Hex,
    Status, StatusRow, TenantId,
};
use sealpost_eventstore::{CommandExecutor, ExecuteError};
use serde::Serialize;
use time::OffsetDateTime;

use crate::error::{ApiError, ErrorCode};
use crate::send::{self, ValidSend};
use crate::tenants::{Tenant, Tenants};

/// How many verified payload objects are remembered (reference → digest, size).
const BLOB_INDEX_CAPACITY: usize = 100_000;

/// The reply to a send: `{"message_id","status":"accepted"|"duplicate","accepted_at"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SendReply {
    pub message_id: String,
    pub status: SendStatus,
    #[serde(with = "time::serde::rfc3339")]
    pub accepted_at: OffsetDateTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SendStatus {
    Accepted,
    Duplicate,
}

/// The reply to a cancel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CancelReply {
    pub message_id: String,
    pub status: Status,
}

#[derive(Debug, Clone)]
struct KnownBlob {
    sha256: Sha256Hex,
    size: u64,
}

/// Shared by the NATS service and the HTTP API; cheap to clone.
#[derive(Debug, Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    executor: CommandExecutor<Message>,
    blobs: BlobStore,
    tenants: Tenants,
    /// Reference → digest and size of objects this process uploaded or verified. Bounded.
    known: quick_cache::sync::Cache<String, KnownBlob>,
    max_blob_bytes: u64,
    receipts: crate::receipts::ReceiptConfig,
    status_source: Option<Arc<dyn crate::view::StatusSource>>,
    keys: crate::keys::KeyCheck,
    /// Checks devices' capability links; none = the `/v1/d/` routes answer `not_found`.
    device_links: Option<sealpost_keyformat::device_link::DeviceLinkKey>,
    /// Rate limits and daily quotas shared with every other gateway.
    limits: crate::limits::Limits,
}

/// Counts an answered send in `sealpost_ingress_requests_total`.
pub(crate) fn count_send(
    tenant: &Tenant,
    transport: &'static str,
    result: &Result<SendReply, ApiError>,
) {
    let outcome = match result {
        Ok(r) if r.status == SendStatus::Accepted => "accepted".to_owned(),
        Ok(_) => "duplicate".to_owned(),
        Err(e) => e.code.as_str().to_owned(),
    };
    sealpost_telemetry::metrics()
        .ingress
        .get_or_create(&sealpost_telemetry::IngressLabels {
            tenant: tenant.id.as_str().to_owned(),
            transport,
            outcome,
        })
        .inc();
}

pub(crate) fn store_error(e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "event store unavailable");
    ApiError::unavailable(
        "the event store is unavailable; retry the same request (it is idempotent)",
    )
}

impl Gateway {
    pub fn new(
        executor: CommandExecutor<Message>,
        blobs: BlobStore,
        tenants: Tenants,
        max_blob_bytes: u64,
    ) -> Self {
        let keys =
            crate::keys::KeyCheck::new(executor.store().client().clone(), tenants.label_keys());
        let limits = crate::limits::Limits::new(executor.store().client().clone());
        Self {
            inner: Arc::new(Inner {
                limits,
                executor,
                blobs,
                keys,
                tenants,
                known: quick_cache::sync::Cache::new(BLOB_INDEX_CAPACITY),
                max_blob_bytes,
                receipts: Default::default(),
                status_source: None,
                device_links: None,
            }),
        }
    }

    /// Answers status queries from a view (see [`crate::view`]). Call it on a new gateway,
    /// before it is cloned into a server.
    pub fn with_status_source(self, source: Arc<dyn crate::view::StatusSource>) -> Self {
        match Arc::try_unwrap(self.inner) {
            Ok(inner) => Self {
                inner: Arc::new(Inner {
                    status_source: Some(source),
                    ..inner
                }),
            },
            Err(shared) => {
                tracing::error!("status source set on a gateway already in use; ignored");
                Self { inner: shared }
            }
        }
    }

    /// Enables carrier receipt webhooks (`POST /v1/receipts/{carrier}`). Call it on a new
    /// gateway, before it is cloned into a server.
    pub fn with_receipts(self, receipts: crate::receipts::ReceiptConfig) -> Self {
        match Arc::try_unwrap(self.inner) {
            Ok(inner) => Self {
                inner: Arc::new(Inner { receipts, ..inner }),
            },
            Err(shared) => {
                tracing::error!("receipts configured on a gateway already in use; they stay off");
                Self { inner: shared }
            }
        }
    }

    /// Enables devices' capability links (`/v1/d/...`, [`crate::device`]) under the platform's
    /// link key. Call it on a new gateway, before it is cloned into a server.
    pub fn with_device_links(self, key: sealpost_keyformat::device_link::DeviceLinkKey) -> Self {
        match Arc::try_unwrap(self.inner) {
            Ok(inner) => Self {
                inner: Arc::new(Inner {
                    device_links: Some(key),
                    ..inner
                }),
            },
            Err(shared) => {
                tracing::error!(
                    "device links configured on a gateway already in use; they stay off"
                );
                Self { inner: shared }
            }
        }
    }

    pub(crate) fn device_link_key(
        &self,
    ) -> Option<&sealpost_keyformat::device_link::DeviceLinkKey> {
        self.inner.device_links.as_ref()
    }

    pub(crate) fn executor(&self) -> &CommandExecutor<Message> {
        &self.inner.executor
    }

    pub fn receipts(&self) -> &crate::receipts::ReceiptConfig {
        &self.inner.receipts
    }

    pub fn tenants(&self) -> &Tenants {
        &self.inner.tenants
    }

    pub fn blobs(&self) -> &BlobStore {
        &self.inner.blobs
    }

    /// The tenant named by a NATS subject token. Each tenant's NATS account already imports only
    /// its own subjects; an unconfigured tenant is refused here.
    pub fn tenant(&self, id: &str) -> Result<&Tenant, ApiError> {
        self.inner.tenants.get(id)
    }

    /// The tenant of an HTTP `Authorization` header.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<&Tenant, ApiError> {
        self.inner.tenants.authenticate(authorization)
    }

    pub async fn send(
        &self,
        tenant: &Tenant,
        body: &[u8],
        header_key: Option<&str>,
    ) -> Result<SendReply, ApiError> {
        // The cluster-wide bucket only. A token of this gateway's own bucket spent on a send the
        // shared one then refused would leave this gateway unable to ask again until its own
        // refilled: under overload the gateway whose bucket refills first took ~85 % of sends.
        let unix_ms = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis(),
        )
        .unwrap_or(u64::MAX);
        self.inner.limits.admit_rate(tenant, unix_ms).await?;
        let valid = send::validate(&tenant.id, body, header_key)?;
        self.inner
            .keys
            .check(&tenant.id, &valid.recipient, &valid.encryption.key_id)
            .await?;
        let (sha256, size) = self.check_payload(&tenant.id, &valid).await?;
        let now = OffsetDateTime::now_utc();
        let day = (now.unix_timestamp() / 86_400).max(0) as u64;
        self.inner.limits.reserve_quota(tenant, day).await?;
        let result = self.accept(&tenant.id, valid, sha256, size, now).await;
        if !matches!(&result, Ok(r) if r.status == SendStatus::Accepted) {
            self.inner.limits.refund_quota(tenant, day).await;
        }
        result
    }

    async fn accept(
        &self,
        tenant: &TenantId,
        valid: ValidSend,
        sha256: Sha256Hex,
        size: u64,
        now: OffsetDateTime,
    ) -> Result<SendReply, ApiError> {
        let message_id = MessageId::derive(tenant, &valid.idempotency_key);
        let id = aggregate_id(tenant, &message_id);
        let mut metadata = HashMap::new();
        if let Some(c) = &valid.correlation_id {
            metadata.insert("correlation_id".to_owned(), c.clone());
        }
        let command = MessageCommand::Accept(Box::new(AcceptMessage {
            tenant_id: tenant.clone(),
            idempotency_key: valid.idempotency_key,
            recipient: valid.recipient,
            payload_ref: valid.reference,
            payload_sha256: sha256,
            payload_size: Some(size),
            encryption: valid.encryption,
            message_type: valid.message_type,
            correlation_id: valid.correlation_id,
            ttl: valid.ttl,
            fallback: valid.fallback,
            at: now,
        }));
        let span = tracing::info_span!(
            "message",
            otel.name = "accept",
            role = "gateway",
            tenant = tenant.as_str(),
            message_id = message_id.as_str(),
            correlation_id = metadata.get("correlation_id").map(String::as_str),
            outcome = tracing::field::Empty,
        );
        sealpost_telemetry::traces::bind(&span, tenant.as_str(), message_id.as_str());
        let done = tracing::Instrument::instrument(
            self.inner
                .executor
                .execute_presuming_new(&id, command, &metadata),
            span.clone(),
        )
        .await
        .map_err(|e| match e {
            ExecuteError::Rejected(MessageError::IdempotencyConflict) => ApiError::new(
                ErrorCode::IdempotencyConflict,
                MessageError::IdempotencyConflict.to_string(),
            ),
            ExecuteError::Rejected(e) => ApiError::invalid(e.to_string()),
            other => store_error(other),
        })?;
        let accepted_at = done
            .aggregate
            .accepted
            .as_ref()
            .map(|a| a.accepted_at)
            .unwrap_or(now);
        let status = if done.events.is_empty() {
            SendStatus::Duplicate
        } else {
            SendStatus::Accepted
        };
        span.record(
            "outcome",
            match status {
                SendStatus::Duplicate => "duplicate",
                SendStatus::Accepted => "accepted",
            },
        );
        tracing::debug!(
            tenant = tenant.as_str(),
            message_id = message_id.as_str(),
            ?status,
            "send"
        );
        Ok(SendReply {
            message_id: message_id.as_str().to_owned(),
            status,
            accepted_at,
        })
    }

    /// The reference must lie in the tenant's prefix and the object must exist with the given
    /// digest. Uploads this process handled (and objects it already verified) are answered from
    /// memory; anything else is one HEAD (or, for an object stored without a checksum, a hash).
    async fn check_payload(
        &self,
        tenant: &TenantId,
        valid: &ValidSend,
    ) -> Result<(Sha256Hex, u64), ApiError> {
        let r = self
            .inner
            .blobs
            .parse_ref(tenant, &valid.reference)
            .map_err(|e| {
                let other_tenant = valid
                    .reference
                    .split_once("/tenants/")
                    .is_some_and(|(_, rest)| !rest.starts_with(&format!("{}/", tenant.as_str())));
                let code = if e.kind() == BlobErrorKind::OutsidePrefix && other_tenant {
                    ErrorCode::TenantMismatch
                } else {
                    ErrorCode::InvalidRequest
                };
                ApiError::new(code, e.to_string())
            })?;
        let key = r.uri();
        let info = match self.inner.known.get(&key) {
            Some(k) => k,
            None => {
                // Boxed: the S3 request's future is kilobytes, and only a blob this gateway
                // does not know yet needs it; unboxed, every send's future would carry it.
                let info = Box::pin(self.inner.blobs.verify(&r, valid.payload_sha256.as_ref()))
                    .await
                    .map_err(blob_error)?;
                let Some(sha256) = info.sha256 else {
                    return Err(ApiError::unavailable(
                        "the payload's digest could not be determined; retry",
                    ));
                };
                let k = KnownBlob {
                    sha256,
                    size: info.size,
                };
                self.remember(key, k.clone());
                k
            }
        };
        if let Some(expected) = &valid.payload_sha256 {
            if expected != &info.sha256 {
                return Err(ApiError::new(
                    ErrorCode::DigestMismatch,
                    "payload_sha256 does not match the stored object; upload the ciphertext again or send its real digest",
                ));
            }
        }
        Ok((info.sha256, info.size))
    }

    fn remember(&self, reference: String, blob: KnownBlob) {
        // A full index evicts a cold entry; a miss later costs one HEAD.
        self.inner.known.insert(reference, blob);
    }

    /// `POST /v1/blobs`: streams ciphertext to S3 and remembers its digest for later sends.
    pub async fn upload<S, E>(&self, tenant: &Tenant, body: S) -> Result<StoredBlob, ApiError>
    where
        S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin + Send,
        E: std::error::Error + Send + Sync + 'static,
    {
        tenant.take_token(Instant::now())?;
        let stored = self
            .inner
            .blobs
            .put_stream(&tenant.id, body, self.inner.max_blob_bytes)
            .await
            .map_err(blob_error)?;
        self.remember(
            stored.reference.clone(),
            KnownBlob {
                sha256: stored.sha256.clone(),
                size: stored.size,
            },
        );
        Ok(stored)
    }

    /// `POST /v1/blobs/presign`: body `{}` or `{"sha256": "..."}`.
    pub async fn presign(&self, tenant: &Tenant, body: &[u8]) -> Result<PresignedPut, ApiError> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Req {
            /// Absent or a string (`schemas/commands/presign_request.v1.json`); `null` is refused.
            #[serde(default, deserialize_with = "some_string")]
            sha256: Option<String>,
        }
        fn some_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
            <String as serde::Deserialize>::deserialize(d).map(Some)
        }
        tenant.take_token(Instant::now())?;
        let req: Req = if body.iter().all(u8::is_ascii_whitespace) {
            Req { sha256: None }
        } else {
            send::require_object("send {} or {\"sha256\": \"<64 hex>\"}", body)?;
            serde_json::from_slice(body)
                .map_err(|_| ApiError::invalid("send {} or {\"sha256\": \"<64 hex>\"} as JSON"))?
        };
        let sha = req
            .sha256
            .map(|s| Sha256Hex::new(s).map_err(|e| ApiError::invalid(e.to_string())))
            .transpose()?;
        self.inner
            .blobs
            .presign_put(
                &tenant.id,
                sha.as_ref(),
                std::time::Duration::from_secs(900),
            )
            .await
            .map_err(blob_error)
    }

    pub async fn cancel(&self, tenant: &Tenant, body: &[u8]) -> Result<CancelReply, ApiError> {
        tenant.take_token(Instant::now())?;
        let message_id = send::parse_message_id_body(body)?;
        let id = aggregate_id(&tenant.id, &message_id);
        let done = self
            .inner
            .executor
            .execute(
                &id,
                MessageCommand::Cancel {
                    at: OffsetDateTime::now_utc(),
                },
                &HashMap::new(),
            )
            .await
            .map_err(|e| match e {
                ExecuteError::Rejected(MessageError::NotAccepted) => not_found(),
                ExecuteError::Rejected(e) => ApiError::new(ErrorCode::InvalidState, e.to_string()),
                other => store_error(other),
            })?;
        Ok(CancelReply {
            message_id: message_id.as_str().to_owned(),
            status: done.aggregate.status,
        })
    }

    /// The status row: from the view when it has the message, else from the events.
    pub async fn status(
        &self,
        tenant: &Tenant,
        message_id: &MessageId,
    ) -> Result<StatusRow, ApiError> {
        if let Some(source) = &self.inner.status_source {
            match source.status(&tenant.id, message_id).await {
                Ok(Some(row)) => return Ok(row),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "the messages view is unreachable; answering status from the events");
                }
            }
        }
        crate::view::row_from_events(self.inner.executor.store(), &tenant.id, message_id)
            .await
            .map_err(store_error)?
            .ok_or_else(not_found)
    }
}

pub(crate) fn not_found() -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        "no message with this id for this tenant; check the message_id returned by send",
    )
}

fn blob_error(e: sealpost_blobstore::BlobError) -> ApiError {
    let code = match e.kind() {
        BlobErrorKind::NotFound => ErrorCode::PayloadNotFound,
        BlobErrorKind::DigestMismatch => ErrorCode::DigestMismatch,
        BlobErrorKind::OutsidePrefix | BlobErrorKind::InvalidReference => ErrorCode::InvalidRequest,
        BlobErrorKind::TooLarge => return ApiError::too_large_blob(e.to_string()),
        BlobErrorKind::LegalHold => ErrorCode::InvalidState,
        BlobErrorKind::Unavailable | BlobErrorKind::Other => {
            tracing::warn!(error = %e, "object storage unavailable");
            return ApiError::unavailable("object storage is unavailable; retry");
        }
    };
    ApiError::new(code, e.to_string())
}
