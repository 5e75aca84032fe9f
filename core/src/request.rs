//! One request or notify as handlers, extractors and filters see it.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde_json::Value;
use shaddock_protocol::message::MessageType;

/// What filters and the error handler learn about a message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestInfo {
    /// The route string (`serverType.handler.method`).
    pub route: String,
    /// The request id; 0 for notifies.
    pub id: u32,
    /// Request or notify.
    pub kind: MessageType,
}

impl RequestInfo {
    /// A message on `route` with request id `id` (0: a notify) of `kind`.
    pub fn new(route: impl Into<String>, id: u32, kind: MessageType) -> Self {
        Self {
            route: route.into(),
            id,
            kind,
        }
    }

    /// A message forwarded to a backend: a request when `id` is not 0, else a notify.
    pub fn forwarded(route: impl Into<String>, id: u32) -> Self {
        let kind = if id == 0 {
            MessageType::Notify
        } else {
            MessageType::Request
        };
        Self::new(route, id, kind)
    }
}

/// The app's shared values by type (`App::with_state`), read by the [`State`](crate::State)
/// extractor. Cheap to clone.
#[derive(Clone, Default)]
pub struct StateMap {
    values: Arc<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
}

impl std::fmt::Debug for StateMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMap")
            .field("values", &self.values.len())
            .finish()
    }
}

impl StateMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `value` (replacing a value of the same type).
    pub fn insert<T: Clone + Send + Sync + 'static>(&mut self, value: T) {
        Arc::make_mut(&mut self.values).insert(TypeId::of::<T>(), Arc::new(value));
    }

    /// The value of type `T`, if one was inserted.
    pub fn get<T: 'static>(&self) -> Option<&T> {
        self.values
            .get(&TypeId::of::<T>())
            .and_then(|v| v.downcast_ref::<T>())
    }

    /// Adds every value of `other` (its values win).
    pub fn extend(&mut self, other: &Self) {
        let map = Arc::make_mut(&mut self.values);
        for (k, v) in other.values.iter() {
            map.insert(*k, v.clone());
        }
    }
}

/// A request (or notify) on its way to a handler: route info, the session `S` (the frontend's
/// `Session` or the backend's `BackendSession`), the body, and the app's state.
#[derive(Debug, Clone)]
pub struct Request<S> {
    info: RequestInfo,
    session: S,
    /// The decoded body: set at once, or from `json_text` on first use.
    body: OnceLock<Value>,
    /// The body's JSON text when the request was made from text ([`Request::from_json_text`]).
    json_text: Option<Bytes>,
    protobuf: Option<Bytes>,
    state: StateMap,
}

impl<S> Request<S> {
    /// A request with a decoded JSON `body` and no state.
    pub fn new(info: RequestInfo, session: S, body: Value) -> Self {
        Self {
            info,
            session,
            body: OnceLock::from(body),
            json_text: None,
            protobuf: None,
            state: StateMap::default(),
        }
    }

    /// A request whose body is the JSON text `text`, already checked to be valid JSON (on a
    /// frontend, which forwards the text as it is, JSON that survives re-encoding:
    /// [`shaddock_protocol::json::passthrough`]); it is parsed (with
    /// [`shaddock_protocol::json::from_slice`]) only if someone reads [`Request::body`]
    /// ([`Json`](crate::Json) decodes its `T` from the text).
    pub fn from_json_text(info: RequestInfo, session: S, text: Bytes) -> Self {
        Self {
            info,
            session,
            body: OnceLock::new(),
            json_text: Some(text),
            protobuf: None,
            state: StateMap::default(),
        }
    }

    /// The body as the client sent it when it is protobuf (the route is in clientProtos), for
    /// the [`Proto`](crate::Proto) extractor.
    #[must_use]
    pub fn with_protobuf(mut self, raw: Bytes) -> Self {
        self.protobuf = Some(raw);
        self
    }

    /// The app's state.
    #[must_use]
    pub fn with_state(mut self, state: StateMap) -> Self {
        self.state = state;
        self
    }

    /// Route, id and kind.
    pub fn info(&self) -> &RequestInfo {
        &self.info
    }

    /// The route string.
    pub fn route(&self) -> &str {
        &self.info.route
    }

    /// The session.
    pub fn session(&self) -> &S {
        &self.session
    }

    /// The body, decoded as JSON (protobuf bodies decoded with their schema).
    pub fn body(&self) -> &Value {
        self.body.get_or_init(|| {
            // `from_json_text` takes checked text: this parse does not fail.
            self.json_text
                .as_ref()
                .and_then(|t| shaddock_protocol::json::from_slice(t).ok())
                .unwrap_or(Value::Null)
        })
    }

    /// The body's JSON text, when the request was made from it ([`Request::from_json_text`]):
    /// what a frontend forwards instead of encoding [`Request::body`] again.
    pub fn json_text(&self) -> Option<&Bytes> {
        self.json_text.as_ref()
    }

    /// The raw protobuf body, when the route's body is protobuf.
    pub fn protobuf(&self) -> Option<&Bytes> {
        self.protobuf.as_ref()
    }

    /// The app's state.
    pub fn state(&self) -> &StateMap {
        &self.state
    }
}
