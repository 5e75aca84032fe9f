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
use crate::frame::{ErrorKind, Namespace, WireError};
use crate::payload::PayloadError;
use bytes::Bytes;
use std::collections::HashMap;
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

/// The services one server offers, by namespace and name. Built once, then shared.
#[derive(Default, Clone)]
pub struct Registry {
    spaces: [HashMap<&'static str, Arc<dyn Service>>; 2],
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
        if space.contains_key(name) {
            return Err(RegistryError::Duplicate {
                namespace: ns,
                name: name.into(),
            });
        }
        space.insert(name, service);
        Ok(self)
    }

    /// The service named `name` in `ns`.
    pub fn get(&self, ns: Namespace, name: &str) -> Option<&Arc<dyn Service>> {
        self.spaces[ns as usize].get(name)
    }

    /// Dispatches one call; unknown services resolve to an [`ErrorKind::UnknownService`] error.
    pub fn dispatch(&self, ns: Namespace, service: &str, method: &str, payload: Bytes) -> BoxCall {
        match self.get(ns, service) {
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
/// The generated module `$name` holds:
/// - `NAMESPACE`, `NAME`, `METHODS`: the namespace (`sys` or `user`), the service name callers
///   use on the wire, and the method names;
/// - `trait Remote`: one `async fn method(&self, Arg) -> Result<Reply, RemoteError>` per line;
/// - `struct Server<T: Remote>`: the [`Service`] to register (`Server::new(impl)`);
/// - `struct Client`: `async fn method(&self, target: Target<'_>, Arg) -> Result<Reply, RpcError>`
///   per line, and `client.notify().method(target, arg)` to send the same call one-way.
///
/// Argument and reply types are [`crate::Payload`]s: prost messages, `()`, or [`crate::Raw`].
/// The module does `use super::*`, so types in scope where the macro is invoked are in scope
/// in it.
#[macro_export]
macro_rules! remote {
    (
        $(#[$meta:meta])*
        $vis:vis mod $module:ident : $ns:ident $name:literal {
            $(
                $(#[$mmeta:meta])*
                fn $method:ident ( $arg:ty ) -> $ret:ty ;
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
            /// The method names on the wire.
            pub const METHODS: &[&str] = &[$(stringify!($method)),*];

            /// Implement this on the server that offers the remote.
            pub trait Remote: ::core::marker::Send + ::core::marker::Sync + 'static {
                $(
                    $(#[$mmeta])*
                    fn $method(
                        &self,
                        args: $arg,
                    ) -> impl ::core::future::Future<
                        Output = ::core::result::Result<$ret, $crate::RemoteError>,
                    > + ::core::marker::Send;
                )*
            }

            /// The [`Remote`] implementation as a registrable service.
            pub struct Server<T>(::std::sync::Arc<T>);

            impl<T: Remote> Server<T> {
                /// Wraps an implementation.
                pub fn new(inner: T) -> Self {
                    Self(::std::sync::Arc::new(inner))
                }

                /// Wraps a shared implementation.
                pub fn from_arc(inner: ::std::sync::Arc<T>) -> Self {
                    Self(inner)
                }
            }

            impl<T: Remote> $crate::Service for Server<T> {
                fn namespace(&self) -> $crate::Namespace {
                    NAMESPACE
                }

                fn name(&self) -> &'static str {
                    NAME
                }

                fn call(&self, method: &str, payload: $crate::__bytes::Bytes) -> $crate::BoxCall {
                    match method {
                        $(
                            stringify!($method) => {
                                let inner = ::std::sync::Arc::clone(&self.0);
                                ::std::boxed::Box::pin(async move {
                                    let args = <$arg as $crate::Payload>::from_payload(payload)
                                        .map_err(|e| $crate::service::bad_payload(NAME, stringify!($method), e))?;
                                    let reply = inner
                                        .$method(args)
                                        .await
                                        .map_err($crate::service::handler_error)?;
                                    ::core::result::Result::Ok(<$ret as $crate::Payload>::into_payload(reply))
                                })
                            }
                        )*
                        other => $crate::service::unknown_method(NAMESPACE, NAME, other),
                    }
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

                /// The same calls as one-way notifies (no reply, no remote error reported).
                pub fn notify(&self) -> Notifier<'_> {
                    Notifier { rpc: &self.rpc }
                }

                $(
                    $(#[$mmeta])*
                    pub async fn $method(
                        &self,
                        target: $crate::Target<'_>,
                        args: $arg,
                    ) -> ::core::result::Result<$ret, $crate::RpcError> {
                        self.rpc
                            .call::<$arg, $ret>(target, NAMESPACE, NAME, stringify!($method), args)
                            .await
                    }
                )*
            }

            /// One-way variants of the [`Client`] calls.
            #[derive(Clone, Copy, Debug)]
            pub struct Notifier<'a> {
                rpc: &'a $crate::RpcClient,
            }

            impl Notifier<'_> {
                $(
                    $(#[$mmeta])*
                    pub async fn $method(
                        &self,
                        target: $crate::Target<'_>,
                        args: $arg,
                    ) -> ::core::result::Result<(), $crate::RpcError> {
                        self.rpc
                            .notify::<$arg>(target, NAMESPACE, NAME, stringify!($method), args)
                            .await
                    }
                )*
            }
        }
    };
}
