//! Ending the processes a test started, by their PID.

use std::process::{Command, Stdio};

/// Sends SIGKILL to `pid` (with `kill -9`); whether `kill` succeeded (false when the process
/// was already gone).
pub fn kill9(pid: u32) -> bool {
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Sends SIGKILL to each of `pids`, ignoring the ones already gone: what a test fixture's
/// `Drop` does with the servers it started.
pub fn kill9_all<'a>(pids: impl IntoIterator<Item = &'a u32>) {
    for &pid in pids {
        kill9(pid);
    }
}
