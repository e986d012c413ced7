//! The legal order of a message's events: which event may follow which status, derived from the
//! state-transition table in the crate docs. Used to audit a stored history (`sealpost replay
//! --verify`); the aggregate itself never needs it, because [`crate::Message::decide`] only ever
//! emits legal events.
//!
//! Works on event types, so a history whose bodies no longer decode can still be checked. The
//! status an event leads to is [`Status::after`]; holds, releases, purges and failed attempts are
//! flags or counters beside the status and leave it unchanged.

use crate::aggregate::Status;
use crate::events::{EventType, MessageEvent};

/// An event that may not follow the status before it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IllegalTransition {
    /// `accepted` must be a message's first event and only its first.
    #[error("accepted after the message was already accepted")]
    AcceptedAgain,
    /// Something other than `accepted` came first.
    #[error("{event_type} before accepted")]
    NotAccepted { event_type: EventType },
    /// The event cannot follow `from`.
    #[error("{event_type} after {from}")]
    After { event_type: EventType, from: Status },
}

/// The status after `event` when the message was in `before`, or why `event` cannot come next.
pub fn check(before: Status, event: &MessageEvent) -> Result<Status, IllegalTransition> {
    check_type(before, event.event_type())
}

/// The statuses an event of `event_type` may follow (`accepted` follows only `new`).
pub fn legal_before(event_type: EventType) -> &'static [Status] {
    use EventType as E;
    use Status as S;
    const WAITING: &[Status] = &[S::Queued, S::RetryScheduled];
    const UNSUBMITTED_OR_ACKED: &[Status] = &[S::Queued, S::RetryScheduled, S::CarrierAcked];
    const ANY_ACCEPTED: &[Status] = &[
        S::Queued,
        S::RetryScheduled,
        S::CarrierAcked,
        S::Delivered,
        S::Displayed,
        S::Failed,
        S::FallbackTriggered,
        S::Expired,
        S::Cancelled,
    ];
    const SETTLED: &[Status] = &[
        S::Delivered,
        S::Displayed,
        S::Failed,
        S::FallbackTriggered,
        S::Expired,
        S::Cancelled,
    ];
    match event_type {
        E::Accepted => &[S::New],
        E::Queued
        | E::CarrierAcked
        | E::AttemptFailed
        | E::RetryScheduled
        | E::Failed
        | E::Cancelled => WAITING,
        E::FallbackTriggered | E::Expired => UNSUBMITTED_OR_ACKED,
        E::Delivered => &[S::CarrierAcked],
        // A READ receipt on an acked message writes an implied `delivered` first.
        E::Displayed => &[S::Delivered],
        E::Held | E::Released => ANY_ACCEPTED,
        // A device reports what the carrier or a fallback notice handed it.
        E::DecryptionFailed => &[
            S::CarrierAcked,
            S::Delivered,
            S::Displayed,
            S::FallbackTriggered,
        ],
        E::Purged => SETTLED,
    }
}

/// [`check`] by event type (the last token of the event's subject).
pub fn check_type(before: Status, event_type: EventType) -> Result<Status, IllegalTransition> {
    if legal_before(event_type).contains(&before) {
        return Ok(Status::after(event_type).unwrap_or(before));
    }
    Err(match (event_type, before) {
        (EventType::Accepted, _) => IllegalTransition::AcceptedAgain,
        (_, Status::New) => IllegalTransition::NotAccepted { event_type },
        (_, from) => IllegalTransition::After { event_type, from },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Cancelled, Purged};
    use EventType as E;
    use Status as S;

    const ALL: &[Status] = Status::ALL;

    /// Given every status, when `event_type` comes next, then exactly `legal` allow it (each
    /// to `to`, or unchanged for `None`) and every other status names the event and the status.
    fn only_after(event_type: EventType, legal: &[Status], to: Option<Status>) {
        for &before in ALL {
            let got = check_type(before, event_type);
            if legal.contains(&before) {
                assert_eq!(got, Ok(to.unwrap_or(before)), "{event_type} after {before}");
            } else if before == S::New {
                assert_eq!(got, Err(IllegalTransition::NotAccepted { event_type }));
            } else {
                assert_eq!(
                    got,
                    Err(IllegalTransition::After {
                        event_type,
                        from: before
                    }),
                    "{event_type} after {before}"
                );
            }
        }
    }

    #[test]
    fn given_a_new_message_when_accepted_then_queued() {
        assert_eq!(check_type(S::New, E::Accepted), Ok(S::Queued));
    }

    #[test]
    fn given_an_accepted_message_when_accepted_again_then_illegal() {
        for before in ALL.iter().copied().filter(|s| *s != S::New) {
            assert_eq!(
                check_type(before, E::Accepted),
                Err(IllegalTransition::AcceptedAgain)
            );
        }
    }

    #[test]
    fn given_a_waiting_message_when_queued_then_queued_else_illegal() {
        only_after(E::Queued, &[S::Queued, S::RetryScheduled], Some(S::Queued));
    }

    #[test]
    fn given_a_waiting_message_when_carrier_acked_then_acked_else_illegal() {
        only_after(
            E::CarrierAcked,
            &[S::Queued, S::RetryScheduled],
            Some(S::CarrierAcked),
        );
    }

    #[test]
    fn given_a_waiting_message_when_attempt_failed_then_status_unchanged_else_illegal() {
        only_after(E::AttemptFailed, &[S::Queued, S::RetryScheduled], None);
    }

    #[test]
    fn given_a_waiting_message_when_retry_scheduled_then_retry_scheduled_else_illegal() {
        only_after(
            E::RetryScheduled,
            &[S::Queued, S::RetryScheduled],
            Some(S::RetryScheduled),
        );
    }

    #[test]
    fn given_a_waiting_message_when_failed_then_failed_else_illegal() {
        only_after(E::Failed, &[S::Queued, S::RetryScheduled], Some(S::Failed));
    }

    #[test]
    fn given_a_waiting_message_when_cancelled_then_cancelled_else_illegal() {
        only_after(
            E::Cancelled,
            &[S::Queued, S::RetryScheduled],
            Some(S::Cancelled),
        );
    }

    #[test]
    fn given_an_unsettled_message_when_fallback_triggered_then_fallback_else_illegal() {
        only_after(
            E::FallbackTriggered,
            &[S::Queued, S::RetryScheduled, S::CarrierAcked],
            Some(S::FallbackTriggered),
        );
    }

    #[test]
    fn given_an_unsettled_message_when_expired_then_expired_else_illegal() {
        only_after(
            E::Expired,
            &[S::Queued, S::RetryScheduled, S::CarrierAcked],
            Some(S::Expired),
        );
    }

    #[test]
    fn given_an_acked_message_when_delivered_then_delivered_else_illegal() {
        only_after(E::Delivered, &[S::CarrierAcked], Some(S::Delivered));
    }

    #[test]
    fn given_a_delivered_message_when_displayed_then_displayed_else_illegal() {
        only_after(E::Displayed, &[S::Delivered], Some(S::Displayed));
    }

    #[test]
    fn given_any_accepted_message_when_held_or_released_then_status_unchanged() {
        let accepted: Vec<Status> = ALL.iter().copied().filter(|s| *s != S::New).collect();
        only_after(E::Held, &accepted, None);
        only_after(E::Released, &accepted, None);
    }

    #[test]
    fn given_a_settled_message_when_purged_then_status_unchanged_else_illegal() {
        only_after(
            E::Purged,
            &[
                S::Delivered,
                S::Displayed,
                S::Failed,
                S::FallbackTriggered,
                S::Expired,
                S::Cancelled,
            ],
            None,
        );
    }

    #[test]
    fn every_event_type_is_legal_after_some_status() {
        for &t in EventType::ALL {
            assert!(
                ALL.iter().any(|&s| check_type(s, t).is_ok()),
                "{t} can never be stored"
            );
        }
    }

    #[test]
    fn given_a_decoded_event_when_checked_then_its_type_decides() {
        let at = time::OffsetDateTime::UNIX_EPOCH;
        let cancelled = MessageEvent::Cancelled(Cancelled { at });
        assert_eq!(check(S::Queued, &cancelled), Ok(S::Cancelled));
        let purged = MessageEvent::Purged(Purged { at });
        assert_eq!(check(S::Displayed, &purged), Ok(S::Displayed));
    }

    #[test]
    fn given_a_cancelled_message_when_carrier_acked_then_the_report_names_both() {
        let err = check_type(S::Cancelled, E::CarrierAcked).unwrap_err();
        assert_eq!(err.to_string(), "carrier_acked after cancelled");
        assert_eq!(
            check_type(S::New, E::Displayed).unwrap_err().to_string(),
            "displayed before accepted"
        );
        assert_eq!(
            IllegalTransition::AcceptedAgain.to_string(),
            "accepted after the message was already accepted"
        );
    }
}
