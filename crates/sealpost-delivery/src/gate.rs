//! Per-carrier throttling: a concurrency limit, a token bucket, and a carrier-wide pause when
//! the carrier answers 429 or refuses our credentials. The pause holds back every job for that
//! carrier, not only the one that was refused, so a throttled aggregator sees no request before
//! its Retry-After, and a credential outage costs one probe per pause instead of every message.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit};

/// How long a job is put back while another job probes a carrier that refused our credentials.
pub const PROBE_WAIT: Duration = Duration::from_secs(1);

/// Limits for one carrier.
#[derive(Debug, Clone, Copy)]
pub struct GateConfig {
    /// Submissions in flight at once.
    pub concurrency: usize,
    /// Sustained submissions per second; 0 = unlimited.
    pub rate_per_sec: u32,
    /// Bucket size: how many submissions may start back to back after a quiet spell.
    pub burst: u32,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            concurrency: 256,
            rate_per_sec: 0,
            burst: 100,
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// The throttle of one carrier, shared by every job in the process.
#[derive(Debug)]
pub struct CarrierGate {
    name: String,
    cfg: GateConfig,
    slots: Semaphore,
    bucket: Mutex<Bucket>,
    paused_until: Mutex<Option<Instant>>,
    /// Set by an auth-failure pause: when the pause ends, one job at a time probes the carrier
    /// until one is answered without an auth failure, so a credential outage costs one request
    /// per pause, not one per job waiting.
    probe_only: AtomicBool,
    probe_in_flight: AtomicBool,
}

/// A job let through the gate: it holds a submission slot until dropped.
#[derive(Debug)]
pub struct Pass<'a> {
    gate: &'a CarrierGate,
    _permit: SemaphorePermit<'a>,
    probe: bool,
}

impl Pass<'_> {
    /// The carrier answered this job's request with something other than an auth failure: our
    /// credentials work, so every job may go again.
    pub fn credentials_accepted(self) {
        self.gate.probe_only.store(false, Ordering::SeqCst);
    }

    /// Ends the pass with the carrier's answer. Only an answer the carrier gives past its
    /// authentication (accepted, refused for the message, throttled) ends a probe; a timeout or
    /// a 5xx says nothing about our credentials, so the next job probes again.
    pub fn answered(self, outcome: &sealpost_domain::CarrierOutcome) {
        use sealpost_domain::CarrierOutcome as O;
        if matches!(
            outcome,
            O::Acked { .. } | O::Permanent { .. } | O::NotRcsCapable | O::Throttled { .. }
        ) {
            self.credentials_accepted();
        }
    }

    /// Whether this job is the one probing a carrier that refused our credentials.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        if self.probe {
            self.gate.probe_in_flight.store(false, Ordering::SeqCst);
        }
    }
}

/// Why a carrier is paused (for the log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseReason {
    /// 429, or a 5xx with Retry-After.
    Throttled,
    /// 401/403 after a token refresh, or no access token could be had.
    AuthFailed,
}

/// Why [`CarrierGate::enter`] did not let a job through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paused {
    /// How long the carrier stays paused from now.
    pub remaining: Duration,
}

impl CarrierGate {
    pub fn new(name: &str, cfg: GateConfig) -> Self {
        Self {
            name: name.to_owned(),
            cfg,
            slots: Semaphore::new(cfg.concurrency.max(1)),
            bucket: Mutex::new(Bucket {
                tokens: f64::from(cfg.burst.max(1)),
                last: Instant::now(),
            }),
            paused_until: Mutex::new(None),
            probe_only: AtomicBool::new(false),
            probe_in_flight: AtomicBool::new(false),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Holds the carrier back until `now + d`. A pause only ever grows: a shorter Retry-After
    /// from a later answer does not end an earlier, longer one.
    pub fn pause(&self, d: Duration, reason: PauseReason) {
        if reason == PauseReason::AuthFailed {
            self.probe_only.store(true, Ordering::SeqCst);
        }
        let until = Instant::now() + d;
        if let Ok(mut p) = self.paused_until.lock() {
            if p.is_none_or(|cur| cur < until) {
                let began = p.is_none_or(|cur| cur <= Instant::now());
                *p = Some(until);
                let pause_ms = d.as_millis() as u64;
                match reason {
                    PauseReason::Throttled => {
                        tracing::warn!(carrier = %self.name, pause_ms, "carrier throttled us; pausing it")
                    }
                    // Every job in flight with the bad credentials lands here: say it once per
                    // outage, not once per job (the metric counts each).
                    PauseReason::AuthFailed if began => tracing::error!(
                        carrier = %self.name,
                        pause_ms,
                        "the carrier refuses our credentials; pausing it (messages wait, none fails): check the carrier credentials in the config"
                    ),
                    PauseReason::AuthFailed => {}
                }
            }
        }
    }

    /// Remaining pause, if the carrier is paused.
    pub fn paused_for(&self, now: Instant) -> Option<Duration> {
        let p = *self.paused_until.lock().ok()?;
        p.and_then(|until| until.checked_duration_since(now))
            .filter(|d| !d.is_zero())
    }

    /// Waits for a free slot, a token and the end of any pause. A pause longer than `max_wait`
    /// is returned instead of waited out, so the caller can NAK its job until then. After an
    /// auth-failure pause, only one job at a time is let through (the probe); the others are
    /// returned [`PROBE_WAIT`] until a probe is answered without an auth failure.
    pub async fn enter(&self, max_wait: Duration) -> Result<Pass<'_>, Paused> {
        loop {
            if let Some(remaining) = self.paused_for(Instant::now()) {
                if remaining > max_wait {
                    return Err(Paused { remaining });
                }
                tokio::time::sleep(remaining).await;
                continue;
            }
            let Ok(permit) = self.slots.acquire().await else {
                // The semaphore is never closed; treat it as a momentary pause.
                return Err(Paused {
                    remaining: Duration::from_millis(100),
                });
            };
            match self.take_token(Instant::now()) {
                None => {}
                Some(wait) => {
                    tokio::time::sleep(wait).await;
                    drop(permit);
                    continue;
                }
            }
            // A pause may have begun while this job waited for a slot.
            if self.paused_for(Instant::now()).is_some() {
                drop(permit);
                continue;
            }
            let mut probe = false;
            if self.probe_only.load(Ordering::SeqCst) {
                if self
                    .probe_in_flight
                    .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                    .is_err()
                {
                    return Err(Paused {
                        remaining: PROBE_WAIT,
                    });
                }
                probe = true;
            }
            return Ok(Pass {
                gate: self,
                _permit: permit,
                probe,
            });
        }
    }

    /// Takes a token, or says how long until one is available.
    fn take_token(&self, now: Instant) -> Option<Duration> {
        if self.cfg.rate_per_sec == 0 {
            return None;
        }
        let rate = f64::from(self.cfg.rate_per_sec);
        let burst = f64::from(self.cfg.burst.max(1));
        let Ok(mut b) = self.bucket.lock() else {
            return None;
        };
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            None
        } else {
            Some(Duration::from_secs_f64((1.0 - b.tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn given_a_pause_longer_than_the_wait_when_entering_then_the_remaining_pause_is_returned()
    {
        let g = CarrierGate::new("rbm", GateConfig::default());
        g.pause(Duration::from_secs(5), PauseReason::Throttled);
        let err = g.enter(Duration::from_millis(10)).await.unwrap_err();
        assert!(err.remaining > Duration::from_secs(4));
    }

    #[tokio::test]
    async fn given_a_short_pause_when_entering_then_it_waits_it_out() {
        let g = CarrierGate::new("rbm", GateConfig::default());
        g.pause(Duration::from_millis(50), PauseReason::AuthFailed);
        let t = Instant::now();
        let _p = g.enter(Duration::from_secs(1)).await.unwrap();
        assert!(t.elapsed() >= Duration::from_millis(45));
    }

    #[tokio::test]
    async fn given_an_auth_failure_pause_when_it_ends_then_one_probe_at_a_time_goes_until_one_is_accepted(
    ) {
        let g = CarrierGate::new("rbm", GateConfig::default());
        g.pause(Duration::from_millis(20), PauseReason::AuthFailed);
        let probe = g.enter(Duration::from_secs(1)).await.unwrap();
        assert!(probe.is_probe());
        // While the probe is out, the others are put back.
        let err = g.enter(Duration::from_secs(1)).await.unwrap_err();
        assert_eq!(err.remaining, PROBE_WAIT);
        // The probe failed too (its pause is set before the pass is dropped): still probing.
        g.pause(Duration::ZERO, PauseReason::AuthFailed);
        drop(probe);
        let second = g.enter(Duration::from_secs(1)).await.unwrap();
        assert!(second.is_probe());
        second.credentials_accepted();
        // Accepted: everyone goes, together.
        let a = g.enter(Duration::ZERO).await.unwrap();
        let b = g.enter(Duration::ZERO).await.unwrap();
        assert!(!a.is_probe() && !b.is_probe());
    }

    #[tokio::test]
    async fn given_a_probe_when_it_times_out_then_the_next_job_probes_again() {
        use sealpost_domain::CarrierOutcome;
        let g = CarrierGate::new("rbm", GateConfig::default());
        g.pause(Duration::ZERO, PauseReason::AuthFailed);
        let probe = g.enter(Duration::from_secs(1)).await.unwrap();
        assert!(probe.is_probe());
        probe.answered(&CarrierOutcome::Transient {
            code: "timeout".into(),
            retry_after: None,
        });
        let next = g.enter(Duration::from_secs(1)).await.unwrap();
        assert!(
            next.is_probe(),
            "a timeout proved nothing about the credentials"
        );
        next.answered(&CarrierOutcome::Acked {
            carrier_message_id: "m".into(),
        });
        assert!(!g.enter(Duration::ZERO).await.unwrap().is_probe());
    }

    #[tokio::test]
    async fn given_a_throttle_pause_when_it_ends_then_every_job_goes() {
        let g = CarrierGate::new("rbm", GateConfig::default());
        g.pause(Duration::from_millis(10), PauseReason::Throttled);
        let a = g.enter(Duration::from_secs(1)).await.unwrap();
        let b = g.enter(Duration::from_secs(1)).await.unwrap();
        assert!(!a.is_probe() && !b.is_probe());
    }

    #[test]
    fn given_a_long_pause_when_a_shorter_one_arrives_then_the_longer_one_stays() {
        let g = CarrierGate::new("rbm", GateConfig::default());
        g.pause(Duration::from_secs(10), PauseReason::Throttled);
        g.pause(Duration::from_secs(1), PauseReason::AuthFailed);
        assert!(g.paused_for(Instant::now()).unwrap() > Duration::from_secs(9));
    }

    #[test]
    fn given_a_rate_when_the_burst_is_spent_then_the_next_token_waits_one_interval() {
        let g = CarrierGate::new(
            "sms",
            GateConfig {
                concurrency: 4,
                rate_per_sec: 10,
                burst: 2,
            },
        );
        let now = Instant::now();
        assert_eq!(g.take_token(now), None);
        assert_eq!(g.take_token(now), None);
        let wait = g.take_token(now).unwrap();
        assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100));
        assert_eq!(g.take_token(now + Duration::from_millis(100)), None);
    }

    #[test]
    fn given_no_rate_when_taking_tokens_then_none_ever_waits() {
        let g = CarrierGate::new("rbm", GateConfig::default());
        let now = Instant::now();
        assert!((0..10_000).all(|_| g.take_token(now).is_none()));
    }

    #[tokio::test]
    async fn given_a_concurrency_of_one_when_a_slot_is_held_then_a_second_entry_waits() {
        let g = CarrierGate::new(
            "rbm",
            GateConfig {
                concurrency: 1,
                ..GateConfig::default()
            },
        );
        let held = g.enter(Duration::ZERO).await.unwrap();
        let second = tokio::time::timeout(Duration::from_millis(50), g.enter(Duration::ZERO)).await;
        assert!(
            second.is_err(),
            "a second submission started while the only slot was held"
        );
        drop(held);
        assert!(g.enter(Duration::ZERO).await.is_ok());
    }
}
