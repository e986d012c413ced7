//! `sealpost replay --verify`: the checks an auditor runs over a replayed history, one event
//! at a time in stream order: each aggregate's `Sealpost-Sequence` is gapless, each body is
//! valid against its versioned schema (embedded from `schemas/events/` by `build.rs`), and the
//! lifecycle order is legal ([`sealpost_domain::order`]).

use std::collections::{BTreeMap, HashMap};

use sealpost_domain::order::check_type;
use sealpost_domain::{EventType, Status};
use sealpost_eventstore::names::EventSubject;
use sealpost_eventstore::store::{HDR_EVENT_VERSION, HDR_SEQUENCE};
use serde_json::Value;

use super::Event;

/// Problems listed in the report; the counts cover all of them.
const REPORT_LIMIT: usize = 20;

pub(crate) mod schemas {
    include!(concat!(env!("OUT_DIR"), "/event_schemas.rs"));
}

/// One thing wrong with the history.
#[derive(Debug)]
pub(crate) struct Problem {
    pub(crate) stream_seq: u64,
    /// `<tenant>/<message id>`.
    pub(crate) message_id: String,
    /// `subject`, `sequence`, `schema` or `order`.
    pub(crate) kind: &'static str,
    pub(crate) what: String,
}

#[derive(Debug, Default)]
pub(crate) struct AggregateState {
    last_seq: Option<u64>,
    /// None when the replay started after this aggregate's first event (`--since`).
    status: Option<Status>,
}

/// The `--verify` checks, fed one event at a time in stream order.
pub(crate) struct Audit {
    relative: bool,
    validators: HashMap<(EventType, u32), jsonschema::Validator>,
    pub(crate) aggregates: HashMap<String, AggregateState>,
    pub(crate) problems: Vec<Problem>,
}

impl Audit {
    /// `relative`: the replay starts after the first event (`--since`), so an aggregate's first
    /// event seen need not be its first.
    pub(crate) fn new(relative: bool) -> Self {
        let mut validators = HashMap::new();
        for (t, v, text) in schemas::EVENT_SCHEMAS {
            // The schemas are tested in tests/it/schemas.rs; a broken one fails there first.
            let compiled = serde_json::from_str::<Value>(text).ok().and_then(|schema| {
                jsonschema::options()
                    .should_validate_formats(true)
                    .build(&schema)
                    .ok()
            });
            if let (Ok(t), Some(c)) = (t.parse::<EventType>(), compiled) {
                validators.insert((t, *v), c);
            }
        }
        Audit {
            relative,
            validators,
            aggregates: HashMap::new(),
            problems: Vec::new(),
        }
    }

    fn problem(&mut self, e: &Event, kind: &'static str, what: String) {
        let message_id = match &e.subject {
            Ok(s) => format!("{}/{}", s.tenant, s.message_id),
            Err(_) => "?".to_owned(),
        };
        self.problems.push(Problem {
            stream_seq: e.stream_seq,
            message_id,
            kind,
            what,
        });
    }

    pub(crate) fn check(&mut self, e: &Event) {
        let subject = match &e.subject {
            Ok(s) => s.clone(),
            Err(err) => return self.problem(e, "subject", err.to_string()),
        };
        self.check_sequence(e, &subject);
        self.check_schema(e, subject.event_type);
        self.check_order(e, &subject);
    }

    fn check_sequence(&mut self, e: &Event, subject: &EventSubject) {
        let key = format!("{}.{}", subject.tenant, subject.message_id);
        let relative = self.relative;
        let seq = match e.aggregate_seq.as_deref().map(str::parse::<u64>) {
            Some(Ok(s)) if s >= 1 => s,
            Some(_) => {
                let got = e.aggregate_seq.clone().unwrap_or_default();
                return self.problem(
                    e,
                    "sequence",
                    format!("{HDR_SEQUENCE} '{got}' is not a positive integer"),
                );
            }
            None => return self.problem(e, "sequence", format!("no {HDR_SEQUENCE} header")),
        };
        let state = self.aggregates.entry(key).or_default();
        let expected = match state.last_seq {
            Some(last) => Some(last + 1),
            // From the start of the stream every aggregate starts at 1; with --since only the
            // continuity after the first event seen is checked, except that an `accepted` seen
            // first is a message's first event wherever the replay starts.
            None if relative && subject.event_type != EventType::Accepted => None,
            None => Some(1),
        };
        state.last_seq = Some(state.last_seq.map_or(seq, |l| l.max(seq)));
        if let Some(expected) = expected.filter(|x| *x != seq) {
            let what = if seq < expected {
                format!("{HDR_SEQUENCE} {seq} repeats or goes back (expected {expected})")
            } else {
                format!("{HDR_SEQUENCE} {seq} leaves a gap (expected {expected})")
            };
            self.problem(e, "sequence", what);
        }
    }

    fn check_schema(&mut self, e: &Event, event_type: EventType) {
        let body = match &e.body {
            Ok(b) => b,
            Err(err) => {
                let what = format!("{event_type} body is not JSON: {err}");
                return self.problem(e, "schema", what);
            }
        };
        let Some(version) = e.version.as_deref() else {
            return self.problem(e, "schema", format!("no {HDR_EVENT_VERSION} header"));
        };
        let validator = version
            .parse::<u32>()
            .ok()
            .and_then(|v| self.validators.get(&(event_type, v)));
        let Some(validator) = validator else {
            let what = format!("no schema for {event_type} v{version}");
            return self.problem(e, "schema", what);
        };
        let errors: Vec<String> = validator
            .iter_errors(body)
            .take(3)
            .map(|err| format!("at '{}': {err}", err.instance_path()))
            .collect();
        if !errors.is_empty() {
            let what = format!(
                "{event_type} v{version} body breaks its schema: {}",
                errors.join("; ")
            );
            self.problem(e, "schema", what);
        }
    }

    fn check_order(&mut self, e: &Event, subject: &EventSubject) {
        let key = format!("{}.{}", subject.tenant, subject.message_id);
        let relative = self.relative;
        let state = self.aggregates.entry(key).or_default();
        let before = match state.status {
            Some(s) => s,
            // The first event seen of an aggregate replayed from its start.
            None if !relative || subject.event_type == EventType::Accepted => Status::New,
            None => return,
        };
        match check_type(before, subject.event_type) {
            Ok(after) => state.status = Some(after),
            Err(err) => {
                // Keep the status: a later event is judged against the legal history.
                if state.status.is_none() {
                    state.status = Some(before);
                }
                self.problem(e, "order", format!("illegal lifecycle order: {err}"));
            }
        }
    }

    pub(crate) fn report(&self, events: u64) -> String {
        let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
        for p in &self.problems {
            *by_kind.entry(p.kind).or_default() += 1;
        }
        let counts: Vec<String> = by_kind.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        let mut out = format!(
            "replay verification FAILED: {} problems in {events} events of {} messages ({})\n",
            self.problems.len(),
            self.aggregates.len(),
            counts.join(", ")
        );
        for p in self.problems.iter().take(REPORT_LIMIT) {
            out.push_str(&format!(
                "  stream seq {:>8}  message {}  [{}] {}\n",
                p.stream_seq, p.message_id, p.kind, p.what
            ));
        }
        if self.problems.len() > REPORT_LIMIT {
            out.push_str(&format!(
                "  ... and {} more\n",
                self.problems.len() - REPORT_LIMIT
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_version_of_every_event_type_has_its_schema() {
        let audit = Audit::new(false);
        for &t in EventType::ALL {
            for v in t.versions() {
                assert!(
                    audit.validators.contains_key(&(t, v)),
                    "schemas/events/{t}.v{v}.json is missing or does not compile"
                );
            }
        }
        assert_eq!(
            audit.validators.len(),
            schemas::EVENT_SCHEMAS.len(),
            "every schema file names a known event type"
        );
    }
}
