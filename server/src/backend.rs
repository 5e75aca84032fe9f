//! Requests that reach a backend, and the frontend's side of them.
//!
//! - The frontend's connector [`RpcForwarder`](shaddock_connector::RpcForwarder) sends a
//!   client request for another server type over `msgRemote.forwardMessage` with a snapshot
//!   of the session; the type's route key ([`crate::App::route_key`]) and router pick the
//!   server.
//! - The backend runs the handler with a [`BackendSession`]; its `bind/set/push/kick` reach
//!   the frontend session through the connector's `sessionRemote`, and settings changed with
//!   [`BackendSession::set`] or [`BackendSession::remove`] are applied to the frontend session
//!   when the handler returns (or at once with [`BackendSession::push_settings`]).
//!
//! # Settings: only what the handler changed
//! The backend session starts with a copy of the frontend session's settings. The frontend
//! gets back only the keys the handler set or removed (pomelo's `session.set` then
//! `session.push(key)`), never the whole copy: a key set on the frontend, or by a concurrent
//! request, while this handler ran keeps its new value unless this handler changed it too
//! (then the last change to reach the frontend wins).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::{Map, Value};
use shaddock_core::sys::{
    BindArgs, ForwardMessage, ForwardReply, KickArgs, PushArgs, SessionSnapshot, SettingsArgs,
    msg_remote, session_remote,
};
use shaddock_core::{Request, RequestInfo, StateMap, filter};
use shaddock_rpc::{RemoteError, RpcError, Target};

mod plain;

use crate::app::{BackendFilter, ErasedBackend, TypeDef};
use crate::channel::{PushError, encode_push};
use crate::context::ServerContext;

/// A frontend session as a backend (or a route key function) sees it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SessionInfo {
    /// The session id (unique in the cluster).
    pub id: u64,
    /// The bound uid.
    pub uid: Option<String>,
    /// The frontend holding the connection.
    pub frontend_id: String,
    /// The session's settings.
    pub settings: Map<String, Value>,
}

/// The settings a frontend sent as JSON text: the object, or none when the text is not a
/// JSON object.
fn parse_settings(text: &[u8]) -> Map<String, Value> {
    match shaddock_protocol::json::from_slice(text) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

/// `parse_settings(text).get(key).cloned()` in one pass over the text that builds only the
/// value of `key` (its last occurrence, as the parsed map keeps), the others checked as
/// strictly as the parse would and dropped.
fn setting_in(text: &[u8], key: &str) -> Option<Value> {
    use serde::Deserializer as _;
    let text = shaddock_protocol::json::decode_text(text);
    if let Ok(found) = plain::setting(&text, key) {
        return found;
    }
    let mut de = serde_json::Deserializer::from_str(&text);
    let found = de.deserialize_any(FindKey(key)).ok()?;
    de.end().ok()?;
    found
}

/// Visits a JSON object for the value of one key (anything else: an error).
struct FindKey<'k>(&'k str);

impl<'de> serde::de::Visitor<'de> for FindKey<'_> {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(is_key) = map.next_key_seed(KeyIs(self.0))? {
            if is_key {
                found = Some(map.next_value::<Value>()?);
            } else {
                map.next_value::<Checked>()?;
            }
        }
        Ok(found)
    }
}

/// An object key: whether it is the one looked for.
struct KeyIs<'k>(&'k str);

impl<'de> serde::de::DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl serde::de::Visitor<'_> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, k: &str) -> Result<bool, E> {
        Ok(k == self.0)
    }
}

/// Any JSON value, read as a `Value` parse reads it (every string unescaped and checked,
/// every number parsed) and dropped: text that reads as `Checked` parses as a `Value`.
struct Checked;

impl<'de> serde::Deserialize<'de> for Checked {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Self)
    }
}

impl<'de> serde::de::Visitor<'de> for Checked {
    type Value = Self;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(Self)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(Self)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(Self)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(Self)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(Self)
    }

    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(Self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<Self>()?.is_some() {}
        Ok(Self)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        while map.next_key::<Self>()?.is_some() {
            map.next_value::<Self>()?;
        }
        Ok(Self)
    }
}

fn json_bytes(settings: Map<String, Value>) -> Bytes {
    if settings.is_empty() {
        return Bytes::new();
    }
    Bytes::from(shaddock_protocol::json::to_vec(&Value::Object(settings)))
}

/// The settings of a backend session: the frontend's JSON text, parsed into a map on the
/// first change or after a few reads of one key each.
enum Values {
    Text(Bytes),
    Map(Map<String, Value>),
}

/// Reads of one key each from the text before the text is parsed once for all.
const SCANS: u8 = 4;

/// The settings of a backend session and which keys the handler changed.
struct Settings {
    values: Values,
    /// `get`s answered from the text so far.
    scans: u8,
    /// Keys set or removed here and not yet applied on the frontend, each with the sequence
    /// number of its last change (so a successful `push_settings` clears only the changes it
    /// carried, not one made while it was on the wire).
    dirty: HashMap<String, u64>,
    seq: u64,
}

/// The changes to send: keys set (with their values), keys removed, and what to clear once
/// they are applied.
struct Changes {
    set: Map<String, Value>,
    removed: Vec<String>,
    sent: Vec<(String, u64)>,
}

impl Settings {
    fn map(&mut self) -> &mut Map<String, Value> {
        if let Values::Text(text) = &self.values {
            self.values = Values::Map(parse_settings(text));
        }
        match &mut self.values {
            Values::Map(m) => m,
            Values::Text(_) => unreachable!("parsed above"),
        }
    }

    fn get(&mut self, key: &str) -> Option<Value> {
        match &self.values {
            Values::Map(m) => m.get(key).cloned(),
            Values::Text(text) if self.scans < SCANS => {
                self.scans += 1;
                setting_in(text, key)
            }
            Values::Text(_) => self.map().get(key).cloned(),
        }
    }

    fn mark(&mut self, key: String) {
        self.seq += 1;
        self.dirty.insert(key, self.seq);
    }

    fn changes(&self) -> Changes {
        let mut c = Changes {
            set: Map::new(),
            removed: Vec::new(),
            sent: Vec::with_capacity(self.dirty.len()),
        };
        // A key is marked only once the text is parsed.
        let values = match &self.values {
            Values::Map(m) => Some(m),
            Values::Text(_) => None,
        };
        for (key, seq) in &self.dirty {
            match values.and_then(|m| m.get(key)) {
                Some(v) => {
                    c.set.insert(key.clone(), v.clone());
                }
                None => c.removed.push(key.clone()),
            }
            c.sent.push((key.clone(), *seq));
        }
        c.removed.sort_unstable();
        c
    }

    /// Forgets the changes in `sent` that were not changed again since.
    fn applied(&mut self, sent: &[(String, u64)]) {
        for (key, seq) in sent {
            if self.dirty.get(key) == Some(seq) {
                self.dirty.remove(key);
            }
        }
    }
}

struct BsInner {
    id: u64,
    frontend_id: String,
    uid: Mutex<Option<String>>,
    settings: Mutex<Settings>,
    ctx: ServerContext,
}

/// The session of a request on a backend (pomelo's `BackendSession`). Cheap to clone.
#[derive(Clone)]
pub struct BackendSession {
    inner: Arc<BsInner>,
}

impl std::fmt::Debug for BackendSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendSession")
            .field("id", &self.inner.id)
            .field("uid", &self.uid())
            .field("frontend_id", &self.inner.frontend_id)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl BackendSession {
    /// The session of a forwarded request; its settings are parsed only when needed.
    pub(crate) fn from_snapshot(s: SessionSnapshot, ctx: ServerContext) -> Self {
        Self {
            inner: Arc::new(BsInner {
                id: s.id,
                frontend_id: s.frontend_id,
                uid: Mutex::new(Some(s.uid).filter(|u| !u.is_empty())),
                settings: Mutex::new(Settings {
                    values: Values::Text(s.settings_json),
                    scans: 0,
                    dirty: HashMap::new(),
                    seq: 0,
                }),
                ctx,
            }),
        }
    }

    /// The session id.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The bound uid.
    pub fn uid(&self) -> Option<String> {
        lock(&self.inner.uid).clone()
    }

    /// The frontend holding the client's connection.
    pub fn frontend_id(&self) -> &str {
        &self.inner.frontend_id
    }

    /// The server this handler runs on.
    pub fn ctx(&self) -> &ServerContext {
        &self.inner.ctx
    }

    /// A setting (the frontend's value when the request was forwarded, unless changed here).
    pub fn get(&self, key: &str) -> Option<Value> {
        lock(&self.inner.settings).get(key)
    }

    /// Sets a setting here (pomelo's `session.set`); the key reaches the frontend session
    /// when the handler returns (or at once with [`BackendSession::push_settings`]). Only
    /// keys set or removed here are sent (see the [module docs](self)).
    pub fn set(&self, key: impl Into<String>, value: Value) {
        let key = key.into();
        let mut s = lock(&self.inner.settings);
        s.map().insert(key.clone(), value);
        s.mark(key);
    }

    /// Removes a setting here; it is removed from the frontend session when the handler
    /// returns (or at once with [`BackendSession::push_settings`]). Returns the value it had.
    pub fn remove(&self, key: &str) -> Option<Value> {
        let mut s = lock(&self.inner.settings);
        let old = s.map().remove(key);
        s.mark(key.to_owned());
        old
    }

    /// Every setting.
    pub fn settings(&self) -> Map<String, Value> {
        lock(&self.inner.settings).map().clone()
    }

    /// Whether keys were set or removed here and not yet applied on the frontend.
    pub fn has_changes(&self) -> bool {
        !lock(&self.inner.settings).dirty.is_empty()
    }

    /// Sends the settings set or removed here since the last successful push to the
    /// frontend session now (pomelo's `session.push`); nothing else. No RPC when nothing
    /// changed. After success those keys are not sent again with the handler's reply
    /// (unless changed again meanwhile); after a failure they still are.
    ///
    /// # Errors
    /// The RPC failed (frontend gone, session closed).
    pub async fn push_settings(&self) -> Result<(), RpcError> {
        let changes = lock(&self.inner.settings).changes();
        if changes.sent.is_empty() {
            return Ok(());
        }
        let args = SettingsArgs {
            session_id: self.inner.id,
            settings_json: json_bytes(changes.set),
            removed: changes.removed,
        };
        self.stub()
            .push_settings(Target::server(&self.inner.frontend_id), args)
            .await?;
        lock(&self.inner.settings).applied(&changes.sent);
        Ok(())
    }

    /// Binds the frontend session to `uid` (cluster-wide duplicate-login policy applies).
    ///
    /// # Errors
    /// The RPC failed, or the frontend refused the bind ([`RpcError::Remote`]).
    pub async fn bind(&self, uid: &str) -> Result<(), RpcError> {
        let args = BindArgs {
            session_id: self.inner.id,
            uid: uid.to_owned(),
        };
        self.stub()
            .bind(Target::server(&self.inner.frontend_id), args)
            .await?;
        *lock(&self.inner.uid) = Some(uid.to_owned());
        Ok(())
    }

    /// Pushes `body` on `route` to this client.
    ///
    /// # Errors
    /// [`PushError`].
    pub async fn push(&self, route: &str, body: &Value) -> Result<(), PushError> {
        let package = encode_push(self.inner.ctx.codec(), route, body)?;
        let args = PushArgs {
            package,
            session_ids: vec![self.inner.id],
            ..PushArgs::default()
        };
        self.stub()
            .push(Target::server(&self.inner.frontend_id), args)
            .await
            .map(drop)
            .map_err(|source| PushError::Rpc {
                frontend_id: self.inner.frontend_id.clone(),
                source,
            })
    }

    /// Kicks this client with `reason`.
    ///
    /// # Errors
    /// The RPC failed.
    pub async fn kick(&self, reason: &str) -> Result<(), RpcError> {
        let args = KickArgs {
            session_id: self.inner.id,
            uid: String::new(),
            reason: reason.to_owned(),
        };
        self.stub()
            .kick(Target::server(&self.inner.frontend_id), args)
            .await
            .map(drop)
    }

    fn stub(&self) -> session_remote::Client {
        session_remote::Client::new(self.inner.ctx.rpc())
    }
}

/// `msgRemote` on a backend: runs forwarded requests.
pub(crate) struct MsgRemote {
    pub(crate) ctx: ServerContext,
    /// By route: a few keys, so a B-tree's comparisons cost less than hashing the route.
    pub(crate) handlers: BTreeMap<String, Arc<ErasedBackend>>,
    pub(crate) filters: Vec<BackendFilter>,
    /// What handlers extract with `State<T>` (and the server's context).
    pub(crate) state: StateMap,
}

impl MsgRemote {
    pub(crate) fn new(ctx: ServerContext, def: &TypeDef, state: StateMap) -> Self {
        Self {
            ctx,
            handlers: def
                .handlers
                .iter()
                .map(|(r, h)| (r.clone(), h.clone()))
                .collect(),
            filters: def.before.clone(),
            state,
        }
    }
}

impl msg_remote::Remote for MsgRemote {
    async fn forward_message(&self, args: ForwardMessage) -> Result<ForwardReply, RemoteError> {
        let Some(handler) = self.handlers.get(&args.route).cloned() else {
            tracing::warn!(route = %args.route, "no backend handler for route");
            return Err(RemoteError::new(
                500,
                format!("unknown route `{}`", args.route),
            ));
        };
        // Checked without building anything: plain JSON by a scanner, anything else by a
        // serde_json pass as strict as the parse (`Checked`). Parsed only if the handler
        // reads the body as a `Value` (`Json<T>` decodes `T` from the text).
        let text = shaddock_protocol::json::decode_text(&args.body_json);
        let valid = plain::is_plain(&text) || serde_json::from_str::<Checked>(&text).is_ok();
        if !valid {
            let e = shaddock_protocol::json::from_slice(&args.body_json)
                .err()
                .map_or_else(|| "invalid JSON".to_owned(), |e| e.to_string());
            return Err(RemoteError::new(500, format!("invalid request body: {e}")));
        }
        let session =
            BackendSession::from_snapshot(args.session.unwrap_or_default(), self.ctx.clone());
        let mut req = Request::from_json_text(
            RequestInfo::forwarded(args.route, args.id),
            session.clone(),
            args.body_json,
        )
        .with_state(self.state.clone());
        if !args.body_protobuf.is_empty() {
            req = req.with_protobuf(args.body_protobuf);
        }
        let outcome = match filter::run_before(&self.filters, &req).await {
            Ok(()) => handler.call(&req).await,
            Err(e) => Err(e),
        };
        filter::run_after(&self.filters, &req, &outcome).await;
        let reply = outcome.map_err(RemoteError::from)?;
        // Only the keys the handler changed (and did not push already).
        let changes = lock(&session.inner.settings).changes();
        let body_json = match reply {
            // `()`: the usual reply of a handler that pushes its answer.
            Value::Null => Bytes::from_static(b"null"),
            reply => shaddock_protocol::json::to_vec(&reply).into(),
        };
        Ok(ForwardReply {
            body_json,
            settings_json: json_bytes(changes.set),
            removed_settings: changes.removed,
        })
    }
}

/// For benchmarks (`benches/src/bin/inproc.rs`): a backend of `server_type` of `app` as its
/// process would serve it (the app's state, its `msgRemote` with the type's handlers and
/// filters, the type's remotes), on `rpc` with `codec`, without a master: the caller adds the
/// frontends to `rpc`'s directory and serves the registry. Not a stable API.
///
/// # Errors
/// A remote of the type could not be registered.
#[doc(hidden)]
pub fn standalone_backend(
    app: &crate::App,
    server: crate::config::ServerConfig,
    rpc: shaddock_rpc::RpcClient,
    codec: shaddock_protocol::BodyCodec,
) -> Result<(ServerContext, shaddock_rpc::Registry), shaddock_rpc::RegistryError> {
    let def = app.type_def(&server.server_type);
    let ctx = ServerContext::new(
        server,
        Vec::new(),
        "bench".into(),
        rpc,
        "master".into(),
        codec,
        None,
    );
    let state = app.server_state(&ctx);
    let mut registry = shaddock_rpc::Registry::new();
    registry.add(msg_remote::Server::new(MsgRemote::new(
        ctx.clone(),
        &def,
        state,
    )))?;
    for setup in &def.remotes {
        setup(&ctx, &mut registry)?;
    }
    Ok((ctx, registry))
}

#[cfg(test)]
mod tests {
    //! Settings over real sockets and real RPC: a client on a connector frontend, the
    //! frontend's `RpcForwarder` and `sessionRemote`, and this crate's `msgRemote` backend
    //! running `BackendSession` handlers.

    use std::time::Duration;

    use serde_json::json;
    use shaddock_client::{Client, ClientConfig, Transport};
    use shaddock_connector::{ConnectorConfig, Frontend, RpcForwarder, Session};
    use shaddock_rpc::{Registry, RpcClient, RpcConfig, RpcServer, ServerInfo};
    use tokio::net::TcpListener;
    use tokio::sync::{Semaphore, mpsc};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::App;
    use crate::config::ServerConfig;
    use shaddock_core::HandlerError;

    const STEP: Duration = Duration::from_secs(10);

    /// A setting read from the text is the one the parsed map has, whatever the text; the
    /// text passes `Checked` exactly when it parses.
    #[test]
    fn a_setting_read_from_the_text_is_the_parsed_maps() {
        let texts: [&[u8]; 16] = [
            b"",
            b"{}",
            br#"{"rid":"r1"}"#,
            br#" { "a" : [1, {"rid": 2}], "rid" : {"x": [true, null, 1.5e3]} } "#,
            br#"{"rid":1,"rid":2}"#,
            br#"{"r\u0069d":"escaped key"}"#,
            br#"{"rid":"r1","x":"\ud800"}"#,
            br#"{"rid":"r1","x":1e400}"#,
            br#"{"rid":"r1"} trailing"#,
            br#"{"rid":"r1""#,
            br#"["rid"]"#,
            b"5",
            b"{\"rid\":\"caf\xc3\xa9\",\"x\":\"\xff\"}",
            br#"{"rid":"r1","x":"\u0000\n"}"#,
            br#"{"rid":null}"#,
            br#"{"a":{"rid":"nested only"}}"#,
        ];
        for text in texts {
            // The body check of `forward_message` accepts exactly what parses.
            assert_eq!(
                serde_json::from_str::<Checked>(&shaddock_protocol::json::decode_text(text))
                    .is_ok(),
                shaddock_protocol::json::from_slice(text).is_ok(),
                "{}",
                String::from_utf8_lossy(text)
            );
            for key in ["rid", "x", "a", "missing", ""] {
                assert_eq!(
                    setting_in(text, key),
                    parse_settings(text).get(key).cloned(),
                    "{} / {key}",
                    String::from_utf8_lossy(text)
                );
            }
        }
    }

    async fn within<F: std::future::Future>(f: F) -> F::Output {
        tokio::time::timeout(STEP, f).await.expect("timed out")
    }

    struct Setup {
        frontend: Frontend,
        client: Client,
        entered: mpsc::Receiver<()>,
        release: Arc<Semaphore>,
        shutdown: CancellationToken,
        /// What the backend filter's `after` saw: route, uid, and whether it succeeded.
        filtered: Seen,
    }

    /// Route, uid, success: what a filter's `after` saw.
    type Seen = Arc<std::sync::Mutex<Vec<(String, Option<String>, bool)>>>;

    /// `chat.h.pb`'s body as a prost message (the tags of its clientProtos schema).
    #[derive(Clone, PartialEq, prost::Message)]
    struct Pb {
        #[prost(string, tag = "1")]
        text: String,
    }

    /// A protobuf body reaches a backend handler as the client sent it (`Proto<T>`) and as
    /// its schema's JSON (`Value`).
    #[tokio::test]
    async fn a_protobuf_body_is_forwarded_to_a_proto_extractor() {
        let t = setup().await;
        let r = within(t.client.request("chat.h.pb", &json!({"text": "hi"})))
            .await
            .unwrap();
        assert_eq!(
            r,
            json!({"text": "hi", "json": {"text": "hi"}, "uid": null})
        );
        t.shutdown.cancel();
    }

    /// A backend filter: refuses bodies with `"deny": true` (code 403), records outcomes.
    struct Audit(Seen);

    impl crate::Filter<BackendSession> for Audit {
        async fn before(&self, req: &Request<BackendSession>) -> Result<(), HandlerError> {
            if req.body()["deny"] == json!(true) {
                return Err(HandlerError::new(403, format!("{} denied", req.route())));
            }
            Ok(())
        }

        async fn after(&self, req: &Request<BackendSession>, outcome: &crate::Outcome) {
            self.0.lock().unwrap().push((
                req.route().to_owned(),
                req.session().uid(),
                outcome.is_ok(),
            ));
        }
    }

    /// A connector frontend (`connector-1`) forwarding `chat.*` to one chat backend whose
    /// handlers are:
    /// - `chat.h.held`: signals `entered`, waits for a `release` permit, then sets the keys
    ///   of its body's `set` object and removes those of its `remove` list;
    /// - `chat.h.push`: sets `p`, pushes it, and answers what the frontend session then has.
    async fn setup() -> Setup {
        let shutdown = CancellationToken::new();
        let rpc_cfg = RpcConfig::default();
        let (entered_tx, entered) = mpsc::channel::<()>(4);
        let release = Arc::new(Semaphore::new(0));

        // The frontend, with a frontend handler that sets one setting.
        let mut config = ConnectorConfig::default();
        config.frontend_id = "connector-1".into();
        let front_rpc = RpcClient::new(rpc_cfg.clone());
        let frontend = Frontend::builder(config)
            .handler(
                "connector.entryHandler.set",
                |s: Session, v: Value| async move {
                    for (k, v) in v.as_object().cloned().unwrap_or_default() {
                        s.set(k, v);
                    }
                    Ok::<_, HandlerError>(json!({"code": 200}))
                },
            )
            .forwarder(Arc::new(RpcForwarder::new(front_rpc.clone())))
            // `chat.h.pb` takes a protobuf body (clientProtos); every other route is JSON.
            .protos(Arc::new(shaddock_protocol::protobuf::Protos::new(
                shaddock_protocol::protobuf::Schema::from_file_json(&json!({})).unwrap(),
                shaddock_protocol::protobuf::Schema::from_file_json(
                    &json!({"chat.h.pb": {"required string text": 1}}),
                )
                .unwrap(),
            )))
            .build()
            .expect("frontend");
        let client_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client_addr = client_l.local_addr().unwrap();
        tokio::spawn({
            let (f, s) = (frontend.clone(), shutdown.clone());
            async move { f.serve(client_l, s).await }
        });
        let front_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front_port = front_l.local_addr().unwrap().port();
        let mut registry = Registry::new();
        registry.add(frontend.session_remote()).unwrap();
        tokio::spawn(RpcServer::new(registry, rpc_cfg.clone()).serve(front_l, shutdown.clone()));

        // The backend.
        let back_rpc = RpcClient::new(rpc_cfg.clone());
        back_rpc.directory().add(ServerInfo::new(
            "connector-1",
            "connector",
            "127.0.0.1",
            front_port,
        ));
        let me = ServerConfig {
            id: "chat-1".into(),
            server_type: "chat".into(),
            host: "127.0.0.1".into(),
            port: Some(0),
            client_port: None,
            frontend: false,
            extra: Map::new(),
        };
        let ctx = ServerContext::new(
            me,
            Vec::new(),
            "test".into(),
            back_rpc,
            "master".into(),
            shaddock_protocol::BodyCodec::default(),
            None,
        );
        let gate = release.clone();
        let observer = frontend.clone();
        let filtered = Arc::default();
        let app = App::new("settings-test")
            .filter("chat", Audit(Arc::clone(&filtered)))
            .handler(
                "chat.h.pb",
                |s: BackendSession, crate::Proto(pb): crate::Proto<Pb>, body: Value| async move {
                    Ok::<_, HandlerError>(json!({"text": pb.text, "json": body, "uid": s.uid()}))
                },
            )
            .handler("chat.h.held", move |s: BackendSession, v: Value| {
                let (entered_tx, gate) = (entered_tx.clone(), gate.clone());
                async move {
                    let _ = entered_tx.send(()).await;
                    let _permit = gate
                        .acquire()
                        .await
                        .map_err(|e| HandlerError::internal(e.to_string()))?;
                    for (k, v) in v["set"].as_object().cloned().unwrap_or_default() {
                        s.set(k, v);
                    }
                    for k in v["remove"].as_array().cloned().unwrap_or_default() {
                        s.remove(k.as_str().unwrap_or_default());
                    }
                    Ok::<_, HandlerError>(json!({"code": 200}))
                }
            })
            .handler("chat.h.push", move |s: BackendSession, _v: Value| {
                let observer = observer.clone();
                async move {
                    s.set("p", json!(1));
                    s.push_settings()
                        .await
                        .map_err(|e| HandlerError::internal(e.to_string()))?;
                    let pushed = !s.has_changes();
                    let on_frontend = observer.sessions().get(s.id()).and_then(|f| f.get("p"));
                    // Pushed already: the reply does not carry it again (the frontend's
                    // later value must survive, see the test).
                    if let Some(f) = observer.sessions().get(s.id()) {
                        f.set("p", json!("frontend"));
                    }
                    Ok::<_, HandlerError>(json!({"pushed": pushed, "p": on_frontend}))
                }
            });
        let def = app.types.get("chat").expect("chat type");
        let back_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let back_port = back_l.local_addr().unwrap().port();
        let mut registry = Registry::new();
        registry
            .add(msg_remote::Server::new(MsgRemote::new(
                ctx.clone(),
                def,
                app.server_state(&ctx),
            )))
            .unwrap();
        tokio::spawn(RpcServer::new(registry, rpc_cfg).serve(back_l, shutdown.clone()));
        front_rpc
            .directory()
            .add(ServerInfo::new("chat-1", "chat", "127.0.0.1", back_port));

        let (client, _events) = within(Client::connect(
            &client_addr.to_string(),
            Transport::Tcp,
            ClientConfig::default().with_request_timeout(STEP),
        ))
        .await
        .expect("connect");
        Setup {
            frontend,
            client,
            entered,
            release,
            shutdown,
            filtered,
        }
    }

    /// A backend filter's `before` refuses a forwarded request (the client gets its error,
    /// the handler does not run) and its `after` sees every outcome.
    #[tokio::test]
    async fn backend_filters_refuse_before_and_see_every_outcome_after() {
        let t = setup().await;
        let r = within(t.client.request("chat.h.push", &json!({"deny": true})))
            .await
            .unwrap();
        assert_eq!(r, json!({"code": 403, "msg": "chat.h.push denied"}));
        let r = within(t.client.request("chat.h.push", &json!({})))
            .await
            .unwrap();
        assert_eq!(r["pushed"], true, "{r}");
        // The refused request did not run: `p` was set once, by the second.
        assert_eq!(
            t.filtered.lock().unwrap().clone(),
            [
                ("chat.h.push".to_owned(), None, false),
                ("chat.h.push".to_owned(), None, true)
            ]
        );
        t.shutdown.cancel();
    }

    fn frontend_settings(f: &Frontend) -> Map<String, Value> {
        let all = f.sessions().all();
        assert_eq!(all.len(), 1);
        all[0].settings()
    }

    /// A key set on the frontend while a backend handler holds an older copy of the
    /// settings keeps its new value when the handler returns without touching it; the keys
    /// the handler sets and removes are applied.
    #[tokio::test]
    async fn a_backend_reply_carries_only_the_keys_its_handler_changed() {
        let mut t = setup().await;
        let r = within(t.client.request(
            "connector.entryHandler.set",
            &json!({"x": "old", "z": "doomed", "keep": 1}),
        ))
        .await
        .unwrap();
        assert_eq!(r["code"], 200);

        let held = tokio::spawn({
            let c = t.client.clone();
            async move {
                c.request(
                    "chat.h.held",
                    &json!({"set": {"y": "from backend"}, "remove": ["z"]}),
                )
                .await
            }
        });
        within(t.entered.recv())
            .await
            .expect("backend handler entered");
        // While the backend holds x = "old": x changes on the frontend.
        let r = within(
            t.client
                .request("connector.entryHandler.set", &json!({"x": "new"})),
        )
        .await
        .unwrap();
        assert_eq!(r["code"], 200);
        t.release.add_permits(1);
        let r = within(held).await.unwrap().unwrap();
        assert_eq!(r["code"], 200);

        let settings = frontend_settings(&t.frontend);
        assert_eq!(
            Value::Object(settings),
            json!({"x": "new", "y": "from backend", "keep": 1}),
            "x reverted, y not merged or z not removed"
        );
        t.shutdown.cancel();
    }

    /// `push_settings` sends the changed keys at once and they are not sent again with the
    /// reply (which would overwrite a later frontend value).
    #[tokio::test]
    async fn push_settings_applies_the_changes_at_once_and_only_once() {
        let t = setup().await;
        let r = within(t.client.request("chat.h.push", &json!({})))
            .await
            .unwrap();
        assert_eq!(r, json!({"pushed": true, "p": 1}));
        let settings = frontend_settings(&t.frontend);
        assert_eq!(settings.get("p"), Some(&json!("frontend")));
        t.shutdown.cancel();
    }
}
