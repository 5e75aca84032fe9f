//! The Shaddock application model: what turns the protocol, RPC and connector crates into
//! pomelo's cluster of typed servers.
//!
//! # Layout
//! - [`config`]: `config/servers.json` and `config/master.json` in pomelo's shape, validated.

pub mod config;
