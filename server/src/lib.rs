//! The Shaddock application model: what turns the protocol, RPC, core and connector crates
//! into pomelo's cluster of typed servers.
//!
//! An app is one binary. Its `main` declares its routes with an [`App`] — each a plain async
//! fn whose arguments are extractors ([`BackendSession`] or [`Session`], [`ServerContext`],
//! [`Json<T>`](Json), [`Proto<T>`](Proto), [`State<T>`](State)) — and calls [`run`], which
//! parses the pomelo-style command line:
//!
//! ```text
//! app start [-e ENV] [-D] [--config DIR]   master in the foreground (-D: in the background)
//! app list | stop | kill                   talk to the running master
//! app add id=chat-3 serverType=chat host=127.0.0.1 port=0
//! app init NAME                            scaffold a new app
//! ```
//!
//! The master ([`master`]) starts every server of `servers.json` as a process of the same
//! binary (hidden flags `--server-id ID --master HOST:PORT`), restarts crashed ones (with
//! backoff, and not after a crash loop: master.json's `restart`, a server's own
//! `"restart": false`; see [`config::RestartPolicy`]), and keeps the cluster view every server follows with a
//! long poll, so a server added at runtime becomes routable everywhere.
//!
//! # Layout
//! - [`config`]: `config/servers.json` and `config/master.json` in pomelo's shape, validated.
//! - [`app`]: the [`App`] builder: handlers, state, remotes, routers, filters (client and
//!   RPC), components, the route dictionary; the start-up check of routes against
//!   servers.json.
//! - [`context`]: [`ServerContext`], a running server's view of itself and the cluster.
//! - [`backend`]: forwarded requests, [`BackendSession`].
//! - [`channel`]: [`ChannelService`] and [`Channel`], pushes grouped by frontend.
//! - [`proto`]: the framework's `sys` remotes and their messages (`shaddock_core::sys`).
//! - `frontend`: forwarding and `sessionRemote` on a frontend this server runs (with
//!   [`process`] and [`context`], the only users of the connector crate).
//! - [`master`], [`process`], `cli`, `init`: the processes and the command line.
//! - [`procfs`]: a process's resident memory from `/proc`.

pub mod app;
pub mod backend;
pub mod channel;
mod cli;
pub mod cluster;
pub mod config;
pub mod context;
mod frontend;
mod init;
pub mod master;
pub mod metrics;
mod moves;
pub mod placement;
pub mod process;
pub mod procfs;
pub mod proto;
pub mod secret;

pub use app::{
    App, AppError, BackendHandler, BackendRequest, Component, ComponentError, DuplicateLogin,
    FrontendHandler, Rejoin, RejoinHook,
};
pub use backend::{BackendSession, SessionInfo};
pub use channel::{AlreadyMember, Channel, ChannelService, PushError, PushSummary};
pub use cli::run;
pub use context::{BindError, LiveServer, ServerContext};
/// The frontend's session (a frontend handler's extractor), from the connector that runs
/// frontends.
pub use shaddock_connector::Session;
pub use shaddock_core::{
    Filter, FromRequest, HandlerError, Json, Outcome, Proto, Request, RequestInfo, State,
};

/// Installs the `tracing` subscriber every Shaddock process uses: events to stderr, filtered by
/// `RUST_LOG` (default `info`), with colours only when stderr is a terminal, so log files and
/// captured test output stay plain text. Does nothing if a subscriber is already installed.
pub fn init_logging() {
    init_logging_with_default("info");
}

/// As [`init_logging`], with `default` as the filter when `RUST_LOG` is not set (the admin
/// commands use `warn`, so nothing but their output shows when all is well).
pub fn init_logging_with_default(default: &str) {
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .try_init();
}
