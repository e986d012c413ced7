//! The operations dashboard the gateway serves at `/`: one self-contained HTML page (inline CSS
//! and JS, nothing fetched from elsewhere) that polls `/dashboard.json`, which is
//! [`sealpost_projections::summary`] plus the projections' consumer backlog.
//!
//! It reads only the Postgres views the projector builds, so it shows what the projector has
//! applied, not the live process state. It never shows recipients: the summary has none.
//!
//! Without a reachable, migrated database, `/` and `/dashboard.json` answer 503 with what to do,
//! and the gateway keeps serving everything else. The pool connects lazily, so a database that
//! comes up after the gateway is picked up on the next request.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sealpost_projections::ProjectionName;
use sqlx::PgPool;

/// What the dashboard reads: the views' pool (`None` when no database is configured) and,
/// optionally, JetStream for the projections' backlog.
#[derive(Debug, Clone)]
pub struct Dashboard {
    pool: Option<PgPool>,
    js: Option<async_nats::jetstream::Context>,
}

const NOT_READY: &str = "The dashboard reads the Postgres views that the projector builds. \
Configure PostgreSQL ([postgres] url, SEALPOST_POSTGRES_URL or DATABASE_URL) and run \
`sealpost migrate` and `sealpost serve --roles projector`.";

impl Dashboard {
    /// A dashboard over `pool`, with the backlog read through `js` when given.
    pub fn new(pool: Option<PgPool>, js: Option<async_nats::jetstream::Context>) -> Self {
        Self { pool, js }
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
        let mut out = BTreeMap::new();
        if let Some(js) = &self.js {
            for &name in ProjectionName::ALL {
                let lag = tokio::time::timeout(
                    Duration::from_secs(2),
                    sealpost_projections::lag(js, name),
                )
                .await
                .ok()
                .and_then(Result::ok);
                out.insert(name.as_str(), lag);
            }
        }
        out
    }
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
    if let Some(obj) = body.as_object_mut() {
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

function render(s) {
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
