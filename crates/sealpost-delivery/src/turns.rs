//! Per-key FIFO turns: a turn is taken synchronously, in the order events arrive, and its holder
//! waits until every earlier turn of the same key has ended. The receipts consumer takes one per
//! receipt, keyed by message id, so that a message's receipts are applied in stream order while
//! different messages' receipts run concurrently.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// The newest turn of each key that has one: its id and the channel that closes when it ends.
#[derive(Debug, Default)]
pub(crate) struct Turns {
    newest: Mutex<HashMap<String, (u64, oneshot::Receiver<()>)>>,
    ids: AtomicU64,
}

impl Turns {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, (u64, oneshot::Receiver<()>)>> {
        self.newest.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place in `key`'s queue, after every turn of `key` taken before and not yet ended.
    pub(crate) fn take(self: &Arc<Self>, key: &str) -> Turn {
        let (done, ended) = oneshot::channel();
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let prev = self.lock().insert(key.to_owned(), (id, ended));
        Turn {
            turns: self.clone(),
            key: key.to_owned(),
            id,
            prev: prev.map(|(_, rx)| rx),
            _done: done,
        }
    }

    /// How many keys have a turn that has not ended.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// A place in a key's queue; dropping it ends the turn and lets the next one in.
#[derive(Debug)]
pub(crate) struct Turn {
    turns: Arc<Turns>,
    key: String,
    id: u64,
    /// Closes when the turn before this one ends.
    prev: Option<oneshot::Receiver<()>>,
    _done: oneshot::Sender<()>,
}

impl Turn {
    /// Waits until every earlier turn of the same key has ended.
    pub(crate) async fn wait(&mut self) {
        if let Some(prev) = self.prev.take() {
            // The sender never sends: the channel closing is the signal.
            let _ = prev.await;
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut newest = self.turns.lock();
        // Nobody queued behind this turn: forget the key.
        if newest.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            newest.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn ready(t: &mut Turn) -> bool {
        tokio::time::timeout(Duration::from_millis(50), t.wait())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn given_no_earlier_turn_when_waiting_then_it_goes_at_once() {
        let turns = Arc::new(Turns::default());
        let mut a = turns.take("m1");
        assert!(ready(&mut a).await);
    }

    #[tokio::test]
    async fn given_an_earlier_turn_of_the_key_when_waiting_then_it_goes_only_after_that_ends() {
        let turns = Arc::new(Turns::default());
        let first = turns.take("m1");
        let mut second = turns.take("m1");
        assert!(
            !ready(&mut second).await,
            "went before the earlier turn ended"
        );
        drop(first);
        assert!(ready(&mut second).await);
    }

    #[tokio::test]
    async fn given_three_turns_when_the_first_ends_then_only_the_second_goes() {
        let turns = Arc::new(Turns::default());
        let first = turns.take("m1");
        let mut second = turns.take("m1");
        let mut third = turns.take("m1");
        drop(first);
        assert!(ready(&mut second).await);
        assert!(
            !ready(&mut third).await,
            "the third went while the second holds its turn"
        );
        drop(second);
        assert!(ready(&mut third).await);
    }

    #[tokio::test]
    async fn given_another_key_busy_when_waiting_then_it_goes_at_once() {
        let turns = Arc::new(Turns::default());
        let _busy = turns.take("m1");
        let mut other = turns.take("m2");
        assert!(ready(&mut other).await);
    }

    #[tokio::test]
    async fn given_turns_ended_when_counting_keys_then_none_is_left() {
        let turns = Arc::new(Turns::default());
        let a = turns.take("m1");
        let b = turns.take("m1");
        let c = turns.take("m2");
        assert_eq!(turns.len(), 2);
        drop(a);
        assert_eq!(turns.len(), 2, "m1 still has a turn queued");
        drop(b);
        drop(c);
        assert_eq!(turns.len(), 0);
    }
}
