//! Metric values after a real run: a `sealpost serve --roles gateway` process and a `sealpost
//! serve --roles delivery,receipts,expiry,fallback` process (each with its own `/metrics`, as in
//! production) against a private nats-server and the carrier simulator. Every value `/metrics`
//! exports is compared with what happened: the sends the test made and their answers, the events
//! in the store, and what the carrier saw.

// Test fixtures: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use sealpost_carrier_sim::{CarrierSim, Scripted, SimConfig};
use sealpost_domain::Status;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::support::{store_on, Served};

const TENANT: &str = "metrics-co";
const API_KEY: &str = "metrics-co-key";

/// One sample of the exposition: metric name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses the OpenMetrics text (no escaped quotes or commas occur in Sealpost's label values).
fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap();
                    (k.to_owned(), v.trim_matches('"').to_owned())
                })
                .collect();
            (name.to_owned(), labels, value.parse().unwrap())
        })
        .collect()
}

/// Every series of `name` whose labels include `with`, as (the other labels, value).
fn series(all: &[Sample], name: &str, with: &[(&str, &str)]) -> BTreeMap<Vec<String>, f64> {
    all.iter()
        .filter(|(n, labels, _)| {
            n == name
                && with
                    .iter()
                    .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .fold(BTreeMap::new(), |mut out, (_, labels, v)| {
            let rest = labels
                .iter()
                .filter(|(k, _)| !with.iter().any(|(w, _)| w == k))
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            // The same series from several processes adds up, as `sum` does in Prometheus.
            *out.entry(rest).or_insert(0.0) += *v;
            out
        })
}

fn expect(pairs: &[(&[&str], f64)]) -> BTreeMap<Vec<String>, f64> {
    pairs
        .iter()
        .map(|(labels, v)| (labels.iter().map(|s| (*s).to_owned()).collect(), *v))
        .collect()
}

/// The samples of every process in `bases`, one after the other (`series` adds them up).
async fn scrape_all(http: &reqwest::Client, bases: &[&str]) -> Vec<Sample> {
    let mut all = Vec::new();
    for base in bases {
        all.extend(scrape(http, base).await);
    }
    all
}

async fn scrape(http: &reqwest::Client, base: &str) -> Vec<Sample> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    samples(&text)
}

fn at(v: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(v.as_str().unwrap(), &Rfc3339).unwrap()
}

/// README, Observability: the metrics table. After a run with known traffic, `/metrics` holds
/// exactly what happened: sends per transport and outcome (and no series for the refused key,
/// which is answered before a tenant is known); the delivery consumer's queue depth while no
/// worker runs and after they drained it; outcomes per tenant, type and carrier; retried
/// attempts per class and code; and the latency histogram (count, sum and every bucket) from
/// the `accepted` and `delivered` events.
#[tokio::test]
async fn metrics_after_a_real_run_equal_what_happened() {
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
    let (http, gw, wk) = (
        served.http.clone(),
        served.gateway_url.clone(),
        served.workers_url.clone(),
    );
    let blob = served.upload(API_KEY, b"sealed MLS ciphertext").await;
    let body = |key: &str, to: &str, fallback: bool| {
        let mut v = json!({
            "idempotency_key": key,
            "recipient": to,
            "encrypted_payload_reference": blob["reference"],
            "payload_sha256": blob["sha256"],
            "encryption_metadata": {"mls_version": "1", "cipher": "XChaCha20-Poly1305", "key_id": "k"},
            "metadata": {"tenant_id": TENANT, "message_type": "transactional"},
            "ttl_seconds": 3600,
            "fallback": {"channel": "sms", "notice_template": "secure_message_waiting"}
        });
        if !fallback {
            v.as_object_mut().unwrap().remove("fallback");
        }
        v
    };
    let post = |key: &'static str, v: Value| {
        let req = http
            .post(format!("{gw}/v1/messages"))
            .bearer_auth(key)
            .json(&v);
        async move {
            let res = req.send().await.unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap())
        }
    };
    let nats_send = |v: Value| {
        let client = client.clone();
        async move {
            let reply = client
                .request(
                    format!("sealpost.cmd.{TENANT}.send"),
                    serde_json::to_vec(&v).unwrap().into(),
                )
                .await
                .expect("the gateway's NATS service answers");
            serde_json::from_slice::<Value>(&reply.payload).unwrap()
        }
    };

    // The traffic: what each recipient's carrier does, and how the send goes.
    let status = |code: u16, retry_after_secs: Option<u64>| Scripted::Status {
        code,
        retry_after_secs,
    };
    sim.script("+15557000002", vec![status(503, None)]);
    sim.script("+15557000003", vec![status(429, Some(1))]);
    sim.script("+15557000004", vec![Scripted::NotCapable]);
    sim.script("+15557000005", vec![status(400, None)]);
    let mut ids = BTreeMap::new();
    for (name, to, fallback) in [
        ("happy", "+15557000001", true),
        ("503-once", "+15557000002", true),
        ("429-once", "+15557000003", true),
        ("not-capable", "+15557000004", true),
        ("permanent", "+15557000005", false),
    ] {
        let (code, r) = post(API_KEY, body(name, to, fallback)).await;
        assert_eq!(
            (code, &r["status"]),
            (202, &json!("accepted")),
            "{name}: {r}"
        );
        ids.insert(name, r["message_id"].as_str().unwrap().to_owned());
    }
    let (code, r) = post(API_KEY, body("happy", "+15557000001", true)).await;
    assert_eq!((code, &r["status"]), (202, &json!("duplicate")), "{r}");
    let (code, r) = post(API_KEY, body("bad", "0044 7700 900", true)).await;
    assert_eq!(
        (code, &r["error"]["code"]),
        (400, &json!("invalid_request")),
        "{r}"
    );
    let (code, r) = post("not-a-key", body("x", "+15557000001", true)).await;
    assert_eq!(
        (code, &r["error"]["code"]),
        (401, &json!("unauthorized")),
        "{r}"
    );
    let r = nats_send(body("over-nats", "+15557000006", true)).await;
    assert_eq!(r["status"], "accepted", "{r}");
    ids.insert("over-nats", r["message_id"].as_str().unwrap().to_owned());
    let r = nats_send(body("over-nats", "+15557000006", true)).await;
    assert_eq!(r["status"], "duplicate", "{r}");

    let ingress = |all: &[Sample]| {
        series(
            all,
            "sealpost_ingress_requests_total",
            &[("tenant", TENANT)],
        )
    };
    let depth = |all: &[Sample]| {
        series(all, "sealpost_queue_depth", &[("consumer", "delivery")])
            .into_values()
            .next()
    };
    // No worker yet: the six accepted messages wait on the delivery consumer (polled every 5 s).
    let waiting =
        sealpost_testkit::eventually(Duration::from_secs(15), "queue depth 6", || async {
            depth(&scrape(&http, &gw).await).filter(|d| *d == 6.0)
        })
        .await;
    assert!(waiting.is_ok(), "{:?}", depth(&scrape(&http, &gw).await));
    assert_eq!(
        ingress(&scrape(&http, &gw).await),
        expect(&[
            (&["outcome=accepted", "transport=http"], 5.0),
            (&["outcome=duplicate", "transport=http"], 1.0),
            (&["outcome=invalid_request", "transport=http"], 1.0),
            (&["outcome=accepted", "transport=nats"], 1.0),
            (&["outcome=duplicate", "transport=nats"], 1.0),
        ]),
        "no series for the refused key"
    );

    served.start_workers().await;
    let store = store_on(&client);
    let ends = [
        ("happy", Status::Displayed),
        ("503-once", Status::Displayed),
        ("429-once", Status::Displayed),
        ("not-capable", Status::FallbackTriggered),
        ("permanent", Status::Failed),
        ("over-nats", Status::Displayed),
    ];
    for (name, end) in ends {
        let id = &ids[name];
        sealpost_testkit::eventually(Duration::from_secs(30), name, || async {
            let s = store
                .load(&format!("{TENANT}.{id}"))
                .await
                .ok()?
                .aggregate
                .status;
            (s == end).then_some(())
        })
        .await
        .unwrap();
    }
    sealpost_testkit::eventually(Duration::from_secs(10), "the SMS notice", || async {
        (sim.notices().len() == 1).then_some(())
    })
    .await
    .unwrap();

    // What happened, from the events: retried attempts by (class, code), and the latencies.
    let mut retried: BTreeMap<Vec<String>, f64> = BTreeMap::new();
    let mut latencies = vec![];
    for id in ids.values() {
        let raw = store.load_raw(&format!("{TENANT}.{id}")).await.unwrap();
        let bodies: Vec<(String, Value)> = raw
            .iter()
            .map(|r| {
                (
                    r.event_type().to_owned(),
                    serde_json::from_slice(&r.body).unwrap(),
                )
            })
            .collect();
        let types: Vec<&str> = bodies.iter().map(|(t, _)| t.as_str()).collect();
        for (i, (t, b)) in bodies.iter().enumerate() {
            if t == "attempt_failed" && types.get(i + 1) == Some(&"retry_scheduled") {
                let key = vec![
                    "carrier=rbm".to_owned(),
                    format!("class={}", b["class"].as_str().unwrap()),
                    format!("code={}", b["code"].as_str().unwrap()),
                ];
                *retried.entry(key).or_default() += 1.0;
            }
            if t == "delivered" {
                let latency = at(&b["at"]) - at(&bodies[0].1["accepted_at"]);
                latencies.push(latency.as_seconds_f64().max(0.0));
            }
        }
    }
    assert_eq!(
        retried.values().sum::<f64>(),
        2.0,
        "one retried 503 and one retried 429: {retried:?}"
    );
    assert_eq!(latencies.len(), 4);
    let statuses = |name: &str| -> Vec<u16> {
        sim.requests_for(&ids[name])
            .iter()
            .map(|r| r.status)
            .collect()
    };
    assert_eq!(statuses("503-once"), [503, 200]);
    assert_eq!(statuses("429-once"), [429, 200]);

    let outcome = [
        ("tenant", TENANT),
        ("message_type", "transactional"),
        ("carrier", "rbm"),
    ];
    let want_outcomes = expect(&[
        (&["outcome=acked"], 4.0),
        (&["outcome=delivered"], 4.0),
        (&["outcome=displayed"], 4.0),
        (&["outcome=fallback"], 1.0),
        (&["outcome=failed"], 1.0),
    ]);
    // The counters move right after each event is committed: poll until they have. Outcomes
    // are counted where the event is written: the workers' answers in the delivery process, the
    // receipts in the gateway that applied them (or in the receipts role, for one it stored).
    let processes = [gw.as_str(), wk.as_str()];
    let settled = sealpost_testkit::eventually(Duration::from_secs(10), "the outcomes", || async {
        let all = scrape_all(&http, &processes).await;
        (series(&all, "sealpost_delivery_outcomes_total", &outcome) == want_outcomes).then_some(all)
    })
    .await;
    let all = match settled {
        Ok(all) => all,
        Err(e) => panic!(
            "{e}: {:?}",
            series(
                &scrape_all(&http, &processes).await,
                "sealpost_delivery_outcomes_total",
                &outcome
            )
        ),
    };
    assert_eq!(
        series(&all, "sealpost_delivery_outcomes_total", &[]).len(),
        want_outcomes.len(),
        "no outcome for another tenant, type or carrier"
    );
    assert_eq!(series(&all, "sealpost_retries_total", &[]), retried);

    let histogram = [("tenant", TENANT), ("message_type", "transactional")];
    let count = series(&all, "sealpost_delivery_latency_seconds_count", &histogram);
    assert_eq!(count, expect(&[(&[], 4.0)]));
    let sum = series(&all, "sealpost_delivery_latency_seconds_sum", &histogram)[&vec![]];
    let want_sum: f64 = latencies.iter().sum();
    assert!(
        (sum - want_sum).abs() < 1e-6,
        "sum {sum}, events say {want_sum}"
    );
    let buckets = series(&all, "sealpost_delivery_latency_seconds_bucket", &histogram);
    assert_eq!(buckets.len(), 19, "18 bounds and +Inf: {buckets:?}");
    for (labels, n) in &buckets {
        let le = labels[0].strip_prefix("le=").unwrap();
        let bound: f64 = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap()
        };
        let want = latencies.iter().filter(|l| **l <= bound).count() as f64;
        assert_eq!(*n, want, "bucket le={le}: latencies {latencies:?}");
    }

    // The gateway process counted only receipts (it never submits), and its poller saw the
    // queue drain.
    let gw_all = scrape(&http, &gw).await;
    let gw_outcomes = series(&gw_all, "sealpost_delivery_outcomes_total", &outcome);
    assert!(
        gw_outcomes
            .keys()
            .all(|k| k == &["outcome=delivered"] || k == &["outcome=displayed"]),
        "{gw_outcomes:?}"
    );
    let drained =
        sealpost_testkit::eventually(Duration::from_secs(15), "queue depth 0", || async {
            depth(&scrape(&http, &gw).await).filter(|d| *d == 0.0)
        })
        .await;
    assert!(drained.is_ok(), "{:?}", depth(&scrape(&http, &gw).await));

    served.workers.kill9().await;
    served.gateway.kill9().await;
}
