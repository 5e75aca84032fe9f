//! The decoder: pomelo-protobuf bytes → a `serde_json::Value` body (pomelo-protobuf's
//! `lib/decoder.js`, made strict where it reads garbage).
//!
//! - The wire type in a tag is **ignored**: the field is found by tag number and read as its
//!   *schema* type (browser clients tag varints with wire type 2, §11.7).
//! - Unknown tag → `unknown_field` (skipping is unsafe: the wire type cannot be trusted).
//! - Repeated numeric: varint element count, then the elements; other repeated types: one
//!   element per occurrence. Fields keep the order in which they first appear.
//! - Required fields are not checked (as pomelo); absent fields stay absent.
//! - Strings: decoded by [`json::decode_text`], as JSON text is: UTF-8; CESU-8 surrogate
//!   pairs from browser clients are joined into the real character; other invalid bytes
//!   become U+FFFD, as Node's decoder does.
//! - Floats come out as JSON numbers; integral values as JSON integers (as JavaScript prints
//!   them), so `0.5f32` → `0.5`, `-2.0` → `-2` (but `-0.0` stays a float, to survive a
//!   round trip). A `float` is widened to the double it stands for, as pomelo-protobuf's
//!   `readFloatLE` does: `3.4e38` written as a float reads back as `3.3999999521443642e+38`.

use serde_json::{Map, Number, Value};

use super::MAX_DEPTH;
use super::error::ProtobufError;
use super::schema::{FieldDef, Rule, Schema, Ty};
use super::wire::{ReadError, Reader, unzigzag32, unzigzag64};
use crate::json;

impl Schema {
    /// Decode a body of `route` (pomelo's `protobuf.decode(route, buf)`). An empty body
    /// decodes to `{}`.
    ///
    /// # Errors
    /// `NoSchemaForRoute`; `UnknownField`; `Truncated`; `ValueOutOfRange` (a `uInt32` /
    /// `sInt32` / `int32` varint above 32 bits, a varint above 64 bits, a non-finite float);
    /// `NestingTooDeep`. Errors name the route and the field path.
    pub fn decode(&self, route: &str, body: &[u8]) -> Result<Value, ProtobufError> {
        let Some(idx) = self.route_message(route) else {
            return Err(ProtobufError::NoSchemaForRoute {
                route: route.to_owned(),
            });
        };
        self.decode_message(idx, body, 0)
            .map(Value::Object)
            .map_err(|e| e.on_route(route))
    }

    fn decode_message(
        &self,
        idx: usize,
        data: &[u8],
        depth: usize,
    ) -> Result<Map<String, Value>, ProtobufError> {
        if depth > MAX_DEPTH {
            return Err(ProtobufError::NestingTooDeep {
                route: String::new(),
                field: String::new(),
                limit: MAX_DEPTH,
            });
        }
        let msg = &self.messages[idx];
        let mut out = Map::new();
        let mut r = Reader::new(data);
        while !r.is_empty() {
            let at = r.pos();
            let key = r.varint().map_err(|e| read_error(e, at, Ty::UInt32))?;
            let tag = key >> 3;
            let Some(field) = msg.field_by_tag(tag) else {
                return Err(ProtobufError::UnknownField {
                    route: String::new(),
                    field: String::new(),
                    tag,
                });
            };
            self.decode_field(field, &mut r, &mut out, depth)
                .map_err(|e| e.within(&field.name, None))?;
        }
        Ok(out)
    }

    fn decode_field(
        &self,
        field: &FieldDef,
        r: &mut Reader<'_>,
        out: &mut Map<String, Value>,
        depth: usize,
    ) -> Result<(), ProtobufError> {
        if field.rule != Rule::Repeated {
            let v = self.decode_value(field.ty, r, depth)?;
            // A repeated occurrence of a singular field replaces the value in place (JS
            // assignment keeps the key's first position; so does `Map::insert`).
            out.insert(field.name.clone(), v);
            return Ok(());
        }
        let slot = out
            .entry(field.name.clone())
            .or_insert_with(|| Value::Array(Vec::new()));
        let Value::Array(items) = slot else {
            // Only this function writes the key, always as an array.
            return Ok(());
        };
        if field.ty.is_packed() {
            let at = r.pos();
            let count = r.varint().map_err(|e| read_error(e, at, Ty::UInt32))?;
            // Every element takes at least one byte: never reserve more than remains.
            let cap = usize::try_from(count)
                .unwrap_or(usize::MAX)
                .min(r.remaining());
            items.reserve(cap);
            for _ in 0..count {
                let i = items.len();
                let v = self
                    .decode_value(field.ty, r, depth)
                    .map_err(|e| e.within("", Some(i)))?;
                items.push(v);
            }
        } else {
            let i = items.len();
            let v = self
                .decode_value(field.ty, r, depth)
                .map_err(|e| e.within("", Some(i)))?;
            items.push(v);
        }
        Ok(())
    }

    fn decode_value(
        &self,
        ty: Ty,
        r: &mut Reader<'_>,
        depth: usize,
    ) -> Result<Value, ProtobufError> {
        let at = r.pos();
        let err = |e| read_error(e, at, ty);
        Ok(match ty {
            Ty::UInt32 => {
                let v = r.varint().map_err(err)?;
                Value::from(u32::try_from(v).map_err(|_| too_big(ty, v))?)
            }
            Ty::SInt32 | Ty::Int32 => {
                let v = r.varint().map_err(err)?;
                Value::from(unzigzag32(u32::try_from(v).map_err(|_| too_big(ty, v))?))
            }
            Ty::UInt64 => Value::from(r.varint().map_err(err)?),
            Ty::SInt64 => Value::from(unzigzag64(r.varint().map_err(err)?)),
            Ty::Bool => Value::Bool(r.varint().map_err(err)? != 0),
            Ty::Float => js_number(ty, f64::from(f32::from_le_bytes(r.array().map_err(err)?)))?,
            Ty::Double => js_number(ty, f64::from_le_bytes(r.array().map_err(err)?))?,
            Ty::String => {
                let len = r.varint().map_err(err)?;
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                Value::String(json::decode_text(r.bytes(len).map_err(err)?).into_owned())
            }
            Ty::Message(idx) => {
                let len = r.varint().map_err(err)?;
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                let inner = r.bytes(len).map_err(err)?;
                Value::Object(self.decode_message(idx, inner, depth + 1)?)
            }
        })
    }
}

fn read_error(e: ReadError, offset: usize, ty: Ty) -> ProtobufError {
    match e {
        ReadError::Truncated(needed) => ProtobufError::Truncated {
            route: String::new(),
            field: String::new(),
            offset,
            needed,
        },
        ReadError::VarintOverflow => ProtobufError::ValueOutOfRange {
            route: String::new(),
            field: String::new(),
            ty: ty.name(),
            detail: "varint longer than 64 bits".to_owned(),
        },
    }
}

fn too_big(ty: Ty, v: u64) -> ProtobufError {
    ProtobufError::ValueOutOfRange {
        route: String::new(),
        field: String::new(),
        ty: ty.name(),
        detail: format!("varint value {v} exceeds 32 bits"),
    }
}

/// A decoded float as JavaScript would print it: integral values within the safe-integer
/// range as integers, others as floats. NaN and infinities have no JSON form: refused.
fn js_number(ty: Ty, f: f64) -> Result<Value, ProtobufError> {
    if !f.is_finite() {
        return Err(ProtobufError::ValueOutOfRange {
            route: String::new(),
            field: String::new(),
            ty: ty.name(),
            detail: format!("{f} has no JSON representation"),
        });
    }
    // -0.0 stays a float so that re-encoding it gives the same bytes.
    if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 && !(f == 0.0 && f.is_sign_negative())
    {
        return Ok(if f < 0.0 {
            Value::from(f as i64)
        } else {
            Value::from(f as u64)
        });
    }
    Ok(Number::from_f64(f).map_or(Value::Null, Value::Number))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cesu8_pair_joined() {
        let bytes = hex::decode("61eda0bdedb88062").unwrap();
        assert_eq!(json::decode_text(&bytes), "a\u{1f600}b");
    }

    #[test]
    fn lone_surrogate_and_garbage_replaced_like_node() {
        let bytes = hex::decode("61eda0bd62ff").unwrap();
        assert_eq!(
            json::decode_text(&bytes),
            "a\u{fffd}\u{fffd}\u{fffd}b\u{fffd}"
        );
        // Truncated multi-byte sequence at the end: one replacement.
        assert_eq!(json::decode_text(&[0x61, 0xe4, 0xb8]), "a\u{fffd}");
    }

    #[test]
    fn floats_print_like_javascript() {
        assert_eq!(js_number(Ty::Double, -2.0).unwrap(), Value::from(-2));
        assert_eq!(js_number(Ty::Double, 0.0).unwrap(), Value::from(0));
        assert_eq!(js_number(Ty::Double, -0.0).unwrap().as_f64(), Some(-0.0));
        assert_eq!(js_number(Ty::Float, 0.5).unwrap().to_string(), "0.5");
        assert!(js_number(Ty::Float, f64::NAN).is_err());
    }
}
