//! One request or notify: route, body, filters, then the local handler or the forwarder;
//! the response is queued on the session.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use shaddock_protocol::message::{Message, MessageRoute, MessageType, Route};

use tokio_util::task::task_tracker::TaskTrackerToken;

use super::{GAVE_UP_MESSAGE, Inner, STOPPING_MESSAGE};
use crate::handler::{HandlerError, Outcome, Request, RequestInfo, filter};
use crate::session::Session;

/// Answers a message that arrived while the frontend is stopping, without handling it: a
/// request gets a code-500 [`STOPPING_MESSAGE`] response (queued now, so it is written
/// before the coming KICK); a notify is dropped. Called by the connection's own task.
pub(super) fn refuse_stopping(inner: &Inner, session: &Session, msg: &Message) {
    let route = match &msg.route {
        MessageRoute::Name(name) => name.as_str().to_owned(),
        MessageRoute::Code(code) => inner
            .codec
            .dictionary()
            .and_then(|d| d.route(*code))
            .map(|r| r.as_str().to_owned())
            .unwrap_or_default(),
        _ => String::new(),
    };
    tracing::debug!(%route, id = msg.id, "server stopping: message refused");
    if msg.kind == MessageType::Request && msg.id != 0 {
        let info = RequestInfo::new(route, msg.id, msg.kind);
        let e = HandlerError::internal(STOPPING_MESSAGE);
        let body = error_body(inner, &info, session, &e);
        reply(inner, session, info.id, &info.route, &body);
    }
}

/// Handles one request or notify and queues its response; drops `answered` once the
/// response is queued (or when there is none to send). Returns the future that does it, or
/// `None` when the message was dealt with at once (a route code not in the dictionary).
///
/// When the graceful drain gives up on it (`give_up`), the request is answered with a
/// code-500 [`GAVE_UP_MESSAGE`] at once and its handler runs on; its result then goes to the
/// after filters only.
///
/// Every failure answers a message the client's developer can act on; the detail (route,
/// cause) is logged, in the connection's span (which names the peer).
pub(super) fn dispatch(
    inner: Arc<Inner>,
    session: Session,
    msg: Message,
    answered: TaskTrackerToken,
) -> Option<impl Future<Output = ()> + Send + 'static> {
    // The route and the body are resolved here, before the future: what only this part
    // needs (the message, the route's name) is not kept in the future's state, which is
    // allocated per message (a smaller one is a cheaper allocation). `None`: handled here.
    let prepared = prepare(&inner, &session, msg)?;
    Some(handle(inner, session, prepared, answered))
}

/// A message after [`prepare`]: what [`handle`] needs of it.
struct Prepared {
    req: Request<Session>,
    /// The body did not decode: the error to answer with (after the filters see it).
    early: Option<HandlerError>,
    /// A request with an id (§4.2: 0 means no response wanted).
    wants_reply: bool,
    timed: Timed,
}

/// The synchronous start of [`dispatch`]: the route and the body resolved, the metrics
/// started. `None`: nothing more to do (answered here if needed).
fn prepare(inner: &Arc<Inner>, session: &Session, msg: Message) -> Option<Prepared> {
    // "An id of 0 means no response wanted" (§4.2).
    let wants_reply = msg.kind == MessageType::Request && msg.id != 0;
    let timed = Timed::start(inner, msg.kind);
    let route: String = match &msg.route {
        MessageRoute::Name(name) => name.as_str().to_owned(),
        MessageRoute::Code(code) => match inner.codec.dictionary().and_then(|d| d.route(*code)) {
            Some(r) => r.as_str().to_owned(),
            None => {
                tracing::warn!(
                    code,
                    id = msg.id,
                    dictionary = inner.codec.dictionary().is_some(),
                    "message on a route code this server's dictionary does not have"
                );
                if wants_reply {
                    let info = RequestInfo::new(String::new(), msg.id, msg.kind);
                    let e = HandlerError::internal(format!(
                        "route code {code} is not in this server's route dictionary: \
                             send the route by name, or reconnect to get the current dictionary"
                    ));
                    let body = error_body(inner, &info, session, &e);
                    reply(inner, session, msg.id, "", &body);
                }
                timed.done(inner, "", true);
                return None;
            }
        },
        _ => return None,
    };
    let info = RequestInfo::new(route, msg.id, msg.kind);
    // The body decoded once, for filters and the handler or forwarder alike; a body that
    // does not decode is answered with the decoder's message (after filters see it too).
    let (req, early) = match decode(inner, &info, &msg.body) {
        Ok(Body::Text(text)) => (
            Request::from_json_text(info, session.clone(), text).with_state(inner.state.clone()),
            None,
        ),
        Ok(Body::Value(body, protobuf)) => {
            let mut req = Request::new(info, session.clone(), body).with_state(inner.state.clone());
            if let Some(raw) = protobuf {
                req = req.with_protobuf(raw);
            }
            (req, None)
        }
        Err(e) => (Request::new(info, session.clone(), Value::Null), Some(e)),
    };
    Some(Prepared {
        req,
        early,
        wants_reply,
        timed,
    })
}

/// The asynchronous part of [`dispatch`]: filters, the handler or forwarder, the response.
async fn handle(inner: Arc<Inner>, session: Session, p: Prepared, answered: TaskTrackerToken) {
    let Prepared {
        req,
        early,
        wants_reply,
        timed,
    } = p;
    let info = req.info();
    let run = async {
        match early {
            Some(e) => Err(e),
            None => run_request(&inner, &req).await,
        }
    };
    tokio::pin!(run);
    let (outcome, answered) = tokio::select! {
        biased;
        outcome = &mut run => (outcome, Some(answered)),
        () = inner.give_up.cancelled() => {
            tracing::warn!(route = %info.route, id = info.id, "server stopping: request not finished within the drain, answered with an error");
            if wants_reply {
                let e = HandlerError::internal(GAVE_UP_MESSAGE);
                let body = error_body(&inner, info, &session, &e);
                reply(&inner, &session, info.id, &info.route, &body);
            }
            drop(answered);
            (run.await, None)
        }
    };
    filter::run_after(&inner.filters, &req, &outcome).await;
    timed.done(&inner, &info.route, outcome.is_err());
    if let Err(e) = &outcome {
        tracing::debug!(route = %info.route, code = e.code, error = %e.message, "request failed");
    }
    if wants_reply && answered.is_some() {
        let body = match outcome {
            Ok(Value::Null) => Value::Object(serde_json::Map::new()),
            Ok(v) => v,
            Err(e) => error_body(&inner, info, &session, &e),
        };
        reply(&inner, &session, info.id, &info.route, &body);
    }
    drop(answered);
}

/// The start of a message's handling, when the frontend has route metrics.
struct Timed(Option<(std::time::Instant, crate::metrics::MessageKind)>);

impl Timed {
    fn start(inner: &Inner, kind: MessageType) -> Self {
        Self(inner.route_metrics.as_ref().map(|_| {
            let kind = if kind == MessageType::Request {
                crate::metrics::MessageKind::Request
            } else {
                crate::metrics::MessageKind::Notify
            };
            (std::time::Instant::now(), kind)
        }))
    }

    fn done(self, inner: &Inner, route: &str, failed: bool) {
        if let (Some((at, kind)), Some(m)) = (self.0, &inner.route_metrics) {
            m.handled(route, kind, at.elapsed(), failed);
        }
    }
}

/// The response body of a failed request: the app's error handler's, else `{code, msg}`.
fn error_body(inner: &Inner, info: &RequestInfo, session: &Session, e: &HandlerError) -> Value {
    match &inner.error_handler {
        Some(h) => h(info, session, e),
        None => e.to_body(),
    }
}

/// A request body as [`decode`] leaves it.
enum Body {
    /// Valid JSON text that survives re-encoding: parsed only when a filter or handler reads
    /// it, forwarded as it is (no parse and encode per forwarded request).
    Text(Bytes),
    /// The decoded body, and the raw protobuf bytes when the route's body is protobuf.
    Value(Value, Option<Bytes>),
}

/// The route's body: JSON, or protobuf (decoded with its schema, the raw bytes kept for
/// `Proto<T>`); the route is checked to be `serverType.handler.method` first.
fn decode(inner: &Inner, info: &RequestInfo, raw: &Bytes) -> Result<Body, HandlerError> {
    Route::parse(&info.route).map_err(|e| {
        tracing::warn!(route = %info.route, cause = %e, "route is not serverType.handler.method");
        HandlerError::internal(format!(
            "route `{}` is not of the form serverType.handler.method",
            info.route
        ))
    })?;
    // Text that is not JSON, or whose value re-encoding would change, takes the decode below
    // (which words the error, or builds the value the backend would have got).
    if !inner.codec.is_protobuf_request(&info.route)
        && let Ok(Some(text)) = shaddock_protocol::json::passthrough(raw)
    {
        return Ok(Body::Text(text));
    }
    let body = inner
        .codec
        .decode(&info.route, raw)
        .map_err(HandlerError::internal)?;
    let protobuf = inner
        .codec
        .is_protobuf_request(&info.route)
        .then(|| raw.clone());
    Ok(Body::Value(body, protobuf))
}

async fn run_request(inner: &Inner, req: &Request<Session>) -> Outcome {
    let route = req.route();
    filter::run_before(&inner.filters, req).await?;
    let server_type = route.split('.').next().unwrap_or_default();
    if server_type == inner.config.server_type {
        let Some(handler) = inner.handlers.get(route) else {
            tracing::warn!(route, "no handler for route");
            return Err(HandlerError::internal(format!(
                "route `{route}` does not exist on `{server_type}` servers: check its handler and method names"
            )));
        };
        handler.call(req).await
    } else {
        let Some(forwarder) = &inner.forwarder else {
            tracing::warn!(route, "no forwarder for a route of another server type");
            return Err(HandlerError::internal(format!(
                "route `{route}` is not served here: this server cannot reach `{server_type}` servers"
            )));
        };
        forwarder.forward(server_type, req).await
    }
}

/// Queues the response to request `id`. A body that cannot be encoded (over the package
/// size limit) is answered with a short error instead, so the client is not left waiting.
fn reply(inner: &Inner, session: &Session, id: u32, route: &str, body: &Value) {
    let bytes = match inner.codec.response_package(id, route, body) {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::error!(cause = %e, id, route, "cannot encode response, answering an error");
            let e = HandlerError::internal("the response is too large to send");
            match inner.codec.response_package(id, route, &e.to_body()) {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::error!(cause = %e, id, route, "cannot encode the error response either");
                    return;
                }
            }
        }
    };
    if let Err(e) = session.send_response(bytes) {
        tracing::debug!(cause = %e, "response not queued");
    }
}
