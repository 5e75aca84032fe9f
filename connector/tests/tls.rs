//! Hostile and broken TLS input on the client port: every case ends in a clean close with a
//! logged reason, and the port keeps serving. (The happy paths, TLS + TCP and WSS with the
//! Rust client, are in client-sdk/tests/tls.rs.)

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use shaddock_connector::{Frontend, ServerTls, TlsMode};
use shaddock_test_support::logs::capture_logs;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

struct Pair {
    cert_der: rustls::pki_types::CertificateDer<'static>,
    tls: ServerTls,
}

fn pair(name: &str, mode: TlsMode) -> Pair {
    let dir = std::env::temp_dir().join(format!("shaddock-conn-tls-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (c, k) = (dir.join("c.pem"), dir.join("k.pem"));
    std::fs::write(&c, ck.cert.pem()).unwrap();
    std::fs::write(&k, ck.signing_key.serialize_pem()).unwrap();
    Pair {
        cert_der: ck.cert.der().clone(),
        tls: ServerTls::from_pem_files(c, k, mode).unwrap(),
    }
}

async fn start_tls(tls: Option<ServerTls>, handshake_timeout: Duration) -> Server {
    let mut config = test_config();
    config.tls = tls;
    config.handshake_timeout = handshake_timeout;
    start(Frontend::builder(config)).await
}

/// Connects, writes `bytes`, returns the stream and its local address (the server's peer).
async fn raw_send(addr: SocketAddr, bytes: &[u8]) -> (TcpStream, SocketAddr) {
    let mut s = within(TcpStream::connect(addr)).await.unwrap();
    let me = s.local_addr().unwrap();
    within(s.write_all(bytes)).await.unwrap();
    (s, me)
}

async fn expect_eof<S: AsyncReadExt + Unpin>(s: &mut S) {
    let mut buf = [0u8; 4096];
    within(async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}

fn client_config(cert: &rustls::pki_types::CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

async fn tls_connect(
    addr: SocketAddr,
    cert: &rustls::pki_types::CertificateDer<'static>,
) -> (tokio_rustls::client::TlsStream<TcpStream>, SocketAddr) {
    let tcp = within(TcpStream::connect(addr)).await.unwrap();
    let me = tcp.local_addr().unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let s = within(tokio_rustls::TlsConnector::from(client_config(cert)).connect(name, tcp))
        .await
        .expect("TLS handshake");
    (s, me)
}

#[tokio::test]
async fn a_broken_client_hello_is_closed_with_a_logged_reason() {
    let (logs, _g) = capture_logs();
    let p = pair("broken", TlsMode::Optional);
    let server = start_tls(Some(p.tls.clone()), Duration::from_secs(5)).await;
    // A handshake record header followed by junk.
    let (mut s, me) = raw_send(server.addr, b"\x16\x03\x01\x00\x05hello\x16\x03").await;
    expect_eof(&mut s).await;
    logs.expect(me, "closed: TLS handshake failed").await;
    // The port still serves plain and TLS clients.
    let mut c = Client::tcp(server.addr).await;
    c.handshake().await;
    let (mut t, _) = tls_connect(server.addr, &p.cert_der).await;
    within(t.write_all(b"\x01\x00\x00\x02{}")).await.unwrap();
    let mut head = [0u8; 4];
    within(t.read_exact(&mut head)).await.unwrap();
    assert_eq!(head[0], 1, "a HANDSHAKE reply over TLS");
    assert!(server.frontend.stats().protocol_errors >= 1);
    server.stop().await;
}

#[tokio::test]
async fn a_silent_tls_client_is_closed_at_the_handshake_timeout() {
    let (logs, _g) = capture_logs();
    let p = pair("silent", TlsMode::Required);
    let server = start_tls(Some(p.tls), Duration::from_millis(300)).await;
    // One byte of a ClientHello, then nothing.
    let (mut s, me) = raw_send(server.addr, b"\x16").await;
    expect_eof(&mut s).await;
    logs.expect(me, "TLS handshake not done before the handshake timeout")
        .await;
    // TLS up, then nothing inside it: the same deadline.
    let (mut t, me) = tls_connect(server.addr, &p.cert_der).await;
    expect_eof(&mut t).await;
    logs.expect(me, "no bytes to sniff before the handshake timeout")
        .await;
    assert!(server.frontend.stats().handshake_timeouts >= 2);
    server.stop().await;
}

#[tokio::test]
async fn junk_inside_tls_and_a_client_hello_on_a_plain_port_are_closed() {
    let (logs, _g) = capture_logs();
    let p = pair("junk", TlsMode::Optional);
    let server = start_tls(Some(p.tls), Duration::from_secs(5)).await;
    let (mut t, me) = tls_connect(server.addr, &p.cert_der).await;
    within(t.write_all(&[0xff; 16])).await.unwrap();
    expect_eof(&mut t).await;
    logs.expect(me, "invalid package type byte `0xff`").await;
    server.stop().await;

    // No TLS configured: a ClientHello goes to the package decoder, which refuses it.
    let plain = start_tls(None, Duration::from_secs(5)).await;
    let (mut s, me) = raw_send(plain.addr, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03").await;
    expect_eof(&mut s).await;
    logs.expect(me, "invalid package type byte `0x16`").await;
    plain.stop().await;
}
