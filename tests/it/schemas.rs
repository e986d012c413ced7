//! The JSON Schemas under `schemas/` against themselves, their examples and the domain.
//!
//! - every schema is valid draft 2020-12, compiles, and follows the house rules;
//! - every example under `schemas/examples/X/` validates against `X.json`, every example under
//!   `schemas/examples/X/invalid/` fails;
//! - every event the domain emits validates against `schemas/events/<event_type>.v<N>.json` for
//!   the version it writes (`EventType::version`), and each schema's `required` is exactly the
//!   set of fields the domain always writes;
//! - the legacy `accepted.v0` and `accepted.v1` examples upcast to events the domain accepts.
//!
//! Formats (`date-time`) are asserted, not just annotated. No IO besides reading `schemas/`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use cqrs_es::Aggregate;
use sealpost_domain::events::{
    Accepted, AttemptFailed, Cancelled, CarrierAcked, DecryptFailure, DecryptionFailed, Delivered,
    Displayed, EncryptionMetadata, EndReason, ErrorClass, Expired, Failed, Fallback,
    FallbackChannel, FallbackTriggered, Held, MessageType, Purged, Queued, Released,
    RetryScheduled, RevokeOutcome,
};
use sealpost_domain::{
    AcceptMessage, CarrierOutcome, EventType, Message, MessageCommand, MessageEvent, MessageId,
    ReceiptKind, Recipient, RetryPolicy, Sha256Hex, TenantId,
};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::macros::datetime;
use time::OffsetDateTime;

const DRAFT: &str = "https://json-schema.org/draft/2020-12/schema";
const ID_BASE: &str = "https://sealpost.dev/schemas";
/// The directories that hold schemas; examples name a schema by its file stem.
const SCHEMA_DIRS: [&str; 3] = ["commands", "events", "keys"];

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent: the repository root")
        .join("schemas")
}

fn rel(path: &Path) -> String {
    let root = schemas_dir();
    let root = root.parent().unwrap_or(&root);
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

fn read_json(path: &Path) -> Result<Value> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", rel(path)))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", rel(path)))
}

/// All files under `dir`, recursively, sorted.
fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).with_context(|| format!("listing {}", rel(&d)))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A validator that also asserts formats (`date-time`), which draft 2020-12 only annotates.
fn validator(schema: &Value) -> Result<jsonschema::Validator> {
    jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .map_err(|e| anyhow!("schema does not compile: {e}"))
}

/// Every error of `instance` against `v`, one per line; empty when valid.
fn errors(v: &jsonschema::Validator, instance: &Value) -> String {
    v.iter_errors(instance)
        .map(|e| format!("  at '{}': {e}", e.instance_path()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The schemas of `commands/` and `events/`, by file stem (`send.v1`, `accepted.v0`, ...).
struct Schemas {
    by_stem: BTreeMap<String, (PathBuf, Value, jsonschema::Validator)>,
}

impl Schemas {
    fn load() -> Result<Self> {
        let mut by_stem = BTreeMap::new();
        for dir in SCHEMA_DIRS {
            for path in files_under(&schemas_dir().join(dir))? {
                let stem = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".json"))
                    .with_context(|| format!("{} is not a .json file", rel(&path)))?
                    .to_owned();
                let schema = read_json(&path)?;
                let v = validator(&schema).with_context(|| rel(&path))?;
                if let Some((other, _, _)) = by_stem.insert(stem.clone(), (path.clone(), schema, v))
                {
                    bail!("{} and {} share the stem {stem}", rel(&other), rel(&path));
                }
            }
        }
        Ok(Self { by_stem })
    }

    fn get(&self, stem: &str) -> Result<(&Value, &jsonschema::Validator)> {
        self.by_stem
            .get(stem)
            .map(|(_, s, v)| (s, v))
            .with_context(|| {
                format!("no schema with stem {stem} under schemas/{{commands,events,keys}}")
            })
    }

    /// Serializes `event` as its stored body (`to_body`), validates the body against
    /// `schemas/events/<event_type>.v<N>.json` for the version the domain writes, and returns it.
    fn check_event(&self, event: &MessageEvent) -> Result<Value> {
        self.check_event_as(event, event.event_type().version())
    }

    /// [`Schemas::check_event`] against schema version `version`.
    fn check_event_as(&self, event: &MessageEvent, version: u32) -> Result<Value> {
        let t = event.event_type();
        let body = event
            .to_body()
            .with_context(|| format!("serializing {t}"))?;
        let value: Value = serde_json::from_slice(&body)?;
        let (_, v) = self.get(&format!("{t}.v{version}"))?;
        let errs = errors(v, &value);
        ensure!(
            errs.is_empty(),
            "the domain's {t} event does not validate against events/{t}.v{version}.json:\n{errs}\nbody: {value}"
        );
        Ok(value)
    }
}

// ------------------------------------------------------------------------------------------
// The schemas themselves

/// House rules for one (sub)schema at `at`: a title and description on every property, and on
/// every object `additionalProperties` either `false` (a record, with only declared `required`
/// fields) or a schema (a map, e.g. header names to values), never open by default.
fn lint(schema: &Value, at: &str, problems: &mut Vec<String>) {
    let Some(obj) = schema.as_object() else {
        return;
    };
    if obj.get("type").and_then(Value::as_str) == Some("object") {
        let closed = match obj.get("additionalProperties") {
            Some(Value::Bool(false)) => true,
            Some(Value::Object(map_values)) => !map_values.is_empty(),
            _ => false,
        };
        if !closed {
            problems.push(format!(
                "{at}: object without additionalProperties: false (or a schema for a map)"
            ));
        }
        let props = obj.get("properties").and_then(Value::as_object);
        for r in obj
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let r = r.as_str().unwrap_or_default();
            if !props.is_some_and(|p| p.contains_key(r)) {
                problems.push(format!("{at}: required '{r}' is not a declared property"));
            }
        }
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            let here = format!("{at}.{name}");
            for key in ["title", "description"] {
                let ok = sub
                    .get(key)
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.trim().is_empty());
                if !ok {
                    problems.push(format!("{here}: missing {key}"));
                }
            }
            lint(sub, &here, problems);
        }
    }
}

#[test]
fn every_file_under_schemas_parses_and_every_schema_is_valid() -> Result<()> {
    let root = schemas_dir();
    let mut problems = Vec::new();
    let mut schema_count = 0;
    for path in files_under(&root)? {
        let name = rel(&path);
        let Some(sub) = path.strip_prefix(&root).ok() else {
            continue;
        };
        let top = sub
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .unwrap_or_default();
        if sub == Path::new("README.md") {
            continue;
        }
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            problems.push(format!(
                "{name}: only .json files (and README.md) belong here"
            ));
            continue;
        }
        let value = match read_json(&path) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!("{e:#}"));
                continue;
            }
        };
        if !SCHEMA_DIRS.contains(&top) {
            continue; // examples: checked by the example test
        }
        schema_count += 1;
        if let Err(e) = jsonschema::meta::validate(&value) {
            problems.push(format!("{name}: not a valid JSON Schema: {e}"));
            continue;
        }
        if let Err(e) = jsonschema::validator_for(&value) {
            problems.push(format!("{name}: does not compile: {e}"));
            continue;
        }
        let file = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let versioned = file
            .strip_suffix(".json")
            .and_then(|s| s.rsplit_once(".v"))
            .is_some_and(|(n, v)| !n.is_empty() && !v.is_empty() && v.parse::<u32>().is_ok());
        if !versioned {
            problems.push(format!("{name}: schema files are named <name>.v<N>.json"));
        }
        if value.get("$schema").and_then(Value::as_str) != Some(DRAFT) {
            problems.push(format!("{name}: $schema must be {DRAFT}"));
        }
        let id = format!("{ID_BASE}/{top}/{file}");
        if value.get("$id").and_then(Value::as_str) != Some(id.as_str()) {
            problems.push(format!("{name}: $id must be {id}"));
        }
        for key in ["title", "description"] {
            if value.get(key).and_then(Value::as_str).is_none() {
                problems.push(format!("{name}: missing top-level {key}"));
            }
        }
        lint(&value, &name, &mut problems);
    }
    ensure!(
        schema_count > 0,
        "no schemas found under {}",
        root.display()
    );
    ensure!(
        problems.is_empty(),
        "schema problems:\n{}",
        problems.join("\n")
    );
    Ok(())
}

#[test]
fn every_example_validates_and_every_invalid_example_fails() -> Result<()> {
    let schemas = Schemas::load()?;
    let examples = schemas_dir().join("examples");
    let mut failures = Vec::new();
    let mut with_valid_example = BTreeSet::new();
    let (mut valid, mut invalid) = (0, 0);
    for path in files_under(&examples)? {
        let name = rel(&path);
        let sub = path.strip_prefix(&examples)?;
        let parts: Vec<&str> = sub.iter().filter_map(|c| c.to_str()).collect();
        let (stem, expect_valid) = match parts.as_slice() {
            [stem, _file] => (*stem, true),
            [stem, "invalid", _file] => (*stem, false),
            _ => {
                failures.push(format!(
                    "{name}: examples live in examples/<schema stem>/[invalid/]<name>.json"
                ));
                continue;
            }
        };
        let (_, v) = match schemas.get(stem) {
            Ok(s) => s,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let instance = match read_json(&path) {
            Ok(i) => i,
            Err(e) => {
                failures.push(format!("{e:#}"));
                continue;
            }
        };
        let errs = errors(v, &instance);
        match (expect_valid, errs.is_empty()) {
            (true, true) => {
                valid += 1;
                with_valid_example.insert(stem.to_owned());
            }
            (false, false) => invalid += 1,
            (true, false) => failures.push(format!(
                "{name} should validate against {stem}.json but does not:\n{errs}"
            )),
            (false, true) => failures.push(format!(
                "{name} is under invalid/ but validates against {stem}.json"
            )),
        }
    }
    for stem in schemas.by_stem.keys() {
        if !with_valid_example.contains(stem) {
            failures.push(format!(
                "{stem}.json has no valid example under examples/{stem}/"
            ));
        }
    }
    ensure!(
        failures.is_empty(),
        "example failures:\n{}",
        failures.join("\n")
    );
    ensure!(
        valid > 0 && invalid > 0,
        "found {valid} valid and {invalid} invalid examples"
    );
    Ok(())
}

#[test]
fn every_valid_event_example_is_a_body_the_domain_decodes() -> Result<()> {
    let schemas = Schemas::load()?;
    let examples = schemas_dir().join("examples");
    let mut failures = Vec::new();
    for &t in EventType::ALL {
        for version in t.versions() {
            let dir = examples.join(format!("{t}.v{version}"));
            if !dir.is_dir() {
                continue;
            }
            for entry in fs::read_dir(&dir)? {
                let path = entry?.path();
                if path.is_dir() {
                    continue;
                }
                let body = fs::read(&path)?;
                match MessageEvent::from_body(t, &version.to_string(), &body) {
                    // Decoded and re-encoded as the current version, it is a valid body of the
                    // current version, except that an upcast `accepted` has no request digest
                    // (v2 added it): that one is the v1 shape.
                    Ok(event) => {
                        let as_version = if version < t.version() && t == EventType::Accepted {
                            1
                        } else {
                            t.version()
                        };
                        if let Err(e) = schemas.check_event_as(&event, as_version) {
                            failures.push(format!("{}: {e:#}", rel(&path)));
                        }
                    }
                    Err(e) => failures.push(format!("{}: the domain refuses it: {e}", rel(&path))),
                }
            }
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

#[test]
fn accepted_examples_carry_the_message_id_derived_from_tenant_and_key() -> Result<()> {
    let examples = schemas_dir().join("examples");
    let mut checked = 0;
    for dir in ["accepted.v0", "accepted.v1"] {
        for entry in fs::read_dir(examples.join(dir))? {
            let path = entry?.path();
            if path.is_dir() {
                continue;
            }
            let v = read_json(&path)?;
            let field = |k: &str| {
                v.get(k)
                    .and_then(Value::as_str)
                    .with_context(|| format!("{} has no string {k}", rel(&path)))
            };
            let tenant = TenantId::new(field("tenant_id")?)?;
            let derived = MessageId::derive(&tenant, field("idempotency_key")?);
            ensure!(
                field("message_id")? == derived.as_str(),
                "{}: message_id should be {derived}, derived from (tenant_id, idempotency_key)",
                rel(&path)
            );
            checked += 1;
        }
    }
    ensure!(checked > 0, "no accepted examples found");
    Ok(())
}

// ------------------------------------------------------------------------------------------
// The domain's events

const T0: OffsetDateTime = datetime!(2026-01-01 09:30:00.123456789 UTC);
const T1: OffsetDateTime = datetime!(2026-01-01 09:30:01 UTC);

fn tenant() -> TenantId {
    TenantId::new("acme-corp").expect("valid tenant id")
}

fn digest() -> Sha256Hex {
    Sha256Hex::of(b"fake ciphertext")
}

fn encryption() -> EncryptionMetadata {
    EncryptionMetadata {
        mls_version: "1".into(),
        cipher: "XChaCha20-Poly1305".into(),
        key_id: "user-public-key-v2".into(),
    }
}

fn fallback() -> Fallback {
    Fallback {
        channel: FallbackChannel::InApp,
        notice_template: "secure_message_waiting".into(),
    }
}

/// One event of every variant, first with every optional field set, then with every optional
/// field unset. The flag says which: `true` = all optional fields present.
fn every_variant() -> Vec<(MessageEvent, bool)> {
    use MessageEvent as E;
    let key = "c14b4d6f-8a2e-4f1b-9d3c-5e7a0b2c4d6e";
    let accepted = |full: bool| {
        E::Accepted(Accepted {
            tenant_id: tenant(),
            message_id: MessageId::derive(&tenant(), key),
            idempotency_key: key.into(),
            recipient: Recipient::new("+15551234567").expect("valid E.164"),
            payload_ref: "s3://sealpost/tenants/acme-corp/c14b4d6f.enc".into(),
            payload_sha256: digest(),
            payload_size: full.then_some(2048),
            encryption: encryption(),
            message_type: if full {
                MessageType::Transactional
            } else {
                MessageType::Promotional
            },
            correlation_id: full.then(|| "txn-0001".into()),
            fallback: full.then(fallback),
            accepted_at: T0,
            expires_at: T0 + Duration::from_secs(3600),
            retry_until: T0 + Duration::from_secs(3600),
            request_sha256: Some(Sha256Hex::of(key.as_bytes())),
        })
    };
    let attempt_failed = |full: bool| {
        E::AttemptFailed(AttemptFailed {
            attempt: 1,
            carrier: "rbm".into(),
            class: if full {
                ErrorClass::Throttled
            } else {
                ErrorClass::Transient
            },
            code: if full { "429" } else { "503" }.into(),
            retry_after_ms: full.then_some(30_000),
            at: T1,
        })
    };
    let fallback_triggered = |full: bool| {
        E::FallbackTriggered(FallbackTriggered {
            channel: FallbackChannel::Sms,
            notice_template: "secure_message_waiting".into(),
            reason: if full {
                EndReason::Expired
            } else {
                EndReason::NotCapable
            },
            revoke: full.then_some(RevokeOutcome::Revoked),
            at: T1,
        })
    };
    let decryption_failed = |full: bool| {
        E::DecryptionFailed(DecryptionFailed {
            reason: if full {
                DecryptFailure::WrongKey
            } else {
                DecryptFailure::Tampered
            },
            key_id: full.then(|| "user-public-key-v2".into()),
            at: T1,
        })
    };
    let mut out = Vec::new();
    for full in [true, false] {
        out.push((accepted(full), full));
        out.push((attempt_failed(full), full));
        out.push((fallback_triggered(full), full));
        out.push((decryption_failed(full), full));
    }
    // Variants without optional fields: "full" and "bare" are the same body.
    let fixed = [
        E::Queued(Queued {
            attempt: 1,
            not_before: T0,
            at: T0,
        }),
        E::CarrierAcked(CarrierAcked {
            attempt: 1,
            carrier: "rbm".into(),
            carrier_message_id: MessageId::derive(&tenant(), key).to_string(),
            at: T1,
        }),
        E::RetryScheduled(RetryScheduled {
            attempt: 2,
            delay_ms: 1500,
            not_before: T1 + Duration::from_millis(1500),
            at: T1,
        }),
        E::Failed(Failed {
            reason: EndReason::RetryWindowExhausted,
            at: T1,
        }),
        E::Delivered(Delivered {
            receipt_id: "rbm-evt-1".into(),
            implied: false,
            at: T1,
        }),
        E::Delivered(Delivered {
            receipt_id: "rbm-evt-2".into(),
            implied: true,
            at: T1,
        }),
        E::Displayed(Displayed {
            receipt_id: "rbm-evt-2".into(),
            at: T1,
        }),
        E::Expired(Expired {
            revoke: RevokeOutcome::RevokeFailed,
            at: T1,
        }),
        E::Cancelled(Cancelled { at: T1 }),
        E::Held(Held {
            hold_id: "case-2026-0042".into(),
            reason: "litigation hold".into(),
            at: T1,
        }),
        E::Released(Released {
            hold_id: "case-2026-0042".into(),
            at: T1,
        }),
        E::Purged(Purged { at: T1 }),
    ];
    for e in fixed {
        out.push((e.clone(), true));
        out.push((e, false));
    }
    out
}

/// Compares the keys of `body` with the schema, recursing into nested objects: with every
/// optional field set the keys are exactly `properties`, with none set exactly `required`.
fn key_sets_match(schema: &Value, body: &Value, full: bool, at: &str) -> Result<()> {
    let (Some(props), Some(obj)) = (
        schema.get("properties").and_then(Value::as_object),
        body.as_object(),
    ) else {
        return Ok(());
    };
    let keys: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
    let expected: BTreeSet<&str> = if full {
        props.keys().map(String::as_str).collect()
    } else {
        schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect()
    };
    ensure!(
        keys == expected,
        "{at}: body has keys {keys:?}, the schema's {} are {expected:?}",
        if full {
            "properties"
        } else {
            "required fields"
        }
    );
    for (k, sub) in obj {
        if let Some(sub_schema) = props.get(k) {
            key_sets_match(sub_schema, sub, full, &format!("{at}.{k}"))?;
        }
    }
    Ok(())
}

#[test]
fn every_version_of_every_event_type_has_a_schema_and_no_schema_lacks_an_event_type() -> Result<()>
{
    let schemas = Schemas::load()?;
    for &t in EventType::ALL {
        for v in t.versions() {
            let path = schemas_dir().join("events").join(format!("{t}.v{v}.json"));
            ensure!(
                path.is_file(),
                "EventType {t} is read at version {v} but {} is missing",
                rel(&path)
            );
        }
    }
    for (stem, (path, _, _)) in &schemas.by_stem {
        if path.parent().is_some_and(|p| p.ends_with("events")) {
            let (t, v) = stem.rsplit_once(".v").context("versioned stem")?;
            let t: EventType = t
                .parse()
                .with_context(|| format!("{} names no EventType", rel(path)))?;
            ensure!(
                t.versions().any(|known| known.to_string() == v),
                "{} is a version EventType::versions does not read",
                rel(path)
            );
        }
    }
    Ok(())
}

#[test]
fn every_event_variant_validates_against_its_current_schema() -> Result<()> {
    let schemas = Schemas::load()?;
    let mut covered = BTreeSet::new();
    let mut failures = Vec::new();
    for (event, full) in every_variant() {
        let t = event.event_type();
        covered.insert(t);
        let check = || -> Result<()> {
            let body = schemas.check_event(&event)?;
            let version = t.version();
            let (schema, _) = schemas.get(&format!("{t}.v{version}"))?;
            key_sets_match(schema, &body, full, t.as_str())?;
            let bytes = serde_json::to_vec(&body)?;
            let back = MessageEvent::from_body(t, &version.to_string(), &bytes)?;
            ensure!(back == event, "{t} does not round-trip through its body");
            Ok(())
        };
        if let Err(e) = check() {
            failures.push(format!(
                "{t} (optional fields {}): {e:#}",
                if full { "set" } else { "unset" }
            ));
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    let all: BTreeSet<EventType> = EventType::ALL.iter().copied().collect();
    ensure!(
        covered == all,
        "variants not covered: {:?}",
        all.difference(&covered).collect::<Vec<_>>()
    );
    Ok(())
}

/// Runs `commands` through the real aggregate from a fresh message and returns every event it
/// wrote, applying each so the next command sees the new state.
fn run(commands: Vec<MessageCommand>) -> Result<Vec<MessageEvent>> {
    let policy = RetryPolicy::default();
    let mut message = Message::default();
    let mut all = Vec::new();
    for cmd in commands {
        let label = format!("{cmd:?}");
        let events = message
            .decide(cmd, &policy)
            .map_err(|e| anyhow!("{label} was refused: {e}"))?;
        for e in events {
            message.apply(e.clone());
            all.push(e);
        }
    }
    Ok(all)
}

fn accept(key: &str, full: bool) -> MessageCommand {
    MessageCommand::Accept(Box::new(AcceptMessage {
        tenant_id: tenant(),
        idempotency_key: key.into(),
        recipient: Recipient::new("+447700900123").expect("valid E.164"),
        payload_ref: format!("s3://sealpost/tenants/acme-corp/{key}.enc"),
        payload_sha256: digest(),
        payload_size: full.then_some(4096),
        encryption: encryption(),
        message_type: MessageType::Transactional,
        correlation_id: full.then(|| "txn-0002".into()),
        ttl: full.then_some(Duration::from_secs(3600)),
        fallback: full.then(fallback),
        at: T0,
    }))
}

fn carrier_result(attempt: u32, outcome: CarrierOutcome, at: OffsetDateTime) -> MessageCommand {
    MessageCommand::RecordCarrierResult {
        attempt,
        carrier: "rbm".into(),
        outcome,
        at,
    }
}

#[test]
fn every_event_the_aggregate_writes_validates_against_its_current_schema() -> Result<()> {
    let later = datetime!(2026-01-01 09:45 UTC);
    let after_expiry = datetime!(2026-01-05 00:00 UTC);
    let scenarios = vec![
        // Transient failure, retry, throttled with Retry-After, retry, ack, read receipt
        // (implied delivered + displayed), two decryption failures, then a legal hold, its
        // release, and purge.
        vec![
            accept("happy-path", true),
            carrier_result(
                1,
                CarrierOutcome::Transient {
                    code: "503".into(),
                    retry_after: None,
                },
                T1,
            ),
            carrier_result(
                2,
                CarrierOutcome::Throttled {
                    code: "429".into(),
                    retry_after: Some(Duration::from_secs(30)),
                },
                datetime!(2026-01-01 09:31 UTC),
            ),
            carrier_result(
                3,
                CarrierOutcome::Acked {
                    carrier_message_id: "carrier-mid-1".into(),
                },
                datetime!(2026-01-01 09:32 UTC),
            ),
            MessageCommand::RecordReceipt {
                receipt_id: "rbm-evt-read".into(),
                kind: ReceiptKind::Displayed,
                at: later,
            },
            // A device could not open it, and a second one named no key.
            MessageCommand::RecordDecryptionFailure {
                reason: DecryptFailure::WrongKey,
                key_id: Some("user-public-key-v1".into()),
                at: later,
            },
            MessageCommand::RecordDecryptionFailure {
                reason: DecryptFailure::Tampered,
                key_id: None,
                at: later,
            },
            MessageCommand::Hold {
                hold_id: "case-1".into(),
                reason: "litigation hold".into(),
                at: later,
            },
            MessageCommand::Release {
                hold_id: "case-1".into(),
                at: later,
            },
            MessageCommand::Purge { at: later },
        ],
        // Delivered receipt on its own.
        vec![
            accept("delivered", false),
            carrier_result(
                1,
                CarrierOutcome::Acked {
                    carrier_message_id: "carrier-mid-2".into(),
                },
                T1,
            ),
            MessageCommand::RecordReceipt {
                receipt_id: "rbm-evt-dlv".into(),
                kind: ReceiptKind::Delivered,
                at: later,
            },
        ],
        // No RCS and no fallback: failed.
        vec![
            accept("no-rcs", false),
            carrier_result(1, CarrierOutcome::NotRcsCapable, T1),
        ],
        // Permanent error: failed even with a fallback.
        vec![
            accept("permanent", true),
            carrier_result(1, CarrierOutcome::Permanent { code: "400".into() }, T1),
        ],
        // No RCS with a fallback: fallback_triggered.
        vec![
            accept("fallback", true),
            carrier_result(1, CarrierOutcome::NotRcsCapable, T1),
        ],
        // Fallback on request, cancel, expiry, redrive.
        vec![
            accept("requested", true),
            MessageCommand::TriggerFallback { at: T1 },
        ],
        vec![accept("cancel", false), MessageCommand::Cancel { at: T1 }],
        // Expiry with a fallback requested (fallback_triggered, reason expired) and without.
        vec![
            accept("expire-fallback", true),
            MessageCommand::Expire {
                revoke: RevokeOutcome::NotSubmitted,
                at: after_expiry,
            },
        ],
        vec![
            accept("expire", false),
            MessageCommand::Expire {
                revoke: RevokeOutcome::NotSubmitted,
                at: after_expiry,
            },
        ],
        vec![
            accept("redrive", false),
            MessageCommand::Enqueue {
                not_before: T1,
                at: T1,
            },
        ],
    ];
    let schemas = Schemas::load()?;
    let mut covered = BTreeSet::new();
    let mut failures = Vec::new();
    for scenario in scenarios {
        // Each scenario is named by the idempotency key of its accept command.
        let name = match scenario.first() {
            Some(MessageCommand::Accept(a)) => a.idempotency_key.clone(),
            _ => bail!("every scenario starts with an accept command"),
        };
        for event in run(scenario).with_context(|| format!("scenario {name}"))? {
            covered.insert(event.event_type());
            if let Err(e) = schemas.check_event(&event) {
                failures.push(format!("scenario {name}: {e:#}"));
            }
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    let all: BTreeSet<EventType> = EventType::ALL.iter().copied().collect();
    ensure!(
        covered == all,
        "the scenarios never made: {:?}",
        all.difference(&covered).collect::<Vec<_>>()
    );
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Old versions

#[test]
fn accepted_v0_examples_validate_and_upcast_to_valid_v1_shaped_events() -> Result<()> {
    let schemas = Schemas::load()?;
    let (_, v0) = schemas.get("accepted.v0")?;
    let dir = schemas_dir().join("examples").join("accepted.v0");
    let mut upcast = 0;
    for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", rel(&dir)))? {
        let path = entry?.path();
        if path.is_dir() {
            continue;
        }
        let name = rel(&path);
        let old = read_json(&path)?;
        let errs = errors(v0, &old);
        ensure!(
            errs.is_empty(),
            "{name} does not validate against accepted.v0.json:\n{errs}"
        );

        let body = fs::read(&path)?;
        let event = MessageEvent::from_body(EventType::Accepted, "0", &body)
            .map_err(|e| anyhow!("{name} does not upcast: {e}"))?;
        // An upcast event has no request digest (v2 added it): it has the v1 shape.
        schemas
            .check_event_as(&event, 1)
            .with_context(|| name.clone())?;

        let MessageEvent::Accepted(a) = event else {
            bail!(
                "{name} upcast to {} instead of accepted",
                event.event_type()
            );
        };
        let accepted_at = old
            .get("accepted_at")
            .and_then(Value::as_str)
            .context("accepted_at")?;
        ensure!(a.accepted_at == OffsetDateTime::parse(accepted_at, &Rfc3339)?);
        let ttl = old
            .get("ttl_seconds")
            .map(|t| t.as_u64().context("ttl_seconds is an integer"))
            .transpose()?
            .unwrap_or(72 * 3600);
        let ttl = Duration::from_secs(ttl);
        ensure!(
            a.expires_at == a.accepted_at + ttl && a.retry_until == a.expires_at,
            "{name}: v0 deadlines are accepted_at + ttl_seconds (or 72 h), got {} / {}",
            a.expires_at,
            a.retry_until
        );
        upcast += 1;
    }
    ensure!(
        upcast >= 2,
        "expected v0 examples with and without ttl_seconds, found {upcast}"
    );
    Ok(())
}

#[test]
fn every_gateway_error_code_and_the_send_reply_validate_against_their_schemas() -> Result<()> {
    use sealpost_gateway::{ApiError, ErrorCode, SendReply, SendStatus};
    let dir = schemas_dir().join("commands");
    let error_schema = validator(&read_json(&dir.join("error.v1.json"))?)?;
    for code in ErrorCode::ALL {
        let mut e = ApiError::new(code, "what to fix");
        if code == ErrorCode::RateLimited {
            e = e.with_retry_after_ms(250);
        }
        let body: Value = serde_json::from_slice(&e.to_json())?;
        let errs = errors(&error_schema, &body);
        anyhow::ensure!(errs.is_empty(), "{}: {body}\n{errs}", code.as_str());
    }
    let reply_schema = validator(&read_json(&dir.join("send_reply.v1.json"))?)?;
    for status in [SendStatus::Accepted, SendStatus::Duplicate] {
        let reply = serde_json::to_value(SendReply {
            message_id: "0b9c6a4e-3f5e-5c1a-9d7e-2f1b8a6c4d3e".into(),
            status,
            accepted_at: time::OffsetDateTime::now_utc(),
        })?;
        let errs = errors(&reply_schema, &reply);
        anyhow::ensure!(errs.is_empty(), "{reply}\n{errs}");
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Replies

/// `schemas/commands/<file>`'s `properties.<field>.enum`, without `null`.
fn enum_of(file: &str, field: &str) -> Result<BTreeSet<String>> {
    let path = SCHEMA_DIRS
        .iter()
        .map(|d| schemas_dir().join(d).join(file))
        .find(|p| p.exists())
        .with_context(|| format!("no schema {file}"))?;
    let schema = read_json(&path)?;
    let values = schema["properties"][field]["enum"]
        .as_array()
        .with_context(|| format!("{file}: {field} has no enum"))?;
    Ok(values
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect())
}

fn names(all: &[&'static str]) -> BTreeSet<String> {
    all.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn the_status_row_schema_lists_exactly_the_domains_names() -> Result<()> {
    use sealpost_domain::{RowSource, Status};
    let list = |all: Vec<&'static str>| names(&all);
    ensure!(
        enum_of("status_row.v3.json", "status")?
            == list(Status::ALL.iter().map(|s| s.as_str()).collect())
    );
    ensure!(
        enum_of("status_row.v3.json", "last_event_type")?
            == list(EventType::ALL.iter().map(|s| s.as_str()).collect())
    );
    ensure!(
        enum_of("status_row.v3.json", "message_type")?
            == list(MessageType::ALL.iter().map(|s| s.as_str()).collect())
    );
    ensure!(
        enum_of("status_row.v3.json", "fallback_channel")?
            == list(FallbackChannel::ALL.iter().map(|s| s.as_str()).collect())
    );
    ensure!(
        enum_of("status_row.v3.json", "last_decryption_failure")?
            == list(DecryptFailure::ALL.iter().map(|s| s.as_str()).collect())
    );
    ensure!(
        enum_of("decryption_failed.v1.json", "reason")?
            == list(DecryptFailure::ALL.iter().map(|s| s.as_str()).collect())
    );
    ensure!(
        enum_of("status_row.v3.json", "last_error_class")?
            == list(ErrorClass::ALL.iter().map(|s| s.as_str()).collect())
    );
    ensure!(
        enum_of("status_row.v3.json", "end_reason")?
            == list(EndReason::ALL.iter().map(|s| s.as_str()).collect())
    );
    ensure!(
        enum_of("status_row.v3.json", "revoke_outcome")?
            == list(RevokeOutcome::ALL.iter().map(|s| s.as_str()).collect())
    );
    ensure!(
        enum_of("status_row.v3.json", "source")?
            == list(RowSource::ALL.iter().map(|s| s.as_str()).collect())
    );
    ensure!(
        enum_of("cancel_reply.v1.json", "status")?
            == list(Status::ALL.iter().map(|s| s.as_str()).collect())
    );
    Ok(())
}

#[test]
fn every_status_row_the_fold_builds_validates_against_its_schema() -> Result<()> {
    use sealpost_domain::{RowSource, StatusRow};
    let schema = validator(&read_json(
        &schemas_dir().join("commands").join("status_row.v3.json"),
    )?)?;
    let mut checked = 0;
    for (event, _) in every_variant() {
        // Every prefix of a plausible history, folded, in both sources.
        let MessageEvent::Accepted(_) = &event else {
            continue;
        };
        let mut row = StatusRow::new("acme-corp", "68c00923-06be-558f-b48d-68a87a8e3d79");
        for (seq, e) in std::iter::once(event.clone())
            .chain(
                every_variant()
                    .into_iter()
                    .map(|(e, _)| e)
                    .filter(|e| e.event_type() != EventType::Accepted),
            )
            .enumerate()
        {
            row.apply(&e, seq as u64 + 1, Some("corr"));
            for source in RowSource::ALL {
                row.source = *source;
                let value = serde_json::to_value(&row)?;
                let errs = errors(&schema, &value);
                ensure!(errs.is_empty(), "after {}: {value}\n{errs}", e.event_type());
                checked += 1;
            }
        }
    }
    ensure!(checked > 20, "only {checked} rows checked");
    Ok(())
}

#[test]
fn the_upload_presign_and_cancel_replies_validate_against_their_schemas() -> Result<()> {
    let dir = schemas_dir().join("commands");
    let blob = validator(&read_json(&dir.join("blob_reply.v1.json"))?)?;
    let stored = serde_json::to_value(sealpost_blobstore::StoredBlob {
        reference: "s3://sealpost/tenants/acme-corp/x.enc".into(),
        sha256: digest(),
        size: 12,
    })?;
    let errs = errors(&blob, &stored);
    ensure!(errs.is_empty(), "{stored}\n{errs}");
    let presign = validator(&read_json(&dir.join("presign_reply.v1.json"))?)?;
    let put = serde_json::to_value(sealpost_blobstore::PresignedPut {
        reference: "s3://sealpost/tenants/acme-corp/x.enc".into(),
        url: "http://127.0.0.1:9/sealpost/x".into(),
        method: "PUT",
        headers: BTreeMap::from([("x-amz-checksum-sha256".to_owned(), "abc=".to_owned())]),
        expires_at: T0,
    })?;
    let errs = errors(&presign, &put);
    ensure!(errs.is_empty(), "{put}\n{errs}");
    let cancel = validator(&read_json(&dir.join("cancel_reply.v1.json"))?)?;
    let reply = serde_json::to_value(sealpost_gateway::CancelReply {
        message_id: "68c00923-06be-558f-b48d-68a87a8e3d79".into(),
        status: sealpost_domain::Status::Cancelled,
    })?;
    let errs = errors(&cancel, &reply);
    ensure!(errs.is_empty(), "{reply}\n{errs}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Key directory events (schemas/keys/)

/// Every key event type has its schema, every valid example is a body the domain decodes (and
/// writes back the same), and every event the RecipientKeys aggregate writes in a scripted life
/// (publish with enrollment, rotate, revoke, upload, claim, last resort) validates.
#[test]
fn key_events_examples_decode_and_every_event_the_keys_aggregate_writes_validates() -> Result<()> {
    use sealpost_keys_domain::{
        KeyEventType, KeysCommand, KeysEvent, KeysPolicy, PublishKey, RecipientKeys, RevokeReason,
        SignedEnrollment,
    };
    let schemas = Schemas::load()?;
    let examples = schemas_dir().join("examples");
    let mut decoded = 0;
    for &t in KeyEventType::ALL {
        let stem = format!("{t}.v1");
        schemas.get(&stem)?;
        for entry in fs::read_dir(examples.join(&stem))
            .with_context(|| format!("examples/{stem} holds no example"))?
        {
            let path = entry?.path();
            if path.is_dir() {
                continue;
            }
            let body = fs::read(&path)?;
            let event = KeysEvent::from_body(t, &body)
                .with_context(|| format!("{}: the domain refuses it", rel(&path)))?;
            let back: Value = serde_json::from_slice(&event.to_body()?)?;
            ensure!(
                back == serde_json::from_slice::<Value>(&body)?,
                "{}: written back differently: {back}",
                rel(&path)
            );
            decoded += 1;
        }
    }
    ensure!(decoded >= KeyEventType::ALL.len());

    let mdm = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
    let policy = KeysPolicy {
        enrollment_key: Some(mdm.verifying_key()),
        retire_after: std::time::Duration::from_secs(86_400),
    };
    let t0 = datetime!(2026-06-01 12:00 UTC);
    let publish = |key_id: &str, n: u8| {
        let public_key = vec![n; 32];
        let statement = sealpost_keyformat::EnrollmentStatement {
            tenant: "acme-corp".into(),
            device_id: "mdm:ios:1".into(),
            attestation_sha256: [3; 32],
            key_fingerprint: sealpost_keyformat::fingerprint(0x0020, &public_key),
        };
        let signature = statement.sign(&mdm).expect("a valid statement");
        KeysCommand::Publish(Box::new(PublishKey {
            tenant: "acme-corp".into(),
            device_id: "mdm:ios:1".into(),
            key_id: key_id.into(),
            kem_id: 0x0020,
            public_key,
            expires_at: t0 + time::Duration::days(365),
            enrollment: Some(SignedEnrollment {
                statement,
                signature,
            }),
            marked_bad: false,
            at: t0,
        }))
    };
    let claim = KeysCommand::ClaimKeyPackage {
        device_id: "mdm:ios:1".into(),
        claimant: "acme-backend".into(),
        at: t0,
    };
    let script = vec![
        publish("k1", 1),
        KeysCommand::UploadKeyPackages {
            device_id: "mdm:ios:1".into(),
            hash_refs: vec!["0a".repeat(32)],
            last_resort: Some("0c".repeat(32)),
            // Stand-ins for TLS-encoded KeyPackages (the schema checks the base64 shape).
            key_packages: [
                ("0a".repeat(32), "AAEC".into()),
                ("0c".repeat(32), "AwQF".into()),
            ]
            .into(),
            at: t0,
        },
        claim.clone(),
        claim,
        publish("k2", 2),
        KeysCommand::Revoke {
            key_id: "k1".into(),
            reason: RevokeReason::Compromised,
            at: t0,
        },
    ];
    let mut state = RecipientKeys::default();
    let mut seen = BTreeSet::new();
    for cmd in script {
        let events = state
            .decide(cmd, &policy)
            .map_err(|e| anyhow!("the script was refused: {e}"))?;
        for e in events {
            let (_, v) = schemas.get(&format!("{}.v1", e.event_type()))?;
            let body: Value = serde_json::from_slice(&e.to_body()?)?;
            let errs = errors(v, &body);
            ensure!(
                errs.is_empty(),
                "{} breaks its schema:\n{errs}",
                e.event_type()
            );
            seen.insert(e.event_type());
            state.apply_event(e);
        }
    }
    ensure!(
        seen.len() == KeyEventType::ALL.len(),
        "the script wrote only {seen:?}"
    );
    Ok(())
}
