//! The admin page the launcher serves on its own port (printed at start): every server of the
//! cluster with its type, host, pid, uptime, RSS, CPU, connections, requests/s and pushes/s,
//! refreshed every second with small charts; the users online per connector; a restart button
//! per server and a stop button for the cluster, behind a token.
//!
//! - `GET /admin`: the page (`chat/web/admin.html`, embedded; no external resource).
//! - `GET /admin/api/state`: JSON, the master's `list` joined with what each server's
//!   `/metrics` (servers.json `metricsPort`) shows now: cumulative CPU seconds, requests
//!   (a frontend's client requests and notifies over every route; a backend's RPC calls
//!   served), pushes and, on a frontend, the users online (distinct bound uids); the page
//!   turns successive samples into rates.
//! - `POST /admin/api/restart/<server id>`: asks that server to stop (gracefully); the master
//!   starts it again (its restart policy), as a new process.
//! - `POST /admin/api/stop`: stops the cluster (the launcher then exits).
//!
//! The two `POST`s need the header `x-admin-token: <token>`; without it, or with another
//! token, they answer 401 and do nothing. The token is `$SHADDOCK_ADMIN_TOKEN` when set, else
//! made at random at start, printed, and written to a file only its owner reads (0600, in
//! the per-user directory of the cluster secret, see [`shaddock_server::secret`]). It is
//! compared in constant time.
//!
//! Bounds: as the chat page ([`crate::page::MAX_CONNECTIONS`] connections, a header timeout);
//! each scrape of a server's metrics is bounded by [`SCRAPE_TIMEOUT`].

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use shaddock_rpc::{RpcClient, RpcConfig, ServerInfo, Target};
use shaddock_server::proto::{ListRow, StopArgs, master_remote, server_remote};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

const PAGE: &str = include_str!("../web/admin.html");

/// The environment variable that sets the admin token.
pub const TOKEN_ENV: &str = "SHADDOCK_ADMIN_TOKEN";
/// The header that carries the token.
pub const TOKEN_HEADER: &str = "x-admin-token";
/// The longest a server's `/metrics` may take to answer one scrape.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest metrics text read from a server.
const MAX_SCRAPE: u64 = 4 << 20;

/// The admin token: from [`TOKEN_ENV`], or random (and then written to a 0600 file).
pub struct Token {
    value: String,
    /// The file holding a random token (removed when this is dropped).
    pub file: Option<PathBuf>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        if let Some(f) = &self.file {
            let _ = std::fs::remove_file(f);
        }
    }
}

impl Token {
    /// `$SHADDOCK_ADMIN_TOKEN`, else a random token written to
    /// `<secret dir>/admin-<port>.token` (mode 0600).
    ///
    /// # Errors
    /// No randomness, or the file cannot be written (the message names it).
    pub fn from_env_or_random(port: u16) -> Result<Self, String> {
        if let Ok(v) = std::env::var(TOKEN_ENV)
            && !v.trim().is_empty()
        {
            return Ok(Self {
                value: v.trim().to_owned(),
                file: None,
            });
        }
        let value = shaddock_rpc::ClusterSecret::generate()
            .map_err(|e| format!("admin token: {e}"))?
            .to_hex();
        let dir = shaddock_server::secret::secret_dir();
        let file = dir.join(format!("admin-{port}.token"));
        write_private(&dir, &file, &value)
            .map_err(|e| format!("admin token file {}: {e}", file.display()))?;
        Ok(Self {
            value,
            file: Some(file),
        })
    }

    /// The token (to print for the operator).
    pub fn reveal(&self) -> &str {
        &self.value
    }

    /// Whether `given` is the token, in time that does not depend on where they differ.
    pub fn matches(&self, given: &[u8]) -> bool {
        constant_time_eq(self.value.as_bytes(), given)
    }
}

fn write_private(dir: &std::path::Path, file: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let _ = std::fs::remove_file(file);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)?;
    f.write_all(text.as_bytes())
}

/// Byte equality whose time depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0xff);
        diff |= x ^ y;
    }
    diff == 0
}

/// What the admin page needs of the cluster.
pub struct Admin {
    master: master_remote::Client,
    rpc_cfg: RpcConfig,
    token: Token,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").finish_non_exhaustive()
    }
}

impl Admin {
    /// The admin of the cluster whose master `master` reaches; `rpc_cfg` (secret, TLS) is
    /// used to reach its servers.
    pub fn new(master: master_remote::Client, rpc_cfg: RpcConfig, token: Token) -> Self {
        Self {
            master,
            rpc_cfg,
            token,
        }
    }

    async fn state(&self) -> Result<Value, String> {
        let list = tokio::time::timeout(
            Duration::from_secs(5),
            self.master.list(Target::server("master"), ()),
        )
        .await
        .map_err(|_| "the master did not answer `list`".to_owned())?
        .map_err(|e| format!("master: {e}"))?;
        let mut rows = list.rows.clone();
        rows.sort_by(|a, b| a.id.cmp(&b.id));
        let mut tasks = tokio::task::JoinSet::new();
        for (i, r) in rows.iter().enumerate() {
            let url = r.metrics_url.clone();
            tasks.spawn(async move { (i, sample(&url).await) });
        }
        let mut samples = vec![Sample::default(); rows.len()];
        while let Some(done) = tasks.join_next().await {
            if let Ok((i, s)) = done {
                samples[i] = s;
            }
        }
        let servers: Vec<Value> = rows
            .iter()
            .zip(&samples)
            .map(|(r, s)| row_json(r, s))
            .collect();
        Ok(json!({
            "masterPid": list.master_pid,
            "servers": servers,
        }))
    }

    async fn restart(&self, id: &str) -> Result<String, (StatusCode, String)> {
        let list = self
            .master
            .list(Target::server("master"), ())
            .await
            .map_err(|e| (StatusCode::BAD_GATEWAY, format!("master: {e}")))?;
        let row = list
            .rows
            .iter()
            .find(|r| r.id == id && r.pid != 0 && r.port != 0)
            .ok_or_else(|| (StatusCode::NOT_FOUND, format!("no running server `{id}`")))?;
        let port = u16::try_from(row.port)
            .map_err(|_| (StatusCode::BAD_GATEWAY, format!("{id}: bad rpc port")))?;
        let rpc = RpcClient::new(self.rpc_cfg.clone());
        rpc.directory().add(ServerInfo::new(
            row.id.as_str(),
            row.server_type.as_str(),
            row.host.as_str(),
            port,
        ));
        // This short-lived connection ends with the server on purpose: no reconnect, no WARN.
        rpc.expect_departure(id);
        let stub = server_remote::Client::new(&rpc);
        tracing::info!(server = %id, pid = row.pid, "admin page: restarting a server");
        stub.stop(
            Target::server(id),
            StopArgs {
                reason: "restart from the admin page".into(),
                notice_only: false,
            },
        )
        .await
        .map_err(|e| (StatusCode::BAD_GATEWAY, format!("{id}: {e}")))?;
        Ok(format!("{id} (pid {}) is restarting", row.pid))
    }

    async fn stop(&self) -> Result<String, (StatusCode, String)> {
        tracing::info!("admin page: stopping the cluster");
        self.master
            .stop(Target::server("master"), ())
            .await
            .map_err(|e| (StatusCode::BAD_GATEWAY, format!("master: {e}")))?;
        Ok("the cluster is stopping".into())
    }

    async fn respond(
        &self,
        method: &Method,
        path: &str,
        token: Option<&[u8]>,
    ) -> Response<Full<Bytes>> {
        match (method, path) {
            (&Method::GET, "/admin" | "/admin/" | "/admin/index.html") => reply(
                StatusCode::OK,
                "text/html; charset=utf-8",
                Bytes::from_static(PAGE.as_bytes()),
            ),
            (&Method::GET, "/admin/api/state") => match self.state().await {
                Ok(v) => json_reply(StatusCode::OK, &v),
                Err(e) => json_reply(StatusCode::BAD_GATEWAY, &json!({"error": e})),
            },
            (&Method::POST, p)
                if p == "/admin/api/stop" || p.starts_with("/admin/api/restart/") =>
            {
                if !token.is_some_and(|t| self.token.matches(t)) {
                    tracing::warn!(path, "admin page: action refused (missing or wrong token)");
                    return json_reply(
                        StatusCode::UNAUTHORIZED,
                        &json!({"error": format!("missing or wrong {TOKEN_HEADER} header")}),
                    );
                }
                let r = match p.strip_prefix("/admin/api/restart/") {
                    Some(id) => self.restart(id).await,
                    None => self.stop().await,
                };
                match r {
                    Ok(m) => json_reply(StatusCode::OK, &json!({"ok": m})),
                    Err((s, e)) => json_reply(s, &json!({"error": e})),
                }
            }
            (_, "/admin" | "/admin/api/state" | "/admin/api/stop") => json_reply(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"error": "method not allowed"}),
            ),
            _ => json_reply(
                StatusCode::NOT_FOUND,
                &json!({"error": "not found: the admin page is /admin"}),
            ),
        }
    }
}

fn reply(status: StatusCode, ctype: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn json_reply(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    reply(status, "application/json", Bytes::from(v.to_string()))
}

/// What one scrape of a server's `/metrics` showed (zeros when it has none or failed).
#[derive(Debug, Clone, Default)]
struct Sample {
    ok: bool,
    cpu_seconds: f64,
    rss_bytes: f64,
    requests: f64,
    pushes: f64,
    connections: Option<f64>,
    users: Option<f64>,
}

fn row_json(r: &ListRow, s: &Sample) -> Value {
    json!({
        "id": r.id,
        "serverType": r.server_type,
        "host": r.host,
        "clientPort": r.client_port,
        "pid": r.pid,
        "state": r.state,
        "uptimeSecs": r.uptime_secs,
        "rssBytes": if s.ok && s.rss_bytes > 0.0 { s.rss_bytes as u64 } else { r.rss_bytes },
        "connections": s.connections.map_or(r.connections, |c| c as u64),
        "cpuSeconds": s.cpu_seconds,
        "requests": s.requests as u64,
        "pushes": s.pushes as u64,
        "users": s.users.map(|u| u as u64),
        "restarts": r.restarts,
        "metrics": s.ok,
    })
}

/// Scrapes `url` (`http://host:port/path`) and parses it with prometheus-parse.
async fn sample(url: &str) -> Sample {
    if url.is_empty() {
        return Sample::default();
    }
    match tokio::time::timeout(SCRAPE_TIMEOUT, fetch(url)).await {
        Ok(Ok(text)) => parse_sample(&text),
        Ok(Err(e)) => {
            tracing::debug!(%url, cause = %e, "admin page: scrape failed");
            Sample::default()
        }
        Err(_) => {
            tracing::debug!(%url, "admin page: scrape timed out");
            Sample::default()
        }
    }
}

async fn fetch(url: &str) -> std::io::Result<String> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| bad("not http://"))?;
    let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = tokio::net::TcpStream::connect(hostport).await?;
    let req = format!("GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    s.take(MAX_SCRAPE).read_to_end(&mut raw).await?;
    let text = String::from_utf8(raw).map_err(|_| bad("not UTF-8"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no HTTP head"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(bad(head.lines().next().unwrap_or_default()));
    }
    Ok(body.to_owned())
}

fn parse_sample(text: &str) -> Sample {
    let Ok(scrape) = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))) else {
        return Sample::default();
    };
    let sum = |name: &str| -> Option<f64> {
        let mut found = false;
        let mut total = 0.0;
        for s in scrape.samples.iter().filter(|s| s.metric == name) {
            if let prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) = s.value
            {
                found = true;
                total += v;
            }
        }
        found.then_some(total)
    };
    Sample {
        ok: true,
        cpu_seconds: sum("process_cpu_seconds_total").unwrap_or(0.0),
        rss_bytes: sum("process_resident_memory_bytes").unwrap_or(0.0),
        // A frontend counts its clients' requests and notifies; a backend has none of its
        // own, so its requests are the RPC calls it served (forwarded client messages and
        // remote calls of other servers).
        requests: sum("shaddock_frontend_messages_total")
            .or_else(|| sum("shaddock_rpc_server_calls_total"))
            .unwrap_or(0.0),
        pushes: sum("shaddock_connector_pushes_total").unwrap_or(0.0),
        connections: sum("shaddock_connector_connections_active"),
        users: sum("shaddock_connector_users_online"),
    }
}

/// Serves the admin page on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, shutdown: CancellationToken) {
    let permits = Arc::new(Semaphore::new(crate::page::MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(cause = %e, "admin page: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let admin = admin.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req: Request<Incoming>| {
                let admin = admin.clone();
                async move {
                    let token = req
                        .headers()
                        .get(TOKEN_HEADER)
                        .map(|v| v.as_bytes().to_vec());
                    let r = admin
                        .respond(req.method(), req.uri().path(), token.as_deref())
                        .await;
                    Ok::<_, Infallible>(r)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(crate::page::HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, cause = %e, "admin page: connection ended with an error");
                    }
                }
                () = stop.cancelled() => {}
            }
        });
    }
    tracing::debug!("admin page stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn a_scrape_is_summed_per_metric() {
        let text = "# TYPE shaddock_frontend_messages counter\n\
                    shaddock_frontend_messages_total{route=\"a\",kind=\"request\"} 3\n\
                    shaddock_frontend_messages_total{route=\"b\",kind=\"notify\"} 2\n\
                    # TYPE process_cpu_seconds counter\n\
                    process_cpu_seconds_total 1.5\n";
        let s = parse_sample(text);
        assert!(s.ok);
        assert_eq!(s.requests, 5.0);
        assert_eq!(s.cpu_seconds, 1.5);
        assert_eq!(s.connections, None);
        assert_eq!(s.users, None);
    }

    #[test]
    fn a_backend_counts_the_rpc_calls_it_served() {
        let text = "# TYPE shaddock_rpc_server_calls counter\n\
                    shaddock_rpc_server_calls_total{service=\"a\",method=\"x\"} 4\n\
                    shaddock_rpc_server_calls_total{service=\"b\",method=\"y\"} 1\n\
                    # TYPE shaddock_connector_users_online gauge\n\
                    shaddock_connector_users_online 2\n";
        let s = parse_sample(text);
        assert_eq!(s.requests, 5.0);
        assert_eq!(s.users, Some(2.0));
    }
}
