//! # sealpost-eventstore
//!
//! The event store of Sealpost, on NATS JetStream, which is the source of truth.
//!
//! **Owns:**
//! - [`JetStreamEventStore`]: a cqrs-es `EventStore`. Subjects are
//!   `sealpost.evt.<tenant>.<message_id>.<event_type>`; a load is one batch direct get over the
//!   aggregate's wildcard; an append is guarded by `Nats-Expected-Last-Subject-Sequence` over that
//!   wildcard, deduplicated by `Nats-Msg-Id = <message_id>:<aggregate sequence>`, and the events of
//!   one command form one atomic batch (all stored or none).
//! - [`CommandExecutor`]: load → decide → append, with bounded reload-and-retry on conflicts, and
//!   the committed events reported back (none for a duplicate command).
//! - [`StoredEvent`]: how an aggregate's events become stored messages, for the `Message`
//!   aggregate and for the key directory's `RecipientKeys` (`sealpost-keys-domain`), which the
//!   same store and executor persist on a prefix and stream of their own.
//! - [`names`]: every name the processes share on NATS: streams, durable consumers, roles, and
//!   the subject layouts with their typed build and parse.
//! - [`provision`]: streams and consumers from `nats/` (found by `build.rs`, no hand-kept list),
//!   the server version check, and the read-back of stream flags that refuses a server which
//!   silently dropped one.
//! - [`mirror`]: disaster recovery: mirrors of the sources of truth on a standby server in
//!   another JetStream domain, their lag, and their promotion.
//!
//! **Must not:** decide anything about messages or keys (that is `sealpost-domain` and
//! `sealpost-keys-domain`), hold state a crash could lose, or log event bodies (they carry
//! recipients).

pub mod codec;
pub mod error;
pub mod executor;
pub mod mirror;
pub mod names;
pub mod provision;
pub mod store;

pub use codec::StoredEvent;
pub use error::{ExecuteError, StoreError, StoreErrorKind};
pub use executor::{CommandExecutor, Executed};
pub use store::{JetStreamEventStore, Loaded, RawEvent, StoreConfig};

/// Waits until the NATS server has processed everything `client` sent so far, such as the
/// subscriptions of a service that is about to say it is ready. (async-nats' `flush` only
/// empties the socket buffer: another connection's request can still reach the server before
/// the subscription does.) A message to a fresh subject of this client's own comes back only
/// after the server handled what came before it on the connection.
pub async fn server_round_trip(client: &async_nats::Client) -> Result<(), async_nats::Error> {
    use futures::StreamExt as _;
    let subject = client.new_inbox();
    let mut echo = client.subscribe(subject.clone()).await?;
    client.publish(subject, bytes::Bytes::new()).await?;
    client.flush().await?;
    match tokio::time::timeout(std::time::Duration::from_secs(30), echo.next()).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err("the connection closed before the server answered".into()),
        Err(_) => Err("the server did not answer within 30 s".into()),
    }
}
