//! The channel service of a backend: named groups of `(uid, frontend id)` members and pushes
//! to them, grouped by frontend.
//!
//! A push encodes the PUSH package **once** (route compressed by the app's dictionary) and
//! sends one `sessionRemote.push` RPC per frontend that has members, carrying those bytes and
//! the member uids there; the frontend queues the same buffer to each session. A broadcast to
//! 10 000 members on 2 connectors is 2 RPCs.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::Value;
use shaddock_rpc::{RpcClient, RpcError, Target};

use crate::context::ClusterView;
use shaddock_connector::BodyCodec;
use shaddock_connector::remote::{PushArgs, session_remote};

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
}

/// Outcome of a push to several frontends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PushSummary {
    /// RPCs made (one per frontend).
    pub rpcs: usize,
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

#[derive(Clone)]
pub(crate) struct Pusher {
    rpc: RpcClient,
    codec: BodyCodec,
    cluster: ClusterView,
}

impl Pusher {
    fn encode(&self, route: &str, body: &Value) -> Result<Bytes, PushError> {
        encode_push(&self.codec, route, body)
    }

    /// One RPC per frontend, concurrently: `push` to the listed uids, or `broadcast` (to
    /// every session of the frontend) when `all`.
    async fn send(&self, per_frontend: Vec<(String, PushArgs)>, all: bool) -> PushSummary {
        let stub = session_remote::Client::new(&self.rpc);
        let calls = per_frontend.into_iter().map(|(fid, args)| {
            let stub = stub.clone();
            async move {
                let target = Target::server(&fid);
                let r = if all {
                    stub.broadcast(target, args).await
                } else {
                    stub.push(target, args).await
                };
                (fid, r)
            }
        });
        let mut summary = PushSummary::default();
        for (fid, r) in futures_util::future::join_all(calls).await {
            summary.rpcs += 1;
            match r {
                Ok(r) => summary.sent += u64::from(r.sent),
                Err(e) => {
                    tracing::warn!(frontend = %fid, cause = %e, "channel push failed");
                    summary.failed.push((fid, e.to_string()));
                }
            }
        }
        summary
    }

    /// Encodes once and sends one `push` RPC per group (frontend).
    async fn to_groups(
        &self,
        route: &str,
        body: &Value,
        groups: &[Group],
    ) -> Result<PushSummary, PushError> {
        let package = self.encode(route, body)?;
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
        Ok(self.send(per, false).await)
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

struct ChannelInner {
    name: String,
    /// uid -> frontend id.
    members: Mutex<BTreeMap<String, String>>,
    /// `members` grouped by frontend, built on the first push after a membership change:
    /// pushes outnumber joins and leaves, and rebuilding costs a string copy per member.
    groups: Mutex<Option<Arc<[Group]>>>,
    pusher: Pusher,
}

/// A named group of users (pomelo's channel). Cheap to clone.
#[derive(Clone)]
pub struct Channel {
    inner: Arc<ChannelInner>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("name", &self.inner.name)
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
        &self.inner.name
    }

    /// Adds `uid` connected on `frontend_id`; `false` if it was already a member there.
    pub fn add(&self, uid: &str, frontend_id: &str) -> bool {
        let mut m = lock(&self.inner.members);
        let changed =
            m.insert(uid.to_owned(), frontend_id.to_owned()).as_deref() != Some(frontend_id);
        if changed {
            *lock(&self.inner.groups) = None;
        }
        changed
    }

    /// Removes `uid` (if it is a member on `frontend_id`); `false` if it was not.
    pub fn leave(&self, uid: &str, frontend_id: &str) -> bool {
        let mut m = lock(&self.inner.members);
        if m.get(uid).map(String::as_str) == Some(frontend_id) {
            m.remove(uid);
            *lock(&self.inner.groups) = None;
            true
        } else {
            false
        }
    }

    /// The member uids, sorted.
    pub fn uids(&self) -> Vec<String> {
        lock(&self.inner.members).keys().cloned().collect()
    }

    /// The members as `(uid, frontend id)`, sorted by uid.
    pub fn members(&self) -> Vec<(String, String)> {
        lock(&self.inner.members)
            .iter()
            .map(|(u, f)| (u.clone(), f.clone()))
            .collect()
    }

    /// The frontend `uid` is on, if it is a member.
    pub fn member(&self, uid: &str) -> Option<String> {
        lock(&self.inner.members).get(uid).cloned()
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        lock(&self.inner.members).len()
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
        let groups = {
            // Lock order: members, then groups (as in `add` and `leave`).
            let members = lock(&self.inner.members);
            let mut cached = lock(&self.inner.groups);
            cached
                .get_or_insert_with(|| {
                    groups_of(members.iter().map(|(u, f)| (u.as_str(), f.as_str())))
                })
                .clone()
        };
        self.inner.pusher.to_groups(route, body, &groups).await
    }
}

/// The channels of one backend process (pomelo's `channelService`). Cheap to clone.
#[derive(Clone)]
pub struct ChannelService {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    pusher: Pusher,
}

impl std::fmt::Debug for ChannelService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelService")
            .field("channels", &lock(&self.channels).len())
            .finish()
    }
}

impl ChannelService {
    pub(crate) fn new(rpc: RpcClient, codec: BodyCodec, cluster: ClusterView) -> Self {
        Self {
            channels: Arc::default(),
            pusher: Pusher {
                rpc,
                codec,
                cluster,
            },
        }
    }

    /// The channel `name`, created empty if it does not exist.
    pub fn get_or_create(&self, name: &str) -> Channel {
        lock(&self.channels)
            .entry(name.to_owned())
            .or_insert_with(|| Channel {
                inner: Arc::new(ChannelInner {
                    name: name.to_owned(),
                    members: Mutex::default(),
                    groups: Mutex::default(),
                    pusher: self.pusher.clone(),
                }),
            })
            .clone()
    }

    /// The channel `name`, if it exists.
    pub fn get(&self, name: &str) -> Option<Channel> {
        lock(&self.channels).get(name).cloned()
    }

    /// Removes the channel `name`; `false` if there was none.
    pub fn destroy(&self, name: &str) -> bool {
        lock(&self.channels).remove(name).is_some()
    }

    /// The names of every channel.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.channels).keys().cloned().collect();
        v.sort();
        v
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
        self.pusher
            .to_groups(
                route,
                body,
                &groups_of(members.iter().map(|(u, f)| (u.as_str(), f.as_str()))),
            )
            .await
    }

    /// Pushes to every session of every frontend of `frontend_type` (pomelo's
    /// `broadcast`): encoded once, one RPC per frontend.
    ///
    /// # Errors
    /// [`PushError::Encode`].
    pub async fn broadcast(
        &self,
        frontend_type: &str,
        route: &str,
        body: &Value,
    ) -> Result<PushSummary, PushError> {
        let package = self.pusher.encode(route, body)?;
        let snap = self
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
        Ok(self.pusher.send(per, true).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shaddock_protocol::RouteDictionary;
    use shaddock_protocol::message::{Message, MessageRoute};
    use shaddock_protocol::protobuf::Protos;
    use shaddock_rpc::RpcConfig;

    fn service() -> ChannelService {
        ChannelService::new(
            RpcClient::new(RpcConfig::default()),
            BodyCodec::default(),
            Arc::default(),
        )
    }

    #[test]
    fn members_add_leave_destroy() {
        let s = service();
        let c = s.get_or_create("room");
        assert!(c.add("alice", "conn-1"));
        assert!(!c.add("alice", "conn-1"));
        assert!(c.add("bob", "conn-2"));
        assert_eq!(s.get_or_create("room").len(), 2);
        assert!(!c.leave("bob", "conn-1"), "wrong frontend");
        assert!(c.leave("bob", "conn-2"));
        assert_eq!(c.members(), [("alice".to_owned(), "conn-1".to_owned())]);
        assert!(s.destroy("room"));
        assert!(s.get("room").is_none());
        assert!(!s.destroy("room"));
    }

    #[test]
    fn groups_follow_membership_changes() {
        let s = service();
        let c = s.get_or_create("room");
        let groups = |c: &Channel| {
            let members = lock(&c.inner.members);
            let mut cached = lock(&c.inner.groups);
            let g = cached
                .get_or_insert_with(|| {
                    groups_of(members.iter().map(|(u, f)| (u.as_str(), f.as_str())))
                })
                .clone();
            g.iter()
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

    #[tokio::test]
    async fn push_to_unknown_frontends_reports_one_failure_per_frontend() {
        let s = service();
        let c = s.get_or_create("room");
        for i in 0..100 {
            c.add(&format!("u{i}"), if i % 2 == 0 { "f-a" } else { "f-b" });
        }
        let sum = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            c.push("onChat", &serde_json::json!({})),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(sum.rpcs, 2, "one rpc per frontend, not per member");
        assert_eq!(sum.failed.len(), 2);
    }
}
