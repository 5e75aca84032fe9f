//! Pushes from the server and their per-route subscriptions.
//!
//! Each subscription ([`Client::on`](crate::Client::on), [`Client::on_any`](crate::Client::on_any))
//! is a bounded queue of `push_capacity` pushes. The connection task never waits for a
//! subscriber: when a subscriber's queue is full the push is **dropped for that subscriber**,
//! counted in [`PushStream::dropped`] and reported as
//! [`Event::PushDropped`](crate::Event::PushDropped). Memory therefore stays bounded and a slow
//! consumer cannot stall heartbeats or responses. Pushes for which nobody subscribed are
//! discarded (logged at `trace`).
//!
//! # Cost
//! Receiving is cheap per push: a [`Push`] is a few reference counts (the route is an
//! `Arc<str>` shared by every push of that route, the body a slice of the read buffer), the
//! pushes of one socket read reach each subscriber with one lock and at most one wake-up, and
//! [`PushStream::recv_many`] takes a burst in one call.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde_json::Value;
use shaddock_protocol::json;
use shaddock_protocol::protobuf::{Protos, decode_message};

use crate::Error;

/// One push (server → client message) as received. Cloning it is cheap (reference counts).
#[derive(Debug, Clone)]
pub struct Push {
    /// The route, expanded from its dictionary code when it came compressed. Shared by the
    /// pushes of one connection with the same route (compare with `&*push.route == "onChat"`
    /// or `push.route.as_ref()`).
    pub route: Arc<str>,
    /// The dictionary code when the route came compressed on the wire, else `None`.
    pub code: Option<u16>,
    /// The raw body.
    pub body: Bytes,
    protos: Option<Arc<Protos>>,
}

impl Push {
    pub(crate) fn new(
        route: Arc<str>,
        code: Option<u16>,
        body: Bytes,
        protos: Option<Arc<Protos>>,
    ) -> Self {
        Self {
            route,
            code,
            body,
            protos,
        }
    }

    /// Whether the server's protobuf schema names this route (the body is pomelo-protobuf).
    pub fn is_protobuf(&self) -> bool {
        self.protos
            .as_ref()
            .is_some_and(|p| p.has_server_route(&self.route))
    }

    /// The body as JSON: decoded with the server's pomelo-protobuf schema when it names the
    /// route, else parsed as JSON text.
    ///
    /// # Errors
    /// [`Error::Protobuf`] or [`Error::Json`] when the body does not decode.
    pub fn value(&self) -> Result<Value, Error> {
        decode_value(self.protos.as_deref(), &self.route, &self.body)
    }

    /// The body as a serde type (through [`Push::value`]).
    ///
    /// # Errors
    /// As [`Push::value`], and [`Error::Json`] when the value does not fit `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, Error> {
        from_value(&self.route, self.value()?)
    }

    /// The body as a prost message (standard protobuf decoding of the raw bytes).
    ///
    /// # Errors
    /// [`Error::Protobuf`] when the bytes are not a valid `M`.
    pub fn decode_prost<M: prost::Message + Default>(&self) -> Result<M, Error> {
        Ok(decode_message(&self.body)?)
    }
}

/// Decode a server body for `route`: protobuf when the server schema names it, else JSON.
pub(crate) fn decode_value(
    protos: Option<&Protos>,
    route: &str,
    body: &[u8],
) -> Result<Value, Error> {
    match protos {
        Some(p) if p.has_server_route(route) => Ok(p.server().decode(route, body)?),
        _ => json::from_slice(body).map_err(|e| Error::Json {
            route: route.to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// `serde_json::from_value` with the route in the error.
pub(crate) fn from_value<T: DeserializeOwned>(route: &str, value: Value) -> Result<T, Error> {
    serde_json::from_value(value).map_err(|e| Error::Json {
        route: route.to_owned(),
        reason: e.to_string(),
    })
}

/// A subscription: a stream of [`Push`]es for one route (or all routes). Ends when the
/// connection ends.
///
/// The connection task hands over all the pushes of one socket read in one go (one lock,
/// one wake-up); the stream then gives them out one by one from a local buffer, or several at
/// a time with [`recv_many`](Self::recv_many).
#[derive(Debug)]
pub struct PushStream {
    queue: Arc<Queue>,
    /// Pushes taken from `queue` in one go, not yet handed out. Swapped with the shared
    /// queue's buffer, so neither grows past `push_capacity` after the first rounds.
    local: VecDeque<Push>,
}

impl PushStream {
    /// The next push; `None` once the connection has ended and every queued push was read.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn recv(&mut self) -> Option<Push> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Wait for at least one push, then move up to `limit` queued pushes to the end of `buf`;
    /// returns how many were moved, `0` once the connection has ended and every queued push
    /// was read (or when `limit` is 0). Cheaper than [`recv`](Self::recv) per push when
    /// pushes come in bursts.
    ///
    /// # Cancel safety
    /// Cancel safe: when the future is dropped before it completes, nothing was taken.
    ///
    /// Like [`recv`](Self::recv), it uses one unit of the tokio task's cooperative budget.
    pub async fn recv_many(&mut self, buf: &mut Vec<Push>, limit: usize) -> usize {
        if limit == 0 {
            return 0;
        }
        std::future::poll_fn(|cx| self.poll_recv_many(cx, buf, limit)).await
    }

    /// Poll for the next push (the [`recv`](Self::recv) of manual futures and streams).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Push>> {
        // Like tokio's channels: a task receiving in a loop yields now and then.
        let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        if self.local.is_empty() {
            match self.refill(cx) {
                Poll::Ready(true) => {}
                Poll::Ready(false) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
        coop.made_progress();
        let push = self.local.pop_front();
        if push.is_some() {
            self.queue.len.fetch_sub(1, Ordering::AcqRel);
        }
        Poll::Ready(push)
    }

    fn poll_recv_many(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut Vec<Push>,
        limit: usize,
    ) -> Poll<usize> {
        let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        if self.local.is_empty() {
            match self.refill(cx) {
                Poll::Ready(true) => {}
                Poll::Ready(false) => return Poll::Ready(0),
                Poll::Pending => return Poll::Pending,
            }
        }
        coop.made_progress();
        let n = limit.min(self.local.len());
        buf.extend(self.local.drain(..n));
        self.queue.len.fetch_sub(n, Ordering::AcqRel);
        Poll::Ready(n)
    }

    /// Take the shared queue's pushes into `local` (which is empty). `Ready(true)`: took
    /// some; `Ready(false)`: the connection ended and nothing is left; `Pending`: waker set.
    fn refill(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        let mut state = self.queue.lock();
        if !state.pushes.is_empty() {
            std::mem::swap(&mut state.pushes, &mut self.local);
            return Poll::Ready(true);
        }
        if state.closed {
            return Poll::Ready(false);
        }
        match &mut state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// How many pushes were dropped for this subscriber because its queue was full.
    pub fn dropped(&self) -> u64 {
        self.queue.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for PushStream {
    fn drop(&mut self) {
        let mut state = self.queue.lock();
        state.receiver_gone = true;
        // Free the queued pushes (and the read buffers they share) now.
        state.pushes = VecDeque::new();
    }
}

impl futures_util::Stream for PushStream {
    type Item = Push;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Push>> {
        self.poll_recv(cx)
    }
}

/// One subscriber's bounded queue, shared by its [`PushStream`] and the connection task.
#[derive(Debug)]
struct Queue {
    state: Mutex<QueueState>,
    /// Pushes queued or held by the stream and not yet handed out; at most `capacity`. Only
    /// the connection task adds (under the lock); the stream subtracts as it hands pushes out.
    len: AtomicUsize,
    capacity: usize,
    dropped: AtomicU64,
}

#[derive(Debug, Default)]
struct QueueState {
    pushes: VecDeque<Push>,
    /// The waiting stream's waker.
    waker: Option<Waker>,
    /// The connection ended: no more pushes will come.
    closed: bool,
    /// The stream was dropped: the connection task forgets this queue.
    receiver_gone: bool,
}

impl Queue {
    fn new(capacity: usize, closed: bool) -> Self {
        Self {
            state: Mutex::new(QueueState {
                closed,
                ..QueueState::default()
            }),
            len: AtomicUsize::new(0),
            capacity,
            dropped: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // Nothing panics while holding this lock; a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Debug)]
struct Subscriber {
    /// `None`: every route.
    route: Option<Arc<str>>,
    queue: Arc<Queue>,
}

impl Subscriber {
    fn wants(&self, push: &Push) -> bool {
        self.route
            .as_ref()
            .is_none_or(|r| Arc::ptr_eq(r, &push.route) || **r == *push.route)
    }

    /// Queue the pushes it wants (cloned, or moved out of `pushes` when `take`), as many as
    /// fit: one lock and at most one wake-up. Pushes that do not fit are marked in `dropped`;
    /// when `take`, `on_dropped` is called for every marked push (by this subscriber or an
    /// earlier one), in order. Returns `false` when the stream is gone.
    fn offer(
        &self,
        pushes: &mut Vec<Push>,
        take: bool,
        out: &mut Delivery,
        dropped: &mut [bool],
        on_dropped: &mut dyn FnMut(&Push),
    ) -> bool {
        let mut state = self.queue.lock();
        let alive = !state.receiver_gone;
        let mut room = if alive {
            self.queue
                .capacity
                .saturating_sub(self.queue.len.load(Ordering::Acquire))
        } else {
            0
        };
        let before = state.pushes.len();
        let mut lost = 0;
        if take {
            for (push, dropped) in pushes.drain(..).zip(dropped.iter_mut()) {
                let mut keep = false;
                if alive && self.wants(&push) {
                    if room > 0 {
                        room -= 1;
                        keep = true;
                    } else {
                        *dropped = true;
                        lost += 1;
                    }
                }
                if *dropped {
                    on_dropped(&push);
                }
                if keep {
                    state.pushes.push_back(push);
                }
            }
        } else if alive {
            for (push, dropped) in pushes.iter().zip(dropped.iter_mut()) {
                if self.wants(push) {
                    if room > 0 {
                        room -= 1;
                        state.pushes.push_back(push.clone());
                    } else {
                        *dropped = true;
                        lost += 1;
                    }
                }
            }
        }
        if lost > 0 {
            self.queue.dropped.fetch_add(lost, Ordering::Relaxed);
            out.dropped += lost as usize;
        }
        let queued = state.pushes.len() - before;
        if queued > 0 {
            self.queue.len.fetch_add(queued, Ordering::AcqRel);
            out.delivered += queued;
            if let Some(waker) = state.waker.take() {
                drop(state);
                waker.wake();
            }
        }
        alive
    }
}

/// What happened when delivering a batch of pushes.
#[derive(Debug, Default)]
pub(crate) struct Delivery {
    /// (Push, subscriber) pairs queued.
    pub(crate) delivered: usize,
    /// (Push, subscriber) pairs dropped because the subscriber's queue was full.
    pub(crate) dropped: usize,
}

/// The subscriptions of one connection, shared by the handles and the connection task.
#[derive(Debug)]
pub(crate) struct Subscribers {
    inner: Mutex<SubscribersInner>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct SubscribersInner {
    subs: Vec<Subscriber>,
    /// Per push of the batch being delivered: dropped for at least one subscriber.
    dropped: Vec<bool>,
    /// Set when the connection has ended: new subscriptions end at once.
    closed: bool,
}

impl Subscribers {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(SubscribersInner::default()),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SubscribersInner> {
        // A panic while holding this lock cannot leave the Vec inconsistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn subscribe(&self, route: Option<&str>) -> PushStream {
        let mut inner = self.lock();
        let queue = Arc::new(Queue::new(self.capacity, inner.closed));
        if !inner.closed {
            inner.subs.push(Subscriber {
                route: route.map(Arc::from),
                queue: queue.clone(),
            });
        }
        PushStream {
            queue,
            local: VecDeque::new(),
        }
    }

    /// Hand the pushes of `batch` (in order) to every subscriber that wants them, without
    /// waiting: one lock and at most one wake-up per subscriber. Empties `batch`. Calls
    /// `on_dropped` once for each push that some subscriber had no room for, and forgets
    /// dropped streams.
    pub(crate) fn deliver(
        &self,
        batch: &mut Vec<Push>,
        mut on_dropped: impl FnMut(&Push),
    ) -> Delivery {
        let mut out = Delivery::default();
        if batch.is_empty() {
            return out;
        }
        let mut guard = self.lock();
        let inner = &mut *guard;
        inner.dropped.clear();
        inner.dropped.resize(batch.len(), false);
        let mut gone = false;
        // Every subscriber but the last gets clones; the last takes the pushes themselves
        // (and reports the drops).
        let last = inner.subs.len().saturating_sub(1);
        for (i, sub) in inner.subs.iter().enumerate() {
            gone |= !sub.offer(
                batch,
                i == last,
                &mut out,
                &mut inner.dropped,
                &mut on_dropped,
            );
        }
        batch.clear();
        if gone {
            inner.subs.retain(|sub| !sub.queue.lock().receiver_gone);
        }
        out
    }

    /// The connection ended: end every stream (after its queued pushes).
    pub(crate) fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        for sub in inner.subs.drain(..) {
            let mut state = sub.queue.lock();
            state.closed = true;
            let waker = state.waker.take();
            drop(state);
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    use super::*;

    fn push(route: &str, n: u8) -> Push {
        Push::new(route.into(), None, Bytes::from(vec![n]), None)
    }

    /// Deliver one push; the routes of the pushes reported dropped.
    fn deliver_one(subs: &Subscribers, p: Push) -> (Delivery, Vec<String>) {
        let mut reported = Vec::new();
        let d = subs.deliver(&mut vec![p], |p| reported.push(p.route.to_string()));
        (d, reported)
    }

    #[tokio::test]
    async fn slow_subscriber_loses_pushes_not_memory() {
        let subs = Subscribers::new(2);
        let mut chat = subs.subscribe(Some("onChat"));
        let mut all = subs.subscribe(None);
        for n in 0..5 {
            deliver_one(&subs, push("onChat", n));
        }
        let (d, reported) = deliver_one(&subs, push("onAdd", 9));
        assert_eq!((d.delivered, d.dropped), (0, 1));
        assert_eq!(reported, ["onAdd"]);
        assert_eq!(chat.dropped(), 3);
        assert_eq!(all.dropped(), 4);
        let first = chat.recv().await.unwrap();
        assert_eq!((&*first.route, &first.body[..]), ("onChat", &[0][..]));
        // The push taken out of the queue frees its place; the one still held does not.
        let (d, _) = deliver_one(&subs, push("onChat", 7));
        assert_eq!((d.delivered, d.dropped), (1, 1));
        subs.close();
        assert_eq!(chat.recv().await.unwrap().body[..], [1]);
        assert_eq!(chat.recv().await.unwrap().body[..], [7]);
        assert!(chat.recv().await.is_none());
        assert!(all.recv().await.is_some());
        assert!(all.recv().await.is_some());
        assert!(all.recv().await.is_none());
        let mut late = subs.subscribe(None);
        assert!(late.recv().await.is_none());
    }

    #[test]
    fn a_batch_reaches_every_subscriber_in_order_and_drops_are_reported_once() {
        let subs = Subscribers::new(3);
        let mut a = subs.subscribe(Some("onA"));
        let mut any = subs.subscribe(None);
        let mut b = subs.subscribe(Some("onB"));
        let mut batch: Vec<Push> = [("onA", 0), ("onB", 1), ("onA", 2), ("onA", 3), ("onB", 4)]
            .into_iter()
            .map(|(r, n)| push(r, n))
            .collect();
        let mut reported = Vec::new();
        let d = subs.deliver(&mut batch, |p| reported.push(p.body[0]));
        assert!(batch.is_empty());
        // onA: 3 fit; any: 3 of 5 fit; onB: 2 fit.
        assert_eq!((d.delivered, d.dropped), (8, 2));
        assert_eq!(reported, [3, 4], "each dropped push once, in order");
        let bodies = |s: &mut PushStream| {
            let mut got = Vec::new();
            let waker = Waker::noop();
            while let Poll::Ready(Some(p)) = s.poll_recv(&mut Context::from_waker(waker)) {
                got.push(p.body[0]);
            }
            got
        };
        assert_eq!(bodies(&mut a), [0, 2, 3]);
        assert_eq!(bodies(&mut any), [0, 1, 2]);
        assert_eq!(bodies(&mut b), [1, 4]);
        assert_eq!((a.dropped(), any.dropped(), b.dropped()), (0, 2, 0));
    }

    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn one_wake_up_per_batch_and_recv_many_takes_the_burst() {
        let subs = Subscribers::new(64);
        let mut chat = subs.subscribe(Some("onChat"));
        let counter = Arc::new(CountingWaker::default());
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let mut got = Vec::new();
        assert!(chat.poll_recv_many(&mut cx, &mut got, 100).is_pending());
        let mut batch: Vec<Push> = (0..10).map(|n| push("onChat", n)).collect();
        subs.deliver(&mut batch, |_| panic!("nothing is dropped"));
        assert_eq!(counter.0.load(Ordering::Relaxed), 1);
        assert_eq!(chat.poll_recv_many(&mut cx, &mut got, 4), Poll::Ready(4));
        assert_eq!(chat.poll_recv_many(&mut cx, &mut got, 100), Poll::Ready(6));
        let bodies: Vec<u8> = got.iter().map(|p| p.body[0]).collect();
        assert_eq!(bodies, (0..10).collect::<Vec<u8>>());
        assert_eq!(chat.queue.len.load(Ordering::Relaxed), 0);
        subs.close();
        assert_eq!(counter.0.load(Ordering::Relaxed), 1, "not waiting: no wake");
        assert_eq!(chat.poll_recv_many(&mut cx, &mut got, 100), Poll::Ready(0));
    }

    #[test]
    fn dropped_streams_are_forgotten() {
        let subs = Subscribers::new(1);
        drop(subs.subscribe(None));
        let keep = subs.subscribe(Some("y"));
        let (d, reported) = deliver_one(&subs, push("x", 0));
        assert_eq!(d.delivered + d.dropped, 0);
        assert!(reported.is_empty());
        assert_eq!(subs.lock().subs.len(), 1);
        drop(keep);
        deliver_one(&subs, push("y", 0));
        assert!(subs.lock().subs.is_empty());
    }

    #[test]
    fn bodies_decode_as_json_or_fail_with_the_route() {
        let p = Push::new(
            "onX".into(),
            Some(3),
            Bytes::from_static(b"{\"a\":1}"),
            None,
        );
        assert_eq!(p.value().unwrap()["a"], 1);
        let bad = Push::new("onX".into(), None, Bytes::from_static(b"{"), None);
        let err = bad.value().unwrap_err();
        assert!(err.to_string().contains("onX"), "{err}");
    }
}
