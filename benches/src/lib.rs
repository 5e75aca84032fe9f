//! Shared helpers for the Shaddock benches and load generator (work in progress).
