//! The public error contract: `{"error":{"code","message"[,"retry_after_ms"]}}`, the same on NATS
//! and HTTP. Messages say what was wrong and what to do; they never contain payload bytes, keys,
//! API keys or full phone numbers.

use serde::Serialize;

/// Stable, machine-readable error codes (`schemas/commands/error.v1.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidRequest,
    Unauthorized,
    TenantMismatch,
    PayloadNotFound,
    DigestMismatch,
    IdempotencyConflict,
    RateLimited,
    QuotaExceeded,
    Unavailable,
    /// No message with this id for this tenant (status, cancel).
    NotFound,
    /// The message is past the point where this command applies (cancel after submission).
    InvalidState,
    /// The send is sealed to a key the key directory holds as revoked or marked bad, or does
    /// not hold for that recipient.
    KeyStale,
    /// A device link whose message has expired, ended undelivered or been purged.
    Expired,
}

impl ErrorCode {
    /// Every code, for exhaustive checks (the error schema lists exactly these).
    pub const ALL: [ErrorCode; 13] = [
        Self::InvalidRequest,
        Self::Unauthorized,
        Self::TenantMismatch,
        Self::PayloadNotFound,
        Self::DigestMismatch,
        Self::IdempotencyConflict,
        Self::RateLimited,
        Self::QuotaExceeded,
        Self::Unavailable,
        Self::NotFound,
        Self::InvalidState,
        Self::KeyStale,
        Self::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::Unauthorized => "unauthorized",
            Self::TenantMismatch => "tenant_mismatch",
            Self::PayloadNotFound => "payload_not_found",
            Self::DigestMismatch => "digest_mismatch",
            Self::IdempotencyConflict => "idempotency_conflict",
            Self::RateLimited => "rate_limited",
            Self::QuotaExceeded => "quota_exceeded",
            Self::Unavailable => "unavailable",
            Self::NotFound => "not_found",
            Self::InvalidState => "invalid_state",
            Self::KeyStale => "key_stale",
            Self::Expired => "expired",
        }
    }

    /// The HTTP status; also sent as `Nats-Service-Error-Code` on NATS.
    pub fn http_status(self) -> u16 {
        match self {
            Self::InvalidRequest => 400,
            Self::Unauthorized => 401,
            Self::TenantMismatch => 403,
            Self::NotFound => 404,
            Self::IdempotencyConflict | Self::InvalidState | Self::KeyStale => 409,
            Self::PayloadNotFound | Self::DigestMismatch => 422,
            Self::RateLimited | Self::QuotaExceeded => 429,
            Self::Unavailable => 503,
            Self::Expired => 410,
        }
    }
}

/// An error answer. Build it with a code and a message that tells the caller what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}", code = .code.as_str())]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// For `rate_limited` (and `unavailable` when known): when to try again.
    pub retry_after_ms: Option<u64>,
    /// HTTP only: 413 instead of 400 for an over-sized body.
    pub too_large: bool,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: ErrorCode,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_ms: None,
            too_large: false,
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    pub fn too_large(what: &str, limit: usize) -> Self {
        Self {
            too_large: true,
            ..Self::invalid(format!(
                "{what} is larger than {limit} bytes; send a smaller body (ciphertext goes to POST /v1/blobs, not into the command)"
            ))
        }
    }

    /// An upload over the configured size limit (HTTP 413).
    pub fn too_large_blob(message: impl Into<String>) -> Self {
        Self {
            too_large: true,
            ..Self::invalid(message)
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            retry_after_ms: Some(1000),
            ..Self::new(ErrorCode::Unavailable, message)
        }
    }

    pub fn with_retry_after_ms(mut self, ms: u64) -> Self {
        self.retry_after_ms = Some(ms);
        self
    }

    pub fn http_status(&self) -> u16 {
        if self.too_large {
            413
        } else {
            self.code.http_status()
        }
    }

    /// The JSON error body.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&Body {
            error: Inner {
                code: self.code,
                message: &self.message,
                retry_after_ms: self.retry_after_ms,
            },
        })
        .unwrap_or_else(|_| {
            br#"{"error":{"code":"unavailable","message":"error encoding failed"}}"#.to_vec()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_has_code_message_and_retry_after_only_when_set() {
        let e = ApiError::new(ErrorCode::RateLimited, "slow down").with_retry_after_ms(250);
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(v["error"]["code"], "rate_limited");
        assert_eq!(v["error"]["message"], "slow down");
        assert_eq!(v["error"]["retry_after_ms"], 250);
        let v: serde_json::Value =
            serde_json::from_slice(&ApiError::invalid("x").to_json()).unwrap();
        assert!(v["error"].get("retry_after_ms").is_none());
    }

    #[test]
    fn codes_serialize_as_their_names() {
        for c in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
        }
        assert_eq!(ApiError::too_large("the command", 10).http_status(), 413);
        assert_eq!(ApiError::invalid("x").http_status(), 400);
    }
}
