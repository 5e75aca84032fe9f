//! TLS on the RPC port with a cluster CA: [`RpcTls`], mutual TLS between the cluster's servers.
//!
//! One CA signs the certificate of every server of the cluster. With [`crate::RpcConfig::tls`]
//! set:
//! - an [`crate::RpcServer`] speaks TLS only and asks every peer for a certificate, which must
//!   chain to the CA; a peer without one, with one from another CA, or speaking plain TCP is
//!   closed with a `warn!` naming it and the reason, before any frame is read;
//! - an [`crate::RpcClient`] connects with TLS, checks that the server's certificate chains to
//!   the CA and presents its own certificate; a refused handshake is
//!   [`crate::RpcError::TlsFailed`].
//!
//! The certificate's *name* is not compared with the peer's host: every certificate the
//! cluster CA signed belongs to a server of this cluster (one certificate may serve every
//! host, as master.json's single `rpcTls` entry gives it), and the chain, the validity dates
//! and the key usage are checked as usual. Keep the CA for the cluster only.
//!
//! The cluster secret ([`crate::RpcConfig::secret`]) works inside TLS exactly as without it.
//!
//! A plain-TCP peer is told apart before rustls sees its bytes: its first byte is not a TLS
//! handshake record, or it sends nothing for half of `connect_timeout` (a plain client with a
//! secret waits for the server's challenge, while a TLS client sends its ClientHello at once).
//! The server then answers a fatal TLS alert, which a Shaddock client without TLS recognises
//! and reports as [`crate::RpcError::TlsFailed`] ("the peer speaks TLS").
//!
//! rustls with the `ring` provider; TLS 1.2 and 1.3.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// Why the TLS setting of the RPC port could not be built. Every variant names the file (or
/// the PEM text's role) it concerns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("{}: cannot read: {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Not valid PEM, or no item of the kind needed in it.
    #[error("{}: {problem}", file.display())]
    Pem {
        /// The file (or `ca`, `cert`, `key` for PEM text given directly).
        file: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// rustls refused the setting (e.g. the key does not match the certificate, a CA
    /// certificate it cannot use).
    #[error("{what}: {source}")]
    Rustls {
        /// Which part: e.g. `certificate cert.pem with key key.pem`.
        what: String,
        /// rustls' error.
        source: rustls::Error,
    },
}

/// The TLS setting of a cluster's RPC ports: the rustls configs of the client and the server
/// side, built from the cluster CA and this server's certificate and key. Cheap to clone.
#[derive(Clone)]
pub struct RpcTls {
    client: Arc<ClientConfig>,
    server: Option<Arc<ServerConfig>>,
    source: Arc<str>,
}

impl fmt::Debug for RpcTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcTls")
            .field("source", &self.source)
            .field("serves", &self.server.is_some())
            .finish_non_exhaustive()
    }
}

impl RpcTls {
    /// Reads the cluster CA (`ca`: PEM, one or more certificates), this server's certificate
    /// chain (`cert`: PEM, leaf first, signed by the CA) and its private key (`key`: PEM,
    /// PKCS#8, PKCS#1 or SEC1). The same certificate serves the RPC port and identifies this
    /// server when it calls others.
    ///
    /// # Errors
    /// [`TlsError`] naming the file that cannot be read or parsed, or the pair rustls refuses.
    pub fn from_pem_files(
        ca: impl AsRef<Path>,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, TlsError> {
        let read = |file: &Path| {
            std::fs::read(file).map_err(|source| TlsError::Read {
                file: file.to_owned(),
                source,
            })
        };
        let (ca, cert, key) = (ca.as_ref(), cert.as_ref(), key.as_ref());
        build((ca, &read(ca)?), (cert, &read(cert)?), (key, &read(key)?))
    }

    /// As [`RpcTls::from_pem_files`], from PEM text held in memory (errors name the parts
    /// `ca`, `cert` and `key`).
    ///
    /// # Errors
    /// As [`RpcTls::from_pem_files`].
    pub fn from_pem(ca: &[u8], cert: &[u8], key: &[u8]) -> Result<Self, TlsError> {
        build(
            (Path::new("ca"), ca),
            (Path::new("cert"), cert),
            (Path::new("key"), key),
        )
    }

    /// From rustls configs made by the caller (another verifier, a client that presents no
    /// certificate, ...). `server`: `None` for a process that only calls (an
    /// [`crate::RpcServer`] with such a setting refuses every connection, logging why).
    pub fn from_configs(client: Arc<ClientConfig>, server: Option<Arc<ServerConfig>>) -> Self {
        Self {
            client,
            server,
            source: Arc::from("custom rustls configs"),
        }
    }

    /// The rustls config of the client side.
    pub fn client_config(&self) -> &Arc<ClientConfig> {
        &self.client
    }

    /// The rustls config of the server side, if any.
    pub fn server_config(&self) -> Option<&Arc<ServerConfig>> {
        self.server.as_ref()
    }

    pub(crate) fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(Arc::clone(&self.client))
    }

    pub(crate) fn acceptor(&self) -> Option<tokio_rustls::TlsAcceptor> {
        self.server
            .as_ref()
            .map(|s| tokio_rustls::TlsAcceptor::from(Arc::clone(s)))
    }
}

/// The name a client sends as SNI for a peer at `host` (the name itself is not checked, see the
/// module docs): the host when it is a DNS name or an IP address, else a fixed one.
pub(crate) fn server_name(host: &str) -> ServerName<'static> {
    ServerName::try_from(host.to_owned()).unwrap_or_else(|_| {
        ServerName::try_from("shaddock-rpc").unwrap_or_else(|_| unreachable!("a valid DNS name"))
    })
}

/// The rustls error inside an I/O error from a TLS stream, if that is what it is.
pub(crate) fn rustls_cause(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// The first byte of a TLS record carrying a handshake message (a ClientHello first).
pub(crate) const HANDSHAKE_RECORD: u8 = 0x16;
/// The first byte of a TLS alert record.
pub(crate) const ALERT_RECORD: u8 = 0x15;

/// A fatal `unexpected_message` alert (TLS 1.2 record framing, which TLS 1.3 keeps for alerts
/// sent in the clear): what a TLS port answers a peer that speaks plain TCP to it, so that a
/// Shaddock client without TLS can say what is wrong instead of "connection closed".
pub(crate) const PLAIN_PEER_ALERT: [u8; 7] = [ALERT_RECORD, 0x03, 0x03, 0x00, 0x02, 0x02, 0x0a];

fn build(
    ca: (&Path, &[u8]),
    cert: (&Path, &[u8]),
    key: (&Path, &[u8]),
) -> Result<RpcTls, TlsError> {
    let pem_err = |file: &Path, problem: String| TlsError::Pem {
        file: file.to_owned(),
        problem,
    };
    let certs = |(file, pem): (&Path, &[u8])| {
        let v = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_err(file, format!("bad PEM: {e}")))?;
        if v.is_empty() {
            return Err(pem_err(file, "no CERTIFICATE in the file".into()));
        }
        Ok(v)
    };
    let ca_certs = certs(ca)?;
    let mut roots = RootCertStore::empty();
    for c in ca_certs {
        roots.add(c).map_err(|source| TlsError::Rustls {
            what: format!("CA certificate {}", ca.0.display()),
            source,
        })?;
    }
    let roots = Arc::new(roots);
    let chain = certs(cert)?;
    let private = PrivateKeyDer::from_pem_slice(key.1).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            pem_err(key.0, "no PRIVATE KEY in the file".into())
        }
        e => pem_err(key.0, format!("bad PEM: {e}")),
    })?;
    let pair = format!(
        "certificate {} with key {}",
        cert.0.display(),
        key.0.display()
    );
    let rustls_err = |what: &str| {
        let what = what.to_owned();
        move |source| TlsError::Rustls { what, source }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
            .build()
            .map_err(|e| TlsError::Rustls {
                what: format!("CA {}", ca.0.display()),
                source: rustls::Error::General(e.to_string()),
            })?;
    let server = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(rustls_err(&pair))?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), private.clone_key())
        .map_err(rustls_err(&pair))?;

    let webpki = WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider))
        .build()
        .map_err(|e| TlsError::Rustls {
            what: format!("CA {}", ca.0.display()),
            source: rustls::Error::General(e.to_string()),
        })?;
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(rustls_err(&pair))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ClusterCaVerifier(webpki)))
        .with_client_auth_cert(chain, private)
        .map_err(rustls_err(&pair))?;
    Ok(RpcTls {
        client: Arc::new(client),
        server: Some(Arc::new(server)),
        source: Arc::from(format!("ca {}, {pair}", ca.0.display())),
    })
}

/// WebPKI verification of a server's chain against the cluster CA, without the name check
/// (see the module docs). rustls checks the name last, after the chain, the dates and the key
/// usage, so a name error means everything else passed.
#[derive(Debug)]
struct ClusterCaVerifier(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ClusterCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::CertificateError::{NotValidForName, NotValidForNameContext};
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                NotValidForName | NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_part() {
        let e = RpcTls::from_pem(b"", b"", b"").unwrap_err();
        assert!(e.to_string().starts_with("ca: no CERTIFICATE"), "{e}");
        let e = RpcTls::from_pem_files("/nonexistent/ca.pem", "c", "k").unwrap_err();
        assert!(
            matches!(e, TlsError::Read { .. }) && e.to_string().contains("/nonexistent/ca.pem"),
            "{e}"
        );
    }

    #[test]
    fn any_host_gets_a_server_name() {
        assert_eq!(server_name("127.0.0.1").to_str(), "127.0.0.1");
        assert_eq!(server_name("chat.example").to_str(), "chat.example");
        assert_eq!(server_name("not a name!").to_str(), "shaddock-rpc");
    }
}
