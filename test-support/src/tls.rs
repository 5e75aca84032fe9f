//! Certificates made at test time (rcgen): a CA of its own and a server certificate it signed.

use std::path::{Path, PathBuf};

/// A test CA (its PEM) and a server certificate + key it signed for `localhost` and
/// `127.0.0.1`.
#[derive(Debug, Clone)]
pub struct TestCa {
    /// The CA certificate, PEM: what a client trusts.
    pub pem: String,
    /// The server certificate, PEM.
    pub leaf_cert: String,
    /// The server certificate's private key, PEM.
    pub leaf_key: String,
}

impl TestCa {
    /// A fresh CA named `shaddock test CA <name>` and a server certificate signed by it.
    ///
    /// # Panics
    /// When rcgen cannot make the keys or certificates (never, for these parameters).
    pub fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("shaddock test CA {name}"),
        );
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap()
                .signed_by(&leaf_key, &issuer)
                .unwrap();
        Self {
            pem: ca_cert.pem(),
            leaf_cert: leaf.pem(),
            leaf_key: leaf_key.serialize_pem(),
        }
    }

    /// Writes the server certificate and key into `dir` as `server.crt` and `server.key`;
    /// returns their paths.
    ///
    /// # Panics
    /// When the files cannot be written.
    pub fn write_leaf(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let (c, k) = (dir.join("server.crt"), dir.join("server.key"));
        std::fs::write(&c, &self.leaf_cert).unwrap();
        std::fs::write(&k, &self.leaf_key).unwrap();
        (c, k)
    }
}
