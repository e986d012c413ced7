//! The ingress end to end: the `sealpost` NATS service and the HTTP API on a real nats-server and
//! the embedded S3 endpoint. Validation, idempotency under concurrency, limits and tenancy.

// Test fixtures: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use sealpost_blobstore::{BlobStore, EmbeddedS3, StoredBlob};
use sealpost_domain::{Message, TenantId};
use sealpost_gateway::{hash_api_key, TenantConfig};
use serde_json::{json, Value};

use crate::support::Env;
// Older call sites name the binary through this module.
pub use crate::support::sealpost_binary;

pub const ACME: &str = "acme-corp";
pub const BETA: &str = "beta-co";

pub fn tenant_config(id: &str) -> TenantConfig {
    TenantConfig {
        id: id.into(),
        api_key_sha256: vec![hash_api_key(&format!("{id}-key"))],
        nats_nkey: None,
        rate_per_sec: 1e6,
        burst: 1_000_000,
        daily_quota: None,
        keys: None,
        trace_sample_ratio: None,
    }
}

/// The gateway role of a real Sealpost process, started with `sealpost::App::start`.
pub struct Ingress {
    pub env: Env,
    pub running: sealpost::Running,
    /// The embedded S3 endpoint's objects (`<dir>/<bucket>/<key>`).
    pub s3_dir: tempfile::TempDir,
    pub http: reqwest::Client,
}

impl Ingress {
    pub async fn start(tenants: Vec<TenantConfig>) -> Ingress {
        let env = Env::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = crate::support::app_config(&env.server.url(), dir.path(), tenants);
        let running = sealpost::App::start(cfg, &[sealpost::Role::Gateway], std::future::pending())
            .await
            .expect("the gateway starts");
        Ingress {
            env,
            running,
            s3_dir: dir,
            http: reqwest::Client::new(),
        }
    }

    pub fn blobs(&self) -> &BlobStore {
        self.running
            .blob_store()
            .expect("the gateway has a blob store")
    }

    pub async fn default() -> Ingress {
        Self::start(vec![tenant_config(ACME), tenant_config(BETA)]).await
    }

    pub async fn upload(&self, tenant: &str, bytes: &[u8]) -> StoredBlob {
        let t = TenantId::new(tenant).unwrap();
        self.blobs()
            .put_stream(
                &t,
                futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(
                    bytes,
                ))]),
                1 << 20,
            )
            .await
            .expect("upload")
    }

    pub fn url(&self, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.running.http_addr().expect("the gateway listens")
        )
    }

    /// A NATS request; returns (error code header if any, JSON body).
    pub async fn nats(&self, subject: &str, body: Vec<u8>) -> (Option<String>, Value) {
        let reply = self
            .env
            .client
            .request(subject.to_owned(), body.into())
            .await
            .expect("the service answers");
        let code = reply
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Service-Error-Code"))
            .map(|v| v.as_str().to_owned());
        let v = serde_json::from_slice(&reply.payload).expect("JSON reply");
        (code, v)
    }

    pub async fn post(
        &self,
        path: &str,
        key: Option<&str>,
        body: Vec<u8>,
    ) -> (u16, HeaderMapLite, Value) {
        let mut req = self.http.post(self.url(path)).body(body);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let res = req.send().await.expect("HTTP answers");
        let status = res.status().as_u16();
        let headers = HeaderMapLite {
            retry_after: res
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        };
        let v = res.json().await.unwrap_or(Value::Null);
        (status, headers, v)
    }

    pub async fn events(&self) -> u64 {
        let js = async_nats::jetstream::new(self.env.client.clone());
        let mut s = js.get_stream("SEALPOST_EVENTS").await.expect("stream");
        s.info().await.expect("info").state.messages
    }
}

#[derive(Debug)]
pub struct HeaderMapLite {
    pub retry_after: Option<String>,
}

pub fn send_body(tenant: &str, key: &str, blob: &StoredBlob) -> Value {
    json!({
        "idempotency_key": key,
        "recipient": "+15551234567",
        "encrypted_payload_reference": blob.reference,
        "payload_sha256": blob.sha256.as_str(),
        "encryption_metadata": {"mls_version": "1", "cipher": "XChaCha20-Poly1305", "key_id": "user-public-key-v2"},
        "metadata": {"tenant_id": tenant, "message_type": "transactional", "correlation_id": "txn-0001"},
        "ttl_seconds": 3600,
        "fallback": {"channel": "sms", "notice_template": "secure_message_waiting"}
    })
}

pub fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

#[tokio::test]
async fn a_send_over_nats_and_one_over_http_are_accepted_and_their_status_answers() {
    let ing = Ingress::default().await;
    let blob = ing.upload(ACME, b"sealed bytes").await;

    let (err, reply) = ing
        .nats(
            &format!("sealpost.cmd.{ACME}.send"),
            bytes(&send_body(ACME, "k-nats", &blob)),
        )
        .await;
    assert_eq!(err, None, "{reply}");
    assert_eq!(reply["status"], "accepted");
    let id = reply["message_id"].as_str().unwrap().to_owned();

    let (status, _, http_reply) = ing
        .post(
            "/v1/messages",
            Some("acme-corp-key"),
            bytes(&send_body(ACME, "k-http", &blob)),
        )
        .await;
    assert_eq!(status, 202, "{http_reply}");
    assert_eq!(http_reply["status"], "accepted");
    assert_eq!(ing.events().await, 2, "one accepted event per send");

    let (err, row) = ing
        .nats(
            &format!("sealpost.qry.{ACME}.status"),
            bytes(&json!({"message_id": id})),
        )
        .await;
    assert_eq!(err, None, "{row}");
    assert_eq!(row["status"], "queued");
    assert_eq!(row["payload_sha256"], blob.sha256.as_str());
    assert_eq!(
        row["recipient_masked"], "+*********67",
        "the number is masked"
    );

    let res = ing
        .http
        .get(ing.url(&format!("/v1/messages/{id}")))
        .bearer_auth("acme-corp-key")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let row: Value = res.json().await.unwrap();
    assert_eq!(row["message_id"], id.as_str());

    // Another tenant cannot see it.
    let res = ing
        .http
        .get(ing.url(&format!("/v1/messages/{id}")))
        .bearer_auth("beta-co-key")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 404);

    // Cancel before submission works once; the second cancel is a no-op with the same status.
    let (err, c) = ing
        .nats(
            &format!("sealpost.cmd.{ACME}.cancel"),
            bytes(&json!({"message_id": id})),
        )
        .await;
    assert_eq!(err, None, "{c}");
    assert_eq!(c["status"], "cancelled");
    let events = ing.events().await;
    let (err, again) = ing
        .nats(
            &format!("sealpost.cmd.{ACME}.cancel"),
            bytes(&json!({"message_id": id})),
        )
        .await;
    assert_eq!(err, None, "{again}");
    assert_eq!(again["status"], "cancelled", "{again}");
    assert_eq!(
        ing.events().await,
        events,
        "the second cancel wrote nothing"
    );
    for probe in ["/healthz", "/readyz"] {
        let res = ing.http.get(ing.url(probe)).send().await.unwrap();
        assert_eq!(res.status().as_u16(), 200, "{probe}");
    }
}

/// Every rule of the contract, over both transports: its code, a message that says what to fix,
/// and nothing stored.
#[tokio::test]
async fn every_invalid_send_gets_its_code_and_nothing_is_stored() {
    let ing = Ingress::default().await;
    let blob = ing.upload(ACME, b"sealed bytes").await;
    let beta_blob = ing.upload(BETA, b"beta's bytes").await;
    let good = send_body(ACME, "k", &blob);
    let with = |path: &[&str], v: Value| {
        let mut b = good.clone();
        let mut cur = &mut b;
        for p in &path[..path.len() - 1] {
            cur = cur.get_mut(*p).unwrap();
        }
        cur[path[path.len() - 1]] = v;
        bytes(&b)
    };
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("recipient");
    let missing_object = format!("s3://sealpost/tenants/{ACME}/nope.enc");
    let cases: Vec<(&str, Vec<u8>, &str, u16, &str)> = vec![
        (
            "malformed JSON",
            b"{\"idempotency_key\": ".to_vec(),
            "invalid_request",
            400,
            "JSON",
        ),
        (
            "missing field",
            bytes(&missing),
            "invalid_request",
            400,
            "recipient",
        ),
        (
            "over-long field",
            with(&["idempotency_key"], json!("k".repeat(200))),
            "invalid_request",
            400,
            "idempotency_key",
        ),
        (
            "non-E.164 recipient",
            with(&["recipient"], json!("0044 20 7946 0018")),
            "invalid_request",
            400,
            "E.164",
        ),
        (
            "tenant mismatch",
            with(&["metadata", "tenant_id"], json!(BETA)),
            "tenant_mismatch",
            403,
            "tenant",
        ),
        (
            "reference in another tenant's prefix",
            with(&["encrypted_payload_reference"], json!(beta_blob.reference)),
            "tenant_mismatch",
            403,
            "prefix",
        ),
        (
            "reference in another bucket",
            with(
                &["encrypted_payload_reference"],
                json!(format!("s3://elsewhere/tenants/{ACME}/x.enc")),
            ),
            "invalid_request",
            400,
            "bucket",
        ),
        (
            "missing object",
            with(&["encrypted_payload_reference"], json!(missing_object)),
            "payload_not_found",
            422,
            "upload",
        ),
        (
            "digest mismatch",
            with(&["payload_sha256"], json!("0".repeat(64))),
            "digest_mismatch",
            422,
            "digest",
        ),
        (
            "oversize body",
            with(&["metadata", "correlation_id"], json!("x".repeat(20_000))),
            "invalid_request",
            413,
            "larger than",
        ),
    ];
    for (name, body, code, http_status, word) in &cases {
        let (header, reply) = ing
            .nats(&format!("sealpost.cmd.{ACME}.send"), body.clone())
            .await;
        assert_eq!(reply["error"]["code"], *code, "NATS {name}: {reply}");
        assert_eq!(
            header.as_deref(),
            Some(http_status.to_string().as_str()),
            "NATS {name}"
        );
        let msg = reply["error"]["message"].as_str().unwrap();
        assert!(
            msg.to_lowercase().contains(&word.to_lowercase()),
            "NATS {name}: '{msg}' lacks '{word}'"
        );
        assert!(
            !msg.contains("7946") && !msg.contains("4567"),
            "{name}: number echoed"
        );

        let (status, _, reply) = ing
            .post("/v1/messages", Some("acme-corp-key"), body.clone())
            .await;
        assert_eq!(status, *http_status, "HTTP {name}: {reply}");
        if *http_status != 413 {
            assert_eq!(reply["error"]["code"], *code, "HTTP {name}: {reply}");
        }
    }

    // Unknown tenant (NATS subject) and bad or missing credentials (HTTP).
    let (header, reply) = ing
        .nats(
            "sealpost.cmd.nobody.send",
            bytes(&send_body("nobody", "k", &blob)),
        )
        .await;
    assert_eq!(reply["error"]["code"], "unauthorized", "{reply}");
    assert_eq!(header.as_deref(), Some("401"));
    for key in [Some("wrong-key"), None] {
        let (status, _, reply) = ing.post("/v1/messages", key, bytes(&good)).await;
        assert_eq!(status, 401, "{key:?}");
        assert_eq!(reply["error"]["code"], "unauthorized");
    }

    assert_eq!(
        ing.events().await,
        0,
        "no event was written by any refused send"
    );
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after_and_quotas_count_only_accepted_sends() {
    // One token per 20 s: however slow this machine is, no token comes back while the test
    // sends its five requests.
    let mut limited = tenant_config(ACME);
    limited.rate_per_sec = 0.05;
    limited.burst = 3;
    let mut quota = tenant_config(BETA);
    quota.daily_quota = Some(2);
    let ing = Ingress::start(vec![limited, quota]).await;
    let blob = ing.upload(ACME, b"a").await;
    let beta_blob = ing.upload(BETA, b"b").await;

    for i in 0..3 {
        let (status, _, r) = ing
            .post(
                "/v1/messages",
                Some("acme-corp-key"),
                bytes(&send_body(ACME, &format!("r{i}"), &blob)),
            )
            .await;
        assert_eq!(status, 202, "{r}");
    }
    let (status, headers, r) = ing
        .post(
            "/v1/messages",
            Some("acme-corp-key"),
            bytes(&send_body(ACME, "r3", &blob)),
        )
        .await;
    assert_eq!(status, 429);
    assert_eq!(r["error"]["code"], "rate_limited");
    let ms = r["error"]["retry_after_ms"]
        .as_u64()
        .expect("retry_after_ms");
    assert!(ms > 0 && ms <= 20_000, "{ms}");
    // Whole seconds, rounded up, so a client never retries early.
    assert_eq!(
        headers.retry_after.as_deref(),
        Some(ms.div_ceil(1000).to_string().as_str())
    );
    let (_, r) = ing
        .nats(
            &format!("sealpost.cmd.{ACME}.send"),
            bytes(&send_body(ACME, "r4", &blob)),
        )
        .await;
    assert_eq!(r["error"]["code"], "rate_limited");

    // Quota 2: a duplicate does not use it up; the third new message is refused.
    let subject = format!("sealpost.cmd.{BETA}.send");
    for (key, expect) in [("q1", "accepted"), ("q1", "duplicate"), ("q2", "accepted")] {
        let (_, r) = ing
            .nats(&subject, bytes(&send_body(BETA, key, &beta_blob)))
            .await;
        assert_eq!(r["status"], expect, "{key}: {r}");
    }
    let (_, r) = ing
        .nats(&subject, bytes(&send_body(BETA, "q3", &beta_blob)))
        .await;
    assert_eq!(r["error"]["code"], "quota_exceeded", "{r}");
    assert_eq!(ing.events().await, 5);
}

/// 1,000 concurrent sends, 20% reusing a key: half of those with the same payload, half with
/// another. Exactly one `accepted` event per key; duplicates answer `duplicate` with the
/// original id; the others `idempotency_conflict`.
async fn idempotency_under_concurrency(over_http: bool) {
    let ing = Arc::new(Ingress::default().await);
    let a = ing.upload(ACME, b"payload A").await;
    let b = ing.upload(ACME, b"payload B").await;
    const UNIQUE: usize = 800;
    // (key, blob): 800 unique keys; 100 resends of key i with the same payload; 100 with another.
    let mut sends: Vec<(String, StoredBlob)> = (0..UNIQUE)
        .map(|i| (format!("key-{i}"), a.clone()))
        .collect();
    sends.extend((0..100).map(|i| (format!("key-{i}"), a.clone())));
    sends.extend((100..200).map(|i| (format!("key-{i}"), b.clone())));
    // Interleave so the reuses race with the originals.
    sends.sort_by_key(|(k, blob)| (k.clone(), blob.sha256.as_str().to_owned()));

    let replies: Vec<(String, String, Value)> = futures::stream::iter(sends)
        .map(|(key, blob)| {
            let ing = ing.clone();
            async move {
                let body = bytes(&send_body(ACME, &key, &blob));
                let reply = if over_http {
                    ing.post("/v1/messages", Some("acme-corp-key"), body)
                        .await
                        .2
                } else {
                    ing.nats(&format!("sealpost.cmd.{ACME}.send"), body).await.1
                };
                (key, blob.sha256.as_str().to_owned(), reply)
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    assert_eq!(replies.len(), 1000);

    let mut by_key: HashMap<String, Vec<(String, Value)>> = HashMap::new();
    for (key, sha, reply) in replies {
        by_key.entry(key).or_default().push((sha, reply));
    }
    assert_eq!(by_key.len(), UNIQUE);
    let store = ing.env.store();
    let (mut duplicates, mut conflicts) = (0, 0);
    for (key, answers) in &by_key {
        let accepted: Vec<_> = answers
            .iter()
            .filter(|(_, r)| r["status"] == "accepted")
            .collect();
        assert_eq!(
            accepted.len(),
            1,
            "{key}: exactly one accepted: {answers:?}"
        );
        let (winner_sha, winner) = accepted[0];
        let id = winner["message_id"].as_str().unwrap();
        for (sha, r) in answers {
            if r["status"] == "duplicate" {
                assert_eq!(
                    sha, winner_sha,
                    "{key}: a duplicate carries the same payload"
                );
                assert_eq!(r["message_id"], id, "{key}: the original id");
                duplicates += 1;
            } else if r.get("error").is_some() {
                assert_eq!(r["error"]["code"], "idempotency_conflict", "{key}: {r}");
                assert_ne!(sha, winner_sha);
                conflicts += 1;
            }
        }
        let raw = store.load_raw(&format!("{ACME}.{id}")).await.expect("load");
        assert_eq!(raw.len(), 1, "{key}: one event");
        assert_eq!(raw[0].event_type(), "accepted");
        let body: Value = serde_json::from_slice(&raw[0].body).unwrap();
        assert_eq!(body["payload_sha256"], winner_sha.as_str());
    }
    assert_eq!(duplicates, 100);
    assert_eq!(conflicts, 100);
    assert_eq!(ing.events().await, UNIQUE as u64);
}

#[tokio::test]
async fn a_thousand_concurrent_sends_with_reused_keys_over_nats_accept_each_key_once() {
    idempotency_under_concurrency(false).await;
}

#[tokio::test]
async fn a_thousand_concurrent_sends_with_reused_keys_over_http_accept_each_key_once() {
    idempotency_under_concurrency(true).await;
}

#[tokio::test]
async fn blobs_upload_over_http_and_presigned_urls_land_in_the_tenant_prefix() {
    let ing = Ingress::default().await;
    let ciphertext = vec![7u8; 100_000];
    let (status, _, stored) = ing
        .post("/v1/blobs", Some("acme-corp-key"), ciphertext.clone())
        .await;
    assert_eq!(status, 201, "{stored}");
    assert_eq!(stored["size"], 100_000);
    assert_eq!(
        stored["sha256"],
        sealpost_domain::Sha256Hex::of(&ciphertext).as_str()
    );
    let reference = stored["reference"].as_str().unwrap();
    assert!(
        reference.starts_with(&format!("s3://sealpost/tenants/{ACME}/")),
        "{reference}"
    );

    // The uploaded blob is known: a send needs no digest and no S3 round trip. To show it, the
    // object is removed behind the gateway's back, so any HEAD would now fail.
    let object_path = |reference: &str| {
        ing.s3_dir
            .path()
            .join(reference.strip_prefix("s3://").unwrap())
    };
    std::fs::remove_file(object_path(reference)).expect("the stored object");
    let send = |key: &str, reference: &str| {
        json!({
            "idempotency_key": key,
            "recipient": "+15551234567",
            "encrypted_payload_reference": reference,
            "encryption_metadata": {"mls_version": "1", "cipher": "c", "key_id": "k"},
            "metadata": {"tenant_id": ACME, "message_type": "promotional"}
        })
    };
    let (status, _, r) = ing
        .post(
            "/v1/messages",
            Some("acme-corp-key"),
            bytes(&send("after-upload", reference)),
        )
        .await;
    assert_eq!(status, 202, "{r}");
    // The control: a blob the gateway did not upload is looked up in S3, and the same removal
    // makes that send fail.
    let unknown = ing
        .blobs()
        .put_stream(
            &TenantId::new(ACME).unwrap(),
            futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"c"))]),
            1024,
        )
        .await
        .expect("upload");
    std::fs::remove_file(object_path(&unknown.reference)).expect("the stored object");
    let (status, _, r) = ing
        .post(
            "/v1/messages",
            Some("acme-corp-key"),
            bytes(&send("not-uploaded-here", &unknown.reference)),
        )
        .await;
    assert_eq!(r["error"]["code"], "payload_not_found", "{r}");
    assert_eq!(status, 422, "{r}");

    let (status, _, p) = ing
        .post("/v1/blobs/presign", Some("beta-co-key"), bytes(&json!({})))
        .await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["method"], "PUT");
    assert!(p["reference"]
        .as_str()
        .unwrap()
        .contains(&format!("tenants/{BETA}/")));
    let put = ing
        .http
        .put(p["url"].as_str().unwrap())
        .body(b"presigned ciphertext".to_vec())
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    // Sent by beta with the presigned reference: verified by HEAD.
    let send = json!({
        "idempotency_key": "presigned",
        "recipient": "+15551234567",
        "encrypted_payload_reference": p["reference"],
        "payload_sha256": sealpost_domain::Sha256Hex::of(b"presigned ciphertext").as_str(),
        "encryption_metadata": {"mls_version": "1", "cipher": "c", "key_id": "k"},
        "metadata": {"tenant_id": BETA, "message_type": "transactional"}
    });
    let (status, _, r) = ing
        .post("/v1/messages", Some("beta-co-key"), bytes(&send))
        .await;
    assert_eq!(status, 202, "{r}");

    let (status, _, r) = ing.post("/v1/blobs", Some("nope"), b"x".to_vec()).await;
    assert_eq!(status, 401, "{r}");
    let _ = Message::default();
}

#[tokio::test]
async fn killing_the_gateway_mid_stream_loses_no_answered_send_and_accepts_each_once() {
    let env = Env::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = EmbeddedS3::start(dir.path(), "127.0.0.1:0".parse().unwrap(), "ak", "sk")
        .await
        .expect("embedded s3");
    let blobs = BlobStore::new(&s3.config("sealpost")).expect("blob store");
    blobs.ensure_bucket().await.expect("bucket");
    let blob = blobs
        .put_stream(
            &TenantId::new(ACME).unwrap(),
            futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"c"))]),
            1024,
        )
        .await
        .expect("upload");
    let config = dir.path().join("sealpost.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nhttp_listen = \"127.0.0.1:0\"\n[s3]\nendpoint = \"{}\"\naccess_key_id = \"ak\"\nsecret_access_key = \"sk\"\n\n[[tenants]]\nid = \"{ACME}\"\nrate_per_sec = 100000.0\nburst = 100000\n",
            s3.endpoint()
        ),
    )
    .unwrap();
    let mut gw = crate::support::ServeProcess::new("gateway", config, env.server.url());
    gw.spawn();

    const N: usize = 1500;
    let client = env.client.clone();
    let sends = tokio::spawn(async move {
        futures::stream::iter(0..N)
            .map(|i| {
                let client = client.clone();
                let body = bytes(&send_body(ACME, &format!("crash-{i}"), &blob));
                async move {
                    // A steady stream rather than one burst, so the kills land mid-stream.
                    tokio::time::sleep(Duration::from_millis(15)).await;
                    let mut tries = 0;
                    loop {
                        tries += 1;
                        let req = client
                            .request(format!("sealpost.cmd.{ACME}.send"), body.clone().into());
                        // No responder (gateway down) or no answer (killed mid-request):
                        // retry the same send with the same key.
                        if let Ok(Ok(reply)) =
                            tokio::time::timeout(Duration::from_secs(2), req).await
                        {
                            let v: Value = serde_json::from_slice(&reply.payload).unwrap();
                            if v.get("error").is_none() {
                                return (i, v, tries);
                            }
                            assert_eq!(v["error"]["code"], "unavailable", "{v}");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await
    });

    let mut kills = 0;
    while !sends.is_finished() && kills < 10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        gw.kill9().await;
        kills += 1;
        gw.spawn();
    }
    assert!(kills >= 3, "the stream outlived at least three kills");
    let answers = tokio::time::timeout(Duration::from_secs(120), sends)
        .await
        .expect("every send is answered in time")
        .expect("sender task");
    gw.kill9().await;

    assert_eq!(answers.len(), N);
    let retried = answers.iter().filter(|(_, _, tries)| *tries > 1).count();
    let duplicates = answers
        .iter()
        .filter(|(_, v, _)| v["status"] == "duplicate")
        .count();
    eprintln!(
        "{} gateway processes; {retried} sends retried; {duplicates} answered duplicate",
        gw.spawned
    );
    assert!(retried > 0, "the kills really interrupted sends");
    let store = env.store();
    for (i, v, _) in &answers {
        let id = v["message_id"].as_str().expect("message id");
        let raw = store.load_raw(&format!("{ACME}.{id}")).await.expect("load");
        assert_eq!(raw.len(), 1, "send {i}: exactly one accepted event");
        assert_eq!(raw[0].event_type(), "accepted");
    }
    let js = async_nats::jetstream::new(env.client.clone());
    let total = js
        .get_stream("SEALPOST_EVENTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(total, N as u64, "nothing extra, nothing missing");
}

/// A resend under a used idempotency key is a duplicate only when every field of the request is
/// the same (item 10 of the application-library issue): on NATS and over HTTP, a change to any
/// one field is `idempotency_conflict` (409), writes nothing, and never answers with the first
/// message's id as if it were sent.
#[tokio::test]
async fn reusing_a_key_with_any_field_changed_is_a_conflict_on_nats_and_http() {
    let ing = Ingress::default().await;
    let blob = ing.upload(ACME, b"sealed MLS ciphertext").await;
    let other_blob = ing.upload(ACME, b"another sealed payload").await;
    // Each variant changes one field of the request.
    type Change = Box<dyn Fn(&mut Value)>;
    let changes: Vec<(&str, Change)> = vec![
        (
            "recipient",
            Box::new(|v| v["recipient"] = json!("+15559999999")),
        ),
        (
            "reference and digest",
            Box::new({
                let other = other_blob.clone();
                move |v| {
                    v["encrypted_payload_reference"] = json!(other.reference);
                    v["payload_sha256"] = json!(other.sha256.as_str());
                }
            }),
        ),
        (
            "mls_version",
            Box::new(|v| v["encryption_metadata"]["mls_version"] = json!("2")),
        ),
        (
            "cipher",
            Box::new(|v| v["encryption_metadata"]["cipher"] = json!("AES-256-GCM")),
        ),
        (
            "key_id",
            Box::new(|v| v["encryption_metadata"]["key_id"] = json!("user-public-key-v3")),
        ),
        (
            "message_type",
            Box::new(|v| v["metadata"]["message_type"] = json!("promotional")),
        ),
        (
            "correlation_id",
            Box::new(|v| v["metadata"]["correlation_id"] = json!("txn-0002")),
        ),
        (
            "no correlation_id",
            Box::new(|v| {
                v["metadata"]
                    .as_object_mut()
                    .unwrap()
                    .remove("correlation_id");
            }),
        ),
        ("ttl_seconds", Box::new(|v| v["ttl_seconds"] = json!(60))),
        (
            "no ttl_seconds",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("ttl_seconds");
            }),
        ),
        (
            "fallback channel",
            Box::new(|v| v["fallback"]["channel"] = json!("in_app")),
        ),
        (
            "fallback template",
            Box::new(|v| v["fallback"]["notice_template"] = json!("other_template")),
        ),
        (
            "no fallback",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("fallback");
            }),
        ),
    ];
    let events_before = ing.events().await;
    for transport in ["nats", "http"] {
        for (field, change) in &changes {
            let key = format!("idem-{transport}-{}", field.replace(' ', "-"));
            let first = send_body(ACME, &key, &blob);
            let mut second = first.clone();
            change(&mut second);
            assert_ne!(first, second, "{field}: the change changes the request");
            let (status, reply) = match transport {
                "nats" => {
                    let subject = format!("sealpost.cmd.{ACME}.send");
                    let (_, a) = ing.nats(&subject, bytes(&first)).await;
                    assert_eq!(a["status"], "accepted", "{transport} {field}: {a}");
                    // The identical request is a duplicate with the first id.
                    let (_, d) = ing.nats(&subject, bytes(&first)).await;
                    assert_eq!(d["status"], "duplicate", "{transport} {field}: {d}");
                    assert_eq!(d["message_id"], a["message_id"]);
                    let (code, r) = ing.nats(&subject, bytes(&second)).await;
                    (code.unwrap_or_default(), r)
                }
                _ => {
                    let key = format!("{ACME}-key");
                    let (s, _, a) = ing.post("/v1/messages", Some(&key), bytes(&first)).await;
                    assert_eq!((s, &a["status"]), (202, &json!("accepted")), "{field}: {a}");
                    let (s, _, d) = ing.post("/v1/messages", Some(&key), bytes(&first)).await;
                    assert_eq!(
                        (s, &d["status"]),
                        (202, &json!("duplicate")),
                        "{field}: {d}"
                    );
                    assert_eq!(d["message_id"], a["message_id"]);
                    let (s, _, r) = ing.post("/v1/messages", Some(&key), bytes(&second)).await;
                    (s.to_string(), r)
                }
            };
            assert_eq!(status, "409", "{transport} {field}: {reply}");
            assert_eq!(
                reply["error"]["code"], "idempotency_conflict",
                "{transport} {field}: {reply}"
            );
            assert!(
                reply.get("message_id").is_none(),
                "{transport} {field}: {reply}"
            );
        }
    }
    // One `accepted` per key; neither the duplicates nor the conflicts wrote anything.
    assert_eq!(ing.events().await - events_before, 2 * changes.len() as u64);
}

// ---------------------------------------------------------------- README claims (issue 18)

/// A NATS request to the service: (`Nats-Service-Error`, `Nats-Service-Error-Code`, JSON body).
async fn nats_request_with_error_headers(
    ing: &Ingress,
    subject: &str,
    body: Vec<u8>,
) -> (Option<String>, Option<String>, Value) {
    let reply = ing
        .env
        .client
        .request(subject.to_owned(), body.into())
        .await
        .expect("the service answers");
    let header = |name: &str| {
        reply
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    (
        header("Nats-Service-Error"),
        header("Nats-Service-Error-Code"),
        serde_json::from_slice(&reply.payload).expect("JSON reply"),
    )
}

/// The event types of an ACME message, in order.
async fn event_types_of(ing: &Ingress, id: &str) -> Vec<String> {
    ing.env
        .store()
        .load_raw(&format!("{ACME}.{id}"))
        .await
        .expect("load")
        .iter()
        .map(|r| r.event_type().to_owned())
        .collect()
}

/// README, Ingress: `POST /v1/messages/{id}/cancel` over HTTP, and `invalid_state` (409, "e.g.
/// cancel after submission") on both transports. A queued message is cancelled once (a second
/// cancel answers the same status and writes nothing); another tenant's key or no key reaches
/// nothing; once the carrier's ack is recorded, cancel is refused with `invalid_state` and
/// changes nothing.
#[tokio::test]
async fn cancel_over_http_ends_a_queued_message_and_after_submission_answers_invalid_state() {
    let ing = Ingress::default().await;
    let blob = ing.upload(ACME, b"sealed bytes").await;
    let key = format!("{ACME}-key");
    let (status, _, sent) = ing
        .post(
            "/v1/messages",
            Some(&key),
            bytes(&send_body(ACME, "http-cancel", &blob)),
        )
        .await;
    assert_eq!(status, 202, "{sent}");
    let id = sent["message_id"].as_str().unwrap().to_owned();
    let cancel = format!("/v1/messages/{id}/cancel");

    // Refused before anything is decided: another tenant's key, and no key at all.
    let (status, _, r) = ing.post(&cancel, Some("beta-co-key"), vec![]).await;
    assert_eq!(
        (status, &r["error"]["code"]),
        (404, &json!("not_found")),
        "{r}"
    );
    let (status, _, r) = ing.post(&cancel, None, vec![]).await;
    assert_eq!(
        (status, &r["error"]["code"]),
        (401, &json!("unauthorized")),
        "{r}"
    );
    assert_eq!(event_types_of(&ing, &id).await, ["accepted"]);

    let (status, _, r) = ing.post(&cancel, Some(&key), vec![]).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r, json!({"message_id": id, "status": "cancelled"}));
    assert_eq!(event_types_of(&ing, &id).await, ["accepted", "cancelled"]);
    let row: Value = ing
        .http
        .get(ing.url(&format!("/v1/messages/{id}")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(row["status"], "cancelled", "{row}");
    // Cancelling again answers the same status and writes nothing.
    let (status, _, r) = ing.post(&cancel, Some(&key), vec![]).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["status"], "cancelled");
    assert_eq!(event_types_of(&ing, &id).await, ["accepted", "cancelled"]);

    // A second message is submitted: the carrier's ack is recorded through the same command the
    // delivery worker executes.
    let (status, _, sent) = ing
        .post(
            "/v1/messages",
            Some(&key),
            bytes(&send_body(ACME, "http-cancel-late", &blob)),
        )
        .await;
    assert_eq!(status, 202, "{sent}");
    let late = sent["message_id"].as_str().unwrap().to_owned();
    ing.env
        .executor()
        .execute(
            &format!("{ACME}.{late}"),
            crate::support::result(
                1,
                sealpost_domain::CarrierOutcome::Acked {
                    carrier_message_id: late.clone(),
                },
            ),
            &crate::support::meta("gw-cancel-late"),
        )
        .await
        .expect("the carrier ack is recorded");
    assert_eq!(
        event_types_of(&ing, &late).await,
        ["accepted", "carrier_acked"]
    );

    let (status, _, r) = ing
        .post(&format!("/v1/messages/{late}/cancel"), Some(&key), vec![])
        .await;
    assert_eq!(status, 409, "{r}");
    assert_eq!(r["error"]["code"], "invalid_state", "{r}");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(msg.contains("already submitted"), "{msg}");
    let (error, code, r) = nats_request_with_error_headers(
        &ing,
        &format!("sealpost.cmd.{ACME}.cancel"),
        bytes(&json!({"message_id": late})),
    )
    .await;
    assert_eq!(r["error"]["code"], "invalid_state", "{r}");
    assert_eq!(error.as_deref(), Some("invalid_state"));
    assert_eq!(code.as_deref(), Some("409"));
    // Neither refused cancel changed the message.
    assert_eq!(
        event_types_of(&ing, &late).await,
        ["accepted", "carrier_acked"]
    );
}

/// README, Ingress: `not_found` (404) for status and cancel, over NATS, for an id no one sent and
/// for another tenant's message; and every NATS error carries `Nats-Service-Error` (the code) and
/// `Nats-Service-Error-Code` (the HTTP status), while a success carries neither.
#[tokio::test]
async fn status_and_cancel_over_nats_answer_not_found_with_the_service_error_headers() {
    let ing = Ingress::default().await;
    let blob = ing.upload(ACME, b"sealed bytes").await;
    let (error, code, sent) = nats_request_with_error_headers(
        &ing,
        &format!("sealpost.cmd.{ACME}.send"),
        bytes(&send_body(ACME, "nats-not-found", &blob)),
    )
    .await;
    assert_eq!((error, code), (None, None), "{sent}");
    assert_eq!(sent["status"], "accepted");
    let id = sent["message_id"].as_str().unwrap().to_owned();

    // The same query under the owner's subject finds it, without error headers.
    let (error, code, row) = nats_request_with_error_headers(
        &ing,
        &format!("sealpost.qry.{ACME}.status"),
        bytes(&json!({"message_id": id})),
    )
    .await;
    assert_eq!((error, code), (None, None), "{row}");
    assert_eq!(row["message_id"], id.as_str());

    let unknown =
        sealpost_domain::MessageId::derive(&TenantId::new(ACME).unwrap(), "never-sent").to_string();
    for (tenant, asked, whose) in [
        (ACME, unknown.as_str(), "an id never sent"),
        (BETA, id.as_str(), "another tenant's message"),
    ] {
        for op in ["qry.{t}.status", "cmd.{t}.cancel"] {
            let subject = format!("sealpost.{}", op.replace("{t}", tenant));
            let (error, code, r) = nats_request_with_error_headers(
                &ing,
                &subject,
                bytes(&json!({"message_id": asked})),
            )
            .await;
            assert_eq!(r["error"]["code"], "not_found", "{subject}, {whose}: {r}");
            assert_eq!(error.as_deref(), Some("not_found"), "{subject}, {whose}");
            assert_eq!(code.as_deref(), Some("404"), "{subject}, {whose}");
            assert!(
                r["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("message_id"),
                "{r}"
            );
        }
    }

    // The headers name the code and status of every other error too.
    let mut changed = send_body(ACME, "nats-not-found", &blob);
    changed["recipient"] = json!("+15559999999");
    let cases = [
        (
            format!("sealpost.qry.{ACME}.status"),
            b"{}".to_vec(),
            "invalid_request",
            "400",
        ),
        (
            "sealpost.qry.nobody.status".to_owned(),
            bytes(&json!({"message_id": id})),
            "unauthorized",
            "401",
        ),
        (
            format!("sealpost.cmd.{ACME}.send"),
            bytes(&changed),
            "idempotency_conflict",
            "409",
        ),
    ];
    for (subject, body, want, status) in cases {
        let (error, code, r) = nats_request_with_error_headers(&ing, &subject, body).await;
        assert_eq!(r["error"]["code"], want, "{subject}: {r}");
        assert_eq!(error.as_deref(), Some(want), "{subject}");
        assert_eq!(code.as_deref(), Some(status), "{subject}");
    }

    // No refused cancel wrote anything: the one message is still queued, alone in the stream.
    assert_eq!(ing.events().await, 1);
    assert_eq!(event_types_of(&ing, &id).await, ["accepted"]);
}

/// README, Ingress: `POST /v1/messages` takes an optional `Idempotency-Key` header. End to end
/// over HTTP it stands for the body's `idempotency_key`: the message id derives from it, a resend
/// under it is a duplicate, a different header is a different message, and a header that
/// contradicts the body's key is refused without writing.
#[tokio::test]
async fn the_idempotency_key_header_over_http_names_the_message_and_makes_resends_duplicates() {
    let ing = Ingress::default().await;
    let blob = ing.upload(ACME, b"sealed bytes").await;
    let post = |header: Option<&'static str>, body: Value| {
        let mut req = ing
            .http
            .post(ing.url("/v1/messages"))
            .bearer_auth(format!("{ACME}-key"))
            .body(bytes(&body));
        if let Some(h) = header {
            req = req.header("Idempotency-Key", h);
        }
        async move {
            let res = req.send().await.unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap())
        }
    };
    let mut keyless = send_body(ACME, "unused", &blob);
    keyless.as_object_mut().unwrap().remove("idempotency_key");
    let derived = |key: &str| {
        sealpost_domain::MessageId::derive(&TenantId::new(ACME).unwrap(), key).to_string()
    };

    let (status, first) = post(Some("header-key-1"), keyless.clone()).await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(first["status"], "accepted");
    let id = first["message_id"].as_str().unwrap().to_owned();
    assert_eq!(
        id,
        derived("header-key-1"),
        "the id derives from the header"
    );
    let raw = ing
        .env
        .store()
        .load_raw(&format!("{ACME}.{id}"))
        .await
        .unwrap();
    let accepted: Value = serde_json::from_slice(&raw[0].body).unwrap();
    assert_eq!(accepted["idempotency_key"], "header-key-1");

    // The same header again, and the same key in the body instead: the same message.
    let (status, again) = post(Some("header-key-1"), keyless.clone()).await;
    assert_eq!(
        (status, &again["status"]),
        (202, &json!("duplicate")),
        "{again}"
    );
    assert_eq!(again["message_id"], id.as_str());
    let (status, in_body) = post(None, send_body(ACME, "header-key-1", &blob)).await;
    assert_eq!(
        (status, &in_body["status"]),
        (202, &json!("duplicate")),
        "{in_body}"
    );
    assert_eq!(in_body["message_id"], id.as_str());
    // Header and body naming the same key agree.
    let (status, both) = post(Some("header-key-1"), send_body(ACME, "header-key-1", &blob)).await;
    assert_eq!(
        (status, &both["status"]),
        (202, &json!("duplicate")),
        "{both}"
    );

    // Another header is another message.
    let (status, other) = post(Some("header-key-2"), keyless.clone()).await;
    assert_eq!(
        (status, &other["status"]),
        (202, &json!("accepted")),
        "{other}"
    );
    assert_eq!(other["message_id"], derived("header-key-2").as_str());

    // A header contradicting the body's key, and no key anywhere, are refused.
    let (status, r) = post(Some("header-key-3"), send_body(ACME, "body-key-3", &blob)).await;
    assert_eq!(status, 400, "{r}");
    assert_eq!(r["error"]["code"], "invalid_request");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("differ"),
        "{r}"
    );
    let (status, r) = post(None, keyless).await;
    assert_eq!(status, 400, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key"),
        "{r}"
    );
    assert_eq!(ing.events().await, 2, "one accepted event per key");
}

/// README, Ingress: `/readyz`. It answers 503, saying NATS's state, while the gateway has lost
/// its NATS connection (liveness, `/healthz`, stays 200), and 200 again once it is back.
#[tokio::test]
async fn readyz_answers_503_while_nats_is_down_and_200_once_it_is_back() {
    let mut ing = Ingress::default().await;
    let http = ing.http.clone();
    let (readyz, healthz) = (ing.url("/readyz"), ing.url("/healthz"));
    let get = |url: String| {
        let http = http.clone();
        async move {
            let res = http.get(url).send().await.unwrap();
            (res.status().as_u16(), res.text().await.unwrap())
        }
    };
    assert_eq!(get(readyz.clone()).await, (200, "ready".to_owned()));

    ing.env.server.kill();
    let (_, text) = sealpost_testkit::eventually(Duration::from_secs(20), "/readyz 503", || {
        let r = get(readyz.clone());
        async move {
            let (status, text) = r.await;
            (status == 503).then_some((status, text))
        }
    })
    .await
    .unwrap();
    assert!(text.starts_with("not ready: NATS is "), "{text}");
    assert!(!text.contains("Connected"), "{text}");
    assert_eq!(get(healthz).await, (200, "ok".to_owned()));

    ing.env.server.restart().await.expect("the server restarts");
    sealpost_testkit::eventually(Duration::from_secs(30), "/readyz 200 again", || {
        let r = get(readyz.clone());
        async move { (r.await == (200, "ready".to_owned())).then_some(()) }
    })
    .await
    .unwrap();
}
