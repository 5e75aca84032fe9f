//! Pushes from the server and their per-route subscriptions.
//!
//! Each subscription ([`Client::on`](crate::Client::on), [`Client::on_any`](crate::Client::on_any))
//! is a bounded queue of `push_capacity` pushes. The connection task never waits for a
//! subscriber: when a subscriber's queue is full the push is **dropped for that subscriber**,
//! counted in [`PushStream::dropped`] and reported as
//! [`Event::PushDropped`](crate::Event::PushDropped). Memory therefore stays bounded and a slow
//! consumer cannot stall heartbeats or responses. Pushes for which nobody subscribed are
//! discarded (logged at `trace`).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde_json::Value;
use shaddock_protocol::json;
use shaddock_protocol::protobuf::{Protos, decode_message};
use tokio::sync::mpsc;

use crate::Error;

/// One push (server → client message) as received.
#[derive(Debug, Clone)]
pub struct Push {
    /// The route, expanded from its dictionary code when it came compressed.
    pub route: String,
    /// The dictionary code when the route came compressed on the wire, else `None`.
    pub code: Option<u16>,
    /// The raw body.
    pub body: Bytes,
    protos: Option<Arc<Protos>>,
}

impl Push {
    pub(crate) fn new(
        route: String,
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
#[derive(Debug)]
pub struct PushStream {
    rx: mpsc::Receiver<Push>,
    dropped: Arc<AtomicU64>,
}

impl PushStream {
    /// The next push; `None` once the connection has ended and every queued push was read.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn recv(&mut self) -> Option<Push> {
        self.rx.recv().await
    }

    /// How many pushes were dropped for this subscriber because its queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl futures_util::Stream for PushStream {
    type Item = Push;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Push>> {
        self.rx.poll_recv(cx)
    }
}

#[derive(Debug)]
struct Subscriber {
    /// `None`: every route.
    route: Option<String>,
    tx: mpsc::Sender<Push>,
    dropped: Arc<AtomicU64>,
}

/// What happened when delivering one push.
#[derive(Debug, Default)]
pub(crate) struct Delivery {
    /// Subscribers that received it.
    pub(crate) delivered: usize,
    /// Subscribers whose queue was full.
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

    pub(crate) fn subscribe(&self, route: Option<String>) -> PushStream {
        let (tx, rx) = mpsc::channel(self.capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        let mut inner = self.lock();
        if !inner.closed {
            inner.subs.push(Subscriber {
                route,
                tx,
                dropped: dropped.clone(),
            });
        }
        PushStream { rx, dropped }
    }

    /// Hand `push` to every matching subscriber without waiting; forget closed ones.
    pub(crate) fn deliver(&self, push: &Push) -> Delivery {
        let mut out = Delivery::default();
        let mut inner = self.lock();
        inner.subs.retain(|sub| {
            if sub.tx.is_closed() {
                return false;
            }
            if sub.route.as_deref().is_some_and(|r| r != push.route) {
                return true;
            }
            match sub.tx.try_send(push.clone()) {
                Ok(()) => out.delivered += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    sub.dropped.fetch_add(1, Ordering::Relaxed);
                    out.dropped += 1;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
            }
            true
        });
        out
    }

    /// The connection ended: end every stream (after its queued pushes).
    pub(crate) fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.subs.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(route: &str) -> Push {
        Push::new(route.to_owned(), None, Bytes::from_static(b"{}"), None)
    }

    #[tokio::test]
    async fn slow_subscriber_loses_pushes_not_memory() {
        let subs = Subscribers::new(2);
        let mut chat = subs.subscribe(Some("onChat".to_owned()));
        let mut all = subs.subscribe(None);
        for _ in 0..5 {
            subs.deliver(&push("onChat"));
        }
        let d = subs.deliver(&push("onAdd"));
        assert_eq!((d.delivered, d.dropped), (0, 1));
        assert_eq!(chat.dropped(), 3);
        assert_eq!(all.dropped(), 4);
        assert_eq!(chat.recv().await.unwrap().route, "onChat");
        subs.close();
        assert!(chat.recv().await.is_some());
        assert!(chat.recv().await.is_none());
        assert!(all.recv().await.is_some());
        assert!(all.recv().await.is_some());
        assert!(all.recv().await.is_none());
        let mut late = subs.subscribe(None);
        assert!(late.recv().await.is_none());
    }

    #[test]
    fn dropped_streams_are_forgotten() {
        let subs = Subscribers::new(1);
        drop(subs.subscribe(None));
        let d = subs.deliver(&push("x"));
        assert_eq!(d.delivered + d.dropped, 0);
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
