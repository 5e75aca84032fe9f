//! A scanner for the plain JSON most request bodies and session settings are: strings
//! without escapes, integers of up to 15 digits, `true`, `false`, `null`, objects and arrays
//! nested at most [`MAX_DEPTH`] deep. Text it accepts is JSON serde_json parses (the subset
//! is one serde_json accepts whole); anything else, valid or not, is *unusual* and the
//! caller asks serde_json, so answers stay exactly serde_json's.

use serde_json::Value;

/// Nesting accepted here (serde_json's own limit is 128).
const MAX_DEPTH: usize = 64;

/// Unusual text: ask serde_json.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Unusual;

/// Whether `text` is one plain JSON value (with white space around). `false` says nothing
/// about validity.
pub(super) fn is_plain(text: &str) -> bool {
    let mut s = Scanner::new(text);
    s.ws();
    s.value(0).is_ok() && s.at_end()
}

/// `text` as a plain JSON object: the value of the last `key` in it (`None`: no such key).
///
/// # Errors
/// [`Unusual`]: not a plain JSON object.
pub(super) fn setting(text: &str, key: &str) -> Result<Option<Value>, Unusual> {
    let mut s = Scanner::new(text);
    s.ws();
    s.expect(b'{')?;
    s.ws();
    let mut found = None;
    if s.peek() == Some(b'}') {
        s.i += 1;
    } else {
        loop {
            let k = s.string()?;
            s.ws();
            s.expect(b':')?;
            s.ws();
            let start = s.i;
            s.value(1)?;
            if k == key {
                found = Some((start, s.i));
            }
            s.ws();
            match s.next()? {
                b',' => s.ws(),
                b'}' => break,
                _ => return Err(Unusual),
            }
        }
    }
    if !s.at_end() {
        return Err(Unusual);
    }
    let Some((start, end)) = found else {
        return Ok(None);
    };
    let raw = &text[start..end];
    if let Some(inner) = raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        // No escapes: the string is its text.
        return Ok(Some(Value::String(inner.to_owned())));
    }
    serde_json::from_str(raw).map(Some).map_err(|_| Unusual)
}

struct Scanner<'a> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            text,
            b: text.as_bytes(),
            i: 0,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Result<u8, Unusual> {
        let c = self.peek().ok_or(Unusual)?;
        self.i += 1;
        Ok(c)
    }

    fn expect(&mut self, c: u8) -> Result<(), Unusual> {
        if self.next()? == c {
            Ok(())
        } else {
            Err(Unusual)
        }
    }

    fn at_end(&mut self) -> bool {
        self.ws();
        self.i == self.b.len()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn value(&mut self, depth: usize) -> Result<(), Unusual> {
        match self.peek().ok_or(Unusual)? {
            b'"' => self.string().map(drop),
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.integer(),
            _ => Err(Unusual),
        }
    }

    /// A string without escapes or control characters; its contents.
    fn string(&mut self) -> Result<&'a str, Unusual> {
        self.expect(b'"')?;
        let start = self.i;
        let len = self.b[start..]
            .iter()
            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
            .ok_or(Unusual)?;
        self.i = start + len;
        self.expect(b'"')?;
        Ok(&self.text[start..start + len])
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), Unusual> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(Unusual)
        }
    }

    /// `-?(0|[1-9][0-9]{0,14})`, not followed by a fraction, exponent or digit.
    fn integer(&mut self) -> Result<(), Unusual> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        let start = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        let digits = &self.b[start..self.i];
        if digits.is_empty()
            || digits.len() > 15
            || (digits.len() > 1 && digits[0] == b'0')
            || matches!(self.peek(), Some(b'.' | b'e' | b'E'))
        {
            return Err(Unusual);
        }
        Ok(())
    }

    fn object(&mut self, depth: usize) -> Result<(), Unusual> {
        if depth > MAX_DEPTH {
            return Err(Unusual);
        }
        self.expect(b'{')?;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.string()?;
            self.ws();
            self.expect(b':')?;
            self.ws();
            self.value(depth)?;
            self.ws();
            match self.next()? {
                b',' => self.ws(),
                b'}' => return Ok(()),
                _ => return Err(Unusual),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<(), Unusual> {
        if depth > MAX_DEPTH {
            return Err(Unusual);
        }
        self.expect(b'[')?;
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.value(depth)?;
            self.ws();
            match self.next()? {
                b',' => self.ws(),
                b']' => return Ok(()),
                _ => return Err(Unusual),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Option<Value> {
        serde_json::from_str(text).ok()
    }

    /// Texts built from JSON-ish pieces, plain or not, valid or not.
    fn texts() -> Vec<String> {
        const PIECES: [&str; 34] = [
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            " ",
            "\n",
            "\"rid\"",
            "\"a\"",
            "\"\"",
            "\"r\\u0069d\"",
            "\"x\\\"\"",
            "\"\u{1}\"",
            "\"é漢\"",
            "0",
            "-0",
            "01",
            "-",
            "123456789012345",
            "1234567890123456",
            "1.5",
            "1e3",
            "true",
            "false",
            "null",
            "tru",
            "nul",
            "x",
            "\"rid\":",
            "\"rid\":1",
            "{\"rid\":\"r1\"}",
            "[[[[",
            "]]]]",
        ];
        let mut out = Vec::new();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let mut t = String::new();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let n = 1 + (seed % 9) as usize;
            for k in 0..n {
                let r = seed.rotate_left(7 * k as u32);
                t.push_str(PIECES[(r % PIECES.len() as u64) as usize]);
            }
            out.push(t);
        }
        for t in [
            "",
            "{}",
            " { } ",
            "[]",
            "{\"rid\":\"r1\",\"rid\":2}",
            "{\"a\":[1,{\"b\":null}],\"rid\":{\"c\":[true,false]}}",
            "{\"rid\":\"r1\",}",
            "[1,]",
            "{\"rid\" \"r1\"}",
        ] {
            out.push(t.to_owned());
        }
        out.push(format!("{}{}", "[".repeat(64), "]".repeat(64)));
        out.push(format!("{}{}", "[".repeat(65), "]".repeat(65)));
        out.push(format!("{}{}", "[".repeat(200), "]".repeat(200)));
        out
    }

    /// What the scanner accepts serde_json parses; whatever it answers for a setting is the
    /// parsed object's value.
    #[test]
    fn plain_text_is_json_and_its_settings_are_the_parsed_ones() {
        let mut plain = 0;
        let mut found = 0;
        for t in texts() {
            let value = parsed(&t);
            if is_plain(&t) {
                plain += 1;
                assert!(value.is_some(), "accepted, not JSON: {t:?}");
            }
            for key in ["rid", "a", ""] {
                if let Ok(v) = setting(&t, key) {
                    let want = value
                        .as_ref()
                        .and_then(Value::as_object)
                        .and_then(|m| m.get(key))
                        .cloned();
                    assert!(value.as_ref().is_some_and(Value::is_object), "{t:?}");
                    assert_eq!(v, want, "{t:?} / {key}");
                    found += usize::from(v.is_some());
                }
            }
        }
        // The generator reaches both sides.
        assert!(plain > 100 && found > 10, "plain {plain}, found {found}");
    }
}
