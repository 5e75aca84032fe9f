//! The encoder: a `serde_json::Value` body → pomelo-protobuf bytes (pomelo-protobuf's server
//! encoder, `lib/encoder.js`, with the checks it lacks).
//!
//! ```text
//!  field   = tag value                       tag = varint((tag_no << 3) | wire_type)
//!  uInt32  : varint          sInt32, int32 : zig-zag varint      bool : varint 0/1
//!  float   : 4 bytes LE      double        : 8 bytes LE
//!  string  : varint(len) UTF-8               message : varint(len) fields
//!  repeated numeric : ONE tag, varint(element count), elements back to back
//!  repeated string / message : tag + value per element
//! ```
//! Fields are written in the key order of the JSON object, not in tag order; keys the schema
//! does not know are dropped; an empty array writes nothing.

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Map, Value};

use super::MAX_DEPTH;
use super::error::ProtobufError;
use super::schema::{FieldDef, Rule, Schema, Ty};
use super::wire::{zigzag32, zigzag64};
use crate::varint::{encode_u64, encoded_len_u64};

impl Schema {
    /// Encode `body` for `route` (pomelo's `protobuf.encode(route, msg)`).
    ///
    /// An object with no schema field present encodes to zero bytes, which is what pomelo
    /// puts on the wire in that case too (it sends an empty body when its encoder returns
    /// nothing).
    ///
    /// # Errors
    /// `NoSchemaForRoute`; `MissingRequiredField` (checked recursively);
    /// `ValueTypeMismatch` (wrong JSON kind, a fraction for an integer type);
    /// `ValueOutOfRange` (integer outside the type, float beyond `f32`);
    /// `NestingTooDeep`. Errors name the route and the field path.
    pub fn encode(&self, route: &str, body: &Value) -> Result<Bytes, ProtobufError> {
        let mut dst = BytesMut::new();
        self.encode_into(route, body, &mut dst)?;
        Ok(dst.freeze())
    }

    /// Like [`Schema::encode`], appending to `dst`. On error `dst` is left as it was.
    ///
    /// # Errors
    /// As [`Schema::encode`].
    pub fn encode_into(
        &self,
        route: &str,
        body: &Value,
        dst: &mut BytesMut,
    ) -> Result<(), ProtobufError> {
        let Some(idx) = self.route_message(route) else {
            return Err(ProtobufError::NoSchemaForRoute {
                route: route.to_owned(),
            });
        };
        let start = dst.len();
        let result = match body {
            Value::Object(obj) => self.encode_message(idx, obj, dst, 0),
            other => Err(mismatch("an object", other)),
        };
        result.map_err(|e| {
            dst.truncate(start);
            e.on_route(route)
        })
    }

    fn encode_message(
        &self,
        idx: usize,
        obj: &Map<String, Value>,
        dst: &mut BytesMut,
        depth: usize,
    ) -> Result<(), ProtobufError> {
        if depth > MAX_DEPTH {
            return Err(ProtobufError::NestingTooDeep {
                route: String::new(),
                field: String::new(),
                limit: MAX_DEPTH,
            });
        }
        let msg = &self.messages[idx];
        // Keys are unique, so counting the required fields met while encoding tells whether
        // all are present (pomelo's checkMsg) without a hash lookup per required field.
        let mut required_seen = 0;
        for (name, value) in obj {
            let Some(field) = msg.field_by_name(name) else {
                continue;
            };
            required_seen += usize::from(field.rule == Rule::Required);
            self.encode_field(field, value, dst, depth)
                .map_err(|e| e.within(name, None))?;
        }
        if required_seen < msg.required.len()
            && let Some(missing) = msg
                .required
                .iter()
                .map(|&r| &msg.fields[r].name)
                .find(|name| !obj.contains_key(*name))
        {
            return Err(ProtobufError::MissingRequiredField {
                route: String::new(),
                field: missing.clone(),
            });
        }
        Ok(())
    }

    fn encode_field(
        &self,
        field: &FieldDef,
        value: &Value,
        dst: &mut BytesMut,
        depth: usize,
    ) -> Result<(), ProtobufError> {
        if field.rule != Rule::Repeated {
            encode_u64(field.key, dst);
            return self.encode_value(field.ty, value, dst, depth);
        }
        let Value::Array(items) = value else {
            return Err(mismatch("an array", value));
        };
        if items.is_empty() {
            return Ok(());
        }
        if field.ty.is_packed() {
            encode_u64(field.key, dst);
            encode_u64(items.len() as u64, dst);
            for (i, item) in items.iter().enumerate() {
                self.encode_value(field.ty, item, dst, depth)
                    .map_err(|e| e.within("", Some(i)))?;
            }
        } else {
            for (i, item) in items.iter().enumerate() {
                encode_u64(field.key, dst);
                self.encode_value(field.ty, item, dst, depth)
                    .map_err(|e| e.within("", Some(i)))?;
            }
        }
        Ok(())
    }

    fn encode_value(
        &self,
        ty: Ty,
        value: &Value,
        dst: &mut BytesMut,
        depth: usize,
    ) -> Result<(), ProtobufError> {
        match ty {
            Ty::UInt32 => {
                let n = integer(ty, value, 0, i128::from(u32::MAX))?;
                encode_u64(n as u64, dst);
            }
            Ty::SInt32 | Ty::Int32 => {
                let n = integer(ty, value, i128::from(i32::MIN), i128::from(i32::MAX))?;
                encode_u64(u64::from(zigzag32(n as i32)), dst);
            }
            Ty::UInt64 => {
                let n = integer(ty, value, 0, i128::from(u64::MAX))?;
                encode_u64(n as u64, dst);
            }
            Ty::SInt64 => {
                let n = integer(ty, value, i128::from(i64::MIN), i128::from(i64::MAX))?;
                encode_u64(zigzag64(n as i64), dst);
            }
            Ty::Bool => match value {
                Value::Bool(b) => encode_u64(u64::from(*b), dst),
                other => return Err(mismatch("a boolean", other)),
            },
            Ty::Float => {
                let f = number(value)?;
                // The nearest f32, ties to even: what Float32Array / DataView#setFloat32 store
                // (JS too rounds the decimal text to a double first, then to a float).
                let x = f as f32;
                if !x.is_finite() {
                    return Err(out_of_range(ty, format!("{f} does not fit a 32-bit float")));
                }
                dst.put_f32_le(x);
            }
            Ty::Double => dst.put_f64_le(number(value)?),
            Ty::String => match value {
                Value::String(s) => {
                    encode_u64(s.len() as u64, dst);
                    dst.extend_from_slice(s.as_bytes());
                }
                other => return Err(mismatch("a string", other)),
            },
            Ty::Message(idx) => {
                let Value::Object(obj) = value else {
                    return Err(mismatch("an object", value));
                };
                // Reserve one length byte, encode, then widen the prefix if needed: no
                // temporary buffer and no second pass over the value.
                let len_at = dst.len();
                dst.put_u8(0);
                self.encode_message(idx, obj, dst, depth + 1)?;
                let len = dst.len() - len_at - 1;
                let n = encoded_len_u64(len as u64);
                if n > 1 {
                    dst.resize(dst.len() + n - 1, 0);
                    dst.copy_within(len_at + 1..len_at + 1 + len, len_at + n);
                }
                let mut prefix = [0u8; 10];
                let mut slot = &mut prefix[..];
                encode_u64(len as u64, &mut slot);
                dst[len_at..len_at + n].copy_from_slice(&prefix[..n]);
            }
        }
        Ok(())
    }
}

/// An integer value within `min..=max`. Integral floats (`3.0`, `1e3`) are accepted — JSON
/// and JavaScript do not tell them apart — fractions and non-numbers are not.
fn integer(ty: Ty, value: &Value, min: i128, max: i128) -> Result<i128, ProtobufError> {
    let Value::Number(n) = value else {
        return Err(mismatch("an integer", value));
    };
    let v = if let Some(u) = n.as_u64() {
        i128::from(u)
    } else if let Some(i) = n.as_i64() {
        i128::from(i)
    } else {
        let f = n.as_f64().unwrap_or(f64::NAN);
        if f.fract() != 0.0 || !f.is_finite() {
            return Err(ProtobufError::ValueTypeMismatch {
                route: String::new(),
                field: String::new(),
                expected: "an integer",
                found: "a fractional number",
            });
        }
        if f.abs() >= 1e30 {
            return Err(out_of_range(ty, n.to_string()));
        }
        f as i128
    };
    if v < min || v > max {
        return Err(out_of_range(ty, format!("{v} is outside {min}..={max}")));
    }
    Ok(v)
}

fn number(value: &Value) -> Result<f64, ProtobufError> {
    match value {
        Value::Number(n) => Ok(n.as_f64().unwrap_or(f64::NAN)),
        other => Err(mismatch("a number", other)),
    }
}

fn out_of_range(ty: Ty, detail: String) -> ProtobufError {
    ProtobufError::ValueOutOfRange {
        route: String::new(),
        field: String::new(),
        ty: ty.name(),
        detail,
    }
}

fn mismatch(expected: &'static str, found: &Value) -> ProtobufError {
    ProtobufError::ValueTypeMismatch {
        route: String::new(),
        field: String::new(),
        expected,
        found: kind_name(found),
    }
}

fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
