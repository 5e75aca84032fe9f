//! The channel service of a backend: named groups of `(uid, frontend id)` members and pushes
//! to them, grouped by frontend.
//!
//! A push encodes the PUSH package **once** (route compressed by the app's dictionary) and
//! sends one `sessionRemote.push` RPC per frontend that has members, carrying those bytes and
//! the member uids there; the frontend queues the same buffer to each session. A broadcast to
//! 10 000 members on 2 connectors is 2 RPCs.
//!
//! An app-wide [`ChannelService::broadcast`] (every session of every frontend of a type) is one
//! `sessionRemote.broadcast` RPC per frontend on one machine; in a cluster on NATS it is **one**
//! NATS message ([`ClusterBackend::broadcast`]) whatever the number of frontends, which each
//! frontend reads from its push subscription and queues to its sessions as the RPC would.
//!
//! A channel exists from its first member's join to its last member's leave: the service
//! removes it when it empties, so a backend's memory follows the channels in use, not every
//! channel ever used. Joins and leaves hold the service's lock for the map lookup and the
//! member change, so a join never lands in a channel a concurrent leave has just removed.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use serde_json::Value;
use shaddock_rpc::{RpcClient, RpcError, Target};

use crate::cluster::{ClusterBackend, ClusterError};
use crate::context::ClusterView;
use crate::metrics::ClusterPushMetrics;
use shaddock_core::sys::{PushArgs, session_remote};
use shaddock_protocol::BodyCodec;
use shaddock_protocol::message::{Message, MessageRoute};

/// Why a push could not be sent at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    /// The message could not be encoded (route over 255 bytes, body too large).
    #[error("cannot encode push on route `{route}`: {message}")]
    Encode {
        /// The route.
        route: String,
        /// The encoder's message.
        message: String,
    },
    /// The RPC to the frontend failed.
    #[error("push to frontend `{frontend_id}` failed: {source}")]
    Rpc {
        /// The frontend.
        frontend_id: String,
        /// The error.
        source: RpcError,
    },
    /// A cluster on NATS could not publish the broadcast (the package over the NATS max
    /// payload: [`ClusterError::PushTooLarge`]; NATS unreachable). Nothing was sent.
    #[error("broadcast on route `{route}` to frontends `{frontend_type}` not published: {source}")]
    Cluster {
        /// The route.
        route: String,
        /// The frontend type.
        frontend_type: String,
        /// The backend's error.
        source: ClusterError,
    },
}

/// Outcome of a push to several frontends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PushSummary {
    /// RPCs made (one per frontend).
    pub rpcs: usize,
    /// Messages published on the cluster's NATS subjects (a broadcast in a cluster on NATS:
    /// 1, and no RPC).
    pub published: usize,
    /// Sessions the message was queued for, as the frontends reported.
    pub sent: u64,
    /// Frontends the push could not reach, with the reason.
    pub failed: Vec<(String, String)>,
}

/// Encodes a PUSH package once with the app's codec (the same one its frontends use): the route
/// compressed when the dictionary has it, the body as protobuf when serverProtos has the route.
///
/// # Errors
/// [`PushError::Encode`].
pub fn encode_push(codec: &BodyCodec, route: &str, body: &Value) -> Result<Bytes, PushError> {
    codec
        .push_package(route, body)
        .map_err(|e| PushError::Encode {
            route: route.to_owned(),
            message: e.to_string(),
        })
}

/// Encodes a PUSH package once, as [`encode_push`] does, from the body's JSON text: `text`
/// must be the text [`shaddock_protocol::json::to_vec`] writes for the body (`JSON.stringify`
/// form), which then goes out as it is; only a route the codec's serverProtos has is parsed
/// (to encode it as protobuf). Saves building a [`Value`] for a body written directly.
///
/// # Errors
/// [`PushError::Encode`] (for a protobuf route, also text that is not JSON).
pub fn encode_push_json_text(
    codec: &BodyCodec,
    route: &str,
    text: Bytes,
) -> Result<Bytes, PushError> {
    let encode_err = |message: String| PushError::Encode {
        route: route.to_owned(),
        message,
    };
    if codec.protos().is_some_and(|p| p.has_server_route(route)) {
        let body =
            shaddock_protocol::json::from_slice(&text).map_err(|e| encode_err(e.to_string()))?;
        return encode_push(codec, route, &body);
    }
    // As `BodyCodec::push_package` does with the JSON it encodes.
    let wire_route = match codec.dictionary().and_then(|d| d.code(route)) {
        Some(code) => MessageRoute::Code(code),
        None => MessageRoute::name(route.to_owned()),
    };
    let msg = Message::push(wire_route, text);
    let mut dst = BytesMut::with_capacity(msg.encoded_len() + 4);
    msg.encode_package(&mut dst)
        .map_err(|e| encode_err(e.to_string()))?;
    Ok(dst.freeze())
}

#[derive(Clone)]
pub(crate) struct Pusher {
    rpc: RpcClient,
    codec: BodyCodec,
    cluster: ClusterView,
    nats: Option<NatsPushes>,
}

/// In a cluster on NATS: where app-wide broadcasts are published, and their counters.
#[derive(Clone)]
pub(crate) struct NatsPushes {
    pub(crate) backend: std::sync::Arc<dyn ClusterBackend>,
    pub(crate) metrics: ClusterPushMetrics,
}

/// How a push goes to each frontend.
#[derive(Clone, Copy)]
enum How {
    /// A `push` RPC to the listed uids, its answer awaited.
    Push,
    /// A `broadcast` RPC (every session of the frontend), its answer awaited.
    Broadcast,
    /// A one-way `push` notify, awaited only until its frame is queued on the frontend's
    /// link (at once when the link is up with room in its queue): no answer, `sent` stays 0.
    Notify,
}

impl Pusher {
    fn encode(&self, route: &str, body: &Value) -> Result<Bytes, PushError> {
        encode_push(&self.codec, route, body)
    }

    /// One RPC per frontend, concurrently, sent as `how` says.
    async fn send(&self, per_frontend: Vec<(String, PushArgs)>, how: How) -> PushSummary {
        let stub = session_remote::Client::new(&self.rpc);
        let calls = per_frontend.into_iter().map(|(fid, args)| {
            let stub = stub.clone();
            async move {
                let target = Target::server(&fid);
                let r = match how {
                    How::Push => stub.push(target, args).await.map(|r| r.sent),
                    How::Broadcast => stub.broadcast(target, args).await.map(|r| r.sent),
                    How::Notify => stub.notify().push(target, args).await.map(|()| 0),
                };
                (fid, r)
            }
        });
        let mut summary = PushSummary::default();
        for (fid, r) in futures_util::future::join_all(calls).await {
            summary.rpcs += 1;
            match r {
                Ok(sent) => summary.sent += u64::from(sent),
                Err(e) => {
                    if self.rpc.is_departing(&fid) {
                        // The cluster is stopping and that frontend with it.
                        tracing::debug!(frontend = %fid, cause = %e, "channel push not delivered: the frontend is leaving");
                    } else {
                        tracing::warn!(frontend = %fid, cause = %e, "channel push failed");
                    }
                    summary.failed.push((fid, e.to_string()));
                }
            }
        }
        summary
    }

    /// One `push` (RPC or notify, as `how` says) of `package` per group (frontend).
    async fn to_groups(&self, package: Bytes, groups: &[Group], how: How) -> PushSummary {
        let per = groups
            .iter()
            .map(|g| {
                (
                    g.frontend_id.clone(),
                    PushArgs {
                        package: package.clone(),
                        uid_list: g.uid_list.clone(),
                        uids: g.unpacked.clone(),
                        ..PushArgs::default()
                    },
                )
            })
            .collect();
        self.send(per, how).await
    }
}

/// A channel's members on one frontend, ready to send.
struct Group {
    frontend_id: String,
    /// The uids, each followed by NUL (`PushArgs::uid_list`): one shared buffer per push.
    uid_list: Bytes,
    /// Uids that contain NUL themselves, sent one string each (normally none).
    unpacked: Vec<String>,
}

/// `(uid, frontend id)` pairs grouped by frontend (in frontend id order).
fn groups_of<'a>(members: impl IntoIterator<Item = (&'a str, &'a str)>) -> Arc<[Group]> {
    let mut by_frontend: BTreeMap<&str, (Vec<u8>, Vec<String>)> = BTreeMap::new();
    for (uid, fid) in members {
        let (packed, unpacked) = by_frontend.entry(fid).or_default();
        if uid.contains('\0') {
            unpacked.push(uid.to_owned());
        } else {
            packed.extend_from_slice(uid.as_bytes());
            packed.push(0);
        }
    }
    by_frontend
        .into_iter()
        .map(|(fid, (packed, unpacked))| Group {
            frontend_id: fid.to_owned(),
            uid_list: Bytes::from(packed),
            unpacked,
        })
        .collect()
}

/// One channel's members and their grouping by frontend.
#[derive(Default)]
struct Members {
    /// uid -> frontend id.
    by_uid: BTreeMap<String, String>,
    /// `by_uid` grouped by frontend, built on the first push after a membership change:
    /// pushes outnumber joins and leaves, and rebuilding costs a string copy per member.
    groups: Option<Arc<[Group]>>,
    /// Taken out of the service's map (set under the map's lock): a [`Channel`] handle that
    /// kept these members looks its name up again.
    removed: bool,
}

impl Members {
    fn groups(&mut self) -> Arc<[Group]> {
        let by_uid = &self.by_uid;
        self.groups
            .get_or_insert_with(|| groups_of(by_uid.iter().map(|(u, f)| (u.as_str(), f.as_str()))))
            .clone()
    }

    /// Inserts or moves `uid` to `frontend_id`; `true` if that changed anything.
    fn insert(&mut self, uid: &str, frontend_id: &str) -> bool {
        if self.by_uid.get(uid).map(String::as_str) == Some(frontend_id) {
            return false;
        }
        self.by_uid.insert(uid.to_owned(), frontend_id.to_owned());
        self.groups = None;
        true
    }
}

/// The channels of a service. Lock order: this map, then a channel's [`Members`].
///
/// Invariant: a name is in the map exactly while its channel has members (or since
/// [`ChannelService::create`]). Every change of membership holds the map's lock, so a join
/// can never land in a channel that a concurrent leave has just removed.
type Rooms = HashMap<String, Arc<Mutex<Members>>>;

/// The map keeps at least this many slots; below, it is not shrunk.
const MIN_CAPACITY: usize = 1024;

struct Shared {
    channels: Mutex<Rooms>,
    pusher: Pusher,
}

impl Shared {
    /// The members of `name` right now (`None`: no such channel). The map's lock is released
    /// before the caller locks the members.
    fn find(&self, name: &str) -> Option<Arc<Mutex<Members>>> {
        lock(&self.channels).get(name).cloned()
    }
}

/// A named group of users (pomelo's channel): a handle on the channel `name` of a
/// [`ChannelService`]. Cheap to clone.
///
/// The handle names the channel, it does not own it: a channel exists (in
/// [`ChannelService::get`] and [`ChannelService::names`]) from its first member's join to its
/// last member's leave, and an [`add`](Self::add) through an old handle after the channel was
/// removed joins the channel of that name again — never a removed one.
#[derive(Clone)]
pub struct Channel {
    name: Arc<str>,
    shared: Arc<Shared>,
    /// The members the service's map had under `name` when [`ChannelService::get`] made this
    /// handle: read without a map lookup while they are still the map's (not `removed`).
    found: Option<Arc<Mutex<Members>>>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("name", &self.name)
            .field("members", &self.len())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Channel {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn service(&self) -> ChannelService {
        ChannelService {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Reads the members (none if the channel does not exist right now).
    fn read<R>(&self, f: impl FnOnce(&mut Members) -> R) -> R {
        if let Some(found) = &self.found {
            let mut m = lock(found);
            // Not removed: still the map's entry for the name, what a lookup would find.
            if !m.removed {
                return f(&mut m);
            }
        }
        match self.shared.find(&self.name) {
            Some(m) => f(&mut lock(&m)),
            None => f(&mut Members::default()),
        }
    }

    /// Adds `uid` connected on `frontend_id` (moves it there if it was a member on another
    /// frontend); `false` if it was already a member there. The same as
    /// [`ChannelService::join`].
    pub fn add(&self, uid: &str, frontend_id: &str) -> bool {
        self.service().join(&self.name, uid, frontend_id)
    }

    /// Removes `uid` (if it is a member on `frontend_id`); `false` if it was not. The last
    /// member's leave removes the channel (see [`ChannelService::leave`]).
    pub fn leave(&self, uid: &str, frontend_id: &str) -> bool {
        self.service().leave(&self.name, uid, frontend_id).is_some()
    }

    /// The member uids, sorted.
    pub fn uids(&self) -> Vec<String> {
        self.read(|m| m.by_uid.keys().cloned().collect())
    }

    /// The members as `(uid, frontend id)`, sorted by uid.
    pub fn members(&self) -> Vec<(String, String)> {
        self.read(|m| {
            m.by_uid
                .iter()
                .map(|(u, f)| (u.clone(), f.clone()))
                .collect()
        })
    }

    /// The frontend `uid` is on, if it is a member.
    pub fn member(&self, uid: &str) -> Option<String> {
        self.read(|m| m.by_uid.get(uid).cloned())
    }

    /// Whether `uid` is a member ([`member`](Self::member) without the frontend id's copy).
    pub fn has_member(&self, uid: &str) -> bool {
        self.read(|m| m.by_uid.contains_key(uid))
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.read(|m| m.by_uid.len())
    }

    /// True if it has no members.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pushes `body` on `route` to every member: encoded once, one RPC per frontend.
    ///
    /// # Errors
    /// [`PushError::Encode`]; unreachable frontends are reported in the summary.
    pub async fn push(&self, route: &str, body: &Value) -> Result<PushSummary, PushError> {
        let package = self.shared.pusher.encode(route, body)?;
        Ok(self.push_package(package, How::Push).await)
    }

    /// [`push`](Self::push) of a body given as its JSON text, written as
    /// [`shaddock_protocol::json::to_vec`] writes it: the clients get the same bytes, and no
    /// [`Value`] is built (see [`encode_push_json_text`]).
    ///
    /// # Errors
    /// [`PushError::Encode`]; unreachable frontends are reported in the summary.
    pub async fn push_json_text(&self, route: &str, text: Bytes) -> Result<PushSummary, PushError> {
        let package = encode_push_json_text(&self.shared.pusher.codec, route, text)?;
        Ok(self.push_package(package, How::Push).await)
    }

    /// Pushes `body` on `route` to every member without waiting for the frontends to answer
    /// (pinus's `channel.pushMessage` without a callback): encoded once, one one-way `push`
    /// per frontend, awaited only until it is queued on the frontend's link, which is at
    /// once when the link is up with room in its queue (no task, no timer, no answer to
    /// read). A handler's answer then goes out after its pushes. The summary has `rpcs` and
    /// `failed` (a frontend that could not be reached, also logged); `sent` is not known: 0.
    ///
    /// # Errors
    /// [`PushError::Encode`].
    pub async fn push_detached(&self, route: &str, body: &Value) -> Result<PushSummary, PushError> {
        let package = self.shared.pusher.encode(route, body)?;
        Ok(self.push_package(package, How::Notify).await)
    }

    /// [`push_json_text`](Self::push_json_text) without waiting for the frontends to answer,
    /// as [`push_detached`](Self::push_detached).
    ///
    /// # Errors
    /// [`PushError::Encode`].
    pub async fn push_json_text_detached(
        &self,
        route: &str,
        text: Bytes,
    ) -> Result<PushSummary, PushError> {
        let package = encode_push_json_text(&self.shared.pusher.codec, route, text)?;
        Ok(self.push_package(package, How::Notify).await)
    }

    /// One push of `package` per frontend of the members.
    async fn push_package(&self, package: Bytes, how: How) -> PushSummary {
        let groups = self.read(Members::groups);
        self.shared.pusher.to_groups(package, &groups, how).await
    }
}

/// [`ChannelService::try_join`] refused: the uid is already a member.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{uid}` is already a member of channel `{channel}` (on frontend `{frontend_id}`)")]
#[non_exhaustive]
pub struct AlreadyMember {
    /// The channel.
    pub channel: String,
    /// The uid.
    pub uid: String,
    /// The frontend it is a member on.
    pub frontend_id: String,
}

/// The channels of one backend process (pomelo's `channelService`). Cheap to clone.
///
/// A channel is created by its first member's join and removed by its last member's leave,
/// so memory follows the channels in use, not every channel ever used. Joins and leaves of
/// every channel go through one lock (held for a map lookup and a member insert or removal,
/// never across an await), which is what makes "remove the channel when it empties" safe
/// against a concurrent join of that channel.
#[derive(Clone)]
pub struct ChannelService {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ChannelService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelService")
            .field("channels", &self.len())
            .finish()
    }
}

impl ChannelService {
    pub(crate) fn new(
        rpc: RpcClient,
        codec: BodyCodec,
        cluster: ClusterView,
        nats: Option<NatsPushes>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                channels: Mutex::default(),
                pusher: Pusher {
                    rpc,
                    codec,
                    cluster,
                    nats,
                },
            }),
        }
    }

    /// A handle on the channel `name`. It creates nothing: the channel comes into being with
    /// its first member ([`join`](Self::join) or [`Channel::add`]). Use
    /// [`create`](Self::create) for an empty channel that stays until destroyed.
    pub fn get_or_create(&self, name: &str) -> Channel {
        Channel {
            name: Arc::from(name),
            shared: Arc::clone(&self.shared),
            found: None,
        }
    }

    /// Creates the channel `name` empty if it does not exist (pomelo's `createChannel`): it
    /// stays until [`destroy`](Self::destroy)ed or until a member joins and the last member
    /// leaves.
    pub fn create(&self, name: &str) -> Channel {
        lock(&self.shared.channels)
            .entry(name.to_owned())
            .or_default();
        self.get_or_create(name)
    }

    /// The channel `name`, if it exists (has members, or was [`create`](Self::create)d).
    pub fn get(&self, name: &str) -> Option<Channel> {
        let found = lock(&self.shared.channels).get(name).cloned()?;
        Some(Channel {
            found: Some(found),
            ..self.get_or_create(name)
        })
    }

    /// Adds `uid` connected on `frontend_id` to the channel `name`, creating the channel if
    /// needed (moves it there if it was a member on another frontend); `false` if it was
    /// already a member there.
    pub fn join(&self, name: &str, uid: &str, frontend_id: &str) -> bool {
        let mut rooms = lock(&self.shared.channels);
        if let Some(m) = rooms.get(name) {
            return lock(m).insert(uid, frontend_id);
        }
        let mut m = Members::default();
        m.insert(uid, frontend_id);
        rooms.insert(name.to_owned(), Arc::new(Mutex::new(m)));
        true
    }

    /// Adds `uid` on `frontend_id` to the channel `name` (created if needed) unless it is
    /// already a member there or on another frontend; check and insert are one step.
    ///
    /// # Errors
    /// [`AlreadyMember`], naming the frontend it is a member on.
    pub fn try_join(&self, name: &str, uid: &str, frontend_id: &str) -> Result<(), AlreadyMember> {
        let mut rooms = lock(&self.shared.channels);
        let members = rooms.entry(name.to_owned()).or_default();
        let mut m = lock(members);
        if let Some(fid) = m.by_uid.get(uid) {
            return Err(AlreadyMember {
                channel: name.to_owned(),
                uid: uid.to_owned(),
                frontend_id: fid.clone(),
            });
        }
        m.insert(uid, frontend_id);
        Ok(())
    }

    /// Removes `uid` (if it is a member on `frontend_id`) from the channel `name`, and removes
    /// the channel when that was its last member. `None` if it was not a member there;
    /// otherwise the number of members left (0: the channel is gone).
    pub fn leave(&self, name: &str, uid: &str, frontend_id: &str) -> Option<usize> {
        let mut rooms = lock(&self.shared.channels);
        let left = {
            let mut m = lock(rooms.get(name)?);
            if m.by_uid.get(uid).map(String::as_str) != Some(frontend_id) {
                return None;
            }
            m.by_uid.remove(uid);
            m.groups = None;
            // Removed below, under the map's lock still held.
            m.removed = m.by_uid.is_empty();
            m.by_uid.len()
        };
        if left == 0 {
            rooms.remove(name);
            shrink(&mut rooms);
        }
        Some(left)
    }

    /// Removes the channel `name` and all its members; `false` if there was none.
    pub fn destroy(&self, name: &str) -> bool {
        let mut rooms = lock(&self.shared.channels);
        let found = rooms
            .remove(name)
            .inspect(|m| lock(m).removed = true)
            .is_some();
        shrink(&mut rooms);
        found
    }

    /// The names of every channel, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.shared.channels).keys().cloned().collect();
        v.sort();
        v
    }

    /// Number of channels.
    pub fn len(&self) -> usize {
        lock(&self.shared.channels).len()
    }

    /// True if there is no channel.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pushes to a list of `(uid, frontend id)`: encoded once, one RPC per frontend
    /// (pomelo's `pushMessageByUids`).
    ///
    /// # Errors
    /// [`PushError::Encode`].
    pub async fn push_to_uids(
        &self,
        route: &str,
        body: &Value,
        members: &[(String, String)],
    ) -> Result<PushSummary, PushError> {
        self.push_to_members(route, body, members, How::Push).await
    }

    /// [`ChannelService::push_to_uids`] without waiting for the frontends to answer, as
    /// [`Channel::push_detached`] (pinus's `pushMessageByUids` without a callback).
    ///
    /// # Errors
    /// [`PushError::Encode`].
    pub async fn push_to_uids_detached(
        &self,
        route: &str,
        body: &Value,
        members: &[(String, String)],
    ) -> Result<PushSummary, PushError> {
        self.push_to_members(route, body, members, How::Notify)
            .await
    }

    /// Encodes once and pushes to the `(uid, frontend id)` list, one push per frontend.
    async fn push_to_members(
        &self,
        route: &str,
        body: &Value,
        members: &[(String, String)],
        how: How,
    ) -> Result<PushSummary, PushError> {
        let package = self.shared.pusher.encode(route, body)?;
        let groups = groups_of(members.iter().map(|(u, f)| (u.as_str(), f.as_str())));
        Ok(self.shared.pusher.to_groups(package, &groups, how).await)
    }

    /// Pushes to every session of every frontend of `frontend_type` (pomelo's
    /// `broadcast`): encoded once, one RPC per frontend; in a cluster on NATS, one NATS
    /// message for all of them (`published` 1, `rpcs` 0; `sent` is not known there: 0).
    ///
    /// # Errors
    /// [`PushError::Encode`]; on NATS [`PushError::Cluster`] (logged and counted in
    /// `shaddock_cluster_broadcast_errors_total`), e.g. a package over the max payload.
    pub async fn broadcast(
        &self,
        frontend_type: &str,
        route: &str,
        body: &Value,
    ) -> Result<PushSummary, PushError> {
        let package = self.shared.pusher.encode(route, body)?;
        if let Some(nats) = &self.shared.pusher.nats {
            return match nats.backend.broadcast(frontend_type, package).await {
                Ok(()) => {
                    nats.metrics.broadcasts_published.inc();
                    Ok(PushSummary {
                        published: 1,
                        ..PushSummary::default()
                    })
                }
                Err(source) => {
                    nats.metrics.broadcast_errors.inc();
                    tracing::warn!(route, frontend_type, cause = %source, "broadcast not published on NATS");
                    Err(PushError::Cluster {
                        route: route.to_owned(),
                        frontend_type: frontend_type.to_owned(),
                        source,
                    })
                }
            };
        }
        let snap = self
            .shared
            .pusher
            .cluster
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let per = snap
            .servers
            .iter()
            .filter(|s| s.frontend && s.server_type == frontend_type)
            .map(|s| {
                (
                    s.id.clone(),
                    PushArgs {
                        package: package.clone(),
                        ..PushArgs::default()
                    },
                )
            })
            .collect();
        Ok(self.shared.pusher.send(per, How::Broadcast).await)
    }
}

/// Gives memory back after many channels were removed: the map is shrunk when it uses less
/// than a quarter of its slots (to twice its size, so shrinking stays rare).
fn shrink(rooms: &mut Rooms) {
    if rooms.capacity() > MIN_CAPACITY && rooms.len() * 4 < rooms.capacity() {
        rooms.shrink_to((rooms.len() * 2).max(MIN_CAPACITY));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shaddock_protocol::RouteDictionary;
    use shaddock_protocol::protobuf::Protos;
    use shaddock_rpc::RpcConfig;

    fn service() -> ChannelService {
        ChannelService::new(
            RpcClient::new(RpcConfig::default()),
            BodyCodec::default(),
            Arc::default(),
            None,
        )
    }

    /// A handle from `get` keeps reading the channel of its name after that channel was
    /// emptied (removed) and joined again, or destroyed.
    #[test]
    fn a_handle_from_get_follows_its_name_across_removals() {
        let s = service();
        s.join("room", "alice", "conn-1");
        let h = s.get("room").unwrap();
        assert!(h.has_member("alice"));
        assert_eq!(s.leave("room", "alice", "conn-1"), Some(0));
        assert!(h.is_empty() && !h.has_member("alice"));
        s.join("room", "bob", "conn-2");
        assert_eq!(h.members(), [("bob".to_owned(), "conn-2".to_owned())]);
        assert!(s.destroy("room"));
        assert!(h.is_empty());
        s.join("room", "carol", "conn-1");
        assert_eq!(h.uids(), ["carol"]);
        assert_eq!(h.member("carol").as_deref(), Some("conn-1"));
    }

    #[test]
    fn members_add_leave_destroy() {
        let s = service();
        let c = s.get_or_create("room");
        assert!(s.get("room").is_none(), "a handle alone creates nothing");
        assert!(c.add("alice", "conn-1"));
        assert!(!c.add("alice", "conn-1"));
        assert!(c.add("bob", "conn-2"));
        assert_eq!(s.get_or_create("room").len(), 2);
        assert!(!c.leave("bob", "conn-1"), "wrong frontend");
        assert!(c.leave("bob", "conn-2"));
        assert_eq!(c.members(), [("alice".to_owned(), "conn-1".to_owned())]);
        assert!(s.destroy("room"));
        assert!(s.get("room").is_none());
        assert!(c.is_empty());
        assert!(!s.destroy("room"));
        // `create` makes an empty channel that stays until destroyed or emptied by a leave.
        s.create("lobby");
        assert_eq!(s.names(), ["lobby"]);
        assert!(s.destroy("lobby"));
    }

    #[test]
    fn the_last_leave_removes_the_channel_and_an_old_handle_joins_it_again() {
        let s = service();
        let c = s.get_or_create("room");
        assert!(s.join("room", "alice", "conn-1"));
        assert!(s.join("room", "bob", "conn-2"));
        assert_eq!(s.leave("room", "bob", "conn-1"), None, "wrong frontend");
        assert_eq!(s.leave("room", "carl", "conn-1"), None, "not a member");
        assert_eq!(s.leave("nowhere", "bob", "conn-2"), None, "no such channel");
        assert_eq!(s.leave("room", "bob", "conn-2"), Some(1));
        assert_eq!(s.names(), ["room"]);
        assert_eq!(s.leave("room", "alice", "conn-1"), Some(0));
        assert!(s.get("room").is_none(), "the empty channel is removed");
        assert!(s.is_empty());
        // The handle taken before the removal: its add lands in the map's channel.
        assert!(c.add("dora", "conn-1"));
        assert_eq!(
            s.get("room").and_then(|c| c.member("dora")),
            Some("conn-1".to_owned())
        );
        assert!(c.leave("dora", "conn-1"));
        assert!(s.is_empty(), "a leave through a handle removes it too");
    }

    #[test]
    fn try_join_refuses_a_member_on_any_frontend() {
        let s = service();
        assert_eq!(s.try_join("room", "alice", "conn-1"), Ok(()));
        let e = s.try_join("room", "alice", "conn-2").unwrap_err();
        assert_eq!(e.frontend_id, "conn-1");
        assert_eq!(e.uid, "alice");
        assert_eq!(
            s.try_join("room", "alice", "conn-1")
                .unwrap_err()
                .frontend_id,
            "conn-1"
        );
        assert_eq!(s.get("room").unwrap().members().len(), 1);
        // `join` moves instead.
        assert!(s.join("room", "alice", "conn-2"));
        assert_eq!(
            s.get("room").unwrap().member("alice").as_deref(),
            Some("conn-2")
        );
    }

    #[test]
    fn many_channels_used_once_leave_a_small_map() {
        let s = service();
        for i in 0..20_000 {
            let name = format!("room{i}");
            assert!(s.join(&name, "alice", "conn-1"));
            assert_eq!(s.leave(&name, "alice", "conn-1"), Some(0));
        }
        assert!(s.is_empty());
        // All live at once, then all left: the map gives its slots back.
        for i in 0..20_000 {
            s.join(&format!("room{i}"), "alice", "conn-1");
        }
        assert_eq!(s.len(), 20_000);
        let full = lock(&s.shared.channels).capacity();
        for i in 0..20_000 {
            s.leave(&format!("room{i}"), "alice", "conn-1");
        }
        let after = lock(&s.shared.channels).capacity();
        assert!(s.is_empty());
        assert!(
            after <= 2 * MIN_CAPACITY && after < full,
            "capacity {full} -> {after}"
        );
    }

    /// A small xorshift: deterministic per thread, no dependency.
    fn next(x: &mut u64) -> u64 {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }

    #[test]
    fn concurrent_joins_and_leaves_lose_no_member_and_keep_no_empty_channel() {
        const THREADS: u64 = 8;
        const ROUNDS: usize = 4_000;
        const ROOMS: u64 = 3;
        let s = service();
        // Handles taken up front: by the time they are used their channel has been removed
        // and re-created many times.
        let old: Vec<Channel> = (0..ROOMS)
            .map(|r| s.get_or_create(&format!("room{r}")))
            .collect();
        let removals = std::sync::atomic::AtomicUsize::new(0);
        let kept: Vec<(String, String, String)> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (s, old, removals) = (&s, &old, &removals);
                    scope.spawn(move || {
                        let fid = format!("conn-{}", t % 2);
                        let mut rng = 0x9E37_79B9_7F4A_7C15 ^ (t + 1);
                        // (room, uid) joined by this thread and not left.
                        let mut mine: Vec<(String, String)> = Vec::new();
                        for i in 0..ROUNDS {
                            let r = next(&mut rng);
                            let room_ix = usize::try_from(r % ROOMS).unwrap();
                            let room = format!("room{room_ix}");
                            let uid = format!("t{t}-u{i}");
                            let added = match r >> 8 & 3 {
                                0 => old[room_ix].add(&uid, &fid),
                                1 => s.try_join(&room, &uid, &fid).is_ok(),
                                _ => s.join(&room, &uid, &fid),
                            };
                            assert!(added, "{uid} joins {room}");
                            // Right after its join the member is in the map's channel.
                            assert_eq!(
                                s.get(&room).and_then(|c| c.member(&uid)),
                                Some(fid.clone()),
                                "{uid} lost from {room}"
                            );
                            mine.push((room, uid));
                            // Keep 0..=2 members: channels empty (and are removed) often.
                            let keep = usize::try_from(r >> 16 & 3).unwrap().min(2);
                            while mine.len() > keep {
                                let ix = usize::try_from(next(&mut rng)).unwrap() % mine.len();
                                let (room, uid) = mine.swap_remove(ix);
                                let left = if r >> 20 & 1 == 0 {
                                    s.leave(&room, &uid, &fid)
                                } else {
                                    old[room[4..].parse::<usize>().unwrap()]
                                        .leave(&uid, &fid)
                                        .then_some(1)
                                };
                                assert!(left.is_some(), "{uid} was in {room}");
                                if left == Some(0) {
                                    removals.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                }
                            }
                        }
                        mine.into_iter()
                            .map(|(room, uid)| (room, uid, fid.clone()))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().expect("worker"))
                .collect()
        });
        // Every member joined and not left is in its channel, and nothing else is.
        for (room, uid, fid) in &kept {
            assert_eq!(s.get(room).and_then(|c| c.member(uid)).as_ref(), Some(fid));
        }
        let mut total = 0;
        for name in s.names() {
            let n = s.get(&name).expect("listed").len();
            assert!(n > 0, "empty channel {name} kept");
            total += n;
        }
        assert_eq!(total, kept.len());
        assert!(
            removals.into_inner() > 0,
            "the test never emptied a channel"
        );
        for (room, uid, fid) in &kept {
            assert!(s.leave(room, uid, fid).is_some());
        }
        assert!(s.is_empty(), "left: {:?}", s.names());
    }

    #[test]
    fn groups_follow_membership_changes() {
        let s = service();
        let c = s.get_or_create("room");
        let groups = |c: &Channel| {
            c.read(Members::groups)
                .iter()
                .map(|g| {
                    (
                        g.frontend_id.clone(),
                        g.uid_list.clone(),
                        g.unpacked.clone(),
                    )
                })
                .collect::<Vec<_>>()
        };
        c.add("alice", "conn-1");
        c.add("bob", "conn-2");
        c.add("carl", "conn-1");
        c.add("nul\0uid", "conn-2");
        assert_eq!(
            groups(&c),
            vec![
                (
                    "conn-1".into(),
                    Bytes::from_static(b"alice\0carl\0"),
                    vec![]
                ),
                (
                    "conn-2".into(),
                    Bytes::from_static(b"bob\0"),
                    vec!["nul\0uid".to_owned()]
                ),
            ]
        );
        // Each change drops the cached groups.
        c.leave("alice", "conn-1");
        c.add("bob", "conn-1");
        assert_eq!(
            groups(&c),
            vec![
                ("conn-1".into(), Bytes::from_static(b"bob\0carl\0"), vec![]),
                ("conn-2".into(), Bytes::new(), vec!["nul\0uid".to_owned()]),
            ]
        );
    }

    #[test]
    fn push_is_encoded_as_a_pomelo_push_package() {
        let b = encode_push(
            &BodyCodec::default(),
            "onChat",
            &serde_json::json!({"msg": "hi"}),
        )
        .unwrap();
        // DATA package type 4, then a PUSH message (flag 0x06) with a named route.
        assert_eq!(b[0], 4);
        let msg = Message::decode(b.slice(4..)).unwrap();
        assert_eq!(msg.route.as_str(), Some("onChat"));
        assert_eq!(&msg.body[..], br#"{"msg":"hi"}"#);
        let long = "r".repeat(300);
        assert!(matches!(
            encode_push(&BodyCodec::default(), &long, &Value::Null),
            Err(PushError::Encode { .. })
        ));
    }

    #[test]
    fn push_uses_the_apps_dictionary_and_protobuf_schemas() {
        // The same codec as the app's frontends: a dictionary route goes as its code, a route
        // in serverProtos gets a protobuf body (before, backend pushes were always JSON).
        let dict = RouteDictionary::new(Vec::<String>::new(), &["onChat".to_owned()]).unwrap();
        let code = dict.code("onChat").unwrap();
        let protos = Protos::from_files(
            &serde_json::json!({"onChat": {"required string msg": 1}}),
            &serde_json::json!({}),
        )
        .unwrap();
        let codec = BodyCodec::new(Some(Arc::new(dict)), Some(Arc::new(protos)));
        let b = encode_push(&codec, "onChat", &serde_json::json!({"msg": "hi"})).unwrap();
        let msg = Message::decode(b.slice(4..)).unwrap();
        assert_eq!(msg.route, MessageRoute::Code(code));
        // field 1, wire type 2, length 2, "hi"
        assert_eq!(&msg.body[..], b"\x0a\x02hi");
        // A route without a schema stays JSON.
        let b = encode_push(&codec, "onLeave", &serde_json::json!({"user": "a"})).unwrap();
        let msg = Message::decode(b.slice(4..)).unwrap();
        assert_eq!(&msg.body[..], br#"{"user":"a"}"#);
    }

    /// A body given as its JSON text makes the very package the body as a `Value` makes,
    /// with or without dictionary and protobuf schema; errors alike.
    #[test]
    fn a_push_from_json_text_is_the_push_from_the_value() {
        let dict = RouteDictionary::new(Vec::<String>::new(), &["onChat".to_owned()]).unwrap();
        let protos = Protos::from_files(
            &serde_json::json!({"onChat": {"required string msg": 1}}),
            &serde_json::json!({}),
        )
        .unwrap();
        let codecs = [
            BodyCodec::default(),
            BodyCodec::new(Some(Arc::new(dict.clone())), None),
            BodyCodec::new(Some(Arc::new(dict)), Some(Arc::new(protos))),
        ];
        let bodies = [
            serde_json::json!({"msg": "hi \"there\"\n\u{1}é", "from": "a", "target": "*"}),
            serde_json::json!({"msg": "x"}),
            serde_json::json!({"2": 1, "1": [1.5, -0.0, 1e21], "user": null}),
        ];
        for codec in &codecs {
            for route in ["onChat", "onLeave"] {
                for body in &bodies {
                    let text = Bytes::from(shaddock_protocol::json::to_vec(body));
                    assert_eq!(
                        encode_push_json_text(codec, route, text).unwrap(),
                        encode_push(codec, route, body).unwrap(),
                        "{route} {body}"
                    );
                }
            }
            let long = "r".repeat(300);
            assert!(matches!(
                encode_push_json_text(codec, &long, Bytes::from_static(b"null")),
                Err(PushError::Encode { .. })
            ));
        }
    }

    /// A frontend (`connector-1`: a client port whose `connector.h.enter` binds the body's
    /// uid, and its `sessionRemote` on an RPC port) and a channel service whose RPC client
    /// knows it. Returns the client address, the service and the shutdown token.
    async fn frontend_and_service() -> (
        std::net::SocketAddr,
        ChannelService,
        tokio_util::sync::CancellationToken,
    ) {
        use shaddock_connector::{ConnectorConfig, Frontend, Session};
        use shaddock_core::HandlerError;
        use shaddock_rpc::{Registry, RpcServer, ServerInfo};
        use tokio::net::TcpListener;

        let shutdown = tokio_util::sync::CancellationToken::new();
        let mut config = ConnectorConfig::default();
        config.frontend_id = "connector-1".into();
        let frontend = Frontend::builder(config)
            .handler("connector.h.enter", |s: Session, v: Value| async move {
                s.bind(v["uid"].as_str().unwrap_or_default())
                    .map_err(|e| HandlerError::internal(e.to_string()))?;
                Ok::<_, HandlerError>(serde_json::json!({"code": 200}))
            })
            .build()
            .expect("frontend");
        let client_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client_addr = client_l.local_addr().unwrap();
        tokio::spawn({
            let (f, s) = (frontend.clone(), shutdown.clone());
            async move { f.serve(client_l, s).await }
        });
        let rpc_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let rpc_port = rpc_l.local_addr().unwrap().port();
        let mut registry = Registry::new();
        registry.add(frontend.session_remote()).unwrap();
        tokio::spawn(RpcServer::new(registry, RpcConfig::default()).serve(rpc_l, shutdown.clone()));
        let rpc = RpcClient::new(RpcConfig::default());
        rpc.directory().add(ServerInfo::new(
            "connector-1",
            "connector",
            "127.0.0.1",
            rpc_port,
        ));
        let service = ChannelService::new(rpc, BodyCodec::default(), Arc::default(), None);
        (client_addr, service, shutdown)
    }

    #[tokio::test]
    async fn detached_pushes_reach_the_member_in_the_order_they_were_made() {
        use shaddock_client::{Client, ClientConfig, Transport};
        const STEP: std::time::Duration = std::time::Duration::from_secs(10);
        // Under the client's subscription capacity (256): this test reads them at the end.
        const N: u64 = 200;
        let (addr, s, shutdown) = frontend_and_service().await;
        let (client, _events) =
            Client::connect(&addr.to_string(), Transport::Tcp, ClientConfig::default())
                .await
                .unwrap();
        let mut chat = client.on("onChat");
        let r = client
            .request("connector.h.enter", &serde_json::json!({"uid": "alice"}))
            .await
            .unwrap();
        assert_eq!(r["code"], 200, "{r}");
        let c = s.get_or_create("room");
        c.add("alice", "connector-1");
        // Back to back: the first one waits for the link's connect, the others are queued at
        // once; none waits for an answer.
        for n in 0..N {
            let sum = c
                .push_detached("onChat", &serde_json::json!({"n": n}))
                .await
                .unwrap();
            assert_eq!((sum.rpcs, sum.sent, sum.failed.len()), (1, 0, 0), "{sum:?}");
        }
        let sum = s
            .push_to_uids_detached(
                "onChat",
                &serde_json::json!({"n": N}),
                &[("alice".to_owned(), "connector-1".to_owned())],
            )
            .await
            .unwrap();
        assert_eq!((sum.rpcs, sum.failed.len()), (1, 0), "{sum:?}");
        for n in 0..=N {
            let p = tokio::time::timeout(STEP, chat.recv())
                .await
                .unwrap_or_else(|_| panic!("push {n} not received within 10 s"))
                .expect("the client is open");
            let body: Value = serde_json::from_slice(&p.body).unwrap();
            assert_eq!(body["n"], n, "push {n} out of order: {body}");
        }
        assert_eq!(chat.dropped(), 0);
        shutdown.cancel();
    }

    /// Awaited or detached, a push to frontends the directory does not know is one failure
    /// per frontend, not per member, and does not hang.
    #[tokio::test]
    async fn push_to_unknown_frontends_reports_one_failure_per_frontend() {
        let s = service();
        let c = s.get_or_create("room");
        for i in 0..100 {
            c.add(&format!("u{i}"), if i % 2 == 0 { "f-a" } else { "f-b" });
        }
        let body = serde_json::json!({});
        let within = std::time::Duration::from_secs(5);
        let awaited = tokio::time::timeout(within, c.push("onChat", &body));
        let detached = tokio::time::timeout(within, c.push_detached("onChat", &body));
        for sum in [awaited.await, detached.await] {
            let sum = sum.unwrap().unwrap();
            assert_eq!(sum.rpcs, 2, "one rpc per frontend, not per member");
            assert_eq!(sum.failed.len(), 2, "{sum:?}");
        }
    }
}
