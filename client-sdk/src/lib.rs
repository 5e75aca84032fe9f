//! A Rust client for pomelo-protocol servers (work in progress).
