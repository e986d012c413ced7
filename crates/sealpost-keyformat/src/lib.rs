//! # sealpost-keyformat
//!
//! The key directory's shared definitions, computed the same way by the directory (server) and
//! by the client SDK, so that both sides agree byte for byte. Pure: no IO, no clock.
//!
//! **Owns:**
//! - [`RecipientLabel`]: the directory label of a recipient, a keyed hash of its E.164 number,
//!   so the directory never holds a phone number or anything derivable from one without the
//!   tenant's label key;
//! - [`fingerprint`]: a key's fingerprint (the SHA-256 that enrollment statements and bad-key
//!   lists name) and [`safety_number`], its 30-digit human-comparable form;
//! - [`EnrollmentStatement`]: the statement a tenant's MDM enrollment key signs to tie a device
//!   key to an enrolled device, and its verification;
//! - [`device_link`]: the capability link a device fetches one message's payload with and reports
//!   a decryption failure through (minted by delivery, checked by the gateway, parsed by the SDK).
//!
//! **Must not:** implement a primitive (HMAC-SHA-256 is `hmac` + `sha2`, Ed25519 is
//! `ed25519-dalek`), print a label key, or accept a number that is not E.164.
//!
//! Every format is specified in `docs/keys.md`.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub mod device_link;

/// What is wrong with an input; the text says how to fix it, never echoing a secret or a
/// phone number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    #[error(
        "a recipient must be an E.164 number: '+' followed by 8 to 15 digits, no leading zero"
    )]
    NotE164,
    #[error("a label key is 32 bytes (64 hex digits)")]
    BadLabelKey,
    #[error("the enrollment statement's {0} is invalid: {1}")]
    BadStatement(&'static str, &'static str),
    #[error(
        "the enrollment statement's signature does not verify with the tenant's enrollment key"
    )]
    BadSignature,
    #[error("the enrollment statement names another {0}")]
    Mismatch(&'static str),
}

fn e164_digits(number: &str) -> Result<&str, KeyFormatError> {
    let digits = number.strip_prefix('+').ok_or(KeyFormatError::NotE164)?;
    let ok = (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    if ok {
        Ok(digits)
    } else {
        Err(KeyFormatError::NotE164)
    }
}

/// A tenant's label key: 32 secret bytes. Its `Debug` shows nothing of it.
#[derive(Clone)]
pub struct LabelKey([u8; 32]);

impl std::fmt::Debug for LabelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LabelKey(..)")
    }
}

impl LabelKey {
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// From 64 hex digits (how configuration holds it).
    pub fn from_hex(hex_str: &str) -> Result<Self, KeyFormatError> {
        let bytes = hex::decode(hex_str.trim()).map_err(|_| KeyFormatError::BadLabelKey)?;
        Ok(Self(
            bytes.try_into().map_err(|_| KeyFormatError::BadLabelKey)?,
        ))
    }
}

/// A recipient's label in the directory:
/// `HMAC-SHA-256(label key, "sealpost-keys/label/v1\n" || tenant || "\n" || E.164 number)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecipientLabel(pub [u8; 32]);

impl RecipientLabel {
    /// The label of `number` (E.164, with its '+') for `tenant`.
    pub fn of(key: &LabelKey, tenant: &str, number: &str) -> Result<Self, KeyFormatError> {
        let digits = e164_digits(number)?;
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key.0)
            .map_err(|_| KeyFormatError::BadLabelKey)?;
        mac.update(b"sealpost-keys/label/v1\n");
        mac.update(tenant.as_bytes());
        mac.update(b"\n+");
        mac.update(digits.as_bytes());
        Ok(Self(mac.finalize().into_bytes().into()))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// HPKE KEM id of DHKEM(X25519, HKDF-SHA256) (RFC 9180 §7.1).
pub const KEM_X25519_HKDF_SHA256: u16 = 0x0020;

/// A public key's fingerprint: `SHA-256("sealpost-keys/fingerprint/v1\n" || kem id (2 bytes,
/// big-endian) || public key)`.
pub fn fingerprint(kem_id: u16, public_key: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"sealpost-keys/fingerprint/v1\n");
    h.update(kem_id.to_be_bytes());
    h.update(public_key);
    h.finalize().into()
}

/// The fingerprint as 30 digits in six groups of five, for people to compare: group `i` is the
/// big-endian integer of fingerprint bytes `5i .. 5i+5`, modulo 100000, zero-padded.
pub fn safety_number(fingerprint: &[u8; 32]) -> String {
    fingerprint
        .chunks(5)
        .take(6)
        .map(|c| {
            let n = c.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            format!("{:05}", n % 100_000)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// What a tenant's MDM enrollment key signs for one device key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentStatement {
    pub tenant: String,
    /// The MDM's device identifier: 1 to 128 of `[A-Za-z0-9._:-]`.
    pub device_id: String,
    /// SHA-256 of the device's attestation document.
    pub attestation_sha256: [u8; 32],
    /// The [`fingerprint`] of the device key.
    pub key_fingerprint: [u8; 32],
}

impl EnrollmentStatement {
    /// The signed bytes (ASCII, each line ending in `\n`):
    /// `sealpost-keys/enrollment/v1`, tenant, device id, attestation digest (hex), key
    /// fingerprint (hex).
    pub fn to_bytes(&self) -> Result<Vec<u8>, KeyFormatError> {
        let valid = |s: &str, max: usize| {
            !s.is_empty()
                && s.len() <= max
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
        };
        if !valid(&self.tenant, 64) {
            return Err(KeyFormatError::BadStatement(
                "tenant",
                "1 to 64 of [A-Za-z0-9._:-]",
            ));
        }
        if !valid(&self.device_id, 128) {
            return Err(KeyFormatError::BadStatement(
                "device id",
                "1 to 128 of [A-Za-z0-9._:-]",
            ));
        }
        Ok(format!(
            "sealpost-keys/enrollment/v1\n{}\n{}\n{}\n{}\n",
            self.tenant,
            self.device_id,
            hex::encode(self.attestation_sha256),
            hex::encode(self.key_fingerprint)
        )
        .into_bytes())
    }

    /// Signs the statement (the MDM side; here for tests and tools).
    pub fn sign(&self, key: &ed25519_dalek::SigningKey) -> Result<[u8; 64], KeyFormatError> {
        use ed25519_dalek::Signer as _;
        Ok(key.sign(&self.to_bytes()?).to_bytes())
    }

    /// Checks `signature` with the tenant's enrollment key (strict Ed25519 verification), and
    /// that the statement is for this tenant and this key.
    pub fn verify(
        &self,
        signature: &[u8; 64],
        enrollment_key: &ed25519_dalek::VerifyingKey,
        tenant: &str,
        key_fingerprint: &[u8; 32],
    ) -> Result<(), KeyFormatError> {
        if self.tenant != tenant {
            return Err(KeyFormatError::Mismatch("tenant"));
        }
        if &self.key_fingerprint != key_fingerprint {
            return Err(KeyFormatError::Mismatch("key"));
        }
        let sig = ed25519_dalek::Signature::from_bytes(signature);
        enrollment_key
            .verify_strict(&self.to_bytes()?, &sig)
            .map_err(|_| KeyFormatError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn key() -> LabelKey {
        LabelKey::from_hex(&"2a".repeat(32)).unwrap()
    }

    #[test]
    fn a_label_is_the_documented_hmac_and_depends_on_key_tenant_and_number() {
        let l = RecipientLabel::of(&key(), "acme-corp", "+447700900123").unwrap();
        // The same HMAC computed from the documented formula, step by step.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&[0x2a; 32]).unwrap();
        mac.update(b"sealpost-keys/label/v1\nacme-corp\n+447700900123");
        assert_eq!(l.0, <[u8; 32]>::from(mac.finalize().into_bytes()));
        assert_ne!(
            l,
            RecipientLabel::of(&key(), "globex", "+447700900123").unwrap()
        );
        assert_ne!(
            l,
            RecipientLabel::of(&key(), "acme-corp", "+447700900124").unwrap()
        );
        let other = LabelKey::new([0x2b; 32]);
        assert_ne!(
            l,
            RecipientLabel::of(&other, "acme-corp", "+447700900123").unwrap()
        );
        // The label shows nothing of the number.
        assert!(!l.to_hex().contains("447700900123"));
    }

    #[test]
    fn only_e164_numbers_get_a_label_and_the_error_does_not_echo_them() {
        for bad in [
            "447700900123",
            "+0447700900",
            "+1234567",
            "+1234567890123456",
            "+4477009a0123",
            "",
        ] {
            let e = RecipientLabel::of(&key(), "acme-corp", bad).unwrap_err();
            assert_eq!(e, KeyFormatError::NotE164);
            assert!(bad.is_empty() || !e.to_string().contains(bad));
        }
        assert!(LabelKey::from_hex("abcd").is_err());
        assert_eq!(format!("{:?}", key()), "LabelKey(..)");
    }

    #[test]
    fn a_fingerprint_binds_the_kem_and_the_key_and_its_safety_number_is_six_groups_of_five() {
        let pk = [9u8; 32];
        let f = fingerprint(KEM_X25519_HKDF_SHA256, &pk);
        let mut h = Sha256::new();
        h.update(b"sealpost-keys/fingerprint/v1\n\x00\x20");
        h.update(pk);
        assert_eq!(f, <[u8; 32]>::from(h.finalize()));
        assert_ne!(f, fingerprint(0x0021, &pk));
        // Group 0 from bytes 0..5 as a big-endian integer, mod 100000.
        let mut fixed = [0u8; 32];
        fixed[..5].copy_from_slice(&[0x00, 0x00, 0x01, 0x86, 0xa1]); // 100001
        fixed[5..10].copy_from_slice(&[0xff; 5]); // 1099511627775
        let sn = safety_number(&fixed);
        assert_eq!(&sn[..12], "00001 27775 ");
        assert_eq!(sn.len(), 35);
        assert_eq!(sn.split(' ').count(), 6);
        assert!(sn
            .split(' ')
            .all(|g| g.len() == 5 && g.bytes().all(|b| b.is_ascii_digit())));
    }

    fn statement() -> EnrollmentStatement {
        EnrollmentStatement {
            tenant: "acme-corp".into(),
            device_id: "mdm:ios:00008030-001A".into(),
            attestation_sha256: [1; 32],
            key_fingerprint: fingerprint(KEM_X25519_HKDF_SHA256, &[9; 32]),
        }
    }

    #[test]
    fn an_enrollment_statement_verifies_only_for_its_tenant_key_and_enrollment_key() {
        let mdm = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
        let s = statement();
        let sig = s.sign(&mdm).unwrap();
        let fp = s.key_fingerprint;
        s.verify(&sig, &mdm.verifying_key(), "acme-corp", &fp)
            .unwrap();
        assert_eq!(
            String::from_utf8(s.to_bytes().unwrap()).unwrap(),
            format!(
                "sealpost-keys/enrollment/v1\nacme-corp\nmdm:ios:00008030-001A\n{}\n{}\n",
                "01".repeat(32),
                hex::encode(fp)
            )
        );
        // Another tenant, another key, another enrollment key, a flipped signature bit.
        assert_eq!(
            s.verify(&sig, &mdm.verifying_key(), "globex", &fp),
            Err(KeyFormatError::Mismatch("tenant"))
        );
        assert_eq!(
            s.verify(&sig, &mdm.verifying_key(), "acme-corp", &[0; 32]),
            Err(KeyFormatError::Mismatch("key"))
        );
        let other = ed25519_dalek::SigningKey::from_bytes(&[6; 32]);
        assert_eq!(
            s.verify(&sig, &other.verifying_key(), "acme-corp", &fp),
            Err(KeyFormatError::BadSignature)
        );
        let mut bent = sig;
        bent[3] ^= 1;
        assert_eq!(
            s.verify(&bent, &mdm.verifying_key(), "acme-corp", &fp),
            Err(KeyFormatError::BadSignature)
        );
        // A statement whose device id was changed after signing.
        let mut moved = s.clone();
        moved.device_id = "mdm:ios:other".into();
        assert_eq!(
            moved.verify(&sig, &mdm.verifying_key(), "acme-corp", &fp),
            Err(KeyFormatError::BadSignature)
        );
    }

    #[test]
    fn a_statement_with_a_field_that_could_change_its_lines_is_refused() {
        let mdm = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
        for (tenant, device) in [
            ("acme\ncorp", "d"),
            ("acme-corp", "d\n1"),
            ("", "d"),
            ("acme-corp", ""),
        ] {
            let s = EnrollmentStatement {
                tenant: tenant.into(),
                device_id: device.into(),
                ..statement()
            };
            assert!(matches!(
                s.sign(&mdm),
                Err(KeyFormatError::BadStatement(..))
            ));
        }
    }
}
