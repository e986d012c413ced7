//! The `keys` role as a platform team and an auditor use it: the key API on NATS, epochs
//! published by the role's publisher, answers verified the way a client verifies them, key-change
//! alerts, refusals that store nothing, and `kill -9` of the publishing process.

// Test fixtures: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use akd::{HistoryProof, LookupProof};
use async_nats::service::NATS_SERVICE_ERROR;
use futures::StreamExt;
use sealpost::Role;
use sealpost_domain::{Secret, TenantId};
use sealpost_eventstore::names::Stream;
use sealpost_gateway::{TenantConfig, TenantKeysConfig};
use sealpost_keyformat::{LabelKey, RecipientLabel};
use sealpost_keys::publisher::{aggregate_id, akd_label, epoch_log_location, key_store};
use sealpost_keys::service::{InfoAnswer, ProvenAnswer};
use sealpost_keys::{
    verify_history, verify_lookup, ClientState, DirectoryEntry, EpochRecord, KeyStatus,
    PgAkdStorage, VrfSecret,
};
use sealpost_testkit::PgDatabase;
use sealpost_tlog::{CheckpointVerifier, LogSigner};
use serde_json::{json, Value};

use crate::support::{app_config, Env};

const TENANT: &str = "acme-corp";
const VRF: [u8; 32] = [7; 32];

pub(crate) fn label_of(number: &str) -> String {
    RecipientLabel::of(&LabelKey::new([9; 32]), TENANT, number)
        .unwrap()
        .to_hex()
}

fn tenant_with_directory(signer: &LogSigner, enrollment_key: Option<String>) -> TenantConfig {
    let mut t = crate::gateway::tenant_config(TENANT);
    t.keys = Some(TenantKeysConfig {
        vrf_seed: Secret::new(hex::encode(VRF)),
        checkpoint_key: Secret::new(signer.secret()),
        enrollment_key,
        retire_after_secs: 86_400,
        label_key: None,
        webhook_url: None,
        webhook_secret: None,
    });
    t
}

/// RFC 9162 proof hashes from their base64 wire form.
fn hashes<'a>(b64: impl Iterator<Item = &'a str>) -> Vec<sealpost_tlog::Hash> {
    use base64::Engine as _;
    b64.map(|h| {
        sealpost_tlog::Hash(
            base64::engine::general_purpose::STANDARD
                .decode(h)
                .unwrap()
                .try_into()
                .unwrap(),
        )
    })
    .collect()
}

/// A NATS request to the key API: `Ok(answer)` or `Err((code, message))`.
async fn ask(
    client: &async_nats::Client,
    tenant: &str,
    op: &str,
    body: Value,
) -> Result<Value, (String, String)> {
    let kind = match op {
        "publish" | "revoke" | "mark_bad" | "upload" | "claim" => "cmd",
        _ => "qry",
    };
    let reply = client
        .request(
            format!("sealpost.{kind}.{tenant}.keys.{op}"),
            body.to_string().into(),
        )
        .await
        .unwrap();
    let value: Value = serde_json::from_slice(&reply.payload).unwrap();
    match reply
        .headers
        .as_ref()
        .and_then(|h| h.get(NATS_SERVICE_ERROR))
    {
        Some(code) => {
            assert_eq!(
                value["error"]["code"],
                code.as_str(),
                "one code, both places"
            );
            Err((
                code.to_string(),
                value["error"]["message"].as_str().unwrap().to_owned(),
            ))
        }
        None => Ok(value),
    }
}

pub(crate) fn publish_body(label: &str, key_id: &str, key: u8) -> Value {
    json!({
        "recipient_label": label,
        "device_id": "phone",
        "key_id": key_id,
        "public_key": hex::encode([key; 32]),
        "expires_at": "2099-01-01T00:00:00Z",
    })
}

/// The client's side: the directory's public keys, and the last checkpoint it has seen.
struct Client {
    vrf: Vec<u8>,
    checkpoint_key: CheckpointVerifier,
    state: ClientState,
}

impl Client {
    async fn new(nats: &async_nats::Client) -> Client {
        let info: InfoAnswer =
            serde_json::from_value(ask(nats, TENANT, "info", json!({})).await.unwrap()).unwrap();
        assert_eq!(info.directory, TENANT);
        Client {
            vrf: hex::decode(info.vrf_public_key).unwrap(),
            checkpoint_key: CheckpointVerifier::new(&info.checkpoint_key).unwrap(),
            state: ClientState::default(),
        }
    }

    /// The consistency proof from the last checkpoint seen to `size`, from the API.
    async fn consistency(&self, nats: &async_nats::Client, size: u64) -> Vec<sealpost_tlog::Hash> {
        let from = self.state.last.as_ref().map_or(0, |c| c.size);
        if from == 0 || from == size {
            return vec![];
        }
        let v = ask(
            nats,
            TENANT,
            "consistency",
            json!({"from": from, "to": size}),
        )
        .await
        .unwrap();
        hashes(
            v["proof"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h.as_str().unwrap()),
        )
    }

    /// A verified lookup: the entry it proves, and the epoch.
    async fn lookup(&mut self, nats: &async_nats::Client, label: &str) -> (DirectoryEntry, u64) {
        let v = ask(nats, TENANT, "lookup", json!({"recipient_label": label}))
            .await
            .unwrap();
        let answer: ProvenAnswer<LookupProof> = serde_json::from_value(v).unwrap();
        let proven = answer.into_proven().unwrap();
        let size = self
            .checkpoint_key
            .open(proven.checkpoint.as_bytes())
            .unwrap()
            .size;
        let consistency = self.consistency(nats, size).await;
        let r = verify_lookup(
            &self.vrf,
            &self.checkpoint_key,
            TENANT,
            akd_label(label).unwrap(),
            &proven,
            &consistency,
            &mut self.state,
        )
        .unwrap();
        (DirectoryEntry::from_value(&r.value).unwrap(), r.epoch)
    }

    /// Waits until a verified lookup satisfies `done`.
    async fn lookup_until(
        &mut self,
        nats: &async_nats::Client,
        label: &str,
        done: impl Fn(&DirectoryEntry) -> bool,
    ) -> (DirectoryEntry, u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let found = ask(nats, TENANT, "lookup", json!({"recipient_label": label})).await;
            if found.is_ok() {
                let (entry, epoch) = self.lookup(nats, label).await;
                if done(&entry) {
                    return (entry, epoch);
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no epoch with the expected entry within 30 s (last answer {found:?})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn key_events(client: &async_nats::Client) -> u64 {
    let js = async_nats::jetstream::new(client.clone());
    let mut stream = js.get_stream(Stream::Keys.as_str()).await.unwrap();
    let info = stream.info().await.unwrap();
    info.state.messages
}

struct Running {
    env: Env,
    _db: PgDatabase,
    _s3: tempfile::TempDir,
    _app: sealpost::Running,
}

async fn start(signer: &LogSigner, enrollment_key: Option<String>) -> Running {
    start_tenant(tenant_with_directory(signer, enrollment_key)).await
}

/// The `keys` role on a fresh server and database, for `tenant` and a tenant without a
/// directory.
async fn start_tenant(tenant: TenantConfig) -> Running {
    let env = Env::start().await;
    let db = PgDatabase::create().await.unwrap();
    let s3 = tempfile::tempdir().unwrap();
    let mut cfg = app_config(
        &env.server.url(),
        s3.path(),
        vec![tenant, crate::gateway::tenant_config("other-corp")],
    );
    cfg.postgres.url = Secret::new(db.url.clone());
    cfg.keys.epoch_interval = Duration::from_millis(100);
    cfg.keys.lease_ttl = Duration::from_secs(2);
    let app = sealpost::App::start(cfg, &[Role::Keys], std::future::pending())
        .await
        .unwrap();
    Running {
        env,
        _db: db,
        _s3: s3,
        _app: app,
    }
}

#[tokio::test]
async fn publish_rotate_revoke_each_shows_in_a_verified_lookup_and_history_and_alerts_the_tenant() {
    let (signer, _) = LogSigner::generate("sealpost.test/keys/acme-corp").unwrap();
    let r = start(&signer, None).await;
    let nats = &r.env.client;
    let mut alerts = nats
        .subscribe("sealpost.keys.acme-corp.changed")
        .await
        .unwrap();
    sealpost_eventstore::server_round_trip(nats).await.unwrap();
    let mut client = Client::new(nats).await;
    let label = label_of("+447700900123");

    // Publish: one event; the answer carries the key's fingerprint and safety number.
    let a = ask(nats, TENANT, "publish", publish_body(&label, "k1", 1))
        .await
        .unwrap();
    assert_eq!(a["events"], json!(["key_published"]));
    assert_eq!(
        a["safety_number"].as_str().unwrap(),
        sealpost_keyformat::safety_number(&sealpost_keyformat::fingerprint(0x0020, &[1; 32]))
    );
    // A resend writes nothing and answers the same.
    let again = ask(nats, TENANT, "publish", publish_body(&label, "k1", 1))
        .await
        .unwrap();
    assert_eq!(again["events"], json!([]));
    let (entry, epoch1) = client.lookup_until(nats, &label, |_| true).await;
    assert_eq!(entry.keys.len(), 1);
    assert_eq!(
        (
            entry.keys[0].key_id.as_str(),
            entry.keys[0].status,
            entry.keys[0].public_key.clone()
        ),
        ("k1", KeyStatus::Active, hex::encode([1u8; 32]))
    );

    // Rotate: a new key for the same device; the old one retires and is still listed.
    let a = ask(nats, TENANT, "publish", publish_body(&label, "k2", 2))
        .await
        .unwrap();
    assert_eq!(a["events"], json!(["key_rotated"]));
    let (entry, epoch2) = client
        .lookup_until(nats, &label, |e| e.keys.len() == 2)
        .await;
    assert!(epoch2 > epoch1);
    let status: BTreeMap<&str, KeyStatus> = entry
        .keys
        .iter()
        .map(|k| (k.key_id.as_str(), k.status))
        .collect();
    assert_eq!(
        status,
        BTreeMap::from([("k1", KeyStatus::Retiring), ("k2", KeyStatus::Active)])
    );
    let sealable: Vec<&str> = entry
        .sealable(time::OffsetDateTime::now_utc())
        .map(|k| k.key_id.as_str())
        .collect();
    assert_eq!(sealable, ["k2"]);

    // History: both values, newest first, proven against the signed log.
    let v = ask(nats, TENANT, "history", json!({"recipient_label": label}))
        .await
        .unwrap();
    let answer: ProvenAnswer<HistoryProof> = serde_json::from_value(v).unwrap();
    let history = verify_history(
        &client.vrf,
        &client.checkpoint_key,
        TENANT,
        akd_label(&label).unwrap(),
        &answer.into_proven().unwrap(),
        &[],
        &mut ClientState::default(),
    )
    .unwrap();
    let versions: Vec<Vec<String>> = history
        .iter()
        .map(|h| {
            DirectoryEntry::from_value(&h.value)
                .unwrap()
                .keys
                .iter()
                .map(|k| k.key_id.clone())
                .collect()
        })
        .collect();
    assert_eq!(versions, [vec!["k1", "k2"], vec!["k1"]]);

    // Revoke the retiring key: it leaves the entry.
    let a = ask(
        nats,
        TENANT,
        "revoke",
        json!({"recipient_label": label, "key_id": "k1", "reason": "compromised"}),
    )
    .await
    .unwrap();
    assert_eq!(a["events"], json!(["key_revoked"]));
    let (entry, _) = client
        .lookup_until(nats, &label, |e| e.keys.len() == 1)
        .await;
    assert_eq!(entry.keys[0].key_id, "k2");

    // The tenant heard of each change, with the epoch that proves it.
    let mut heard = vec![];
    while heard.len() < 3 {
        let m = tokio::time::timeout(Duration::from_secs(10), alerts.next())
            .await
            .expect("an alert per change")
            .unwrap();
        let a: Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(a["recipient_label"], label.as_str());
        heard.push((
            a["change"].as_str().unwrap().to_owned(),
            a["key_id"].as_str().unwrap().to_owned(),
            a["epoch"].as_u64().unwrap(),
        ));
    }
    assert_eq!(heard[0], ("key_published".into(), "k1".into(), epoch1));
    assert_eq!(heard[1], ("key_rotated".into(), "k2".into(), epoch2));
    assert_eq!(heard[2].0, "key_revoked");

    // Checkpoints: the latest and an older one, both signed by the directory's key, and the
    // consistency proof between them verifies.
    let latest = ask(nats, TENANT, "checkpoint", json!({})).await.unwrap();
    let latest = client
        .checkpoint_key
        .open(latest["checkpoint"].as_str().unwrap().as_bytes())
        .unwrap();
    let first = ask(nats, TENANT, "checkpoint", json!({"size": 1}))
        .await
        .unwrap();
    let first = client
        .checkpoint_key
        .open(first["checkpoint"].as_str().unwrap().as_bytes())
        .unwrap();
    assert_eq!(first.size, 1);
    let proof = ask(
        nats,
        TENANT,
        "consistency",
        json!({"from": 1, "to": latest.size}),
    )
    .await
    .unwrap();
    let proof = hashes(
        proof["proof"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_str().unwrap()),
    );
    sealpost_tlog::verify_consistency(&proof, 1, first.root, latest.size, latest.root).unwrap();
    // akd's append-only proof between two epochs, from the API, verifies.
    let audit = ask(nats, TENANT, "audit", json!({"from": 1, "to": 2}))
        .await
        .unwrap();
    let audit: sealpost_keys::service::AuditAnswer = serde_json::from_value(audit).unwrap();
    // The roots it proves are the logged ones (read straight from the stream here).
    let records = epoch_records(nats).await;
    let roots: Vec<[u8; 32]> = records[..2].iter().map(|r| r.root).collect();
    let carried: Vec<[u8; 32]> = audit
        .entries
        .iter()
        .map(|e| EpochRecord::decode(e.as_bytes()).unwrap().root)
        .collect();
    assert_eq!(carried, roots);
    audit.verify(&client.checkpoint_key, TENANT).await.unwrap();
    akd::auditor::audit_verify::<sealpost_keys::Config>(roots, audit.proof)
        .await
        .unwrap();

    // The publisher archived each epoch for auditors: its checkpoint, and the append-only
    // proof from the epoch before, both verifying on their own.
    let store = r._app.blob_store().unwrap();
    let tenant = TenantId::new(TENANT).unwrap();
    for epoch in 1..=2u64 {
        let (checkpoint, audit) = sealpost_keys::publisher::archive_names(&tenant, epoch);
        let text = sealpost_testkit::eventually(Duration::from_secs(10), "the archive", || async {
            store.get_record(&checkpoint).await.ok()
        })
        .await
        .unwrap();
        assert_eq!(client.checkpoint_key.open(&text).unwrap().size, epoch);
        if let Some(audit) = audit {
            let a: sealpost_keys::service::AuditAnswer =
                serde_json::from_slice(&store.get_record(&audit).await.unwrap()).unwrap();
            assert_eq!((a.from, a.to), (epoch - 1, epoch));
            a.verify(&client.checkpoint_key, TENANT).await.unwrap();
        }
    }
    assert!(
        !store.object_lock_enabled().await.unwrap(),
        "the embedded endpoint has no Object Lock: archived unlocked"
    );
}

#[tokio::test]
async fn every_bad_input_has_its_own_code_and_stores_nothing() {
    let (signer, _) = LogSigner::generate("sealpost.test/keys/acme-corp").unwrap();
    let mdm = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
    let r = start(&signer, Some(hex::encode(mdm.verifying_key().as_bytes()))).await;
    let nats = &r.env.client;
    let label = label_of("+447700900123");
    let before = key_events(nats).await;
    let statement = |device: &str, key: u8, signer: &ed25519_dalek::SigningKey| {
        let s = sealpost_keyformat::EnrollmentStatement {
            tenant: TENANT.into(),
            device_id: device.into(),
            attestation_sha256: [3; 32],
            key_fingerprint: sealpost_keyformat::fingerprint(0x0020, &[key; 32]),
        };
        use base64::Engine as _;
        json!({
            "attestation_sha256": hex::encode([3u8; 32]),
            "signature": base64::engine::general_purpose::STANDARD.encode(s.sign(signer).unwrap()),
        })
    };
    let with = |f: &dyn Fn(&mut Value)| {
        let mut b = publish_body(&label, "k1", 1);
        b["enrollment"] = statement("phone", 1, &mdm);
        f(&mut b);
        b
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "a phone number as the label",
            with(&|b| b["recipient_label"] = json!("+447700900123")),
            "invalid_request",
        ),
        (
            "an unknown field",
            with(&|b| b["colour"] = json!("red")),
            "invalid_request",
        ),
        (
            "a missing field",
            with(&|b| {
                b.as_object_mut().unwrap().remove("key_id");
            }),
            "invalid_request",
        ),
        (
            "a short key",
            with(&|b| b["public_key"] = json!(hex::encode([1u8; 31]))),
            "bad_public_key",
        ),
        (
            "a P-256 key",
            with(&|b| b["kem_id"] = json!(0x0010)),
            "unsupported_kem",
        ),
        (
            "an expired key",
            with(&|b| b["expires_at"] = json!("2001-01-01T00:00:00Z")),
            "already_expired",
        ),
        (
            "no enrollment statement",
            with(&|b| {
                b.as_object_mut().unwrap().remove("enrollment");
            }),
            "enrollment_required",
        ),
        (
            "a statement signed by another key",
            with(&|b| {
                b["enrollment"] =
                    statement("phone", 1, &ed25519_dalek::SigningKey::from_bytes(&[6; 32]))
            }),
            "enrollment_invalid",
        ),
        (
            "a statement for another key",
            with(&|b| b["enrollment"] = statement("phone", 2, &mdm)),
            "enrollment_invalid",
        ),
        (
            "a device id with a space",
            with(&|b| b["device_id"] = json!("my phone")),
            "invalid_request",
        ),
    ];
    for (what, body, code) in &cases {
        let e = ask(nats, TENANT, "publish", body.clone())
            .await
            .unwrap_err();
        assert_eq!(e.0, *code, "{what}: {}", e.1);
        assert!(
            !e.1.contains("447700900123"),
            "{what}: the message echoes no number"
        );
    }
    let e = ask(
        nats,
        TENANT,
        "revoke",
        json!({"recipient_label": label, "key_id": "k9", "reason": "compromised"}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.0, "unknown_key");
    let e = ask(
        nats,
        TENANT,
        "revoke",
        json!({"recipient_label": label, "key_id": "k9", "reason": "bored"}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.0, "invalid_request");
    assert_eq!(key_events(nats).await, before, "no refusal stored an event");

    // The enrolled key itself is accepted, and the directory says it is enrolled.
    ask(nats, TENANT, "publish", with(&|_| {})).await.unwrap();
    let mut client = Client::new(nats).await;
    let (entry, _) = client.lookup_until(nats, &label, |_| true).await;
    assert!(entry.keys[0].enrolled);
    // The same key id with another key, once published.
    let e = ask(
        nats,
        TENANT,
        "publish",
        with(&|b| {
            b["public_key"] = json!(hex::encode([2u8; 32]));
            b["enrollment"] = statement("phone", 2, &mdm);
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(e.0, "key_id_reused");

    // Lookups: a label nobody published, and a tenant without a directory.
    let e = ask(
        nats,
        TENANT,
        "lookup",
        json!({"recipient_label": label_of("+447700900999")}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.0, "not_found", "{}", e.1);
    let e = ask(
        nats,
        "other-corp",
        "lookup",
        json!({"recipient_label": label}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.0, "not_found");
    let e = ask(nats, TENANT, "consistency", json!({"from": 5, "to": 1}))
        .await
        .unwrap_err();
    assert_eq!(e.0, "invalid_request");
}

/// The leader's pid, from its lease (`<pid>-<uuid>`).
async fn leader_pid(client: &async_nats::Client) -> Option<u32> {
    let js = async_nats::jetstream::new(client.clone());
    let kv = js
        .get_key_value(sealpost_keys::publisher::LEASE_BUCKET)
        .await
        .ok()?;
    let holder = kv.get(TENANT).await.ok()??;
    std::str::from_utf8(&holder)
        .ok()?
        .split('-')
        .next()?
        .parse()
        .ok()
}

async fn epoch_records(client: &async_nats::Client) -> Vec<EpochRecord> {
    let js = async_nats::jetstream::new(client.clone());
    let log = sealpost_tlog::JetStreamLog::open_with_entries(
        js,
        epoch_log_location(&TenantId::new(TENANT).unwrap()),
        &mut |_, _| {},
    )
    .await
    .unwrap();
    (0..log.size())
        .map(|i| EpochRecord::decode(log.entry(i).unwrap()).unwrap())
        .collect()
}

#[tokio::test]
async fn kill_9_of_the_publishing_keys_process_during_1000_publishes_loses_and_repeats_nothing() {
    let env = Env::start().await;
    let db = PgDatabase::create().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (signer, _) = LogSigner::generate("sealpost.test/keys/acme-corp").unwrap();
    // The config file holds the tenant's directory secrets (written by hand: `Config` prints
    // secrets redacted).
    let config = dir.path().join("sealpost.toml");
    std::fs::write(
        &config,
        format!(
            "[[tenants]]\nid = \"{TENANT}\"\n[tenants.keys]\nvrf_seed = \"{}\"\n\
             checkpoint_key = \"{}\"\n",
            hex::encode(VRF),
            signer.secret()
        ),
    )
    .unwrap();
    let s3_dir = dir.path().join("s3");
    let spawn = || {
        let mut p = crate::support::ServeProcess::new("keys", config.clone(), env.server.url())
            .env("DATABASE_URL", &db.url)
            .env("SEALPOST_POSTGRES_URL", "")
            .env("SEALPOST_KEYS_EPOCH_INTERVAL_MS", "50")
            .env("SEALPOST_KEYS_EPOCH_MAX_CHANGES", "40")
            .env("SEALPOST_KEYS_LEASE_TTL_MS", "1500")
            .env("SEALPOST_S3_EMBEDDED_DIR", s3_dir.to_str().unwrap())
            .env("SEALPOST_GATEWAY_HTTP_LISTEN", "127.0.0.1:0");
        p.spawn();
        p
    };
    let mut procs = [spawn(), spawn()];

    // 200 recipients, 5 keys each (a publish, then 4 rotations): 1,000 publishes, retried by the
    // client while a process is down, as an API client would.
    let labels: Vec<String> = (0..200)
        .map(|i| label_of(&format!("+4477009{i:05}")))
        .collect();
    let writer = {
        let nats = env.client.clone();
        let labels = labels.clone();
        tokio::spawn(async move {
            let mut answered = 0usize;
            for round in 1..=5u8 {
                let results = futures::future::join_all(labels.iter().map(|l| {
                    let nats = nats.clone();
                    let body = publish_body(l, &format!("k{round}"), round);
                    async move {
                        for _ in 0..200 {
                            let sent = tokio::time::timeout(
                                Duration::from_secs(5),
                                nats.request(
                                    "sealpost.cmd.acme-corp.keys.publish",
                                    body.to_string().into(),
                                ),
                            )
                            .await;
                            if let Ok(Ok(m)) = sent {
                                let err =
                                    m.headers.as_ref().and_then(|h| h.get(NATS_SERVICE_ERROR));
                                match err {
                                    None => return true,
                                    Some(c) if c.as_str() == "unavailable" => {}
                                    Some(c) => panic!("publish refused: {c}"),
                                }
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        false
                    }
                }))
                .await;
                answered += results.iter().filter(|ok| **ok).count();
                // Spread the work so that the leader dies several times while it lasts.
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
            answered
        })
    };

    // kill -9 whichever process leads, each time after it published at least 2 epochs of its
    // own, while publishes are still coming; then start it again.
    let mut kills = 0;
    let mut seen = 0usize;
    while !writer.is_finished() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let epochs = epoch_records(&env.client).await.len();
        let Some(pid) = leader_pid(&env.client).await else {
            continue;
        };
        if epochs < seen + 2 {
            continue;
        }
        let Some(p) = procs.iter_mut().find(|p| p.pid() == Some(pid)) else {
            continue;
        };
        p.kill9().await;
        p.spawn();
        kills += 1;
        seen = epochs;
    }
    let answered = writer.await.unwrap();
    assert_eq!(answered, 1000, "every publish was answered");
    assert!(kills >= 3, "the leader was killed only {kills} times");

    // Every key event is in exactly one epoch: the epochs are 1..n, their ranges consecutive,
    // and the last one ends at the last key event.
    let store = key_store(env.client.clone());
    let tenant = TenantId::new(TENANT).unwrap();
    let mut last_event = 0;
    let mut events = 0;
    for l in &labels {
        let raw = store.load_raw(&aggregate_id(&tenant, l)).await.unwrap();
        let types: Vec<&str> = raw.iter().map(|r| r.event_type()).collect();
        assert_eq!(
            types,
            [
                "key_published",
                "key_rotated",
                "key_rotated",
                "key_rotated",
                "key_rotated"
            ],
            "each publish stored once"
        );
        events += raw.len();
        last_event = last_event.max(raw.last().unwrap().stream_seq);
    }
    assert_eq!(events, 1000);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let records = loop {
        let r = epoch_records(&env.client).await;
        if r.last().is_some_and(|l| l.through == last_event) {
            break r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the last epoch never came"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.epoch, i as u64 + 1, "epochs are consecutive, none twice");
        if i > 0 {
            assert!(r.through > records[i - 1].through, "ranges are consecutive");
        }
    }
    eprintln!(
        "{kills} kills of the leader; {} epochs for 1,000 publishes; {} processes started",
        records.len(),
        procs.iter().map(|p| p.spawned).sum::<usize>()
    );

    // A rebuild from the stream alone gives the same roots.
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let rebuilt = sealpost_keys::publisher::rebuild(
        &env.client,
        &tenant,
        VrfSecret::new(VRF),
        PgAkdStorage::new(pool, "acme-corp-rebuilt"),
        &mut |_, _| {},
    )
    .await
    .unwrap();
    assert_eq!(rebuilt.epochs.len(), records.len());
    assert!(rebuilt
        .epochs
        .iter()
        .all(|(_, logged, again)| logged == again));

    // What the directory serves is each recipient's latest key: verified, for every recipient.
    let mut client = Client::new(&env.client).await;
    for l in &labels {
        let (entry, _) = client.lookup(&env.client, l).await;
        let active: Vec<&str> = entry
            .sealable(time::OffsetDateTime::now_utc())
            .map(|k| k.key_id.as_str())
            .collect();
        assert_eq!(active, ["k5"]);
        assert_eq!(entry.keys.len(), 5, "k1..k4 retiring, k5 active");
    }
    for p in &mut procs {
        p.kill9().await;
    }
}

#[tokio::test]
async fn a_send_sealed_to_a_revoked_or_unknown_key_is_key_stale_and_stores_nothing() {
    let env = Env::start().await;
    let db = PgDatabase::create().await.unwrap();
    let s3 = tempfile::tempdir().unwrap();
    let (signer, _) = LogSigner::generate("sealpost.test/keys/acme-corp").unwrap();
    let mut tenant = tenant_with_directory(&signer, None);
    if let Some(k) = tenant.keys.as_mut() {
        k.label_key = Some(Secret::new(hex::encode([9u8; 32])));
    }
    let mut cfg = app_config(&env.server.url(), s3.path(), vec![tenant]);
    cfg.postgres.url = Secret::new(db.url.clone());
    cfg.keys.epoch_interval = Duration::from_millis(100);
    let app = sealpost::App::start(cfg, &[Role::Gateway, Role::Keys], std::future::pending())
        .await
        .unwrap();
    let nats = &env.client;
    let blob = crate::support::upload(app.blob_store().unwrap(), TENANT, b"sealed bytes").await;
    let events = || async {
        let js = async_nats::jetstream::new(nats.clone());
        let mut s = js.get_stream("SEALPOST_EVENTS").await.unwrap();
        s.info().await.unwrap().state.messages
    };
    let http = reqwest::Client::new();
    let addr = app.http_addr().unwrap();
    let mut n = 0;
    let mut send = |number: &'static str, key_id: &'static str| {
        n += 1;
        let mut body = crate::gateway::send_body(TENANT, &format!("stale-{n}"), &blob);
        body["recipient"] = json!(number);
        body["encryption_metadata"]["key_id"] = json!(key_id);
        let http = http.clone();
        async move {
            let res = http
                .post(format!("http://{addr}/v1/messages"))
                .bearer_auth("acme-corp-key")
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            let v: Value = res.json().await.unwrap();
            (status, v["error"]["code"].as_str().unwrap_or("").to_owned())
        }
    };
    const ALICE: &str = "+447700900123";
    const BOB: &str = "+447700900456";

    // No key in the tenant's directory yet: sends go through as before the directory.
    assert_eq!(send(ALICE, "k1").await, (202, String::new()));

    let alice = label_of(ALICE);
    ask(nats, TENANT, "publish", publish_body(&alice, "k1", 1))
        .await
        .unwrap();
    assert_eq!(send(ALICE, "k1").await, (202, String::new()));
    let before = events().await;
    for (who, key, why) in [
        (ALICE, "k9", "a key id the recipient never had"),
        (BOB, "k1", "another recipient's key"),
    ] {
        let (status, code) = send(who, key).await;
        assert_eq!((status, code.as_str()), (409, "key_stale"), "{why}");
    }
    assert_eq!(events().await, before, "a key_stale send stores nothing");

    // Rotated out, the old key still passes (it is retiring); revoked, it is stale.
    ask(nats, TENANT, "publish", publish_body(&alice, "k2", 2))
        .await
        .unwrap();
    assert_eq!(send(ALICE, "k1").await, (202, String::new()));
    ask(
        nats,
        TENANT,
        "revoke",
        json!({"recipient_label": alice, "key_id": "k1", "reason": "compromised"}),
    )
    .await
    .unwrap();
    assert_eq!(send(ALICE, "k1").await.1, "key_stale");
    assert_eq!(send(ALICE, "k2").await, (202, String::new()));

    // The key API over HTTP: the same operations, for the tenant of the API key only.
    let post = |op: &'static str, key: Option<&'static str>, body: Value| {
        let http = http.clone();
        async move {
            let mut req = http.post(format!("http://{addr}/v1/keys/{op}")).json(&body);
            if let Some(k) = key {
                req = req.bearer_auth(k);
            }
            let res = req.send().await.unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap())
        }
    };
    let bob = label_of(BOB);
    let (status, v) = post(
        "publish",
        Some("acme-corp-key"),
        publish_body(&bob, "b1", 7),
    )
    .await;
    assert_eq!(
        (status, v["events"].clone()),
        (200, json!(["key_published"])),
        "{v}"
    );
    let (status, v) = post(
        "publish",
        Some("acme-corp-key"),
        publish_body(&bob, "b1", 8),
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("key_id_reused"))
    );
    let (status, v) = post("lookup", None, json!({"recipient_label": bob})).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, _) = post("teleport", Some("acme-corp-key"), json!({})).await;
    assert_eq!(status, 404);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, v) = post(
            "lookup",
            Some("acme-corp-key"),
            json!({"recipient_label": bob}),
        )
        .await;
        if status == 200 {
            let answer: ProvenAnswer<LookupProof> = serde_json::from_value(v).unwrap();
            let mut client = Client::new(nats).await;
            let r = verify_lookup(
                &client.vrf,
                &client.checkpoint_key,
                TENANT,
                akd_label(&bob).unwrap(),
                &answer.into_proven().unwrap(),
                &[],
                &mut client.state,
            )
            .unwrap();
            assert_eq!(
                DirectoryEntry::from_value(&r.value).unwrap().keys[0].key_id,
                "b1"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status} {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(send(BOB, "b1").await, (202, String::new()));

    // The checks count in the key directory metric the alert watches.
    let metrics = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for result in ["ok", "not_found", "stale"] {
        assert!(
            metrics.contains(&format!(
                "sealpost_key_directory_lookups_total{{tenant=\"{TENANT}\",result=\"{result}\"}}"
            )),
            "{result} is counted"
        );
    }
}

/// Runs the `sealpost` binary with `args` against `nats_url`: (exit code, stdout, stderr).
async fn cli(nats_url: &str, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(crate::support::sealpost_binary())
        .args(args)
        .env("SEALPOST_NATS_URL", nats_url)
        .env_remove("SEALPOST_CONFIG")
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits until the directory's log has `epochs` epochs.
async fn epochs_reach(nats: &async_nats::Client, epochs: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while epoch_records(nats).await.len() < epochs {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{epochs} epochs never came"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_keys_cli_verifies_lookups_and_audits_and_refuses_forgeries_and_split_views() {
    let work = tempfile::tempdir().unwrap();
    let path = |name: &str| work.path().join(name).to_string_lossy().into_owned();

    // The tenant's secrets: written 0600, never printed.
    let (code, out, err) = cli(
        "nats://127.0.0.1:1",
        &[
            "keys",
            "gen-secrets",
            "--tenant",
            TENANT,
            "--out",
            &path("secrets.toml"),
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let secrets_text = std::fs::read_to_string(path("secrets.toml")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path("secrets.toml"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let secrets: toml::Value = toml::from_str(&secrets_text).unwrap();
    let keys = &secrets["tenants"]["keys"];
    for secret in ["vrf_seed", "checkpoint_key", "label_key"] {
        let v = keys[secret].as_str().unwrap();
        assert!(!out.contains(v) && !err.contains(v), "{secret} was printed");
    }
    assert!(
        out.contains("vrf_public_key = ")
            && out.contains("checkpoint_key = sealpost/keys/acme-corp+")
    );
    let config: TenantKeysConfig = keys.clone().try_into().unwrap();
    let mut tenant = crate::gateway::tenant_config(TENANT);
    tenant.keys = Some(config);

    // Two views of the directory under the same keys: the honest one, and one that swaps
    // Alice's key at epoch 2.
    let honest = start_tenant(tenant.clone()).await;
    let evil = start_tenant(tenant).await;
    let label = label_of("+447700900123");
    for (view, second) in [(&honest, 2u8), (&evil, 66)] {
        let nats = &view.env.client;
        ask(nats, TENANT, "publish", publish_body(&label, "k1", 1))
            .await
            .unwrap();
        epochs_reach(nats, 1).await;
        ask(nats, TENANT, "publish", publish_body(&label, "k2", second))
            .await
            .unwrap();
        epochs_reach(nats, 2).await;
    }
    // The evil view grows past the honest one.
    let bob = label_of("+447700900456");
    ask(
        &evil.env.client,
        TENANT,
        "publish",
        publish_body(&bob, "k1", 3),
    )
    .await
    .unwrap();
    epochs_reach(&evil.env.client, 3).await;
    let (h, e) = (honest.env.server.url(), evil.env.server.url());

    // lookup: verified, the client's checkpoint saved, the answer kept for offline checks.
    let (code, out, err) = cli(
        &h,
        &[
            "keys",
            "lookup",
            "--tenant",
            TENANT,
            "--label",
            &label,
            "--state",
            &path("seen"),
            "--save",
            &path("answer.json"),
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("epoch 2: verified") && out.contains("key k2"),
        "{out}"
    );
    let info = ask(&honest.env.client, TENANT, "info", json!({}))
        .await
        .unwrap();
    let (vrf, ckey) = (
        info["vrf_public_key"].as_str().unwrap(),
        info["checkpoint_key"].as_str().unwrap(),
    );
    let verify = |answer: String, extra: Vec<String>| {
        let h = h.clone();
        let label = label.clone();
        async move {
            let mut args: Vec<String> = [
                "keys",
                "verify",
                "--answer",
                &answer,
                "--directory",
                TENANT,
                "--label",
                &label,
                "--vrf-key",
                vrf,
                "--checkpoint-key",
                ckey,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend(extra);
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            cli(&h, &refs).await
        }
    };
    assert_eq!(verify(path("answer.json"), vec![]).await.0, 0);
    // history: both keys, verified.
    let (code, out, err) = cli(
        &h,
        &["keys", "history", "--tenant", TENANT, "--label", &label],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("epoch 2: verified") && out.contains("epoch 1: verified"),
        "{out}"
    );

    // A forged lookup proof (another value) and a tampered checkpoint signature: refused.
    let answer: Value =
        serde_json::from_str(&std::fs::read_to_string(path("answer.json")).unwrap()).unwrap();
    let mut forged = answer.clone();
    let value = forged["proof"]["value"].clone();
    forged["proof"]["value"] = match value {
        Value::Array(mut bytes) => {
            bytes[10] = json!((bytes[10].as_u64().unwrap() + 1) % 256);
            Value::Array(bytes)
        }
        Value::String(s) => {
            let mut b = s.into_bytes();
            b[10] = if b[10] == b'0' { b'1' } else { b'0' };
            Value::String(String::from_utf8(b).unwrap())
        }
        other => panic!("the proof's value is {other}"),
    };
    std::fs::write(path("forged.json"), forged.to_string()).unwrap();
    let (code, _, err) = verify(path("forged.json"), vec![]).await;
    assert_ne!(code, 0);
    assert!(
        err.contains("REFUSED") && err.contains("lookup proof"),
        "{err}"
    );
    let mut tampered = answer.clone();
    let cp = tampered["checkpoint"].as_str().unwrap().to_owned();
    let (body, sig) = cp.trim_end().rsplit_once(' ').unwrap();
    let mut sig = sig.as_bytes().to_vec();
    sig[12] = if sig[12] == b'A' { b'B' } else { b'A' };
    tampered["checkpoint"] = json!(format!("{body} {}\n", String::from_utf8(sig).unwrap()));
    std::fs::write(path("tampered.json"), tampered.to_string()).unwrap();
    let (code, _, err) = verify(path("tampered.json"), vec![]).await;
    assert_ne!(code, 0);
    assert!(
        err.contains("REFUSED") && err.contains("checkpoint"),
        "{err}"
    );

    // A split view: the evil directory's answer, against the checkpoint this client saw from
    // the honest one. Alone it verifies; against what the client saw, it is refused.
    let (code, _, err) = cli(
        &e,
        &[
            "keys",
            "lookup",
            "--tenant",
            TENANT,
            "--label",
            &label,
            "--save",
            &path("evil.json"),
        ],
    )
    .await;
    assert_eq!(
        code, 0,
        "each view verifies for a client that saw nothing: {err}"
    );
    let (code, _, err) = cli(
        &e,
        &[
            "keys",
            "lookup",
            "--tenant",
            TENANT,
            "--label",
            &label,
            "--state",
            &path("seen"),
        ],
    )
    .await;
    assert_ne!(code, 0);
    assert!(err.contains("split view"), "{err}");
    let proof = ask(
        &evil.env.client,
        TENANT,
        "consistency",
        json!({"from": 2, "to": 3}),
    )
    .await
    .unwrap();
    std::fs::write(path("evil-consistency.json"), proof.to_string()).unwrap();
    let (code, _, err) = verify(
        path("evil.json"),
        vec![
            "--state".into(),
            path("seen"),
            "--consistency".into(),
            path("evil-consistency.json"),
        ],
    )
    .await;
    assert_ne!(code, 0);
    assert!(err.contains("split view"), "{err}");

    // audit: every step verifies on the honest view, with its answers saved; the evil view
    // then breaks the auditor's memory of the honest checkpoint.
    let (code, out, err) = cli(
        &h,
        &[
            "keys",
            "audit",
            "--tenant",
            TENANT,
            "--state",
            &path("audited"),
            "--save",
            &path("audit"),
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("every append-only proof and the checkpoint verified"),
        "{out}"
    );
    let (code, _, err) = cli(
        &e,
        &[
            "keys",
            "audit",
            "--tenant",
            TENANT,
            "--state",
            &path("audited"),
        ],
    )
    .await;
    assert_ne!(code, 0);
    assert!(
        err.contains("BROKEN") && err.contains("split view"),
        "{err}"
    );

    // Offline, from the saved answers: they verify; forged or re-signed, they do not.
    let offline = |dir: String| {
        let h = h.clone();
        async move {
            cli(
                &h,
                &[
                    "keys",
                    "audit",
                    "--tenant",
                    TENANT,
                    "--offline",
                    &dir,
                    "--checkpoint-key",
                    ckey,
                ],
            )
            .await
        }
    };
    assert_eq!(offline(path("audit")).await.0, 0);
    let copy = |name: &str| {
        let dir = work.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for f in std::fs::read_dir(work.path().join("audit")).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), dir.join(f.file_name())).unwrap();
        }
        dir
    };
    // A forged append-only proof: epoch 2's entry claims another root.
    let dir = copy("audit-forged");
    let step: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("audit-1.json")).unwrap()).unwrap();
    let mut step = step;
    let entry = step["entries"][1].as_str().unwrap().to_owned();
    let mut lines: Vec<String> = entry.lines().map(str::to_owned).collect();
    lines[3] = {
        use base64::Engine as _;
        let mut root = base64::engine::general_purpose::STANDARD
            .decode(&lines[3])
            .unwrap();
        root[0] ^= 1;
        base64::engine::general_purpose::STANDARD.encode(root)
    };
    step["entries"][1] = json!(lines.join("\n") + "\n");
    std::fs::write(dir.join("audit-1.json"), step.to_string()).unwrap();
    let (code, _, err) = offline(dir.to_string_lossy().into_owned()).await;
    assert_ne!(code, 0);
    assert!(
        err.contains("BROKEN") && err.contains("not in the signed log"),
        "{err}"
    );
    // A tampered checkpoint signature.
    let dir = copy("audit-resigned");
    let cp: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("checkpoint.json")).unwrap())
            .unwrap();
    let text = cp["checkpoint"].as_str().unwrap();
    let (body, sig) = text.trim_end().rsplit_once(' ').unwrap();
    let mut sig = sig.as_bytes().to_vec();
    sig[12] = if sig[12] == b'A' { b'B' } else { b'A' };
    std::fs::write(
        dir.join("checkpoint.json"),
        json!({"checkpoint": format!("{body} {}\n", String::from_utf8(sig).unwrap())}).to_string(),
    )
    .unwrap();
    let (code, _, err) = offline(dir.to_string_lossy().into_owned()).await;
    assert_ne!(code, 0);
    assert!(
        err.contains("REFUSED") && err.contains("signature"),
        "{err}"
    );
}

#[tokio::test]
async fn a_key_marked_bad_is_revoked_wherever_published_refused_at_publish_and_listed_verifiably() {
    let (signer, _) = LogSigner::generate("sealpost.test/keys/acme-corp").unwrap();
    let r = start(&signer, None).await;
    let nats = &r.env.client;
    let mut alerts = nats
        .subscribe("sealpost.keys.acme-corp.changed")
        .await
        .unwrap();
    sealpost_eventstore::server_round_trip(nats).await.unwrap();
    let (alice, bob, carol) = (
        label_of("+447700900001"),
        label_of("+447700900002"),
        label_of("+447700900003"),
    );
    // One key published by two recipients (a cloned device image), and an unrelated one.
    ask(nats, TENANT, "publish", publish_body(&alice, "ka", 7))
        .await
        .unwrap();
    ask(nats, TENANT, "publish", publish_body(&bob, "kb", 7))
        .await
        .unwrap();
    ask(nats, TENANT, "publish", publish_body(&carol, "kc", 8))
        .await
        .unwrap();
    let mut client = Client::new(nats).await;
    client.lookup_until(nats, &carol, |_| true).await;
    client
        .lookup_until(nats, &alice, |e| e.keys.len() == 1)
        .await;
    let bad = hex::encode(sealpost_keyformat::fingerprint(0x0020, &[7; 32]));

    let before = key_events(nats).await;
    for (body, code) in [
        (
            json!({"fingerprint": bad.to_uppercase(), "reason": "compromised"}),
            "invalid_request",
        ),
        (
            json!({"fingerprint": bad, "reason": "Compromised!"}),
            "invalid_request",
        ),
        (
            json!({"fingerprint": "abc", "reason": "compromised"}),
            "invalid_request",
        ),
    ] {
        assert_eq!(
            ask(nats, TENANT, "mark_bad", body).await.unwrap_err().0,
            code
        );
    }
    assert_eq!(
        key_events(nats).await,
        before,
        "a refused mark stores nothing"
    );

    let marked = ask(
        nats,
        TENANT,
        "mark_bad",
        json!({"fingerprint": bad, "reason": "compromised"}),
    )
    .await
    .unwrap();
    assert_eq!(marked["index"], 0);
    let mut revoked: Vec<String> = marked["revoked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key_id"].as_str().unwrap().to_owned())
        .collect();
    revoked.sort();
    assert_eq!(revoked, ["ka", "kb"]);
    // Marking again changes nothing.
    let again = ask(
        nats,
        TENANT,
        "mark_bad",
        json!({"fingerprint": bad, "reason": "compromised"}),
    )
    .await
    .unwrap();
    assert_eq!(
        (again["index"].clone(), again["revoked"].clone()),
        (json!(0), json!([]))
    );

    // Lookups stop serving it (verified), the other key stays, and it cannot come back.
    for l in [&alice, &bob] {
        let (entry, _) = client.lookup_until(nats, l, |e| e.keys.is_empty()).await;
        assert!(entry.keys.iter().all(|k| k.fingerprint != bad));
    }
    let (entry, _) = client.lookup(nats, &carol).await;
    assert_eq!(entry.keys.len(), 1);
    let before = key_events(nats).await;
    let e = ask(
        nats,
        TENANT,
        "publish",
        publish_body(&label_of("+447700900004"), "kd", 7),
    )
    .await
    .unwrap_err();
    assert_eq!(e.0, "key_marked_bad", "{}", e.1);
    assert_eq!(key_events(nats).await, before);

    // The list verifies whole against its own signed checkpoint, and the fingerprint's
    // inclusion proof verifies too.
    let info: InfoAnswer =
        serde_json::from_value(ask(nats, TENANT, "info", json!({})).await.unwrap()).unwrap();
    let list_key = CheckpointVerifier::new(&info.bad_keys_checkpoint_key).unwrap();
    let answer: sealpost_keys::service::BadKeysAnswer = serde_json::from_value(
        ask(nats, TENANT, "bad_keys", json!({"fingerprint": bad}))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(answer.listed, Some(true));
    let entries: Vec<Vec<u8>> = answer
        .entries
        .iter()
        .map(|e| e.clone().into_bytes())
        .collect();
    let list =
        sealpost_keys::badkeys::verify_bad_keys(&list_key, &entries, answer.checkpoint.as_bytes())
            .unwrap();
    assert_eq!(hex::encode(list[0].fingerprint), bad);
    let cp = list_key.open(answer.checkpoint.as_bytes()).unwrap();
    let proof = hashes(
        answer
            .inclusion
            .as_deref()
            .unwrap()
            .iter()
            .map(String::as_str),
    );
    sealpost_tlog::verify_inclusion(
        &proof,
        cp.size,
        cp.root,
        0,
        sealpost_tlog::leaf_hash(&entries[0]),
    )
    .unwrap();
    // The list's checkpoint is not the epoch log's: the directory's verifier refuses it.
    assert!(client
        .checkpoint_key
        .open(answer.checkpoint.as_bytes())
        .is_err());

    // The platform marks carol's key from the operator's command line: listed with scope
    // platform and revoked.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sealpost.toml");
    std::fs::write(
        &config,
        format!(
            "[[tenants]]\nid = \"{TENANT}\"\n[tenants.keys]\nvrf_seed = \"{}\"\ncheckpoint_key = \"{}\"\n",
            hex::encode(VRF),
            signer.secret()
        ),
    )
    .unwrap();
    let carol_fp = hex::encode(sealpost_keyformat::fingerprint(0x0020, &[8; 32]));
    let out = tokio::process::Command::new(crate::support::sealpost_binary())
        .args([
            "keys",
            "mark-bad",
            "--platform",
            "--fingerprint",
            &carol_fp,
            "--reason",
            "weak_rng",
        ])
        .env("SEALPOST_CONFIG", &config)
        .env("SEALPOST_NATS_URL", r.env.server.url())
        .env("DATABASE_URL", &r._db.url)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("acme-corp: listed at index 1, 1 key(s) revoked"),
        "{stdout}"
    );
    client
        .lookup_until(nats, &carol, |e| e.keys.is_empty())
        .await;
    let out = tokio::process::Command::new(crate::support::sealpost_binary())
        .args(["keys", "bad-keys", "--tenant", TENANT])
        .env("SEALPOST_NATS_URL", r.env.server.url())
        .env_remove("SEALPOST_CONFIG")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("2 bad key(s), verified"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{carol_fp} (Platform): weak_rng")),
        "{stdout}"
    );

    // Each revocation reached the tenant as an alert.
    let mut revocations = vec![];
    while revocations.len() < 3 {
        let m = tokio::time::timeout(Duration::from_secs(10), alerts.next())
            .await
            .expect("an alert per revocation")
            .unwrap();
        let a: Value = serde_json::from_slice(&m.payload).unwrap();
        if a["change"] == "key_revoked" {
            assert_eq!(a["reason"], "marked_bad");
            revocations.push(a["key_id"].as_str().unwrap().to_owned());
        }
    }
    revocations.sort();
    assert_eq!(revocations, ["ka", "kb", "kc"]);
}

/// `n` real MLS KeyPackages of one device and a last-resort one (TLS encoding, base64), made
/// with OpenMLS as a device app would.
fn key_packages(n: usize) -> (Vec<String>, String) {
    use base64::Engine as _;
    use openmls::prelude::tls_codec::Serialize as _;
    use openmls::prelude::{
        BasicCredential, Capabilities, Ciphersuite, CredentialWithKey, ExtensionType, KeyPackage,
    };
    let provider = openmls_rust_crypto::OpenMlsRustCrypto::default();
    let suite = Ciphersuite::MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519;
    let signer =
        openmls_basic_credential::SignatureKeyPair::new(suite.signature_algorithm()).unwrap();
    let credential = CredentialWithKey {
        credential: BasicCredential::new(b"device-phone".to_vec()).into(),
        signature_key: signer.public().into(),
    };
    let make = |last_resort: bool| {
        let mut builder = KeyPackage::builder();
        if last_resort {
            // The leaf must declare the extension it carries (RFC 9420 §7.2).
            builder = builder
                .leaf_node_capabilities(Capabilities::new(
                    None,
                    Some(&[suite]),
                    Some(&[ExtensionType::LastResort]),
                    None,
                    None,
                ))
                .mark_as_last_resort();
        }
        let bundle = builder
            .build(suite, &provider, &signer, credential.clone())
            .unwrap();
        base64::engine::general_purpose::STANDARD
            .encode(bundle.key_package().tls_serialize_detached().unwrap())
    };
    ((0..n).map(|_| make(false)).collect(), make(true))
}

#[tokio::test]
async fn a_hundred_concurrent_claims_over_the_api_hand_each_validated_key_package_to_one_claimant()
{
    let (signer, _) = LogSigner::generate("sealpost.test/keys/acme-corp").unwrap();
    let r = start(&signer, None).await;
    let nats = &r.env.client;
    let label = label_of("+447700900123");
    let (packages, last_resort) = key_packages(50);
    let upload = |body: Value| ask(nats, TENANT, "upload", body);

    // A device without a key has no packages; then the device's key.
    let body = json!({"recipient_label": label, "device_id": "phone", "key_packages": packages, "last_resort": last_resort});
    let e = upload(body.clone()).await.unwrap_err();
    assert_eq!(e.0, "unknown_device", "{}", e.1);
    ask(nats, TENANT, "publish", publish_body(&label, "k1", 1))
        .await
        .unwrap();

    // Refused packages store nothing: tampered bytes, a non-package, the last-resort one in the
    // wrong place.
    let before = key_events(nats).await;
    let tampered = {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut bytes = b64.decode(&packages[0]).unwrap();
        let n = bytes.len();
        bytes[n - 10] ^= 1;
        b64.encode(bytes)
    };
    for (what, body) in [
        (
            "a tampered signature",
            json!({"recipient_label": label, "device_id": "phone", "key_packages": [tampered]}),
        ),
        (
            "not a KeyPackage",
            json!({"recipient_label": label, "device_id": "phone", "key_packages": ["AAECAw=="]}),
        ),
        (
            "a last-resort package among the others",
            json!({"recipient_label": label, "device_id": "phone", "key_packages": [last_resort]}),
        ),
        (
            "an ordinary one as last resort",
            json!({"recipient_label": label, "device_id": "phone", "last_resort": packages[0]}),
        ),
    ] {
        let e = upload(body).await.unwrap_err();
        assert_eq!(e.0, "invalid_key_package", "{what}: {}", e.1);
    }
    assert_eq!(
        key_events(nats).await,
        before,
        "no refused upload stored anything"
    );

    let done = upload(body.clone()).await.unwrap();
    assert_eq!(done["events"], json!(["key_packages_uploaded"]));
    assert_eq!(
        upload(body).await.unwrap()["events"],
        json!([]),
        "a resend stores nothing"
    );

    // 100 senders claim at once, over NATS.
    let claims = futures::future::join_all((0..100).map(|i| {
        let nats = nats.clone();
        let label = label.clone();
        async move {
            loop {
                match ask(
                    &nats,
                    TENANT,
                    "claim",
                    json!({"recipient_label": label, "device_id": "phone", "claimant": format!("sender-{i}")}),
                )
                .await
                {
                    Ok(v) => return v,
                    Err((code, _)) if code == "unavailable" => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(e) => panic!("claim {i}: {e:?}"),
                }
            }
        }
    }))
    .await;
    let mut handed: Vec<String> = vec![];
    let mut last = 0;
    for c in &claims {
        let bytes = c["key_package"].as_str().unwrap();
        if c["last_resort"] == true {
            assert_eq!(bytes, last_resort);
            last += 1;
        } else {
            assert!(
                packages.contains(&bytes.to_owned()),
                "a package that was uploaded"
            );
            handed.push(bytes.to_owned());
        }
        // The hash_ref is the package's own, as OpenMLS computes it.
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(bytes)
            .unwrap();
        assert_eq!(
            sealpost_keys::keypackages::validate(&raw).unwrap().hash_ref,
            c["hash_ref"].as_str().unwrap()
        );
    }
    handed.sort();
    let mut all = packages.clone();
    all.sort();
    assert_eq!(
        handed, all,
        "each of the 50 packages to exactly one claimant"
    );
    assert_eq!(last, 50, "the other 50 got the last-resort package");
}

/// One webhook delivery as the receiver saw it: signature header, body, the status it answered.
type Delivery = (String, Vec<u8>, u16);

#[tokio::test]
async fn key_changes_reach_the_tenants_webhook_signed_and_retried_until_accepted() {
    // The tenant's receiver: answers 500 to the first two deliveries, then 200, and keeps
    // every (signature header, body) it was sent.
    let received: std::sync::Arc<std::sync::Mutex<Vec<Delivery>>> = Default::default();
    let app = {
        let received = received.clone();
        axum::Router::new().route(
            "/hook",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let received = received.clone();
                    async move {
                        let mut r = received.lock().unwrap();
                        let status = if r.len() < 2 { 500 } else { 200 };
                        let sig = headers
                            .get("sealpost-signature")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        r.push((sig, body.to_vec(), status));
                        axum::http::StatusCode::from_u16(status).unwrap()
                    }
                },
            ),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let (signer, _) = LogSigner::generate("sealpost.test/keys/acme-corp").unwrap();
    let mut tenant = tenant_with_directory(&signer, None);
    if let Some(k) = tenant.keys.as_mut() {
        k.webhook_url = Some(hook);
        k.webhook_secret = Some(Secret::new("whsec_acme_test"));
    }
    let r = start_tenant(tenant).await;
    let nats = &r.env.client;
    let label = label_of("+447700900123");
    ask(nats, TENANT, "publish", publish_body(&label, "k1", 1))
        .await
        .unwrap();
    ask(nats, TENANT, "publish", publish_body(&label, "k2", 2))
        .await
        .unwrap();

    // Both changes arrive, each signed; the two refused deliveries were retried.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let accepted = loop {
        let got: Vec<Delivery> = received.lock().unwrap().clone();
        let ok: Vec<Value> = got
            .iter()
            .filter(|(_, _, status)| *status == 200)
            .map(|(_, body, _)| serde_json::from_slice(body).unwrap())
            .collect();
        if ok.len() >= 2 {
            break got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "deliveries: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for (sig, body, _) in &accepted {
        assert!(
            sealpost_keys::publisher::verify_webhook_signature(
                b"whsec_acme_test",
                sig,
                body,
                now,
                300
            ),
            "every delivery is signed with the tenant's secret"
        );
        assert!(!sealpost_keys::publisher::verify_webhook_signature(
            b"another tenant's secret",
            sig,
            body,
            now,
            300
        ));
    }
    let mut changes: Vec<(String, String)> = accepted
        .iter()
        .filter(|(_, _, s)| *s == 200)
        .map(|(_, b, _)| {
            let v: Value = serde_json::from_slice(b).unwrap();
            (
                v["change"].as_str().unwrap().to_owned(),
                v["key_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    changes.sort();
    changes.dedup();
    assert_eq!(
        changes,
        [
            ("key_published".to_owned(), "k1".to_owned()),
            ("key_rotated".to_owned(), "k2".to_owned())
        ]
    );
    assert!(accepted.iter().filter(|(_, _, s)| *s == 500).count() == 2);
}
