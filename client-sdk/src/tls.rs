//! [`ClientTls`]: TLS to the server (TLS + raw TCP, or `wss://`), with rustls.
//!
//! Set [`ClientConfig::tls`](crate::ClientConfig::tls) and [`Client::connect`](crate::Client::connect)
//! runs a TLS handshake on the socket before the WebSocket upgrade (then to `wss://…`) or the
//! raw pomelo handshake. [`Client::connect_url`](crate::Client::connect_url) takes `tls://` and
//! `wss://` URLs and uses [`ClientTls::webpki_roots`] unless a `tls` is configured.
//!
//! The server's certificate is checked against the root store (Mozilla's roots from
//! `webpki-roots` by default, or the CA certificates you add) for the name the client
//! connects to: the host of the address, or [`ClientTls::with_server_name`].

use std::fmt;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

/// TLS settings of a client connection. Cheap to clone.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    server_name: Option<String>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// Why a [`ClientTls`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// A CA file is not PEM, holds no certificate, or a certificate is not a valid trust
    /// anchor.
    #[error("CA certificates: {0}")]
    Ca(String),
}

impl ClientTls {
    /// Trusts the certificates of `roots` only.
    pub fn with_roots(roots: RootCertStore) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // The ring provider supports the safe default versions, so this cannot fail.
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth())
            .unwrap_or_else(|e| unreachable!("ring supports TLS 1.2 and 1.3: {e}"));
        Self::from_rustls(Arc::new(config))
    }

    /// Trusts Mozilla's root certificates (the `webpki-roots` crate): public servers.
    pub fn webpki_roots() -> Self {
        let roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        Self::with_roots(roots)
    }

    /// Trusts the CA certificates (or self-signed server certificates) in `pem` only: a
    /// cluster's own CA, a test certificate.
    ///
    /// # Errors
    /// [`TlsConfigError::Ca`] when `pem` holds no certificate or a bad one.
    pub fn from_ca_pem(pem: &[u8]) -> Result<Self, TlsConfigError> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsConfigError::Ca(format!("bad PEM: {e}")))?;
        if certs.is_empty() {
            return Err(TlsConfigError::Ca("no CERTIFICATE in the PEM text".into()));
        }
        let mut roots = RootCertStore::empty();
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| TlsConfigError::Ca(e.to_string()))?;
        }
        Ok(Self::with_roots(roots))
    }

    /// Uses a rustls config made elsewhere (client certificates, other verifiers, ALPN ...).
    pub fn from_rustls(config: Arc<rustls::ClientConfig>) -> Self {
        Self {
            config,
            server_name: None,
        }
    }

    /// Checks the server's certificate for (and sends as SNI) `name` instead of the host of
    /// the address connected to.
    #[must_use]
    pub fn with_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// The name to verify for a connection to `authority` (`host:port`, `[v6]:port`).
    pub(crate) fn name_for(&self, authority: &str) -> Result<ServerName<'static>, String> {
        let host = match &self.server_name {
            Some(n) => n.as_str(),
            None => host_of(authority),
        };
        ServerName::try_from(host.to_owned())
            .map_err(|e| format!("`{host}` is not a valid TLS server name: {e}"))
    }

    pub(crate) fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.config.clone())
    }
}

/// The host part of `host:port` (brackets of an IPv6 literal removed).
fn host_of(authority: &str) -> &str {
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    };
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(host_of("example.com:3050"), "example.com");
        assert_eq!(host_of("127.0.0.1:1"), "127.0.0.1");
        assert_eq!(host_of("[::1]:3050"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
        let tls = ClientTls::webpki_roots();
        assert!(tls.name_for("[::1]:3050").is_ok());
        assert!(tls.name_for("a b:1").is_err());
        assert!(ClientTls::from_ca_pem(b"nothing").is_err());
    }
}
