//! `sealpost bench ingress`: accepted sends/s over NATS and over HTTP through a gateway started
//! with [`App::start`] (its own NATS connection and HTTP port, a tenant of this run), the payload
//! already uploaded, next to raw JetStream publishes of an `accepted` event's size measured first
//! on a private stream in the same run. The streams are provisioned without their durable
//! consumers (run it on a server of its own, as `scripts/bench ingress` does), so the figures are
//! the ingress path's alone.

use std::time::Instant;

use async_nats::jetstream;
use sealpost_domain::TenantId;
use sealpost_eventstore::names::{EventSubject, Role, ServiceOp, ServiceSubject, Stream};
use sealpost_eventstore::provision::{check_server, embedded_definitions};

use super::{bench_tenant, measure, private_stream, raw_publishes_phase, Phase};
use crate::app::{connect, App};
use crate::client::{upload_blob, Uploaded};
use crate::config::Config;

/// The size of the baseline's payloads: about an `accepted` event's body.
const ACCEPTED_SIZE: usize = 900;

fn body(tenant: &str, key: &str, blob: &Uploaded) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "idempotency_key": key,
        "recipient": "+15550100100",
        "encrypted_payload_reference": blob.reference,
        "payload_sha256": blob.sha256,
        "encryption_metadata": {"mls_version": "1", "cipher": "XChaCha20-Poly1305", "key_id": "user-public-key-v2"},
        "metadata": {"tenant_id": tenant, "message_type": "transactional", "correlation_id": format!("corr-{key}")},
        "ttl_seconds": 3600,
        "fallback": {"channel": "sms", "notice_template": "secure_message_waiting"}
    }))
    .expect("a JSON literal serializes")
}

/// `sealpost bench ingress`: see the module docs.
pub async fn run(cfg: &Config, messages: usize, concurrency: usize) -> anyhow::Result<()> {
    let client = connect(cfg).await?;
    let version = check_server(&client).await?;
    let js = jetstream::new(client.clone());

    // 1. Baseline: raw JetStream publishes with Msg-Id, on a private stream.
    let (stream_cfg, prefix, run) = private_stream(&js, cfg).await?;
    let raw = raw_publishes_phase(&js, &prefix, messages, concurrency, ACCEPTED_SIZE).await;
    js.delete_stream(&stream_cfg.name).await.ok();
    let raw = raw?;

    let (mut cfg, tenant, api_key) = bench_tenant(cfg, "ingress", &run)?;
    // A second tenant with a rate limit and a daily quota, both far above what the bench sends:
    // its sends pay for the shared limits (JetStream KV reservations) and are never refused.
    let limited = TenantId::new(format!("{}-lim", tenant.as_str()))?;
    let mut limited_cfg = crate::harness::unlimited_tenant(&limited, &format!("{api_key}-lim"));
    limited_cfg.rate_per_sec = 1e6;
    limited_cfg.burst = 1_000_000;
    limited_cfg.daily_quota = Some(1_000_000_000);
    cfg.tenants.push(limited_cfg);
    // The streams without the durable consumers: the bench measures ingress alone, not the
    // server's work for the delivery and projection consumers that filter the events.
    let mut streams_only = embedded_definitions();
    streams_only.consumers.clear();
    crate::app::provision(&cfg, &streams_only).await?;
    let gateway = App::start(cfg.clone(), &[Role::Gateway], std::future::pending()).await?;
    let http = gateway
        .http_addr()
        .ok_or_else(|| anyhow::anyhow!("the gateway has no HTTP address"))?;
    // The payload is stored once, through the gateway, as a client would upload it.
    let blob = upload_blob(http, &api_key, vec![0x5a; 2048]).await?;

    // 2. Sends over NATS: request/reply to the service, from several client connections.
    let mut clients = vec![];
    for _ in 0..4 {
        clients.push(connect(&cfg).await?);
    }
    let nats = nats_sends(
        "sends over NATS",
        &clients,
        &tenant,
        "nats",
        &blob,
        messages,
        concurrency,
    )
    .await?;

    // 2b. The same over NATS for the tenant with shared limits, counting the reservations.
    let kv_writes = |js: jetstream::Context| async move {
        let mut n = 0;
        for s in [Stream::Rates, Stream::Quotas] {
            n += js
                .get_stream(s.as_str())
                .await?
                .info()
                .await?
                .state
                .last_sequence;
        }
        anyhow::Ok(n)
    };
    let kv_before = kv_writes(js.clone()).await?;
    let limited_blob = upload_blob(http, &format!("{api_key}-lim"), vec![0x5a; 2048]).await?;
    let shared = nats_sends(
        "NATS, shared limits",
        &clients,
        &limited,
        "lim",
        &limited_blob,
        messages,
        concurrency,
    )
    .await?;
    let reservations = kv_writes(js.clone()).await? - kv_before;

    // 3. Sends over HTTP.
    let http_client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let url = format!("http://{http}/v1/messages");
    let over_http = measure("sends over HTTP", messages, concurrency, |i| {
        let http = http_client.clone();
        let url = url.clone();
        let body = body(tenant.as_str(), &format!("http-{i}"), &blob);
        let api_key = api_key.clone();
        async move {
            let t = Instant::now();
            let res = http
                .post(url)
                .bearer_auth(api_key)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await?;
            let status = res.status();
            let text = res.bytes().await?;
            let lat = t.elapsed();
            anyhow::ensure!(
                status.as_u16() == 202,
                "HTTP {status}: {}",
                String::from_utf8_lossy(&text)
            );
            Ok(vec![(lat, 1)])
        }
    })
    .await?;
    drop(gateway);

    // Every send wrote exactly one event.
    let stored = js
        .get_stream(Stream::Events.as_str())
        .await?
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: EventSubject::filter(Some(&tenant), None),
            ..Default::default()
        })
        .await?
        .cached_info()
        .num_pending;
    anyhow::ensure!(
        stored == 2 * messages as u64,
        "expected {} events of the bench tenant (NATS + HTTP), found {stored}",
        2 * messages
    );
    let (plain, limited_rate) = (nats.ops_per_sec(), shared.ops_per_sec());
    report(
        &version,
        messages,
        concurrency,
        &[raw, nats, over_http, shared],
    );
    println!(
        "shared limits (rate + daily quota in JetStream KV): {limited_rate:.0} against {plain:.0} \
         accepted/s without = {:.2} x; {:.1} µs more per send; {reservations} KV reservations \
         for {messages} sends ({:.1} per 1,000)",
        limited_rate / plain,
        (1e6 / limited_rate - 1e6 / plain),
        reservations as f64 * 1000.0 / messages as f64
    );
    Ok(())
}

/// `messages` sends of `tenant` over NATS request/reply (keys `<prefix>-<i>`), spread over
/// `clients`; each must be answered `accepted`.
async fn nats_sends(
    name: &'static str,
    clients: &[async_nats::Client],
    tenant: &TenantId,
    prefix: &str,
    blob: &Uploaded,
    messages: usize,
    concurrency: usize,
) -> anyhow::Result<Phase> {
    let subject = ServiceSubject::new(tenant.clone(), ServiceOp::Send).to_string();
    measure(name, messages, concurrency, |i| {
        let client = clients[i % clients.len()].clone();
        let body = body(tenant.as_str(), &format!("{prefix}-{i}"), blob);
        let subject = subject.clone();
        async move {
            let t = Instant::now();
            let reply = client.request(subject, body.into()).await?;
            let lat = t.elapsed();
            let v: serde_json::Value = serde_json::from_slice(&reply.payload)?;
            anyhow::ensure!(
                v["status"] == "accepted",
                "send not accepted: {}",
                String::from_utf8_lossy(&reply.payload)
            );
            Ok(vec![(lat, 1)])
        }
    })
    .await
}

fn report(version: &str, messages: usize, concurrency: usize, phases: &[Phase]) {
    println!(
        "sealpost bench ingress: {messages} sends per transport, concurrency {concurrency}, nats-server {version}, payload already stored"
    );
    println!(
        "{:<24} {:>9} {:>11} {:>9} {:>9}",
        "phase", "ops", "ops/s", "p50 ms", "p99 ms"
    );
    for p in phases {
        println!(
            "{:<24} {:>9} {:>11.0} {:>9.2} {:>9.2}",
            p.name,
            p.ops,
            p.ops_per_sec(),
            p.pct_ms(0.50),
            p.pct_ms(0.99)
        );
    }
    let raw = phases[0].ops_per_sec();
    for p in &phases[1..] {
        let rate = p.ops_per_sec();
        let target = if p.name.contains("NATS") {
            format!(
                " (target >= 10,000 accepted sends/s: {})",
                if rate >= 10_000.0 {
                    "met"
                } else {
                    "BELOW TARGET"
                }
            )
        } else {
            String::new()
        };
        println!(
            "{}: {rate:.0} accepted/s = {:.2} x raw publish{target}",
            p.name,
            rate / raw
        );
    }
}
