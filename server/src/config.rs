//! Cluster configuration in pomelo's shape: `config/servers.json` and `config/master.json`.
//!
//! Both files are keyed by environment (`development`, `production`, ...). `servers.json` maps each
//! server type to a list of servers:
//!
//! ```json
//! { "development": {
//!     "gate":      [{"id": "gate-server-1", "host": "127.0.0.1", "clientPort": 3014, "frontend": true}],
//!     "connector": [{"id": "connector-server-1", "host": "127.0.0.1", "port": 4050,
//!                    "clientPort": 3050, "frontend": true}],
//!     "chat":      [{"id": "chat-server-1", "host": "127.0.0.1", "port": 6050}] } }
//! ```
//!
//! `master.json` holds one `{"id", "host", "port"}` object per environment, and optionally
//! what the master does when a server exits without being told to ([`RestartPolicy`]):
//!
//! ```json
//! { "production": { "id": "master-server-1", "host": "127.0.0.1", "port": 3005,
//!     "restart": {"enabled": true, "backoffMs": 500, "maxBackoffMs": 10000,
//!                 "crashLoop": {"max": 5, "windowSecs": 60}} } }
//! ```
//!
//! The master generates a fresh random cluster secret at every start (`"rpcSecret": "random"`,
//! the default; `"none"` turns it off) and hands it to the servers it starts, so the RPC ports
//! serve only the cluster's own processes (see [`MasterConfig::random_rpc_secret`]).
//!
//! master.json's `rpcTls` puts every RPC port on TLS with a cluster CA ([`RpcTlsFiles`]);
//! a server's `metricsPort` in servers.json gives it a Prometheus endpoint
//! ([`ServerConfig::metrics_port`], [`crate::metrics`]).
//!
//! The files are read with serde into raw structs, then validated once into [`ClusterConfig`].
//! Every error names the file, the environment, the server id (or its index) and the field, so a
//! user can find the line to fix.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

/// Environment variable that chooses the environment when `-e` is not given (pomelo's `NODE_ENV`
/// plays the same role).
pub const ENV_VAR: &str = "SHADDOCK_ENV";

/// The environment used when neither `-e` nor [`ENV_VAR`] names one.
pub const DEFAULT_ENV: &str = "development";

/// Why a configuration could not be loaded. Always fatal for the process that loads it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Io {
        /// The file.
        file: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not valid JSON, or a value has the wrong JSON type.
    #[error("{file}: {source}")]
    Json {
        /// The file.
        file: PathBuf,
        /// serde's error, with line and column.
        source: serde_json::Error,
    },
    /// The file has no section for the chosen environment.
    #[error("{file}: no environment `{env}` (found: {found})")]
    NoSuchEnv {
        /// The file.
        file: PathBuf,
        /// The environment asked for.
        env: String,
        /// The environments the file has, comma separated.
        found: String,
    },
    /// A field breaks a rule.
    #[error("{file}: environment `{env}`, {server}, field `{field}`: {problem}")]
    Invalid {
        /// The file.
        file: PathBuf,
        /// The environment.
        env: String,
        /// The server: `server type/id` or `server type[index]` when the id itself is wrong.
        server: String,
        /// The offending field, in the file's spelling (`clientPort`, not `client_port`).
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

/// One server of the cluster, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Unique id across the cluster, e.g. `connector-server-1`.
    pub id: String,
    /// The server type: the key it was listed under, e.g. `connector`.
    pub server_type: String,
    /// Host other servers reach it on (its RPC address) and, for a frontend, the host clients are
    /// told about by a gate.
    pub host: String,
    /// RPC port. Optional for frontends that serve no remotes (pomelo's gate has none).
    /// `Some(0)`: bind any free port and report it.
    pub port: Option<u16>,
    /// Port clients connect to. Present exactly when the server is a frontend.
    /// `Some(0)`: bind any free port and report it.
    pub client_port: Option<u16>,
    /// Whether the server holds client connections.
    pub frontend: bool,
    /// Every other key of the server's object, kept for the application
    /// (pomelo passes such keys through too, e.g. `max-connections`, `args`).
    /// The runtime itself reads: `worker-threads` (tokio worker threads of the process,
    /// default 1) and, on frontends, `max-connections`, `heartbeat` (seconds, 0 = off) and
    /// `push-flush-interval` (milliseconds, 0 = off: pomelo's buffer push scheduler),
    /// `push-linger` (milliseconds) and `ssl` (TLS on the client port, see
    /// [`ServerConfig::ssl`]). The master reads `restart` (see [`ServerConfig::restart`]).
    /// `metricsPort` (checked to be a port, stored as a number) is the HTTP port of the
    /// server's Prometheus endpoint (see [`ServerConfig::metrics_port`]).
    pub extra: Map<String, Value>,
}

impl ServerConfig {
    /// The server's own restart setting, if it has one (`"restart": false` in servers.json,
    /// or pomelo's `auto-restart` / `autoRestart`): it wins over master.json's
    /// `restart.enabled`.
    pub fn restart(&self) -> Option<bool> {
        RESTART_KEYS
            .iter()
            .find_map(|k| self.extra.get(*k).and_then(Value::as_bool))
    }

    /// The host this server belongs to in a cluster on NATS: its `"hostId"` in servers.json,
    /// else its `host`. A launcher started with `--host-id X` runs the servers whose host id
    /// is `X`.
    pub fn host_id(&self) -> &str {
        self.extra
            .get("hostId")
            .and_then(Value::as_str)
            .filter(|h| !h.is_empty())
            .unwrap_or(&self.host)
    }

    /// `host:port` of the RPC listener, if the server has one.
    pub fn rpc_addr(&self) -> Option<String> {
        self.port.map(|p| format!("{}:{p}", self.host))
    }

    /// TLS on the client port: the `ssl` object of the entry ([`SslConfig`]; its paths
    /// already made relative to the config directory when loaded from servers.json).
    /// `Ok(None)` when the entry has none (plain clients only).
    ///
    /// # Errors
    /// A [`DefError`] on `ssl` (or `ssl.cert` ...) if the object is malformed; entries parsed
    /// by [`parse_server_def`] were checked already, so only a hand-changed `extra` fails.
    pub fn ssl(&self) -> Result<Option<SslConfig>, DefError> {
        self.extra
            .get("ssl")
            .map(|v| check_ssl(&format!("{}/{}", self.server_type, self.id), v))
            .transpose()
    }

    /// The HTTP port of the server's Prometheus endpoint (`"metricsPort"` in servers.json;
    /// `0`: any free port), if it has one. See [`crate::metrics`].
    pub fn metrics_port(&self) -> Option<u16> {
        self.extra
            .get(METRICS_PORT_KEY)
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
    }

    /// `host:metricsPort`, where the server's metrics endpoint listens, if it has one.
    pub fn metrics_addr(&self) -> Option<String> {
        self.metrics_port().map(|p| format!("{}:{p}", self.host))
    }

    /// `host:clientPort` of the client listener, if the server is a frontend.
    pub fn client_addr(&self) -> Option<String> {
        self.client_port.map(|p| format!("{}:{p}", self.host))
    }
}

/// The master of the cluster, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterConfig {
    /// Its id, e.g. `master-server-1`.
    pub id: String,
    /// The host it listens on.
    pub host: String,
    /// The port servers register on and the CLI talks to (`0`: any free port, which the master
    /// then passes to the servers it starts).
    pub port: u16,
    /// How long a lost server's placed keys (the chat's rooms) wait for it to come back before
    /// they are placed on a survivor (`placementGraceMs`, default 5000).
    pub placement_grace: std::time::Duration,
    /// What it does when a server exits without being told to (`restart`).
    pub restart: RestartPolicy,
    /// Whether the master generates a random cluster secret at start (`"rpcSecret": "random"`,
    /// the default) unless its own environment already has one in `SHADDOCK_RPC_SECRET`,
    /// which then wins. Every RPC server and client of the cluster then requires it; admin
    /// commands on the master's machine find it in the master's secret file (see
    /// [`crate::secret`]). `"rpcSecret": "none"` turns authentication off (the RPC ports then
    /// trust every peer that reaches them).
    pub random_rpc_secret: bool,
    /// TLS with a cluster CA on every RPC port of the cluster (`"rpcTls": {"ca", "cert",
    /// "key"}`, see [`RpcTlsFiles`]); `None` (the default): plain TCP.
    pub rpc_tls: Option<RpcTlsFiles>,
    /// The HTTP port of the master's own Prometheus endpoint (`"metricsPort"`, `0`: any free
    /// port); `None` (the default): none.
    pub metrics_port: Option<u16>,
    /// The `cluster` section (issue 15): NATS servers and the app's name. Present: the
    /// cluster runs on NATS, one launcher per host (`start --host-id`), and every server
    /// registers in and routes by the NATS registry. Absent (the default): the single-machine
    /// master is the registry, as before.
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

impl MasterConfig {
    /// The value of [`shaddock_rpc::RpcConfig::tls`] for every RPC server and client of the
    /// cluster (the master's, the servers', the admin commands'): the files of `rpcTls` read,
    /// or `None` without `rpcTls`.
    ///
    /// # Errors
    /// [`shaddock_rpc::TlsError`] naming the file that cannot be read or parsed.
    pub fn load_rpc_tls(&self) -> Result<Option<shaddock_rpc::RpcTls>, shaddock_rpc::TlsError> {
        self.rpc_tls.as_ref().map(RpcTlsFiles::load).transpose()
    }
}

/// master.json's `rpcTls`: the PEM files of mutual TLS between the cluster's servers.
///
/// ```json
/// "rpcTls": {"ca": "tls/cluster-ca.crt", "cert": "tls/rpc.crt", "key": "tls/rpc.key"}
/// ```
///
/// `ca` is the cluster CA's certificate; `cert` (chain, leaf first) and `key` are the
/// certificate every server presents, signed by that CA (one for the cluster; its names are
/// not checked, see [`shaddock_rpc::tls`]). Relative paths are relative to the directory of
/// master.json. Every server reads the files at start ([`RpcTlsFiles::load`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcTlsFiles {
    /// The cluster CA certificate file.
    pub ca: PathBuf,
    /// The servers' certificate chain file.
    pub cert: PathBuf,
    /// Its private key file.
    pub key: PathBuf,
}

impl RpcTlsFiles {
    /// Reads the files: the value of [`shaddock_rpc::RpcConfig::tls`].
    ///
    /// # Errors
    /// [`shaddock_rpc::TlsError`] naming the file that cannot be read or parsed.
    pub fn load(&self) -> Result<shaddock_rpc::RpcTls, shaddock_rpc::TlsError> {
        shaddock_rpc::RpcTls::from_pem_files(&self.ca, &self.cert, &self.key)
    }
}

/// What the master does when a server exits without being told to (a crash, a `kill -9`, an
/// exit of its own): master.json's `restart`, every field optional.
///
/// | field | default | meaning |
/// |---|---|---|
/// | `enabled` | `true` | restart such servers; a server's own `"restart": false` / `true` in servers.json wins |
/// | `backoffMs` | 500 | wait before the first restart; doubled after each quick crash |
/// | `maxBackoffMs` | 10000 | the most it waits; a server that ran a whole crash-loop window starts over at `backoffMs` |
/// | `crashLoop.max` | 5 | a server that crashes more than this many times within `crashLoop.windowSecs` is not restarted again (`list` shows `crash-loop`, the master logs an ERROR) |
/// | `crashLoop.windowSecs` | 60 | the window |
///
/// `"restart": false` is short for `{"enabled": false}`. A server stopped with `stop` or
/// `kill` is never restarted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Whether servers are restarted by default.
    pub enabled: bool,
    /// The first restart delay.
    pub backoff: Duration,
    /// The longest restart delay.
    pub max_backoff: Duration,
    /// The most crashes within [`RestartPolicy::crash_loop_window`] that are still restarted.
    pub crash_loop_max: u32,
    /// The crash-loop window.
    pub crash_loop_window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
            crash_loop_max: 5,
            crash_loop_window: Duration::from_secs(60),
        }
    }
}

/// [`MasterConfig::placement_grace`] when master.json does not set it.
pub const DEFAULT_PLACEMENT_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The whole cluster for one environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The chosen environment.
    pub env: String,
    /// The master.
    pub master: MasterConfig,
    /// Every server, in file order (server types in file order, then list order).
    pub servers: Vec<ServerConfig>,
}

impl ClusterConfig {
    /// Loads `servers.json` and `master.json` from `config_dir` for environment `env`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, environment, server and field of the first problem.
    pub fn load(config_dir: &Path, env: &str) -> Result<Self, ConfigError> {
        let servers_file = config_dir.join("servers.json");
        let master_file = config_dir.join("master.json");
        let servers = parse_servers(&servers_file, &read(&servers_file)?, env)?;
        let master = parse_master(&master_file, &read(&master_file)?, env)?;
        let cfg = Self {
            env: env.to_owned(),
            master,
            servers,
        };
        cfg.check_ports(&servers_file)?;
        Ok(cfg)
    }

    /// The server with this id.
    pub fn server(&self, id: &str) -> Option<&ServerConfig> {
        self.servers.iter().find(|s| s.id == id)
    }

    /// The servers of one type, in file order.
    pub fn servers_of_type<'a>(
        &'a self,
        server_type: &'a str,
    ) -> impl Iterator<Item = &'a ServerConfig> + 'a {
        self.servers
            .iter()
            .filter(move |s| s.server_type == server_type)
    }

    /// Refuses two listeners on one host and port (the master's included).
    fn check_ports(&self, file: &Path) -> Result<(), ConfigError> {
        let mut used: BTreeMap<(String, u16), String> = BTreeMap::new();
        used.insert(
            (self.master.host.clone(), self.master.port),
            format!("master {}", self.master.id),
        );
        for s in &self.servers {
            for (field, port) in [
                ("port", s.port),
                ("clientPort", s.client_port),
                (METRICS_PORT_KEY, s.metrics_port()),
            ] {
                // Port 0 is resolved at bind time, so it never clashes here.
                let Some(port) = port.filter(|&p| p != 0) else {
                    continue;
                };
                let key = (s.host.clone(), port);
                let me = format!("{}/{}", s.server_type, s.id);
                if let Some(other) = used.get(&key) {
                    return Err(ConfigError::Invalid {
                        file: file.to_owned(),
                        env: self.env.clone(),
                        server: me,
                        field,
                        problem: format!("{}:{port} is already used by {other}", s.host),
                    });
                }
                used.insert(key, me);
            }
        }
        Ok(())
    }
}

/// The environment to use: the `-e` value if given, else [`ENV_VAR`], else [`DEFAULT_ENV`].
pub fn choose_env(flag: Option<&str>) -> String {
    flag.map(str::to_owned)
        .or_else(|| std::env::var(ENV_VAR).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| DEFAULT_ENV.to_owned())
}

fn read(file: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(file).map_err(|source| ConfigError::Io {
        file: file.to_owned(),
        source,
    })
}

/// Picks one environment's section out of an env-keyed file.
fn env_section(file: &Path, text: &str, env: &str) -> Result<Value, ConfigError> {
    let mut root: Map<String, Value> =
        serde_json::from_str(text).map_err(|source| ConfigError::Json {
            file: file.to_owned(),
            source,
        })?;
    let found = root.keys().cloned().collect::<Vec<_>>().join(", ");
    root.remove(env).ok_or_else(|| ConfigError::NoSuchEnv {
        file: file.to_owned(),
        env: env.to_owned(),
        found,
    })
}

struct Ctx<'a> {
    file: &'a Path,
    env: &'a str,
}

impl Ctx<'_> {
    fn invalid(
        &self,
        server: impl fmt::Display,
        field: &'static str,
        problem: String,
    ) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_owned(),
            env: self.env.to_owned(),
            server: server.to_string(),
            field,
            problem,
        }
    }

    /// The file's error for a problem found by the definition parser.
    fn def(&self, e: DefError) -> ConfigError {
        self.invalid(e.server, e.field, e.problem)
    }
}

fn parse_servers(file: &Path, text: &str, env: &str) -> Result<Vec<ServerConfig>, ConfigError> {
    let ctx = Ctx { file, env };
    let section = env_section(file, text, env)?;
    let Value::Object(types) = section else {
        return Err(ctx.invalid(
            "(environment)",
            "servers",
            "must be an object of server types".into(),
        ));
    };
    let mut out = Vec::new();
    let mut ids = HashSet::new();
    for (server_type, list) in types {
        check_server_type(&server_type).map_err(|problem| {
            ctx.invalid(format!("server type `{server_type}`"), "type", problem)
        })?;
        let Value::Array(list) = list else {
            return Err(ctx.invalid(&server_type, "type", "must be a list of servers".into()));
        };
        for (i, raw) in list.into_iter().enumerate() {
            let mut s = parse_server_def(raw, Some((&server_type, i))).map_err(|e| ctx.def(e))?;
            resolve_ssl_paths(&mut s, file.parent().unwrap_or(Path::new(".")));
            if !ids.insert(s.id.clone()) {
                return Err(ctx.invalid(
                    format!("{server_type}/{}", s.id),
                    "id",
                    "is used by another server".into(),
                ));
            }
            out.push(s);
        }
    }
    Ok(out)
}

/// What is wrong with one server definition (an entry of servers.json, the arguments of
/// `add`, a `--server-def`): which server, which field, what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{server}, field `{field}`: {problem}")]
pub struct DefError {
    /// `server type/id`, or `server type[index]` (servers.json) / `server definition` (`add`)
    /// while the id is not known yet.
    pub server: String,
    /// The offending field, in the file's spelling (`clientPort`, not `client_port`).
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

fn check_server_type(t: &str) -> Result<(), String> {
    if t.is_empty() || t.contains('.') {
        Err("must be non-empty and contain no `.` (it is the first part of a route)".into())
    } else {
        Ok(())
    }
}

/// The servers.json key of a server's metrics port ([`ServerConfig::metrics_port`]).
pub const METRICS_PORT_KEY: &str = "metricsPort";

/// The keys that set whether the master restarts a server that exits on its own:
/// `restart`, and pomelo's spellings `auto-restart` / `autoRestart`.
pub const RESTART_KEYS: [&str; 3] = ["restart", "auto-restart", "autoRestart"];

/// Parses one server definition; the one parser behind servers.json, `add` and `--server-def`.
///
/// `listed`: `Some((server type, index))` for an entry of servers.json (its type is the key it
/// is listed under, `host` is required); `None` for a definition made at runtime (`add`, the
/// `--server-def` the master passes to a server it added), which names its type in
/// `serverType` (or `type`) and whose `host` defaults to `127.0.0.1`. Unknown keys go to
/// [`ServerConfig::extra`]; the restart keys ([`RESTART_KEYS`]) must be booleans.
///
/// # Errors
/// [`DefError`] naming the server and field of the first problem.
pub fn parse_server_def(
    def: Value,
    listed: Option<(&str, usize)>,
) -> Result<ServerConfig, DefError> {
    let at = match listed {
        Some((t, i)) => format!("{t}[{i}]"),
        None => "server definition".to_owned(),
    };
    let bad = |server: &str, field: &'static str, problem: String| DefError {
        server: server.to_owned(),
        field,
        problem,
    };
    let Value::Object(mut extra) = def else {
        return Err(bad(
            &at,
            "server",
            format!("must be an object, found {def}"),
        ));
    };
    let id = def_string(&at, "id", extra.remove("id"))?;
    let server_type = match listed {
        Some((t, _)) => t.to_owned(),
        None => {
            let v = extra.remove("serverType").or_else(|| extra.remove("type"));
            let t = def_string(&format!("(server type)/{id}"), "serverType", v)?;
            check_server_type(&t).map_err(|p| bad(&format!("{t}/{id}"), "serverType", p))?;
            t
        }
    };
    let who = format!("{server_type}/{id}");
    let host = match (extra.remove("host"), listed) {
        (None, None) => "127.0.0.1".to_owned(),
        (v, _) => def_string(&who, "host", v)?,
    };
    let port = def_port(&who, "port", extra.remove("port"))?;
    let client_port = def_port(&who, "clientPort", extra.remove("clientPort"))?;
    let frontend = match extra.remove("frontend") {
        None | Some(Value::Null) => false,
        Some(v) => def_bool(&who, "frontend", &v)?,
    };
    if frontend && client_port.is_none() {
        return Err(bad(
            &who,
            "clientPort",
            "is required for a frontend server".into(),
        ));
    }
    if !frontend && client_port.is_some() {
        return Err(bad(
            &who,
            "clientPort",
            "is only for frontend servers (set \"frontend\": true)".into(),
        ));
    }
    if !frontend && port.is_none() {
        return Err(bad(&who, "port", "is required for a backend server".into()));
    }
    if let Some(v) = extra.get("ssl") {
        if !frontend {
            return Err(bad(
                &who,
                "ssl",
                "is only for frontend servers (it is TLS on the client port)".into(),
            ));
        }
        check_ssl(&who, v)?;
    }
    if let Some(v) = extra.remove(METRICS_PORT_KEY) {
        // Kept in `extra` as a number (a numeric string is accepted, as for the other ports).
        if let Some(p) = def_port(&who, METRICS_PORT_KEY, Some(v))? {
            extra.insert(METRICS_PORT_KEY.to_owned(), Value::from(p));
        }
    }
    for key in RESTART_KEYS {
        if let Some(v) = extra.get_mut(key) {
            *v = Value::Bool(def_bool(&who, key, v)?);
        }
    }
    Ok(ServerConfig {
        id,
        server_type,
        host,
        port,
        client_port,
        frontend,
        extra,
    })
}

/// TLS on a frontend's client port, from the `ssl` object of its servers.json entry
/// (pomelo's connector `ssl` option, with file paths instead of file contents):
///
/// ```json
/// "ssl": {"cert": "tls/server.crt", "key": "tls/server.key", "mode": "optional"}
/// ```
///
/// `cert` is a PEM file with the certificate chain (leaf first), `key` a PEM file with its
/// private key (PKCS#8, PKCS#1 or SEC1); relative paths are relative to the directory of
/// servers.json. `mode` is `"optional"` (the default: plain and TLS clients on the same port)
/// or `"required"` (plain clients are closed). The running server re-reads both files on
/// SIGHUP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SslConfig {
    /// The certificate chain file.
    pub cert: PathBuf,
    /// The private key file.
    pub key: PathBuf,
    /// Whether plain clients are served too.
    pub mode: shaddock_connector::TlsMode,
}

/// The keys of the `ssl` object.
const SSL_KEYS: [&str; 3] = ["cert", "key", "mode"];

fn check_ssl(who: &str, v: &Value) -> Result<SslConfig, DefError> {
    let bad = |field: &'static str, problem: String| DefError {
        server: who.to_owned(),
        field,
        problem,
    };
    let Value::Object(m) = v else {
        return Err(bad(
            "ssl",
            format!(
                "must be an object {{\"cert\": file, \"key\": file, \"mode\": \"optional\" or \"required\"}}, found {v}"
            ),
        ));
    };
    if let Some(k) = m.keys().find(|k| !SSL_KEYS.contains(&k.as_str())) {
        return Err(bad(
            "ssl",
            format!("unknown key `{k}` (known: cert, key, mode)"),
        ));
    }
    let cert = def_string(who, "ssl.cert", m.get("cert").cloned())?;
    let key = def_string(who, "ssl.key", m.get("key").cloned())?;
    let mode = match m.get("mode") {
        None | Some(Value::Null) => shaddock_connector::TlsMode::Optional,
        Some(Value::String(s)) => shaddock_connector::TlsMode::parse(s).ok_or_else(|| {
            bad(
                "ssl.mode",
                format!("must be \"optional\" or \"required\", found \"{s}\""),
            )
        })?,
        Some(other) => {
            return Err(bad(
                "ssl.mode",
                format!("must be \"optional\" or \"required\", found {other}"),
            ));
        }
    };
    Ok(SslConfig {
        cert: PathBuf::from(cert),
        key: PathBuf::from(key),
        mode,
    })
}

/// Makes the relative `ssl` file paths of `s` relative to `base` (the directory of
/// servers.json), so that every process of the cluster finds the same files.
fn resolve_ssl_paths(s: &mut ServerConfig, base: &Path) {
    let Some(Value::Object(ssl)) = s.extra.get_mut("ssl") else {
        return;
    };
    for key in ["cert", "key"] {
        if let Some(Value::String(p)) = ssl.get_mut(key)
            && Path::new(p.as_str()).is_relative()
        {
            *p = base.join(&*p).to_string_lossy().into_owned();
        }
    }
}

fn def_string(who: &str, field: &'static str, v: Option<Value>) -> Result<String, DefError> {
    let problem = match v {
        Some(Value::String(s)) if !s.trim().is_empty() => return Ok(s),
        Some(Value::String(_)) => "must not be empty".to_owned(),
        Some(other) => format!("must be a string, found {other}"),
        None => "is missing".to_owned(),
    };
    Err(DefError {
        server: who.to_owned(),
        field,
        problem,
    })
}

/// Ports may be written as numbers or, as pomelo tolerates, numeric strings. Port `0` means
/// "any free port": the server binds an ephemeral port and reports the real one to the master
/// (tests use this so they never depend on fixed ports).
fn def_port(who: &str, field: &'static str, v: Option<Value>) -> Result<Option<u16>, DefError> {
    let n = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        Some(_) => None,
    };
    match n.map(u16::try_from) {
        Some(Ok(p)) => Ok(Some(p)),
        _ => Err(DefError {
            server: who.to_owned(),
            field,
            problem: "must be a port number from 0 to 65535".into(),
        }),
    }
}

/// `true` / `false`, or (as pomelo's files and `add key=value` write them) `"true"` / `"false"`.
fn def_bool(who: &str, field: &'static str, v: &Value) -> Result<bool, DefError> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s == "true" || s == "false" => Ok(s == "true"),
        other => Err(DefError {
            server: who.to_owned(),
            field,
            problem: format!("must be true or false, found {other}"),
        }),
    }
}

fn parse_master(file: &Path, text: &str, env: &str) -> Result<MasterConfig, ConfigError> {
    let ctx = Ctx { file, env };
    let section = env_section(file, text, env)?;
    let Value::Object(mut m) = section else {
        return Err(ctx.invalid(
            "master",
            "master",
            "must be an object {id, host, port}".into(),
        ));
    };
    let id = def_string("master", "id", m.remove("id")).map_err(|e| ctx.def(e))?;
    let host = def_string(&id, "host", m.remove("host")).map_err(|e| ctx.def(e))?;
    let port = def_port(&id, "port", m.remove("port"))
        .map_err(|e| ctx.def(e))?
        .ok_or_else(|| ctx.invalid(&id, "port", "is missing".into()))?;
    let placement_grace = match m.remove("placementGraceMs") {
        None => DEFAULT_PLACEMENT_GRACE,
        Some(v) => v
            .as_u64()
            .map(std::time::Duration::from_millis)
            .ok_or_else(|| {
                ctx.invalid(
                    &id,
                    "placementGraceMs",
                    "must be a whole number of milliseconds".into(),
                )
            })?,
    };
    let restart = parse_restart(&ctx, &id, m.remove("restart"))?;
    let random_rpc_secret = match m.remove("rpcSecret") {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) if s == "random" => true,
        Some(Value::String(s)) if s == "none" => false,
        Some(_) => {
            return Err(ctx.invalid(
                &id,
                "rpcSecret",
                "must be \"random\" (the default) or \"none\" (secrets themselves go in \
                 $SHADDOCK_RPC_SECRET, never in a config file)"
                    .into(),
            ));
        }
    };
    let rpc_tls = match m.remove("rpcTls") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_rpc_tls(
            &ctx,
            &id,
            &v,
            file.parent().unwrap_or(Path::new(".")),
        )?),
    };
    let metrics_port =
        def_port(&id, METRICS_PORT_KEY, m.remove(METRICS_PORT_KEY)).map_err(|e| ctx.def(e))?;
    let cluster = crate::cluster::ClusterConfig::from_master_env(file, env, &Value::Object(m))
        .map_err(|e| ctx.invalid(&id, "cluster", e.to_string()))?;
    Ok(MasterConfig {
        cluster,
        metrics_port,
        id,
        host,
        port,
        placement_grace,
        restart,
        random_rpc_secret,
        rpc_tls,
    })
}

/// master.json's `rpcTls` (see [`RpcTlsFiles`]), its paths made relative to `base`.
fn parse_rpc_tls(
    ctx: &Ctx<'_>,
    id: &str,
    v: &Value,
    base: &Path,
) -> Result<RpcTlsFiles, ConfigError> {
    let Value::Object(m) = v else {
        return Err(ctx.invalid(
            id,
            "rpcTls",
            format!("must be an object {{\"ca\": file, \"cert\": file, \"key\": file}}, found {v}"),
        ));
    };
    if let Some(k) = m
        .keys()
        .find(|k| !["ca", "cert", "key"].contains(&k.as_str()))
    {
        return Err(ctx.invalid(
            id,
            "rpcTls",
            format!("unknown key `{k}` (known: ca, cert, key)"),
        ));
    }
    let path = |field: &'static str, key: &str| {
        def_string(id, field, m.get(key).cloned())
            .map(|p| base.join(p))
            .map_err(|e| ctx.def(e))
    };
    Ok(RpcTlsFiles {
        ca: path("rpcTls.ca", "ca")?,
        cert: path("rpcTls.cert", "cert")?,
        key: path("rpcTls.key", "key")?,
    })
}

/// master.json's `restart` (see [`RestartPolicy`]); unknown keys are refused, so a typo does
/// not silently keep a default.
fn parse_restart(ctx: &Ctx<'_>, id: &str, v: Option<Value>) -> Result<RestartPolicy, ConfigError> {
    let mut p = RestartPolicy::default();
    let mut o = match v {
        None | Some(Value::Null) => return Ok(p),
        Some(Value::Bool(b)) => {
            p.enabled = b;
            return Ok(p);
        }
        Some(Value::Object(o)) => o,
        Some(other) => {
            return Err(ctx.invalid(
                id,
                "restart",
                format!("must be true, false or an object, found {other}"),
            ));
        }
    };
    let number = |field: &'static str, v: Value, min: u64| -> Result<u64, ConfigError> {
        v.as_u64().filter(|n| *n >= min).ok_or_else(|| {
            ctx.invalid(
                id,
                field,
                format!("must be a whole number of at least {min}, found {v}"),
            )
        })
    };
    if let Some(v) = o.remove("enabled") {
        p.enabled = def_bool(id, "restart.enabled", &v).map_err(|e| ctx.def(e))?;
    }
    if let Some(v) = o.remove("backoffMs") {
        p.backoff = Duration::from_millis(number("restart.backoffMs", v, 1)?);
    }
    if let Some(v) = o.remove("maxBackoffMs") {
        p.max_backoff = Duration::from_millis(number("restart.maxBackoffMs", v, 1)?);
    }
    if p.max_backoff < p.backoff {
        return Err(ctx.invalid(
            id,
            "restart.maxBackoffMs",
            format!("must be at least backoffMs ({} ms)", p.backoff.as_millis()),
        ));
    }
    match o.remove("crashLoop") {
        None => {}
        Some(Value::Object(mut c)) => {
            if let Some(v) = c.remove("max") {
                let n = number("restart.crashLoop.max", v, 1)?;
                p.crash_loop_max = u32::try_from(n).unwrap_or(u32::MAX);
            }
            if let Some(v) = c.remove("windowSecs") {
                p.crash_loop_window =
                    Duration::from_secs(number("restart.crashLoop.windowSecs", v, 1)?);
            }
            if let Some(k) = c.keys().next() {
                return Err(ctx.invalid(
                    id,
                    "restart.crashLoop",
                    format!("unknown field `{k}` (known: max, windowSecs)"),
                ));
            }
        }
        Some(other) => {
            return Err(ctx.invalid(
                id,
                "restart.crashLoop",
                format!("must be an object {{max, windowSecs}}, found {other}"),
            ));
        }
    }
    if let Some(k) = o.keys().next() {
        return Err(ctx.invalid(
            id,
            "restart",
            format!("unknown field `{k}` (known: enabled, backoffMs, maxBackoffMs, crashLoop)"),
        ));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, servers: &str, master: &str) {
        std::fs::write(dir.join("servers.json"), servers).unwrap();
        std::fs::write(dir.join("master.json"), master).unwrap();
    }

    const MASTER: &str = r#"{"development":{"id":"master-server-1","host":"127.0.0.1","port":3005},
                             "production":{"id":"master-server-1","host":"127.0.0.1","port":3005}}"#;

    /// A fresh directory per call: tests run in parallel threads.
    fn tmp(name: &str) -> PathBuf {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let d =
            std::env::temp_dir().join(format!("shaddock-config-{name}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn loads_pomelo_shape() {
        let d = tmp("ok");
        write(
            &d,
            r#"{"development":{
                "gate":[{"id":"gate-server-1","host":"127.0.0.1","clientPort":3014,"frontend":true}],
                "connector":[{"id":"connector-server-1","host":"127.0.0.1","port":"4050","clientPort":3050,"frontend":"true","max-connections":100}],
                "chat":[{"id":"chat-server-1","host":"127.0.0.1","port":6050}]}}"#,
            MASTER,
        );
        let c = ClusterConfig::load(&d, "development").unwrap();
        assert_eq!(c.servers.len(), 3);
        assert_eq!(c.master.port, 3005);
        let conn = c.server("connector-server-1").unwrap();
        assert_eq!(conn.port, Some(4050));
        assert!(conn.frontend);
        assert_eq!(conn.extra["max-connections"], 100);
        assert_eq!(conn.client_addr().as_deref(), Some("127.0.0.1:3050"));
        let gate = c.server("gate-server-1").unwrap();
        assert_eq!(gate.port, None);
        assert_eq!(c.servers_of_type("chat").count(), 1);
    }

    fn err(servers: &str) -> String {
        let d = tmp("bad");
        write(&d, servers, MASTER);
        ClusterConfig::load(&d, "development")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn errors_name_file_env_server_and_field() {
        let cases = [
            (
                r#"{"development":{"chat":[{"id":"c1","host":"h"}]}}"#,
                "chat/c1, field `port`: is required",
            ),
            (
                r#"{"development":{"chat":[{"host":"h","port":1}]}}"#,
                "chat[0], field `id`: is missing",
            ),
            (
                r#"{"development":{"chat":[{"id":"c1","host":"h","port":70000}]}}"#,
                "field `port`: must be a port",
            ),
            (
                r#"{"development":{"connector":[{"id":"x","host":"h","port":1,"frontend":true}]}}"#,
                "connector/x, field `clientPort`: is required for a frontend",
            ),
            (
                r#"{"development":{"chat":[{"id":"x","host":"h","port":1},{"id":"x","host":"h","port":2}]}}"#,
                "chat/x, field `id`: is used by another server",
            ),
            (
                r#"{"development":{"chat":[{"id":"a","host":"h","port":1},{"id":"b","host":"h","port":1}]}}"#,
                "chat/b, field `port`: h:1 is already used by chat/a",
            ),
            (
                r#"{"development":{"chat":{"id":"a"}}}"#,
                "must be a list of servers",
            ),
            (r#"{"development":{"a.b":[]}}"#, "contain no `.`"),
            (
                r#"{"production":{}}"#,
                "no environment `development` (found: production)",
            ),
            (r#"{"development": ["#, "servers.json: EOF while parsing"),
            (
                r#"{"development":{"chat":[{"id":"c1","host":"h","port":1,"restart":"yes"}]}}"#,
                "chat/c1, field `restart`: must be true or false",
            ),
            (
                r#"{"development":{"chat":[{"id":"c1","host":"h","port":1,"frontend":1}]}}"#,
                "chat/c1, field `frontend`: must be true or false",
            ),
            (
                r#"{"development":{"chat":[{"id":"c1","port":1}]}}"#,
                "chat/c1, field `host`: is missing",
            ),
            (r#"{"development":{"chat":[7]}}"#, "chat[0], field `server`"),
        ];
        for (input, want) in cases {
            let got = err(input);
            assert!(
                got.contains(want),
                "input {input}\n got: {got}\nwant: {want}"
            );
            assert!(got.contains("servers.json"), "{got}");
        }
    }

    #[test]
    fn runtime_definitions_use_the_same_rules_and_name_server_and_field() {
        let def = |t: &str| parse_server_def(serde_json::from_str(t).unwrap(), None);
        let c = def(r#"{"id":"chat-3","serverType":"chat","port":"0","restart":false}"#).unwrap();
        assert_eq!((c.host.as_str(), c.port), ("127.0.0.1", Some(0)));
        assert_eq!(c.restart(), Some(false));
        let c = def(r#"{"id":"c","type":"chat","port":1,"auto-restart":"true"}"#).unwrap();
        assert_eq!((c.server_type.as_str(), c.restart()), ("chat", Some(true)));
        assert_eq!(
            def(r#"{"id":"c","type":"chat","port":1}"#)
                .unwrap()
                .restart(),
            None
        );
        for (input, want) in [
            (
                r#"{"serverType":"chat","port":1}"#,
                "server definition, field `id`: is missing",
            ),
            (r#"{"id":"x","port":1}"#, "field `serverType`: is missing"),
            (
                r#"{"id":"x","serverType":"a.b","port":1}"#,
                "a.b/x, field `serverType`: must be non-empty and contain no `.`",
            ),
            (
                r#"{"id":"x","serverType":"chat"}"#,
                "chat/x, field `port`: is required for a backend server",
            ),
            (
                r#"{"id":"x","serverType":"chat","port":"99999"}"#,
                "chat/x, field `port`: must be a port number",
            ),
            (
                r#"{"id":"x","serverType":"c","frontend":true}"#,
                "c/x, field `clientPort`: is required for a frontend",
            ),
            (
                r#"{"id":"x","serverType":"chat","port":1,"clientPort":2}"#,
                "chat/x, field `clientPort`: is only for frontend servers",
            ),
            (
                r#"{"id":"x","serverType":"chat","port":1,"restart":3}"#,
                "chat/x, field `restart`: must be true or false",
            ),
            ("[]", "server definition, field `server`: must be an object"),
        ] {
            let got = def(input).unwrap_err().to_string();
            assert!(
                got.contains(want),
                "input {input}\n got: {got}\nwant: {want}"
            );
        }
    }

    #[test]
    fn rpc_secret_is_random_by_default_or_none() {
        let servers = r#"{"development":{"chat":[{"id":"a","host":"h","port":1}]}}"#;
        let d = tmp("secret");
        write(
            &d,
            servers,
            r#"{"development":{"id":"m","host":"h","port":2}}"#,
        );
        assert!(
            ClusterConfig::load(&d, "development")
                .unwrap()
                .master
                .random_rpc_secret,
            "a secret by default"
        );
        write(
            &d,
            servers,
            r#"{"development":{"id":"m","host":"h","port":2,"rpcSecret":"none"}}"#,
        );
        assert!(
            !ClusterConfig::load(&d, "development")
                .unwrap()
                .master
                .random_rpc_secret
        );
        write(
            &d,
            servers,
            r#"{"development":{"id":"m","host":"h","port":2,"rpcSecret":"random"}}"#,
        );
        assert!(
            ClusterConfig::load(&d, "development")
                .unwrap()
                .master
                .random_rpc_secret
        );
        write(
            &d,
            servers,
            r#"{"development":{"id":"m","host":"h","port":2,"rpcSecret":"00112233445566778899aabbccddeeff"}}"#,
        );
        let err = ClusterConfig::load(&d, "development")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("rpcSecret") && err.contains("must be \"random\""),
            "{err}"
        );
        assert!(
            !err.contains("00112233445566778899aabbccddeeff"),
            "the value is echoed: {err}"
        );
    }

    #[test]
    fn port_zero_means_any_and_never_clashes() {
        let d = tmp("zero");
        write(
            &d,
            r#"{"development":{"chat":[{"id":"a","host":"h","port":0},{"id":"b","host":"h","port":0}]}}"#,
            r#"{"development":{"id":"m","host":"h","port":0}}"#,
        );
        let c = ClusterConfig::load(&d, "development").unwrap();
        assert_eq!(c.servers[1].port, Some(0));
        assert_eq!(c.master.port, 0);
    }

    #[test]
    fn master_restart_policy_defaults_overrides_and_errors() {
        let load = |restart: &str| {
            let d = tmp("restart");
            write(
                &d,
                r#"{"development":{"chat":[{"id":"c","host":"h","port":0}]}}"#,
                &format!(r#"{{"development":{{"id":"m","host":"h","port":0{restart}}}}}"#),
            );
            ClusterConfig::load(&d, "development").map(|c| c.master.restart)
        };
        assert_eq!(load("").unwrap(), RestartPolicy::default());
        assert!(RestartPolicy::default().enabled);
        assert!(!load(r#","restart":false"#).unwrap().enabled);
        let p = load(
            r#","restart":{"backoffMs":50,"maxBackoffMs":200,"crashLoop":{"max":2,"windowSecs":9}}"#,
        )
        .unwrap();
        assert_eq!(
            p,
            RestartPolicy {
                enabled: true,
                backoff: Duration::from_millis(50),
                max_backoff: Duration::from_millis(200),
                crash_loop_max: 2,
                crash_loop_window: Duration::from_secs(9),
            }
        );
        for (restart, want) in [
            (
                r#","restart":"yes""#,
                "field `restart`: must be true, false or an object",
            ),
            (
                r#","restart":{"backoffMs":0}"#,
                "field `restart.backoffMs`: must be a whole number of at least 1",
            ),
            (
                r#","restart":{"backoffMs":900,"maxBackoffMs":800}"#,
                "field `restart.maxBackoffMs`: must be at least backoffMs",
            ),
            (
                r#","restart":{"enable":true}"#,
                "field `restart`: unknown field `enable`",
            ),
            (
                r#","restart":{"crashLoop":{"max":-1}}"#,
                "field `restart.crashLoop.max`",
            ),
            (
                r#","restart":{"crashLoop":{"window":3}}"#,
                "unknown field `window`",
            ),
            (
                r#","restart":{"enabled":"no"}"#,
                "field `restart.enabled`: must be true or false",
            ),
        ] {
            let got = load(restart).unwrap_err().to_string();
            assert!(got.contains(want), "{restart}\n got: {got}\nwant: {want}");
            assert!(
                got.contains("master.json: environment `development`, m,"),
                "{got}"
            );
        }
    }

    #[test]
    fn master_port_clash_is_reported() {
        let got = err(r#"{"development":{"chat":[{"id":"a","host":"127.0.0.1","port":3005}]}}"#);
        assert!(
            got.contains("already used by master master-server-1"),
            "{got}"
        );
    }

    #[test]
    fn missing_file_names_it() {
        let d = tmp("missing");
        let _ = std::fs::remove_file(d.join("servers.json"));
        let e = ClusterConfig::load(&d, "development")
            .unwrap_err()
            .to_string();
        assert!(e.contains("servers.json: cannot read"), "{e}");
    }

    #[test]
    fn ssl_of_a_frontend_is_parsed_and_its_paths_resolved_against_the_config_dir() {
        let d = tmp("ssl");
        write(
            &d,
            r#"{"development":{
                "connector":[
                  {"id":"c1","host":"127.0.0.1","port":0,"clientPort":0,"frontend":true,
                   "ssl":{"cert":"tls/server.crt","key":"/abs/server.key","mode":"required"}},
                  {"id":"c2","host":"127.0.0.1","port":0,"clientPort":0,"frontend":true,
                   "ssl":{"cert":"a.crt","key":"a.key"}},
                  {"id":"c3","host":"127.0.0.1","port":0,"clientPort":0,"frontend":true}]}}"#,
            MASTER,
        );
        let c = ClusterConfig::load(&d, "development").unwrap();
        let ssl = c.server("c1").unwrap().ssl().unwrap().unwrap();
        assert_eq!(ssl.cert, d.join("tls/server.crt"));
        assert_eq!(ssl.key, PathBuf::from("/abs/server.key"));
        assert_eq!(ssl.mode, shaddock_connector::TlsMode::Required);
        let ssl = c.server("c2").unwrap().ssl().unwrap().unwrap();
        assert_eq!(ssl.mode, shaddock_connector::TlsMode::Optional);
        assert_eq!(ssl.key, d.join("a.key"));
        assert_eq!(c.server("c3").unwrap().ssl().unwrap(), None);
    }

    #[test]
    fn metrics_port_is_parsed_checked_and_clashes_are_reported() {
        let d = tmp("metrics");
        write(
            &d,
            r#"{"development":{
                "connector":[{"id":"c1","host":"127.0.0.1","port":0,"clientPort":0,"frontend":true,"metricsPort":9101}],
                "chat":[{"id":"chat-1","host":"127.0.0.1","port":6050,"metricsPort":"0"},
                        {"id":"chat-2","host":"127.0.0.1","port":6051}]}}"#,
            MASTER,
        );
        let c = ClusterConfig::load(&d, "development").unwrap();
        assert_eq!(c.server("c1").unwrap().metrics_port(), Some(9101));
        assert_eq!(
            c.server("c1").unwrap().metrics_addr().as_deref(),
            Some("127.0.0.1:9101")
        );
        assert_eq!(c.server("chat-1").unwrap().metrics_port(), Some(0));
        assert_eq!(c.server("chat-2").unwrap().metrics_port(), None);

        let e = err(
            r#"{"development":{"chat":[{"id":"chat-1","host":"h","port":6050,"metricsPort":70000}]}}"#,
        );
        assert!(
            e.contains("chat/chat-1") && e.contains("metricsPort"),
            "{e}"
        );
        let e = err(
            r#"{"development":{"chat":[{"id":"chat-1","host":"h","port":6050,"metricsPort":6050}]}}"#,
        );
        assert!(
            e.contains("metricsPort") && e.contains("already used"),
            "{e}"
        );
    }

    #[test]
    fn rpc_tls_is_parsed_relative_to_master_json_and_loaded() {
        let d = tmp("rpctls");
        let servers = r#"{"development":{"chat":[{"id":"chat-1","host":"127.0.0.1","port":0}]}}"#;
        write(&d, servers, MASTER);
        let c = ClusterConfig::load(&d, "development").unwrap();
        assert_eq!(c.master.rpc_tls, None);

        write(
            &d,
            servers,
            r#"{"development":{"id":"m","host":"127.0.0.1","port":3005,
                "rpcTls":{"ca":"tls/ca.crt","cert":"tls/server.crt","key":"/abs/server.key"}}}"#,
        );
        let c = ClusterConfig::load(&d, "development").unwrap();
        let files = c.master.rpc_tls.clone().unwrap();
        assert_eq!(files.ca, d.join("tls/ca.crt"));
        assert_eq!(files.cert, d.join("tls/server.crt"));
        assert_eq!(files.key, PathBuf::from("/abs/server.key"));
        let e = files.load().unwrap_err();
        assert!(e.to_string().contains("ca.crt"), "{e}");

        let tls = d.join("tls");
        std::fs::create_dir_all(&tls).unwrap();
        let ca = shaddock_test_support::tls::TestCa::new("config");
        ca.write_ca(&tls);
        let (cert, key) = ca.write_leaf(&tls);
        let files = RpcTlsFiles {
            ca: tls.join("ca.crt"),
            cert,
            key,
        };
        assert!(files.load().is_ok());

        for (bad, want) in [
            (r#""rpcTls":"yes""#, "must be an object"),
            (r#""rpcTls":{"ca":"a","cert":"b"}"#, "rpcTls.key"),
            (
                r#""rpcTls":{"ca":"a","cert":"b","key":"c","pass":"d"}"#,
                "unknown key `pass`",
            ),
        ] {
            write(
                &d,
                servers,
                &format!(r#"{{"development":{{"id":"m","host":"127.0.0.1","port":3005,{bad}}}}}"#),
            );
            let e = ClusterConfig::load(&d, "development")
                .unwrap_err()
                .to_string();
            assert!(e.contains("master.json") && e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_ssl_is_reported_with_its_field() {
        let front = |ssl: &str| {
            format!(
                r#"{{"development":{{"connector":[{{"id":"c1","host":"127.0.0.1","clientPort":0,"frontend":true,"ssl":{ssl}}}]}}}}"#
            )
        };
        let cases = [
            (front(r#""x.pem""#), "field `ssl`: must be an object"),
            (front(r#"{"key":"k.pem"}"#), "field `ssl.cert`: is missing"),
            (front(r#"{"cert":"c.pem","key":""}"#), "field `ssl.key`: must not be empty"),
            (
                front(r#"{"cert":"c.pem","key":"k.pem","mode":"always"}"#),
                "field `ssl.mode`: must be \"optional\" or \"required\"",
            ),
            (
                front(r#"{"cert":"c.pem","key":"k.pem","ca":"x"}"#),
                "field `ssl`: unknown key `ca`",
            ),
            (
                r#"{"development":{"chat":[{"id":"b1","host":"127.0.0.1","port":0,"ssl":{"cert":"c","key":"k"}}]}}"#.to_owned(),
                "chat/b1, field `ssl`: is only for frontend servers",
            ),
        ];
        for (servers, want) in cases {
            let got = err(&servers);
            assert!(got.contains(want), "want `{want}` in: {got}");
            assert!(got.contains("servers.json"), "{got}");
        }
    }

    #[test]
    fn env_choice_prefers_flag() {
        assert_eq!(choose_env(Some("production")), "production");
    }
}
