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
use std::task::Context;

use bytes::Bytes;
use futures_util::task::AtomicWaker;

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
    /// A wake-up the connection task has not yet seen (see [`Outbox::poll_woken`]): kept
    /// while nobody waits, as a `Notify` keeps its permit.
    woken: bool,
    /// Messages of this connection being handled (at most `max_in_flight`, see
    /// [`Outbox::try_start_request`]).
    in_flight: u32,
    /// The connection task waits for `in_flight` to fall: the next finished request wakes it.
    slot_wanted: bool,
    /// A kick asked for by anyone but the connection task, read by that task.
    kick: Option<Box<str>>,
}

/// The queue (see the [module docs](self)); also the connection task's one wake-up source
/// besides its socket, timer and shutdown: pushes, kicks and finished requests wake it here
/// (one waker, no `Notify`: the task keeps no wait future per source across its loop).
pub(crate) struct Outbox {
    state: Mutex<State>,
    waker: AtomicWaker,
    capacity: usize,
}

impl Outbox {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::default(),
            waker: AtomicWaker::new(),
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
        state.woken |= wake;
        drop(state);
        if wake {
            self.waker.wake();
        }
        Ok(())
    }

    /// Messages queued.
    pub(crate) fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// `(queued, urgent, handling)`: whether anything is queued, whether it must go out
    /// now, and whether requests of this connection are being handled.
    pub(crate) fn peek(&self) -> (bool, bool, bool) {
        let state = self.lock();
        (!state.items.is_empty(), state.urgent, state.in_flight > 0)
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

    /// Records a kick with `reason` and wakes the connection task; `false` if one is
    /// already pending.
    pub(crate) fn kick(&self, reason: String) -> bool {
        let mut state = self.lock();
        if state.kick.is_some() {
            return false;
        }
        state.kick = Some(reason.into_boxed_str());
        state.woken = true;
        drop(state);
        self.waker.wake();
        true
    }

    /// The reason of the pending kick, if any (it stays pending).
    pub(crate) fn pending_kick(&self) -> Option<Box<str>> {
        self.lock().kick.clone()
    }

    /// Whether a wake-up came since the last call that returned `true`; registers `cx` to be
    /// woken by the next one either way (so checking after this call misses nothing). May
    /// report wake-ups that find nothing to do.
    pub(crate) fn poll_woken(&self, cx: &Context<'_>) -> bool {
        self.waker.register(cx.waker());
        std::mem::take(&mut self.lock().woken)
    }

    /// Counts a message of this connection as being handled if fewer than `max` are;
    /// otherwise the next [`Outbox::finish_request`] wakes the connection task.
    pub(crate) fn try_start_request(&self, max: usize) -> bool {
        let mut state = self.lock();
        if (state.in_flight as usize) < max {
            state.in_flight += 1;
            true
        } else {
            state.slot_wanted = true;
            false
        }
    }

    /// A message counted by [`Outbox::try_start_request`] has been handled: wakes the
    /// connection task if it waits for a slot, or if pushes are queued (held back by
    /// `push_linger` for this request, and no response came to flush them).
    pub(crate) fn finish_request(&self) {
        let mut state = self.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
        let wake = std::mem::take(&mut state.slot_wanted) || !state.items.is_empty();
        state.woken |= wake;
        drop(state);
        if wake {
            self.waker.wake();
        }
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

    fn b(n: u8) -> Bytes {
        Bytes::from(vec![n; 10])
    }

    /// `poll_woken` with a waker that does nothing: whether a wake-up is stored.
    fn woken(q: &Outbox) -> bool {
        q.poll_woken(&Context::from_waker(futures_util::task::noop_waker_ref()))
    }

    #[test]
    fn bounded_fifo_and_closed() {
        let q = Outbox::new(2);
        q.push(b(1), false).unwrap();
        q.push(b(2), true).unwrap();
        assert_eq!(q.push(b(3), false), Err(PushError::Full));
        assert_eq!(q.peek(), (true, true, false));
        let mut batch = Vec::new();
        assert!(!q.take(&mut batch, usize::MAX, usize::MAX));
        assert_eq!(batch, vec![b(1), b(2)]);
        assert_eq!(q.peek(), (false, false, false));
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
    fn wakes_on_empty_to_non_empty_on_urgent_on_kick_and_on_a_freed_slot() {
        let q = Outbox::new(10);
        assert!(!woken(&q));
        // A wake-up sent while nobody waits is kept.
        q.push(b(1), false).unwrap();
        assert!(woken(&q), "first push wakes");
        // A second non-urgent push into a non-empty queue does not wake ...
        q.push(b(2), false).unwrap();
        assert!(!woken(&q));
        // ... an urgent one does, once.
        q.push(b(3), true).unwrap();
        q.push(b(4), true).unwrap();
        assert!(woken(&q), "urgent push wakes");
        assert!(!woken(&q));
        let mut batch = Vec::new();
        q.take(&mut batch, usize::MAX, usize::MAX);
        assert_eq!(batch.len(), 4);
        // Empty again: the next push wakes.
        q.push(b(5), false).unwrap();
        assert!(woken(&q), "push after draining wakes");
        // A finished request wakes while something is queued ...
        assert!(q.try_start_request(1));
        q.finish_request();
        assert!(woken(&q));
        q.take(&mut batch, usize::MAX, usize::MAX);
        assert!(q.try_start_request(1));
        q.finish_request();
        assert!(!woken(&q), "nothing queued, nobody waiting for a slot");
        // ... or when the task waits for a slot.
        assert!(q.try_start_request(1));
        assert_eq!(q.peek(), (false, false, true));
        assert!(!q.try_start_request(1), "one slot");
        assert!(!woken(&q));
        q.finish_request();
        assert!(woken(&q), "a freed slot wakes the waiting task");
        assert_eq!(q.peek(), (false, false, false));
        assert!(q.try_start_request(1));
        // A kick wakes, once; a second one is refused while the first is pending.
        assert!(q.kick("bye".to_owned()));
        assert!(woken(&q));
        assert!(!woken(&q));
        assert!(!q.kick("again".to_owned()));
        assert!(!woken(&q));
        assert_eq!(q.pending_kick().as_deref(), Some("bye"));
    }

    /// A wake-up after the task registered reaches its waker, not only the flag.
    #[test]
    fn a_push_after_registering_wakes_the_registered_waker() {
        struct Count(std::sync::atomic::AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: std::sync::Arc<Self>) {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let count = std::sync::Arc::new(Count(0.into()));
        let waker = std::task::Waker::from(count.clone());
        let q = Outbox::new(4);
        assert!(!q.poll_woken(&Context::from_waker(&waker)));
        q.push(b(1), false).unwrap();
        assert_eq!(count.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(woken(&q));
    }
}
