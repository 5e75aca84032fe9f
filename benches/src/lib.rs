//! Shared pieces of the Shaddock benches and of the `load` generator
//! (`cargo run --release -p shaddock-benches --bin load -- SCENARIO ...`, see `src/bin/load/`).
//!
//! - [`hist`]: a mergeable log-linear latency histogram with percentiles.
//! - [`procfs`]: connector RSS and pids (by listening port) from `/proc`.
//! - [`report`]: the Shaddock-vs-pinus table and the BENCHMARKS.md section rewrite.

pub mod hist;
pub mod procfs;
pub mod report;
