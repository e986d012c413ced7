//! The dashboard rendered by a real browser: lifecycles of two tenants go through the event store,
//! a Sealpost process started with `sealpost::App::start` (gateway and projector roles, the
//! production wiring) applies them to a Postgres database of its own and serves the dashboard at
//! `/`, and headless Chromium loads it, runs the page's JS (which fetches `/dashboard.json`) and
//! dumps the DOM. Every figure read from the DOM by its `data-testid` must equal what
//! `summary(pool)` and plain SQL say.
//!
//! Chromium: `$SEALPOST_CHROMIUM`, else /usr/bin/chromium (scripts/test installs it).

// Test fixtures: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use sealpost::{App, Role};
use sealpost_domain::{
    aggregate_id, CarrierOutcome, MessageCommand, MessageId, ReceiptKind, Status, TenantId,
};
use sealpost_eventstore::names::Stream;
use sealpost_eventstore::CommandExecutor;
use sealpost_projections::ProjectionName;
use sealpost_testkit::{eventually, PgDatabase};
use sqlx::PgPool;
use time::OffsetDateTime;

use crate::support::*;

// ---------------------------------------------------------------------------------------------
// Fixtures

fn receipt(id: String, kind: ReceiptKind, at: OffsetDateTime) -> MessageCommand {
    MessageCommand::RecordReceipt {
        receipt_id: id,
        kind,
        at,
    }
}

/// Latencies from acceptance, in milliseconds, of the delivered and displayed receipts: the
/// n-th message that gets a receipt of a kind gets the n-th latency of that kind.
const DELIVERED_MS: [i64; 5] = [300, 1_500, 7_000, 45_000, 200_000];
const DISPLAYED_MS: [i64; 4] = [2_000, 20_000, 100_000, 1_000_000];

#[derive(Debug, Clone, Copy)]
enum Outcome {
    Displayed,
    Delivered,
    Failed,
    Fallback,
    Retry,
    Queued,
}

/// The receipts' times: `accepted` plus the next latency of each kind.
struct Latencies {
    delivered: std::vec::IntoIter<i64>,
    displayed: std::vec::IntoIter<i64>,
}

impl Latencies {
    fn new() -> Self {
        Latencies {
            delivered: DELIVERED_MS.to_vec().into_iter(),
            displayed: DISPLAYED_MS.to_vec().into_iter(),
        }
    }
}

fn commands(
    key: &str,
    outcome: Outcome,
    accepted: OffsetDateTime,
    lat: &mut Latencies,
) -> Vec<MessageCommand> {
    let at = |kind: &mut std::vec::IntoIter<i64>| {
        accepted + Duration::from_millis(kind.next().expect("a latency left") as u64)
    };
    let acked = || {
        result(
            1,
            CarrierOutcome::Acked {
                carrier_message_id: format!("cm-{key}"),
            },
        )
    };
    match outcome {
        Outcome::Displayed => vec![
            acked(),
            receipt(
                format!("{key}-d"),
                ReceiptKind::Delivered,
                at(&mut lat.delivered),
            ),
            receipt(
                format!("{key}-r"),
                ReceiptKind::Displayed,
                at(&mut lat.displayed),
            ),
        ],
        Outcome::Delivered => vec![
            acked(),
            receipt(
                format!("{key}-d"),
                ReceiptKind::Delivered,
                at(&mut lat.delivered),
            ),
        ],
        Outcome::Failed => vec![result(1, CarrierOutcome::Permanent { code: "400".into() })],
        Outcome::Fallback => vec![result(1, CarrierOutcome::NotRcsCapable)],
        Outcome::Retry => vec![result(
            1,
            CarrierOutcome::Transient {
                code: "503".into(),
                retry_after: None,
            },
        )],
        Outcome::Queued => vec![],
    }
}

/// Accepts message `key` for `tenant` and runs it to `outcome`.
async fn write(
    ex: &CommandExecutor<sealpost_domain::Message>,
    tenant: &str,
    key: &str,
    outcome: Outcome,
    lat: &mut Latencies,
) {
    let mut a = accept(key);
    let t = TenantId::new(tenant).unwrap();
    a.payload_ref = format!("s3://sealpost/tenants/{tenant}/{key}.enc");
    a.tenant_id = t.clone();
    let a_at = a.at;
    let id = aggregate_id(&t, &MessageId::derive(&t, key));
    ex.execute(&id, MessageCommand::Accept(Box::new(a)), &meta("dash"))
        .await
        .unwrap();
    for cmd in commands(key, outcome, a_at, lat) {
        ex.execute(&id, cmd, &meta("dash")).await.unwrap();
    }
}

/// Waits until every projection's checkpoint is the stream's last sequence and its consumer has
/// nothing pending (so the lag the page shows is settled at 0).
async fn caught_up(pool: &PgPool, client: &async_nats::Client) {
    let js = async_nats::jetstream::new(client.clone());
    let last = {
        let mut s = js.get_stream(Stream::Events.as_str()).await.unwrap();
        s.info().await.unwrap().state.last_sequence as i64
    };
    eventually(
        Duration::from_secs(30),
        "every projection to reach the stream's end",
        || async {
            let cps: Vec<(String, i64)> =
                sqlx::query_as("SELECT projection, last_seq FROM projection_checkpoints")
                    .fetch_all(pool)
                    .await
                    .unwrap();
            let mut lag = 0;
            for &name in ProjectionName::ALL {
                lag += sealpost_projections::lag(&js, name).await.unwrap();
            }
            (cps.len() == 3 && cps.iter().all(|(_, s)| *s == last) && lag == 0).then_some(())
        },
    )
    .await
    .unwrap();
}

/// A Sealpost process with `roles`, on `env`'s server, with `postgres_url` as its database.
async fn start(
    env: &Env,
    dir: &std::path::Path,
    postgres_url: &str,
    roles: &[Role],
) -> sealpost::Running {
    let mut cfg = app_config(&env.server.url(), dir, vec![]);
    cfg.postgres.url = postgres_url.into();
    cfg.postgres.batch_size = 5;
    cfg.postgres.batch_wait = Duration::from_millis(5);
    App::start(cfg, roles, std::future::pending())
        .await
        .expect("sealpost starts")
}

// ---------------------------------------------------------------------------------------------
// Headless Chromium and the dumped DOM

fn chromium() -> String {
    let bin = std::env::var("SEALPOST_CHROMIUM")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "/usr/bin/chromium".to_owned());
    assert!(
        std::path::Path::new(&bin).is_file(),
        "headless Chromium not found at {bin}: run scripts/test (its ensure_chromium installs \
         Debian's chromium package) or set SEALPOST_CHROMIUM to a Chromium binary"
    );
    bin
}

/// Loads `url` in headless Chromium, lets its JS run for up to 5 s of virtual time, and returns
/// the serialized DOM without its scripts.
async fn dump_dom(bin: &str, url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--no-proxy-server",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(["--virtual-time-budget=5000", "--dump-dom", url])
    .stdin(std::process::Stdio::null())
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("chromium did not finish within 90 s")
        .expect("chromium starts");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "chromium exited with {}; stderr:\n{stderr}",
        out.status
    );
    let dom = String::from_utf8(out.stdout).unwrap();
    assert!(
        dom.contains("</html>"),
        "chromium dumped no document; stderr:\n{stderr}"
    );
    without_scripts(&dom)
}

/// `dom` without its `<script>` elements, whose source names the test ids too.
fn without_scripts(dom: &str) -> String {
    let mut out = String::with_capacity(dom.len());
    let mut rest = dom;
    while let Some(i) = rest.find("<script") {
        out.push_str(&rest[..i]);
        match rest[i..].find("</script>") {
            Some(j) => rest = &rest[i + j + "</script>".len()..],
            None => rest = "",
        }
    }
    out.push_str(rest);
    out
}

/// One element found by `data-testid`: its own text (up to its first child tag) and `data-value`.
#[derive(Debug, Clone)]
struct Elem {
    text: String,
    value: Option<String>,
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

fn find_all(dom: &str, testid: &str) -> Vec<Elem> {
    let needle = format!("data-testid=\"{testid}\"");
    let mut out = vec![];
    let mut from = 0;
    while let Some(i) = dom[from..].find(&needle) {
        let at = from + i;
        let start = dom[..at].rfind('<').unwrap();
        let end = at + dom[at..].find('>').unwrap();
        let tag = &dom[start..end];
        let value = tag.find("data-value=\"").map(|v| {
            let rest = &tag[v + "data-value=\"".len()..];
            unescape(&rest[..rest.find('"').unwrap()])
        });
        let body = &dom[end + 1..];
        let text = unescape(&body[..body.find('<').unwrap_or(body.len())]);
        out.push(Elem { text, value });
        from = end;
    }
    out
}

fn find(dom: &str, testid: &str) -> Elem {
    let all = find_all(dom, testid);
    assert_eq!(
        all.len(),
        1,
        "expected exactly one element with data-testid=\"{testid}\" in the rendered page:\n{dom}"
    );
    all.into_iter().next().unwrap()
}

/// The `data-value` of `testid` as an integer.
fn int(dom: &str, testid: &str) -> i64 {
    let e = find(dom, testid);
    assert_eq!(
        e.value.as_deref(),
        Some(e.text.as_str()),
        "{testid}: the text shown must be the raw count"
    );
    e.text
        .parse()
        .unwrap_or_else(|_| panic!("{testid}: '{}' is not an integer", e.text))
}

fn opt_int(dom: &str, testid: &str) -> Option<i64> {
    let v = find(dom, testid).value.unwrap();
    (!v.is_empty()).then(|| v.parse().unwrap())
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn headless_chromium_renders_the_summary_of_the_views() {
    let bin = chromium();
    let env = Env::start().await;
    let db = PgDatabase::create().await.expect("a test database");
    let pool = sealpost_projections::connect(&db.url, 4).await.unwrap();
    let ex = env.executor();

    use Outcome::*;
    let plan: [(&str, &[Outcome]); 2] = [
        (
            "acme-corp",
            &[Displayed, Displayed, Displayed, Failed, Fallback, Queued],
        ),
        ("globex", &[Displayed, Delivered, Failed, Failed, Retry]),
    ];
    let mut lat = Latencies::new();
    for (tenant, outcomes) in plan {
        for (i, o) in outcomes.iter().enumerate() {
            write(&ex, tenant, &format!("dash-{tenant}-{i}"), *o, &mut lat).await;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let app = start(&env, dir.path(), &db.url, &[Role::Gateway, Role::Projector]).await;
    assert_eq!(app.projections(), ProjectionName::ALL);
    caught_up(&pool, &env.client).await;

    let addr = app.http_addr().unwrap();
    let t0 = std::time::Instant::now();
    let dom = dump_dom(&bin, &format!("http://{addr}/")).await;
    eprintln!(
        "chromium rendered the dashboard in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let summary = sealpost_projections::summary(&pool).await.unwrap();

    // The fetch worked and the page rendered.
    assert_eq!(
        find(&dom, "error").text,
        "",
        "the page shows an error:\n{dom}"
    );
    assert_ne!(
        find(&dom, "updated-at").text,
        "never",
        "never refreshed:\n{dom}"
    );

    // Success rate: 5 delivered/displayed of 9 settled (4 failed or fallen back).
    let rate = summary.success_rate.unwrap();
    assert!(
        (rate - 5.0 / 9.0).abs() < 1e-12,
        "summary success rate {rate}"
    );
    let shown = find(&dom, "success-rate");
    assert_eq!(shown.value.unwrap().parse::<f64>().unwrap(), rate);
    assert_eq!(shown.text, format!("{:.1}%", rate * 100.0));

    // Totals, states and the in-view queue.
    let sql_total: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(sql_total, 11);
    assert_eq!(int(&dom, "total"), sql_total);
    assert_eq!(int(&dom, "total"), summary.total);
    for (state, n) in &summary.by_status {
        assert_eq!(int(&dom, &format!("status-{state}")), *n, "state {state}");
    }
    assert_eq!(int(&dom, "queue-queued"), 1);
    assert_eq!(int(&dom, "queue-retry_scheduled"), 1);
    assert_eq!(summary.by_status.get("queued"), Some(&1));
    assert_eq!(summary.by_status.get("retry_scheduled"), Some(&1));

    // Per tenant: totals and states equal SQL.
    let per_tenant: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT tenant, status, count(*) FROM messages GROUP BY tenant, status ORDER BY 1, 2",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut totals: BTreeMap<String, i64> = BTreeMap::new();
    for (tenant, status, n) in &per_tenant {
        *totals.entry(tenant.clone()).or_default() += n;
        assert_eq!(
            int(&dom, &format!("tenant-{tenant}-{status}")),
            *n,
            "{tenant} {status}"
        );
    }
    assert_eq!(
        totals,
        BTreeMap::from([("acme-corp".to_owned(), 6), ("globex".to_owned(), 5)])
    );
    for (tenant, n) in &totals {
        assert_eq!(int(&dom, &format!("tenant-{tenant}-total")), *n);
    }
    // A state a tenant has none of is shown as 0.
    assert_eq!(int(&dom, "tenant-globex-queued"), 0);
    assert_eq!(int(&dom, "tenant-acme-corp-delivered"), 0);

    // Latency percentiles, worked out by hand from the receipts' latencies (not from the code
    // under test): each latency counts as its bucket's upper bound, and the percentile p of n
    // latencies is the ceil(p * n)-th smallest (nearest rank).
    // - delivered, 5 latencies [300 ms, 1.5 s, 7 s, 45 s, 200 s] fall in the buckets
    //   [500, 2500, 10000, 60000, 300000]: p50 = 3rd = 10000, p90 = p99 = 5th = 300000;
    // - displayed, 4 latencies [2 s, 20 s, 100 s, 1000 s] fall in [2500, 30000, 300000,
    //   3600000]: p50 = 2nd = 30000, p90 = p99 = 4th = 3600000.
    for (kind, count, p50, p90, p99) in [
        ("delivered", 5, 10_000, 300_000, 300_000),
        ("displayed", 4, 30_000, 3_600_000, 3_600_000),
    ] {
        assert_eq!(int(&dom, &format!("latency-{kind}-count")), count, "{kind}");
        assert_eq!(
            opt_int(&dom, &format!("latency-{kind}-p50")),
            Some(p50),
            "{kind}"
        );
        assert_eq!(
            opt_int(&dom, &format!("latency-{kind}-p90")),
            Some(p90),
            "{kind}"
        );
        assert_eq!(
            opt_int(&dom, &format!("latency-{kind}-p99")),
            Some(p99),
            "{kind}"
        );
        assert_eq!(int(&dom, &format!("latency-{kind}-over-max")), 0, "{kind}");
    }

    // Per carrier: event counts and failed attempts.
    assert!(!summary.carriers.is_empty());
    for c in &summary.carriers {
        for (event, n) in &c.events {
            assert_eq!(int(&dom, &format!("carrier-{}-{event}", c.carrier)), *n);
        }
        for (code, n) in &c.failures {
            assert_eq!(
                int(&dom, &format!("carrier-{}-failure-{code}", c.carrier)),
                *n
            );
        }
    }

    // Recent failures: one row per failed or fallen-back message, with tenant and reason.
    let failed: Vec<&str> = [Status::Failed, Status::FallbackTriggered, Status::Expired]
        .iter()
        .map(|s| s.as_str())
        .collect();
    let sql_failures: i64 =
        sqlx::query_scalar("SELECT count(*) FROM messages WHERE status = ANY($1::text[])")
            .bind(&failed)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(sql_failures, 4);
    assert_eq!(int(&dom, "failures-count"), sql_failures);
    assert_eq!(find_all(&dom, "failure-row").len() as i64, sql_failures);
    let ids: Vec<String> = find_all(&dom, "failure-message-id")
        .into_iter()
        .map(|e| e.text)
        .collect();
    let expected: Vec<String> = summary
        .recent_failures
        .iter()
        .map(|f| f.message_id.clone())
        .collect();
    assert_eq!(ids, expected);
    let tenants: Vec<String> = find_all(&dom, "failure-tenant")
        .into_iter()
        .map(|e| e.text)
        .collect();
    assert_eq!(tenants.iter().filter(|t| *t == "globex").count(), 2);
    assert_eq!(tenants.iter().filter(|t| *t == "acme-corp").count(), 2);
    let reasons: Vec<String> = find_all(&dom, "failure-reason")
        .into_iter()
        .map(|e| e.text)
        .collect();
    assert!(
        reasons.iter().all(|r| r != "—"),
        "every failure has a reason: {reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("400")),
        "the permanent failure's code is shown: {reasons:?}"
    );

    // Projection lag and checkpoints.
    for name in ProjectionName::ALL {
        assert_eq!(int(&dom, &format!("lag-{}", name.as_str())), 0);
        assert_eq!(
            int(&dom, &format!("checkpoint-{}", name.as_str())),
            summary.checkpoints[name.as_str()]
        );
    }

    // Never a recipient, in clear or masked.
    assert!(!dom.contains("15551234567"), "a recipient leaked:\n{dom}");
    assert!(!dom.contains("+*"), "a masked recipient leaked:\n{dom}");

    charts_show_the_views_points(&bin, &format!("http://{addr}"), &pool).await;
}

/// The values of the points of one chart series, as drawn.
fn points(dom: &str, chart: &str, series: &str) -> Vec<f64> {
    find_all(dom, &format!("point-{chart}-{series}"))
        .into_iter()
        .map(|e| e.value.unwrap().parse().unwrap())
        .collect()
}

fn present(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .filter_map(serde_json::Value::as_f64)
        .collect()
}

/// Issue 12, charts: each chart has one point per value the view has, with the view's values.
/// The per-minute series are checked against plain SQL over the same minutes; the DOM is
/// compared with the JSON fetched around it (again if a minute boundary fell in between).
async fn charts_show_the_views_points(bin: &str, base: &str, pool: &PgPool) {
    let json = || async {
        reqwest::get(format!("{base}/dashboard.json"))
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    let (dom, data, samples_after) = loop {
        let before = json().await;
        let dom = dump_dom(bin, &format!("{base}/")).await;
        let after = json().await;
        if before["per_minute"]["minutes"] == after["per_minute"]["minutes"] {
            let samples_after = after["samples"].as_array().unwrap().len();
            break (dom, before, samples_after);
        }
    };
    let m = &data["per_minute"];
    let minutes: Vec<String> = m["minutes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(minutes.len(), 60, "the last hour, one point a minute");

    // Events per minute: 60 points per series, the JSON's values, which are the view's sums.
    for (series, event_type) in [
        ("accepted", "accepted"),
        ("delivered", "delivered"),
        ("displayed", "displayed"),
        ("failed", "failed"),
    ] {
        let drawn = points(&dom, "chart-events", series);
        assert_eq!(drawn, present(&m[series]), "{series}");
        assert_eq!(drawn.len(), 60, "{series}");
        let mut from_sql = Vec::with_capacity(60);
        for minute in &minutes {
            let at = OffsetDateTime::parse(minute, &time::format_description::well_known::Rfc3339)
                .unwrap();
            let n: Option<i64> = sqlx::query_scalar(
                "SELECT sum(count)::int8 FROM metrics_events WHERE minute = $1 AND event_type = $2",
            )
            .bind(at)
            .bind(event_type)
            .fetch_one(pool)
            .await
            .unwrap();
            from_sql.push(n.unwrap_or(0) as f64);
        }
        assert_eq!(drawn, from_sql, "{series}: the chart is not the view");
    }
    // Every message was accepted just now, so the hour holds all 11.
    assert_eq!(
        points(&dom, "chart-events", "accepted").iter().sum::<f64>(),
        11.0
    );

    // Success rate and latency: a point for each minute that has a value, and only those.
    for (chart, series, key) in [
        ("chart-success", "success_rate", "success_rate"),
        ("chart-latency", "p50", "latency_p50_ms"),
        ("chart-latency", "p99", "latency_p99_ms"),
    ] {
        let drawn = points(&dom, chart, series);
        assert_eq!(drawn, present(&m[key]), "{chart} {series}");
        assert!(!drawn.is_empty(), "{chart} {series}: nothing drawn");
    }
    // The success rate of a minute is its delivered over its settled.
    for (i, rate) in m["success_rate"].as_array().unwrap().iter().enumerate() {
        let settled = m["settled"][i].as_f64().unwrap();
        match rate.as_f64() {
            Some(r) => assert_eq!(r, m["delivered"][i].as_f64().unwrap() / settled),
            None => assert_eq!(settled, 0.0),
        }
    }

    // The sampled backlog: one point per sample and series (samples are added every 15 s, so
    // the page's count lies between the JSON's before and after it).
    let drawn = points(&dom, "chart-backlog", "delivery_queue_depth").len();
    let before = data["samples"].as_array().unwrap().len();
    assert!(
        drawn >= before.max(1) && drawn <= samples_after,
        "{drawn} queue-depth points for {before}..{samples_after} samples"
    );
    for name in ProjectionName::ALL {
        assert_eq!(
            points(&dom, "chart-backlog", &format!("lag_{}", name.as_str())).len(),
            drawn,
            "{name:?}"
        );
    }
}

#[tokio::test]
async fn without_a_database_the_dashboard_answers_503_with_what_to_do() {
    let env = Env::start().await;
    let dir = tempfile::tempdir().unwrap();
    for (what, url) in [
        ("no database configured", ""),
        (
            "an unreachable database",
            "postgres://postgres@127.0.0.1:1/postgres",
        ),
    ] {
        let app = start(&env, dir.path(), url, &[Role::Gateway]).await;
        let addr = app.http_addr().unwrap();
        for path in ["/", "/dashboard.json"] {
            let res = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
            assert_eq!(res.status().as_u16(), 503, "{what}: {path}");
            let body = res.text().await.unwrap();
            assert!(
                body.contains("--roles projector") && body.contains("DATABASE_URL"),
                "{what}: {path} says what to do: {body}"
            );
            assert!(!body.contains("127.0.0.1:1"), "{what}: no URL in {body}");
        }
    }
}
