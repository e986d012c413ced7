//! Identifiers and the values that travel with a message.
//!
//! Tenant ids and message ids become NATS subject tokens, so both are restricted to
//! `[A-Za-z0-9_-]{1,64}`. A recipient is an E.164 number whose `Debug` and `Display` mask all but
//! the last two digits, so it can be logged safely.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Why an identifier or value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{field} must be 1 to 64 characters of A-Z, a-z, 0-9, '_' or '-'")]
    NotTokenSafe { field: &'static str },
    #[error("recipient must be an E.164 number: '+' followed by 8 to 15 digits, no leading zero")]
    NotE164,
    #[error("payload_sha256 must be 64 lowercase hex characters")]
    BadDigest,
}

fn token_safe(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

macro_rules! token_id {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                if token_safe(&s) {
                    Ok(Self(s))
                } else {
                    Err(IdError::NotTokenSafe { field: $field })
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

token_id!(
    /// A tenant: one enterprise sender. Token-safe, because it is a subject token.
    TenantId,
    "tenant_id"
);
token_id!(
    /// A message id, derived from (tenant, idempotency key) by [`MessageId::derive`].
    MessageId,
    "message_id"
);

/// Namespace for the UUIDv5 message ids. Fixed forever: changing it changes every message id.
const MESSAGE_ID_NAMESPACE: Uuid = Uuid::from_bytes([
    0x5e, 0xa1, 0x90, 0x57, 0x1d, 0x3c, 0x4b, 0x8e, 0x9a, 0x61, 0x0c, 0x2f, 0x73, 0x44, 0xd5, 0x10,
]);

impl MessageId {
    /// The message id of (tenant, idempotency key): a UUIDv5, so the same pair always maps to the
    /// same aggregate and a resent command finds the original message.
    pub fn derive(tenant: &TenantId, idempotency_key: &str) -> MessageId {
        let mut name = Vec::with_capacity(tenant.0.len() + 1 + idempotency_key.len());
        name.extend_from_slice(tenant.0.as_bytes());
        name.push(0);
        name.extend_from_slice(idempotency_key.as_bytes());
        MessageId(
            Uuid::new_v5(&MESSAGE_ID_NAMESPACE, &name)
                .hyphenated()
                .to_string(),
        )
    }
}

/// The aggregate id cqrs-es sees: `<tenant>.<message_id>`, which is also the subject infix of
/// the aggregate's events. Both halves are token-safe, so the dot is unambiguous.
pub fn aggregate_id(tenant: &TenantId, message_id: &MessageId) -> String {
    format!("{}.{}", tenant.0, message_id.0)
}

/// Splits an aggregate id made by [`aggregate_id`].
pub fn parse_aggregate_id(id: &str) -> Result<(TenantId, MessageId), IdError> {
    let (t, m) = id.split_once('.').ok_or(IdError::NotTokenSafe {
        field: "aggregate_id",
    })?;
    Ok((TenantId::new(t)?, MessageId::new(m)?))
}

/// An E.164 phone number. Never printed in full: `Debug` and `Display` show `+*********67`.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Recipient(String);

impl Recipient {
    pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        let digits = s.strip_prefix('+').ok_or(IdError::NotE164)?;
        let ok = (8..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0');
        if ok {
            Ok(Self(s))
        } else {
            Err(IdError::NotE164)
        }
    }

    /// The full number, for the carrier adapter only. Everything else prints the masked form.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `+` then one `*` per hidden digit, then the last two digits.
    pub fn masked(&self) -> String {
        let digits = &self.0[1..];
        let shown = &digits[digits.len() - 2..];
        format!("+{}{}", "*".repeat(digits.len() - 2), shown)
    }
}

impl TryFrom<String> for Recipient {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::new(s)
    }
}

impl From<Recipient> for String {
    fn from(r: Recipient) -> String {
        r.0
    }
}

impl fmt::Debug for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Recipient({})", self.masked())
    }
}

impl fmt::Display for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// A SHA-256 digest (of the ciphertext, or of a request), lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sha256Hex(String);

impl Sha256Hex {
    pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Self(s))
        } else {
            Err(IdError::BadDigest)
        }
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest;
        Self::from_digest(&sha2::Sha256::digest(bytes))
    }

    /// A finished SHA-256 digest (32 bytes) as hex.
    pub fn from_digest(digest: &[u8]) -> Self {
        Self(hex::encode(digest))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Sha256Hex {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::new(s)
    }
}

impl From<Sha256Hex> for String {
    fn from(d: Sha256Hex) -> String {
        d.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_ids_accept_safe_and_refuse_unsafe() {
        assert!(TenantId::new("acme-corp_1").is_ok());
        for bad in ["", "a.b", "a b", "a*", "a>", &"x".repeat(65)] {
            assert_eq!(
                TenantId::new(bad),
                Err(IdError::NotTokenSafe { field: "tenant_id" }),
                "{bad:?}"
            );
        }
        assert!(TenantId::new("x".repeat(64)).is_ok());
    }

    #[test]
    fn message_id_is_stable_per_tenant_and_key() {
        let acme = TenantId::new("acme").unwrap();
        let other = TenantId::new("other").unwrap();
        let a = MessageId::derive(&acme, "k1");
        assert_eq!(a, MessageId::derive(&acme, "k1"));
        assert_ne!(a, MessageId::derive(&acme, "k2"));
        assert_ne!(a, MessageId::derive(&other, "k1"));
        // The separator keeps ("ab","c") and ("a","bc") apart.
        let ab = TenantId::new("ab").unwrap();
        let a1 = TenantId::new("a").unwrap();
        assert_ne!(MessageId::derive(&ab, "c"), MessageId::derive(&a1, "bc"));
        // A derived id is itself token-safe.
        assert!(MessageId::new(a.as_str()).is_ok());
    }

    #[test]
    fn aggregate_id_round_trips() {
        let t = TenantId::new("acme").unwrap();
        let m = MessageId::derive(&t, "k");
        let id = aggregate_id(&t, &m);
        assert_eq!(parse_aggregate_id(&id).unwrap(), (t, m));
        assert!(parse_aggregate_id("nodot").is_err());
    }

    #[test]
    fn recipient_is_e164_and_masked_when_printed() {
        let r = Recipient::new("+15551234567").unwrap();
        assert_eq!(r.masked(), "+*********67");
        assert_eq!(format!("{r}"), "+*********67");
        assert_eq!(format!("{r:?}"), "Recipient(+*********67)");
        assert!(!format!("{r:?}").contains("5551234"));
        for bad in [
            "15551234567",
            "+0555123456",
            "+1555",
            "+1555123456789012",
            "+1555-123-4567",
        ] {
            assert_eq!(Recipient::new(bad), Err(IdError::NotE164), "{bad}");
        }
    }

    #[test]
    fn digest_is_lowercase_hex_of_32_bytes() {
        let d = Sha256Hex::of(b"abc");
        assert_eq!(
            d.as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(Sha256Hex::new(d.as_str().to_uppercase()).is_err());
        assert!(Sha256Hex::new("abc").is_err());
    }
}
