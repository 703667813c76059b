//! The JSON body of an HTTP kick request (mod_http_muc_kick): `{"nickname", "muc", "reason"?}`.
//!
//! The body is parsed with serde_json and checked field by field, so that every refusal says exactly what
//! is wrong ("'muc' must be a string, not a number"). Unknown fields are refused, to catch typos such as
//! `"nick"`. The room JID is checked for shape only; Lua preps it with Prosody's `jid.prep` and looks the
//! room up. Nothing here can panic on input, however hostile.

use serde_json::{Map, Value};

use crate::error::Error;
use crate::validate;

/// Longest nickname, in characters: a nickname is the resource part of an occupant JID.
pub const MAX_NICKNAME_CHARS: usize = 1023;

/// The fields a kick request may have.
const FIELDS: [&str; 3] = ["nickname", "muc", "reason"];

/// Limits passed in by the caller from its configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Longest reason accepted, in characters.
    pub max_reason_chars: usize,
}

/// A checked kick request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KickRequest {
    /// Nickname of the occupant to kick.
    pub nickname: String,
    /// Bare JID of the room (`room@host`), shape-checked but not stringprepped.
    pub muc: String,
    /// Reason shown to the kicked user; `None` when absent, `null` or blank.
    pub reason: Option<String>,
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn string_field<'a>(object: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, Error> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(Error::bad_request(format!(
            "'{name}' must be a string, not {}",
            type_name(other)
        ))),
    }
}

fn check_room(muc: &str) -> Result<String, Error> {
    let jid = validate::jid(muc.as_bytes())
        .map_err(|e| Error::bad_request(format!("'muc' is not a valid room JID: {e}")))?;
    if jid.node.is_none() {
        return Err(Error::bad_request(
            "'muc' must be a room JID (room@host), not a bare domain",
        ));
    }
    if jid.resource.is_some() {
        return Err(Error::bad_request(
            "'muc' must be a bare room JID, without '/nickname'",
        ));
    }
    Ok(muc.to_owned())
}

/// Parses and checks a kick request body.
///
/// Errors: [`Error::TooLarge`] for a body over `limits.max_body_bytes`; [`Error::BadRequest`] for a body
/// that is empty, not JSON or not a JSON object, has unknown fields, misses `nickname` or `muc`, has a field
/// of the wrong type, a malformed nickname or room JID, or a reason that is too long or has control
/// characters.
pub fn parse(body: &[u8], limits: &Limits) -> Result<KickRequest, Error> {
    if body.len() > limits.max_body_bytes {
        return Err(Error::TooLarge(format!(
            "Body is larger than {} bytes",
            limits.max_body_bytes
        )));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::bad_request(
            "Body is empty; expected a JSON object with 'nickname' and 'muc'",
        ));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Error::bad_request(format!("Body is not valid JSON: {e}")))?;
    let Value::Object(object) = value else {
        return Err(Error::bad_request(format!(
            "Body must be a JSON object, not {}",
            type_name(&value)
        )));
    };
    if let Some(unknown) = object.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(Error::bad_request(format!(
            "Unknown field '{}'; expected 'nickname', 'muc' and optionally 'reason'",
            unknown.escape_debug()
        )));
    }
    let nickname = string_field(&object, "nickname")?;
    let muc = string_field(&object, "muc")?;
    let reason = string_field(&object, "reason")?;
    let (nickname, muc) = match (nickname, muc) {
        (Some(nickname), Some(muc)) => (nickname, muc),
        (None, None) => return Err(Error::bad_request("Missing 'nickname' and 'muc'")),
        (None, _) => return Err(Error::bad_request("Missing 'nickname'")),
        (_, None) => return Err(Error::bad_request("Missing 'muc'")),
    };
    let nickname = validate::nickname(nickname.as_bytes(), MAX_NICKNAME_CHARS)?.to_owned();
    let muc = check_room(muc)?;
    let reason = match reason {
        Some(r) if !r.trim().is_empty() => {
            Some(validate::text(r.as_bytes(), limits.max_reason_chars, "Reason")?)
        }
        _ => None,
    };
    Ok(KickRequest {
        nickname,
        muc,
        reason: reason.map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: Limits = Limits {
        max_body_bytes: 4096,
        max_reason_chars: 200,
    };

    fn parse_str(body: &str) -> Result<KickRequest, Error> {
        parse(body.as_bytes(), &LIMITS)
    }

    #[test]
    fn parses_a_full_request() {
        let request = parse_str(r#"{"nickname":"Bob","muc":"snuggery@chat.example.org","reason":"Spam"}"#);
        assert_eq!(
            Ok(KickRequest {
                nickname: "Bob".into(),
                muc: "snuggery@chat.example.org".into(),
                reason: Some("Spam".into())
            }),
            request
        );
    }

    #[test]
    fn reason_is_optional_and_null_or_blank_means_none() {
        for body in [
            r#"{"nickname":"Bob","muc":"r@chat.example.org"}"#,
            r#"{"nickname":"Bob","muc":"r@chat.example.org","reason":null}"#,
            r#"{"nickname":"Bob","muc":"r@chat.example.org","reason":"  "}"#,
        ] {
            assert_eq!(None, parse_str(body).unwrap().reason, "{body}");
        }
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        let cases = [
            ("", "Body is empty"),
            ("  \n", "Body is empty"),
            ("{nickname: 'Bob'}", "Body is not valid JSON"),
            (
                r#"{"nickname":"Bob","muc":"r@chat.example.org""#,
                "Body is not valid JSON",
            ),
            ("[1,2]", "Body must be a JSON object, not an array"),
            ("\"Bob\"", "Body must be a JSON object, not a string"),
            ("null", "Body must be a JSON object, not null"),
            ("{}", "Missing 'nickname' and 'muc'"),
            (r#"{"muc":"r@chat.example.org"}"#, "Missing 'nickname'"),
            (r#"{"nickname":"Bob"}"#, "Missing 'muc'"),
            (
                r#"{"nickname":null,"muc":"r@chat.example.org"}"#,
                "Missing 'nickname'",
            ),
            (
                r#"{"nickname":42,"muc":"r@chat.example.org"}"#,
                "'nickname' must be a string, not a number",
            ),
            (
                r#"{"nickname":"Bob","muc":["r@chat.example.org"]}"#,
                "'muc' must be a string, not an array",
            ),
            (
                r#"{"nickname":"Bob","muc":"r@c.example","reason":true}"#,
                "'reason' must be a string, not a boolean",
            ),
            (
                r#"{"nick":"Bob","muc":"r@chat.example.org"}"#,
                "Unknown field 'nick'",
            ),
            (
                r#"{"nickname":"","muc":"r@chat.example.org"}"#,
                "Nickname is empty",
            ),
            (r#"{"nickname":" Bob","muc":"r@chat.example.org"}"#, "whitespace"),
            (
                r#"{"nickname":"B\u0000b","muc":"r@chat.example.org"}"#,
                "control characters",
            ),
            (
                r#"{"nickname":"Bob","muc":"chat.example.org"}"#,
                "not a bare domain",
            ),
            (
                r#"{"nickname":"Bob","muc":"r@chat.example.org/Bob"}"#,
                "without '/nickname'",
            ),
            (
                r#"{"nickname":"Bob","muc":"@chat.example.org"}"#,
                "not a valid room JID",
            ),
            (r#"{"nickname":"Bob","muc":"r@"}"#, "not a valid room JID"),
            (
                r#"{"nickname":"Bob","muc":"a b@chat.example.org"}"#,
                "not a valid room JID",
            ),
            (
                r#"{"nickname":"Bob","muc":"r@chat..example.org"}"#,
                "not a valid room JID",
            ),
            (
                r#"{"nickname":"Bob","muc":"r@c.example","reason":"a\nb"}"#,
                "Reason contains control characters",
            ),
        ];
        for (body, why) in cases {
            let e = parse_str(body).unwrap_err();
            assert_eq!("bad-request", e.code(), "{body}");
            assert!(e.to_string().contains(why), "{body}: {e}");
        }
    }

    #[test]
    fn limits_come_from_the_caller() {
        let long_reason = format!(
            r#"{{"nickname":"Bob","muc":"r@c.example","reason":"{}"}}"#,
            "x".repeat(201)
        );
        assert_eq!(
            "Reason is longer than 200 characters",
            parse_str(&long_reason).unwrap_err().to_string()
        );
        let big = format!(
            r#"{{"nickname":"Bob","muc":"r@c.example","reason":"{}"}}"#,
            "x".repeat(5000)
        );
        let e = parse_str(&big).unwrap_err();
        assert_eq!("too-large", e.code());
        assert_eq!("Body is larger than 4096 bytes", e.to_string());
    }

    #[test]
    fn invalid_utf8_is_not_json() {
        let e = parse(b"{\"nickname\":\"\xff\",\"muc\":\"r@c.example\"}", &LIMITS).unwrap_err();
        assert_eq!("bad-request", e.code());
    }

    #[test]
    fn deep_nesting_is_refused_not_a_crash() {
        let deep = format!(
            r#"{{"nickname":"Bob","muc":"r@c.example","reason":{}1{}}}"#,
            "[".repeat(2000),
            "]".repeat(2000)
        );
        let limits = Limits {
            max_body_bytes: 1 << 20,
            ..LIMITS
        };
        assert_eq!("bad-request", parse(deep.as_bytes(), &limits).unwrap_err().code());
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&body, &LIMITS);
        }

        #[test]
        fn never_panics_on_arbitrary_room_strings(muc in ".{0,80}", nickname in ".{0,40}") {
            let body = serde_json::json!({ "nickname": nickname, "muc": muc }).to_string();
            if let Ok(request) = parse(body.as_bytes(), &LIMITS) {
                prop_assert!(request.muc.contains('@'));
            }
        }
    }
}
