//! One request or notify: route, body, filters, then the local handler or the forwarder;
//! the response is queued on the session.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use shaddock_protocol::message::{Message, MessageRoute, MessageType, Route};

use tokio_util::task::task_tracker::TaskTrackerToken;

use super::{ForwardRequest, GAVE_UP_MESSAGE, Inner, STOPPING_MESSAGE};
use crate::handler::{HandlerError, RequestInfo};
use crate::session::Session;

/// Answers a message that arrived while the frontend is stopping, without handling it: a
/// request gets a code-500 [`STOPPING_MESSAGE`] response (queued now, so it is written
/// before the coming KICK); a notify is dropped. Called by the connection's own task.
pub(super) fn refuse_stopping(inner: &Inner, session: &Session, msg: &Message) {
    let route = match &msg.route {
        MessageRoute::Name(name) => name.as_str().to_owned(),
        MessageRoute::Code(code) => inner
            .codec
            .dictionary
            .as_ref()
            .and_then(|d| d.route(*code))
            .map(|r| r.as_str().to_owned())
            .unwrap_or_default(),
        _ => String::new(),
    };
    tracing::debug!(%route, id = msg.id, "server stopping: message refused");
    if msg.kind == MessageType::Request && msg.id != 0 {
        let info = RequestInfo {
            route,
            id: msg.id,
            kind: msg.kind,
        };
        let e = HandlerError::internal(STOPPING_MESSAGE);
        let body = error_body(inner, &info, session, &e);
        reply(inner, session, info.id, &info.route, &body);
    }
}

/// Handles one request or notify and queues its response; drops `answered` once the
/// response is queued (or when there is none to send).
///
/// When the graceful drain gives up on it (`give_up`), the request is answered with a
/// code-500 [`GAVE_UP_MESSAGE`] at once and its handler runs on; its result then goes to the
/// after filters only.
///
/// Every failure answers a message the client's developer can act on; the detail (route,
/// cause) is logged, in the connection's span (which names the peer).
pub(super) async fn dispatch(
    inner: Arc<Inner>,
    session: Session,
    msg: Message,
    answered: TaskTrackerToken,
) {
    // "An id of 0 means no response wanted" (§4.2).
    let wants_reply = msg.kind == MessageType::Request && msg.id != 0;
    let route: String = match &msg.route {
        MessageRoute::Name(name) => name.as_str().to_owned(),
        MessageRoute::Code(code) => {
            match inner.codec.dictionary.as_ref().and_then(|d| d.route(*code)) {
                Some(r) => r.as_str().to_owned(),
                None => {
                    tracing::warn!(
                        code,
                        id = msg.id,
                        dictionary = inner.codec.dictionary.is_some(),
                        "message on a route code this server's dictionary does not have"
                    );
                    if wants_reply {
                        let info = RequestInfo {
                            route: String::new(),
                            id: msg.id,
                            kind: msg.kind,
                        };
                        let e = HandlerError::internal(format!(
                            "route code {code} is not in this server's route dictionary: \
                             send the route by name, or reconnect to get the current dictionary"
                        ));
                        let body = error_body(&inner, &info, &session, &e);
                        reply(&inner, &session, msg.id, "", &body);
                    }
                    return;
                }
            }
        }
        _ => return,
    };
    let info = RequestInfo {
        route,
        id: msg.id,
        kind: msg.kind,
    };
    let run = run_request(&inner, &session, &info, &msg.body);
    tokio::pin!(run);
    let (outcome, answered) = tokio::select! {
        biased;
        outcome = &mut run => (outcome, Some(answered)),
        () = inner.give_up.cancelled() => {
            tracing::warn!(route = %info.route, id = info.id, "server stopping: request not finished within the drain, answered with an error");
            if wants_reply {
                let e = HandlerError::internal(GAVE_UP_MESSAGE);
                let body = error_body(&inner, &info, &session, &e);
                reply(&inner, &session, info.id, &info.route, &body);
            }
            drop(answered);
            (run.await, None)
        }
    };
    for f in &inner.after {
        f.after(&info, &session, &outcome);
    }
    if let Err(e) = &outcome {
        tracing::debug!(route = %info.route, code = e.code, error = %e.message, "request failed");
    }
    if wants_reply && answered.is_some() {
        let body = match outcome {
            Ok(Value::Null) => Value::Object(serde_json::Map::new()),
            Ok(v) => v,
            Err(e) => error_body(&inner, &info, &session, &e),
        };
        reply(&inner, &session, info.id, &info.route, &body);
    }
    drop(answered);
}

/// The response body of a failed request: the app's error handler's, else `{code, msg}`.
fn error_body(inner: &Inner, info: &RequestInfo, session: &Session, e: &HandlerError) -> Value {
    match &inner.error_handler {
        Some(h) => h(info, session, e),
        None => e.to_body(),
    }
}

async fn run_request(
    inner: &Inner,
    session: &Session,
    info: &RequestInfo,
    raw: &Bytes,
) -> Result<Value, HandlerError> {
    let parsed = Route::parse(&info.route).map_err(|e| {
        tracing::warn!(route = %info.route, cause = %e, "route is not serverType.handler.method");
        HandlerError::internal(format!(
            "route `{}` is not of the form serverType.handler.method",
            info.route
        ))
    })?;
    let body = inner
        .codec
        .decode(&info.route, raw)
        .map_err(HandlerError::internal)?;
    for f in &inner.before {
        f.before(info, &body, session)?;
    }
    if parsed.server_type == inner.config.server_type {
        let Some(handler) = inner.handlers.get(&info.route) else {
            tracing::warn!(route = %info.route, "no handler for route");
            return Err(HandlerError::internal(format!(
                "route `{}` does not exist on `{}` servers: check its handler and method names",
                info.route, parsed.server_type
            )));
        };
        handler.call(session.clone(), body).await
    } else {
        let Some(forwarder) = &inner.forwarder else {
            tracing::warn!(route = %info.route, "no forwarder for a route of another server type");
            return Err(HandlerError::internal(format!(
                "route `{}` is not served here: this server cannot reach `{}` servers",
                info.route, parsed.server_type
            )));
        };
        let server_type = parsed.server_type.to_owned();
        forwarder
            .forward(ForwardRequest {
                info: info.clone(),
                server_type,
                session: session.clone(),
                body,
            })
            .await
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
