//! The chat page in headless Chromium against the real cluster: the Node/playwright tests of
//! `chat/browser-tests` (two pages on different connectors in one room, with a screenshot in
//! `target/chat-browser.png`; the stock `pomelo-jsclient-websocket` logging in through the gate
//! and chatting with JSON bodies).
//!
//! Needs Debian's chromium and the pinned npm packages: `scripts/install-js-deps` installs
//! them (`scripts/test` runs it first). When they are missing this test fails saying so.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::Cluster;

/// Each npm script's time limit.
const NPM_TIMEOUT: Duration = Duration::from_secs(300);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate is in the workspace")
        .to_owned()
}

fn check_prerequisites(tests_dir: &Path) {
    let chromium = std::env::var("CHROMIUM_PATH").unwrap_or("/usr/bin/chromium".into());
    let mut missing = Vec::new();
    if !Path::new(&chromium).exists() {
        missing.push(chromium);
    }
    for pkg in ["playwright-core", "pomelo-jsclient-websocket", "ws"] {
        let p = tests_dir.join("node_modules").join(pkg);
        if !p.exists() {
            missing.push(p.display().to_string());
        }
    }
    if Command::new("npm")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_or(true, |s| !s.success())
    {
        missing.push("npm".into());
    }
    assert!(
        missing.is_empty(),
        "the browser test needs {missing:?}: run scripts/install-js-deps (from the repo root)"
    );
}

/// Runs `npm run <script>` in chat/browser-tests against the cluster, within [`NPM_TIMEOUT`].
fn npm_run(script: &str, cluster: &Cluster, screenshot: &Path) {
    let root = repo_root();
    let child = Command::new("npm")
        .arg("--prefix")
        .arg(root.join("chat/browser-tests"))
        .args(["run", script])
        .env("CHAT_PAGE_URL", cluster.page())
        .env("CHAT_GATE", cluster.gate())
        .env("CHAT_SCREENSHOT", screenshot)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run npm");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(NPM_TIMEOUT) {
        Ok(out) => {
            let out = out.expect("npm output");
            assert!(
                out.status.success(),
                "npm run {script} failed ({})\n--- stdout\n{}\n--- stderr\n{}\n--- cluster log\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                cluster.log()
            );
        }
        Err(_) => {
            common::signal(pid, "KILL");
            panic!("npm run {script} did not finish within {NPM_TIMEOUT:?}");
        }
    }
}

#[test]
fn browser_pages_and_the_stock_pomelo_client_chat_through_the_cluster() {
    let root = repo_root();
    check_prerequisites(&root.join("chat/browser-tests"));
    let cluster = Cluster::start();
    let screenshot = root.join("target/chat-browser.png");
    let _ = std::fs::remove_file(&screenshot);
    npm_run("test:page", &cluster, &screenshot);
    let meta = std::fs::metadata(&screenshot).expect("the page test saved a screenshot");
    assert!(meta.len() > 1000, "screenshot of {} bytes", meta.len());
    npm_run("test:stock", &cluster, &screenshot);
}
