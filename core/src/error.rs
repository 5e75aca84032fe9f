//! [`HandlerError`]: a failed request as the client sees it.

use serde_json::Value;
use shaddock_rpc::{RemoteError, RpcError};

/// The pomelo error code used when nothing more specific applies.
pub const CODE_ERROR: i64 = 500;

/// A failed request: becomes a response body `{"code":…,"msg":…}` (pomelo has no error message
/// type; errors are ordinary responses, PROTOCOL.md §8.4).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("code {code}: {message}")]
pub struct HandlerError {
    /// The `code` of the response body (500 unless the handler chose another).
    pub code: i64,
    /// Human-readable reason, sent as `msg` when not empty.
    pub message: String,
}

impl HandlerError {
    /// An error with `code` and `message`.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// A code-500 error.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(CODE_ERROR, message)
    }

    /// The default response body.
    pub fn to_body(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("code".into(), Value::from(self.code));
        if !self.message.is_empty() {
            m.insert("msg".into(), Value::from(self.message.clone()));
        }
        Value::Object(m)
    }
}

/// A JSON error as a client may see it: what is wrong with the body it sent, without the
/// server's type names. The full error is logged at debug level.
impl From<serde_json::Error> for HandlerError {
    fn from(e: serde_json::Error) -> Self {
        tracing::debug!(cause = %e, "JSON error answered with a generic message");
        Self::internal(crate::extract::json_error_message("", &e))
    }
}

/// A remote's own error keeps its code and message; any other RPC failure (no server, peer
/// down, timeout) is logged and answered with a code-500 sentence that names no server
/// internals (handlers that call remotes can use `?`).
impl From<RpcError> for HandlerError {
    fn from(e: RpcError) -> Self {
        match e {
            RpcError::Remote { code, message } => Self::new(i64::from(code), message),
            other => {
                tracing::warn!(cause = %other, "a remote call of a handler failed");
                let message = if matches!(other, RpcError::Timeout { .. }) {
                    "a server this request needs did not answer in time, try again later"
                } else {
                    "a server this request needs is unavailable, try again later"
                };
                Self::new(i64::from(other.pomelo_code()), message)
            }
        }
    }
}

/// A backend handler's error as it travels back to the frontend (code and message kept; a
/// code outside `u32` becomes 500).
impl From<HandlerError> for RemoteError {
    fn from(e: HandlerError) -> Self {
        Self::new(u32::try_from(e.code).unwrap_or(500), e.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_errors_keep_a_remotes_own_error_and_hide_the_rest() {
        let e = HandlerError::from(RpcError::Remote {
            code: 409,
            message: "taken".into(),
        });
        assert_eq!(e, HandlerError::new(409, "taken"));
        let e = HandlerError::from(RpcError::NoServer {
            server_type: "chat".into(),
        });
        assert_eq!(e.code, 500);
        assert!(
            !e.message.contains("chat") && !e.message.contains("rpc"),
            "{}",
            e.message
        );
        let r: RemoteError = HandlerError::new(403, "no").into();
        assert_eq!((r.code, r.message.as_str()), (403, "no"));
        assert_eq!(
            HandlerError::new(7, "").to_body(),
            serde_json::json!({"code": 7})
        );
    }
}
