//! The operations dashboard the gateway serves at `/`: one self-contained HTML page (inline CSS
//! and JS, nothing fetched from elsewhere, so it works offline) that polls `/dashboard.json`,
//! which is [`sealpost_projections::summary`], the metrics view per minute for the last hour
//! ([`sealpost_projections::per_minute`]) and the projections' consumer backlog. The page draws
//! the per-minute series and the sampled backlog as plain SVG charts.
//!
//! Projection lag and the delivery queue depth are live values, not stored in a view: this
//! process samples them every [`SAMPLE_EVERY`] and keeps the last hour in memory, so their
//! charts start when the process started and each gateway shows its own samples.
//!
//! It reads only the Postgres views the projector builds, so it shows what the projector has
//! applied, not the live process state. It never shows recipients: the summary has none.
//!
//! Without a reachable, migrated database, `/` and `/dashboard.json` answer 503 with what to do,
//! and the gateway keeps serving everything else. The pool connects lazily, so a database that
//! comes up after the gateway is picked up on the next request.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sealpost_projections::ProjectionName;
use sqlx::PgPool;

/// How often the live backlog (projection lag, delivery queue depth) is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(15);
/// Samples kept: one hour.
const SAMPLES_KEPT: usize = 240;
/// Minutes of the per-minute charts.
const CHART_MINUTES: i32 = 60;

/// What the dashboard reads: the views' pool (`None` when no database is configured) and,
/// optionally, JetStream for the projections' backlog.
#[derive(Debug, Clone)]
pub struct Dashboard {
    pool: Option<PgPool>,
    js: Option<async_nats::jetstream::Context>,
    samples: Arc<Samples>,
}

/// The sampled backlog of the last hour; the sampling task stops when the last clone of the
/// dashboard is dropped.
#[derive(Debug, Default)]
struct Samples {
    kept: Mutex<VecDeque<Sample>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Samples {
    fn drop(&mut self) {
        if let Ok(mut t) = self.task.lock() {
            if let Some(t) = t.take() {
                t.abort();
            }
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
struct Sample {
    at: String,
    /// Unapplied events per projection (`None`: unreadable).
    projection_lag: BTreeMap<&'static str, Option<u64>>,
    /// Pending + unacknowledged jobs of the `delivery` consumer (`None`: unreadable).
    delivery_queue_depth: Option<u64>,
}

const NOT_READY: &str = "The dashboard reads the Postgres views that the projector builds. \
Configure PostgreSQL ([postgres] url, SEALPOST_POSTGRES_URL or DATABASE_URL) and run \
`sealpost migrate` and `sealpost serve --roles projector`.";

impl Dashboard {
    /// A dashboard over `pool`, with the backlog read through `js` when given.
    /// Starts sampling the backlog when `js` is given (call from within the runtime).
    pub fn new(pool: Option<PgPool>, js: Option<async_nats::jetstream::Context>) -> Self {
        let d = Self {
            pool,
            js,
            samples: Arc::new(Samples::default()),
        };
        if d.js.is_some() {
            let sampler = d.clone_for_sampling();
            let task = tokio::spawn(async move {
                let mut tick = tokio::time::interval(SAMPLE_EVERY);
                loop {
                    tick.tick().await;
                    sampler.sample().await;
                }
            });
            if let Ok(mut t) = d.samples.task.lock() {
                *t = Some(task);
            }
        }
        d
    }

    /// A dashboard sharing the samples' buffer but not their ownership, for the sampling task
    /// (so that dropping the last real dashboard stops it).
    fn clone_for_sampling(&self) -> Sampler {
        Sampler {
            js: self.js.clone(),
            kept: Arc::downgrade(&self.samples),
        }
    }

    /// A dashboard over a lazily connecting pool for `url` (`None`: no database configured).
    /// Never fails for an unreachable database: requests answer 503 until it is reachable.
    pub fn lazy(url: Option<&str>, js: Option<async_nats::jetstream::Context>) -> Self {
        let pool = url.and_then(|u| {
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(2)
                .acquire_timeout(Duration::from_secs(3))
                .connect_lazy(u)
                .map_err(|e| tracing::warn!(error = %e, "dashboard: invalid PostgreSQL URL"))
                .ok()
        });
        Self::new(pool, js)
    }

    /// `GET /` (the page) and `GET /dashboard.json`.
    pub fn router(self) -> Router {
        Router::new()
            .route("/", get(page))
            .route("/dashboard.json", get(data))
            .with_state(self)
    }

    /// The pool if the views can be read (`SELECT` on the checkpoint table works), else why not.
    async fn ready_pool(&self) -> Result<&PgPool, NotReady> {
        let Some(pool) = self.pool.as_ref() else {
            return Err(NotReady::NoDatabase);
        };
        match sqlx::query("SELECT 1 FROM projection_checkpoints LIMIT 1")
            .fetch_optional(pool)
            .await
        {
            Ok(_) => Ok(pool),
            Err(e) => Err(NotReady::Unreadable(short_error(&e))),
        }
    }

    /// Unapplied events per projection; empty without JetStream, `None` for an unreadable one.
    async fn lag(&self) -> BTreeMap<&'static str, Option<u64>> {
        lag(self.js.as_ref()).await
    }

    fn samples(&self) -> Vec<Sample> {
        self.samples
            .kept
            .lock()
            .map(|k| k.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// The sampling task's handle on the dashboard.
struct Sampler {
    js: Option<async_nats::jetstream::Context>,
    kept: std::sync::Weak<Samples>,
}

impl Sampler {
    async fn sample(&self) {
        let projection_lag = lag(self.js.as_ref()).await;
        let delivery_queue_depth = match &self.js {
            Some(js) => tokio::time::timeout(Duration::from_secs(2), delivery_depth(js))
                .await
                .ok()
                .flatten(),
            None => None,
        };
        let Some(samples) = self.kept.upgrade() else {
            return;
        };
        let sample = Sample {
            at: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            projection_lag,
            delivery_queue_depth,
        };
        let kept = samples.kept.lock();
        if let Ok(mut k) = kept {
            k.push_back(sample);
            while k.len() > SAMPLES_KEPT {
                k.pop_front();
            }
        }
    }
}

async fn lag(js: Option<&async_nats::jetstream::Context>) -> BTreeMap<&'static str, Option<u64>> {
    let mut out = BTreeMap::new();
    if let Some(js) = js {
        for &name in ProjectionName::ALL {
            let lag =
                tokio::time::timeout(Duration::from_secs(2), sealpost_projections::lag(js, name))
                    .await
                    .ok()
                    .and_then(Result::ok);
            out.insert(name.as_str(), lag);
        }
    }
    out
}

/// Pending + unacknowledged jobs of the delivery consumer.
async fn delivery_depth(js: &async_nats::jetstream::Context) -> Option<u64> {
    use sealpost_eventstore::names::Durable;
    let stream = js
        .get_stream(Durable::Delivery.stream().as_str())
        .await
        .ok()?;
    let mut c: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer(Durable::Delivery.as_str()).await.ok()?;
    let info = c.info().await.ok()?;
    Some(info.num_pending + info.num_ack_pending as u64)
}

/// Why the dashboard cannot show the views; the text says what to configure.
#[derive(Debug, thiserror::Error)]
enum NotReady {
    #[error("No PostgreSQL is configured. {NOT_READY}")]
    NoDatabase,
    #[error("The projection views cannot be read ({0}). {NOT_READY}")]
    Unreadable(&'static str),
    #[error("Reading the summary failed. {NOT_READY}")]
    Summary,
}

/// A database error without connection details (the URL may carry a password).
fn short_error(e: &sqlx::Error) -> &'static str {
    match e {
        sqlx::Error::Database(_) => "the tables are missing or unreadable",
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => {
            "the database is not reachable"
        }
        _ => "the database answered with an error",
    }
}

fn unavailable(why: NotReady) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("Sealpost dashboard unavailable\n\n{why}\n"),
    )
        .into_response()
}

async fn page(State(d): State<Dashboard>) -> Response {
    if let Err(why) = d.ready_pool().await {
        return unavailable(why);
    }
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
        .into_response()
}

async fn data(State(d): State<Dashboard>) -> Response {
    let pool = match d.ready_pool().await {
        Ok(p) => p,
        Err(why) => return unavailable(why),
    };
    let summary = match sealpost_projections::summary(pool).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "dashboard: reading the summary");
            return unavailable(NotReady::Summary);
        }
    };
    let mut body = match serde_json::to_value(&summary) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "dashboard: encoding the summary");
            return unavailable(NotReady::Summary);
        }
    };
    let series = match sealpost_projections::per_minute(pool, CHART_MINUTES).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "dashboard: reading the per-minute series");
            return unavailable(NotReady::Summary);
        }
    };
    if let Some(obj) = body.as_object_mut() {
        obj.insert("per_minute".into(), serde_json::json!(series));
        obj.insert("samples".into(), serde_json::json!(d.samples()));
        obj.insert("projection_lag".into(), serde_json::json!(d.lag().await));
        obj.insert(
            "generated_at".into(),
            serde_json::json!(time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()),
        );
    }
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}

/// The page. Every figure is an element with a stable `data-testid` whose text is what a person
/// reads and whose `data-value` is the raw number ("" when there is none).
const PAGE: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sealpost dashboard</title>
<style>
  :root { --fg: #1d2330; --muted: #5f6b7a; --line: #dde2e8; --bg: #f5f7fa; --bad: #b42318; --ok: #067647; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: var(--bg); }
  header { display: flex; align-items: baseline; gap: 1rem; padding: 1rem 1.5rem; background: #fff; border-bottom: 1px solid var(--line); }
  header h1 { margin: 0; font-size: 1.25rem; }
  header .meta { color: var(--muted); font-size: 0.85rem; }
  main { padding: 1rem 1.5rem 2rem; display: grid; grid-template-columns: minmax(0, 1fr); gap: 1rem; }
  section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 1rem; }
  section h2 { margin: 0 0 0.75rem; font-size: 1rem; }
  .cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(160px, 1fr)); gap: 0.75rem; }
  .card { border: 1px solid var(--line); border-radius: 6px; padding: 0.6rem 0.75rem; }
  .card .label { color: var(--muted); font-size: 0.8rem; }
  .card .num { font-size: 1.5rem; font-weight: 600; font-variant-numeric: tabular-nums; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: 0.35rem 0.6rem; border-bottom: 1px solid var(--line); white-space: nowrap; }
  th { color: var(--muted); font-weight: 600; font-size: 0.8rem; }
  td.n { font-variant-numeric: tabular-nums; }
  .note { color: var(--muted); font-size: 0.8rem; margin: 0.5rem 0 0; }
  .empty { color: var(--muted); }
  #error { display: none; color: var(--bad); background: #fef3f2; border: 1px solid #fecdca; border-radius: 6px; padding: 0.6rem 0.75rem; }
  .scroll { overflow-x: auto; }
  .charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 1rem; }
  .chart h3 { margin: 0 0 0.25rem; font-size: 0.9rem; }
  .chart svg { width: 100%; height: auto; display: block; }
  .chart svg text { font-size: 10px; fill: var(--muted); }
  .legend { display: flex; flex-wrap: wrap; gap: 0.75rem; font-size: 0.8rem; color: var(--muted); }
  .legend i { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 4px; vertical-align: -1px; }
</style>
</head>
<body>
<header>
  <h1>Sealpost</h1>
  <span class="meta">delivery dashboard &middot; from the Postgres views &middot; updated <span data-testid="updated-at">never</span></span>
</header>
<main>
  <div id="error" data-testid="error"></div>
  <section>
    <h2>Overview</h2>
    <div class="cards" id="overview"></div>
    <p class="note">Success rate: delivered + displayed over settled messages (delivered, displayed, failed, fallback, expired; cancelled excluded).
      Queued and retry scheduled are the messages in those states in the view, not the JetStream consumer depth.
      Projection lag: events in the stream not yet applied.</p>
  </section>
  <section>
    <h2>Trends</h2>
    <div class="charts">
      <div class="chart"><h3>Messages per minute (last hour)</h3><svg id="chart-events" role="img" aria-label="messages per minute"></svg><div class="legend" id="legend-chart-events"></div></div>
      <div class="chart"><h3>Success rate per minute</h3><svg id="chart-success" role="img" aria-label="success rate per minute"></svg><div class="legend" id="legend-chart-success"></div></div>
      <div class="chart"><h3>Latency accepted &rarr; delivered, per minute (ms)</h3><svg id="chart-latency" role="img" aria-label="latency per minute"></svg><div class="legend" id="legend-chart-latency"></div></div>
      <div class="chart"><h3>Projection lag and delivery queue depth (sampled)</h3><svg id="chart-backlog" role="img" aria-label="backlog over the last hour"></svg><div class="legend" id="legend-chart-backlog"></div></div>
    </div>
    <p class="note">Per-minute series come from the metrics view (events by their own time; the current minute is still filling).
      Success rate: delivered over delivered + failed + fallback + expired settled in the minute. Latency: upper bound of the
      histogram bucket holding p50 / p99 of the receipts of the minute. Lag and queue depth are sampled by this gateway every
      15 s since it started (the last hour is kept).</p>
  </section>
  <section>
    <h2>Latency (accepted &rarr; receipt)</h2>
    <div class="scroll"><table id="latency"></table></div>
    <p class="note">Upper bound of the histogram bucket holding the percentile.</p>
  </section>
  <section>
    <h2>Messages by state</h2>
    <div class="cards" id="states"></div>
  </section>
  <section>
    <h2>Tenants</h2>
    <div class="scroll"><table id="tenants"></table></div>
  </section>
  <section>
    <h2>Carriers</h2>
    <div class="scroll"><table id="carriers"></table></div>
  </section>
  <section>
    <h2>Recent failures <span class="meta">(<span data-testid="failures-count">0</span> listed)</span></h2>
    <div class="scroll"><table id="failures"></table></div>
  </section>
</main>
<script>
"use strict";
const REFRESH_MS = 5000;

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function fmtInt(n) { return (n === null || n === undefined) ? "—" : String(n); }
function num(tag, testid, value, text, cls) {
  const attrs = { "data-testid": testid, "data-value": (value === null || value === undefined) ? "" : String(value) };
  if (cls) attrs["class"] = cls;
  return el(tag, attrs, text === undefined ? fmtInt(value) : text);
}
function card(label, testid, value, text) {
  const c = el("div", { "class": "card" });
  c.append(el("div", { "class": "label" }, label), num("div", testid, value, text, "num"));
  return c;
}
function row(cells, header) {
  const tr = el("tr");
  for (const c of cells) tr.append(typeof c === "string" ? el(header ? "th" : "td", {}, c) : c);
  return tr;
}
function fill(table, head, rows, emptyText) {
  table.replaceChildren(row(head, true));
  if (rows.length === 0) {
    const td = el("td", { "class": "empty", "colspan": String(Math.max(head.length, 1)) }, emptyText);
    table.append(row([td]));
  }
  for (const r of rows) table.append(r);
}
function pct(rate) { return rate === null || rate === undefined ? "—" : (rate * 100).toFixed(1) + "%"; }
function latencyText(p, v) {
  if (v !== null && v !== undefined) return "≤ " + v + " ms";
  return p.count > 0 ? "> max bucket" : "—";
}

const SVGNS = "http://www.w3.org/2000/svg";
const COLORS = ["#2563eb", "#067647", "#7c3aed", "#b42318", "#b54708", "#0e7490"];
function svgEl(tag, attrs, text) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function present(v) { return v !== null && v !== undefined; }
function shortTime(iso) { return iso ? iso.slice(11, 16) : ""; }
// A line chart of `series` ({name, values}) over the labels `xs`: one circle per present value
// (data-testid "point-<id>-<name>", data-value the raw value), lines broken where values are
// missing. `fmt` formats values for the axis and the tooltips.
function chart(id, xs, series, fmt, fixedMax) {
  const W = 640, H = 190, L = 56, R = 10, T = 10, B = 24;
  const svg = document.getElementById(id);
  svg.setAttribute("viewBox", "0 0 " + W + " " + H);
  svg.replaceChildren();
  const vals = series.flatMap(s => s.values.filter(present));
  const max = fixedMax !== undefined ? fixedMax : Math.max(1, ...vals);
  const n = xs.length;
  const x = i => L + (n <= 1 ? (W - L - R) / 2 : i * (W - L - R) / (n - 1));
  const y = v => T + (H - T - B) * (1 - v / max);
  for (const frac of [0, 0.5, 1]) {
    const v = max * frac;
    svg.append(svgEl("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#dde2e8" }));
    svg.append(svgEl("text", { x: L - 6, y: y(v) + 3, "text-anchor": "end" }, fmt(v)));
  }
  if (n > 0) {
    svg.append(svgEl("text", { x: x(0), y: H - 6, "text-anchor": "start" }, shortTime(xs[0])));
    svg.append(svgEl("text", { x: x(n - 1), y: H - 6, "text-anchor": "end" }, shortTime(xs[n - 1])));
  }
  const legend = document.getElementById("legend-" + id);
  legend.replaceChildren();
  series.forEach((s, k) => {
    const color = COLORS[k % COLORS.length];
    let d = "", pen = false;
    s.values.forEach((v, i) => {
      if (!present(v)) { pen = false; return; }
      d += (pen ? "L" : "M") + x(i).toFixed(1) + " " + y(v).toFixed(1) + " ";
      pen = true;
    });
    if (d) svg.append(svgEl("path", { d: d, fill: "none", stroke: color, "stroke-width": "1.5" }));
    s.values.forEach((v, i) => {
      if (!present(v)) return;
      const c = svgEl("circle", { cx: x(i).toFixed(1), cy: y(v).toFixed(1), r: "2.2", fill: color,
        "data-testid": "point-" + id + "-" + s.name, "data-value": String(v) });
      c.append(svgEl("title", {}, s.name + " " + shortTime(xs[i]) + ": " + fmt(v)));
      svg.append(c);
    });
    const item = el("span", { "data-testid": "legend-" + id + "-" + s.name });
    const sw = el("i");
    sw.style.background = color;
    item.append(sw, s.name);
    legend.append(item);
  });
}
function renderCharts(s) {
  const m = s.per_minute || { minutes: [] };
  const xs = m.minutes || [];
  const count = v => String(Math.round(v));
  chart("chart-events", xs, ["accepted", "delivered", "displayed", "failed"].map(k => ({ name: k, values: m[k] || [] })), count);
  chart("chart-success", xs, [{ name: "success_rate", values: m.success_rate || [] }], v => (v * 100).toFixed(0) + "%", 1);
  chart("chart-latency", xs, [
    { name: "p50", values: m.latency_p50_ms || [] },
    { name: "p99", values: m.latency_p99_ms || [] },
  ], count);
  const samples = s.samples || [];
  const names = [...new Set(samples.flatMap(x => Object.keys(x.projection_lag || {})))].sort();
  chart("chart-backlog", samples.map(x => x.at), [
    ...names.map(nm => ({ name: "lag_" + nm, values: samples.map(x => (x.projection_lag || {})[nm]) })),
    { name: "delivery_queue_depth", values: samples.map(x => x.delivery_queue_depth) },
  ], count);
}

function render(s) {
  renderCharts(s);
  const st = s.by_status || {};
  const overview = document.getElementById("overview");
  overview.replaceChildren(
    card("Success rate", "success-rate", s.success_rate, pct(s.success_rate)),
    card("Messages", "total", s.total),
    card("Queued (state in view)", "queue-queued", st.queued || 0),
    card("Retry scheduled (state in view)", "queue-retry_scheduled", st.retry_scheduled || 0),
  );
  for (const [name, lag] of Object.entries(s.projection_lag || {})) {
    overview.append(card("Projection lag: " + name, "lag-" + name, lag));
  }
  for (const [name, seq] of Object.entries(s.checkpoints || {})) {
    overview.append(card("Checkpoint: " + name, "checkpoint-" + name, seq));
  }

  const lat = [];
  for (const [kind, p] of [["delivered", s.latency_delivered], ["displayed", s.latency_displayed]]) {
    lat.push(row([
      el("td", {}, kind),
      num("td", "latency-" + kind + "-count", p.count, undefined, "n"),
      num("td", "latency-" + kind + "-p50", p.p50_ms, latencyText(p, p.p50_ms), "n"),
      num("td", "latency-" + kind + "-p90", p.p90_ms, latencyText(p, p.p90_ms), "n"),
      num("td", "latency-" + kind + "-p99", p.p99_ms, latencyText(p, p.p99_ms), "n"),
      num("td", "latency-" + kind + "-over-max", p.over_max, undefined, "n"),
    ]));
  }
  fill(document.getElementById("latency"), ["to", "measured", "p50", "p90", "p99", "over max"], lat, "");

  document.getElementById("states").replaceChildren(
    ...Object.entries(st).map(([k, n]) => card(k, "status-" + k, n)));

  const statuses = [...new Set((s.tenants || []).flatMap(t => Object.keys(t.by_status)))].sort();
  fill(document.getElementById("tenants"), ["tenant", "total", ...statuses],
    (s.tenants || []).map(t => row([
      el("td", { "data-testid": "tenant-" + t.tenant }, t.tenant),
      num("td", "tenant-" + t.tenant + "-total", t.total, undefined, "n"),
      ...statuses.map(k => num("td", "tenant-" + t.tenant + "-" + k, t.by_status[k] || 0, undefined, "n")),
    ])), "No messages projected yet.");

  const events = [...new Set((s.carriers || []).flatMap(c => Object.keys(c.events)))].sort();
  fill(document.getElementById("carriers"), ["carrier", ...events, "failed attempts (class:code)"],
    (s.carriers || []).map(c => {
      const fails = el("td");
      const entries = Object.entries(c.failures);
      if (entries.length === 0) fails.textContent = "—";
      entries.forEach(([code, n], i) => {
        if (i > 0) fails.append(", ");
        fails.append(code + " × ", num("span", "carrier-" + c.carrier + "-failure-" + code, n));
      });
      return row([
        el("td", { "data-testid": "carrier-" + c.carrier }, c.carrier),
        ...events.map(k => num("td", "carrier-" + c.carrier + "-" + k, c.events[k] || 0, undefined, "n")),
        fails,
      ]);
    }), "No carrier events yet.");

  const failures = s.recent_failures || [];
  document.querySelector('[data-testid="failures-count"]').textContent = String(failures.length);
  document.querySelector('[data-testid="failures-count"]').setAttribute("data-value", String(failures.length));
  fill(document.getElementById("failures"), ["message id", "tenant", "state", "reason / code", "carrier", "at"],
    failures.map(f => {
      const code = [f.last_error_class, f.last_error_code].filter(x => x).join(":");
      const reason = [f.end_reason, code].filter(x => x).join(" / ") || "—";
      const tr = row([
        el("td", { "data-testid": "failure-message-id" }, f.message_id),
        el("td", { "data-testid": "failure-tenant" }, f.tenant),
        el("td", { "data-testid": "failure-status" }, f.status),
        el("td", { "data-testid": "failure-reason" }, reason),
        el("td", {}, f.carrier || "—"),
        el("td", { "data-testid": "failure-at" }, f.at || "—"),
      ]);
      tr.setAttribute("data-testid", "failure-row");
      return tr;
    }), "No failures.");

  document.querySelector('[data-testid="updated-at"]').textContent = s.generated_at || new Date().toISOString();
}

async function refresh() {
  const err = document.getElementById("error");
  try {
    const res = await fetch("dashboard.json", { cache: "no-store" });
    if (!res.ok) throw new Error((await res.text()).trim() || ("HTTP " + res.status));
    render(await res.json());
    err.style.display = "none";
    err.textContent = "";
  } catch (e) {
    err.textContent = "Could not refresh: " + e.message;
    err.style.display = "block";
  }
}
refresh();
setInterval(refresh, REFRESH_MS);
</script>
</body>
</html>
"##;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeSet;

    const GRAFANA: &str = include_str!("../grafana/sealpost-dashboard.json");
    const RULES: &str = include_str!("../prometheus/alerts.yml");

    /// Every alert rule links its runbook (`runbook_url: "docs/runbooks/<alert>.md"`), and the
    /// page exists with its three sections.
    #[test]
    fn alert_rules_each_have_a_runbook() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut alerts = Vec::new();
        let mut current: Option<&str> = None;
        let mut linked: Vec<(String, String)> = Vec::new();
        for line in RULES.lines() {
            let line = line.trim();
            if let Some(name) = line.strip_prefix("- alert: ") {
                alerts.push(name);
                current = Some(name);
            } else if line.starts_with("- record: ") {
                current = None;
            } else if let (Some(name), Some(url)) = (current, line.strip_prefix("runbook_url: ")) {
                linked.push((name.to_owned(), url.trim_matches('"').to_owned()));
            }
        }
        assert!(alerts.len() >= 6, "{alerts:?}");
        for alert in alerts {
            let url = linked
                .iter()
                .find(|(n, _)| n == alert)
                .map(|(_, u)| u.as_str())
                .unwrap_or_else(|| panic!("{alert} has no runbook_url annotation"));
            assert_eq!(url, format!("docs/runbooks/{alert}.md"));
            let page = std::fs::read_to_string(root.join(url))
                .unwrap_or_else(|e| panic!("{alert}: its runbook {url} cannot be read: {e}"));
            assert!(page.starts_with(&format!("# {alert}\n")), "{url}: title");
            for section in ["## What it means", "## What to check", "## How to mitigate"] {
                assert!(page.contains(section), "{url} lacks '{section}'");
            }
        }
    }

    /// The Grafana dashboard names only metric families the processes export (under their
    /// sample names: `_total`, `_bucket`...) and recording rules of `alerts.yml`.
    #[test]
    fn grafana_dashboard_uses_only_metrics_sealpost_exports() {
        let families: BTreeSet<&str> = sealpost_telemetry::metrics()
            .family_names()
            .iter()
            .copied()
            .collect();
        assert!(
            families.contains("sealpost_carrier_auth_failures"),
            "{families:?}"
        );
        let records: BTreeSet<&str> = RULES
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- record: "))
            .collect();
        let dash: serde_json::Value = serde_json::from_str(GRAFANA).unwrap();
        let panels = dash["panels"].as_array().unwrap();
        assert!(panels.len() >= 8);
        let mut checked = BTreeSet::new();
        for panel in panels {
            let targets = panel["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{} has no query", panel["title"]);
            for t in targets {
                let expr = t["expr"].as_str().unwrap();
                for token in expr
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                    .filter(|t| t.contains("sealpost_"))
                {
                    if token.contains(':') {
                        assert!(records.contains(token), "{token}: not a recording rule");
                    } else {
                        let family = ["_total", "_bucket", "_sum", "_count"]
                            .iter()
                            .find_map(|s| token.strip_suffix(s))
                            .filter(|f| families.contains(*f))
                            .unwrap_or(token);
                        assert!(
                            families.contains(family),
                            "{token} (in {}) is not a metric Sealpost exports",
                            panel["title"]
                        );
                    }
                    checked.insert(token.to_owned());
                }
            }
        }
        assert!(checked.len() >= 10, "{checked:?}");
    }
}
