//! The simulator's settings and fault mix. Deserializable, so `sealpost carrier-sim` can read them
//! from its config file; durations are given in milliseconds (`latency_ms`, `receipt_delay_ms`).

use std::time::Duration;

use sealpost_domain::Secret;
use serde::{Deserialize, Deserializer};

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SimConfig {
    /// The RBM agent id; sends with another `agentId` are answered 403.
    pub agent_id: String,
    /// Accepted as `Authorization: Bearer ...` on every RBM call when not empty; besides it, the
    /// access tokens the token endpoint issued are accepted until they expire; 401 otherwise.
    pub bearer_token: Secret,
    /// The RBM agent's service account: `POST /token` issues access tokens to assertions signed
    /// with its key. None: the token endpoint refuses every request.
    #[serde(skip)]
    pub service_account: Option<sealpost_carriers::ServiceAccountKey>,
    /// Lifetime of an issued access token (`expires_in`, in whole seconds on the wire).
    #[serde(rename = "token_ttl_ms", deserialize_with = "millis")]
    pub token_ttl: Duration,
    /// Required as `Authorization: Bearer ...` on the SMS API; 401 otherwise.
    pub sms_api_key: Secret,
    /// Signs webhooks (`X-Goog-Signature`).
    pub client_token: Secret,
    /// Where DELIVERED/READ/TTL webhooks are POSTed, e.g. `http://127.0.0.1:8080/v1/receipts/rbm`.
    pub webhook_url: Option<String>,
    /// Added to every RBM and SMS request before it is answered.
    #[serde(rename = "latency_ms", deserialize_with = "millis")]
    pub latency: Duration,
    /// After accepting, before DELIVERED; READ follows after another `receipt_delay`.
    #[serde(rename = "receipt_delay_ms", deserialize_with = "millis")]
    pub receipt_delay: Duration,
    pub faults: FaultMix,
    /// Seeds the fault draws and the per-recipient choices: same seed, same run.
    pub seed: u64,
    /// Webhook requests in flight at once.
    pub webhook_concurrency: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            agent_id: "sealpost-sim@rbm.goog".into(),
            bearer_token: "sim-rbm-token".into(),
            service_account: None,
            token_ttl: crate::oauth::DEFAULT_TOKEN_TTL,
            sms_api_key: "sim-sms-key".into(),
            client_token: "sim-client-token".into(),
            webhook_url: None,
            latency: Duration::ZERO,
            receipt_delay: Duration::from_millis(50),
            faults: FaultMix::default(),
            seed: 1,
            webhook_concurrency: 64,
        }
    }
}

fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_millis)
}

/// Fault probabilities, 0.0..=1.0. Per-request faults (`throttle`, `server_error`, `timeout`,
/// `permanent`) are drawn once per new send from the seeded generator, in that order of
/// precedence; `not_capable` and `offline` are fixed per recipient (a hash of the number and the
/// seed), so a capability check and a send agree. Receipt faults are drawn per receipt.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct FaultMix {
    /// 429 `RESOURCE_EXHAUSTED` with `Retry-After: retry_after_secs`.
    pub throttle: f64,
    pub retry_after_secs: u64,
    /// 503 `UNAVAILABLE`.
    pub server_error: f64,
    /// Accept the message, then hang `hang_ms` before answering: the client times out, and its
    /// resubmission must get 409.
    pub timeout: f64,
    pub hang_ms: u64,
    /// 404 `NOT_FOUND` on send and capability check.
    pub not_capable: f64,
    /// 400 `INVALID_ARGUMENT`.
    pub permanent: f64,
    /// A receipt is pushed twice (byte-identical, as a Pub/Sub redelivery).
    pub duplicate_receipt: f64,
    /// READ is pushed before DELIVERED.
    pub out_of_order_receipt: f64,
    /// Accepted, never delivered; revoked with TTL_EXPIRATION_REVOKED at its `expireTime`.
    pub offline: f64,
}

impl Default for FaultMix {
    fn default() -> Self {
        FaultMix {
            throttle: 0.0,
            retry_after_secs: 1,
            server_error: 0.0,
            timeout: 0.0,
            hang_ms: 10_000,
            not_capable: 0.0,
            permanent: 0.0,
            duplicate_receipt: 0.0,
            out_of_order_receipt: 0.0,
            offline: 0.0,
        }
    }
}

/// A scripted answer to the next send to one recipient ([`crate::RunningSim::script`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scripted {
    /// Answer this status with RBM's error body (a 2xx accepts). A 429 or 503 with
    /// `retry_after_secs` sends `Retry-After`; a 429 with it also opens the throttle window.
    Status {
        code: u16,
        retry_after_secs: Option<u64>,
    },
    /// Accept, then hang `FaultMix::hang_ms` before answering.
    Timeout,
    /// 404 `NOT_FOUND`.
    NotCapable,
    /// Accept, and never deliver (TTL revoke at `expireTime`, if one was given).
    AcceptOffline,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn deserializes_with_defaults_and_millis() {
        let cfg: SimConfig = serde_json::from_str(
            r#"{"latency_ms": 5, "receipt_delay_ms": 200, "faults": {"throttle": 0.1}, "seed": 7}"#,
        )
        .unwrap();
        assert_eq!(cfg.latency, Duration::from_millis(5));
        assert_eq!(cfg.receipt_delay, Duration::from_millis(200));
        assert_eq!(cfg.faults.throttle, 0.1);
        assert_eq!(cfg.faults.retry_after_secs, 1);
        assert_eq!(cfg.seed, 7);
        assert_eq!(cfg.webhook_concurrency, 64);
        assert!(!format!("{cfg:?}").contains("sim-rbm-token"));
    }
}
