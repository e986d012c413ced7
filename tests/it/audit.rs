//! `sealpost replay` without `--projection`: NDJSON of the stored events, `--verify` (sequences,
//! schemas, lifecycle order) (tenant replay in its own account: tests/it/tenancy.rs). Runs
//! the real binary (build it with `cargo build -p sealpost`).

use std::time::Duration;

use async_nats::header::HeaderMap;
use sealpost_domain::events::CarrierAcked;
use sealpost_domain::{
    aggregate_id, CarrierOutcome, MessageCommand, MessageEvent, MessageId, ReceiptKind, TenantId,
};
use sealpost_eventstore::CommandExecutor;
use serde_json::Value;

use crate::gateway::sealpost_binary;
use crate::support::{accept, meta, now, Env};

const ACME: &str = "acme-corp";
const BETA: &str = "beta-co";

pub(crate) struct Run {
    pub ok: bool,
    pub lines: Vec<Value>,
    pub stderr: String,
}

/// Runs `sealpost replay <args>` against `url`, with `seed` as the NATS credentials.
pub(crate) async fn replay(url: &str, seed: Option<&str>, args: &[&str]) -> Run {
    let mut cmd = tokio::process::Command::new(sealpost_binary());
    cmd.arg("replay")
        .args(args)
        .env_remove("SEALPOST_CONFIG")
        .env("SEALPOST_NATS_URL", url)
        .env("SEALPOST_NATS_REQUEST_TIMEOUT_MS", "2000")
        .env("SEALPOST_LOG_FILTER", "error")
        .kill_on_drop(true);
    match seed {
        Some(s) => cmd.env("SEALPOST_NATS_NKEY_SEED", s),
        None => cmd.env_remove("SEALPOST_NATS_NKEY_SEED"),
    };
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("replay finishes")
        .expect("replay runs");
    let stdout = String::from_utf8(out.stdout).expect("utf-8 stdout");
    Run {
        ok: out.status.success(),
        lines: stdout
            .lines()
            .map(|l| serde_json::from_str(l).expect("every stdout line is a JSON object"))
            .collect(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Accepts `key` for `tenant`, then runs `steps`; returns the message id.
pub(crate) async fn lifecycle(
    ex: &CommandExecutor<sealpost_domain::Message>,
    tenant: &str,
    key: &str,
    steps: Vec<MessageCommand>,
) -> String {
    let t = TenantId::new(tenant).expect("tenant id");
    let mut a = accept(key);
    a.tenant_id = t.clone();
    let mid = MessageId::derive(&t, key);
    let id = aggregate_id(&t, &mid);
    ex.execute(&id, MessageCommand::Accept(Box::new(a)), &meta(key))
        .await
        .expect("accept");
    for step in steps {
        ex.execute(&id, step, &meta(key)).await.expect("step");
    }
    mid.to_string()
}

pub(crate) fn ack() -> MessageCommand {
    MessageCommand::RecordCarrierResult {
        attempt: 1,
        carrier: "rbm".into(),
        outcome: CarrierOutcome::Acked {
            carrier_message_id: "cm-1".into(),
        },
        at: now(),
    }
}

fn receipt(id: &str, kind: ReceiptKind) -> MessageCommand {
    MessageCommand::RecordReceipt {
        receipt_id: id.into(),
        kind,
        at: now(),
    }
}

async fn stream_messages(client: &async_nats::Client) -> u64 {
    let js = async_nats::jetstream::new(client.clone());
    let mut s = js.get_stream("SEALPOST_EVENTS").await.expect("stream");
    s.info().await.expect("info").state.messages
}

/// A raw publish straight to the stream, as a buggy or hostile writer would.
async fn raw_publish(
    client: &async_nats::Client,
    mid: &str,
    event_type: &str,
    seq: u64,
    body: Vec<u8>,
) {
    let mut h = HeaderMap::new();
    h.insert("Sealpost-Event-Version", "1");
    h.insert("Sealpost-Sequence", seq.to_string().as_str());
    h.insert("Sealpost-Correlation-Id", "corrupt");
    async_nats::jetstream::new(client.clone())
        .publish_with_headers(
            format!("sealpost.evt.{ACME}.{mid}.{event_type}"),
            h,
            body.into(),
        )
        .await
        .expect("publish")
        .await
        .expect("stored");
}

fn acked_body() -> Vec<u8> {
    MessageEvent::CarrierAcked(CarrierAcked {
        attempt: 1,
        carrier: "rbm".into(),
        carrier_message_id: "cm-x".into(),
        at: now(),
    })
    .to_body()
    .expect("body")
}

#[tokio::test]
async fn replay_verify_passes_a_clean_history_and_names_each_corruption() {
    let env = Env::start().await;
    let ex = env.executor();
    let gap = lifecycle(&ex, ACME, "gap", vec![]).await;
    let bad_body = lifecycle(&ex, ACME, "bad-body", vec![]).await;
    let cancelled = lifecycle(
        &ex,
        ACME,
        "cancel",
        vec![MessageCommand::Cancel { at: now() }],
    )
    .await;
    lifecycle(
        &ex,
        ACME,
        "shown",
        vec![
            ack(),
            receipt("d-1", ReceiptKind::Delivered),
            receipt("r-1", ReceiptKind::Displayed),
        ],
    )
    .await;
    lifecycle(&ex, BETA, "other", vec![ack()]).await;
    let total = stream_messages(&env.client).await;
    assert_eq!(total, 10);

    let url = env.server.url();
    let clean = replay(&url, None, &["--format", "ndjson", "--verify"]).await;
    assert!(clean.ok, "clean history verifies: {}", clean.stderr);
    assert_eq!(clean.lines.len() as u64, total, "one NDJSON line per event");
    assert!(clean.stderr.contains("OK"), "{}", clean.stderr);
    let seqs: Vec<u64> = clean
        .lines
        .iter()
        .map(|l| l["stream_seq"].as_u64().expect("stream_seq"))
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "stream order: {seqs:?}"
    );
    // Each line is the stored message it names, field by field: subject, the headers the
    // store writes, the stream's timestamp and the body.
    let stream = async_nats::jetstream::new(env.client.clone())
        .get_stream("SEALPOST_EVENTS")
        .await
        .unwrap();
    for l in &clean.lines {
        let seq = l["stream_seq"].as_u64().unwrap();
        let stored = stream.get_raw_message(seq).await.unwrap();
        let header = |name: &str| {
            stored
                .headers
                .get(name)
                .map(|v| Value::from(v.as_str()))
                .unwrap_or(Value::Null)
        };
        assert_eq!(l["subject"], stored.subject.as_str(), "{l}");
        let parts: Vec<&str> = stored.subject.split('.').collect();
        // sealpost.evt.<tenant>.<message id>.<event type>
        assert_eq!(parts.len(), 5, "{}", stored.subject);
        assert_eq!(l["tenant"], parts[2], "{l}");
        assert_eq!(l["message_id"], parts[3], "{l}");
        assert_eq!(l["event_type"], parts[4], "{l}");
        assert_eq!(l["version"], header("Sealpost-Event-Version"), "{l}");
        assert_eq!(
            l["correlation_id"],
            header("Sealpost-Correlation-Id"),
            "{l}"
        );
        assert!(l["correlation_id"].is_string(), "{l}");
        let aggregate_seq: u64 = header("Sealpost-Sequence")
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(l["aggregate_seq"], aggregate_seq, "{l}");
        assert_eq!(
            l["time"],
            stored
                .time
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap(),
            "{l}"
        );
        let body: Value = serde_json::from_slice(&stored.payload).unwrap();
        assert_eq!(l["event"], body, "{l}");
    }
    assert_eq!(clean.lines[0]["event_type"], "accepted");
    assert_eq!(clean.lines[0]["event"]["tenant_id"], ACME);

    // Filters: one tenant, one message.
    let beta = replay(&url, None, &["--tenant", BETA, "--verify"]).await;
    assert!(beta.ok, "{}", beta.stderr);
    assert_eq!(beta.lines.len(), 2);
    assert!(beta.lines.iter().all(|l| l["tenant"] == BETA));
    let one = replay(&url, None, &["--tenant", ACME, "--message", &cancelled]).await;
    assert!(one.ok, "{}", one.stderr);
    let types: Vec<&str> = one
        .lines
        .iter()
        .map(|l| l["event_type"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(types, ["accepted", "cancelled"]);

    // --since after everything: nothing; --until before everything: nothing.
    let later = (now() + time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let none = replay(&url, None, &["--since", &later, "--verify"]).await;
    assert!(none.ok, "{}", none.stderr);
    assert!(none.lines.is_empty());
    let earlier = "2000-01-01T00:00:00Z";
    let none = replay(&url, None, &["--until", earlier]).await;
    assert!(none.ok, "{}", none.stderr);
    assert!(none.lines.is_empty());

    // Corrupt the history.
    raw_publish(&env.client, &gap, "carrier_acked", 5, acked_body()).await;
    raw_publish(
        &env.client,
        &bad_body,
        "cancelled",
        2,
        br#"{"at":"not a time","extra":1}"#.to_vec(),
    )
    .await;
    raw_publish(&env.client, &cancelled, "carrier_acked", 3, acked_body()).await;

    let bad = replay(&url, None, &["--format", "ndjson", "--verify"]).await;
    assert!(!bad.ok, "corrupted history must fail: {}", bad.stderr);
    assert_eq!(bad.lines.len() as u64, total + 3);
    let report = &bad.stderr;
    assert!(report.contains("3 problems"), "{report}");
    let line_of = |mid: &str| {
        report
            .lines()
            .find(|l| l.contains(mid))
            .unwrap_or_else(|| panic!("report names {mid}: {report}"))
            .to_owned()
    };
    let l = line_of(&gap);
    assert!(
        l.contains("[sequence]") && l.contains("Sealpost-Sequence 5 leaves a gap (expected 2)"),
        "{l}"
    );
    assert!(l.contains(&format!("stream seq {:>8}", total + 1)), "{l}");
    let l = line_of(&bad_body);
    assert!(
        l.contains("[schema]") && l.contains("cancelled v1 body breaks its schema"),
        "{l}"
    );
    let l = line_of(&cancelled);
    assert!(
        l.contains("[order]") && l.contains("carrier_acked after cancelled"),
        "{l}"
    );
}
