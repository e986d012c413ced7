//! Device links: the capability a recipient's device fetches one message's sealed payload with,
//! and reports a `decryption_failed` receipt through, without holding the tenant's API key.
//!
//! Delivery puts the link in what reaches the device (RBM's `sealpostPayload.link`, the SMS
//! fallback notice, the in-app notice); the gateway checks it. Both hold the platform's link key
//! (`[delivery] device_link_key`). The link names one message of one tenant: its token is
//!
//! ```text
//! token = base64url_nopad(HMAC-SHA-256(link key, "sealpost/device-link/v1\n" || tenant || "\n" || message_id))
//! link  = <base> "/v1/d/" tenant "/" message_id "/" token
//! ```
//!
//! where tenant and message id are 1 to 64 characters of `[A-Za-z0-9_-]` (so the separator is
//! unambiguous and the link needs no escaping) and the token is 43 characters. The link carries
//! no deadline: the gateway refuses it once the message has expired or been purged, so it
//! expires with the message. `docs/envelope.md` describes the routes behind it.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The path segment before tenant, message id and token.
pub const LINK_PATH: &str = "/v1/d/";

/// What is wrong with a link or its parts. Never echoes a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceLinkError {
    #[error("a device link key is 32 bytes (64 hex digits)")]
    BadKey,
    #[error("the {0} must be 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'")]
    BadId(&'static str),
    #[error("not a Sealpost device link: expected <base>/v1/d/<tenant>/<message_id>/<token>")]
    NotALink,
}

fn id_safe(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The platform's link key: 32 secret bytes. Its `Debug` shows nothing of it.
#[derive(Clone)]
pub struct DeviceLinkKey([u8; 32]);

impl std::fmt::Debug for DeviceLinkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceLinkKey(..)")
    }
}

impl DeviceLinkKey {
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// From 64 hex digits (how configuration holds it).
    pub fn from_hex(hex_str: &str) -> Result<Self, DeviceLinkError> {
        let bytes = hex::decode(hex_str.trim()).map_err(|_| DeviceLinkError::BadKey)?;
        Ok(Self(bytes.try_into().map_err(|_| DeviceLinkError::BadKey)?))
    }

    fn mac(&self, tenant: &str, message_id: &str) -> Result<Hmac<Sha256>, DeviceLinkError> {
        if !id_safe(tenant) {
            return Err(DeviceLinkError::BadId("tenant"));
        }
        if !id_safe(message_id) {
            return Err(DeviceLinkError::BadId("message id"));
        }
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).map_err(|_| DeviceLinkError::BadKey)?;
        mac.update(b"sealpost/device-link/v1\n");
        mac.update(tenant.as_bytes());
        mac.update(b"\n");
        mac.update(message_id.as_bytes());
        Ok(mac)
    }

    /// The token of `message_id` of `tenant`.
    pub fn token(&self, tenant: &str, message_id: &str) -> Result<String, DeviceLinkError> {
        let tag = self.mac(tenant, message_id)?.finalize().into_bytes();
        Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag))
    }

    /// The whole link under `base` (the gateway's public URL, without a trailing slash).
    pub fn link(
        &self,
        base: &str,
        tenant: &str,
        message_id: &str,
    ) -> Result<String, DeviceLinkError> {
        let token = self.token(tenant, message_id)?;
        Ok(format!(
            "{}{LINK_PATH}{tenant}/{message_id}/{token}",
            base.trim_end_matches('/')
        ))
    }

    /// True when `token` is the token of `message_id` of `tenant` (compared in constant time).
    pub fn verify(&self, tenant: &str, message_id: &str, token: &str) -> bool {
        let Ok(tag) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token) else {
            return false;
        };
        self.mac(tenant, message_id)
            .is_ok_and(|mac| mac.verify_slice(&tag).is_ok())
    }
}

/// A device link taken apart (no key needed: the gateway checks the token).
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceLink {
    /// Everything before `/v1/d/`, e.g. `https://sealpost.example.com`.
    pub base: String,
    pub tenant: String,
    pub message_id: String,
    pub token: String,
}

impl std::fmt::Debug for DeviceLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceLink")
            .field("base", &self.base)
            .field("tenant", &self.tenant)
            .field("message_id", &self.message_id)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl DeviceLink {
    /// Parses `<base>/v1/d/<tenant>/<message_id>/<token>` (the last occurrence of `/v1/d/`).
    pub fn parse(link: &str) -> Result<Self, DeviceLinkError> {
        let link = link.trim();
        let at = link.rfind(LINK_PATH).ok_or(DeviceLinkError::NotALink)?;
        let (base, rest) = (&link[..at], &link[at + LINK_PATH.len()..]);
        let mut parts = rest.split('/');
        let (Some(tenant), Some(message_id), Some(token), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(DeviceLinkError::NotALink);
        };
        if !id_safe(tenant) || !id_safe(message_id) || token.len() != 43 || base.is_empty() {
            return Err(DeviceLinkError::NotALink);
        }
        Ok(Self {
            base: base.to_owned(),
            tenant: tenant.to_owned(),
            message_id: message_id.to_owned(),
            token: token.to_owned(),
        })
    }

    /// The link again.
    pub fn url(&self) -> String {
        format!(
            "{}{LINK_PATH}{}/{}/{}",
            self.base, self.tenant, self.message_id, self.token
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> DeviceLinkKey {
        DeviceLinkKey::from_hex(&"11".repeat(32)).unwrap()
    }

    #[test]
    fn the_token_matches_its_documented_test_vector() {
        // docs/envelope.md, "Device links": key 0x11 * 32, tenant "acme", message id "m1".
        let token = key().token("acme", "m1").unwrap();
        assert_eq!(token.len(), 43);
        assert_eq!(token, "Szn7zUYkmktDDq89fNdoySk7Yu4tgZkEbwdMYi_pTGg");
    }

    #[test]
    fn a_token_verifies_for_its_message_only() {
        let k = key();
        let t = k.token("acme", "m1").unwrap();
        assert!(k.verify("acme", "m1", &t));
        assert!(!k.verify("acme", "m2", &t));
        assert!(!k.verify("other", "m1", &t));
        assert!(!DeviceLinkKey::new([2; 32]).verify("acme", "m1", &t));
        assert!(!k.verify("acme", "m1", &t[..42]));
        assert!(!k.verify("acme", "m1", "not base64!"));
    }

    #[test]
    fn ids_that_could_blur_the_separator_are_refused() {
        let k = key();
        assert_eq!(
            k.token("ac\nme", "m1").unwrap_err(),
            DeviceLinkError::BadId("tenant")
        );
        assert_eq!(
            k.token("acme", "m/1").unwrap_err(),
            DeviceLinkError::BadId("message id")
        );
        assert!(!k.verify("acme", "", "x"));
    }

    #[test]
    fn a_link_parses_back_into_its_parts() {
        let k = key();
        let url = k.link("https://sp.example/", "acme", "m1").unwrap();
        let l = DeviceLink::parse(&url).unwrap();
        assert_eq!(l.base, "https://sp.example");
        assert_eq!((l.tenant.as_str(), l.message_id.as_str()), ("acme", "m1"));
        assert!(k.verify(&l.tenant, &l.message_id, &l.token));
        assert_eq!(l.url(), url);
        assert!(!format!("{l:?}").contains(&l.token));
        for bad in [
            "https://sp.example/v1/d/acme/m1",
            "https://sp.example/v1/d/acme/m1/short",
            &format!("{url}/extra"),
            "/v1/d/acme/m1/Szn7zUYkmktDDq89fNdoySk7Yu4tgZkEbwdMYi_pTGg",
            "https://sp.example/v2/acme/m1",
        ] {
            assert_eq!(
                DeviceLink::parse(bad),
                Err(DeviceLinkError::NotALink),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_bad_key_is_refused_and_never_printed() {
        assert_eq!(
            DeviceLinkKey::from_hex("abc").unwrap_err(),
            DeviceLinkError::BadKey
        );
        assert_eq!(format!("{:?}", key()), "DeviceLinkKey(..)");
    }
}
