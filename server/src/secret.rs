//! Where the cluster secret of a master lives on its machine, so that admin commands run by the
//! same user (`list`, `stop`, the chat launcher) can reach a master whose secret it generated.
//!
//! A master that generates its secret (the default, `"rpcSecret": "random"`) writes it as hex
//! to `<dir>/master-<host>-<port>.secret`, where `<dir>` is `$XDG_RUNTIME_DIR/shaddock` or, without
//! that, `<temp dir>/shaddock-<uid>`. The folder is made mode 0700 and must belong to this user
//! with no access for others (else the master refuses to start: someone could read or plant
//! the secret); the file is mode 0600 and removed when the master exits. `$SHADDOCK_RPC_SECRET`
//! wins over the file everywhere. On several machines, set that variable instead: the file is
//! only read on the master's own machine.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use shaddock_rpc::{ClusterSecret, RpcConfig};

/// The folder of the secret files of this user's masters.
pub fn secret_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("shaddock"),
        _ => std::env::temp_dir().join(format!("shaddock-{}", euid())),
    }
}

/// The secret file of the master at `addr` (`host:port`).
pub fn secret_file(addr: &str) -> PathBuf {
    let name: String = addr
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    secret_dir().join(format!("master-{name}.secret"))
}

/// This process's effective uid (the owner of `/proc/self`).
fn euid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0)
}

/// Makes [`secret_dir`] (0700) or checks that it is this user's and closed to others.
fn private_dir() -> Result<PathBuf, String> {
    let dir = secret_dir();
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot make {}: {e}", dir.display())),
    }
    let meta = std::fs::symlink_metadata(&dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    if !meta.is_dir() || meta.uid() != euid() || meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{} must be a folder of this user with no access for others (mode 0700)",
            dir.display()
        ));
    }
    Ok(dir)
}

/// The written secret file of a running master; removed on drop.
#[derive(Debug)]
pub(crate) struct SecretFile(PathBuf);

impl Drop for SecretFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Writes the secret of the master at `addr` to its file (0600), replacing a stale one.
pub(crate) fn write_secret_file(addr: &str, secret: &ClusterSecret) -> Result<SecretFile, String> {
    private_dir()?;
    let path = secret_file(addr);
    // A file left by a master that died without cleaning up is replaced, never appended to;
    // remove first so the new file is created with mode 0600 whatever the old one had.
    let _ = std::fs::remove_file(&path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("cannot write the cluster secret to {}: {e}", path.display()))?;
    f.write_all(secret.to_hex().as_bytes())
        .map_err(|e| format!("cannot write the cluster secret to {}: {e}", path.display()))?;
    Ok(SecretFile(path))
}

/// The secret of the master at `addr` from its file, if there is one readable by this user.
///
/// # Errors
/// The file exists but does not hold a secret (the message names the file, not its content).
pub fn read_secret_file(addr: &str) -> Result<Option<ClusterSecret>, String> {
    read_from(&secret_file(addr))
}

fn read_from(path: &Path) -> Result<Option<ClusterSecret>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => ClusterSecret::from_hex(text.trim())
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// RPC settings for a tool that talks to the master at `addr` (and, through what it learns,
/// to its servers): the secret from `$SHADDOCK_RPC_SECRET`, else from the master's secret file
/// on this machine, else none.
///
/// # Errors
/// The variable or the file holds something that is not a secret.
pub fn admin_rpc_config(addr: &str) -> Result<RpcConfig, String> {
    let mut cfg = crate::process::rpc_config_from_env()?;
    if cfg.secret.is_none() {
        cfg.secret = read_secret_file(addr)?;
    }
    Ok(cfg)
}

/// The TLS settings of a tool talking to the cluster of `master` (master.json's `rpcTls`
/// read), or `None` when the cluster's RPC is plain TCP.
///
/// # Errors
/// A file of `rpcTls` cannot be read or parsed (the message names it).
pub fn cluster_tls(
    master: &crate::config::MasterConfig,
) -> Result<Option<shaddock_rpc::RpcTls>, String> {
    master
        .load_rpc_tls()
        .map_err(|e| format!("master.json rpcTls: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_file_is_private_round_trips_and_goes_with_its_guard() {
        let addr = format!("127.0.0.1:{}", 40_000 + std::process::id() % 20_000);
        let secret = ClusterSecret::generate().unwrap();
        let guard = write_secret_file(&addr, &secret).unwrap();
        let path = secret_file(&addr);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
        let dir_mode = std::fs::metadata(secret_dir())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        assert_eq!(read_secret_file(&addr).unwrap(), Some(secret));
        drop(guard);
        assert!(!path.exists());
        assert_eq!(read_secret_file(&addr).unwrap(), None);
        std::fs::write(&path, "not hex").unwrap();
        let err = read_secret_file(&addr).unwrap_err();
        assert!(err.contains(&path.display().to_string()), "{err}");
        std::fs::remove_file(&path).unwrap();
    }
}
