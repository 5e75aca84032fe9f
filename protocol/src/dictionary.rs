//! The route dictionary: 16-bit codes that replace route strings on the wire.
//!
//! Built exactly as pomelo's and pinus' `dictionary` component does it (PROTOCOL.md §9.1):
//!
//! 1. all handler routes `serverType.handler.method`, sorted with JavaScript's default sort
//!    (UTF-16 code-unit order), numbered 1, 2, 3 ... (0 is never assigned);
//! 2. then the routes of `config/dictionary.json`, in file order, with the following
//!    numbers. A route that already has a code is *re-numbered* in route → code (keeping its
//!    original position in that object) while code → route keeps both codes;
//! 3. `dictVersion` = base64 of the MD5 of `JSON.stringify(dict)`.
//!
//! The dictionary is a value built once at startup and shared (`Arc`) — never a global.
//!
//! ```
//! use shaddock_protocol::RouteDictionary;
//!
//! let dict = RouteDictionary::new(
//!     ["connector.entryHandler.entry", "chat.chatHandler.send"],
//!     ["onChat"],
//! )?;
//! assert_eq!(dict.code("chat.chatHandler.send"), Some(1));
//! assert_eq!(dict.route(3).map(|r| r.as_str()), Some("onChat"));
//! assert_eq!(dict.dict_json(), r#"{"chat.chatHandler.send":1,"connector.entryHandler.entry":2,"onChat":3}"#);
//! # Ok::<(), shaddock_protocol::Error>(())
//! ```

use std::collections::HashMap;

use base64::Engine as _;
use md5::{Digest, Md5};
use serde_json::{Map, Value};

use crate::message::{MessageRoute, RouteName};
use crate::{Error, json};

/// base64 (standard alphabet, padded) of the MD5 of `text`: pomelo's `dictVersion` and
/// `protos.version` hash.
pub fn version_hash(text: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Md5::digest(text))
}

/// `JSON.stringify(map)`, written from the map in place (no clone into a `Value`).
fn object_text(map: &Map<String, Value>) -> String {
    let mut out = Vec::new();
    json::write_object(map, &mut out);
    // `write_object` only produces UTF-8 (string contents come from `str`s).
    String::from_utf8(out).unwrap_or_default()
}

/// Route ↔ code tables plus the exact JSON texts the handshake sends.
#[derive(Debug, Clone, Default)]
pub struct RouteDictionary {
    /// route → code, for compressing outgoing pushes and client requests.
    codes: HashMap<Box<str>, u16>,
    /// code → route, indexed by code; for expanding compressed routes. Re-numbered routes
    /// keep both codes, as pomelo does.
    routes: Vec<Option<RouteName>>,
    /// `dict` / `routeToCode` as a JSON object, in pomelo's key order.
    dict: Map<String, Value>,
    /// `codeToRoute` as a JSON object.
    code_to_route: Map<String, Value>,
    /// `JSON.stringify(dict)`.
    dict_json: String,
    /// `JSON.stringify(codeToRoute)`.
    code_to_route_json: String,
    /// base64 MD5 of `dict_json`.
    version: String,
}

impl RouteDictionary {
    /// Build the dictionary from the application's handler routes (any order: they are
    /// sorted) and the user list of `dictionary.json` (kept in order).
    ///
    /// # Errors
    /// [`Error::DictionaryFull`] when a code would exceed 65 535.
    pub fn new<H, U>(handler_routes: H, user_routes: U) -> Result<Self, Error>
    where
        H: IntoIterator,
        H::Item: Into<String>,
        U: IntoIterator,
        U::Item: Into<String>,
    {
        let mut sorted: Vec<String> = handler_routes.into_iter().map(Into::into).collect();
        // JS Array.prototype.sort default: compare UTF-16 code units.
        sorted.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
        let mut builder = Self::default();
        let all = sorted
            .into_iter()
            .chain(user_routes.into_iter().map(Into::into));
        for (route, code) in all.zip(1u64..) {
            builder.assign(route, code)?;
        }
        builder.finish();
        Ok(builder)
    }

    /// Build the client-side dictionary from a handshake reply: `dict` (route → code) and,
    /// when present, `codeToRoute` (otherwise `dict` is inverted, as the JS client does).
    ///
    /// # Errors
    /// [`Error::InvalidBody`] when a code is not an integer 0..=65535 or a route not a string.
    pub fn from_handshake(
        dict: &Map<String, Value>,
        code_to_route: Option<&Map<String, Value>>,
    ) -> Result<Self, Error> {
        let bad = |reason: String| Error::InvalidBody {
            what: "handshake response",
            reason,
        };
        let mut out = Self::default();
        for (route, code) in dict {
            let code = code
                .as_u64()
                .and_then(|c| u16::try_from(c).ok())
                .ok_or_else(|| bad(format!("dict code for `{route}` is not 0..=65535: {code}")))?;
            out.codes.insert(route.as_str().into(), code);
            out.dict.insert(route.clone(), Value::from(code));
            if code_to_route.is_none() {
                out.set_route(code, route);
            }
        }
        if let Some(map) = code_to_route {
            for (code, route) in map {
                let code: u16 = code
                    .parse()
                    .map_err(|_| bad(format!("codeToRoute key `{code}` is not 0..=65535")))?;
                let route = route
                    .as_str()
                    .ok_or_else(|| bad(format!("codeToRoute[{code}] is not a string")))?;
                out.set_route(code, route);
            }
        }
        out.finish();
        Ok(out)
    }

    fn assign(&mut self, route: String, code: u64) -> Result<(), Error> {
        let Ok(code16) = u16::try_from(code) else {
            return Err(Error::DictionaryFull { route, code });
        };
        self.set_route(code16, &route);
        self.codes.insert(route.as_str().into(), code16);
        // Map::insert keeps an existing key in place and updates its value: exactly the JS
        // object assignment `dict[route] = code`.
        self.dict.insert(route, Value::from(code16));
        Ok(())
    }

    fn set_route(&mut self, code: u16, route: &str) {
        let index = usize::from(code);
        if self.routes.len() <= index {
            self.routes.resize(index + 1, None);
        }
        self.routes[index] = Some(RouteName::from(route));
        self.code_to_route
            .insert(code.to_string(), Value::String(route.to_owned()));
    }

    fn finish(&mut self) {
        self.dict_json = object_text(&self.dict);
        self.code_to_route_json = object_text(&self.code_to_route);
        self.version = version_hash(self.dict_json.as_bytes());
    }

    /// The code of `route`, if it has one.
    #[inline]
    pub fn code(&self, route: &str) -> Option<u16> {
        self.codes.get(route).copied()
    }

    /// The route of `code`, if assigned.
    #[inline]
    pub fn route(&self, code: u16) -> Option<&RouteName> {
        self.routes.get(usize::from(code)).and_then(Option::as_ref)
    }

    /// The wire route for `route`: its code when it has one, else the string.
    pub fn compress(&self, route: &str) -> MessageRoute {
        match self.code(route) {
            Some(code) => MessageRoute::Code(code),
            None => MessageRoute::Name(RouteName::from(route)),
        }
    }

    /// The route string of a wire route: codes are looked up (`None` when unknown), strings
    /// returned as they are; `None` for [`MessageRoute::None`].
    pub fn expand(&self, route: &MessageRoute) -> Option<RouteName> {
        match route {
            MessageRoute::None => None,
            MessageRoute::Code(code) => self.route(*code).cloned(),
            MessageRoute::Name(name) => Some(name.clone()),
        }
    }

    /// Number of routes with a code (route → code entries).
    pub fn len(&self) -> usize {
        self.codes.len()
    }

    /// Whether no route has a code.
    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }

    /// The `dict` (and pomelo's `routeToCode`) object of the handshake.
    pub fn dict(&self) -> &Map<String, Value> {
        &self.dict
    }

    /// The `codeToRoute` object of the handshake (codes as strings).
    pub fn code_to_route(&self) -> &Map<String, Value> {
        &self.code_to_route
    }

    /// `JSON.stringify(dict)`.
    pub fn dict_json(&self) -> &str {
        &self.dict_json
    }

    /// `JSON.stringify(codeToRoute)`.
    pub fn code_to_route_json(&self) -> &str {
        &self.code_to_route_json
    }

    /// `dictVersion`: base64 MD5 of [`dict_json`](Self::dict_json).
    pub fn version(&self) -> &str {
        &self.version
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renumbering_quirk() {
        let dict = RouteDictionary::new(["b.h.m", "a.h.m"], ["onChat", "a.h.m"]).unwrap();
        // a.h.m keeps its position but gets the later code; code 1 still maps to it.
        assert_eq!(dict.dict_json(), r#"{"a.h.m":4,"b.h.m":2,"onChat":3}"#);
        assert_eq!(
            dict.code_to_route_json(),
            r#"{"1":"a.h.m","2":"b.h.m","3":"onChat","4":"a.h.m"}"#
        );
        assert_eq!(dict.code("a.h.m"), Some(4));
        assert_eq!(dict.route(1).unwrap().as_str(), "a.h.m");
        assert_eq!(dict.route(0), None);
        assert_eq!(dict.len(), 3);
    }

    #[test]
    fn utf16_sort_order() {
        // U+FF5E (one UTF-16 unit 0xff5e) sorts after U+1F600 (surrogates 0xd83d...) in
        // JS, though its UTF-8 bytes sort before.
        let dict =
            RouteDictionary::new(["x.\u{ff5e}.m", "x.\u{1f600}.m"], Vec::<String>::new()).unwrap();
        assert_eq!(dict.code("x.\u{1f600}.m"), Some(1));
        assert_eq!(dict.code("x.\u{ff5e}.m"), Some(2));
    }

    #[test]
    fn integer_like_routes_ordered_as_js() {
        let dict = RouteDictionary::new(Vec::<String>::new(), ["onChat", "7"]).unwrap();
        assert_eq!(dict.dict_json(), r#"{"7":2,"onChat":1}"#);
    }

    #[test]
    fn too_many_routes() {
        let routes: Vec<String> = (0..65_536).map(|i| format!("a.b.m{i}")).collect();
        let err = RouteDictionary::new(routes, Vec::<String>::new()).unwrap_err();
        assert_eq!(err.kind(), "dictionary_full");
    }

    #[test]
    fn client_side_round_trip() {
        let server = RouteDictionary::new(["c.h.b", "c.h.a"], ["onChat"]).unwrap();
        let client = RouteDictionary::from_handshake(server.dict(), None).unwrap();
        assert_eq!(client.route(3).unwrap().as_str(), "onChat");
        assert_eq!(client.version(), server.version());
        let client =
            RouteDictionary::from_handshake(server.dict(), Some(server.code_to_route())).unwrap();
        assert_eq!(client.code_to_route_json(), server.code_to_route_json());
        assert_eq!(client.compress("c.h.a"), MessageRoute::Code(1));
        assert_eq!(client.compress("x.y.z"), MessageRoute::name("x.y.z"));
        assert_eq!(client.expand(&MessageRoute::Code(9)), None);
    }
}
