//! The client SDK against the real platform: a nats-server, Postgres, the embedded S3 endpoint,
//! the key directory, the delivery roles and the carrier simulator, all started with
//! `sealpost::App::start`. The sender seals with the SDK after verifying the directory's
//! answer, the platform carries the envelope, and each device fetches it from the link the
//! carrier got and opens it. Then every refusal the SDK promises, each on its own, and the
//! device links: fetching through one without an API key, and a device's `decryption_failed`
//! report recorded as an event, a view column and a metric.

// Test fixtures: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use sealpost::{App, Role};
use sealpost_carrier_sim::{CarrierSim, HandsetMessage, RunningSim, SimConfig};
use sealpost_domain::Secret;
use sealpost_gateway::TenantKeysConfig;
use sealpost_keyformat::{LabelKey, RecipientLabel};
use sealpost_sdk::{
    Device, HttpApi, KeyDirectory, Keyring, OpenError, Outgoing, Platform, SdkError, Sender, Trust,
};
use sealpost_testkit::{eventually, PgDatabase};
use sealpost_tlog::LogSigner;
use time::{Duration as TimeDuration, OffsetDateTime};

use crate::support::{app_config, Env};

const TENANT: &str = "acme-corp";
const API_KEY: &str = "acme-corp-key";
const LABEL_KEY: [u8; 32] = [9; 32];
const LINK_KEY: [u8; 32] = [5; 32];
const ALICE: &str = "+447700900123";
const BOB: &str = "+447700900456";

pub(crate) struct Stack {
    pub env: Env,
    pub db: PgDatabase,
    dir: tempfile::TempDir,
    pub sim: RunningSim,
    pub app: sealpost::Running,
    pub signer: LogSigner,
}

impl Stack {
    /// Gateway, key directory and delivery roles in one process, with the simulator's receipts.
    pub async fn start() -> Stack {
        let env = Env::start().await;
        let db = PgDatabase::create().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let sim_cfg = SimConfig {
            receipt_delay: Duration::from_millis(20),
            ..SimConfig::default()
        };
        let sim = CarrierSim::start("127.0.0.1:0".parse().unwrap(), sim_cfg.clone())
            .await
            .unwrap();
        let (signer, _) = LogSigner::generate("sealpost.test/keys/acme-corp").unwrap();
        let mut tenant = crate::gateway::tenant_config(TENANT);
        tenant.keys = Some(TenantKeysConfig {
            vrf_seed: Secret::new(hex::encode([7u8; 32])),
            checkpoint_key: Secret::new(signer.secret()),
            enrollment_key: None,
            retire_after_secs: 86_400,
            label_key: Some(Secret::new(hex::encode(LABEL_KEY))),
            webhook_url: None,
            webhook_secret: None,
        });
        let mut cfg = app_config(&env.server.url(), &dir.path().join("s3"), vec![tenant]);
        cfg.postgres.url = Secret::new(db.url.clone());
        // Device links point at the gateway, so its port is fixed before it starts.
        let port = sealpost_testkit::free_port().unwrap();
        cfg.gateway.http_listen = format!("127.0.0.1:{port}").parse().unwrap();
        cfg.delivery.device_link_key = Secret::new(hex::encode(LINK_KEY));
        cfg.delivery.device_link_base = format!("http://127.0.0.1:{port}");
        cfg.keys.epoch_interval = Duration::from_millis(100);
        cfg.retry.base = Duration::from_millis(100);
        cfg.retry.max = Duration::from_millis(1000);
        let rbm = &mut cfg.carriers.rbm;
        rbm.base_url = sim.base_url();
        rbm.agent_id.clone_from(&sim_cfg.agent_id);
        rbm.bearer_token = sim_cfg.bearer_token.clone();
        rbm.client_token = sim_cfg.client_token.clone();
        cfg.carriers.sms.base_url = sim.base_url();
        cfg.carriers.sms.api_key = sim_cfg.sms_api_key.clone();
        let mut roles = vec![Role::Gateway, Role::Keys, Role::Projector];
        roles.extend(Role::DELIVERY);
        let app = App::start(cfg, &roles, std::future::pending())
            .await
            .unwrap();
        sim.set_webhook_url(Some(format!(
            "http://{}/v1/receipts/rbm",
            app.http_addr().unwrap()
        )));
        Stack {
            env,
            db,
            dir,
            sim,
            app,
            signer,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.app.http_addr().unwrap())
    }

    /// The SDK's view of the platform: HTTP, and NATS too when `nats`.
    pub fn platform(&self, nats: bool) -> Platform {
        Platform::new(
            TENANT,
            Some(HttpApi::new(&self.base_url(), API_KEY).unwrap()),
            nats.then(|| self.env.client.clone()),
        )
        .unwrap()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A sender that pinned the directory's keys from `info` and keeps its checkpoint in
    /// `state`.
    pub async fn sender(&self, nats: bool, state: &str) -> Sender {
        let platform = self.platform(nats);
        let info = KeyDirectory::info(&platform).await.unwrap();
        let directory =
            KeyDirectory::open(platform, Trust::of(&info).unwrap(), Some(self.path(state)))
                .unwrap();
        Sender::new(directory, LabelKey::new(LABEL_KEY), None)
    }

    /// A new device of `number` with one key, published.
    pub async fn device(&self, number: &str, device_id: &str, key_id: &str) -> Device {
        let ring = Keyring::generate(
            TENANT,
            &label(number),
            device_id,
            key_id,
            TimeDuration::days(365),
            OffsetDateTime::now_utc(),
        );
        let device = Device::new(ring);
        self.publish(&device).await;
        device
    }

    pub async fn publish(&self, device: &Device) {
        let request = device.publish_request().unwrap();
        self.platform(false)
            .keys("publish", &request)
            .await
            .unwrap();
    }

    /// Waits until a verified lookup of `number` lists `active` as its active key ids.
    pub async fn await_keys(&self, sender: &Sender, number: &str, active: &[&str]) {
        let label = label(number);
        let mut want: Vec<String> = active.iter().map(|s| s.to_string()).collect();
        want.sort();
        eventually(
            Duration::from_secs(20),
            "the keys in a published epoch",
            || {
                let (label, want) = (label.clone(), want.clone());
                async move {
                    let keys = sender.directory().lookup(&label).await.ok()?;
                    let mut ids: Vec<String> = keys
                        .sealable(OffsetDateTime::now_utc())
                        .into_iter()
                        .map(|k| k.key_id.clone())
                        .collect();
                    ids.sort();
                    (ids == want).then_some(())
                }
            },
        )
        .await
        .unwrap();
    }

    /// What the recipient's handset got for `message_id`.
    pub async fn handset(&self, message_id: &str) -> HandsetMessage {
        eventually(
            Duration::from_secs(20),
            "the carrier's delivery",
            || async { self.sim.handset(message_id) },
        )
        .await
        .unwrap()
    }
}

pub(crate) fn label(number: &str) -> String {
    RecipientLabel::of(&LabelKey::new(LABEL_KEY), TENANT, number)
        .unwrap()
        .to_hex()
}

fn outgoing(number: &str, key: &str) -> Outgoing {
    Outgoing {
        recipient: number.into(),
        idempotency_key: key.into(),
        message_type: "transactional".into(),
        ttl_seconds: Some(3600),
        correlation_id: Some(format!("corr-{key}")),
        fallback: None,
    }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

#[tokio::test]
async fn a_sealed_message_travels_through_delivery_and_each_of_three_devices_opens_it() {
    let s = Stack::start().await;
    let devices = [
        s.device(ALICE, "phone", "phone-k1").await,
        s.device(ALICE, "tablet", "tablet-k1").await,
        s.device(ALICE, "laptop", "laptop-k1").await,
    ];
    for (nats, key) in [(false, "e2e-http"), (true, "e2e-nats")] {
        let sender = s.sender(nats, &format!("{key}.checkpoint")).await;
        s.await_keys(&sender, ALICE, &["laptop-k1", "phone-k1", "tablet-k1"])
            .await;
        let plaintext = format!("Your statement is ready ({key}). Balance: 1,234.56 EUR");
        let sent = sender
            .send(&outgoing(ALICE, key), plaintext.as_bytes())
            .await
            .unwrap();
        assert_eq!(sent.reply["message_id"], sent.message_id.as_str());
        assert_eq!(sent.key_ids.len(), 3);

        // The carrier got a link and a digest; each device fetches without any API key.
        let got = s.handset(&sent.message_id).await;
        assert_eq!(got.sha256, sent.blob.sha256);
        let sealed = sealpost_sdk::device::fetch(&got.file_url).await.unwrap();
        for d in &devices {
            let opened = d
                .open_checked(&sealed, &got.sha256, &sent.message_id, now())
                .unwrap();
            assert_eq!(opened.as_slice(), plaintext.as_bytes());
        }
        // The platform stored ciphertext only.
        assert!(!sealed
            .windows(plaintext.len())
            .any(|w| w == plaintext.as_bytes()));
    }
}

#[tokio::test]
async fn after_a_rotation_old_messages_still_open_new_ones_use_the_new_key_and_the_tenant_is_alerted(
) {
    let s = Stack::start().await;
    let mut alerts = s
        .env
        .client
        .subscribe(format!("sealpost.keys.{TENANT}.changed"))
        .await
        .unwrap();
    let mut phone = s.device(ALICE, "phone", "phone-k1").await;
    let sender = s.sender(false, "rotation.checkpoint").await;
    s.await_keys(&sender, ALICE, &["phone-k1"]).await;
    let before = sender
        .send(&outgoing(ALICE, "before-rotation"), b"sealed before")
        .await
        .unwrap();
    assert_eq!(before.key_ids, ["phone-k1"]);

    let request = phone
        .rotate(
            "phone-k2",
            TimeDuration::days(365),
            TimeDuration::days(30),
            now(),
        )
        .unwrap();
    s.platform(false).keys("publish", &request).await.unwrap();
    s.await_keys(&sender, ALICE, &["phone-k2"]).await;
    let after = sender
        .send(&outgoing(ALICE, "after-rotation"), b"sealed after")
        .await
        .unwrap();
    assert_eq!(after.key_ids, ["phone-k2"], "new messages use the new key");

    for (sent, text) in [
        (&before, &b"sealed before"[..]),
        (&after, &b"sealed after"[..]),
    ] {
        let got = s.handset(&sent.message_id).await;
        let sealed = sealpost_sdk::device::fetch(&got.file_url).await.unwrap();
        let opened = phone
            .open_checked(&sealed, &got.sha256, &sent.message_id, now())
            .unwrap();
        assert_eq!(opened.as_slice(), text);
    }
    // Once the old key is past its retirement date, what was sealed to it no longer opens.
    let got = s.handset(&before.message_id).await;
    let sealed = sealpost_sdk::device::fetch(&got.file_url).await.unwrap();
    assert_eq!(
        phone
            .open(&sealed, &before.message_id, now() + TimeDuration::days(31))
            .err(),
        Some(OpenError::NotForThisDevice)
    );

    // The tenant's key-change alerts: the publication, then the rotation.
    let mut kinds: Vec<String> = Vec::new();
    while !kinds.iter().any(|k| k == "key_rotated") {
        let m = tokio::time::timeout(Duration::from_secs(20), alerts.next())
            .await
            .expect("a key-change alert")
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        if v["recipient_label"] == label(ALICE) {
            kinds.push(v["change"].as_str().unwrap_or_default().to_owned());
        }
    }
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("key_published"),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn tampered_misrouted_and_replayed_envelopes_are_refused_with_a_typed_error() {
    let s = Stack::start().await;
    let phone = s.device(ALICE, "phone", "phone-k1").await;
    let bobs = s.device(BOB, "phone", "bob-k1").await;
    let sender = s.sender(false, "refusals.checkpoint").await;
    s.await_keys(&sender, ALICE, &["phone-k1"]).await;
    let sent = sender
        .send(&outgoing(ALICE, "refusals-1"), b"for alice only")
        .await
        .unwrap();
    let got = s.handset(&sent.message_id).await;
    let sealed = sealpost_sdk::device::fetch(&got.file_url).await.unwrap();

    // A tampered ciphertext: the digest check catches it, and so does the AEAD without it.
    let mut tampered = sealed.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert_eq!(
        phone
            .open_checked(&tampered, &got.sha256, &sent.message_id, now())
            .err(),
        Some(OpenError::DigestMismatch)
    );
    assert_eq!(
        phone.open(&tampered, &sent.message_id, now()).err(),
        Some(OpenError::Tampered)
    );
    // The wrong device: Bob's phone has no slot, and is not the recipient either.
    assert_eq!(
        bobs.open(&sealed, &sent.message_id, now()).err(),
        Some(OpenError::WrongBinding("recipient"))
    );
    // A second device of Alice's, published after the message was sealed.
    let late = s.device(ALICE, "tablet", "tablet-k1").await;
    assert_eq!(
        late.open(&sealed, &sent.message_id, now()).err(),
        Some(OpenError::NotForThisDevice)
    );

    // Replayed: the same stored envelope sent again under another idempotency key (so another
    // message id). The platform carries it; the device refuses it.
    let replay_id = sender.message_id("refusals-replayed").unwrap();
    let command = serde_json::json!({
        "idempotency_key": "refusals-replayed",
        "recipient": ALICE,
        "encrypted_payload_reference": sent.blob.reference,
        "payload_sha256": sent.blob.sha256,
        "encryption_metadata": {"mls_version": "sealpost-envelope-v2", "cipher": "XChaCha20-Poly1305", "key_id": "phone-k1"},
        "metadata": {"tenant_id": TENANT, "message_type": "transactional"},
    });
    let reply = s.platform(false).send(&command).await.unwrap();
    assert_eq!(reply["message_id"], replay_id.as_str());
    let got = s.handset(&replay_id).await;
    let replayed = sealpost_sdk::device::fetch(&got.file_url).await.unwrap();
    assert_eq!(
        phone
            .open_checked(&replayed, &got.sha256, &replay_id, now())
            .err(),
        Some(OpenError::WrongBinding("message id"))
    );
    assert_eq!(
        OpenError::WrongBinding("message id").code(),
        "wrong_binding"
    );
}

#[tokio::test]
async fn a_lookup_whose_proof_fails_or_whose_checkpoint_forks_is_refused_and_nothing_is_sealed() {
    let s = Stack::start().await;
    let _alice = s.device(ALICE, "phone", "phone-k1").await;
    let _bob = s.device(BOB, "phone", "bob-k1").await;
    let sender = s.sender(false, "proofs.checkpoint").await;
    s.await_keys(&sender, ALICE, &["phone-k1"]).await;
    s.await_keys(&sender, BOB, &["bob-k1"]).await;
    let platform = s.platform(false);
    let answer = platform
        .keys(
            "lookup",
            &serde_json::json!({ "recipient_label": label(ALICE) }),
        )
        .await
        .unwrap();
    let directory = sender.directory();
    directory
        .verify_lookup_answer(&label(ALICE), &answer)
        .await
        .unwrap();

    // Alice's proof offered for Bob: akd's proof is for another label.
    let err = directory
        .verify_lookup_answer(&label(BOB), &answer)
        .await
        .unwrap_err();
    assert!(matches!(err, SdkError::Refused(_)), "{err}");
    // A different root in the epoch entry: not the logged one.
    let mut v: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    let entry = v["epoch_entry"].as_str().unwrap().to_owned();
    let mut lines: Vec<String> = entry.lines().map(str::to_owned).collect();
    lines[3] = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [0u8; 32]);
    v["epoch_entry"] = serde_json::json!(format!("{}\n", lines.join("\n")));
    let err = directory
        .verify_lookup_answer(&label(ALICE), &serde_json::to_vec(&v).unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not in the signed log"), "{err}");

    // A checkpoint this sender saw before that the directory's log does not extend (a fork,
    // signed with the directory's own key): every lookup is refused and nothing is sealed.
    let forked = s.signer.sign(1, sealpost_tlog::Hash([0xee; 32])).unwrap();
    std::fs::write(s.path("forked.checkpoint"), forked.as_bytes()).unwrap();
    let info = KeyDirectory::info(&platform).await.unwrap();
    let forked_dir = KeyDirectory::open(
        s.platform(false),
        Trust::of(&info).unwrap(),
        Some(s.path("forked.checkpoint")),
    )
    .unwrap();
    let forked_sender = Sender::new(forked_dir, LabelKey::new(LABEL_KEY), None);
    let err = forked_sender
        .seal(ALICE, "never-sealed", b"must not be sealed")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("split view"), "{err}");
    // The state file still holds the forked checkpoint: the refusal did not move it.
    assert_eq!(
        std::fs::read(s.path("forked.checkpoint")).unwrap(),
        forked.as_bytes()
    );
    // A recipient without keys: refused before anything is sealed.
    let err = sender
        .seal("+447700900999", "no-keys", b"x")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SdkError::Refused(m) if m.contains("no keys in the directory")),
        "{err}"
    );
}

/// A device in mode `mls`: its directory key (the gateway checks sends against it), and its
/// MLS member with the provider that stores its KeyPackages' keys and its group state.
struct MlsDevice {
    device: Device,
    provider: openmls_rust_crypto::OpenMlsRustCrypto,
}

impl Stack {
    async fn mls_device(&self, number: &str, device_id: &str) -> MlsDevice {
        let device = self
            .device(number, device_id, &format!("{device_id}-k1"))
            .await;
        let provider = openmls_rust_crypto::OpenMlsRustCrypto::default();
        let member =
            sealpost_sdk::mls::Member::new(&format!("{}/{device_id}", label(number))).unwrap();
        let (packages, last_resort) = member.key_packages(&provider, 3).unwrap();
        self.platform(false)
            .keys(
                "upload",
                &sealpost_keys_client::api::UploadRequest {
                    recipient_label: label(number),
                    device_id: device_id.into(),
                    key_packages: packages,
                    last_resort: Some(last_resort),
                },
            )
            .await
            .unwrap();
        MlsDevice { device, provider }
    }
}

#[tokio::test]
async fn an_mls_conversation_travels_through_delivery_and_a_device_added_later_joins_by_a_new_claim(
) {
    use sealpost_sdk::mls::{self, Member};
    let s = Stack::start().await;
    let phone = s.mls_device(ALICE, "phone").await;
    let tablet = s.mls_device(ALICE, "tablet").await;
    let sender = s.sender(true, "mls.checkpoint").await;
    s.await_keys(&sender, ALICE, &["phone-k1", "tablet-k1"])
        .await;

    // The business's member and its own provider (its group state).
    let business = Member::new("acme-corp/business").unwrap();
    let provider = openmls_rust_crypto::OpenMlsRustCrypto::default();
    let keys = sender.directory().lookup(&label(ALICE)).await.unwrap();
    let packages = sender
        .claim_key_packages(&keys, "acme-corp-backend")
        .await
        .unwrap();
    assert_eq!(packages.len(), 2, "one KeyPackage per device");
    let (mut group, welcome) = business
        .create_group(&provider, TENANT, &label(ALICE), &packages)
        .unwrap();

    let binding = sender.binding(&label(ALICE), "mls-1").unwrap();
    let payload = business
        .seal(
            &provider,
            &mut group,
            &binding,
            Some(welcome),
            b"Hello from Acme",
        )
        .unwrap();
    let first = sealpost_sdk::Sealed::mls(binding, payload, &keys, now());
    let sent = sender
        .send_sealed(&outgoing(ALICE, "mls-1"), first)
        .await
        .unwrap();
    let got = s.handset(&sent.message_id).await;
    let payload = sealpost_sdk::device::fetch(&got.file_url).await.unwrap();
    for d in [&phone, &tablet] {
        let opened = mls::open(&d.provider, &payload, &d.device.binding(&sent.message_id)).unwrap();
        assert_eq!(opened, b"Hello from Acme");
    }

    // A laptop joins later: a new claim, a Commit for the others and a Welcome for it.
    let laptop = s.mls_device(ALICE, "laptop").await;
    s.await_keys(&sender, ALICE, &["laptop-k1", "phone-k1", "tablet-k1"])
        .await;
    let keys = sender.directory().lookup(&label(ALICE)).await.unwrap();
    let claimed = sender
        .claim_key_packages(&keys, "acme-corp-backend")
        .await
        .unwrap();
    let laptop_package = claimed
        .into_iter()
        .find(|p| {
            // The laptop's package names its identity in its credential.
            let bytes =
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, p).unwrap();
            bytes.windows(6).any(|w| w == b"laptop")
        })
        .unwrap();
    let added = business
        .add(&provider, &mut group, &[laptop_package])
        .unwrap();
    let binding = sender.binding(&label(ALICE), "mls-2").unwrap();
    let payload = business
        .seal(
            &provider,
            &mut group,
            &binding,
            Some(added),
            b"Now on three devices",
        )
        .unwrap();
    let sent = sender
        .send_sealed(
            &outgoing(ALICE, "mls-2"),
            sealpost_sdk::Sealed::mls(binding, payload, &keys, now()),
        )
        .await
        .unwrap();
    let got = s.handset(&sent.message_id).await;
    let payload = sealpost_sdk::device::fetch(&got.file_url).await.unwrap();
    for d in [&phone, &tablet, &laptop] {
        let opened = mls::open(&d.provider, &payload, &d.device.binding(&sent.message_id)).unwrap();
        assert_eq!(opened, b"Now on three devices");
    }
}

#[tokio::test]
async fn the_payload_link_a_device_gets_expires_with_its_message_and_opens_no_other_object() {
    let s = Stack::start().await;
    let phone = s.device(ALICE, "phone", "phone-k1").await;
    let sender = s.sender(false, "links.checkpoint").await;
    s.await_keys(&sender, ALICE, &["phone-k1"]).await;
    // The long-lived message first, so that the short one's TTL covers only its own delivery.
    let b = sender
        .send(&outgoing(ALICE, "links-other"), b"another message")
        .await
        .unwrap();
    let link_b = s.handset(&b.message_id).await.file_url;
    let mut short = outgoing(ALICE, "links-short");
    short.ttl_seconds = Some(8);
    let sent_at = tokio::time::Instant::now();
    let a = sender.send(&short, b"short-lived").await.unwrap();
    let link_a = s.handset(&a.message_id).await.file_url;
    // The link works without any API key while the message lives.
    let sealed = sealpost_sdk::device::fetch(&link_a).await.unwrap();
    assert_eq!(
        phone
            .open(&sealed, &a.message_id, now())
            .unwrap()
            .as_slice(),
        b"short-lived"
    );

    // A link for one message opens nothing else: the same signature on another object's path.
    let key_of = |reference: &str| reference.splitn(4, '/').nth(3).unwrap().to_owned();
    let (key_a, key_b) = (key_of(&a.blob.reference), key_of(&b.blob.reference));
    assert!(link_a.contains(&key_a) && link_b.contains(&key_b));
    let forged = link_a.replacen(&key_a, &key_b, 1);
    assert_ne!(forged, link_a);
    assert!(matches!(
        sealpost_sdk::device::fetch(&forged).await,
        Err(SdkError::Fetch { status: 403 })
    ));

    // The link expires with the message (its TTL bounds the URL's lifetime).
    tokio::time::sleep_until(sent_at + Duration::from_secs(8 + 2)).await;
    assert!(matches!(
        sealpost_sdk::device::fetch(&link_a).await,
        Err(SdkError::Fetch { status: 403 })
    ));
    // The longer-lived message's link still works.
    assert!(sealpost_sdk::device::fetch(&link_b).await.is_ok());
}

/// Runs `sealpost sdk <args>`; returns (success, stdout, stderr).
async fn sdk_cli(args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(crate::support::sealpost_binary())
        .arg("sdk")
        .args(args)
        .env("SEALPOST_API_KEY", API_KEY)
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_sdk_cli_keygens_publishes_seals_sends_and_opens_with_private_key_files() {
    use std::os::unix::fs::PermissionsExt as _;
    let s = Stack::start().await;
    let base = s.base_url();
    let p = |name: &str| s.path(name).display().to_string();
    let alice = label(ALICE);
    let (ok, out, err) = sdk_cli(&[
        "keygen",
        "--tenant",
        TENANT,
        "--label",
        &alice,
        "--device",
        "phone",
        "--key-id",
        "cli-k1",
        "--out",
        &p("phone.json"),
    ])
    .await;
    assert!(ok, "{err}");
    let ring = Keyring::load(&s.path("phone.json")).unwrap();
    let mode = std::fs::metadata(s.path("phone.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "key files are private");
    assert!(out.contains("safety number"), "{out}");
    let secret = serde_json::to_value(&ring).unwrap()["keys"][0]["secret_key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        !out.contains(&secret) && !err.contains(&secret),
        "keygen printed the key"
    );
    // Never overwritten.
    let (ok, _, err) = sdk_cli(&[
        "keygen",
        "--tenant",
        TENANT,
        "--label",
        &alice,
        "--device",
        "phone",
        "--key-id",
        "cli-k2",
        "--out",
        &p("phone.json"),
    ])
    .await;
    assert!(!ok && err.contains("never overwrites"), "{err}");

    let (ok, _, err) = sdk_cli(&[
        "publish",
        "--tenant",
        TENANT,
        "--api",
        &base,
        "--key-file",
        &p("phone.json"),
    ])
    .await;
    assert!(ok, "{err}");
    std::fs::write(s.path("label.key"), hex::encode(LABEL_KEY)).unwrap();
    std::fs::write(s.path("plain.txt"), b"CLI plaintext 4242").unwrap();
    let sender = s.sender(false, "cli-wait.checkpoint").await;
    s.await_keys(&sender, ALICE, &["cli-k1"]).await;
    let seal_args = |out: &str, key: &str| {
        vec![
            "--tenant".to_owned(),
            TENANT.into(),
            "--api".into(),
            base.clone(),
            "--trust".into(),
            p("trust.json"),
            "--state".into(),
            p("cli.checkpoint"),
            "--recipient".into(),
            ALICE.into(),
            "--label-key-file".into(),
            p("label.key"),
            "--idempotency-key".into(),
            key.into(),
            "--in".into(),
            p("plain.txt"),
            "-o".into(),
            out.into(),
        ]
    };
    let mut args = vec!["seal".to_owned()];
    args.extend(seal_args(&p("sealed.bin"), "cli-1"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out, err) = sdk_cli(&args).await;
    assert!(ok, "{err}");
    assert!(!out.contains("CLI plaintext") && !err.contains("CLI plaintext"));
    assert!(
        err.contains("pinned directory"),
        "first use pins the directory: {err}"
    );
    let message_id = sender.message_id("cli-1").unwrap();

    // Open to a file (0600), and to the terminal only with -o -.
    let (ok, out, err) = sdk_cli(&[
        "open",
        "--key-file",
        &p("phone.json"),
        "--message-id",
        &message_id,
        "--in",
        &p("sealed.bin"),
        "-o",
        &p("opened.txt"),
    ])
    .await;
    assert!(ok, "{err}");
    assert!(!out.contains("CLI plaintext"));
    assert_eq!(
        std::fs::read(s.path("opened.txt")).unwrap(),
        b"CLI plaintext 4242"
    );
    let (ok, out, _) = sdk_cli(&[
        "open",
        "--key-file",
        &p("phone.json"),
        "--message-id",
        &message_id,
        "--in",
        &p("sealed.bin"),
        "-o",
        "-",
    ])
    .await;
    assert!(ok);
    assert_eq!(out, "CLI plaintext 4242");
    // Under another message id: refused, with the reason.
    let (ok, _, err) = sdk_cli(&[
        "open",
        "--key-file",
        &p("phone.json"),
        "--message-id",
        "other",
        "--in",
        &p("sealed.bin"),
        "-o",
        "-",
    ])
    .await;
    assert!(!ok && err.contains("another message id"), "{err}");

    // Send: sealed, stored and sent; the device fetches it from the carrier's link.
    let mut args = vec!["send".to_owned()];
    args.extend(seal_args("unused", "cli-2"));
    args.truncate(args.len() - 2);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out, err) = sdk_cli(&args).await;
    assert!(ok, "{err}");
    let sent_id = out.trim().to_owned();
    assert_eq!(sent_id, sender.message_id("cli-2").unwrap());
    let got = s.handset(&sent_id).await;
    let (ok, out, err) = sdk_cli(&[
        "open",
        "--key-file",
        &p("phone.json"),
        "--message-id",
        &sent_id,
        "--url",
        &got.file_url,
        "--sha256",
        &got.sha256,
        "-o",
        "-",
    ])
    .await;
    assert!(ok, "{err}");
    assert_eq!(out, "CLI plaintext 4242");
    // Through the device link: no message id, URL or digest to give.
    let link = got.link.expect("a device link");
    let (ok, out, err) = sdk_cli(&[
        "open",
        "--key-file",
        &p("phone.json"),
        "--link",
        &link,
        "-o",
        "-",
    ])
    .await;
    assert!(ok, "{err}");
    assert_eq!(out, "CLI plaintext 4242");
    // Another device's key file cannot open it: the reason, and the report reached the platform.
    let (ok, _, err) = sdk_cli(&[
        "keygen",
        "--tenant",
        TENANT,
        "--label",
        &alice,
        "--device",
        "tablet",
        "--key-id",
        "tablet-k9",
        "--out",
        &p("tablet.json"),
    ])
    .await;
    assert!(ok, "{err}");
    let (ok, out, err) = sdk_cli(&[
        "open",
        "--key-file",
        &p("tablet.json"),
        "--link",
        &link,
        "-o",
        "-",
    ])
    .await;
    assert!(!ok && out.is_empty(), "{out}");
    assert!(
        err.contains("no slot for any key") && err.contains("reported to the platform: yes"),
        "{err}"
    );
}

#[test]
fn the_clients_key_api_subjects_are_the_servers() {
    use sealpost_eventstore::names::{KeysOp, KeysSubject};
    let tenant = sealpost_domain::TenantId::new(TENANT).unwrap();
    assert_eq!(sealpost_keys_client::api::OPS.len(), KeysOp::ALL.len());
    for &op in KeysOp::ALL {
        assert_eq!(
            sealpost_keys_client::api::subject(TENANT, op.as_str()),
            Some(KeysSubject::new(tenant.clone(), op).to_string()),
            "{op}"
        );
    }
    assert_eq!(sealpost_keys_client::api::subject(TENANT, "nope"), None);
}

impl Stack {
    /// The status row of `message_id` as the tenant sees it (`GET /v1/messages/{id}`).
    async fn status(&self, message_id: &str) -> serde_json::Value {
        let answer = reqwest::Client::new()
            .get(format!("{}/v1/messages/{message_id}", self.base_url()))
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        answer.json().await.unwrap()
    }
}

/// The device link's token replaced by another message's, or by nonsense.
fn with_token(link: &str, token: &str) -> String {
    let cut = link.rfind('/').unwrap();
    format!("{}/{token}", &link[..cut])
}

#[tokio::test]
async fn a_device_that_cannot_open_reports_through_its_link_and_the_platform_records_decryption_failed(
) {
    let s = Stack::start().await;
    let phone = s.device(ALICE, "phone", "phone-k1").await;
    // A device of the same recipient whose key was never published: nothing is sealed to it.
    let stray = Device::new(Keyring::generate(
        TENANT,
        &label(ALICE),
        "stray",
        "stray-k1",
        TimeDuration::days(365),
        now(),
    ));
    let sender = s.sender(false, "reports.checkpoint").await;
    s.await_keys(&sender, ALICE, &["phone-k1"]).await;
    let sent = sender
        .send(&outgoing(ALICE, "report-1"), b"for the phone only")
        .await
        .unwrap();
    let other = sender
        .send(&outgoing(ALICE, "report-2"), b"another message")
        .await
        .unwrap();
    let link = s
        .handset(&sent.message_id)
        .await
        .link
        .expect("a device link");
    let other_link = s.handset(&other.message_id).await.link.unwrap();
    assert!(link.starts_with(&format!(
        "{}/v1/d/{TENANT}/{}/",
        s.base_url(),
        sent.message_id
    )));

    // The phone fetches through the link, with no API key, and opens.
    let plain = phone.receive(&link, now()).await.unwrap();
    assert_eq!(plain.as_slice(), b"for the phone only");
    assert_eq!(
        s.status(&sent.message_id).await["decryption_failures"],
        0,
        "opening records nothing"
    );

    // The stray device cannot open it: the typed error, and the report reached the platform.
    let err = stray.receive(&link, now()).await.unwrap_err();
    assert_eq!(
        err,
        SdkError::Unopened {
            error: OpenError::NotForThisDevice,
            reported: true
        }
    );
    // The same report again records nothing new; another reason is another report.
    let again = sealpost_sdk::device::report_decryption_failed(
        &link,
        &OpenError::NotForThisDevice,
        Some("stray-k1"),
    )
    .await
    .unwrap();
    assert_eq!((again.recorded, again.decryption_failures), (false, 1));
    let tampered =
        sealpost_sdk::device::report_decryption_failed(&link, &OpenError::Tampered, None)
            .await
            .unwrap();
    assert_eq!((tampered.recorded, tampered.decryption_failures), (true, 2));

    // A link opens its own message only: another message's token, or none that verifies, is
    // refused and records nothing.
    let token_of = |l: &str| l.rsplit('/').next().unwrap().to_owned();
    for forged in [
        with_token(&link, &token_of(&other_link)),
        with_token(&link, &"A".repeat(43)),
    ] {
        let refused =
            sealpost_sdk::device::report_decryption_failed(&forged, &OpenError::Malformed, None)
                .await
                .unwrap_err();
        assert!(
            matches!(&refused, SdkError::Api { status: 401, code, .. } if code == "unauthorized"),
            "{refused:?}"
        );
        let fetched = sealpost_sdk::device::fetch_by_link(&forged)
            .await
            .unwrap_err();
        assert!(
            matches!(fetched, SdkError::Api { status: 401, .. }),
            "{fetched:?}"
        );
    }
    // A reason outside the contract is refused by the gateway with the list of reasons.
    let bad = reqwest::Client::new()
        .post(format!("{link}/decryption-failed"))
        .body(r#"{"reason":"lost_my_phone"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("wrong_key"));

    // The platform recorded both reports: events on the message's stream, the status row (from
    // the view once the projector applied them), the metric. The status is the carrier's.
    let row = eventually(
        Duration::from_secs(20),
        "the reports in the view",
        || async {
            let row = s.status(&sent.message_id).await;
            (row["source"] == "view" && row["decryption_failures"] == 2).then_some(row)
        },
    )
    .await
    .unwrap();
    assert_eq!(row["last_decryption_failure"], "tampered");
    assert!(
        ["delivered", "displayed"].contains(&row["status"].as_str().unwrap()),
        "{row}"
    );
    let (count, last): (i32, Option<String>) = sqlx::query_as(
        "SELECT decryption_failures, last_decryption_failure FROM messages WHERE message_id = $1",
    )
    .bind(&sent.message_id)
    .fetch_one(&sqlx::PgPool::connect(&s.db.url).await.unwrap())
    .await
    .unwrap();
    assert_eq!((count, last.as_deref()), (2, Some("tampered")));
    let js = async_nats::jetstream::new(s.env.client.clone());
    let stream = js.get_stream("SEALPOST_EVENTS").await.unwrap();
    let subject = format!(
        "sealpost.evt.{TENANT}.{}.decryption_failed",
        sent.message_id
    );
    let info = stream
        .info_with_subjects(subject.clone())
        .await
        .unwrap()
        .next()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.1, 2, "two decryption_failed events on {subject}");
    let metrics = reqwest::get(format!("{}/metrics", s.base_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for reason in ["wrong_key", "tampered"] {
        let line = format!(
            "sealpost_decryption_failures_total{{tenant=\"{TENANT}\",reason=\"{reason}\"}}"
        );
        assert!(metrics.contains(&line), "{line} in /metrics");
    }
    // The other message has no report.
    assert_eq!(s.status(&other.message_id).await["decryption_failures"], 0);
}

#[tokio::test]
async fn a_fallback_notice_carries_the_device_link_which_opens_the_message_until_it_expires() {
    let s = Stack::start().await;
    let phone = s.device(BOB, "phone", "bob-k1").await;
    let sender = s.sender(false, "notice.checkpoint").await;
    s.await_keys(&sender, BOB, &["bob-k1"]).await;
    // Bob's number has no RCS: the message falls back to an SMS notice.
    s.sim
        .script(BOB, vec![sealpost_carrier_sim::Scripted::NotCapable]);
    let mut out = outgoing(BOB, "notice-1");
    out.ttl_seconds = Some(8);
    out.fallback = Some(("sms".into(), "secure_message_waiting".into()));
    let sent_at = tokio::time::Instant::now();
    let sent = sender.send(&out, b"read me in the app").await.unwrap();
    let notice = eventually(Duration::from_secs(20), "the SMS notice", || async {
        s.sim
            .notices()
            .into_iter()
            .find(|n| n.message_id == sent.message_id)
    })
    .await
    .unwrap();
    // The notice is the neutral text and the link on its own line: nothing of the message.
    let (text, link) = notice.text.rsplit_once('\n').expect("a link line");
    assert!(!text.is_empty() && !notice.text.contains("read me"));
    assert!(link.contains(&format!("/v1/d/{TENANT}/{}/", sent.message_id)));
    let plain = phone.receive(link, now()).await.unwrap();
    assert_eq!(plain.as_slice(), b"read me in the app");
    let row = s.status(&sent.message_id).await;
    assert_eq!(row["status"], "fallback_triggered");

    // The link expires with the message.
    tokio::time::sleep_until(sent_at + Duration::from_secs(8 + 1)).await;
    let expired = sealpost_sdk::device::fetch_by_link(link).await.unwrap_err();
    assert!(
        matches!(&expired, SdkError::Api { status: 410, code, .. } if code == "expired"),
        "{expired:?}"
    );
}
