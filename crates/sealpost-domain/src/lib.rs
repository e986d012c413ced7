//! # sealpost-domain
//!
//! The `Message` aggregate of Sealpost: what may happen to an end-to-end-encrypted message between
//! acceptance and its end, and nothing else.
//!
//! **Owns:** identifiers and their validation ([`ids`]), commands ([`commands`]) with the digest
//! of a send request, versioned events with their one list of types ([`EventType`]) and their
//! upcasters ([`upcast`]), the retry and expiry policy ([`policy`]), the aggregate ([`Message`]),
//! its statuses with the settled and final sets ([`Status`]), the legal event order ([`order`]),
//! the status row a tenant sees and the fold that builds it ([`StatusRow`]), and its errors
//! ([`MessageError`]). Two small types every crate shares live here too, because they are pure:
//! [`Secret`] (a string that never prints) and [`wire_enum!`] (an enum with one wire name per
//! variant). Adding an event type touches this crate, its schema and the projections' SQL.
//!
//! **Must not:** do IO of any kind. No tokio, NATS, SQL, HTTP, clocks or randomness here: commands
//! carry their instant, and retry jitter is a hash of (message id, attempt), so a replay makes the
//! same decisions. (cqrs-es itself pulls tokio in for its `EventSink` mutex; this crate never uses
//! it.) Payloads are references and digests only: the domain never holds ciphertext or keys, and a
//! [`Recipient`] prints masked.
//!
//! ## Lifecycle
//!
//! `accept` writes one event, `accepted`, which is also the first delivery job: the delivery
//! consumer filters `accepted` and `queued`, and `queued` is written only by a redrive (`enqueue`).
//! One event keeps an accept a single optimistic append instead of an atomic batch, which the
//! server commits serially (about 1 ms each per stream). The worker submits attempt `next_attempt` and records the carrier's answer; receipts then move
//! the message forward. Terminal failures are `failed`, `fallback_triggered`, `expired` and
//! `cancelled`. Legal holds (`held`/`released`) and `purged` are flags beside the status.
//!
//! ## State-transition table
//!
//! Rows are commands, columns the status before the command. An event list is what the command
//! writes; `—` means accepted with no event (a duplicate or late command; not an error); anything
//! else is the error returned. `Q` = queued, `RS` = retry_scheduled, `CA` = carrier_acked,
//! `DLV` = delivered, `DSP` = displayed, `FL` = failed, `FB` = fallback_triggered, `EXP` = expired,
//! `CAN` = cancelled.
//!
//! | command | new | Q / RS | CA | DLV | DSP | FL / EXP | FB | CAN |
//! |---|---|---|---|---|---|---|---|---|
//! | accept | `accepted` | same request: —; any other field: `idempotency_conflict` | ← | ← | ← | ← | ← | ← |
//! | enqueue (redrive) | not_accepted | `queued` | already_submitted | already_submitted | already_submitted | already_final | already_final | already_final |
//! | record carrier result, attempt = next | not_accepted | see below | already_submitted | already_submitted | already_submitted | already_final | already_final | already_final |
//! | record carrier result, attempt < next | not_accepted | — | — | — | — | — | — | — |
//! | record carrier result, attempt > next | not_accepted | attempt_out_of_order | already_submitted | already_submitted | already_submitted | already_final | already_final | already_final |
//! | receipt delivered | not_accepted | not_yet_acked (retry) | `delivered` | — | — | — | — | — |
//! | receipt displayed | not_accepted | not_yet_acked (retry) | `delivered`(implied),`displayed` | `displayed` | — | — | — | — |
//! | receipt with a seen id | not_accepted | — | — | — | — | — | — | — |
//! | expire, before `expires_at` | not_accepted | not_yet_expired | not_yet_expired | not_yet_expired | not_yet_expired | not_yet_expired | not_yet_expired | not_yet_expired |
//! | expire, at/after `expires_at` | not_accepted | ends undelivered (below) | ends undelivered, reason `expired` | — | — | — | — | — |
//! | cancel | not_accepted | `cancelled` | already_submitted | already_submitted | already_submitted | already_final | already_final | — |
//! | trigger fallback (fallback set) | not_accepted | `fallback_triggered` | `fallback_triggered` | already_final | already_final | already_final | — | already_final |
//! | trigger fallback (none set) | not_accepted | no_fallback | no_fallback | no_fallback | no_fallback | no_fallback | no_fallback | no_fallback |
//! | hold (new id) / (held id) | not_accepted | `held` / — | ← | ← | ← | ← | ← | ← |
//! | release (held id) / (other id) | not_accepted | `released` / not_held | ← | ← | ← | ← | ← | ← |
//! | purge | not_accepted | not_settled | not_settled | `purged` | `purged` | `purged` | `purged` | `purged` |
//! | decryption failure (new report) / (seen report) | not_accepted | not_handed_over | `decryption_failed` / — | ← | ← | not_handed_over | `decryption_failed` / — | not_handed_over |
//!
//! Hold on a purged message is `purged`; purge while any hold is active is `legal_hold`; purge of
//! a purged message is —. A decryption failure is a device's report through its capability
//! link: it leaves the status as it is, is `purged` after a purge, and is — once the message has
//! [`aggregate::MAX_DECRYPTION_REPORTS`] distinct reports (reason and key id).
//!
//! **Carrier results** for the current attempt:
//! - acked (including 409 / reused id) → `carrier_acked`;
//! - transient (5xx, timeout) or throttled (429) → `attempt_failed` plus, per [`RetryPolicy`],
//!   either `retry_scheduled` (not before Retry-After) or, when the window or attempts are
//!   exhausted, `fallback_triggered` if the message has a fallback, else `failed`;
//! - permanent (other 4xx) → `attempt_failed`, `failed`;
//! - not RCS-capable (RBM 404) → `attempt_failed`, then `fallback_triggered` or `failed`;
//! - transient or throttled when the next retry would pass `retry_until` and `retry_until` is the
//!   TTL itself (`expires_at`) → `attempt_failed`, `retry_scheduled` with `not_before =
//!   expires_at`: no attempt is due any more, and the expiry ends the message.
//!
//! ## Ending undelivered
//!
//! One rule, whichever of the retry policy and the expiry timer gets there first and after any
//! number of redeliveries (the property tests in `tests.rs` check it over random interleavings):
//!
//! | why it ends | fallback requested | no fallback |
//! |---|---|---|
//! | permanent error | `failed` (`permanent_error`) | `failed` (`permanent_error`) |
//! | not RCS-capable | `fallback_triggered` (`not_capable`) | `failed` (`not_capable`) |
//! | attempts exhausted | `fallback_triggered` (`max_attempts`) | `failed` (`max_attempts`) |
//! | retry window closed before the TTL | `fallback_triggered` (`retry_window_exhausted`) | `failed` (`retry_window_exhausted`) |
//! | the TTL passed (queued, retrying or acked without a receipt) | `fallback_triggered` (`expired`, with the expiry's `revoke`) | `expired` (with `revoke`) |
//!
//! The expiry names the deadline that passed first: a message still waiting for a submission
//! whose retry window closed before its TTL ends as the policy would have ended it
//! (`retry_window_exhausted`), so a job redelivered late cannot turn `failed` into `expired`.

#[macro_use]
pub mod wire;

pub mod aggregate;
pub mod commands;
pub mod error;
pub mod events;
pub mod ids;
pub mod order;
pub mod policy;
pub mod secret;
pub mod status_row;
pub mod upcast;

pub use aggregate::{Message, Status};
pub use commands::{AcceptMessage, CarrierOutcome, MessageCommand, ReceiptKind};
pub use error::MessageError;
pub use events::{EventType, MessageEvent};
pub use ids::{aggregate_id, parse_aggregate_id, MessageId, Recipient, Sha256Hex, TenantId};
pub use policy::{RetryDecision, RetryPolicy};
pub use secret::Secret;
pub use status_row::{RowSource, StatusRow};
pub use wire::UnknownName;

#[cfg(test)]
mod tests;

/// Histories generated from the real aggregate for property tests (feature `testing`).
#[cfg(any(test, feature = "testing"))]
pub mod testing;

#[cfg(test)]
mod props;
