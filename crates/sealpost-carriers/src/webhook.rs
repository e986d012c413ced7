//! RBM webhooks: signature, envelope and events.
//!
//! RBM delivers agent events as Pub/Sub push requests to the agent's webhook:
//!
//! ```text
//! {"message": {"data": "<base64 of the event JSON>", "messageId": "<pubsub id>", "publishTime": "..."},
//!  "subscription": "projects/rbm-<agent>/subscriptions/rbm-agent-subscription"}
//! ```
//!
//! with `X-Goog-Signature: base64(HMAC-SHA512(key = client token, body))`. The event JSON is
//! `{"agentId", "senderPhoneNumber", "eventType", "eventId", "messageId", "sendTime"}`.
//! Registering a webhook first sends `{"clientToken": "...", "secret": "..."}`; the receiver
//! answers `{"secret": "<secret>"}` when the client token is its own.
//!
//! Delivery is at least once: the same event can arrive twice, and READ can come before
//! DELIVERED. Dedupe on `event_id`. The sender's phone number is never kept: [`RbmEvent`] has
//! no field for it.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::WebhookError;

type HmacSha512 = Hmac<Sha512>;

/// The header RBM signs its pushes with.
pub const SIGNATURE_HEADER: &str = "X-Goog-Signature";

fn mac(client_token: &str) -> HmacSha512 {
    // HMAC takes keys of any length; this never fails.
    match HmacSha512::new_from_slice(client_token.as_bytes()) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    }
}

/// A client token ready to check webhook signatures. The HMAC key schedule (the two SHA-512
/// blocks of the padded key) is computed once here instead of for every webhook; each check
/// starts from a copy of it. The same token also answers the registration handshake.
#[derive(Clone)]
pub struct WebhookKey {
    token: sealpost_domain::Secret,
    keyed: HmacSha512,
}

impl WebhookKey {
    pub fn new(client_token: sealpost_domain::Secret) -> Self {
        let keyed = mac(client_token.expose());
        Self {
            token: client_token,
            keyed,
        }
    }

    /// Checks `signature` (the `X-Goog-Signature` header) against `body`, in constant time.
    pub fn verify(&self, body: &[u8], signature: Option<&str>) -> Result<(), WebhookError> {
        let signature = signature
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or(WebhookError::Unsigned)?;
        let raw = STANDARD
            .decode(signature)
            .map_err(|_| WebhookError::BadSignature)?;
        let mut m = self.keyed.clone();
        m.update(body);
        m.verify_slice(&raw).map_err(|_| WebhookError::BadSignature)
    }

    /// Whether a registration handshake names this client token, compared in constant time.
    pub fn is_token(&self, client_token: &str) -> bool {
        use subtle::ConstantTimeEq as _;
        bool::from(
            client_token
                .as_bytes()
                .ct_eq(self.token.expose().as_bytes()),
        )
    }
}

impl fmt::Debug for WebhookKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookKey(<redacted>)")
    }
}

/// `X-Goog-Signature` for `body`: base64(HMAC-SHA512(key = client token, body)).
pub fn sign(body: &[u8], client_token: &str) -> String {
    let mut m = mac(client_token);
    m.update(body);
    STANDARD.encode(m.finalize().into_bytes())
}

/// What one webhook body is.
#[derive(Clone, PartialEq, Eq)]
pub enum Webhook {
    /// The registration handshake. Answer `{"secret": secret}` iff `client_token` is ours.
    Verification {
        client_token: String,
        secret: String,
    },
    Event(RbmEvent),
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Webhook::Verification { .. } => f
                .debug_struct("Verification")
                .field("client_token", &"<redacted>")
                .field("secret", &"<redacted>")
                .finish(),
            Webhook::Event(e) => f.debug_tuple("Event").field(e).finish(),
        }
    }
}

/// What became of a verified receipt handed to [`ApplyReceipt::apply_now`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppliedNow {
    /// Durable as the message's events, or it changes nothing (a duplicate, an ended message,
    /// an event that is not a receipt): answer 200, store nothing.
    Applied,
    /// It cannot be applied yet (no carrier ack recorded, message unknown here, store
    /// unavailable): store it raw for the receipts consumer before answering 200.
    Later,
}

/// Where a gateway hands a receipt whose signature it verified (the delivery crate's
/// `ReceiptApplier`). Defined here so that the gateway and the delivery roles share it without
/// depending on each other.
#[async_trait::async_trait]
pub trait ApplyReceipt: Send + Sync + std::fmt::Debug {
    async fn apply_now(&self, event: &RbmEvent) -> AppliedNow;
}

/// One agent event about one of our messages. Holds no phone number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbmEvent {
    /// Unique per event (stable across redeliveries): the dedup key.
    pub event_id: String,
    /// Our message id (the `messageId` we sent with).
    pub message_id: String,
    pub kind: RbmEventKind,
    pub send_time: Option<OffsetDateTime>,
    pub agent_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RbmEventKind {
    Delivered,
    Read,
    /// The message expired undelivered and RBM revoked it.
    TtlExpirationRevoked,
    /// The message expired and RBM could not revoke it (it may still be delivered).
    TtlExpirationRevokeFailed,
    /// Anything else (`IS_TYPING`, a user message as `USER_MESSAGE`...): not a receipt.
    Other(String),
}

impl RbmEventKind {
    pub fn from_wire(s: &str) -> Self {
        match s {
            "DELIVERED" => Self::Delivered,
            "READ" => Self::Read,
            "TTL_EXPIRATION_REVOKED" => Self::TtlExpirationRevoked,
            "TTL_EXPIRATION_REVOKE_FAILED" => Self::TtlExpirationRevokeFailed,
            other => Self::Other(other.to_owned()),
        }
    }

    pub fn as_wire(&self) -> &str {
        match self {
            Self::Delivered => "DELIVERED",
            Self::Read => "READ",
            Self::TtlExpirationRevoked => "TTL_EXPIRATION_REVOKED",
            Self::TtlExpirationRevokeFailed => "TTL_EXPIRATION_REVOKE_FAILED",
            Self::Other(s) => s,
        }
    }
}

/// The event JSON inside a push's `message.data`, as RBM sends it. `Debug` masks the number.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RbmEventWire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_phone_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_time: Option<String>,
}

impl fmt::Debug for RbmEventWire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RbmEventWire")
            .field("agent_id", &self.agent_id)
            .field(
                "sender_phone_number",
                &self
                    .sender_phone_number
                    .as_deref()
                    .map(crate::mask_recipient),
            )
            .field("event_type", &self.event_type)
            .field("event_id", &self.event_id)
            .field("message_id", &self.message_id)
            .field("send_time", &self.send_time)
            .finish()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PushMessage {
    data: String,
    message_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    publish_time: Option<String>,
}

#[derive(Serialize)]
struct Push {
    message: PushMessage,
    subscription: String,
}

/// Either body a webhook carries, read in one pass: RBM's verification handshake has
/// `clientToken` and `secret`, a Pub/Sub push has `message.data`. Unknown fields are ignored.
/// The handshake's two fields are read as any JSON value, so that a handshake with a wrong type
/// is refused as a handshake and not taken for a push.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Incoming {
    #[serde(default)]
    client_token: Option<serde_json::Value>,
    #[serde(default)]
    secret: Option<serde_json::Value>,
    #[serde(default)]
    message: Option<IncomingMessage>,
}

#[derive(Deserialize)]
struct IncomingMessage {
    #[serde(default)]
    data: Option<String>,
}

/// The answer to a verification handshake: `{"secret": "<secret>"}`.
pub fn verification_answer(secret: &str) -> Vec<u8> {
    serde_json::json!({ "secret": secret })
        .to_string()
        .into_bytes()
}

/// The handshake body RBM sends when a webhook is registered (for simulators and tests).
pub fn verification_body(client_token: &str, secret: &str) -> Vec<u8> {
    serde_json::json!({ "clientToken": client_token, "secret": secret })
        .to_string()
        .into_bytes()
}

/// Parses a webhook body (the signature is checked separately, first: see [`verify`]).
pub fn parse(body: &[u8]) -> Result<Webhook, WebhookError> {
    let incoming: Incoming = serde_json::from_slice(body).map_err(|e| {
        WebhookError::Malformed(if e.is_data() {
            "neither a verification request nor a Pub/Sub push"
        } else {
            "body is not JSON"
        })
    })?;
    if let Some(client_token) = incoming.client_token {
        return match (client_token, incoming.secret) {
            (serde_json::Value::String(client_token), Some(serde_json::Value::String(secret))) => {
                Ok(Webhook::Verification {
                    client_token,
                    secret,
                })
            }
            _ => Err(WebhookError::Malformed(
                "verification needs string clientToken and secret",
            )),
        };
    }
    let data = incoming
        .message
        .and_then(|m| m.data)
        .ok_or(WebhookError::Malformed(
            "not a Pub/Sub push: message.data is missing",
        ))?;
    let data = STANDARD
        .decode(data.trim())
        .map_err(|_| WebhookError::Malformed("message.data is not base64"))?;
    let wire: RbmEventWire = serde_json::from_slice(&data)
        .map_err(|_| WebhookError::Malformed("message.data is not an RBM event"))?;
    let message_id = wire
        .message_id
        .filter(|s| !s.is_empty())
        .ok_or(WebhookError::Malformed("event has no messageId"))?;
    let kind = match wire.event_type.as_deref() {
        Some(t) if !t.is_empty() => RbmEventKind::from_wire(t),
        // A user's message (text, file, suggestion response) has no eventType.
        _ => RbmEventKind::Other("USER_MESSAGE".into()),
    };
    let event_id = match wire.event_id.filter(|s| !s.is_empty()) {
        Some(id) => id,
        None if matches!(kind, RbmEventKind::Other(_)) => message_id.clone(),
        None => return Err(WebhookError::Malformed("receipt has no eventId")),
    };
    let send_time = match wire.send_time {
        None => None,
        Some(t) => Some(
            OffsetDateTime::parse(&t, &Rfc3339)
                .map_err(|_| WebhookError::Malformed("sendTime is not RFC 3339"))?,
        ),
    };
    Ok(Webhook::Event(RbmEvent {
        event_id,
        message_id,
        kind,
        send_time,
        agent_id: wire.agent_id,
    }))
}

/// The Pub/Sub push body carrying `event`, as RBM sends it (sign it with [`sign`]).
///
/// The Pub/Sub `messageId` is derived from the event id, so a redelivery of the same event is
/// byte-identical, as a Pub/Sub redelivery is.
pub fn event_envelope(event: &RbmEventWire) -> Vec<u8> {
    let data = serde_json::to_vec(event).unwrap_or_default();
    let digest = Sha256::digest(event.event_id.as_deref().unwrap_or_default().as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let pubsub_id = (u64::from_be_bytes(first) >> 11).to_string();
    let publish_time = event
        .send_time
        .clone()
        .or_else(|| OffsetDateTime::now_utc().format(&Rfc3339).ok());
    let agent = event.agent_id.as_deref().unwrap_or("agent");
    let agent = agent.split('@').next().unwrap_or(agent);
    let push = Push {
        message: PushMessage {
            data: STANDARD.encode(data),
            message_id: pubsub_id,
            publish_time,
        },
        subscription: format!("projects/rbm-{agent}/subscriptions/rbm-agent-subscription"),
    };
    serde_json::to_vec(&push).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A one-off check, as a receiver holding a [`WebhookKey`] for this token makes it.
    fn verify(body: &[u8], signature: Option<&str>, token: &str) -> Result<(), WebhookError> {
        WebhookKey::new(sealpost_domain::Secret::new(token)).verify(body, signature)
    }

    const TOKEN: &str = "client-token-123";

    fn wire(kind: &str) -> RbmEventWire {
        RbmEventWire {
            agent_id: Some("acme@rbm.goog".into()),
            sender_phone_number: Some("+447700900123".into()),
            event_type: Some(kind.into()),
            event_id: Some(format!("evt-{kind}")),
            message_id: Some("msg-1".into()),
            send_time: Some("2026-01-02T03:04:05.123456Z".into()),
        }
    }

    #[test]
    fn signature_matches_a_known_vector() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let sig = sign(b"what do ya want for nothing?", "Jefe");
        let raw = STANDARD.decode(&sig).unwrap();
        assert_eq!(
            hex_lower(&raw),
            "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"
        );
    }

    fn hex_lower(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn given_one_key_when_it_checks_many_webhooks_then_each_check_starts_afresh() {
        let key = WebhookKey::new(sealpost_domain::Secret::new(TOKEN));
        let a = event_envelope(&wire("DELIVERED"));
        let b = event_envelope(&wire("READ"));
        let (sig_a, sig_b) = (sign(&a, TOKEN), sign(&b, TOKEN));
        // A forged one in between leaves nothing behind for the next check.
        assert_eq!(key.verify(&a, Some(&sig_a)), Ok(()));
        assert_eq!(
            key.verify(&b, Some(&sig_a)),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(key.verify(&b, Some(&sig_b)), Ok(()));
        assert_eq!(key.verify(&a, Some(&sig_a)), Ok(()));
        assert_eq!(key.verify(&a, None), Err(WebhookError::Unsigned));
        // The RFC 4231 vector again, through a kept key.
        let jefe = WebhookKey::new(sealpost_domain::Secret::new("Jefe"));
        let data = b"what do ya want for nothing?";
        assert_eq!(jefe.verify(data, Some(&sign(data, "Jefe"))), Ok(()));
        assert!(key.is_token(TOKEN));
        assert!(!key.is_token("other-token"));
        assert!(!key.is_token(&TOKEN[..TOKEN.len() - 1]));
        assert_eq!(format!("{key:?}"), "WebhookKey(<redacted>)");
    }

    #[test]
    fn verify_accepts_good_and_rejects_the_rest() {
        let body = event_envelope(&wire("DELIVERED"));
        let sig = sign(&body, TOKEN);
        assert_eq!(verify(&body, Some(&sig), TOKEN), Ok(()));
        assert_eq!(verify(&body, None, TOKEN), Err(WebhookError::Unsigned));
        assert_eq!(
            verify(&body, Some("  "), TOKEN),
            Err(WebhookError::Unsigned)
        );
        assert_eq!(
            verify(&body, Some(&sig), "other-token"),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            verify(&body, Some("not base64!"), TOKEN),
            Err(WebhookError::BadSignature)
        );
        let forged = sign(&body, "attacker-token");
        assert_eq!(
            verify(&body, Some(&forged), TOKEN),
            Err(WebhookError::BadSignature)
        );
        let mut tampered = body.clone();
        let last = tampered.len() - 2;
        tampered[last] ^= 1;
        assert_eq!(
            verify(&tampered, Some(&sig), TOKEN),
            Err(WebhookError::BadSignature)
        );
        // A truncated MAC must not verify either.
        let short = STANDARD.encode(&STANDARD.decode(&sig).unwrap()[..32]);
        assert_eq!(
            verify(&body, Some(&short), TOKEN),
            Err(WebhookError::BadSignature)
        );
    }

    #[test]
    fn parses_each_event_type() {
        for (wire_kind, kind) in [
            ("DELIVERED", RbmEventKind::Delivered),
            ("READ", RbmEventKind::Read),
            ("TTL_EXPIRATION_REVOKED", RbmEventKind::TtlExpirationRevoked),
            (
                "TTL_EXPIRATION_REVOKE_FAILED",
                RbmEventKind::TtlExpirationRevokeFailed,
            ),
            ("IS_TYPING", RbmEventKind::Other("IS_TYPING".into())),
        ] {
            let body = event_envelope(&wire(wire_kind));
            let Webhook::Event(e) = parse(&body).unwrap() else {
                panic!("not an event")
            };
            assert_eq!(e.kind, kind);
            assert_eq!(e.kind.as_wire(), wire_kind);
            assert_eq!(e.event_id, format!("evt-{wire_kind}"));
            assert_eq!(e.message_id, "msg-1");
            assert_eq!(e.agent_id.as_deref(), Some("acme@rbm.goog"));
            assert_eq!(
                e.send_time,
                Some(time::macros::datetime!(2026-01-02 03:04:05.123456 UTC))
            );
            let d = format!("{e:?}");
            assert!(!d.contains("447700900123"), "{d}");
        }
    }

    #[test]
    fn envelope_has_the_pubsub_shape() {
        let body = event_envelope(&wire("READ"));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v["subscription"],
            "projects/rbm-acme/subscriptions/rbm-agent-subscription"
        );
        assert!(v["message"]["messageId"]
            .as_str()
            .unwrap()
            .bytes()
            .all(|b| b.is_ascii_digit()));
        assert_eq!(v["message"]["publishTime"], "2026-01-02T03:04:05.123456Z");
        let data = STANDARD
            .decode(v["message"]["data"].as_str().unwrap())
            .unwrap();
        let inner: serde_json::Value = serde_json::from_slice(&data).unwrap();
        assert_eq!(inner["eventType"], "READ");
        assert_eq!(inner["senderPhoneNumber"], "+447700900123");
        // Redelivery is byte-identical.
        assert_eq!(body, event_envelope(&wire("READ")));
    }

    #[test]
    fn user_messages_are_other() {
        let w = RbmEventWire {
            event_type: None,
            event_id: None,
            ..wire("x")
        };
        let Webhook::Event(e) = parse(&event_envelope(&w)).unwrap() else {
            panic!()
        };
        assert_eq!(e.kind, RbmEventKind::Other("USER_MESSAGE".into()));
        assert_eq!(e.event_id, "msg-1");
    }

    #[test]
    fn malformed_bodies() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not json".to_vec(), "not JSON"),
            (b"{}".to_vec(), "Pub/Sub"),
            (br#"{"message":{"data":"%%%"}}"#.to_vec(), "base64"),
            (
                format!(
                    r#"{{"message":{{"data":"{}"}}}}"#,
                    STANDARD.encode(b"[1,2]")
                )
                .into_bytes(),
                "RBM event",
            ),
            (
                event_envelope(&RbmEventWire {
                    message_id: None,
                    ..wire("DELIVERED")
                }),
                "messageId",
            ),
            (
                event_envelope(&RbmEventWire {
                    event_id: None,
                    ..wire("DELIVERED")
                }),
                "eventId",
            ),
            (
                event_envelope(&RbmEventWire {
                    send_time: Some("yesterday +447700900123".into()),
                    ..wire("DELIVERED")
                }),
                "sendTime",
            ),
            (
                br#"{"clientToken": 5, "secret": "s"}"#.to_vec(),
                "verification",
            ),
            (br#"{"clientToken": "t"}"#.to_vec(), "verification"),
            (br#"{"message": "data"}"#.to_vec(), "Pub/Sub"),
            (br#"{"message": {"data": 5}}"#.to_vec(), "Pub/Sub"),
            (br#"{"message": {}}"#.to_vec(), "Pub/Sub"),
        ];
        for (body, needle) in cases {
            let err = parse(&body).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, WebhookError::Malformed(_)), "{msg}");
            assert!(msg.contains(needle), "{msg} should mention {needle}");
            assert!(!msg.contains("447700900123"), "{msg}");
        }
    }

    #[test]
    fn verification_handshake() {
        let body = verification_body(TOKEN, "s3cr3t");
        let parsed = parse(&body).unwrap();
        assert_eq!(
            parsed,
            Webhook::Verification {
                client_token: TOKEN.into(),
                secret: "s3cr3t".into()
            }
        );
        let d = format!("{parsed:?}");
        assert!(!d.contains(TOKEN) && !d.contains("s3cr3t"), "{d}");
        let answer: serde_json::Value =
            serde_json::from_slice(&verification_answer("s3cr3t")).unwrap();
        assert_eq!(answer, serde_json::json!({"secret": "s3cr3t"}));
    }

    #[test]
    fn wire_debug_masks_the_sender() {
        let d = format!("{:?}", wire("READ"));
        assert!(!d.contains("447700900123"), "{d}");
        assert!(d.contains("+**********23"), "{d}");
    }
}
