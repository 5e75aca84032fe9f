//! The in-memory cluster of the single-machine mode: the same rules as NATS, nothing to install.
//!
//! An [`EmbeddedCluster`] holds the three buckets (the registry's records expire after 5 TTLs
//! without refresh, as the NATS bucket's backstop does) and the push subjects; each [`Embedded`] made by [`EmbeddedCluster::connect`]
//! is one handle on it, as a NATS connection would be: its refreshers stop when it is dropped,
//! and then its records expire. A subscriber that does not keep up loses messages (counted as
//! slow-consumer events), as with NATS.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use super::core::{
    BACKSTOP_TTLS, BEAT_SUBJECT, Bucket, Cas, Core, KvEntry, Store, Watch, WatchItem, impl_backend,
};
use super::{BoxFuture, ClusterError, ClusterStats, DEFAULT_TTL, PUSH_SUBSCRIPTION_CAPACITY};

/// The default max payload of the embedded pub/sub, NATS's default (1 MiB).
pub const DEFAULT_MAX_PAYLOAD: usize = 1 << 20;

struct MemEntry {
    value: Bytes,
    revision: u64,
    removed: bool,
    written: Instant,
}

#[derive(Default)]
struct MemBucket {
    entries: HashMap<String, MemEntry>,
    seq: u64,
}

struct State {
    buckets: HashMap<Bucket, MemBucket>,
    subjects: HashMap<String, Vec<mpsc::Sender<Bytes>>>,
}

struct Shared {
    state: Mutex<State>,
    changes: HashMap<Bucket, broadcast::Sender<KvEntry>>,
    ttl: Duration,
    max_payload: usize,
    slow_consumers: AtomicU64,
}

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, State> {
    s.state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    /// Writes (or removes) `key` in `b` if `check` accepts its current entry; sends the change
    /// to the watchers.
    fn write(
        &self,
        b: Bucket,
        key: &str,
        value: Option<Bytes>,
        check: impl FnOnce(Option<&MemEntry>) -> bool,
    ) -> Cas<u64> {
        let mut st = lock(self);
        let bucket = st.buckets.entry(b).or_default();
        if !check(bucket.entries.get(key)) {
            return Cas::Conflict;
        }
        bucket.seq += 1;
        let revision = bucket.seq;
        let removed = value.is_none();
        let value = value.unwrap_or_default();
        bucket.entries.insert(
            key.to_owned(),
            MemEntry {
                value: value.clone(),
                revision,
                removed,
                written: Instant::now(),
            },
        );
        // Sent under the lock, so that watchers see changes in revision order.
        let _ = self.changes[&b].send(KvEntry {
            key: key.to_owned(),
            value,
            revision,
            removed,
        });
        Cas::Done(revision)
    }

    /// Removes the registry entries older than the backstop (`BACKSTOP_TTLS` × TTL; each as a
    /// removal the watchers see), as the NATS bucket's `max_age` does.
    fn expire(&self) {
        let now = Instant::now();
        let max_age = self.ttl * BACKSTOP_TTLS;
        let expired: Vec<(String, u64)> = {
            let st = lock(self);
            st.buckets
                .get(&Bucket::Servers)
                .map(|b| {
                    b.entries
                        .iter()
                        .filter(|(_, e)| !e.removed && now.duration_since(e.written) >= max_age)
                        .map(|(k, e)| (k.clone(), e.revision))
                        .collect()
                })
                .unwrap_or_default()
        };
        for (key, rev) in expired {
            // Only if nobody refreshed it meanwhile.
            let _ = self.write(Bucket::Servers, &key, None, |e| {
                e.is_some_and(|e| e.revision == rev)
            });
        }
    }
}

/// The in-memory cluster; see the [module docs](self).
#[derive(Clone)]
pub struct EmbeddedCluster {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for EmbeddedCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedCluster")
            .field("ttl", &self.shared.ttl)
            .field("max_payload", &self.shared.max_payload)
            .finish_non_exhaustive()
    }
}

impl Default for EmbeddedCluster {
    fn default() -> Self {
        Self::new(DEFAULT_TTL, DEFAULT_MAX_PAYLOAD)
    }
}

impl EmbeddedCluster {
    /// A cluster whose records expire `ttl` after their last refresh, and whose pushes are
    /// split under `max_payload` bytes. Starts its sweeper on the current tokio runtime (it
    /// ends when the last handle is gone).
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn new(ttl: Duration, max_payload: usize) -> Self {
        let changes = [Bucket::Servers, Bucket::Uids, Bucket::Placements]
            .into_iter()
            .map(|b| (b, broadcast::channel(4096).0))
            .collect();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                buckets: HashMap::new(),
                subjects: HashMap::new(),
            }),
            changes,
            ttl,
            max_payload,
            slow_consumers: AtomicU64::new(0),
        });
        tokio::spawn(sweep(Arc::downgrade(&shared), ttl));
        Self { shared }
    }

    /// A new handle on this cluster (as one server's connection to NATS would be).
    pub async fn connect(&self, name: &str) -> Embedded {
        let store = MemStore {
            shared: self.shared.clone(),
        };
        Embedded {
            core: Core::start(
                store,
                name.to_owned(),
                self.shared.ttl,
                Duration::from_secs(1),
            )
            .await,
        }
    }
}

async fn sweep(shared: Weak<Shared>, ttl: Duration) {
    let period = (ttl / 20).max(Duration::from_millis(20));
    loop {
        tokio::time::sleep(period).await;
        let Some(s) = shared.upgrade() else { return };
        s.expire();
    }
}

/// One handle on an [`EmbeddedCluster`]; implements [`super::ClusterBackend`].
pub struct Embedded {
    core: Core<MemStore>,
}

impl std::fmt::Debug for Embedded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedded").finish_non_exhaustive()
    }
}

impl_backend!(Embedded, core);

struct MemStore {
    shared: Arc<Shared>,
}

fn ready<T: Send + 'static>(v: T) -> BoxFuture<'static, T> {
    Box::pin(std::future::ready(v))
}

impl Store for MemStore {
    fn get(&self, b: Bucket, key: &str) -> BoxFuture<'_, Result<Option<KvEntry>, ClusterError>> {
        let st = lock(&self.shared);
        let e = st
            .buckets
            .get(&b)
            .and_then(|bk| bk.entries.get(key))
            .filter(|e| !e.removed)
            .map(|e| KvEntry {
                key: key.to_owned(),
                value: e.value.clone(),
                revision: e.revision,
                removed: false,
            });
        ready(Ok(e))
    }

    fn put(&self, b: Bucket, key: &str, value: Bytes) -> BoxFuture<'_, Result<u64, ClusterError>> {
        let Cas::Done(rev) = self.shared.write(b, key, Some(value), |_| true) else {
            unreachable!("an unconditional write has no conflict")
        };
        ready(Ok(rev))
    }

    fn create(
        &self,
        b: Bucket,
        key: &str,
        value: Bytes,
    ) -> BoxFuture<'_, Result<Cas<u64>, ClusterError>> {
        ready(Ok(self
            .shared
            .write(b, key, Some(value), |e| e.is_none_or(|e| e.removed))))
    }

    fn update(
        &self,
        b: Bucket,
        key: &str,
        value: Bytes,
        revision: u64,
    ) -> BoxFuture<'_, Result<Cas<u64>, ClusterError>> {
        ready(Ok(self.shared.write(b, key, Some(value), |e| {
            e.is_some_and(|e| e.revision == revision)
        })))
    }

    fn delete(
        &self,
        b: Bucket,
        key: &str,
        revision: Option<u64>,
    ) -> BoxFuture<'_, Result<Cas<()>, ClusterError>> {
        let r = self.shared.write(b, key, None, |e| match revision {
            None => true,
            Some(rev) => e.is_some_and(|e| e.revision == rev && !e.removed),
        });
        ready(Ok(match r {
            Cas::Done(_) => Cas::Done(()),
            Cas::Conflict => Cas::Conflict,
        }))
    }

    fn watch(&self, b: Bucket, from: Option<u64>) -> BoxFuture<'_, Result<Watch, ClusterError>> {
        // Subscribed under the lock: nothing falls between the snapshot and the changes.
        let st = lock(&self.shared);
        let rx = self.shared.changes[&b].subscribe();
        let mut snapshot: Vec<KvEntry> = st
            .buckets
            .get(&b)
            .map(|bk| {
                bk.entries
                    .iter()
                    .filter(|(_, e)| from.is_none_or(|f| e.revision >= f))
                    .filter(|(_, e)| from.is_some() || !e.removed)
                    .map(|(k, e)| KvEntry {
                        key: k.clone(),
                        value: e.value.clone(),
                        revision: e.revision,
                        removed: e.removed,
                    })
                    .collect()
            })
            .unwrap_or_default();
        drop(st);
        snapshot.sort_by_key(|e| e.revision);
        let head = futures_util::stream::iter(
            snapshot
                .into_iter()
                .map(|e| Ok(WatchItem::Entry(e)))
                .chain(std::iter::once(Ok(WatchItem::Current))),
        );
        let tail = futures_util::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(e) => Some((Ok(WatchItem::Entry(e)), rx)),
                Err(broadcast::error::RecvError::Lagged(n)) => Some((
                    Err(ClusterError::Unavailable(format!(
                        "watcher lagged {n} changes behind"
                    ))),
                    rx,
                )),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        });
        ready(Ok(head.chain(tail).boxed()))
    }

    fn publish(&self, subject: String, payload: Bytes) -> BoxFuture<'_, Result<(), ClusterError>> {
        if payload.len() > self.shared.max_payload {
            return ready(Err(ClusterError::PushTooLarge {
                package: payload.len(),
                uid: String::new(),
                max_payload: self.shared.max_payload,
            }));
        }
        let mut st = lock(&self.shared);
        if let Some(subs) = st.subjects.get_mut(&subject) {
            subs.retain(|tx| match tx.try_send(payload.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    let n = self.shared.slow_consumers.fetch_add(1, Ordering::Relaxed) + 1;
                    if n.is_power_of_two() {
                        tracing::warn!(
                            subject,
                            total = n,
                            "slow consumer: a push subscriber is full, message dropped"
                        );
                    }
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
        }
        ready(Ok(()))
    }

    fn subscribe(
        &self,
        subject: String,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Bytes>, ClusterError>> {
        let (tx, rx) = mpsc::channel(PUSH_SUBSCRIPTION_CAPACITY);
        lock(&self.shared)
            .subjects
            .entry(subject)
            .or_default()
            .push(tx);
        ready(Ok(tokio_stream_from(rx)))
    }

    fn beat(&self, payload: Bytes) -> BoxFuture<'_, Result<(), ClusterError>> {
        self.publish(BEAT_SUBJECT.to_owned(), payload)
    }

    fn beats(&self) -> BoxFuture<'_, Result<BoxStream<'static, Bytes>, ClusterError>> {
        self.subscribe(BEAT_SUBJECT.to_owned())
    }

    fn max_payload(&self) -> usize {
        self.shared.max_payload
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), String>> {
        ready(Ok(()))
    }

    fn stats(&self) -> ClusterStats {
        ClusterStats {
            slow_consumers: self.shared.slow_consumers.load(Ordering::Relaxed),
            ..ClusterStats::default()
        }
    }
}

fn tokio_stream_from(rx: mpsc::Receiver<Bytes>) -> BoxStream<'static, Bytes> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) })
        .boxed()
}
