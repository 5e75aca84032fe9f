//! TLS on the client port: the certificate and key of a frontend, reloadable at run time.
//!
//! A [`ServerTls`] holds the PEM file paths, the [`TlsMode`] and the rustls server config
//! built from the files. [`ServerTls::reload`] re-reads the files and swaps the config:
//! handshakes that start afterwards use the new certificate, connections already open keep
//! theirs (a TLS session's keys do not depend on the certificate file once it is up). A new
//! file that cannot be read or parsed, or whose key does not match its certificate, is
//! refused with an error naming the file, and the old certificate stays in use. The server
//! runtime calls `reload` on SIGHUP.
//!
//! With TLS configured the port sniffs a TLS ClientHello as well (its first byte is `0x16`, a
//! handshake record; a pomelo package starts with its type 1..=5 and an HTTP request with an
//! upper-case method): in [`TlsMode::Optional`] plain TCP, plain WebSocket, TLS + TCP and
//! WebSocket over TLS (`wss://`) share the port; in [`TlsMode::Required`] plain clients are
//! closed with a logged reason. Inside TLS the first bytes are sniffed again: raw pomelo
//! packages or a WebSocket upgrade.
//!
//! rustls with the `ring` provider; TLS 1.2 and 1.3; no client certificates; no ALPN (browsers
//! then speak HTTP/1.1, which the WebSocket upgrade needs).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Whether the port also serves plain clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TlsMode {
    /// Plain and TLS clients on the same port (the first byte tells them apart). Default.
    #[default]
    Optional,
    /// TLS clients only: a plain connection is closed (and logged) after its first bytes.
    Required,
}

impl TlsMode {
    /// Parses `"optional"` or `"required"` (the spelling of servers.json).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "optional" => Some(Self::Optional),
            "required" => Some(Self::Required),
            _ => None,
        }
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Optional => "optional",
            Self::Required => "required",
        })
    }
}

/// Why a certificate or key could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The file is not valid PEM, or holds no item of the kind needed.
    #[error("{}: {problem}", file.display())]
    Pem {
        /// The file.
        file: PathBuf,
        /// What is wrong (e.g. "no CERTIFICATE in the file").
        problem: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate, or an
    /// unsupported key type).
    #[error("certificate {} with key {}: {source}", cert.display(), key.display())]
    Rustls {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' error.
        source: rustls::Error,
    },
}

/// The TLS settings of a client port: PEM files, mode, and the current rustls config.
/// Cheap to clone; clones share the config, so a [`reload`](Self::reload) on one is seen by
/// all (the frontend holds one, the SIGHUP handler another).
#[derive(Clone)]
pub struct ServerTls {
    inner: Arc<Shared>,
}

struct Shared {
    cert: PathBuf,
    key: PathBuf,
    mode: TlsMode,
    current: RwLock<Arc<ServerConfig>>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert", &self.inner.cert)
            .field("key", &self.inner.key)
            .field("mode", &self.inner.mode)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads the certificate chain (`cert`: PEM, leaf first) and the private key (`key`: PEM,
    /// PKCS#8, PKCS#1 or SEC1) and builds the server config.
    ///
    /// # Errors
    /// [`TlsError`] naming the file that cannot be read or parsed, or both files when rustls
    /// refuses the pair.
    pub fn from_pem_files(
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
        mode: TlsMode,
    ) -> Result<Self, TlsError> {
        let cert = cert.into();
        let key = key.into();
        let config = load(&cert, &key)?;
        Ok(Self {
            inner: Arc::new(Shared {
                cert,
                key,
                mode,
                current: RwLock::new(config),
            }),
        })
    }

    /// Re-reads the certificate and key files; on success new handshakes use them, open
    /// connections are untouched. On failure the error is logged (naming the file) and
    /// returned, and the config in use does not change.
    ///
    /// # Errors
    /// As [`from_pem_files`](Self::from_pem_files).
    pub fn reload(&self) -> Result<(), TlsError> {
        match load(&self.inner.cert, &self.inner.key) {
            Ok(config) => {
                *self
                    .inner
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = config;
                tracing::info!(cert = %self.inner.cert.display(), key = %self.inner.key.display(), "TLS certificate reloaded");
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate not reloaded, keeping the one in use");
                Err(e)
            }
        }
    }

    /// The mode.
    pub fn mode(&self) -> TlsMode {
        self.inner.mode
    }

    /// The certificate file.
    pub fn cert_path(&self) -> &Path {
        &self.inner.cert
    }

    /// The key file.
    pub fn key_path(&self) -> &Path {
        &self.inner.key
    }

    /// The rustls config new handshakes use now (a new `Arc` after each successful reload).
    pub fn current(&self) -> Arc<ServerConfig> {
        self.inner
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// An acceptor for one new connection, with the current config.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current())
    }
}

fn read_file(file: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(file).map_err(|source| TlsError::Read {
        file: file.to_owned(),
        source,
    })
}

fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let pem_err = |file: &Path, problem: String| TlsError::Pem {
        file: file.to_owned(),
        problem,
    };
    let cert_pem = read_file(cert_file)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(cert_file, format!("bad PEM: {e}")))?;
    if chain.is_empty() {
        return Err(pem_err(cert_file, "no CERTIFICATE in the file".into()));
    }
    let key_pem = read_file(key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            pem_err(key_file, "no PRIVATE KEY in the file".into())
        }
        e => pem_err(key_file, format!("bad PEM: {e}")),
    })?;
    let rustls_err = |source| TlsError::Rustls {
        cert: cert_file.to_owned(),
        key: key_file.to_owned(),
        source,
    };
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(rustls_err)?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(rustls_err)?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("shaddock-tls-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn write_pair(d: &Path) -> (PathBuf, PathBuf) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let (c, k) = (d.join("cert.pem"), d.join("key.pem"));
        std::fs::write(&c, ck.cert.pem()).unwrap();
        std::fs::write(&k, ck.signing_key.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn errors_name_the_file() {
        let d = dir("errors");
        let (c, k) = write_pair(&d);
        let missing = d.join("missing.pem");
        let e = ServerTls::from_pem_files(&missing, &k, TlsMode::Optional).unwrap_err();
        assert!(matches!(e, TlsError::Read { .. }), "{e}");
        assert!(e.to_string().contains("missing.pem"), "{e}");

        // A key file given as the certificate: no CERTIFICATE in it.
        let e = ServerTls::from_pem_files(&k, &k, TlsMode::Optional).unwrap_err();
        assert!(e.to_string().contains("key.pem: no CERTIFICATE"), "{e}");

        // A certificate given as the key: no PRIVATE KEY in it.
        let e = ServerTls::from_pem_files(&c, &c, TlsMode::Optional).unwrap_err();
        assert!(e.to_string().contains("cert.pem: no PRIVATE KEY"), "{e}");

        // A key that is not the certificate's.
        let other = dir("errors-other");
        let (_, k2) = write_pair(&other);
        let e = ServerTls::from_pem_files(&c, &k2, TlsMode::Optional).unwrap_err();
        assert!(matches!(e, TlsError::Rustls { .. }), "{e}");

        assert!(ServerTls::from_pem_files(&c, &k, TlsMode::Required).is_ok());
    }

    #[test]
    fn bad_reload_keeps_the_old_config_and_good_reload_swaps_it() {
        let d = dir("reload");
        let (c, k) = write_pair(&d);
        let tls = ServerTls::from_pem_files(&c, &k, TlsMode::Optional).unwrap();
        let before = tls.current();
        std::fs::write(&c, "not a certificate").unwrap();
        let e = tls.reload().unwrap_err();
        assert!(e.to_string().contains("cert.pem"), "{e}");
        assert!(
            Arc::ptr_eq(&before, &tls.current()),
            "a bad file must keep the old config"
        );
        write_pair(&d);
        tls.reload().unwrap();
        assert!(!Arc::ptr_eq(&before, &tls.current()));
    }

    #[test]
    fn mode_spellings() {
        assert_eq!(TlsMode::parse("optional"), Some(TlsMode::Optional));
        assert_eq!(TlsMode::parse("required"), Some(TlsMode::Required));
        assert_eq!(TlsMode::parse("Required"), None);
    }
}
