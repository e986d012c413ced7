//! OAuth 2.0 access tokens for RBM from a Google service-account key: the JWT bearer grant of
//! RFC 7523 §2.1, as Google's token endpoint implements it.
//!
//! **The assertion** (a JWS, RFC 7515 compact form; byte format in `README.md#rbm-credentials`):
//! `base64url(header) "." base64url(claims) "." base64url(signature)`, without padding, where
//! - header = `{"alg":"RS256","typ":"JWT","kid":<private_key_id>}` (`kid` left out when the key
//!   file has none);
//! - claims = `{"iss":<client_email>,"scope":<scope>,"aud":<token_uri>,"iat":<now>,"exp":<now+3600>}`
//!   (seconds since the Unix epoch);
//! - signature = RSASSA-PKCS1-v1_5 with SHA-256 (RFC 8017 §8.2) over the ASCII bytes
//!   `base64url(header) "." base64url(claims)`, by the key's `private_key` (PKCS#8 PEM).
//!
//! It is POSTed as `application/x-www-form-urlencoded`
//! `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<jwt>` to the token URI, and
//! the answer `{"access_token":..,"expires_in":<s>,"token_type":"Bearer"}` is cached.
//!
//! **When tokens are fetched.** A token is used until three quarters of its lifetime have passed,
//! or five minutes before it expires, whichever is later (for Google's one-hour tokens, at 55
//! minutes). Then one caller refreshes while the others keep using the old, still valid, token.
//! A carrier answer of 401 to a token makes the next caller fetch a new one, once per token, not
//! once per request: every request in flight with the rejected token shares the one refresh.
//! A failed fetch is remembered for [`FAILED_FETCH_BACKOFF`], so a broken credential costs one
//! request to the token endpoint per second, not one per message.
//!
//! Nothing here logs or returns the key, the assertion or a token: errors are short codes
//! (`token_http_400`, `token_connect`...), and the OAuth `error` word is logged only when it is
//! a plain status word.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::PrivatePkcs8KeyDer;
use sealpost_domain::Secret;
use serde::{Deserialize, Serialize};

use crate::http::{read_limited, transport_code};
use crate::CarrierError;

/// The OAuth scope of the RBM API.
pub const RBM_SCOPE: &str = "https://www.googleapis.com/auth/rcsbusinessmessaging";
/// The grant type of RFC 7523 §2.1.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Google's token endpoint, used when neither the key file nor the config names one.
pub const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// Lifetime of one assertion (Google accepts at most one hour).
pub const ASSERTION_LIFETIME_SECS: u64 = 3600;
/// How long a failed token fetch is answered from memory instead of asking again.
pub const FAILED_FETCH_BACKOFF: Duration = Duration::from_secs(1);
/// A token this close to its expiry is not used any more: it could expire on the way.
const EXPIRY_SKEW: Duration = Duration::from_millis(200);
/// Token answers larger than this are not read.
const MAX_TOKEN_BODY: usize = 64 * 1024;

/// The header of an assertion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssertionHeader {
    pub alg: String,
    pub typ: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
}

/// The claims of an assertion (RFC 7523 §3), in the order they are serialized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssertionClaims {
    pub iss: String,
    pub scope: String,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
}

/// A token endpoint's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenAnswer {
    pub access_token: String,
    pub expires_in: u64,
    pub token_type: String,
}

/// A token endpoint's error answer (RFC 6749 §5.2).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenErrorAnswer {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_description: Option<String>,
}

#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default)]
    token_uri: Option<String>,
}

/// A Google service-account key (the JSON file the console hands out), parsed once.
#[derive(Clone)]
pub struct ServiceAccountKey {
    client_email: String,
    key_id: Option<String>,
    token_uri: Option<String>,
    key_pair: Arc<RsaKeyPair>,
}

impl fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("client_email", &self.client_email)
            .field("key_id", &self.key_id)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

impl ServiceAccountKey {
    /// Parses a key file's JSON. Errors name the field to fix and never echo its content.
    pub fn from_json(json: &str) -> Result<Self, CarrierError> {
        let bad = |what: &str| {
            CarrierError::Config(format!(
                "the RBM service account key is not usable: {what}; download a new JSON key for the agent's service account"
            ))
        };
        let file: KeyFile = serde_json::from_str(json)
            .map_err(|_| bad("it is not a JSON key file with client_email and private_key"))?;
        if file.kind.as_deref().is_some_and(|k| k != "service_account") {
            return Err(bad("its \"type\" is not \"service_account\""));
        }
        if file.client_email.trim().is_empty() {
            return Err(bad("client_email is empty"));
        }
        let der = PrivatePkcs8KeyDer::from_pem_slice(file.private_key.as_bytes())
            .map_err(|_| bad("private_key is not a PKCS#8 PEM block (BEGIN PRIVATE KEY)"))?;
        let key_pair = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
            .map_err(|_| bad("private_key is not an RSA key of 2048 to 8192 bits"))?;
        Ok(ServiceAccountKey {
            client_email: file.client_email.trim().to_owned(),
            key_id: file.private_key_id.filter(|k| !k.trim().is_empty()),
            token_uri: file.token_uri.filter(|u| !u.trim().is_empty()),
            key_pair: Arc::new(key_pair),
        })
    }

    /// Reads and parses a key file.
    pub fn from_file(path: &Path) -> Result<Self, CarrierError> {
        let json = std::fs::read_to_string(path).map_err(|e| {
            CarrierError::Config(format!(
                "cannot read the RBM service account key file {}: {e}",
                path.display()
            ))
        })?;
        Self::from_json(&json)
    }

    pub fn client_email(&self) -> &str {
        &self.client_email
    }

    /// The token URI the key file names, if any.
    pub fn token_uri(&self) -> Option<&str> {
        self.token_uri.as_deref()
    }

    /// The public key as a PKCS#1 `RSAPublicKey` DER: what a token endpoint checks assertions
    /// with (`ring::signature::RSA_PKCS1_2048_8192_SHA256`).
    pub fn public_key_der(&self) -> &[u8] {
        use ring::signature::KeyPair as _;
        self.key_pair.public_key().as_ref()
    }

    /// The signed assertion for `token_uri` and `scope`, issued at `iat` (Unix seconds).
    pub fn assertion(
        &self,
        token_uri: &str,
        scope: &str,
        iat: u64,
    ) -> Result<String, CarrierError> {
        let header = AssertionHeader {
            alg: "RS256".into(),
            typ: "JWT".into(),
            kid: self.key_id.clone(),
        };
        let claims = AssertionClaims {
            iss: self.client_email.clone(),
            scope: scope.to_owned(),
            aud: token_uri.to_owned(),
            iat,
            exp: iat + ASSERTION_LIFETIME_SECS,
        };
        let mut jwt = b64_json(&header)?;
        jwt.push('.');
        jwt.push_str(&b64_json(&claims)?);
        let mut sig = vec![0u8; self.key_pair.public().modulus_len()];
        self.key_pair
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                jwt.as_bytes(),
                &mut sig,
            )
            .map_err(|_| CarrierError::Client("signing the RBM token assertion failed".into()))?;
        jwt.push('.');
        jwt.push_str(&URL_SAFE_NO_PAD.encode(sig));
        Ok(jwt)
    }
}

/// `base64url(JSON(v))` without padding.
fn b64_json<T: Serialize>(v: &T) -> Result<String, CarrierError> {
    serde_json::to_vec(v)
        .map(|b| URL_SAFE_NO_PAD.encode(b))
        .map_err(|e| CarrierError::Client(e.to_string()))
}

/// One access token as a request carries it.
#[derive(Debug)]
pub(crate) struct AccessToken {
    /// `Bearer <token>`.
    pub(crate) header: Secret,
    refresh_at: Option<Instant>,
    expires_at: Option<Instant>,
    generation: u64,
}

impl AccessToken {
    /// A token that never expires (a static bearer token from the config).
    pub(crate) fn fixed(token: &Secret) -> Arc<Self> {
        Arc::new(AccessToken {
            header: Secret::new(format!("Bearer {}", token.expose().trim())),
            refresh_at: None,
            expires_at: None,
            generation: 0,
        })
    }

    fn usable(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|e| now + EXPIRY_SKEW < e)
    }

    fn fresh(&self, now: Instant) -> bool {
        self.refresh_at.is_none_or(|r| now < r)
    }
}

/// When a token of `lifetime`, fetched at `fetched`, should be replaced: at three quarters of its
/// lifetime or five minutes before it expires, whichever is later.
pub fn refresh_at(fetched: Instant, lifetime: Duration) -> Instant {
    let three_quarters = lifetime.mul_f64(0.75);
    let five_before = lifetime.saturating_sub(Duration::from_secs(300));
    fetched + three_quarters.max(five_before)
}

/// Fetches, caches and refreshes access tokens for one service account.
pub(crate) struct TokenSource {
    key: ServiceAccountKey,
    token_uri: String,
    scope: String,
    client: reqwest::Client,
    current: RwLock<Option<Arc<AccessToken>>>,
    /// Held while a token is fetched: one fetch at a time.
    fetching: tokio::sync::Mutex<()>,
    /// The last failed fetch: when, and its code.
    failed: Mutex<Option<(Instant, String)>>,
    generation: Mutex<u64>,
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSource")
            .field("key", &self.key)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    pub(crate) fn new(
        key: ServiceAccountKey,
        token_uri: String,
        scope: String,
        client: reqwest::Client,
    ) -> Self {
        TokenSource {
            key,
            token_uri,
            scope,
            client,
            current: RwLock::new(None),
            fetching: tokio::sync::Mutex::new(()),
            failed: Mutex::new(None),
            generation: Mutex::new(0),
        }
    }

    fn current(&self) -> Option<Arc<AccessToken>> {
        self.current.read().ok().and_then(|c| c.clone())
    }

    /// A token to send now: the cached one while it is fresh; past its refresh time, one caller
    /// fetches a new one while the others go on with the old one as long as it is valid.
    pub(crate) async fn token(&self) -> Result<Arc<AccessToken>, String> {
        let now = Instant::now();
        let seen = self.current();
        if let Some(t) = &seen {
            if t.fresh(now) {
                return Ok(t.clone());
            }
            if t.usable(now) {
                let Ok(_guard) = self.fetching.try_lock() else {
                    return Ok(t.clone());
                };
                if let Some(newer) = self.current().filter(|c| c.generation != t.generation) {
                    return Ok(newer);
                }
                return match self.fetch().await {
                    Ok(fresh) => Ok(fresh),
                    Err(code) => {
                        tracing::warn!(code, "cannot refresh the RBM access token yet; the current one is still valid");
                        Ok(t.clone())
                    }
                };
            }
        }
        self.replace(seen.as_ref().map(|t| t.generation)).await
    }

    /// The carrier answered 401 to `rejected`: a new token, fetched once however many requests
    /// were rejected with the same one.
    pub(crate) async fn after_rejection(
        &self,
        rejected: &AccessToken,
    ) -> Result<Arc<AccessToken>, String> {
        self.replace(Some(rejected.generation)).await
    }

    /// Fetches a token unless another caller already replaced generation `stale` with a usable
    /// one while this one waited.
    async fn replace(&self, stale: Option<u64>) -> Result<Arc<AccessToken>, String> {
        let _guard = self.fetching.lock().await;
        if let Some(t) = self.current() {
            if Some(t.generation) != stale && t.usable(Instant::now()) {
                return Ok(t);
            }
        }
        if let Ok(failed) = self.failed.lock() {
            if let Some((at, code)) = failed.as_ref() {
                if at.elapsed() < FAILED_FETCH_BACKOFF {
                    return Err(code.clone());
                }
            }
        }
        self.fetch().await
    }

    /// One request to the token endpoint; the caller holds `fetching`.
    async fn fetch(&self) -> Result<Arc<AccessToken>, String> {
        let result = self.request().await;
        match &result {
            Ok(t) => {
                if let Ok(mut c) = self.current.write() {
                    *c = Some(t.clone());
                }
                if let Ok(mut f) = self.failed.lock() {
                    *f = None;
                }
            }
            Err(code) => {
                if let Ok(mut f) = self.failed.lock() {
                    *f = Some((Instant::now(), code.clone()));
                }
            }
        }
        result
    }

    async fn request(&self) -> Result<Arc<AccessToken>, String> {
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let assertion = self
            .key
            .assertion(&self.token_uri, &self.scope, iat)
            .map_err(|_| "token_sign".to_owned())?;
        let started = Instant::now();
        let resp = self
            .client
            .post(&self.token_uri)
            .form(&[("grant_type", JWT_BEARER_GRANT), ("assertion", &assertion)])
            .send()
            .await
            .map_err(|e| format!("token_{}", transport_code(&e)))?;
        let status = resp.status().as_u16();
        let body = read_limited(resp, MAX_TOKEN_BODY).await;
        if !(200..300).contains(&status) {
            let error = body
                .as_deref()
                .and_then(|b| serde_json::from_slice::<TokenErrorAnswer>(b).ok())
                .map(|e| e.error)
                .filter(|e| is_oauth_word(e));
            tracing::warn!(
                status,
                error = error.as_deref().unwrap_or("-"),
                client_email = %self.key.client_email,
                "the token endpoint refused the RBM service account's assertion"
            );
            return Err(format!("token_http_{status}"));
        }
        let answer = body
            .as_deref()
            .and_then(|b| serde_json::from_slice::<TokenAnswer>(b).ok())
            .filter(|a| {
                !a.access_token.trim().is_empty()
                    && a.expires_in > 0
                    && a.token_type.eq_ignore_ascii_case("bearer")
            })
            .ok_or_else(|| "token_malformed".to_owned())?;
        let lifetime = Duration::from_secs(answer.expires_in.min(24 * 3600));
        let generation = {
            let mut g = self
                .generation
                .lock()
                .map_err(|_| "token_state".to_owned())?;
            *g += 1;
            *g
        };
        tracing::info!(
            lifetime_s = lifetime.as_secs(),
            generation,
            "fetched an RBM access token"
        );
        Ok(Arc::new(AccessToken {
            header: Secret::new(format!("Bearer {}", answer.access_token.trim())),
            refresh_at: Some(refresh_at(started, lifetime)),
            expires_at: Some(started + lifetime),
            generation,
        }))
    }
}

/// An OAuth error code as RFC 6749 §5.2 defines them (`invalid_grant`...), safe to log.
fn is_oauth_word(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_token_is_refreshed_at_three_quarters_or_five_minutes_before_expiry_whichever_is_later() {
        let t0 = Instant::now();
        // Google's one-hour token: 55 minutes.
        assert_eq!(
            refresh_at(t0, Duration::from_secs(3600)),
            t0 + Duration::from_secs(3300)
        );
        // A short-lived token: three quarters.
        assert_eq!(
            refresh_at(t0, Duration::from_secs(4)),
            t0 + Duration::from_secs(3)
        );
        // Thirty minutes: 25 minutes (five before) is later than 22.5 (three quarters).
        assert_eq!(
            refresh_at(t0, Duration::from_secs(1800)),
            t0 + Duration::from_secs(1500)
        );
    }

    #[test]
    fn a_fixed_token_is_always_fresh_and_usable() {
        let t = AccessToken::fixed(&Secret::new(" tok "));
        let later = Instant::now() + Duration::from_secs(86_400 * 365);
        assert!(t.fresh(later) && t.usable(later));
        assert_eq!(t.header.expose(), "Bearer tok");
    }

    #[test]
    fn key_files_are_checked_and_errors_never_echo_them() {
        for (json, want) in [
            ("not json", "not a JSON key file"),
            (
                r#"{"type":"authorized_user","client_email":"a@b","private_key":"x"}"#,
                "\"type\"",
            ),
            (
                r#"{"client_email":" ","private_key":"SECRETPEM"}"#,
                "client_email is empty",
            ),
            (
                r#"{"client_email":"a@b","private_key":"SECRETPEM"}"#,
                "PKCS#8 PEM",
            ),
        ] {
            let e = ServiceAccountKey::from_json(json).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
            assert!(!e.contains("SECRETPEM"), "{e}");
        }
    }

    #[test]
    fn only_plain_oauth_words_are_logged() {
        assert!(is_oauth_word("invalid_grant"));
        assert!(!is_oauth_word("Invalid JWT: +447700900123"));
        assert!(!is_oauth_word(""));
    }
}
