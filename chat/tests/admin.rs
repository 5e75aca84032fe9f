//! The admin page of the real chat (launcher → master → 7 servers, each with a metrics port)
//! in headless Chromium, through the Node/playwright test `chat/browser-tests` `test:admin`:
//! every server listed with type, host, pid, uptime, RSS, CPU, connections, requests/s and
//! pushes/s; numbers that refresh and move while a chat page user sends messages; charts;
//! users online per connector; restart and stop refused without the token and working with
//! it; a screenshot in `target/admin-page.png`. Here: the admin line printed at start, the
//! token file (0600), the HTTP answers of the admin API to bad requests, and that the page's
//! stop button stopped the whole cluster.
//!
//! Needs Debian's chromium and the pinned npm packages (`scripts/install-js-deps`); fails
//! saying so when they are missing.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{Cluster, STEP};
use serde_json::json;

/// The npm script's time limit.
const NPM_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the launcher may take to exit after the page's stop button.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// The line the launcher prints after its ready line: `… admin page URL (token T (also in F))`.
const ADMIN_LINE: &str = "shaddock-chat: admin page ";

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
    for pkg in ["playwright-core", "ws"] {
        let p = tests_dir.join("node_modules").join(pkg);
        if !p.exists() {
            missing.push(p.display().to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "the admin page test needs {missing:?}: run scripts/install-js-deps (from the repo root)"
    );
}

/// One HTTP/1.1 request to `url` (`http://host:port/path`); status code and body.
fn http(method: &str, url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
    let addr = hostport
        .parse::<std::net::SocketAddr>()
        .expect("a numeric host:port");
    let mut s = std::net::TcpStream::connect_timeout(&addr, STEP).expect("connect");
    s.set_read_timeout(Some(STEP)).unwrap();
    s.set_write_timeout(Some(STEP)).unwrap();
    let mut req = format!(
        "{method} /{path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\nContent-Length: 0\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("send the request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the response");
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (code, body.to_owned())
}

/// Runs `npm run test:admin` against the cluster within [`NPM_TIMEOUT`]; its stdout.
fn npm_admin(cluster: &Cluster, admin: &str, token: &str, screenshot: &Path) -> String {
    let child = Command::new("npm")
        .arg("--prefix")
        .arg(repo_root().join("chat/browser-tests"))
        .args(["run", "test:admin"])
        .env("ADMIN_URL", admin)
        .env("ADMIN_TOKEN", token)
        .env("ADMIN_SCREENSHOT", screenshot)
        .env("CHAT_PAGE_URL", cluster.page())
        .env("CHAT_GATE", cluster.gate())
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
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success(),
                "npm run test:admin failed ({})\n--- stdout\n{stdout}\n--- stderr\n{}\n--- cluster log\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                cluster.log()
            );
            stdout
        }
        Err(_) => {
            common::signal(pid, "KILL");
            panic!("npm run test:admin did not finish within {NPM_TIMEOUT:?}");
        }
    }
}

#[test]
fn the_admin_page_in_chromium_shows_live_servers_and_guards_restart_and_stop() {
    let root = repo_root();
    check_prerequisites(&root.join("chat/browser-tests"));
    let mut cluster = Cluster::start_with(&|servers, _master| {
        for list in servers.as_object_mut().unwrap().values_mut() {
            for s in list.as_array_mut().unwrap() {
                s["metricsPort"] = json!(0);
            }
        }
    });
    let admin = cluster.info["admin"]
        .as_str()
        .expect("the ready line names the admin page")
        .to_owned();

    // The address and the token are printed at start; the token file is the owner's only.
    let line = cluster
        .line_starting(ADMIN_LINE, STEP)
        .unwrap_or_else(|| panic!("no `{ADMIN_LINE}…` line after the ready line"));
    let rest = line.strip_prefix(ADMIN_LINE).unwrap();
    let (url, note) = rest.split_once(' ').expect("URL, then the token note");
    assert_eq!(url, admin, "{line}");
    let token_file = cluster.info["admin_token_file"]
        .as_str()
        .expect("a token file (no $SHADDOCK_ADMIN_TOKEN in the test)")
        .to_owned();
    let token = std::fs::read_to_string(&token_file).expect("read the token file");
    assert!(token.len() >= 32, "a short token: {token:?}");
    assert_eq!(
        note,
        format!("(token {token} (also in {token_file}))"),
        "{line}"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&token_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "{token_file}");

    // The API's answers to what the page never sends.
    let (code, body) = http("GET", &format!("{admin}/api/stop"), &[]);
    assert_eq!(code, 405, "GET of the stop action: {body}");
    let (code, body) = http("GET", &format!("{admin}/nothing"), &[]);
    assert_eq!(code, 404, "{body}");
    let (code, body) = http(
        "POST",
        &format!("{admin}/api/restart/chat-server-1"),
        &[("x-admin-token", &token[..token.len() - 1])],
    );
    assert_eq!(code, 401, "a token missing its last character: {body}");
    let (code, body) = http(
        "POST",
        &format!("{admin}/api/restart/no-such-server"),
        &[("x-admin-token", &token)],
    );
    assert_eq!(code, 404, "restart of an unknown server: {body}");

    // The page in Chromium.
    let shot = root.join("target/admin-page.png");
    let _ = std::fs::remove_file(&shot);
    let out = npm_admin(&cluster, &admin, &token, &shot);
    let meta = std::fs::metadata(&shot).expect("the page test saved a screenshot");
    assert!(meta.len() > 1000, "screenshot of {} bytes", meta.len());
    println!("admin page screenshot: {}", shot.display());
    for l in out.lines().filter(|l| l.contains("admin page:")) {
        println!("{l}");
    }

    // Its stop button stopped the cluster: the launcher exits cleanly, every process with it.
    let pids = cluster.cluster_pids();
    let status = cluster
        .wait_exit(STOP_TIMEOUT)
        .unwrap_or_else(|| panic!("the launcher still ran {STOP_TIMEOUT:?} after the stop"));
    assert!(
        status.success(),
        "launcher exit {status}: {}",
        cluster.log()
    );
    let left: Vec<u32> = pids.into_iter().filter(|p| common::alive(*p)).collect();
    assert!(left.is_empty(), "processes left after the stop: {left:?}");
    assert!(
        !Path::new(&token_file).exists(),
        "the token file outlived the launcher"
    );
}
