//! # sealpost-carriers
//!
//! The edge between Sealpost and the networks that reach a phone.
//!
//! **Owns:**
//! - [`Carrier`]: the trait the delivery workers call. An adapter declares what it [`Delivers`]:
//!   `Opaque` carries the sealed payload by reference, `Notice` sends neutral text only.
//! - [`RbmCarrier`]: Google RCS Business Messaging (REST v1): send (`agentMessages` with a stable
//!   `messageId`, so a resubmission is deduped), capability checks and revocation.
//! - [`SmsCarrier`]: a plain HTTP SMS API for neutral fallback notices (`client_ref` dedupes).
//! - [`oauth`]: RBM's OAuth access tokens from a service-account key (RS256 JWT bearer grant),
//!   cached, refreshed before they expire and once after a 401.
//! - [`classify`]: the one mapping from an HTTP answer to a [`CarrierOutcome`], shared by both
//!   adapters (2xx/409 acked, 429 throttled, 5xx transient, 401/403 auth failed, 404 not
//!   RCS-capable, other 4xx permanent).
//! - [`webhook`]: RBM receipt webhooks: `X-Goog-Signature` (HMAC-SHA512 with the client token),
//!   the Pub/Sub push envelope, the verification handshake.
//! - [`wire`]: the JSON shapes on the wire, shared with `sealpost-carrier-sim`.
//!
//! **Must not:** log or put in an error a full phone number, a bearer or access token, a
//! service-account key or assertion, an API key, a client token or a payload URL (presigned URLs are secrets): recipients appear masked
//! ([`mask_recipient`]), URLs not at all. It never fetches or reads payload bytes, never panics on
//! a carrier's answer (every failure is classified), and talks to no NATS, SQL or S3.

mod classify;
mod error;
mod http;
pub mod oauth;
mod rbm;
mod sms;
pub mod webhook;
pub mod wire;

use std::fmt;

pub use classify::{classify, parse_retry_after};
pub use error::{CarrierError, WebhookError};
pub use http::{http_client, mask_recipient};
pub use oauth::ServiceAccountKey;
pub use rbm::{RbmCarrier, RbmConfig, RbmCredentials};
pub use sealpost_domain::CarrierOutcome;
pub use sms::{SmsCarrier, SmsConfig};
use time::OffsetDateTime;

/// What a carrier puts on the phone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivers {
    /// Carries the sealed payload as is (by reference); the phone's app decrypts it.
    Opaque,
    /// A neutral notice or deep link only; never message content.
    Notice,
}

/// What one submission carries.
#[derive(Clone)]
pub enum Content {
    /// The ciphertext, by reference: a presigned GET URL (secret, never logged) plus its digest,
    /// and the message's device link (also a secret) when device links are enabled.
    Opaque {
        url: String,
        sha256: String,
        size: Option<u64>,
        link: Option<String>,
    },
    /// A neutral notice without message content.
    Notice { text: String },
}

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Content::Opaque {
                sha256, size, link, ..
            } => f
                .debug_struct("Opaque")
                .field("url", &"<redacted>")
                .field("sha256", sha256)
                .field("size", size)
                .field("link", &link.as_ref().map(|_| "<redacted>"))
                .finish(),
            Content::Notice { text } => f
                .debug_struct("Notice")
                .field("text_len", &text.len())
                .finish(),
        }
    }
}

/// One submission of one message to one carrier.
#[derive(Clone)]
pub struct Submission {
    /// Also the carrier message id: stable across retries, so the carrier dedupes resubmissions.
    pub message_id: String,
    /// Full E.164, e.g. `+447700900123`. Never logged: see [`mask_recipient`].
    pub recipient: String,
    pub content: Content,
    /// When the carrier should give up (RBM revokes an undelivered message then).
    pub expire_time: Option<OffsetDateTime>,
}

impl fmt::Debug for Submission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Submission")
            .field("message_id", &self.message_id)
            .field("recipient", &mask_recipient(&self.recipient))
            .field("content", &self.content)
            .field("expire_time", &self.expire_time)
            .finish()
    }
}

/// The answer to a revocation (RBM `DELETE agentMessages/<id>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeResult {
    Revoked,
    /// 404: already delivered, already revoked or unknown; or the carrier cannot revoke at all.
    NotRevocable,
    Failed {
        code: String,
    },
}

/// Whether a recipient can receive on this carrier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    Capable,
    NotCapable,
    /// The carrier could not tell (timeout, 5xx, throttled...): decide by policy, don't cache.
    Unknown {
        code: String,
    },
}

/// A network that reaches a phone. Implementations classify every failure into a
/// [`CarrierOutcome`] and never panic.
#[async_trait::async_trait]
pub trait Carrier: Send + Sync + fmt::Debug {
    /// `"rbm"` or `"sms"`: the name in events, metrics and `/v1/receipts/<carrier>`.
    fn name(&self) -> &str;
    fn delivers(&self) -> Delivers;
    async fn submit(&self, s: &Submission) -> CarrierOutcome;
    async fn capability(&self, recipient: &str) -> Capability;
    async fn revoke(&self, message_id: &str, recipient: &str) -> RevokeResult;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submission_debug_masks_recipient_and_hides_url() {
        let s = Submission {
            message_id: "m-1".into(),
            recipient: "+447700900123".into(),
            content: Content::Opaque {
                url: "https://s3.example/bucket/obj?X-Amz-Signature=deadbeef".into(),
                sha256: "ab".repeat(32),
                size: Some(10),
                link: Some("https://sp.example/v1/d/acme/m-1/secrettoken".into()),
            },
            expire_time: None,
        };
        let d = format!("{s:?}");
        assert!(!d.contains("447700900123"), "{d}");
        assert!(d.contains("+**********23"), "{d}");
        assert!(!d.contains("s3.example"), "{d}");
        assert!(!d.contains("deadbeef"), "{d}");
        assert!(!d.contains("secrettoken"), "{d}");
        assert!(d.contains("m-1"), "{d}");
        assert!(d.contains(&"ab".repeat(32)), "{d}");
    }

    #[test]
    fn notice_debug_hides_text() {
        let d = format!(
            "{:?}",
            Content::Notice {
                text: "You have a new secure message".into()
            }
        );
        assert!(!d.contains("secure message"), "{d}");
    }
}
