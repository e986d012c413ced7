//! A plain HTTP SMS API, for neutral fallback notices only.
//!
//! `POST {base}/sms/v1/messages` with `{"to", "from", "text", "client_ref"}` answers 201; a reused
//! `client_ref` (our message id) answers 409, which counts as acked. SMS never carries content:
//! an opaque submission is refused before any request.

use std::time::Duration;

use sealpost_domain::{CarrierOutcome, Secret};

use crate::http::{base_url, transport_code};
use crate::wire::SmsRequest;
use crate::{
    classify, http_client, mask_recipient, Capability, Carrier, CarrierError, Content, Delivers,
    RevokeResult, Submission,
};

#[derive(Debug, Clone)]
pub struct SmsConfig {
    pub base_url: String,
    pub api_key: Secret,
    /// Sender id or short code shown to the recipient.
    pub sender: String,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct SmsCarrier {
    url: String,
    /// `Bearer <api key>`.
    auth: Secret,
    sender: String,
    client: reqwest::Client,
}

impl SmsCarrier {
    pub fn new(cfg: SmsConfig) -> Result<Self, CarrierError> {
        let base = base_url(&cfg.base_url, "SMS")?;
        if cfg.api_key.expose().trim().is_empty() {
            return Err(CarrierError::Config(
                "SMS api_key is empty; set the SMS API's key".into(),
            ));
        }
        if cfg.sender.trim().is_empty() {
            return Err(CarrierError::Config("SMS sender is empty".into()));
        }
        if cfg.timeout.is_zero() {
            return Err(CarrierError::Config(
                "SMS timeout must be above zero".into(),
            ));
        }
        Ok(SmsCarrier {
            url: format!("{base}/sms/v1/messages"),
            auth: Secret::new(format!("Bearer {}", cfg.api_key.expose().trim())),
            sender: cfg.sender,
            client: http_client(cfg.timeout)?,
        })
    }
}

#[async_trait::async_trait]
impl Carrier for SmsCarrier {
    fn name(&self) -> &str {
        "sms"
    }

    fn delivers(&self) -> Delivers {
        Delivers::Notice
    }

    async fn submit(&self, s: &Submission) -> CarrierOutcome {
        let text = match &s.content {
            Content::Notice { text } => text,
            Content::Opaque { .. } => {
                return CarrierOutcome::Permanent {
                    code: "opaque_not_supported".into(),
                }
            }
        };
        let body = SmsRequest {
            to: s.recipient.clone(),
            from: self.sender.clone(),
            text: text.clone(),
            client_ref: s.message_id.clone(),
        };
        let sent = self
            .client
            .post(&self.url)
            .header(reqwest::header::AUTHORIZATION, self.auth.expose())
            .json(&body)
            .send()
            .await;
        let outcome = match sent {
            Err(e) => CarrierOutcome::Transient {
                code: transport_code(&e).to_owned(),
                retry_after: None,
            },
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok());
                match classify(status, retry_after, None) {
                    CarrierOutcome::Acked { .. } => CarrierOutcome::Acked {
                        carrier_message_id: s.message_id.clone(),
                    },
                    // 404 only means "no such endpoint" here; a number without RCS is RBM's.
                    CarrierOutcome::NotRcsCapable => CarrierOutcome::Permanent {
                        code: "http_404".into(),
                    },
                    other => other,
                }
            }
        };
        tracing::debug!(
            carrier = "sms",
            message_id = %s.message_id,
            recipient = %mask_recipient(&s.recipient),
            ?outcome,
            "submitted"
        );
        outcome
    }

    async fn capability(&self, _recipient: &str) -> Capability {
        Capability::Capable
    }

    async fn revoke(&self, _message_id: &str, _recipient: &str) -> RevokeResult {
        RevokeResult::NotRevocable
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn opaque_is_refused_without_a_request() {
        // Nothing listens on the base URL: a request would be Transient, not Permanent.
        let sms = SmsCarrier::new(SmsConfig {
            base_url: "http://127.0.0.1:1".into(),
            api_key: "key-secret".into(),
            sender: "Sealpost".into(),
            timeout: Duration::from_secs(1),
        })
        .unwrap();
        assert_eq!(sms.delivers(), Delivers::Notice);
        assert!(!format!("{sms:?}").contains("key-secret"));
        let out = sms
            .submit(&Submission {
                message_id: "m".into(),
                recipient: "+447700900123".into(),
                content: Content::Opaque {
                    url: "https://x".into(),
                    sha256: "00".repeat(32),
                    size: None,
                    link: None,
                },
                expire_time: None,
            })
            .await;
        assert_eq!(
            out,
            CarrierOutcome::Permanent {
                code: "opaque_not_supported".into()
            }
        );
        assert_eq!(sms.capability("+1").await, Capability::Capable);
        assert_eq!(sms.revoke("m", "+1").await, RevokeResult::NotRevocable);
    }
}
