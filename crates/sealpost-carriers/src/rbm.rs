//! Google RCS Business Messaging (REST v1).
//!
//! - send: `POST {base}/v1/phones/{E.164}/agentMessages?messageId=<id>&agentId=<agent>`. The
//!   `messageId` is our message id, the same on every retry: RBM answers 409 `ALREADY_EXISTS` to a
//!   reused id, which counts as acked.
//! - capability: `GET {base}/v1/phones/{E.164}/capabilities?requestId=<uuid>&agentId=<agent>`.
//! - revoke: `DELETE {base}/v1/phones/{E.164}/agentMessages/{id}?agentId=<agent>`; 404 means it was
//!   delivered already (or never existed).
//!
//! Every call carries `Authorization: Bearer <token>`: either a static token from the config (for
//! aggregators that issue one), or an OAuth access token fetched with the agent's service-account
//! key ([`crate::oauth`]). A 401 makes the adapter fetch a new token and repeat the request once;
//! a second 401, or a 403, is reported as `AuthFailed`, never as the message's failure.

use std::sync::Arc;
use std::time::Duration;

use sealpost_domain::{CarrierOutcome, Secret};
use time::format_description::well_known::Rfc3339;
use time::UtcOffset;

use crate::http::{base_url, path_segment, read_limited, transport_code};
use crate::oauth::{AccessToken, ServiceAccountKey, TokenSource, GOOGLE_TOKEN_URI, RBM_SCOPE};
use crate::wire::{AgentMessage, ContentInfo, ContentMessage, ErrorBody, SealpostPayload};
use crate::{
    classify, http_client, mask_recipient, Capability, Carrier, CarrierError, Content, Delivers,
    RevokeResult, Submission,
};

/// Error bodies larger than this are not read (a code is all we want from them).
const MAX_ERROR_BODY: usize = 16 * 1024;

#[derive(Debug, Clone)]
pub struct RbmConfig {
    /// e.g. `https://rcsbusinessmessaging.googleapis.com`, or the simulator's base URL.
    pub base_url: String,
    pub agent_id: String,
    pub credentials: RbmCredentials,
    /// Bounds each whole request; a send that times out is `Transient { "timeout" }` and is
    /// resubmitted under the same message id.
    pub timeout: Duration,
}

/// How the adapter authenticates to RBM.
#[derive(Debug, Clone)]
pub enum RbmCredentials {
    /// A static bearer token, for aggregators that issue one. A 401 cannot be cured by a refresh.
    Bearer(Secret),
    /// Google's way: OAuth access tokens from the agent's service-account key. `token_uri`
    /// overrides the key file's (the simulator serves its own).
    ServiceAccount {
        key: ServiceAccountKey,
        token_uri: Option<String>,
    },
}

#[derive(Debug)]
enum Auth {
    Fixed(Arc<AccessToken>),
    OAuth(Box<TokenSource>),
}

impl Auth {
    async fn token(&self) -> Result<Arc<AccessToken>, String> {
        match self {
            Auth::Fixed(t) => Ok(t.clone()),
            Auth::OAuth(source) => source.token().await,
        }
    }

    /// A new token after `rejected` got a 401, or none when there is no other token to try.
    async fn after_rejection(
        &self,
        rejected: &AccessToken,
    ) -> Option<Result<Arc<AccessToken>, String>> {
        match self {
            Auth::Fixed(_) => None,
            Auth::OAuth(source) => Some(source.after_rejection(rejected).await),
        }
    }
}

/// Why an authorized call got no HTTP answer to classify.
enum CallError {
    Transport(reqwest::Error),
    /// No access token could be had; the code says why (`token_http_400`...).
    Token(String),
}

impl CallError {
    fn code(&self) -> String {
        match self {
            CallError::Transport(e) => transport_code(e).to_owned(),
            CallError::Token(code) => code.clone(),
        }
    }
}

/// The RBM adapter. Cheap to clone (the HTTP client and the token cache are shared).
#[derive(Debug, Clone)]
pub struct RbmCarrier {
    /// Parsed once: a request's URL is this with its path and query set, so host and scheme are
    /// not parsed again for every submission.
    base: reqwest::Url,
    agent_id: String,
    auth: Arc<Auth>,
    client: reqwest::Client,
}

impl RbmCarrier {
    pub fn new(cfg: RbmConfig) -> Result<Self, CarrierError> {
        let base = reqwest::Url::parse(&base_url(&cfg.base_url, "RBM")?)
            .map_err(|_| {
                CarrierError::Config(
                    "RBM base URL is not a valid URL: give scheme, host and optional port, e.g. https://rcsbusinessmessaging.googleapis.com".into(),
                )
            })?;
        if cfg.agent_id.trim().is_empty() {
            return Err(CarrierError::Config("RBM agent_id is empty".into()));
        }
        if cfg.timeout.is_zero() {
            return Err(CarrierError::Config(
                "RBM timeout must be above zero".into(),
            ));
        }
        let client = http_client(cfg.timeout)?;
        let auth = match cfg.credentials {
            RbmCredentials::Bearer(token) => {
                if token.expose().trim().is_empty() {
                    return Err(CarrierError::Config(
                        "RBM bearer_token is empty; set the aggregator's token, or a service account key instead".into(),
                    ));
                }
                Auth::Fixed(AccessToken::fixed(&token))
            }
            RbmCredentials::ServiceAccount { key, token_uri } => {
                let uri = token_uri
                    .filter(|u| !u.trim().is_empty())
                    .or_else(|| key.token_uri().map(str::to_owned))
                    .unwrap_or_else(|| GOOGLE_TOKEN_URI.to_owned());
                let uri = base_url(&uri, "RBM token")?;
                Auth::OAuth(Box::new(TokenSource::new(
                    key,
                    uri,
                    RBM_SCOPE.to_owned(),
                    client.clone(),
                )))
            }
        };
        Ok(RbmCarrier {
            base,
            agent_id: cfg.agent_id,
            auth: Arc::new(auth),
            client,
        })
    }

    /// Sends the request `build` makes with a token; after a 401, once more with a new token.
    async fn call(
        &self,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, CallError> {
        let token = self.auth.token().await.map_err(CallError::Token)?;
        let resp = build(token.header.expose())
            .send()
            .await
            .map_err(CallError::Transport)?;
        if resp.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        match self.auth.after_rejection(&token).await {
            None => Ok(resp),
            Some(fresh) => {
                let fresh = fresh.map_err(CallError::Token)?;
                tracing::debug!(
                    carrier = "rbm",
                    "401 with the cached token; repeating with a new one"
                );
                build(fresh.header.expose())
                    .send()
                    .await
                    .map_err(CallError::Transport)
            }
        }
    }

    /// `{base}/v1/phones/{recipient}{rest}?{query}`, the recipient percent-encoded as one path
    /// segment (`+` as `%2B`, which `set_path` keeps as it is).
    fn phone_url(&self, recipient: &str, rest: &str, query: &[(&str, &str)]) -> reqwest::Url {
        let mut url = self.base.clone();
        let path = format!(
            "{}/v1/phones/{}{rest}",
            self.base.path().trim_end_matches('/'),
            path_segment(recipient)
        );
        url.set_path(&path);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    fn body(s: &Submission) -> AgentMessage {
        let (content_message, sealpost_payload) = match &s.content {
            Content::Opaque {
                url,
                sha256,
                size,
                link,
            } => (
                ContentMessage {
                    text: None,
                    content_info: Some(ContentInfo {
                        file_url: url.clone(),
                        force_refresh: false,
                    }),
                },
                Some(SealpostPayload {
                    sha256: sha256.clone(),
                    size: *size,
                    link: link.clone(),
                }),
            ),
            Content::Notice { text } => (
                ContentMessage {
                    text: Some(text.clone()),
                    content_info: None,
                },
                None,
            ),
        };
        AgentMessage {
            content_message,
            expire_time: s
                .expire_time
                .and_then(|t| t.to_offset(UtcOffset::UTC).format(&Rfc3339).ok()),
            sealpost_payload,
        }
    }
}

/// The status word of an RBM error body, if the body is one.
async fn error_status(resp: reqwest::Response) -> Option<String> {
    let body = read_limited(resp, MAX_ERROR_BODY).await?;
    serde_json::from_slice::<ErrorBody>(&body)
        .ok()
        .map(|b| b.error.status)
}

fn retry_after(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[async_trait::async_trait]
impl Carrier for RbmCarrier {
    fn name(&self) -> &str {
        "rbm"
    }

    fn delivers(&self) -> Delivers {
        Delivers::Opaque
    }

    async fn submit(&self, s: &Submission) -> CarrierOutcome {
        let url = self.phone_url(
            &s.recipient,
            "/agentMessages",
            &[("messageId", &s.message_id), ("agentId", &self.agent_id)],
        );
        let body = Self::body(s);
        let sent = self
            .call(|auth| {
                self.client
                    .post(url.clone())
                    .header(reqwest::header::AUTHORIZATION, auth)
                    .json(&body)
            })
            .await;
        let outcome = match sent {
            Err(CallError::Token(code)) => CarrierOutcome::AuthFailed { code },
            Err(e) => CarrierOutcome::Transient {
                code: e.code(),
                retry_after: None,
            },
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry_after = retry_after(&resp);
                let code = if resp.status().is_success() {
                    None
                } else {
                    error_status(resp).await
                };
                match classify(status, retry_after.as_deref(), code.as_deref()) {
                    CarrierOutcome::Acked { .. } => CarrierOutcome::Acked {
                        carrier_message_id: s.message_id.clone(),
                    },
                    other => other,
                }
            }
        };
        tracing::debug!(
            carrier = "rbm",
            message_id = %s.message_id,
            recipient = %mask_recipient(&s.recipient),
            ?outcome,
            "submitted"
        );
        outcome
    }

    async fn capability(&self, recipient: &str) -> Capability {
        let request_id = uuid::Uuid::new_v4().to_string();
        let url = self.phone_url(
            recipient,
            "/capabilities",
            &[("requestId", &request_id), ("agentId", &self.agent_id)],
        );
        let sent = self
            .call(|auth| {
                self.client
                    .get(url.clone())
                    .header(reqwest::header::AUTHORIZATION, auth)
            })
            .await;
        match sent {
            Err(e) => Capability::Unknown { code: e.code() },
            Ok(resp) if resp.status().is_success() => Capability::Capable,
            Ok(resp) if resp.status().as_u16() == 404 => Capability::NotCapable,
            Ok(resp) => Capability::Unknown {
                code: format!("http_{}", resp.status().as_u16()),
            },
        }
    }

    async fn revoke(&self, message_id: &str, recipient: &str) -> RevokeResult {
        let url = self.phone_url(
            recipient,
            &format!("/agentMessages/{}", path_segment(message_id)),
            &[("agentId", &self.agent_id)],
        );
        let sent = self
            .call(|auth| {
                self.client
                    .delete(url.clone())
                    .header(reqwest::header::AUTHORIZATION, auth)
            })
            .await;
        let result = match sent {
            Err(e) => RevokeResult::Failed { code: e.code() },
            Ok(resp) if resp.status().is_success() => RevokeResult::Revoked,
            Ok(resp) if resp.status().as_u16() == 404 => RevokeResult::NotRevocable,
            Ok(resp) => RevokeResult::Failed {
                code: format!("http_{}", resp.status().as_u16()),
            },
        };
        tracing::debug!(carrier = "rbm", message_id, ?result, "revoke");
        result
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn carrier_at(base_url: String) -> RbmCarrier {
        RbmCarrier::new(RbmConfig {
            base_url,
            agent_id: "agent".into(),
            credentials: RbmCredentials::Bearer("tok-secret".into()),
            timeout: Duration::from_secs(1),
        })
        .unwrap()
    }

    fn carrier() -> RbmCarrier {
        carrier_at("http://127.0.0.1:9/".into())
    }

    #[test]
    fn opaque_body_carries_url_digest_and_expiry() {
        let s = Submission {
            message_id: "m1".into(),
            recipient: "+447700900123".into(),
            content: Content::Opaque {
                url: "https://blob/x".into(),
                sha256: "ab".repeat(32),
                size: Some(42),
                link: Some("https://sp.example/v1/d/acme/m1/token".into()),
            },
            expire_time: Some(time::macros::datetime!(2030-01-02 03:04:05 +01:00)),
        };
        let v = serde_json::to_value(RbmCarrier::body(&s)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "contentMessage": {"contentInfo": {"fileUrl": "https://blob/x", "forceRefresh": false}},
                "expireTime": "2030-01-02T02:04:05Z",
                "sealpostPayload": {
                    "sha256": "ab".repeat(32),
                    "size": 42,
                    "link": "https://sp.example/v1/d/acme/m1/token",
                },
            })
        );
        let body = RbmCarrier::body(&s);
        let printed = format!("{body:?}");
        assert!(!printed.contains("/v1/d/"), "{printed}");
    }

    #[test]
    fn notice_body_is_text_only() {
        let s = Submission {
            message_id: "m1".into(),
            recipient: "+447700900123".into(),
            content: Content::Notice {
                text: "You have a message".into(),
            },
            expire_time: None,
        };
        let v = serde_json::to_value(RbmCarrier::body(&s)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"contentMessage": {"text": "You have a message"}})
        );
    }

    #[test]
    fn urls_encode_the_number() {
        assert_eq!(
            carrier()
                .phone_url("+447700900123", "/capabilities", &[])
                .as_str(),
            "http://127.0.0.1:9/v1/phones/%2B447700900123/capabilities"
        );
        assert_eq!(
            carrier()
                .phone_url("+447700900123", "/agentMessages", &[("messageId", "m 1&x"), ("agentId", "a")])
                .as_str(),
            "http://127.0.0.1:9/v1/phones/%2B447700900123/agentMessages?messageId=m+1%26x&agentId=a"
        );
        // A base URL with a path keeps it.
        let prefixed = RbmCarrier::new(RbmConfig {
            base_url: "https://relay.example/rbm/".into(),
            agent_id: "agent".into(),
            credentials: RbmCredentials::Bearer("tok-secret".into()),
            timeout: Duration::from_secs(1),
        })
        .unwrap();
        assert_eq!(
            prefixed.phone_url("+1", "/capabilities", &[]).as_str(),
            "https://relay.example/rbm/v1/phones/%2B1/capabilities"
        );
    }

    #[test]
    fn debug_hides_the_token() {
        let d = format!("{:?}", carrier());
        assert!(!d.contains("tok-secret"), "{d}");
        let cfg = RbmConfig {
            base_url: "http://x".into(),
            agent_id: "a".into(),
            credentials: RbmCredentials::Bearer("tok-secret".into()),
            timeout: Duration::from_secs(1),
        };
        assert!(!format!("{cfg:?}").contains("tok-secret"));
    }

    #[test]
    fn config_is_validated() {
        let ok = RbmConfig {
            base_url: "http://x".into(),
            agent_id: "a".into(),
            credentials: RbmCredentials::Bearer("t".into()),
            timeout: Duration::from_secs(1),
        };
        assert!(RbmCarrier::new(RbmConfig {
            credentials: RbmCredentials::Bearer(" ".into()),
            ..ok.clone()
        })
        .is_err());
        assert!(RbmCarrier::new(RbmConfig {
            base_url: "ftp://x".into(),
            ..ok.clone()
        })
        .is_err());
        assert!(RbmCarrier::new(RbmConfig {
            timeout: Duration::ZERO,
            ..ok.clone()
        })
        .is_err());
        assert!(RbmCarrier::new(ok).is_ok());
    }

    #[tokio::test]
    async fn connect_error_is_transient() {
        // A port that was just free: nothing listens, the connect is refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let out = carrier_at(format!("http://127.0.0.1:{port}"))
            .submit(&Submission {
                message_id: "m".into(),
                recipient: "+447700900123".into(),
                content: Content::Notice { text: "x".into() },
                expire_time: None,
            })
            .await;
        assert!(
            matches!(&out, CarrierOutcome::Transient { code, .. } if code == "connect"),
            "{out:?}"
        );
    }
}
