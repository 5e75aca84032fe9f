//! Schema files, their parsed form and the typed, validated [`Schema`].
//!
//! ```text
//!  clientProtos.json ──parsed_form()──▶ parsed form ──Schema::from_parsed()──▶ Schema
//!  {"r": {"required uInt32 uid": 1}}    {"r": {"uid": {"option","type","tag"},   (typed, resolved,
//!                                              "__messages": {}, "__tags": {…}}}   used by the codec)
//! ```
//!
//! The parsed form is what pomelo's `protobuf.parse` produces and what the handshake carries
//! (`sys.protos.server` / `sys.protos.client`); it is rebuilt here with JavaScript's key order
//! (integer-like keys first, ascending, then insertion order) so that its `JSON.stringify`
//! text, and therefore the MD5 version, is byte-identical to pomelo's.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::MAX_DEPTH;
use super::error::SchemaError;
use crate::json::array_index;

/// Largest tag number: pomelo computes `(tag << 3) | wire_type` in signed 32-bit arithmetic.
pub(super) const MAX_TAG: u64 = (1 << 28) - 1;

/// Field rule (`option` in the parsed form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rule {
    Required,
    Optional,
    Repeated,
}

/// Field type. `Message` indexes [`Schema::messages`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ty {
    UInt32,
    SInt32,
    Int32,
    Float,
    Double,
    String,
    /// pinus addition.
    Bool,
    /// pinus addition.
    UInt64,
    /// pinus addition.
    SInt64,
    Message(usize),
}

impl Ty {
    /// The builtin type for a schema type name (case-sensitive, as pomelo).
    fn builtin(name: &str) -> Option<Self> {
        Some(match name {
            "uInt32" => Self::UInt32,
            "sInt32" => Self::SInt32,
            "int32" => Self::Int32,
            "float" => Self::Float,
            "double" => Self::Double,
            "string" => Self::String,
            "bool" => Self::Bool,
            "uInt64" => Self::UInt64,
            "sInt64" => Self::SInt64,
            _ => return None,
        })
    }

    /// The wire type the server encoder writes in the tag (§11.3). Decoders ignore it.
    pub(super) fn wire_type(self) -> u32 {
        match self {
            Self::UInt32
            | Self::SInt32
            | Self::Int32
            | Self::Bool
            | Self::UInt64
            | Self::SInt64 => 0,
            Self::Double => 1,
            Self::String | Self::Message(_) => 2,
            Self::Float => 5,
        }
    }

    /// Repeated values of these types are written as one tag, an element count, then the
    /// elements ("simple types" in pomelo-protobuf).
    pub(super) fn is_packed(self) -> bool {
        !matches!(self, Self::String | Self::Message(_))
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Self::UInt32 => "uInt32",
            Self::SInt32 => "sInt32",
            Self::Int32 => "int32",
            Self::Float => "float",
            Self::Double => "double",
            Self::String => "string",
            Self::Bool => "bool",
            Self::UInt64 => "uInt64",
            Self::SInt64 => "sInt64",
            Self::Message(_) => "message",
        }
    }
}

/// One field of a message.
#[derive(Debug, Clone)]
pub(super) struct FieldDef {
    pub(super) name: String,
    pub(super) rule: Rule,
    pub(super) ty: Ty,
    /// The tag varint value written before the value: `(tag << 3) | wire_type`.
    pub(super) key: u64,
}

/// One message type: fields in schema order plus lookup tables.
#[derive(Debug, Clone)]
pub(super) struct MessageDef {
    /// Path for error messages (`onAdd.Member`).
    pub(super) path: String,
    pub(super) fields: Vec<FieldDef>,
    /// (tag, field index), sorted by tag.
    by_tag: Vec<(u64, usize)>,
    /// Field index by name; only built for messages with many fields.
    by_name: Option<HashMap<String, usize>>,
    /// Indices of the `required` fields.
    pub(super) required: Vec<usize>,
    /// Directly nested message types (`__messages`), name → index.
    nested: Vec<(String, usize)>,
}

const LINEAR_LOOKUP_MAX: usize = 12;

impl MessageDef {
    pub(super) fn field_by_name(&self, name: &str) -> Option<&FieldDef> {
        match &self.by_name {
            Some(map) => map.get(name).map(|&i| &self.fields[i]),
            None => self.fields.iter().find(|f| f.name == name),
        }
    }

    pub(super) fn field_by_tag(&self, tag: u64) -> Option<&FieldDef> {
        self.by_tag
            .binary_search_by_key(&tag, |&(t, _)| t)
            .ok()
            .map(|i| &self.fields[self.by_tag[i].1])
    }
}

/// A validated pomelo-protobuf schema: one message per route, nested types resolved.
///
/// Build it once at startup ([`Schema::from_file_json`] for a `serverProtos.json` /
/// `clientProtos.json` file, [`Schema::from_parsed`] for the parsed form a client receives in
/// the handshake) and share it (`Arc`) — it is immutable. Encoding and decoding live in the
/// codec methods [`Schema::encode`] and [`Schema::decode`].
#[derive(Debug, Clone)]
pub struct Schema {
    /// The parsed form, exactly as sent in the handshake.
    parsed: Value,
    /// Route (top-level key, including `"message <Name>"` keys) → message index.
    routes: HashMap<String, usize>,
    pub(super) messages: Vec<MessageDef>,
}

impl Default for Schema {
    fn default() -> Self {
        Self::empty()
    }
}

impl Schema {
    /// A schema with no routes: every body of every route is JSON.
    pub fn empty() -> Self {
        Self {
            parsed: Value::Object(Map::new()),
            routes: HashMap::new(),
            messages: Vec::new(),
        }
    }

    /// Load the content of a `clientProtos.json` / `serverProtos.json` file: parse it the way
    /// pomelo does ([`parsed_form`]) and validate the result ([`Schema::from_parsed`]).
    ///
    /// # Errors
    /// [`SchemaError`] when the file is not an object, uses an unsupported rule (`map`,
    /// `obj`), has an invalid tag or names a type that cannot be resolved.
    pub fn from_file_json(file: &Value) -> Result<Self, SchemaError> {
        if !file.is_object() {
            return Err(SchemaError::NotAnObject {
                what: "the schema file".to_owned(),
            });
        }
        check_rules(file, "", 0)?;
        Self::from_parsed(parsed_form(file))
    }

    /// Load the parsed form (`{"route": {"field": {"option", "type", "tag"}, "__messages",
    /// "__tags"}}`), e.g. `sys.protos.server` of a handshake. The value is kept as given and
    /// returned by [`Schema::parsed`].
    ///
    /// # Errors
    /// [`SchemaError`] when an entry is malformed, a tag is invalid or duplicated, or a type
    /// cannot be resolved (pomelo looks in the field's own message, then at top-level
    /// `"message <Name>"` keys, nowhere else).
    pub fn from_parsed(parsed: Value) -> Result<Self, SchemaError> {
        let Value::Object(top) = &parsed else {
            return Err(SchemaError::NotAnObject {
                what: "the parsed schema".to_owned(),
            });
        };
        let mut builder = Builder {
            messages: Vec::new(),
            type_names: Vec::new(),
        };
        let mut routes = HashMap::with_capacity(top.len());
        for (route, def) in top {
            let idx = builder.add(route.clone(), def, 0)?;
            routes.insert(route.clone(), idx);
        }
        builder.resolve(&routes)?;
        Ok(Self {
            parsed,
            routes,
            messages: builder.messages,
        })
    }

    /// The parsed form, exactly as pomelo sends it in the handshake.
    pub fn parsed(&self) -> &Value {
        &self.parsed
    }

    /// Whether bodies of `route` use this schema (otherwise they are JSON).
    pub fn has_route(&self, route: &str) -> bool {
        self.routes.contains_key(route)
    }

    /// The routes with a message (including top-level `"message <Name>"` keys).
    pub fn routes(&self) -> impl Iterator<Item = &str> {
        self.routes.keys().map(String::as_str)
    }

    pub(super) fn route_message(&self, route: &str) -> Option<usize> {
        self.routes.get(route).copied()
    }
}

/// Working state of [`Schema::from_parsed`].
struct Builder {
    messages: Vec<MessageDef>,
    /// Per message, per field: the type name still to resolve (None: builtin).
    type_names: Vec<Vec<Option<String>>>,
}

impl Builder {
    fn add(&mut self, path: String, def: &Value, depth: usize) -> Result<usize, SchemaError> {
        if depth > MAX_DEPTH {
            return Err(SchemaError::TooDeep {
                message: path,
                limit: MAX_DEPTH,
            });
        }
        let Value::Object(obj) = def else {
            return Err(SchemaError::NotAnObject {
                what: format!("message `{path}`"),
            });
        };
        let idx = self.messages.len();
        self.messages.push(MessageDef {
            path: path.clone(),
            fields: Vec::new(),
            by_tag: Vec::new(),
            by_name: None,
            required: Vec::new(),
            nested: Vec::new(),
        });
        self.type_names.push(Vec::new());

        let mut fields = Vec::new();
        let mut names = Vec::new();
        let mut by_tag: Vec<(u64, usize)> = Vec::new();
        for (name, entry) in obj {
            if name == "__messages" || name == "__tags" {
                continue;
            }
            let invalid = |reason: &str| SchemaError::InvalidField {
                message: path.clone(),
                field: name.clone(),
                reason: reason.to_owned(),
            };
            let Value::Object(entry) = entry else {
                return Err(invalid(
                    "expected an object {\"option\", \"type\", \"tag\"}",
                ));
            };
            let Some(Value::String(option)) = entry.get("option") else {
                return Err(invalid("`option` missing or not a string"));
            };
            let rule = match option.as_str() {
                "required" => Rule::Required,
                "optional" => Rule::Optional,
                "repeated" => Rule::Repeated,
                other => {
                    return Err(SchemaError::UnsupportedRule {
                        message: path.clone(),
                        field: name.clone(),
                        rule: other.to_owned(),
                    });
                }
            };
            let Some(Value::String(type_name)) = entry.get("type") else {
                return Err(invalid("`type` missing or not a string"));
            };
            let tag_value = entry.get("tag").ok_or_else(|| invalid("`tag` missing"))?;
            let tag = tag_number(tag_value).ok_or_else(|| SchemaError::InvalidTag {
                message: path.clone(),
                field: name.clone(),
                tag: tag_value.to_string(),
            })?;
            let field_idx = fields.len();
            if let Some(&(_, other)) = by_tag.iter().find(|&&(t, _)| t == tag) {
                let first: &FieldDef = &fields[other];
                return Err(SchemaError::DuplicateTag {
                    message: path.clone(),
                    tag: u32::try_from(tag).unwrap_or(u32::MAX),
                    first: first.name.clone(),
                    second: name.clone(),
                });
            }
            by_tag.push((tag, field_idx));
            let builtin = Ty::builtin(type_name);
            // Message types get their real index (and wire type 2) in `resolve`.
            let ty = builtin.unwrap_or(Ty::Message(usize::MAX));
            fields.push(FieldDef {
                name: name.clone(),
                rule,
                ty,
                key: (tag << 3) | u64::from(ty.wire_type()),
            });
            names.push(if builtin.is_some() {
                None
            } else {
                Some(type_name.clone())
            });
        }

        let mut nested = Vec::new();
        match obj.get("__messages") {
            None => {}
            Some(Value::Object(msgs)) => {
                for (name, def) in msgs {
                    let child = self.add(format!("{path}.{name}"), def, depth + 1)?;
                    nested.push((name.clone(), child));
                }
            }
            Some(_) => {
                return Err(SchemaError::NotAnObject {
                    what: format!("`__messages` of message `{path}`"),
                });
            }
        }

        by_tag.sort_unstable_by_key(|&(t, _)| t);
        let by_name = (fields.len() > LINEAR_LOOKUP_MAX).then(|| {
            fields
                .iter()
                .enumerate()
                .map(|(i, f)| (f.name.clone(), i))
                .collect()
        });
        let required = fields
            .iter()
            .enumerate()
            .filter(|(_, f)| f.rule == Rule::Required)
            .map(|(i, _)| i)
            .collect();
        let msg = &mut self.messages[idx];
        msg.fields = fields;
        msg.by_tag = by_tag;
        msg.by_name = by_name;
        msg.required = required;
        msg.nested = nested;
        self.type_names[idx] = names;
        Ok(idx)
    }

    /// pomelo's lookup: the field's own message's `__messages`, then top-level
    /// `"message <Name>"`.
    fn resolve(&mut self, routes: &HashMap<String, usize>) -> Result<(), SchemaError> {
        for idx in 0..self.messages.len() {
            for f in 0..self.messages[idx].fields.len() {
                let Some(type_name) = self.type_names[idx][f].take() else {
                    continue;
                };
                let msg = &self.messages[idx];
                let target = msg
                    .nested
                    .iter()
                    .find(|(n, _)| *n == type_name)
                    .map(|&(_, i)| i)
                    .or_else(|| routes.get(&format!("message {type_name}")).copied());
                let Some(target) = target else {
                    return Err(SchemaError::UnresolvedType {
                        message: msg.path.clone(),
                        field: msg.fields[f].name.clone(),
                        type_name,
                    });
                };
                self.messages[idx].fields[f].ty = Ty::Message(target);
            }
        }
        Ok(())
    }
}

/// A tag from the parsed form: an integer in 0..=2^28-1 (integral floats accepted).
fn tag_number(v: &Value) -> Option<u64> {
    let n = v.as_number()?;
    let t = if let Some(u) = n.as_u64() {
        u
    } else {
        let f = n.as_f64()?;
        if f.fract() != 0.0 || !(0.0..=MAX_TAG as f64).contains(&f) {
            return None;
        }
        f as u64
    };
    (t <= MAX_TAG).then_some(t)
}

/// Refuse raw-file rules this codec does not implement (pinus `map`/`obj`) before pomelo's
/// parser would silently drop them.
fn check_rules(def: &Value, path: &str, depth: usize) -> Result<(), SchemaError> {
    let Value::Object(obj) = def else {
        return Ok(());
    };
    if depth > MAX_DEPTH {
        return Err(SchemaError::TooDeep {
            message: path.to_owned(),
            limit: MAX_DEPTH,
        });
    }
    for (key, value) in obj {
        let words: Vec<&str> = key.split(' ').collect();
        match words.as_slice() {
            ["message", name] => {
                let sub = if path.is_empty() {
                    (*name).to_owned()
                } else {
                    format!("{path}.{name}")
                };
                check_rules(value, &sub, depth + 1)?;
            }
            [rule @ ("map" | "obj"), _, name] if depth > 0 => {
                return Err(SchemaError::UnsupportedRule {
                    message: path.to_owned(),
                    field: (*name).to_owned(),
                    rule: (*rule).to_owned(),
                });
            }
            _ if depth == 0 => check_rules(value, key, depth + 1)?,
            _ => {}
        }
    }
    Ok(())
}

/// pomelo's `protobuf.parse`: turn a schema file (route → `{"<rule> <type> <name>": tag,
/// "message <Name>": {…}}`) into the parsed form sent in the handshake.
///
/// Reproduces the JavaScript parser exactly, quirks included: keys with the wrong number of
/// words, unknown rules and tags already used are skipped silently; objects are iterated and
/// built in JavaScript key order. A non-object input gives `{}`. No validation happens here —
/// use [`Schema::from_file_json`] for that.
pub fn parsed_form(file: &Value) -> Value {
    let mut out = Map::new();
    if let Value::Object(routes) = file {
        for (route, def) in js_ordered(routes) {
            out.insert(route.clone(), parse_message(def));
        }
    }
    Value::Object(js_reorder(out))
}

fn parse_message(def: &Value) -> Value {
    let mut proto = Map::new();
    let mut nested = Map::new();
    let mut tags = Map::new();
    if let Value::Object(obj) = def {
        for (key, tag) in js_ordered(obj) {
            let words: Vec<&str> = key.split(' ').collect();
            match words[0] {
                "message" if words.len() == 2 => {
                    nested.insert(words[1].to_owned(), parse_message(tag));
                }
                "required" | "optional" | "repeated" => {
                    let tag_key = js_property_key(tag);
                    // JS: `if (params.length !== 3 || !!tags[tag]) continue;`
                    let taken = tags
                        .get(&tag_key)
                        .is_some_and(|v: &Value| v.as_str().is_some_and(|s| !s.is_empty()));
                    if words.len() != 3 || taken {
                        continue;
                    }
                    let mut field = Map::new();
                    field.insert("option".to_owned(), Value::from(words[0]));
                    field.insert("type".to_owned(), Value::from(words[1]));
                    field.insert("tag".to_owned(), js_number_normalized(tag));
                    proto.insert(words[2].to_owned(), Value::Object(field));
                    tags.insert(tag_key, Value::from(words[2]));
                }
                _ => {}
            }
        }
    }
    proto.insert("__messages".to_owned(), Value::Object(js_reorder(nested)));
    proto.insert("__tags".to_owned(), Value::Object(js_reorder(tags)));
    Value::Object(js_reorder(proto))
}

/// The entries of `map` in JavaScript own-key order (array-index keys first, ascending:
/// [`array_index`]).
fn js_ordered(map: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut idx: Vec<(u32, &String, &Value)> = Vec::new();
    let mut rest = Vec::with_capacity(map.len());
    for (k, v) in map {
        match array_index(k) {
            Some(n) => idx.push((n, k, v)),
            None => rest.push((k, v)),
        }
    }
    if idx.is_empty() {
        return rest;
    }
    idx.sort_unstable_by_key(|&(n, _, _)| n);
    idx.into_iter()
        .map(|(_, k, v)| (k, v))
        .chain(rest)
        .collect()
}

/// `map` rebuilt in JavaScript own-key order.
pub(super) fn js_reorder(map: Map<String, Value>) -> Map<String, Value> {
    if !map.keys().any(|k| array_index(k).is_some()) {
        return map;
    }
    let mut entries: Vec<(String, Value)> = map.into_iter().collect();
    // Stable: non-index keys keep insertion order after all index keys.
    entries.sort_by_key(|(k, _)| match array_index(k) {
        Some(n) => (0, n),
        None => (1, 0),
    });
    entries.into_iter().collect()
}

/// `String(value)` for a value used as a property key (`tags[tag]`).
fn js_property_key(v: &Value) -> String {
    match v {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(_) => js_number_normalized(v).to_string(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::Null => String::new(),
                other => js_property_key(other),
            })
            .collect::<Vec<_>>()
            .join(","),
        Value::Object(_) => "[object Object]".to_owned(),
    }
}

/// JavaScript has one number type: `1.0` prints as `1`. Integral floats within the safe
/// integer range become integers so `JSON.stringify` text matches.
fn js_number_normalized(v: &Value) -> Value {
    if let Some(f) = v.as_f64()
        && v.as_u64().is_none()
        && v.as_i64().is_none()
        && f.fract() == 0.0
        && f.abs() < 9_007_199_254_740_992.0
    {
        return if f < 0.0 {
            Value::from(f as i64)
        } else {
            Value::from(f as u64)
        };
    }
    v.clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn index_keys_first_numeric_order() {
        let parsed = parsed_form(&json!({
            "r": {"required uInt32 b": 10, "required uInt32 a": 2, "optional string 7": 3}
        }));
        assert_eq!(
            serde_json::to_string(&parsed).unwrap(),
            r#"{"r":{"7":{"option":"optional","type":"string","tag":3},"b":{"option":"required","type":"uInt32","tag":10},"a":{"option":"required","type":"uInt32","tag":2},"__messages":{},"__tags":{"2":"a","3":"7","10":"b"}}}"#
        );
    }

    #[test]
    fn js_parser_quirks_skip_bad_keys() {
        let parsed = parsed_form(&json!({
            "r": {
                "required uInt32 a": 1,
                "optional uInt32 dup": 1,
                "required  uInt32 spaces": 2,
                "weird uInt32 c": 3,
                "message": {},
                "required uInt32 f": 4.0
            }
        }));
        assert_eq!(
            serde_json::to_string(&parsed).unwrap(),
            r#"{"r":{"a":{"option":"required","type":"uInt32","tag":1},"f":{"option":"required","type":"uInt32","tag":4},"__messages":{},"__tags":{"1":"a","4":"f"}}}"#
        );
    }

    #[test]
    fn unresolved_grandparent_type_is_refused() {
        let err = Schema::from_file_json(&json!({
            "onTree": {
                "message Leaf": {"required uInt32 v": 1},
                "message Branch": {"required Leaf leaf": 1},
                "required Branch b": 1
            }
        }))
        .unwrap_err();
        assert!(
            matches!(err, SchemaError::UnresolvedType { ref field, ref type_name, .. }
            if field == "leaf" && type_name == "Leaf"),
            "{err}"
        );
        assert!(err.to_string().contains("onTree.Branch"), "{err}");
    }

    #[test]
    fn map_rule_refused() {
        let err = Schema::from_file_json(&json!({"r": {"map Entry m": 1}})).unwrap_err();
        assert!(matches!(err, SchemaError::UnsupportedRule { .. }), "{err}");
    }

    #[test]
    fn duplicate_tag_in_parsed_form_refused() {
        let err = Schema::from_parsed(json!({"r": {
            "a": {"option": "required", "type": "uInt32", "tag": 1},
            "b": {"option": "required", "type": "uInt32", "tag": 1}
        }}))
        .unwrap_err();
        assert!(
            matches!(err, SchemaError::DuplicateTag { tag: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn recursive_top_level_type_resolves() {
        let schema = Schema::from_file_json(&json!({
            "message Node": {"required uInt32 v": 1, "optional Node next": 2},
            "r": {"required Node head": 1}
        }))
        .unwrap();
        assert!(schema.has_route("r"));
        assert!(!schema.has_route("s"));
    }
}
