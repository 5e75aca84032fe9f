//! `chat.chatRemote`: room membership on the chat server that owns the room, called by the
//! connectors over RPC (pomelo's `app.rpc.chat.chatRemote.add/kick`).
//!
//! Rooms are [`Channel`](shaddock_server::Channel)s of the chat server's
//! [`ChannelService`](shaddock_server::ChannelService), one per room name; a push to a room is
//! encoded once and sent as one RPC per connector that has members.

#![allow(missing_docs)] // prost fields

use serde_json::json;
use shaddock_rpc::RemoteError;
use shaddock_server::ServerContext;

use crate::validate::name_of;

/// The remote error code of "this name is already in the room".
pub const CODE_NAME_TAKEN: u32 = 409;

/// `chatRemote.add` / `chatRemote.kick`: a user (uid `name*rid`) on frontend `sid`, room `rid`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Member {
    #[prost(string, tag = "1")]
    pub uid: String,
    /// The frontend (connector) id holding the user's connection.
    #[prost(string, tag = "2")]
    pub sid: String,
    /// The room.
    #[prost(string, tag = "3")]
    pub rid: String,
}

/// `chatRemote.rejoin`: members of rooms on one frontend, coming back to a room's new server.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Members {
    #[prost(message, repeated, tag = "1")]
    pub members: Vec<Member>,
}

/// `chatRemote.add` reply: the user names in the room, the newcomer included.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Users {
    #[prost(string, repeated, tag = "1")]
    pub names: Vec<String>,
}

shaddock_rpc::remote! {
    /// The chat server's remote.
    pub mod chat_remote: user "chatRemote" {
        /// Adds a user to a room (telling the members already there with `onAdd`); returns
        /// the room's user names. A uid already in the room: error [`CODE_NAME_TAKEN`].
        fn add(Member) -> Users;
        /// Removes a user from a room and tells the others with `onLeave`.
        fn kick(Member) -> ();
        /// Puts members back in their rooms, silently, after a room moved here (its server
        /// was lost) or this server restarted: they never left.
        fn rejoin(Members) -> ();
    }
}

/// The implementation, on every chat server.
#[derive(Debug, Clone)]
pub struct ChatRemote {
    ctx: ServerContext,
}

impl ChatRemote {
    /// The remote of the chat server `ctx`.
    pub fn new(ctx: ServerContext) -> Self {
        Self { ctx }
    }
}

impl chat_remote::Remote for ChatRemote {
    async fn add(&self, m: Member) -> Result<Users, RemoteError> {
        let channel = self.ctx.channels().get_or_create(&m.rid);
        if channel.member(&m.uid).is_some() {
            return Err(RemoteError::new(
                CODE_NAME_TAKEN,
                format!(
                    "the name \"{}\" is already taken in room \"{}\"",
                    name_of(&m.uid),
                    m.rid
                ),
            ));
        }
        // Tell the members already there (a snapshot taken before the join, so the newcomer
        // never gets its own onAdd), then add.
        let before = channel.members();
        if !before.is_empty() {
            let body = json!({"user": name_of(&m.uid)});
            match self
                .ctx
                .channels()
                .push_to_uids("onAdd", &body, &before)
                .await
            {
                Ok(sum) if !sum.failed.is_empty() => {
                    tracing::warn!(room = %m.rid, failed = ?sum.failed, "onAdd not delivered everywhere");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(room = %m.rid, cause = %e, "onAdd push failed"),
            }
        }
        channel.add(&m.uid, &m.sid);
        tracing::debug!(room = %m.rid, uid = %m.uid, frontend = %m.sid, "user joined");
        Ok(Users {
            names: channel
                .uids()
                .iter()
                .map(|u| name_of(u).to_owned())
                .collect(),
        })
    }

    async fn rejoin(&self, ms: Members) -> Result<(), RemoteError> {
        for m in ms.members {
            let channel = self.ctx.channels().get_or_create(&m.rid);
            if channel.member(&m.uid).is_none() {
                channel.add(&m.uid, &m.sid);
            }
        }
        Ok(())
    }

    async fn kick(&self, m: Member) -> Result<(), RemoteError> {
        let Some(channel) = self.ctx.channels().get(&m.rid) else {
            return Ok(());
        };
        if !channel.leave(&m.uid, &m.sid) {
            return Ok(()); // not there (already left, or on another connector)
        }
        tracing::debug!(room = %m.rid, uid = %m.uid, "user left");
        // Empty rooms are kept: removing one could race with a join (see the crate docs).
        if !channel.is_empty()
            && let Err(e) = channel
                .push("onLeave", &json!({"user": name_of(&m.uid)}))
                .await
        {
            tracing::warn!(room = %m.rid, cause = %e, "onLeave push failed");
        }
        Ok(())
    }
}
