//! In a cluster on NATS: this launcher's master serves the admin verbs of every host
//! ([`crate::cluster::admin`]): `stop`, `kill` and `list` on the cluster-wide subject, `add`
//! on the subject of each host id it runs.

use std::sync::Arc;

use async_nats::Client;
use futures_util::StreamExt;

use super::Master;
use crate::cluster::admin::{AdminReply, AdminRequest, all_subject, host_subject};
use crate::proto::{AddArgs, KeyValue};

/// Subscribes (before returning, so no request is missed once the master says it listens)
/// and serves until the master exits; after a `stop` or `kill` it answers `done` and ends.
pub(super) async fn serve(
    master: Arc<Master>,
    nats: &crate::cluster::ClusterConfig,
    hosts: Vec<String>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let client = crate::cluster::nats::admin_connection(nats, "master-admin")
        .await
        .map_err(|e| format!("admin verbs on NATS: {e}"))?;
    let mut subs = Vec::new();
    for subject in std::iter::once(all_subject(&nats.app))
        .chain(hosts.iter().map(|h| host_subject(&nats.app, h)))
    {
        let sub = client
            .subscribe(subject.clone())
            .await
            .map_err(|e| format!("admin verbs on NATS: subscribe to {subject}: {e}"))?;
        subs.push(sub);
    }
    // Every subscription is registered on the server before anyone is told we are up.
    match tokio::time::timeout(
        nats.connect_timeout.min(std::time::Duration::from_secs(5)),
        client.flush(),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("admin verbs on NATS: {e}")),
        // Not connected yet: the subscriptions go out once it is.
        Err(_) => tracing::warn!("NATS not reached yet: the admin verbs are served once it is"),
    }
    let me = hosts.join(",");
    tracing::info!(hosts = %me, app = %nats.app, "serving stop, kill, add and list on NATS");
    let mut requests = futures_util::stream::select_all(subs);
    Ok(tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                m = requests.next() => match m {
                    Some(m) => m,
                    None => return,
                },
                () = master.exit.cancelled() => return,
            };
            let Some(reply_to) = msg.reply.clone() else {
                tracing::debug!(subject = %msg.subject, "admin message without a reply subject, ignored");
                continue;
            };
            let req: AdminRequest = match serde_json::from_slice(&msg.payload) {
                Ok(r) => r,
                Err(e) => {
                    let r = reply(&me, false, format!("bad admin request: {e}"), false);
                    send(&client, reply_to.to_string(), &r).await;
                    continue;
                }
            };
            tracing::info!(?req, "admin request on NATS");
            match req {
                AdminRequest::Stop | AdminRequest::Kill => {
                    let stop = matches!(req, AdminRequest::Stop);
                    let n = super::lock(&master.state).servers.len();
                    let what = if stop { "stopping" } else { "killing" };
                    let ack = reply(&me, true, format!("{what} {n} servers"), false);
                    send(&client, reply_to.to_string(), &ack).await;
                    if stop {
                        tokio::spawn(master.clone().stop_all());
                    } else {
                        tokio::spawn(master.clone().kill_all());
                    }
                    master.exit.cancelled().await;
                    let past = if stop { "stopped" } else { "killed" };
                    let done = reply(&me, true, format!("{n} servers {past}"), true);
                    send(&client, reply_to.to_string(), &done).await;
                    return;
                }
                AdminRequest::List => {
                    use base64::Engine as _;
                    use prost::Message as _;
                    let list = master.list_reply();
                    let n = list.rows.len();
                    let mut r = reply(&me, true, format!("{n} servers"), false);
                    r.list = Some(
                        base64::engine::general_purpose::STANDARD.encode(list.encode_to_vec()),
                    );
                    send(&client, reply_to.to_string(), &r).await;
                }
                AdminRequest::Add { pairs } => {
                    let args = AddArgs {
                        pairs: pairs
                            .into_iter()
                            .map(|(key, value)| KeyValue { key, value })
                            .collect(),
                    };
                    let r = match master.add_server(args) {
                        Ok(id) => reply(&me, true, format!("added {id}"), false),
                        Err(e) => reply(&me, false, e, false),
                    };
                    send(&client, reply_to.to_string(), &r).await;
                }
            }
        }
    }))
}

fn reply(host: &str, ok: bool, message: String, done: bool) -> AdminReply {
    AdminReply {
        host: host.to_owned(),
        ok,
        message,
        done,
        list: None,
    }
}

async fn send(client: &Client, to: String, r: &AdminReply) {
    let body = match serde_json::to_vec(r) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(cause = %e, "cannot encode an admin reply");
            return;
        }
    };
    if let Err(e) = client.publish(to, body.into()).await {
        tracing::warn!(cause = %e, "cannot send an admin reply");
    }
    if let Err(e) = client.flush().await {
        tracing::warn!(cause = %e, "cannot flush an admin reply");
    }
}
