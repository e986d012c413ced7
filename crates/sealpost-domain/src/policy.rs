//! Retry and expiry policy: pure functions of their inputs, so a replay reproduces every decision.
//!
//! Backoff for failed attempt `n` (1-based) is `min(base · 2^(n-1), max) · (0.5 + r)`, where `r` in
//! `[0, 1)` comes from SHA-256 of (message id, n): jittered, yet the same on every replay. A
//! Retry-After from the carrier is a floor on the delay. No retry is scheduled past the message's
//! `retry_until`, nor after `max_attempts` attempts. When `retry_until` is the TTL itself
//! (`expires_at`), a retry that no longer fits does not end the message: it waits for its expiry,
//! which decides how it ends (see the crate docs), so the timer and the policy never race.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::events::{EndReason, ErrorClass, MessageType};
use crate::ids::{MessageId, TenantId};

/// Longest TTL a sender may ask for.
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Retry windows per message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryWindows {
    #[serde(with = "humantime_secs")]
    pub transactional: Duration,
    #[serde(with = "humantime_secs")]
    pub promotional: Duration,
}

impl Default for RetryWindows {
    fn default() -> Self {
        Self {
            transactional: Duration::from_secs(72 * 3600),
            promotional: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl RetryWindows {
    pub fn for_type(&self, t: MessageType) -> Duration {
        match t {
            MessageType::Transactional => self.transactional,
            MessageType::Promotional => self.promotional,
        }
    }
}

/// The retry policy every `Message` command consults (the aggregate's cqrs-es `Services`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
    pub max_attempts: u32,
    pub windows: RetryWindows,
    /// Per-tenant windows that replace the defaults.
    #[serde(default)]
    pub tenant_windows: BTreeMap<TenantId, RetryWindows>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            max: Duration::from_secs(600),
            max_attempts: 30,
            windows: RetryWindows::default(),
            tenant_windows: BTreeMap::new(),
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    RetryAt {
        not_before: OffsetDateTime,
        delay: Duration,
    },
    GiveUp(EndReason),
    /// No retry fits before the TTL: attempt no more and let the expiry at `expires_at` end the
    /// message (with its fallback, if one was requested).
    AwaitExpiry,
}

impl RetryPolicy {
    /// The retry window for a tenant's message type (tenant override first).
    pub fn window(&self, tenant: &TenantId, t: MessageType) -> Duration {
        self.tenant_windows
            .get(tenant)
            .unwrap_or(&self.windows)
            .for_type(t)
    }

    /// The jittered exponential backoff after failed attempt `attempt` (1-based).
    pub fn backoff(&self, message_id: &MessageId, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(63);
        let raw = self
            .base
            .checked_mul(1u32.checked_shl(exp.min(31)).unwrap_or(u32::MAX))
            .unwrap_or(self.max);
        let capped = raw.min(self.max);
        capped.mul_f64(0.5 + jitter(message_id, attempt))
    }

    /// Decides whether failed attempt `attempt` of `class` is retried, and when.
    pub fn decide(&self, f: &FailedAttempt<'_>) -> RetryDecision {
        match f.class {
            ErrorClass::Permanent => return RetryDecision::GiveUp(EndReason::PermanentError),
            ErrorClass::NotCapable => return RetryDecision::GiveUp(EndReason::NotCapable),
            ErrorClass::Transient | ErrorClass::Throttled => {}
        }
        if f.attempt >= self.max_attempts {
            return RetryDecision::GiveUp(EndReason::MaxAttempts);
        }
        let mut delay = self.backoff(f.message_id, f.attempt);
        if let Some(ra) = f.retry_after {
            delay = delay.max(ra);
        }
        let not_before = f.now + delay;
        if not_before > f.retry_until {
            if f.retry_until >= f.expires_at {
                return RetryDecision::AwaitExpiry;
            }
            return RetryDecision::GiveUp(EndReason::RetryWindowExhausted);
        }
        RetryDecision::RetryAt { not_before, delay }
    }
}

/// The inputs of one retry decision.
#[derive(Debug, Clone, Copy)]
pub struct FailedAttempt<'a> {
    pub message_id: &'a MessageId,
    pub attempt: u32,
    pub class: ErrorClass,
    pub retry_after: Option<Duration>,
    pub retry_until: OffsetDateTime,
    /// The TTL deadline; when `retry_until` reaches it, the expiry ends the message.
    pub expires_at: OffsetDateTime,
    pub now: OffsetDateTime,
}

/// `r` in `[0, 1)`, a pure function of (message id, attempt).
fn jitter(message_id: &MessageId, attempt: u32) -> f64 {
    let mut h = Sha256::new();
    h.update(message_id.as_str().as_bytes());
    h.update(attempt.to_be_bytes());
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    // 53 bits fill an f64 mantissa exactly, so the result is uniform and strictly below 1.
    (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

/// Durations in config and JSON as whole seconds.
mod humantime_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn id() -> MessageId {
        MessageId::derive(&TenantId::new("acme").unwrap(), "k")
    }

    fn failed(attempt: u32, class: ErrorClass) -> FailedAttempt<'static> {
        static ID: std::sync::OnceLock<MessageId> = std::sync::OnceLock::new();
        FailedAttempt {
            message_id: ID.get_or_init(id),
            attempt,
            class,
            retry_after: None,
            retry_until: datetime!(2026-01-04 00:00 UTC),
            expires_at: datetime!(2026-01-05 00:00 UTC),
            now: datetime!(2026-01-01 00:00 UTC),
        }
    }

    #[test]
    fn backoff_doubles_within_jitter_and_caps_at_max() {
        let p = RetryPolicy::default();
        for attempt in 1..=40 {
            let nominal = p.base.saturating_mul(1 << (attempt - 1).min(31)).min(p.max);
            let d = p.backoff(&id(), attempt);
            assert!(d >= nominal.mul_f64(0.5), "attempt {attempt}: {d:?}");
            assert!(d < nominal.mul_f64(1.5), "attempt {attempt}: {d:?}");
        }
        assert!(p.backoff(&id(), 40) <= p.max.mul_f64(1.5));
    }

    #[test]
    fn backoff_is_reproducible_and_differs_between_messages() {
        let p = RetryPolicy::default();
        let other = MessageId::derive(&TenantId::new("acme").unwrap(), "other");
        assert_eq!(p.backoff(&id(), 3), p.backoff(&id(), 3));
        let differs = (1..10).any(|a| p.backoff(&id(), a) != p.backoff(&other, a));
        assert!(differs);
    }

    #[test]
    fn transient_and_throttled_retry() {
        let p = RetryPolicy::default();
        for class in [ErrorClass::Transient, ErrorClass::Throttled] {
            let f = failed(1, class);
            match p.decide(&f) {
                RetryDecision::RetryAt { not_before, delay } => {
                    assert_eq!(not_before, f.now + delay);
                    assert_eq!(delay, p.backoff(f.message_id, 1));
                }
                other => panic!("{class:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn permanent_and_not_capable_give_up_at_once() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.decide(&failed(1, ErrorClass::Permanent)),
            RetryDecision::GiveUp(EndReason::PermanentError)
        );
        assert_eq!(
            p.decide(&failed(1, ErrorClass::NotCapable)),
            RetryDecision::GiveUp(EndReason::NotCapable)
        );
    }

    #[test]
    fn retry_after_is_a_floor_on_the_delay() {
        let p = RetryPolicy::default();
        let mut f = failed(1, ErrorClass::Throttled);
        f.retry_after = Some(Duration::from_secs(120));
        assert_eq!(
            p.decide(&f),
            RetryDecision::RetryAt {
                not_before: f.now + Duration::from_secs(120),
                delay: Duration::from_secs(120)
            }
        );
        // A Retry-After shorter than the backoff does not shorten it.
        f.retry_after = Some(Duration::from_millis(1));
        let RetryDecision::RetryAt { delay, .. } = p.decide(&f) else {
            panic!("expected a retry")
        };
        assert_eq!(delay, p.backoff(f.message_id, 1));
    }

    #[test]
    fn no_retry_past_the_window() {
        let p = RetryPolicy::default();
        let mut f = failed(1, ErrorClass::Transient);
        f.retry_until = f.now + Duration::from_millis(10);
        assert_eq!(
            p.decide(&f),
            RetryDecision::GiveUp(EndReason::RetryWindowExhausted)
        );
    }

    #[test]
    fn no_retry_after_max_attempts() {
        let p = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        };
        assert!(matches!(
            p.decide(&failed(2, ErrorClass::Transient)),
            RetryDecision::RetryAt { .. }
        ));
        assert_eq!(
            p.decide(&failed(3, ErrorClass::Transient)),
            RetryDecision::GiveUp(EndReason::MaxAttempts)
        );
    }

    #[test]
    fn windows_default_per_type_and_tenant_overrides_win() {
        let mut p = RetryPolicy::default();
        let acme = TenantId::new("acme").unwrap();
        let beta = TenantId::new("beta").unwrap();
        assert_eq!(
            p.window(&acme, MessageType::Transactional),
            Duration::from_secs(72 * 3600)
        );
        assert_eq!(
            p.window(&acme, MessageType::Promotional),
            Duration::from_secs(7 * 24 * 3600)
        );
        p.tenant_windows.insert(
            acme.clone(),
            RetryWindows {
                transactional: Duration::from_secs(3600),
                promotional: Duration::from_secs(7200),
            },
        );
        assert_eq!(
            p.window(&acme, MessageType::Transactional),
            Duration::from_secs(3600)
        );
        assert_eq!(
            p.window(&beta, MessageType::Transactional),
            Duration::from_secs(72 * 3600)
        );
    }
}
