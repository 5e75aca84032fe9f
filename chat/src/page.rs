//! The chat's web page: the files of `chat/web`, embedded in the binary, served over HTTP/1.1
//! with hyper.
//!
//! Only `GET`/`HEAD` of `/` (or `/index.html`), `/app.js`, `/pomelo-client.js` and
//! `/style.css`; anything else is 404 (405 for other methods). `index.html` is served with the
//! gate's real client port filled into `<meta name="shaddock-gate-port">`, so the page finds the
//! gate at `location.hostname:<port>` even when the cluster runs on other ports (`?gate=host:port`
//! in the URL still wins).
//!
//! Bounds: at most [`MAX_CONNECTIONS`] connections at once (more wait in the accept queue), and
//! a connection that does not send its request head within [`HEADER_TIMEOUT`] is closed.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 256;
/// How long a connection may take to send a request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

const INDEX: &str = include_str!("../web/index.html");
const APP_JS: &str = include_str!("../web/app.js");
const CLIENT_JS: &str = include_str!("../web/pomelo-client.js");
const STYLE: &str = include_str!("../web/style.css");

/// The tag in `index.html` that receives the gate port.
pub const GATE_PORT_META: &str = r#"<meta name="shaddock-gate-port" content="">"#;

/// The page's files, ready to serve. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Page {
    index: Bytes,
}

impl Page {
    /// The page, telling browsers that the gate listens on `gate_port` (of the page's host).
    pub fn new(gate_port: Option<u16>) -> Self {
        let index = match gate_port {
            Some(port) => INDEX.replacen(
                GATE_PORT_META,
                &format!(r#"<meta name="shaddock-gate-port" content="{port}">"#),
                1,
            ),
            None => INDEX.to_owned(),
        };
        Self {
            index: Bytes::from(index),
        }
    }

    /// The response to `method path` (path without the query string).
    pub fn respond(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        if method != Method::GET && method != Method::HEAD {
            let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "405 method not allowed\n");
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        let (body, mime) = match path {
            "/" | "/index.html" => (self.index.clone(), "text/html; charset=utf-8"),
            "/app.js" => (
                Bytes::from_static(APP_JS.as_bytes()),
                "text/javascript; charset=utf-8",
            ),
            "/pomelo-client.js" => (
                Bytes::from_static(CLIENT_JS.as_bytes()),
                "text/javascript; charset=utf-8",
            ),
            "/style.css" => (
                Bytes::from_static(STYLE.as_bytes()),
                "text/css; charset=utf-8",
            ),
            _ => return plain(StatusCode::NOT_FOUND, "404 not found\n"),
        };
        let len = body.len();
        let body = if method == Method::HEAD {
            Bytes::new()
        } else {
            body
        };
        let mut r = Response::new(Full::new(body));
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        r
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Serves `page` on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, page: Page, shutdown: CancellationToken) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: log, let the cause pass, go on.
                    tracing::warn!(cause = %e, "page server: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let page = page.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req: Request<Incoming>| {
                let r = page.respond(req.method(), req.uri().path());
                async move { Ok::<_, Infallible>(r) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, cause = %e, "page server: connection ended with an error");
                    }
                }
                () = stop.cancelled() => {}
            }
        });
    }
    tracing::debug!("page server stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn text(r: Response<Full<Bytes>>) -> String {
        let b = r.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn serves_the_files_with_the_gate_port() {
        assert!(
            INDEX.contains(GATE_PORT_META),
            "index.html lost its gate meta tag"
        );
        let p = Page::new(Some(41234));
        let r = p.respond(&Method::GET, "/");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        let body = text(r).await;
        assert!(body.contains(r#"<meta name="shaddock-gate-port" content="41234">"#));
        for path in ["/app.js", "/pomelo-client.js", "/style.css", "/index.html"] {
            let r = p.respond(&Method::GET, path);
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            assert!(!text(r).await.is_empty(), "{path}");
        }
        let head = p.respond(&Method::HEAD, "/app.js");
        assert_eq!(
            head.headers()[header::CONTENT_LENGTH],
            APP_JS.len().to_string()
        );
        assert!(text(head).await.is_empty());
    }

    #[tokio::test]
    async fn anything_else_is_refused() {
        let p = Page::new(None);
        for path in ["/x", "/../Cargo.toml", "/web/app.js", "/favicon.ico", ""] {
            assert_eq!(
                p.respond(&Method::GET, path).status(),
                StatusCode::NOT_FOUND,
                "{path}"
            );
        }
        let r = p.respond(&Method::POST, "/");
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[header::ALLOW], "GET, HEAD");
        assert!(
            text(p.respond(&Method::GET, "/"))
                .await
                .contains(GATE_PORT_META)
        );
    }
}
