//! The send command v1 on the wire (`schemas/commands/send.v1.json`) and every rule it must pass
//! before anything is stored. Pure: no IO here; the object check happens in [`crate::Gateway`].

use std::time::Duration;

use sealpost_domain::events::{EncryptionMetadata, Fallback, FallbackChannel, MessageType};
use sealpost_domain::{Recipient, Sha256Hex, TenantId};
use serde::Deserialize;

use crate::error::{ApiError, ErrorCode};

/// Largest command body accepted (the ciphertext is not in it, only its reference).
pub const MAX_COMMAND_BYTES: usize = 16 * 1024;
pub const MAX_TTL_SECONDS: u64 = 30 * 24 * 3600;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    idempotency_key: Option<String>,
    recipient: String,
    encrypted_payload_reference: String,
    payload_sha256: Option<String>,
    encryption_metadata: WireEncryption,
    metadata: WireMetadata,
    ttl_seconds: Option<u64>,
    fallback: Option<WireFallback>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEncryption {
    mls_version: String,
    cipher: String,
    key_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireMetadata {
    tenant_id: String,
    message_type: String,
    correlation_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireFallback {
    channel: String,
    notice_template: String,
}

/// A send that passed every rule that needs no IO.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSend {
    pub idempotency_key: String,
    pub recipient: Recipient,
    pub reference: String,
    pub payload_sha256: Option<Sha256Hex>,
    pub encryption: EncryptionMetadata,
    pub message_type: MessageType,
    pub correlation_id: Option<String>,
    pub ttl: Option<Duration>,
    pub fallback: Option<Fallback>,
}

/// A JSON error as a message that names the problem without echoing values: serde's messages for
/// wrong types and values quote the input, which could be a phone number.
pub fn json_error(what: &str, e: &serde_json::Error) -> ApiError {
    let text = e.to_string();
    let detail = if text.starts_with("missing field") || text.starts_with("unknown field") {
        text
    } else if e.is_syntax() || e.is_eof() {
        format!(
            "it is not valid JSON (line {}, column {})",
            e.line(),
            e.column()
        )
    } else {
        format!(
            "a field has the wrong type or value (line {}, column {})",
            e.line(),
            e.column()
        )
    };
    ApiError::invalid(format!(
        "{what}: {detail}; see schemas/commands/send.v1.json"
    ))
}

/// A JSON body must be an object: serde would also read a struct from a JSON array, positionally.
pub fn require_object(what: &str, body: &[u8]) -> Result<(), ApiError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Ok(()),
        _ => Err(ApiError::invalid(format!(
            "{what}: the body must be a JSON object; see schemas/commands/"
        ))),
    }
}

fn check_len(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.is_empty() || value.len() > max {
        return Err(ApiError::invalid(format!(
            "{field} must be 1 to {max} characters (got {})",
            value.len()
        )));
    }
    Ok(())
}

fn printable_ascii(s: &str) -> bool {
    s.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

/// Parses and checks a send command for `tenant`. `header_key` is HTTP's `Idempotency-Key`.
pub fn validate(
    tenant: &TenantId,
    body: &[u8],
    header_key: Option<&str>,
) -> Result<ValidSend, ApiError> {
    if body.len() > MAX_COMMAND_BYTES {
        return Err(ApiError::too_large("the send command", MAX_COMMAND_BYTES));
    }
    require_object("invalid send command", body)?;
    let w: Wire =
        serde_json::from_slice(body).map_err(|e| json_error("invalid send command", &e))?;

    let idempotency_key = match (w.idempotency_key, header_key) {
        (Some(b), Some(h)) if b != h => {
            return Err(ApiError::invalid(
                "the Idempotency-Key header and the body's idempotency_key differ; send one or make them equal",
            ))
        }
        (Some(k), _) => k,
        (None, Some(h)) => h.to_owned(),
        (None, None) => {
            return Err(ApiError::invalid(
                "missing field `idempotency_key` (or, over HTTP, an Idempotency-Key header)",
            ))
        }
    };
    check_len("idempotency_key", &idempotency_key, 128)?;
    if !printable_ascii(&idempotency_key) || idempotency_key.trim() != idempotency_key {
        return Err(ApiError::invalid(
            "idempotency_key must be printable ASCII without leading or trailing spaces",
        ));
    }

    if w.metadata.tenant_id != tenant.as_str() {
        return Err(ApiError::new(
            ErrorCode::TenantMismatch,
            format!(
                "metadata.tenant_id does not match the tenant of this request ('{}'); send it as '{}'",
                tenant.as_str(),
                tenant.as_str()
            ),
        ));
    }

    let recipient = Recipient::new(w.recipient).map_err(|e| ApiError::invalid(e.to_string()))?;

    check_len(
        "encrypted_payload_reference",
        &w.encrypted_payload_reference,
        1024,
    )?;
    let payload_sha256 = w
        .payload_sha256
        .map(|d| Sha256Hex::new(d).map_err(|e| ApiError::invalid(e.to_string())))
        .transpose()?;

    let e = w.encryption_metadata;
    for (field, v) in [
        ("encryption_metadata.mls_version", &e.mls_version),
        ("encryption_metadata.cipher", &e.cipher),
        ("encryption_metadata.key_id", &e.key_id),
    ] {
        check_len(field, v, 128)?;
        if !printable_ascii(v) {
            return Err(ApiError::invalid(format!(
                "{field} must be printable ASCII"
            )));
        }
    }

    let message_type = match w.metadata.message_type.as_str() {
        "transactional" => MessageType::Transactional,
        "promotional" => MessageType::Promotional,
        _ => {
            return Err(ApiError::invalid(
                "metadata.message_type must be 'transactional' or 'promotional'",
            ))
        }
    };
    if let Some(c) = &w.metadata.correlation_id {
        check_len("metadata.correlation_id", c, 128)?;
        if !c
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
        {
            return Err(ApiError::invalid(
                "metadata.correlation_id may only contain A-Z, a-z, 0-9, '_', '.', ':' and '-'",
            ));
        }
    }

    let ttl = match w.ttl_seconds {
        None => None,
        Some(s) if (1..=MAX_TTL_SECONDS).contains(&s) => Some(Duration::from_secs(s)),
        Some(_) => {
            return Err(ApiError::invalid(format!(
                "ttl_seconds must be between 1 and {MAX_TTL_SECONDS}"
            )))
        }
    };

    let fallback = match w.fallback {
        None => None,
        Some(f) => {
            let channel = match f.channel.as_str() {
                "sms" => FallbackChannel::Sms,
                "in_app" => FallbackChannel::InApp,
                _ => {
                    return Err(ApiError::invalid(
                        "fallback.channel must be 'sms' or 'in_app'",
                    ))
                }
            };
            if f.notice_template.is_empty()
                || f.notice_template.len() > 64
                || !f
                    .notice_template
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(ApiError::invalid(
                    "fallback.notice_template must be 1 to 64 characters of a-z, 0-9 and '_'",
                ));
            }
            Some(Fallback {
                channel,
                notice_template: f.notice_template,
            })
        }
    };

    Ok(ValidSend {
        idempotency_key,
        recipient,
        reference: w.encrypted_payload_reference,
        payload_sha256,
        encryption: EncryptionMetadata {
            mls_version: e.mls_version,
            cipher: e.cipher,
            key_id: e.key_id,
        },
        message_type,
        correlation_id: w.metadata.correlation_id,
        ttl,
        fallback,
    })
}

/// `{"message_id": "..."}`, the body of cancel and status.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageIdBody {
    pub message_id: String,
}

pub fn parse_message_id_body(body: &[u8]) -> Result<sealpost_domain::MessageId, ApiError> {
    if body.len() > 1024 {
        return Err(ApiError::too_large("the request", 1024));
    }
    require_object("send {\"message_id\": \"...\"}", body)?;
    let b: MessageIdBody = serde_json::from_slice(body).map_err(|e| {
        let text = e.to_string();
        if text.starts_with("missing field") || text.starts_with("unknown field") {
            ApiError::invalid(format!("{text}; send {{\"message_id\": \"...\"}}"))
        } else {
            ApiError::invalid("send {\"message_id\": \"...\"} as JSON")
        }
    })?;
    parse_message_id(&b.message_id)
}

pub fn parse_message_id(s: &str) -> Result<sealpost_domain::MessageId, ApiError> {
    sealpost_domain::MessageId::new(s).map_err(|e| ApiError::invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn tenant() -> TenantId {
        TenantId::new("acme-corp").unwrap()
    }

    fn good() -> Value {
        json!({
            "idempotency_key": "c14b4d6f-1",
            "recipient": "+15551234567",
            "encrypted_payload_reference": "s3://sealpost/tenants/acme-corp/abc123.enc",
            "payload_sha256": "a".repeat(64),
            "encryption_metadata": {"mls_version": "1", "cipher": "XChaCha20-Poly1305", "key_id": "user-public-key-v2"},
            "metadata": {"tenant_id": "acme-corp", "message_type": "transactional", "correlation_id": "txn-0001"},
            "ttl_seconds": 3600,
            "fallback": {"channel": "sms", "notice_template": "secure_message_waiting"}
        })
    }

    fn check(v: &Value) -> Result<ValidSend, ApiError> {
        validate(&tenant(), &serde_json::to_vec(v).unwrap(), None)
    }

    #[test]
    fn a_json_array_is_refused_even_when_its_items_would_fill_the_fields_in_order() {
        // serde reads a struct from an array positionally; the contract is an object.
        let g = good();
        let in_field_order = [
            "idempotency_key",
            "recipient",
            "encrypted_payload_reference",
            "payload_sha256",
            "encryption_metadata",
            "metadata",
            "ttl_seconds",
            "fallback",
        ];
        let fields: Vec<Value> = in_field_order.iter().map(|k| g[*k].clone()).collect();
        let array = serde_json::to_vec(&Value::Array(fields)).unwrap();
        // Without the object check serde would take it.
        assert!(serde_json::from_slice::<Wire>(&array).is_ok());
        let e = validate(&tenant(), &array, None).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert!(e.message.contains("JSON object"), "{e}");
        let e = parse_message_id_body(br#"["68c00923-06be-558f-b48d-68a87a8e3d79"]"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert!(parse_message_id_body(br#" {"message_id": "m-1"}"#).is_ok());
    }

    fn with(path: &[&str], value: Value) -> Value {
        let mut v = good();
        let mut cur = &mut v;
        for p in &path[..path.len() - 1] {
            cur = cur.get_mut(*p).unwrap();
        }
        cur[path[path.len() - 1]] = value;
        v
    }

    fn without(path: &[&str]) -> Value {
        let mut v = good();
        let mut cur = &mut v;
        for p in &path[..path.len() - 1] {
            cur = cur.get_mut(*p).unwrap();
        }
        cur.as_object_mut().unwrap().remove(path[path.len() - 1]);
        v
    }

    #[test]
    fn the_contract_example_is_valid() {
        let s = check(&good()).unwrap();
        assert_eq!(s.idempotency_key, "c14b4d6f-1");
        assert_eq!(s.ttl, Some(Duration::from_secs(3600)));
        assert_eq!(s.message_type, MessageType::Transactional);
        assert!(check(&without(&["fallback"])).unwrap().fallback.is_none());
        assert!(check(&without(&["payload_sha256"]))
            .unwrap()
            .payload_sha256
            .is_none());
    }

    /// Every rule, with the code it answers and a word the message must contain.
    #[test]
    fn every_rule_answers_its_code_and_says_what_to_fix() {
        let long = "x".repeat(129);
        let cases: Vec<(&str, Value, ErrorCode, &str)> = vec![
            (
                "missing recipient",
                without(&["recipient"]),
                ErrorCode::InvalidRequest,
                "recipient",
            ),
            (
                "missing metadata",
                without(&["metadata"]),
                ErrorCode::InvalidRequest,
                "metadata",
            ),
            (
                "missing key",
                without(&["idempotency_key"]),
                ErrorCode::InvalidRequest,
                "idempotency_key",
            ),
            (
                "unknown field",
                with(&["plaintext"], json!("hi")),
                ErrorCode::InvalidRequest,
                "plaintext",
            ),
            (
                "long key",
                with(&["idempotency_key"], json!(long)),
                ErrorCode::InvalidRequest,
                "idempotency_key",
            ),
            (
                "key with spaces",
                with(&["idempotency_key"], json!(" k ")),
                ErrorCode::InvalidRequest,
                "idempotency_key",
            ),
            (
                "long correlation",
                with(&["metadata", "correlation_id"], json!(long)),
                ErrorCode::InvalidRequest,
                "correlation_id",
            ),
            (
                "bad correlation",
                with(&["metadata", "correlation_id"], json!("a b")),
                ErrorCode::InvalidRequest,
                "correlation_id",
            ),
            (
                "long key id",
                with(&["encryption_metadata", "key_id"], json!(long)),
                ErrorCode::InvalidRequest,
                "key_id",
            ),
            (
                "long reference",
                with(
                    &["encrypted_payload_reference"],
                    json!(format!("s3://b/{}", "x".repeat(1100))),
                ),
                ErrorCode::InvalidRequest,
                "encrypted_payload_reference",
            ),
            (
                "not E.164",
                with(&["recipient"], json!("5551234567")),
                ErrorCode::InvalidRequest,
                "E.164",
            ),
            (
                "E.164 too short",
                with(&["recipient"], json!("+1555")),
                ErrorCode::InvalidRequest,
                "E.164",
            ),
            (
                "recipient as number",
                with(&["recipient"], json!(15551234567u64)),
                ErrorCode::InvalidRequest,
                "wrong type",
            ),
            (
                "tenant mismatch",
                with(&["metadata", "tenant_id"], json!("other")),
                ErrorCode::TenantMismatch,
                "tenant",
            ),
            (
                "bad digest",
                with(&["payload_sha256"], json!("XYZ")),
                ErrorCode::InvalidRequest,
                "payload_sha256",
            ),
            (
                "bad type",
                with(&["metadata", "message_type"], json!("spam")),
                ErrorCode::InvalidRequest,
                "message_type",
            ),
            (
                "zero ttl",
                with(&["ttl_seconds"], json!(0)),
                ErrorCode::InvalidRequest,
                "ttl_seconds",
            ),
            (
                "long ttl",
                with(&["ttl_seconds"], json!(MAX_TTL_SECONDS + 1)),
                ErrorCode::InvalidRequest,
                "ttl_seconds",
            ),
            (
                "bad channel",
                with(&["fallback", "channel"], json!("email")),
                ErrorCode::InvalidRequest,
                "fallback.channel",
            ),
            (
                "bad template",
                with(&["fallback", "notice_template"], json!("Hello there")),
                ErrorCode::InvalidRequest,
                "notice_template",
            ),
        ];
        for (name, body, code, word) in cases {
            let e = check(&body).expect_err(name);
            assert_eq!(e.code, code, "{name}: {e}");
            assert!(
                e.message.contains(word),
                "{name}: '{}' lacks '{word}'",
                e.message
            );
            // The number this case sent (valid or not), digits only, is not echoed.
            let sent = match &body["recipient"] {
                Value::String(r) => r.trim_start_matches('+').to_owned(),
                Value::Number(n) => n.to_string(),
                _ => continue,
            };
            assert!(!e.message.contains(&sent), "{name}: number {sent} echoed");
        }
    }

    #[test]
    fn malformed_json_and_oversize_bodies_are_invalid_requests() {
        let e = validate(&tenant(), b"{\"recipient\": ", None).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
        let big = vec![b' '; MAX_COMMAND_BYTES + 1];
        let e = validate(&tenant(), &big, None).unwrap_err();
        assert_eq!(e.http_status(), 413);
    }

    #[test]
    fn the_idempotency_header_may_replace_the_field_but_not_contradict_it() {
        let body = serde_json::to_vec(&without(&["idempotency_key"])).unwrap();
        let s = validate(&tenant(), &body, Some("from-header")).unwrap();
        assert_eq!(s.idempotency_key, "from-header");
        let body = serde_json::to_vec(&good()).unwrap();
        assert_eq!(
            validate(&tenant(), &body, Some("c14b4d6f-1"))
                .unwrap()
                .idempotency_key,
            "c14b4d6f-1"
        );
        let e = validate(&tenant(), &body, Some("other")).unwrap_err();
        assert!(e.message.contains("differ"));
    }

    #[test]
    fn message_id_bodies_are_checked() {
        assert!(parse_message_id_body(br#"{"message_id":"abc-1"}"#).is_ok());
        for bad in [&b"{}"[..], b"[]", br#"{"message_id":"a b"}"#, b"nope"] {
            assert_eq!(
                parse_message_id_body(bad).unwrap_err().code,
                ErrorCode::InvalidRequest
            );
        }
    }
}
