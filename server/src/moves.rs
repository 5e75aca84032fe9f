//! `clusterMoves`: what the frontends of a cluster on NATS tell each other when one of them
//! notices a lost server, so that every frontend re-joins its sessions' moved keys before any
//! of them places keys again (see [`ServerContext::server_lost`]).

use shaddock_rpc::RemoteError;

use crate::context::ServerContext;

shaddock_rpc::remote! {
    /// Served by every frontend of a cluster on NATS.
    pub mod cluster_moves: user "clusterMoves" {
        /// A peer noticed the loss of `server_id` (its run `start_time`): place no uncached
        /// key until `settled`; returns the keys (type, key) this frontend knew there.
        fn lost(server_id: String, start_time: u64) -> Vec<(String, Vec<u8>)>;
        /// Those keys are placed again (type, key, server): re-join this frontend's sessions.
        fn rejoin(server_id: String, start_time: u64, now_on: Vec<(String, Vec<u8>, String)>) -> ();
        /// Every frontend re-joined: place keys again.
        fn settled(server_id: String, start_time: u64) -> ();
    }
}

/// The `clusterMoves` remote of one frontend.
pub(crate) struct MovesRemote {
    pub(crate) ctx: ServerContext,
}

impl cluster_moves::Remote for MovesRemote {
    async fn lost(
        &self,
        server_id: String,
        start_time: u64,
    ) -> Result<Vec<(String, Vec<u8>)>, RemoteError> {
        Ok(self.ctx.follow_loss(server_id, start_time))
    }

    async fn rejoin(
        &self,
        server_id: String,
        _start_time: u64,
        now_on: Vec<(String, Vec<u8>, String)>,
    ) -> Result<(), RemoteError> {
        self.ctx.follow_rejoin(&server_id, &now_on).await;
        Ok(())
    }

    async fn settled(&self, server_id: String, start_time: u64) -> Result<(), RemoteError> {
        let _ = self.ctx.settle(&server_id, start_time);
        Ok(())
    }
}
