//! The input rules of the chat: names, rooms, messages and targets.
//!
//! Lengths count Unicode characters (`char`s), not bytes, so a name of 32 non-ASCII letters is
//! as valid as one of 32 ASCII letters.

use serde_json::Value;

/// Longest user name, in characters (after trimming).
pub const MAX_NAME_CHARS: usize = 32;
/// Longest room name, in characters (after trimming).
pub const MAX_ROOM_CHARS: usize = 32;
/// Longest message, in characters.
pub const MAX_CONTENT_CHARS: usize = 1024;

/// What is wrong with a request body. Its text is what the client gets as `msg`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// A required field is absent (or `null`).
    #[error("field `{field}` is required")]
    Missing {
        /// The field.
        field: &'static str,
    },
    /// A field is not a string.
    #[error("field `{field}` must be a string")]
    NotAString {
        /// The field.
        field: &'static str,
    },
    /// A field is empty (after trimming).
    #[error("field `{field}` must not be empty")]
    Empty {
        /// The field.
        field: &'static str,
    },
    /// A field is too long.
    #[error("field `{field}` is {len} characters long; the limit is {limit}")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its length in characters.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A field holds a character it may not.
    #[error("field `{field}` must not contain {what}")]
    BadChar {
        /// The field.
        field: &'static str,
        /// The character, described.
        what: &'static str,
    },
    /// The body is not a JSON object.
    #[error("the request body must be a JSON object")]
    NotAnObject,
}

fn string_field<'a>(body: &'a Value, field: &'static str) -> Result<&'a str, InputError> {
    if !body.is_object() {
        return Err(InputError::NotAnObject);
    }
    match body.get(field) {
        None | Some(Value::Null) => Err(InputError::Missing { field }),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(InputError::NotAString { field }),
    }
}

fn bounded(
    text: &str,
    field: &'static str,
    limit: usize,
    trim: bool,
) -> Result<String, InputError> {
    let text = if trim { text.trim() } else { text };
    if text.trim().is_empty() {
        return Err(InputError::Empty { field });
    }
    let len = text.chars().count();
    if len > limit {
        return Err(InputError::TooLong { field, len, limit });
    }
    Ok(text.to_owned())
}

fn no_control(text: &str, field: &'static str) -> Result<(), InputError> {
    if text.chars().any(char::is_control) {
        return Err(InputError::BadChar {
            field,
            what: "control characters",
        });
    }
    Ok(())
}

/// A user name: 1..=[`MAX_NAME_CHARS`] characters after trimming, no `*` (it separates the
/// name from the room in the uid), no control characters.
///
/// # Errors
/// [`InputError`] naming the field.
pub fn username(body: &Value, field: &'static str) -> Result<String, InputError> {
    let name = bounded(string_field(body, field)?, field, MAX_NAME_CHARS, true)?;
    if name.contains('*') {
        return Err(InputError::BadChar { field, what: "`*`" });
    }
    no_control(&name, field)?;
    Ok(name)
}

/// A room name: 1..=[`MAX_ROOM_CHARS`] characters after trimming, no control characters.
///
/// # Errors
/// [`InputError`] naming the field.
pub fn room(body: &Value, field: &'static str) -> Result<String, InputError> {
    let rid = bounded(string_field(body, field)?, field, MAX_ROOM_CHARS, true)?;
    no_control(&rid, field)?;
    Ok(rid)
}

/// A message: 1..=[`MAX_CONTENT_CHARS`] characters, not only white space; kept as sent.
///
/// # Errors
/// [`InputError`] naming the field.
pub fn content(body: &Value, field: &'static str) -> Result<String, InputError> {
    bounded(string_field(body, field)?, field, MAX_CONTENT_CHARS, false)
}

/// The gate's uid: a string (1..=`limit` characters, not only white space, kept as sent) or a
/// number (its text). A body that is not an object has no such field.
///
/// # Errors
/// [`InputError`] naming the field.
pub fn gate_uid(body: &Value, field: &'static str, limit: usize) -> Result<String, InputError> {
    let number;
    let text = match body.get(field) {
        Some(Value::String(s)) => s.as_str(),
        Some(Value::Number(n)) => {
            number = n.to_string();
            &number
        }
        None | Some(Value::Null) => return Err(InputError::Missing { field }),
        Some(_) => return Err(InputError::NotAString { field }),
    };
    bounded(text, field, limit, false)
}

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Everyone in the room (`"*"`).
    Room,
    /// One user, by name.
    User(String),
}

/// The `target` of a send: `"*"` or a user name.
///
/// # Errors
/// [`InputError`] naming the field.
pub fn target(body: &Value, field: &'static str) -> Result<Target, InputError> {
    if string_field(body, field)? == "*" {
        return Ok(Target::Room);
    }
    username(body, field).map(Target::User)
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
    use serde_json::json;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(username(&json!({"u": "  bob "}), "u").unwrap(), "bob");
        let max = "é".repeat(MAX_NAME_CHARS);
        assert_eq!(username(&json!({ "u": max }), "u").unwrap(), max);
        let long = "x".repeat(MAX_NAME_CHARS + 1);
        assert_eq!(
            username(&json!({ "u": long }), "u")
                .unwrap_err()
                .to_string(),
            "field `u` is 33 characters long; the limit is 32"
        );
        assert_eq!(
            username(&json!({"u": "   "}), "u"),
            Err(InputError::Empty { field: "u" })
        );
        assert_eq!(
            username(&json!({}), "u"),
            Err(InputError::Missing { field: "u" })
        );
        assert_eq!(
            username(&json!({"u": null}), "u"),
            Err(InputError::Missing { field: "u" })
        );
        assert_eq!(
            username(&json!({"u": 7}), "u"),
            Err(InputError::NotAString { field: "u" })
        );
        assert!(matches!(
            username(&json!({"u": "a*b"}), "u"),
            Err(InputError::BadChar { .. })
        ));
        assert!(matches!(
            username(&json!({"u": "a\nb"}), "u"),
            Err(InputError::BadChar { .. })
        ));
        assert_eq!(username(&json!([1]), "u"), Err(InputError::NotAnObject));
        assert_eq!(username(&Value::Null, "u"), Err(InputError::NotAnObject));
    }

    #[test]
    fn rooms_contents_and_targets() {
        assert_eq!(room(&json!({"r": "lobby"}), "r").unwrap(), "lobby");
        assert!(matches!(
            room(&json!({"r": "r".repeat(MAX_ROOM_CHARS + 1)}), "r"),
            Err(InputError::TooLong { len: 33, .. })
        ));
        assert_eq!(content(&json!({"c": " hi "}), "c").unwrap(), " hi ");
        assert_eq!(
            content(&json!({"c": " \n "}), "c"),
            Err(InputError::Empty { field: "c" })
        );
        let max = "😀".repeat(MAX_CONTENT_CHARS);
        assert!(content(&json!({ "c": max }), "c").is_ok());
        assert!(matches!(
            content(&json!({"c": "a".repeat(MAX_CONTENT_CHARS + 1)}), "c"),
            Err(InputError::TooLong {
                len: 1025,
                limit: 1024,
                ..
            })
        ));
        assert_eq!(target(&json!({"t": "*"}), "t").unwrap(), Target::Room);
        assert_eq!(
            target(&json!({"t": "bob"}), "t").unwrap(),
            Target::User("bob".into())
        );
        assert_eq!(
            target(&json!({}), "t"),
            Err(InputError::Missing { field: "t" })
        );
    }

    #[test]
    fn uids_join_and_split_like_pomelo() {
        assert_eq!(uid("bob", "lobby"), "bob*lobby");
        assert_eq!(name_of("bob*lo*bby"), "bob");
        assert_eq!(name_of("plain"), "plain");
    }

    #[test]
    fn gate_uids_are_kept_as_sent() {
        let g = |v: Value| gate_uid(&v, "uid", 4).map_err(|e| e.to_string());
        assert_eq!(g(json!({"uid": " ab "})), Ok(" ab ".to_owned()));
        assert_eq!(g(json!({"uid": 42})), Ok("42".to_owned()));
        assert_eq!(g(json!({})), Err("field `uid` is required".to_owned()));
        assert_eq!(g(json!([1])), Err("field `uid` is required".to_owned()));
        assert_eq!(
            g(json!({"uid": "  "})),
            Err("field `uid` must not be empty".to_owned())
        );
        assert_eq!(
            g(json!({"uid": true})),
            Err("field `uid` must be a string".to_owned())
        );
        assert_eq!(
            g(json!({"uid": "abcde"})),
            Err("field `uid` is 5 characters long; the limit is 4".to_owned())
        );
    }
}
