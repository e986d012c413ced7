//! The simulator's OAuth side: a token endpoint for the JWT bearer grant (as Google's
//! `oauth2.googleapis.com/token` answers it) and the bearer check of every RBM route.
//!
//! - `POST /token` with `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<jwt>`:
//!   the assertion must be RS256 over the service account's key (the simulator derives the
//!   public key from the same key file, as Google knows it from the key's registration), with
//!   `iss` = its `client_email`, the RBM scope, `aud` = this endpoint's URL, `iat` not in the
//!   future and `exp` after now, at most one hour after `iat`. The answer is a random access
//!   token valid for [`SimConfig::token_ttl`](crate::SimConfig::token_ttl).
//! - RBM routes accept an unexpired issued token, or the static `bearer_token` when one is
//!   configured; anything else is 401 `UNAUTHENTICATED`.
//! - [`RunningSim::set_credentials_revoked`](crate::RunningSim::set_credentials_revoked): the
//!   service account's key and every token are refused (400 `invalid_grant`, 401) until restored,
//!   as when an operator deletes or rotates a key.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
use sealpost_carriers::oauth::{
    AssertionClaims, AssertionHeader, TokenAnswer, TokenErrorAnswer, ASSERTION_LIFETIME_SECS,
    JWT_BEARER_GRANT, RBM_SCOPE,
};
use serde::Deserialize;

use crate::rng::splitmix64;
use crate::server::Shared;

/// How far in the future an `iat` may be (clock skew).
const IAT_SKEW_SECS: u64 = 60;

/// Checks an assertion against the service account's public key (PKCS#1 DER) and what the token
/// endpoint expects; the error is the `error_description` of a 400.
pub fn verify_assertion(
    public_key_der: &[u8],
    client_email: &str,
    token_uri: &str,
    jwt: &str,
    now: u64,
) -> Result<AssertionClaims, &'static str> {
    let mut parts = jwt.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("Invalid JWT: not three base64url parts.");
    };
    let header: AssertionHeader = decode(h).ok_or("Invalid JWT header.")?;
    if header.alg != "RS256" {
        return Err("Invalid JWT: alg must be RS256.");
    }
    let sig = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| "Invalid JWT signature encoding.")?;
    let signed = &jwt[..h.len() + 1 + c.len()];
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, public_key_der)
        .verify(signed.as_bytes(), &sig)
        .map_err(|_| "Invalid JWT Signature.")?;
    let claims: AssertionClaims = decode(c).ok_or("Invalid JWT claims.")?;
    if claims.iss != client_email {
        return Err("Invalid issuer: not this service account.");
    }
    if !claims.scope.split(' ').any(|sc| sc == RBM_SCOPE) {
        return Err("Invalid scope: the RBM scope is missing.");
    }
    if claims.aud != token_uri {
        return Err("Invalid JWT audience: not this token endpoint.");
    }
    if claims.iat > now + IAT_SKEW_SECS {
        return Err("Invalid JWT: iat is in the future.");
    }
    if claims.exp <= now
        || claims.exp < claims.iat
        || claims.exp - claims.iat > ASSERTION_LIFETIME_SECS
    {
        return Err("Invalid JWT: expired, or valid for more than an hour.");
    }
    Ok(claims)
}

fn decode<T: serde::de::DeserializeOwned>(part: &str) -> Option<T> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn token_error(error: &str, description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(TokenErrorAnswer {
            error: error.into(),
            error_description: Some(description.into()),
        }),
    )
        .into_response()
}

#[derive(Deserialize)]
struct TokenForm {
    grant_type: String,
    assertion: String,
}

/// `POST /token`.
pub(crate) async fn token(AxState(sh): AxState<Arc<Shared>>, body: Bytes) -> Response {
    let Some(account) = sh.service_account.as_ref() else {
        return token_error(
            "unsupported_grant_type",
            "This simulator has no service account configured.",
        );
    };
    let Ok(form) = serde_urlencoded::from_bytes::<TokenForm>(&body) else {
        return token_error("invalid_request", "Expected grant_type and assertion.");
    };
    if form.grant_type != JWT_BEARER_GRANT {
        return token_error("unsupported_grant_type", "Use the JWT bearer grant.");
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if let Err(why) = verify_assertion(
        account.public_key_der(),
        account.client_email(),
        &sh.token_uri,
        &form.assertion,
        now,
    ) {
        sh.lock().stats.token_refusals += 1;
        return token_error("invalid_grant", why);
    }
    let ttl = sh.cfg.token_ttl;
    let mut st = sh.lock();
    if st.credentials_revoked {
        st.stats.token_refusals += 1;
        drop(st);
        return token_error("invalid_grant", "Invalid JWT Signature.");
    }
    let (a, b) = (splitmix64(&mut st.rng), splitmix64(&mut st.rng));
    let access_token = format!("ya29.sim-{a:016x}{b:016x}");
    let now = Instant::now();
    st.tokens.retain(|_, until| *until > now);
    st.tokens.insert(access_token.clone(), now + ttl);
    st.issued.push(access_token.clone());
    st.stats.tokens_issued += 1;
    drop(st);
    Json(TokenAnswer {
        access_token,
        expires_in: ttl.as_secs().max(1),
        token_type: "Bearer".into(),
    })
    .into_response()
}

/// Whether a request to an RBM route is authenticated; counts the refusals.
pub(crate) fn authorized(sh: &Shared, headers: &HeaderMap) -> bool {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let mut st = sh.lock();
    let ok = match presented {
        None => false,
        Some(_) if st.credentials_revoked => false,
        Some(t) => {
            let fixed = sh.cfg.bearer_token.expose();
            if !fixed.is_empty() && t == fixed {
                true
            } else {
                match st.tokens.get(t) {
                    Some(until) if *until > Instant::now() => true,
                    Some(_) => {
                        st.stats.expired_token_rejections += 1;
                        false
                    }
                    None => false,
                }
            }
        }
    };
    if !ok {
        st.stats.auth_rejections += 1;
    }
    ok
}

/// The lifetime the simulator gives its tokens unless told otherwise: Google's one hour.
pub(crate) const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use sealpost_carriers::ServiceAccountKey;

    use super::*;

    const KEY: &str = include_str!("../testdata/test-service-account.json");
    /// Made with `openssl dgst -sha256 -sign` over the same header and claims (see the README of
    /// `testdata`): RSASSA-PKCS1-v1_5 is deterministic, so our signer must produce these bytes.
    const OPENSSL_ASSERTION: &str = include_str!("../testdata/test-assertion.jwt");
    const GOOGLE: &str = "https://oauth2.googleapis.com/token";
    const EMAIL: &str = "sealpost-sim-agent@sealpost-sim.iam.gserviceaccount.com";

    #[test]
    fn the_assertion_is_byte_for_byte_what_openssl_signs() {
        let key = ServiceAccountKey::from_json(KEY).unwrap();
        let ours = key.assertion(GOOGLE, RBM_SCOPE, 1_700_000_000).unwrap();
        assert_eq!(ours, OPENSSL_ASSERTION.trim());
    }

    #[test]
    fn a_valid_assertion_verifies_and_every_altered_one_is_refused() {
        let key = ServiceAccountKey::from_json(KEY).unwrap();
        let pk = key.public_key_der();
        let now = 1_700_000_100;
        let jwt = key.assertion(GOOGLE, RBM_SCOPE, 1_700_000_000).unwrap();
        let claims = verify_assertion(pk, EMAIL, GOOGLE, &jwt, now).unwrap();
        assert_eq!(claims.exp, 1_700_003_600);

        assert_eq!(
            verify_assertion(pk, "other@x", GOOGLE, &jwt, now).unwrap_err(),
            "Invalid issuer: not this service account."
        );
        assert!(
            verify_assertion(pk, EMAIL, "http://127.0.0.1:1/token", &jwt, now)
                .unwrap_err()
                .contains("audience")
        );
        assert!(verify_assertion(pk, EMAIL, GOOGLE, &jwt, 1_700_003_600)
            .unwrap_err()
            .contains("expired"));
        assert!(verify_assertion(pk, EMAIL, GOOGLE, &jwt, 1_699_999_000)
            .unwrap_err()
            .contains("future"));
        let other_scope = key
            .assertion(GOOGLE, "https://x/other", 1_700_000_000)
            .unwrap();
        assert!(verify_assertion(pk, EMAIL, GOOGLE, &other_scope, now)
            .unwrap_err()
            .contains("scope"));
        // One flipped character of the claims: the signature no longer matches.
        let mut parts: Vec<String> = jwt.split('.').map(str::to_owned).collect();
        let claims_b64 = &mut parts[1];
        let flipped = if claims_b64.ends_with('A') { 'B' } else { 'A' };
        claims_b64.pop();
        claims_b64.push(flipped);
        assert_eq!(
            verify_assertion(pk, EMAIL, GOOGLE, &parts.join("."), now).unwrap_err(),
            "Invalid JWT Signature."
        );
        assert!(verify_assertion(pk, EMAIL, GOOGLE, "a.b", now).is_err());
    }
}
