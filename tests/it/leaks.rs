//! Never leaked: a full run of a real `sealpost serve` process (gateway and every delivery role)
//! with faults, JSON logs at debug level for Sealpost's own crates, then a scan of everything it
//! logged, of its `/metrics` and of the OTLP spans it exported for ciphertext, full phone numbers
//! and secrets; and of the key directory's tables and stream for phone numbers and the
//! directory's secrets. The spans are also checked for one trace per message across the roles,
//! and for the per-tenant sampling ratio.

// Test fixtures: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use base64::Engine as _;
use sealpost_carrier_sim::{CarrierSim, FaultMix, SimConfig};
use serde_json::{json, Value};

use crate::support::store_on;

const TENANT: &str = "leak-co";
const API_KEY: &str = "sk_live_LEAKCANARY_api_key_7f3a";
/// A second tenant whose messages are never traced (`trace_sample_ratio = 0.0`).
const QUIET: &str = "quiet-co";
const QUIET_KEY: &str = "sk_live_quiet_LEAKCANARY_5e1d";
const S3_SECRET: &str = "s3-secret-LEAKCANARY-91b2";
const CIPHERTEXT: &[u8] = b"MLS-CIPHERTEXT-LEAKCANARY-0123456789abcdef";
/// The tenant's key directory secrets (hex and a signed-note key: no room for a canary word,
/// so each is a canary itself).
const VRF_SEED: [u8; 32] = [0x5e; 32];
const LABEL_KEY: [u8; 32] = [0xa7; 32];
const LINK_KEY: [u8; 32] = [0x3c; 32];

#[tokio::test]
async fn a_full_run_logs_and_exports_no_ciphertext_phone_number_or_secret() {
    let env = crate::support::Env::start().await;
    let (server, client) = (&env.server, env.client.clone());
    // RBM the Google way: access tokens from the service account key, 2 s each, so the run
    // fetches several (and the scan covers the key, the assertions and every token).
    let sim_cfg = SimConfig {
        bearer_token: String::new().into(),
        service_account: Some(
            sealpost_carriers::ServiceAccountKey::from_json(
                sealpost_carrier_sim::TEST_SERVICE_ACCOUNT_JSON,
            )
            .unwrap(),
        ),
        token_ttl: Duration::from_secs(2),
        client_token: "rbm-client-LEAKCANARY-66".into(),
        sms_api_key: "sms-key-LEAKCANARY-77".into(),
        receipt_delay: Duration::from_millis(10),
        faults: FaultMix {
            server_error: 0.2,
            throttle: 0.05,
            retry_after_secs: 1,
            not_capable: 0.1,
            permanent: 0.05,
            ..FaultMix::default()
        },
        ..SimConfig::default()
    };
    let sim = CarrierSim::start("127.0.0.1:0".parse().unwrap(), sim_cfg.clone())
        .await
        .unwrap();
    let port = sealpost_testkit::free_port().unwrap();
    sim.set_webhook_url(Some(format!("http://127.0.0.1:{port}/v1/receipts/rbm")));
    let dir = tempfile::tempdir().unwrap();
    let db = sealpost_testkit::PgDatabase::create().await.unwrap();
    let (signer, _) = sealpost_tlog::LogSigner::generate("sealpost/keys/leak-co").unwrap();
    let otlp = sealpost_testkit::otlp::OtlpReceiver::start().await.unwrap();
    let key_file = dir.path().join("rbm-service-account.json");
    std::fs::write(&key_file, sealpost_carrier_sim::TEST_SERVICE_ACCOUNT_JSON).unwrap();
    let config = dir.path().join("sealpost.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[gateway]
http_listen = "127.0.0.1:{port}"
[s3]
embedded_dir = "{s3dir}"
access_key_id = "leak-ak"
secret_access_key = "{S3_SECRET}"
[retry]
base_ms = 100
max_ms = 500
[delivery]
device_link_key = "{link_key}"
device_link_base = "http://127.0.0.1:{port}"
[carriers.rbm]
base_url = "{sim}"
agent_id = "{agent}"
service_account_key_file = "{key_file}"
token_uri = "{sim}/token"
client_token = "{client_token}"
[carriers.sms]
base_url = "{sim}"
api_key = "{sms}"
[log]
format = "json"
filter = "info,sealpost=debug,sealpost_gateway=debug,sealpost_delivery=debug,sealpost_eventstore=debug,sealpost_carriers=debug,sealpost_blobstore=debug"
otlp_traces_endpoint = "{otlp}"
trace_sample_ratio = 1.0
[[tenants]]
id = "{QUIET}"
api_key_sha256 = ["{quiet_hash}"]
trace_sample_ratio = 0.0
[[tenants]]
id = "{TENANT}"
api_key_sha256 = ["{hash}"]
rate_per_sec = 10000.0
burst = 10000
[tenants.keys]
vrf_seed = "{vrf_seed}"
checkpoint_key = "{checkpoint_key}"
label_key = "{label_key}"
"#,
            s3dir = dir.path().join("s3").display(),
            sim = sim.base_url(),
            agent = sim_cfg.agent_id,
            key_file = key_file.display(),
            client_token = sim_cfg.client_token.expose(),
            sms = sim_cfg.sms_api_key.expose(),
            hash = sealpost_gateway::hash_api_key(API_KEY),
            quiet_hash = sealpost_gateway::hash_api_key(QUIET_KEY),
            otlp = otlp.endpoint(),
            vrf_seed = hex::encode(VRF_SEED),
            checkpoint_key = signer.secret(),
            label_key = hex::encode(LABEL_KEY),
            link_key = hex::encode(LINK_KEY),
        ),
    )
    .unwrap();
    let log_path = dir.path().join("sealpost.log");
    let mut child = serve_logging(
        "gateway,delivery,receipts,expiry,fallback,keys",
        &config,
        &db.url,
        server.url(),
        &log_path,
        port,
    )
    .await;

    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let blob = upload(&http, &base, API_KEY).await;

    let phones: Vec<String> = (0..40)
        .map(|i| format!("+4477009{:05}", 31_337 + i))
        .collect();
    // Each recipient's device key, published in the tenant's key directory under its label, so
    // the sends below pass the key check; and one publish that wrongly names the number itself.
    let label_key = sealpost_keyformat::LabelKey::new(LABEL_KEY);
    for (i, phone) in phones.iter().enumerate() {
        let label = sealpost_keyformat::RecipientLabel::of(&label_key, TENANT, phone)
            .unwrap()
            .to_hex();
        let res = http
            .post(format!("{base}/v1/keys/publish"))
            .bearer_auth(API_KEY)
            .json(&json!({
                "recipient_label": label,
                "device_id": format!("device-{i}"),
                "key_id": "user-public-key-v2",
                "public_key": hex::encode([i as u8 + 1; 32]),
                "expires_at": "2099-01-01T00:00:00Z",
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 200, "{}", res.text().await.unwrap());
    }
    let res = http
        .post(format!("{base}/v1/keys/publish"))
        .bearer_auth(API_KEY)
        .json(&json!({
            "recipient_label": phones[0],
            "device_id": "device-x",
            "key_id": "k",
            "public_key": hex::encode([9u8; 32]),
            "expires_at": "2099-01-01T00:00:00Z",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    assert!(!res.text().await.unwrap().contains(&phones[0][1..]));
    let send = |key: String, phone: &str, i: usize| {
        let body = json!({
            "idempotency_key": key,
            "recipient": phone,
            "encrypted_payload_reference": blob["reference"],
            "payload_sha256": blob["sha256"],
            "encryption_metadata": {"mls_version": "1", "cipher": "XChaCha20-Poly1305", "key_id": "user-public-key-v2"},
            "metadata": {"tenant_id": TENANT, "message_type": "transactional", "correlation_id": format!("corr-{i}")},
            "ttl_seconds": 3600,
            "fallback": {"channel": "sms", "notice_template": "secure_message_waiting"}
        });
        let request = http
            .post(format!("{base}/v1/messages"))
            .bearer_auth(API_KEY)
            .json(&body);
        async move {
            let v: Value = request.send().await.unwrap().json().await.unwrap();
            v["message_id"].as_str().expect("accepted").to_owned()
        }
    };
    let mut ids = vec![];
    for (i, phone) in phones.iter().enumerate() {
        ids.push(send(format!("leak-{i}"), phone, i).await);
    }
    // The quiet tenant sends too: delivered like any other, never traced.
    let quiet_blob = upload(&http, &base, QUIET_KEY).await;
    let mut quiet_ids = vec![];
    for i in 0..3 {
        let v: Value = http
            .post(format!("{base}/v1/messages"))
            .bearer_auth(QUIET_KEY)
            .json(&json!({
                "idempotency_key": format!("quiet-{i}"),
                "recipient": format!("+4477009{:05}", 41_337 + i),
                "encrypted_payload_reference": quiet_blob["reference"],
                "payload_sha256": quiet_blob["sha256"],
                "encryption_metadata": {"mls_version": "1", "cipher": "XChaCha20-Poly1305", "key_id": "k1"},
                "metadata": {"tenant_id": QUIET, "message_type": "transactional"},
                "ttl_seconds": 3600
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        quiet_ids.push(v["message_id"].as_str().expect("accepted").to_owned());
    }
    let mut refused: Vec<String> = vec![];
    // Refused sends must not echo what they were given either. Each is a complete send, so
    // it gets past JSON parsing to the recipient check, and the answer says so.
    for (i, bad) in ["+04477009313", "447700931337", "+4477009313370000000"]
        .into_iter()
        .enumerate()
    {
        let body = json!({
            "idempotency_key": format!("bad-{i}"),
            "recipient": bad,
            "encrypted_payload_reference": blob["reference"],
            "payload_sha256": blob["sha256"],
            "encryption_metadata": {"mls_version": "1", "cipher": "XChaCha20-Poly1305", "key_id": "user-public-key-v2"},
            "metadata": {"tenant_id": TENANT, "message_type": "transactional"},
            "ttl_seconds": 3600
        });
        let res = http
            .post(format!("{base}/v1/messages"))
            .bearer_auth(API_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 400);
        let text = res.text().await.unwrap();
        assert!(
            text.contains("recipient must be an E.164 number"),
            "refused by the recipient check: {text}"
        );
        assert!(!text.contains(bad), "the error echoed the number: {text}");
        refused.push(bad.to_owned());
    }
    let wrong_key = http
        .post(format!("{base}/v1/messages"))
        .bearer_auth("sk_live_WRONG_LEAKCANARY")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_key.status().as_u16(), 401);

    // Wait until every message has settled (through retries, throttling and fallbacks). Then,
    // once the first access token has expired, send one more message so that the run fetches
    // a second token however quickly the first batch went through (a fast run can finish
    // inside one token's lifetime), and wait for that one too.
    let store = store_on(&client);
    let deadline = Instant::now() + Duration::from_secs(120);
    for round in 0..2 {
        if round == 1 {
            tokio::time::sleep(sim_cfg.token_ttl + Duration::from_millis(200)).await;
            // Its correlation id follows on from the first batch's (checked in the traces).
            let next = ids.len();
            ids.push(send("leak-late".into(), &phones[0], next).await);
        }
        settle(&store, &ids, &quiet_ids, deadline).await;
    }
    // Queue depth is polled every 5 s: scan /metrics once a poll has landed (a sample with
    // its labels, not only the HELP line).
    let metrics =
        sealpost_testkit::eventually(Duration::from_secs(30), "a queue-depth poll", || async {
            let text = http
                .get(format!("{base}/metrics"))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            text.contains("sealpost_queue_depth{").then_some(text)
        })
        .await
        .unwrap();
    // The directory published its epochs (its tables and events are scanned below).
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    sealpost_testkit::eventually(
        Duration::from_secs(30),
        "the key directory's epochs",
        || async {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM akd_values")
                .fetch_one(&pool)
                .await
                .ok()?;
            (n >= phones.len() as i64).then_some(())
        },
    )
    .await
    .unwrap();
    // The spans are exported in batches (every 5 s): wait for every message's accept and
    // delivery spans, and receipts for the displayed ones.
    let displayed: Vec<String> = {
        let mut out = vec![];
        for id in &ids {
            let m = store
                .load(&format!("{TENANT}.{id}"))
                .await
                .unwrap()
                .aggregate;
            if m.status == sealpost_domain::Status::Displayed {
                out.push(id.clone());
            }
        }
        out
    };
    assert!(!displayed.is_empty(), "no message was displayed");
    let spans = sealpost_testkit::eventually(Duration::from_secs(30), "the OTLP spans", || async {
        let spans = otlp.spans();
        let has = |id: &str, name: &str| {
            spans
                .iter()
                .any(|s| s.name == name && s.attribute("message_id") == Some(id))
        };
        (ids.iter().all(|id| has(id, "accept") && has(id, "deliver"))
            && displayed.iter().all(|id| has(id, "receipt")))
        .then_some(spans)
    })
    .await
    .unwrap();
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    traces_are_one_per_message(&spans, &ids, &displayed, &quiet_ids);
    let logs = std::fs::read_to_string(&log_path).unwrap();
    // Everything the key directory stored: its Postgres tables, and every key event and epoch
    // entry on SEALPOST_KEYS (subjects, headers and bodies).
    let mut stored = String::new();
    for table in ["akd_records", "akd_values", "key_epochs"] {
        let rows: Vec<String> = sqlx::query_scalar(&format!("SELECT t::text FROM {table} t"))
            .fetch_all(&pool)
            .await
            .unwrap();
        assert!(!rows.is_empty(), "{table} holds rows to scan");
        stored.extend(rows.into_iter().map(|r| r + "\n"));
    }
    let key_messages = {
        let js = async_nats::jetstream::new(client.clone());
        let stream = js.get_stream("SEALPOST_KEYS").await.unwrap();
        let mut out = String::new();
        let mut seq = 1;
        while let Ok(m) = stream.get_raw_message(seq).await {
            out.push_str(&format!(
                "{} {:?} {}\n",
                m.subject,
                m.headers,
                String::from_utf8_lossy(&m.payload)
            ));
            seq += 1;
        }
        assert!(seq > phones.len() as u64, "key events and epochs to scan");
        out
    };
    stored.push_str(&key_messages);

    // The run really logged and really exported something to scan.
    let lines: Vec<&str> = logs.lines().collect();
    assert!(
        lines.len() > 20,
        "too little logged to prove anything:\n{logs}"
    );
    for l in &lines {
        serde_json::from_str::<Value>(l).unwrap_or_else(|_| panic!("not a JSON log line: {l}"));
    }
    assert!(
        logs.contains(&ids[0]),
        "message ids are logged (they are not secret)"
    );
    assert!(
        metrics.contains("sealpost_ingress_requests_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sealpost_delivery_outcomes_total"),
        "{metrics}"
    );
    assert!(metrics.contains("sealpost_queue_depth{"), "{metrics}");

    let b64 = base64::engine::general_purpose::STANDARD;
    let mut canaries: Vec<(String, String)> = vec![
        (
            "ciphertext".into(),
            String::from_utf8_lossy(CIPHERTEXT).into_owned(),
        ),
        ("ciphertext (base64)".into(), b64.encode(CIPHERTEXT)),
        ("ciphertext (hex)".into(), hex::encode(CIPHERTEXT)),
        ("API key".into(), API_KEY.into()),
        ("wrong API key".into(), "sk_live_WRONG_LEAKCANARY".into()),
        ("S3 secret".into(), S3_SECRET.into()),
        (
            "RBM client token".into(),
            sim_cfg.client_token.expose().to_owned(),
        ),
        (
            "SMS API key".into(),
            sim_cfg.sms_api_key.expose().to_owned(),
        ),
        ("presigned URL signature".into(), "X-Amz-Signature".into()),
        ("presigned URL credential".into(), "X-Amz-Credential".into()),
        ("generic canary".into(), "LEAKCANARY".into()),
    ];
    let issued = sim.issued_tokens();
    assert!(
        issued.len() >= 2,
        "the run fetched {} RBM access tokens; it should have crossed an expiry",
        issued.len()
    );
    for t in issued {
        canaries.push(("RBM access token".into(), t));
    }
    canaries.push(("RBM access token prefix".into(), "ya29.".into()));
    // Every assertion starts with the base64url of `{"alg":"RS256",`.
    canaries.push(("RBM token assertion".into(), "eyJhbGciOiJSUzI1NiIs".into()));
    let pem: serde_json::Value =
        serde_json::from_str(sealpost_carrier_sim::TEST_SERVICE_ACCOUNT_JSON).unwrap();
    for line in pem["private_key"].as_str().unwrap().lines() {
        if line.len() >= 40 && !line.starts_with("-----") {
            canaries.push(("service account private key".into(), line.to_owned()));
        }
    }
    for p in &phones {
        canaries.push(("phone number".into(), p.clone()));
        canaries.push(("phone number without +".into(), p[1..].to_owned()));
        canaries.push(("phone number, url-encoded".into(), p.replace('+', "%2B")));
    }
    for r in &refused {
        canaries.push(("refused recipient".into(), r.clone()));
    }
    canaries.push(("VRF key".into(), hex::encode(VRF_SEED)));
    canaries.push(("label key".into(), hex::encode(LABEL_KEY)));
    canaries.push(("checkpoint key".into(), signer.secret()));
    // Device links went out (to the carrier and in SMS notices), and none reached a log line.
    let links = sealpost_keyformat::device_link::DeviceLinkKey::new(LINK_KEY);
    let linked = ids
        .iter()
        .filter(|id| sim.handset(id).is_some_and(|h| h.link.is_some()))
        .count();
    // The run really went through the carrier (and its receipts): a run in which every
    // submission was refused would scan a log with little in it.
    let stats = sim.stats();
    assert!(
        stats.accepted > 0 && stats.webhooks_sent > 0,
        "the carrier accepted nothing: {stats:?}"
    );
    assert!(linked > 0, "no message carried a device link");
    canaries.push(("device link key".into(), hex::encode(LINK_KEY)));
    canaries.push(("device link".into(), "/v1/d/".into()));
    for id in &ids {
        canaries.push(("device link token".into(), links.token(TENANT, id).unwrap()));
    }
    // Every exported span: names and attributes, and the raw OTLP bodies as sent.
    let mut exported = String::new();
    for s in &spans {
        exported.push_str(&format!("{} {:?}\n", s.name, s.attributes));
    }
    for body in otlp.raw_bodies() {
        exported.push_str(&String::from_utf8_lossy(&body));
        exported.push('\n');
    }
    for (what, needle) in &canaries {
        if what.starts_with("phone") || what.ends_with(" key") && what != "API key" {
            assert!(
                !stored.contains(needle.as_str()),
                "the key directory's tables or stream hold the {what}"
            );
        }
        assert!(!logs.contains(needle.as_str()), "the log leaks the {what}");
        assert!(
            !exported.contains(needle.as_str()),
            "an exported span leaks the {what}"
        );
        assert!(
            !metrics.contains(needle.as_str()),
            "/metrics leaks the {what}"
        );
    }
    eprintln!(
        "scanned {} log lines, {} bytes of /metrics, {} exported spans ({} bytes) and {} bytes of the key directory's tables and stream for {} canaries: none found",
        lines.len(),
        metrics.len(),
        spans.len(),
        exported.len(),
        stored.len(),
        canaries.len()
    );
}

/// Issue 12, OTLP traces: one message's spans, from the gateway through delivery to receipts,
/// share one trace id, the one derived from tenant and message id; they carry the message and
/// correlation ids; the quiet tenant (ratio 0.0) has no span at all.
fn traces_are_one_per_message(
    spans: &[sealpost_testkit::otlp::ReceivedSpan],
    ids: &[String],
    displayed: &[String],
    quiet_ids: &[String],
) {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    for id in ids {
        let (trace, root) = sealpost_telemetry::traces::message_trace(TENANT, id);
        let mine: Vec<_> = spans
            .iter()
            .filter(|s| s.attribute("message_id") == Some(id.as_str()))
            .collect();
        for s in &mine {
            assert_eq!(
                s.trace_id,
                hex(&trace),
                "{} of {id} in another trace",
                s.name
            );
            assert_eq!(s.parent_span_id, hex(&root), "{} of {id}", s.name);
            assert_eq!(s.service_name.as_deref(), Some("sealpost"));
            assert_eq!(s.attribute("tenant"), Some(TENANT));
        }
        let accept = mine.iter().find(|s| s.name == "accept").unwrap();
        let i: usize = id_index(ids, id);
        assert_eq!(
            accept.attribute("correlation_id"),
            Some(format!("corr-{i}").as_str()),
            "the correlation id is an attribute"
        );
        let deliver = mine.iter().find(|s| s.name == "deliver").unwrap();
        assert!(deliver.attribute("outcome").is_some(), "{deliver:?}");
    }
    for id in displayed {
        let names: std::collections::BTreeSet<&str> = spans
            .iter()
            .filter(|s| s.attribute("message_id") == Some(id.as_str()))
            .map(|s| s.name.as_str())
            .collect();
        assert!(
            ["accept", "deliver", "receipt"]
                .iter()
                .all(|n| names.contains(n)),
            "{id}: {names:?}"
        );
    }
    assert!(
        !spans.iter().any(|s| s.attribute("tenant") == Some(QUIET)
            || quiet_ids
                .iter()
                .any(|q| s.attribute("message_id") == Some(q.as_str()))),
        "the quiet tenant (trace_sample_ratio 0.0) was traced"
    );
    // Spans that belong to no message are not exported.
    assert!(spans.iter().all(|s| s.attribute("message_id").is_some()));
}

/// Uploads the ciphertext canary as the tenant of `api_key`; the upload's answer.
/// Waits until every message named has settled (through retries, throttling and fallbacks).
async fn settle(
    store: &sealpost_eventstore::JetStreamEventStore<sealpost_domain::Message>,
    ids: &[String],
    quiet_ids: &[String],
    deadline: Instant,
) {
    loop {
        let mut open = 0;
        let all = ids
            .iter()
            .map(|id| (TENANT, id))
            .chain(quiet_ids.iter().map(|id| (QUIET, id)));
        for (tenant, id) in all {
            let m = store
                .load(&format!("{tenant}.{id}"))
                .await
                .unwrap()
                .aggregate;
            if !m.status.is_settled() {
                open += 1;
            }
        }
        if open == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{open} messages still open");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn upload(http: &reqwest::Client, base: &str, api_key: &str) -> Value {
    http.post(format!("{base}/v1/blobs"))
        .bearer_auth(api_key)
        .body(CIPHERTEXT.to_vec())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn id_index(ids: &[String], id: &str) -> usize {
    ids.iter().position(|x| x == id).unwrap()
}

/// Starts `sealpost serve --roles <roles>` with `config`, logging to `log_path`, and waits until
/// its gateway on `port` answers.
async fn serve_logging(
    roles: &str,
    config: &std::path::Path,
    db_url: &str,
    nats_url: String,
    log_path: &std::path::Path,
    port: u16,
) -> tokio::process::Child {
    let child = tokio::process::Command::new(crate::support::sealpost_binary())
        .args(["serve", "--roles", roles])
        .env("SEALPOST_CONFIG", config)
        .env("DATABASE_URL", db_url)
        .env("SEALPOST_KEYS_EPOCH_INTERVAL_MS", "100")
        .env("SEALPOST_NATS_URL", nats_url)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log_path).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    sealpost_testkit::eventually(Duration::from_secs(30), "the gateway", || async {
        http.get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .ok()
            .map(|_| ())
    })
    .await
    .unwrap();
    child
}

/// A plaintext the SDK seals: it must appear nowhere the platform keeps or emits anything.
const PLAINTEXT_CANARY: &str = "PLAINTEXT-CANARY-4e1f-your-voucher-is-7731";

#[tokio::test]
async fn a_plaintext_sealed_with_the_sdk_appears_in_no_object_event_table_log_line_or_metric() {
    use sealpost_sdk::{Device, HttpApi, KeyDirectory, Keyring, Outgoing, Platform, Sender, Trust};
    let env = crate::support::Env::start().await;
    let sim_cfg = SimConfig {
        receipt_delay: Duration::from_millis(10),
        ..SimConfig::default()
    };
    let sim = CarrierSim::start("127.0.0.1:0".parse().unwrap(), sim_cfg.clone())
        .await
        .unwrap();
    let port = sealpost_testkit::free_port().unwrap();
    sim.set_webhook_url(Some(format!("http://127.0.0.1:{port}/v1/receipts/rbm")));
    let dir = tempfile::tempdir().unwrap();
    let db = sealpost_testkit::PgDatabase::create().await.unwrap();
    let (signer, _) = sealpost_tlog::LogSigner::generate("sealpost/keys/leak-co").unwrap();
    let config = dir.path().join("sealpost.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nhttp_listen = \"127.0.0.1:{port}\"\n[s3]\nembedded_dir = \"{s3dir}\"\n\
             [carriers.rbm]\nbase_url = \"{sim}\"\nagent_id = \"{agent}\"\nbearer_token = \"{bearer}\"\n\
             client_token = \"{client}\"\n[carriers.sms]\nbase_url = \"{sim}\"\napi_key = \"{sms}\"\n\
             [log]\nformat = \"json\"\nfilter = \"debug,h2=info,hyper=info,tower=info,sqlx=info,async_nats=info,aws=info,rustls=info\"\n\
             [[tenants]]\nid = \"{TENANT}\"\napi_key_sha256 = [\"{hash}\"]\n\
             [tenants.keys]\nvrf_seed = \"{vrf}\"\ncheckpoint_key = \"{checkpoint}\"\nlabel_key = \"{label_key}\"\n",
            s3dir = dir.path().join("s3").display(),
            sim = sim.base_url(),
            agent = sim_cfg.agent_id,
            bearer = sim_cfg.bearer_token.expose(),
            client = sim_cfg.client_token.expose(),
            sms = sim_cfg.sms_api_key.expose(),
            hash = sealpost_gateway::hash_api_key(API_KEY),
            vrf = hex::encode(VRF_SEED),
            checkpoint = signer.secret(),
            label_key = hex::encode(LABEL_KEY),
        ),
    )
    .unwrap();
    let log_path = dir.path().join("sealpost.log");
    let mut child = serve_logging(
        "gateway,delivery,receipts,expiry,fallback,keys,projector",
        &config,
        &db.url,
        env.server.url(),
        &log_path,
        port,
    )
    .await;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();

    // The whole flow: a device publishes its key; the sender verifies, seals, uploads and
    // sends; the carrier delivers; the device fetches from the link and opens.
    const PHONE: &str = "+447700931999";
    let label = sealpost_keyformat::RecipientLabel::of(
        &sealpost_keyformat::LabelKey::new(LABEL_KEY),
        TENANT,
        PHONE,
    )
    .unwrap()
    .to_hex();
    let platform =
        || Platform::new(TENANT, Some(HttpApi::new(&base, API_KEY).unwrap()), None).unwrap();
    let device = Device::new(Keyring::generate(
        TENANT,
        &label,
        "phone",
        "phone-k1",
        time::Duration::days(30),
        time::OffsetDateTime::now_utc(),
    ));
    platform()
        .keys("publish", &device.publish_request().unwrap())
        .await
        .unwrap();
    let info = KeyDirectory::info(&platform()).await.unwrap();
    let sender = Sender::new(
        KeyDirectory::open(platform(), Trust::of(&info).unwrap(), None).unwrap(),
        sealpost_keyformat::LabelKey::new(LABEL_KEY),
        None,
    );
    let outgoing = Outgoing {
        recipient: PHONE.into(),
        idempotency_key: "canary-1".into(),
        message_type: "transactional".into(),
        ttl_seconds: Some(3600),
        correlation_id: Some("corr-canary".into()),
        fallback: None,
    };
    let sent = sealpost_testkit::eventually(Duration::from_secs(20), "a sealed send", || async {
        sender
            .send(&outgoing, PLAINTEXT_CANARY.as_bytes())
            .await
            .ok()
    })
    .await
    .unwrap();
    let got = sealpost_testkit::eventually(Duration::from_secs(20), "the delivery", || async {
        sim.handset(&sent.message_id)
    })
    .await
    .unwrap();
    let sealed = sealpost_sdk::device::fetch(&got.file_url).await.unwrap();
    let opened = device
        .open_checked(
            &sealed,
            &got.sha256,
            &sent.message_id,
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
    assert_eq!(
        opened.as_slice(),
        PLAINTEXT_CANARY.as_bytes(),
        "the flow ran"
    );

    // Settled and projected.
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    sealpost_testkit::eventually(Duration::from_secs(30), "the projected row", || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM messages WHERE delivered_at IS NOT NULL")
                .fetch_one(&pool)
                .await
                .ok()?;
        (n >= 1).then_some(())
    })
    .await
    .unwrap();
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let logs = std::fs::read(&log_path).unwrap();

    // Every S3 object, byte for byte.
    let mut objects = Vec::new();
    let mut pending = vec![dir.path().join("s3")];
    while let Some(d) = pending.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                objects.push(std::fs::read(&path).unwrap());
            }
        }
    }
    assert!(
        objects.iter().any(|o| o.as_slice() == sealed.as_slice()),
        "the envelope is stored"
    );
    // Every message of every stream: subjects, headers and bodies.
    let js = async_nats::jetstream::new(env.client.clone());
    let names: Vec<String> = futures::StreamExt::collect::<Vec<_>>(js.stream_names())
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let mut events = Vec::new();
    for name in &names {
        let stream = js.get_stream(name).await.unwrap();
        let mut seq = 1;
        let last = stream.cached_info().state.last_sequence;
        while seq <= last {
            if let Ok(m) = stream.get_raw_message(seq).await {
                events.extend_from_slice(format!("{} {:?} ", m.subject, m.headers).as_bytes());
                events.extend_from_slice(&m.payload);
            }
            seq += 1;
        }
    }
    assert!(names.iter().any(|n| n == "SEALPOST_EVENTS"), "{names:?}");
    // Every row of every table.
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut rows = Vec::new();
    for t in &tables {
        let r: Vec<String> = sqlx::query_scalar(&format!("SELECT t::text FROM \"{t}\" t"))
            .fetch_all(&pool)
            .await
            .unwrap();
        rows.extend(r.into_iter().flat_map(|r| r.into_bytes()));
    }
    assert!(tables.iter().any(|t| t == "messages"), "{tables:?}");

    let b64 = base64::engine::general_purpose::STANDARD;
    let canaries = [
        PLAINTEXT_CANARY.to_owned(),
        hex::encode(PLAINTEXT_CANARY),
        b64.encode(PLAINTEXT_CANARY),
        "PLAINTEXT-CANARY".to_owned(),
    ];
    let places: [(&str, &[u8]); 5] = [
        ("S3 objects", &objects.concat()),
        ("stream messages", &events),
        ("Postgres tables", &rows),
        ("the log", &logs),
        ("/metrics", metrics.as_bytes()),
    ];
    for (place, bytes) in places {
        assert!(!bytes.is_empty(), "{place}: nothing to scan");
        for c in &canaries {
            assert!(
                !bytes.windows(c.len()).any(|w| w == c.as_bytes()),
                "{place} hold the plaintext ({c})"
            );
        }
    }
    eprintln!(
        "scanned {} S3 objects, {} streams, {} tables, {} bytes of logs and {} bytes of /metrics: no plaintext",
        objects.len(),
        names.len(),
        tables.len(),
        logs.len(),
        metrics.len()
    );
}
