//! Per-carrier throttling: a concurrency limit, a token bucket, and a carrier-wide pause when
//! the carrier answers 429 or refuses our credentials. The pause holds back every job for that
//! carrier, not only the one that was refused, so a throttled aggregator sees no request before
//! its Retry-After. When a pause ends, one job probes the carrier first and the others follow
//! its answer: a carrier still throttling sees one request per Retry-After, not every job that
//! waited (which would all land inside the next window), and a credential outage costs one
//! request per pause instead of every message.
//!
//! A carrier that throttled us lately is also held to a few requests in flight (four by
//! default) until it has not throttled for a while (`throttle_cooldown`). A 429 then finds
//! (almost) nothing else on its way, so the next requests honour its window; at full
//! concurrency, every request already sent when the 429 is answered lands inside the window,
//! and a carrier that throttles at random does so again within the burst that follows a pause.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore, SemaphorePermit};

/// How long a job is put back while another job probes a carrier that refused our credentials
/// (or while a throttle probe takes longer than the job may wait in the gate).
pub const PROBE_WAIT: Duration = Duration::from_secs(1);

/// The pause when a 429 names no Retry-After.
pub const DEFAULT_THROTTLE_PAUSE: Duration = Duration::from_secs(1);

/// Limits for one carrier.
#[derive(Debug, Clone, Copy)]
pub struct GateConfig {
    /// Submissions in flight at once.
    pub concurrency: usize,
    /// Sustained submissions per second; 0 = unlimited.
    pub rate_per_sec: u32,
    /// Bucket size: how many submissions may start back to back after a quiet spell.
    pub burst: u32,
    /// Submissions in flight at once while the carrier throttled us within `throttle_cooldown`.
    pub throttled_concurrency: usize,
    /// How long after its last 429 a carrier is held to `throttled_concurrency`.
    pub throttle_cooldown: Duration,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            concurrency: 256,
            rate_per_sec: 0,
            burst: 100,
            throttled_concurrency: 4,
            throttle_cooldown: Duration::from_secs(10),
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
    /// The few slots a job also takes while the carrier cools down after a 429.
    cooldown_slots: Semaphore,
    /// When the carrier last answered 429 (or a 5xx with Retry-After).
    last_throttle: Mutex<Option<Instant>>,
    bucket: Mutex<Bucket>,
    paused_until: Mutex<Option<Instant>>,
    /// Set by a pause, with its reason: when the pause ends, one job at a time probes the
    /// carrier until one is answered neither throttled nor refused for our credentials.
    probe_only: Mutex<Option<PauseReason>>,
    probe_in_flight: AtomicBool,
    /// Wakes the jobs waiting behind a throttle probe when it ends.
    probe_ended: Notify,
}

/// A job let through the gate: it holds a submission slot until dropped.
#[derive(Debug)]
pub struct Pass<'a> {
    gate: &'a CarrierGate,
    _permit: SemaphorePermit<'a>,
    /// Held while the carrier cools down after a 429.
    _cooldown: Option<SemaphorePermit<'a>>,
    probe: bool,
}

impl Pass<'_> {
    /// The carrier took this job's request (neither throttled nor refused for our credentials).
    /// If this job was the probe, every job may go again. An answer to a request sent before the
    /// pause began ends nothing: the probe after the pause decides.
    pub fn carrier_accepts(self) {
        if !self.probe {
            return;
        }
        if let Ok(mut p) = self.gate.probe_only.lock() {
            *p = None;
        }
    }

    /// Ends the pass with the carrier's answer.
    /// - Accepted, or refused for the message itself: the carrier takes requests again, and a
    ///   probe lets every job go.
    /// - Throttled: the carrier is paused for its Retry-After (1 s without one), and when that
    ///   ends one job probes again. The pause is set before the pass is let go, so the jobs
    ///   waiting behind a probe see it.
    /// - A timeout or a 5xx says nothing about throttling or our credentials: the next job
    ///   probes again.
    ///
    /// (An auth failure pauses the carrier through [`CarrierGate::pause`] before the pass is
    /// dropped; see `carrier_auth_failed`.)
    pub fn answered(self, outcome: &sealpost_domain::CarrierOutcome) {
        use sealpost_domain::CarrierOutcome as O;
        match outcome {
            O::Acked { .. } | O::Permanent { .. } | O::NotRcsCapable => self.carrier_accepts(),
            O::Throttled { retry_after, .. } => self.gate.pause(
                retry_after.unwrap_or(DEFAULT_THROTTLE_PAUSE),
                PauseReason::Throttled,
            ),
            _ => {}
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
            self.gate.probe_ended.notify_waiters();
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
            cooldown_slots: Semaphore::new(cfg.throttled_concurrency.max(1)),
            last_throttle: Mutex::new(None),
            bucket: Mutex::new(Bucket {
                tokens: f64::from(cfg.burst.max(1)),
                last: Instant::now(),
            }),
            paused_until: Mutex::new(None),
            probe_only: Mutex::new(None),
            probe_in_flight: AtomicBool::new(false),
            probe_ended: Notify::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Holds the carrier back until `now + d`. A pause only ever grows: a shorter Retry-After
    /// from a later answer does not end an earlier, longer one.
    pub fn pause(&self, d: Duration, reason: PauseReason) {
        if let Ok(mut p) = self.probe_only.lock() {
            *p = Some(reason);
        }
        if reason == PauseReason::Throttled {
            if let Ok(mut t) = self.last_throttle.lock() {
                *t = Some(Instant::now());
            }
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
    /// Whether the carrier throttled us within `throttle_cooldown` of `now`.
    pub fn cooling_down(&self, now: Instant) -> bool {
        self.last_throttle
            .lock()
            .ok()
            .and_then(|t| *t)
            .is_some_and(|t| now.saturating_duration_since(t) < self.cfg.throttle_cooldown)
    }

    pub fn paused_for(&self, now: Instant) -> Option<Duration> {
        let p = *self.paused_until.lock().ok()?;
        p.and_then(|until| until.checked_duration_since(now))
            .filter(|d| !d.is_zero())
    }

    /// Waits for a free slot, a token and the end of any pause. A pause longer than `max_wait`
    /// is returned instead of waited out, so the caller can NAK its job until then. After a
    /// pause, only one job at a time is let through (the probe) until one is answered neither
    /// throttled nor refused for our credentials. Meanwhile the others wait here for the probe's
    /// answer after a throttle (up to `max_wait`, then [`PROBE_WAIT`] is returned), and are
    /// returned [`PROBE_WAIT`] after an auth failure (an outage lasts longer than a job should
    /// wait in the gate). While the carrier cools down after a 429, a job also waits up to
    /// `max_wait` for one of the `throttled_concurrency` slots, then [`PROBE_WAIT`] is returned.
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
            // Cooling down after a 429: one of the few cool-down slots as well, waited for up
            // to `max_wait` like a pause (then the job is put back for a while).
            let cooldown = if self.cooling_down(Instant::now()) {
                match tokio::time::timeout(max_wait, self.cooldown_slots.acquire()).await {
                    Ok(Ok(c)) => Some(c),
                    Ok(Err(_)) | Err(_) => {
                        return Err(Paused {
                            remaining: PROBE_WAIT,
                        })
                    }
                }
            } else {
                None
            };
            // A pause may have begun while this job waited for a slot.
            if self.paused_for(Instant::now()).is_some() {
                drop((cooldown, permit));
                continue;
            }
            let mut probe = false;
            let probing = self.probe_only.lock().ok().and_then(|p| *p);
            if let Some(reason) = probing {
                // Registered before the check, so the probe's end cannot slip in between.
                let ended = self.probe_ended.notified();
                tokio::pin!(ended);
                ended.as_mut().enable();
                if self
                    .probe_in_flight
                    .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                    .is_err()
                {
                    drop((cooldown, permit));
                    let waited = reason == PauseReason::Throttled
                        && tokio::time::timeout(max_wait, ended).await.is_ok();
                    if waited {
                        continue;
                    }
                    return Err(Paused {
                        remaining: PROBE_WAIT,
                    });
                }
                probe = true;
            }
            return Ok(Pass {
                gate: self,
                _permit: permit,
                _cooldown: cooldown,
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
        // Timed from before the pause, so a stall between the two lines cannot fail the check.
        let t = Instant::now();
        g.pause(Duration::from_millis(50), PauseReason::AuthFailed);
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
        second.carrier_accepts();
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

    /// The probe alone, without the cool-down after a 429 (tested on its own below).
    fn no_cooldown() -> GateConfig {
        GateConfig {
            throttle_cooldown: Duration::ZERO,
            ..GateConfig::default()
        }
    }

    #[tokio::test]
    async fn given_a_throttle_pause_when_it_ends_then_one_probe_goes_and_the_others_wait_for_its_answer(
    ) {
        use sealpost_domain::CarrierOutcome;
        let g = std::sync::Arc::new(CarrierGate::new("rbm", no_cooldown()));
        g.pause(Duration::from_millis(10), PauseReason::Throttled);
        let probe = g.enter(Duration::from_secs(1)).await.unwrap();
        assert!(probe.is_probe());
        // Another job waits in the gate (not put back) while the probe is out.
        let waiter = {
            let g = g.clone();
            tokio::spawn(async move {
                let p = g.enter(Duration::from_secs(5)).await.map(|p| p.is_probe());
                (p, Instant::now())
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "it waits for the probe's answer");
        let answered_at = Instant::now();
        probe.answered(&CarrierOutcome::Acked {
            carrier_message_id: "m".into(),
        });
        let (entered, at) = waiter.await.unwrap();
        assert_eq!(
            entered,
            Ok(false),
            "after an accepted probe, every job goes"
        );
        assert!(at >= answered_at);
        let a = g.enter(Duration::ZERO).await.unwrap();
        let b = g.enter(Duration::ZERO).await.unwrap();
        assert!(!a.is_probe() && !b.is_probe());
    }

    #[tokio::test]
    async fn given_a_throttle_probe_when_it_is_throttled_again_then_the_waiting_jobs_see_the_new_pause(
    ) {
        use sealpost_domain::CarrierOutcome;
        let g = std::sync::Arc::new(CarrierGate::new("rbm", no_cooldown()));
        g.pause(Duration::ZERO, PauseReason::Throttled);
        let probe = g.enter(Duration::from_secs(1)).await.unwrap();
        let waiter = {
            let g = g.clone();
            tokio::spawn(async move { g.enter(Duration::from_millis(500)).await.map(|_| ()) })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        probe.answered(&CarrierOutcome::Throttled {
            code: "http_429".into(),
            retry_after: Some(Duration::from_secs(30)),
        });
        let err = waiter.await.unwrap().unwrap_err();
        assert!(
            err.remaining > Duration::from_secs(29),
            "put back until the new Retry-After: {err:?}"
        );
    }

    #[tokio::test]
    async fn given_a_throttle_probe_that_takes_longer_than_a_job_may_wait_then_the_job_is_put_back()
    {
        let g = CarrierGate::new("rbm", no_cooldown());
        g.pause(Duration::ZERO, PauseReason::Throttled);
        let _probe = g.enter(Duration::from_secs(1)).await.unwrap();
        let err = g.enter(Duration::from_millis(20)).await.unwrap_err();
        assert_eq!(err.remaining, PROBE_WAIT);
    }

    #[tokio::test]
    async fn given_a_pause_when_a_request_sent_before_it_is_accepted_then_the_probe_still_decides()
    {
        use sealpost_domain::CarrierOutcome;
        let g = CarrierGate::new("rbm", GateConfig::default());
        let early = g.enter(Duration::ZERO).await.unwrap();
        assert!(!early.is_probe());
        g.pause(Duration::ZERO, PauseReason::Throttled);
        early.answered(&CarrierOutcome::Acked {
            carrier_message_id: "m".into(),
        });
        assert!(g.enter(Duration::ZERO).await.unwrap().is_probe());
    }

    #[tokio::test]
    async fn given_a_throttle_when_the_carrier_cools_down_then_only_throttled_concurrency_jobs_go_at_once(
    ) {
        use sealpost_domain::CarrierOutcome;
        let g = CarrierGate::new(
            "rbm",
            GateConfig {
                throttled_concurrency: 2,
                ..GateConfig::default()
            },
        );
        // At full concurrency before any 429.
        let before: Vec<_> = enter_at_once(&g, 3).await;
        assert!(!g.cooling_down(Instant::now()));
        drop(before);
        g.pause(Duration::ZERO, PauseReason::Throttled);
        assert!(g.cooling_down(Instant::now()));
        let probe = g.enter(Duration::ZERO).await.unwrap();
        assert!(probe.is_probe());
        probe.answered(&CarrierOutcome::Acked {
            carrier_message_id: "m".into(),
        });
        // Two in flight; a third waits up to its max wait, then is put back.
        let a = g.enter(Duration::ZERO).await.unwrap();
        let b = g.enter(Duration::ZERO).await.unwrap();
        let err = g.enter(Duration::from_millis(20)).await.unwrap_err();
        assert_eq!(err.remaining, PROBE_WAIT);
        // One answered: the next goes.
        drop(a);
        let c = g.enter(Duration::from_millis(20)).await.unwrap();
        assert!(!c.is_probe() && !b.is_probe());
    }

    #[tokio::test]
    async fn given_a_throttle_when_a_cooling_job_waits_for_a_slot_and_the_carrier_pauses_then_it_sees_the_pause(
    ) {
        use sealpost_domain::CarrierOutcome;
        let g = std::sync::Arc::new(CarrierGate::new(
            "rbm",
            GateConfig {
                throttled_concurrency: 1,
                ..GateConfig::default()
            },
        ));
        g.pause(Duration::ZERO, PauseReason::Throttled);
        let probe = g.enter(Duration::ZERO).await.unwrap();
        probe.carrier_accepts();
        let first = g.enter(Duration::ZERO).await.unwrap();
        let waiter = {
            let g = g.clone();
            tokio::spawn(async move { g.enter(Duration::from_millis(500)).await.map(|_| ()) })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "one in flight at a time");
        // The one in flight is throttled: the waiter gets the slot only to find the pause.
        first.answered(&CarrierOutcome::Throttled {
            code: "http_429".into(),
            retry_after: Some(Duration::from_secs(30)),
        });
        let err = waiter.await.unwrap().unwrap_err();
        assert!(err.remaining > Duration::from_secs(29), "{err:?}");
    }

    #[tokio::test]
    async fn given_a_throttle_when_the_cooldown_has_passed_then_jobs_go_at_full_concurrency() {
        let g = CarrierGate::new(
            "rbm",
            GateConfig {
                throttle_cooldown: Duration::from_millis(30),
                ..GateConfig::default()
            },
        );
        g.pause(Duration::ZERO, PauseReason::Throttled);
        g.enter(Duration::ZERO).await.unwrap().carrier_accepts();
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(!g.cooling_down(Instant::now()));
        assert_eq!(enter_at_once(&g, 3).await.len(), 3);
    }

    #[tokio::test]
    async fn given_an_auth_failure_pause_when_it_ends_then_no_cooldown_follows() {
        let g = CarrierGate::new("rbm", GateConfig::default());
        g.pause(Duration::ZERO, PauseReason::AuthFailed);
        g.enter(Duration::ZERO).await.unwrap().carrier_accepts();
        assert!(!g.cooling_down(Instant::now()));
        assert_eq!(enter_at_once(&g, 3).await.len(), 3);
    }

    /// Enters `n` times without waiting (each must get through at once) and holds the passes.
    async fn enter_at_once(g: &CarrierGate, n: usize) -> Vec<Pass<'_>> {
        let mut passes = Vec::new();
        for _ in 0..n {
            passes.push(g.enter(Duration::ZERO).await.unwrap());
        }
        passes
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
                ..GateConfig::default()
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
