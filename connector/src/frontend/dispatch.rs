//! One request or notify: route, body, filters, then the local handler or the forwarder;
//! the response is queued on the session.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use shaddock_protocol::message::{Message, MessageRoute, MessageType, Route};

use super::{ForwardRequest, Inner};
use crate::handler::{HandlerError, RequestInfo};
use crate::session::Session;

/// Handles one request or notify and queues its response.
pub(super) async fn dispatch(inner: Arc<Inner>, session: Session, msg: Message) {
    // "An id of 0 means no response wanted" (§4.2).
    let wants_reply = msg.kind == MessageType::Request && msg.id != 0;
    let route: String = match &msg.route {
        MessageRoute::Name(name) => name.as_str().to_owned(),
        MessageRoute::Code(code) => {
            match inner.codec.dictionary.as_ref().and_then(|d| d.route(*code)) {
                Some(r) => r.as_str().to_owned(),
                None => {
                    tracing::warn!(code, "unknown route code");
                    if wants_reply {
                        reply(
                            &inner,
                            &session,
                            msg.id,
                            "",
                            &HandlerError::internal(format!("unknown route code {code}")).to_body(),
                        );
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
    let outcome = run_request(&inner, &session, &info, &msg.body).await;
    for f in &inner.after {
        f.after(&info, &session, &outcome);
    }
    if let Err(e) = &outcome {
        tracing::debug!(route = %info.route, code = e.code, error = %e.message, "request failed");
    }
    if wants_reply {
        let body = match outcome {
            Ok(Value::Null) => Value::Object(serde_json::Map::new()),
            Ok(v) => v,
            Err(e) => match &inner.error_handler {
                Some(h) => h(&info, &session, &e),
                None => e.to_body(),
            },
        };
        reply(&inner, &session, info.id, &info.route, &body);
    }
}

async fn run_request(
    inner: &Inner,
    session: &Session,
    info: &RequestInfo,
    raw: &Bytes,
) -> Result<Value, HandlerError> {
    let parsed = Route::parse(&info.route).map_err(|_| {
        tracing::warn!(route = %info.route, "route is not serverType.handler.method");
        HandlerError::internal(format!("invalid route `{}`", info.route))
    })?;
    let body = inner
        .codec
        .decode(&info.route, raw)
        .map_err(|e| HandlerError::internal(format!("invalid request body: {e}")))?;
    for f in &inner.before {
        f.before(info, &body, session)?;
    }
    if parsed.server_type == inner.config.server_type {
        let Some(handler) = inner.handlers.get(&info.route) else {
            tracing::warn!(route = %info.route, "no handler for route");
            return Err(HandlerError::internal(format!(
                "unknown route `{}`",
                info.route
            )));
        };
        handler.call(session.clone(), body).await
    } else {
        let Some(forwarder) = &inner.forwarder else {
            tracing::warn!(route = %info.route, "no forwarder for a remote route");
            return Err(HandlerError::internal(format!(
                "no server of type `{}`",
                parsed.server_type
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

fn reply(inner: &Inner, session: &Session, id: u32, route: &str, body: &Value) {
    match inner.codec.response_package(id, route, body) {
        Ok(bytes) => {
            if let Err(e) = session.send_response(bytes) {
                tracing::debug!(cause = %e, "response not queued");
            }
        }
        Err(e) => tracing::error!(cause = %e, id, "cannot encode response"),
    }
}
