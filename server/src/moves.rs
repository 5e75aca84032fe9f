//! `clusterMoves`: what the frontends of a cluster on NATS tell each other when one of them
//! notices a lost server, so that every frontend re-joins its sessions' moved keys before any
//! of them places keys again (see [`ServerContext::server_lost`]).

use shaddock_rpc::RemoteError;

use crate::context::ServerContext;

shaddock_rpc::remote! {
    /// Served by every frontend of a cluster on NATS.
    pub mod cluster_moves: user "clusterMoves" {
        /// The noticer of the loss of `server_id` (its run `start_time`) placed its keys again:
        /// re-join this frontend's sessions there, and place no uncached key until `settled`.
        fn lost(server_id: String, start_time: u64) -> ();
        /// Every frontend re-joined: place keys again.
        fn settled(server_id: String, start_time: u64) -> ();
    }
}

/// The `clusterMoves` remote of one frontend.
pub(crate) struct MovesRemote {
    pub(crate) ctx: ServerContext,
}

impl cluster_moves::Remote for MovesRemote {
    async fn lost(&self, server_id: String, start_time: u64) -> Result<(), RemoteError> {
        self.ctx.follow_loss(server_id, start_time).await;
        Ok(())
    }

    async fn settled(&self, server_id: String, start_time: u64) -> Result<(), RemoteError> {
        self.ctx.settle(&server_id, start_time);
        Ok(())
    }
}
