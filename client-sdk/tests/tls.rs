//! The client over TLS against Shaddock's connector with TLS on its client port: TLS + raw TCP
//! and WebSocket over TLS (`wss://`) do request/response and a push; plain clients share the
//! port in "optional" mode and are refused in "required"; a certificate reload keeps open
//! connections and gives new handshakes the new certificate. Certificates are made at test
//! time with rcgen (a CA per test, a leaf for `localhost` and `127.0.0.1`).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::within;
use serde_json::{Value, json};
use shaddock_client::{Client, ClientConfig, ClientTls, Error, Transport};
use shaddock_connector::{ConnectorConfig, Frontend, HandlerError, ServerTls, Session, TlsMode};
use shaddock_test_support::logs::capture_logs;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use shaddock_test_support::tls::TestCa as Ca;

fn client_tls(ca: &Ca) -> ClientTls {
    ClientTls::from_ca_pem(ca.pem.as_bytes()).unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shaddock-client-tls-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct Server {
    addr: String,
    tls: ServerTls,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn stop(self) {
        self.shutdown.cancel();
        within(self.task).await.unwrap().unwrap();
    }
}

async fn start(ca: &Ca, dir: &Path, mode: TlsMode) -> Server {
    let (cert, key) = ca.write_leaf(dir);
    let tls = ServerTls::from_pem_files(cert, key, mode).unwrap();
    let mut config = ConnectorConfig::default();
    config.tls = Some(tls.clone());
    let frontend = Frontend::builder(config)
        .handler(
            "connector.entryHandler.echo",
            |_s: Session, req: Value| async move {
                Ok::<_, HandlerError>(json!({"code": 200, "text": req["text"]}))
            },
        )
        .handler(
            "connector.entryHandler.pushMe",
            |s: Session, req: Value| async move {
                s.push("onPush", &json!({"got": req}))
                    .map_err(|e| HandlerError::internal(e.to_string()))?;
                Ok::<_, HandlerError>(json!({"code": 200}))
            },
        )
        .build()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let shutdown = CancellationToken::new();
    let task = {
        let (f, s) = (frontend.clone(), shutdown.clone());
        tokio::spawn(async move { f.serve(listener, s).await })
    };
    Server {
        addr,
        tls,
        shutdown,
        task,
    }
}

fn config(tls: Option<ClientTls>) -> ClientConfig {
    let mut c = ClientConfig::default().with_request_timeout(Duration::from_secs(5));
    c.tls = tls;
    c
}

/// A request and a push over `client`.
async fn echo_and_push(client: &Client, text: &str) {
    let r = within(client.request("connector.entryHandler.echo", &json!({"text": text})))
        .await
        .unwrap();
    assert_eq!(r, json!({"code": 200, "text": text}));
    let mut pushes = client.on("onPush");
    let r = within(client.request("connector.entryHandler.pushMe", &json!({"n": 1})))
        .await
        .unwrap();
    assert_eq!(r["code"], 200);
    let push = within(pushes.recv()).await.expect("push");
    assert_eq!(push.value().unwrap(), json!({"got": {"n": 1}}));
}

#[tokio::test]
async fn tls_tcp_wss_and_plain_share_the_port_in_optional_mode() {
    let ca = Ca::new("optional");
    let dir = temp_dir("optional");
    let server = start(&ca, &dir, TlsMode::Optional).await;
    for transport in [Transport::Tcp, Transport::WebSocket] {
        // TLS (TLS + TCP, then wss://), checked against the test CA.
        let (client, _events) = within(Client::connect(
            &server.addr,
            transport,
            config(Some(client_tls(&ca))),
        ))
        .await
        .unwrap_or_else(|e| panic!("{transport} over TLS: {e}"));
        echo_and_push(&client, &format!("tls {transport}")).await;
        client.close().await;
        // Plain on the same port.
        let (client, _events) = within(Client::connect(&server.addr, transport, config(None)))
            .await
            .unwrap_or_else(|e| panic!("plain {transport}: {e}"));
        echo_and_push(&client, &format!("plain {transport}")).await;
        client.close().await;
    }
    // URLs: tls:// and wss:// with the configured roots.
    let port = server.addr.rsplit_once(':').unwrap().1;
    for url in [
        format!("tls://localhost:{port}"),
        format!("wss://localhost:{port}/"),
    ] {
        let (client, _events) = within(Client::connect_url(&url, config(Some(client_tls(&ca)))))
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        echo_and_push(&client, &url).await;
        client.close().await;
    }
    server.stop().await;
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_tls_error() {
    let ca = Ca::new("trusted");
    let other = Ca::new("other");
    let dir = temp_dir("untrusted");
    let server = start(&ca, &dir, TlsMode::Optional).await;
    for transport in [Transport::Tcp, Transport::WebSocket] {
        let err = within(Client::connect(
            &server.addr,
            transport,
            config(Some(client_tls(&other))),
        ))
        .await
        .expect_err("a certificate of another CA must be refused");
        assert!(matches!(err, Error::Tls { .. }), "{transport}: {err}");
    }
    // Mozilla's roots do not include the test CA either.
    let port = server.addr.rsplit_once(':').unwrap().1;
    let err = within(Client::connect_url(
        &format!("wss://127.0.0.1:{port}"),
        config(None),
    ))
    .await
    .expect_err("the test CA is not a public root");
    assert!(matches!(err, Error::Tls { .. }), "{err}");
    server.stop().await;
}

#[tokio::test]
async fn required_mode_refuses_plain_clients_and_logs_why() {
    let (logs, _guard) = capture_logs();
    let ca = Ca::new("required");
    let dir = temp_dir("required");
    let server = start(&ca, &dir, TlsMode::Required).await;
    for transport in [Transport::Tcp, Transport::WebSocket] {
        let err = within(Client::connect(&server.addr, transport, config(None)))
            .await
            .expect_err("a plain client must be refused");
        assert!(!matches!(err, Error::Tls { .. }), "{transport}: {err}");
    }
    within(async {
        while !logs
            .text()
            .contains("closed: plain connection on a port that requires TLS")
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    for transport in [Transport::Tcp, Transport::WebSocket] {
        let (client, _events) = within(Client::connect(
            &server.addr,
            transport,
            config(Some(client_tls(&ca))),
        ))
        .await
        .unwrap_or_else(|e| panic!("{transport} over TLS: {e}"));
        echo_and_push(&client, "required").await;
        client.close().await;
    }
    server.stop().await;
}

#[tokio::test]
async fn reload_keeps_open_connections_and_new_handshakes_get_the_new_certificate() {
    let old = Ca::new("old");
    let new = Ca::new("new");
    let dir = temp_dir("reload");
    let server = start(&old, &dir, TlsMode::Optional).await;
    let (tcp, _e1) = within(Client::connect(
        &server.addr,
        Transport::Tcp,
        config(Some(client_tls(&old))),
    ))
    .await
    .unwrap();
    let (ws, _e2) = within(Client::connect(
        &server.addr,
        Transport::WebSocket,
        config(Some(client_tls(&old))),
    ))
    .await
    .unwrap();
    let refused = within(Client::connect(
        &server.addr,
        Transport::Tcp,
        config(Some(client_tls(&new))),
    ))
    .await;
    assert!(
        matches!(refused, Err(Error::Tls { .. })),
        "before the reload"
    );

    // A bad new file: the reload fails naming it, the old certificate stays.
    std::fs::write(dir.join("server.crt"), "garbage").unwrap();
    let e = server.tls.reload().expect_err("a bad certificate file");
    assert!(e.to_string().contains("server.crt"), "{e}");
    let (still_old, _e3) = within(Client::connect(
        &server.addr,
        Transport::Tcp,
        config(Some(client_tls(&old))),
    ))
    .await
    .expect("the old certificate is still served");
    still_old.close().await;

    new.write_leaf(&dir);
    server.tls.reload().unwrap();
    // Open connections go on.
    echo_and_push(&tcp, "after reload, tcp").await;
    echo_and_push(&ws, "after reload, ws").await;
    // New handshakes get the new certificate.
    for transport in [Transport::Tcp, Transport::WebSocket] {
        let (c, _e) = within(Client::connect(
            &server.addr,
            transport,
            config(Some(client_tls(&new))),
        ))
        .await
        .unwrap_or_else(|e| panic!("{transport} with the new CA: {e}"));
        echo_and_push(&c, "new").await;
        c.close().await;
        let refused = within(Client::connect(
            &server.addr,
            transport,
            config(Some(client_tls(&old))),
        ))
        .await;
        assert!(
            matches!(refused, Err(Error::Tls { .. })),
            "{transport}: old CA after the reload"
        );
    }
    tcp.close().await;
    ws.close().await;
    server.stop().await;
}
