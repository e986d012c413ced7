//! JSON shapes on the wire, shared by the adapters and the simulator.
//!
//! RBM shapes follow Google's RBM REST API v1 (`phones.agentMessages.create`, `phones.getCapabilities`,
//! errors as `google.rpc.Status`). One field is ours: [`AgentMessage::sealpost_payload`]
//! (`"sealpostPayload"`), a non-Google extension carrying the ciphertext's digest next to the
//! `fileUrl`, so a receiver (the simulator, a cooperating aggregator) can check what it fetched,
//! and the message's device link.
//! RBM ignores unknown top-level fields.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Body of `POST /v1/phones/{phone}/agentMessages`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentMessage {
    pub content_message: ContentMessage,
    /// RFC 3339, UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_time: Option<String>,
    /// Extension: the digest (and size) of the ciphertext behind `contentInfo.fileUrl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealpost_payload: Option<SealpostPayload>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContentMessage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_info: Option<ContentInfo>,
}

/// A file by URL. The URL is a presigned GET: a secret, hidden from `Debug`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContentInfo {
    pub file_url: String,
    #[serde(default)]
    pub force_refresh: bool,
}

impl fmt::Debug for ContentInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContentInfo")
            .field("file_url", &"<redacted>")
            .field("force_refresh", &self.force_refresh)
            .finish()
    }
}

#[derive(Clone, Serialize, Deserialize)]
pub struct SealpostPayload {
    /// Lowercase hex SHA-256 of the ciphertext.
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The message's device link (`sealpost_keyformat::device_link`): the app fetches the
    /// payload again and reports a decryption failure through it. A secret, hidden from `Debug`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

impl fmt::Debug for SealpostPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealpostPayload")
            .field("sha256", &self.sha256)
            .field("size", &self.size)
            .field("link", &self.link.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// An RBM error answer: `{"error": {"code": 404, "message": "...", "status": "NOT_FOUND"}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorStatus,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorStatus {
    pub code: u16,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub status: String,
}

impl ErrorBody {
    /// The error body RBM sends with `code`, with its canonical status word.
    pub fn for_status(code: u16, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorStatus {
                code,
                message: message.into(),
                status: status_word(code).to_owned(),
            },
        }
    }
}

/// The `google.rpc.Code` name RBM uses for an HTTP status.
pub fn status_word(code: u16) -> &'static str {
    match code {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ALREADY_EXISTS",
        429 => "RESOURCE_EXHAUSTED",
        500 => "INTERNAL",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "UNKNOWN",
    }
}

/// Answer of `GET /v1/phones/{phone}/capabilities`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Capabilities {
    #[serde(default)]
    pub features: Vec<String>,
}

/// Body of the SMS API's `POST /sms/v1/messages`. `to` is a full number: hidden from `Debug`.
#[derive(Clone, Serialize, Deserialize)]
pub struct SmsRequest {
    pub to: String,
    pub from: String,
    pub text: String,
    /// Our message id; the API answers 409 when it already accepted this reference.
    pub client_ref: String,
}

impl fmt::Debug for SmsRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmsRequest")
            .field("to", &crate::mask_recipient(&self.to))
            .field("from", &self.from)
            .field("text_len", &self.text.len())
            .field("client_ref", &self.client_ref)
            .finish()
    }
}

/// The SMS API's 201 answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SmsAccepted {
    pub id: String,
    pub client_ref: String,
}
