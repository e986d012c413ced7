//! The legal order of a message's events: which event may follow which status, derived from the
//! state-transition table in the crate docs. Used to audit a stored history (`sealpost replay
//! --verify`); the aggregate itself never needs it, because [`crate::Message::decide`] only ever
//! emits legal events.
//!
//! Works on event type names, so a history whose bodies no longer decode can still be checked.
//! Holds, releases and purges are flags beside the status and leave it unchanged.

use std::fmt;

use crate::aggregate::Status;
use crate::events::MessageEvent;

/// An event that may not follow the status before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IllegalTransition {
    /// The event type is not one of [`crate::EVENT_TYPES`].
    UnknownEvent(String),
    /// `accepted` must be a message's first event and only its first.
    AcceptedAgain,
    /// Something other than `accepted` came first.
    NotAccepted { event_type: String },
    /// The event cannot follow `from`.
    After { event_type: String, from: Status },
}

impl fmt::Display for IllegalTransition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IllegalTransition::UnknownEvent(t) => write!(f, "unknown event type '{t}'"),
            IllegalTransition::AcceptedAgain => {
                f.write_str("accepted after the message was already accepted")
            }
            IllegalTransition::NotAccepted { event_type } => {
                write!(f, "{event_type} before accepted")
            }
            IllegalTransition::After { event_type, from } => {
                write!(f, "{event_type} after {from}")
            }
        }
    }
}

impl std::error::Error for IllegalTransition {}

/// The status after `event` when the message was in `before`, or why `event` cannot come next.
pub fn check(before: Status, event: &MessageEvent) -> Result<Status, IllegalTransition> {
    check_type(before, event.event_type())
}

/// [`check`] by event type name (the last token of the event's subject).
pub fn check_type(before: Status, event_type: &str) -> Result<Status, IllegalTransition> {
    use Status as S;
    let after = |from: &[Status], to: Option<Status>| {
        if from.contains(&before) {
            Ok(to.unwrap_or(before))
        } else if before == S::New {
            Err(IllegalTransition::NotAccepted {
                event_type: event_type.to_owned(),
            })
        } else {
            Err(IllegalTransition::After {
                event_type: event_type.to_owned(),
                from: before,
            })
        }
    };
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
        "accepted" if before == S::New => Ok(S::Queued),
        "accepted" => Err(IllegalTransition::AcceptedAgain),
        "queued" => after(WAITING, Some(S::Queued)),
        "carrier_acked" => after(WAITING, Some(S::CarrierAcked)),
        "attempt_failed" => after(WAITING, None),
        "retry_scheduled" => after(WAITING, Some(S::RetryScheduled)),
        "failed" => after(WAITING, Some(S::Failed)),
        "cancelled" => after(WAITING, Some(S::Cancelled)),
        "fallback_triggered" => after(UNSUBMITTED_OR_ACKED, Some(S::FallbackTriggered)),
        "expired" => after(UNSUBMITTED_OR_ACKED, Some(S::Expired)),
        "delivered" => after(&[S::CarrierAcked], Some(S::Delivered)),
        // A READ receipt on an acked message writes an implied `delivered` first.
        "displayed" => after(&[S::Delivered], Some(S::Displayed)),
        "held" | "released" => after(ANY_ACCEPTED, None),
        "purged" => after(SETTLED, None),
        other => Err(IllegalTransition::UnknownEvent(other.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Cancelled, Purged};
    use crate::EVENT_TYPES;
    use Status as S;

    const ALL: [Status; 10] = [
        S::New,
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

    /// Given every status, when `event_type` comes next, then exactly `legal` allow it (each
    /// to `to`, or unchanged for `None`) and every other status names the event and the status.
    fn only_after(event_type: &str, legal: &[Status], to: Option<Status>) {
        for before in ALL {
            let got = check_type(before, event_type);
            if legal.contains(&before) {
                assert_eq!(got, Ok(to.unwrap_or(before)), "{event_type} after {before}");
            } else if before == S::New {
                assert_eq!(
                    got,
                    Err(IllegalTransition::NotAccepted {
                        event_type: event_type.into()
                    })
                );
            } else {
                assert_eq!(
                    got,
                    Err(IllegalTransition::After {
                        event_type: event_type.into(),
                        from: before
                    }),
                    "{event_type} after {before}"
                );
            }
        }
    }

    #[test]
    fn given_a_new_message_when_accepted_then_queued() {
        assert_eq!(check_type(S::New, "accepted"), Ok(S::Queued));
    }

    #[test]
    fn given_an_accepted_message_when_accepted_again_then_illegal() {
        for before in ALL.into_iter().filter(|s| *s != S::New) {
            assert_eq!(
                check_type(before, "accepted"),
                Err(IllegalTransition::AcceptedAgain)
            );
        }
    }

    #[test]
    fn given_a_waiting_message_when_queued_then_queued_else_illegal() {
        only_after("queued", &[S::Queued, S::RetryScheduled], Some(S::Queued));
    }

    #[test]
    fn given_a_waiting_message_when_carrier_acked_then_acked_else_illegal() {
        only_after(
            "carrier_acked",
            &[S::Queued, S::RetryScheduled],
            Some(S::CarrierAcked),
        );
    }

    #[test]
    fn given_a_waiting_message_when_attempt_failed_then_status_unchanged_else_illegal() {
        only_after("attempt_failed", &[S::Queued, S::RetryScheduled], None);
    }

    #[test]
    fn given_a_waiting_message_when_retry_scheduled_then_retry_scheduled_else_illegal() {
        only_after(
            "retry_scheduled",
            &[S::Queued, S::RetryScheduled],
            Some(S::RetryScheduled),
        );
    }

    #[test]
    fn given_a_waiting_message_when_failed_then_failed_else_illegal() {
        only_after("failed", &[S::Queued, S::RetryScheduled], Some(S::Failed));
    }

    #[test]
    fn given_a_waiting_message_when_cancelled_then_cancelled_else_illegal() {
        only_after(
            "cancelled",
            &[S::Queued, S::RetryScheduled],
            Some(S::Cancelled),
        );
    }

    #[test]
    fn given_an_unsettled_message_when_fallback_triggered_then_fallback_else_illegal() {
        only_after(
            "fallback_triggered",
            &[S::Queued, S::RetryScheduled, S::CarrierAcked],
            Some(S::FallbackTriggered),
        );
    }

    #[test]
    fn given_an_unsettled_message_when_expired_then_expired_else_illegal() {
        only_after(
            "expired",
            &[S::Queued, S::RetryScheduled, S::CarrierAcked],
            Some(S::Expired),
        );
    }

    #[test]
    fn given_an_acked_message_when_delivered_then_delivered_else_illegal() {
        only_after("delivered", &[S::CarrierAcked], Some(S::Delivered));
    }

    #[test]
    fn given_a_delivered_message_when_displayed_then_displayed_else_illegal() {
        only_after("displayed", &[S::Delivered], Some(S::Displayed));
    }

    #[test]
    fn given_any_accepted_message_when_held_or_released_then_status_unchanged() {
        let accepted: Vec<Status> = ALL.into_iter().filter(|s| *s != S::New).collect();
        only_after("held", &accepted, None);
        only_after("released", &accepted, None);
    }

    #[test]
    fn given_a_settled_message_when_purged_then_status_unchanged_else_illegal() {
        only_after(
            "purged",
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
    fn given_any_status_when_an_unknown_event_then_unknown() {
        for before in ALL {
            assert_eq!(
                check_type(before, "teleported"),
                Err(IllegalTransition::UnknownEvent("teleported".into()))
            );
        }
    }

    #[test]
    fn given_every_known_event_type_then_none_is_unknown() {
        for t in EVENT_TYPES {
            assert!(!matches!(
                check_type(S::Queued, t),
                Err(IllegalTransition::UnknownEvent(_))
            ));
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
        let err = check_type(S::Cancelled, "carrier_acked").unwrap_err();
        assert_eq!(err.to_string(), "carrier_acked after cancelled");
        assert_eq!(
            check_type(S::New, "displayed").unwrap_err().to_string(),
            "displayed before accepted"
        );
        assert_eq!(
            IllegalTransition::AcceptedAgain.to_string(),
            "accepted after the message was already accepted"
        );
        assert_eq!(
            IllegalTransition::UnknownEvent("x".into()).to_string(),
            "unknown event type 'x'"
        );
    }
}
