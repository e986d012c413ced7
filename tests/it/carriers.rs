//! The carrier adapters over real HTTP against the carrier simulator (both in process on
//! 127.0.0.1:0): outcome classification, dedup by message id, capability, revocation, signed
//! receipt webhooks with retries, throttle windows and SMS notices.

// Test fixtures: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use sealpost_carrier_sim::{CarrierSim, FaultMix, RunningSim, Scripted, SimConfig};
use sealpost_carriers::webhook::{self, RbmEvent, RbmEventKind, Webhook};
use sealpost_carriers::{
    Capability, Carrier, CarrierOutcome, Content, Delivers, RbmCarrier, RbmConfig, RbmCredentials,
    RevokeResult, SmsCarrier, SmsConfig, Submission,
};
use time::OffsetDateTime;

const CLIENT_TOKEN: &str = "test-client-token";

async fn start_sim(cfg: SimConfig) -> RunningSim {
    CarrierSim::start(
        "127.0.0.1:0".parse().unwrap(),
        SimConfig {
            client_token: CLIENT_TOKEN.into(),
            ..cfg
        },
    )
    .await
    .expect("carrier sim starts")
}

fn rbm(sim: &RunningSim, timeout: Duration) -> RbmCarrier {
    rbm_with_token(sim, SimConfig::default().bearer_token.expose(), timeout)
}

fn rbm_with_token(sim: &RunningSim, token: &str, timeout: Duration) -> RbmCarrier {
    RbmCarrier::new(RbmConfig {
        base_url: sim.base_url(),
        agent_id: SimConfig::default().agent_id,
        credentials: RbmCredentials::Bearer(token.into()),
        timeout,
    })
    .unwrap()
}

fn opaque(message_id: &str, recipient: &str) -> Submission {
    Submission {
        message_id: message_id.into(),
        recipient: recipient.into(),
        content: Content::Opaque {
            url: format!("https://s3.example/sealpost/{message_id}.enc?X-Amz-Signature=abc"),
            sha256: "5d".repeat(32),
            size: Some(1024),
            link: None,
        },
        expire_time: None,
    }
}

fn notice(message_id: &str, recipient: &str) -> Submission {
    Submission {
        message_id: message_id.into(),
        recipient: recipient.into(),
        content: Content::Notice {
            text: "You have a new secure message. Open the app to read it.".into(),
        },
        expire_time: None,
    }
}

fn acked(id: &str) -> CarrierOutcome {
    CarrierOutcome::Acked {
        carrier_message_id: id.into(),
    }
}

/// Polls `f` until it holds, for at most 10 s.
async fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A webhook receiver like the gateway's: checks `X-Goog-Signature` with a `webhook::WebhookKey`,
/// answers 500 to its first `fail_first` valid pushes, and records the rest.
struct Receiver {
    url: String,
    events: Arc<Mutex<Vec<RbmEvent>>>,
    attempts: Arc<AtomicUsize>,
    rejected: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    async fn start(fail_first: usize) -> Receiver {
        let events = Arc::new(Mutex::new(Vec::new()));
        let attempts = Arc::new(AtomicUsize::new(0));
        let rejected = Arc::new(AtomicUsize::new(0));
        let failing = Arc::new(AtomicUsize::new(fail_first));
        let (ev, at, rj) = (events.clone(), attempts.clone(), rejected.clone());
        let key = webhook::WebhookKey::new(sealpost_domain::Secret::new(CLIENT_TOKEN));
        let handler = move |headers: HeaderMap, body: Bytes| {
            let (ev, at, rj, failing) = (ev.clone(), at.clone(), rj.clone(), failing.clone());
            let key = key.clone();
            async move {
                let sig = headers
                    .get(webhook::SIGNATURE_HEADER)
                    .and_then(|v| v.to_str().ok());
                if key.verify(&body, sig).is_err() {
                    rj.fetch_add(1, Ordering::SeqCst);
                    return StatusCode::UNAUTHORIZED;
                }
                at.fetch_add(1, Ordering::SeqCst);
                let fail = failing
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if fail {
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                match webhook::parse(&body) {
                    Ok(Webhook::Event(e)) => {
                        ev.lock().unwrap().push(e);
                        StatusCode::OK
                    }
                    _ => StatusCode::BAD_REQUEST,
                }
            }
        };
        let router = axum::Router::new().route("/v1/receipts/rbm", axum::routing::post(handler));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Receiver {
            url: format!("http://{addr}/v1/receipts/rbm"),
            events,
            attempts,
            rejected,
            task,
        }
    }

    fn kinds_for(&self, message_id: &str) -> Vec<RbmEventKind> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.message_id == message_id)
            .map(|e| e.kind.clone())
            .collect()
    }
}

#[tokio::test]
async fn rbm_accepts_once_and_dedupes_a_resubmission() {
    let sim = start_sim(SimConfig::default()).await;
    let rbm = rbm(&sim, Duration::from_secs(5));
    assert_eq!(rbm.name(), "rbm");
    assert_eq!(rbm.delivers(), Delivers::Opaque);

    let s = opaque("msg-dedup-1", "+447700900101");
    assert_eq!(rbm.submit(&s).await, acked("msg-dedup-1"));
    assert_eq!(rbm.submit(&s).await, acked("msg-dedup-1"));

    let answers: Vec<u16> = sim
        .requests_for("msg-dedup-1")
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(answers, [200, 409]);
    let stats = sim.stats();
    assert_eq!(
        (stats.sends, stats.accepted, stats.duplicates_409),
        (2, 1, 1)
    );
    let statuses: Vec<u16> = sim
        .requests_for("msg-dedup-1")
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, vec![200, 409]);

    // A notice over RBM is a text message, accepted the same way.
    assert_eq!(
        rbm.submit(&notice("msg-dedup-2", "+447700900101")).await,
        acked("msg-dedup-2")
    );
}

#[tokio::test]
async fn rbm_classifies_scripted_answers() {
    let sim = start_sim(SimConfig::default()).await;
    let rbm = rbm(&sim, Duration::from_secs(5));
    let to = "+447700900102";
    let status = |code, retry_after_secs| Scripted::Status {
        code,
        retry_after_secs,
    };
    sim.script(
        to,
        vec![
            status(500, None),
            status(503, Some(2)),
            status(400, None),
            Scripted::NotCapable,
            status(429, Some(3)),
        ],
    );
    let expected = [
        CarrierOutcome::Transient {
            code: "http_500".into(),
            retry_after: None,
        },
        CarrierOutcome::Transient {
            code: "http_503".into(),
            retry_after: Some(Duration::from_secs(2)),
        },
        CarrierOutcome::Permanent {
            code: "http_400".into(),
        },
        CarrierOutcome::NotRcsCapable,
        CarrierOutcome::Throttled {
            code: "RESOURCE_EXHAUSTED".into(),
            retry_after: Some(Duration::from_secs(3)),
        },
    ];
    for (i, want) in expected.into_iter().enumerate() {
        let id = format!("msg-script-{i}");
        assert_eq!(rbm.submit(&opaque(&id, to)).await, want, "answer {i}");
        assert!(
            !sim.accepted_ids().contains(&id),
            "{id} must not be accepted"
        );
    }
    // The script is used up: the next send is accepted.
    assert_eq!(
        rbm.submit(&opaque("msg-script-5", to)).await,
        acked("msg-script-5")
    );
    let stats = sim.stats();
    assert_eq!(
        (
            stats.server_errors,
            stats.permanent,
            stats.not_capable,
            stats.throttled
        ),
        (2, 1, 1, 1)
    );
}

#[tokio::test]
async fn rbm_wrong_bearer_is_an_auth_failure_not_the_messages() {
    let sim = start_sim(SimConfig::default()).await;
    let rbm = rbm_with_token(&sim, "not-the-token", Duration::from_secs(5));
    assert_eq!(
        rbm.submit(&opaque("msg-auth-1", "+447700900103")).await,
        CarrierOutcome::AuthFailed {
            code: "http_401".into()
        }
    );
    // A static token cannot be refreshed: one request, no second try.
    assert_eq!(sim.requests_for("msg-auth-1").len(), 1);
    assert!(sim.accepted_ids().is_empty());
    assert_eq!(
        rbm.capability("+447700900103").await,
        Capability::Unknown {
            code: "http_401".into()
        }
    );
}

#[tokio::test]
async fn rbm_timeout_then_resubmission_is_acked_once() {
    let sim = start_sim(SimConfig {
        faults: FaultMix {
            timeout: 1.0,
            hang_ms: 5_000,
            ..FaultMix::default()
        },
        ..SimConfig::default()
    })
    .await;
    let rbm = rbm(&sim, Duration::from_millis(300));
    let s = opaque("msg-timeout-1", "+447700900104");
    assert_eq!(
        rbm.submit(&s).await,
        CarrierOutcome::Transient {
            code: "timeout".into(),
            retry_after: None
        }
    );
    // The carrier accepted it before hanging: the resubmission is a duplicate, hence acked,
    // even though the fault mix still says "hang" for new messages.
    assert_eq!(rbm.submit(&s).await, acked("msg-timeout-1"));
    let answers: Vec<u16> = sim
        .requests_for("msg-timeout-1")
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(
        answers,
        [200, 409],
        "accepted (then hung), then deduplicated"
    );
    let stats = sim.stats();
    assert_eq!(
        (stats.accepted, stats.timeouts, stats.duplicates_409),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn rbm_capability_agrees_with_send() {
    let sim = start_sim(SimConfig {
        faults: FaultMix {
            not_capable: 1.0,
            ..FaultMix::default()
        },
        ..SimConfig::default()
    })
    .await;
    let rbm = rbm(&sim, Duration::from_secs(5));
    let to = "+447700900105";
    assert_eq!(rbm.capability(to).await, Capability::NotCapable);
    assert_eq!(
        rbm.submit(&opaque("msg-cap-1", to)).await,
        CarrierOutcome::NotRcsCapable
    );

    sim.set_faults(FaultMix::default());
    assert_eq!(rbm.capability(to).await, Capability::Capable);
    assert_eq!(
        rbm.submit(&opaque("msg-cap-2", to)).await,
        acked("msg-cap-2")
    );
}

#[tokio::test]
async fn webhooks_arrive_signed_delivered_then_read() {
    let receiver = Receiver::start(0).await;
    let sim = start_sim(SimConfig {
        webhook_url: Some(receiver.url.clone()),
        receipt_delay: Duration::from_millis(30),
        ..SimConfig::default()
    })
    .await;
    let rbm = rbm(&sim, Duration::from_secs(5));
    assert_eq!(
        rbm.submit(&opaque("msg-hook-1", "+447700900106")).await,
        acked("msg-hook-1")
    );
    eventually("DELIVERED and READ", || {
        receiver.kinds_for("msg-hook-1").len() >= 2
    })
    .await;
    assert_eq!(
        receiver.kinds_for("msg-hook-1"),
        vec![RbmEventKind::Delivered, RbmEventKind::Read]
    );
    let events = receiver.events.lock().unwrap().clone();
    assert_ne!(events[0].event_id, events[1].event_id);
    assert_eq!(
        events[0].agent_id.as_deref(),
        Some(SimConfig::default().agent_id.as_str())
    );
    assert!(events[0].send_time.is_some());
    assert_eq!(receiver.rejected.load(Ordering::SeqCst), 0);
    // The receiver records before it answers; the sim counts once it has the answer.
    eventually("two pushes counted", || sim.stats().webhooks_sent == 2).await;

    // After delivery it can no longer be revoked.
    assert_eq!(
        rbm.revoke("msg-hook-1", "+447700900106").await,
        RevokeResult::NotRevocable
    );
    assert!(!sim.revoked("msg-hook-1"));
}

#[tokio::test]
async fn webhooks_signed_with_another_token_are_rejected() {
    let receiver = Receiver::start(0).await;
    let sim = CarrierSim::start(
        "127.0.0.1:0".parse().unwrap(),
        SimConfig {
            client_token: "someone-elses-token".into(),
            webhook_url: Some(receiver.url.clone()),
            receipt_delay: Duration::from_millis(10),
            ..SimConfig::default()
        },
    )
    .await
    .unwrap();
    let rbm = rbm(&sim, Duration::from_secs(5));
    assert_eq!(
        rbm.submit(&opaque("msg-forged-1", "+447700900107")).await,
        acked("msg-forged-1")
    );
    // Rejected pushes are retried: wait for a few rejections, none of them recorded.
    eventually("rejected pushes", || {
        receiver.rejected.load(Ordering::SeqCst) >= 2
    })
    .await;
    assert!(receiver.events.lock().unwrap().is_empty());
    assert_eq!(sim.stats().webhooks_sent, 0);
    eventually("failures counted", || sim.stats().webhook_failures >= 2).await;
}

#[tokio::test]
async fn webhooks_are_retried_until_the_receiver_answers_2xx() {
    let receiver = Receiver::start(2).await;
    let sim = start_sim(SimConfig {
        webhook_url: Some(receiver.url.clone()),
        receipt_delay: Duration::from_millis(10),
        ..SimConfig::default()
    })
    .await;
    let rbm = rbm(&sim, Duration::from_secs(5));
    assert_eq!(
        rbm.submit(&opaque("msg-retry-1", "+447700900108")).await,
        acked("msg-retry-1")
    );
    eventually("DELIVERED after two 500s", || {
        receiver
            .kinds_for("msg-retry-1")
            .contains(&RbmEventKind::Delivered)
    })
    .await;
    // The first two attempts (both DELIVERED) got 500; the third one was recorded.
    assert!(receiver.attempts.load(Ordering::SeqCst) >= 3);
    assert_eq!(
        receiver.kinds_for("msg-retry-1")[0],
        RbmEventKind::Delivered
    );
    assert_eq!(sim.stats().webhook_failures, 2);
}

#[tokio::test]
async fn webhooks_survive_a_receiver_that_is_down() {
    // Nothing listens at first: pushes fail to connect and are retried.
    let sim = start_sim(SimConfig {
        webhook_url: Some("http://127.0.0.1:1/v1/receipts/rbm".into()),
        receipt_delay: Duration::from_millis(10),
        ..SimConfig::default()
    })
    .await;
    let rbm = rbm(&sim, Duration::from_secs(5));
    assert_eq!(
        rbm.submit(&opaque("msg-down-1", "+447700900109")).await,
        acked("msg-down-1")
    );
    eventually("failed pushes", || sim.stats().webhook_failures >= 1).await;
    let receiver = Receiver::start(0).await;
    sim.set_webhook_url(Some(receiver.url.clone()));
    eventually("DELIVERED once the receiver is up", || {
        receiver
            .kinds_for("msg-down-1")
            .contains(&RbmEventKind::Delivered)
    })
    .await;
}

#[tokio::test]
async fn revoke_before_delivery_cancels_receipts() {
    let receiver = Receiver::start(0).await;
    let sim = start_sim(SimConfig {
        webhook_url: Some(receiver.url.clone()),
        // Long enough that the two submits and the revoke below come before any receipt,
        // however slow the machine.
        receipt_delay: Duration::from_secs(3),
        ..SimConfig::default()
    })
    .await;
    let rbm = rbm(&sim, Duration::from_secs(5));
    let to = "+447700900110";
    assert_eq!(
        rbm.submit(&opaque("msg-revoke-1", to)).await,
        acked("msg-revoke-1")
    );
    assert_eq!(
        rbm.submit(&opaque("msg-revoke-2", to)).await,
        acked("msg-revoke-2")
    );
    assert_eq!(rbm.revoke("msg-revoke-1", to).await, RevokeResult::Revoked);
    assert!(sim.revoked("msg-revoke-1"));
    assert_eq!(
        rbm.revoke("msg-revoke-1", to).await,
        RevokeResult::NotRevocable
    );
    assert_eq!(
        rbm.revoke("msg-unknown", to).await,
        RevokeResult::NotRevocable
    );
    // The message accepted after it gets its receipts; the revoked one never does.
    eventually("READ of the other message", || {
        receiver
            .kinds_for("msg-revoke-2")
            .contains(&RbmEventKind::Read)
    })
    .await;
    assert!(receiver.kinds_for("msg-revoke-1").is_empty());
    assert_eq!(sim.stats().revokes, 1);
}

#[tokio::test]
async fn offline_message_is_revoked_at_expiry() {
    let receiver = Receiver::start(0).await;
    let sim = start_sim(SimConfig {
        webhook_url: Some(receiver.url.clone()),
        receipt_delay: Duration::from_millis(10),
        ..SimConfig::default()
    })
    .await;
    let rbm = rbm(&sim, Duration::from_secs(5));
    let to = "+447700900111";
    sim.script(to, vec![Scripted::AcceptOffline]);
    let s = Submission {
        expire_time: Some(OffsetDateTime::now_utc() + Duration::from_millis(200)),
        ..opaque("msg-ttl-1", to)
    };
    assert_eq!(rbm.submit(&s).await, acked("msg-ttl-1"));
    eventually("TTL_EXPIRATION_REVOKED", || {
        !receiver.kinds_for("msg-ttl-1").is_empty()
    })
    .await;
    assert_eq!(
        receiver.kinds_for("msg-ttl-1"),
        vec![RbmEventKind::TtlExpirationRevoked]
    );
    assert!(sim.revoked("msg-ttl-1"));
}

#[tokio::test]
async fn sends_inside_a_throttle_window_are_violations() {
    let sim = start_sim(SimConfig::default()).await;
    let rbm = rbm(&sim, Duration::from_secs(5));
    let to = "+447700900112";
    assert_eq!(
        rbm.submit(&opaque("msg-thr-0", to)).await,
        acked("msg-thr-0")
    );
    sim.script(
        to,
        vec![Scripted::Status {
            code: 429,
            retry_after_secs: Some(30),
        }],
    );
    assert!(matches!(
        rbm.submit(&opaque("msg-thr-1", to)).await,
        CarrierOutcome::Throttled {
            retry_after: Some(d),
            ..
        } if d == Duration::from_secs(30)
    ));
    assert_eq!(sim.throttle_violations(), 0);
    // Ignoring Retry-After: a send to anyone inside the window is a violation, still answered.
    assert_eq!(
        rbm.submit(&opaque("msg-thr-2", "+447700900113")).await,
        acked("msg-thr-2")
    );
    assert_eq!(sim.throttle_violations(), 1);
    assert_eq!(sim.stats().throttle_violations, 1);
}

#[tokio::test]
async fn fault_mix_throttles_with_retry_after() {
    let sim = start_sim(SimConfig {
        faults: FaultMix {
            throttle: 1.0,
            retry_after_secs: 4,
            ..FaultMix::default()
        },
        ..SimConfig::default()
    })
    .await;
    let rbm = rbm(&sim, Duration::from_secs(5));
    assert_eq!(
        rbm.submit(&opaque("msg-mix-1", "+447700900114")).await,
        CarrierOutcome::Throttled {
            code: "RESOURCE_EXHAUSTED".into(),
            retry_after: Some(Duration::from_secs(4)),
        }
    );
    let stats: serde_json::Value = reqwest::get(format!("{}/sim/stats", sim.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["throttled"], 1);
    assert_eq!(stats["sends"], 1);
}

#[tokio::test]
async fn sms_notice_is_accepted_once() {
    let sim = start_sim(SimConfig::default()).await;
    let sms = SmsCarrier::new(SmsConfig {
        base_url: sim.base_url(),
        api_key: SimConfig::default().sms_api_key,
        sender: "Sealpost".into(),
        timeout: Duration::from_secs(5),
    })
    .unwrap();
    assert_eq!(sms.name(), "sms");
    assert_eq!(sms.delivers(), Delivers::Notice);
    let s = notice("msg-sms-1", "+447700900115");
    assert_eq!(sms.submit(&s).await, acked("msg-sms-1"));
    assert_eq!(sms.submit(&s).await, acked("msg-sms-1"));
    let notices = sim.notices();
    assert_eq!(notices.len(), 1);
    assert_eq!(notices[0].message_id, "msg-sms-1");
    assert!(notices[0].text.contains("secure message"));
    let stats = sim.stats();
    assert_eq!((stats.sms_accepted, stats.sms_duplicates), (1, 1));

    // Content never goes by SMS, and a wrong key is an auth failure (of ours, not the message's).
    assert_eq!(
        sms.submit(&opaque("msg-sms-2", "+447700900115")).await,
        CarrierOutcome::Permanent {
            code: "opaque_not_supported".into()
        }
    );
    let wrong = SmsCarrier::new(SmsConfig {
        base_url: sim.base_url(),
        api_key: "wrong".into(),
        sender: "Sealpost".into(),
        timeout: Duration::from_secs(5),
    })
    .unwrap();
    assert_eq!(
        wrong.submit(&notice("msg-sms-3", "+447700900115")).await,
        CarrierOutcome::AuthFailed {
            code: "http_401".into()
        }
    );
    assert_eq!(sim.notices().len(), 1);
}

// ---------------------------------------------------------------- RBM OAuth (service account)

fn service_account() -> sealpost_carriers::ServiceAccountKey {
    sealpost_carriers::ServiceAccountKey::from_json(sealpost_carrier_sim::TEST_SERVICE_ACCOUNT_JSON)
        .unwrap()
}

/// A simulator that accepts only the access tokens it issued (no static bearer token).
async fn oauth_sim(token_ttl: Duration) -> RunningSim {
    start_sim(SimConfig {
        bearer_token: String::new().into(),
        service_account: Some(service_account()),
        token_ttl,
        ..SimConfig::default()
    })
    .await
}

fn oauth_rbm(sim: &RunningSim) -> RbmCarrier {
    RbmCarrier::new(RbmConfig {
        base_url: sim.base_url(),
        agent_id: SimConfig::default().agent_id,
        credentials: RbmCredentials::ServiceAccount {
            key: service_account(),
            token_uri: Some(sim.token_uri()),
        },
        timeout: Duration::from_secs(5),
    })
    .unwrap()
}

/// README, RBM credentials: "Sealpost signs the JWT assertion, exchanges it for an access token,
/// caches it, and refreshes it before it expires." Tokens live 2 s at the simulator; sends for
/// 7 s, every 100 ms, are all accepted with no 401 at all, with one token per refresh (at 1.5 s),
/// not one per send.
#[tokio::test]
async fn rbm_service_account_tokens_are_cached_and_refreshed_before_they_expire() {
    let sim = oauth_sim(Duration::from_secs(2)).await;
    let rbm = oauth_rbm(&sim);
    let started = std::time::Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(7) {
        let id = format!("msg-oauth-{n}");
        assert_eq!(rbm.submit(&opaque(&id, "+447700900140")).await, acked(&id));
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = sim.stats();
    // Many more sends than tokens (at least 20; about 65 on a quiet machine).
    assert!(n >= 20, "{n} sends");
    assert_eq!(stats.accepted, n);
    assert_eq!(stats.auth_rejections, 0, "{stats:?}");
    // 7 s at a refresh every 1.5 s: 5 tokens (the first plus 4 refreshes), give or take one.
    assert!(
        (4..=6).contains(&stats.tokens_issued),
        "{} tokens for {n} sends in 7 s",
        stats.tokens_issued
    );
}

/// README, RBM credentials: "... and once after a 401". The simulator forgets every token
/// (revoke, then restore, as a key rotation does): the next send gets a 401 with the cached
/// token, fetches a new one and is accepted on the second request, with no failure.
#[tokio::test]
async fn rbm_a_401_with_a_cached_token_fetches_a_new_one_and_repeats_the_send_once() {
    let sim = oauth_sim(Duration::from_secs(3600)).await;
    let rbm = oauth_rbm(&sim);
    assert_eq!(
        rbm.submit(&opaque("msg-oauth-a", "+447700900141")).await,
        acked("msg-oauth-a")
    );
    sim.set_credentials_revoked(true);
    sim.set_credentials_revoked(false);
    assert_eq!(
        rbm.submit(&opaque("msg-oauth-b", "+447700900141")).await,
        acked("msg-oauth-b")
    );
    let statuses: Vec<u16> = sim
        .requests_for("msg-oauth-b")
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [401, 200]);
    assert_eq!(sim.stats().tokens_issued, 2);

    // Revoked for good: the token endpoint refuses the assertion, so the send is an auth
    // failure (not the message's), after one 401 and one refused token request.
    sim.set_credentials_revoked(true);
    let out = rbm.submit(&opaque("msg-oauth-c", "+447700900141")).await;
    assert_eq!(
        out,
        CarrierOutcome::AuthFailed {
            code: "token_http_400".into()
        }
    );
    assert_eq!(sim.requests_for("msg-oauth-c").len(), 1);
    assert_eq!(sim.stats().token_refusals, 1);
    // Within the backoff, a second send does not ask the token endpoint again.
    let out = rbm.submit(&opaque("msg-oauth-d", "+447700900141")).await;
    assert!(matches!(out, CarrierOutcome::AuthFailed { .. }), "{out:?}");
    assert_eq!(sim.stats().token_refusals, 1);
    assert!(!sim.accepted_ids().contains("msg-oauth-c"));
}

/// Many sends in flight when the token is rejected share one refresh: one new token, not one per
/// send.
#[tokio::test]
async fn rbm_concurrent_401s_share_one_token_refresh() {
    let sim = oauth_sim(Duration::from_secs(3600)).await;
    let rbm = oauth_rbm(&sim);
    assert_eq!(
        rbm.submit(&opaque("msg-oauth-warm", "+447700900142")).await,
        acked("msg-oauth-warm")
    );
    sim.set_credentials_revoked(true);
    sim.set_credentials_revoked(false);
    let sends = (0..32).map(|i| {
        let rbm = rbm.clone();
        async move {
            let id = format!("msg-oauth-par-{i}");
            (rbm.submit(&opaque(&id, "+447700900142")).await, id)
        }
    });
    for (out, id) in futures::future::join_all(sends).await {
        assert_eq!(out, acked(&id));
    }
    assert_eq!(sim.stats().tokens_issued, 2);
}
