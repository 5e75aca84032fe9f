//! The outbound queue of one connection: encoded packages waiting for the connection task.
//!
//! Many producers (handlers, RPC pushes, broadcasts) and one consumer (the connection task).
//! It is bounded in messages, and costs no heap memory while empty: an idle connection holds
//! only the struct itself (a tokio `mpsc` channel allocates its first block of slots up front,
//! about 1 KiB, for every connection).
//!
//! # Wake-ups
//! A producer wakes the consumer only when the queue goes from empty to non-empty, or when it
//! queues an *urgent* message (a response). The consumer takes what is queued when it wakes,
//! or — with a push flush interval — arms a timer on the first wake-up and takes everything
//! when it fires, so that a busy broadcast costs one wake-up and one write per connection per
//! interval instead of one per push. Queue order is kept either way: an urgent message flushes
//! the pushes queued before it.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::Notify;

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The connection task has ended.
    Closed,
    /// The queue holds its capacity of messages.
    Full,
}

#[derive(Default)]
struct State {
    items: VecDeque<Bytes>,
    /// An urgent message is queued (write without waiting for the flush interval).
    urgent: bool,
    closed: bool,
}

/// The queue (see the [module docs](self)).
pub(crate) struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    capacity: usize,
}

impl Outbox {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::default(),
            notify: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    /// The most messages it holds.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `packages`; `urgent` asks for a write without waiting for the flush interval.
    pub(crate) fn push(&self, packages: Bytes, urgent: bool) -> Result<(), PushError> {
        let mut state = self.lock();
        if state.closed {
            return Err(PushError::Closed);
        }
        if state.items.len() >= self.capacity {
            return Err(PushError::Full);
        }
        let wake = state.items.is_empty() || (urgent && !state.urgent);
        state.items.push_back(packages);
        state.urgent |= urgent;
        drop(state);
        if wake {
            self.notify.notify_one();
        }
        Ok(())
    }

    /// Messages queued.
    pub(crate) fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// `(queued, urgent)`: whether anything is queued and whether it must go out now.
    pub(crate) fn peek(&self) -> (bool, bool) {
        let state = self.lock();
        (!state.items.is_empty(), state.urgent)
    }

    /// Moves queued messages to `batch` until it holds `max_bytes` (at least one message) or
    /// `max_items` messages were moved; returns whether messages are left.
    pub(crate) fn take(&self, batch: &mut Vec<Bytes>, max_bytes: usize, max_items: usize) -> bool {
        let mut size: usize = batch.iter().map(Bytes::len).sum();
        let mut state = self.lock();
        let mut moved = 0;
        while moved < max_items && (size < max_bytes || batch.is_empty()) {
            let Some(b) = state.items.pop_front() else {
                break;
            };
            size += b.len();
            batch.push(b);
            moved += 1;
        }
        if state.items.is_empty() {
            state.urgent = false;
            // An idle connection holds no ring (one allocation per burst of pushes).
            state.items = VecDeque::new();
            false
        } else {
            true
        }
    }

    /// Wakes the consumer if anything is queued: a push held back by `push_linger` for a
    /// request that has now been handled without leaving a response to flush it.
    pub(crate) fn wake_if_queued(&self) {
        if !self.lock().items.is_empty() {
            self.notify.notify_one();
        }
    }

    /// Completes on the next wake-up (see the [module docs](self)); may complete spuriously.
    ///
    /// # Cancel safety
    /// Cancel safe: a wake-up that arrives while nobody waits is kept for the next call.
    pub(crate) async fn woken(&self) {
        self.notify.notified().await;
    }

    /// Refuses further messages and drops the queued ones (the connection has ended).
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.items = VecDeque::new();
        state.urgent = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    fn b(n: u8) -> Bytes {
        Bytes::from(vec![n; 10])
    }

    #[test]
    fn bounded_fifo_and_closed() {
        let q = Outbox::new(2);
        q.push(b(1), false).unwrap();
        q.push(b(2), true).unwrap();
        assert_eq!(q.push(b(3), false), Err(PushError::Full));
        assert_eq!(q.peek(), (true, true));
        let mut batch = Vec::new();
        assert!(!q.take(&mut batch, usize::MAX, usize::MAX));
        assert_eq!(batch, vec![b(1), b(2)]);
        assert_eq!(q.peek(), (false, false));
        q.close();
        assert_eq!(q.push(b(4), true), Err(PushError::Closed));
    }

    #[test]
    fn take_stops_at_the_byte_and_item_limits_but_moves_at_least_one() {
        let q = Outbox::new(10);
        for i in 0..5 {
            q.push(b(i), false).unwrap();
        }
        let mut batch = Vec::new();
        assert!(q.take(&mut batch, 1, usize::MAX));
        assert_eq!(batch.len(), 1);
        assert!(q.take(&mut batch, 25, usize::MAX));
        assert_eq!(batch.len(), 3);
        batch.clear();
        assert!(q.take(&mut batch, usize::MAX, 1));
        assert_eq!(batch, vec![b(3)]);
        assert!(!q.take(&mut batch, usize::MAX, usize::MAX));
        assert_eq!(batch, vec![b(3), b(4)]);
    }

    #[test]
    fn wakes_on_empty_to_non_empty_and_on_urgent_only() {
        // `now_or_never` polls once: ready iff a wake-up is stored.
        let q = Outbox::new(10);
        assert!(q.woken().now_or_never().is_none());
        // A wake-up sent while nobody waits is kept.
        q.push(b(1), false).unwrap();
        assert!(q.woken().now_or_never().is_some(), "first push wakes");
        // A second non-urgent push into a non-empty queue does not wake ...
        q.push(b(2), false).unwrap();
        assert!(q.woken().now_or_never().is_none());
        // ... an urgent one does, once.
        q.push(b(3), true).unwrap();
        q.push(b(4), true).unwrap();
        assert!(q.woken().now_or_never().is_some(), "urgent push wakes");
        assert!(q.woken().now_or_never().is_none());
        let mut batch = Vec::new();
        q.take(&mut batch, usize::MAX, usize::MAX);
        assert_eq!(batch.len(), 4);
        // Empty again: the next push wakes.
        q.push(b(5), false).unwrap();
        assert!(
            q.woken().now_or_never().is_some(),
            "push after draining wakes"
        );
        // `wake_if_queued` wakes only while something is queued.
        q.wake_if_queued();
        assert!(q.woken().now_or_never().is_some());
        q.take(&mut batch, usize::MAX, usize::MAX);
        q.wake_if_queued();
        assert!(q.woken().now_or_never().is_none());
    }
}
