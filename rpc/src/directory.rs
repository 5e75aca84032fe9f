//! Who the peers are: [`ServerInfo`], the live [`PeerDirectory`], [`Router`]s and [`Target`]s.

use crate::client::Link;
use crate::hash::FastMap;
use std::borrow::Borrow;
use std::fmt;
use std::sync::{Arc, OnceLock, RwLock};

/// A server's unique id, e.g. `chat-server-1`. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerId(Arc<str>);

impl ServerId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for ServerId {
    fn from(s: &str) -> Self {
        Self(Arc::from(s))
    }
}

impl From<String> for ServerId {
    fn from(s: String) -> Self {
        Self(Arc::from(s))
    }
}

impl Borrow<str> for ServerId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One server process as the RPC layer knows it (a servers.json entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// Unique id.
    pub id: ServerId,
    /// Its type, e.g. `chat` or `connector`.
    pub server_type: String,
    /// Host its RPC server listens on.
    pub host: String,
    /// Port its RPC server listens on (servers.json `port`).
    pub port: u16,
}

impl ServerInfo {
    /// A server entry.
    pub fn new(
        id: impl Into<ServerId>,
        server_type: impl Into<String>,
        host: impl Into<String>,
        port: u16,
    ) -> Self {
        Self {
            id: id.into(),
            server_type: server_type.into(),
            host: host.into(),
            port,
        }
    }

    /// `host:port`.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Picks which server of a type serves a routing key (pomelo's per-type route function).
pub trait Router: Send + Sync + 'static {
    /// Chooses the server for `key`, usually among `servers` (all live servers of the type,
    /// sorted by id); `None` if none fits. A router may also return the id of a server that
    /// is not live (to keep a key's placement stable while that server is down): the call
    /// then fails fast with [`RpcError::UnknownPeer`](crate::RpcError::UnknownPeer).
    fn route(&self, key: &[u8], servers: &[ServerInfo]) -> Option<ServerId>;

    /// Places a key that [`Router::route`] does not know yet (it returned `None`), for routers
    /// whose placements live elsewhere (the cluster's placement table): the future answers the
    /// server the key now lives on. `None` (the default): the key has no server, and the call
    /// fails with [`RpcError::NoServer`](crate::RpcError::NoServer). The caller bounds the
    /// future by the call's timeout.
    fn place(&self, key: &[u8]) -> Option<PlaceFuture> {
        let _ = key;
        None
    }
}

/// What [`Router::place`] returns: the server a key was placed on, or why not.
pub type PlaceFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<ServerId, crate::RpcError>> + Send>>;

/// Pomelo's default router: `crc32(key) % servers.len()` over the servers sorted by id, so
/// every caller picks the same server for a key while the set is unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub struct Crc32Router;

impl Router for Crc32Router {
    fn route(&self, key: &[u8], servers: &[ServerInfo]) -> Option<ServerId> {
        if servers.is_empty() {
            return None;
        }
        let i = crc32fast::hash(key) as usize % servers.len();
        servers.get(i).map(|s| s.id.clone())
    }
}

/// Where a call goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// This exact server.
    Server(&'a str),
    /// A server of this type, chosen by the type's [`Router`] from this key (a uid, a room
    /// name, ...).
    Route {
        /// Server type, e.g. `chat`.
        server_type: &'a str,
        /// Routing key.
        key: &'a [u8],
    },
}

impl<'a> Target<'a> {
    /// A call to server `id`.
    pub fn server(id: &'a str) -> Self {
        Self::Server(id)
    }

    /// A call to the `server_type` server that `key` routes to.
    pub fn route(server_type: &'a str, key: &'a (impl AsRef<[u8]> + ?Sized)) -> Self {
        Self::Route {
            server_type,
            key: key.as_ref(),
        }
    }
}

pub(crate) struct PeerEntry {
    pub(crate) info: ServerInfo,
    /// The lazily created connection to this peer; dropped (and closed) with the entry.
    pub(crate) link: OnceLock<Link>,
}

#[derive(Default)]
struct Inner {
    by_id: FastMap<ServerId, Arc<PeerEntry>>,
    by_type: FastMap<String, Arc<[ServerInfo]>>,
}

/// The live set of peer servers, shared by clones and safe to update from any task while calls
/// run. Removing a peer (or re-adding it at another address) closes the client connection to
/// it; calls in flight on it fail with [`crate::RpcError::ConnectionLost`].
#[derive(Clone, Default)]
pub struct PeerDirectory {
    inner: Arc<RwLock<Inner>>,
}

impl fmt::Debug for PeerDirectory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerDirectory")
            .field("peers", &self.len())
            .finish()
    }
}

impl PeerDirectory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        // A panic while holding the lock cannot leave `Inner` half-updated (every update is
        // a single map operation plus a rebuild), so a poisoned lock is still usable.
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds or updates a server. Re-adding an id with the same type, host and port keeps its
    /// connection; a changed entry replaces it (closing the old connection).
    pub fn add(&self, info: ServerInfo) {
        let mut inner = self.write();
        if let Some(old) = inner.by_id.get(&info.id)
            && old.info == info
        {
            return;
        }
        let old_type = inner
            .by_id
            .insert(
                info.id.clone(),
                Arc::new(PeerEntry {
                    info: info.clone(),
                    link: OnceLock::new(),
                }),
            )
            .map(|old| old.info.server_type.clone());
        if let Some(t) = old_type
            && t != info.server_type
        {
            rebuild_type(&mut inner, &t);
        }
        rebuild_type(&mut inner, &info.server_type);
    }

    /// Removes a server; returns its entry if it was known.
    pub fn remove(&self, id: &str) -> Option<ServerInfo> {
        let removed = {
            let mut inner = self.write();
            let removed = inner.by_id.remove(id)?;
            rebuild_type(&mut inner, &removed.info.server_type);
            removed
        };
        // The entry (and its connection) is dropped here, outside the lock.
        Some(removed.info.clone())
    }

    /// The server with this id.
    pub fn get(&self, id: &str) -> Option<ServerInfo> {
        self.read().by_id.get(id).map(|e| e.info.clone())
    }

    /// All live servers of a type, sorted by id (empty if none).
    pub fn servers_of_type(&self, server_type: &str) -> Arc<[ServerInfo]> {
        self.read()
            .by_type
            .get(server_type)
            .cloned()
            .unwrap_or_else(|| Arc::from(Vec::new()))
    }

    /// Every known server, sorted by id.
    pub fn all(&self) -> Vec<ServerInfo> {
        let mut v: Vec<ServerInfo> = self.read().by_id.values().map(|e| e.info.clone()).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Number of known servers.
    pub fn len(&self) -> usize {
        self.read().by_id.len()
    }

    /// True if no server is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn entry(&self, id: &str) -> Option<Arc<PeerEntry>> {
        self.read().by_id.get(id).cloned()
    }
}

fn rebuild_type(inner: &mut Inner, server_type: &str) {
    let mut list: Vec<ServerInfo> = inner
        .by_id
        .values()
        .filter(|e| e.info.server_type == server_type)
        .map(|e| e.info.clone())
        .collect();
    if list.is_empty() {
        inner.by_type.remove(server_type);
        return;
    }
    list.sort_by(|a, b| a.id.cmp(&b.id));
    inner
        .by_type
        .insert(server_type.to_owned(), Arc::from(list));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_of_type_are_sorted_and_follow_add_remove() {
        let d = PeerDirectory::new();
        d.add(ServerInfo::new("chat-2", "chat", "127.0.0.1", 2));
        d.add(ServerInfo::new("chat-1", "chat", "127.0.0.1", 1));
        d.add(ServerInfo::new("gate-1", "gate", "127.0.0.1", 3));
        let ids: Vec<_> = d
            .servers_of_type("chat")
            .iter()
            .map(|s| s.id.to_string())
            .collect();
        assert_eq!(ids, ["chat-1", "chat-2"]);
        assert_eq!(d.remove("chat-1").map(|s| s.port), Some(1));
        assert_eq!(d.servers_of_type("chat").len(), 1);
        assert!(d.remove("chat-1").is_none());
        // Changing an id's type moves it.
        d.add(ServerInfo::new("chat-2", "gate", "127.0.0.1", 2));
        assert!(d.servers_of_type("chat").is_empty());
        assert_eq!(d.servers_of_type("gate").len(), 2);
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn crc32_router_is_pomelos_modulo_over_sorted_ids() {
        let servers: Vec<ServerInfo> = (1..=3)
            .map(|i| ServerInfo::new(format!("chat-{i}"), "chat", "h", 1))
            .collect();
        for key in ["alice", "bob", "room-42", ""] {
            let want = crc32fast::hash(key.as_bytes()) as usize % 3;
            assert_eq!(
                Crc32Router.route(key.as_bytes(), &servers),
                Some(servers[want].id.clone())
            );
        }
        // The standard CRC-32 check value pins the hash function (same as node's `crc`).
        assert_eq!(crc32fast::hash(b"123456789"), 0xcbf4_3926);
        assert_eq!(Crc32Router.route(b"x", &[]), None);
    }
}
