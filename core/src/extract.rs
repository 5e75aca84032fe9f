//! Extractors: what a handler takes as arguments, each built from the [`Request`].
//!
//! A handler is a plain async fn whose arguments all implement [`FromRequest`], in any order:
//!
//! | extractor | gives |
//! |---|---|
//! | [`Json<T>`] | the body decoded into `T: Deserialize`; an error names the field |
//! | [`Proto<T>`] | the body of a clientProtos route decoded into a prost message `T` |
//! | [`State<T>`] | a clone of the app's state of type `T` (`App::with_state`) |
//! | [`serde_json::Value`] | the body as JSON |
//! | [`RequestInfo`] | route, id and kind |
//! | the session type | `Session` on frontends, `BackendSession` on backends |
//!
//! Returning `Json<R>` (or any `R: Serialize`, e.g. a [`Value`] or `()`, which answers `{}`)
//! makes the response body.

use serde::de::DeserializeOwned;
use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::error::HandlerError;
use crate::request::{Request, RequestInfo};

/// Builds a handler argument from a request. `S` is the session type of the server kind.
pub trait FromRequest<S>: Sized {
    /// Extracts the value.
    ///
    /// # Errors
    /// The client's error response (code 500 unless the extractor says otherwise).
    fn from_request(req: &Request<S>) -> Result<Self, HandlerError>;
}

impl<S> FromRequest<S> for Value {
    fn from_request(req: &Request<S>) -> Result<Self, HandlerError> {
        Ok(req.body().clone())
    }
}

impl<S> FromRequest<S> for RequestInfo {
    fn from_request(req: &Request<S>) -> Result<Self, HandlerError> {
        Ok(req.info().clone())
    }
}

/// The app's state of type `T`, given once with `App::with_state` (or a frontend builder's
/// `state`). `T` is cloned for each request: keep it cheap (`Arc` inside).
#[derive(Debug, Clone, Copy, Default)]
pub struct State<T>(pub T);

impl<S, T: Clone + Send + Sync + 'static> FromRequest<S> for State<T> {
    fn from_request(req: &Request<S>) -> Result<Self, HandlerError> {
        match req.state().get::<T>() {
            Some(t) => Ok(Self(t.clone())),
            None => {
                let ty = std::any::type_name::<T>();
                tracing::error!(
                    route = req.route(),
                    state = ty,
                    "handler wants a state the app has not registered (App::with_state)"
                );
                Err(HandlerError::internal(format!(
                    "route `{}` cannot be handled: the server is misconfigured",
                    req.route()
                )))
            }
        }
    }
}

/// A JSON body decoded into `T` (request), or `T` encoded as the response body (reply).
///
/// A body that does not decode is answered with code 500 and a message naming the field
/// (`field `rid` is required`, `field `age` must be an integer (got string "x")`); a custom
/// error of a field's own `Deserialize` (e.g. `#[serde(try_from = "String")]`) is reported as
/// `field `NAME` MESSAGE`, so write it as a predicate ("must not be empty").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Json<T>(pub T);

impl<S, T: DeserializeOwned> FromRequest<S> for Json<T> {
    fn from_request(req: &Request<S>) -> Result<Self, HandlerError> {
        // From the JSON text when the request has it: no `Value` built. Only a success is
        // taken from there; anything else (an array, an error) goes the `Value` way below,
        // which makes the answer (and the error message) as it always was.
        if let Some(text) = req.json_text() {
            let text = shaddock_protocol::json::decode_text(text);
            if !text.trim_start().starts_with('[')
                && let Ok(t) = serde_json::from_str::<T>(&text)
            {
                return Ok(Self(t));
            }
        }
        // serde lets a struct read an array positionally; a route whose body is an object
        // (every pomelo body is) refuses arrays instead.
        if req.body().is_array() && wants_object::<T>() {
            return Err(HandlerError::internal(
                "the request body must be a JSON object",
            ));
        }
        match serde_path_to_error::deserialize::<_, T>(req.body()) {
            Ok(t) => Ok(Self(t)),
            Err(e) => {
                let path = e.path().to_string();
                let message = json_error_message(&path, e.inner());
                tracing::debug!(route = req.route(), path, cause = %e.inner(), "request body does not decode");
                Err(HandlerError::internal(message))
            }
        }
    }
}

impl<T: Serialize> Serialize for Json<T> {
    fn serialize<Se: Serializer>(&self, serializer: Se) -> Result<Se::Ok, Se::Error> {
        self.0.serialize(serializer)
    }
}

/// A protobuf body decoded into the prost message `T`: the route must be in the app's
/// clientProtos, whose pomelo-protobuf encoding is protobuf's (field numbers as in the
/// schema's tags). On a JSON route, or when the bytes do not decode, the client gets a
/// code-500 error saying so.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Proto<T>(pub T);

impl<S, T: prost::Message + Default> FromRequest<S> for Proto<T> {
    fn from_request(req: &Request<S>) -> Result<Self, HandlerError> {
        let Some(raw) = req.protobuf() else {
            tracing::warn!(
                route = req.route(),
                "handler takes a protobuf body but the route is not in clientProtos"
            );
            return Err(HandlerError::internal(format!(
                "route `{}` takes a protobuf body, and this one is JSON",
                req.route()
            )));
        };
        T::decode(raw.as_ref()).map(Self).map_err(|e| {
            tracing::debug!(route = req.route(), cause = %e, "protobuf body does not decode");
            HandlerError::internal(format!(
                "the request body of route `{}` is not a valid protobuf message",
                req.route()
            ))
        })
    }
}

/// Whether `T` reads a JSON object (a struct or map): it decodes from `{}`, or fails there
/// only for a missing field.
fn wants_object<T: DeserializeOwned>() -> bool {
    match T::deserialize(&Value::Object(serde_json::Map::new())) {
        Ok(_) => true,
        Err(e) => e.to_string().starts_with("missing field"),
    }
}

/// The client's message for a body that does not fit a handler's `T`, at `path` (`.` or
/// empty: the body itself): it names the field and says what is wrong, without Rust type
/// names.
pub fn json_error_message(path: &str, e: &serde_json::Error) -> String {
    let root = path.is_empty() || path == ".";
    let join = |field: &str| {
        if root {
            field.to_owned()
        } else {
            format!("{path}.{field}")
        }
    };
    if e.is_syntax() || e.is_eof() {
        return format!(
            "the request body is not valid JSON (line {}, column {})",
            e.line(),
            e.column()
        );
    }
    let text = e.to_string();
    let quoted = |prefix: &str| {
        let rest = text.strip_prefix(prefix)?;
        Some(rest.split_once('`')?.0.to_owned())
    };
    if let Some(f) = quoted("missing field `") {
        return format!("field `{}` is required", join(&f));
    }
    if let Some(f) = quoted("unknown field `") {
        // serde_path_to_error's path already ends with the unknown field.
        let field = if root { f } else { path.to_owned() };
        return format!("field `{field}` is not accepted by this route");
    }
    if let Some(f) = quoted("duplicate field `") {
        return format!("field `{}` is given twice", join(&f));
    }
    if let Some(rest) = text.strip_prefix("invalid type: ") {
        let (got, expected) = rest
            .split_once(", expected ")
            .unwrap_or((rest, "another type"));
        let expected = json_kind(expected);
        return match (root, got) {
            (true, _) => format!("the request body must be {expected}"),
            (false, "null") => format!("field `{path}` is required"),
            (false, _) => format!("field `{path}` must be {expected} (got {got})"),
        };
    }
    if root {
        // serde's other messages at the top name the Rust type.
        "the request body does not have the fields and types this route expects".to_owned()
    } else {
        format!("field `{path}` {text}")
    }
}

/// serde's "expected" text in JSON words (no Rust type names).
fn json_kind(expected: &str) -> &str {
    if expected.starts_with("struct ") || expected.starts_with("a map") || expected == "map" {
        "a JSON object"
    } else if expected.starts_with("a sequence")
        || expected.starts_with("tuple")
        || expected.starts_with("a tuple")
    {
        "a JSON array"
    } else if expected.starts_with("enum ") || expected.starts_with("variant ") {
        "one of the values this route accepts"
    } else {
        match expected {
            "u8" | "u16" | "u32" | "u64" | "u128" | "usize" | "i8" | "i16" | "i32" | "i64"
            | "i128" | "isize" => "an integer",
            "f32" | "f64" => "a number",
            "a boolean" | "bool" => "a boolean",
            "unit" => "null",
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;
    use shaddock_protocol::message::MessageType;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Enter {
        username: String,
        age: u8,
        inner: Option<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        #[serde(deserialize_with = "non_empty")]
        tag: String,
    }

    fn non_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Err(serde::de::Error::custom("must not be empty"));
        }
        Ok(s)
    }

    fn msg(body: Value) -> String {
        let req = Request::new(RequestInfo::new("a.b.c", 1, MessageType::Request), (), body);
        let e = <Json<Enter> as FromRequest<()>>::from_request(&req).unwrap_err();
        assert_eq!(e.code, 500);
        e.message
    }

    #[test]
    fn json_errors_name_the_field_and_no_rust_type() {
        let cases = [
            (json!({"age": 1}), "field `username` is required"),
            (
                json!({"username": null, "age": 1}),
                "field `username` is required",
            ),
            (
                json!({"username": 5, "age": 1}),
                "field `username` must be a string (got integer `5`)",
            ),
            (
                json!({"username": "x", "age": "old"}),
                "field `age` must be an integer (got string \"old\")",
            ),
            (json!([1, 2]), "the request body must be a JSON object"),
            (json!([]), "the request body must be a JSON object"),
            (
                json!(["x", 1, null]),
                "the request body must be a JSON object",
            ),
            (
                json!({"username": "x", "age": 1, "inner": {"tag": ""}}),
                "field `inner.tag` must not be empty",
            ),
            (
                json!({"username": "x", "age": 1, "inner": {"tag": "t", "x": 1}}),
                "field `inner.x` is not accepted by this route",
            ),
            (
                json!({"username": "x", "age": 1, "inner": {}}),
                "field `inner.tag` is required",
            ),
            (
                json!({"username": "x", "age": 1, "inner": 3}),
                "field `inner` must be a JSON object (got integer `3`)",
            ),
        ];
        for (body, want) in cases {
            let got = msg(body.clone());
            assert_eq!(got, want, "{body}");
            assert!(!got.contains("Enter") && !got.contains("Inner"), "{got}");
        }
    }

    #[test]
    fn state_and_proto_extractors() {
        let mut state = crate::StateMap::new();
        state.insert(7_u32);
        let req = Request::new(
            RequestInfo::new("a.b.c", 1, MessageType::Request),
            (),
            json!({}),
        )
        .with_state(state);
        let State(n) = <State<u32> as FromRequest<()>>::from_request(&req).unwrap();
        assert_eq!(n, 7);
        assert!(<State<String> as FromRequest<()>>::from_request(&req).is_err());
        // A JSON body is not a protobuf one.
        let e = <Proto<()> as FromRequest<()>>::from_request(&req).unwrap_err();
        assert!(e.message.contains("protobuf"), "{}", e.message);
    }
}
