//! The frontend side of this server's requests, when it runs a frontend: forwarding client
//! messages of other server types to backends (the connector's [`RpcForwarder`] with the
//! app's route keys) and the `sessionRemote` backends call, binding uids cluster-wide.
//! The one place, with `process` and `context`, that needs the connector crate.

use std::collections::HashMap;

use shaddock_connector::{RpcForwarder, Session, SessionRemote};
use shaddock_core::sys::session_remote;
use shaddock_rpc::RemoteError;

use crate::app::RouteKey;
use crate::backend::SessionInfo;
use crate::context::ServerContext;

impl SessionInfo {
    /// The view of a frontend session a route key function gets.
    pub(crate) fn of(session: &Session) -> Self {
        Self {
            id: session.id(),
            uid: session.uid(),
            frontend_id: session.frontend_id().to_owned(),
            settings: session.settings(),
        }
    }
}

/// The frontend's forwarder: the connector's [`RpcForwarder`] over this server's RPC client,
/// with the app's route keys.
pub(crate) fn forwarder(ctx: &ServerContext, keys: HashMap<String, RouteKey>) -> RpcForwarder {
    let forwarder = RpcForwarder::new(ctx.rpc().clone());
    for (server_type, key) in keys {
        forwarder.route_key(server_type, move |s: &Session, _route: &str| {
            key(&SessionInfo::of(s)).into_bytes()
        });
    }
    forwarder
}

/// The frontend's `sessionRemote`: the connector's, binding uids cluster-wide through the
/// master ([`ServerContext::bind`]).
pub(crate) fn session_remote(
    ctx: &ServerContext,
    frontend: &shaddock_connector::Frontend,
) -> session_remote::Server<SessionRemote> {
    let ctx = ctx.clone();
    SessionRemote::new(frontend.clone())
        .bind_with(move |session, uid| {
            let ctx = ctx.clone();
            Box::pin(async move {
                ctx.bind(&session, &uid)
                    .await
                    .map_err(|e| RemoteError::new(500, e.to_string()))
            })
        })
        .into_server()
}
