//! `chat.chatRemote`: room membership on the chat server that owns the room, called by the
//! connectors over RPC (pomelo's `app.rpc.chat.chatRemote.add/kick`).
//!
//! Rooms are [`Channel`](shaddock_server::Channel)s of the chat server's
//! [`ChannelService`], one per room name; a push to a room is
//! encoded once and sent as one RPC per connector that has members. A room exists while it
//! has members: the first `add` creates it, the last `kick` removes it (a join and a leave of
//! the same room are ordered by the channel service's lock, so a join never lands in a room
//! that was just removed). `rooms` counts them.

use serde::{Deserialize, Serialize};
use serde_json::json;
use shaddock_rpc::RemoteError;
use shaddock_server::{ChannelService, ServerContext};

use crate::validate::name_of;

/// The remote error code of "this name is already in the room".
pub const CODE_NAME_TAKEN: u32 = 409;

/// A user (uid `name*rid`) whose connection is on frontend `frontend_id`, in room `rid`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// `name*rid`.
    pub uid: String,
    /// The frontend (connector) id holding the user's connection.
    pub frontend_id: String,
    /// The room.
    pub rid: String,
}

/// `chatRemote.rooms` reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomCount {
    /// Rooms with at least one member.
    pub rooms: u64,
    /// Members over all rooms.
    pub members: u64,
}

shaddock_rpc::remote! {
    /// The chat server's remote (pomelo's `chatRemote`; arguments travel as a JSON array).
    pub mod chat_remote: user "chatRemote" {
        /// Adds user `uid` of frontend `frontend_id` to room `rid` (telling the members
        /// already there with `onAdd`); returns the room's user names. A uid already in the
        /// room: error [`CODE_NAME_TAKEN`].
        fn add(uid: String, frontend_id: String, rid: String) -> Vec<String>;
        /// Removes a user from a room and tells the others with `onLeave`; the room is
        /// removed with its last member.
        fn kick(uid: String, frontend_id: String, rid: String) -> ();
        /// Puts members back in their rooms, silently, after a room moved here (its server
        /// was lost) or this server restarted: they never left.
        fn rejoin(members: Vec<Member>) -> ();
        /// How many rooms and members this chat server holds (for operators and tests).
        fn rooms() -> RoomCount;
    }
}

/// The rooms of one chat server: a [`ChannelService`] channel per room. The chat servers'
/// state (`App::with_state_from`): `chat.chatHandler.send` takes it as `State<Rooms>`, and
/// [`ChatRemote`] works on the same rooms.
#[derive(Debug, Clone)]
pub struct Rooms {
    channels: ChannelService,
    ctx: ServerContext,
}

impl Rooms {
    /// The rooms of the chat server `ctx`.
    pub fn new(ctx: &ServerContext) -> Self {
        Self {
            channels: ctx.channels().clone(),
            ctx: ctx.clone(),
        }
    }

    /// The channels, one per room.
    pub fn channels(&self) -> &ChannelService {
        &self.channels
    }
}

/// The implementation, on every chat server.
#[derive(Debug, Clone)]
pub struct ChatRemote {
    rooms: Rooms,
}

impl ChatRemote {
    /// The remote of the chat server whose rooms are `rooms`.
    pub fn new(rooms: Rooms) -> Self {
        Self { rooms }
    }
}

impl chat_remote::Remote for ChatRemote {
    async fn add(
        &self,
        uid: String,
        frontend_id: String,
        rid: String,
    ) -> Result<Vec<String>, RemoteError> {
        let m = Member {
            uid,
            frontend_id,
            rid,
        };
        let channels = self.rooms.channels();
        // A member whose frontend is gone (its host died: nobody kicked it) gives its name up
        // to the user coming back under it.
        if let Some(held) = channels.get(&m.rid).and_then(|c| c.member(&m.uid))
            && held != m.frontend_id
            && !self.rooms.ctx.servers().iter().any(|s| s.id == held)
        {
            tracing::info!(room = %m.rid, uid = %m.uid, lost = %held, "member of a lost frontend replaced");
            channels.leave(&m.rid, &m.uid, &held);
        }
        // Check and join in one step: a room is removed with its last member, and this join
        // can never land in a room a concurrent kick has just removed.
        if channels.try_join(&m.rid, &m.uid, &m.frontend_id).is_err() {
            return Err(RemoteError::new(
                CODE_NAME_TAKEN,
                format!(
                    "the name \"{}\" is already taken in room \"{}\"",
                    name_of(&m.uid),
                    m.rid
                ),
            ));
        }
        tracing::debug!(room = %m.rid, uid = %m.uid, frontend = %m.frontend_id, "user joined");
        let members = channels.get_or_create(&m.rid).members();
        // Tell the others (never the newcomer itself). The connector sends no kick for this
        // user before this call has answered, so onAdd always precedes its onLeave.
        let others: Vec<(String, String)> = members
            .iter()
            .filter(|(uid, _)| *uid != m.uid)
            .cloned()
            .collect();
        if !others.is_empty() {
            let body = json!({"user": name_of(&m.uid)});
            match channels.push_to_uids("onAdd", &body, &others).await {
                Ok(sum) if !sum.failed.is_empty() => {
                    tracing::warn!(room = %m.rid, failed = ?sum.failed, "onAdd not delivered everywhere");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(room = %m.rid, cause = %e, "onAdd push failed"),
            }
        }
        Ok(members.iter().map(|(u, _)| name_of(u).to_owned()).collect())
    }

    async fn rejoin(&self, members: Vec<Member>) -> Result<(), RemoteError> {
        for m in members {
            // Already there (entered again meanwhile): nothing to do.
            let _ = self
                .rooms
                .channels()
                .try_join(&m.rid, &m.uid, &m.frontend_id);
        }
        Ok(())
    }

    async fn kick(&self, uid: String, frontend_id: String, rid: String) -> Result<(), RemoteError> {
        let m = Member {
            uid,
            frontend_id,
            rid,
        };
        let channels = self.rooms.channels();
        // The last member's leave removes the room.
        let Some(left) = channels.leave(&m.rid, &m.uid, &m.frontend_id) else {
            return Ok(()); // not there (already left, or on another connector)
        };
        tracing::debug!(room = %m.rid, uid = %m.uid, remaining = left, "user left");
        if left > 0
            && let Err(e) = channels
                .get_or_create(&m.rid)
                .push("onLeave", &json!({"user": name_of(&m.uid)}))
                .await
        {
            tracing::warn!(room = %m.rid, cause = %e, "onLeave push failed");
        }
        Ok(())
    }

    async fn rooms(&self) -> Result<RoomCount, RemoteError> {
        let channels = self.rooms.channels();
        let names = channels.names();
        let members = names
            .iter()
            .filter_map(|n| channels.get(n))
            .map(|c| c.len() as u64)
            .sum();
        Ok(RoomCount {
            rooms: names.len() as u64,
            members,
        })
    }
}
