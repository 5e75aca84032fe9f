//! Remote services: the [`Service`] trait the server dispatches to, the [`remote!`](crate::remote!) macro that
//! declares a typed remote once, and the registry built from them.
//!
//! # Why a declarative macro
//! A remote is declared once, as a list of `fn method(Arg) -> Reply;` lines, and
//! [`remote!`](crate::remote!) derives from that single list the server-side trait to
//! implement, the dispatch `match` on method names, and the typed client stub. Adding a method
//! is one line there (the compiler then asks for its implementation). A plain trait alone
//! cannot give callers a stub (async trait methods are not object safe and a stub needs the
//! method names as data), and a derive/attribute macro would need a proc-macro crate with
//! `syn`/`quote` — more build time and dependencies for the same result.

use crate::error::RemoteError;
use crate::frame::{ErrorKind, Name, Namespace, WireError};
use crate::hash::FastMap;
use crate::payload::PayloadError;
use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// The future a [`Service`] returns for one call: the encoded reply or the error to send back.
pub type BoxCall = Pin<Box<dyn Future<Output = Result<Bytes, WireError>> + Send + 'static>>;

/// A remote service as the server sees it: a name in a namespace and a dispatch function.
/// Implemented by [`remote!`](crate::remote!)'s `Server<T>`; implement it by hand only for
/// dynamic services.
pub trait Service: Send + Sync + 'static {
    /// `sys` or `user`.
    fn namespace(&self) -> Namespace;
    /// The service name callers use, e.g. `chatRemote`.
    fn name(&self) -> &'static str;
    /// Runs `method` on `payload`. Unknown methods resolve to an
    /// [`ErrorKind::UnknownMethod`] error.
    fn call(&self, method: &str, payload: Bytes) -> BoxCall;
    /// The method names [`Service::call`] knows (a [`remote!`](crate::remote!) service
    /// lists its `METHODS`): the server matches a method name read off the wire against
    /// them as bytes and passes the matching `&'static str`, instead of checking the
    /// name's UTF-8 once more per call. Default: none listed (the name is checked then).
    fn methods(&self) -> &'static [&'static str] {
        &[]
    }
    /// Whether the server may poll this service's calls and notifies once on the
    /// connection's read loop before giving them a task: one that finishes at once (no
    /// await that waits) then costs no task spawn; one that waits is spawned and goes on in
    /// its task. Only for
    /// handlers that do little work before their first wait: that work delays the reading
    /// of the connection's next frames. Default `false` (every call in its own task).
    fn inline(&self) -> bool {
        false
    }
}

/// Wire error for an argument that did not decode (used by [`remote!`](crate::remote!)).
#[doc(hidden)]
pub fn bad_payload(service: &str, method: &str, e: PayloadError) -> WireError {
    WireError {
        kind: ErrorKind::BadPayload,
        code: 0,
        message: format!("{service}.{method}: {e}"),
    }
}

/// Wire error for a handler's own error (used by [`remote!`](crate::remote!)).
#[doc(hidden)]
pub fn handler_error(e: RemoteError) -> WireError {
    WireError {
        kind: ErrorKind::Handler,
        code: e.code,
        message: e.message,
    }
}

/// Wire error for a method the service lacks (used by [`remote!`](crate::remote!)).
#[doc(hidden)]
pub fn unknown_method(ns: Namespace, service: &str, method: &str) -> BoxCall {
    let e = WireError {
        kind: ErrorKind::UnknownMethod,
        code: 0,
        message: format!("{ns}.{service} has no method `{method}`"),
    };
    Box::pin(async move { Err(e) })
}

/// Error building a [`Registry`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// Two services with the same name in one namespace.
    #[error("rpc service `{namespace}.{name}` registered twice")]
    Duplicate {
        /// Its namespace.
        namespace: Namespace,
        /// Its name.
        name: String,
    },
    /// A service name is empty or longer than 255 bytes.
    #[error("rpc service name `{name}` must be 1..=255 bytes")]
    BadName {
        /// The name.
        name: String,
    },
}

/// One incoming call as [`RpcFilter`]s see it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RpcCall {
    /// `sys` or `user`.
    pub namespace: Namespace,
    /// The service name, e.g. `chatRemote`.
    pub service: String,
    /// The method name, e.g. `add`.
    pub method: String,
    /// The argument's encoded size in bytes.
    pub payload_len: usize,
}

/// A filter around every call a [`Registry`] dispatches (pomelo's rpc filters), on the RPC
/// server side: `before` may refuse a call (the caller gets the error as the remote's own,
/// [`crate::RpcError::Remote`], and the method does not run); `after` sees the outcome.
/// Filters run in registration order.
///
/// ```
/// use shaddock_rpc::{RemoteError, RpcCall, RpcFilter};
///
/// struct NoUserCallsToAdmin;
///
/// impl RpcFilter for NoUserCallsToAdmin {
///     async fn before(&self, call: &RpcCall) -> Result<(), RemoteError> {
///         if call.service == "adminRemote" {
///             return Err(RemoteError::new(403, "adminRemote is closed"));
///         }
///         Ok(())
///     }
/// }
/// ```
pub trait RpcFilter: Send + Sync + 'static {
    /// Checks a call before its method runs.
    ///
    /// # Errors
    /// The refusal, sent back as the remote's error.
    fn before(&self, call: &RpcCall) -> impl Future<Output = Result<(), RemoteError>> + Send {
        let _ = call;
        async { Ok(()) }
    }

    /// Observes a call's outcome (also of one a before filter refused).
    fn after(
        &self,
        call: &RpcCall,
        outcome: &Result<Bytes, WireError>,
    ) -> impl Future<Output = ()> + Send {
        let _ = (call, outcome);
        async {}
    }
}

/// A [`RpcFilter`] behind a pointer (what a [`Registry`] stores).
pub trait DynRpcFilter: Send + Sync {
    /// [`RpcFilter::before`].
    fn before<'a>(
        &'a self,
        call: &'a RpcCall,
    ) -> Pin<Box<dyn Future<Output = Result<(), RemoteError>> + Send + 'a>>;
    /// [`RpcFilter::after`].
    fn after<'a>(
        &'a self,
        call: &'a RpcCall,
        outcome: &'a Result<Bytes, WireError>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
}

impl<F: RpcFilter> DynRpcFilter for F {
    fn before<'a>(
        &'a self,
        call: &'a RpcCall,
    ) -> Pin<Box<dyn Future<Output = Result<(), RemoteError>> + Send + 'a>> {
        Box::pin(RpcFilter::before(self, call))
    }

    fn after<'a>(
        &'a self,
        call: &'a RpcCall,
        outcome: &'a Result<Bytes, WireError>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(RpcFilter::after(self, call, outcome))
    }
}

/// The services one server offers, by namespace and name, and the filters around their
/// calls. Built once, then shared.
#[derive(Default, Clone)]
pub struct Registry {
    /// By namespace, then name (as bytes: a name read off the wire is looked up as it is).
    spaces: [FastMap<&'static [u8], Arc<dyn Service>>; 2],
    filters: Vec<Arc<dyn DynRpcFilter>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<String> = self
            .spaces
            .iter()
            .flat_map(|m| {
                m.values()
                    .map(|s| format!("{}.{}", s.namespace(), s.name()))
            })
            .collect();
        names.sort();
        f.debug_struct("Registry")
            .field("services", &names)
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a service.
    ///
    /// # Errors
    /// [`RegistryError::Duplicate`] if its namespace already has a service of that name;
    /// [`RegistryError::BadName`] for an empty or over-long name.
    pub fn add(&mut self, service: impl Service) -> Result<&mut Self, RegistryError> {
        self.add_arc(Arc::new(service))
    }

    /// Adds a shared service (see [`Registry::add`]).
    ///
    /// # Errors
    /// As [`Registry::add`].
    pub fn add_arc(&mut self, service: Arc<dyn Service>) -> Result<&mut Self, RegistryError> {
        let name = service.name();
        if name.is_empty() || name.len() > crate::frame::MAX_NAME_LEN {
            return Err(RegistryError::BadName { name: name.into() });
        }
        let ns = service.namespace();
        let space = &mut self.spaces[ns as usize];
        if space.contains_key(name.as_bytes()) {
            return Err(RegistryError::Duplicate {
                namespace: ns,
                name: name.into(),
            });
        }
        space.insert(name.as_bytes(), service);
        Ok(self)
    }

    /// The service named `name` in `ns`.
    pub fn get(&self, ns: Namespace, name: &str) -> Option<&Arc<dyn Service>> {
        self.spaces[ns as usize].get(name.as_bytes())
    }

    /// Adds a filter around every call (see [`RpcFilter`]).
    pub fn filter(&mut self, filter: impl RpcFilter) -> &mut Self {
        self.filters.push(Arc::new(filter));
        self
    }

    /// Adds a shared filter (see [`Registry::filter`]).
    pub fn filter_arc(&mut self, filter: Arc<dyn DynRpcFilter>) -> &mut Self {
        self.filters.push(filter);
        self
    }

    /// Dispatches one call through the filters; unknown services resolve to an
    /// [`ErrorKind::UnknownService`] error (which after filters see too).
    pub fn dispatch(&self, ns: Namespace, service: &str, method: &str, payload: Bytes) -> BoxCall {
        self.dispatch_to(self.get(ns, service), ns, service, method, payload)
    }

    /// [`Registry::dispatch`] of a call read off the wire: the service is looked up by the
    /// name's bytes, and the names passed on are the service's own static strings when it
    /// lists its methods (see [`Service::methods`]), so the names' UTF-8 (checked when the
    /// frame was decoded) is not checked again per call.
    ///
    /// Also returns whether the service allows its calls to be polled inline
    /// ([`Service::inline`]).
    pub(crate) fn dispatch_wire(
        &self,
        ns: Namespace,
        service: &Name,
        method: &Name,
        payload: Bytes,
    ) -> (BoxCall, bool) {
        let Some(s) = self.spaces[ns as usize].get(service.as_bytes()) else {
            let call = self.dispatch_to(None, ns, service.as_str(), method.as_str(), payload);
            return (call, false);
        };
        let known = s
            .methods()
            .iter()
            .find(|m| m.as_bytes() == method.as_bytes());
        let method = match known {
            Some(m) => m,
            None => method.as_str(),
        };
        let call = self.dispatch_to(Some(s), ns, s.name(), method, payload);
        (call, s.inline())
    }

    /// [`Registry::dispatch`] once the service (if any) is found.
    fn dispatch_to(
        &self,
        found: Option<&Arc<dyn Service>>,
        ns: Namespace,
        service: &str,
        method: &str,
        payload: Bytes,
    ) -> BoxCall {
        if self.filters.is_empty() {
            return dispatch_unfiltered(found, ns, service, method, payload);
        }
        let call = RpcCall {
            namespace: ns,
            service: service.to_owned(),
            method: method.to_owned(),
            payload_len: payload.len(),
        };
        let filters = self.filters.clone();
        // Not polled (so the method does not run) unless every before filter lets it.
        let inner = dispatch_unfiltered(found, ns, service, method, payload);
        Box::pin(async move {
            let mut refused = None;
            for f in &filters {
                if let Err(e) = f.before(&call).await {
                    refused = Some(handler_error(e));
                    break;
                }
            }
            let outcome = match refused {
                Some(e) => Err(e),
                None => inner.await,
            };
            for f in &filters {
                f.after(&call, &outcome).await;
            }
            outcome
        })
    }
}

fn dispatch_unfiltered(
    found: Option<&Arc<dyn Service>>,
    ns: Namespace,
    service: &str,
    method: &str,
    payload: Bytes,
) -> BoxCall {
    match found {
        Some(s) => s.call(method, payload),
        None => {
            let e = WireError {
                kind: ErrorKind::UnknownService,
                code: 0,
                message: format!("no rpc service `{ns}.{service}` (method `{method}`)"),
            };
            Box::pin(async move { Err(e) })
        }
    }
}

/// The arguments (a JSON array) and reply (JSON) of a [`remote!`](crate::remote!) method
/// declared with named arguments, as pomelo's remotes send theirs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JsonArgs<T>(pub T);

impl<T> crate::Payload for JsonArgs<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    fn into_payload(self) -> Bytes {
        // Serializing plain data (strings, numbers, maps with string keys) does not fail; a
        // type whose `Serialize` does (a map with non-string keys) is a bug of its remote.
        match serde_json::to_vec(&self.0) {
            Ok(v) => Bytes::from(v),
            Err(e) => {
                tracing::error!(cause = %e, "remote argument or reply does not encode as JSON");
                Bytes::from_static(b"null")
            }
        }
    }

    fn from_payload(bytes: Bytes) -> Result<Self, PayloadError> {
        serde_json::from_slice(&bytes)
            .map(Self)
            .map_err(|e| PayloadError {
                message: e.to_string(),
            })
    }
}

/// The length of `name` in camelCase (each `_` dropped).
#[doc(hidden)]
pub const fn camel_len(name: &str) -> usize {
    let b = name.as_bytes();
    let (mut i, mut n) = (0, 0);
    while i < b.len() {
        if b[i] != b'_' {
            n += 1;
        }
        i += 1;
    }
    n
}

/// `name` (snake_case ASCII) in camelCase: `kick_uid` → `kickUid`, as pomelo's method names.
#[doc(hidden)]
pub const fn camel<const N: usize>(name: &str) -> [u8; N] {
    let b = name.as_bytes();
    let mut out = [0u8; N];
    let (mut i, mut o, mut upper) = (0, 0, false);
    while i < b.len() {
        if b[i] == b'_' {
            upper = o > 0;
        } else {
            out[o] = if upper {
                b[i].to_ascii_uppercase()
            } else {
                b[i]
            };
            upper = false;
            o += 1;
        }
        i += 1;
    }
    out
}

/// The wire name of a remote method: its Rust name in camelCase, computed at compile time.
#[doc(hidden)]
#[macro_export]
macro_rules! __rpc_wire_name {
    ($method:ident) => {{
        const BYTES: &[u8] = &$crate::service::camel::<
            { $crate::service::camel_len(stringify!($method)) },
        >(stringify!($method));
        // A constant, so that the UTF-8 check runs at compile time: as a plain expression
        // it ran at every use, e.g. per call for each method name the dispatch compares.
        const NAME: &str = match ::core::str::from_utf8(BYTES) {
            ::core::result::Result::Ok(s) => s,
            ::core::result::Result::Err(_) => panic!("a method name is ASCII"),
        };
        NAME
    }};
}

/// One method of the server trait (named arguments, or one payload argument).
#[doc(hidden)]
#[macro_export]
macro_rules! __rpc_trait_fn {
    ([$($mmeta:meta)*] $method:ident ($($p:ident : $t:ty),* $(,)?) $ret:ty) => {
        $(#[$mmeta])*
        fn $method(
            &self,
            $($p: $t),*
        ) -> impl ::core::future::Future<
            Output = ::core::result::Result<$ret, $crate::RemoteError>,
        > + ::core::marker::Send;
    };
    ([$($mmeta:meta)*] $method:ident ($arg:ty) $ret:ty) => {
        $(#[$mmeta])*
        fn $method(
            &self,
            args: $arg,
        ) -> impl ::core::future::Future<
            Output = ::core::result::Result<$ret, $crate::RemoteError>,
        > + ::core::marker::Send;
    };
}

/// One method's dispatch: decode, call, encode.
#[doc(hidden)]
#[macro_export]
macro_rules! __rpc_dispatch {
    ($inner:ident $payload:ident $name:ident $method:ident ($($p:ident : $t:ty),* $(,)?) $ret:ty) => {
        ::std::boxed::Box::pin(async move {
            let $crate::service::JsonArgs(($($p,)*)) =
                <$crate::service::JsonArgs<($($t,)*)> as $crate::Payload>::from_payload($payload)
                    .map_err(|e| $crate::service::bad_payload($name, $crate::__rpc_wire_name!($method), e))?;
            let reply: $ret = $inner
                .$method($($p),*)
                .await
                .map_err($crate::service::handler_error)?;
            ::core::result::Result::Ok(<$crate::service::JsonArgs<$ret> as $crate::Payload>::into_payload(
                $crate::service::JsonArgs(reply),
            ))
        })
    };
    ($inner:ident $payload:ident $name:ident $method:ident ($arg:ty) $ret:ty) => {
        ::std::boxed::Box::pin(async move {
            let args = <$arg as $crate::Payload>::from_payload($payload)
                .map_err(|e| $crate::service::bad_payload($name, $crate::__rpc_wire_name!($method), e))?;
            let reply = $inner
                .$method(args)
                .await
                .map_err($crate::service::handler_error)?;
            ::core::result::Result::Ok(<$ret as $crate::Payload>::into_payload(reply))
        })
    };
}

/// One method of the client stub (`call`) or of its notifier (`notify`).
#[doc(hidden)]
#[macro_export]
macro_rules! __rpc_client_fn {
    (call [$($mmeta:meta)*] $ns:ident $name:ident $method:ident ($($p:ident : $t:ty),* $(,)?) $ret:ty) => {
        $(#[$mmeta])*
        pub async fn $method(
            &self,
            target: $crate::Target<'_>,
            $($p: $t),*
        ) -> ::core::result::Result<$ret, $crate::RpcError> {
            self.rpc
                .call::<$crate::service::JsonArgs<($($t,)*)>, $crate::service::JsonArgs<$ret>>(
                    target,
                    $ns,
                    $name,
                    $crate::__rpc_wire_name!($method),
                    $crate::service::JsonArgs(($($p,)*)),
                )
                .await
                .map(|$crate::service::JsonArgs(r)| r)
        }
    };
    (call [$($mmeta:meta)*] $ns:ident $name:ident $method:ident ($arg:ty) $ret:ty) => {
        $(#[$mmeta])*
        pub async fn $method(
            &self,
            target: $crate::Target<'_>,
            args: $arg,
        ) -> ::core::result::Result<$ret, $crate::RpcError> {
            self.rpc
                .call::<$arg, $ret>(target, $ns, $name, $crate::__rpc_wire_name!($method), args)
                .await
        }
    };
    (notify [$($mmeta:meta)*] $ns:ident $name:ident $method:ident ($($p:ident : $t:ty),* $(,)?) $ret:ty) => {
        $(#[$mmeta])*
        pub async fn $method(
            &self,
            target: $crate::Target<'_>,
            $($p: $t),*
        ) -> ::core::result::Result<(), $crate::RpcError> {
            self.rpc
                .notify::<$crate::service::JsonArgs<($($t,)*)>>(
                    target,
                    $ns,
                    $name,
                    $crate::__rpc_wire_name!($method),
                    $crate::service::JsonArgs(($($p,)*)),
                )
                .await
        }
    };
    (notify [$($mmeta:meta)*] $ns:ident $name:ident $method:ident ($arg:ty) $ret:ty) => {
        $(#[$mmeta])*
        pub async fn $method(
            &self,
            target: $crate::Target<'_>,
            args: $arg,
        ) -> ::core::result::Result<(), $crate::RpcError> {
            self.rpc
                .notify::<$arg>(target, $ns, $name, $crate::__rpc_wire_name!($method), args)
                .await
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __rpc_namespace {
    (sys) => {
        $crate::Namespace::Sys
    };
    (user) => {
        $crate::Namespace::User
    };
}

/// Declares a typed remote once; generates the server trait, its dispatcher and the client stub.
///
/// ```
/// use shaddock_rpc::{remote, RemoteError};
///
/// #[derive(Clone, PartialEq, prost::Message)]
/// pub struct AddArgs {
///     #[prost(string, tag = "1")]
///     pub uid: String,
///     #[prost(string, tag = "2")]
///     pub room: String,
/// }
///
/// #[derive(Clone, PartialEq, prost::Message)]
/// pub struct Members {
///     #[prost(string, repeated, tag = "1")]
///     pub uids: Vec<String>,
/// }
///
/// remote! {
///     /// The chat server's remote (pomelo `chatRemote`).
///     pub mod chat_remote: user "chatRemote" {
///         /// Adds a user to a room; returns the room's members.
///         fn add(AddArgs) -> Members;
///         /// Removes a user.
///         fn kick(AddArgs) -> ();
///     }
/// }
///
/// struct Chat;
/// impl chat_remote::Remote for Chat {
///     async fn add(&self, args: AddArgs) -> Result<Members, RemoteError> {
///         Ok(Members { uids: vec![args.uid] })
///     }
///     async fn kick(&self, _args: AddArgs) -> Result<(), RemoteError> {
///         Ok(())
///     }
/// }
///
/// fn main() {
///     // Server side: register the service.
///     let mut registry = shaddock_rpc::Registry::new();
///     registry.add(chat_remote::Server::new(Chat)).unwrap();
///     // Client side: `chat_remote::Client::new(&rpc).add(Target::route("chat", uid), args)`.
/// }
/// ```
///
/// A method may instead take several named arguments of serde types, as pomelo's remotes do
/// (`chatRemote.add(uid, sid, name, flag)`); they travel as a JSON array, the reply as JSON:
///
/// ```
/// use shaddock_rpc::{remote, RemoteError};
///
/// remote! {
///     pub mod room_remote: user "chatRemote" {
///         /// Adds `uid` of frontend `frontend_id` to room `rid`; the members after.
///         fn add(uid: String, frontend_id: String, rid: String) -> Vec<String>;
///     }
/// }
///
/// struct Rooms;
/// impl room_remote::Remote for Rooms {
///     async fn add(&self, uid: String, _frontend_id: String, _rid: String) -> Result<Vec<String>, RemoteError> {
///         Ok(vec![uid])
///     }
/// }
/// // Caller: `room_remote::Client::new(&rpc).add(target, uid, frontend_id, rid).await?`.
/// assert_eq!(room_remote::METHODS, ["add"]);
/// ```
///
/// Wire method names are the Rust names in camelCase (`kick_uid` is called `kickUid`), as
/// pomelo names its remotes' methods.
///
/// The generated module `$name` holds:
/// - `NAMESPACE`, `NAME`, `METHODS`: the namespace (`sys` or `user`), the service name callers
///   use on the wire, and the method names;
/// - `trait Remote`: one `async fn method(&self, Arg) -> Result<Reply, RemoteError>` (or
///   `(&self, a: A, b: B, ...)`) per line;
/// - `struct Server<T: Remote>`: the [`Service`] to register (`Server::new(impl)`;
///   `.inline_calls()` lets the server poll its calls once before giving them a task, see
///   [`Service::inline`]);
/// - `struct Client`: `async fn method(&self, target: Target<'_>, Arg) -> Result<Reply, RpcError>`
///   per line, and `client.notify().method(target, arg)` to send the same call one-way.
///
/// With one unnamed argument, argument and reply types are [`crate::Payload`]s: prost
/// messages, `()`, or [`crate::Raw`]; with named arguments, serde types.
/// The module does `use super::*`, so types in scope where the macro is invoked are in scope
/// in it.
#[macro_export]
macro_rules! remote {
    (
        $(#[$meta:meta])*
        $vis:vis mod $module:ident : $ns:ident $name:literal {
            $(
                $(#[$mmeta:meta])*
                fn $method:ident $params:tt -> $ret:ty ;
            )*
        }
    ) => {
        $(#[$meta])*
        $vis mod $module {
            #![allow(unused_imports)]
            use super::*;

            /// The namespace this remote lives in.
            pub const NAMESPACE: $crate::Namespace = $crate::__rpc_namespace!($ns);
            /// The service name on the wire.
            pub const NAME: &str = $name;
            /// The method names on the wire (camelCase).
            pub const METHODS: &[&str] = &[$($crate::__rpc_wire_name!($method)),*];

            /// Implement this on the server that offers the remote.
            pub trait Remote: ::core::marker::Send + ::core::marker::Sync + 'static {
                $(
                    $crate::__rpc_trait_fn!([$($mmeta)*] $method $params $ret);
                )*
            }

            /// The [`Remote`] implementation as a registrable service.
            pub struct Server<T>(::std::sync::Arc<T>, bool);

            impl<T: Remote> Server<T> {
                /// Wraps an implementation.
                pub fn new(inner: T) -> Self {
                    Self(::std::sync::Arc::new(inner), false)
                }

                /// Wraps a shared implementation.
                pub fn from_arc(inner: ::std::sync::Arc<T>) -> Self {
                    Self(inner, false)
                }

                /// Lets the server poll this service's calls once on the connection's
                /// read loop before giving them a task (see
                /// [`Service::inline`]($crate::Service::inline)): for methods that
                /// finish at once, with little work.
                #[must_use]
                pub fn inline_calls(mut self) -> Self {
                    self.1 = true;
                    self
                }
            }

            impl<T: Remote> $crate::Service for Server<T> {
                fn namespace(&self) -> $crate::Namespace {
                    NAMESPACE
                }

                fn name(&self) -> &'static str {
                    NAME
                }

                fn methods(&self) -> &'static [&'static str] {
                    METHODS
                }

                fn inline(&self) -> bool {
                    self.1
                }

                fn call(&self, method: &str, payload: $crate::__bytes::Bytes) -> $crate::BoxCall {
                    $(
                        if method == $crate::__rpc_wire_name!($method) {
                            let inner = ::std::sync::Arc::clone(&self.0);
                            return $crate::__rpc_dispatch!(inner payload NAME $method $params $ret);
                        }
                    )*
                    $crate::service::unknown_method(NAMESPACE, NAME, method)
                }
            }

            /// Typed stub: call the remote on any server.
            #[derive(Clone, Debug)]
            pub struct Client {
                rpc: $crate::RpcClient,
            }

            impl Client {
                /// A stub calling through `rpc`.
                pub fn new(rpc: &$crate::RpcClient) -> Self {
                    Self { rpc: rpc.clone() }
                }

                /// The client the calls go through (e.g. to
                /// [`expect_departure`]($crate::RpcClient::expect_departure) of a peer).
                pub fn rpc(&self) -> &$crate::RpcClient {
                    &self.rpc
                }

                /// The same calls as one-way notifies (no reply, no remote error reported).
                pub fn notify(&self) -> Notifier<'_> {
                    Notifier { rpc: &self.rpc }
                }

                $(
                    $crate::__rpc_client_fn!(call [$($mmeta)*] NAMESPACE NAME $method $params $ret);
                )*
            }

            /// One-way variants of the [`Client`] calls.
            #[derive(Clone, Copy, Debug)]
            pub struct Notifier<'a> {
                rpc: &'a $crate::RpcClient,
            }

            impl Notifier<'_> {
                $(
                    $crate::__rpc_client_fn!(notify [$($mmeta)*] NAMESPACE NAME $method $params $ret);
                )*
            }
        }
    };
}
