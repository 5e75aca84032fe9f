//! Helpers shared by the tests of several Shaddock crates. A dev-dependency only: no production
//! crate depends on it (STYLE §1, like h2's `h2-support`).
//!
//! # Layout
//! - [`logs`]: capture one test's `tracing` output and wait for a line about a peer.
//! - [`netns`]: several hosts on one machine (network namespaces on a bridge), torn down on drop.
//! - [`nats`]: a JetStream nats-server cluster across such hosts.
//! - [`process`]: end the processes a test started, by PID.
//! - [`tls`]: a CA and a server certificate made at test time.

pub mod logs;
pub mod nats;
pub mod netns;
pub mod process;
pub mod tls;
