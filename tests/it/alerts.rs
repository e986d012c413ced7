//! The shipped alert rules (`crates/sealpost/prometheus/alerts.yml`) evaluated on real metrics:
//! Sealpost's processes (gateway; delivery roles; projector) run against the carrier simulator,
//! and a real Prometheus server scrapes their `/metrics` and evaluates the rules, both every
//! second. The promtool unit tests (`alerts_test.yml`) check each rule on made-up series; this
//! checks that the series the processes really export make the right rules fire.

// Test fixtures: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use sealpost_carrier_sim::{CarrierSim, FaultMix, SimConfig};
use sealpost_domain::Status;
use sealpost_testkit::{eventually, PgDatabase, PrometheusServer};
use serde_json::{json, Value};

use crate::support::{store_on, ServeProcess, Served};

const TENANT: &str = "alerts-co";
const API_KEY: &str = "alerts-co-key";
const THROTTLING: &str = "SealpostCarrierThrottling";
const QUEUE: &str = "SealpostDeliveryQueueDepthHigh";

/// Every alert Prometheus has now, as alert name → state (`pending` or `firing`).
async fn alerts(http: &reqwest::Client, prometheus: &str) -> BTreeMap<String, String> {
    let v: Value = http
        .get(format!("{prometheus}/api/v1/alerts"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["labels"]["alertname"].as_str().unwrap().to_owned(),
                a["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// One instant query's result vector.
async fn query(http: &reqwest::Client, prometheus: &str, q: &str) -> Vec<Value> {
    let v: Value = http
        .get(format!("{prometheus}/api/v1/query"))
        .query(&[("query", q)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["status"], "success", "{q}: {v}");
    v["data"]["result"].as_array().unwrap().clone()
}

/// README, Observability, alert rules. The carrier throttles every send for 60 s (429 with
/// `Retry-After: 1`) while 1500 messages arrive, after 100 went through normally:
/// - `SealpostCarrierThrottling` fires (10 throttled attempts in 2m, for 1m);
/// - `SealpostDeliveryQueueDepthHigh` fires (1500 jobs, none finished in 30 s: an infinite time
///   to drain), and ends once the throttle lifts and the backlog drains;
/// - no other rule is ever pending or firing, although every one of them has its series
///   (delivery outcomes, tenant queue depth, projection lag, retries);
/// - every message ends `displayed`, submitted once.
#[tokio::test]
async fn a_minute_of_carrier_throttling_fires_the_throttling_and_queue_alerts_and_no_other() {
    let env = crate::support::Env::start().await;
    let (server, client) = (&env.server, env.client.clone());
    let sim_cfg = SimConfig {
        receipt_delay: Duration::from_millis(20),
        ..SimConfig::default()
    };
    let sim = CarrierSim::start("127.0.0.1:0".parse().unwrap(), sim_cfg.clone())
        .await
        .unwrap();
    let mut served = Served::start(&server.url(), &client, &sim, &sim_cfg, TENANT, API_KEY).await;
    served.start_workers().await;
    // The projector, for the projection-lag and tenant-queue-depth series.
    let db = PgDatabase::create().await.unwrap();
    let projector_port = sealpost_testkit::free_port().unwrap();
    let mut projector = ServeProcess::new("projector", served.config.clone(), server.url())
        .env("DATABASE_URL", &db.url)
        .env(
            "SEALPOST_GATEWAY_HTTP_LISTEN",
            &format!("127.0.0.1:{projector_port}"),
        );
    projector.spawn();
    let target = |url: &str| url.trim_start_matches("http://").to_owned();
    let rules = sealpost_testkit::workspace_root().join("crates/sealpost/prometheus/alerts.yml");
    let prometheus = PrometheusServer::start(
        &[
            target(&served.gateway_url),
            target(&served.workers_url),
            format!("127.0.0.1:{projector_port}"),
        ],
        &rules,
    )
    .await
    .unwrap();
    let (http, prom) = (served.http.clone(), prometheus.url());
    eventually(Duration::from_secs(30), "3 targets up", || async {
        let up = query(&http, &prom, "up == 1").await;
        (up.len() == 3).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", prometheus.log()));

    let blob = served.upload(API_KEY, b"sealed MLS ciphertext").await;
    let send = |i: usize| {
        let req = http
            .post(format!("{}/v1/messages", served.gateway_url))
            .bearer_auth(API_KEY)
            .json(&json!({
                "idempotency_key": format!("alerts-{i}"),
                "recipient": format!("+1555800{i:04}"),
                "encrypted_payload_reference": blob["reference"],
                "payload_sha256": blob["sha256"],
                "encryption_metadata": {"mls_version": "1", "cipher": "XChaCha20-Poly1305", "key_id": "k"},
                "metadata": {"tenant_id": TENANT, "message_type": "transactional"},
                "ttl_seconds": 3600
            }));
        async move {
            let res = req.send().await.unwrap();
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap();
            assert_eq!(
                (status, &body["status"]),
                (202, &json!("accepted")),
                "{body}"
            );
            body["message_id"].as_str().unwrap().to_owned()
        }
    };
    let send_all = |range: std::ops::Range<usize>| {
        futures::stream::iter(range.map(send))
            .buffer_unordered(16)
            .collect::<Vec<String>>()
    };

    // Before: 100 messages go through, so the delivery consumer has finished jobs to rate.
    let mut ids = send_all(0..100).await;
    eventually(Duration::from_secs(60), "100 submissions", || async {
        (sim.stats().accepted >= 100).then_some(())
    })
    .await
    .unwrap();

    // The throttle, and 1500 messages arriving into it.
    sim.set_faults(FaultMix {
        throttle: 1.0,
        retry_after_secs: 1,
        ..FaultMix::default()
    });
    let throttled_at = Instant::now();
    ids.extend(send_all(100..1600).await);
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut fired_at: BTreeMap<String, Duration> = BTreeMap::new();
    let mut lifted = false;
    // Both alerts fire within 60 s of the throttle plus the throttling rule's `for: 1m`; watch
    // for up to 4 minutes. The throttle lasts 60 s, or on a slow machine until the queue alert
    // has fired (its rule needs 30 s without finished jobs, then `for: 15s`, and the backlog
    // drains once the throttle lifts), 3 minutes at most.
    while throttled_at.elapsed() < Duration::from_secs(240) {
        let throttled_for = throttled_at.elapsed();
        if !lifted
            && throttled_for >= Duration::from_secs(60)
            && (fired_at.contains_key(QUEUE) || throttled_for >= Duration::from_secs(180))
        {
            sim.set_faults(FaultMix::default());
            lifted = true;
        }
        for (name, state) in alerts(&http, &prom).await {
            if state == "firing" {
                fired_at
                    .entry(name.clone())
                    .or_insert(throttled_at.elapsed());
            }
            seen.entry(name).or_default().insert(state);
        }
        if lifted && fired_at.contains_key(THROTTLING) && fired_at.contains_key(QUEUE) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let throttled = sim.stats().throttled;
    assert!(
        fired_at.contains_key(THROTTLING) && fired_at.contains_key(QUEUE),
        "fired: {fired_at:?}, seen: {seen:?}, 429s: {throttled}"
    );

    // The throttle is over: the backlog drains, every message is displayed and was submitted
    // once, and the queue alert ends.
    let store = store_on(&client);
    for id in &ids {
        let agg = sealpost_domain::aggregate_id(
            &sealpost_domain::TenantId::new(TENANT).unwrap(),
            &sealpost_domain::MessageId::new(id).unwrap(),
        );
        eventually(Duration::from_secs(120), "displayed", || async {
            let m = store.load(&agg).await.ok()?.aggregate;
            (m.status == Status::Displayed).then_some(())
        })
        .await
        .unwrap();
    }
    let stats = sim.stats();
    assert_eq!(
        (stats.accepted, sim.accepted_ids().len()),
        (1600, 1600),
        "{stats:?}"
    );
    eventually(Duration::from_secs(60), "the queue alert ends", || async {
        (!alerts(&http, &prom).await.contains_key(QUEUE)).then_some(())
    })
    .await
    .unwrap();

    // Over the whole run, as Prometheus recorded it: these two alerts and no other.
    let ever = query(
        &http,
        &prom,
        "count by (alertname, alertstate) (count_over_time(ALERTS[10m]))",
    )
    .await;
    let ever: BTreeSet<(String, String)> = ever
        .iter()
        .map(|s| {
            (
                s["metric"]["alertname"].as_str().unwrap().to_owned(),
                s["metric"]["alertstate"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let names: BTreeSet<&str> = ever.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, BTreeSet::from([THROTTLING, QUEUE]), "{ever:?}");
    assert!(ever.contains(&(THROTTLING.to_owned(), "firing".to_owned())));
    assert!(ever.contains(&(QUEUE.to_owned(), "firing".to_owned())));
    // The quiet rules were evaluated on real series, not on nothing.
    for metric in [
        "sealpost_delivery_outcomes_total",
        "sealpost_tenant_queue_depth",
        "sealpost_projection_lag",
        "sealpost_retries_total",
        "sealpost_queue_jobs_done_total",
    ] {
        let found = query(&http, &prom, &format!("count({metric})")).await;
        assert!(!found.is_empty(), "no {metric} series was scraped");
    }
    eprintln!(
        "alerts: {throttled} throttled answers ({} inside an open Retry-After window); fired {fired_at:?} after the throttle began; seen {seen:?}",
        stats.throttle_violations
    );
    projector.kill9().await;
    served.workers.kill9().await;
    served.gateway.kill9().await;
}
