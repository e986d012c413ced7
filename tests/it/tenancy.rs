//! Tenant isolation on NATS (issue 16), on a nats-server whose accounts are exactly what
//! `sealpost tenants nats-config` prints: tenant A, with everything its account allows, cannot
//! reach tenant B's commands, queries, events, consumers, replies, notices or key-change alerts;
//! and A's replay of its own history, in its own account, equals the service's view of it.
//!
//! A refusal here takes one of three forms, each asserted: a request finds no responder (the
//! subject does not exist in A's account), A's own JetStream answers an API error (the stream or
//! consumer is not A's), or a stream A builds to reach B stays empty.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, response::Response};
use futures::StreamExt;
use sealpost_domain::{MessageId, TenantId};
use sealpost_eventstore::names::{notice_subject, Durable, Stream, TenantAccount};
use sealpost_eventstore::CommandExecutor;
use serde_json::{json, Value};

use crate::audit::{ack, lifecycle, replay};
use crate::gateway::{bytes, send_body, tenant_config};
use crate::support::store_on;

const ACME: &str = "acme-corp";
const BETA: &str = "beta-co";

/// Two tenants with NATS accounts on a server configured from the generated output.
struct Accounts {
    _dir: tempfile::TempDir,
    server: sealpost_testkit::NatsServer,
    svc: async_nats::Client,
    cfg: sealpost::Config,
    acme: nkeys::KeyPair,
    beta: nkeys::KeyPair,
}

impl Accounts {
    async fn start() -> Self {
        let service = nkeys::KeyPair::new_user();
        let (acme, beta) = (nkeys::KeyPair::new_user(), nkeys::KeyPair::new_user());
        let mut a = tenant_config(ACME);
        a.nats_nkey = Some(acme.public_key());
        let mut b = tenant_config(BETA);
        b.nats_nkey = Some(beta.public_key());
        let (_dir, server, svc, cfg) =
            crate::support::server_from_nats_config(&[a, b], &service).await;
        Accounts {
            _dir,
            server,
            svc,
            cfg,
            acme,
            beta,
        }
    }

    async fn connect(&self, kp: &nkeys::KeyPair) -> async_nats::Client {
        async_nats::ConnectOptions::with_nkey(kp.seed().expect("seed"))
            .request_timeout(Some(Duration::from_secs(2)))
            .connect(self.server.url())
            .await
            .expect("the tenant connects with its nkey")
    }

    fn executor(&self) -> CommandExecutor<sealpost_domain::Message> {
        CommandExecutor::new(store_on(&self.svc), sealpost_domain::RetryPolicy::default())
    }

    /// `sealpost replay <args>` with `kp`'s credentials (the service's when `None`).
    async fn replay(&self, kp: Option<&nkeys::KeyPair>, args: &[&str]) -> crate::audit::Run {
        let seed = match kp {
            Some(kp) => kp.seed().expect("seed"),
            None => self.cfg.nats.nkey_seed.expose().to_owned(),
        };
        replay(&self.server.url(), Some(&seed), args).await
    }
}

/// True when a request finds no responder: the subject does not exist in the sender's account.
async fn no_responder(client: &async_nats::Client, subject: &str, body: Vec<u8>) -> bool {
    match client.request(subject.to_owned(), body.into()).await {
        Err(e) => e.kind() == async_nats::client::RequestErrorKind::NoResponders,
        Ok(_) => false,
    }
}

/// Publishes the subject as its own payload (its first two tokens for notices) every 100 ms
/// until `sub` receives it; returns the payload received.
async fn publish_until_received(
    svc: &async_nats::Client,
    subject: &str,
    sub: &mut async_nats::Subscriber,
) -> String {
    let payload = if subject.starts_with("sealpost.notice.") {
        "sealpost.notice".to_owned()
    } else {
        subject.to_owned()
    };
    for _ in 0..50 {
        svc.publish(subject.to_owned(), payload.clone().into())
            .await
            .expect("the service publishes");
        svc.flush().await.expect("the server takes it");
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(100), sub.next()).await {
            return String::from_utf8_lossy(&m.payload).into_owned();
        }
    }
    panic!("{subject} never reached its tenant's subscription");
}

/// A JetStream API call in the caller's own account; the raw answer.
async fn js_api(client: &async_nats::Client, api: &str, body: Value) -> Response<Value> {
    jetstream::new(client.clone())
        .request(api.to_owned(), &body)
        .await
        .expect("the caller's own JetStream answers")
}

fn is_api_error(r: &Response<Value>) -> bool {
    matches!(r, Response::Err { .. })
}

#[tokio::test]
async fn a_tenant_reaches_only_its_own_commands_queries_replies_notices_and_alerts() {
    let env = Accounts::start().await;
    let running = sealpost::App::start(
        env.cfg.clone(),
        &[sealpost::Role::Gateway],
        std::future::pending(),
    )
    .await
    .expect("gateway starts with the service's credentials");
    let blobs = running.blob_store().expect("embedded S3").clone();
    let upload = |t: &str| {
        let blobs = blobs.clone();
        let t = TenantId::new(t).unwrap();
        async move {
            let body = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from_static(
                b"sealed",
            ))]);
            blobs.put_stream(&t, body, 16).await.expect("upload")
        }
    };
    let acme_blob = upload(ACME).await;
    let beta_blob = upload(BETA).await;
    let a = env.connect(&env.acme).await;
    let b = env.connect(&env.beta).await;

    // The control: each tenant uses its own subjects.
    let r = a
        .request(
            format!("sealpost.cmd.{ACME}.send"),
            bytes(&send_body(ACME, "own", &acme_blob)).into(),
        )
        .await
        .expect("acme's own send");
    assert_eq!(
        serde_json::from_slice::<Value>(&r.payload).unwrap()["status"],
        "accepted"
    );
    let r = b
        .request(
            format!("sealpost.cmd.{BETA}.send"),
            bytes(&send_body(BETA, "own", &beta_blob)).into(),
        )
        .await
        .expect("beta's own send");
    let beta_id = serde_json::from_slice::<Value>(&r.payload).unwrap()["message_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // A cannot name B's command or query subjects: they do not exist in A's account.
    let forged = bytes(&send_body(BETA, "forged", &beta_blob));
    assert!(no_responder(&a, &format!("sealpost.cmd.{BETA}.send"), forged).await);
    let status = bytes(&json!({ "message_id": beta_id }));
    assert!(no_responder(&a, &format!("sealpost.qry.{BETA}.status"), status.clone()).await);
    assert!(no_responder(&a, &format!("sealpost.cmd.{BETA}.cancel"), status.clone()).await);
    // Nor publish into B's events: no stream in A's account takes them.
    let js_a = jetstream::new(a.clone());
    let publish = js_a
        .publish(
            format!("sealpost.evt.{BETA}.{beta_id}.cancelled"),
            "{}".into(),
        )
        .await
        .unwrap()
        .await;
    assert!(publish.is_err(), "no stream in acme's account stores it");

    // A listens on every subject of its account (after the requests above, which it would
    // otherwise answer itself) while B's reply, notice and key-change alert happen.
    let mut everything = a.subscribe(">").await.unwrap();
    a.flush().await.unwrap();
    let r = b
        .request(format!("sealpost.qry.{BETA}.status"), status.into())
        .await
        .expect("beta's status");
    assert_eq!(
        serde_json::from_slice::<Value>(&r.payload).unwrap()["tenant"],
        BETA
    );
    let beta_mid = MessageId::new(beta_id.as_str()).unwrap();
    let beta_tenant = TenantId::new(BETA).unwrap();
    let mut b_notices = b
        .subscribe(format!("sealpost.notice.{BETA}.>"))
        .await
        .unwrap();
    let mut b_alerts = b
        .subscribe(format!("sealpost.keys.{BETA}.>"))
        .await
        .unwrap();
    let mut a_alerts = a
        .subscribe(format!("sealpost.keys.{ACME}.>"))
        .await
        .unwrap();
    b.flush().await.unwrap();
    a.flush().await.unwrap();
    // The controls: each tenant receives what is exported to it. Core NATS delivers to the
    // interest the server knows at publish time, and an import's interest reaches the exporting
    // account shortly after the subscription, so each is published until it arrives.
    let notice = notice_subject(&beta_tenant, &beta_mid);
    assert_eq!(
        publish_until_received(&env.svc, &notice, &mut b_notices).await,
        "sealpost.notice"
    );
    let beta_alert = format!("sealpost.keys.{BETA}.changed");
    assert_eq!(
        publish_until_received(&env.svc, &beta_alert, &mut b_alerts).await,
        beta_alert
    );
    let acme_alert = format!("sealpost.keys.{ACME}.changed");
    assert_eq!(
        publish_until_received(&env.svc, &acme_alert, &mut a_alerts).await,
        acme_alert
    );

    // Everything A's `>` saw is A's (its alert, and its own subscriptions' traffic).
    let mut seen = Vec::new();
    while let Ok(Some(m)) =
        tokio::time::timeout(Duration::from_millis(500), everything.next()).await
    {
        seen.push(m);
    }
    assert!(
        seen.iter()
            .any(|m| m.subject.as_str() == format!("sealpost.keys.{ACME}.changed")),
        "the wildcard subscription works: {:?}",
        seen.iter().map(|m| m.subject.as_str()).collect::<Vec<_>>()
    );
    for m in &seen {
        let payload = String::from_utf8_lossy(&m.payload);
        assert!(
            !m.subject.contains(BETA) && !payload.contains(BETA) && !payload.contains(&beta_id),
            "acme saw beta's traffic on {}: {payload}",
            m.subject
        );
    }

    // B's history holds only B's own send.
    let raw = store_on(&env.svc)
        .direct_get_all(&format!("sealpost.evt.{BETA}.>"))
        .await
        .unwrap();
    assert_eq!(raw.len(), 1, "beta's one accepted event, nothing forged");
}

#[tokio::test]
async fn a_tenant_cannot_read_create_inspect_delete_or_squat_another_tenants_consumers() {
    let env = Accounts::start().await;
    let ex = env.executor();
    lifecycle(&ex, ACME, "a1", vec![ack()]).await;
    lifecycle(&ex, BETA, "b1", vec![ack()]).await;
    lifecycle(&ex, BETA, "b2", vec![]).await;

    // Both tenants replay once, which creates their streams; B adds its nightly audit durable.
    for kp in [&env.acme, &env.beta] {
        let t = if std::ptr::eq(kp, &env.acme) {
            ACME
        } else {
            BETA
        };
        let run = env.replay(Some(kp), &["--tenant", t]).await;
        assert!(run.ok, "{t} replays: {}", run.stderr);
    }
    let a = env.connect(&env.acme).await;
    let b = env.connect(&env.beta).await;
    let js_a = jetstream::new(a.clone());
    let js_b = jetstream::new(b.clone());
    let audit = consumer::pull::Config {
        durable_name: Some("tb-audit".into()),
        filter_subject: format!("sealpost.evt.{BETA}.>"),
        ..Default::default()
    };
    let b_stream = js_b.get_stream("SEALPOST_EVENTS").await.unwrap();
    b_stream
        .create_consumer(audit.clone())
        .await
        .expect("beta creates its own durable");

    // A pulls B's durable by name, B's source consumer and the service's durables: none exists
    // in A's account.
    let service_durables = Durable::ALL
        .iter()
        .filter(|d| d.stream() == Stream::Events)
        .map(|d| d.to_string());
    let durables: Vec<String> = ["tb-audit".to_owned(), format!("tenant_{BETA}")]
        .into_iter()
        .chain(service_durables)
        .collect();
    for durable in &durables {
        // (A pull from a consumer that does not exist finds no responder.)
        let next = format!("$JS.API.CONSUMER.MSG.NEXT.SEALPOST_EVENTS.{durable}");
        let pull = json!({ "batch": 1, "no_wait": true })
            .to_string()
            .into_bytes();
        assert!(no_responder(&a, &next, pull).await, "pulling {durable}");
        // Inspecting or deleting it answers an error too.
        let info = js_api(
            &a,
            &format!("CONSUMER.INFO.SEALPOST_EVENTS.{durable}"),
            json!({}),
        )
        .await;
        assert!(is_api_error(&info), "info of {durable}: {info:?}");
        let del = js_api(
            &a,
            &format!("CONSUMER.DELETE.SEALPOST_EVENTS.{durable}"),
            json!({}),
        )
        .await;
        assert!(is_api_error(&del), "delete of {durable}: {del:?}");
    }

    // A's consumers, durable or ephemeral, on B's subjects see nothing: A's stream holds only A.
    let a_stream = js_a.get_stream("SEALPOST_EVENTS").await.unwrap();
    for cfg in [
        audit.clone(),
        consumer::pull::Config {
            filter_subject: format!("sealpost.evt.{BETA}.>"),
            ..Default::default()
        },
        consumer::pull::Config {
            filter_subject: "sealpost.evt.>".into(),
            ..Default::default()
        },
    ] {
        let c = a_stream
            .create_consumer(cfg)
            .await
            .expect("acme's own consumer");
        let mut batch = c
            .fetch()
            .max_messages(100)
            .expires(Duration::from_millis(300))
            .messages()
            .await
            .unwrap();
        while let Some(m) = batch.next().await {
            let m = m.unwrap();
            assert!(
                m.subject.starts_with(&format!("sealpost.evt.{ACME}.")),
                "{}",
                m.subject
            );
        }
    }
    // A's `tb-audit` squatted nothing: B's is intact, and B still creates new names freely.
    let b_audit = b_stream
        .get_consumer::<consumer::pull::Config>("tb-audit")
        .await;
    let mut b_audit = b_audit.expect("beta's durable survives acme's attempts");
    assert_eq!(
        b_audit.info().await.unwrap().num_pending,
        3,
        "beta's three events"
    );
    a_stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("tb-nightly".into()),
            ..Default::default()
        })
        .await
        .expect("acme takes the name in its own account");
    b_stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("tb-nightly".into()),
            filter_subject: format!("sealpost.evt.{BETA}.>"),
            ..Default::default()
        })
        .await
        .expect("beta's name is still free in beta's account");

    // The service's JetStream API is not in A's account, beyond the rewind of A's own source.
    let own = TenantAccount::new(TenantId::new(ACME).unwrap());
    let api = TenantAccount::SERVICE_API;
    for subject in [
        format!("{api}.CONSUMER.RESET.SEALPOST_EVENTS.tenant_{BETA}"),
        format!("{api}.CONSUMER.INFO.SEALPOST_EVENTS.tenant_{BETA}"),
        format!("{api}.CONSUMER.CREATE.SEALPOST_EVENTS"),
        format!("{api}.CONSUMER.DELETE.SEALPOST_EVENTS.delivery"),
        format!("{api}.STREAM.INFO.SEALPOST_EVENTS"),
        format!("{api}.DIRECT.GET.SEALPOST_EVENTS"),
    ] {
        assert!(
            no_responder(&a, &subject, b"{}".to_vec()).await,
            "{subject}"
        );
    }
    let rewind = a
        .request(
            format!(
                "{api}.CONSUMER.RESET.SEALPOST_EVENTS.{}",
                own.source_durable()
            ),
            "".into(),
        )
        .await
        .expect("acme may reset its own source consumer (the control)");
    assert!(!String::from_utf8_lossy(&rewind.payload).contains("\"error\""));

    // Streams A builds to source B's events, through B's consumer or an ephemeral one of its
    // own, stay empty.
    for (name, source) in [
        (
            "STEAL_DURABLE",
            json!({
                "name": "SEALPOST_EVENTS",
                "consumer": { "name": format!("tenant_{BETA}"), "deliver_subject": format!("sealpost.deliver.{BETA}.events") },
                "external": { "api": api, "deliver": "" },
            }),
        ),
        (
            "STEAL_EPHEMERAL",
            json!({
                "name": "SEALPOST_EVENTS",
                "filter_subject": format!("sealpost.evt.{BETA}.>"),
                "external": { "api": api, "deliver": "sealpost.deliver.steal" },
            }),
        ),
    ] {
        let r = js_api(
            &a,
            &format!("STREAM.CREATE.{name}"),
            json!({ "name": name, "storage": "memory", "sources": [source] }),
        )
        .await;
        assert!(
            !is_api_error(&r),
            "acme may define {name} in its own account: {r:?}"
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for name in ["STEAL_DURABLE", "STEAL_EPHEMERAL"] {
        let mut s = js_a.get_stream(name).await.unwrap();
        assert_eq!(
            s.info().await.unwrap().state.messages,
            0,
            "{name} stays empty"
        );
    }

    // B's history holds only B's messages, untouched.
    let raw = store_on(&env.svc)
        .direct_get_all(&format!("sealpost.evt.{BETA}.>"))
        .await
        .unwrap();
    assert_eq!(raw.len(), 3);
}

/// Compares replay lines on everything but `time` (the instant each stream stored the event).
fn without_time(lines: &[Value]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| {
            let mut l = l.clone();
            l.as_object_mut().expect("an object").remove("time");
            l
        })
        .collect()
}

#[tokio::test]
async fn a_tenants_replay_in_its_own_account_equals_the_services_view_of_its_history() {
    let env = Accounts::start().await;
    let ex = env.executor();
    lifecycle(&ex, ACME, "a1", vec![ack()]).await;
    lifecycle(&ex, BETA, "b1", vec![ack()]).await;
    lifecycle(
        &ex,
        ACME,
        "a2",
        vec![sealpost_domain::MessageCommand::Cancel {
            at: crate::support::now(),
        }],
    )
    .await;

    let service = env.replay(None, &["--tenant", ACME]).await;
    assert!(service.ok, "{}", service.stderr);
    assert_eq!(service.lines.len(), 4);
    let own = env
        .replay(Some(&env.acme), &["--tenant", ACME, "--verify"])
        .await;
    assert!(
        own.ok,
        "acme replays and verifies its own events: {}",
        own.stderr
    );
    assert!(
        own.stderr
            .contains("replay verified OK: 4 events of 2 messages"),
        "{}",
        own.stderr
    );
    assert_eq!(
        without_time(&own.lines),
        without_time(&service.lines),
        "event for event"
    );

    // The tenant's stream acknowledges what it stored (its flow-control replies cross back
    // through its imports), so the source consumer holds nothing pending.
    let source = jetstream::new(env.svc.clone())
        .get_stream("SEALPOST_EVENTS")
        .await
        .unwrap()
        .get_consumer::<consumer::push::Config>(&format!("tenant_{ACME}"))
        .await
        .expect("provision created acme's source consumer");
    let last = service
        .lines
        .iter()
        .filter_map(|l| l["stream_seq"].as_u64())
        .max();
    sealpost_testkit::eventually(Duration::from_secs(20), "the source acknowledged", || {
        let mut c = source.clone();
        async move {
            let info = c.info().await.ok()?.clone();
            (info.num_ack_pending == 0 && Some(info.ack_floor.stream_sequence) == last)
                .then_some(())
        }
    })
    .await
    .expect("acme's stream acknowledged its last event");

    // Later events reach the tenant's existing stream before the next replay reads it.
    lifecycle(&ex, ACME, "a3", vec![ack()]).await;
    lifecycle(&ex, BETA, "b2", vec![]).await;
    let service = env.replay(None, &["--tenant", ACME]).await;
    let own = env
        .replay(Some(&env.acme), &["--tenant", ACME, "--verify"])
        .await;
    assert!(own.ok, "{}", own.stderr);
    assert_eq!(own.lines.len(), 6);
    assert_eq!(without_time(&own.lines), without_time(&service.lines));

    // A deleted stream is rebuilt from the first event, not from where the last one stopped.
    let a = env.connect(&env.acme).await;
    jetstream::new(a.clone())
        .delete_stream("SEALPOST_EVENTS")
        .await
        .expect("acme may delete its own stream");
    let rebuilt = env
        .replay(Some(&env.acme), &["--tenant", ACME, "--verify"])
        .await;
    assert!(rebuilt.ok, "{}", rebuilt.stderr);
    assert_eq!(without_time(&rebuilt.lines), without_time(&service.lines));

    // A's credentials reach no other tenant's history, and no replay of every tenant.
    let other = env.replay(Some(&env.acme), &["--tenant", BETA]).await;
    assert!(!other.ok, "acme's credentials cannot replay beta");
    assert!(other.lines.is_empty());
    assert!(
        other.stderr.contains("not tenant_beta-co"),
        "{}",
        other.stderr
    );
    let all = env.replay(Some(&env.acme), &[]).await;
    assert!(
        all.lines.iter().all(|l| l["tenant"] == ACME),
        "only acme's own"
    );
}

/// The README's migration from the single-account deployment, on one server: the old store's
/// `$G` account directory becomes the `SEALPOST` account's, the server restarts with the
/// generated accounts, `sealpost provision` runs, and every event is still there, for the
/// service and for each tenant's replay.
#[tokio::test]
async fn a_single_account_store_moves_into_the_service_account_with_every_event() {
    // The old deployment: no accounts, the streams in the default account.
    let crate::support::Env {
        server: mut old,
        client: old_client,
    } = crate::support::Env::start().await;
    let ex = CommandExecutor::new(
        store_on(&old_client),
        sealpost_domain::RetryPolicy::default(),
    );
    lifecycle(&ex, ACME, "a1", vec![ack()]).await;
    lifecycle(&ex, BETA, "b1", vec![ack()]).await;
    lifecycle(&ex, ACME, "a2", vec![]).await;
    let before = replay(&old.url(), None, &["--verify"]).await;
    assert!(before.ok, "{}", before.stderr);
    assert_eq!(before.lines.len(), 5);
    drop(old_client);
    old.kill();

    // The new server, with the generated accounts, gets the old store before it is provisioned.
    let service = nkeys::KeyPair::new_user();
    let acme_kp = nkeys::KeyPair::new_user();
    let mut a = tenant_config(ACME);
    a.nats_nkey = Some(acme_kp.public_key());
    let (_dir, mut server, cfg) =
        crate::support::unprovisioned_accounts_server(&[a, tenant_config(BETA)], &service).await;
    server.kill();
    let jetstream = |s: &sealpost_testkit::NatsServer| s.store_dir().join("js").join("jetstream");
    let target = jetstream(&server).join(sealpost_eventstore::names::SERVICE_ACCOUNT);
    if target.exists() {
        std::fs::remove_dir_all(&target).unwrap();
    }
    std::fs::rename(jetstream(&old).join("$G"), &target).expect("move the account directory");
    server.restart().await.unwrap();
    sealpost::app::provision(
        &cfg,
        &sealpost_eventstore::provision::embedded_definitions(),
    )
    .await
    .expect("provision over the moved streams");

    let seed = cfg.nats.nkey_seed.expose().to_owned();
    let after = replay(&server.url(), Some(&seed), &["--verify"]).await;
    assert!(after.ok, "{}", after.stderr);
    assert_eq!(after.lines, before.lines, "every event, unchanged");
    let own = replay(
        &server.url(),
        Some(&acme_kp.seed().unwrap()),
        &["--tenant", ACME, "--verify"],
    )
    .await;
    assert!(own.ok, "{}", own.stderr);
    let acme_before: Vec<Value> = before
        .lines
        .iter()
        .filter(|l| l["tenant"] == ACME)
        .cloned()
        .collect();
    assert_eq!(without_time(&own.lines), without_time(&acme_before));
}

#[tokio::test]
async fn a_tenant_reaches_only_its_own_key_directory_and_key_change_alerts() {
    let service = nkeys::KeyPair::new_user();
    let (acme, beta) = (nkeys::KeyPair::new_user(), nkeys::KeyPair::new_user());
    let with_directory = |id: &str, kp: &nkeys::KeyPair, vrf: u8| {
        let mut t = tenant_config(id);
        t.nats_nkey = Some(kp.public_key());
        let (signer, _) =
            sealpost_tlog::LogSigner::generate(&format!("sealpost.test/keys/{id}")).unwrap();
        t.keys = Some(sealpost_gateway::TenantKeysConfig {
            vrf_seed: hex::encode([vrf; 32]).into(),
            checkpoint_key: signer.secret().into(),
            enrollment_key: None,
            retire_after_secs: 60,
            label_key: None,
            webhook_url: None,
            webhook_secret: None,
        });
        t
    };
    let tenants = [
        with_directory(ACME, &acme, 1),
        with_directory(BETA, &beta, 2),
    ];
    let (_dir, server, _svc, mut cfg) =
        crate::support::server_from_nats_config(&tenants, &service).await;
    let db = sealpost_testkit::PgDatabase::create().await.unwrap();
    cfg.postgres.url = db.url.clone().into();
    cfg.keys.epoch_interval = Duration::from_millis(100);
    let _running = sealpost::App::start(cfg, &[sealpost::Role::Keys], std::future::pending())
        .await
        .expect("the keys role starts with the service's credentials");
    let connect = |kp: &nkeys::KeyPair| {
        let seed = kp.seed().unwrap();
        let url = server.url();
        async move {
            async_nats::ConnectOptions::with_nkey(seed)
                .request_timeout(Some(Duration::from_secs(2)))
                .connect(url)
                .await
                .unwrap()
        }
    };
    let (a, b) = (connect(&acme).await, connect(&beta).await);
    // The same label in both directories (labels are keyed hashes; two tenants may share one).
    let label = crate::keys_role::label_of("+447700900123");
    let publish = |key_id: &str| bytes(&crate::keys_role::publish_body(&label, key_id, 1));

    // The control: each tenant reaches its own directory.
    for (client, tenant) in [(&a, ACME), (&b, BETA)] {
        let r = client
            .request(
                format!("sealpost.cmd.{tenant}.keys.publish"),
                publish("k1").into(),
            )
            .await
            .expect("the tenant's own directory answers");
        assert_eq!(
            serde_json::from_slice::<Value>(&r.payload).unwrap()["events"],
            json!(["key_published"])
        );
    }
    // A cannot name any of B's key operations: they do not exist in A's account.
    for op in sealpost_eventstore::names::KeysOp::ALL {
        let subject =
            sealpost_eventstore::names::KeysSubject::new(TenantId::new(BETA).unwrap(), *op)
                .to_string();
        let body = bytes(&json!({"recipient_label": label}));
        assert!(no_responder(&a, &subject, body).await, "{subject}");
    }
    // B's key-change alert reaches B and nothing of A's account, which listens on everything.
    let mut everything = a.subscribe(">").await.unwrap();
    let mut beta_alerts = b
        .subscribe(format!("sealpost.keys.{BETA}.>"))
        .await
        .unwrap();
    sealpost_eventstore::server_round_trip(&a).await.unwrap();
    sealpost_eventstore::server_round_trip(&b).await.unwrap();
    let r = b
        .request(
            format!("sealpost.cmd.{BETA}.keys.publish"),
            publish("k2").into(),
        )
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&r.payload).unwrap()["events"],
        json!(["key_rotated"])
    );
    let alert = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let m = beta_alerts.next().await.unwrap();
            let v: Value = serde_json::from_slice(&m.payload).unwrap();
            if v["change"] == "key_rotated" {
                return v;
            }
        }
    })
    .await
    .expect("beta hears of its rotation");
    assert_eq!(alert["tenant"], BETA);
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(50), everything.next()).await
    {
        assert!(
            !m.subject.as_str().contains(BETA)
                && !String::from_utf8_lossy(&m.payload).contains(BETA),
            "acme saw {}",
            m.subject
        );
    }
}
