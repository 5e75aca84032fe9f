//! Where the keys of a placed server type live (pomelo's route function, made stable).
//!
//! A room, or any key that a type's route key names, is placed on one server of its type the
//! first time anybody routes it, and stays there: a server added later takes new keys (it has
//! the fewest), never existing ones. Only the keys of a server lost for longer than the grace
//! period move, each to the survivor with the fewest keys; a server that comes back as a new
//! process keeps its keys. Either way the placement generation grows, every server drops the
//! placements it cached, and frontends re-join their sessions' keys on the server that holds
//! them now (the app's [`crate::App::rejoin`] hook), so a room's members follow it.
//!
//! - [`PlacementTable`]: the table itself, held by the master (the cluster's one copy).
//! - [`PlacementRouter`]: each server's RPC router for a placed type: answers from its cache,
//!   asks the master (`master.place`) for a key it has not seen.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use shaddock_rpc::{PlaceFuture, Router, RpcClient, RpcError, ServerId, ServerInfo, Target};

use crate::cluster::ClusterBackend;
use crate::proto::{Moved, MovesReply, PlaceArgs, master_remote};

/// How many re-placement events the master keeps for `master.moves`; a frontend further behind
/// re-joins every key it holds.
const MOVE_LOG: usize = 64;
/// Placements a server caches per type before it forgets them all (the master still knows).
const CACHE_MAX: usize = 65_536;

/// The cluster's placements: server type → key → server id. Pure data; the master owns one.
#[derive(Debug, Default)]
pub struct PlacementTable {
    keys: HashMap<String, HashMap<Vec<u8>, String>>,
    /// Server id → how many keys it holds.
    load: HashMap<String, usize>,
    generation: u64,
    log: VecDeque<(u64, Vec<Moved>)>,
}

/// Of `candidates` (ids), the one holding the fewest keys; ties broken by the key's crc32 so
/// callers spread evenly.
fn least_loaded<'a>(
    load: &HashMap<String, usize>,
    candidates: &[&'a str],
    key: &[u8],
) -> Option<&'a str> {
    let min = candidates
        .iter()
        .map(|id| load.get(*id).copied().unwrap_or(0))
        .min()?;
    let mut tied: Vec<&str> = candidates
        .iter()
        .copied()
        .filter(|id| load.get(*id).copied().unwrap_or(0) == min)
        .collect();
    tied.sort_unstable();
    let i = crc32fast::hash(key) as usize % tied.len();
    tied.get(i).copied()
}

impl PlacementTable {
    /// The current generation (grows with every re-placement).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Where `key` of `server_type` lives, if it was placed.
    pub fn get(&self, server_type: &str, key: &[u8]) -> Option<&str> {
        self.keys.get(server_type)?.get(key).map(String::as_str)
    }

    /// How many keys `server_id` holds.
    pub fn load_of(&self, server_id: &str) -> usize {
        self.load.get(server_id).copied().unwrap_or(0)
    }

    /// Where `key` lives, placing it on the least loaded of `live` (ids of the type's live
    /// servers) if it is new. An existing placement is kept even while its server is down
    /// (calls to it fail fast until it is back or its keys are moved). `None`: a new key and
    /// no live server.
    pub fn place(&mut self, server_type: &str, key: &[u8], live: &[&str]) -> Option<String> {
        if let Some(id) = self.get(server_type, key) {
            return Some(id.to_owned());
        }
        let id = least_loaded(&self.load, live, key)?.to_owned();
        *self.load.entry(id.clone()).or_default() += 1;
        self.keys
            .entry(server_type.to_owned())
            .or_default()
            .insert(key.to_vec(), id.clone());
        Some(id)
    }

    /// Moves every key of `lost` to the least loaded of `survivors` (ids of the same type's
    /// live servers). Keys of a type with no survivor stay. Returns the moves (none: the
    /// generation does not change).
    pub fn move_from(&mut self, server_type: &str, lost: &str, survivors: &[&str]) -> Vec<Moved> {
        let survivors: Vec<&str> = survivors.iter().copied().filter(|s| *s != lost).collect();
        let Some(keys) = self.keys.get_mut(server_type) else {
            return Vec::new();
        };
        let mut moves = Vec::new();
        let mut on_lost: Vec<&Vec<u8>> = keys
            .iter()
            .filter(|(_, id)| id.as_str() == lost)
            .map(|(k, _)| k)
            .collect();
        on_lost.sort_unstable();
        let on_lost: Vec<Vec<u8>> = on_lost.into_iter().cloned().collect();
        for key in on_lost {
            let Some(to) = least_loaded(&self.load, &survivors, &key) else {
                break;
            };
            let to = to.to_owned();
            *self.load.entry(to.clone()).or_default() += 1;
            if let Some(n) = self.load.get_mut(lost) {
                *n = n.saturating_sub(1);
            }
            keys.insert(key.clone(), to.clone());
            moves.push(Moved {
                server_type: server_type.to_owned(),
                key,
                server_id: to,
            });
        }
        self.record(moves)
    }

    /// `server_id` came back as a new process: its keys stay, but their state (a room's
    /// members) is gone, so frontends must re-join them. Returns those keys as moves.
    pub fn restarted(&mut self, server_id: &str) -> Vec<Moved> {
        let mut moves: Vec<Moved> = self
            .keys
            .iter()
            .flat_map(|(t, keys)| {
                keys.iter()
                    .filter(|(_, id)| id.as_str() == server_id)
                    .map(|(k, id)| Moved {
                        server_type: t.clone(),
                        key: k.clone(),
                        server_id: id.clone(),
                    })
            })
            .collect();
        moves.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        self.record(moves)
    }

    fn record(&mut self, moves: Vec<Moved>) -> Vec<Moved> {
        if moves.is_empty() {
            return moves;
        }
        self.generation += 1;
        self.log.push_back((self.generation, moves.clone()));
        while self.log.len() > MOVE_LOG {
            self.log.pop_front();
        }
        moves
    }

    /// The generation of the latest kept move of `key` (a re-placement, or its server's
    /// restart), if any.
    pub fn moved_at(&self, server_type: &str, key: &[u8]) -> Option<u64> {
        self.log.iter().rev().find_map(|(g, moves)| {
            moves
                .iter()
                .any(|m| m.server_type == server_type && m.key == key)
                .then_some(*g)
        })
    }

    /// The moves after generation `since` (`complete: false` if some are no longer kept).
    pub fn moves_since(&self, since: u64) -> MovesReply {
        let oldest_kept = self.log.front().map_or(self.generation + 1, |(g, _)| *g);
        let complete = since >= self.generation || since + 1 >= oldest_kept;
        let moves = self
            .log
            .iter()
            .filter(|(g, _)| *g > since)
            .flat_map(|(_, m)| m.iter().cloned())
            .collect();
        MovesReply {
            generation: self.generation,
            moves,
            complete,
        }
    }
}

/// One placed type's cache on a server.
#[derive(Debug, Default)]
struct Cache {
    keys: RwLock<HashMap<Vec<u8>, ServerId>>,
    /// Keys being moved (a lost server's, in a cluster on NATS): not routed, from the cache
    /// either, until every move in progress on this server ends.
    held: RwLock<std::collections::HashSet<Vec<u8>>>,
}

impl Cache {
    /// Caches `key` on `id`, forgetting every cached key first when the cache is full (the
    /// placement table still knows them).
    fn insert(&self, key: Vec<u8>, id: ServerId) {
        let mut keys = self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if keys.len() >= CACHE_MAX {
            keys.clear();
        }
        keys.insert(key, id);
    }

    /// Whether `key` is held while a move is in progress (not routed, from the cache either).
    fn is_held(&self, key: &[u8]) -> bool {
        self.held
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(key)
    }
}

/// Every placed type's cache on this server, and the generation they belong to.
#[derive(Debug, Default)]
pub(crate) struct Placements {
    caches: RwLock<HashMap<String, Arc<Cache>>>,
    generation: Arc<AtomicU64>,
    /// In a cluster on NATS: lost servers whose keys this server is moving now. While any
    /// is, keys not in the cache are not placed (their calls fail, unacknowledged), so that
    /// no message is acknowledged in a room before every frontend has re-joined its members.
    moving: Arc<AtomicU64>,
}

impl Placements {
    /// The router of a placed type, sharing this server's cache for it.
    pub(crate) fn router(
        &self,
        server_type: &str,
        rpc: &RpcClient,
        master_id: &str,
        backend: Option<Arc<dyn ClusterBackend>>,
    ) -> PlacementRouter {
        let cache = self
            .caches
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(server_type.to_owned())
            .or_default()
            .clone();
        PlacementRouter {
            server_type: server_type.to_owned(),
            cache,
            generation: self.generation.clone(),
            rpc: rpc.clone(),
            master_id: master_id.to_owned(),
            backend,
            moving: self.moving.clone(),
        }
    }

    /// Caches where `key` of `server_type` is now (told by the noticer of a loss).
    pub(crate) fn remember(&self, server_type: &str, key: &[u8], server_id: &str) {
        let cache = self
            .caches
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(server_type)
            .cloned();
        if let Some(cache) = cache {
            cache.insert(key.to_vec(), ServerId::from(server_id.to_owned()));
            if self.moving.load(Ordering::SeqCst) > 0 {
                cache
                    .held
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(key.to_vec());
            }
        }
    }

    /// A move of a lost server's keys begins (see `moving`).
    pub(crate) fn begin_move(&self) {
        self.moving.fetch_add(1, Ordering::SeqCst);
    }

    /// A move begun with [`Self::begin_move`] ends.
    pub(crate) fn end_move(&self) {
        let before = self
            .moving
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if before == Ok(1) {
            for cache in self
                .caches
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .values()
            {
                cache
                    .held
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clear();
            }
        }
    }

    /// Every cached placement: (type, key, server id).
    pub(crate) fn cached(&self) -> Vec<(String, Vec<u8>, String)> {
        let mut out = Vec::new();
        for (t, cache) in self
            .caches
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            for (k, id) in cache
                .keys
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
            {
                out.push((t.clone(), k.clone(), id.as_str().to_owned()));
            }
        }
        out
    }

    /// Drops every cached placement on `server_id` (lost) and returns them: (type, key).
    pub(crate) fn forget_server(&self, server_id: &str) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for (t, cache) in self
            .caches
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            cache
                .keys
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .retain(|k, id| {
                    let on_lost = id.as_str() == server_id;
                    if on_lost {
                        out.push((t.clone(), k.clone()));
                    }
                    !on_lost
                });
        }
        out
    }

    /// A snapshot with placement generation `g` arrived: if it is new, every cached placement
    /// is dropped (some may have moved). Returns the generation it replaced when it was new.
    pub(crate) fn advance(&self, g: u64) -> Option<u64> {
        let old = self.generation.fetch_max(g, Ordering::SeqCst);
        if g <= old {
            return None;
        }
        for cache in self
            .caches
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
        {
            cache
                .keys
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clear();
        }
        Some(old)
    }
}

/// The RPC router of a placed server type: a key's server comes from the cluster's placement
/// table (asked once, then cached until the placement generation changes). A cached server
/// that is down is still answered, so its calls fail fast instead of going elsewhere.
pub struct PlacementRouter {
    server_type: String,
    cache: Arc<Cache>,
    generation: Arc<AtomicU64>,
    rpc: RpcClient,
    master_id: String,
    /// In a cluster on NATS: placements come from the backend, not the master.
    backend: Option<Arc<dyn ClusterBackend>>,
    /// Shared with [`Placements`]: moves in progress on this server.
    moving: Arc<AtomicU64>,
}

impl std::fmt::Debug for PlacementRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlacementRouter")
            .field("server_type", &self.server_type)
            .field("on_backend", &self.backend.is_some())
            .finish_non_exhaustive()
    }
}

impl Router for PlacementRouter {
    fn route(&self, key: &[u8], _servers: &[ServerInfo]) -> Option<ServerId> {
        if self.cache.is_held(key) {
            return None;
        }
        self.cache
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    fn place(&self, key: &[u8]) -> Option<PlaceFuture> {
        let args = PlaceArgs {
            server_type: self.server_type.clone(),
            key: key.to_vec(),
            lookup_only: false,
        };
        let cache = self.cache.clone();
        if let Some(backend) = self.backend.clone() {
            let moving = self.moving.load(Ordering::SeqCst) > 0 || self.cache.is_held(key);
            return Some(Box::pin(async move {
                let no_server = || RpcError::NoServer {
                    server_type: args.server_type.clone(),
                };
                if moving {
                    return Err(no_server());
                }
                let id = match backend.place(&args.server_type, &args.key).await {
                    Ok(Some(id)) => ServerId::from(id),
                    Ok(None) => return Err(no_server()),
                    Err(e) => {
                        tracing::warn!(server_type = %args.server_type, cause = %e, "cannot place a key on the cluster backend");
                        return Err(no_server());
                    }
                };
                cache.insert(args.key.clone(), id.clone());
                Ok(id)
            }));
        }
        let generation = self.generation.clone();
        let rpc = self.rpc.clone();
        let master = self.master_id.clone();
        Some(Box::pin(async move {
            let key = args.key.clone();
            let server_type = args.server_type.clone();
            let reply = master_remote::Client::new(&rpc)
                .place(Target::server(&master), args)
                .await
                .map_err(|e| match e {
                    RpcError::Remote { .. } => RpcError::NoServer { server_type },
                    e => e,
                })?;
            let id = ServerId::from(reply.server_id);
            // An answer older than the placements this server knows may be stale: use it for
            // this call only.
            if reply.generation >= generation.load(Ordering::SeqCst) {
                cache.insert(key, id.clone());
            }
            Ok(id)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rooms(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("room{i}").into_bytes()).collect()
    }

    #[test]
    fn keys_spread_and_stay_when_a_server_is_added() {
        let mut t = PlacementTable::default();
        let three = ["chat-1", "chat-2", "chat-3"];
        let before: Vec<String> = rooms(300)
            .iter()
            .map(|r| t.place("chat", r, &three).unwrap())
            .collect();
        for id in three {
            assert_eq!(t.load_of(id), 100, "{id}");
        }
        // A fourth server: no existing key moves, and it takes the new ones until even.
        let four = ["chat-1", "chat-2", "chat-3", "chat-4"];
        let again: Vec<String> = rooms(300)
            .iter()
            .map(|r| t.place("chat", r, &four).unwrap())
            .collect();
        assert_eq!(again, before);
        for i in 300..400 {
            assert_eq!(
                t.place("chat", format!("room{i}").as_bytes(), &four)
                    .unwrap(),
                "chat-4"
            );
        }
        assert_eq!(t.generation(), 0);
        // Nothing live and a new key: nowhere to place it; an old key keeps its server.
        assert_eq!(t.place("chat", b"new", &[]), None);
        assert_eq!(
            t.place("chat", b"room0", &[]).as_deref(),
            Some(before[0].as_str())
        );
    }

    #[test]
    fn only_a_lost_servers_keys_move_and_only_to_survivors() {
        let mut t = PlacementTable::default();
        let three = ["chat-1", "chat-2", "chat-3"];
        let all = rooms(300);
        let before: Vec<String> = all
            .iter()
            .map(|r| t.place("chat", r, &three).unwrap())
            .collect();
        let moves = t.move_from("chat", "chat-2", &["chat-1", "chat-3"]);
        assert_eq!(moves.len(), 100);
        assert_eq!(t.generation(), 1);
        for (r, was) in all.iter().zip(&before) {
            let now = t.get("chat", r).unwrap();
            if was == "chat-2" {
                assert_ne!(now, "chat-2");
                assert!(moves.iter().any(|m| &m.key == r && m.server_id == now));
            } else {
                assert_eq!(now, was, "a survivor's key moved");
            }
        }
        assert_eq!(t.load_of("chat-2"), 0);
        assert_eq!(t.load_of("chat-1") + t.load_of("chat-3"), 300);
        // chat-2 comes back: nothing moves back to it, new keys go to it first.
        let snapshot: Vec<String> = all
            .iter()
            .map(|r| t.get("chat", r).unwrap().to_owned())
            .collect();
        assert_eq!(t.place("chat", b"fresh", &three).as_deref(), Some("chat-2"));
        let after: Vec<String> = all
            .iter()
            .map(|r| t.get("chat", r).unwrap().to_owned())
            .collect();
        assert_eq!(after, snapshot);
        // No survivor: the keys stay where they are.
        let mut lone = PlacementTable::default();
        lone.place("chat", b"r", &["chat-1"]);
        assert!(lone.move_from("chat", "chat-1", &["chat-1"]).is_empty());
        assert_eq!(lone.get("chat", b"r"), Some("chat-1"));
        assert_eq!(lone.generation(), 0);
    }

    #[test]
    fn moves_are_kept_for_callers_behind() {
        let mut t = PlacementTable::default();
        t.place("chat", b"a", &["c1"]);
        t.place("chat", b"b", &["c2"]);
        assert!(t.moves_since(0).complete);
        assert!(t.moves_since(0).moves.is_empty());
        let restarted = t.restarted("c1");
        assert_eq!(restarted.len(), 1);
        assert_eq!(restarted[0].server_id, "c1");
        t.move_from("chat", "c2", &["c1"]);
        let r = t.moves_since(0);
        assert!(r.complete);
        assert_eq!(r.generation, 2);
        assert_eq!(r.moves.len(), 2);
        assert_eq!(t.moves_since(1).moves.len(), 1);
        assert!(t.moves_since(2).moves.is_empty());
        // Far behind: more events than the log keeps.
        for _ in 0..MOVE_LOG + 5 {
            t.restarted("c1");
        }
        assert!(!t.moves_since(0).complete);
        assert!(t.moves_since(t.generation() - 1).complete);
    }
}
