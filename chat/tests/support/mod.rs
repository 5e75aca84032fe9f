//! What the memory tests (`rooms_memory.rs`, `soak.rs`) need beside [`common`]: the master's
//! `list` (pids, RPC addresses), the chat servers' `chatRemote` reached directly, and VmRSS.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use shaddock_chat::remote::{RoomCount, chat_remote};
use shaddock_rpc::{RpcClient, ServerInfo, Target};
use shaddock_server::proto::{ListReply, ListRow, master_remote};
use tokio::time::timeout;

use crate::common::{Cluster, STEP};

/// An RPC client that knows the master and, once [`Rpc::learn`] ran, every server of the
/// cluster by id (the test speaks to the servers as a peer of the cluster would).
pub struct Rpc {
    pub client: RpcClient,
    pub master: master_remote::Client,
    pub chat: chat_remote::Client,
}

impl Rpc {
    /// Connects to the master named in the ready line.
    pub fn new(cluster: &Cluster) -> Self {
        let addr = cluster.info["master"].as_str().expect("master addr");
        let (host, port) = addr.rsplit_once(':').expect("host:port");
        let cfg = shaddock_server::secret::admin_rpc_config(addr).expect("cluster secret");
        let client = RpcClient::new(cfg);
        client.directory().add(ServerInfo::new(
            "master",
            "__master",
            host,
            port.parse::<u16>().expect("port"),
        ));
        Self {
            master: master_remote::Client::new(&client),
            chat: chat_remote::Client::new(&client),
            client,
        }
    }

    /// The master's `list`.
    pub async fn list(&self) -> ListReply {
        timeout(STEP, self.master.list(Target::server("master"), ()))
            .await
            .expect("list in time")
            .expect("list")
    }

    /// Lists the cluster and adds every server to the directory (by id); returns the rows.
    pub async fn learn(&self) -> Vec<ListRow> {
        let rows = self.list().await.rows;
        for r in &rows {
            self.client.directory().add(ServerInfo::new(
                r.id.clone(),
                r.server_type.clone(),
                r.host.clone(),
                u16::try_from(r.port).expect("rpc port"),
            ));
        }
        rows
    }

    /// `chatRemote.rooms` of each chat server, summed.
    pub async fn rooms(&self, chat_ids: &[String]) -> RoomCount {
        let mut total = RoomCount::default();
        for id in chat_ids {
            let c = timeout(STEP, self.chat.rooms(Target::server(id)))
                .await
                .expect("rooms in time")
                .expect("rooms");
            total.rooms += c.rooms;
            total.members += c.members;
        }
        total
    }

    /// Waits (every 50 ms, at most `within`) until the chat servers hold no room and no
    /// member; the last count.
    pub async fn until_no_room(&self, chat_ids: &[String], within: Duration) -> RoomCount {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let c = self.rooms(chat_ids).await;
            if (c.rooms == 0 && c.members == 0) || tokio::time::Instant::now() >= deadline {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The ids of the rows of `server_type`, sorted.
pub fn ids_of(rows: &[ListRow], server_type: &str) -> Vec<String> {
    let mut v: Vec<String> = rows
        .iter()
        .filter(|r| r.server_type == server_type)
        .map(|r| r.id.clone())
        .collect();
    v.sort();
    v
}

/// `(id, pid)` of the rows of `server_type`, sorted by id.
pub fn pids_of(rows: &[ListRow], server_type: &str) -> Vec<(String, u32)> {
    let mut v: Vec<(String, u32)> = rows
        .iter()
        .filter(|r| r.server_type == server_type)
        .map(|r| (r.id.clone(), r.pid))
        .collect();
    v.sort();
    v
}

/// VmRSS of a process in KiB (0 if it cannot be read), by the framework's one reader,
/// [`shaddock_server::procfs::rss_bytes`].
pub fn rss_kib(pid: u32) -> u64 {
    shaddock_server::procfs::rss_bytes(pid).map_or(0, |b| b / 1024)
}

/// KiB as MiB with one decimal, for messages.
pub fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}
