//! Sessions (one per client connection) and the session service of a frontend.
//!
//! A [`Session`] is a cheap, cloneable handle. Handlers get it with each request; the
//! [`SessionService`] finds sessions by id or uid, kicks them and counts them.
//!
//! # Ids
//! A session id is a `u64`: the high 32 bits are the CRC-32 of the frontend id, the low 32 bits
//! a per-frontend counter. Ids are therefore unique across a cluster whose frontend ids have
//! distinct CRC-32s (the server runtime checks that when it loads `servers.json`), and a
//! frontend reuses an id only after 2^32 connections.
//!
//! # Binding a uid twice
//! - Binding a session to the uid it already has succeeds and changes nothing.
//! - Binding a session that has a *different* uid fails with [`SessionError::AlreadyBound`]
//!   (pomelo: "session has already bind with uid"); unbind first.
//! - Several sessions may share one uid (pomelo's default, e.g. two browser tabs); with
//!   [`SessionConfig::single_session`] the older sessions of that uid are kicked on bind,
//!   as pomelo's `singleSession` option does.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use serde_json::{Map, Value};
use tokio::sync::Notify;

use crate::outbox::{Outbox, PushError};
use crate::stats::ConnectorStats;
use shaddock_protocol::BodyCodec;

/// Id of a session, unique across the cluster (see the [module docs](self)).
pub type SessionId = u64;

/// Errors of session operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The session is bound to another uid; unbind it first (not fatal).
    #[error("session {sid} is already bound to uid `{bound}`, cannot bind `{requested}`")]
    AlreadyBound {
        /// The session.
        sid: SessionId,
        /// Its current uid.
        bound: String,
        /// The uid asked for.
        requested: String,
    },
    /// Unbind with a uid the session is not bound to (not fatal).
    #[error("session {sid} is not bound to uid `{uid}`")]
    NotBound {
        /// The session.
        sid: SessionId,
        /// The uid given.
        uid: String,
    },
    /// The session's connection is closed (not fatal).
    #[error("session {0} is closed")]
    Closed(SessionId),
    /// The message could not be encoded (not fatal).
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// The session's outbound queue was full: the client is kicked as a slow consumer.
    #[error("session {sid}: outbound queue full ({capacity} messages), client kicked")]
    QueueFull {
        /// The session.
        sid: SessionId,
        /// The queue's capacity.
        capacity: usize,
    },
}

/// Options of the session service.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct SessionConfig {
    /// Kick the other sessions of a uid when a session binds it. Default `false`.
    pub single_session: bool,
}

/// The closed hook: called once per session when its connection ends, with the reason.
pub type ClosedHook = Arc<dyn Fn(&Session, &str) + Send + Sync>;

/// The unbound hook: called when a session's uid is unbound (not when the session closes),
/// with that uid.
pub type UnboundHook = Arc<dyn Fn(&Session, &str) + Send + Sync>;

/// A session's settings, and their JSON text while they have not changed since it was made
/// (sent with every forwarded request, see [`Session::settings_json`]).
#[derive(Default)]
struct Settings {
    /// The settings, each key once, in the order serde_json's `Map` (with `preserve_order`,
    /// as this workspace builds it) keeps them: a new key goes last, setting a key again
    /// keeps its place, and removing one moves the last entry into its place (`Map::remove`
    /// is `swap_remove`). A boxed slice at its exact size, searched in order: a session holds
    /// a few settings for its whole life (the chat's one, its room), and a `Map` of one
    /// entry is 72 bytes in the session plus ~170 on the heap (its hash index, spare room),
    /// where this is 16 plus the entries. The JSON text and [`Session::settings`] list them
    /// in the same order as the `Map` did.
    entries: Box<[(String, Value)]>,
    json: Option<Bytes>,
}

impl Settings {
    fn get(&self, key: &str) -> Option<&Value> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Changes the entries with `f`, then keeps them at their exact size; the JSON text is
    /// made again when next asked for. Settings change rarely (a handler's `set`, a
    /// backend's reply) and live as long as the session.
    fn change<R>(&mut self, f: impl FnOnce(&mut Vec<(String, Value)>) -> R) -> R {
        let mut entries = std::mem::take(&mut self.entries).into_vec();
        let r = f(&mut entries);
        self.entries = entries.into_boxed_slice();
        self.json = None;
        r
    }
}

/// `Map::insert`: the value of a key already there is replaced in its place.
fn insert_setting(entries: &mut Vec<(String, Value)>, key: String, value: Value) {
    match entries.iter_mut().find(|(k, _)| *k == key) {
        Some((_, v)) => *v = value,
        None => entries.push((key, value)),
    }
}

/// `Map::remove` with `preserve_order`: `swap_remove`.
fn remove_setting(entries: &mut Vec<(String, Value)>, key: &str) -> Option<Value> {
    let i = entries.iter().position(|(k, _)| k == key)?;
    Some(entries.swap_remove(i).1)
}

/// What every session of a service shares: one allocation per frontend, not per session
/// (a session lives as long as its connection, idle most of the time, so each of its
/// bytes is a byte per connection).
struct Shared {
    frontend_id: Arc<str>,
    stats: Arc<ConnectorStats>,
    /// Woken when any session of the service closes; each waiter checks its own session
    /// (closes are rare next to the sessions' lives, and few wait for them).
    closed: Notify,
}

pub(crate) struct SessionInner {
    id: SessionId,
    /// The client's address, as an IP and a port (20 bytes; a `SocketAddr` is 32, for the
    /// IPv6 flow info and scope id, which nothing here uses).
    peer_ip: IpAddr,
    peer_port: u16,
    uid: RwLock<Option<Box<str>>>,
    settings: RwLock<Settings>,
    /// Encoded packages for the client; bounded (`queue_capacity`).
    outbound: Outbox,
    /// Set when the connection has ended; `shared.closed` wakes the waiters. (Inline, unlike
    /// a `CancellationToken`, which allocates a node per session.)
    closed: AtomicBool,
    shared: Arc<Shared>,
    service: std::sync::Weak<ServiceInner>,
}

/// A client's session on this frontend. Clone it freely: all clones are the same session.
#[derive(Clone)]
pub struct Session {
    inner: Arc<SessionInner>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.inner.id)
            .field("frontend_id", &self.inner.shared.frontend_id)
            .field("uid", &self.uid())
            .field("peer", &self.peer_addr())
            .finish()
    }
}

impl Session {
    /// The id, unique across the cluster.
    pub fn id(&self) -> SessionId {
        self.inner.id
    }

    /// The id of the frontend server holding the connection.
    pub fn frontend_id(&self) -> &str {
        &self.inner.shared.frontend_id
    }

    /// The client's address.
    pub fn peer_addr(&self) -> SocketAddr {
        SocketAddr::new(self.inner.peer_ip, self.inner.peer_port)
    }

    /// The bound uid, if any.
    pub fn uid(&self) -> Option<String> {
        read(&self.inner.uid).as_deref().map(str::to_owned)
    }

    /// Binds `uid` to this session (policy in the [module docs](self)).
    ///
    /// # Errors
    /// [`SessionError::AlreadyBound`] when bound to another uid; [`SessionError::Closed`].
    pub fn bind(&self, uid: &str) -> Result<(), SessionError> {
        let service = self.service().ok_or(SessionError::Closed(self.id()))?;
        service.bind(self, uid)
    }

    /// Unbinds `uid` from this session.
    ///
    /// # Errors
    /// [`SessionError::NotBound`] when the session is not bound to `uid`.
    pub fn unbind(&self, uid: &str) -> Result<(), SessionError> {
        match self.service() {
            Some(service) => service.unbind(self, uid),
            None => {
                let mut bound = write(&self.inner.uid);
                if bound.as_deref() == Some(uid) {
                    *bound = None;
                    Ok(())
                } else {
                    Err(SessionError::NotBound {
                        sid: self.id(),
                        uid: uid.to_owned(),
                    })
                }
            }
        }
    }

    /// Sets one setting (pomelo `session.set`).
    pub fn set(&self, key: impl Into<String>, value: Value) {
        let key = key.into();
        write(&self.inner.settings).change(|e| insert_setting(e, key, value));
    }

    /// One setting (pomelo `session.get`).
    pub fn get(&self, key: &str) -> Option<Value> {
        read(&self.inner.settings).get(key).cloned()
    }

    /// Removes one setting.
    pub fn remove(&self, key: &str) -> Option<Value> {
        let mut settings = write(&self.inner.settings);
        settings.get(key)?;
        settings.change(|e| remove_setting(e, key))
    }

    /// A copy of all settings.
    pub fn settings(&self) -> Map<String, Value> {
        read(&self.inner.settings)
            .entries
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// All settings as a JSON object text (`JSON.stringify`), encoded once and kept until a
    /// setting changes.
    pub fn settings_json(&self) -> Bytes {
        if let Some(json) = &read(&self.inner.settings).json {
            return json.clone();
        }
        let mut settings = write(&self.inner.settings);
        if let Some(json) = &settings.json {
            return json.clone();
        }
        // Encoded from a `Map` of the entries (moved, not copied, and back after): the
        // encoder's order of keys is the `Map`'s.
        let map: Map<String, Value> = std::mem::take(&mut settings.entries).into_iter().collect();
        // Exact size: kept for the session's life (the encoder's buffer starts at 64 bytes).
        let text = shaddock_protocol::json::object_to_vec(&map).into_boxed_slice();
        settings.entries = map.into_iter().collect();
        let json = Bytes::from(text);
        settings.json = Some(json.clone());
        json
    }

    /// Merges `settings` into this session's settings (pomelo `pushAll` from a backend).
    pub fn merge_settings(&self, settings: Map<String, Value>) {
        self.apply_settings(settings, &[]);
    }

    /// Applies a change of settings made elsewhere (a backend's [`crate::remote`] reply or
    /// `push_settings`): sets the keys of `set`, then removes the keys of `removed`, under
    /// one lock. Keys in neither keep their value here, so a key set on this frontend (or by
    /// a concurrent request) while a backend held an older copy is not reverted.
    pub fn apply_settings(&self, set: Map<String, Value>, removed: &[String]) {
        if set.is_empty() && removed.is_empty() {
            return;
        }
        write(&self.inner.settings).change(|entries| {
            for (k, v) in set {
                insert_setting(entries, k, v);
            }
            for k in removed {
                remove_setting(entries, k);
            }
        });
    }

    /// Queues already encoded packages (e.g. a push encoded once for many sessions).
    ///
    /// # Errors
    /// [`SessionError::Closed`]; [`SessionError::QueueFull`], after which the client has been
    /// kicked as a slow consumer.
    pub fn send_encoded(&self, packages: Bytes) -> Result<(), SessionError> {
        self.enqueue(packages, false)?;
        ConnectorStats::incr(&self.inner.shared.stats.pushed);
        Ok(())
    }

    /// Queues a response: written without waiting for the push flush interval, after the
    /// pushes queued before it.
    pub(crate) fn send_response(&self, packages: Bytes) -> Result<(), SessionError> {
        self.enqueue(packages, true)
    }

    pub(crate) fn outbox(&self) -> &Outbox {
        &self.inner.outbound
    }

    fn enqueue(&self, packages: Bytes, urgent: bool) -> Result<(), SessionError> {
        match self.inner.outbound.push(packages, urgent) {
            Ok(()) => Ok(()),
            Err(PushError::Closed) => Err(SessionError::Closed(self.id())),
            Err(PushError::Full) => {
                let capacity = self.inner.outbound.capacity();
                if self
                    .request_kick(crate::close::KickReason::SlowConsumer { capacity }.to_string())
                {
                    ConnectorStats::incr(&self.inner.shared.stats.slow_consumers);
                    tracing::warn!(
                        sid = self.id(),
                        peer = %self.peer_addr(),
                        capacity,
                        "outbound queue full, kicking slow consumer"
                    );
                }
                Err(SessionError::QueueFull {
                    sid: self.id(),
                    capacity,
                })
            }
        }
    }

    /// Pushes `body` (JSON) on `route` to this client (route compressed when the frontend's
    /// dictionary has it).
    ///
    /// # Errors
    /// As [`Session::send_encoded`]; [`SessionError::Encode`] for a route over 255 bytes.
    pub fn push(&self, route: &str, body: &Value) -> Result<(), SessionError> {
        let service = self.service().ok_or(SessionError::Closed(self.id()))?;
        let bytes = service
            .inner
            .codec
            .push_package(route, body)
            .map_err(|e| SessionError::Encode(e.to_string()))?;
        self.send_encoded(bytes)
    }

    /// Kicks the client: a KICK `{"reason": reason}` (if the connection is established),
    /// then the connection closes. Returns at once; the connection task does the work.
    pub fn kick(&self, reason: &str) {
        self.request_kick(reason.to_owned());
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Completes when the connection has ended.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn closed(&self) {
        loop {
            let notified = self.inner.shared.closed.notified();
            tokio::pin!(notified);
            // Registered before the check, so a close in between is not missed.
            notified.as_mut().enable();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }

    /// Records a kick (kept in the outbox, which wakes the connection task); `false` if
    /// one was already pending or the connection has ended.
    fn request_kick(&self, reason: String) -> bool {
        !self.is_closed() && self.inner.outbound.kick(reason)
    }

    /// The reason of a kick asked for, if any (it stays pending). The connection task looks
    /// after each wake-up of the outbox.
    pub(crate) fn pending_kick(&self) -> Option<Box<str>> {
        self.inner.outbound.pending_kick()
    }

    fn service(&self) -> Option<SessionService> {
        self.inner
            .service
            .upgrade()
            .map(|inner| SessionService { inner })
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}
fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}
#[cfg(test)]
fn lock<T>(l: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    l.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Default)]
struct Maps {
    /// Ids are the server's own: a fast unkeyed hash will do.
    by_id: shaddock_rpc::hash::FastMap<SessionId, Session>,
    /// Uids are the app's (often the client's) choice: std's keyed hash.
    /// Boxed keys and id lists (16 bytes each, not 24): a bucket is 32 bytes instead of 48,
    /// and the table holds about two buckets per online user. A uid's list changes only
    /// on bind and unbind.
    by_uid: HashMap<Box<str>, Box<[SessionId]>>,
}

struct ServiceInner {
    frontend_id: Arc<str>,
    shared: Arc<Shared>,
    id_prefix: u64,
    next: AtomicU32,
    config: SessionConfig,
    maps: RwLock<Maps>,
    closed_hooks: RwLock<Vec<ClosedHook>>,
    unbound_hooks: RwLock<Vec<UnboundHook>>,
    /// For encoding pushes (dictionary, protobuf).
    codec: BodyCodec,
}

/// The sessions of one frontend: look up by id or uid, kick, count.
#[derive(Clone)]
pub struct SessionService {
    inner: Arc<ServiceInner>,
}

impl std::fmt::Debug for SessionService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionService")
            .field("frontend_id", &self.inner.frontend_id)
            .field("count", &self.count())
            .finish()
    }
}

impl SessionService {
    pub(crate) fn new(
        frontend_id: &str,
        config: SessionConfig,
        stats: Arc<ConnectorStats>,
        codec: BodyCodec,
    ) -> Self {
        Self {
            inner: Arc::new(ServiceInner {
                frontend_id: frontend_id.into(),
                shared: Arc::new(Shared {
                    frontend_id: frontend_id.into(),
                    stats,
                    closed: Notify::new(),
                }),
                id_prefix: u64::from(crc32fast::hash(frontend_id.as_bytes())) << 32,
                next: AtomicU32::new(1),
                config,
                maps: RwLock::default(),
                closed_hooks: RwLock::default(),
                unbound_hooks: RwLock::default(),
                codec,
            }),
        }
    }

    /// Creates and registers the session of a new connection.
    pub(crate) fn create(&self, peer: SocketAddr, queue_capacity: usize) -> Session {
        let local = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let session = Session {
            inner: Arc::new(SessionInner {
                id: self.inner.id_prefix | u64::from(local),
                peer_ip: peer.ip(),
                peer_port: peer.port(),
                uid: RwLock::new(None),
                settings: RwLock::default(),
                outbound: Outbox::new(queue_capacity),
                closed: AtomicBool::new(false),
                shared: self.inner.shared.clone(),
                service: Arc::downgrade(&self.inner),
            }),
        };
        write(&self.inner.maps)
            .by_id
            .insert(session.id(), session.clone());
        session
    }

    /// Removes a session whose connection ended and runs the closed hooks.
    pub(crate) fn remove(&self, session: &Session, reason: &str) {
        {
            let mut maps = write(&self.inner.maps);
            maps.by_id.remove(&session.id());
            if let Some(uid) = read(&session.inner.uid).as_deref() {
                remove_uid(&mut maps, uid, session.id());
            }
        }
        session.inner.outbound.close();
        session.inner.closed.store(true, Ordering::Release);
        session.inner.shared.closed.notify_waiters();
        let hooks = read(&self.inner.closed_hooks).clone();
        for hook in hooks {
            hook(session, reason);
        }
    }

    /// Registers a hook called whenever a session's uid is unbound (`Session::unbind`, also
    /// when a backend asks for it); a closing session runs the closed hooks instead.
    pub fn on_unbound(&self, hook: impl Fn(&Session, &str) + Send + Sync + 'static) {
        write(&self.inner.unbound_hooks).push(Arc::new(hook));
    }

    /// Registers a hook called once for every session whose connection ends.
    pub fn on_closed(&self, hook: impl Fn(&Session, &str) + Send + Sync + 'static) {
        write(&self.inner.closed_hooks).push(Arc::new(hook));
    }

    /// The session with this id.
    pub fn get(&self, id: SessionId) -> Option<Session> {
        read(&self.inner.maps).by_id.get(&id).cloned()
    }

    /// The sessions bound to `uid` (oldest first).
    pub fn get_by_uid(&self, uid: &str) -> Vec<Session> {
        let mut found = Vec::new();
        self.for_each_of_uids([uid], |s| found.push(s.clone()));
        found
    }

    /// Calls `f` with every session bound to each of `uids`, under one lock, without
    /// collecting them; returns how many of the uids have no session here.
    /// `f` must not call back into this service.
    pub(crate) fn for_each_of_uids<'a>(
        &self,
        uids: impl IntoIterator<Item = &'a str>,
        mut f: impl FnMut(&Session),
    ) -> usize {
        let maps = read(&self.inner.maps);
        let mut missing = 0;
        for uid in uids {
            let mut any = false;
            for s in maps
                .by_uid
                .get(uid)
                .into_iter()
                .flatten()
                .filter_map(|id| maps.by_id.get(id))
            {
                any = true;
                f(s);
            }
            missing += usize::from(!any);
        }
        missing
    }

    /// Kicks one session; `false` if there is none with this id.
    pub fn kick_by_id(&self, id: SessionId, reason: &str) -> bool {
        match self.get(id) {
            Some(s) => {
                s.kick(reason);
                true
            }
            None => false,
        }
    }

    /// Kicks every session of `uid`; returns how many.
    pub fn kick_by_uid(&self, uid: &str, reason: &str) -> usize {
        let sessions = self.get_by_uid(uid);
        for s in &sessions {
            s.kick(reason);
        }
        sessions.len()
    }

    /// Number of open sessions (connections, including those still handshaking).
    pub fn count(&self) -> usize {
        read(&self.inner.maps).by_id.len()
    }

    /// Number of distinct uids bound to at least one open session here (the users online
    /// on this frontend; a user with two connections counts once).
    pub fn uid_count(&self) -> usize {
        read(&self.inner.maps).by_uid.len()
    }

    /// Every open session.
    pub fn all(&self) -> Vec<Session> {
        read(&self.inner.maps).by_id.values().cloned().collect()
    }

    fn bind(&self, session: &Session, uid: &str) -> Result<(), SessionError> {
        let others = {
            let mut maps = write(&self.inner.maps);
            if !maps.by_id.contains_key(&session.id()) {
                return Err(SessionError::Closed(session.id()));
            }
            let mut bound = write(&session.inner.uid);
            match bound.as_deref() {
                Some(b) if b == uid => return Ok(()),
                Some(b) => {
                    return Err(SessionError::AlreadyBound {
                        sid: session.id(),
                        bound: b.to_owned(),
                        requested: uid.to_owned(),
                    });
                }
                None => {}
            }
            *bound = Some(uid.into());
            let ids = maps.by_uid.entry(uid.into()).or_default();
            let others: Vec<SessionId> = if self.inner.config.single_session {
                ids.to_vec()
            } else {
                Vec::new()
            };
            let mut grown = std::mem::take(ids).into_vec();
            grown.push(session.id());
            *ids = grown.into_boxed_slice();
            others
                .into_iter()
                .filter_map(|id| maps.by_id.get(&id).cloned())
                .collect::<Vec<_>>()
        };
        for other in others {
            other.kick("kick");
        }
        Ok(())
    }

    fn unbind(&self, session: &Session, uid: &str) -> Result<(), SessionError> {
        let mut maps = write(&self.inner.maps);
        let mut bound = write(&session.inner.uid);
        if bound.as_deref() != Some(uid) {
            return Err(SessionError::NotBound {
                sid: session.id(),
                uid: uid.to_owned(),
            });
        }
        *bound = None;
        drop(bound);
        remove_uid(&mut maps, uid, session.id());
        drop(maps);
        let hooks = read(&self.inner.unbound_hooks).clone();
        for hook in hooks {
            hook(session, uid);
        }
        Ok(())
    }
}

fn remove_uid(maps: &mut Maps, uid: &str, id: SessionId) {
    if let Some(ids) = maps.by_uid.get_mut(uid) {
        let mut left = std::mem::take(ids).into_vec();
        left.retain(|x| *x != id);
        if left.is_empty() {
            maps.by_uid.remove(uid);
        } else {
            *ids = left.into_boxed_slice();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn service(single: bool) -> SessionService {
        SessionService::new(
            "connector-1",
            SessionConfig {
                single_session: single,
            },
            Arc::default(),
            BodyCodec::default(),
        )
    }

    fn session(svc: &SessionService, cap: usize) -> Session {
        svc.create("127.0.0.1:1".parse().unwrap(), cap)
    }

    /// A session lives as long as its connection, idle most of the time: its size is a
    /// part of every idle connection's memory. 240 bytes (release); with the `Arc`'s two
    /// counts that is 256, exactly mimalloc's 256-byte size class (296 + 16 were in the 320
    /// class, before the settings became a slice instead of a `Map`, 104 → 48 bytes; 368 +
    /// 16 in the 384 class, before the frontend-wide parts moved to `Shared`).
    #[test]
    fn the_session_stays_small() {
        let size = std::mem::size_of::<SessionInner>();
        let bound = 240;
        assert!(
            size <= bound,
            "SessionInner is {size} bytes (bound {bound})"
        );
    }

    #[test]
    fn ids_unique_and_carry_frontend_prefix() {
        let svc = service(false);
        let a = session(&svc, 1);
        let b = session(&svc, 1);
        assert_ne!(a.id(), b.id());
        assert_eq!(a.id() >> 32, u64::from(crc32fast::hash(b"connector-1")));
        assert_eq!(svc.count(), 2);
        assert_eq!(a.frontend_id(), "connector-1");
    }

    #[test]
    fn unbind_runs_the_unbound_hooks_once_with_the_uid() {
        let svc = service(false);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        svc.on_unbound(move |s, uid| lock(&log).push((s.id(), uid.to_owned())));
        let a = session(&svc, 1);
        a.bind("alice").unwrap();
        assert!(a.unbind("bob").is_err());
        assert!(lock(&seen).is_empty());
        a.unbind("alice").unwrap();
        assert_eq!(*lock(&seen), [(a.id(), "alice".to_owned())]);
        assert!(a.unbind("alice").is_err());
        assert_eq!(lock(&seen).len(), 1);
    }

    #[test]
    fn bind_policy() {
        let svc = service(false);
        let a = session(&svc, 1);
        let b = session(&svc, 1);
        a.bind("alice").unwrap();
        a.bind("alice").unwrap();
        assert!(matches!(
            a.bind("bob"),
            Err(SessionError::AlreadyBound { .. })
        ));
        assert_eq!(svc.uid_count(), 1);
        b.bind("alice").unwrap();
        assert_eq!(svc.get_by_uid("alice").len(), 2);
        // One user on two sessions is one user online.
        assert_eq!(svc.uid_count(), 1);
        assert!(matches!(
            a.unbind("bob"),
            Err(SessionError::NotBound { .. })
        ));
        a.unbind("alice").unwrap();
        assert_eq!(svc.get_by_uid("alice").len(), 1);
        assert_eq!(a.uid(), None);
        assert_eq!(svc.kick_by_uid("alice", "bye"), 1);
        assert_eq!(b.pending_kick().as_deref(), Some("bye"));
        b.unbind("alice").unwrap();
        assert_eq!(svc.uid_count(), 0);
    }

    #[test]
    fn single_session_kicks_older() {
        let svc = service(true);
        let a = session(&svc, 1);
        let b = session(&svc, 1);
        a.bind("u").unwrap();
        b.bind("u").unwrap();
        assert_eq!(a.pending_kick().as_deref(), Some("kick"));
        assert_eq!(b.pending_kick(), None);
    }

    /// The settings' JSON text is kept while they do not change, and made again after each
    /// change, whichever way it is made.
    #[test]
    fn settings_json_follows_every_change() {
        let svc = service(false);
        let a = session(&svc, 1);
        assert_eq!(&a.settings_json()[..], b"{}");
        a.set("rid", Value::from("room1"));
        let first = a.settings_json();
        assert_eq!(&first[..], br#"{"rid":"room1"}"#);
        // kept: the same buffer
        assert_eq!(a.settings_json().as_ptr(), first.as_ptr());
        a.apply_settings(Map::new(), &[]);
        assert_eq!(a.settings_json().as_ptr(), first.as_ptr());
        let mut m = Map::new();
        m.insert("2".into(), Value::from(true));
        a.merge_settings(m);
        assert_eq!(&a.settings_json()[..], br#"{"2":true,"rid":"room1"}"#);
        a.apply_settings(Map::new(), &["2".to_owned()]);
        assert_eq!(&a.settings_json()[..], br#"{"rid":"room1"}"#);
        assert_eq!(a.remove("nope"), None);
        assert_eq!(a.remove("rid"), Some(Value::from("room1")));
        assert_eq!(&a.settings_json()[..], b"{}");
    }

    /// The settings keep the order a serde_json `Map` keeps (what they were before they
    /// became a slice): after every set, merge, removal and backend change, the same keys in
    /// the same order, and the same JSON text.
    #[test]
    fn settings_keep_the_order_of_a_map() {
        let svc = service(false);
        let a = session(&svc, 1);
        let mut model = Map::new();
        let check = |a: &Session, model: &Map<String, Value>| {
            let keys: Vec<String> = a.settings().keys().cloned().collect();
            let want: Vec<String> = model.keys().cloned().collect();
            assert_eq!(keys, want);
            assert_eq!(a.settings(), *model);
            assert_eq!(
                &a.settings_json()[..],
                &shaddock_protocol::json::object_to_vec(model)[..]
            );
        };
        for (i, key) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
            a.set(key, Value::from(i));
            model.insert(key.to_owned(), Value::from(i));
            check(&a, &model);
        }
        // Set again: the value changes in its place.
        a.set("b", Value::from("bee"));
        model.insert("b".to_owned(), Value::from("bee"));
        check(&a, &model);
        // Removed: the last entry takes its place.
        assert_eq!(a.remove("b"), model.remove("b"));
        check(&a, &model);
        assert_eq!(a.remove("a"), model.remove("a"));
        check(&a, &model);
        assert_eq!(a.remove("zz"), None);
        check(&a, &model);
        // A backend's change: sets in their order, then removals.
        let mut set = Map::new();
        set.insert("x".into(), Value::from(1));
        set.insert("c".into(), Value::from(true));
        set.insert("7".into(), Value::from("seven"));
        let removed = ["d".to_owned(), "nope".to_owned()];
        for (k, v) in set.clone() {
            model.insert(k, v);
        }
        for k in &removed {
            model.remove(k);
        }
        a.apply_settings(set, &removed);
        check(&a, &model);
        assert_eq!(a.get("x"), Some(Value::from(1)));
        assert_eq!(a.get("d"), None);
    }

    #[test]
    fn settings_and_closed_hook() {
        let svc = service(false);
        let a = session(&svc, 1);
        a.set("rid", Value::from("room1"));
        assert_eq!(a.get("rid"), Some(Value::from("room1")));
        let mut m = Map::new();
        m.insert("x".into(), Value::from(1));
        a.merge_settings(m);
        assert_eq!(a.settings().len(), 2);
        a.bind("alice").unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        svc.on_closed(move |s, reason| lock(&seen2).push((s.id(), reason.to_owned())));
        svc.remove(&a, "gone");
        assert!(a.is_closed());
        assert_eq!(svc.count(), 0);
        assert!(svc.get_by_uid("alice").is_empty());
        assert_eq!(*lock(&seen), vec![(a.id(), "gone".to_owned())]);
        assert!(matches!(a.bind("x"), Err(SessionError::Closed(_))));
    }

    #[tokio::test]
    async fn closed_completes_for_waiters_before_and_after_the_close() {
        let svc = service(false);
        let a = session(&svc, 1);
        let waiter = tokio::spawn({
            let a = a.clone();
            async move { a.closed().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        assert!(!a.is_closed());
        svc.remove(&a, "gone");
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("waiter woken")
            .unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), a.closed())
            .await
            .expect("already closed");
        assert!(a.is_closed());
    }

    #[test]
    fn full_queue_kicks_and_counts_once() {
        let svc = service(false);
        let a = session(&svc, 1);
        a.send_encoded(Bytes::from_static(b"1")).unwrap();
        assert!(matches!(
            a.send_encoded(Bytes::from_static(b"2")),
            Err(SessionError::QueueFull { capacity: 1, .. })
        ));
        assert!(a.send_encoded(Bytes::from_static(b"3")).is_err());
        assert_eq!(svc.inner.shared.stats.snapshot().slow_consumers, 1);
        assert!(
            a.pending_kick()
                .as_deref()
                .unwrap()
                .starts_with("slow consumer")
        );
    }
}
