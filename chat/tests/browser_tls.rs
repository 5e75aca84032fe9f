//! The stock `pomelo-jsclient-websocket` in headless Chromium over `wss://` against the real
//! chat cluster with TLS on the gate and every connector (`ssl` in servers.json, mode
//! `required`): the Node/playwright test `test:wss` of `chat/browser-tests` queries the gate,
//! enters a room on its connector and gets its own chat message pushed back, every socket being
//! `wss://`. The certificate is made here at test time (rcgen) and Chromium trusts exactly it,
//! by the SHA-256 of its public key (`--ignore-certificate-errors-spki-list`).
//!
//! Needs Debian's chromium and the pinned npm packages (`scripts/install-js-deps`); when they
//! are missing this test fails saying so.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use base64::Engine;
use common::Cluster;
use rcgen::PublicKeyData;
use serde_json::json;
use sha2::Digest;

/// The npm script's time limit.
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
    assert!(
        missing.is_empty(),
        "the browser test needs {missing:?}: run scripts/install-js-deps (from the repo root)"
    );
}

#[test]
fn the_stock_pomelo_client_chats_over_wss_in_chromium() {
    let root = repo_root();
    check_prerequisites(&root.join("chat/browser-tests"));

    // A certificate for 127.0.0.1, made now; Chromium is told to trust its public key.
    let tls_dir = common::tmp_dir();
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    let (cert_file, key_file) = (tls_dir.join("server.crt"), tls_dir.join("server.key"));
    std::fs::write(&cert_file, cert.pem()).expect("write cert");
    std::fs::write(&key_file, key.serialize_pem()).expect("write key");
    let spki = base64::engine::general_purpose::STANDARD
        .encode(sha2::Sha256::digest(key.subject_public_key_info()));

    let ssl = json!({"cert": cert_file, "key": key_file, "mode": "required"});
    let cluster = Cluster::start_with(&|servers, _master| {
        for t in ["gate", "connector"] {
            for s in servers[t].as_array_mut().expect("servers of the type") {
                s["ssl"] = ssl.clone();
            }
        }
    });

    let child = Command::new("npm")
        .arg("--prefix")
        .arg(root.join("chat/browser-tests"))
        .args(["run", "test:wss"])
        .env("CHAT_PAGE_URL", cluster.page())
        .env("CHAT_GATE", cluster.gate())
        .env("CHAT_TLS_SPKI", &spki)
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
    let out = match rx.recv_timeout(NPM_TIMEOUT) {
        Ok(out) => out.expect("npm output"),
        Err(_) => {
            common::signal(pid, "KILL");
            panic!("npm run test:wss did not finish within {NPM_TIMEOUT:?}");
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "npm run test:wss failed ({})\n--- stdout\n{stdout}\n--- stderr\n{}\n--- cluster log\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        cluster.log()
    );
    // node --test's summary: the test ran (not skipped).
    assert!(
        stdout.contains("# pass 1") && stdout.contains("# skipped 0"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&tls_dir);
}
