//! `POST /v1/receipts/{carrier}`: carrier webhooks. The signature is checked first (RBM:
//! `X-Goog-Signature` = base64 HMAC-SHA512 of the body with the client token); a forged or
//! unsigned body is refused with 401 and stored nowhere. A genuine receipt is answered 200 only
//! once it is durable, so a receipt the carrier was told we have is never lost:
//! - with an applier configured ([`ReceiptConfig::apply`]), it is applied to its message at once
//!   when it can be, and answered 200 once its event is committed (or it changes nothing);
//! - otherwise, or when it cannot be applied yet (its carrier ack is not recorded, the message
//!   is unknown, the store is unavailable), it is written raw to `SEALPOST_RECEIPTS`
//!   (deduplicated by the carrier's event id) and then answered 200; the delivery role's
//!   `receipts` consumer applies it later.
//!
//! RBM's endpoint-verification handshake is answered here too.

use async_nats::HeaderMap;
use std::sync::Arc;

use sealpost_carriers::webhook::{self, AppliedNow, ApplyReceipt, Webhook, WebhookKey};
use sealpost_carriers::WebhookError;
use sealpost_eventstore::names::receipt_subject;

use crate::error::ApiError;

/// Largest webhook body accepted.
pub const MAX_RECEIPT_BYTES: usize = 64 * 1024;

/// Receipt settings; a carrier without a client token has no receipts endpoint.
#[derive(Debug, Clone, Default)]
pub struct ReceiptConfig {
    /// The RBM client token (the webhook signing key), ready to check signatures.
    pub rbm_key: Option<WebhookKey>,
    /// Applies a verified receipt to its message at once when it can; without one every
    /// receipt is stored raw for the receipts consumer.
    pub apply: Option<Arc<dyn ApplyReceipt>>,
}

/// What the HTTP layer answers with 200.
#[derive(Debug, PartialEq, Eq)]
pub enum ReceiptReply {
    /// Applied to its message, or stored for the receipts consumer; the body is `{}`.
    Stored,
    /// RBM's endpoint verification: answer `{"secret": ...}`.
    Verification { secret: String },
}

/// Verifies one webhook, then applies or stores it.
pub async fn ingest(
    js: &async_nats::jetstream::Context,
    cfg: &ReceiptConfig,
    carrier: &str,
    signature: Option<&str>,
    body: bytes::Bytes,
) -> Result<ReceiptReply, ApiError> {
    if carrier != "rbm" {
        return Err(ApiError::new(
            crate::ErrorCode::NotFound,
            "no receipts endpoint for this carrier; the known carrier is 'rbm'",
        ));
    }
    let Some(key) = cfg.rbm_key.as_ref() else {
        return Err(ApiError::new(
            crate::ErrorCode::NotFound,
            "RBM receipts are not configured on this gateway; set [carriers.rbm] client_token",
        ));
    };
    let parsed = webhook::parse(&body).map_err(|e| match e {
        WebhookError::Malformed(_) => {
            ApiError::invalid("the webhook body is not an RBM event or verification request")
        }
        _ => ApiError::invalid("the webhook body cannot be read"),
    })?;
    let event = match parsed {
        Webhook::Verification {
            client_token,
            secret,
        } => {
            // The handshake is unsigned; it proves itself by naming our client token.
            return if key.is_token(&client_token) {
                Ok(ReceiptReply::Verification { secret })
            } else {
                Err(ApiError::new(
                    crate::ErrorCode::Unauthorized,
                    "the verification request names another client token",
                ))
            };
        }
        Webhook::Event(e) => e,
    };
    key.verify(&body, signature).map_err(|e| {
        tracing::warn!(error = %e, "refused a receipt webhook");
        ApiError::new(
            crate::ErrorCode::Unauthorized,
            match e {
                WebhookError::Unsigned => "the webhook has no X-Goog-Signature header",
                _ => "the webhook's X-Goog-Signature does not match its body",
            },
        )
    })?;
    if let Some(apply) = &cfg.apply {
        if apply.apply_now(&event).await == AppliedNow::Applied {
            return Ok(ReceiptReply::Stored);
        }
    }
    let mut headers = HeaderMap::new();
    headers.insert(
        "Nats-Msg-Id",
        format!("{carrier}:{}", event.event_id).as_str(),
    );
    let stored = async {
        js.publish_with_headers(receipt_subject(carrier), headers, body)
            .await?
            .await
    }
    .await;
    match stored {
        Ok(_) => Ok(ReceiptReply::Stored),
        Err(e) => {
            tracing::warn!(error = %e, "cannot store a receipt");
            Err(ApiError::unavailable(
                "the receipt could not be stored; resend it",
            ))
        }
    }
}
