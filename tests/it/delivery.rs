//! Delivery end to end: a real nats-server, the embedded S3 endpoint, the carrier simulator over
//! HTTP, the gateway (sends and signed receipt webhooks) and the delivery roles (workers,
//! receipts, expiry timers, fallback). Each test drives messages through the public contract and
//! checks both the event history and what the carrier saw.

// Test fixtures: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use sealpost::{App, Role};
use sealpost_blobstore::StoredBlob;
use sealpost_carrier_sim::{CarrierSim, RunningSim, Scripted, SimConfig};
use sealpost_domain::{Message, Status, TenantId};
use sealpost_eventstore::names::{receipt_subject, Durable, Stream, TimerSubject};
use sealpost_eventstore::provision::{embedded_definitions, provision, StreamOverrides};
use sealpost_eventstore::RawEvent;
use serde_json::{json, Value};

use crate::gateway::{tenant_config, ACME};
use crate::support::{app_config, store_on, Nats};

/// The expiry timer of an ACME message.
fn timer(id: &str) -> TimerSubject {
    TimerSubject::new(
        TenantId::new(ACME).unwrap(),
        sealpost_domain::MessageId::new(id).unwrap(),
    )
}

/// Provisions every stream and consumer, with `ack_wait` shortened so that work a killed
/// process held is redelivered quickly.
pub(crate) async fn provision_with_ack_wait(
    client: &async_nats::Client,
    ack_wait: Duration,
    replicas: Option<usize>,
) {
    let mut defs = embedded_definitions();
    for (_, _, json) in &mut defs.consumers {
        let mut v: Value = serde_json::from_str(json).unwrap();
        v["ack_wait"] = json!(ack_wait.as_nanos() as u64);
        *json = v.to_string();
    }
    provision(
        &async_nats::jetstream::new(client.clone()),
        &defs,
        &StreamOverrides {
            replicas,
            ..Default::default()
        },
    )
    .await
    .expect("provision");
}

/// Sealpost started with `sealpost::App::start` (the production wiring): the gateway in one
/// process-like `Running`, the delivery roles in another, against a private nats-server and the
/// carrier simulator.
struct Deployment {
    server: Nats,
    client: async_nats::Client,
    /// The delivery roles' config (the gateway's, with the gateway's embedded S3 as endpoint).
    cfg: sealpost::Config,
    _dir: tempfile::TempDir,
    blob: StoredBlob,
    sim: RunningSim,
    gateway: sealpost::Running,
    roles: Option<sealpost::Running>,
}

struct Options {
    /// Answer status queries from the `messages` view of this database.
    status_view: Option<String>,
    /// RBM submissions in flight at once.
    rbm_concurrency: usize,
    receipts_from_sim: bool,
    start_delivery: bool,
    sim: SimConfig,
    rbm_timeout: Duration,
    /// The delivery roles started (all by default).
    roles: &'static [Role],
    /// How long after `expires_at` the carrier's own TTL ends a message.
    carrier_ttl_grace: Duration,
    /// Authenticate to RBM with the simulator's service account (OAuth tokens of this lifetime)
    /// instead of a static bearer token.
    oauth_token_ttl: Option<Duration>,
    /// Run on the test kit's 3-node cluster, every stream with 3 replicas.
    cluster: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            status_view: None,
            rbm_concurrency: sealpost::Config::defaults().carriers.rbm.concurrency,
            receipts_from_sim: true,
            start_delivery: true,
            sim: SimConfig {
                receipt_delay: Duration::from_millis(20),
                ..SimConfig::default()
            },
            rbm_timeout: Duration::from_secs(5),
            roles: &Role::DELIVERY,
            carrier_ttl_grace: sealpost::Config::defaults().delivery.carrier_ttl_grace,
            oauth_token_ttl: None,
            cluster: false,
        }
    }
}

impl Deployment {
    async fn start(o: Options) -> Deployment {
        let server = Nats::start(o.cluster).await;
        let client = server.connect().await;
        provision_with_ack_wait(&client, Duration::from_secs(3), server.replicas()).await;
        let dir = tempfile::tempdir().unwrap();
        let mut sim_cfg = o.sim.clone();
        if let Some(ttl) = o.oauth_token_ttl {
            sim_cfg.bearer_token = String::new().into();
            sim_cfg.service_account = Some(
                sealpost_carriers::ServiceAccountKey::from_json(
                    sealpost_carrier_sim::TEST_SERVICE_ACCOUNT_JSON,
                )
                .unwrap(),
            );
            sim_cfg.token_ttl = ttl;
        }
        let sim = CarrierSim::start("127.0.0.1:0".parse().unwrap(), sim_cfg.clone())
            .await
            .expect("simulator starts");

        let mut cfg = app_config(&server.url(), dir.path(), vec![tenant_config(ACME)]);
        // Retries in tests: fast, so transient faults resolve within a second or two.
        cfg.retry.base = Duration::from_millis(100);
        cfg.retry.max = Duration::from_millis(1000);
        cfg.delivery.receipt_retry = Duration::from_millis(100);
        cfg.delivery.carrier_ttl_grace = o.carrier_ttl_grace;
        let rbm = &mut cfg.carriers.rbm;
        rbm.base_url = sim.base_url();
        rbm.agent_id.clone_from(&o.sim.agent_id);
        rbm.bearer_token = sim_cfg.bearer_token.clone();
        if o.oauth_token_ttl.is_some() {
            let key_file = dir.path().join("rbm-service-account.json");
            std::fs::write(&key_file, sealpost_carrier_sim::TEST_SERVICE_ACCOUNT_JSON).unwrap();
            rbm.service_account_key_file = key_file.display().to_string();
            rbm.token_uri = sim.token_uri();
        }
        rbm.client_token = o.sim.client_token.clone();
        rbm.timeout = o.rbm_timeout;
        rbm.concurrency = o.rbm_concurrency;
        cfg.carriers.sms.base_url = sim.base_url();
        cfg.carriers.sms.api_key = o.sim.sms_api_key.clone();
        cfg.postgres.url = o.status_view.clone().unwrap_or_default().into();

        let gateway = App::start(cfg.clone(), &[Role::Gateway], std::future::pending())
            .await
            .expect("the gateway starts");
        if o.receipts_from_sim {
            sim.set_webhook_url(Some(format!(
                "http://{}/v1/receipts/rbm",
                gateway.http_addr().unwrap()
            )));
        }
        let blob = crate::support::upload(
            gateway.blob_store().unwrap(),
            ACME,
            b"sealed MLS ciphertext",
        )
        .await;
        // The delivery roles reach the gateway's object store as any other S3 endpoint.
        cfg.s3.endpoint = gateway.embedded_s3().unwrap();
        let mut p = Deployment {
            server,
            client,
            cfg,
            _dir: dir,
            blob,
            sim,
            gateway,
            roles: None,
        };
        if o.start_delivery {
            p.roles = Some(p.start_roles(o.roles).await);
        }
        p
    }

    /// Starts `roles` in a process of their own.
    async fn start_roles(&self, roles: &[Role]) -> sealpost::Running {
        App::start(self.cfg.clone(), roles, std::future::pending())
            .await
            .expect("the delivery roles start")
    }

    async fn start_delivery(&mut self) {
        self.roles = Some(self.start_roles(&Role::DELIVERY).await);
    }

    fn body(&self, key: &str, recipient: &str, ttl: u64) -> Vec<u8> {
        self.body_with(key, recipient, ttl, true)
    }

    /// A send body, with or without the SMS fallback.
    fn body_with(&self, key: &str, recipient: &str, ttl: u64, fallback: bool) -> Vec<u8> {
        let mut v = json!({
            "idempotency_key": key,
            "recipient": recipient,
            "encrypted_payload_reference": self.blob.reference,
            "payload_sha256": self.blob.sha256.as_str(),
            "encryption_metadata": {"mls_version": "1", "cipher": "XChaCha20-Poly1305", "key_id": "user-public-key-v2"},
            "metadata": {"tenant_id": ACME, "message_type": "transactional", "correlation_id": format!("corr-{key}")},
            "ttl_seconds": ttl,
            "fallback": {"channel": "sms", "notice_template": "secure_message_waiting"}
        });
        if !fallback {
            v.as_object_mut().unwrap().remove("fallback");
        }
        serde_json::to_vec(&v).unwrap()
    }

    /// Sends over NATS; returns the message id.
    async fn send(&self, key: &str, recipient: &str, ttl: u64) -> String {
        self.send_with(key, recipient, ttl, true).await
    }

    /// [`Self::send`], with or without the SMS fallback.
    async fn send_with(&self, key: &str, recipient: &str, ttl: u64, fallback: bool) -> String {
        let reply = self
            .client
            .request(
                format!("sealpost.cmd.{ACME}.send"),
                self.body_with(key, recipient, ttl, fallback).into(),
            )
            .await
            .expect("the gateway answers");
        let v: Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(v["status"], "accepted", "{v}");
        v["message_id"].as_str().unwrap().to_owned()
    }

    async fn history(&self, message_id: &str) -> Vec<RawEvent> {
        store_on(&self.client)
            .load_raw(&format!("{ACME}.{message_id}"))
            .await
            .unwrap()
    }

    async fn types(&self, message_id: &str) -> Vec<String> {
        self.history(message_id)
            .await
            .iter()
            .map(|r| r.event_type().to_owned())
            .collect()
    }

    async fn state(&self, message_id: &str) -> Message {
        store_on(&self.client)
            .load(&format!("{ACME}.{message_id}"))
            .await
            .unwrap()
            .aggregate
    }

    /// The durable consumer's state on its stream.
    async fn consumer_info(&self, durable: Durable) -> async_nats::jetstream::consumer::Info {
        let js = async_nats::jetstream::new(self.client.clone());
        let stream = js.get_stream(durable.stream().as_str()).await.unwrap();
        let mut consumer: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer(durable.as_str()).await.unwrap();
        consumer.info().await.unwrap().clone()
    }

    /// Waits until the role reading `durable` has acked everything on its stream: whatever it
    /// was going to do (a second SMS, a second revoke) has been done.
    async fn wait_consumer_done(&self, durable: Durable) -> async_nats::jetstream::consumer::Info {
        sealpost_testkit::eventually(Duration::from_secs(20), durable.as_str(), || async {
            let info = self.consumer_info(durable).await;
            (info.num_pending == 0
                && info.num_ack_pending == 0
                && info.delivered.stream_sequence > 0)
                .then_some(info)
        })
        .await
        .unwrap()
    }

    /// Waits until the message's status satisfies `done`; panics with its history otherwise.
    async fn wait_for(
        &self,
        message_id: &str,
        within: Duration,
        done: impl Fn(Status) -> bool,
    ) -> Status {
        let deadline = Instant::now() + within;
        loop {
            let s = self.state(message_id).await.status;
            if done(s) {
                return s;
            }
            if Instant::now() > deadline {
                panic!(
                    "message {message_id} is {s} after {within:?}; history: {:?}; carrier saw {:?}",
                    self.types(message_id).await,
                    self.sim.requests_for(message_id)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every message is displayed (loads tolerate a server that is restarting).
    async fn wait_all_displayed(&self, ids: &[String], within: Duration) {
        let store = store_on(&self.client);
        let deadline = Instant::now() + within;
        let mut pending = ids.to_vec();
        while !pending.is_empty() {
            assert!(
                Instant::now() < deadline,
                "{} messages not displayed in time, e.g. {:?}",
                pending.len(),
                &pending[..pending.len().min(3)]
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
            let mut still = vec![];
            for id in pending {
                match store.load(&format!("{ACME}.{id}")).await {
                    Ok(l) if l.aggregate.status == Status::Displayed => {}
                    _ => still.push(id),
                }
            }
            pending = still;
        }
    }

    /// Sends to a recipient the carrier accepts but never reaches, and waits until the message
    /// is acked and then ends at its TTL with the carrier's copy revoked: `expired`, or with a
    /// fallback requested `fallback_triggered` (reason `expired`, the revoke recorded) and
    /// exactly one SMS notice.
    /// Sends a message the carrier accepts but never delivers, and waits for its expiry: on its
    /// first attempt, or, with `first_fails`, on its second after a 503.
    async fn expire_offline(
        &self,
        key: &str,
        to: &str,
        ttl: u64,
        fallback: bool,
        first_fails: bool,
    ) -> String {
        let mut script = vec![Scripted::AcceptOffline];
        if first_fails {
            script.insert(
                0,
                Scripted::Status {
                    code: 503,
                    retry_after_secs: None,
                },
            );
        }
        self.sim.script(to, script);
        let id = self.send_with(key, to, ttl, fallback).await;
        let (end, last) = if fallback {
            (Status::FallbackTriggered, "fallback_triggered")
        } else {
            (Status::Expired, "expired")
        };
        // Acked, or already ended (a slow poll can miss the acked state); the history below
        // shows that it was acked before it ended.
        self.wait_for(&id, Duration::from_secs(10), |s| {
            s == Status::CarrierAcked || s == end
        })
        .await;
        self.wait_for(&id, Duration::from_secs(20), |s| s == end)
            .await;
        let mut types = vec!["accepted"];
        if first_fails {
            types.extend(["attempt_failed", "retry_scheduled"]);
        }
        types.extend(["carrier_acked", last]);
        assert_eq!(self.types(&id).await, types);
        let body = self.event_body(&id, last).await;
        assert_eq!(body["revoke"], "revoked");
        if fallback {
            assert_eq!(body["reason"], "expired");
            let sms = sealpost_testkit::eventually(Duration::from_secs(10), "the notice", || {
                let n = self
                    .sim
                    .notices()
                    .iter()
                    .filter(|n| n.message_id == id)
                    .count();
                async move { (n > 0).then_some(n) }
            })
            .await
            .unwrap();
            assert_eq!(sms, 1, "one notice");
            assert_eq!(
                self.sim.stats().sms_duplicates,
                0,
                "and no second attempt at one"
            );
        }
        assert!(self.sim.revoked(&id), "the carrier still holds the message");
        id
    }

    /// The delivery roles as a real `sealpost serve` process (to `kill -9`), configured by a file
    /// in `dir` to reach this deployment's S3, simulator and server.
    fn delivery_process(&self, dir: &std::path::Path) -> crate::support::ServeProcess {
        let sim = SimConfig::default();
        let config = dir.join("sealpost.toml");
        std::fs::write(
            &config,
            format!(
                "[gateway]\nhttp_listen = \"127.0.0.1:0\"\n[s3]\nendpoint = \"{s3}\"\naccess_key_id = \"{ak}\"\nsecret_access_key = \"{sk}\"\n\
                 [retry]\nbase_ms = 100\nmax_ms = 1000\n\
                 [delivery]\nconcurrency = 256\n\
                 [carriers.rbm]\nbase_url = \"{url}\"\nagent_id = \"{agent}\"\nbearer_token = \"{bearer}\"\nclient_token = \"{client}\"\n\
                 [carriers.sms]\nbase_url = \"{url}\"\napi_key = \"{sms}\"\n",
                s3 = self.cfg.s3.endpoint,
                ak = self.cfg.s3.access_key_id,
                sk = self.cfg.s3.secret_access_key.expose(),
                url = self.sim.base_url(),
                agent = sim.agent_id,
                bearer = sim.bearer_token.expose(),
                client = sim.client_token.expose(),
                sms = sim.sms_api_key.expose(),
            ),
        )
        .unwrap();
        crate::support::ServeProcess::new(
            "delivery,receipts,expiry,fallback",
            config,
            self.server.url(),
        )
    }

    async fn event_body(&self, message_id: &str, event_type: &str) -> Value {
        let h = self.history(message_id).await;
        let r = h
            .iter()
            .find(|r| r.event_type() == event_type)
            .unwrap_or_else(|| panic!("no {event_type} event"));
        serde_json::from_slice(&r.body).unwrap()
    }
}

#[tokio::test]
async fn a_message_goes_from_accepted_to_displayed_with_one_submission_and_its_correlation_id() {
    let p = Deployment::start(Options::default()).await;
    let id = p.send("happy-1", "+15550001001", 3600).await;
    p.wait_for(&id, Duration::from_secs(20), |s| s == Status::Displayed)
        .await;
    assert_eq!(
        p.types(&id).await,
        ["accepted", "carrier_acked", "delivered", "displayed"]
    );
    let requests: Vec<u16> = p.sim.requests_for(&id).iter().map(|r| r.status).collect();
    assert_eq!(
        requests,
        [200],
        "one submission reached the carrier, and no resubmission"
    );
    let acked = p.history(&id).await.into_iter().nth(1).unwrap();
    assert_eq!(
        acked.header("Sealpost-Correlation-Id"),
        Some("corr-happy-1")
    );
    // No expiry timer: the carrier's TTL bounds a message it acked on its first attempt.
    let js = async_nats::jetstream::new(p.client.clone());
    assert!(js
        .get_stream(Stream::Schedules.as_str())
        .await
        .unwrap()
        .get_last_raw_message_by_subject(&timer(&id).schedule())
        .await
        .is_err());
}

#[tokio::test]
async fn transient_errors_are_retried_with_backoff_until_the_carrier_accepts() {
    let p = Deployment::start(Options::default()).await;
    let to = "+15550001002";
    p.sim.script(
        to,
        vec![
            Scripted::Status {
                code: 500,
                retry_after_secs: None,
            },
            Scripted::Status {
                code: 503,
                retry_after_secs: None,
            },
        ],
    );
    let id = p.send("transient-1", to, 3600).await;
    p.wait_for(&id, Duration::from_secs(20), |s| s == Status::Displayed)
        .await;
    assert_eq!(
        p.types(&id).await,
        [
            "accepted",
            "attempt_failed",
            "retry_scheduled",
            "attempt_failed",
            "retry_scheduled",
            "carrier_acked",
            "delivered",
            "displayed"
        ]
    );
    let failed = p.event_body(&id, "attempt_failed").await;
    assert_eq!(failed["class"], "transient");
    let requests = p.sim.requests_for(&id);
    assert_eq!(
        requests.iter().map(|r| r.status).collect::<Vec<_>>(),
        [500, 503, 200]
    );
    // The policy's backoff (base 100 ms, jittered by 0.5..1.5) separates the attempts.
    assert!(requests[1].at - requests[0].at >= Duration::from_millis(50));
    // Undelivered after its first attempt, it got an expiry timer on the schedules stream,
    // keyed by the message.
    let js = async_nats::jetstream::new(p.client.clone());
    let timer = js
        .get_stream(Stream::Schedules.as_str())
        .await
        .unwrap()
        .get_last_raw_message_by_subject(&timer(&id).schedule())
        .await
        .expect("an expiry timer");
    let spec = timer.headers.get("Nats-Schedule").unwrap().to_string();
    assert!(spec.starts_with("@at "), "{spec}");
}

#[tokio::test]
async fn a_429_pauses_the_whole_carrier_until_retry_after() {
    let p = Deployment::start(Options {
        rbm_concurrency: 1,
        ..Options::default()
    })
    .await;
    let throttled_to = "+15550001003";
    p.sim.script(
        throttled_to,
        vec![Scripted::Status {
            code: 429,
            retry_after_secs: Some(1),
        }],
    );
    let a = p.send("throttle-a", throttled_to, 3600).await;
    sealpost_testkit::eventually(Duration::from_secs(10), "the throttled request", || async {
        (!p.sim.requests_for(&a).is_empty()).then_some(())
    })
    .await
    .unwrap();
    let throttled_at = p.sim.requests_for(&a)[0].at;
    // Another message for another recipient, sent while the carrier is paused.
    let b = p.send("throttle-b", "+15550001004", 3600).await;
    p.wait_for(&a, Duration::from_secs(20), |s| s == Status::Displayed)
        .await;
    p.wait_for(&b, Duration::from_secs(20), |s| s == Status::Displayed)
        .await;
    assert_eq!(
        p.sim.throttle_violations(),
        0,
        "a request arrived inside Retry-After"
    );
    let a_retry = p.sim.requests_for(&a)[1].at;
    let b_first = p.sim.requests_for(&b)[0].at;
    assert!(a_retry - throttled_at >= Duration::from_secs(1));
    assert!(
        b_first - throttled_at >= Duration::from_secs(1),
        "the pause held back the other message too"
    );
    let failed = p.event_body(&a, "attempt_failed").await;
    assert_eq!(failed["class"], "throttled");
    assert_eq!(failed["retry_after_ms"], 1000);
}

#[tokio::test]
async fn a_permanent_error_fails_the_message_without_retrying() {
    let p = Deployment::start(Options::default()).await;
    let to = "+15550001005";
    p.sim.script(
        to,
        vec![Scripted::Status {
            code: 400,
            retry_after_secs: None,
        }],
    );
    let id = p.send("permanent-1", to, 3600).await;
    p.wait_for(&id, Duration::from_secs(20), |s| s == Status::Failed)
        .await;
    assert_eq!(p.types(&id).await, ["accepted", "attempt_failed", "failed"]);
    assert_eq!(
        p.event_body(&id, "attempt_failed").await["class"],
        "permanent"
    );
    // The worker acked its job: no retry is coming.
    p.wait_consumer_done(Durable::Delivery).await;
    assert_eq!(
        p.sim.requests_for(&id).len(),
        1,
        "no retry after a permanent error"
    );
    assert!(
        p.sim.notices().is_empty(),
        "a permanent error is not a fallback"
    );
}

#[tokio::test]
async fn a_recipient_without_rcs_gets_one_neutral_sms_notice() {
    let p = Deployment::start(Options::default()).await;
    let to = "+15550001006";
    p.sim.script(to, vec![Scripted::NotCapable]);
    let id = p.send("fallback-1", to, 3600).await;
    p.wait_for(&id, Duration::from_secs(20), |s| {
        s == Status::FallbackTriggered
    })
    .await;
    assert_eq!(
        p.types(&id).await,
        ["accepted", "attempt_failed", "fallback_triggered"]
    );
    assert_eq!(
        p.event_body(&id, "attempt_failed").await["class"],
        "not_capable"
    );
    sealpost_testkit::eventually(Duration::from_secs(10), "the SMS notice", || async {
        p.sim
            .notices()
            .iter()
            .any(|n| n.message_id == id)
            .then_some(())
    })
    .await
    .unwrap();
    let notices: Vec<_> = p
        .sim
        .notices()
        .into_iter()
        .filter(|n| n.message_id == id)
        .collect();
    assert_eq!(notices.len(), 1);
    assert_eq!(notices[0].text, sealpost_delivery::DEFAULT_NOTICE);
    p.wait_consumer_done(Durable::Fallback).await;
    // A second send under the same client_ref is answered 409 and left out of `notices()`;
    // the simulator counts it here.
    let stats = p.sim.stats();
    assert_eq!((stats.sms_accepted, stats.sms_duplicates), (1, 0));
}

/// README, Delivery, expiry. A message the carrier acked on its first attempt has no timer: the
/// carrier's TTL (`expireTime` = `expires_at`) revokes it and its TTL_EXPIRATION_REVOKED receipt
/// ends it. A message still undelivered after its first attempt gets a timer before the second,
/// which fires at `expires_at`; the expiry role revokes it (the carrier's TTL is 30 s later).
#[tokio::test]
async fn at_its_ttl_an_undelivered_message_expires_and_is_revoked_at_the_carrier() {
    let p = Deployment::start(Options::default()).await;
    let js = async_nats::jetstream::new(p.client.clone());
    let schedules = js.get_stream(Stream::Schedules.as_str()).await.unwrap();

    // Four messages at once, each with a TTL long enough for a retried attempt to be acked
    // before it on a slow machine; with a fallback requested, the same expiry falls back:
    // revoked first, then one notice.
    let (first, retried, _, _) = tokio::join!(
        p.expire_offline("ttl-1", "+15550001007", 6, false, false),
        p.expire_offline("ttl-2", "+15550001008", 6, false, true),
        p.expire_offline("ttl-fallback-1", "+15550001027", 6, true, false),
        p.expire_offline("ttl-fallback-2", "+15550001028", 6, true, true),
    );
    for subject in [timer(&first).schedule(), timer(&first).due()] {
        assert!(
            schedules
                .get_last_raw_message_by_subject(&subject)
                .await
                .is_err(),
            "a message acked on its first attempt has a timer ({subject})"
        );
    }
    // The server fired the timer: it published onto the due subject.
    schedules
        .get_last_raw_message_by_subject(&timer(&retried).due())
        .await
        .expect("the expiry timer fired");
}

/// The expiry role is down: the timer of a message that needed a second attempt fires into
/// `SEALPOST_SCHEDULES` but nobody acts on it. The carrier's TTL (`expires_at` + 1 s here) takes
/// the message back and says so in a signed TTL_EXPIRATION_REVOKED webhook, which the gateway
/// (on its own, without the delivery roles) stores raw before the receipts role applies it.
#[tokio::test]
async fn the_carriers_ttl_webhook_expires_a_message_our_timer_did_not_end() {
    let p = Deployment::start(Options {
        roles: &[Role::Delivery, Role::Receipts],
        carrier_ttl_grace: Duration::from_secs(1),
        ..Options::default()
    })
    .await;
    let id = p
        .expire_offline("carrier-ttl-1", "+15550001017", 5, false, true)
        .await;
    let js = async_nats::jetstream::new(p.client.clone());
    js.get_stream(Stream::Schedules.as_str())
        .await
        .unwrap()
        .get_last_raw_message_by_subject(&timer(&id).due())
        .await
        .expect("our timer fired, with nobody to act on it");
    // The webhook was stored raw before it was applied.
    let stored = js
        .get_stream(Stream::Receipts.as_str())
        .await
        .unwrap()
        .get_last_raw_message_by_subject(&receipt_subject("rbm"))
        .await;
    let payload = match stored {
        Ok(m) => m.payload,
        Err(e) => panic!("no stored receipt for {id}: {e}"),
    };
    match sealpost_carriers::webhook::parse(&payload).unwrap() {
        sealpost_carriers::webhook::Webhook::Event(e) => {
            assert_eq!(e.message_id, id);
            assert_eq!(
                e.kind,
                sealpost_carriers::webhook::RbmEventKind::TtlExpirationRevoked
            );
        }
        other => panic!("stored receipt is not an event: {other:?}"),
    }
}

#[tokio::test]
async fn forged_and_unsigned_receipts_are_refused_and_stored_nowhere() {
    let p = Deployment::start(Options::default()).await;
    let url = format!("http://{}/v1/receipts/rbm", p.gateway.http_addr().unwrap());
    let body =
        sealpost_carriers::webhook::event_envelope(&sealpost_carriers::webhook::RbmEventWire {
            agent_id: Some("agent".into()),
            sender_phone_number: Some("+15550001008".into()),
            event_type: Some("DELIVERED".into()),
            event_id: Some("forged-1".into()),
            message_id: Some("m-forged".into()),
            send_time: None,
        });
    let http = reqwest::Client::new();
    let unsigned = http.post(&url).body(body.clone()).send().await.unwrap();
    assert_eq!(unsigned.status().as_u16(), 401);
    let forged = http
        .post(&url)
        .header(
            "X-Goog-Signature",
            sealpost_carriers::webhook::sign(&body, "not-the-token"),
        )
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 401);
    assert_eq!(stream_messages(&p.client, Stream::Receipts).await, 0);
    // RBM's endpoint verification is answered with the secret.
    let token = SimConfig::default().client_token.expose().to_owned();
    let v: Value = http
        .post(&url)
        .body(sealpost_carriers::webhook::verification_body(
            &token, "s3cr3t",
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["secret"], "s3cr3t");
}

#[tokio::test]
async fn a_receipt_that_arrives_before_the_carrier_ack_is_retried_not_dropped() {
    let mut p = Deployment::start(Options {
        receipts_from_sim: false,
        start_delivery: false,
        ..Options::default()
    })
    .await;
    let id = p.send("early-1", "+15550001009", 3600).await;
    let url = format!("http://{}/v1/receipts/rbm", p.gateway.http_addr().unwrap());
    let token = SimConfig::default().client_token.expose().to_owned();
    let http = reqwest::Client::new();
    for (event_id, kind) in [("early-read", "READ"), ("early-delivered", "DELIVERED")] {
        let body =
            sealpost_carriers::webhook::event_envelope(&sealpost_carriers::webhook::RbmEventWire {
                agent_id: None,
                sender_phone_number: None,
                event_type: Some(kind.into()),
                event_id: Some(event_id.into()),
                message_id: Some(id.clone()),
                send_time: None,
            });
        let res = http
            .post(&url)
            .header(
                "X-Goog-Signature",
                sealpost_carriers::webhook::sign(&body, &token),
            )
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.status().as_u16(),
            200,
            "a genuine receipt is stored and answered 200"
        );
    }
    // Receipts role only: they cannot apply yet. The role takes them, finds no ack to apply
    // them to and puts them back: they come again, and neither is acked (dropped).
    let receipts_only = p.start_roles(&[Role::Receipts]).await;
    let info = sealpost_testkit::eventually(
        Duration::from_secs(20),
        "the receipts redelivered after being put back",
        || async {
            let info = p.consumer_info(Durable::Receipts).await;
            (info.num_redelivered >= 1 && info.delivered.stream_sequence >= 2).then_some(info)
        },
    )
    .await
    .unwrap();
    assert_eq!(
        info.ack_floor.stream_sequence, 0,
        "a receipt was dropped: {info:?}"
    );
    assert_eq!(p.types(&id).await, ["accepted"]);
    drop(receipts_only);
    // Now the worker records the ack and the stored receipts apply.
    p.start_delivery().await;
    p.wait_for(&id, Duration::from_secs(20), |s| s == Status::Displayed)
        .await;
    assert_eq!(
        p.types(&id).await,
        ["accepted", "carrier_acked", "delivered", "displayed"]
    );
}

#[tokio::test]
async fn killing_the_worker_repeatedly_mid_submission_delivers_2000_messages_once_each() {
    kill_the_worker_repeatedly(false, 2000).await;
}

/// The same on the 3-node cluster, every stream with 3 replicas.
#[tokio::test]
async fn on_the_cluster_killing_the_worker_repeatedly_delivers_1000_messages_once_each() {
    kill_the_worker_repeatedly(true, 1000).await;
}

/// `n` messages streamed in while the delivery process is `kill -9`ed whenever the carrier has
/// accepted 20 more since the last kill (up to 10 times): each message is accepted by the
/// carrier exactly once, first time, and ends displayed with one event of each kind.
async fn kill_the_worker_repeatedly(cluster: bool, n: usize) {
    let p = Deployment::start(Options {
        cluster,
        start_delivery: false,
        sim: SimConfig {
            latency: Duration::from_millis(30),
            receipt_delay: Duration::from_millis(20),
            // A fifth of the submissions are accepted and then answered only after a second, so
            // every kill lands between some carrier accepts and their recorded acks.
            faults: sealpost_carrier_sim::FaultMix {
                timeout: 0.2,
                hang_ms: 1000,
                ..Default::default()
            },
            ..SimConfig::default()
        },
        ..Options::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut workers = p.delivery_process(dir.path());
    workers.spawn();

    let client = p.client.clone();
    let bodies: Vec<Vec<u8>> = (0..n)
        .map(|i| p.body(&format!("crash-{i}"), &format!("+1555{:07}", i), 3600))
        .collect();
    let sends = tokio::spawn(async move {
        futures::stream::iter(bodies)
            .map(|body| {
                let client = client.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    let reply = client
                        .request(format!("sealpost.cmd.{ACME}.send"), body.into())
                        .await
                        .expect("the in-process gateway answers");
                    let v: Value = serde_json::from_slice(&reply.payload).unwrap();
                    v["message_id"].as_str().expect("accepted").to_owned()
                }
            })
            .buffer_unordered(4)
            .collect::<Vec<_>>()
            .await
    });

    // Kill the worker whenever it is busy submitting (the carrier accepted more since the last
    // kill), up to 10 times, while the sends stream in.
    let mut kills = 0;
    let mut last = 0;
    while kills < 10 {
        let busy =
            sealpost_testkit::eventually(Duration::from_secs(30), "a busy worker", || async {
                let accepted = p.sim.stats().accepted;
                (accepted >= last + 20 || accepted as usize >= n).then_some(accepted)
            })
            .await
            .unwrap();
        if busy as usize >= n {
            break;
        }
        last = busy;
        workers.kill9().await;
        kills += 1;
        workers.spawn();
    }
    assert!(kills >= 3, "only {kills} kills landed before the run ended");
    let ids = sends.await.unwrap();
    assert_eq!(ids.len(), n);

    p.wait_all_displayed(&ids, Duration::from_secs(240)).await;
    workers.kill9().await;

    let stats = p.sim.stats();
    // What reached the carrier per message: the first submission is accepted; a resubmission
    // after a kill reuses the message id, so the carrier's dedup answers it 409.
    let mut resubmitted = 0;
    let mut resubmissions = 0;
    for id in &ids {
        let requests = p.sim.requests_for(id);
        let accepted = requests.iter().filter(|r| r.status == 200).count();
        let repeated = requests.iter().filter(|r| r.status == 409).count();
        assert_eq!(accepted, 1, "message {id}: carrier answers {requests:?}");
        assert_eq!(
            requests.first().map(|r| r.status),
            Some(200),
            "message {id}: the first submission is the accepted one: {requests:?}"
        );
        if repeated > 0 {
            resubmitted += 1;
            resubmissions += repeated;
        }
        let types = p.types(id).await;
        for t in ["carrier_acked", "delivered", "displayed"] {
            assert_eq!(
                types.iter().filter(|x| *x == t).count(),
                1,
                "message {id}: {types:?}"
            );
        }
    }
    eprintln!(
        "{} worker processes, {kills} kills; carrier: {} accepted, {resubmissions} \
         resubmissions of {resubmitted} messages answered 409 (cluster: {cluster})",
        workers.spawned, stats.accepted
    );
    assert_eq!(stats.accepted, n as u64);
    assert_eq!(resubmissions as u64, stats.duplicates_409);
    assert!(
        resubmitted > 0,
        "no kill landed mid-submission; the test did not exercise redelivery"
    );
}

#[tokio::test]
async fn killing_the_nats_server_mid_flight_loses_no_message_and_submits_none_twice() {
    let mut p = Deployment::start(Options {
        sim: SimConfig {
            latency: Duration::from_millis(20),
            receipt_delay: Duration::from_millis(20),
            ..SimConfig::default()
        },
        ..Options::default()
    })
    .await;
    const N: usize = 600;
    let client = p.client.clone();
    let bodies: Vec<Vec<u8>> = (0..N)
        .map(|i| p.body(&format!("srv-{i}"), &format!("+1666{:07}", i), 3600))
        .collect();
    // Sends that got no answer and were sent again under the same key.
    let resends = Arc::new(AtomicUsize::new(0));
    let resent = resends.clone();
    let sends = tokio::spawn(async move {
        futures::stream::iter(bodies)
            .map(|body| {
                let client = client.clone();
                let resent = resent.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                    // While the server is down a send fails; the client resends under its key.
                    loop {
                        let req = client
                            .request(format!("sealpost.cmd.{ACME}.send"), body.clone().into());
                        if let Ok(Ok(reply)) =
                            tokio::time::timeout(Duration::from_secs(2), req).await
                        {
                            let v: Value = serde_json::from_slice(&reply.payload).unwrap();
                            if let Some(id) = v["message_id"].as_str() {
                                return id.to_owned();
                            }
                        }
                        resent.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await
    });
    // Restart the server twice, each time only once the carrier has accepted more since the
    // last restart and while messages are still coming: both restarts hit work in flight. The
    // carrier's count is polled every 10 ms (not with a growing interval), so that a fast
    // machine cannot flush the rest between two looks.
    let mut last = 0;
    for restart in 0..2 {
        let deadline = Instant::now() + Duration::from_secs(60);
        let accepted = loop {
            let accepted = p.sim.stats().accepted;
            if accepted >= last + 50 {
                break accepted;
            }
            assert!(
                Instant::now() < deadline,
                "restart {restart}: the carrier accepted {accepted}, not {} in 60 s",
                last + 50
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert!(
            (accepted as usize) < N,
            "restart {restart}: the carrier already has all {N} messages; nothing was in flight"
        );
        last = accepted;
        p.server
            .single()
            .restart()
            .await
            .expect("the server restarts on its store");
    }
    let ids = tokio::time::timeout(Duration::from_secs(120), sends)
        .await
        .expect("every send is answered")
        .unwrap();
    p.wait_all_displayed(&ids, Duration::from_secs(180)).await;
    let stats = p.sim.stats();
    assert_eq!(
        stats.accepted, N as u64,
        "each message accepted once by the carrier"
    );
    for id in &ids {
        let types = p.types(id).await;
        assert_eq!(
            types.iter().filter(|t| *t == "carrier_acked").count(),
            1,
            "{id}: {types:?}"
        );
        assert_eq!(
            types.iter().filter(|t| *t == "accepted").count(),
            1,
            "{id}: {types:?}"
        );
    }
    let resends = resends.load(Ordering::Relaxed);
    eprintln!(
        "server restarted twice; {resends} sends resent by the client; carrier: {} accepted, {} \
         answered 409",
        stats.accepted, stats.duplicates_409
    );
    assert!(
        resends + stats.duplicates_409 as usize > 0,
        "no send was resent and no submission repeated: the restarts hit no work in flight"
    );
}

#[tokio::test]
async fn status_answers_from_the_messages_view_and_from_events_until_the_view_has_the_message() {
    let db = sealpost_testkit::PgDatabase::create().await.unwrap();
    let p = Deployment::start(Options {
        status_view: Some(db.url.clone()),
        ..Options::default()
    })
    .await;
    let status = |id: String| {
        let url = format!("http://{}/v1/messages/{id}", p.gateway.http_addr().unwrap());
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(format!("{ACME}-key"))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let id = p.send("view-1", "+15550001010", 3600).await;
    // No projector yet: the answer comes from the events, folded like the view folds them.
    let early = status(id.clone()).await;
    assert_eq!(early["message_id"], id.as_str());
    assert_eq!(early["recipient_masked"], "+*********10");
    assert_eq!(early["source"], "events", "not from the view yet: {early}");
    p.wait_for(&id, Duration::from_secs(20), |s| s == Status::Displayed)
        .await;
    let _projector = p.start_roles(&[Role::Projector]).await;
    let row = sealpost_testkit::eventually(Duration::from_secs(20), "the view row", || async {
        let v = status(id.clone()).await;
        (v["status"] == "displayed" && v["source"] == "view").then_some(v)
    })
    .await
    .unwrap();
    // The view and the events agree field for field.
    let mut from_events = serde_json::to_value(
        sealpost_gateway::view::row_from_events(
            &store_on(&p.client),
            &TenantId::new(ACME).unwrap(),
            &sealpost_domain::MessageId::new(&id).unwrap(),
        )
        .await
        .unwrap()
        .unwrap(),
    )
    .unwrap();
    assert_eq!(from_events["source"], "events");
    from_events["source"] = json!("view");
    assert_eq!(row, from_events);
    assert_eq!(row["tenant"], ACME);
    assert_eq!(row["recipient_masked"], "+*********10");
    assert_eq!(row["correlation_id"], "corr-view-1");
    assert!(row["displayed_at"].is_string(), "{row}");
    assert!(
        !row.to_string().contains("5550001010"),
        "the number never appears: {row}"
    );
    // A key of no configured tenant cannot read it.
    let other = reqwest::Client::new()
        .get(format!(
            "http://{}/v1/messages/{id}",
            p.gateway.http_addr().unwrap()
        ))
        .bearer_auth("beta-co-key")
        .send()
        .await
        .unwrap();
    assert!(other.status().is_client_error());
}

/// The report of the expiry-versus-fallback issue, end to end: every message asks for an SMS
/// fallback; a fifth go to recipients without RCS and a fifth to recipients whose carrier always
/// answers 503, with an 8 s TTL; the delivery process is `kill -9`ed whenever it has work in
/// flight. Every failing message ends `fallback_triggered` with exactly one SMS notice counted at
/// the simulator's SMS API (the 503s with the reason `expired`, the others `not_capable`), and
/// none ends otherwise, although the kills make the expiry timer and redelivered jobs race.
#[tokio::test]
async fn killing_the_delivery_process_never_changes_how_a_failing_message_ends() {
    let p = Deployment::start(Options {
        start_delivery: false,
        ..Options::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut workers = p.delivery_process(dir.path());
    workers.spawn();

    const N: usize = 150;
    // Message ids derive from (tenant, key), so the failing ones are known before they are sent.
    let id_of = |i: usize| {
        sealpost_domain::MessageId::derive(&TenantId::new(ACME).unwrap(), &format!("fb-{i}"))
            .to_string()
    };
    let failing: Vec<(usize, String)> = (0..N)
        .filter(|i| i % 5 < 2)
        .map(|i| (i, id_of(i)))
        .collect();
    let mut bodies = Vec::new();
    for i in 0..N {
        let to = format!("+1555200{i:04}");
        let ttl = match i % 5 {
            0 => {
                // Every submission, a resubmission after a kill too, finds no RCS (as a real
                // carrier answers 404 each time).
                p.sim.script(&to, vec![Scripted::NotCapable; 200]);
                3600
            }
            1 => {
                let always_503 = Scripted::Status {
                    code: 503,
                    retry_after_secs: None,
                };
                p.sim.script(&to, vec![always_503; 200]);
                // Long enough for several kills to land while they retry on a slow machine.
                8
            }
            _ => 3600,
        };
        bodies.push((i, p.body(&format!("fb-{i}"), &to, ttl)));
    }
    let client = p.client.clone();
    let sends = tokio::spawn(async move {
        futures::stream::iter(bodies)
            .map(|(i, body)| {
                let client = client.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(60)).await;
                    let reply = client
                        .request(format!("sealpost.cmd.{ACME}.send"), body.into())
                        .await
                        .expect("the in-process gateway answers");
                    let v: Value = serde_json::from_slice(&reply.payload).unwrap();
                    (i, v["message_id"].as_str().expect("accepted").to_owned())
                }
            })
            .buffer_unordered(4)
            .collect::<Vec<_>>()
            .await
    });

    // Kill whenever the carrier has seen more requests since the last kill (work in flight),
    // and count the kills that found a failing message still unsettled.
    let requests = || p.sim.stats().sends;
    let (mut kills, mut kills_mid_retry, mut last) = (0, 0, 0);
    while kills < 8 {
        let seen = sealpost_testkit::eventually(Duration::from_secs(10), "carrier traffic", || {
            let n = requests();
            async move { (n >= last + 10).then_some(n) }
        })
        .await;
        let Ok(seen) = seen else { break };
        last = seen;
        let unsettled = {
            let store = store_on(&p.client);
            let mut n = 0;
            for (_, id) in failing.iter() {
                if let Ok(l) = store.load(&format!("{ACME}.{id}")).await {
                    n += usize::from(!l.aggregate.status.is_final());
                }
            }
            n
        };
        if unsettled == 0 && sends.is_finished() {
            break;
        }
        workers.kill9().await;
        kills += 1;
        kills_mid_retry += usize::from(unsettled > 0);
        tokio::time::sleep(Duration::from_millis(300)).await;
        workers.spawn();
    }
    let ids = sends.await.unwrap();
    assert!(ids.iter().all(|(i, id)| *id == id_of(*i)));
    assert!(kills >= 3, "only {kills} kills landed");
    assert!(
        kills_mid_retry > 0,
        "no kill found a failing message unsettled; the test did not race the expiry"
    );

    for (i, id) in &failing {
        p.wait_for(id, Duration::from_secs(60), Status::is_final)
            .await;
        let types = p.types(id).await;
        assert_eq!(
            types.iter().filter(|t| *t == "fallback_triggered").count(),
            1,
            "message {i}: {types:?}"
        );
        assert_eq!(
            p.state(id).await.status,
            Status::FallbackTriggered,
            "{types:?}"
        );
        let reason = p.event_body(id, "fallback_triggered").await["reason"].clone();
        let want = if i % 5 == 0 { "not_capable" } else { "expired" };
        assert_eq!(reason, want, "message {i}: {types:?}");
    }
    let notices_for = |id: &str| {
        p.sim
            .notices()
            .iter()
            .filter(|n| n.message_id == id)
            .count()
    };
    sealpost_testkit::eventually(Duration::from_secs(60), "every notice", || {
        let done = failing.iter().all(|(_, id)| notices_for(id) >= 1);
        async move { done.then_some(()) }
    })
    .await
    .expect("every failing message got its notice");
    for (i, id) in &failing {
        assert_eq!(notices_for(id), 1, "message {i}: exactly one SMS notice");
    }
    // The others were delivered; nobody else was sent a notice.
    let others: Vec<String> = ids
        .iter()
        .filter(|(i, _)| i % 5 >= 2)
        .map(|(_, id)| id.clone())
        .collect();
    p.wait_all_displayed(&others, Duration::from_secs(120))
        .await;
    assert_eq!(p.sim.notices().len(), failing.len());
    workers.kill9().await;
    eprintln!(
        "{} delivery processes, {kills} kills ({kills_mid_retry} with a failing message unsettled); \
         SMS resubmissions answered as duplicates: {}",
        workers.spawned,
        p.sim.stats().sms_duplicates
    );
}

// ---------------------------------------------------------------- README claims (issue 18)

/// A signed RBM webhook body for `message_id`.
fn signed_rbm_event(kind: &str, event_id: &str, message_id: &str) -> (Vec<u8>, String) {
    let body =
        sealpost_carriers::webhook::event_envelope(&sealpost_carriers::webhook::RbmEventWire {
            agent_id: None,
            sender_phone_number: None,
            event_type: Some(kind.into()),
            event_id: Some(event_id.into()),
            message_id: Some(message_id.into()),
            send_time: None,
        });
    let signature =
        sealpost_carriers::webhook::sign(&body, SimConfig::default().client_token.expose());
    (body, signature)
}

/// How many messages `stream` holds.
async fn stream_messages(client: &async_nats::Client, stream: Stream) -> u64 {
    let js = async_nats::jetstream::new(client.clone());
    let mut s = js.get_stream(stream.as_str()).await.unwrap();
    s.info().await.unwrap().state.messages
}

/// How many messages `stream` holds on exactly `subject`.
async fn messages_on_subject(client: &async_nats::Client, stream: Stream, subject: &str) -> u64 {
    let js = async_nats::jetstream::new(client.clone());
    let s = js.get_stream(stream.as_str()).await.unwrap();
    let info = s.info_with_subjects(subject).await.unwrap();
    let mut n = 0;
    let mut subjects = std::pin::pin!(info);
    while let Some(entry) = subjects.next().await {
        let (name, count) = entry.unwrap();
        if name == subject {
            n += count as u64;
        }
    }
    n
}

/// README, Delivery: "fallback | revokes the RCS copy if one may exist, then sends the neutral
/// SMS notice". Attempt 1 is refused (503); attempt 2 is accepted by the carrier but its answer
/// is lost (a timeout), and with `max_attempts` 2 the message falls back. A copy is now at the
/// carrier, undelivered. The SMS API is reached through a proxy that notes, as each notice
/// arrives, how many revokes the carrier has taken: the one revoke came first.
#[tokio::test]
async fn the_fallback_role_revokes_the_rcs_copy_at_the_carrier_before_it_sends_the_sms() {
    let mut p = Deployment::start(Options {
        start_delivery: false,
        rbm_timeout: Duration::from_millis(300),
        sim: SimConfig {
            // The carrier holds the copy undelivered for the whole test, so a revoke takes it.
            receipt_delay: Duration::from_secs(120),
            faults: sealpost_carrier_sim::FaultMix {
                hang_ms: 1000,
                ..Default::default()
            },
            ..SimConfig::default()
        },
        ..Options::default()
    })
    .await;

    // The SMS proxy: (client_ref, carrier revokes so far) per notice, then the simulator's answer.
    let seen: std::sync::Arc<std::sync::Mutex<Vec<(String, u64)>>> = Default::default();
    let sim_url = p.sim.base_url();
    let proxy = {
        let seen = seen.clone();
        let http = reqwest::Client::new();
        axum::Router::new().route(
            "/sms/v1/messages",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: bytes::Bytes| async move {
                    let stats: Value = http
                        .get(format!("{sim_url}/sim/stats"))
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    let req: Value = serde_json::from_slice(&body).unwrap();
                    seen.lock().unwrap().push((
                        req["client_ref"].as_str().unwrap().to_owned(),
                        stats["revokes"].as_u64().unwrap(),
                    ));
                    let mut forward = http
                        .post(format!("{sim_url}/sms/v1/messages"))
                        .header("content-type", "application/json")
                        .body(body);
                    if let Some(auth) = headers.get("authorization") {
                        forward = forward.header("authorization", auth.to_str().unwrap());
                    }
                    let res = forward.send().await.unwrap();
                    let status = axum::http::StatusCode::from_u16(res.status().as_u16()).unwrap();
                    (status, res.bytes().await.unwrap().to_vec())
                },
            ),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", listener.local_addr().unwrap());
    let _proxy = tokio::spawn(async move { axum::serve(listener, proxy).await });
    p.cfg.carriers.sms.base_url = proxy_url;
    p.cfg.retry.max_attempts = 2;
    p.start_delivery().await;

    let to = "+15550002001";
    p.sim.script(
        to,
        vec![
            Scripted::Status {
                code: 503,
                retry_after_secs: None,
            },
            Scripted::Timeout,
        ],
    );
    let id = p.send("revoke-then-sms", to, 3600).await;
    p.wait_for(&id, Duration::from_secs(20), |s| {
        s == Status::FallbackTriggered
    })
    .await;
    assert_eq!(
        p.types(&id).await,
        [
            "accepted",
            "attempt_failed",
            "retry_scheduled",
            "attempt_failed",
            "fallback_triggered"
        ]
    );
    assert_eq!(
        p.event_body(&id, "fallback_triggered").await["reason"],
        "max_attempts"
    );
    // The second attempt reached the carrier (accepted, answer lost): a copy may be there.
    let statuses: Vec<u16> = p.sim.requests_for(&id).iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 200]);

    sealpost_testkit::eventually(Duration::from_secs(10), "the SMS notice", || async {
        p.sim
            .notices()
            .iter()
            .any(|n| n.message_id == id)
            .then_some(())
    })
    .await
    .unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [(id.clone(), 1)],
        "one notice, sent after the carrier had taken the copy back"
    );
    assert!(p.sim.revoked(&id), "the RCS copy was revoked");
    assert_eq!(p.sim.stats().revokes, 1);
    assert!(!p.sim.delivered(&id));
}

/// README, Delivery: "The `in_app` channel is published on core NATS
/// (`sealpost.notice.<tenant>.<id>`) for the tenant's backend". A recipient without RCS, with an
/// `in_app` fallback: the fallback role publishes the neutral notice there (the template id, no
/// content, no number) and sends no SMS.
#[tokio::test]
async fn an_in_app_fallback_publishes_a_neutral_notice_for_the_tenant_and_sends_no_sms() {
    let p = Deployment::start(Options::default()).await;
    let to = "+15550002002";
    p.sim.script(to, vec![Scripted::NotCapable]);
    let mut notices = p
        .client
        .subscribe(format!("sealpost.notice.{ACME}.>"))
        .await
        .unwrap();
    p.client.flush().await.unwrap();

    let mut body: Value = serde_json::from_slice(&p.body("in-app-1", to, 3600)).unwrap();
    body["fallback"]["channel"] = json!("in_app");
    let reply = p
        .client
        .request(
            format!("sealpost.cmd.{ACME}.send"),
            serde_json::to_vec(&body).unwrap().into(),
        )
        .await
        .unwrap();
    let sent: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(sent["status"], "accepted", "{sent}");
    let id = sent["message_id"].as_str().unwrap().to_owned();

    p.wait_for(&id, Duration::from_secs(20), |s| {
        s == Status::FallbackTriggered
    })
    .await;
    let fallback = p.event_body(&id, "fallback_triggered").await;
    assert_eq!(fallback["channel"], "in_app", "{fallback}");
    assert_eq!(fallback["reason"], "not_capable", "{fallback}");

    let notice = tokio::time::timeout(Duration::from_secs(10), notices.next())
        .await
        .expect("the in-app notice is published")
        .unwrap();
    assert_eq!(
        notice.subject.as_str(),
        sealpost_eventstore::names::notice_subject(
            &TenantId::new(ACME).unwrap(),
            &sealpost_domain::MessageId::new(&id).unwrap()
        )
    );
    let v: Value = serde_json::from_slice(&notice.payload).unwrap();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["at", "message_id", "notice_template"], "{v}");
    assert_eq!(v["message_id"], id.as_str());
    assert_eq!(v["notice_template"], "secure_message_waiting");
    let raw = String::from_utf8_lossy(&notice.payload).into_owned();
    for secret in [&to[1..], p.blob.reference.as_str(), p.blob.sha256.as_str()] {
        assert!(!raw.contains(secret), "the notice carries {secret}: {raw}");
    }
    // The same job sent no SMS.
    assert!(p.sim.notices().iter().all(|n| n.message_id != id));
    assert_eq!(p.sim.stats().sms_accepted, 0);
}

/// README, Delivery: "A job that would wait longer than `max_pause_wait_ms` is NAKed until the
/// pause ends." A 429 with Retry-After 10 s pauses the carrier; `max_pause_wait` is 500 ms. A
/// message sent during the pause is put back (the server reports the NAK of its job, first
/// delivery, while the pause lasts), comes back, and reaches the carrier only after the pause.
#[tokio::test]
async fn a_job_facing_a_pause_longer_than_max_pause_wait_is_put_back_until_the_pause_ends() {
    let mut p = Deployment::start(Options {
        start_delivery: false,
        ..Options::default()
    })
    .await;
    p.cfg.delivery.max_pause_wait = Duration::from_millis(500);
    p.start_delivery().await;
    let mut naks = p
        .client
        .subscribe(format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MSG_NAKED.{}.{}",
            Stream::Events.as_str(),
            sealpost_eventstore::names::Durable::Delivery.as_str()
        ))
        .await
        .unwrap();
    p.client.flush().await.unwrap();

    let throttled_to = "+15550002003";
    p.sim.script(
        throttled_to,
        vec![Scripted::Status {
            code: 429,
            // Long enough that B's put-back surely comes inside it on a slow machine.
            retry_after_secs: Some(10),
        }],
    );
    let a = p.send("pause-a", throttled_to, 3600).await;
    sealpost_testkit::eventually(Duration::from_secs(10), "the throttled request", || async {
        (!p.sim.requests_for(&a).is_empty()).then_some(())
    })
    .await
    .unwrap();
    let pause_ends = p.sim.requests_for(&a)[0].at + Duration::from_secs(10);
    let b = p.send("pause-b", "+15550002004", 3600).await;
    let b_seq = p.history(&b).await[0].stream_seq;

    // The server reports B's job NAKed on its first delivery, while the carrier is paused.
    let nak = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(m) = naks.next().await {
            let v: Value = serde_json::from_slice(&m.payload).unwrap();
            if v["stream_seq"] == b_seq {
                return v;
            }
        }
        panic!("the advisory subscription ended");
    })
    .await
    .expect("the paused job is NAKed, not held");
    assert!(
        Instant::now() < pause_ends,
        "the NAK came after the pause; it was not the put-back"
    );
    assert_eq!(nak["deliveries"], 1, "{nak}");

    p.wait_for(&b, Duration::from_secs(20), |s| s == Status::Displayed)
        .await;
    p.wait_for(&a, Duration::from_secs(20), |s| s == Status::Displayed)
        .await;
    let b_requests = p.sim.requests_for(&b);
    assert_eq!(b_requests.len(), 1, "B reached the carrier once");
    assert!(
        b_requests[0].at >= pause_ends,
        "B reached the carrier inside the pause"
    );
    assert_eq!(p.sim.throttle_violations(), 0);
    assert_eq!(
        p.types(&b).await,
        ["accepted", "carrier_acked", "delivered", "displayed"],
        "the put-back wrote nothing"
    );
}

/// README, Delivery: the gateway writes a genuine receipt raw to `SEALPOST_RECEIPTS`,
/// "deduplicated by RBM's event id". A DELIVERED pushed twice (as Pub/Sub redelivers) is stored
/// once; another body under the same event id is not stored either; a fresh event id is. The
/// event id arriving again after the stream's duplicate window (published straight into the
/// stream under another `Nats-Msg-Id`) is applied by the receipts role and writes nothing.
#[tokio::test]
async fn receipts_are_deduplicated_by_the_carriers_event_id() {
    let p = Deployment::start(Options {
        receipts_from_sim: false,
        ..Options::default()
    })
    .await;
    let id = p.send("receipt-dedupe", "+15550002005", 3600).await;
    p.wait_for(&id, Duration::from_secs(20), |s| s == Status::CarrierAcked)
        .await;
    let url = format!("http://{}/v1/receipts/rbm", p.gateway.http_addr().unwrap());
    let http = reqwest::Client::new();
    let push = |(body, signature): (Vec<u8>, String)| {
        let req = http
            .post(&url)
            .header("X-Goog-Signature", signature)
            .body(body);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let js = async_nats::jetstream::new(p.client.clone());
    let stored = || async {
        js.get_stream(Stream::Receipts.as_str())
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .state
            .messages
    };

    let delivered = signed_rbm_event("DELIVERED", "evt-delivered-1", &id);
    assert_eq!(push(delivered.clone()).await, 200);
    assert_eq!(
        push(delivered.clone()).await,
        200,
        "a redelivery is answered 200"
    );
    assert_eq!(stored().await, 1, "and stored once");
    // Another body under the same event id is the same receipt.
    assert_eq!(
        push(signed_rbm_event("READ", "evt-delivered-1", &id)).await,
        200
    );
    assert_eq!(stored().await, 1);
    p.wait_for(&id, Duration::from_secs(20), |s| s == Status::Delivered)
        .await;

    // After the duplicate window the stream would store that body: the receipts role applies
    // it, and the message, which remembers the receipt ids it applied, writes no `displayed`
    // for an id it has seen (a READ under a fresh id does, below).
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "rbm:evt-delivered-1:after-the-window");
    let ack = js
        .publish_with_headers(
            receipt_subject("rbm"),
            headers,
            signed_rbm_event("READ", "evt-delivered-1", &id).0.into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(!ack.duplicate);
    sealpost_testkit::eventually(
        Duration::from_secs(20),
        "the receipts role acks the late copy",
        || async {
            let mut c: async_nats::jetstream::consumer::PullConsumer = js
                .get_stream(Stream::Receipts.as_str())
                .await
                .unwrap()
                .get_consumer(sealpost_eventstore::names::Durable::Receipts.as_str())
                .await
                .unwrap();
            let info = c.info().await.unwrap();
            (info.ack_floor.stream_sequence >= ack.sequence).then_some(())
        },
    )
    .await
    .unwrap();
    assert_eq!(
        p.types(&id).await,
        ["accepted", "carrier_acked", "delivered"]
    );

    // A fresh event id is a new receipt: stored and applied.
    assert_eq!(push(signed_rbm_event("READ", "evt-read-1", &id)).await, 200);
    assert_eq!(stored().await, 3);
    p.wait_for(&id, Duration::from_secs(20), |s| s == Status::Displayed)
        .await;
    assert_eq!(
        p.types(&id).await,
        ["accepted", "carrier_acked", "delivered", "displayed"]
    );
    assert_eq!(
        p.event_body(&id, "delivered").await["receipt_id"],
        "evt-delivered-1"
    );
    assert_eq!(
        p.event_body(&id, "displayed").await["receipt_id"],
        "evt-read-1"
    );
}

/// README, Delivery: "A schedule's subject is its identity, so a redelivered attempt replaces
/// the timer instead of adding one." The first attempt is answered 503, so the second stores a
/// timer; the delivery process stops while the carrier holds that second attempt; the job comes
/// back after `ack_wait`, attempt 2 runs again (the carrier answers 409) and stores the timer
/// again. The schedules stream's duplicate window is cut to 1 s first, so the second store is
/// not dropped as a `Nats-Msg-Id` duplicate: it replaces the first. One timer is left, and it
/// fires once.
#[tokio::test]
async fn a_redelivered_attempt_replaces_the_expiry_timer_instead_of_adding_one() {
    let p = Deployment::start(Options {
        start_delivery: false,
        rbm_timeout: Duration::from_secs(20),
        sim: SimConfig {
            // Undelivered until long after the TTL: the timer ends the message.
            receipt_delay: Duration::from_secs(120),
            faults: sealpost_carrier_sim::FaultMix {
                hang_ms: 30_000,
                ..Default::default()
            },
            ..SimConfig::default()
        },
        ..Options::default()
    })
    .await;
    let js = async_nats::jetstream::new(p.client.clone());
    let mut schedules = js.get_stream(Stream::Schedules.as_str()).await.unwrap();
    let mut config = schedules.info().await.unwrap().config.clone();
    config.duplicate_window = Duration::from_secs(1);
    js.update_stream(config).await.unwrap();

    let first_process = p.start_roles(&Role::DELIVERY).await;
    let to = "+15550002006";
    p.sim.script(
        to,
        vec![
            Scripted::Status {
                code: 503,
                retry_after_secs: None,
            },
            Scripted::Timeout,
        ],
    );
    // A TTL that leaves room for two attempts, a restart and the 3 s redelivery on a slow
    // machine: the message must be acked before its timer ends it.
    let id = p.send_with("one-timer", to, 20, false).await;
    let timer = timer(&id);
    sealpost_testkit::eventually(
        Duration::from_secs(10),
        "attempt 2 at the carrier",
        || async { (p.sim.requests_for(&id).len() >= 2).then_some(()) },
    )
    .await
    .unwrap();
    let first = schedules
        .get_last_raw_message_by_subject(&timer.schedule())
        .await
        .expect("the timer stored by attempt 2")
        .sequence;
    // The process goes away while the carrier still holds attempt 2 unanswered.
    drop(first_process);
    let failed_once = ["accepted", "attempt_failed", "retry_scheduled"];
    assert_eq!(p.types(&id).await, failed_once);

    let _second_process = p.start_roles(&Role::DELIVERY).await;
    p.wait_for(&id, Duration::from_secs(20), |s| s == Status::CarrierAcked)
        .await;
    let statuses: Vec<u16> = p.sim.requests_for(&id).iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 200, 409], "attempt 2 ran twice");
    let second = schedules
        .get_last_raw_message_by_subject(&timer.schedule())
        .await
        .expect("the timer")
        .sequence;
    assert!(
        second > first,
        "the redelivered attempt stored its timer again"
    );
    assert_eq!(
        messages_on_subject(&p.client, Stream::Schedules, &timer.schedule()).await,
        1,
        "the second timer replaced the first"
    );

    p.wait_for(&id, Duration::from_secs(30), |s| s == Status::Expired)
        .await;
    assert_eq!(p.event_body(&id, "expired").await["revoke"], "revoked");
    assert_eq!(
        p.types(&id).await,
        [&failed_once[..], &["carrier_acked", "expired"]].concat()
    );
    // Fired once, and no timer is left to fire again.
    assert_eq!(
        messages_on_subject(&p.client, Stream::Schedules, &timer.due()).await,
        1
    );
    assert_eq!(
        messages_on_subject(&p.client, Stream::Schedules, &timer.schedule()).await,
        0
    );
}

// ---------------------------------------------------------------- carrier credentials

/// Sends `n` messages, one every `every`, to distinct recipients; returns their ids.
async fn send_paced(p: &Deployment, prefix: &str, n: usize, every: Duration) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    let mut tick = tokio::time::interval(every);
    for i in 0..n {
        tick.tick().await;
        ids.push(
            p.send(
                &format!("{prefix}-{i}"),
                &format!("+1555{:07}", 3_000_000 + i),
                3600,
            )
            .await,
        );
    }
    ids
}

/// The event types of every message, checked for what a credential problem must never cause.
async fn assert_no_message_paid_for_our_credentials(p: &Deployment, ids: &[String]) {
    for id in ids {
        let types = p.types(id).await;
        assert_eq!(
            types,
            ["accepted", "carrier_acked", "delivered", "displayed"],
            "message {id}: an auth failure reached its history"
        );
    }
    assert!(p.sim.notices().is_empty(), "a message fell back to SMS");
}

/// Issue 12, RBM authentication: the simulator's access tokens live 2 s; 240 messages go out
/// over 12 s (about five token lifetimes) through the production wiring with the service
/// account key. Every message is delivered on its first attempt with no failure, and Sealpost
/// fetched a new token before each expired: several tokens, and at most a few 401s (a request in
/// flight while its token ran out), each cured by the one refresh.
#[tokio::test]
async fn oauth_tokens_expiring_every_two_seconds_fail_no_message() {
    let p = Deployment::start(Options {
        oauth_token_ttl: Some(Duration::from_secs(2)),
        ..Options::default()
    })
    .await;
    let ids = send_paced(&p, "oauth-ttl", 240, Duration::from_millis(50)).await;
    p.wait_all_displayed(&ids, Duration::from_secs(60)).await;
    assert_no_message_paid_for_our_credentials(&p, &ids).await;
    let stats = p.sim.stats();
    assert!(
        stats.tokens_issued >= 5,
        "only {} tokens in 12 s of 2 s tokens: they were not refreshed",
        stats.tokens_issued
    );
    assert_eq!(stats.accepted, 240, "{stats:?}");
    println!(
        "oauth: {} messages, {} tokens issued, {} requests refused for an expired token",
        ids.len(),
        stats.tokens_issued,
        stats.expired_token_rejections
    );
}

/// Issue 12, "a carrier auth failure is a carrier outage, not a message failure": under a steady
/// load, the agent's credentials are revoked for 30 s (the token endpoint refuses the key, every
/// token is rejected), then restored. Every message sent before, during and after is delivered;
/// none failed, retried as an attempt or fell back because of the 401s. While revoked, the
/// carrier is paused and probed by one request per pause, so the 401s stay few; the metric
/// counts them; the messages wait and go once a probe gets through.
#[tokio::test]
async fn revoked_credentials_for_30_s_under_load_fail_no_message() {
    let mut p = Deployment::start(Options {
        start_delivery: false,
        oauth_token_ttl: Some(Duration::from_secs(3600)),
        ..Options::default()
    })
    .await;
    p.cfg.delivery.carrier_auth_pause = Duration::from_secs(1);
    p.start_delivery().await;
    let before = auth_failures_counted();

    let every = Duration::from_millis(50);
    let sim = &p.sim;
    let outage = async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        sim.set_credentials_revoked(true);
        let revoked_at = Instant::now();
        let at_revoke = sim.stats();
        tokio::time::sleep(Duration::from_secs(30)).await;
        let at_restore = sim.stats();
        sim.set_credentials_revoked(false);
        (revoked_at, at_revoke, at_restore, Instant::now())
    };
    // 5 s before, 30 s during, 5 s after: 800 messages.
    let (ids, (revoked_at, at_revoke, at_restore, restored_at)) =
        tokio::join!(send_paced(&p, "auth-outage", 800, every), outage);
    p.wait_all_displayed(&ids, Duration::from_secs(90)).await;
    let recovered_in = restored_at.elapsed();
    assert_no_message_paid_for_our_credentials(&p, &ids).await;

    let end = p.sim.stats();
    let rejected_during = at_restore.auth_rejections - at_revoke.auth_rejections;
    let refused_tokens = at_restore.token_refusals - at_revoke.token_refusals;
    assert!(rejected_during > 0, "the outage was never seen: {end:?}");
    // One probe per 1 s pause, plus the requests in flight when the credentials went: far
    // below one request per waiting message (about 600 were sent during the outage).
    assert!(
        rejected_during < 120,
        "{rejected_during} requests refused in 30 s: the carrier was not paused"
    );
    assert!(
        refused_tokens >= 10,
        "{refused_tokens} token requests refused"
    );
    assert_eq!(end.accepted, 800);
    let counted = auth_failures_counted() - before;
    assert!(
        counted > 0,
        "sealpost_carrier_auth_failures_total did not move"
    );
    println!(
        "auth outage of {:?}: {rejected_during} RBM requests refused and {refused_tokens} token \
         requests refused, {counted} auth failures counted; all 800 messages displayed \
         {recovered_in:?} after the credentials came back",
        restored_at - revoked_at,
    );
}

/// `sealpost_carrier_auth_failures_total` for RBM, summed over codes, from this process's
/// registry (the delivery roles run in the test process).
fn auth_failures_counted() -> u64 {
    sealpost_telemetry::encode()
        .lines()
        .filter(|l| l.starts_with("sealpost_carrier_auth_failures_total{carrier=\"rbm\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// README, Delivery, receipts: the gateway and the delivery roles in one process (the harness of
/// `sealpost demo` and `sealpost bench delivery`, through `App::start`), with the simulator
/// sending DELIVERED the moment it accepts a submission (receipt delay 0, before the worker has
/// its answer). The receipts are applied at once, after the worker records the answer: every
/// message ends displayed with one event of each kind, and hardly any receipt had to be stored
/// raw (one is only when it could not be applied within its waits, which a loaded machine can
/// cause, so the test allows a few).
#[tokio::test]
async fn a_gateway_with_the_delivery_roles_applies_receipts_at_once_even_before_the_carrier_answers(
) {
    let server = Nats::start(false).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = app_config(&server.url(), dir.path(), vec![]);
    let mut h = sealpost::harness::Harness::start(
        &cfg,
        sealpost::harness::Options {
            sim: SimConfig {
                latency: Duration::ZERO,
                receipt_delay: Duration::ZERO,
                ..SimConfig::default()
            },
            sms_fallback: false,
            fallback_every: 0,
            tenant_prefix: "colocated",
            hold_delivery: false,
        },
    )
    .await
    .unwrap();
    let n = 300;
    let s = h.drive(n, 32, None).await.unwrap();
    assert!(s.all_terminal(), "not all ended: {:?}", s.by_state);
    assert_eq!(s.displayed(), n as u64, "{:?}", s.by_state);
    for kind in [
        sealpost_domain::EventType::Accepted,
        sealpost_domain::EventType::CarrierAcked,
        sealpost_domain::EventType::Delivered,
        sealpost_domain::EventType::Displayed,
    ] {
        assert_eq!(s.events.get(&kind), Some(&(n as u64)), "{:?}", s.events);
    }
    assert_eq!(s.events_total(), 4 * n as u64, "{:?}", s.events);
    let stored = stream_messages(&server.connect().await, Stream::Receipts).await;
    assert!(
        stored <= (2 * n as u64) / 10,
        "{stored} of {} receipts were stored instead of applied at once",
        2 * n
    );
}

/// README, Delivery, throttling: under random 429s (3 % of requests, Retry-After 1 s), a carrier
/// that throttled us is held to `throttled_concurrency` requests in flight (4 by default) for
/// `throttle_cooldown` after its last 429, so a 429 finds at most 3 other requests on their way
/// into its window. Only the run's first 429 can find more, up to the carrier's concurrency (16
/// here); the cool-down is set longer than the run, so it cannot end in between. With the cap
/// off (`throttled_concurrency` equal to the concurrency), the demo counted hundreds of requests
/// inside a window (README, Delivery figures).
#[tokio::test]
async fn under_random_429s_a_window_finds_at_most_the_cooldowns_few_requests_in_flight() {
    let server = Nats::start(false).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = app_config(&server.url(), dir.path(), vec![]);
    assert_eq!(cfg.carriers.rbm.throttled_concurrency, 4, "the default");
    cfg.carriers.rbm.concurrency = 16;
    cfg.carriers.rbm.throttle_cooldown = Duration::from_secs(600);
    let mut h = sealpost::harness::Harness::start(
        &cfg,
        sealpost::harness::Options {
            sim: SimConfig {
                faults: sealpost_carrier_sim::FaultMix {
                    throttle: 0.03,
                    retry_after_secs: 1,
                    ..Default::default()
                },
                ..SimConfig::default()
            },
            sms_fallback: false,
            fallback_every: 0,
            tenant_prefix: "windows",
            hold_delivery: false,
        },
    )
    .await
    .unwrap();
    let n = 600;
    let s = h.drive(n, 32, None).await.unwrap();
    assert!(s.all_terminal(), "not all ended: {:?}", s.by_state);
    assert_eq!(s.displayed(), n as u64, "{:?}", s.by_state);
    let stats = h.sim_stats();
    eprintln!(
        "{} sends, {} answered 429, {} inside a window ({} more than 10 ms after its 429)",
        stats.sends,
        stats.throttled,
        stats.throttle_violations,
        stats.throttle_violations_after_10ms
    );
    // About 18 expected; fewer than 5 would make the bound below say little.
    assert!(stats.throttled >= 5, "{stats:?}");
    let bound = 15 + 3 * stats.throttled;
    assert!(
        stats.throttle_violations <= bound,
        "{} requests inside a window, more than the first 429's 15 plus 3 per later 429 ({bound}): \
         {stats:?}",
        stats.throttle_violations
    );
    assert_eq!(h.acked_ids().len(), n, "each message acked once");
}
