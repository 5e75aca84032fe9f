//! Certificates made at test time (rcgen): a CA of its own, a server certificate it signed, and
//! more certificates on demand (e.g. client certificates for mutual TLS).

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
    /// The CA's name and private key (PEM), to sign more certificates.
    name: String,
    ca_key: String,
}

fn ca_params(name: &str) -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("shaddock test CA {name}"),
    );
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
}

impl TestCa {
    /// A fresh CA named `shaddock test CA <name>` and a server certificate signed by it.
    ///
    /// # Panics
    /// When rcgen cannot make the keys or certificates (never, for these parameters).
    pub fn new(name: &str) -> Self {
        let params = ca_params(name);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = params.self_signed(&ca_key).unwrap();
        let mut ca = Self {
            pem: ca_cert.pem(),
            leaf_cert: String::new(),
            leaf_key: String::new(),
            name: name.to_owned(),
            ca_key: ca_key.serialize_pem(),
        };
        (ca.leaf_cert, ca.leaf_key) = ca.issue(&["localhost", "127.0.0.1"]);
        ca
    }

    /// A new certificate signed by this CA for `names` (DNS names or IP addresses; no
    /// extended key usage, so it serves as a server and as a client certificate): its PEM and
    /// its private key's PEM.
    ///
    /// # Panics
    /// When rcgen cannot make the key or certificate (never, for these parameters).
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        let ca_key = rcgen::KeyPair::from_pem(&self.ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params(&self.name), ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes the CA certificate into `dir` as `ca.crt`; returns its path.
    ///
    /// # Panics
    /// When the file cannot be written.
    pub fn write_ca(&self, dir: &Path) -> PathBuf {
        let p = dir.join("ca.crt");
        std::fs::write(&p, &self.pem).unwrap();
        p
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
