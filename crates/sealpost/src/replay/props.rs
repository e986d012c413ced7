//! `replay --verify` ([`Audit`]) on histories the real aggregate writes, stored as the event
//! store stores them.
//!
//! The histories come from `sealpost_domain::testing` (the simulator the domain's own property
//! tests run: retries, throttling, crashes and redeliveries, fallback, expiry timers on time,
//! late and twice, holds and releases, receipts duplicated and out of order, redrives, purges,
//! cancels and requested fallbacks). Several messages of several tenants are interleaved in one
//! stream by the instants their events record, and each event becomes what the replay reads:
//! the subject [`EventSubject`] names, the headers [`event_headers`] writes on append, the body
//! [`StoredEvent::encode`] writes, read back through the replay's own [`Event::from_parts`].
//!
//! Damage is single: one event dropped, two adjacent events of one message swapped, or one
//! event duplicated. Stored as it was (every message keeps its headers), each is a sequence
//! problem; a dropped *last* event is a shorter history and cannot be told from one. With the
//! `Sealpost-Sequence` headers renumbered consistently (a writer who knows the layout), only the
//! order rules remain: there the real aggregate is the oracle. A damaged history the aggregate
//! can write (`testing::reachable`) must pass; one with a transition the aggregate never writes
//! (status before, event type) must fail with an order problem; the rest (the aggregate cannot
//! write them, yet every single transition is one it makes) are counted and printed, not
//! asserted: the order rules look at one transition at a time.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use sealpost_domain::testing::{self, case_with_operator, Case, History};
use sealpost_domain::{aggregate_id, EventType, MessageEvent, MessageId, Status, TenantId};
use sealpost_eventstore::names::EventSubject;
use sealpost_eventstore::store::event_headers;
use sealpost_eventstore::StoredEvent;

use super::verify::{Audit, Problem};
use super::Event;

const TENANTS: [&str; 3] = ["acme-corp", "beta-co", "gamma"];

/// Cases per property (`PROPTEST_CASES` raises it).
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One stored event as the event store writes it.
#[derive(Debug, Clone)]
struct Stored {
    /// Which message of the stream it belongs to.
    message: usize,
    event: MessageEvent,
    subject: String,
    headers: async_nats::HeaderMap,
    body: Vec<u8>,
}

/// One message of a generated stream.
#[derive(Debug)]
struct Msg {
    history: History,
    aggregate_id: String,
    /// `<tenant>/<message id>`, as the verifier's report names it.
    name: String,
    correlation_id: String,
}

impl Msg {
    fn store(&self, message: usize, aggregate_seq: usize, event: &MessageEvent) -> Stored {
        let a = &self.history.case;
        let mid = MessageId::derive(&a.tenant, &a.idempotency_key);
        Stored {
            message,
            event: event.clone(),
            subject: EventSubject::new(a.tenant.clone(), mid, event.event_type()).to_string(),
            headers: event_headers(
                &self.aggregate_id,
                aggregate_seq,
                event,
                Some(&self.correlation_id),
            ),
            body: StoredEvent::encode(event).expect("every event encodes"),
        }
    }
}

/// Generated messages interleaved in one stream, in the order of the instants they record.
#[derive(Debug)]
struct Stream {
    messages: Vec<Msg>,
    stored: Vec<Stored>,
}

impl Stream {
    fn generate(cases: Vec<Case>) -> Result<Stream, TestCaseError> {
        let mut messages = Vec::new();
        for (i, c) in cases.into_iter().enumerate() {
            let tenant = TenantId::new(TENANTS[i % TENANTS.len()]).expect("a tenant id");
            let key = format!("m{i}");
            let mid = MessageId::derive(&tenant, &key);
            let history = History::generate(&c.for_message(tenant.clone(), key))
                .map_err(TestCaseError::fail)?;
            messages.push(Msg {
                history,
                aggregate_id: aggregate_id(&tenant, &mid),
                name: format!("{tenant}/{mid}"),
                correlation_id: format!("corr-{i}"),
            });
        }
        let per: Vec<Vec<Stored>> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let events = m.history.events();
                events
                    .iter()
                    .enumerate()
                    .map(|(k, e)| m.store(i, k + 1, e))
                    .collect()
            })
            .collect();
        // Merge: the earliest next event first, the lower message on a tie; each message's
        // events keep their order (the events of one write share their instant, so they stay
        // together unless another message recorded the very same instant).
        let mut next = vec![0usize; per.len()];
        let mut stored = Vec::new();
        while let Some(i) = (0..per.len())
            .filter(|&i| next[i] < per[i].len())
            .min_by_key(|&i| (per[i][next[i]].event.at(), i))
        {
            stored.push(per[i][next[i]].clone());
            next[i] += 1;
        }
        Ok(Stream { messages, stored })
    }

    /// The stream positions of message `m`'s events.
    fn positions(&self, m: usize) -> Vec<usize> {
        (0..self.stored.len())
            .filter(|&p| self.stored[p].message == m)
            .collect()
    }
}

/// What the replay reads, stream sequence from 1 and the time each event records.
fn replayed(stored: &[Stored]) -> Vec<Event> {
    stored
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Event::from_parts(
                &s.subject,
                Some(&s.headers),
                &s.body,
                i as u64 + 1,
                s.event.at(),
                false,
            )
        })
        .collect()
}

/// Runs `audit` over `stored` from a clean state (the compiled schemas are kept).
fn verify<'a>(audit: &'a mut Audit, stored: &[Stored]) -> &'a [Problem] {
    audit.aggregates.clear();
    audit.problems.clear();
    for e in replayed(stored) {
        audit.check(&e);
    }
    &audit.problems
}

/// Interleaved streams of one to `max` messages.
fn streams(max: usize) -> impl Strategy<Value = Vec<Case>> {
    proptest::collection::vec(case_with_operator(), 1..=max)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Drop,
    Swap,
    Duplicate,
}

/// One damaged copy of a stream.
#[derive(Debug)]
struct Mutation {
    kind: Kind,
    message: usize,
    /// The index (in the message's own history) of the event dropped, duplicated or swapped
    /// with its successor.
    index: usize,
    /// The message's last event was dropped: what is left is a shorter history.
    tail: bool,
    stored: Vec<Stored>,
    /// The types involved, for the tally.
    label: String,
}

/// Every single drop, adjacent swap (within one message) and duplication of `s`, each event
/// keeping its stored headers.
fn mutations(s: &Stream) -> Vec<Mutation> {
    let mut out = Vec::new();
    for m in 0..s.messages.len() {
        let pos = s.positions(m);
        let ty = |p: usize| s.stored[p].event.event_type().as_str();
        for (j, &p) in pos.iter().enumerate() {
            let mut dropped = s.stored.clone();
            dropped.remove(p);
            out.push(Mutation {
                kind: Kind::Drop,
                message: m,
                index: j,
                tail: j + 1 == pos.len(),
                stored: dropped,
                label: format!("drop {}", ty(p)),
            });
            let mut dup = s.stored.clone();
            dup.insert(p + 1, s.stored[p].clone());
            out.push(Mutation {
                kind: Kind::Duplicate,
                message: m,
                index: j,
                tail: false,
                stored: dup,
                label: format!("duplicate {}", ty(p)),
            });
            if let Some(&q) = pos.get(j + 1) {
                let mut swapped = s.stored.clone();
                swapped.swap(p, q);
                out.push(Mutation {
                    kind: Kind::Swap,
                    message: m,
                    index: j,
                    tail: false,
                    stored: swapped,
                    label: format!("swap {}/{}", ty(p), ty(q)),
                });
            }
        }
    }
    out
}

/// The damaged message's `Sealpost-Sequence` rewritten 1, 2, 3… in stream order, with the
/// store's own header layout.
fn renumbered(s: &Stream, mutation: &Mutation) -> Vec<Stored> {
    let msg = &s.messages[mutation.message];
    let mut seq = 0;
    mutation
        .stored
        .iter()
        .map(|st| {
            if st.message != mutation.message {
                return st.clone();
            }
            seq += 1;
            msg.store(st.message, seq, &st.event)
        })
        .collect()
}

/// The (status before, event type) transitions the real aggregate writes, gathered from 3,000
/// generated histories (fixed seed); the domain's props test shows they are exactly the ones
/// `sealpost_domain::order` allows.
static WRITTEN: LazyLock<BTreeSet<(Status, EventType)>> = LazyLock::new(|| {
    let rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    let strategy = case_with_operator();
    let mut written = BTreeSet::new();
    for _ in 0..3_000 {
        let case = strategy.new_tree(&mut runner).expect("a case").current();
        let h = History::generate(&case).expect("the generator's own checks pass");
        written.extend(testing::steps(&h.events()));
    }
    written
});

/// Runs `check` on `n` generated streams of up to `max` messages, with shrinking; panics with
/// the smallest failing stream.
fn for_streams(n: u32, max: usize, check: impl Fn(&Stream) -> Result<(), TestCaseError>) {
    let mut runner = TestRunner::new(Config {
        cases: n,
        failure_persistence: None,
        ..Config::default()
    });
    if let Err(e) = runner.run(&streams(max), |cases| check(&Stream::generate(cases)?)) {
        panic!("{e}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(256),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Every stream of generated histories (up to six messages of three tenants, interleaved)
    /// passes `--verify` from the start: no problem of any kind, every message counted.
    #[test]
    fn verify_reports_no_problem_in_any_generated_stream(cases in streams(6)) {
        let s = Stream::generate(cases)?;
        let mut audit = Audit::new(false);
        let problems = verify(&mut audit, &s.stored);
        prop_assert!(problems.is_empty(), "{}", audit.report(s.stored.len() as u64));
        prop_assert_eq!(audit.aggregates.len(), s.messages.len());
    }

    /// `--since` starts the replay anywhere: from any position of a generated stream, what
    /// follows passes `--verify` in its relative mode (messages accepted before the window
    /// checked for continuity only), none reported as starting mid-life.
    #[test]
    fn verify_since_reports_no_problem_in_any_suffix_of_a_generated_stream(
        cases in streams(6),
        cut in any::<prop::sample::Index>(),
    ) {
        let s = Stream::generate(cases)?;
        let from = cut.index(s.stored.len());
        let mut audit = Audit::new(true);
        let problems = verify(&mut audit, &s.stored[from..]);
        prop_assert!(problems.is_empty(), "{}", audit.report(s.stored.len() as u64));
    }

    /// In `--since` mode, a message accepted inside the window still starts at sequence 1: an
    /// `accepted` stored with any other sequence is reported.
    #[test]
    fn verify_since_reports_an_accepted_that_does_not_start_its_message_at_1(
        cases in streams(3),
        cut in any::<prop::sample::Index>(),
        bumped in 2usize..5,
    ) {
        let s = Stream::generate(cases)?;
        let from = cut.index(s.stored.len());
        let mut window = s.stored[from..].to_vec();
        let Some(at) = window.iter().position(|e| e.event.event_type() == EventType::Accepted)
        else {
            return Ok(());
        };
        // Renumber that message consistently (bumped, bumped + 1, ...): only the start is wrong.
        let message = window[at].message;
        let m = &s.messages[message];
        for (k, e) in window
            .iter_mut()
            .filter(|e| e.message == message)
            .enumerate()
        {
            *e = m.store(message, bumped + k, &e.event);
        }
        let mut audit = Audit::new(true);
        let problems = verify(&mut audit, &window);
        prop_assert!(
            problems.iter().any(|p| p.kind == "sequence" && p.message_id == m.name),
            "{}",
            audit.report(window.len() as u64)
        );
    }
}

/// Each single drop, swap or duplication of an event, with every stored header kept as it was,
/// is reported as a sequence problem of the damaged message and of no other, except a dropped
/// last event, which leaves a shorter history (counted, and shown to pass).
#[test]
fn verify_reports_every_dropped_swapped_or_duplicated_stored_event_except_a_dropped_last_one() {
    #[derive(Default)]
    struct Tally {
        streams: usize,
        events: usize,
        by_kind: BTreeMap<Kind, usize>,
        tails: usize,
    }
    let tally = RefCell::new(Tally::default());
    let audit = RefCell::new(Audit::new(false));
    for_streams(cases(48), 4, |s| {
        let mut audit = audit.borrow_mut();
        let mut t = tally.borrow_mut();
        t.streams += 1;
        t.events += s.stored.len();
        for m in mutations(s) {
            let target = &s.messages[m.message].name;
            let problems = verify(&mut audit, &m.stored);
            if m.tail {
                prop_assert!(
                    problems.is_empty(),
                    "a dropped last event leaves a legal shorter history"
                );
                t.tails += 1;
                continue;
            }
            prop_assert!(
                problems
                    .iter()
                    .any(|p| p.kind == "sequence" && &p.message_id == target),
                "{:?} #{} of {target} ({}) not reported as a sequence problem: {:?}",
                m.kind,
                m.index,
                m.label,
                problems
            );
            prop_assert!(
                problems.iter().all(|p| &p.message_id == target),
                "only the damaged message is named: {problems:?}"
            );
            *t.by_kind.entry(m.kind).or_default() += 1;
        }
        Ok(())
    });
    let t = tally.into_inner();
    let reported: usize = t.by_kind.values().sum();
    println!(
        "stored headers kept: {} streams, {} events; {reported} single mutations reported \
         ({:?}); {} dropped last events pass (a shorter history)",
        t.streams, t.events, t.by_kind, t.tails
    );
    assert!(reported > 1_000, "too few mutations checked: {reported}");
}

/// With the damaged message's `Sealpost-Sequence` renumbered 1, 2, 3… (as a writer who knows
/// the layout would), each single drop, swap or duplication is judged against the real
/// aggregate: if the aggregate can write the damaged history (`testing::reachable`), `--verify`
/// passes it; if the damaged history makes a transition (status before, event type) the
/// aggregate never writes, `--verify` reports an order problem of that message. Damage the
/// aggregate cannot write, made only of transitions it does write, is counted and printed.
#[test]
fn renumbered_damage_passes_verify_if_the_aggregate_can_write_it_and_fails_if_it_makes_a_transition_the_aggregate_never_writes(
) {
    #[derive(Default)]
    struct Tally {
        streams: usize,
        mutations: usize,
        reachable: BTreeMap<String, usize>,
        order_problems: usize,
        /// Unreachable, every transition written by the aggregate: did --verify report it?
        unseen: BTreeMap<String, (usize, usize)>,
    }
    let written = &*WRITTEN;
    let tally = RefCell::new(Tally::default());
    let audit = RefCell::new(Audit::new(false));
    for_streams(cases(48), 4, |s| {
        let mut audit = audit.borrow_mut();
        let mut t = tally.borrow_mut();
        t.streams += 1;
        for m in mutations(s) {
            t.mutations += 1;
            let msg = &s.messages[m.message];
            let stored = renumbered(s, &m);
            let events: Vec<MessageEvent> = stored
                .iter()
                .filter(|st| st.message == m.message)
                .map(|st| st.event.clone())
                .collect();
            let problems = verify(&mut audit, &stored);
            if testing::reachable(&events, &msg.history.case.policy()) {
                prop_assert!(
                    problems.is_empty(),
                    "{} #{} of {}: the aggregate can write it, yet: {problems:?}",
                    m.label,
                    m.index,
                    msg.name
                );
                *t.reachable.entry(m.label).or_default() += 1;
            } else if let Some(step) = testing::steps(&events)
                .into_iter()
                .find(|st| !written.contains(st))
            {
                prop_assert!(
                    problems
                        .iter()
                        .any(|p| p.kind == "order" && p.message_id == msg.name),
                    "{} #{} of {}: {:?} after {:?} is never written, yet: {problems:?}",
                    m.label,
                    m.index,
                    msg.name,
                    step.1,
                    step.0
                );
                prop_assert!(problems.iter().all(|p| p.message_id == msg.name));
                t.order_problems += 1;
            } else {
                let e = t.unseen.entry(m.label).or_default();
                e.0 += 1;
                e.1 += usize::from(!problems.is_empty());
            }
        }
        Ok(())
    });
    let t = tally.into_inner();
    let reachable: usize = t.reachable.values().sum();
    let unseen: usize = t.unseen.values().map(|v| v.0).sum();
    let unseen_reported: usize = t.unseen.values().map(|v| v.1).sum();
    println!(
        "renumbered: {} streams, {} single mutations: {reachable} the aggregate can write \
         (all pass: {:?}); {} with a transition it never writes (all reported); {unseen} it \
         cannot write but made of transitions it does write ({unseen_reported} reported)",
        t.streams, t.mutations, t.reachable, t.order_problems
    );
    let mut unseen: Vec<_> = t.unseen.into_iter().collect();
    unseen.sort_by_key(|(_, (n, _))| std::cmp::Reverse(*n));
    for (label, (n, reported)) in unseen {
        println!("  not an order problem: {label}: {n} ({reported} reported)");
    }
    assert!(t.order_problems > 200, "too few order problems checked");
    assert!(
        reachable > 0,
        "some damage is a history the aggregate can write"
    );
}
