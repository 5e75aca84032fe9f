//! Log capture for tests that assert *why* a connection was closed.
//!
//! ```text
//! let (logs, _guard) = capture_logs();
//! // ... a hostile client at `me` is closed by the server ...
//! logs.expect(me, "handshake timeout").await;
//! ```
//!
//! The subscriber is installed with `set_default`, i.e. for the current thread: use a
//! current-thread runtime (the default of `#[tokio::test]`) so that spawned server tasks log
//! into the same buffer.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How long [`LogBuf::expect`] waits for its line: the server logs a close after the socket is
/// closed, so the line may come a moment after the client saw EOF.
pub const EXPECT_WITHIN: Duration = Duration::from_secs(10);

/// How many of the last lines a failed [`LogBuf::expect`] prints.
const TAIL_LINES: usize = 40;

/// The log text of one test (plain text, no colours, `DEBUG` and above).
#[derive(Clone, Default)]
pub struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.lock().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuf {
    /// A panicking test thread must not hide the others' logs behind a poisoned lock.
    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.lock()).into_owned()
    }

    /// Whether a line of `peer`'s connection (its span field `peer=…`) contains `what`.
    pub fn has(&self, peer: SocketAddr, what: &str) -> bool {
        self.has_any(peer, &[what])
    }

    /// Whether a line of `peer`'s connection contains one of `what`.
    pub fn has_any(&self, peer: SocketAddr, what: &[&str]) -> bool {
        let tag = format!("peer={peer}");
        self.text()
            .lines()
            .any(|l| l.contains(&tag) && what.iter().any(|w| l.contains(w)))
    }

    /// Waits, at most [`EXPECT_WITHIN`], until a line of `peer`'s connection contains `what`.
    ///
    /// # Panics
    /// When no such line comes in time; the message shows the last lines logged.
    pub async fn expect(&self, peer: SocketAddr, what: &str) {
        self.expect_any(peer, &[what]).await;
    }

    /// Waits, at most [`EXPECT_WITHIN`], until a line of `peer`'s connection contains one of
    /// `what`.
    ///
    /// # Panics
    /// When no such line comes in time; the message shows the last lines logged.
    pub async fn expect_any(&self, peer: SocketAddr, what: &[&str]) {
        let found = tokio::time::timeout(EXPECT_WITHIN, async {
            while !self.has_any(peer, what) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        if found.is_err() {
            let text = self.text();
            let tail: Vec<&str> = text.lines().rev().take(TAIL_LINES).collect();
            panic!(
                "no log line for peer={peer} containing any of {what:?}; last lines:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

/// Installs a subscriber writing into a fresh [`LogBuf`] for the current thread, until the
/// guard is dropped.
pub fn capture_logs() -> (LogBuf, tracing::subscriber::DefaultGuard) {
    let buf = LogBuf::default();
    let writer = buf.clone();
    let sub = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    (buf, tracing::subscriber::set_default(sub))
}
