//! JSON bodies as pomelo writes and reads them.
//!
//! **Writing** ([`to_vec`], [`write()`]) reproduces JavaScript's `JSON.stringify` byte for byte
//! for any `serde_json::Value`: no whitespace; object keys in insertion order, except that
//! *integer-like* keys (`"0"`, `"17"`, ...) come first in ascending numeric order as in every
//! JS object; non-ASCII characters written raw; numbers formatted like JS `Number#toString`
//! (an `f64` 1.0 is `1`, 1e21 is `1e+21`, 1e-7 is `1e-7`, 0.000001 is `0.000001`, -0 is `0`).
//! Integers held as `i64`/`u64` are written exactly (JS would round those above 2^53).
//!
//! **Reading** ([`from_slice`]) decodes the bytes leniently first ([`decode_text`]): invalid
//! UTF-8 becomes U+FFFD as in Node, and a surrogate pair sent as two 3-byte sequences (the
//! CESU-8 that browser clients produce for emoji, PROTOCOL.md §10) becomes the real
//! character. Numbers are parsed to the nearest double, as `JSON.parse` does (serde_json's
//! `float_roundtrip` feature, set in the workspace; its default fast path is often one ulp
//! off), so `JSON.stringify(JSON.parse(text))` and `to_vec(from_slice(text))` agree. Text that
//! is not JSON is a typed error; pomelo would use `{}` instead, and the caller decides.

use std::borrow::Cow;

use serde_json::{Map, Number, Value};

use crate::Error;

/// `JSON.stringify(value)` as UTF-8 bytes.
pub fn to_vec(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    write(value, &mut out);
    out
}

/// `JSON.stringify(value)` as a `String`.
pub fn to_string(value: &Value) -> String {
    // `write` only produces UTF-8 (string contents come from `str`s).
    String::from_utf8(to_vec(value)).unwrap_or_default()
}

/// `JSON.stringify` of an object held as a bare map (no `Value` around it).
pub fn object_to_vec(map: &Map<String, Value>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    write_object(map, &mut out);
    out
}

/// Append `JSON.stringify(value)` to `out`.
pub fn write(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_number(n, out),
        Value::String(s) => write_str(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => write_object(map, out),
    }
}

/// Append a JSON string literal with `JSON.stringify`'s escaping (`"`, `\`, control
/// characters; `\u00xx` in lower case; everything else raw).
pub fn write_str(s: &str, out: &mut Vec<u8>) {
    // serde_json escapes exactly the same set, in the same forms.
    if serde_json::to_writer(&mut *out, s).is_err() {
        // Writing to a Vec cannot fail.
        out.extend_from_slice(b"\"\"");
    }
}

/// Append `JSON.stringify` of an object held as a bare map (no `Value` around it).
pub(crate) fn write_object(map: &Map<String, Value>, out: &mut Vec<u8>) {
    out.push(b'{');
    let mut first = true;
    let mut put = |key: &str, value: &Value, out: &mut Vec<u8>| {
        if !first {
            out.push(b',');
        }
        first = false;
        write_str(key, out);
        out.push(b':');
        write(value, out);
    };
    if map.keys().any(|k| array_index(k).is_some()) {
        // JS objects list integer-like keys first, ascending, then the rest in insertion order.
        let mut indexed: Vec<(u32, &String, &Value)> = map
            .iter()
            .filter_map(|(k, v)| array_index(k).map(|i| (i, k, v)))
            .collect();
        indexed.sort_by_key(|&(i, _, _)| i);
        for (_, k, v) in indexed {
            put(k, v, out);
        }
        for (k, v) in map.iter().filter(|(k, _)| array_index(k).is_none()) {
            put(k, v, out);
        }
    } else {
        for (k, v) in map {
            put(k, v, out);
        }
    }
    out.push(b'}');
}

/// The value of a key that JavaScript treats as an array index: a canonical decimal
/// integer (no sign, no leading zero) below 2^32 − 1.
pub fn array_index(key: &str) -> Option<u32> {
    let bytes = key.as_bytes();
    if bytes.is_empty() || bytes.len() > 10 || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if bytes.len() > 1 && bytes[0] == b'0' {
        return None;
    }
    let value: u64 = key.parse().ok()?;
    if value < u64::from(u32::MAX) {
        u32::try_from(value).ok()
    } else {
        None
    }
}

/// Append a number as JS writes it.
pub fn write_number(n: &Number, out: &mut Vec<u8>) {
    if let Some(u) = n.as_u64() {
        write_display(u, out);
    } else if let Some(i) = n.as_i64() {
        write_display(i, out);
    } else if let Some(f) = n.as_f64() {
        write_f64(f, out);
    } else {
        out.extend_from_slice(b"null");
    }
}

/// Append a `Display` value without an intermediate `String`.
fn write_display(value: impl std::fmt::Display, out: &mut Vec<u8>) {
    use std::io::Write as _;
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{value}");
}

/// Append an `f64` formatted as JS `Number#toString` (ECMA-262 Number::toString), with
/// `JSON.stringify`'s `null` for NaN and the infinities.
pub fn write_f64(f: f64, out: &mut Vec<u8>) {
    use std::io::Write as _;
    if !f.is_finite() {
        out.extend_from_slice(b"null");
        return;
    }
    if f == 0.0 {
        // also -0
        out.push(b'0');
        return;
    }
    // Integral values below 2^53 print as integers: the common case, done without the
    // digit generation below.
    if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
        write_display(f as i64, out);
        return;
    }
    if f < 0.0 {
        out.push(b'-');
    }
    // Rust's `{:e}` gives the shortest digits that round-trip: "d[.ddd]e<exp>". Format it
    // into a stack buffer (at most 17 digits, a dot, "e-324").
    let mut sci = [0u8; 32];
    let mut cursor = std::io::Cursor::new(&mut sci[..]);
    let _ = write!(cursor, "{:e}", f.abs());
    let written = cursor.position() as usize;
    let sci = &sci[..written];
    let e_pos = sci.iter().position(|&b| b == b'e').unwrap_or(written);
    let mut digits = [0u8; 24];
    let mut k = 0usize;
    for &b in &sci[..e_pos] {
        if b.is_ascii_digit() && k < digits.len() {
            digits[k] = b;
            k += 1;
        }
    }
    let digits = &digits[..k];
    let exp: i32 = std::str::from_utf8(sci.get(e_pos + 1..).unwrap_or_default())
        .ok()
        .and_then(|e| e.parse().ok())
        .unwrap_or(0);
    let k = k as i32;
    // value = 0.d1d2..dk × 10^n
    let n = exp + 1;
    if k <= n && n <= 21 {
        out.extend_from_slice(digits);
        out.extend(std::iter::repeat_n(b'0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        out.extend_from_slice(&digits[..n as usize]);
        out.push(b'.');
        out.extend_from_slice(&digits[n as usize..]);
    } else if -6 < n && n <= 0 {
        out.extend_from_slice(b"0.");
        out.extend(std::iter::repeat_n(b'0', (-n) as usize));
        out.extend_from_slice(digits);
    } else {
        out.push(digits[0]);
        if k > 1 {
            out.push(b'.');
            out.extend_from_slice(&digits[1..]);
        }
        out.push(b'e');
        let e = n - 1;
        out.push(if e >= 0 { b'+' } else { b'-' });
        write_display(e.unsigned_abs(), out);
    }
}

/// Decode bytes as text the lenient way: valid UTF-8 is borrowed as is; a CESU-8 surrogate
/// pair (`ed a0..af xx ed b0..bf xx`) becomes its character; any other invalid sequence
/// becomes U+FFFD per maximal subpart, as Node's decoder does.
pub fn decode_text(bytes: &[u8]) -> Cow<'_, str> {
    let mut rest = match std::str::from_utf8(bytes) {
        Ok(text) => return Cow::Borrowed(text),
        Err(_) => bytes,
    };
    let mut out = String::with_capacity(bytes.len() + 8);
    loop {
        match std::str::from_utf8(rest) {
            Ok(text) => {
                out.push_str(text);
                return Cow::Owned(out);
            }
            Err(err) => {
                let (valid, bad) = rest.split_at(err.valid_up_to());
                // `valid` is valid UTF-8 by construction.
                out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                if let Some(c) = cesu8_pair(bad) {
                    out.push(c);
                    rest = &bad[6..];
                    continue;
                }
                out.push(char::REPLACEMENT_CHARACTER);
                match err.error_len() {
                    Some(len) => rest = &bad[len..],
                    None => return Cow::Owned(out),
                }
            }
        }
    }
}

/// A surrogate pair written as two 3-byte sequences at the start of `b`.
fn cesu8_pair(b: &[u8]) -> Option<char> {
    if b.len() < 6
        || b[0] != 0xed
        || !(0xa0..=0xaf).contains(&b[1])
        || !(0x80..=0xbf).contains(&b[2])
        || b[3] != 0xed
        || !(0xb0..=0xbf).contains(&b[4])
        || !(0x80..=0xbf).contains(&b[5])
    {
        return None;
    }
    let high = 0xd800 | (u32::from(b[1] & 0x0f) << 6) | u32::from(b[2] & 0x3f);
    let low = 0xdc00 | (u32::from(b[4] & 0x0f) << 6) | u32::from(b[5] & 0x3f);
    char::from_u32(0x10000 + ((high - 0xd800) << 10) + (low - 0xdc00))
}

/// Parse a JSON body after [`decode_text`].
///
/// # Errors
/// [`Error::InvalidJson`] when the text is not one JSON value (empty text included).
pub fn from_slice(bytes: &[u8]) -> Result<Value, Error> {
    let text = decode_text(bytes);
    serde_json::from_str(&text).map_err(|err| Error::InvalidJson {
        reason: err.to_string(),
    })
}

/// The JSON text of `bytes` to pass on unparsed, when that is the same as passing on
/// `to_vec(&from_slice(bytes)?)`: whoever parses the text with [`from_slice`] gets the value
/// it would have got from the re-encoded text. Checked by one pass of serde_json's parser that
/// builds nothing.
///
/// `Ok(Some(text))`: `bytes` as they are when they are valid UTF-8, else the text after
/// [`decode_text`] (so the text is always UTF-8). `Ok(None)`: valid JSON whose value changes
/// when re-encoded — an integral number written as a float (`1.0`, `1e2`, `-0`: `JSON.stringify`
/// writes it as an integer, which parses back as one) or an integer-like object key (written
/// first, so the keys come back in another order); parse it instead. `Err(())`: not one JSON
/// value; [`from_slice`] gives the error.
///
/// # Errors
/// `Err(())` when the text is not one JSON value.
#[allow(clippy::result_unit_err)]
pub fn passthrough(bytes: &bytes::Bytes) -> Result<Option<bytes::Bytes>, ()> {
    let text = decode_text(bytes);
    let Ok(Probe(same)) = serde_json::from_str::<Probe>(&text) else {
        return Err(());
    };
    if !same {
        return Ok(None);
    }
    Ok(Some(match text {
        Cow::Borrowed(_) => bytes.clone(),
        Cow::Owned(text) => bytes::Bytes::from(text.into_bytes()),
    }))
}

/// One JSON value walked without building it: whether it survives `JSON.stringify` then
/// [`from_slice`] unchanged (see [`passthrough`]).
struct Probe(bool);

impl<'de> serde::Deserialize<'de> for Probe {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ProbeVisitor)
    }
}

struct ProbeVisitor;

impl<'de> serde::de::Visitor<'de> for ProbeVisitor {
    type Value = Probe;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Probe, E> {
        Ok(Probe(true))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Probe, E> {
        Ok(Probe(true))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Probe, E> {
        Ok(Probe(true))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Probe, E> {
        // An integral float (1.0, 1e2, -0) is written as an integer and comes back as one;
        // those above 1e21 would not, but are rare enough to take the slow path too.
        Ok(Probe(v.fract() != 0.0))
    }

    fn visit_str<E>(self, _: &str) -> Result<Probe, E> {
        Ok(Probe(true))
    }

    fn visit_unit<E>(self) -> Result<Probe, E> {
        Ok(Probe(true))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Probe, A::Error> {
        let mut same = true;
        while let Some(Probe(item)) = seq.next_element()? {
            same &= item;
        }
        Ok(Probe(same))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Probe, A::Error> {
        let mut same = true;
        while let Some(KeyProbe(key)) = map.next_key()? {
            let Probe(value) = map.next_value()?;
            same &= key && value;
        }
        Ok(Probe(same))
    }
}

/// An object key: `false` when integer-like (JavaScript writes those first).
struct KeyProbe(bool);

impl<'de> serde::Deserialize<'de> for KeyProbe {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = KeyProbe;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E>(self, k: &str) -> Result<KeyProbe, E> {
                Ok(KeyProbe(array_index(k).is_none()))
            }
        }
        d.deserialize_str(V)
    }
}

/// JavaScript truthiness of a JSON value (`null`, `false`, `0`, `""` are falsy).
pub fn is_truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn f(x: f64) -> String {
        let mut out = Vec::new();
        write_f64(x, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn numbers_as_js() {
        let table: &[(f64, &str)] = &[
            (1.0, "1"),
            (-1.5, "-1.5"),
            (0.1, "0.1"),
            (-0.0, "0"),
            (100.0, "100"),
            (1e20, "100000000000000000000"),
            (1e21, "1e+21"),
            (1.5e21, "1.5e+21"),
            (123456789012345680000.0, "123456789012345680000"),
            (0.000001, "0.000001"),
            (1e-7, "1e-7"),
            (1.25e-7, "1.25e-7"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (0.30000000000000004, "0.30000000000000004"),
            (123.456, "123.456"),
            (-42.0, "-42"),
            (9007199254740991.0, "9007199254740991"),
            (9007199254740992.0, "9007199254740992"),
            (1e16, "10000000000000000"),
            (-1e-7, "-1e-7"),
            (0.5, "0.5"),
            (f64::NAN, "null"),
            (f64::INFINITY, "null"),
        ];
        for &(x, want) in table {
            assert_eq!(f(x), want, "{x:e}");
        }
    }

    /// `JSON.stringify(JSON.parse(text))` as node v20 prints it. Several of these are parsed
    /// one ulp off by serde_json's default (fast, inexact) float parser; the
    /// `float_roundtrip` feature makes the parse exact, as JavaScript's is.
    #[test]
    fn parse_then_stringify_like_js() {
        let table: &[(&str, &str)] = &[
            ("3.4e38", "3.4e+38"),
            ("1e21", "1e+21"),
            ("-1e21", "-1e+21"),
            ("1e20", "100000000000000000000"),
            ("1e-7", "1e-7"),
            ("1.5e-7", "1.5e-7"),
            ("1e-6", "0.000001"),
            ("0.0000012345", "0.0000012345"),
            ("0.30000000000000004", "0.30000000000000004"),
            ("5e-324", "5e-324"),
            ("1.7976931348623157e308", "1.7976931348623157e+308"),
            ("-0", "0"),
            ("-0.0", "0"),
            ("1E+2", "100"),
            ("2.5", "2.5"),
            ("123456789012345680000", "123456789012345680000"),
            ("2.2250738585072011e-308", "2.225073858507201e-308"),
            ("2.2250738585072012e-308", "2.2250738585072014e-308"),
            ("9007199254740993.0", "9007199254740992"),
            ("9.007199254740993e15", "9007199254740992"),
            ("15.655247211456299", "15.655247211456299"),
            ("4.685853588089302e-32", "4.685853588089302e-32"),
            ("1.0920605041889695e34", "1.0920605041889695e+34"),
            ("3.3999999521443642e38", "3.3999999521443642e+38"),
            ("5.809632407259761e-113", "5.809632407259761e-113"),
            ("5.332638378877033e75", "5.332638378877033e+75"),
            ("1.0710285813364267e-73", "1.0710285813364267e-73"),
        ];
        for &(text, js) in table {
            let value = from_slice(text.as_bytes()).unwrap();
            assert_eq!(
                to_string(&value),
                js,
                "JSON.stringify(JSON.parse({text:?}))"
            );
            // and inside a body
            let body = format!("{{\"v\":[{text}]}}");
            let value = from_slice(body.as_bytes()).unwrap();
            assert_eq!(to_string(&value), format!("{{\"v\":[{js}]}}"), "{body}");
        }
        // Integers that fit 64 bits are kept exactly (JavaScript would round this one to
        // 9007199254740992; a JS client's JSON.parse still does, other clients get the value).
        assert_eq!(
            to_string(&from_slice(b"9007199254740993").unwrap()),
            "9007199254740993"
        );
    }

    #[test]
    fn stringify_like_js() {
        let v = json!({"b": 1, "a": [1.0, "é😀\n\u{1f}", null, true], "2": "x", "10": 0, "01": 1});
        assert_eq!(
            to_string(&v),
            "{\"2\":\"x\",\"10\":0,\"b\":1,\"a\":[1,\"é😀\\n\\u001f\",null,true],\"01\":1}"
        );
    }

    /// `passthrough` keeps the text exactly when parsing it gives the value parsing its
    /// re-encoding gives, and says so otherwise; invalid JSON is refused as `from_slice`
    /// refuses it.
    #[test]
    fn passthrough_only_when_the_value_survives_reencoding() {
        let same: &[&[u8]] = &[
            b"{}",
            b" { \"content\" : \"hi \\u00e9\", \"n\": [1, -2, 2.5, 1.5e-7, true, null] } ",
            b"{\"a\":{\"b\":[{\"c\":\"\\ud83d\\ude00\"}]},\"01\":1,\"x1\":2}",
            b"\"text\"",
            b"9007199254740993",
            b"{\"dup\":1,\"dup\":2}",
        ];
        for &text in same {
            let bytes = bytes::Bytes::copy_from_slice(text);
            let out = passthrough(&bytes).unwrap().expect("passed through");
            assert_eq!(out, bytes);
            let direct = from_slice(&out).unwrap();
            let reencoded = from_slice(&to_vec(&from_slice(text).unwrap())).unwrap();
            assert_eq!(direct, reencoded, "{}", String::from_utf8_lossy(text));
        }
        // Invalid UTF-8 and CESU-8 pass on as the decoded text.
        let bytes = bytes::Bytes::from_static(b"{\"m\":\"\xed\xa0\xbd\xed\xb8\x80\xff\"}");
        let out = passthrough(&bytes).unwrap().unwrap();
        assert_eq!(&out[..], "{\"m\":\"😀\u{fffd}\"}".as_bytes());
        let changes: &[&[u8]] = &[
            b"{\"n\":1.0}",
            b"[1e2]",
            b"-0",
            b"{\"n\":18446744073709551616}",
            b"{\"b\":1,\"2\":2}",
        ];
        for &text in changes {
            let bytes = bytes::Bytes::copy_from_slice(text);
            assert_eq!(
                passthrough(&bytes),
                Ok(None),
                "{}",
                String::from_utf8_lossy(text)
            );
            assert!(from_slice(text).is_ok());
        }
        for text in [
            &b""[..],
            b"{",
            b"{\"a\":}",
            b"[1,]",
            b"{} x",
            b"1e400",
            b"\"\\ud800\"",
        ] {
            let bytes = bytes::Bytes::copy_from_slice(text);
            assert_eq!(
                passthrough(&bytes),
                Err(()),
                "{}",
                String::from_utf8_lossy(text)
            );
            assert!(from_slice(text).is_err());
        }
    }

    #[test]
    fn lenient_decode() {
        // CESU-8 😀 from a browser client
        let text = decode_text(b"{\"m\":\"\xed\xa0\xbd\xed\xb8\x80\"}");
        assert_eq!(text, "{\"m\":\"😀\"}");
        // invalid bytes become U+FFFD, one per maximal subpart
        assert_eq!(decode_text(b"a\xffb\xe4\xb8"), "a\u{fffd}b\u{fffd}");
        // lone surrogate: three replacement characters as in Node
        assert_eq!(decode_text(b"\xed\xa0\xbdx"), "\u{fffd}\u{fffd}\u{fffd}x");
        assert_eq!(
            from_slice(b"{\"a\":\"\xff\"}").unwrap(),
            json!({"a": "\u{fffd}"})
        );
        assert_eq!(from_slice(b"{\"sys\":").unwrap_err().kind(), "invalid_json");
        assert_eq!(from_slice(b"").unwrap_err().kind(), "invalid_json");
    }

    #[test]
    fn truthiness() {
        for v in [json!(null), json!(false), json!(0), json!(0.0), json!("")] {
            assert!(!is_truthy(&v), "{v}");
        }
        for v in [json!(true), json!(1), json!("0"), json!({}), json!([])] {
            assert!(is_truthy(&v), "{v}");
        }
    }

    proptest! {
        #[test]
        fn f64_round_trips(x in proptest::num::f64::NORMAL | proptest::num::f64::SUBNORMAL) {
            let s = f(x);
            let back: f64 = s.parse().unwrap();
            prop_assert_eq!(back, x);
        }

        #[test]
        fn decode_text_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let text = decode_text(&bytes);
            if let Ok(valid) = std::str::from_utf8(&bytes) {
                prop_assert_eq!(text.as_ref(), valid);
            }
            let _ = from_slice(&bytes);
        }
    }
}
