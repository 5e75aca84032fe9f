//! The framework's own (`sys`) remotes and their prost messages: [`shaddock_core::sys`], the
//! one definition frontends and backends share, re-exported here.

pub use shaddock_core::sys::*;
