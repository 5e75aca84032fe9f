//! The input rules of the chat, as typed request fields: [`Name`], [`Room`], [`Content`],
//! [`GateUid`] and [`Target`] deserialize only from valid input, so a handler taking
//! `Json<Enter>` never sees a bad name. A field that breaks a rule is answered with code 500
//! and `field `NAME` …` (the framework's `Json` names the field; the rule says what is wrong).
//!
//! Lengths count Unicode characters (`char`s), not bytes, so a name of 32 non-ASCII letters is
//! as valid as one of 32 ASCII letters.

use serde::{Deserialize, Deserializer, de};

/// Longest user name, in characters (after trimming).
pub const MAX_NAME_CHARS: usize = 32;
/// Longest room name, in characters (after trimming).
pub const MAX_ROOM_CHARS: usize = 32;
/// Longest message, in characters.
pub const MAX_CONTENT_CHARS: usize = 1024;
/// Longest uid the gate accepts, in characters (a name, `*` and a room, with room to spare).
pub const MAX_GATE_UID_CHARS: usize = 128;

/// What is wrong with a field. Its text completes `field `NAME` …` in the client's `msg`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// Empty (after trimming).
    #[error("must not be empty")]
    Empty,
    /// Too long.
    #[error("is {len} characters long; the limit is {limit}")]
    TooLong {
        /// Its length in characters.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// Holds a character it may not.
    #[error("must not contain {what}")]
    BadChar {
        /// The character, described.
        what: &'static str,
    },
}

fn bounded(text: &str, limit: usize, trim: bool) -> Result<String, InputError> {
    let text = if trim { text.trim() } else { text };
    if text.trim().is_empty() {
        return Err(InputError::Empty);
    }
    let len = text.chars().count();
    if len > limit {
        return Err(InputError::TooLong { len, limit });
    }
    Ok(text.to_owned())
}

fn no_control(text: &str) -> Result<(), InputError> {
    if text.chars().any(char::is_control) {
        return Err(InputError::BadChar {
            what: "control characters",
        });
    }
    Ok(())
}

/// A user name: 1..=[`MAX_NAME_CHARS`] characters after trimming (kept trimmed), no `*` (it
/// separates the name from the room in the uid), no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Name(pub String);

impl TryFrom<String> for Name {
    type Error = InputError;

    fn try_from(s: String) -> Result<Self, InputError> {
        let name = bounded(&s, MAX_NAME_CHARS, true)?;
        if name.contains('*') {
            return Err(InputError::BadChar { what: "`*`" });
        }
        no_control(&name)?;
        Ok(Self(name))
    }
}

/// A room name: 1..=[`MAX_ROOM_CHARS`] characters after trimming, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Room(pub String);

impl TryFrom<String> for Room {
    type Error = InputError;

    fn try_from(s: String) -> Result<Self, InputError> {
        let rid = bounded(&s, MAX_ROOM_CHARS, true)?;
        no_control(&rid)?;
        Ok(Self(rid))
    }
}

/// A message: 1..=[`MAX_CONTENT_CHARS`] characters, not only white space; kept as sent.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Content(pub String);

impl TryFrom<String> for Content {
    type Error = InputError;

    fn try_from(s: String) -> Result<Self, InputError> {
        bounded(&s, MAX_CONTENT_CHARS, false).map(Self)
    }
}

/// The gate's uid: a string (1..=[`MAX_GATE_UID_CHARS`] characters, not only white space,
/// kept as sent) or a number (its text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateUid(pub String);

impl<'de> Deserialize<'de> for GateUid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = String;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
                Ok(v.to_owned())
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
                Ok(v.to_string())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
                Ok(v.to_string())
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
                Ok(
                    serde_json::Number::from_f64(v)
                        .map_or_else(|| v.to_string(), |n| n.to_string()),
                )
            }
        }
        let text = d.deserialize_any(V)?;
        bounded(&text, MAX_GATE_UID_CHARS, false)
            .map(Self)
            .map_err(de::Error::custom)
    }
}

/// Where a message goes: `"*"` (the room) or a user name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Everyone in the room (`"*"`).
    Room,
    /// One user, by name.
    User(String),
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "*" {
            return Ok(Self::Room);
        }
        Name::try_from(s)
            .map(|n| Self::User(n.0))
            .map_err(de::Error::custom)
    }
}

/// The uid of `username` in room `rid`: `username*rid`, as in pomelo's chat.
pub fn uid(username: &str, rid: &str) -> String {
    format!("{username}*{rid}")
}

/// The user name part of a uid (up to the first `*`).
pub fn name_of(uid: &str) -> &str {
    uid.split_once('*').map_or(uid, |(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn de<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, String> {
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(de::<Name>(json!("  bob ")).unwrap().0, "bob");
        let max = "é".repeat(MAX_NAME_CHARS);
        assert_eq!(de::<Name>(json!(max)).unwrap().0, max);
        let long = "x".repeat(MAX_NAME_CHARS + 1);
        assert_eq!(
            de::<Name>(json!(long)).unwrap_err(),
            "is 33 characters long; the limit is 32"
        );
        assert_eq!(de::<Name>(json!("   ")).unwrap_err(), "must not be empty");
        assert!(
            de::<Name>(json!(7))
                .unwrap_err()
                .contains("expected a string")
        );
        assert_eq!(
            de::<Name>(json!("a*b")).unwrap_err(),
            "must not contain `*`"
        );
        assert_eq!(
            de::<Name>(json!("a\nb")).unwrap_err(),
            "must not contain control characters"
        );
    }

    #[test]
    fn rooms_contents_and_targets() {
        assert_eq!(de::<Room>(json!("lobby")).unwrap().0, "lobby");
        assert_eq!(
            Room::try_from("r".repeat(MAX_ROOM_CHARS + 1)),
            Err(InputError::TooLong { len: 33, limit: 32 })
        );
        assert_eq!(de::<Content>(json!(" hi ")).unwrap().0, " hi ");
        assert_eq!(Content::try_from(" \n ".to_owned()), Err(InputError::Empty));
        assert!(Content::try_from("😀".repeat(MAX_CONTENT_CHARS)).is_ok());
        assert_eq!(
            Content::try_from("a".repeat(MAX_CONTENT_CHARS + 1)),
            Err(InputError::TooLong {
                len: 1025,
                limit: 1024
            })
        );
        assert_eq!(de::<Target>(json!("*")).unwrap(), Target::Room);
        assert_eq!(
            de::<Target>(json!("bob")).unwrap(),
            Target::User("bob".into())
        );
        assert!(de::<Target>(json!("a*b")).is_err());
    }

    #[test]
    fn uids_join_and_split_like_pomelo() {
        assert_eq!(uid("bob", "lobby"), "bob*lobby");
        assert_eq!(name_of("bob*lo*bby"), "bob");
        assert_eq!(name_of("plain"), "plain");
    }

    #[test]
    fn gate_uids_are_kept_as_sent() {
        assert_eq!(de::<GateUid>(json!(" ab ")).unwrap().0, " ab ");
        assert_eq!(de::<GateUid>(json!(42)).unwrap().0, "42");
        assert_eq!(de::<GateUid>(json!("  ")).unwrap_err(), "must not be empty");
        assert!(
            de::<GateUid>(json!(true))
                .unwrap_err()
                .contains("expected a string")
        );
        let long = "u".repeat(MAX_GATE_UID_CHARS + 1);
        assert_eq!(
            de::<GateUid>(json!(long)).unwrap_err(),
            "is 129 characters long; the limit is 128"
        );
    }
}
