//! The lines the master prints (listening, ready, failed) and relays from its servers.

/// Writes one line to standard output, ignoring a closed pipe (the launcher may be gone).
pub(super) fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// Relays a server's standard output to the master's, line by line, and returns the error it
/// reported with [`crate::process::FAILED_LINE`] before exiting, if it did.
pub(super) fn relay_server_output(
    id: String,
    out: tokio::process::ChildStdout,
) -> tokio::task::JoinHandle<Option<String>> {
    use tokio::io::AsyncBufReadExt;
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(out).lines();
        let mut failure = None;
        loop {
            match lines.next_line().await {
                Ok(Some(line)) => match line.strip_prefix(crate::process::FAILED_LINE) {
                    Some(cause) => failure = Some(cause.trim().to_owned()),
                    None => say(&line),
                },
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(server = %id, cause = %e, "server output not readable");
                    break;
                }
            }
        }
        failure
    })
}
