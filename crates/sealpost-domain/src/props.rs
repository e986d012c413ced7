//! Property tests: how a message ends depends on its configuration, the carrier's behaviour and
//! the retry policy, never on the order in which the aggregate hears about things; and the order
//! rules of `sealpost replay --verify` allow exactly the transitions the aggregate makes.
//!
//! The histories come from the simulator in [`crate::testing`] (shared with other crates'
//! property tests through the `testing` feature): the delivery worker's attempts, crashes and
//! redeliveries, late answers, racing workers, receipts duplicated, out of order and early, the
//! expiry timer on time, late, twice or early (refused), holds and releases, and an operator's
//! redrives, purges, cancels and requested fallbacks.
//!
//! The expected end is computed from the case alone ([`expected`]). The model's assumptions,
//! which are the scope of the claim: a carrier that accepts, refuses or reports "not capable"
//! answers well within the TTL and retry window (those cases get a TTL of an hour or more, while
//! all delays together stay under ten minutes); a carrier that never accepts (always transient,
//! always throttled) may be outrun by any delay, including past the TTL, which is the race the
//! expiry rule closes; and a case where reaching `max_attempts` and reaching the deadline are
//! close enough for the delays to reorder them is discarded (`prop_assume!`), because then the
//! number of attempts made really differs. Cancel races are a property of their own below.
//!
//! Each run also checks that the events emitted form a history `sealpost replay --verify`'s order
//! rules accept, and that every command that wrote events writes nothing when applied again.

use std::collections::BTreeSet;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use crate::events::*;
use crate::order;
use crate::testing::*;
use crate::{MessageCommand, MessageEvent, Status, TenantId};

fn check(case: &Case) -> Result<(), TestCaseError> {
    let Some(want) = expected(case) else {
        return Err(TestCaseError::reject(
            "max_attempts and the deadline too close to call",
        ));
    };
    let run = History::generate(case).map_err(TestCaseError::fail)?;
    let (got, history) = (run.end.clone(), run.events());
    prop_assert_eq!(
        &got,
        &want,
        "history: {:?}",
        history
            .iter()
            .map(|e| e.event_type().as_str())
            .collect::<Vec<_>>()
    );
    prop_assert_eq!(got.notice_owed(), want.notice_owed());
    Ok(())
}

proptest! {
    // 2,000 cases per run (PROPTEST_CASES raises it for a longer search).
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000),
        max_global_rejects: 20_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_end_depends_on_the_case_not_on_the_interleaving(case in case()) {
        check(&case)?;
    }

    /// A cancel either wins (the message was still waiting for a submission: nothing acked and
    /// nothing ended before it, and nothing happens to it after) or is refused and changes
    /// nothing; it never leaves a third outcome.
    #[test]
    fn a_cancel_wins_while_the_message_waits_for_a_submission_or_changes_nothing(
        case in case(),
        cancel_at_ms in 0i64..120_000,
    ) {
        let Some(want) = expected(&case) else {
            return Err(TestCaseError::reject("too close to call"));
        };
        let mut case = case;
        case.operator.cancel_at_ms = Some(cancel_at_ms);
        let run = History::generate(&case).map_err(TestCaseError::fail)?;
        let (got, history) = (run.end.clone(), run.events());
        let cancelled = history.iter().position(|e| matches!(e, MessageEvent::Cancelled(_)));
        match cancelled {
            Some(c) => {
                let before = &history[..c];
                prop_assert!(
                    !before.iter().any(|e| matches!(e, MessageEvent::CarrierAcked(_))
                        || Status::after(e.event_type()).is_some_and(Status::is_terminal_failure)),
                    "cancelled after an ack or an end"
                );
                prop_assert_eq!(got.status, Status::Cancelled);
                prop_assert!(history[c + 1..].iter().all(|e| Status::after(e.event_type()).is_none()),
                    "something moved the message after its cancel");
            }
            None => prop_assert_eq!(got, want),
        }
    }
}

/// The report's scenario, fixed: a 4 s TTL, a carrier that always answers 503, an SMS fallback,
/// and the job redelivered after `ack_wait` so the expiry timer comes before the attempt that
/// would have ended the retries. Before the rule it ended `expired` with no notice.
#[test]
fn regression_a_job_redelivered_after_the_ttl_still_falls_back() {
    for dice in [vec![0u32; 64], vec![3u32; 64], vec![1u32; 64]] {
        let case = Case {
            tenant: acme(),
            idempotency_key: "prop".into(),
            operator: Operator::default(),
            ttl_s: 4,
            window_s: 72 * 3600,
            fallback: true,
            message_type: MessageType::Transactional,
            max_attempts: 30,
            behaviour: Behaviour::AlwaysTransient,
            dice,
        };
        let run = History::generate(&case).unwrap();
        let (end, history) = (run.end.clone(), run.events());
        assert_eq!(
            end,
            End {
                status: Status::FallbackTriggered,
                reason: Some(EndReason::Expired)
            },
            "{history:?}"
        );
        assert_eq!(
            history
                .iter()
                .filter(|e| matches!(e, MessageEvent::FallbackTriggered(_)))
                .count(),
            1
        );
    }
}

/// Found by the property while the expiry rule was being written: a window that closes a second
/// before the TTL, and a crash that keeps the job away past both. The expiry must end it as the
/// policy would have (`retry_window_exhausted`), not as `expired`.
#[test]
fn regression_a_window_closing_before_the_ttl_names_the_window_even_when_the_timer_ends_it() {
    let case = Case {
        tenant: acme(),
        idempotency_key: "prop".into(),
        operator: Operator::default(),
        ttl_s: 2,
        window_s: 1,
        fallback: false,
        message_type: MessageType::Transactional,
        max_attempts: 3,
        behaviour: Behaviour::AlwaysTransient,
        dice: vec![0; 64],
    };
    let run = History::generate(&case).unwrap();
    let (end, history) = (run.end.clone(), run.events());
    assert_eq!(
        history.iter().map(|e| e.event_type()).collect::<Vec<_>>(),
        [EventType::Accepted, EventType::Failed],
        "the crash kept every attempt away; the timer ended it"
    );
    assert_eq!(
        end,
        End {
            status: Status::Failed,
            reason: Some(EndReason::RetryWindowExhausted)
        }
    );
}

fn acme() -> TenantId {
    TenantId::new("acme-corp").unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000),
        ..ProptestConfig::default()
    })]

    /// The oracle [`reachable`] that judges damaged histories elsewhere is not too strict: it
    /// finds every history the aggregate wrote, operator commands included.
    #[test]
    fn every_generated_history_is_one_the_reachability_oracle_finds(run in history()) {
        let run = run.map_err(TestCaseError::fail)?;
        prop_assert!(
            reachable(&run.events(), &run.case.policy()),
            "{:?}",
            run.events().iter().map(|e| e.event_type().as_str()).collect::<Vec<_>>()
        );
    }
}

/// Runs `n` generated histories from a fixed seed (the same ones on every run).
fn deterministic_histories(n: usize) -> Vec<History> {
    let rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    let strategy = case_with_operator();
    (0..n)
        .map(|_| {
            let case = strategy.new_tree(&mut runner).unwrap().current();
            History::generate(&case).unwrap()
        })
        .collect()
}

/// `order.rs` must not merely restate the transition table: over 3,000 generated histories
/// (fixed seed), the (status before, event type) pairs the aggregate actually wrote are exactly
/// the pairs `order::check_type` allows. A pair the rules allow but the aggregate never writes
/// would let `--verify` pass a history no command can produce.
#[test]
fn the_order_rules_allow_exactly_the_transitions_the_aggregate_writes() {
    let mut written = BTreeSet::new();
    for h in deterministic_histories(3_000) {
        written.extend(
            steps(&h.events())
                .into_iter()
                .map(|(s, t)| (s.as_str(), t.as_str())),
        );
    }
    let mut allowed = BTreeSet::new();
    for &t in EventType::ALL {
        for &s in Status::ALL {
            if order::check_type(s, t).is_ok() {
                allowed.insert((s.as_str(), t.as_str()));
            }
        }
    }
    let never_written: Vec<_> = allowed.difference(&written).collect();
    let not_allowed: Vec<_> = written.difference(&allowed).collect();
    assert!(
        never_written.is_empty() && not_allowed.is_empty(),
        "allowed but never written: {never_written:?}; written but not allowed: {not_allowed:?}"
    );
}

/// The shared generator reaches every event type, so the verifier's tests elsewhere see all.
#[test]
fn the_generator_writes_every_event_type_and_every_operator_command() {
    let histories = deterministic_histories(3_000);
    let types: BTreeSet<EventType> = histories
        .iter()
        .flat_map(|h| h.events())
        .map(|e| e.event_type())
        .collect();
    assert_eq!(types.len(), EventType::ALL.len(), "{types:?}");
    let wrote = |f: fn(&MessageCommand) -> bool| {
        histories
            .iter()
            .flat_map(|h| &h.writes)
            .filter(|w| f(&w.command))
            .count()
    };
    assert!(wrote(|c| matches!(c, MessageCommand::Enqueue { .. })) > 0);
    assert!(wrote(|c| matches!(c, MessageCommand::Purge { .. })) > 0);
    assert!(wrote(|c| matches!(c, MessageCommand::Cancel { .. })) > 0);
    assert!(wrote(|c| matches!(c, MessageCommand::TriggerFallback { .. })) > 0);
}
