//! The fault suite (README, "Fault suite"): one load shape on the 3-node JetStream cluster, with
//! faults injected one after another while it runs.
//!
//! - **The deployment**, as production runs it: two `sealpost serve --roles gateway` processes,
//!   two `sealpost serve --roles delivery,receipts,expiry,fallback` processes and one projector,
//!   every stream at 3 replicas; Postgres and the S3 endpoint (s3s-fs) each reached through a
//!   proxy the test can cut; the carrier simulator with the demo's fault mix (429s, 5xx,
//!   accept-then-hang timeouts, numbers without RCS, permanent refusals, duplicate and
//!   out-of-order receipts).
//! - **The load**: `SEALPOST_CHAOS_MESSAGES` sends (600 by default; `scripts/chaos` runs
//!   10,000) over NATS, spread over `SEALPOST_CHAOS_SECONDS` (80 by default). A send that times
//!   out or is refused `unavailable` is sent again with the same idempotency key, as a client
//!   would.
//! - **The faults**, in rounds until the sends are done: `kill -9` of the node leading
//!   `SEALPOST_EVENTS` (restarted 3 s later); `kill -9` of each gateway, each delivery process
//!   and the projector (restarted at once); Postgres unreachable for 10 s (every connection cut
//!   and refused, as in a restart), during which status queries must still be answered (from the
//!   events); the S3 endpoint unreachable for 10 s.
//! - **The checks**: every acknowledged send ends `displayed` or in a terminal state; the
//!   carrier accepted exactly one submission per message it delivered, and at most one for any;
//!   every `messages` row equals its aggregate and every event is counted once in
//!   `metrics_events`; no process exited on its own (each logs to its own file, and a supervisor
//!   restarts one that exits, as an orchestrator would, so that the other checks still run and
//!   the exit's last log lines are printed). The figures (kills, outages, resends, 409s, time to
//!   recover) are printed.

// Test fixtures: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use sealpost_carrier_sim::{CarrierSim, SimConfig};
use sealpost_domain::Status;
use sealpost_testkit::{eventually, NatsCluster, PgDatabase, TcpProxy};
use serde_json::{json, Value};

use crate::support::{store_on, through, ServeProcess};

const TENANT: &str = "chaos-co";
const API_KEY: &str = "chaos-co-key";
const BLOBS: usize = 50;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the run did, printed at the end.
#[derive(Debug, Default)]
struct Figures {
    kills: BTreeMap<&'static str, u32>,
    outages: BTreeMap<&'static str, u32>,
    /// Per fault: the longest time from its start until a send was accepted again.
    recovery_ms: BTreeMap<&'static str, u128>,
    /// Status queries answered during Postgres outages, and how many came from the events.
    status_during_pg_outage: u32,
    status_from_events: u32,
}

/// The processes, by role.
struct Processes {
    gateways: Vec<ServeProcess>,
    delivery: Vec<ServeProcess>,
    projector: ServeProcess,
    /// Each time a process exited on its own (not killed by the suite): its name, status and
    /// last log lines. The supervisor restarted it, as an orchestrator would.
    exits: Vec<String>,
}

impl Processes {
    fn each(&mut self) -> impl Iterator<Item = (String, &mut ServeProcess)> {
        let gateways = self.gateways.iter_mut().enumerate();
        let delivery = self.delivery.iter_mut().enumerate();
        gateways
            .map(|(i, p)| (format!("gateway {i}"), p))
            .chain(delivery.map(|(i, p)| (format!("delivery {i}"), p)))
            .chain([("projector".to_owned(), &mut self.projector)])
    }

    /// Restarts every process that exited on its own and records why it did.
    fn supervise(&mut self, started: Instant) {
        let mut exits = vec![];
        for (name, p) in self.each() {
            if let Some(status) = p.exited() {
                let tail = p.log_tail(8);
                eprintln!(
                    "chaos: {:>5.1} s  {name} exited on its own ({status}); restarted; its last \
                     log lines:\n{tail}",
                    started.elapsed().as_secs_f64()
                );
                exits.push(format!("{name} ({status}): {tail}"));
                p.spawn();
            }
        }
        self.exits.extend(exits);
    }
}

/// The sender's progress, shared with the fault task: when a send was last accepted (ms since
/// the run's start) and how many were sent again.
#[derive(Default)]
struct Progress {
    /// When each send was accepted, in ms since the run's start.
    accepted_at: std::sync::Mutex<Vec<u64>>,
    resends: AtomicU64,
    unavailable: AtomicU64,
    /// The refusals' messages, counted.
    refusals: std::sync::Mutex<BTreeMap<String, u64>>,
    /// Refusals per second of the run.
    refused_at: std::sync::Mutex<BTreeMap<u64, u64>>,
    accepted_ids: std::sync::Mutex<Vec<String>>,
}

#[tokio::test]
async fn under_kills_and_outages_every_acknowledged_send_ends_once_and_the_views_equal_the_events()
{
    let n = env_number("SEALPOST_CHAOS_MESSAGES", 600) as usize;
    let seconds = env_number("SEALPOST_CHAOS_SECONDS", 80);
    let started = Instant::now();

    let mut cluster = NatsCluster::start().await.unwrap();
    let client = cluster.connect().await.unwrap();
    crate::delivery::provision_with_ack_wait(&client, Duration::from_secs(3), Some(3)).await;

    // Postgres and S3, each behind a proxy the faults cut.
    let db = PgDatabase::create().await.unwrap();
    let pool = sealpost_projections::connect(&db.url, 4).await.unwrap();
    sealpost_projections::migrate(&pool).await.unwrap();
    let (pg_upstream, _) = through(&db.url, 0);
    let pg = TcpProxy::start(pg_upstream).await.unwrap();
    let (_, db_url) = through(&db.url, pg.port());
    let (s3_server, _s3_dir) = sealpost_testkit::embedded_s3().await.unwrap();
    let s3 = TcpProxy::start(s3_server.addr()).await.unwrap();

    let sim_cfg = SimConfig {
        latency: Duration::from_millis(5),
        receipt_delay: Duration::from_millis(50),
        faults: sealpost::demo::fault_mix(),
        seed: 14,
        webhook_concurrency: 64,
        ..SimConfig::default()
    };
    let sim = CarrierSim::start("127.0.0.1:0".parse().unwrap(), sim_cfg.clone())
        .await
        .unwrap();
    let free = || sealpost_testkit::free_port().unwrap();
    let gateway_ports = [free(), free()];
    sim.set_webhook_url(Some(format!(
        "http://127.0.0.1:{}/v1/receipts/rbm",
        gateway_ports[0]
    )));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sealpost.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[s3]
endpoint = "http://127.0.0.1:{s3_port}"
access_key_id = "{s3_key}"
secret_access_key = "{s3_secret}"
[retry]
base_ms = 200
max_ms = 2000
[carriers.rbm]
base_url = "{sim}"
agent_id = "{agent}"
bearer_token = "{bearer}"
client_token = "{client_token}"
timeout_ms = 200
[carriers.sms]
base_url = "{sim}"
api_key = "{sms}"
[[tenants]]
id = "{TENANT}"
api_key_sha256 = ["{hash}"]
rate_per_sec = 0.0
"#,
            s3_port = s3.port(),
            s3_key = sealpost_testkit::EMBEDDED_S3_ACCESS_KEY,
            s3_secret = sealpost_testkit::EMBEDDED_S3_SECRET,
            sim = sim.base_url(),
            agent = sim_cfg.agent_id,
            bearer = sim_cfg.bearer_token.expose(),
            client_token = sim_cfg.client_token.expose(),
            sms = sim_cfg.sms_api_key.expose(),
            hash = sealpost_gateway::hash_api_key(API_KEY),
        ),
    )
    .unwrap();
    // Each process logs warnings and errors to its own file, kept across its restarts.
    let process = |roles: &str, port: u16, log: &str| {
        ServeProcess::new(roles, config.clone(), cluster.url())
            .env("SEALPOST_GATEWAY_HTTP_LISTEN", &format!("127.0.0.1:{port}"))
            .env("DATABASE_URL", &db_url)
            .log_to(dir.path().join(log), "warn,async_nats=error")
    };
    let roles = "delivery,receipts,expiry,fallback";
    let procs = Arc::new(tokio::sync::Mutex::new(Processes {
        gateways: vec![
            process("gateway", gateway_ports[0], "gateway-0.log"),
            process("gateway", gateway_ports[1], "gateway-1.log"),
        ],
        delivery: vec![
            process(roles, free(), "delivery-0.log"),
            process(roles, free(), "delivery-1.log"),
        ],
        projector: process("projector", free(), "projector.log"),
        exits: vec![],
    }));
    for (_, p) in procs.lock().await.each() {
        p.spawn();
    }
    // The orchestrator: a process that exits on its own is started again within a second.
    let supervisor = {
        let procs = procs.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                procs.lock().await.supervise(started);
            }
        })
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let gateway_urls: Vec<String> = gateway_ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    for url in &gateway_urls {
        // Generous: five debug processes and a cluster start at once on a loaded machine.
        eventually(Duration::from_secs(180), "a gateway's /healthz", || async {
            let r = http.get(format!("{url}/healthz")).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await
        .unwrap();
    }
    // 50 payloads, uploaded alternately through the two gateways. A gateway knows the blobs
    // uploaded through it and those it has since checked in S3 for a send; a restarted one knows
    // none, so during an S3 outage it must refuse a send it cannot check.
    let mut blobs: Vec<Value> = vec![];
    for b in 0..BLOBS {
        let v: Value = http
            .post(format!("{}/v1/blobs", gateway_urls[b % 2]))
            .bearer_auth(API_KEY)
            .body(format!("sealed MLS ciphertext {b}").into_bytes())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        blobs.push(v);
    }
    let blobs = Arc::new(blobs);

    // The load: n sends spread over `seconds`, each sent until it is answered accepted or
    // duplicate.
    let progress = Arc::new(Progress::default());
    let spacing = Duration::from_secs(seconds) / n.max(1) as u32;
    let sender = {
        let (client, progress, blobs) = (client.clone(), progress.clone(), blobs.clone());
        tokio::spawn(async move {
            let ticks = futures::stream::iter(0..n).then(|i| async move {
                tokio::time::sleep(spacing).await;
                i
            });
            ticks
                .map(|i| {
                    let (client, progress) = (client.clone(), progress.clone());
                    let blob = &blobs[i % BLOBS];
                    let body = serde_json::to_vec(&json!({
                        "idempotency_key": format!("chaos-{i}"),
                        "recipient": format!("+1555{i:07}"),
                        "encrypted_payload_reference": blob["reference"],
                        "payload_sha256": blob["sha256"],
                        "encryption_metadata": {"mls_version": "1", "cipher": "XChaCha20-Poly1305", "key_id": "k"},
                        "metadata": {"tenant_id": TENANT, "message_type": "transactional"},
                        "ttl_seconds": 3600,
                        "fallback": {"channel": "sms", "notice_template": "secure_message_waiting"}
                    }))
                    .unwrap();
                    async move {
                        loop {
                            let reply = tokio::time::timeout(
                                Duration::from_secs(5),
                                client.request(format!("sealpost.cmd.{TENANT}.send"), body.clone().into()),
                            )
                            .await;
                            let v: Option<Value> = match reply {
                                Ok(Ok(m)) => serde_json::from_slice(&m.payload).ok(),
                                _ => None,
                            };
                            match v {
                                Some(v) if v["status"] == "accepted" || v["status"] == "duplicate" => {
                                    progress
                                        .accepted_at
                                        .lock()
                                        .unwrap()
                                        .push(started.elapsed().as_millis() as u64);
                                    let id = v["message_id"].as_str().unwrap().to_owned();
                                    progress.accepted_ids.lock().unwrap().push(id);
                                    return;
                                }
                                Some(v) => {
                                    assert_eq!(v["error"]["code"], "unavailable", "{v}");
                                    progress.unavailable.fetch_add(1, Ordering::SeqCst);
                                    let why = v["error"]["message"].as_str().unwrap_or("").to_owned();
                                    *progress.refusals.lock().unwrap().entry(why).or_default() += 1;
                                    let at = started.elapsed().as_secs();
                                    *progress.refused_at.lock().unwrap().entry(at).or_default() += 1;
                                }
                                None => {}
                            }
                            progress.resends.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                })
                .buffer_unordered(32)
                .collect::<Vec<()>>()
                .await;
        })
    };

    // The faults, one after another, in rounds, until the sends are done (at least one round).
    let mut figures = Figures::default();
    // When each fault began (ms since the start), for the time to recover.
    let mut began: Vec<(&'static str, u64)> = vec![];
    let mut rounds = 0;
    while rounds == 0 || !sender.is_finished() {
        rounds += 1;
        for step in 0..8 {
            if rounds > 1 && sender.is_finished() {
                break;
            }
            let t = Instant::now();
            let what: &'static str = match step {
                0 => {
                    let leader = cluster.leader_of(&client, "SEALPOST_EVENTS").await.unwrap();
                    cluster.kill(leader);
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    cluster.restart(leader).await.unwrap();
                    "events leader node"
                }
                1 | 6 => {
                    let mut procs = procs.lock().await;
                    let g = &mut procs.gateways[usize::from(step == 6)];
                    g.kill9().await;
                    g.spawn();
                    "gateway"
                }
                3 | 7 => {
                    let mut procs = procs.lock().await;
                    let d = &mut procs.delivery[usize::from(step == 7)];
                    d.kill9().await;
                    d.spawn();
                    "delivery process"
                }
                4 => {
                    let mut procs = procs.lock().await;
                    let p = &mut procs.projector;
                    p.kill9().await;
                    p.spawn();
                    "projector"
                }
                5 => {
                    pg.cut();
                    let until = Instant::now() + Duration::from_secs(10);
                    while Instant::now() < until {
                        let known = progress.accepted_ids.lock().unwrap().first().cloned();
                        if let Some(id) = known {
                            let url = format!("{}/v1/messages/{id}", gateway_urls[1]);
                            if let Ok(r) = http.get(url).bearer_auth(API_KEY).send().await {
                                let ok = r.status().is_success();
                                let v: Value = r.json().await.unwrap_or_default();
                                if ok {
                                    figures.status_during_pg_outage += 1;
                                    if v["source"] == "events" {
                                        figures.status_from_events += 1;
                                    }
                                }
                            }
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    pg.restore();
                    "postgres outage"
                }
                2 => {
                    s3.cut();
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    s3.restore();
                    "s3 outage"
                }
                _ => unreachable!("eight steps a round"),
            };
            eprintln!(
                "chaos: {:>5.1} s  {what} ({:.1} s)",
                t.duration_since(started).as_secs_f64(),
                t.elapsed().as_secs_f64()
            );
            if what.ends_with("outage") {
                *figures.outages.entry(what).or_default() += 1;
            } else {
                *figures.kills.entry(what).or_default() += 1;
            }
            began.push((what, t.duration_since(started).as_millis() as u64));
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    sender.await.unwrap();
    let send_time = started.elapsed();

    // Every acknowledged send: one message id each, and each ends displayed or terminal.
    let mut ids = progress.accepted_ids.lock().unwrap().clone();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "one message id per idempotency key");
    let store = store_on(&client);
    let tenant = sealpost_domain::TenantId::new(TENANT).unwrap();
    let mut ends: BTreeMap<String, usize> = BTreeMap::new();
    let mut finals = BTreeMap::new();
    for id in &ids {
        let agg =
            sealpost_domain::aggregate_id(&tenant, &sealpost_domain::MessageId::new(id).unwrap());
        let loaded = eventually(Duration::from_secs(180), "the message settles", || async {
            let l = store.load(&agg).await.ok()?;
            let s = l.aggregate.status;
            (s == Status::Displayed || s.is_terminal_failure()).then_some(l)
        })
        .await;
        let loaded = match loaded {
            Ok(l) => l,
            Err(e) => {
                let history: Vec<String> = store
                    .load_raw(&agg)
                    .await
                    .map(|r| r.iter().map(|e| e.event_type().to_owned()).collect())
                    .unwrap_or_default();
                let mut procs = procs.lock().await;
                let logs: Vec<String> = procs
                    .each()
                    .map(|(name, p)| format!("{name}:\n{}", p.log_tail(15)))
                    .collect();
                panic!(
                    "{id}: {e}; its events: {history:?}; at the carrier: {:?}; the simulator: \
                     {:?}; exits: {:?}; the last log lines:\n{}",
                    sim.requests_for(id)
                        .iter()
                        .map(|r| r.status)
                        .collect::<Vec<_>>(),
                    sim.stats(),
                    procs.exits,
                    logs.join("\n")
                )
            }
        };
        *ends.entry(loaded.aggregate.status.to_string()).or_default() += 1;
        finals.insert(agg, loaded);
    }

    // At the carrier: at most one accepted submission per message, exactly one if displayed.
    for (agg, loaded) in &finals {
        let (_, id) = agg.split_once('.').unwrap();
        let accepted = sim
            .requests_for(id)
            .iter()
            .filter(|r| r.status == 200)
            .count();
        let displayed = loaded.aggregate.status == Status::Displayed;
        assert!(
            accepted <= 1 && (!displayed || accepted == 1),
            "{agg}: {accepted} accepted submissions, {:?}",
            loaded.aggregate.status
        );
    }

    // The views: caught up, every row equal to its aggregate, every event counted once.
    let js = async_nats::jetstream::new(client.clone());
    let last = js
        .get_stream("SEALPOST_EVENTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .last_sequence as i64;
    eventually(
        Duration::from_secs(120),
        "the projections catch up",
        || async {
            let cps = crate::projections::checkpoints(&pool).await;
            (cps.len() == 3 && cps.values().all(|v| *v == last)).then_some(())
        },
    )
    .await
    .unwrap();
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for (agg, loaded) in &finals {
        let (t, m) = agg.split_once('.').unwrap();
        let row = sealpost_projections::message_row(&pool, t, m)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{agg}: no row"));
        let a = &loaded.aggregate;
        assert_eq!(row.status, a.status, "{agg}");
        assert_eq!(row.event_count as usize, loaded.version, "{agg}");
        assert_eq!(row.last_seq as u64, loaded.last_stream_seq, "{agg}");
        assert_eq!(row.carrier, a.carrier, "{agg}");
        for raw in store.load_raw(agg).await.unwrap() {
            *expected.entry(raw.event_type().to_owned()).or_default() += 1;
        }
    }
    assert_eq!(
        crate::projections::metric_counts(&pool).await,
        expected,
        "each event counted exactly once"
    );

    // Time to recover: from a fault's start to the next accepted send (while sends went on).
    let accepted_at = progress.accepted_at.lock().unwrap().clone();
    for (what, at) in &began {
        if let Some(next) = accepted_at.iter().filter(|t| *t >= at).min() {
            let e = figures.recovery_ms.entry(what).or_default();
            *e = (*e).max(u128::from(next - at));
        }
    }
    let stats = sim.stats();
    eprintln!(
        "chaos: refusals per second of the run: {:?}",
        progress.refused_at.lock().unwrap()
    );
    eprintln!(
        "chaos: {n} messages sent in {:.0} s, ended {ends:?}; kills {:?}; outages {:?}; \
         resends {} ({} refused unavailable: {:?}); carrier 409s {}; time to a next accepted send, \
         longest per fault (ms) {:?}; status during Postgres outages {} answered, {} from the \
         events; rounds {rounds}; total {:.0} s",
        send_time.as_secs_f64(),
        figures.kills,
        figures.outages,
        progress.resends.load(Ordering::SeqCst),
        progress.unavailable.load(Ordering::SeqCst),
        progress.refusals.lock().unwrap(),
        stats.duplicates_409,
        figures.recovery_ms,
        figures.status_during_pg_outage,
        figures.status_from_events,
        started.elapsed().as_secs_f64(),
    );
    assert!(figures.kills.values().all(|k| *k >= 1) && figures.kills.len() == 4);
    assert!(
        figures.status_during_pg_outage > 0
            && figures.status_from_events == figures.status_during_pg_outage,
        "status answered from the events while Postgres was away: {figures:?}"
    );
    supervisor.abort();
    let mut procs = procs.lock().await;
    eprintln!(
        "chaos: processes that exited on their own and were restarted: {}",
        procs.exits.len()
    );
    for (_, p) in procs.each() {
        p.kill9().await;
    }
    // A process started during a fault waits it out instead of exiting (the supervisor only
    // keeps an exit from hiding the checks above).
    assert!(
        procs.exits.is_empty(),
        "processes exited on their own: {:?}",
        procs.exits
    );
}
