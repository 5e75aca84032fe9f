//! The `cluster` section of master.json: which NATS servers, how to log in, the app name and
//! the record TTL. Without the section, the app runs on one machine (the embedded backend).
//!
//! ```json
//! { "development": {
//!     "id": "master-server-1", "host": "127.0.0.1", "port": 3005,
//!     "cluster": {
//!       "nats": ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222", "nats://10.0.0.3:4222"],
//!       "credsFile": "/etc/shaddock/app.creds",
//!       "tls": { "ca": "ca.pem", "cert": "client.pem", "key": "client-key.pem" },
//!       "app": "chat",
//!       "ttlMs": 3000
//!     } } }
//! ```
//!
//! | field | default | meaning |
//! |---|---|---|
//! | `nats` | required | NATS URLs (`nats://`, `tls://`; `host:port` means `nats://`), one or more |
//! | `credsFile` | none | a NATS `.creds` file (JWT + nkey seed) |
//! | `user`, `password` | none | user and password (both or neither) |
//! | `token` | none | a token; at most one of creds file, user + password, token |
//! | `tls` | none | `ca` (a PEM of roots to trust), `cert` + `key` (a client certificate) |
//! | `app` | required | the app's name: bucket and subject prefix (`[A-Za-z0-9_-]+`) |
//! | `ttlMs` | 3000 | record TTL; a lost server is known within TTL + 2 s; at least 1000 |
//! | `replicas` | 3 (1 with one URL) | JetStream replicas of each bucket (1, 3 or 5) |
//! | `connectTimeoutMs` | 30000 | how long the first connect is retried before giving up |

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::{DEFAULT_TTL, MIN_TTL};

/// TLS files of the NATS connection.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsFiles {
    /// Roots to trust (PEM); the system's when absent.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[serde(default)]
    pub key: Option<PathBuf>,
}

/// The `cluster` section; see the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// NATS URLs.
    pub nats: Vec<String>,
    /// A `.creds` file.
    pub creds_file: Option<PathBuf>,
    /// User and password.
    pub user_password: Option<(String, String)>,
    /// A token.
    pub token: Option<String>,
    /// TLS files.
    pub tls: Option<TlsFiles>,
    /// The app's name (bucket and subject prefix).
    pub app: String,
    /// Record TTL.
    pub ttl: Duration,
    /// Bucket replicas.
    pub replicas: usize,
    /// How long the first connect is retried.
    pub connect_timeout: Duration,
}

impl ClusterConfig {
    /// A config for `urls` and `app` with every other field at its default.
    pub fn new(urls: Vec<String>, app: &str) -> Self {
        let replicas = if urls.len() >= 3 { 3 } else { 1 };
        Self {
            nats: urls,
            creds_file: None,
            user_password: None,
            token: None,
            tls: None,
            app: app.to_owned(),
            ttl: DEFAULT_TTL,
            replicas,
            connect_timeout: Duration::from_secs(30),
        }
    }

    /// The bound within which a lost server is known as lost: TTL + 2 s.
    pub fn lost_within(&self) -> Duration {
        self.ttl + Duration::from_secs(2)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Raw {
    nats: Vec<String>,
    #[serde(default)]
    creds_file: Option<PathBuf>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    tls: Option<TlsFiles>,
    app: String,
    #[serde(default)]
    ttl_ms: Option<u64>,
    #[serde(default)]
    replicas: Option<usize>,
    #[serde(default)]
    connect_timeout_ms: Option<u64>,
}

/// A `cluster` section that cannot work; names the file, environment and field.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterConfigError {
    /// Not valid JSON, or a field of the wrong type or unknown (serde's message names it).
    #[error("{file}: environment `{env}`, cluster: {message}")]
    Json {
        /// The file.
        file: PathBuf,
        /// The environment.
        env: String,
        /// serde's message.
        message: String,
    },
    /// A field breaks a rule.
    #[error("{file}: environment `{env}`, cluster, field `{field}`: {problem}")]
    Invalid {
        /// The file.
        file: PathBuf,
        /// The environment.
        env: String,
        /// The field.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
}

/// Whether `name` may be an app name (it becomes part of bucket names).
pub(crate) fn valid_app(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

impl ClusterConfig {
    /// The `cluster` section of one environment's master.json object, if it has one.
    ///
    /// # Errors
    /// [`ClusterConfigError`] naming `file`, `env` and the field.
    pub fn from_master_env(
        file: &Path,
        env: &str,
        master: &Value,
    ) -> Result<Option<Self>, ClusterConfigError> {
        match master.get("cluster") {
            None | Some(Value::Null) => Ok(None),
            Some(v) => Self::from_value(file, env, v).map(Some),
        }
    }

    /// Parses a whole master.json text and takes environment `env`'s `cluster` section.
    ///
    /// # Errors
    /// As [`Self::from_master_env`]; also when the text is not JSON.
    pub fn from_master_json(
        file: &Path,
        env: &str,
        text: &str,
    ) -> Result<Option<Self>, ClusterConfigError> {
        let v: Value = serde_json::from_str(text).map_err(|e| ClusterConfigError::Json {
            file: file.to_owned(),
            env: env.to_owned(),
            message: e.to_string(),
        })?;
        match v.get(env) {
            Some(m) => Self::from_master_env(file, env, m),
            None => Ok(None),
        }
    }

    /// Parses and checks one `cluster` object.
    ///
    /// # Errors
    /// As [`Self::from_master_env`].
    pub fn from_value(file: &Path, env: &str, v: &Value) -> Result<Self, ClusterConfigError> {
        let raw: Raw = Raw::deserialize(v).map_err(|e| ClusterConfigError::Json {
            file: file.to_owned(),
            env: env.to_owned(),
            message: e.to_string(),
        })?;
        let bad = |field: &'static str, problem: String| ClusterConfigError::Invalid {
            file: file.to_owned(),
            env: env.to_owned(),
            field,
            problem,
        };
        if raw.nats.is_empty() {
            return Err(bad("nats", "no NATS URL".into()));
        }
        let mut nats = Vec::with_capacity(raw.nats.len());
        for u in &raw.nats {
            nats.push(check_url(u).map_err(|p| bad("nats", p))?);
        }
        if !valid_app(&raw.app) {
            return Err(bad(
                "app",
                format!("{:?}: only letters, digits, `-` and `_`", raw.app),
            ));
        }
        let user_password = match (raw.user, raw.password) {
            (Some(u), Some(p)) if !u.is_empty() => Some((u, p)),
            (None, None) => None,
            (Some(_), Some(_)) => return Err(bad("user", "empty".into())),
            (Some(_), None) => return Err(bad("password", "`user` without `password`".into())),
            (None, Some(_)) => return Err(bad("user", "`password` without `user`".into())),
        };
        let methods = usize::from(raw.creds_file.is_some())
            + usize::from(user_password.is_some())
            + usize::from(raw.token.is_some());
        if methods > 1 {
            return Err(bad(
                "credsFile",
                "give one of `credsFile`, `user` + `password`, `token`".into(),
            ));
        }
        if raw.token.as_deref() == Some("") {
            return Err(bad("token", "empty".into()));
        }
        if let Some(t) = &raw.tls
            && t.cert.is_some() != t.key.is_some()
        {
            return Err(bad("tls", "`cert` and `key` go together".into()));
        }
        let ttl = raw.ttl_ms.map_or(DEFAULT_TTL, Duration::from_millis);
        if ttl < MIN_TTL {
            return Err(bad(
                "ttlMs",
                format!("{} ms is under the minimum of 1000", ttl.as_millis()),
            ));
        }
        let replicas = raw.replicas.unwrap_or(if nats.len() >= 3 { 3 } else { 1 });
        if ![1, 3, 5].contains(&replicas) {
            return Err(bad("replicas", format!("{replicas}: 1, 3 or 5")));
        }
        let connect_timeout = Duration::from_millis(raw.connect_timeout_ms.unwrap_or(30_000));
        Ok(Self {
            nats,
            creds_file: raw.creds_file,
            user_password,
            token: raw.token,
            tls: raw.tls,
            app: raw.app,
            ttl,
            replicas,
            connect_timeout,
        })
    }
}

/// A NATS URL as async-nats takes it, or what is wrong with it.
fn check_url(u: &str) -> Result<String, String> {
    let rest = if let Some((scheme, rest)) = u.split_once("://") {
        if !["nats", "tls"].contains(&scheme) {
            return Err(format!("{u:?}: scheme `{scheme}`, not nats or tls"));
        }
        rest
    } else {
        u
    };
    // Credentials in the URL are allowed (`user:pass@host`); the host part must be there.
    let hostport = rest.rsplit('@').next().unwrap_or(rest);
    let hostport = hostport.split('/').next().unwrap_or("");
    if hostport.is_empty() || hostport.starts_with(':') {
        return Err(format!("{u:?}: no host"));
    }
    if let Some((_, port)) = hostport.rsplit_once(':')
        && !hostport.ends_with(']')
        && port.parse::<u16>().is_err()
    {
        return Err(format!("{u:?}: port `{port}` is not a number"));
    }
    Ok(if u.contains("://") {
        u.to_owned()
    } else {
        format!("nats://{u}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<ClusterConfig, ClusterConfigError> {
        ClusterConfig::from_value(Path::new("config/master.json"), "production", &v)
    }

    #[test]
    fn full_section_parses() {
        let text = r#"{"production":{"id":"m","host":"h","port":1,"cluster":{
            "nats":["nats://10.0.0.1:4222","10.0.0.2:4222","tls://n3.example:4443"],
            "credsFile":"/etc/app.creds",
            "tls":{"ca":"ca.pem","cert":"c.pem","key":"k.pem"},
            "app":"chat_1","ttlMs":2000,"replicas":5,"connectTimeoutMs":500}}}"#;
        let c = ClusterConfig::from_master_json(Path::new("master.json"), "production", text)
            .unwrap()
            .unwrap();
        assert_eq!(
            c.nats,
            [
                "nats://10.0.0.1:4222",
                "nats://10.0.0.2:4222",
                "tls://n3.example:4443"
            ]
        );
        assert_eq!(c.creds_file.as_deref(), Some(Path::new("/etc/app.creds")));
        assert_eq!(
            c.tls.as_ref().unwrap().key.as_deref(),
            Some(Path::new("k.pem"))
        );
        assert_eq!(c.app, "chat_1");
        assert_eq!(c.ttl, Duration::from_secs(2));
        assert_eq!(c.lost_within(), Duration::from_secs(4));
        assert_eq!(c.replicas, 5);
        assert_eq!(c.connect_timeout, Duration::from_millis(500));
    }

    #[test]
    fn defaults_and_absence() {
        let c = parse(json!({"nats":["nats://a:4222"],"app":"chat","user":"u","password":"p"}))
            .unwrap();
        assert_eq!(c.ttl, DEFAULT_TTL);
        assert_eq!(c.replicas, 1);
        assert_eq!(c.user_password, Some(("u".into(), "p".into())));
        assert_eq!(c, {
            let mut d = ClusterConfig::new(vec!["nats://a:4222".into()], "chat");
            d.user_password = Some(("u".into(), "p".into()));
            d
        });
        let three = parse(json!({"nats":["a:1","b:1","c:1"],"app":"x","token":"t"})).unwrap();
        assert_eq!(three.replicas, 3);
        assert_eq!(three.token.as_deref(), Some("t"));
        let none = ClusterConfig::from_master_json(
            Path::new("m.json"),
            "development",
            r#"{"development":{"id":"m","host":"h","port":1}}"#,
        )
        .unwrap();
        assert_eq!(none, None);
    }

    #[test]
    fn every_broken_rule_names_its_field() {
        let cases = [
            (json!({"nats":[],"app":"a"}), "field `nats`"),
            (json!({"nats":["http://a:1"],"app":"a"}), "scheme `http`"),
            (json!({"nats":["ws://a:1"],"app":"a"}), "scheme `ws`"),
            (json!({"nats":["nats://:1"],"app":"a"}), "no host"),
            (json!({"nats":["nats://a:x"],"app":"a"}), "port `x`"),
            (json!({"nats":["a:1"],"app":"a.b"}), "field `app`"),
            (json!({"nats":["a:1"],"app":""}), "field `app`"),
            (
                json!({"nats":["a:1"],"app":"a","user":"u"}),
                "field `password`",
            ),
            (
                json!({"nats":["a:1"],"app":"a","password":"p"}),
                "field `user`",
            ),
            (
                json!({"nats":["a:1"],"app":"a","token":"t","credsFile":"f"}),
                "one of",
            ),
            (
                json!({"nats":["a:1"],"app":"a","token":""}),
                "field `token`",
            ),
            (
                json!({"nats":["a:1"],"app":"a","tls":{"cert":"c"}}),
                "field `tls`",
            ),
            (
                json!({"nats":["a:1"],"app":"a","ttlMs":999}),
                "field `ttlMs`",
            ),
            (
                json!({"nats":["a:1"],"app":"a","replicas":2}),
                "field `replicas`",
            ),
            (
                json!({"nats":["a:1"],"app":"a","ttl":3}),
                "unknown field `ttl`",
            ),
            (json!({"nats":"a:1","app":"a"}), "invalid type"),
            (json!({"app":"a"}), "missing field `nats`"),
        ];
        for (v, want) in cases {
            let e = parse(v.clone()).unwrap_err().to_string();
            assert!(e.contains(want), "{v}: {e}");
            assert!(
                e.starts_with("config/master.json: environment `production`, cluster"),
                "{e}"
            );
        }
    }
}
